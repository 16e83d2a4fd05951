//! `--config-dir DIR`: one file per option key, as Kubernetes mounts a ConfigMap (each key a
//! symlink into a hidden `..data` directory). Reading ignores hidden entries and trims
//! whitespace; writing replaces one key atomically (a temporary file, then `rename`), so the
//! agent never reads half a value.
//!
//! Which keys exist and what they accept is `config/options.rs`'s business; precedence is
//! `config/mod.rs`'s.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors reading or writing a config directory.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The directory cannot be listed.
    #[error("cannot read config directory `{path}`")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// One key's file cannot be read.
    #[error("cannot read config file `{path}`")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// One key's file cannot be written.
    #[error(
        "cannot write config file `{path}`; is the directory writable (a mounted ConfigMap is not)?"
    )]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Every `key -> trimmed value` in `dir`. Hidden entries (`..data`, `..2024_01_01…`, editor
/// files starting with `.`) and subdirectories are skipped; symlinks are followed.
pub fn read(dir: &Path) -> Result<BTreeMap<String, String>, Error> {
    let entries = fs::read_dir(dir).map_err(|source| Error::ReadDir {
        path: dir.to_owned(),
        source,
    })?;
    let mut values = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| Error::ReadDir {
            path: dir.to_owned(),
            source,
        })?;
        let Some(key) = entry.file_name().to_str().map(str::to_owned) else {
            continue; // not UTF-8, so not one of our keys; the caller reports unknown keys
        };
        if key.starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `fs::metadata` follows the ConfigMap's symlinks.
        match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => continue,
            Err(source) => return Err(Error::ReadFile { path, source }),
        }
        let text = fs::read_to_string(&path).map_err(|source| Error::ReadFile {
            path: path.clone(),
            source,
        })?;
        values.insert(key, text.trim().to_owned());
    }
    Ok(values)
}

/// Writes `value` (plus a newline) as `dir/key`, atomically: readers see the old value or
/// the new one, never a mix.
pub fn write(dir: &Path, key: &str, value: &str) -> Result<(), Error> {
    let path = dir.join(key);
    // Hidden, so a concurrent `read` skips it.
    let tmp = dir.join(format!(".{key}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(value.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&tmp, &path)
    })();
    result.map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::Write {
            path: path.clone(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("lb-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("create temp dir");
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_a_configmap_mount_ignoring_hidden_entries_and_trimming() {
        let dir = TempDir::new("config-dir-read");
        let data = dir.0.join("..2024_01_01_00_00_00.000");
        fs::create_dir(&data).expect("mkdir");
        fs::write(data.join("bpf-lb-external-clusterip"), "true\n").expect("write");
        std::os::unix::fs::symlink("..2024_01_01_00_00_00.000", dir.0.join("..data"))
            .expect("symlink");
        std::os::unix::fs::symlink(
            "..data/bpf-lb-external-clusterip",
            dir.0.join("bpf-lb-external-clusterip"),
        )
        .expect("symlink");
        fs::write(dir.0.join("log-level"), "  debug \n").expect("write");

        let values = read(&dir.0).expect("read");
        let expected: BTreeMap<String, String> = [
            ("bpf-lb-external-clusterip".to_owned(), "true".to_owned()),
            ("log-level".to_owned(), "debug".to_owned()),
        ]
        .into();
        assert_eq!(values, expected);
    }

    #[test]
    fn write_replaces_one_key_and_leaves_no_temporary_file() {
        let dir = TempDir::new("config-dir-write");
        write(&dir.0, "bpf-lb-external-clusterip", "false").expect("write");
        write(&dir.0, "bpf-lb-external-clusterip", "true").expect("write");
        assert_eq!(
            fs::read_to_string(dir.0.join("bpf-lb-external-clusterip")).expect("read"),
            "true\n"
        );
        let names: Vec<_> = fs::read_dir(&dir.0)
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["bpf-lb-external-clusterip"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_it() {
        let err = read(Path::new("/nonexistent/lb-config")).expect_err("must fail");
        assert_eq!(
            err.to_string(),
            "cannot read config directory `/nonexistent/lb-config`"
        );
    }
}
