//! Plugins in the access path (contract 1.5): the authenticators the
//! admin guard asks about a credential it does not know, and the
//! authorizers (policies) it asks after RBAC — the loaded plugins that
//! have them, in dependency order, as of the last change to the set.
//!
//! *Invariant:* a disabled plugin is not asked: its credentials stop
//! working and its policy stops applying at once (one atomic read each).

use std::sync::Arc;

use super::loaded::LoadedPlugin;
use crate::{auth::Principal, plugin::PluginHost};

/// The plugins with access hooks.
#[derive(Default)]
pub struct AccessHooks {
    authenticators: Vec<Arc<LoadedPlugin>>,
    authorizers: Vec<Arc<LoadedPlugin>>,
}

/// Why a plugin's hook refused a request: the plugin and its words.
#[derive(Debug)]
pub struct Refused {
    /// The plugin.
    pub plugin: String,
    /// Why.
    pub reason: String,
}

impl PluginHost {
    /// The permission strings each serving plugin uses: its routes' and
    /// those its manifest defines, sorted.
    pub fn permissions(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let table = self.routes();
        let mut by_plugin: std::collections::BTreeMap<String, Vec<String>> = self
            .in_dependency_order()
            .iter()
            .map(|p| (p.name.clone(), p.manifest.defines.clone()))
            .collect();
        for (plugin, routes) in table.plugins() {
            by_plugin
                .entry(plugin.name.clone())
                .or_default()
                .extend(routes.iter().filter_map(|r| r.permission.clone()));
        }
        for strings in by_plugin.values_mut() {
            strings.sort();
            strings.dedup();
        }
        by_plugin
    }

    /// Records which loaded plugins have access hooks.
    pub(crate) fn publish_access(&self) {
        let ordered = self.in_dependency_order();
        let with = |has: fn(&LoadedPlugin) -> bool| -> Vec<Arc<LoadedPlugin>> {
            ordered.iter().filter(|p| has(p)).cloned().collect()
        };
        self.access.store(Arc::new(AccessHooks {
            authenticators: with(|p| p.code.hooks().0),
            authorizers: with(|p| p.code.hooks().1),
        }));
    }

    /// The enabled plugins with an authenticator, in dependency order.
    pub fn authenticators(&self) -> Vec<String> {
        self.access
            .load()
            .authenticators
            .iter()
            .filter(|p| p.enabled())
            .map(|p| p.name.clone())
            .collect()
    }

    /// Whether `plugin` is an enabled authenticator (a cached answer of
    /// a plugin disabled since is not used).
    pub fn authenticates(&self, plugin: &str) -> bool {
        self.access
            .load()
            .authenticators
            .iter()
            .any(|p| p.name == plugin && p.enabled())
    }

    /// Asks the enabled authenticators, in order, whose `authorization` is:
    /// the first to answer a user wins (`Some((plugin, user))`); `None`
    /// when none knows it; an error when one refuses it as its own.
    pub async fn authenticate_by_plugins(
        &self,
        authorization: &str,
    ) -> Result<Option<(String, i64)>, Refused> {
        let hooks = self.access.load_full();
        for plugin in hooks.authenticators.iter().filter(|p| p.enabled()) {
            match plugin.code.authenticate(authorization).await {
                None | Some(Ok(None)) => {}
                Some(Ok(Some(user))) => return Ok(Some((plugin.name.clone(), user))),
                Some(Err(reason)) => {
                    return Err(Refused {
                        plugin: plugin.name.clone(),
                        reason,
                    });
                }
            }
        }
        Ok(None)
    }

    /// Whether any enabled plugin has an authorizer.
    pub fn has_authorizers(&self) -> bool {
        self.access.load().authorizers.iter().any(|p| p.enabled())
    }

    /// Asks the enabled authorizers, in order, whether `caller` may call
    /// `method` `route` at `path`: the first to deny decides. An
    /// authorizer that fails denies too (a policy that cannot be asked
    /// lets nothing through).
    pub async fn authorize_by_plugins(
        &self,
        caller: &Principal,
        method: &str,
        route: &str,
        path: &str,
    ) -> Result<(), Refused> {
        let hooks = self.access.load_full();
        let mut enabled = hooks.authorizers.iter().filter(|p| p.enabled()).peekable();
        if enabled.peek().is_none() {
            return Ok(());
        }
        let call = serde_json::to_string(&plugin_api::AdminCall {
            user_id: caller.user_id,
            username: caller.username.clone(),
            superuser: caller.superuser,
            roles: caller.roles.clone(),
            permissions: caller.permissions.clone(),
            method: method.to_owned(),
            route: route.to_owned(),
            path: path.to_owned(),
        })
        .unwrap_or_default();
        for plugin in enabled {
            let reason = match plugin.code.authorize(&call).await {
                None | Some(Ok(None)) => continue,
                Some(Ok(Some(reason))) => reason,
                Some(Err(e)) => format!("the policy could not decide ({e})"),
            };
            return Err(Refused {
                plugin: plugin.name.clone(),
                reason,
            });
        }
        Ok(())
    }
}
