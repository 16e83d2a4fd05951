//! An in-memory `LbMaps` for tests of `sync/`: it can fail the Nth write, to prove that a
//! retry converges and that no prefix of a plan leaves a slot pointing nowhere.
use lb_common::{
    config::DatapathConfig,
    service::{Backend4, RevNat4, ServiceEntry, ServiceKey4},
};

use super::{Error, LbMaps, MapsContent};

/// Maps held in memory.
#[derive(Debug, Default)]
pub struct FakeMaps {
    /// The current content.
    pub content: MapsContent,
    /// The configuration last written.
    pub config: DatapathConfig,
    /// Writes performed so far.
    pub writes: usize,
    /// Fail the write with this (0-based) number, once.
    pub fail_write: Option<usize>,
}

impl FakeMaps {
    fn write(&mut self) -> Result<(), Error> {
        let n = self.writes;
        self.writes += 1;
        if self.fail_write == Some(n) {
            self.fail_write = None;
            return Err(Error::Injected(n));
        }
        Ok(())
    }
}

impl LbMaps for FakeMaps {
    fn upsert_backend(&mut self, id: u32, backend: &Backend4) -> Result<(), Error> {
        self.write()?;
        self.content.backends.insert(id, *backend);
        Ok(())
    }

    fn delete_backend(&mut self, id: u32) -> Result<(), Error> {
        self.write()?;
        self.content.backends.remove(&id);
        Ok(())
    }

    fn upsert_service(&mut self, key: &ServiceKey4, entry: &ServiceEntry) -> Result<(), Error> {
        self.write()?;
        self.content.services.insert(*key, *entry);
        Ok(())
    }

    fn delete_service(&mut self, key: &ServiceKey4) -> Result<(), Error> {
        self.write()?;
        self.content.services.remove(key);
        Ok(())
    }

    fn upsert_revnat(&mut self, id: u16, revnat: &RevNat4) -> Result<(), Error> {
        self.write()?;
        self.content.revnat.insert(id, *revnat);
        Ok(())
    }

    fn delete_revnat(&mut self, id: u16) -> Result<(), Error> {
        self.write()?;
        self.content.revnat.remove(&id);
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
