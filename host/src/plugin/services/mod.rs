//! The host services a plugin receives at init, as a stable-ABI vtable.
//!
//! The vtable holds plain `extern "C"` functions; each takes the calling
//! plugin's name, and reads what it needs from this module's state, which
//! the plugin host refreshes whenever the set of loaded plugins changes.

pub mod events;
pub mod http;
pub mod identity;
pub mod jobs;
pub mod lifespan;
pub mod panic_log;
pub mod streams;
mod waker;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{ROption, RResult, RStr, RString},
};
use futures_util::FutureExt as _;
use sea_orm::{ConnectionTrait, DbErr, SqlErr, TransactionTrait};

use crate::{
    db::{
        Backend, Db,
        direct::{DirectError, Transaction},
        placeholders,
    },
    redis::{Redis, RedisError},
};
use async_ffi::FfiFuture;
use deadpool_redis::redis::{self, AsyncCommands};
use plugin_api::{
    __private::wire_error as db_error,
    abi::{HostRef, HostServices, level},
    counter,
    page::PageSql,
};
use waker::IntoPluginFuture as _;

static LOADED: AtomicU32 = AtomicU32::new(0);
static SETTINGS: RwLock<Option<HashMap<String, BTreeMap<String, String>>>> = RwLock::new(None);

/// Records what the services report: the loaded plugins and their settings.
pub fn publish(loaded: u32, settings: HashMap<String, BTreeMap<String, String>>) {
    LOADED.store(loaded, Ordering::Relaxed);
    *SETTINGS.write().expect("settings lock") = Some(settings);
}

extern "C" fn log(plugin: RStr<'_>, lvl: u8, message: RStr<'_>) {
    let (plugin, message) = (plugin.as_str(), message.as_str());
    match lvl {
        // Panic lines come from the plugin's panic hook, once per panic.
        level::ERROR if message.starts_with("panicked") => {
            crate::plugin::services::panic_log::panicked(plugin, message);
        }
        level::ERROR => tracing::error!(target: "plugin", plugin, "{message}"),
        level::WARN => tracing::warn!(target: "plugin", plugin, "{message}"),
        level::INFO => tracing::info!(target: "plugin", plugin, "{message}"),
        _ => tracing::debug!(target: "plugin", plugin, "{message}"),
    }
}

/// A plugin setting: the environment first, then the manifest's `[settings]`.
fn setting_value(plugin: &str, key: &str) -> Option<String> {
    let declared = SETTINGS
        .read()
        .expect("settings lock")
        .as_ref()
        .and_then(|all| all.get(plugin)?.get(key).cloned());
    // Only keys the plugin declares can be overridden: a plugin cannot read
    // arbitrary host environment (credentials) through this service.
    declared.map(|value| std::env::var(key).unwrap_or(value))
}

extern "C" fn setting(plugin: RStr<'_>, key: RStr<'_>) -> ROption<RString> {
    setting_value(plugin.as_str(), key.as_str())
        .map(RString::from)
        .into()
}

extern "C" fn host_version() -> RStr<'static> {
    RStr::from_str(env!("CARGO_PKG_VERSION"))
}

extern "C" fn sleep(millis: u64) -> FfiFuture<()> {
    actix_web::rt::time::sleep(std::time::Duration::from_millis(millis)).into_plugin_ffi()
}

static DB: OnceLock<Arc<Db>> = OnceLock::new();
static TRANSACTIONS: Mutex<BTreeMap<u64, Arc<tokio::sync::Mutex<Option<Transaction>>>>> =
    Mutex::new(BTreeMap::new());
static NEXT_TX: AtomicU64 = AtomicU64::new(1);

/// Gives the services the host's database (once, at start-up).
pub fn set_db(db: Arc<Db>) {
    let _ = DB.set(db);
}

fn db() -> Result<&'static Arc<Db>, RString> {
    DB.get()
        .ok_or_else(|| db_error("other", "the host has no database".into()))
}

fn from_db_err(e: DbErr) -> RString {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(m)) => db_error("unique", m),
        Some(SqlErr::ForeignKeyConstraintViolation(m)) => db_error("foreign_key", m),
        _ => db_error("other", e.to_string()),
    }
}

/// A plugin statement's error in the wire format: the database's kind
/// (unique or foreign key) and message where it says them.
fn from_direct_err(e: DirectError) -> RString {
    use sea_orm::sqlx::error::ErrorKind;
    match e.database() {
        Some(db) if db.kind() == ErrorKind::UniqueViolation => {
            db_error("unique", db.message().to_owned())
        }
        Some(db) if db.kind() == ErrorKind::ForeignKeyViolation => {
            db_error("foreign_key", db.message().to_owned())
        }
        _ => db_error("other", e.to_string()),
    }
}

fn transaction(tx: u64) -> Result<Arc<tokio::sync::Mutex<Option<Transaction>>>, RString> {
    TRANSACTIONS
        .lock()
        .expect("transactions lock")
        .get(&tx)
        .cloned()
        .ok_or_else(|| db_error("other", format!("transaction {tx} is not open")))
}

/// Evaluates `$work` with `$conn` bound to the host's connections, or to
/// the open transaction `$tx` (0 for none).
macro_rules! on_connection {
    ($tx:expr, |$conn:ident| $work:expr) => {{
        let tx: u64 = $tx;
        if tx == 0 {
            let $conn = db()?.direct();
            $work.await
        } else {
            let handle = transaction(tx)?;
            let mut guard = handle.lock().await;
            let $conn = guard
                .as_mut()
                .ok_or_else(|| db_error("other", format!("transaction {tx} is finished")))?;
            $work.await
        }
        .map_err(from_direct_err)
    }};
}

async fn run_query(tx: u64, sql: String, params: String) -> Result<RString, RString> {
    let params = plugin_api::__private::wire_params(&params)?;
    let (rows, _) = on_connection!(tx, |conn| conn.rows(&sql, &params, false))?;
    Ok(RString::from(rows))
}

/// A page of `sql` ordered by `order_by` and the count of the whole query
/// (`sql_page`): one statement, and a second only for a page past the end.
/// JSON `{"rows": [...], "total": N}`.
pub(crate) async fn run_page(
    tx: u64,
    sql: &str,
    order_by: &str,
    params: &str,
    limit: u64,
    offset: u64,
) -> Result<String, RString> {
    let params = plugin_api::__private::wire_params(params)?;
    let statements = PageSql::new(sql, order_by);
    let whole = |n: u64| serde_json::Value::from(i64::try_from(n).unwrap_or(i64::MAX));
    let mut bound = params.clone();
    bound.extend([whole(limit), whole(offset)]);
    let (rows, total) = on_connection!(tx, |conn| conn.rows(&statements.counted, &bound, true))?;
    let total = match total {
        Some(total) => total,
        None if offset == 0 => 0,
        None => {
            let (counted, _) =
                on_connection!(tx, |conn| conn.rows(&statements.count, &params, false))?;
            serde_json::from_str::<serde_json::Value>(&counted)
                .ok()
                .and_then(|rows| rows[0]["total"].as_i64())
                .unwrap_or(0)
        }
    };
    Ok(format!(r#"{{"rows":{rows},"total":{total}}}"#))
}

extern "C" fn sql_page(
    plugin: RStr<'_>,
    tx: u64,
    sql: RString,
    order_by: RString,
    params: RString,
    limit: u64,
    offset: u64,
) -> FfiFuture<RResult<RString, RString>> {
    tracing::trace!(plugin = plugin.as_str(), sql = sql.as_str(), "plugin page");
    async move {
        run_page(tx, &sql, &order_by, &params, limit, offset)
            .await
            .map(RString::from)
            .into()
    }
    .into_plugin_ffi()
}

async fn run_execute(tx: u64, sql: String, params: String) -> Result<RString, RString> {
    let params = plugin_api::__private::wire_params(&params)?;
    let done = on_connection!(tx, |conn| conn.execute(&sql, &params))?;
    Ok(RString::from(
        serde_json::json!({
            "rows_affected": done.rows_affected,
            "last_insert_id": done.last_insert_id,
        })
        .to_string(),
    ))
}

extern "C" fn db_backend() -> RStr<'static> {
    RStr::from_str(DB.get().map_or("none", |db| db.backend().name()))
}

extern "C" fn sql_query(
    plugin: RStr<'_>,
    tx: u64,
    sql: RString,
    params: RString,
) -> FfiFuture<RResult<RString, RString>> {
    tracing::trace!(plugin = plugin.as_str(), sql = sql.as_str(), "plugin query");
    async move {
        run_query(tx, sql.into_string(), params.into_string())
            .await
            .into()
    }
    .into_plugin_ffi()
}

extern "C" fn sql_execute(
    plugin: RStr<'_>,
    tx: u64,
    sql: RString,
    params: RString,
) -> FfiFuture<RResult<RString, RString>> {
    tracing::trace!(
        plugin = plugin.as_str(),
        sql = sql.as_str(),
        "plugin statement"
    );
    async move {
        run_execute(tx, sql.into_string(), params.into_string())
            .await
            .into()
    }
    .into_plugin_ffi()
}

extern "C" fn sql_begin(_plugin: RStr<'_>) -> FfiFuture<RResult<u64, RString>> {
    async move {
        let txn = db()?.direct().begin().await.map_err(from_direct_err)?;
        let id = NEXT_TX.fetch_add(1, Ordering::Relaxed);
        TRANSACTIONS
            .lock()
            .expect("transactions lock")
            .insert(id, Arc::new(tokio::sync::Mutex::new(Some(txn))));
        Ok(id)
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

extern "C" fn sql_finish(tx: u64, commit: bool) -> FfiFuture<RResult<(), RString>> {
    // Detached, so that a transaction dropped by a plugin without awaiting
    // its rollback is still rolled back.
    let handle = TRANSACTIONS.lock().expect("transactions lock").remove(&tx);
    let work = actix_web::rt::spawn(async move {
        let handle =
            handle.ok_or_else(|| db_error("other", format!("transaction {tx} is not open")))?;
        let txn = handle
            .lock()
            .await
            .take()
            .ok_or_else(|| db_error("other", format!("transaction {tx} is finished")))?;
        txn.finish(commit).await.map_err(from_direct_err)
    });
    async move {
        work.await
            .unwrap_or_else(|e| Err(db_error("other", format!("transaction task failed: {e}"))))
            .into()
    }
    .into_plugin_ffi()
}

extern "C" fn next_id() -> ROption<i64> {
    DB.get().and_then(|db| db.next_id()).into()
}

fn kv_key(plugin: &str, key: &str) -> String {
    format!("{plugin}:{key}")
}

static KV_REDIS: OnceLock<(Arc<Redis>, String)> = OnceLock::new();

/// Moves the key-value service to Redis, keys under `{prefix}_kv:` (once,
/// at start-up).
pub fn set_redis(redis: Arc<Redis>, prefix: &str) {
    let _ = KV_REDIS.set((redis, format!("{prefix}_kv:")));
}

/// The Redis behind the key-value service, if configured, and the full key.
fn kv_redis(key: &str) -> Option<(&'static Redis, String)> {
    KV_REDIS
        .get()
        .map(|(redis, prefix)| (&**redis, format!("{prefix}{key}")))
}

fn from_redis_err(e: RedisError) -> RString {
    db_error("other", e.to_string())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

extern "C" fn kv_get(
    plugin: RStr<'_>,
    key: RString,
) -> FfiFuture<RResult<ROption<RString>, RString>> {
    let key = kv_key(plugin.as_str(), &key);
    async move {
        if let Some((redis, key)) = kv_redis(&key) {
            let mut conn = redis.conn().await.map_err(from_redis_err)?;
            let got: redis::RedisResult<Option<String>> = conn.get(key).await;
            let value = redis.check(got).map_err(from_redis_err)?;
            return Ok(ROption::from(value.map(RString::from)));
        }
        let db = db()?;
        let rows = db
            .query(
                &placeholders(
                    db.backend(),
                    "SELECT kv_value FROM sys_kv WHERE kv_key = ? AND (expires_at IS NULL OR expires_at > ?)",
                ),
                vec![key.into(), now_ms().into()],
            )
            .await
            .map_err(from_db_err)?;
        let value = match rows.first() {
            Some(row) => Some(RString::from(
                row.try_get::<String>("", "kv_value").map_err(from_db_err)?,
            )),
            None => None,
        };
        Ok(ROption::from(value))
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

extern "C" fn kv_set(
    plugin: RStr<'_>,
    key: RString,
    value: RString,
    ttl_ms: u64,
) -> FfiFuture<RResult<(), RString>> {
    let key = kv_key(plugin.as_str(), &key);
    async move {
        if let Some((redis, key)) = kv_redis(&key) {
            let mut conn = redis.conn().await.map_err(from_redis_err)?;
            let set: redis::RedisResult<()> = if ttl_ms > 0 {
                conn.pset_ex(key, value.into_string(), ttl_ms).await
            } else {
                conn.set(key, value.into_string()).await
            };
            return redis.check(set).map_err(from_redis_err);
        }
        let db = db()?;
        let expires = (ttl_ms > 0).then(|| now_ms().saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)));
        let sql = match db.backend() {
            Backend::Mysql => {
                "INSERT INTO sys_kv (kv_key, kv_value, expires_at) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE kv_value = VALUES(kv_value), expires_at = VALUES(expires_at)"
            }
            _ => {
                "INSERT INTO sys_kv (kv_key, kv_value, expires_at) VALUES (?, ?, ?) \
                 ON CONFLICT (kv_key) DO UPDATE SET kv_value = excluded.kv_value, expires_at = excluded.expires_at"
            }
        };
        db.execute(db.statement(
            sql,
            vec![key.into(), value.into_string().into(), expires.into()],
        ))
        .await
        .map_err(from_db_err)?;
        Ok(())
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

extern "C" fn kv_del(plugin: RStr<'_>, key: RString) -> FfiFuture<RResult<bool, RString>> {
    let key = kv_key(plugin.as_str(), &key);
    async move {
        if let Some((redis, key)) = kv_redis(&key) {
            let mut conn = redis.conn().await.map_err(from_redis_err)?;
            let deleted: redis::RedisResult<i64> = conn.del(key).await;
            return Ok(redis.check(deleted).map_err(from_redis_err)? > 0);
        }
        let db = db()?;
        let result = db
            .execute(db.statement(
                "DELETE FROM sys_kv WHERE kv_key = ? AND (expires_at IS NULL OR expires_at > ?)",
                vec![key.into(), now_ms().into()],
            ))
            .await
            .map_err(from_db_err)?;
        Ok(result.rows_affected() > 0)
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

/// Adds to a counter in Redis: one script, so the increment and the
/// window's expiry are one step, and a refused increment changes nothing.
const INCR_SCRIPT: &str = r"
local sum = redis.call('INCRBY', KEYS[1], ARGV[1])
if tonumber(ARGV[2]) > 0 and redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return sum
";

/// Adds to a counter in the host database: the row is claimed first (so
/// SQLite takes its write lock before reading, and PostgreSQL and MariaDB
/// lock the row), then read, added to and written in one transaction.
async fn sql_incr(key: &str, shown: &str, delta: i64, ttl_ms: u64) -> Result<i64, RString> {
    let db = db()?;
    let backend = db.backend();
    let claim = match backend {
        Backend::Mysql => {
            "INSERT INTO sys_kv (kv_key, kv_value, expires_at) VALUES (?, '0', NULL) \
             ON DUPLICATE KEY UPDATE kv_key = kv_key"
        }
        _ => {
            "INSERT INTO sys_kv (kv_key, kv_value, expires_at) VALUES (?, '0', NULL) \
             ON CONFLICT (kv_key) DO NOTHING"
        }
    };
    let read = match backend {
        Backend::Sqlite => "SELECT kv_value, expires_at FROM sys_kv WHERE kv_key = ?",
        _ => "SELECT kv_value, expires_at FROM sys_kv WHERE kv_key = ? FOR UPDATE",
    };
    let txn = crate::db::retrying(|| db.conn().begin())
        .await
        .map_err(from_db_err)?;
    txn.execute(db.statement(claim, vec![key.into()]))
        .await
        .map_err(from_db_err)?;
    let row = txn
        .query_one(db.statement(read, vec![key.into()]))
        .await
        .map_err(from_db_err)?
        .ok_or_else(|| db_error("other", format!("key '{shown}' vanished while counting")))?;
    let value: String = row.try_get("", "kv_value").map_err(from_db_err)?;
    let expires: Option<i64> = row.try_get("", "expires_at").map_err(from_db_err)?;
    let counted = counter::count(shown, Some((&value, expires)), now_ms(), delta, ttl_ms)
        .map_err(|message| db_error("other", message))?;
    txn.execute(db.statement(
        "UPDATE sys_kv SET kv_value = ?, expires_at = ? WHERE kv_key = ?",
        vec![
            counted.sum.to_string().into(),
            counted.expires_at_ms.into(),
            key.into(),
        ],
    ))
    .await
    .map_err(from_db_err)?;
    txn.commit().await.map_err(from_db_err)?;
    Ok(counted.sum)
}

extern "C" fn kv_incr(
    plugin: RStr<'_>,
    key: RString,
    delta: i64,
    ttl_ms: u64,
) -> FfiFuture<RResult<i64, RString>> {
    let shown = key.into_string();
    let key = kv_key(plugin.as_str(), &shown);
    async move {
        let Some((redis, key)) = kv_redis(&key) else {
            return sql_incr(&key, &shown, delta, ttl_ms).await;
        };
        static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(INCR_SCRIPT));
        let mut conn = redis.conn().await.map_err(from_redis_err)?;
        let sum: redis::RedisResult<i64> = script
            .key(key)
            .arg(delta)
            .arg(ttl_ms)
            .invoke_async(&mut *conn)
            .await;
        match sum {
            Err(e) if e.to_string().contains("not an integer") => {
                Err(db_error("other", counter::not_whole(&shown)))
            }
            Err(e) if e.to_string().contains("overflow") => {
                Err(db_error("other", counter::overflows(&shown, delta)))
            }
            other => redis.check(other).map_err(from_redis_err),
        }
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

/// Moves a job's last claimed tick to `tick` if it is behind: whether this
/// caller did (and so runs the tick). One script on Redis; on the
/// database, the row is claimed (inserted if absent) and then moved
/// forward by one conditional update, whose row count says who won.
/// Ticks are written as 20 digits, so text order is number order.
pub(crate) async fn claim_tick(job: &str, tick: i64) -> Result<bool, RString> {
    const CLAIM_SCRIPT: &str = r"
local last = redis.call('GET', KEYS[1])
if (not last) or last < ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
";
    // `#` is in no plugin name, so no plugin key can be this one.
    let key = format!("#job:{job}");
    let value = format!("{:020}", tick.max(0));
    if let Some((redis, key)) = kv_redis(&key) {
        static SCRIPT: OnceLock<redis::Script> = OnceLock::new();
        let script = SCRIPT.get_or_init(|| redis::Script::new(CLAIM_SCRIPT));
        let mut conn = redis.conn().await.map_err(from_redis_err)?;
        let won: redis::RedisResult<i64> =
            script.key(key).arg(value).invoke_async(&mut *conn).await;
        return Ok(redis.check(won).map_err(from_redis_err)? == 1);
    }
    let db = db()?;
    let insert = match db.backend() {
        Backend::Mysql => {
            "INSERT INTO sys_kv (kv_key, kv_value, expires_at) VALUES (?, '', NULL) \
             ON DUPLICATE KEY UPDATE kv_key = kv_key"
        }
        _ => {
            "INSERT INTO sys_kv (kv_key, kv_value, expires_at) VALUES (?, '', NULL) \
             ON CONFLICT (kv_key) DO NOTHING"
        }
    };
    crate::db::retrying(|| db.execute(db.statement(insert, vec![key.clone().into()])))
        .await
        .map_err(from_db_err)?;
    let moved = crate::db::retrying(|| {
        db.execute(db.statement(
            "UPDATE sys_kv SET kv_value = ? WHERE kv_key = ? AND kv_value < ?",
            vec![
                value.clone().into(),
                key.clone().into(),
                value.clone().into(),
            ],
        ))
    })
    .await
    .map_err(from_db_err)?;
    Ok(moved.rows_affected() == 1)
}

extern "C" fn loaded_plugins() -> u32 {
    LOADED.load(Ordering::Relaxed)
}

/// The vtable handed to every plugin.
pub fn host_services() -> HostRef {
    static SERVICES: OnceLock<HostRef> = OnceLock::new();
    *SERVICES.get_or_init(|| {
        HostServices {
            log,
            setting,
            host_version,
            loaded_plugins,
            sleep,
            db_backend,
            sql_query,
            sql_execute,
            sql_begin,
            sql_finish,
            next_id,
            kv_get,
            kv_set,
            kv_del,
            kv_incr,
            sql_page,
            spawn: lifespan::spawn,
            blocking: lifespan::blocking,
            job_add: jobs::job_add,
            job_wait: jobs::job_wait,
            job_done: jobs::job_done,
            http_send: http::http_send,
            http_read: http::http_read,
            http_close: http::http_close,
            event_publish: events::event_publish,
            event_subscribe: events::event_subscribe,
            event_next: events::event_next,
            stream_open: streams::stream_open,
            stream_send: streams::stream_send,
            stream_close: streams::stream_close,
            identity: identity::identity,
        }
        .leak_into_prefix()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_settings_are_visible_to_their_plugin() {
        let mut declared = BTreeMap::new();
        declared.insert("PLUGHOST_TEST_GREETING".to_owned(), "hi".to_owned());
        declared.insert("PLUGHOST_TEST_OTHER".to_owned(), "x".to_owned());
        publish(1, HashMap::from([("demo".to_owned(), declared)]));
        assert_eq!(
            setting_value("demo", "PLUGHOST_TEST_GREETING").as_deref(),
            Some("hi")
        );
        assert_eq!(setting_value("demo", "PATH"), None);
        assert_eq!(setting_value("other", "PLUGHOST_TEST_GREETING"), None);
        assert_eq!(loaded_plugins(), 1);
    }
}
