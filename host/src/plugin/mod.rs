//! The plugin system: discovery, loading, routing, enable flags.
//!
//! [`PluginHost`] is the one facade the HTTP layer and the CLI use.

pub mod discover;
pub mod loader;
pub mod manifest;
pub mod registry;
pub mod router;
pub mod services;
pub mod sql;
pub mod status;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, RwLock},
};

use arc_swap::ArcSwap;
use serde_json::Value;

use crate::{config::Settings, db::Db};
use manifest::{PLUGIN_NAME_PATTERN, is_valid_plugin_name, placeholder_value};
use registry::{PluginRecord, PluginState};
use router::RouteTable;
use status::{FlagError, FlagStore};

/// A plugin operation that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The `{plugin}` path parameter is not a plugin name.
    #[error("'{0}' is not a valid plugin name: it must match {PLUGIN_NAME_PATTERN}")]
    InvalidName(String),
    /// No such plugin in the plugin dir.
    #[error("plugin '{0}' is not installed")]
    NotFound(String),
    /// The plugin is installed but failed to load.
    #[error("plugin '{name}' is not loaded ({reason}); fix it and restart the host")]
    NotLoaded {
        /// The plugin.
        name: String,
        /// Why it failed.
        reason: String,
    },
    /// The flag store failed.
    #[error(transparent)]
    Flags(#[from] FlagError),
}

/// Start-up cannot proceed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data or plugin dir cannot be created or read.
    #[error("{what} {path}: {source}")]
    Dir {
        /// Which directory.
        what: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The flag store is unusable.
    #[error(transparent)]
    Flags(#[from] FlagError),
}

/// The plugin system of one running host.
pub struct PluginHost {
    routes: ArcSwap<RouteTable>,
    records: RwLock<BTreeMap<String, PluginRecord>>,
    flags: FlagStore,
    toggle_lock: Mutex<()>,
    required: Vec<String>,
}

impl PluginHost {
    /// Discovers and loads the plugin dir; plugins that fail are recorded
    /// with their reason and the rest serve.
    pub async fn start(settings: &Settings, db: Option<&Db>) -> Result<Arc<Self>, StartError> {
        for (what, path) in [
            ("data dir", &settings.data_dir),
            ("plugin dir", &settings.plugin_dir),
        ] {
            std::fs::create_dir_all(path).map_err(|source| StartError::Dir {
                what,
                path: path.clone(),
                source,
            })?;
        }
        let flags = FlagStore::open(&settings.data_dir, &settings.flag_prefix)?;
        let candidates =
            discover::discover(&settings.plugin_dir).map_err(|source| StartError::Dir {
                what: "plugin dir",
                path: settings.plugin_dir.clone(),
                source,
            })?;
        let outcome =
            registry::load_all(&candidates, &|name| flags.enabled(name).unwrap_or(true), db).await;

        let loaded: Vec<_> = outcome
            .records
            .values()
            .filter_map(PluginRecord::loaded)
            .collect();
        let synced = flags.sync(
            loaded
                .iter()
                .map(|p| (p.name.clone(), p.manifest.flag_value(&p.name, true)))
                .collect(),
        )?;
        for plugin in &loaded {
            plugin.set_enabled(synced[&plugin.name]);
        }
        tracing::info!(
            loaded = loaded.len(),
            failed = outcome.records.len() - loaded.len(),
            plugin_dir = %settings.plugin_dir.display(),
            "plugins discovered"
        );
        let host = Arc::new(Self {
            routes: ArcSwap::from_pointee(outcome.table),
            records: RwLock::new(outcome.records),
            flags,
            toggle_lock: Mutex::new(()),
            required: settings.required_plugins.clone(),
        });
        host.publish_services();
        Ok(host)
    }

    fn publish_services(&self) {
        let records = self.records.read().expect("records lock");
        let settings: HashMap<_, _> = records
            .values()
            .filter_map(PluginRecord::loaded)
            .map(|p| (p.name.clone(), p.manifest.settings.clone()))
            .collect();
        let loaded = u32::try_from(settings.len()).unwrap_or(u32::MAX);
        services::publish(loaded, settings);
    }

    /// The current route table (held by a request for its whole life).
    #[inline]
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Every plugin found, sorted by name, in the list endpoint's shape.
    pub fn list(&self) -> Vec<Value> {
        let records = self.records.read().expect("records lock");
        records
            .values()
            .map(|record| list_item(record, self.is_required(&record.name)))
            .collect()
    }

    /// Whether `name` is a required plugin (it may not be uninstalled).
    pub fn is_required(&self, name: &str) -> bool {
        self.required.iter().any(|r| r == name)
    }

    /// Whether a restart would change what is served.
    pub fn changed(&self) -> bool {
        self.flags.changed()
    }

    /// Flips a plugin's enable flag: stored first, then applied to the gate.
    /// Returns the new state.
    pub fn toggle(&self, name: &str) -> Result<bool, PluginError> {
        if !is_valid_plugin_name(name) {
            return Err(PluginError::InvalidName(name.to_owned()));
        }
        let _serial = self.toggle_lock.lock().expect("toggle lock");
        let records = self.records.read().expect("records lock");
        let record = records
            .get(name)
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        let plugin = match &record.state {
            PluginState::Loaded(p) => p.clone(),
            PluginState::Failed(reason) => {
                return Err(PluginError::NotLoaded {
                    name: name.to_owned(),
                    reason: reason.clone(),
                });
            }
        };
        let enabled = !plugin.enabled();
        self.flags
            .set(name, plugin.manifest.flag_value(name, enabled))?;
        plugin.set_enabled(enabled);
        tracing::info!(plugin = name, enabled, "plugin status changed");
        Ok(enabled)
    }
}

/// One list entry: the manifest with `plugin.name`/`plugin.enable`, plus
/// `state` (`loaded`, `disabled` or `error`), `error`, `path` and
/// `required`.
fn list_item(record: &PluginRecord, required: bool) -> Value {
    let (mut item, state, error) = match (&record.state, &record.manifest) {
        (PluginState::Loaded(p), _) => {
            let enabled = p.enabled();
            (
                p.manifest.flag_value(&p.name, enabled),
                if enabled { "loaded" } else { "disabled" },
                Value::Null,
            )
        }
        (PluginState::Failed(reason), Some(m)) => (
            m.flag_value(&record.name, false),
            "error",
            Value::from(reason.as_str()),
        ),
        (PluginState::Failed(reason), None) => (
            placeholder_value(&record.name),
            "error",
            Value::from(reason.as_str()),
        ),
    };
    if let Value::Object(map) = &mut item {
        map.insert("state".into(), Value::from(state));
        map.insert("error".into(), error);
        map.insert(
            "path".into(),
            Value::from(record.source.display().to_string()),
        );
        map.insert("required".into(), Value::from(required));
    }
    item
}
