//! Starting and stopping the loaded plugins: start hooks in dependency
//! order before a serving host takes requests (and before an installed
//! plugin's routes go live), stop hooks in reverse order when the host
//! stops, and the stop of every plugin that leaves the running set.
//!
//! *Invariant:* only a serving host starts plugins (a CLI command loads
//! them, runs their `init` and nothing else), and every plugin that leaves
//! the running set of a serving host is stopped.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
};

use super::{
    loaded::LoadedPlugin,
    registry::{self, PluginRecord, Refusal},
};
use crate::{
    config::PluginRunLimits,
    plugin::{PluginHost, services::lifespan},
};

impl PluginHost {
    /// Starts every loaded plugin, dependencies first, before the host
    /// serves them: a plugin whose start hook fails or times out is
    /// refused with the reason (its routes out), and so are the plugins
    /// that depend on it; the others serve. Plugin tasks run on the
    /// caller's runtime from now on.
    pub async fn start_plugins(&self, limits: PluginRunLimits) {
        lifespan::serve_here(limits);
        crate::events::serve();
        self.serving.store(true, Ordering::Release);
        let mut failed: BTreeSet<String> = BTreeSet::new();
        for plugin in self.in_dependency_order() {
            let name = plugin.name.clone();
            let reason = match plugin
                .manifest
                .depends_on
                .iter()
                .find(|d| failed.contains(*d))
            {
                Some(dependency) => Some(Refusal::DependencyNotStarted(dependency.clone())),
                None => plugin.start().await.err().map(Refusal::from),
            };
            if let Some(reason) = reason {
                tracing::warn!(plugin = name, "plugin not served: {reason}");
                let left = self.set.fail(&name, reason.to_string());
                self.retire(left).await;
                failed.insert(name);
            }
        }
        if !failed.is_empty() {
            self.publish_services();
            self.report_soon();
        }
    }

    /// Stops every started plugin, dependents first (the host is stopping
    /// and serves no more requests).
    pub async fn stop_plugins(&self) {
        self.serving.store(false, Ordering::Release);
        for plugin in self.in_dependency_order().iter().rev() {
            plugin.stop().await;
        }
    }

    /// Whether plugins are started when they mount (a serving host).
    pub(crate) fn serving(&self) -> bool {
        self.serving.load(Ordering::Acquire)
    }

    /// Stops a plugin that left the running set (uninstalled, replaced,
    /// refused), if it was started.
    pub(crate) async fn retire(&self, left: Option<Arc<LoadedPlugin>>) {
        if let Some(plugin) = left {
            plugin.stop().await;
        }
    }

    /// The loaded plugins, dependencies first.
    pub(crate) fn in_dependency_order(&self) -> Vec<Arc<LoadedPlugin>> {
        let mut loaded: BTreeMap<String, Arc<LoadedPlugin>> = self
            .set
            .records()
            .values()
            .filter_map(PluginRecord::loaded)
            .map(|p| (p.name.clone(), p.clone()))
            .collect();
        let deps = loaded
            .iter()
            .map(|(name, p)| (name.clone(), p.manifest.depends_on.clone()))
            .collect();
        let (order, _) = registry::dependency_order(&deps);
        order
            .iter()
            .filter_map(|name| loaded.remove(name))
            .collect()
    }
}
