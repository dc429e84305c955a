//! A plugin whose library is open and whose routes are mounted: what a
//! route table points at, and the flag the status gate reads.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use std::collections::BTreeMap;

use plugin_api::abi::{PluginModRef, RouterSpec};

use crate::plugin::{isolation::Supervisor, loading::manifest::PluginManifest, services::lifespan};

/// Where a plugin's code runs.
#[derive(Clone)]
pub enum Code {
    /// In this process: the library's root module.
    Native(PluginModRef),
    /// In a supervised child process.
    Isolated(Arc<Supervisor>),
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Native(_) => f.write_str("Native"),
            Self::Isolated(child) => f.debug_tuple("Isolated").field(child).finish(),
        }
    }
}

impl Code {
    /// The root module, when the code runs here.
    pub fn native(&self) -> Option<PluginModRef> {
        match self {
            Self::Native(module) => Some(*module),
            Self::Isolated(_) => None,
        }
    }

    /// The manifest the library embeds.
    pub fn manifest_text(&self) -> String {
        match self {
            Self::Native(module) => module.manifest().as_str().to_owned(),
            Self::Isolated(child) => child.hello().manifest.clone(),
        }
    }

    /// The files the library embeds (README, SQL scripts), by path.
    pub fn files(&self) -> BTreeMap<String, String> {
        match self {
            Self::Native(module) => super::registry::embedded_files(*module),
            Self::Isolated(child) => child.hello().files.clone(),
        }
    }

    /// The library's routers.
    pub fn routers(&self) -> Vec<RouterSpec> {
        match self {
            Self::Native(module) => (module.routers())().into_vec(),
            Self::Isolated(child) => child
                .hello()
                .routers
                .iter()
                .map(|r| r.clone().into_spec())
                .collect(),
        }
    }

    /// Whether it has an authenticator and an authorizer.
    pub fn hooks(&self) -> (bool, bool) {
        match self {
            Self::Native(module) => (
                module.authenticate().flatten().is_some(),
                module.authorize().flatten().is_some(),
            ),
            Self::Isolated(child) => (child.hello().authenticate, child.hello().authorize),
        }
    }

    /// Asks its authenticator about an `Authorization` header: its user,
    /// none, or its refusal; `None` without an authenticator.
    pub async fn authenticate(&self, authorization: &str) -> Option<Result<Option<i64>, String>> {
        use abi_stable::std_types::{RResult, RString};
        use futures_util::FutureExt as _;
        match self {
            Self::Native(module) => {
                let hook = module.authenticate().flatten()?;
                let answer = std::panic::AssertUnwindSafe(hook(RString::from(authorization)))
                    .catch_unwind()
                    .await;
                Some(match answer {
                    Ok(RResult::ROk(user)) => Ok(user.into_option()),
                    Ok(RResult::RErr(reason)) => Err(reason.into_string()),
                    Err(_) => Err("the authenticator panicked".into()),
                })
            }
            Self::Isolated(child) => {
                child.hello().authenticate.then_some(())?;
                Some(child.authenticate(authorization).await)
            }
        }
    }

    /// Asks its authorizer about an admin call (`plugin_api::AdminCall`
    /// as JSON): its denial, none, or its failure; `None` without an
    /// authorizer.
    pub async fn authorize(&self, call: &str) -> Option<Result<Option<String>, String>> {
        use abi_stable::std_types::{RResult, RString};
        use futures_util::FutureExt as _;
        match self {
            Self::Native(module) => {
                let hook = module.authorize().flatten()?;
                let answer = std::panic::AssertUnwindSafe(hook(RString::from(call)))
                    .catch_unwind()
                    .await;
                Some(match answer {
                    Ok(RResult::ROk(denied)) => Ok(denied.into_option().map(RString::into_string)),
                    Ok(RResult::RErr(e)) => Err(e.into_string()),
                    Err(_) => Err("the authorizer panicked".into()),
                })
            }
            Self::Isolated(child) => {
                child.hello().authorize.then_some(())?;
                Some(child.authorize(call).await)
            }
        }
    }

    /// Runs its init hook.
    pub async fn init(&self) -> Result<(), String> {
        match self {
            Self::Native(module) => match (module.init())(crate::plugin::services::host_services())
            {
                abi_stable::std_types::RResult::ROk(()) => Ok(()),
                abi_stable::std_types::RResult::RErr(message) => Err(message.into_string()),
            },
            Self::Isolated(child) => child.init().await,
        }
    }
}

/// A plugin whose library is loaded and initialised.
pub struct LoadedPlugin {
    /// Its name (the one the library declares).
    pub name: String,
    /// Its validated manifest.
    pub manifest: PluginManifest,
    /// Its code: the library's root module, or its child process.
    pub code: Code,
    /// The library file in the plugin dir.
    pub library: PathBuf,
    /// The sha256 of the library's bytes (its private copy is what is mapped).
    pub digest: String,
    /// The id of the trusted key that signed its package (`None`: unsigned).
    pub signer: Option<String>,
    enabled: Arc<AtomicBool>,
    run: Mutex<Option<Arc<lifespan::Run>>>,
}

impl LoadedPlugin {
    /// The status gate: read on every request, no I/O.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// Sets the cached flag (after the store has recorded it).
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
        if let Code::Isolated(child) = &self.code {
            child.set_enabled(enabled);
        }
    }

    /// Starts this plugin's run (its start hook); a plugin runs once at a time.
    pub(crate) async fn start(&self) -> Result<(), lifespan::StartError> {
        let module = match &self.code {
            Code::Native(module) => *module,
            Code::Isolated(child) => {
                return child.start().await.map_err(lifespan::StartError::Isolated);
            }
        };
        let run = lifespan::start(&self.name, module, self.enabled.clone()).await?;
        if let Some(earlier) = self.run.lock().expect("run lock").replace(run) {
            tracing::warn!(plugin = self.name, run = earlier.id(), "started twice");
        }
        Ok(())
    }

    /// Stops this plugin's run, if it has one: its stop hook, then its
    /// tasks are cancelled.
    pub(crate) async fn stop(&self) {
        let module = match &self.code {
            Code::Native(module) => *module,
            Code::Isolated(child) => {
                child.stop().await;
                tracing::info!(plugin = self.name, "stopped (its child process with it)");
                return;
            }
        };
        let run = self.run.lock().expect("run lock").take();
        if let Some(run) = run {
            lifespan::stop(&run, module).await;
            tracing::info!(plugin = self.name, "stopped");
        }
    }

    /// Its jobs, as the plugin list shows them (none before it started).
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        if let Code::Isolated(child) = &self.code {
            return child.jobs();
        }
        self.run
            .lock()
            .expect("run lock")
            .as_ref()
            .map(|run| run.jobs())
            .unwrap_or_default()
    }
}

impl LoadedPlugin {
    /// A plugin with its gate set to `enabled`.
    pub(crate) fn new(
        name: &str,
        manifest: PluginManifest,
        code: Code,
        library: PathBuf,
        digest: String,
        signer: Option<String>,
        enabled: bool,
    ) -> Self {
        Self {
            name: name.to_owned(),
            manifest,
            code,
            library,
            digest,
            signer,
            enabled: Arc::new(AtomicBool::new(enabled)),
            run: Mutex::new(None),
        }
    }
}
