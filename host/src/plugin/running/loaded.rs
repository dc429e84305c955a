//! A plugin whose library is open and whose routes are mounted: what a
//! route table points at, and the flag the status gate reads.

use std::{
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use plugin_api::abi::PluginModRef;

use crate::plugin::{loading::manifest::PluginManifest, services::lifespan};

/// A plugin whose library is loaded and initialised.
pub struct LoadedPlugin {
    /// Its name (the one the library declares).
    pub name: String,
    /// Its validated manifest.
    pub manifest: PluginManifest,
    /// The library's root module.
    pub module: PluginModRef,
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
    }

    /// Starts this plugin's run (its start hook); a plugin runs once at a time.
    pub(crate) async fn start(&self) -> Result<(), lifespan::StartError> {
        let run = lifespan::start(&self.name, self.module, self.enabled.clone()).await?;
        if let Some(earlier) = self.run.lock().expect("run lock").replace(run) {
            tracing::warn!(plugin = self.name, run = earlier.id(), "started twice");
        }
        Ok(())
    }

    /// Stops this plugin's run, if it has one: its stop hook, then its
    /// tasks are cancelled.
    pub(crate) async fn stop(&self) {
        let run = self.run.lock().expect("run lock").take();
        if let Some(run) = run {
            lifespan::stop(&run, self.module).await;
            tracing::info!(plugin = self.name, "stopped");
        }
    }

    /// Its jobs, as the plugin list shows them (none before it started).
    pub fn jobs(&self) -> Vec<serde_json::Value> {
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
        module: PluginModRef,
        library: PathBuf,
        digest: String,
        signer: Option<String>,
        enabled: bool,
    ) -> Self {
        Self {
            name: name.to_owned(),
            manifest,
            module,
            library,
            digest,
            signer,
            enabled: Arc::new(AtomicBool::new(enabled)),
            run: Mutex::new(None),
        }
    }
}
