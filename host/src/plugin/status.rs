//! Enable flags: the embedded store and the in-process cache the gate reads.
//!
//! Values are FBA-compatible: under `{prefix}:{name}` the manifest as JSON
//! with `plugin.name` and `plugin.enable` ("1"/"0"), and `{prefix}:changed`.
//! The embedded store is one JSON file in the data dir, replaced atomically
//! (write, fsync, rename) on every change, so a crash leaves the old or the
//! new flags, never a torn file. The request path never reads it: each
//! loaded plugin carries its flag in an atomic (see `LoadedPlugin::enabled`).

use std::{
    collections::BTreeMap,
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    sync::Mutex,
};

use serde_json::Value;

/// The store's file name inside the data dir.
pub const FLAGS_FILE: &str = "flags.json";

/// The flag store cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// Reading or writing the file failed.
    #[error("flag store {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not the JSON object it should be.
    #[error(
        "flag store {path} is corrupt ({message}); fix or delete it (plugins then start enabled)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The embedded flag store.
pub struct FlagStore {
    path: PathBuf,
    prefix: String,
    values: Mutex<BTreeMap<String, Value>>,
}

/// Writes `plugin.enable` into a flag value.
pub fn set_enable(value: &mut Value, enabled: bool) {
    if let Some(Value::Object(plugin)) = value.get_mut("plugin") {
        plugin.insert(
            "enable".into(),
            Value::from(if enabled { "1" } else { "0" }),
        );
    }
}

/// Whether a stored flag value says enabled.
fn enable_of(value: &Value) -> Option<bool> {
    match value.pointer("/plugin/enable")?.as_str()? {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

impl FlagStore {
    /// Opens (or starts) the store in `data_dir`, keys prefixed with `prefix:`.
    pub fn open(data_dir: &Path, prefix: &str) -> Result<Self, FlagError> {
        let path = data_dir.join(FLAGS_FILE);
        let values = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| FlagError::Corrupt {
                path: path.clone(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(FlagError::Io { path, source }),
        };
        Ok(Self {
            path,
            prefix: prefix.to_owned(),
            values: Mutex::new(values),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    fn changed_key(&self) -> String {
        format!("{}:changed", self.prefix)
    }

    /// The stored flag of `name`, if any.
    pub fn enabled(&self, name: &str) -> Option<bool> {
        let values = self.values.lock().expect("flag store lock");
        values.get(&self.key(name)).and_then(enable_of)
    }

    /// Start-up sync: every plugin gets its manifest value (`plugin.enable`
    /// is filled in here) stored, keeping an existing flag (new plugins start
    /// enabled); `changed` is cleared. Keys of plugins not given here are
    /// kept. Returns the flags.
    pub fn sync(&self, plugins: Vec<(String, Value)>) -> Result<BTreeMap<String, bool>, FlagError> {
        let mut values = self.values.lock().expect("flag store lock");
        let mut next = values.clone();
        let mut flags = BTreeMap::new();
        for (name, mut value) in plugins {
            let key = self.key(&name);
            let enabled = next.get(&key).and_then(enable_of).unwrap_or(true);
            set_enable(&mut value, enabled);
            next.insert(key, value);
            flags.insert(name, enabled);
        }
        next.remove(&self.changed_key());
        if next != *values {
            self.persist(&next)?;
            *values = next;
        }
        Ok(flags)
    }

    /// Stores `value` (carrying `plugin.enable`) for `name`.
    pub fn set(&self, name: &str, value: Value) -> Result<(), FlagError> {
        let mut values = self.values.lock().expect("flag store lock");
        let mut next = values.clone();
        next.insert(self.key(name), value);
        self.persist(&next)?;
        *values = next;
        Ok(())
    }

    /// Whether a restart would change what is served.
    pub fn changed(&self) -> bool {
        let values = self.values.lock().expect("flag store lock");
        values
            .get(&self.changed_key())
            .is_some_and(|v| v.as_str() == Some("1") || v.as_bool() == Some(true))
    }

    fn persist(&self, values: &BTreeMap<String, Value>) -> Result<(), FlagError> {
        let io = |source| FlagError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut file = File::create(&tmp).map_err(io)?;
        file.write_all(&serde_json::to_vec_pretty(values).expect("JSON values serialize"))
            .map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(enabled: bool) -> Value {
        serde_json::json!({"plugin": {"name": "a", "enable": if enabled {"1"} else {"0"}}})
    }

    #[test]
    fn flags_survive_reopening_and_sync_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = FlagStore::open(dir.path(), "fba:plugin").unwrap();
        let flags = store.sync(vec![("a".into(), value(true))]).unwrap();
        assert!(flags["a"]);
        store.set("a", value(false)).unwrap();

        let store = FlagStore::open(dir.path(), "fba:plugin").unwrap();
        assert_eq!(store.enabled("a"), Some(false));
        let flags = store
            .sync(vec![("a".into(), value(true)), ("b".into(), value(true))])
            .unwrap();
        assert!(!flags["a"]);
        assert!(flags["b"]);
        let text = std::fs::read_to_string(dir.path().join(FLAGS_FILE)).unwrap();
        assert!(text.contains("\"fba:plugin:a\""), "{text}");
    }

    #[test]
    fn a_corrupt_store_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FLAGS_FILE), b"{not json").unwrap();
        let err = FlagStore::open(dir.path(), "p").err().unwrap().to_string();
        assert!(err.contains(FLAGS_FILE) && err.contains("delete"), "{err}");
    }
}
