//! Support code for [`export_plugin!`](crate::export_plugin). Not a public API.

use std::{panic, sync::OnceLock};

pub use abi_stable;
use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{RResult, RStr, RString, RVec},
};
use async_ffi::LocalBorrowingFfiFuture;
pub use rust_embed;

/// The wire format of database errors and statement parameters, shared
/// by the host and the test host.
pub use crate::db::{wire_error, wire_params};

use crate::{
    Error, Host, IntoResponse, Request, Router,
    abi::{HostRef, PluginMod, PluginModRef, RawRequest, RawResponse, RouterSpec},
    router::{RouteTable, panic_response},
};

/// Whether the topic pattern `pattern` (a topic, or `<prefix>.*` for every
/// topic under a prefix) matches `topic`; the host and the test host
/// deliver by it.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => topic
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.len() > 1 && rest.starts_with('.')),
        None => pattern == topic,
    }
}

/// A plugin's optional init hook.
pub type InitFn = fn(&Host) -> Result<(), String>;

/// The future of a lifespan hook.
pub type HookFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>>;

/// A plugin's optional start or stop hook, as the macro wraps it.
pub type HookFn = fn() -> HookFuture;

/// Everything the export macro keeps in the plugin's one `static`.
pub struct PluginState {
    name: &'static str,
    routers: fn() -> Vec<Router>,
    init: Option<InitFn>,
    pub(crate) start: Option<HookFn>,
    pub(crate) stop: Option<HookFn>,
    pub(crate) authenticate: Option<AuthenticateHook>,
    pub(crate) authorize: Option<AuthorizeHook>,
    table: OnceLock<RouteTable>,
}

impl PluginState {
    /// The state of a plugin named `name`.
    pub const fn new(
        name: &'static str,
        routers: fn() -> Vec<Router>,
        init: Option<InitFn>,
        start: Option<HookFn>,
        stop: Option<HookFn>,
        authenticate: Option<AuthenticateHook>,
        authorize: Option<AuthorizeHook>,
    ) -> Self {
        Self {
            name,
            routers,
            init,
            start,
            stop,
            authenticate,
            authorize,
            table: OnceLock::new(),
        }
    }

    fn table(&self) -> &RouteTable {
        self.table
            .get_or_init(|| RouteTable::build((self.routers)()))
    }
}

/// Gives the generic `extern "C"` functions access to the plugin's `static`
/// and to the files embedded into its crate.
pub trait StateAccess: 'static {
    /// The plugin's state.
    fn state() -> &'static PluginState;
    /// The embedded files, (path, text).
    fn files() -> Vec<(String, String)>;
}

/// Expands to `Some(init)` or `None`.
#[macro_export]
#[doc(hidden)]
macro_rules! __init_or_none {
    () => {
        None
    };
    ($init:path) => {
        Some($init)
    };
}
pub use crate::__init_or_none as init_or_none;

/// Expands to `Some(hook)` (the async fn wrapped into a [`HookFn`]) or `None`.
#[macro_export]
#[doc(hidden)]
macro_rules! __hook_or_none {
    () => {
        None
    };
    ($hook:path) => {
        Some(|| -> $crate::__private::HookFuture { ::std::boxed::Box::pin($hook()) })
    };
}
pub use crate::__hook_or_none as hook_or_none;

pub use crate::__access_hook_or_none as access_hook_or_none;
pub use crate::identity::{AuthenticateFuture, AuthenticateHook, AuthorizeFuture, AuthorizeHook};

/// A plugin without routes (a capability plugin) exports none.
pub fn no_routers() -> Vec<Router> {
    Vec::new()
}

/// Expands to the routers function, or [`no_routers`].
#[macro_export]
#[doc(hidden)]
macro_rules! __routers_or_none {
    () => {
        $crate::__private::no_routers
    };
    ($routers:path) => {
        $routers
    };
}
pub use crate::__routers_or_none as routers_or_none;

static NAME: OnceLock<&'static str> = OnceLock::new();

/// The name of the plugin this copy of plugin-api is linked into.
pub(crate) fn current_plugin_name() -> &'static str {
    NAME.get().copied().unwrap_or("unknown")
}

/// Builds the root module of the plugin whose state `S` gives.
pub fn root_module<S: StateAccess>(name: &'static str, manifest: &'static str) -> PluginModRef {
    let _ = NAME.set(name);
    PluginMod {
        name: RStr::from_str(name),
        manifest: RStr::from_str(manifest),
        routers: routers_fn::<S>,
        init: init_fn::<S>,
        handle: handle_fn::<S>,
        files: files_fn::<S>,
        start: crate::lifespan::start_fn::<S>,
        stop: crate::lifespan::stop_fn::<S>,
        authenticate: S::state()
            .authenticate
            .map(|_| crate::identity::authenticate_fn::<S> as crate::abi::AuthenticateFn),
        authorize: S::state()
            .authorize
            .map(|_| crate::identity::authorize_fn::<S> as crate::abi::AuthorizeFn),
    }
    .leak_into_prefix()
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

extern "C" fn routers_fn<S: StateAccess>() -> RVec<RouterSpec> {
    match panic::catch_unwind(panic::AssertUnwindSafe(|| S::state().table().specs.clone())) {
        Ok(specs) => RVec::from(specs),
        // A plugin whose routers cannot be built has no routes; the host
        // reports a plugin without routes against its manifest.
        Err(_) => RVec::new(),
    }
}

extern "C" fn files_fn<S: StateAccess>() -> RVec<crate::abi::OwnedPair> {
    panic::catch_unwind(S::files)
        .unwrap_or_default()
        .into_iter()
        .map(|(path, text)| abi_stable::std_types::Tuple2(RString::from(path), RString::from(text)))
        .collect()
}

extern "C" fn init_fn<S: StateAccess>(services: HostRef) -> RResult<(), RString> {
    let state = S::state();
    let host = crate::host::install(services, state.name);
    panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        crate::host().error(&format!(
            "panicked{location}: {}",
            payload_text(info.payload())
        ));
    }));
    let result = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        state.table();
        state.init.map_or(Ok(()), |init| init(host))
    }));
    match result {
        Ok(Ok(())) => RResult::ROk(()),
        Ok(Err(message)) => RResult::RErr(RString::from(message)),
        Err(payload) => RResult::RErr(RString::from(format!(
            "init panicked: {}",
            payload_text(payload.as_ref())
        ))),
    }
}

fn ready<'a>(response: RawResponse) -> LocalBorrowingFfiFuture<'a, RawResponse> {
    LocalBorrowingFfiFuture::new(async move { response })
}

extern "C" fn handle_fn<'a, S: StateAccess>(
    handler: u32,
    raw: &'a RawRequest<'a>,
) -> LocalBorrowingFfiFuture<'a, RawResponse> {
    let call = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let table = S::state().table();
        table.handlers.get(handler as usize).map(|h| h.call(raw))
    }));
    let request = Request::from_raw(raw);
    match call {
        Ok(Some(future)) => future,
        Ok(None) => ready(
            Error::internal(format!(
                "plugin '{}' has no handler #{handler}",
                current_plugin_name()
            ))
            .into_response(&request)
            .into_raw(),
        ),
        Err(_) => ready(panic_response(&request)),
    }
}
