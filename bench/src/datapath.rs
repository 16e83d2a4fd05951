//! lb as the agent runs it: the embedded object loaded by `lb_agent::datapath::Datapath`
//! with its maps pinned under a fresh bpffs directory (removed on drop), programmed by
//! `sync::Syncer` over `AyaMaps`, and driven through `BPF_PROG_TEST_RUN`.
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use aya::{TestRun as _, TestRunOptions, programs::SchedClassifier};
use lb_agent::datapath::{Datapath, LoadOptions, maps::AyaMaps};
use lb_agent::model::DesiredService;
use lb_agent::sync::{SyncStats, Syncer, maglev};
use lb_common::config::DatapathConfig;
use lb_common::drop::Hook;

/// Capacity of the services and backends maps: 10k services × 10 backends take 120k service
/// slots, more than the default 64k.
pub const LB_MAP_MAX: u32 = 262_144;
/// Capacity for the control-plane benchmarks' largest fixtures: 100k services × 10 backends
/// take 1.2M service entries (master, wildcard and 10 slots each) and 1M backends.
pub const LB_MAP_MAX_LARGE: u32 = 1_310_720;
/// Conntrack capacity (the agent's default).
pub const CT_MAX: u32 = 262_144;

/// A loaded, not yet attached, datapath with its syncer.
pub struct LbDatapath {
    /// The loaded object.
    pub inner_ebpf: aya::Ebpf,
    /// Pin directory `<root>/v1`.
    pub pin_dir: PathBuf,
    root: PathBuf,
    /// The agent's syncer over the kernel maps.
    pub syncer: Syncer<AyaMaps>,
}

/// One `BPF_PROG_TEST_RUN`.
#[derive(Debug)]
pub struct Run {
    /// `TC_ACT_*`.
    pub verdict: i32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Kernel-measured time per repetition.
    pub duration: Duration,
}

impl LbDatapath {
    /// Loads the datapath with maps pinned under `/sys/fs/bpf/lb-bench-<pid>-<tag>`. Services
    /// select at random unless they ask for Maglev (`DesiredService::algorithm`, as the
    /// `service.cilium.io/lb-algorithm` annotation does), with the default table size.
    pub fn load(tag: &str) -> anyhow::Result<Self> {
        Self::load_with(tag, DatapathConfig::default(), LB_MAP_MAX)
    }

    /// As [`Self::load`], with `lb_map_max` entries in the services and backends maps.
    pub fn load_sized(tag: &str, lb_map_max: u32) -> anyhow::Result<Self> {
        Self::load_with(tag, DatapathConfig::default(), lb_map_max)
    }

    /// [`LbDatapath::load`] with `config` in `LB_CONFIG` (SNAT needs a node address) and
    /// `lb_map_max` entries in the services and backends maps.
    pub fn load_with(tag: &str, config: DatapathConfig, lb_map_max: u32) -> anyhow::Result<Self> {
        let selection = maglev::Settings {
            annotation: true,
            ..maglev::Settings::default()
        };
        let root = PathBuf::from(format!("/sys/fs/bpf/lb-bench-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let datapath = Datapath::load(&LoadOptions {
            bpf_root: root.clone(),
            ct_max_entries: CT_MAX,
            ct_any_max_entries: CT_MAX,
            lb_map_max,
            config: DatapathConfig {
                maglev_seed: selection.seed.tuple(),
                maglev_table_size: selection.table_size,
                ..config
            },
        })
        .map_err(|err| anyhow!("{:#}", anyhow::Error::new(err)))
        .context("load the datapath (is /sys/fs/bpf bpffs?)")?;
        let Datapath {
            ebpf,
            maps,
            pin_dir,
            ..
        } = datapath;
        let syncer = Syncer::new(Arc::new(Mutex::new(maps)))
            .map_err(|err| anyhow!("{:#}", anyhow::Error::new(err)))?
            .with_selection(selection);
        Ok(Self {
            inner_ebpf: ebpf,
            pin_dir,
            root,
            syncer,
        })
    }

    /// One agent sync pass to exactly `services`.
    pub fn sync(&mut self, services: &[DesiredService]) -> anyhow::Result<SyncStats> {
        self.syncer
            .sync(services)
            .map_err(|err| anyhow!("{:#}", anyhow::Error::new(err)))
    }

    /// Attaches `from_pod` to `iface` of the calling thread's network namespace.
    pub fn attach_from_pod(&mut self, iface: &str) -> anyhow::Result<()> {
        self.attach(Hook::FromPod, iface)
    }

    /// Attaches `hook`'s program to `iface` of the calling thread's network namespace.
    pub fn attach(&mut self, hook: Hook, iface: &str) -> anyhow::Result<()> {
        lb_agent::datapath::devices::attach(&mut self.inner_ebpf, &self.pin_dir, hook, iface)
            .map_err(|err| anyhow!("{:#}", anyhow::Error::new(err)))
    }

    /// Runs `frame` through `from_pod` `repeat` times (the kernel reruns the program on the
    /// same, already rewritten, buffer).
    pub fn run(&self, frame: &[u8], repeat: u32) -> anyhow::Result<Run> {
        let program: &SchedClassifier = self
            .inner_ebpf
            .program("from_pod")
            .context("program from_pod")?
            .try_into()?;
        let mut out = vec![0u8; frame.len() + 256];
        let result = program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..TestRunOptions::default()
            })
            .map_err(|err| anyhow!("BPF_PROG_TEST_RUN: {err:?}"))?;
        out.truncate(result.data_size_out as usize);
        Ok(Run {
            verdict: result.return_value as i32,
            frame: out,
            duration: result.duration,
        })
    }

    /// `bytes_memlock` of each pinned map, by name.
    pub fn memlock(&self) -> anyhow::Result<Vec<(String, u64, u64)>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.pin_dir)? {
            let path = entry?.path();
            if path.is_dir() {
                continue;
            }
            let json = crate::netns::host(
                "bpftool",
                &["-j", "map", "show", "pinned", &path.display().to_string()],
            )?;
            let value: serde_json::Value = serde_json::from_str(&json)?;
            let name = value["name"].as_str().unwrap_or("?").to_owned();
            let bytes = value["bytes_memlock"].as_u64().unwrap_or(0);
            let entries = value["max_entries"].as_u64().unwrap_or(0);
            out.push((name, bytes, entries));
        }
        out.sort();
        Ok(out)
    }
}

impl Drop for LbDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
