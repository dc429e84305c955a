//! The raw stable-ABI types that cross the boundary between host and plugin.
//!
//! Plugin authors never touch these: the [`Router`](crate::Router),
//! [`Request`](crate::Request) and [`export_plugin!`](crate::export_plugin)
//! layers build and read them. Hosts use them to call into a plugin.
//!
//! # Versioning rules (do not break them)
//!
//! * [`PluginMod`] and [`HostServices`] are *prefix types*: later 1.x
//!   versions may append fields after the field marked
//!   `#[sabi(last_prefix_field)]`, each with `#[sabi(missing_field(option))]`,
//!   and read them through their `Option` accessors.
//! * [`RawRequest`], [`RawResponse`], [`RouterSpec`] and [`RouteSpec`] are frozen
//!   at 1.0: adding a field to a plain struct is refused by the layout check
//!   in both directions. They carry an `extensions` list for growth.
//! * Never rename the package or these types; rename fields only with
//!   `#[sabi(rename)]`.

// abi_stable's derive writes the accessors of prefix fields appended after
// 1.0 (`PluginMod::files`, `start`, `stop`) with `unsafe` blocks: it reads them through a
// pointer whose length it checked. Nothing in this module is written
// `unsafe` by hand.
#![allow(unsafe_code)]

use std::marker::PhantomData;

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings,
    sabi_types::VersionStrings,
    std_types::{RCowStr, ROption, RResult, RSlice, RStr, RString, RVec, Tuple2},
};
use async_ffi::{FfiFuture, LocalBorrowingFfiFuture};

/// A borrowed key/value pair of strings (path parameters, extensions).
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct StrPair<'a> {
    /// The key.
    pub name: RStr<'a>,
    /// The value.
    pub value: RStr<'a>,
}

/// An owned key/value pair of strings (response headers, extensions).
pub type OwnedPair = Tuple2<RString, RString>;

/// Lazy access to the request headers: the host copies nothing up front,
/// a plugin pays only for the headers it reads.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct HeaderSource<'a> {
    /// Opaque pointer to the host's header map, valid for `'a`.
    pub ctx: *const (),
    /// Looks one header up by case-insensitive name. The returned string
    /// borrows from `ctx` and is valid for `'a`.
    pub get: unsafe extern "C" fn(ctx: *const (), name: RStr<'_>) -> ROption<RStr<'static>>,
    /// Copies every header out (name, value); values that are not UTF-8 are skipped.
    pub list: unsafe extern "C" fn(ctx: *const ()) -> RVec<OwnedPair>,
    /// Ties the source to the request's lifetime.
    pub _marker: PhantomData<&'a ()>,
}

impl<'a> HeaderSource<'a> {
    /// A source over `(name, value)` pairs, names matched without regard
    /// to case (the testing host's requests, an isolated plugin's).
    pub fn from_pairs(pairs: &'a Vec<(String, String)>) -> Self {
        Self {
            ctx: std::ptr::from_ref(pairs).cast(),
            get: pairs_get,
            list: pairs_list,
            _marker: PhantomData,
        }
    }
}

/// Looks a header up in the `Vec<(String, String)>` of [`HeaderSource::from_pairs`].
#[allow(unsafe_code)]
unsafe extern "C" fn pairs_get(ctx: *const (), name: RStr<'_>) -> ROption<RStr<'static>> {
    // SAFETY: `ctx` is the pairs of `from_pairs`, which outlive the source
    // (its lifetime); the strings returned borrow from them.
    let pairs = unsafe { &*ctx.cast::<Vec<(String, String)>>() };
    pairs
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name.as_str()))
        .map(|(_, v)| RStr::from_str(unsafe { &*std::ptr::from_ref::<str>(v.as_str()) }))
        .into()
}

#[allow(unsafe_code)]
unsafe extern "C" fn pairs_list(ctx: *const ()) -> RVec<OwnedPair> {
    // SAFETY: as in `pairs_get`.
    let pairs = unsafe { &*ctx.cast::<Vec<(String, String)>>() };
    pairs
        .iter()
        .map(|(k, v)| Tuple2(RString::from(k.as_str()), RString::from(v.as_str())))
        .collect()
}

/// The authenticated caller of a route that sits behind authentication.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct Principal<'a> {
    /// The user's id.
    pub user_id: i64,
    /// The user's login name.
    pub username: RStr<'a>,
    /// Whether the user passes every permission check.
    pub superuser: bool,
    /// The permission strings the user holds through its roles.
    pub permissions: RSlice<'a, RStr<'a>>,
}

/// One request, borrowed from the host for the duration of the handler's future.
#[repr(C)]
#[derive(StableAbi)]
pub struct RawRequest<'a> {
    /// HTTP method, upper case.
    pub method: RStr<'a>,
    /// The request path, without the query string.
    pub path: RStr<'a>,
    /// The raw query string, without the leading `?` (may be empty).
    pub query: RStr<'a>,
    /// Path parameters matched by the route pattern (`{id}` …).
    pub params: RSlice<'a, StrPair<'a>>,
    /// The request headers.
    pub headers: HeaderSource<'a>,
    /// The request body.
    pub body: RSlice<'a, u8>,
    /// The caller, when the route sits behind authentication.
    pub principal: ROption<Principal<'a>>,
    /// The trace id of this request, also sent back as `x-request-id` on errors.
    pub trace_id: RStr<'a>,
    /// Room to grow without changing the layout.
    pub extensions: RSlice<'a, StrPair<'a>>,
}

/// What a handler answers.
#[repr(C)]
#[derive(StableAbi, Debug)]
pub struct RawResponse {
    /// HTTP status code.
    pub status: u16,
    /// The `content-type` header (empty for none).
    pub content_type: RCowStr<'static>,
    /// Further response headers.
    pub headers: RVec<OwnedPair>,
    /// The response body.
    pub body: RVec<u8>,
    /// Room to grow without changing the layout.
    pub extensions: RVec<OwnedPair>,
}

/// One route of a router, as the plugin declares it.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct RouteSpec {
    /// HTTP method, upper case.
    pub method: RString,
    /// Path below the router's prefix (`""`, `/{id}` …), matchit syntax.
    pub path: RString,
    /// Index passed back to [`PluginMod::handle`].
    pub handler: u32,
    /// Whether the route needs an authenticated caller.
    pub auth: bool,
    /// The permission the caller must hold, if any.
    pub permission: ROption<RString>,
    /// A one-line summary for the API documentation.
    pub summary: RString,
    /// Room to grow without changing the layout.
    pub extensions: RVec<OwnedPair>,
}

/// Keys of [`RouteSpec::extensions`] that document a route for the host's
/// OpenAPI document. Values are text; the schemas are JSON Schema as JSON
/// text. Hosts that do not know a key ignore it, so a route documented this
/// way loads into every 1.x host.
pub mod route_doc {
    /// A longer description (Markdown) shown under the summary.
    pub const DESCRIPTION: &str = "openapi.description";
    /// The JSON Schema of the request body (`application/json`).
    pub const REQUEST: &str = "openapi.request";
    /// The JSON Schema of `data` in the success envelope.
    pub const RESPONSE: &str = "openapi.response";
    /// An object schema whose properties are the query parameters (its
    /// `required` list names the mandatory ones).
    pub const QUERY: &str = "openapi.query";
    /// An object schema whose properties are the path parameters' schemas
    /// (a parameter it does not name is a string).
    pub const PATH: &str = "openapi.path";
}

/// Keys of a route's `extensions` that tell the host how to run it (a
/// host that does not know a key ignores it).
pub mod route_option {
    /// How long the route's handler may take to answer, in whole
    /// milliseconds (1 to 86,400,000), instead of the operator's
    /// `PLUGHOST_PLUGIN_TIMEOUT`.
    pub const TIMEOUT_MS: &str = "plughost.timeout_ms";
}

/// A named router: the unit the manifest's `[api.<name>]` or `[app] router` refers to.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct RouterSpec {
    /// The router's name.
    pub name: RString,
    /// The router's own prefix (app-level plugins mount it at the top level).
    /// Extend-level plugins take their prefix from the manifest instead.
    pub prefix: RString,
    /// The routes.
    pub routes: RVec<RouteSpec>,
    /// Room to grow without changing the layout.
    pub extensions: RVec<OwnedPair>,
}

/// Log levels accepted by [`HostServices::log`].
pub mod level {
    /// Error.
    pub const ERROR: u8 = 1;
    /// Warning.
    pub const WARN: u8 = 2;
    /// Information.
    pub const INFO: u8 = 3;
    /// Debugging detail.
    pub const DEBUG: u8 = 4;
}

/// Outcomes accepted by [`HostServices::job_done`].
pub mod job_outcome {
    /// The run answered `Ok`.
    pub const OK: u8 = 0;
    /// The run answered an error.
    pub const ERROR: u8 = 1;
    /// The run panicked.
    pub const PANICKED: u8 = 2;
}

/// Services the host lends to a plugin at [`PluginMod::init`].
///
/// Every function takes the calling plugin's name first, so the host can
/// attribute log lines and look up that plugin's own settings.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = HostRef)))]
#[sabi(missing_field(option))]
pub struct HostServices {
    /// Writes one line into the host's log.
    pub log: extern "C" fn(plugin: RStr<'_>, level: u8, message: RStr<'_>),
    /// Looks up a setting of the plugin (its manifest's `[settings]`,
    /// overridden by an environment variable of the same name).
    pub setting: extern "C" fn(plugin: RStr<'_>, key: RStr<'_>) -> ROption<RString>,
    /// The host's version.
    pub host_version: extern "C" fn() -> RStr<'static>,
    /// How many plugins are loaded right now.
    pub loaded_plugins: extern "C" fn() -> u32,
    /// A future that completes after `millis` milliseconds, on the host's timer.
    pub sleep: extern "C" fn(millis: u64) -> FfiFuture<()>,
    /// The host database's backend: `sqlite`, `postgresql` or `mysql`.
    pub db_backend: extern "C" fn() -> RStr<'static>,
    /// Runs a query on the host's pool (or inside transaction `tx`, 0 for
    /// none). `params` is a JSON array bound to `?` placeholders; the rows
    /// come back as a JSON array of objects. Errors are JSON
    /// `{"kind": "unique"|"foreign_key"|"other", "message": "…"}`.
    pub sql_query: extern "C" fn(
        plugin: RStr<'_>,
        tx: u64,
        sql: RString,
        params: RString,
    ) -> FfiFuture<RResult<RString, RString>>,
    /// Executes a statement like [`sql_query`](Self::sql_query); answers JSON
    /// `{"rows_affected": N, "last_insert_id": M}`.
    pub sql_execute: extern "C" fn(
        plugin: RStr<'_>,
        tx: u64,
        sql: RString,
        params: RString,
    ) -> FfiFuture<RResult<RString, RString>>,
    /// Begins a transaction and answers its handle.
    pub sql_begin: extern "C" fn(plugin: RStr<'_>) -> FfiFuture<RResult<u64, RString>>,
    /// Commits (`commit` true) or rolls back a transaction.
    pub sql_finish: extern "C" fn(tx: u64, commit: bool) -> FfiFuture<RResult<(), RString>>,
    /// The id for a new row in snowflake mode; `RNone` in autoincrement mode.
    pub next_id: extern "C" fn() -> ROption<i64>,
    /// Reads a key of the plugin's key-value namespace.
    pub kv_get: extern "C" fn(
        plugin: RStr<'_>,
        key: RString,
    ) -> FfiFuture<RResult<ROption<RString>, RString>>,
    /// Writes a key; `ttl_ms` 0 means no expiry.
    pub kv_set: extern "C" fn(
        plugin: RStr<'_>,
        key: RString,
        value: RString,
        ttl_ms: u64,
    ) -> FfiFuture<RResult<(), RString>>,
    /// Deletes a key; answers whether it existed.
    #[sabi(last_prefix_field)]
    pub kv_del: extern "C" fn(plugin: RStr<'_>, key: RString) -> FfiFuture<RResult<bool, RString>>,
    /// Adds `delta` to the whole number stored at a key (a missing or
    /// expired key counts as 0) in one atomic step, and answers the sum.
    /// `ttl_ms` > 0 sets the key's expiry when it has none, so the first
    /// increment of a window starts the window. Added in 1.2 (a 1.0 or 1.1
    /// host has none: read it through the `Option` accessor).
    pub kv_incr: extern "C" fn(
        plugin: RStr<'_>,
        key: RString,
        delta: i64,
        ttl_ms: u64,
    ) -> FfiFuture<RResult<i64, RString>>,
    /// Runs one page of a query and counts the rows of the whole query, in
    /// one statement when the page has rows (or inside transaction `tx`).
    /// `sql` is a `SELECT` without `ORDER BY` or `LIMIT`; `order_by` orders
    /// the page by the query's column names (empty: no order). `params` as
    /// for [`sql_query`](Self::sql_query). Answers JSON
    /// `{"rows": [...], "total": N}`. Added in 1.3 (a 1.0-1.2 host has none:
    /// read it through the `Option` accessor).
    pub sql_page: extern "C" fn(
        plugin: RStr<'_>,
        tx: u64,
        sql: RString,
        order_by: RString,
        params: RString,
        limit: u64,
        offset: u64,
    ) -> FfiFuture<RResult<RString, RString>>,
    /// Runs `task` in the background on the host's runtime, owned by the
    /// plugin's run `owner` (the number its [`PluginMod::start`] received):
    /// cancelled when that run stops, a panic logged with the plugin's and
    /// the task's name. Refused when `owner` is not running. Added in 1.4
    /// (an older host has none: read it through the `Option` accessor).
    pub spawn: extern "C" fn(
        plugin: RStr<'_>,
        owner: u64,
        task: RStr<'_>,
        future: FfiFuture<()>,
    ) -> RResult<(), RString>,
    /// Polls `work` to its end on one of the host's blocking threads (at
    /// most the plugin's share of them at once, the rest wait), so that
    /// blocking code never stalls a request's worker; completes when it
    /// has. Errors when `work` panicked. Added in 1.4.
    pub blocking:
        extern "C" fn(plugin: RStr<'_>, work: FfiFuture<()>) -> FfiFuture<RResult<(), RString>>,
    /// Declares a job of run `owner`: `spec` is JSON `{"name", "every_ms"
    /// | "cron", "cluster": "once" | "each"}`. Refused naming what is wrong
    /// (a name, a cron expression, a run that is not running). Added in 1.4.
    pub job_add:
        extern "C" fn(plugin: RStr<'_>, owner: u64, spec: RStr<'_>) -> RResult<(), RString>,
    /// Completes at the next tick of job `job` that this instance is to
    /// run (the plugin enabled; for a `once` job, the tick taken by this
    /// instance), answering its scheduled time in milliseconds since the
    /// Unix epoch; an error once the run stopped. Added in 1.4.
    pub job_wait: extern "C" fn(
        plugin: RStr<'_>,
        owner: u64,
        job: RStr<'_>,
    ) -> FfiFuture<RResult<i64, RString>>,
    /// Records how the last run of job `job` ended: `outcome` 0 ok, 1 an
    /// error, 2 a panic, with a message. Added in 1.4.
    pub job_done: extern "C" fn(
        plugin: RStr<'_>,
        owner: u64,
        job: RStr<'_>,
        outcome: u8,
        message: ROption<RString>,
    ),
    /// Sends an HTTP request through the host's client, when the plugin
    /// may reach its destination (its manifest's `[permissions] http`, or
    /// the operator's `PLUGHOST_HTTP_ALLOW_<PLUGIN>`). `head` is JSON
    /// `{"method", "url", "headers": [[name, value], ...], "timeout_ms"}`.
    /// Answers JSON `{"status", "headers": [[name, value], ...], "body": N}`
    /// once the response head arrived, N naming its body for
    /// [`http_read`](Self::http_read). Errors are JSON `{"kind": "refused" |
    /// "timeout" | "connect" | "other", "message"}`. Added in 1.4.
    pub http_send: extern "C" fn(
        plugin: RStr<'_>,
        head: RString,
        body: RVec<u8>,
    ) -> FfiFuture<RResult<RString, RString>>,
    /// The next chunk of response body `body`; empty at its end (the body
    /// is then gone). Errors as for `http_send`. Added in 1.4.
    pub http_read:
        extern "C" fn(plugin: RStr<'_>, body: u64) -> FfiFuture<RResult<RVec<u8>, RString>>,
    /// Drops response body `body` unread. Added in 1.4.
    pub http_close: extern "C" fn(plugin: RStr<'_>, body: u64),
    /// Publishes `payload` on `topic` (`<plugin>.<name>`, the plugin's
    /// own) to the subscribers of every instance of the cluster. Added in 1.4.
    pub event_publish: extern "C" fn(
        plugin: RStr<'_>,
        topic: RStr<'_>,
        payload: RString,
    ) -> FfiFuture<RResult<(), RString>>,
    /// Subscribes run `owner` to `topic` (a topic, or `<plugin>.*`): the
    /// plugin's own, or one its manifest declares under `[permissions]
    /// events`. Answers the subscription's number. Added in 1.4.
    pub event_subscribe:
        extern "C" fn(plugin: RStr<'_>, owner: u64, topic: RStr<'_>) -> RResult<u64, RString>,
    /// The next event of subscription `subscription` (its payload); an
    /// error once the run stopped. Added in 1.4.
    pub event_next:
        extern "C" fn(plugin: RStr<'_>, subscription: u64) -> FfiFuture<RResult<RString, RString>>,
    /// Opens a response body that run `owner` sends as it goes; answers
    /// its number, which the handler's response names (extension
    /// `plughost.stream`). With `keep_alive_ms` > 0 the host sends an SSE
    /// comment after that long without a chunk. Added in 1.4.
    pub stream_open:
        extern "C" fn(plugin: RStr<'_>, owner: u64, keep_alive_ms: u64) -> RResult<u64, RString>,
    /// Sends a chunk of stream `stream`, waiting while the client is
    /// slow; an error once the client has gone, the plugin closed it or its
    /// run stopped. Added in 1.4.
    pub stream_send: extern "C" fn(
        plugin: RStr<'_>,
        stream: u64,
        chunk: RVec<u8>,
    ) -> FfiFuture<RResult<(), RString>>,
    /// Ends stream `stream`. Added in 1.4.
    pub stream_close: extern "C" fn(plugin: RStr<'_>, stream: u64),
    /// Calls the identity service: `op` names what to do and `request`
    /// and the answer are JSON (see `identity.rs`): `user.get`
    /// (`{"id"}` or `{"username"}`), `user.external` (`{"provider",
    /// "subject", "username", "nickname", "email"}`: the user bound to that
    /// identity, created and bound at its first use), `token.issue`
    /// (`{"user_id"}`: an access token like a login's) and `user.access`
    /// (`{"user_id"}`: roles and permissions). Refused unless the plugin's
    /// manifest declares what the op needs under `[permissions] identity`
    /// (`users:read`, `users:create`, `tokens:issue`). Errors are JSON
    /// `{"status", "message"}`. Added in 1.5.
    #[sabi(missing_field(option))]
    pub identity: extern "C" fn(
        plugin: RStr<'_>,
        op: RStr<'_>,
        request: RString,
    ) -> FfiFuture<RResult<RString, RString>>,
}

/// The root module every plugin library exports.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    /// The plugin's name, `^[a-z][a-z0-9_]{0,63}$`; it decides everything.
    pub name: RStr<'static>,
    /// The plugin.toml text, embedded at build time.
    pub manifest: RStr<'static>,
    /// The plugin's routers.
    pub routers: extern "C" fn() -> RVec<RouterSpec>,
    /// Called once after loading, before any request.
    pub init: extern "C" fn(host: HostRef) -> RResult<(), RString>,
    /// Handles one request for the route whose [`RouteSpec::handler`] is `handler`.
    #[sabi(last_prefix_field)]
    pub handle: for<'a> extern "C" fn(
        handler: u32,
        request: &'a RawRequest<'a>,
    ) -> LocalBorrowingFfiFuture<'a, RawResponse>,
    /// The files the library carries, as (path, text): the crate's SQL
    /// scripts (`sql/<backend>/<script>.sql`) and, when the plugin passes
    /// `readme:` to `export_plugin!`, its README ([`README_PATH`]),
    /// embedded at build time like the manifest, so that a lone library is
    /// a complete plugin. Added in 1.1 (a 1.0 plugin has none: read it
    /// through the `Option` accessor).
    #[sabi(missing_field(option))]
    pub files: extern "C" fn() -> RVec<OwnedPair>,
    /// Starts run `owner` of the plugin (a number the host gives each run,
    /// never 0): its lifespan start hook, after [`init`](Self::init) and
    /// before its routes are served. Tasks it spawns belong to the run.
    /// Added in 1.4 (an older plugin has no hooks).
    #[sabi(missing_field(option))]
    pub start: extern "C" fn(owner: u64) -> FfiFuture<RResult<(), RString>>,
    /// Stops run `owner`: its lifespan stop hook, when the plugin is
    /// uninstalled, replaced by an upgrade or the host stops. The host
    /// cancels the run's tasks after it. Added in 1.4.
    #[sabi(missing_field(option))]
    pub stop: extern "C" fn(owner: u64) -> FfiFuture<RResult<(), RString>>,
    /// The plugin's authenticator, if it has one: given the
    /// `Authorization` header of an admin request the host's guard does
    /// not recognise, answers the id of the user the credential stands for
    /// (`RSome`), `RNone` when it is not the plugin's, or an error naming
    /// why the plugin's credential is refused (revoked, expired). Added in
    /// 1.5.
    #[sabi(missing_field(option))]
    pub authenticate:
        Option<extern "C" fn(authorization: RString) -> FfiFuture<RResult<ROption<i64>, RString>>>,
    /// The plugin's authorizer (policy), if it has one: asked after RBAC
    /// whether a caller may call an admin route; `request` is JSON
    /// `{"user_id", "username", "superuser", "roles", "permissions",
    /// "method", "route", "path"}`; `RNone` allows, `RSome(reason)` denies
    /// (403 naming the plugin and the reason). Added in 1.5.
    #[sabi(missing_field(option))]
    pub authorize:
        Option<extern "C" fn(request: RString) -> FfiFuture<RResult<ROption<RString>, RString>>>,
}

/// [`PluginMod::authenticate`].
pub type AuthenticateFn =
    extern "C" fn(authorization: RString) -> FfiFuture<RResult<ROption<i64>, RString>>;

/// [`PluginMod::authorize`].
pub type AuthorizeFn =
    extern "C" fn(request: RString) -> FfiFuture<RResult<ROption<RString>, RString>>;

/// The path under which [`PluginMod::files`] carries the plugin's README.
pub const README_PATH: &str = "README.md";

/// The [`RawResponse`] extension naming the stream (from
/// [`HostServices::stream_open`]) that is the response's body.
pub const STREAM_EXTENSION: &str = "plughost.stream";

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "plughost_plugin";
    const NAME: &'static str = "plughost plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
