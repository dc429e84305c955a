//! The plugin system: discovery, loading, routing, enable flags.
//!
//! [`PluginHost`] is the one facade the HTTP layer and the CLI use.

pub mod authoring;
pub mod isolation;
pub mod lifecycle;
pub mod loading;
pub mod running;
pub mod scaffold;
pub mod services;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex, atomic::AtomicBool},
    time::Duration,
};

use serde_json::Value;

use crate::{config::Settings, db::Db, redis::Redis};
use lifecycle::{
    converge::{self, Divergence},
    git,
    lock::LifecycleLock,
    package,
};
use loading::{
    discover, libcache,
    manifest::{self, PLUGIN_NAME_PATTERN, is_valid_plugin_name, placeholder_value},
};
use running::{
    registry::{self, LoadedPlugin, PluginRecord, PluginState},
    report,
    router::RouteTable,
    set::PluginSet,
    status::{FlagError, FlagStore},
};

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

impl PluginError {
    /// The HTTP status this error answers.
    pub fn status(&self) -> u16 {
        match self {
            Self::InvalidName(_) => 400,
            Self::NotFound(_) => 404,
            Self::NotLoaded { .. } => 409,
            Self::Flags(FlagError::Redis(crate::redis::RedisError::Unavailable { .. })) => 503,
            Self::Flags(_) => 500,
        }
    }
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

/// How long a lifecycle lock in Redis outlives a holder that stopped
/// renewing it (killed, cut off): its lease, renewed every fifth of it.
const LOCK_TTL: Duration = Duration::from_secs(5);

/// The file in a plugin dir that its own lock is taken on.
const LOCAL_LOCK: &str = ".lifecycle.lock";

/// The plugin system of one running host.
pub struct PluginHost {
    set: PluginSet,
    instance: String,
    report_due: tokio::sync::Notify,
    converge_due: Arc<tokio::sync::Notify>,
    diverged: Mutex<BTreeMap<String, Divergence>>,
    cache: libcache::LibraryCache,
    flags: FlagStore,
    lock: LifecycleLock,
    required: Vec<String>,
    db_reachable: AtomicBool,
    serving: AtomicBool,
    db: Arc<Db>,
    plugin_dir: PathBuf,
    backup_dir: PathBuf,
    backup_keep: usize,
    environment: String,
    dev: bool,
    limits: package::Limits,
    git: git::GitPolicy,
    lock_wait: Duration,
    /// The indexes of the plugin catalogs to list and install from.
    catalogs: Vec<lifecycle::catalog::Location>,
    /// How long reading a catalog's index may take.
    catalog_timeout: Duration,
    /// The lock of this plugin dir alone (`.lifecycle.lock` in it), which
    /// every operation on it holds, the cluster's lock or not.
    local_lock: PathBuf,
    access: arc_swap::ArcSwap<running::access::AccessHooks>,
}

impl PluginHost {
    /// Discovers and loads the plugin dir; plugins that fail are recorded
    /// with their reason and the rest serve. Flags come from the database
    /// (mirrored to `redis` when given); background tasks keep them in step
    /// with the other instances (events at once, a reconcile every
    /// `settings.flag_reconcile`).
    pub async fn start(
        settings: &Settings,
        db: Arc<Db>,
        redis: Option<Arc<Redis>>,
    ) -> Result<Arc<Self>, StartError> {
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
        let instance = report::instance_id(settings.instance_id.as_deref(), &settings.data_dir);
        let lock = LifecycleLock::new(
            redis.clone(),
            Some(db.clone()),
            format!("{}_lock", settings.flag_prefix),
            LOCK_TTL,
            // On SQLite: beside the database file, so that every process on
            // it (servers with their own data dirs, the CLI) takes turns.
            db.sqlite_lock_file("lifecycle")
                .unwrap_or_else(|| settings.data_dir.join("lifecycle.lock")),
        )
        .owned_by(&instance);
        if let Err(e) = lock.free_orphaned().await {
            tracing::warn!("{e}");
        }
        // Staging directories are leftovers only if no operation runs now
        // (the CLI may start while a server installs).
        let local_lock = settings.plugin_dir.join(LOCAL_LOCK);
        match lifecycle::lock::local(&local_lock, "start-up cleanup", Duration::ZERO).await {
            Ok(guard) => {
                lifecycle::remove_leftovers(&settings.plugin_dir);
                lifecycle::remove_backup_leftovers(&settings.backup_dir);
                if let Err(e) = guard.release().await {
                    tracing::warn!("{e}");
                }
            }
            Err(e) => tracing::info!("staging directories not cleaned up now: {e}"),
        }
        let flags = FlagStore::new(db.clone(), redis.clone(), &settings.flag_prefix);
        flags.import_legacy(&settings.data_dir).await?;
        let recorded = flags.all().await?;
        let recorded_enabled: HashMap<&str, bool> = recorded
            .iter()
            .map(|f| (f.name.as_str(), f.enabled))
            .collect();
        let mut candidates =
            discover::discover(&settings.plugin_dir).map_err(|source| StartError::Dir {
                what: "plugin dir",
                path: settings.plugin_dir.clone(),
                source,
            })?;
        // The plugin dir brought to the cluster's set, so that everything
        // loads in one pass (under its own lock: it writes nothing of the
        // cluster's, so instances starting together fetch together); if
        // another operation holds it, the converger does it once the host
        // runs.
        let prepared = match lifecycle::lock::local(
            &local_lock,
            "fetching the cluster's plugins",
            settings.lock_wait,
        )
        .await
        {
            Ok(guard) => {
                let prepared = converge::prepare(
                    &db,
                    settings.package_limits,
                    &settings.trust,
                    &settings.plugin_dir,
                    &mut candidates,
                )
                .await;
                if let Err(e) = guard.release().await {
                    tracing::warn!("{e}");
                }
                prepared.unwrap_or_else(|e| {
                    tracing::warn!("the desired plugin set cannot be read at start-up: {e}");
                    converge::Prepared::default()
                })
            }
            Err(e) => {
                tracing::info!("the cluster's plugins are fetched once the host runs: {e}");
                converge::Prepared::default()
            }
        };
        let cache =
            libcache::LibraryCache::new(settings.data_dir.join("libs"), settings.trust.clone());
        let mut outcome = registry::load_all(
            &candidates,
            &cache,
            &|name| recorded_enabled.get(name).copied().unwrap_or(true),
            Some(&db),
        )
        .await;
        for record in prepared.refused {
            outcome.records.insert(record.name.clone(), record);
        }
        // Copies no plugin here uses any more; not while another process
        // (the CLI, a server on the same data dir) is installing.
        if let Ok(guard) =
            lifecycle::lock::local(&local_lock, "library cache cleanup", Duration::ZERO).await
        {
            let keep = outcome
                .records
                .values()
                .filter_map(PluginRecord::loaded)
                .map(|p| p.digest.clone())
                .collect();
            cache.prune(&keep);
            if let Err(e) = guard.release().await {
                tracing::warn!("{e}");
            }
        }

        let loaded: Vec<_> = outcome
            .records
            .values()
            .filter_map(PluginRecord::loaded)
            .collect();
        let synced: HashMap<String, bool> = flags
            .sync(
                recorded,
                &loaded
                    .iter()
                    .map(|p| (p.name.clone(), p.manifest.flag_value(&p.name, true)))
                    .collect::<Vec<_>>(),
            )
            .await?
            .into_iter()
            .map(|f| {
                flags.advance(&f.name, f.revision, || {});
                (f.name, f.enabled)
            })
            .collect();
        for plugin in &loaded {
            plugin.set_enabled(synced.get(&plugin.name).copied().unwrap_or(true));
        }
        tracing::info!(
            loaded = loaded.len(),
            failed = outcome.records.len() - loaded.len(),
            plugin_dir = %settings.plugin_dir.display(),
            flags = redis.as_ref().map_or("database", |_| "database + Redis"),
            "plugins discovered"
        );
        let host = Arc::new(Self {
            set: PluginSet::new(outcome.records, outcome.table),
            instance,
            report_due: tokio::sync::Notify::new(),
            converge_due: Arc::new(tokio::sync::Notify::new()),
            diverged: Mutex::new(prepared.diverged),
            cache,
            lock,
            flags,
            required: settings.required_plugins.clone(),
            db_reachable: AtomicBool::new(true),
            serving: AtomicBool::new(false),
            db,
            plugin_dir: settings.plugin_dir.clone(),
            backup_dir: settings.backup_dir.clone(),
            backup_keep: settings.backup_keep,
            dev: settings.environment == "dev",
            environment: settings.environment.clone(),
            limits: settings.package_limits,
            git: settings.git.clone(),
            lock_wait: settings.lock_wait,
            catalogs: settings.catalogs.clone(),
            catalog_timeout: settings.catalog_timeout,
            local_lock: settings.plugin_dir.join(LOCAL_LOCK),
            access: arc_swap::ArcSwap::default(),
        });
        host.publish_services();
        host.import_unrecorded().await;
        host.report().await;
        host.spawn_flag_tasks(settings.flag_reconcile);
        Ok(host)
    }

    fn publish_services(&self) {
        self.publish_services_with(None);
    }

    /// Publishes what the host services know of each plugin: the loaded
    /// ones and `starting`, a build about to start (its start hook reads
    /// its settings and subscribes before it is mounted).
    pub(crate) fn publish_services_with(&self, starting: Option<&Arc<LoadedPlugin>>) {
        self.publish_access();
        let records = self.set.records();
        let settings = of_each(&records, starting, |p| p.manifest.settings.clone());
        let loaded = u32::try_from(settings.len()).unwrap_or(u32::MAX);
        services::publish(loaded, settings);
        for record in records.values() {
            if let Some(running::registry::Code::Isolated(child)) = record.loaded().map(|p| &p.code)
            {
                child.set_loaded(loaded);
            }
        }
        services::events::publish_declared(of_each(&records, starting, |p| {
            p.manifest.events.clone()
        }));
        services::identity::publish_declared(of_each(&records, starting, |p| {
            p.manifest.identity.clone()
        }));
        services::http::publish(of_each(&records, starting, |p| {
            services::http::allowed_for(&p.name, &p.manifest.http)
        }));
    }

    /// The children of the isolated plugins loaded here.
    fn isolated_children(&self) -> Vec<Arc<isolation::Supervisor>> {
        self.set
            .records()
            .values()
            .filter_map(|r| match r.loaded().map(|p| &p.code) {
                Some(running::registry::Code::Isolated(child)) => Some(child.clone()),
                _ => None,
            })
            .collect()
    }

    /// The metrics of every isolated plugin's child (Prometheus text).
    pub async fn isolated_metrics(&self) -> Vec<String> {
        let mut texts = Vec::new();
        for child in self.isolated_children() {
            let text = tokio::time::timeout(std::time::Duration::from_secs(2), child.metrics())
                .await
                .unwrap_or_default();
            if !text.is_empty() {
                texts.push(text);
            }
        }
        texts
    }

    /// The current route table (held by a request for its whole life).
    #[inline]
    pub fn routes(&self) -> Arc<RouteTable> {
        self.set.routes()
    }

    /// Calls `watcher` with the current route table and with every table
    /// made current later (see [`PluginSet::watch`]).
    pub fn watch_routes(&self, watcher: running::set::RouteWatcher) {
        self.set.watch(watcher);
    }

    /// Whether a plugin of that name is listed here (loaded or not).
    pub fn is_installed(&self, name: &str) -> bool {
        self.set.records().contains_key(name)
    }

    /// The largest package an upload may be.
    pub fn package_limit(&self) -> u64 {
        self.limits.max_archive
    }

    /// The flag store.
    pub fn flags(&self) -> &FlagStore {
        &self.flags
    }

    /// Every plugin found here, reported by another instance or installed
    /// in the desired set, sorted by name, in the list endpoint's shape:
    /// `instances` holds what each instance reported (a plugin this
    /// instance lacks is `absent`), `package` its entry in the desired set
    /// (version, package digest, source, who installed it and when).
    pub async fn list(&self) -> Vec<Value> {
        for child in self.isolated_children() {
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(1), child.refresh_jobs()).await;
        }
        let mut reported: BTreeMap<String, Vec<report::InstanceState>> = BTreeMap::new();
        match report::all(&self.db).await {
            Ok(rows) => {
                // This instance's own rows as of now (its reporter may not
                // have written the last operation yet).
                for (name, state) in rows.into_iter().filter(|(_, s)| s.id != self.instance) {
                    reported.entry(name).or_default().push(state);
                }
                let now = chrono::Utc::now().timestamp_millis();
                for plugin in self.reported_now() {
                    let states = reported.entry(plugin.name.clone()).or_default();
                    states.push(plugin.as_state(&self.instance, now));
                    states.sort_by(|a, b| a.id.cmp(&b.id));
                }
            }
            Err(e) => tracing::warn!("instance reports cannot be read: {e}"),
        }
        let desired: BTreeMap<String, lifecycle::desired::Desired> =
            match lifecycle::desired::all(&self.db).await {
                Ok(rows) => rows.into_iter().map(|d| (d.name.clone(), d)).collect(),
                Err(e) => {
                    tracing::warn!("the desired plugin set cannot be read: {e}");
                    BTreeMap::new()
                }
            };
        let diverged = self.divergence();
        let records = self.set.records();
        let mut items: BTreeMap<&str, Value> = records
            .values()
            .map(|record| {
                let mut item = list_item(
                    record,
                    self.is_required(&record.name),
                    self.flags.applied(&record.name),
                );
                if let (Some(d), Value::Object(map)) = (diverged.get(&record.name), &mut item)
                    && record.loaded().is_some()
                {
                    map.insert("error".into(), Value::from(d.reason.as_str()));
                }
                (record.name.as_str(), item)
            })
            .collect();
        for name in reported.keys().chain(desired.keys()) {
            items.entry(name.as_str()).or_insert_with(|| {
                let mut item = placeholder_value(name);
                if let Value::Object(map) = &mut item {
                    let (state, error) = match diverged.get(name) {
                        Some(d) => ("error", d.reason.as_str()),
                        None => ("absent", "not installed on this instance"),
                    };
                    map.insert("state".into(), Value::from(state));
                    map.insert("error".into(), Value::from(error));
                    map.insert("local".into(), Value::from(false));
                }
                item
            });
        }
        items
            .into_iter()
            .map(|(name, mut item)| {
                if let Value::Object(map) = &mut item {
                    let instances = reported.get(name).map(Vec::as_slice).unwrap_or_default();
                    map.insert(
                        "instances".into(),
                        serde_json::to_value(instances).unwrap_or_default(),
                    );
                    map.insert(
                        "package".into(),
                        desired
                            .get(name)
                            .and_then(|d| serde_json::to_value(d).ok())
                            .unwrap_or(Value::Null),
                    );
                }
                item
            })
            .collect()
    }

    /// Each loaded plugin's flag: name, enabled, the revision applied.
    pub fn flag_states(&self) -> Vec<(String, bool, i64)> {
        self.set
            .records()
            .values()
            .filter_map(|record| record.loaded())
            .map(|p| (p.name.clone(), p.enabled(), self.flags.applied(&p.name)))
            .collect()
    }

    /// Asks the background reporter to record what this instance serves
    /// (an operation's answer does not wait for it).
    pub(crate) fn report_soon(&self) {
        self.report_due.notify_one();
    }

    /// Records what this instance serves, for every instance's list: each
    /// plugin here, and each package of the desired set it cannot serve
    /// (`error`, with the reason).
    pub(crate) async fn report(&self) {
        let plugins = self.reported_now();
        if let Err(e) = report::publish(&self.db, &self.instance, &plugins).await {
            tracing::warn!("cannot report this instance's plugins: {e}");
        }
    }

    /// What this instance serves now, as it reports it.
    fn reported_now(&self) -> Vec<report::Reported> {
        let diverged = self.divergence();
        let mut plugins: Vec<report::Reported> = self
            .set
            .records()
            .values()
            .map(|record| {
                let version = record
                    .manifest
                    .as_ref()
                    .map(|m| m.version.to_string())
                    .unwrap_or_default();
                let local = record.package.is_none();
                match &record.state {
                    PluginState::Loaded(p) => report::Reported {
                        name: record.name.clone(),
                        state: if p.enabled() { "loaded" } else { "disabled" },
                        version,
                        error: diverged.get(&record.name).map(|d| d.reason.clone()),
                        local,
                    },
                    PluginState::Failed(reason) => report::Reported {
                        name: record.name.clone(),
                        state: "error",
                        version,
                        error: Some(reason.clone()),
                        local,
                    },
                }
            })
            .collect();
        let unserved: Vec<report::Reported> = {
            let records = self.set.records();
            diverged
                .iter()
                .filter(|(name, _)| !records.contains_key(*name))
                .map(|(name, d)| report::Reported {
                    name: name.clone(),
                    state: "error",
                    version: d.version.clone(),
                    error: Some(d.reason.clone()),
                    local: false,
                })
                .collect()
        };
        plugins.extend(unserved);
        plugins
    }

    /// Whether `name` is a required plugin (it may not be uninstalled).
    pub fn is_required(&self, name: &str) -> bool {
        self.required.iter().any(|r| r == name)
    }

    /// Whether a restart would change what is served: the plugin dir holds
    /// plugins, versions or library files other than the ones loaded, e.g.
    /// after a CLI install next to a running server, a file dropped in or
    /// overwritten by hand (the host serves its own copy meanwhile).
    pub fn changed(&self) -> bool {
        let Ok(found) = discover::discover(&self.plugin_dir) else {
            return false;
        };
        let records = self.set.records();
        if found.len() != records.len() {
            return true;
        }
        found.iter().any(|candidate| {
            let Some(record) = records.get(&candidate.name) else {
                return true;
            };
            if record.source != candidate.source.path() {
                return true;
            }
            let on_disk = std::fs::read_to_string(candidate.source.path().join("plugin.toml"))
                .ok()
                .and_then(|text| manifest::PluginManifest::parse(&text).ok())
                .map(|m| m.version);
            let library = match &candidate.source {
                discover::Source::Directory(dir) => {
                    dir.join(discover::library_file_name(&candidate.name))
                }
                discover::Source::Library(path) => path.clone(),
            };
            let replaced = record
                .loaded()
                .is_some_and(|p| self.cache.source_digest(&library).as_ref() != Some(&p.digest));
            replaced
                || (candidate.source.path().is_dir()
                    && on_disk != record.manifest.as_ref().map(|m| m.version))
        })
    }

    fn loaded(&self, name: &str) -> Result<Arc<LoadedPlugin>, PluginError> {
        if !is_valid_plugin_name(name) {
            return Err(PluginError::InvalidName(name.to_owned()));
        }
        let records = self.set.records();
        let record = records
            .get(name)
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        match &record.state {
            PluginState::Loaded(p) => Ok(p.clone()),
            PluginState::Failed(reason) => Err(PluginError::NotLoaded {
                name: name.to_owned(),
                reason: reason.clone(),
            }),
        }
    }
}

/// What each loaded plugin of `records`, and `starting`, has of `part`,
/// by name.
fn of_each<T>(
    records: &BTreeMap<String, PluginRecord>,
    starting: Option<&Arc<LoadedPlugin>>,
    part: impl Fn(&LoadedPlugin) -> T,
) -> HashMap<String, T> {
    records
        .values()
        .filter_map(PluginRecord::loaded)
        .chain(starting)
        .map(|p| (p.name.clone(), part(p)))
        .collect()
}

/// One list entry: the manifest with `plugin.name`/`plugin.enable`, plus
/// `state` (`loaded`, `disabled` or `error`), `error`, `path`, `required`,
/// `revision` (of the flag this instance applies; instances that agree
/// show the same) and `local` (not a package of the cluster's set).
fn list_item(record: &PluginRecord, required: bool, revision: i64) -> Value {
    let (mut item, state, error) = match (&record.state, &record.manifest) {
        (PluginState::Loaded(p), _) => {
            let enabled = p.enabled();
            let mut value = p.manifest.flag_value(&p.name, enabled);
            if let Value::Object(map) = &mut value {
                map.insert("signer".into(), Value::from(p.signer.clone()));
                map.insert("jobs".into(), Value::from(p.jobs()));
                map.insert(
                    "http_allow".into(),
                    services::http::allowed_for(&p.name, &p.manifest.http)
                        .iter()
                        .map(ToString::to_string)
                        .collect(),
                );
                map.insert("identity".into(), Value::from(p.manifest.identity.clone()));
                let hooks: Vec<&str> = [
                    ("authenticate", p.code.hooks().0),
                    ("authorize", p.code.hooks().1),
                ]
                .into_iter()
                .filter_map(|(hook, has)| has.then_some(hook))
                .collect();
                map.insert("access_hooks".into(), Value::from(hooks));
                let isolated = match &p.code {
                    running::registry::Code::Native(_) => Value::Null,
                    running::registry::Code::Isolated(child) => {
                        let (crashes, last_crash, gave_up) = child.crashes();
                        serde_json::json!({
                            "pid": child.pid(),
                            "crashes": crashes,
                            "last_crash": last_crash,
                            "gave_up": gave_up,
                        })
                    }
                };
                map.insert("isolated".into(), isolated);
                map.insert(
                    "isolation_requested".into(),
                    Value::from(p.manifest.isolated),
                );
            }
            // A child given up on after a crash loop serves nothing.
            let gave_up = match &p.code {
                running::registry::Code::Isolated(child) => child.crashes().2,
                running::registry::Code::Native(_) => None,
            };
            match gave_up {
                Some(why) => (value, "error", Value::from(why)),
                None => (
                    value,
                    if enabled { "loaded" } else { "disabled" },
                    Value::Null,
                ),
            }
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
        map.insert("revision".into(), Value::from(revision));
        map.insert("local".into(), Value::from(record.package.is_none()));
    }
    item
}
