//! A plugin's life in time (contract 1.4): the start and stop hooks,
//! background tasks owned by the plugin's run, and blocking work on the
//! host's blocking threads.

use std::{
    future::Future,
    panic,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use abi_stable::std_types::{RResult, RStr, RString};
use async_ffi::{FfiFuture, FutureExt as _};
use futures_util::FutureExt as _;

use crate::{__private::StateAccess, Error, Host};

/// The run the host started this plugin as (0: not started, or stopped).
static OWNER: AtomicU64 = AtomicU64::new(0);

/// The run the host started this plugin as (0: none).
pub(crate) fn owner() -> u64 {
    OWNER.load(Ordering::Acquire)
}

/// What went wrong with a task or blocking work: the host refused it (the
/// plugin is not running, or the host is older than plugin-api 1.4 for
/// [`Host::spawn`]), or the work panicked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError(String);

impl TaskError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }

    /// What happened, in words.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for TaskError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TaskError {}

impl From<TaskError> for Error {
    fn from(e: TaskError) -> Self {
        Error::internal(e.0)
    }
}

impl Host {
    /// Runs `future` in the background on the host's runtime, as a task
    /// named `name` owned by this plugin: it is cancelled (dropped at its
    /// next `.await`) when the plugin stops — uninstalled, replaced by an
    /// upgrade, or the host shutting down — and a panic in it is logged
    /// with the plugin's and the task's name and ends only that task.
    ///
    /// A plugin runs from its start hook on (a host starts every plugin
    /// before serving it), so handlers and the start hook may spawn; the
    /// `init` hook and the `plughost` CLI commands, which run no plugin,
    /// get an error. A host older than plugin-api 1.4 has no tasks.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), plugin_api::TaskError> {
    /// use std::time::Duration;
    /// let host = plugin_api::host();
    /// host.spawn("heartbeat", async {
    ///     loop {
    ///         plugin_api::host().sleep(Duration::from_secs(60)).await;
    ///         plugin_api::host().info("still here");
    ///     }
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn spawn<F>(&self, name: &str, future: F) -> Result<(), TaskError>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let Some(spawn) = self.services().spawn() else {
            return Err(TaskError(
                "this host runs no plugin tasks: it needs a host built with plugin-api 1.4 or later"
                    .to_owned(),
            ));
        };
        match spawn(
            RStr::from(self.plugin()),
            owner(),
            RStr::from(name),
            future.into_ffi(),
        ) {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(TaskError(e.into_string())),
        }
    }

    /// Runs `work` on one of the host's blocking threads and answers what
    /// it returns, so that a crate with a blocking API (SMTP, LDAP, image
    /// work, a slow file) never stalls the worker serving requests. The
    /// host runs a bounded number of one plugin's blocking calls at once
    /// (`PLUGHOST_PLUGIN_BLOCKING`); the others wait their turn.
    ///
    /// A panic in `work` is an error (and a line in the host's log). On a
    /// host older than plugin-api 1.4, `work` runs where it is called.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), plugin_api::TaskError> {
    /// let size = plugin_api::host()
    ///     .blocking(|| std::fs::metadata("/etc/hostname").map(|m| m.len()))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn blocking<T, F>(&self, work: F) -> Result<T, TaskError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let Some(blocking) = self.services().blocking() else {
            return Ok(work());
        };
        let slot = Arc::new(Mutex::new(None));
        let filled = slot.clone();
        let job = async move {
            let value = work();
            *filled.lock().unwrap_or_else(|e| e.into_inner()) = Some(value);
        };
        match blocking(RStr::from(self.plugin()), job.into_ffi()).await {
            RResult::ROk(()) => slot
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .ok_or_else(|| TaskError("the blocking work did not finish".to_owned())),
            RResult::RErr(e) => Err(TaskError(e.into_string())),
        }
    }
}

/// Runs one of the plugin's lifespan hooks, a panic in it an error.
fn run_hook(
    hook: Option<crate::__private::HookFn>,
    what: &'static str,
) -> FfiFuture<RResult<(), RString>> {
    let Some(hook) = hook else {
        return async { RResult::ROk(()) }.into_ffi();
    };
    async move {
        let future = match panic::catch_unwind(hook) {
            Ok(future) => future,
            Err(_) => return RResult::RErr(RString::from(format!("the {what} hook panicked"))),
        };
        match panic::AssertUnwindSafe(future).catch_unwind().await {
            Ok(Ok(())) => RResult::ROk(()),
            Ok(Err(message)) => RResult::RErr(RString::from(message)),
            Err(_) => RResult::RErr(RString::from(format!("the {what} hook panicked"))),
        }
    }
    .into_ffi()
}

/// [`PluginMod::start`](crate::abi::PluginMod::start): records the run,
/// then runs the start hook.
pub(crate) extern "C" fn start_fn<S: StateAccess>(owner: u64) -> FfiFuture<RResult<(), RString>> {
    OWNER.store(owner, Ordering::Release);
    run_hook(S::state().start, "start")
}

/// [`PluginMod::stop`](crate::abi::PluginMod::stop): runs the stop hook,
/// then forgets the run (unless a newer one started meanwhile).
pub(crate) extern "C" fn stop_fn<S: StateAccess>(owner: u64) -> FfiFuture<RResult<(), RString>> {
    let hook = run_hook(S::state().stop, "stop");
    async move {
        let result = hook.await;
        let _ = OWNER.compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Acquire);
        result
    }
    .into_ffi()
}
