//! The control plane: B5 full programming time, B6 one endpoint change to datapath, B7
//! memory.
//!
//! - lb: one `Syncer::sync` pass (the agent's plan + map writes) from empty maps freshly
//!   loaded; the model step (Kubernetes objects → desired services) is not included.
//! - iptables: `iptables-legacy-restore` of the whole nat table, in a fresh namespace.
//! - nftables: `nft -f` of the whole `ip kube-proxy` table, in a fresh namespace.
//!
//! Both baselines are timed from spawn to exit, as kube-proxy pays them.
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use lb_testkit::packet::tcp_syn;

use crate::alloc;
use crate::datapath::{LB_MAP_MAX_LARGE, LbDatapath};
use crate::fixture::{EndpointChange, Fixture, SERVICE_PORT};
use crate::netns::{self, run_timed};
use crate::stats::{Summary, median, summarize};
use crate::traffic::IPTABLES_RESTORE;
use lb_agent::k8s::View;
use lb_agent::model::{Incremental, ModelChanges, ThisNode};

/// Full programming time of one fixture, in ms.
#[derive(Clone, Debug)]
pub struct SyncResult {
    /// The fixture.
    pub fixture: Fixture,
    /// lb: one sync pass.
    pub lb: Summary,
    /// iptables-restore.
    pub iptables: Summary,
    /// nft -f.
    pub nftables: Summary,
    /// Map writes of lb's pass.
    pub lb_writes: usize,
    /// Bytes of the iptables-restore input.
    pub iptables_bytes: usize,
    /// Bytes of the nft input.
    pub nft_bytes: usize,
    /// Heap bytes the syncer keeps after the pass (its view of the maps and its ids).
    pub lb_heap: i64,
    /// Heap bytes of the desired services themselves (the model's output).
    pub desired_heap: i64,
}

/// Above this many services, B5 runs one round only, and no nft (kube-proxy's format loads
/// in quadratic time: minutes at 30k services).
pub const BIG: u32 = 10_000;

/// Above this many services × backends, B5 runs no iptables either (the file alone is
/// hundreds of MB).
pub const BIG_RULES: u32 = 100_000;

/// Runs B5: for each fixture, `rounds` rounds of lb, iptables, nftables (one round from
/// `BIG` services; nft not above it).
pub fn programming(fixtures: &[Fixture], rounds: usize) -> anyhow::Result<Vec<SyncResult>> {
    let mut out = Vec::new();
    for &fixture in fixtures {
        eprintln!(
            "lb-bench: programming {} services × {} backends",
            fixture.services, fixture.backends
        );
        let rules = std::env::temp_dir().join(format!("lb-bench-{}.rules", std::process::id()));
        let nft = std::env::temp_dir().join(format!("lb-bench-{}.nft", std::process::id()));
        let rules_text = if fixture.services * fixture.backends <= BIG_RULES {
            fixture.iptables()
        } else {
            String::new()
        };
        let nft_text = if fixture.services <= BIG {
            fixture.nftables()
        } else {
            String::new()
        };
        std::fs::write(&rules, &rules_text)?;
        std::fs::write(&nft, &nft_text)?;
        let (mut lb, mut ipt, mut nf) = (Vec::new(), Vec::new(), Vec::new());
        let mut lb_writes = 0;
        let mut lb_heap = 0;
        let mut desired_heap = 0;
        let rounds = if fixture.services >= BIG { 1 } else { rounds };
        for round in 0..rounds {
            let before = alloc::live_bytes();
            let desired = fixture.desired();
            desired_heap = alloc::live_bytes() - before;
            let mut datapath = LbDatapath::load_sized(&format!("sync{round}"), LB_MAP_MAX_LARGE)?;
            let before = alloc::live_bytes();
            let started = Instant::now();
            let stats = datapath.sync(&desired)?;
            lb.push(vec![started.elapsed().as_secs_f64() * 1e3]);
            lb_heap = alloc::live_bytes() - before;
            lb_writes = stats.writes;
            drop(datapath);

            if fixture.services * fixture.backends <= BIG_RULES {
                let ns = netns::create(&format!("sync-ipt{round}"))?;
                let took = run_timed(&ns, IPTABLES_RESTORE, &[], Some(&rules))?;
                ipt.push(vec![took.as_secs_f64() * 1e3]);
                drop(ns);
            }

            if fixture.services <= BIG {
                let ns = netns::create(&format!("sync-nft{round}"))?;
                let took = run_timed(&ns, "nft", &["-f", &nft.display().to_string()], None)?;
                nf.push(vec![took.as_secs_f64() * 1e3]);
                drop(ns);
            }
        }
        let _ = std::fs::remove_file(&rules);
        let _ = std::fs::remove_file(&nft);
        eprintln!(
            "lb-bench: programming {}×{}: lb {:.1} ms, iptables {:.1} ms, nft {:.1} ms",
            fixture.services,
            fixture.backends,
            summarize(&lb).p50,
            summarize(&ipt).p50,
            summarize(&nf).p50
        );
        out.push(SyncResult {
            fixture,
            lb: summarize(&lb),
            iptables: summarize(&ipt),
            nftables: summarize(&nf),
            lb_writes,
            iptables_bytes: rules_text.len(),
            nft_bytes: nft_text.len(),
            lb_heap,
            desired_heap,
        });
    }
    Ok(out)
}

/// One endpoint change to datapath, in µs.
#[derive(Clone, Debug)]
pub struct ChangeResult {
    /// Services loaded.
    pub services: u32,
    /// lb: from the EndpointSlice event (applied to the source's view) until the incremental
    /// pass has written the maps.
    pub lb_sync: Summary,
    /// lb: from the event until a SYN run through the program is DNATed to the new backend.
    pub lb_visible: Summary,
    /// iptables-restore --noflush of KUBE-SERVICES plus the changed chains.
    pub iptables: Summary,
    /// nft -f of the changed chains.
    pub nftables: Summary,
    /// Map writes of one lb change.
    pub lb_writes: usize,
    /// Profile of one lb change, µs (medians): the event into the view, taking the changed
    /// Service out and recomputing its model.
    pub profile_desired_us: f64,
    /// ... `Syncer::sync_changes`: planning the changed frontend's keys and writing them.
    pub profile_plan_us: f64,
    /// lb: programming the whole fixture from its objects (model and one full pass), ms.
    pub lb_full_ms: f64,
}

fn ip_dst(frame: &[u8]) -> Option<std::net::Ipv4Addr> {
    Some(std::net::Ipv4Addr::new(
        *frame.get(30)?,
        *frame.get(31)?,
        *frame.get(32)?,
        *frame.get(33)?,
    ))
}

/// Runs B6 with `fixture` loaded: `lb_changes` lb changes, and `rule_changes` of each
/// baseline, interleaved.
pub fn endpoint_change(
    fixture: Fixture,
    lb_changes: usize,
    rule_changes: usize,
) -> anyhow::Result<ChangeResult> {
    eprintln!(
        "lb-bench: endpoint change with {} services loaded",
        fixture.services
    );
    let mut datapath = LbDatapath::load_sized("change", LB_MAP_MAX_LARGE)?;
    let mut pipeline = Pipeline::load(fixture)?;
    let all = pipeline.model.services();
    ensure!(
        all.len() == fixture.services as usize
            && all
                .iter()
                .all(|s| s.backends.len() == fixture.backends as usize),
        "the model serves {} of the fixture's {} services",
        all.len(),
        fixture.services
    );
    let started = Instant::now();
    datapath.sync(&all)?;
    let lb_full_ms = started.elapsed().as_secs_f64() * 1e3;
    let baselines = rule_changes > 0;
    let ipt_ns = netns::create("change-ipt")?;
    let nft_ns = netns::create("change-nft")?;
    let base_rules = std::env::temp_dir().join(format!("lb-bench-{}-c.rules", std::process::id()));
    let nft_path = std::env::temp_dir().join(format!("lb-bench-{}-c.nft", std::process::id()));
    if baselines {
        std::fs::write(&base_rules, fixture.iptables())?;
        run_timed(&ipt_ns, IPTABLES_RESTORE, &[], Some(&base_rules))?;
        std::fs::write(&nft_path, fixture.nftables())?;
        run_timed(
            &nft_ns,
            "nft",
            &["-f", &nft_path.display().to_string()],
            None,
        )?;
    }

    let t = fixture.target();
    let vip = Fixture::vip(fixture.target());
    let original = fixture.backend(fixture.target(), 0);
    let spare = fixture.spare_backend(0);
    let (mut lb_sync, mut lb_visible, mut ipt, mut nf) = (vec![], vec![], vec![], vec![]);
    let (mut model_us, mut write_us) = (Vec::new(), Vec::new());
    let mut current = original;
    let mut flow = 0u32;
    let mut lb_writes = 0;
    let per_round = lb_changes.div_ceil(rule_changes.max(1));
    let mut lb_done = 0;
    let mut samples = Vec::new();
    for round in 0..rule_changes.max(1) {
        let mut sync_round = Vec::new();
        let mut visible_round = Vec::new();
        for _ in 0..per_round {
            if lb_done == lb_changes {
                break;
            }
            lb_done += 1;
            let next = if current == original { spare } else { original };
            let mut addresses = fixture.backends_of(t);
            addresses[0] = next;
            // The event as kube-rs hands it over: already deserialized.
            let slice =
                serde_json::from_value(Fixture::slice_object(t, &addresses, lb_done as u64 + 1))?;
            let usage_before = thread_usage();
            let started = Instant::now();
            let changes = pipeline.event(slice);
            let modeled = started.elapsed();
            ensure!(
                changes.upserts.len() == 1,
                "one frontend changes: {changes:?}"
            );
            let stats = datapath
                .syncer
                .sync_changes(&changes.upserts, &changes.removals)
                .map_err(|err| anyhow::anyhow!("{:#}", anyhow::Error::new(err)))?;
            let synced = started.elapsed();
            let usage = thread_usage().since(usage_before);
            samples.push((synced, modeled, usage, sync_round.len()));
            model_us.push(modeled.as_secs_f64() * 1e6);
            write_us.push((synced - modeled).as_secs_f64() * 1e6);
            lb_writes = stats.writes;
            // Poll with fresh tuples until a new flow lands on the new backend.
            loop {
                flow += 1;
                let src = format!(
                    "10.2.{}.{}:{}",
                    flow / 60_000 % 250,
                    1,
                    1024 + flow % 60_000
                );
                let run = datapath.run(&tcp_syn(&src, &format!("{vip}:{SERVICE_PORT}")), 1)?;
                if ip_dst(&run.frame) == Some(next) {
                    break;
                }
                ensure!(
                    started.elapsed().as_secs() < 5,
                    "the change to {next} never reached the datapath"
                );
            }
            visible_round.push(started.elapsed().as_secs_f64() * 1e6);
            sync_round.push(synced.as_secs_f64() * 1e6);
            current = next;
        }
        lb_sync.push(sync_round);
        lb_visible.push(visible_round);
        if rule_changes == 0 {
            continue;
        }
        // The baselines flip the same way, in their own namespaces.
        let (from, to) = if round % 2 == 0 {
            (original, spare)
        } else {
            (spare, original)
        };
        let change = EndpointChange { from, to };
        let path = std::env::temp_dir().join(format!("lb-bench-{}-d.rules", std::process::id()));
        std::fs::write(&path, fixture.iptables_change(change))?;
        let took = run_timed(&ipt_ns, IPTABLES_RESTORE, &["--noflush"], Some(&path))
            .context("iptables endpoint change")?;
        ipt.push(vec![took.as_secs_f64() * 1e6]);
        std::fs::write(&path, fixture.nftables_change(change))?;
        let took = run_timed(&nft_ns, "nft", &["-f", &path.display().to_string()], None)
            .context("nft endpoint change")?;
        nf.push(vec![took.as_secs_f64() * 1e6]);
        let _ = std::fs::remove_file(&path);
    }
    let _ = std::fs::remove_file(&base_rules);
    let _ = std::fs::remove_file(&nft_path);
    report_slowest(&mut samples);
    Ok(ChangeResult {
        profile_desired_us: median(&model_us),
        profile_plan_us: median(&write_us),
        lb_full_ms,
        services: fixture.services,
        lb_sync: summarize(&lb_sync),
        lb_visible: summarize(&lb_visible),
        iptables: summarize(&ipt),
        nftables: summarize(&nf),
        lb_writes,
    })
}

/// The agent's path from objects to desired services: the source's view and the
/// incremental model, fed the fixture's Services and EndpointSlices.
struct Pipeline {
    view: View,
    model: Incremental,
    node: ThisNode,
}

impl Pipeline {
    /// The fixture's objects, listed into a view and modelled once.
    fn load(fixture: Fixture) -> anyhow::Result<Self> {
        let mut services: Vec<k8s_openapi::api::core::v1::Service> =
            Vec::with_capacity(fixture.services as usize);
        let mut slices: Vec<k8s_openapi::api::discovery::v1::EndpointSlice> =
            Vec::with_capacity(fixture.services as usize);
        for i in 0..fixture.services {
            services.push(serde_json::from_value(Fixture::service_object(i))?);
            slices.push(serde_json::from_value(Fixture::slice_object(
                i,
                &fixture.backends_of(i),
                0,
            ))?);
        }
        let view = View::default();
        view.update(|objects| objects.replace_services(services) | objects.replace_slices(slices));
        view.set_synced();
        let mut pipeline = Self {
            view,
            model: Incremental::default(),
            node: ThisNode::named("bench"),
        };
        pipeline.take();
        Ok(pipeline)
    }

    /// One EndpointSlice event through the view and the model, as the agent's feed runs it.
    fn event(&mut self, slice: k8s_openapi::api::discovery::v1::EndpointSlice) -> ModelChanges {
        self.view.update(|objects| objects.apply_slice(slice));
        self.take()
    }

    fn take(&mut self) -> ModelChanges {
        let changes = self.view.take_changes().unwrap_or_default();
        self.model.update(
            changes.services.iter().map(|(name, _, objects)| {
                (
                    (name.namespace.clone(), name.name.clone()),
                    objects.snapshot(),
                )
            }),
            &self.node,
        )
    }
}

/// B7: the maps' memory as the kernel accounts it, for the bench's map sizes.
#[derive(Clone, Debug)]
pub struct MapMemory {
    /// (map name, bytes_memlock, max_entries).
    pub maps: Vec<(String, u64, u64)>,
}

/// Loads a datapath and reads `bytes_memlock` of every map.
pub fn map_memory() -> anyhow::Result<MapMemory> {
    let datapath = LbDatapath::load("memlock")?;
    Ok(MapMemory {
        maps: datapath.memlock()?,
    })
}

/// B9: what Maglev tables cost the agent, for one fixture with every service on Maglev.
#[derive(Clone, Debug)]
pub struct MaglevResult {
    /// The fixture.
    pub fixture: Fixture,
    /// M.
    pub table_size: u32,
    /// Building every table once (`sync::maglev::table`, what a full pass builds), ms.
    pub build_ms: f64,
    /// Extra heap the sync state keeps per service for Maglev (its `MaglevSpec`), bytes: the
    /// desired content with Maglev minus the same with random selection, per service.
    pub kept_per_service: f64,
    /// Heap of one built table (as written, then freed), bytes.
    pub table_bytes: i64,
    /// One sync pass into the kernel of `kernel_services` of these services, ms.
    pub kernel_sync_ms: f64,
    /// Services in that pass.
    pub kernel_services: u32,
    /// Map writes of that pass.
    pub kernel_writes: usize,
}

/// Runs B9: tables for `fixture` built in the agent (pure, no kernel), then a kernel sync pass
/// of `kernel_services` of them (each table is 4·M bytes of `LB4_MAGLEV`, so the kernel pass is
/// kept smaller than the build).
pub fn maglev_tables(fixture: Fixture, kernel_services: u32) -> anyhow::Result<MaglevResult> {
    use lb_agent::{
        model::LbAlgorithm,
        sync::{desired, ids::Ids, maglev},
    };
    eprintln!(
        "lb-bench: Maglev tables for {} services × {} backends",
        fixture.services, fixture.backends
    );
    let settings = maglev::Settings {
        default: LbAlgorithm::Maglev,
        ..maglev::Settings::default()
    };
    let services = fixture.desired();
    let before = alloc::live_bytes();
    let random = desired::desired_content(&services, &mut Ids::default())?;
    let random_heap = alloc::live_bytes() - before;
    drop(random);
    let before = alloc::live_bytes();
    let content = desired::desired_content_with(&services, &mut Ids::default(), &settings)?;
    let maglev_heap = alloc::live_bytes() - before;
    ensure!(
        content.maglev.len() == services.len(),
        "every service has a table"
    );
    let started = Instant::now();
    let mut table_bytes = 0;
    for spec in content.maglev.values() {
        let before = alloc::live_bytes();
        let table = maglev::table(spec);
        table_bytes = alloc::live_bytes() - before;
        ensure!(table.len() == spec.size as usize, "a full table");
    }
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(content);

    let some = Fixture {
        services: kernel_services.min(fixture.services),
        ..fixture
    };
    let mut datapath = LbDatapath::load("maglev")?;
    let mut desired = some.desired();
    for service in &mut desired {
        service.algorithm = Some(LbAlgorithm::Maglev);
    }
    let started = Instant::now();
    let stats = datapath.sync(&desired)?;
    let kernel_sync_ms = started.elapsed().as_secs_f64() * 1e3;
    drop(datapath);
    let result = MaglevResult {
        fixture,
        table_size: settings.table_size,
        build_ms,
        kept_per_service: (maglev_heap - random_heap) as f64 / f64::from(fixture.services),
        table_bytes,
        kernel_sync_ms,
        kernel_services: some.services,
        kernel_writes: stats.writes,
    };
    eprintln!("lb-bench: {result:?}");
    Ok(result)
}

/// What the kernel counted for this thread: involuntary context switches (preemptions) and
/// page faults.
#[derive(Clone, Copy, Debug, Default)]
struct ThreadUsage {
    preempted: i64,
    minor_faults: i64,
    major_faults: i64,
}

impl ThreadUsage {
    fn since(self, before: Self) -> Self {
        Self {
            preempted: self.preempted - before.preempted,
            minor_faults: self.minor_faults - before.minor_faults,
            major_faults: self.major_faults - before.major_faults,
        }
    }
}

fn thread_usage() -> ThreadUsage {
    // SAFETY: getrusage writes only the zeroed struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
        usage
    };
    ThreadUsage {
        preempted: usage.ru_nivcsw,
        minor_faults: usage.ru_minflt,
        major_faults: usage.ru_majflt,
    }
}

/// Prints the slowest endpoint changes (event to maps written) with what the kernel counted
/// during each: a preemption or page faults explain a stall that the code does not.
/// Each sample's position in its round: the first one follows the baselines' rule loads.
fn report_slowest(samples: &mut [(Duration, Duration, ThreadUsage, usize)]) {
    samples.sort_by_key(|(synced, ..)| std::cmp::Reverse(*synced));
    let preempted = samples
        .iter()
        .filter(|(_, _, usage, _)| usage.preempted > 0)
        .count();
    eprintln!(
        "lb-bench:   {preempted} of {} changes preempted during the sync step; the slowest:",
        samples.len()
    );
    for (synced, modeled, usage, position) in samples.iter().take(5) {
        eprintln!(
            "lb-bench:     {:>7.0} µs (model {:>6.0} µs, sync_changes {:>6.0} µs): change {} of its round, preempted {}, page faults {} minor {} major",
            synced.as_secs_f64() * 1e6,
            modeled.as_secs_f64() * 1e6,
            (*synced - *modeled).as_secs_f64() * 1e6,
            position + 1,
            usage.preempted,
            usage.minor_faults,
            usage.major_faults
        );
    }
}
