//! B7, the agent's own memory: what an operator sees (the release `lb-agent` on a file source
//! of N Services × M endpoints, its RSS once its first sync is done, beside an agent with no
//! Services) and where its heap goes (the same pipeline in this process under the counting
//! allocator, one stage at a time: the file source and its view, the model, the names kept
//! for `service list`, the syncer).
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use lb_agent::k8s::{SourceSpec, View, run_source};
use lb_agent::model::{Incremental, ThisNode};

use crate::alloc;
use crate::datapath::{LB_MAP_MAX, LbDatapath};
use crate::fixture::Fixture;
use crate::netns;

/// Services per file of the fixture's directory (a `kind: List` each).
const PER_FILE: u32 = 1_000;
/// How long the agent gets for its first sync.
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// One stage of the in-process breakdown.
#[derive(Clone, Debug)]
pub struct Stage {
    /// What it is.
    pub name: &'static str,
    /// Heap it keeps, bytes.
    pub kept: i64,
    /// Heap at its peak beyond what was live before it, bytes.
    pub peak: i64,
}

/// B7's agent figures for one fixture.
#[derive(Clone, Debug)]
pub struct AgentMemory {
    /// The fixture.
    pub fixture: Fixture,
    /// RSS of the agent with no Services after its first sync, kB.
    pub empty_rss_kb: u64,
    /// RSS of the agent on the fixture after its first sync, kB.
    pub rss_kb: u64,
    /// Its peak RSS (VmHWM) by then, kB.
    pub hwm_kb: u64,
    /// The in-process breakdown, in pipeline order.
    pub stages: Vec<Stage>,
}

impl AgentMemory {
    /// RSS per Service, bytes (the whole RSS over N, as the issue counts it).
    pub fn per_service(&self) -> f64 {
        self.rss_kb as f64 * 1024.0 / f64::from(self.fixture.services)
    }

    /// RSS beyond the empty agent's per Service, bytes.
    pub fn added_per_service(&self) -> f64 {
        self.rss_kb.saturating_sub(self.empty_rss_kb) as f64 * 1024.0
            / f64::from(self.fixture.services)
    }
}

/// Writes the fixture as `kubectl get -o json` lists, [`PER_FILE`] Services (and their
/// slices) a file.
pub fn write_fixture(fixture: Fixture, dir: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut start = 0;
    while start < fixture.services {
        let end = (start + PER_FILE).min(fixture.services);
        let items: Vec<serde_json::Value> = (start..end)
            .flat_map(|i| {
                [
                    Fixture::service_object(i),
                    Fixture::slice_object(i, &fixture.backends_of(i), 1),
                ]
            })
            .collect();
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items});
        let path = dir.join(format!("services-{start:06}.json"));
        std::fs::write(&path, serde_json::to_vec(&list)?)
            .with_context(|| format!("write {}", path.display()))?;
        start = end;
    }
    Ok(())
}

/// Measures the agent's memory on `fixture`: the release agent's RSS, then the breakdown.
pub fn agent_memory(fixture: Fixture) -> anyhow::Result<AgentMemory> {
    let base = std::env::temp_dir().join(format!("lb-bench-{}-memory", std::process::id()));
    let empty_dir = base.join("empty");
    let full_dir = base.join("full");
    write_fixture(
        Fixture {
            services: 0,
            ..fixture
        },
        &empty_dir,
    )?;
    write_fixture(fixture, &full_dir)?;
    let (empty_rss_kb, _) = agent_rss("mem-empty", &empty_dir, &base.join("run-empty"))?;
    let (rss_kb, hwm_kb) = agent_rss("mem-full", &full_dir, &base.join("run-full"))?;
    let stages = breakdown(&full_dir)?;
    let _ = std::fs::remove_dir_all(&base);
    let result = AgentMemory {
        fixture,
        empty_rss_kb,
        rss_kb,
        hwm_kb,
        stages,
    };
    eprintln!(
        "lb-bench: agent memory {}×{}: RSS {} kB (empty agent {} kB, peak {} kB): {:.0} B per service, {:.0} B beyond the empty agent's",
        fixture.services,
        fixture.backends,
        result.rss_kb,
        result.empty_rss_kb,
        result.hwm_kb,
        result.per_service(),
        result.added_per_service()
    );
    for stage in &result.stages {
        eprintln!(
            "lb-bench:   {:<40} kept {:>10} B ({:>6.0} B/service), peak {:>10} B",
            stage.name,
            stage.kept,
            stage.kept as f64 / f64::from(fixture.services),
            stage.peak
        );
    }
    Ok(result)
}

/// The release agent (beside this binary) in its own namespace on `manifests`: its RSS and
/// peak RSS (kB) once ready, i.e. after its first sync.
fn agent_rss(tag: &str, manifests: &Path, run_dir: &Path) -> anyhow::Result<(u64, u64)> {
    let agent = std::env::current_exe()?
        .parent()
        .map(|dir| dir.join("lb-agent"))
        .ok_or_else(|| anyhow!("no directory for lb-agent"))?;
    if !agent.exists() {
        bail!(
            "{} is missing: cargo build --release -p lb-agent",
            agent.display()
        );
    }
    let ns = netns::create(tag)?;
    // A veth pair inside the namespace: the agent needs a device, no traffic flows.
    ns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ])?;
    ns.ip(&["link", "set", "eth0", "up"])?;
    ns.ip(&["link", "set", "eth1", "up"])?;
    ns.addr("eth0", "192.168.77.2/24")?;
    let _ = std::fs::remove_dir_all(run_dir);
    let config_dir = run_dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    let socket = run_dir.join("agent.sock");
    let bpf_root = PathBuf::from(format!("/sys/fs/bpf/lb-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&bpf_root);
    let source = format!("file:{}", manifests.display());
    let map_max = LB_MAP_MAX.to_string();
    let mut process = ns.spawn(
        &agent.to_string_lossy(),
        &[
            "--source",
            &source,
            "--devices",
            "eth0",
            "--pod-devices",
            "lxc*",
            "--node-name",
            "node",
            "--node-ip",
            "192.168.77.2",
            "--bpf-root",
            &bpf_root.to_string_lossy(),
            "--socket",
            &socket.to_string_lossy(),
            "--config-dir",
            &config_dir.to_string_lossy(),
            "--bpf-lb-map-max",
            &map_max,
        ],
        &run_dir.join("agent.log"),
    )?;
    let measured = process
        .wait_until("lb-agent's first sync", READY_TIMEOUT, || {
            let status = lb_api::client::Client::connect(&socket)
                .and_then(|mut client| client.status())
                .map_err(|err| err.to_string())?;
            match status.not_ready_reason() {
                None => Ok(Some(())),
                Some(reason) => Err(reason),
            }
        })
        .map(|()| {
            let pid = process.pid();
            (
                alloc::process_status_kb(pid, "VmRSS"),
                alloc::process_status_kb(pid, "VmHWM"),
            )
        });
    process.stop();
    drop(ns);
    let _ = std::fs::remove_dir_all(&bpf_root);
    Ok(measured?)
}

/// The agent's pipeline in this process, heap counted per stage: the file source with its
/// view, the view's changes through the incremental model, the names `service list` keeps,
/// and the syncer over real maps.
fn breakdown(dir: &Path) -> anyhow::Result<Vec<Stage>> {
    let mut stages = Vec::new();
    let mut stage = |name, before: i64| {
        stages.push(Stage {
            name,
            kept: alloc::live_bytes() - before,
            peak: alloc::peak_bytes() - before,
        });
        alloc::reset_peak();
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let shutdown = tokio_util::sync::CancellationToken::new();

    let before = alloc::live_bytes();
    alloc::reset_peak();
    let view = View::default();
    let mut synced = view.subscribe();
    let source = runtime.spawn(run_source(
        SourceSpec::File(dir.to_owned()),
        "node".to_owned(),
        view.clone(),
        shutdown.clone(),
    ));
    runtime.block_on(async {
        while !view.is_synced() {
            if synced.changed().await.is_err() {
                break;
            }
        }
    });
    if !view.is_synced() {
        bail!("the file source never synced");
    }
    stage("file source and its view (objects)", before);

    let before = alloc::live_bytes();
    let changes = view
        .take_changes()
        .ok_or_else(|| anyhow!("no changes from a synced view"))?;
    let mut model = Incremental::default();
    model.update(
        changes.services.iter().map(|(name, _, objects)| {
            (
                (name.namespace.clone(), name.name.clone()),
                objects.snapshot(),
            )
        }),
        &ThisNode::named("node"),
    );
    drop(changes);
    stage("model (per-Service output)", before);

    let before = alloc::live_bytes();
    let services = model.services();
    stage("desired services of a full pass", before);

    // What `AgentState::record_names` keeps for `service list`.
    let before = alloc::live_bytes();
    let names: std::collections::BTreeMap<String, String> = services
        .iter()
        .map(|s| {
            (
                s.frontend.to_string(),
                format!("{}/{}", s.namespace, s.name),
            )
        })
        .collect();
    stage("frontend names (service list)", before);

    let mut datapath = LbDatapath::load_sized("memory", LB_MAP_MAX)?;
    let before = alloc::live_bytes();
    alloc::reset_peak();
    datapath.sync(&services)?;
    stage("syncer (ids, programmed index)", before);

    drop(datapath);
    drop(names);
    shutdown.cancel();
    runtime
        .block_on(source)
        .map_err(|err| anyhow!("file source task: {err}"))?
        .map_err(|err| anyhow!("file source: {err}"))?;
    Ok(stages)
}
