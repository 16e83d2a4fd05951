//! In-memory `LbMaps` for tests of `sync/` (built only for tests): it can fail chosen writes, to
//! prove that retries converge and that no prefix of a plan leaves a slot pointing nowhere.
use std::collections::BTreeSet;

use lb_common::{config::DatapathConfig, service::ServiceEntry};

use super::{
    BackendId, Error, LbMaps, MapsContent, ServiceId,
    maps::{Backend, MaglevSpec, RevNat, ServiceKey, SourceRangeEntry},
};
use crate::model::IpFamily;

/// Maps held in memory.
#[derive(Debug, Default)]
pub struct FakeMaps {
    /// The current content.
    pub content: MapsContent,
    /// The configuration last written.
    pub config: DatapathConfig,
    /// Write attempts so far, failed ones included.
    pub writes: usize,
    /// The Maglev tables written, as backend ids.
    pub maglev_tables: std::collections::BTreeMap<ServiceId, Vec<BackendId>>,
    /// Fail the write attempts with these (0-based) numbers. A retried write is a new attempt
    /// with the next number, so `{0, 1, 2}` fails the first write three times in a row.
    pub fail_writes: BTreeSet<usize>,
}

impl FakeMaps {
    /// In-memory maps whose write attempts `failing` fail.
    pub fn failing(failing: impl IntoIterator<Item = usize>) -> Self {
        Self {
            fail_writes: failing.into_iter().collect(),
            ..Self::default()
        }
    }

    fn write(&mut self) -> Result<(), Error> {
        let n = self.writes;
        self.writes += 1;
        if self.fail_writes.remove(&n) {
            return Err(Error::Injected(n));
        }
        Ok(())
    }
}

impl LbMaps for FakeMaps {
    fn upsert_backend(&mut self, id: BackendId, backend: &Backend) -> Result<(), Error> {
        self.write()?;
        self.content.backends.insert(id, *backend);
        Ok(())
    }

    fn delete_backend(&mut self, id: BackendId, family: IpFamily) -> Result<(), Error> {
        self.write()?;
        // One entry per id: only the family's own entry goes (an id reused for the other
        // family keeps its new one).
        if self.content.backends.get(&id).map(Backend::family) == Some(family) {
            self.content.backends.remove(&id);
        }
        Ok(())
    }

    fn upsert_service(&mut self, key: &ServiceKey, entry: &ServiceEntry) -> Result<(), Error> {
        self.write()?;
        self.content.services.insert(*key, *entry);
        Ok(())
    }

    fn delete_service(&mut self, key: &ServiceKey) -> Result<(), Error> {
        self.write()?;
        self.content.services.remove(key);
        Ok(())
    }

    fn upsert_revnat(&mut self, id: ServiceId, revnat: &RevNat) -> Result<(), Error> {
        self.write()?;
        self.content.revnat.insert(id, *revnat);
        Ok(())
    }

    fn delete_revnat(&mut self, id: ServiceId, family: IpFamily) -> Result<(), Error> {
        self.write()?;
        if self.content.revnat.get(&id).map(RevNat::family) == Some(family) {
            self.content.revnat.remove(&id);
        }
        Ok(())
    }

    fn upsert_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error> {
        self.write()?;
        self.content.source_ranges.insert(*range);
        Ok(())
    }

    fn delete_source_range(&mut self, range: &SourceRangeEntry) -> Result<(), Error> {
        self.write()?;
        self.content.source_ranges.remove(range);
        Ok(())
    }

    fn write_maglev(
        &mut self,
        id: ServiceId,
        spec: &MaglevSpec,
        table: &[BackendId],
        _old_chunks: u32,
    ) -> Result<(), Error> {
        self.write()?;
        self.maglev_tables.insert(id, table.to_vec());
        self.content.maglev.insert(id, spec.clone());
        Ok(())
    }

    fn delete_maglev(&mut self, id: ServiceId, _chunks: u32) -> Result<(), Error> {
        self.write()?;
        self.maglev_tables.remove(&id);
        self.content.maglev.remove(&id);
        Ok(())
    }

    fn set_config(&mut self, config: &DatapathConfig) -> Result<(), Error> {
        self.write()?;
        self.config = *config;
        Ok(())
    }

    fn read(&self) -> Result<MapsContent, Error> {
        Ok(self.content.clone())
    }
}
