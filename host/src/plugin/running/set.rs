//! The one owner of the running plugin set: the record of every plugin
//! found (loaded or refused, with its reason) and the route table requests
//! use. Start-up builds it; installs mount into it and uninstalls take out
//! of it, each in one step; everything else only reads it.

use std::{
    collections::BTreeMap,
    sync::{Arc, RwLock, RwLockReadGuard},
};

use arc_swap::ArcSwap;

use super::{
    loaded::LoadedPlugin,
    registry::{PluginRecord, PluginState},
    router::{RouteTable, RouteTableBuilder},
};

/// Called with every route table that becomes current.
pub type RouteWatcher = Box<dyn Fn(&Arc<RouteTable>) + Send + Sync>;

/// The records and the current route table.
pub struct PluginSet {
    routes: ArcSwap<RouteTable>,
    records: RwLock<BTreeMap<String, PluginRecord>>,
    watchers: RwLock<Vec<RouteWatcher>>,
}

impl PluginSet {
    /// The set start-up loaded: its records and the table of their routes.
    pub fn new(records: BTreeMap<String, PluginRecord>, table: RouteTable) -> Self {
        Self {
            routes: ArcSwap::from_pointee(table),
            records: RwLock::new(records),
            watchers: RwLock::new(Vec::new()),
        }
    }

    /// Calls `watcher` with the current table now and with every table
    /// made current from now on (under the records lock, so in order).
    /// What it builds from a table (the API document, the route metrics)
    /// is built by the operation that swaps it, never by a request.
    pub fn watch(&self, watcher: RouteWatcher) {
        let _records = self.records.write().expect("records lock");
        watcher(&self.routes());
        self.watchers.write().expect("watchers lock").push(watcher);
    }

    /// Makes `table` current and tells the watchers (the caller holds the
    /// records lock).
    fn swap(&self, table: RouteTable) {
        let table = Arc::new(table);
        self.routes.store(table.clone());
        for watcher in self.watchers.read().expect("watchers lock").iter() {
            watcher(&table);
        }
    }

    /// The current route table (held by a request for its whole life).
    #[inline]
    pub fn routes(&self) -> Arc<RouteTable> {
        self.routes.load_full()
    }

    /// Every record, by name, for reading.
    pub fn records(&self) -> RwLockReadGuard<'_, BTreeMap<String, PluginRecord>> {
        self.records.read().expect("records lock")
    }

    /// Puts `record` in place of any record of its name and makes `table`
    /// (built from the current one, with the record's routes) current, in
    /// one step: no reader sees the one without the other.
    /// Answers the plugin it replaced, which the caller stops.
    #[must_use = "the replaced plugin is still running: stop it"]
    pub fn mount(&self, record: PluginRecord, table: RouteTable) -> Option<Arc<LoadedPlugin>> {
        let mut records = self.records.write().expect("records lock");
        let left = records.insert(record.name.clone(), record);
        self.swap(table);
        left.and_then(|r| r.loaded().cloned())
    }

    /// Replaces the record of `record.name` by `record` (a refused one) and
    /// takes the name's routes out, in one step. Answers the plugin it
    /// replaced, which the caller stops.
    #[must_use = "the replaced plugin is still running: stop it"]
    pub fn refuse(&self, record: PluginRecord) -> Option<Arc<LoadedPlugin>> {
        let mut records = self.records.write().expect("records lock");
        let table = RouteTableBuilder::from_table(&self.routes(), Some(&record.name)).build();
        self.swap(table);
        let left = records.insert(record.name.clone(), record);
        left.and_then(|r| r.loaded().cloned())
    }

    /// Marks the loaded plugin `name` refused with `reason`, its routes
    /// out, in one step; answers it (the caller stops it).
    #[must_use = "the refused plugin may still be running: stop it"]
    pub fn fail(&self, name: &str, reason: String) -> Option<Arc<LoadedPlugin>> {
        let mut records = self.records.write().expect("records lock");
        let record = records.get_mut(name)?;
        let table = RouteTableBuilder::from_table(&self.routes(), Some(name)).build();
        self.swap(table);
        match std::mem::replace(&mut record.state, PluginState::Failed(reason)) {
            PluginState::Loaded(plugin) => Some(plugin),
            PluginState::Failed(_) => None,
        }
    }

    /// Records that `name` is installed from the package `digest`.
    pub fn set_package(&self, name: &str, digest: &str) {
        let mut records = self.records.write().expect("records lock");
        if let Some(record) = records.get_mut(name) {
            record.package = Some(digest.to_owned());
        }
    }

    /// Takes `name` out: a table without its routes becomes current, then
    /// its record goes. Requests holding the old table finish on it.
    /// Answers the plugin taken out, which the caller stops.
    #[must_use = "the plugin taken out is still running: stop it"]
    pub fn unmount(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        let mut records = self.records.write().expect("records lock");
        let table = RouteTableBuilder::from_table(&self.routes(), Some(name)).build();
        self.swap(table);
        records.remove(name).and_then(|r| r.loaded().cloned())
    }
}
