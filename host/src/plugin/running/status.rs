//! Enable flags: the database as their source of truth, Redis (when
//! configured) as their FBA-compatible mirror and event channel, and the
//! in-process cache the gate reads.
//!
//! - The database table `sys_plugin_flag` holds each plugin's flag, a
//!   revision that grows by one on every change, and its manifest JSON.
//! - Under `{prefix}:{name}` Redis holds what FBA stores there: the manifest
//!   as JSON with `plugin.name` and `plugin.enable` ("1"/"0").
//! - A toggle flips the row and bumps its revision in one transaction; while
//!   the row is locked it writes the Redis key (so concurrent toggles reach
//!   Redis in the database's order), and after the commit it publishes
//!   `{name, enabled, revision}` on `{prefix}_events`. Every instance
//!   applies an event whose revision is newer than the one it has.
//! - A periodic reconcile reads the table, applies what is newer, and
//!   re-seeds Redis keys that are missing or disagree (a flushed or replaced
//!   Redis), each under the row's lock so it never overwrites a newer toggle.
//!
//! The request path never reads any of this: each loaded plugin carries its
//! flag in an atomic (see `LoadedPlugin::enabled`).

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    sync::{Arc, Mutex},
};

use deadpool_redis::redis::{self, AsyncCommands};
use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::{
    sync::{Weak, atomic::Ordering},
    time::Duration,
};

use futures_util::StreamExt as _;

use crate::{
    db::{Backend, Db},
    plugin::{PluginError, PluginHost, running::registry::PluginRecord, services::panic_log},
    redis::{Redis, RedisError},
};

/// The flag file earlier versions kept in the data dir; imported once.
pub const LEGACY_FLAGS_FILE: &str = "flags.json";

/// The flags cannot be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum FlagError {
    /// The database failed.
    #[error("plugin flags: database error: {0}")]
    Db(#[from] DbErr),
    /// Redis is configured and failed.
    #[error(transparent)]
    Redis(#[from] RedisError),
    /// The legacy flag file cannot be imported.
    #[error(
        "cannot import the flag file {path} ({message}); fix or delete it (its plugins then start enabled)"
    )]
    Legacy {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// One plugin's recorded flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flag {
    /// The plugin.
    pub name: String,
    /// Enabled or not.
    pub enabled: bool,
    /// Grows by one on every change.
    pub revision: i64,
    /// The manifest JSON (FBA shape, `plugin.enable` as recorded).
    pub value: String,
}

/// A change, as published to the other instances.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlagEvent {
    /// The plugin.
    pub name: String,
    /// Its new state.
    pub enabled: bool,
    /// The revision that state has.
    pub revision: i64,
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

/// What a stored flag value (JSON text) says, if it says anything.
pub fn enable_of(text: &str) -> Option<bool> {
    let value: Value = serde_json::from_str(text).ok()?;
    match value.pointer("/plugin/enable")?.as_str()? {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// Whether the recorded flag value `recorded` holds the settings of
/// `value` (whatever either says of `plugin.enable`).
fn same_settings(recorded: &str, value: &Value) -> bool {
    match serde_json::from_str::<Value>(recorded) {
        Ok(mut json) => {
            let mut value = value.clone();
            set_enable(&mut json, true);
            set_enable(&mut value, true);
            json == value
        }
        Err(_) => false,
    }
}

fn with_enable(value: &str, enabled: bool) -> String {
    match serde_json::from_str::<Value>(value) {
        Ok(mut json) => {
            set_enable(&mut json, enabled);
            json.to_string()
        }
        Err(_) => value.to_owned(),
    }
}

/// The flags of one host.
pub struct FlagStore {
    db: Arc<Db>,
    redis: Option<Arc<Redis>>,
    prefix: String,
    applied: Mutex<HashMap<String, i64>>,
}

impl FlagStore {
    /// A store on `db`, mirrored to `redis` under `prefix:` when given.
    pub fn new(db: Arc<Db>, redis: Option<Arc<Redis>>, prefix: &str) -> Self {
        Self {
            db,
            redis,
            prefix: prefix.to_owned(),
            applied: Mutex::new(HashMap::new()),
        }
    }

    /// The Redis key of a plugin's flag.
    pub fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    /// The key and channel prefix (`PLUGIN_REDIS_PREFIX`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The channel changes are published on.
    pub fn channel(&self) -> String {
        format!("{}_events", self.prefix)
    }

    /// The channel changes of the desired plugin set are announced on.
    pub fn plugins_channel(&self) -> String {
        format!("{}_plugins", self.prefix)
    }

    /// The Redis mirror, when configured.
    pub fn redis(&self) -> Option<&Arc<Redis>> {
        self.redis.as_ref()
    }

    /// Every recorded flag.
    pub async fn all(&self) -> Result<Vec<Flag>, FlagError> {
        let rows = self
            .db
            .conn()
            .query_all(self.db.statement(
                "SELECT name, enabled, revision, value FROM sys_plugin_flag WHERE removed = 0 ORDER BY name",
                [],
            ))
            .await?;
        rows.iter()
            .map(flag_of)
            .collect::<Result<_, _>>()
            .map_err(Into::into)
    }

    /// The recorded flag of `name`, if any.
    pub async fn flag(&self, name: &str) -> Result<Option<Flag>, FlagError> {
        let row = self
            .db
            .conn()
            .query_one(self.db.statement(
                "SELECT name, enabled, revision, value FROM sys_plugin_flag WHERE name = ? AND removed = 0",
                [name.into()],
            ))
            .await?;
        Ok(row.map(|r| flag_of(&r)).transpose()?)
    }

    /// Forgets `name`'s flag (an uninstall): the Redis key goes, and the
    /// row is marked removed one revision higher (kept, so a reinstall
    /// continues from its revision and no instance ever sees one go
    /// backwards).
    pub async fn remove(&self, name: &str) -> Result<(), FlagError> {
        // Redis first: if it is down nothing changes; a key deleted whose
        // row stays live would be re-seeded by the next reconcile.
        if let Some(redis) = &self.redis {
            let mut conn = redis.conn().await?;
            let result: redis::RedisResult<i64> = conn.del(self.key(name)).await;
            redis.check(result)?;
        }
        self.db
            .conn()
            .execute(self.db.statement(
                "UPDATE sys_plugin_flag SET removed = 1, enabled = 1, revision = revision + 1 \
                 WHERE name = ? AND removed = 0",
                [name.into()],
            ))
            .await?;
        self.applied
            .lock()
            .expect("flag revisions lock")
            .remove(name);
        Ok(())
    }

    /// Records `name` with `enabled` unless it has a flag already; the row
    /// of an uninstalled plugin comes back one revision higher.
    async fn insert_missing(&self, name: &str, enabled: bool, value: &str) -> Result<(), DbErr> {
        self.db
            .conn()
            .execute(self.db.statement(
                "UPDATE sys_plugin_flag SET removed = 0, enabled = ?, value = ?, \
                 revision = revision + 1 WHERE name = ? AND removed = 1",
                [i16::from(enabled).into(), value.into(), name.into()],
            ))
            .await?;
        let sql = match self.db.backend() {
            Backend::Mysql => {
                "INSERT IGNORE INTO sys_plugin_flag (name, enabled, revision, value) VALUES (?, ?, 1, ?)"
            }
            _ => {
                "INSERT INTO sys_plugin_flag (name, enabled, revision, value) VALUES (?, ?, 1, ?) \
                 ON CONFLICT (name) DO NOTHING"
            }
        };
        self.db
            .conn()
            .execute(
                self.db
                    .statement(sql, [name.into(), i16::from(enabled).into(), value.into()]),
            )
            .await?;
        Ok(())
    }

    /// Imports the flags of a `flags.json` an earlier version left in the
    /// data dir (flags already in the database win), then renames it to
    /// `flags.json.imported`.
    pub async fn import_legacy(&self, data_dir: &Path) -> Result<(), FlagError> {
        let path = data_dir.join(LEGACY_FLAGS_FILE);
        let legacy = |message: String| FlagError::Legacy {
            path: path.display().to_string(),
            message,
        };
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(legacy(e.to_string())),
        };
        let values: BTreeMap<String, Value> =
            serde_json::from_slice(&bytes).map_err(|e| legacy(e.to_string()))?;
        let own = format!("{}:", self.prefix);
        for (key, value) in values {
            let Some(name) = key.strip_prefix(&own).filter(|n| *n != "changed") else {
                continue;
            };
            if let Some(enabled) = enable_of(&value.to_string()) {
                self.insert_missing(name, enabled, &value.to_string())
                    .await?;
            }
        }
        let done = path.with_extension("json.imported");
        std::fs::rename(&path, &done).map_err(|e| legacy(e.to_string()))?;
        tracing::info!(from = %path.display(), to = %done.display(), "imported plugin flags into the database");
        Ok(())
    }

    /// Every given plugin gets a flag (new plugins start enabled,
    /// recorded flags are kept) and its current manifest; nothing is
    /// deleted. `recorded` is what the caller read of them ([`Self::all`]
    /// at start-up, [`Self::flag`] for one plugin); only rows written here
    /// are read again. Redis is seeded when reachable (a host whose Redis
    /// is down still starts, with the database's flags). Returns
    /// `recorded` brought up to date, for the caller to apply.
    pub async fn sync(
        &self,
        recorded: Vec<Flag>,
        plugins: &[(String, Value)],
    ) -> Result<Vec<Flag>, FlagError> {
        let mut flags: BTreeMap<String, Flag> =
            recorded.into_iter().map(|f| (f.name.clone(), f)).collect();
        let mut inserted = Vec::new();
        for (name, value) in plugins {
            match flags.get_mut(name) {
                None => {
                    self.insert_missing(name, true, &value.to_string()).await?;
                    inserted.push(name);
                }
                Some(flag) if !same_settings(&flag.value, value) => {
                    let text = value.to_string();
                    self.db
                        .conn()
                        .execute(self.db.statement(
                            "UPDATE sys_plugin_flag SET value = ? WHERE name = ?",
                            [text.as_str().into(), name.as_str().into()],
                        ))
                        .await?;
                    flag.value = text;
                }
                Some(_) => {}
            }
        }
        // An inserted row may be another instance's, inserted first.
        match inserted.as_slice() {
            [] => {}
            [name] => flags.extend(self.flag(name).await?.map(|f| (f.name.clone(), f))),
            _ => flags.extend(self.all().await?.into_iter().map(|f| (f.name.clone(), f))),
        }
        let flags: Vec<Flag> = flags.into_values().collect();
        if let Err(e) = self.seed_redis(&flags).await {
            tracing::warn!("plugin flags not mirrored to Redis at start-up: {e}");
        }
        Ok(flags)
    }

    /// If `revision` of `name` is newer than what this instance has
    /// applied, runs `apply` and records it (under one lock, so two changes
    /// arriving at once are applied in revision order). Returns whether it
    /// was newer.
    pub fn advance(&self, name: &str, revision: i64, apply: impl FnOnce()) -> bool {
        let mut applied = self.applied.lock().expect("flag revisions lock");
        match applied.get(name) {
            Some(&have) if have >= revision => false,
            _ => {
                apply();
                applied.insert(name.to_owned(), revision);
                true
            }
        }
    }

    /// The revision of `name` this instance has applied (0: none).
    pub fn applied(&self, name: &str) -> i64 {
        let applied = self.applied.lock().expect("flag revisions lock");
        applied.get(name).copied().unwrap_or(0)
    }

    /// Flips a plugin's flag: the row first (locked until the commit), the
    /// Redis key while it is locked, the event after the commit. With Redis
    /// configured and unreachable nothing changes and the error says so.
    /// `current` is the value to record when the plugin has no row yet.
    pub async fn toggle(&self, name: &str, current: &Flag) -> Result<Flag, FlagError> {
        let mut conn = match &self.redis {
            Some(redis) => Some(redis.conn().await?),
            None => None,
        };
        let txn = self.db.conn().begin().await?;
        let updated = txn
            .execute(self.db.statement(
                "UPDATE sys_plugin_flag SET enabled = 1 - enabled, revision = revision + 1, \
                 removed = 0, updated_at = CURRENT_TIMESTAMP WHERE name = ?",
                [name.into()],
            ))
            .await?;
        if updated.rows_affected() == 0 {
            txn.execute(self.db.statement(
                "INSERT INTO sys_plugin_flag (name, enabled, revision, value) VALUES (?, ?, ?, ?)",
                [
                    name.into(),
                    i16::from(!current.enabled).into(),
                    (current.revision + 1).into(),
                    current.value.as_str().into(),
                ],
            ))
            .await?;
        }
        let row = txn
            .query_one(self.db.statement(
                "SELECT name, enabled, revision, value FROM sys_plugin_flag WHERE name = ?",
                [name.into()],
            ))
            .await?
            .ok_or_else(|| DbErr::RecordNotFound(format!("flag of plugin '{name}'")))?;
        let flag = flag_of(&row)?;
        if let (Some(redis), Some(conn)) = (&self.redis, conn.as_mut()) {
            let result: redis::RedisResult<()> = conn
                .set(self.key(name), with_enable(&flag.value, flag.enabled))
                .await;
            redis.check(result)?;
        }
        txn.commit().await?;
        if let (Some(redis), Some(conn)) = (&self.redis, conn.as_mut()) {
            let event = FlagEvent {
                name: flag.name.clone(),
                enabled: flag.enabled,
                revision: flag.revision,
            };
            let payload = serde_json::to_string(&event).expect("events serialize");
            let result: redis::RedisResult<i64> = conn.publish(self.channel(), payload).await;
            if let Err(e) = redis.check(result) {
                tracing::warn!(
                    plugin = name,
                    "flag change recorded but not published ({e}); other instances apply it at their next reconcile"
                );
            }
        }
        Ok(flag)
    }

    /// Re-seeds Redis from `flags`: a missing key is written, a key that
    /// disagrees is rewritten from the locked row. Keys of plugins without
    /// a row are left alone.
    pub async fn seed_redis(&self, flags: &[Flag]) -> Result<(), FlagError> {
        let Some(redis) = &self.redis else {
            return Ok(());
        };
        if flags.is_empty() {
            return Ok(());
        }
        let mut conn = redis.conn().await?;
        let keys: Vec<String> = flags.iter().map(|f| self.key(&f.name)).collect();
        let result: redis::RedisResult<Vec<Option<String>>> =
            redis::cmd("MGET").arg(&keys).query_async(&mut conn).await;
        let current = redis.check(result)?;
        for ((flag, key), stored) in flags.iter().zip(&keys).zip(current) {
            match stored {
                None => {
                    let result: redis::RedisResult<bool> = conn
                        .set_nx(key, with_enable(&flag.value, flag.enabled))
                        .await;
                    if redis.check(result)? {
                        tracing::info!(plugin = %flag.name, enabled = flag.enabled, "flag re-seeded into Redis from the database");
                    }
                }
                Some(text) if enable_of(&text) != Some(flag.enabled) => {
                    self.repair(&mut conn, redis, &flag.name).await?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Rewrites one Redis key from its row, holding the row's lock so a
    /// toggle in progress is not overwritten with an older state.
    async fn repair(
        &self,
        conn: &mut deadpool_redis::Connection,
        redis: &Redis,
        name: &str,
    ) -> Result<(), FlagError> {
        let txn = self.db.conn().begin().await?;
        txn.execute(self.db.statement(
            "UPDATE sys_plugin_flag SET revision = revision WHERE name = ?",
            [name.into()],
        ))
        .await?;
        let row = txn
            .query_one(self.db.statement(
                "SELECT name, enabled, revision, value FROM sys_plugin_flag WHERE name = ? AND removed = 0",
                [name.into()],
            ))
            .await?;
        if let Some(row) = row {
            let flag = flag_of(&row)?;
            let result: redis::RedisResult<()> = conn
                .set(self.key(name), with_enable(&flag.value, flag.enabled))
                .await;
            redis.check(result)?;
            tracing::info!(
                plugin = name,
                enabled = flag.enabled,
                "Redis flag disagreed with the database and was rewritten"
            );
        }
        txn.commit().await?;
        Ok(())
    }

    /// The flag as Redis has it (`STATUS_CHECK=redis`: one GET, as FBA
    /// does per request); `None` when Redis is unreachable or has no usable
    /// value, and the caller falls back to the cached flag.
    pub async fn remote_enabled(&self, name: &str) -> Option<bool> {
        let redis = self.redis.as_ref()?;
        let mut conn = redis.conn().await.ok()?;
        let result: redis::RedisResult<Option<String>> = conn.get(self.key(name)).await;
        enable_of(&redis.check(result).ok()??)
    }
}

fn flag_of(row: &sea_orm::QueryResult) -> Result<Flag, DbErr> {
    Ok(Flag {
        name: row.try_get("", "name")?,
        enabled: row.try_get::<i16>("", "enabled")? != 0,
        revision: row.try_get("", "revision")?,
        value: row.try_get("", "value")?,
    })
}

/// Flag logic of the plugin host: toggles, applying events and reconciled
/// rows to the gates of the running set, and the tasks that keep them in
/// step with the other instances.
impl PluginHost {
    /// Whether a loaded plugin is enabled.
    pub fn is_enabled(&self, name: &str) -> Result<bool, PluginError> {
        Ok(self.loaded(name)?.enabled())
    }

    /// Flips a plugin's enable flag: recorded (and published) first, then
    /// applied to this instance's gate. Returns the new state.
    pub async fn toggle(&self, name: &str) -> Result<bool, PluginError> {
        let plugin = self.loaded(name)?;
        let current = Flag {
            name: name.to_owned(),
            enabled: plugin.enabled(),
            revision: self.flags.applied(name),
            value: plugin
                .manifest
                .flag_value(name, plugin.enabled())
                .to_string(),
        };
        let flag = self.flags.toggle(name, &current).await?;
        self.apply(&flag.name, flag.enabled, flag.revision);
        tracing::info!(
            plugin = name,
            enabled = flag.enabled,
            revision = flag.revision,
            "plugin status changed"
        );
        self.report_soon();
        Ok(flag.enabled)
    }

    /// Applies a flag to the gate if its revision is newer than the one
    /// this instance has.
    pub(crate) fn apply(&self, name: &str, enabled: bool, revision: i64) {
        let records = self.set.records();
        let Some(plugin) = records.get(name).and_then(PluginRecord::loaded) else {
            return;
        };
        self.flags.advance(name, revision, || {
            if plugin.enabled() != enabled {
                plugin.set_enabled(enabled);
                tracing::info!(plugin = name, enabled, revision, "plugin status applied");
            }
        });
    }

    /// Brings this instance's flags (and Redis, when configured) in step
    /// with the database.
    pub async fn reconcile(&self) {
        match self.flags.all().await {
            Ok(flags) => {
                if !self.db_reachable.swap(true, Ordering::AcqRel) {
                    tracing::info!("plugin flags readable again");
                }
                for flag in &flags {
                    self.apply(&flag.name, flag.enabled, flag.revision);
                }
                if let Err(e) = self.flags.seed_redis(&flags).await {
                    // Outages are logged once by the Redis handle itself.
                    tracing::debug!("flag reconcile could not reach Redis: {e}");
                }
                // Also the heartbeat of this instance's report, and of its
                // convergence to the cluster's plugin set.
                self.report().await;
                self.converge_soon();
            }
            Err(e) => {
                if self.db_reachable.swap(false, Ordering::AcqRel) {
                    tracing::warn!(
                        "plugin flags cannot be reconciled ({e}); serving the last known flags"
                    );
                }
            }
        }
    }

    /// Starts the periodic reconcile, the instance reporter, the converger,
    /// the panic-count reports and, with Redis, the event subscriber. They
    /// stop when the host is dropped.
    pub(crate) fn spawn_flag_tasks(self: &Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(host) = weak.upgrade() else { return };
                // Wakes at least every second to notice the host is gone.
                let due = tokio::time::timeout(Duration::from_secs(1), host.report_due.notified());
                if due.await.is_ok() {
                    host.report().await;
                }
            }
        });
        let weak = Arc::downgrade(self);
        let due = self.converge_due.clone();
        tokio::spawn(async move {
            loop {
                let woken = tokio::time::timeout(Duration::from_secs(1), due.notified()).await;
                let Some(host) = weak.upgrade() else { return };
                if woken.is_ok() {
                    host.converge().await;
                }
            }
        });
        self.converge_soon();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if weak.strong_count() == 0 {
                    return;
                }
                panic_log::flush();
            }
        });
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(host) = weak.upgrade() else { return };
                host.reconcile().await;
            }
        });
        if let Some(redis) = self.flags.redis().cloned() {
            tokio::spawn(subscribe(
                Arc::downgrade(self),
                redis,
                self.flags.channel(),
                self.flags.plugins_channel(),
            ));
        }
    }
}

/// Applies the flag events other instances publish, and converges on their
/// announcements of plugin changes; on every (re)subscribe it reconciles
/// first, so nothing published while it was away is missed.
async fn subscribe(host: Weak<PluginHost>, redis: Arc<Redis>, channel: String, plugins: String) {
    loop {
        if let Ok(mut pubsub) = redis.pubsub().await {
            let subscribed = pubsub.subscribe(&[&channel, &plugins]).await;
            if redis.check(subscribed).is_ok() {
                let Some(h) = host.upgrade() else { return };
                h.reconcile().await;
                drop(h);
                let mut events = pubsub.on_message();
                while let Some(message) = events.next().await {
                    let Some(h) = host.upgrade() else { return };
                    if message.get_channel_name() == plugins {
                        h.converge_soon();
                        continue;
                    }
                    let event = message
                        .get_payload::<String>()
                        .ok()
                        .and_then(|p| serde_json::from_str::<FlagEvent>(&p).ok());
                    match event {
                        Some(e) => h.apply(&e.name, e.enabled, e.revision),
                        None => tracing::warn!(channel, "ignored a flag event that is not one"),
                    }
                }
                redis.down("the flag event subscription was closed");
            }
        }
        if host.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enable_is_read_from_fba_shaped_values_only() {
        assert_eq!(enable_of(r#"{"plugin":{"enable":"1"}}"#), Some(true));
        assert_eq!(enable_of(r#"{"plugin":{"enable":"0"}}"#), Some(false));
        assert_eq!(enable_of(r#"{"plugin":{"enable":"ture"}}"#), None);
        assert_eq!(enable_of(r#"{"plugin":{}}"#), None);
        assert_eq!(enable_of("not json"), None);
        assert_eq!(
            with_enable(r#"{"plugin":{"name":"a","enable":"1"}}"#, false),
            r#"{"plugin":{"enable":"0","name":"a"}}"#
        );
    }

    async fn sqlite_in(dir: &Path) -> Arc<Db> {
        let url = crate::db::default_url(dir);
        let db = Db::open(&url, crate::db::PkMode::Autoincrement, 0).await;
        Arc::new(db.unwrap())
    }

    #[tokio::test]
    async fn flags_live_in_the_database_and_toggles_bump_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let db = sqlite_in(dir.path()).await;
        let value = serde_json::json!({"plugin": {"name": "a", "enable": "1"}});
        let store = FlagStore::new(db.clone(), None, "fba:plugin");
        let flags = store
            .sync(Vec::new(), &[("a".into(), value.clone())])
            .await
            .unwrap();
        assert_eq!((flags[0].enabled, flags[0].revision), (true, 1));
        assert!(store.advance("a", 1, || {}));
        let off = store.toggle("a", &flags[0]).await.unwrap();
        assert_eq!((off.enabled, off.revision), (false, 2));
        assert_eq!(
            enable_of(&with_enable(&off.value, off.enabled)),
            Some(false)
        );

        // A second store on the same database (another instance) keeps it.
        let other = FlagStore::new(db, None, "fba:plugin");
        let recorded = other.all().await.unwrap();
        let flags = other.sync(recorded, &[("a".into(), value)]).await.unwrap();
        assert_eq!((flags[0].enabled, flags[0].revision), (false, 2));
        assert!(other.advance("a", 2, || {}));
        // New settings in the manifest: the value follows, the state and
        // revision stay.
        let changed =
            serde_json::json!({"plugin": {"name": "a", "enable": "1"}, "settings": {"K": "v"}});
        let flags = other
            .sync(other.all().await.unwrap(), &[("a".into(), changed)])
            .await
            .unwrap();
        assert_eq!((flags[0].enabled, flags[0].revision), (false, 2));
        assert!(flags[0].value.contains(r#""K":"v""#), "{}", flags[0].value);
        assert_eq!(other.all().await.unwrap()[0].value, flags[0].value);
        assert!(!other.advance("a", 2, || panic!("revision 2 is not newer")));
        let mut applied = false;
        assert!(other.advance("a", 3, || applied = true));
        assert!(applied);
        assert_eq!(other.applied("a"), 3);
    }

    #[tokio::test]
    async fn a_legacy_flag_file_is_imported_once() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(LEGACY_FLAGS_FILE),
            r#"{"fba:plugin:a": {"plugin": {"name": "a", "enable": "0"}}, "fba:plugin:changed": "true"}"#,
        )
        .unwrap();
        let db = sqlite_in(dir.path()).await;
        let store = FlagStore::new(db, None, "fba:plugin");
        store.import_legacy(dir.path()).await.unwrap();
        let flags = store.all().await.unwrap();
        assert_eq!(flags.len(), 1);
        assert!(!flags[0].enabled);
        assert!(!dir.path().join(LEGACY_FLAGS_FILE).exists());
        assert!(dir.path().join("flags.json.imported").exists());
    }
}
