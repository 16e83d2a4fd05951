//! `--source kube` against a fake API server on 127.0.0.1 (`lb_tests::kube_api`): nothing is
//! published before both caches synced, LIST errors back off without ending the source, watch
//! events and bookmarks stream, and a 410 Gone mid-stream relists so that a deletion missed
//! while disconnected is applied.

use std::sync::Arc;
use std::time::Duration;

use lb_agent::k8s::{LABEL_SELECTOR, Snapshot, run_kube};
use lb_agent::model::{ThisNode, desired_services};
use lb_tests::kube_api::{FakeApiServer, Kind, Stats};
use lb_tests::source::{Running, names};
use serde_json::{Value, json};

/// How long the fake API server may take to see a request.
const DEADLINE: Duration = lb_testkit::patience::SETTLE_WITHIN;

fn testdata(case: &str, file: &str) -> Vec<Value> {
    let path = format!("{}/testdata/{case}/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    yaml_docs(&text)
}

/// YAML documents as JSON values (the fake server stores JSON).
fn yaml_docs(text: &str) -> Vec<Value> {
    lb_agent::k8s::yaml_documents(text).expect("fixture parses")
}

fn load(server: &FakeApiServer, case: &str) {
    for object in testdata(case, "service.yaml")
        .into_iter()
        .chain(testdata(case, "endpointslice.yaml"))
    {
        server.apply(object);
    }
}

/// Waits until the source has synced and its view satisfies `pred`.
async fn snapshot_where(
    source: &mut Running,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Arc<Snapshot> {
    source.snapshot_where(what, pred).await.0
}

fn start(server: &FakeApiServer) -> Running {
    start_on(server, None)
}

/// The source, watching the Node `node` for its zone when given.
fn start_on(server: &FakeApiServer, node: Option<&'static str>) -> Running {
    let client = server
        .client()
        .expect("kube client for the fake API server");
    Running::spawn(|view, shutdown| run_kube(client, node, view, shutdown))
}

fn opted_out_service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "other-proxy", "namespace": "shop",
                        "labels": {"service.kubernetes.io/service-proxy-name": "someone-else"}},
           "spec": {"clusterIP": "10.96.99.99", "clusterIPs": ["10.96.99.99"], "ports": [{"port": 80, "protocol": "TCP"}]}})
}

#[tokio::test]
async fn nothing_is_published_until_both_caches_synced_and_list_errors_back_off() {
    let server = FakeApiServer::start().await.expect("start fake API server");
    load(&server, "a-checkout-two-slices");
    server.apply(opted_out_service());
    server.fail_next_lists(Kind::EndpointSlice, 2);
    let mut source = start(&server);

    // Services have listed and are being watched (bookmarks flowing), while EndpointSlice
    // LISTs have failed twice: the source must still publish nothing.
    server
        .until(
            Kind::Service,
            "Services watched with a bookmark",
            DEADLINE,
            |s| s.lists == 1 && s.bookmarks >= 1,
        )
        .await;
    server
        .until(
            Kind::EndpointSlice,
            "two failed slice LISTs",
            DEADLINE,
            |s| s.failed_lists == 2,
        )
        .await;
    assert!(
        !source.view.is_synced(),
        "synced before EndpointSlices were listed"
    );

    let snapshot = snapshot_where(&mut source, "the first snapshot", |_| true).await;
    assert_eq!(
        names(&snapshot),
        (
            vec!["shop/checkout".to_owned()],
            vec![
                "shop/checkout-7x2kq".to_owned(),
                "shop/checkout-p9f4d".to_owned()
            ]
        ),
        "the opted-out Service is filtered by the server-side selector"
    );
    let slices = server.stats(Kind::EndpointSlice);
    assert_eq!(
        (slices.failed_lists, slices.lists),
        (2, 1),
        "the source retried after errors"
    );

    // What kube-rs asked for: the selector on every request, bookmarks on every watch. The
    // view is synced at the list's end, possibly before the watch request goes out.
    for kind in [Kind::Service, Kind::EndpointSlice] {
        server
            .until(kind, "a watch request", DEADLINE, |s| {
                s.queries.iter().any(|q| q.contains("watch=true"))
            })
            .await;
        let Stats {
            queries,
            label_selectors,
            ..
        } = server.stats(kind);
        assert!(
            label_selectors.iter().all(|s| s == LABEL_SELECTOR),
            "{kind:?}: {label_selectors:?}"
        );
        let watches: Vec<_> = queries
            .iter()
            .filter(|q| q.contains("watch=true"))
            .collect();
        assert!(!watches.is_empty(), "{kind:?} watched");
        assert!(
            watches
                .iter()
                .all(|q| q.contains("allowWatchBookmarks=true") && q.contains("resourceVersion="))
        );
    }
    assert!(
        server.unknown_requests().is_empty(),
        "unexpected requests: {:?}",
        server.unknown_requests()
    );

    let desired = desired_services(&snapshot, &ThisNode::named("worker-a1"));
    let vips: Vec<String> = desired.iter().map(|d| d.frontend.to_string()).collect();
    assert_eq!(vips, ["10.96.41.17:80/TCP", "10.96.41.17:9102/TCP"]);
    source.stop().await;
}

#[tokio::test]
async fn a_deletion_missed_while_disconnected_is_applied_after_the_410_relist() {
    let server = FakeApiServer::start().await.expect("start fake API server");
    load(&server, "a-checkout-two-slices");
    load(&server, "b-ledger-terminating");
    let mut source = start(&server);
    snapshot_where(&mut source, "both services", |s| {
        s.services.len() == 2 && s.slices.len() == 3
    })
    .await;

    // A live change arrives as a watch event, without a relist.
    server.delete(Kind::EndpointSlice, "shop", "checkout-7x2kq");
    let snapshot = snapshot_where(&mut source, "the slice deletion", |s| s.slices.len() == 2).await;
    let desired = desired_services(&snapshot, &ThisNode::named("worker-a1"));
    let http = desired
        .iter()
        .find(|d| d.frontend.to_string() == "10.96.41.17:80/TCP")
        .expect("checkout:http");
    let checkout: Vec<String> = http
        .backends
        .iter()
        .map(|b| format!("{}:{}", b.addr, b.port))
        .collect();
    assert_eq!(
        checkout,
        ["10.244.3.9:8081"],
        "deleting checkout-7x2kq leaves only 10.244.3.9"
    );
    assert_eq!(
        server.stats(Kind::EndpointSlice).lists,
        1,
        "a watch event, not a relist"
    );
    server
        .until(Kind::Service, "a Service bookmark", DEADLINE, |s| {
            s.bookmarks >= 1
        })
        .await;

    // Cut the Services watch off, delete `ledger` and add `late` meanwhile, then compact the
    // history: the open watch gets ERROR 410 Expired and the client must relist.
    server.partition(Kind::Service);
    server.delete(Kind::Service, "payments", "ledger");
    let mut late = opted_out_service();
    late["metadata"] = json!({"name": "late", "namespace": "shop"});
    late["spec"]["clusterIP"] = json!("10.96.50.50");
    late["spec"]["clusterIPs"] = json!(["10.96.50.50"]);
    server.apply(late);
    assert_eq!(source.view.len().0, 2, "nothing delivered while cut off");
    server.expire(Kind::Service);

    let snapshot = snapshot_where(&mut source, "the relisted view", |s| {
        names(s).0 == ["shop/checkout".to_owned(), "shop/late".to_owned()]
    })
    .await;
    let services = server.stats(Kind::Service);
    assert!(services.expired >= 1, "a 410 was sent: {services:?}");
    assert_eq!(services.lists, 2, "the 410 forced exactly one relist");
    assert!(
        !services
            .delivered
            .iter()
            .any(|e| e.contains("payments/ledger") && e.starts_with("DELETED")),
        "the deletion was never delivered as an event: {:?}",
        services.delivered
    );
    assert_eq!(
        snapshot.slices.len(),
        2,
        "EndpointSlices were untouched by the Services relist"
    );
    assert_eq!(server.stats(Kind::EndpointSlice).lists, 1);

    // After the relist the watch resumes: a later change streams in again.
    server.delete(Kind::Service, "shop", "late");
    snapshot_where(&mut source, "a change after the relist", |s| {
        s.services.len() == 1
    })
    .await;
    assert!(
        server.unknown_requests().is_empty(),
        "unexpected requests: {:?}",
        server.unknown_requests()
    );
    source.stop().await;
}

/// A Node `name` labelled with `zone`.
fn node(name: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}})
}

#[tokio::test]
async fn this_nodes_zone_label_reaches_the_snapshot_through_a_watch_on_it_alone() {
    let server = FakeApiServer::start().await.expect("start fake API server");
    load(&server, "a-checkout-two-slices");
    server.apply(node("node-2", "zone-b"));
    server.apply(node("node-1", "zone-a"));
    let mut source = start_on(&server, Some("node-1"));
    snapshot_where(&mut source, "node-1's zone", |s| {
        s.node_zone.as_deref() == Some("zone-a")
    })
    .await;
    source.view.take_changes().expect("synced");

    // Relabelled: the next snapshot carries the new zone (and the model uses it).
    server.apply(node("node-1", "zone-c"));
    let snapshot = snapshot_where(&mut source, "the new zone", |s| {
        s.node_zone.as_deref() == Some("zone-c")
    })
    .await;
    assert_eq!(snapshot.services.len(), 1, "Services unchanged");
    // Zone hints select every Service's endpoints: each one is recomputed, with the new zone.
    let changes = source.view.take_changes().expect("synced");
    let changed: Vec<_> = changes
        .services
        .iter()
        .map(|(name, _, objects)| {
            (
                format!("{}/{}", name.namespace, name.name),
                objects.node_zone.clone(),
            )
        })
        .collect();
    assert_eq!(
        changed,
        vec![("shop/checkout".to_owned(), Some("zone-c".to_owned()))]
    );

    // kube-proxy's watch: this node only, by field selector, on every LIST and WATCH.
    let Stats { queries, .. } = server.stats(Kind::Node);
    assert!(!queries.is_empty());
    assert!(
        queries
            .iter()
            .all(|q| q.contains("fieldSelector=metadata.name%3Dnode-1")),
        "{queries:?}"
    );
    assert!(
        server.unknown_requests().is_empty(),
        "unexpected requests: {:?}",
        server.unknown_requests()
    );
    source.stop().await;
}
