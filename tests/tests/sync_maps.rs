//! The agent's sync against the kernel's maps: `sync::Syncer` over `datapath::maps::AyaMaps`
//! (batch writes), loaded exactly as lb-agent loads them. What the maps hold is compared whole,
//! as `datapath::dump::render` prints it; a full map is a clear error that loses nothing.
use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use lb_agent::{
    datapath::{self, BackendId, Datapath, LbMaps as _, LoadOptions, dump},
    sync::{Syncer, plan},
};
use lb_common::config::DatapathConfig;
use lb_tests::fixture::{ServiceExt as _, service};

/// A bpf root removed (maps unpinned) on drop.
struct BpfRoot(PathBuf);

impl BpfRoot {
    fn new(test: &str) -> Self {
        lb_testkit::ensure_bpffs().expect("mount bpffs");
        Self(PathBuf::from(format!(
            "/sys/fs/bpf/lb-sync-{test}-{}",
            std::process::id()
        )))
    }
}

impl Drop for BpfRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(root: &BpfRoot, lb_map_max: u32) -> Arc<Mutex<datapath::maps::AyaMaps>> {
    let options = LoadOptions {
        bpf_root: root.0.clone(),
        ct_max_entries: 1024,
        ct_any_max_entries: 1024,
        lb_map_max,
        config: DatapathConfig::default(),
    };
    let Datapath { maps, .. } = Datapath::load(&options).expect("load lb-ebpf");
    Arc::new(Mutex::new(maps))
}

fn rendered(maps: &Mutex<datapath::maps::AyaMaps>) -> String {
    dump::render(&maps.lock().expect("maps lock").read().expect("read maps"))
}

#[test]
fn sync_programs_scales_and_empties_the_kernel_maps_exactly() {
    let root = BpfRoot::new("exact");
    let maps = load(&root, 1024);
    let mut syncer = Syncer::new(maps.clone()).expect("restore ids");

    syncer
        .sync(&[service(
            "10.96.0.10:80/TCP",
            &["10.244.1.5:8080", "10.244.1.6:8080"],
        )])
        .expect("first sync");
    assert_eq!(
        rendered(&maps),
        "BE 1 10.244.1.5:8080/TCP state=active flags=0x0\n\
         BE 2 10.244.1.6:8080/TCP state=active flags=0x0\n\
         REV 1 10.96.0.10:80\n\
         SVC 10.96.0.10:80/TCP slot=0 id=1 count=2 qcount=0 flags=0x1\n\
         SVC 10.96.0.10:80/TCP slot=1 backend=1\n\
         SVC 10.96.0.10:80/TCP slot=2 backend=2\n\
         VIP 10.96.0.10\n"
    );

    // .5 terminates, .7 arrives: the active ones take the first slots, .5 drains in qcount.
    syncer
        .sync(&[
            service("10.96.0.10:80/TCP", &["10.244.1.6:8080", "10.244.1.7:8080"])
                .terminating(&["10.244.1.5:8080"]),
        ])
        .expect("second sync");
    assert_eq!(
        rendered(&maps),
        "BE 1 10.244.1.5:8080/TCP state=terminating flags=0x0\n\
         BE 2 10.244.1.6:8080/TCP state=active flags=0x0\n\
         BE 3 10.244.1.7:8080/TCP state=active flags=0x0\n\
         REV 1 10.96.0.10:80\n\
         SVC 10.96.0.10:80/TCP slot=0 id=1 count=2 qcount=1 flags=0x1\n\
         SVC 10.96.0.10:80/TCP slot=1 backend=2\n\
         SVC 10.96.0.10:80/TCP slot=2 backend=3\n\
         SVC 10.96.0.10:80/TCP slot=3 backend=1\n\
         VIP 10.96.0.10\n"
    );

    // Someone else deleted an entry the syncer believes is there: the next pass still
    // converges (a batch delete that meets a missing key finishes one by one).
    {
        let mut guard = maps.lock().expect("maps lock");
        guard
            .delete_backend(BackendId(1))
            .expect("delete behind the syncer's back");
    }
    syncer.sync(&[]).expect("empty sync");
    assert_eq!(
        rendered(&maps),
        "",
        "every entry is gone once every service is"
    );
}

#[test]
fn a_full_map_is_a_clear_error_and_the_last_good_state_stays_programmed() {
    let root = BpfRoot::new("full");
    // Room for one frontend with two backends (master, wildcard, 2 slots), not for a second.
    let maps = load(&root, 4);
    let mut syncer = Syncer::new(maps.clone()).expect("restore ids");
    let first = service("10.96.0.10:80/TCP", &["10.244.1.5:8080", "10.244.1.6:8080"]);
    syncer
        .sync(std::slice::from_ref(&first))
        .expect("first sync fits");
    let good = rendered(&maps);

    let second = service("10.96.0.11:80/TCP", &["10.244.2.5:8080"]);
    let err = syncer
        .sync(&[first.clone(), second])
        .expect_err("the services map is full");
    let message = format!("{:#}", anyhow::Error::from(err));
    assert!(
        message.contains("LB4_SERVICES") && message.contains("bpf-lb-map-max"),
        "{message}"
    );

    let content = maps.lock().expect("maps lock").read().expect("read maps");
    plan::check_consistent(&content).expect("no slot points nowhere after the failure");
    for line in good.lines() {
        assert!(
            rendered(&maps).contains(line),
            "the first service is still programmed: {line}"
        );
    }
    // Once the excess goes away, the next pass converges back to exactly the good state.
    syncer
        .sync(std::slice::from_ref(&first))
        .expect("sync after the failure");
    assert_eq!(rendered(&maps), good);
}
