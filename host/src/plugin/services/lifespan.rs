//! Plugin runs: what a started plugin owns in time. A run begins with the
//! plugin's start hook and ends with its stop hook; the tasks it spawns
//! belong to it and are cancelled when it ends. Blocking work runs on the
//! host's blocking threads, a bounded share per plugin.
//!
//! *Invariant:* a stopped run owns no task: its token is cancelled and it
//! is out of the registry before `stop` returns, so a task spawned after
//! that is refused, and one still running ends at its next poll.

use std::{
    collections::{BTreeMap, HashMap},
    panic::AssertUnwindSafe,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use abi_stable::std_types::{RResult, RStr, RString};
use async_ffi::FfiFuture;
use futures_util::FutureExt as _;
use plugin_api::abi::PluginModRef;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use super::jobs::Job;
use super::waker::IntoPluginFuture as _;
use crate::config::PluginRunLimits;

/// One run of a started plugin: its id (what its tasks name), and the
/// tasks it owns.
pub struct Run {
    id: u64,
    pub(super) plugin: String,
    cancel: CancellationToken,
    tasks: AtomicUsize,
    idle: Notify,
    /// The plugin's flag, as its gate reads it.
    enabled: Arc<AtomicBool>,
    /// The jobs it declared, by name.
    pub(super) jobs: Mutex<BTreeMap<String, Arc<Job>>>,
}

impl Run {
    /// The run's number (never 0).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// How many of its tasks are running.
    pub fn tasks(&self) -> usize {
        self.tasks.load(Ordering::Acquire)
    }

    /// Whether the plugin is enabled now.
    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Completes when the run stops.
    pub(super) async fn stopped(&self) {
        self.cancel.cancelled().await;
    }

    /// Its jobs, as the plugin list shows them.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        self.jobs
            .lock()
            .expect("jobs lock")
            .values()
            .map(|job| job.describe())
            .collect()
    }
}

/// The run `owner` of `plugin`, while it runs.
pub(super) fn run_of(plugin: &str, owner: u64) -> Option<Arc<Run>> {
    RUNS.lock()
        .expect("runs lock")
        .get(&owner)
        .filter(|r| r.plugin == plugin && !r.cancel.is_cancelled())
        .cloned()
}

static RUNS: Mutex<BTreeMap<u64, Arc<Run>>> = Mutex::new(BTreeMap::new());
static NEXT_RUN: AtomicU64 = AtomicU64::new(1);
static TASKS: OnceLock<tokio::runtime::Handle> = OnceLock::new();
static LIMITS: OnceLock<PluginRunLimits> = OnceLock::new();
static BLOCKING: Mutex<Option<HashMap<String, Arc<Semaphore>>>> = Mutex::new(None);

/// Plugin tasks run on the runtime of the caller (the server's main one,
/// which serves no request), from now on; `limits` bound hooks and
/// blocking work. Called once by a serving host before it starts plugins.
pub fn serve_here(limits: PluginRunLimits) {
    let _ = TASKS.set(tokio::runtime::Handle::current());
    let _ = LIMITS.set(limits);
}

fn limits() -> PluginRunLimits {
    LIMITS.get().copied().unwrap_or_default()
}

/// How long a start or stop hook may take.
pub fn hook_timeout() -> Duration {
    limits().hook_timeout
}

/// Why a run could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    /// The hook answered an error, or panicked.
    #[error("its start hook failed: {0}")]
    Failed(String),
    /// The hook did not finish in time.
    #[error("its start hook did not finish within {0:?} (PLUGHOST_HOOK_TIMEOUT)")]
    TimedOut(Duration),
    /// An isolated plugin's child said why (in these words).
    #[error("{0}")]
    Isolated(String),
}

/// Starts a run of `plugin` (named `name`): registers it, then runs the
/// plugin's start hook (a plugin older than contract 1.4 has none), bounded
/// by the hook time-out. On failure the run is stopped again (its tasks
/// cancelled) and the reason answered.
pub async fn start(
    name: &str,
    module: PluginModRef,
    enabled: Arc<AtomicBool>,
) -> Result<Arc<Run>, StartError> {
    let run = Arc::new(Run {
        id: NEXT_RUN.fetch_add(1, Ordering::Relaxed),
        plugin: name.to_owned(),
        cancel: CancellationToken::new(),
        tasks: AtomicUsize::new(0),
        idle: Notify::new(),
        enabled,
        jobs: Mutex::default(),
    });
    RUNS.lock().expect("runs lock").insert(run.id, run.clone());
    let Some(hook) = module.start() else {
        return Ok(run);
    };
    let timeout = limits().hook_timeout;
    let outcome =
        tokio::time::timeout(timeout, AssertUnwindSafe(hook(run.id)).catch_unwind()).await;
    let error = match outcome {
        Ok(Ok(RResult::ROk(()))) => return Ok(run),
        Ok(Ok(RResult::RErr(message))) => StartError::Failed(message.into_string()),
        Ok(Err(_)) => StartError::Failed("it panicked".to_owned()),
        Err(_) => StartError::TimedOut(timeout),
    };
    end(&run).await;
    Err(error)
}

/// Stops `run` of `plugin`: the plugin's stop hook (bounded by the hook
/// time-out; a failure is logged), then its tasks are cancelled.
pub async fn stop(run: &Arc<Run>, module: PluginModRef) {
    if let Some(hook) = module.stop() {
        let timeout = limits().hook_timeout;
        let outcome =
            tokio::time::timeout(timeout, AssertUnwindSafe(hook(run.id)).catch_unwind()).await;
        let plugin = run.plugin.as_str();
        match outcome {
            Ok(Ok(RResult::ROk(()))) => {}
            Ok(Ok(RResult::RErr(message))) => {
                tracing::warn!(plugin, "its stop hook failed: {message}");
            }
            Ok(Err(_)) => tracing::warn!(plugin, "its stop hook panicked"),
            Err(_) => tracing::warn!(
                plugin,
                "its stop hook did not finish within {timeout:?} (PLUGHOST_HOOK_TIMEOUT); its tasks are cancelled"
            ),
        }
    }
    end(run).await;
}

/// Takes `run` out of the registry and cancels its tasks; waits (briefly)
/// until they have ended.
async fn end(run: &Arc<Run>) {
    RUNS.lock().expect("runs lock").remove(&run.id);
    run.cancel.cancel();
    crate::events::end_run(run.id);
    super::streams::end_run(run.id);
    // A cancelled task ends at its next poll, which the runtime makes at
    // once; only a task stuck inside a blocking call takes longer.
    let ended = async {
        while run.tasks() > 0 {
            let idle = run.idle.notified();
            if run.tasks() == 0 {
                break;
            }
            idle.await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(5), ended)
        .await
        .is_err()
    {
        tracing::warn!(
            plugin = run.plugin.as_str(),
            tasks = run.tasks(),
            "tasks still running 5 s after they were cancelled (blocked inside a poll)"
        );
    }
}

fn refused(message: String) -> RResult<(), RString> {
    RResult::RErr(RString::from(message))
}

/// [`HostServices::spawn`](plugin_api::abi::HostServices::spawn).
pub(super) extern "C" fn spawn(
    plugin: RStr<'_>,
    owner: u64,
    task: RStr<'_>,
    future: FfiFuture<()>,
) -> RResult<(), RString> {
    let (plugin, task) = (plugin.as_str(), task.as_str().to_owned());
    let Some(run) = run_of(plugin, owner) else {
        return refused(format!(
            "plugin '{plugin}' cannot spawn task '{task}': it is not running (tasks may be spawned from its start hook on, until it stops)"
        ));
    };
    let Some(runtime) = TASKS.get() else {
        return refused(format!(
            "plugin '{plugin}' cannot spawn task '{task}': only a serving host (plughost serve) runs plugin tasks"
        ));
    };
    run.tasks.fetch_add(1, Ordering::AcqRel);
    let running = metrics::gauge!("plughost_plugin_tasks", "plugin" => plugin.to_owned());
    running.increment(1.0);
    runtime.spawn(async move {
        let outcome = tokio::select! {
            biased;
            () = run.cancel.cancelled() => "cancelled",
            ended = AssertUnwindSafe(future).catch_unwind() => match ended {
                Ok(()) => "finished",
                Err(_) => {
                    tracing::error!(target: "plugin", plugin = run.plugin.as_str(), task = task.as_str(), "task panicked; the plugin's other tasks and routes go on");
                    crate::observe::panicked_outside(&run.plugin);
                    "panicked"
                }
            },
        };
        running.decrement(1.0);
        metrics::counter!("plughost_plugin_tasks_total", "plugin" => run.plugin.clone(), "outcome" => outcome)
            .increment(1);
        if run.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            run.idle.notify_waiters();
        }
    });
    RResult::ROk(())
}

/// The blocking threads `plugin` may hold at once.
fn blocking_share(plugin: &str) -> Arc<Semaphore> {
    BLOCKING
        .lock()
        .expect("blocking lock")
        .get_or_insert_with(HashMap::new)
        .entry(plugin.to_owned())
        .or_insert_with(|| Arc::new(Semaphore::new(limits().blocking.max(1))))
        .clone()
}

/// [`HostServices::blocking`](plugin_api::abi::HostServices::blocking).
pub(super) extern "C" fn blocking(
    plugin: RStr<'_>,
    work: FfiFuture<()>,
) -> FfiFuture<RResult<(), RString>> {
    let plugin = plugin.as_str().to_owned();
    async move {
        let permit = blocking_share(&plugin)
            .acquire_owned()
            .await
            .map_err(|e| RString::from(e.to_string()))?;
        // The permit goes with the work: a caller that stops waiting does
        // not free the thread the work still holds.
        let ran = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            futures_executor::block_on(work);
        })
        .await;
        ran.map_err(|e| {
            if e.is_panic() {
                RString::from(format!("blocking work of plugin '{plugin}' panicked"))
            } else {
                RString::from(format!("blocking work of plugin '{plugin}' was cancelled"))
            }
        })
    }
    .map(RResult::from)
    .into_plugin_ffi()
}
