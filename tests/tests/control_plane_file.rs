//! `--source file:DIR` end to end through `run_source`: YAML written into a directory becomes
//! the source's view; an edit is live within a second; a malformed file is named in a warning and its
//! last good objects stay; a deleted file takes its objects with it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use lb_agent::k8s::{Snapshot, SourceSpec, View, malformed_objects_total, run_source};
use lb_agent::model::{ThisNode, desired_services};
use lb_tests::source::Running;
use tokio_util::sync::CancellationToken;

/// How long a log line may take to appear.
const DEADLINE: Duration = lb_testkit::patience::SETTLE_WITHIN;

/// Every log line of this test binary (tests run in parallel; each greps for its own files).
fn logs() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(buffer))
            .init();
        buffer
    })
}

struct LogWriter(&'static Mutex<Vec<u8>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines_mentioning(needle: &str) -> Vec<String> {
    let logs = logs().lock().unwrap_or_else(|p| p.into_inner());
    String::from_utf8_lossy(&logs)
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_owned)
        .collect()
}

async fn until_logged(needle: &str, also: &str) -> String {
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(line) = log_lines_mentioning(needle)
            .into_iter()
            .find(|l| l.contains(also))
        {
            return line;
        }
        assert!(
            Instant::now() < end,
            "no log line with {needle:?} and {also:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn testdata(case: &str, file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(case)
        .join(file)
}

fn start(dir: &Path) -> Running {
    logs();
    let dir = dir.to_owned();
    Running::spawn(|view, shutdown| {
        run_source(SourceSpec::File(dir), "node".to_owned(), view, shutdown)
    })
}

fn backends(snapshot: &Snapshot, frontend: &str) -> Vec<String> {
    desired_services(snapshot, &ThisNode::named("worker-a1"))
        .into_iter()
        .find(|d| d.frontend.to_string() == frontend)
        .map(|d| {
            d.backends
                .iter()
                .map(|b| format!("{}:{}", b.addr, b.port))
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces a file the way editors and `kubectl get > file` do: a new file renamed over it.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp-partial");
    std::fs::write(&tmp, text).expect("write temp file");
    std::fs::rename(&tmp, path).expect("rename over");
}

#[tokio::test]
async fn written_edited_malformed_and_deleted_files_drive_the_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let service = dir.path().join("service.yaml");
    let slices = dir.path().join("endpointslice.yaml");
    std::fs::copy(testdata("a-checkout-two-slices", "service.yaml"), &service).expect("copy");
    std::fs::copy(
        testdata("a-checkout-two-slices", "endpointslice.yaml"),
        &slices,
    )
    .expect("copy");
    let mut source = start(dir.path());
    // Every snapshot published, to show below that a malformed file never loses the Service.
    let published_services = Arc::new(Mutex::new(Vec::new()));
    let recorder = {
        let (view, seen) = (source.view.clone(), published_services.clone());
        let mut versions = view.subscribe();
        tokio::spawn(async move {
            while versions.changed().await.is_ok() {
                let services = view.is_synced().then(|| view.snapshot().services.len());
                seen.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(services);
            }
        })
    };

    // Written → the fixture's backends.
    let (snapshot, _) = source
        .snapshot_where("fixture A", |s| {
            s.services.len() == 1 && s.slices.len() == 2
        })
        .await;
    assert_eq!(
        backends(&snapshot, "10.96.41.17:80/TCP"),
        ["10.244.1.23:8080", "10.244.2.41:8080", "10.244.3.9:8081"]
    );

    // Edited (checkout-7x2kq dropped from the file) → live within a second.
    let text = std::fs::read_to_string(&slices).expect("read");
    let second = text
        .split("---\n")
        .nth(1)
        .expect("fixture A has two slices")
        .to_owned();
    write_atomically(&slices, &second);
    let (snapshot, took) = source
        .snapshot_where("the edit", |s| s.slices.len() == 1)
        .await;
    assert!(took < Duration::from_secs(1), "edit took {took:?}");
    assert_eq!(
        backends(&snapshot, "10.96.41.17:80/TCP"),
        ["10.244.3.9:8081"]
    );

    // Malformed → a warning naming the file; the last good objects stay.
    let before = malformed_objects_total();
    let published = source.view.snapshot();
    write_atomically(
        &service,
        "apiVersion: v1\nkind: Service\nmetadata: {name: checkout\n",
    );
    let line = until_logged(&service.display().to_string(), "malformed").await;
    assert!(line.contains("WARN"), "{line}");
    assert!(malformed_objects_total() > before);
    assert_eq!(source.view.snapshot(), published, "nothing lost");

    // A malformed object inside a good file names the object too.
    let bad_object = std::fs::read_to_string(testdata("a-checkout-two-slices", "service.yaml"))
        .expect("read")
        .replace("port: 9102\n    protocol", "port: nine\n    protocol");
    write_atomically(&service, &bad_object);
    let line = until_logged(&service.display().to_string(), "Service shop/checkout").await;
    assert!(
        line.contains("WARN") && line.contains("malformed object"),
        "{line}"
    );
    assert_eq!(
        source.view.snapshot(),
        published,
        "the last good Service is kept"
    );

    // Fixed → the service's new content is published.
    let fixed = bad_object.replace("port: nine", "port: 9103");
    write_atomically(&service, &fixed);
    let (snapshot, _) = source
        .snapshot_where("the fix", |s| {
            !backends(s, "10.96.41.17:9103/TCP").is_empty()
        })
        .await;
    assert!(backends(&snapshot, "10.96.41.17:9102/TCP").is_empty());
    let seen = published_services
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    assert!(
        seen.len() >= 3 && seen.iter().all(|n| *n == 1),
        "every published snapshot kept the Service: {seen:?}"
    );
    recorder.abort();

    // Deleted → its objects are gone.
    std::fs::remove_file(&slices).expect("rm");
    let (snapshot, took) = source
        .snapshot_where("the deletion", |s| s.slices.is_empty())
        .await;
    assert!(took < Duration::from_secs(1), "deletion took {took:?}");
    assert_eq!(snapshot.services.len(), 1);
    assert!(backends(&snapshot, "10.96.41.17:80/TCP").is_empty());
    source.stop().await;
}

#[tokio::test]
async fn kind_list_json_and_other_kinds_in_one_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `kubectl get svc,endpointslices -o yaml` prints one `kind: List`.
    let mut list =
        String::from("apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n");
    for file in ["service.yaml", "endpointslice.yaml"] {
        let text = std::fs::read_to_string(testdata("b-ledger-terminating", file)).expect("read");
        for doc in text.split("---\n") {
            let indented: Vec<String> = doc.lines().map(|l| format!("  {l}")).collect();
            list += &format!("- {}\n", indented.join("\n").trim_start());
        }
    }
    std::fs::write(dir.path().join("ledger.yaml"), list).expect("write");
    std::fs::write(
        dir.path().join("api.json"),
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"api","namespace":"edge"},
            "spec":{"clusterIP":"10.96.88.5","clusterIPs":["10.96.88.5"],"ports":[{"port":443,"protocol":"TCP"}]}}"#,
    )
    .expect("write");
    std::fs::write(
        dir.path().join("cm.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata: {}\n",
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not an object").expect("write");
    let mut source = start(dir.path());
    let (snapshot, _) = source
        .snapshot_where("the directory", |s| s.services.len() == 2)
        .await;
    assert_eq!(snapshot.slices.len(), 1);
    assert_eq!(
        backends(&snapshot, "10.96.7.200:5432/TCP"),
        ["10.244.1.50:5432", "10.244.2.60:5432"]
    );
    assert!(backends(&snapshot, "10.96.88.5:443/TCP").is_empty());
    source.stop().await;
}

#[tokio::test]
async fn an_empty_directory_is_an_empty_snapshot_and_a_missing_one_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut source = start(dir.path());
    let (snapshot, _) = source.snapshot_where("an empty snapshot", |_| true).await;
    assert_eq!(*snapshot, Snapshot::default());
    source.stop().await;

    let missing = dir.path().join("nope");
    let err = run_source(
        SourceSpec::File(missing.clone()),
        "node".to_owned(),
        View::default(),
        CancellationToken::new(),
    )
    .await
    .expect_err("missing directory");
    assert_eq!(
        err.to_string(),
        format!(
            "source directory `{}` does not exist; create it or fix --source",
            missing.display()
        )
    );
}
