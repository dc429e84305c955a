//! An in-memory host for a plugin's unit tests (feature `testing`).
//!
//! [`TestHost`] loads the plugin the way plughost does, through its root
//! module: it reads the embedded manifest, creates the tables from the
//! embedded `sql/sqlite/` init script in an in-memory SQLite, runs the
//! plugin's `init`, mounts its routers at the paths the host would, and
//! calls the handlers with real requests. The host services behave like
//! the host's on SQLite: `?` placeholders, rows as JSON objects, key-value
//! with expiry and atomic counters, settings, the log. The plugin's start
//! hook runs after `init`; [`TestHost::stop`] runs its stop hook. Spawned
//! tasks are recorded, not run, until the test runs one
//! ([`TestHost::run_task`]); blocking work runs where it is called.
//!
//! ```toml
//! [dev-dependencies]
//! plugin-api = { version = "1.4", features = ["testing"] }
//! ```
//!
//! ```ignore
//! #[cfg(test)]
//! mod tests {
//!     use plugin_api::testing::{TestHost, TestUser};
//!     use serde_json::json;
//!
//!     #[test]
//!     fn creates_and_lists_a_note() {
//!         let host = TestHost::start(plugin_api::this_plugin!()).unwrap();
//!         let admin = TestUser::superuser(1, "admin");
//!         let created = host.post("/notes/v1/notes").json(&json!({"text": "hi"})).user(&admin).send();
//!         assert_eq!(created.status, 200, "{}", created.text());
//!         assert_eq!(host.get("/notes/v1/notes").user(&admin).send().data()[0]["text"], "hi");
//!     }
//! }
//! ```
//!
//! Differences from a real host, by design: one SQLite connection, so a
//! statement outside an open transaction runs inside it, and one
//! transaction at a time; `sleep` blocks the test's thread; settings come
//! from the manifest and [`TestOptions::setting`], never the environment;
//! the admin guard is the route's own `auth`/`permission` checked against
//! the [`TestUser`] the request carries (no tokens); as on the host, every
//! route of an extend-level plugin (inside the admin app) needs a user.

use std::{
    cell::{Cell, RefCell},
    collections::{BTreeMap, HashMap},
    rc::Rc,
    sync::OnceLock,
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{ROption, RResult, RSlice, RStr, RString, RVec, Tuple2},
};
use async_ffi::{FfiFuture, FutureExt as _};
use rusqlite::types::{Value as SqlValue, ValueRef};
use serde::Serialize;
use serde_json::Value;

use crate::{
    Error, IntoResponse, Request,
    abi::{
        HeaderSource, HostRef, HostServices, PluginModRef, Principal, RawRequest, RouteSpec,
        StrPair, level,
    },
    counter,
    db::{wire_error, wire_params},
    page::{PAGE_TOTAL, PageSql},
};

/// The root module of the plugin this crate exports with
/// [`export_plugin!`](crate::export_plugin), for [`TestHost::start`].
// `crate` is meant: the plugin crate the macro is called from, where
// `export_plugin!` defined the function.
#[allow(clippy::crate_in_macro_def)]
#[macro_export]
macro_rules! this_plugin {
    () => {
        crate::__plughost_root_module()
    };
}

/// The version [`Host::host_version`](crate::Host::host_version) reports
/// under a [`TestHost`].
pub const HOST_VERSION: &str = "0.0.0-test";

/// Where a plugin's extend-level routers are mounted (below the admin app).
const ADMIN_SYS_PREFIX: &str = "/admin/v1/sys";

/// The state one [`TestHost`] keeps; the services reach it through the
/// thread that is running one of its calls.
struct State {
    plugin: String,
    db: rusqlite::Connection,
    kv: RefCell<HashMap<String, (String, Option<i64>)>>,
    settings: BTreeMap<String, String>,
    logs: RefCell<Vec<String>>,
    next_id: Cell<Option<i64>>,
    open_tx: Cell<u64>,
    last_tx: Cell<u64>,
    /// Tasks the plugin spawned, by name, not run yet.
    tasks: RefCell<Vec<(String, FfiFuture<()>)>>,
    /// From the start hook on, until the plugin stops.
    running: Cell<bool>,
    /// Jobs declared: name, spec, runs asked for and not yet begun, and
    /// the outcome of the last run.
    jobs: RefCell<BTreeMap<String, TestJob>>,
    /// Outbound HTTP: the test's answers, the requests sent, bodies open.
    http_answers: Vec<TestHttpAnswer>,
    http_sent: RefCell<Vec<Value>>,
    http_bodies: RefCell<HashMap<u64, Vec<u8>>>,
    /// Events published (topic, payload) and each subscription's queue.
    published: RefCell<Vec<(String, String)>>,
    subscriptions: RefCell<Vec<(String, std::collections::VecDeque<String>)>>,
    /// What each stream was sent so far.
    streams: RefCell<HashMap<u64, Vec<u8>>>,
    /// The identity service's users (JSON as the host answers them) and
    /// the external identities bound to them.
    users: RefCell<Vec<Value>>,
    identities: RefCell<HashMap<(String, String), i64>>,
}

/// An answer a test gives for outbound HTTP requests to one URL.
#[derive(Clone)]
struct TestHttpAnswer {
    method: String,
    url: String,
    status: u16,
    body: Vec<u8>,
}

#[derive(Default)]
struct TestJob {
    spec: String,
    asked: u32,
    done: u32,
    outcome: Option<Result<(), String>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<State>>> = const { RefCell::new(None) };
}

/// Runs `work` with `state` as the host the services answer for.
fn with_current<T>(state: &Rc<State>, work: impl FnOnce() -> T) -> T {
    struct Restore(Option<Rc<State>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(Rc::clone(state))));
    work()
}

fn current() -> Result<Rc<State>, RString> {
    CURRENT
        .with(|c| c.borrow().clone())
        .ok_or_else(|| wire_error("other", "no TestHost call is running on this thread".into()))
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ready<T: Send + 'static>(value: T) -> FfiFuture<T> {
    async move { value }.into_ffi()
}

// ---- the services ----

extern "C" fn log(plugin: RStr<'_>, lvl: u8, message: RStr<'_>) {
    let name = match lvl {
        level::ERROR => "ERROR",
        level::WARN => "WARN",
        level::INFO => "INFO",
        _ => "DEBUG",
    };
    let line = format!("{name} {}", message.as_str());
    eprintln!("[{}] {line}", plugin.as_str());
    if let Ok(state) = current() {
        state.logs.borrow_mut().push(line);
    }
}

extern "C" fn setting(_plugin: RStr<'_>, key: RStr<'_>) -> ROption<RString> {
    current()
        .ok()
        .and_then(|s| s.settings.get(key.as_str()).cloned())
        .map(RString::from)
        .into()
}

extern "C" fn host_version() -> RStr<'static> {
    RStr::from_str(HOST_VERSION)
}

extern "C" fn loaded_plugins() -> u32 {
    1
}

extern "C" fn sleep(millis: u64) -> FfiFuture<()> {
    std::thread::sleep(std::time::Duration::from_millis(millis));
    ready(())
}

extern "C" fn db_backend() -> RStr<'static> {
    RStr::from_str("sqlite")
}

fn sql_error(e: rusqlite::Error) -> RString {
    let kind = match &e {
        rusqlite::Error::SqliteFailure(f, _) => match f.extended_code {
            rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
            | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY => "unique",
            rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => "foreign_key",
            _ => "other",
        },
        _ => "other",
    };
    wire_error(kind, e.to_string())
}

/// JSON parameters as SQLite values, bound the way the host binds them.
fn bind_values(params: &str) -> Result<Vec<SqlValue>, RString> {
    Ok(wire_params(params)?
        .into_iter()
        .map(|v| match v {
            Value::Null => SqlValue::Null,
            Value::Bool(b) => SqlValue::Integer(i64::from(b)),
            Value::Number(n) => match n.as_i64() {
                Some(i) => SqlValue::Integer(i),
                None => SqlValue::Real(n.as_f64().unwrap_or_default()),
            },
            Value::String(s) => SqlValue::Text(s),
            other => SqlValue::Text(other.to_string()),
        })
        .collect())
}

/// Checks that `tx` is 0 or the open transaction.
fn check_tx(state: &State, tx: u64) -> Result<(), RString> {
    if tx == 0 || tx == state.open_tx.get() {
        Ok(())
    } else {
        Err(wire_error("other", format!("transaction {tx} is not open")))
    }
}

/// Runs a query; the rows as JSON objects, columns declared `BOOLEAN` as
/// booleans (as the host answers them on SQLite).
fn run_query(db: &rusqlite::Connection, sql: &str, params: &str) -> Result<Vec<Value>, RString> {
    let mut stmt = db.prepare(sql).map_err(sql_error)?;
    let columns: Vec<(String, bool)> = stmt
        .columns()
        .iter()
        .map(|c| {
            let boolean = c
                .decl_type()
                .is_some_and(|t| t.to_ascii_uppercase().starts_with("BOOL"));
            (c.name().to_owned(), boolean)
        })
        .collect();
    let mut rows = stmt
        .query(rusqlite::params_from_iter(bind_values(params)?))
        .map_err(sql_error)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_error)? {
        let mut object = serde_json::Map::new();
        for (i, (name, boolean)) in columns.iter().enumerate() {
            let value = match row.get_ref(i).map_err(sql_error)? {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(n) if *boolean => Value::Bool(n != 0),
                ValueRef::Integer(n) => Value::from(n),
                ValueRef::Real(f) => Value::from(f),
                ValueRef::Text(t) | ValueRef::Blob(t) => {
                    Value::from(String::from_utf8_lossy(t).into_owned())
                }
            };
            object.insert(name.clone(), value);
        }
        out.push(Value::Object(object));
    }
    Ok(out)
}

extern "C" fn sql_query(
    _plugin: RStr<'_>,
    tx: u64,
    sql: RString,
    params: RString,
) -> FfiFuture<RResult<RString, RString>> {
    let answer = current().and_then(|state| {
        check_tx(&state, tx)?;
        let rows = run_query(&state.db, &sql, &params)?;
        Ok(RString::from(Value::Array(rows).to_string()))
    });
    ready(answer.into())
}

extern "C" fn sql_page(
    _plugin: RStr<'_>,
    tx: u64,
    sql: RString,
    order_by: RString,
    params: RString,
    limit: u64,
    offset: u64,
) -> FfiFuture<RResult<RString, RString>> {
    let answer = current().and_then(|state| {
        check_tx(&state, tx)?;
        let statements = PageSql::new(&sql, &order_by);
        let mut bound = wire_params(&params)?;
        bound.extend([Value::from(limit), Value::from(offset)]);
        let mut rows = run_query(
            &state.db,
            &statements.counted,
            &Value::from(bound).to_string(),
        )?;
        let mut total = None;
        for row in &mut rows {
            if let Some(count) = row.as_object_mut().and_then(|r| r.remove(PAGE_TOTAL)) {
                total = count.as_i64();
            }
        }
        let total = match total {
            Some(total) => total,
            None if offset == 0 => 0,
            None => run_query(&state.db, &statements.count, &params)?
                .first()
                .and_then(|row| row["total"].as_i64())
                .unwrap_or(0),
        };
        Ok(RString::from(
            serde_json::json!({ "rows": rows, "total": total }).to_string(),
        ))
    });
    ready(answer.into())
}

extern "C" fn sql_execute(
    _plugin: RStr<'_>,
    tx: u64,
    sql: RString,
    params: RString,
) -> FfiFuture<RResult<RString, RString>> {
    let answer = current().and_then(|state| {
        check_tx(&state, tx)?;
        let affected = state
            .db
            .execute(&sql, rusqlite::params_from_iter(bind_values(&params)?))
            .map_err(sql_error)?;
        Ok(RString::from(
            serde_json::json!({
                "rows_affected": affected,
                "last_insert_id": state.db.last_insert_rowid(),
            })
            .to_string(),
        ))
    });
    ready(answer.into())
}

extern "C" fn sql_begin(_plugin: RStr<'_>) -> FfiFuture<RResult<u64, RString>> {
    let answer = current().and_then(|state| {
        let open = state.open_tx.get();
        if open != 0 {
            return Err(wire_error(
                "other",
                format!(
                    "the test host runs one transaction at a time (transaction {open} is open)"
                ),
            ));
        }
        state.db.execute_batch("BEGIN").map_err(sql_error)?;
        let id = state.last_tx.get() + 1;
        state.last_tx.set(id);
        state.open_tx.set(id);
        Ok(id)
    });
    ready(answer.into())
}

extern "C" fn sql_finish(tx: u64, commit: bool) -> FfiFuture<RResult<(), RString>> {
    let answer = current().and_then(|state| {
        if tx == 0 || state.open_tx.get() != tx {
            return Err(wire_error("other", format!("transaction {tx} is not open")));
        }
        state.open_tx.set(0);
        state
            .db
            .execute_batch(if commit { "COMMIT" } else { "ROLLBACK" })
            .map_err(sql_error)
    });
    ready(answer.into())
}

extern "C" fn next_id() -> ROption<i64> {
    current()
        .ok()
        .and_then(|state| {
            let id = state.next_id.get()?;
            state.next_id.set(Some(id + 1));
            Some(id)
        })
        .into()
}

/// The live entry of `key`, dropping it when it has expired.
fn kv_live(state: &State, key: &str) -> Option<(String, Option<i64>)> {
    let mut kv = state.kv.borrow_mut();
    match kv.get(key) {
        Some((_, Some(at))) if *at <= now_ms() => {
            kv.remove(key);
            None
        }
        found => found.cloned(),
    }
}

extern "C" fn kv_get(
    _plugin: RStr<'_>,
    key: RString,
) -> FfiFuture<RResult<ROption<RString>, RString>> {
    let answer = current().map(|state| kv_live(&state, &key).map(|(v, _)| RString::from(v)).into());
    ready(answer.into())
}

extern "C" fn kv_set(
    _plugin: RStr<'_>,
    key: RString,
    value: RString,
    ttl_ms: u64,
) -> FfiFuture<RResult<(), RString>> {
    let answer = current().map(|state| {
        let expires = (ttl_ms > 0)
            .then(|| now_ms().saturating_add(i64::try_from(ttl_ms).unwrap_or(i64::MAX)));
        state
            .kv
            .borrow_mut()
            .insert(key.into_string(), (value.into_string(), expires));
    });
    ready(answer.into())
}

extern "C" fn kv_del(_plugin: RStr<'_>, key: RString) -> FfiFuture<RResult<bool, RString>> {
    let answer = current().map(|state| {
        let live = kv_live(&state, &key).is_some();
        state.kv.borrow_mut().remove(key.as_str());
        live
    });
    ready(answer.into())
}

extern "C" fn kv_incr(
    _plugin: RStr<'_>,
    key: RString,
    delta: i64,
    ttl_ms: u64,
) -> FfiFuture<RResult<i64, RString>> {
    let answer = current().and_then(|state| {
        let stored = kv_live(&state, &key);
        let counted = counter::count(
            &key,
            stored.as_ref().map(|(v, at)| (v.as_str(), *at)),
            now_ms(),
            delta,
            ttl_ms,
        )
        .map_err(|message| wire_error("other", message))?;
        state.kv.borrow_mut().insert(
            key.into_string(),
            (counted.sum.to_string(), counted.expires_at_ms),
        );
        Ok(counted.sum)
    });
    ready(answer.into())
}

/// The run a test host starts its plugin as.
const TEST_RUN: u64 = 1;

extern "C" fn spawn(
    plugin: RStr<'_>,
    owner: u64,
    task: RStr<'_>,
    future: FfiFuture<()>,
) -> RResult<(), RString> {
    match current() {
        Ok(state) if owner != TEST_RUN || !state.running.get() => {
            RResult::RErr(RString::from(format!(
                "plugin '{}' cannot spawn task '{}': it is not running (tasks may be spawned from its start hook on, until it stops)",
                plugin.as_str(),
                task.as_str()
            )))
        }
        Ok(state) => {
            state
                .tasks
                .borrow_mut()
                .push((task.as_str().to_owned(), future));
            RResult::ROk(())
        }
        Err(e) => RResult::RErr(e),
    }
}

/// Blocking work runs where it is awaited: the test's thread.
extern "C" fn blocking(plugin: RStr<'_>, work: FfiFuture<()>) -> FfiFuture<RResult<(), RString>> {
    use futures_util::FutureExt as _;
    let plugin = plugin.as_str().to_owned();
    async move {
        match std::panic::AssertUnwindSafe(work).catch_unwind().await {
            Ok(()) => RResult::ROk(()),
            Err(_) => RResult::RErr(RString::from(format!(
                "blocking work of plugin '{plugin}' panicked"
            ))),
        }
    }
    .into_ffi()
}

extern "C" fn job_add(plugin: RStr<'_>, owner: u64, spec: RStr<'_>) -> RResult<(), RString> {
    let state = match current() {
        Ok(state) if owner == TEST_RUN && state.running.get() => state,
        Ok(_) => {
            return RResult::RErr(RString::from(format!(
                "plugin '{}' cannot declare a job: it is not running",
                plugin.as_str()
            )));
        }
        Err(e) => return RResult::RErr(e),
    };
    let name = serde_json::from_str::<Value>(spec.as_str())
        .ok()
        .and_then(|v| v["name"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut jobs = state.jobs.borrow_mut();
    if jobs.contains_key(&name) {
        return RResult::RErr(RString::from(format!(
            "plugin '{}' declares job '{name}' twice",
            plugin.as_str()
        )));
    }
    jobs.insert(
        name,
        TestJob {
            spec: spec.as_str().to_owned(),
            ..TestJob::default()
        },
    );
    RResult::ROk(())
}

/// Ready when the test asked for a run of the job ([`TestHost::run_job`]).
extern "C" fn job_wait(
    _plugin: RStr<'_>,
    _owner: u64,
    job: RStr<'_>,
) -> FfiFuture<RResult<i64, RString>> {
    let job = job.as_str().to_owned();
    std::future::poll_fn(move |_| {
        let Ok(state) = current() else {
            return std::task::Poll::Pending;
        };
        let mut jobs = state.jobs.borrow_mut();
        match jobs.get_mut(&job) {
            Some(j) if j.asked > 0 => {
                j.asked -= 1;
                std::task::Poll::Ready(RResult::ROk(now_ms()))
            }
            _ => std::task::Poll::Pending,
        }
    })
    .into_ffi()
}

extern "C" fn job_done(
    _plugin: RStr<'_>,
    _owner: u64,
    job: RStr<'_>,
    outcome: u8,
    message: ROption<RString>,
) {
    if let Ok(state) = current()
        && let Some(j) = state.jobs.borrow_mut().get_mut(job.as_str())
    {
        j.done += 1;
        j.outcome = Some(match outcome {
            crate::abi::job_outcome::OK => Ok(()),
            _ => Err(message
                .into_option()
                .map_or_else(|| "failed".to_owned(), RString::into_string)),
        });
    }
}

extern "C" fn http_send(
    _plugin: RStr<'_>,
    head: RString,
    body: RVec<u8>,
) -> FfiFuture<RResult<RString, RString>> {
    let answer = (|| {
        let state = current()?;
        let mut head: Value = serde_json::from_str(&head)
            .map_err(|e| RString::from(format!("{{\"kind\":\"other\",\"message\":\"{e}\"}}")))?;
        let (method, url) = (
            head["method"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_uppercase(),
            head["url"].as_str().unwrap_or_default().to_owned(),
        );
        head["body"] = Value::from(String::from_utf8_lossy(&body).into_owned());
        state.http_sent.borrow_mut().push(head);
        let found = state
            .http_answers
            .iter()
            .find(|a| a.method == method && a.url == url)
            .cloned()
            .ok_or_else(|| {
                RString::from(
                    serde_json::json!({
                        "kind": "connect",
                        "message": format!("the test host has no answer for {method} {url} (TestOptions::http)"),
                    })
                    .to_string(),
                )
            })?;
        let mut bodies = state.http_bodies.borrow_mut();
        let id = bodies.len() as u64 + 1;
        bodies.insert(id, found.body);
        Ok(RString::from(
            serde_json::json!({ "status": found.status, "headers": [], "body": id }).to_string(),
        ))
    })();
    ready(answer.into())
}

/// The identity service, over the test's users.
extern "C" fn identity(
    _plugin: RStr<'_>,
    op: RStr<'_>,
    request: RString,
) -> FfiFuture<RResult<RString, RString>> {
    let fail = |status: u16, message: String| {
        RString::from(serde_json::json!({ "status": status, "message": message }).to_string())
    };
    let answer = (|| {
        let state = current()?;
        let request: Value =
            serde_json::from_str(&request).map_err(|e| fail(400, e.to_string()))?;
        let users = state.users.borrow();
        let find = |id: i64| users.iter().find(|u| u["id"] == id).cloned();
        let answer = match op.as_str() {
            "user.get" => users
                .iter()
                .find(|u| {
                    (request.get("id").is_some() && u["id"] == request["id"])
                        || (request.get("username").is_some()
                            && u["username"] == request["username"])
                })
                .cloned()
                .unwrap_or(Value::Null),
            "user.access" | "token.issue" => {
                let id = request["user_id"].as_i64().unwrap_or_default();
                let user = find(id)
                    .filter(|u| u["status"] == 1)
                    .ok_or_else(|| fail(404, format!("user {id} does not exist or is disabled")))?;
                if op.as_str() == "token.issue" {
                    serde_json::json!({ "access_token": format!("test-token-{id}"), "expires_at": 0 })
                } else {
                    serde_json::json!({
                        "superuser": user["superuser"],
                        "roles": user["roles"],
                        "permissions": user["permissions"],
                    })
                }
            }
            "user.external" => {
                let key = (
                    request["provider"].as_str().unwrap_or_default().to_owned(),
                    request["subject"].as_str().unwrap_or_default().to_owned(),
                );
                let bound = state.identities.borrow().get(&key).copied();
                match bound.and_then(find) {
                    Some(user) => user,
                    None => {
                        drop(users);
                        let id = state
                            .users
                            .borrow()
                            .iter()
                            .filter_map(|u| u["id"].as_i64())
                            .max()
                            .unwrap_or(0)
                            + 1;
                        let user = serde_json::json!({
                            "id": id,
                            "username": request["username"].as_str().map_or_else(|| format!("{}_{}", key.0, key.1), str::to_owned),
                            "nickname": request["nickname"],
                            "email": request["email"],
                            "superuser": false,
                            "status": 1,
                            "roles": [],
                            "permissions": [],
                        });
                        state.users.borrow_mut().push(user.clone());
                        state.identities.borrow_mut().insert(key, id);
                        return Ok(RString::from(user.to_string()));
                    }
                }
            }
            "user.bind" | "user.unbind" => {
                let key = (
                    request["provider"].as_str().unwrap_or_default().to_owned(),
                    request["subject"].as_str().unwrap_or_default().to_owned(),
                );
                let mut identities = state.identities.borrow_mut();
                if op.as_str() == "user.unbind" {
                    serde_json::json!({ "removed": identities.remove(&key).is_some() })
                } else {
                    let id = request["user_id"].as_i64().unwrap_or_default();
                    let user =
                        find(id).ok_or_else(|| fail(404, format!("user {id} does not exist")))?;
                    match identities.get(&key) {
                        Some(owner) if *owner != id => {
                            return Err(fail(
                                409,
                                format!("the {} account {} is bound to another user", key.0, key.1),
                            ));
                        }
                        _ => identities.insert(key, id),
                    };
                    user
                }
            }
            other => return Err(fail(400, format!("'{other}' is not an identity operation"))),
        };
        Ok(RString::from(answer.to_string()))
    })();
    ready(answer.into())
}

/// The whole body in one chunk, then its end.
extern "C" fn http_read(_plugin: RStr<'_>, body: u64) -> FfiFuture<RResult<RVec<u8>, RString>> {
    let chunk = current()
        .map(|state| {
            state
                .http_bodies
                .borrow_mut()
                .get_mut(&body)
                .map(std::mem::take)
                .unwrap_or_default()
        })
        .unwrap_or_default();
    ready(RResult::ROk(RVec::from(chunk)))
}

extern "C" fn http_close(_plugin: RStr<'_>, body: u64) {
    if let Ok(state) = current() {
        state.http_bodies.borrow_mut().remove(&body);
    }
}

extern "C" fn event_publish(
    _plugin: RStr<'_>,
    topic: RStr<'_>,
    payload: RString,
) -> FfiFuture<RResult<(), RString>> {
    if let Ok(state) = current() {
        let (topic, payload) = (topic.as_str().to_owned(), payload.into_string());
        for (pattern, queue) in state.subscriptions.borrow_mut().iter_mut() {
            if crate::__private::topic_matches(pattern, &topic) {
                queue.push_back(payload.clone());
            }
        }
        state.published.borrow_mut().push((topic, payload));
    }
    ready(RResult::ROk(()))
}

extern "C" fn event_subscribe(
    _plugin: RStr<'_>,
    _owner: u64,
    topic: RStr<'_>,
) -> RResult<u64, RString> {
    match current() {
        Ok(state) => {
            let mut subscriptions = state.subscriptions.borrow_mut();
            subscriptions.push((topic.as_str().to_owned(), Default::default()));
            RResult::ROk(subscriptions.len() as u64)
        }
        Err(e) => RResult::RErr(e),
    }
}

/// Ready with the subscription's next queued event; pending while none is.
extern "C" fn event_next(
    _plugin: RStr<'_>,
    subscription: u64,
) -> FfiFuture<RResult<RString, RString>> {
    std::future::poll_fn(move |_| {
        let Ok(state) = current() else {
            return std::task::Poll::Pending;
        };
        let mut subscriptions = state.subscriptions.borrow_mut();
        match subscriptions
            .get_mut(subscription as usize - 1)
            .and_then(|(_, queue)| queue.pop_front())
        {
            Some(payload) => std::task::Poll::Ready(RResult::ROk(RString::from(payload))),
            None => std::task::Poll::Pending,
        }
    })
    .into_ffi()
}

extern "C" fn stream_open(
    _plugin: RStr<'_>,
    _owner: u64,
    _keep_alive_ms: u64,
) -> RResult<u64, RString> {
    match current() {
        Ok(state) => {
            let mut streams = state.streams.borrow_mut();
            let id = streams.len() as u64 + 1;
            streams.insert(id, Vec::new());
            RResult::ROk(id)
        }
        Err(e) => RResult::RErr(e),
    }
}

extern "C" fn stream_send(
    _plugin: RStr<'_>,
    stream: u64,
    chunk: RVec<u8>,
) -> FfiFuture<RResult<(), RString>> {
    let sent = current().map(|state| {
        state
            .streams
            .borrow_mut()
            .entry(stream)
            .or_default()
            .extend_from_slice(&chunk)
    });
    ready(sent.into())
}

extern "C" fn stream_close(_plugin: RStr<'_>, _stream: u64) {}

fn services() -> HostRef {
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
            spawn,
            blocking,
            job_add,
            job_wait,
            job_done,
            http_send,
            http_read,
            http_close,
            event_publish,
            event_subscribe,
            event_next,
            stream_open,
            stream_send,
            stream_close,
            identity,
        }
        .leak_into_prefix()
    })
}

// ---- the host ----

/// How a [`TestHost`] starts: settings and key mode.
#[derive(Default)]
pub struct TestOptions {
    settings: BTreeMap<String, String>,
    snowflake: bool,
    http: Vec<TestHttpAnswer>,
    users: Vec<Value>,
}

impl TestOptions {
    /// Sets a plugin setting (over the manifest's `[settings]`).
    pub fn setting(mut self, key: &str, value: &str) -> Self {
        self.settings.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Answers the plugin's outbound `method` requests to `url` (the
    /// whole URL, query included) with `status` and `body`. A request the
    /// test gave no answer for fails with an error naming it. (The test
    /// host does not check `[permissions] http`; a host does.)
    pub fn http(mut self, method: &str, url: &str, status: u16, body: impl Into<Vec<u8>>) -> Self {
        self.http.push(TestHttpAnswer {
            method: method.to_ascii_uppercase(),
            url: url.to_owned(),
            status,
            body: body.into(),
        });
        self
    }

    /// A user the identity service knows (contract 1.5): `user.get`,
    /// `user.access` and `token.issue` answer for it (the token is
    /// `test-token-<id>`). A user an external identity creates gets the
    /// next id. (The test host does not check `[permissions] identity`; a
    /// host does.)
    pub fn user(mut self, user: &TestUser) -> Self {
        self.users.push(serde_json::json!({
            "id": user.id,
            "username": user.username,
            "nickname": null,
            "email": null,
            "superuser": user.superuser,
            "status": 1,
            "roles": [],
            "permissions": user.permissions,
        }));
        self
    }

    /// Runs in snowflake key mode: `next_id()` hands out ids (from
    /// 1,000,001) and the `init_snowflake.sql` script creates the tables.
    pub fn snowflake(mut self) -> Self {
        self.snowflake = true;
        self
    }

    /// Loads the plugin whose root module is `module` (give it
    /// [`this_plugin!()`](crate::this_plugin)). The error says what the
    /// host would refuse: a manifest it cannot read, a missing init
    /// script, a failing script or `init`, clashing routes.
    pub fn start(self, module: PluginModRef) -> Result<TestHost, String> {
        TestHost::load(module, self)
    }
}

/// A manifest value as the plugin reads it: strings as they are, arrays
/// and tables as JSON text, the rest as their TOML text.
fn setting_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            serde_json::to_string(value).unwrap_or_default()
        }
        other => other.to_string(),
    }
}

/// Joins a prefix and a route path the way the host mounts them.
fn join_path(prefix: &str, path: &str) -> String {
    let joined: Vec<&str> = prefix
        .split('/')
        .chain(path.split('/'))
        .filter(|s| !s.is_empty())
        .collect();
    format!("/{}", joined.join("/"))
}

/// A plugin loaded into an in-memory host. See the [module](self) docs.
pub struct TestHost {
    module: PluginModRef,
    state: Rc<State>,
    routes: HashMap<String, matchit::Router<RouteSpec>>,
    requests: Cell<u64>,
}

impl TestHost {
    /// Options for [`TestOptions::start`]: settings, snowflake mode.
    pub fn options() -> TestOptions {
        TestOptions::default()
    }

    /// Loads the plugin with default options (autoincrement key mode, the
    /// manifest's settings): `TestHost::start(plugin_api::this_plugin!())`.
    pub fn start(module: PluginModRef) -> Result<TestHost, String> {
        TestOptions::default().start(module)
    }

    fn load(module: PluginModRef, options: TestOptions) -> Result<TestHost, String> {
        let plugin = module.name().as_str().to_owned();
        let manifest: toml::Table = module
            .manifest()
            .as_str()
            .parse()
            .map_err(|e| format!("plugin '{plugin}': plugin.toml is not valid TOML: {e}"))?;
        let mut settings: BTreeMap<String, String> = manifest
            .get("settings")
            .and_then(toml::Value::as_table)
            .map(|t| {
                t.iter()
                    .map(|(k, v)| (k.clone(), setting_text(v)))
                    .collect()
            })
            .unwrap_or_default();
        settings.extend(options.settings);
        let db = rusqlite::Connection::open_in_memory().map_err(|e| e.to_string())?;
        let state = Rc::new(State {
            plugin: plugin.clone(),
            db,
            kv: RefCell::default(),
            settings,
            logs: RefCell::default(),
            next_id: Cell::new(options.snowflake.then_some(1_000_001)),
            open_tx: Cell::new(0),
            last_tx: Cell::new(0),
            tasks: RefCell::default(),
            running: Cell::new(false),
            jobs: RefCell::default(),
            http_answers: options.http,
            http_sent: RefCell::default(),
            http_bodies: RefCell::default(),
            published: RefCell::default(),
            subscriptions: RefCell::default(),
            streams: RefCell::default(),
            users: RefCell::new(options.users),
            identities: RefCell::default(),
        });

        let script = if options.snowflake {
            "sql/sqlite/init_snowflake.sql"
        } else {
            "sql/sqlite/init.sql"
        };
        let files: BTreeMap<String, String> = module
            .files()
            .map(|files| {
                files()
                    .into_iter()
                    .map(|Tuple2(path, text)| (path.into_string(), text.into_string()))
                    .collect()
            })
            .unwrap_or_default();
        match files.get(script) {
            Some(sql) => state
                .db
                .execute_batch(sql)
                .map_err(|e| format!("plugin '{plugin}': {script} failed: {e}"))?,
            None if manifest
                .get("plugin")
                .and_then(|p| p.get("database"))
                .is_some() =>
            {
                return Err(format!(
                    "plugin '{plugin}' declares a database but its crate has no {script}"
                ));
            }
            None => {}
        }

        if let RResult::RErr(e) = with_current(&state, || (module.init())(services())) {
            return Err(format!("plugin '{plugin}': init failed: {e}"));
        }
        state.running.set(true);
        if let Some(start) = module.start()
            && let RResult::RErr(e) =
                with_current(&state, || futures_executor::block_on(start(TEST_RUN)))
        {
            return Err(format!("plugin '{plugin}': its start hook failed: {e}"));
        }

        let app = manifest.get("app").and_then(toml::Value::as_table);
        let extends = app.is_some_and(|a| a.contains_key("extend"));
        let mut routes: HashMap<String, matchit::Router<RouteSpec>> = HashMap::new();
        for router in (module.routers())() {
            let prefix = if extends {
                let declared = manifest
                    .get("api")
                    .and_then(|api| api.get(router.name.as_str()))
                    .and_then(|r| r.get("prefix"))
                    .and_then(toml::Value::as_str)
                    .ok_or_else(|| {
                        format!(
                            "plugin '{plugin}': router '{}' has no [api.{}] prefix in plugin.toml",
                            router.name, router.name
                        )
                    })?;
                join_path(ADMIN_SYS_PREFIX, declared)
            } else {
                router.prefix.to_string()
            };
            for mut spec in router.routes {
                // The admin app's guard covers every route inside it.
                spec.auth |= extends;
                let path = join_path(&prefix, &spec.path);
                let method = spec.method.to_string();
                routes
                    .entry(method.clone())
                    .or_default()
                    .insert(path.clone(), spec)
                    .map_err(|e| format!("plugin '{plugin}': {method} {path}: {e}"))?;
            }
        }
        Ok(TestHost {
            module,
            state,
            routes,
            requests: Cell::new(0),
        })
    }

    /// A request with `method` to `path` (which may carry `?query`).
    pub fn request(&self, method: &str, path: &str) -> TestRequest<'_> {
        let (path, query) = path.split_once('?').unwrap_or((path, ""));
        TestRequest {
            host: self,
            method: method.to_ascii_uppercase(),
            path: path.to_owned(),
            query: query.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            user: None,
        }
    }

    /// A `GET` request.
    pub fn get(&self, path: &str) -> TestRequest<'_> {
        self.request("GET", path)
    }

    /// A `POST` request.
    pub fn post(&self, path: &str) -> TestRequest<'_> {
        self.request("POST", path)
    }

    /// A `PUT` request.
    pub fn put(&self, path: &str) -> TestRequest<'_> {
        self.request("PUT", path)
    }

    /// A `DELETE` request.
    pub fn delete(&self, path: &str) -> TestRequest<'_> {
        self.request("DELETE", path)
    }

    /// Runs a query on the plugin's database directly (to arrange or check
    /// rows); `?` placeholders, JSON parameters, rows as JSON objects.
    ///
    /// # Panics
    ///
    /// When the statement fails, with the database's message.
    pub fn query(&self, sql: &str, params: &[Value]) -> Vec<Value> {
        run_query(
            &self.state.db,
            sql,
            &Value::from(params.to_vec()).to_string(),
        )
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The value of a key in the plugin's key-value namespace.
    pub fn kv(&self, key: &str) -> Option<String> {
        kv_live(&self.state, key).map(|(v, _)| v)
    }

    /// The lines the plugin logged so far, as `LEVEL message`.
    pub fn logs(&self) -> Vec<String> {
        self.state.logs.borrow().clone()
    }

    /// The names of the tasks the plugin spawned ([`Host::spawn`](crate::Host::spawn))
    /// that have not been run, in the order they were spawned. A test host
    /// runs no task by itself: see [`run_task`](Self::run_task).
    pub fn tasks(&self) -> Vec<String> {
        self.state
            .tasks
            .borrow()
            .iter()
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Runs the first spawned task named `name` to its end, on the test's
    /// thread (a task that never ends never returns), and answers whether
    /// there was one.
    pub fn run_task(&self, name: &str) -> bool {
        let task = {
            let mut tasks = self.state.tasks.borrow_mut();
            tasks
                .iter()
                .position(|(n, _)| n == name)
                .map(|i| tasks.remove(i).1)
        };
        match task {
            Some(task) => {
                with_current(&self.state, || futures_executor::block_on(task));
                true
            }
            None => false,
        }
    }

    /// The outbound HTTP requests the plugin sent so far, in order, each
    /// as JSON `{"method", "url", "headers": [[name, value], ...],
    /// "timeout_ms", "body"}` (the body as text).
    pub fn http_sent(&self) -> Vec<Value> {
        self.state.http_sent.borrow().clone()
    }

    /// The events the plugin published, in order: (topic, payload).
    pub fn published(&self) -> Vec<(String, String)> {
        self.state.published.borrow().clone()
    }

    /// Publishes an event as another plugin (or instance) would: queued
    /// for the plugin's subscriptions whose topic matches.
    pub fn deliver(&self, topic: &str, payload: &Value) {
        let payload = payload.to_string();
        for (pattern, queue) in self.state.subscriptions.borrow_mut().iter_mut() {
            if crate::__private::topic_matches(pattern, topic) {
                queue.push_back(payload.clone());
            }
        }
    }

    /// What the plugin sent so far on the stream a streamed response
    /// names ([`TestResponse::stream`]), as text.
    pub fn stream_text(&self, stream: u64) -> String {
        String::from_utf8_lossy(
            self.state
                .streams
                .borrow()
                .get(&stream)
                .map_or(&[][..], |b| &b[..]),
        )
        .into_owned()
    }

    /// The jobs the plugin declared ([`Host::job`](crate::Host::job)), by
    /// name, with the spec the host would read (`{"name", "every_ms" |
    /// "cron", "cluster"}` as JSON).
    pub fn jobs(&self) -> BTreeMap<String, Value> {
        self.state
            .jobs
            .borrow()
            .iter()
            .map(|(name, job)| {
                (
                    name.clone(),
                    serde_json::from_str(&job.spec).unwrap_or(Value::Null),
                )
            })
            .collect()
    }

    /// Runs job `name` once, now, on the test's thread (a host waits for
    /// its tick; a test host runs it when asked), and answers how the run
    /// ended: `Err` with the job's error, or "it panicked".
    ///
    /// # Panics
    ///
    /// When the plugin declared no job `name`, or its task is gone.
    pub fn run_job(&self, name: &str) -> Result<(), String> {
        let before = {
            let mut jobs = self.state.jobs.borrow_mut();
            let job = jobs.get_mut(name).unwrap_or_else(|| {
                panic!("plugin '{}' declared no job '{name}'", self.state.plugin)
            });
            job.asked += 1;
            job.done
        };
        let task_name = format!("job:{name}");
        let mut task = {
            let mut tasks = self.state.tasks.borrow_mut();
            let i = tasks
                .iter()
                .position(|(n, _)| *n == task_name)
                .unwrap_or_else(|| panic!("the task of job '{name}' is gone"));
            tasks.remove(i).1
        };
        let waker = futures_util::task::noop_waker();
        let mut context = std::task::Context::from_waker(&waker);
        // The job's task runs until it has finished the run asked for and
        // waits for the next one (which only another `run_job` gives).
        let outcome = with_current(&self.state, || {
            use std::future::Future as _;
            for _ in 0..100_000 {
                let polled = std::pin::Pin::new(&mut task).poll(&mut context);
                let jobs = self.state.jobs.borrow();
                let job = &jobs[name];
                if job.done > before {
                    return job.outcome.clone().unwrap_or(Ok(()));
                }
                if polled.is_ready() {
                    return Err(format!("the task of job '{name}' ended"));
                }
            }
            Err(format!(
                "the run of job '{name}' did not finish: it waits on something the test host never completes"
            ))
        });
        self.state.tasks.borrow_mut().push((task_name, task));
        outcome
    }

    /// Asks the plugin's authenticator (contract 1.5) about an
    /// `Authorization` header, as the host's guard does with a credential
    /// it does not know: the user it stands for, `None` when it is not the
    /// plugin's (or the plugin has no authenticator), an error when the
    /// plugin refuses it.
    pub fn authenticate(&self, authorization: &str) -> Result<Option<i64>, String> {
        let Some(hook) = self.module.authenticate().flatten() else {
            return Ok(None);
        };
        let answer = with_current(&self.state, || {
            futures_executor::block_on(hook(RString::from(authorization)))
        });
        match answer {
            RResult::ROk(user) => Ok(user.into_option()),
            RResult::RErr(e) => Err(e.into_string()),
        }
    }

    /// Asks the plugin's authorizer (contract 1.5) about `call`, as the
    /// host does after RBAC on every admin route; a plugin without one
    /// allows everything.
    pub fn authorize(&self, call: &crate::AdminCall) -> crate::Decision {
        let Some(hook) = self.module.authorize().flatten() else {
            return crate::Decision::Allow;
        };
        let request = serde_json::to_string(call).unwrap_or_default();
        let answer = with_current(&self.state, || {
            futures_executor::block_on(hook(RString::from(request)))
        });
        match answer {
            RResult::ROk(abi_stable::std_types::ROption::RNone) => crate::Decision::Allow,
            RResult::ROk(abi_stable::std_types::ROption::RSome(reason)) => {
                crate::Decision::Deny(reason.into_string())
            }
            RResult::RErr(e) => crate::Decision::Deny(format!("the policy could not decide ({e})")),
        }
    }

    /// Stops the plugin as a host does before it unloads it: its stop hook
    /// runs, and the tasks it spawned and nobody ran are dropped.
    pub fn stop(self) -> Result<(), String> {
        let stopped = match self.module.stop() {
            Some(stop) => with_current(&self.state, || futures_executor::block_on(stop(TEST_RUN))),
            None => RResult::ROk(()),
        };
        self.state.running.set(false);
        self.state.tasks.borrow_mut().clear();
        match stopped {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(format!(
                "plugin '{}': its stop hook failed: {e}",
                self.state.plugin
            )),
        }
    }

    fn send(&self, request: TestRequest<'_>) -> TestResponse {
        let n = self.requests.get() + 1;
        self.requests.set(n);
        let trace_id = format!("test-{n}");
        let found = self
            .routes
            .get(&request.method)
            .and_then(|router| router.at(&request.path).ok());
        let params: Vec<(String, String)> = found
            .as_ref()
            .map(|m| {
                m.params
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        let pairs: Vec<StrPair<'_>> = params
            .iter()
            .map(|(k, v)| StrPair {
                name: RStr::from(k.as_str()),
                value: RStr::from(v.as_str()),
            })
            .collect();
        let permissions: Vec<RStr<'_>> = request
            .user
            .iter()
            .flat_map(|u| u.permissions.iter().map(|p| RStr::from(p.as_str())))
            .collect();
        let principal = request.user.as_ref().map(|u| Principal {
            user_id: u.id,
            username: RStr::from(u.username.as_str()),
            superuser: u.superuser,
            permissions: RSlice::from_slice(&permissions),
        });
        let raw = RawRequest {
            method: RStr::from(request.method.as_str()),
            path: RStr::from(request.path.as_str()),
            query: RStr::from(request.query.as_str()),
            params: RSlice::from_slice(&pairs),
            headers: HeaderSource::from_pairs(&request.headers),
            body: RSlice::from_slice(&request.body),
            principal: ROption::from(principal),
            trace_id: RStr::from(trace_id.as_str()),
            extensions: RSlice::from_slice(&[]),
        };
        let response = match found {
            None => Error::new(
                404,
                format!(
                    "no route of plugin '{}' for {} {}",
                    self.state.plugin, request.method, request.path
                ),
            )
            .into_response(&Request::from_raw(&raw))
            .into_raw(),
            Some(m) => match guard(m.value, request.user.as_ref()) {
                Some(refused) => refused.into_response(&Request::from_raw(&raw)).into_raw(),
                None => with_current(&self.state, || {
                    futures_executor::block_on((self.module.handle())(m.value.handler, &raw))
                }),
            },
        };
        let stream = response
            .extensions
            .iter()
            .find(|Tuple2(k, _)| k.as_str() == crate::abi::STREAM_EXTENSION)
            .and_then(|Tuple2(_, v)| v.parse().ok());
        TestResponse {
            stream,
            status: response.status,
            content_type: response.content_type.to_string(),
            headers: response
                .headers
                .into_iter()
                .map(|Tuple2(k, v)| (k.into_string(), v.into_string()))
                .collect(),
            body: response.body.into_vec(),
        }
    }
}

/// The admin guard of a route, as the host applies it.
fn guard(spec: &RouteSpec, user: Option<&TestUser>) -> Option<Error> {
    if !spec.auth {
        return None;
    }
    let Some(user) = user else {
        return Some(Error::new(
            401,
            "this route needs an authenticated user: give the request one with .user(&TestUser)",
        ));
    };
    match spec.permission.as_ref().into_option() {
        Some(p) if !user.superuser && !user.permissions.iter().any(|q| q == p.as_str()) => {
            Some(Error::new(403, format!("permission '{p}' is required")))
        }
        _ => None,
    }
}

/// The caller a request carries into routes behind `.auth()` or
/// `.permission(…)`.
#[derive(Clone, Debug)]
pub struct TestUser {
    id: i64,
    username: String,
    superuser: bool,
    permissions: Vec<String>,
}

impl TestUser {
    /// A user without permissions.
    pub fn new(id: i64, username: &str) -> Self {
        Self {
            id,
            username: username.to_owned(),
            superuser: false,
            permissions: Vec::new(),
        }
    }

    /// A superuser: passes every permission check.
    pub fn superuser(id: i64, username: &str) -> Self {
        Self {
            superuser: true,
            ..Self::new(id, username)
        }
    }

    /// Grants a permission (`sys:dict:add`).
    pub fn permission(mut self, permission: &str) -> Self {
        self.permissions.push(permission.to_owned());
        self
    }
}

/// A request being built; [`send`](Self::send) runs it.
pub struct TestRequest<'h> {
    host: &'h TestHost,
    method: String,
    path: String,
    query: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    user: Option<TestUser>,
}

impl TestRequest<'_> {
    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// `value` as the JSON body, with its content type.
    pub fn json<T: Serialize + ?Sized>(self, value: &T) -> Self {
        let body = serde_json::to_vec(value).expect("a JSON body");
        self.header("content-type", "application/json").body(body)
    }

    /// The raw body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The authenticated caller.
    pub fn user(mut self, user: &TestUser) -> Self {
        self.user = Some(user.clone());
        self
    }

    /// Runs the request through the route's guard and handler.
    pub fn send(self) -> TestResponse {
        let host = self.host;
        host.send(self)
    }
}

/// What a handler answered.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// The HTTP status.
    pub status: u16,
    /// The `content-type` (empty for none).
    pub content_type: String,
    /// Further headers.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// The stream a streamed answer sends its body on
    /// ([`TestHost::stream_text`] reads it).
    pub stream: Option<u64>,
}

impl TestResponse {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    ///
    /// # Panics
    ///
    /// When the body is not JSON, showing it.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.text()))
    }

    /// `data` of the envelope.
    pub fn data(&self) -> Value {
        self.json()["data"].clone()
    }

    /// `msg` of the envelope.
    pub fn msg(&self) -> String {
        self.json()["msg"].as_str().unwrap_or_default().to_owned()
    }
}
