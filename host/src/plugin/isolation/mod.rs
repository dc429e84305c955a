//! Isolated plugins: a plugin the operator names in
//! `PLUGHOST_ISOLATED_PLUGINS` runs in a supervised child process (the
//! host re-executed), so that its crashes, hangs and leaks cost its own
//! requests and a restart, never the host. The host keeps routing, the
//! gate, authentication, limits, metrics and the access log; the child
//! runs the plugin and every host service it calls.

pub mod cgroup;
pub mod child;
pub mod supervisor;
pub mod wire;

use std::sync::OnceLock;

pub use supervisor::{CallError, IsolationConfig, Reply, Supervisor};

/// Which plugins run isolated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Isolated {
    /// None.
    #[default]
    None,
    /// Every plugin.
    All,
    /// These.
    Named(Vec<String>),
}

impl Isolated {
    /// From `PLUGHOST_ISOLATED_PLUGINS`: `*`, or names separated by commas.
    pub fn parse(text: &str) -> Self {
        let names: Vec<String> = text
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if names.iter().any(|n| n == "*") {
            Self::All
        } else if names.is_empty() {
            Self::None
        } else {
            Self::Named(names)
        }
    }

    /// Whether `plugin` runs isolated.
    pub fn covers(&self, plugin: &str) -> bool {
        match self {
            Self::None => false,
            Self::All => true,
            Self::Named(names) => names.iter().any(|n| n == plugin),
        }
    }
}

static CONFIG: OnceLock<(Isolated, IsolationConfig)> = OnceLock::new();

/// Set once by a serving host: which plugins it isolates, and how.
pub fn configure(isolated: Isolated, config: IsolationConfig) {
    let _ = CONFIG.set((isolated, config));
}

/// Whether this process serves plugins (and so decides which to isolate).
pub fn configured() -> bool {
    CONFIG.get().is_some()
}

/// How to run `plugin` isolated, if this host isolates it.
pub fn config_for(plugin: &str) -> Option<IsolationConfig> {
    CONFIG
        .get()
        .filter(|(isolated, _)| isolated.covers(plugin))
        .map(|(_, config)| config.clone())
}

static SERVE_ARGS: OnceLock<Vec<std::ffi::OsString>> = OnceLock::new();

/// Remembers the arguments `plughost serve` was given (after `serve`),
/// which an isolated plugin's child is given too.
pub fn remember_serve_args(args: Vec<std::ffi::OsString>) {
    let _ = SERVE_ARGS.set(args);
}

/// The arguments `plughost serve` was given.
pub fn serve_args() -> Vec<std::ffi::OsString> {
    SERVE_ARGS.get().cloned().unwrap_or_default()
}

/// The delegated cgroup isolated children get their memory limit in, when
/// plugins run isolated with a cap and one is there; the log says which
/// caps apply.
pub fn memory_cgroup(
    isolated: &Isolated,
    memory_mb: u64,
) -> Option<std::sync::Arc<cgroup::Delegated>> {
    if memory_mb == 0 || *isolated == Isolated::None {
        return None;
    }
    match cgroup::Delegated::find().and_then(|delegated| delegated.prepare().map(|()| delegated)) {
        Ok(delegated) => {
            tracing::info!(
                "isolated plugins' children are capped at {memory_mb} MiB by a cgroup memory limit and RLIMIT_AS"
            );
            Some(std::sync::Arc::new(delegated))
        }
        Err(why) => {
            tracing::info!(
                "isolated plugins' children are capped at {memory_mb} MiB of address space by RLIMIT_AS alone: {why}"
            );
            None
        }
    }
}
