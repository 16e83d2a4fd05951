//! `--source file:DIR`: Services and EndpointSlices from a directory, as `kubectl get -o yaml`
//! prints them (single documents, `---` multi-document files, `kind: List`; `.json` too).
//!
//! The directory is polled every [`POLL`]: a file whose mtime, size or inode changed is
//! re-read, a deleted file takes its objects with it. Polling (not inotify) also sees the
//! symlink swap a mounted ConfigMap does. A malformed file or object is logged with a warning
//! naming it, counted, and the file's last good objects are kept. Other kinds are ignored.
//! Objects written without a namespace are in `default`, as kubectl would put them. Each scan
//! that saw a change replaces the view's objects, which marks only the Services that differ.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::Value;
use tokio::time::{MissedTickBehavior, interval};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Cached, Error, View, count_malformed};

/// How often the directory is scanned; a change is live well within a second.
pub const POLL: Duration = Duration::from_millis(200);

/// Scans `dir` until `shutdown`; see the module docs.
pub(super) async fn run(
    dir: PathBuf,
    view: &View,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let mut source = DirSource::new(dir.clone());
    let mut first = true;
    let mut dir_error = false;
    let mut ticks = interval(POLL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = ticks.tick() => {}
        }
        let scan = tokio::task::spawn_blocking(move || {
            let result = source.scan();
            (source, result)
        });
        let (scanned, result) = scan.await.map_err(|source| Error::ScanTask {
            dir: dir.clone(),
            source,
        })?;
        source = scanned;
        match result {
            Ok(changed) => {
                super::source_ok();
                if dir_error {
                    info!(dir = %dir.display(), "source directory readable again");
                    dir_error = false;
                }
                if changed || first {
                    let (services, slices) = source.objects();
                    let (n_services, n_slices) = (services.len(), slices.len());
                    // Both kinds at once; only the Services whose objects differ are marked.
                    let marked = view.update(|objects| {
                        objects.replace_services(services) | objects.replace_slices(slices)
                    });
                    if marked || first {
                        info!(dir = %dir.display(), services = n_services, slices = n_slices, "read source directory");
                    }
                    view.set_synced();
                }
                first = false;
            }
            Err(err) if first => {
                return Err(match err.kind() {
                    std::io::ErrorKind::NotFound => Error::DirMissing { dir },
                    _ => Error::DirRead { dir, source: err },
                });
            }
            // Keep the last good view: a directory that vanishes for a moment (a remount)
            // must not unprogram every service.
            Err(err) => {
                super::source_error(format!("cannot read {}: {err}", dir.display()));
                if !dir_error {
                    warn!(dir = %dir.display(), error = %err, "cannot read source directory; keeping the last objects read");
                    dir_error = true;
                }
            }
        }
    }
}

/// Identifies an object across re-reads: kind, namespace, name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ObjectId {
    kind: &'static str,
    namespace: String,
    name: String,
}

impl std::fmt::Display for ObjectId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A cached object, shared with the view.
type Shared<K> = Arc<Cached<K>>;

/// One object lb cares about.
#[derive(Clone, Debug, PartialEq)]
enum Object {
    Service(Shared<Service>),
    Slice(Shared<EndpointSlice>),
}

/// What a file looked like when last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

/// A file's last good objects.
struct FileEntry {
    stamp: Stamp,
    objects: Vec<(ObjectId, Object)>,
}

/// The directory's files and their last good objects.
struct DirSource {
    dir: PathBuf,
    files: BTreeMap<PathBuf, FileEntry>,
}

impl DirSource {
    fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            files: BTreeMap::new(),
        }
    }

    /// Re-reads changed files and forgets deleted ones; true when anything changed.
    fn scan(&mut self) -> std::io::Result<bool> {
        let mut present = BTreeMap::new();
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            if !is_object_file(&path) {
                continue;
            }
            // metadata() follows symlinks, so a ConfigMap's `..data` swap changes the stamp.
            let Ok(meta) = fs::metadata(&path) else {
                continue;
            };
            if meta.is_file() {
                let stamp = Stamp {
                    modified: meta.modified().ok(),
                    len: meta.len(),
                    inode: meta.ino(),
                };
                present.insert(path, stamp);
            }
        }

        let mut changed = false;
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains_key(*p))
            .cloned()
            .collect();
        for path in gone {
            info!(file = %path.display(), "source file removed");
            self.files.remove(&path);
            changed = true;
        }
        for (path, stamp) in present {
            if self.files.get(&path).is_some_and(|f| f.stamp == stamp) {
                continue;
            }
            let previous = self
                .files
                .get(&path)
                .map(|f| f.objects.as_slice())
                .unwrap_or_default();
            let objects = read_file(&path, previous);
            let entry = FileEntry { stamp, objects };
            changed |= self
                .files
                .get(&path)
                .is_none_or(|f| f.objects != entry.objects);
            self.files.insert(path, entry);
        }
        Ok(changed)
    }

    /// Every object from every file (shared, not copied); an object defined twice is taken
    /// from the first file by name.
    fn objects(&self) -> (Vec<Shared<Service>>, Vec<Shared<EndpointSlice>>) {
        let mut seen: BTreeMap<&ObjectId, &Path> = BTreeMap::new();
        let (mut services, mut slices) = (Vec::new(), Vec::new());
        for (path, file) in &self.files {
            for (id, object) in &file.objects {
                if let Some(first) = seen.get(id) {
                    warn!(file = %path.display(), object = %id, first = %first.display(), "skipping object defined in two files");
                    continue;
                }
                seen.insert(id, path);
                match object {
                    Object::Service(s) => services.push(s.clone()),
                    Object::Slice(s) => slices.push(s.clone()),
                }
            }
        }
        (services, slices)
    }
}

/// Regular, visible `.yaml`, `.yml` or `.json` files; editors' and ConfigMaps' dotfiles are not.
fn is_object_file(path: &Path) -> bool {
    let visible = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.'));
    let ext = path.extension().and_then(|e| e.to_str());
    visible && matches!(ext, Some("yaml" | "yml" | "json"))
}

/// Reads a file's objects. A file that cannot be read or parsed keeps `previous` whole; a
/// malformed object keeps its previous copy, if it had one.
fn read_file(path: &Path, previous: &[(ObjectId, Object)]) -> Vec<(ObjectId, Object)> {
    let documents = fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| documents(path, &text));
    let documents = match documents {
        Ok(documents) => documents,
        Err(error) => {
            count_malformed();
            warn!(file = %path.display(), error = %error, "skipping malformed file; keeping its last good objects");
            return previous.to_vec();
        }
    };

    let mut parsed = Parsed::default();
    for document in documents {
        parsed.document(document);
    }
    let mut objects = parsed.objects;
    let mut ids: BTreeSet<ObjectId> = objects.iter().map(|(id, _)| id.clone()).collect();
    for (id, error) in parsed.malformed {
        count_malformed();
        let object = id
            .as_ref()
            .map_or_else(|| "<unnamed>".to_owned(), ToString::to_string);
        let kept = id
            .as_ref()
            .and_then(|id| previous.iter().find(|(p, _)| p == id));
        match kept {
            Some((id, old)) if ids.insert(id.clone()) => {
                warn!(file = %path.display(), object = %object, error = %error, "skipping malformed object; keeping its last good version");
                objects.push((id.clone(), old.clone()));
            }
            _ => {
                warn!(file = %path.display(), object = %object, error = %error, "skipping malformed object")
            }
        }
    }
    objects
}

/// Splits a file into documents: a JSON stream for `.json`, YAML documents otherwise.
fn documents(path: &Path, text: &str) -> Result<Vec<Value>, String> {
    if path.extension().and_then(|e| e.to_str()) == Some("json") {
        return serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string());
    }
    super::yaml_documents::<Value>(text).map_err(|e| e.to_string())
}

/// Objects and malformed objects found in one file.
#[derive(Default)]
struct Parsed {
    objects: Vec<(ObjectId, Object)>,
    malformed: Vec<(Option<ObjectId>, String)>,
}

impl Parsed {
    /// Takes one document: an object, a `List` of them, or nothing (`---` with no content).
    fn document(&mut self, value: Value) {
        match value {
            Value::Null => {}
            Value::Object(_) => self.object(value),
            _ => self
                .malformed
                .push((None, "document is not an object".to_owned())),
        }
    }

    fn object(&mut self, mut value: Value) {
        let kind = value
            .get("kind")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let api_version = value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        // `kubectl get -o yaml` of several objects prints `kind: List`; typed lists end in List.
        if kind.ends_with("List") {
            match value.get_mut("items").map(Value::take) {
                Some(Value::Array(items)) => items.into_iter().for_each(|item| self.document(item)),
                Some(Value::Null) | None => {}
                Some(_) => self
                    .malformed
                    .push((None, format!("{kind}.items is not a list"))),
            }
            return;
        }
        let kind: &'static str = match (kind.as_str(), api_version.as_str()) {
            ("Service", "v1") => "Service",
            ("EndpointSlice", "discovery.k8s.io/v1") => "EndpointSlice",
            ("", _) => {
                self.malformed.push((None, "object has no kind".to_owned()));
                return;
            }
            (other, version) => {
                debug!(kind = %other, api_version = %version, "ignoring object of another kind");
                return;
            }
        };
        // kubectl fills in the namespace on apply; do the same so the model sees one.
        if let Some(meta) = value.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.entry("namespace")
                .or_insert_with(|| Value::String("default".to_owned()));
        }
        let name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty());
        let namespace = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let Some(name) = name else {
            self.malformed
                .push((None, format!("{kind} has no metadata.name")));
            return;
        };
        let id = ObjectId {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        // Stripped as the kube source strips them: the cache keeps what the model reads. A
        // file's resourceVersion says nothing (an edit keeps it), so objects compare by content.
        let object = match kind {
            "Service" => serde_json::from_value(value).map(|mut s: Service| {
                s.metadata.resource_version = None;
                Object::Service(Arc::new(Cached::new(s)))
            }),
            _ => serde_json::from_value(value).map(|mut s: EndpointSlice| {
                s.metadata.resource_version = None;
                Object::Slice(Arc::new(Cached::new(s)))
            }),
        };
        match object {
            Ok(object) if self.objects.iter().any(|(seen, _)| *seen == id) => {
                drop(object);
                self.malformed
                    .push((Some(id), "defined twice in this file".to_owned()));
            }
            Ok(object) => self.objects.push((id, object)),
            Err(err) => self.malformed.push((Some(id), err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str, previous: &[(ObjectId, Object)]) -> Vec<(ObjectId, Object)> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(name);
        fs::write(&path, text).expect("write");
        read_file(&path, previous)
    }

    fn names(objects: &[(ObjectId, Object)]) -> Vec<String> {
        objects.iter().map(|(id, _)| id.to_string()).collect()
    }

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  namespace: ns\nspec:\n  clusterIP: 10.96.0.1\n  ports:\n  - port: 80\n";
    const SLICE: &str = "addressType: IPv4\napiVersion: discovery.k8s.io/v1\nendpoints: []\nkind: EndpointSlice\nmetadata:\n  name: a-1\n";

    #[test]
    fn multi_document_yaml_yields_both_kinds_and_defaults_the_namespace() {
        let objects = parse("x.yaml", &format!("---\n{SVC}---\n{SLICE}---\n"), &[]);
        assert_eq!(
            names(&objects),
            ["Service ns/a", "EndpointSlice default/a-1"]
        );
    }

    /// YAML 1.1 read `n`, `yes` or `off` as booleans; Kubernetes' names are strings.
    #[test]
    fn plain_scalars_that_yaml_1_1_takes_for_booleans_stay_strings() {
        for name in ["n", "y", "yes", "no", "on", "off"] {
            let text = format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {name}\nspec:\n  clusterIP: 10.96.0.1\n"
            );
            assert_eq!(
                names(&parse("x.yaml", &text, &[])),
                [format!("Service {name}/{name}")]
            );
        }
    }

    #[test]
    fn kind_list_is_unpacked_and_other_kinds_are_ignored() {
        let text = "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata: {name: c}\n- apiVersion: v1\n  kind: Service\n  metadata: {name: s, namespace: n}\n  spec: {clusterIP: 10.96.0.2}\n";
        assert_eq!(names(&parse("l.yml", text, &[])), ["Service n/s"]);
    }

    #[test]
    fn json_files_are_read() {
        let text = r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"j","namespace":"n"},"spec":{"clusterIP":"10.96.0.3"}}"#;
        assert_eq!(names(&parse("j.json", text, &[])), ["Service n/j"]);
    }

    #[test]
    fn a_file_that_does_not_parse_keeps_its_previous_objects() {
        let previous = parse("x.yaml", SVC, &[]);
        let before = malformed_count();
        let objects = parse(
            "x.yaml",
            "apiVersion: v1\nkind: Service\nmetadata: [unclosed\n",
            &previous,
        );
        assert_eq!(objects, previous);
        assert!(malformed_count() > before);
    }

    #[test]
    fn a_malformed_object_keeps_its_previous_version_and_the_rest_is_updated() {
        let previous = parse("x.yaml", &format!("{SVC}---\n{SLICE}"), &[]);
        let bad_svc = SVC.replace("port: 80", "port: eighty");
        let new_slice = SLICE.replace("endpoints: []", "endpoints:\n- addresses: [10.0.0.1]");
        let objects = parse("x.yaml", &format!("{bad_svc}---\n{new_slice}"), &previous);
        assert_eq!(
            names(&objects),
            ["EndpointSlice default/a-1", "Service ns/a"]
        );
        assert_eq!(objects[1], previous[0], "the last good Service is kept");
        let Object::Slice(slice) = &objects[0].1 else {
            panic!("expected a slice")
        };
        let slice = slice.object().expect("decodes");
        assert_eq!(slice.endpoints.len(), 1, "the good slice is updated");
    }

    #[test]
    fn a_new_malformed_object_is_skipped() {
        let objects = parse(
            "x.yaml",
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: a\nspec:\n  ports: 3\n",
            &[],
        );
        assert!(objects.is_empty());
    }

    #[test]
    fn only_visible_yaml_and_json_files_are_read() {
        assert!(is_object_file(Path::new("/d/a.yaml")));
        assert!(is_object_file(Path::new("/d/a.json")));
        assert!(!is_object_file(Path::new("/d/.a.yaml.swp")));
        assert!(!is_object_file(Path::new("/d/..data")));
        assert!(!is_object_file(Path::new("/d/README.md")));
    }

    fn malformed_count() -> u64 {
        super::super::malformed_objects_total()
    }
}
