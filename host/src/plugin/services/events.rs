//! The events service: a plugin publishes on its own topics
//! (`<plugin>.<name>`) and subscribes to its own and to the ones its
//! manifest declares (`[permissions] events`), the host's own `sys.*`
//! included; the events travel on the cluster's bus (`crate::events`).
//!
//! *Invariant:* a stopped run has no subscription (they end with it), and
//! no plugin publishes on a topic it does not own.

use std::{collections::HashMap, sync::RwLock};

use abi_stable::std_types::{RResult, RStr, RString};
use async_ffi::FfiFuture;
use futures_util::FutureExt as _;

use plugin_api::__private::topic_matches as matches;

use super::{lifespan::run_of, waker::IntoPluginFuture as _};
use crate::events as bus;

/// The topics each plugin may subscribe to besides its own.
static DECLARED: RwLock<Option<HashMap<String, Vec<String>>>> = RwLock::new(None);

/// Records the topics each loaded plugin declared (`[permissions] events`).
pub fn publish_declared(declared: HashMap<String, Vec<String>>) {
    *DECLARED.write().expect("declared lock") = Some(declared);
}

/// Whether `pattern` asks for nothing more than `allowed` gives.
fn covered(allowed: &str, pattern: &str) -> bool {
    match (allowed.strip_suffix(".*"), pattern.strip_suffix(".*")) {
        (Some(a), Some(p)) => p == a || matches(allowed, p),
        (Some(_), None) => matches(allowed, pattern),
        (None, Some(_)) => false,
        (None, None) => allowed == pattern,
    }
}

/// Checks a topic or pattern's shape: `<plugin>.<name>`, the name of
/// letters, digits and `_-.`, optionally ending in `.*`.
pub fn check_topic(text: &str) -> Result<(), String> {
    let body = text.strip_suffix(".*").unwrap_or(text);
    let (plugin, name) = body.split_once('.').unwrap_or((body, ""));
    let valid = crate::plugin::loading::manifest::is_valid_plugin_name(plugin)
        && (text.ends_with(".*") || !name.is_empty())
        && text.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{text}' is not a topic: <plugin>.<name> (letters, digits, '_', '-', '.'), or <plugin>.* for all of a plugin's"
        ))
    }
}

/// [`HostServices::event_publish`](plugin_api::abi::HostServices::event_publish).
pub(super) extern "C" fn event_publish(
    plugin: RStr<'_>,
    topic: RStr<'_>,
    payload: RString,
) -> FfiFuture<RResult<(), RString>> {
    let (plugin, topic, payload) = (
        plugin.as_str().to_owned(),
        topic.as_str().to_owned(),
        payload.into_string(),
    );
    async move {
        check_topic(&topic)?;
        if topic.ends_with(".*") || !topic.starts_with(&format!("{plugin}.")) {
            return Err(format!(
                "plugin '{plugin}' may publish only on its own topics ({plugin}.<name>), not '{topic}'"
            ));
        }
        bus::publish(&topic, &payload).await
    }
    .map(|r| r.map_err(RString::from).into())
    .into_plugin_ffi()
}

/// [`HostServices::event_subscribe`](plugin_api::abi::HostServices::event_subscribe).
pub(super) extern "C" fn event_subscribe(
    plugin: RStr<'_>,
    owner: u64,
    pattern: RStr<'_>,
) -> RResult<u64, RString> {
    let (plugin, pattern) = (plugin.as_str(), pattern.as_str());
    let subscribed = (|| {
        check_topic(pattern)?;
        let run = run_of(plugin, owner).ok_or_else(|| {
            format!("plugin '{plugin}' cannot subscribe: it is not running (subscribe from its start hook on)")
        })?;
        let own = pattern.starts_with(&format!("{plugin}."));
        let declared = DECLARED
            .read()
            .expect("declared lock")
            .as_ref()
            .and_then(|d| d.get(plugin).cloned())
            .unwrap_or_default();
        if !own && !declared.iter().any(|allowed| covered(allowed, pattern)) {
            return Err(format!(
                "plugin '{plugin}' may not subscribe to '{pattern}': declare it in plugin.toml [permissions] events"
            ));
        }
        let id = bus::subscribe(plugin, run.id(), pattern);
        Ok(id)
    })();
    subscribed.map_err(RString::from).into()
}

/// [`HostServices::event_next`](plugin_api::abi::HostServices::event_next).
pub(super) extern "C" fn event_next(
    plugin: RStr<'_>,
    subscription: u64,
) -> FfiFuture<RResult<RString, RString>> {
    let plugin = plugin.as_str().to_owned();
    let receiver = bus::receiver(&plugin, subscription);
    async move {
        let receiver = receiver
            .ok_or_else(|| RString::from(format!("subscription {subscription} has ended")))?;
        let mut receiver = receiver.lock().await;
        receiver
            .recv()
            .await
            .map(RString::from)
            .ok_or_else(|| RString::from(format!("subscription {subscription} has ended")))
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_patterns_match_and_cover_as_declared() {
        assert!(matches("notice.created", "notice.created"));
        assert!(matches("notice.*", "notice.created"));
        assert!(matches("notice.*", "notice.a.b"));
        assert!(!matches("notice.*", "notices.created"));
        assert!(!matches("notice.*", "notice"));
        assert!(covered("notice.*", "notice.created"));
        assert!(covered("notice.*", "notice.*"));
        assert!(!covered("notice.created", "notice.*"));
        assert!(covered("notice.created", "notice.created"));
        assert!(check_topic("notice.created").is_ok());
        assert!(check_topic("notice.*").is_ok());
        for bad in ["notice", "Notice.x", "notice.", "notice.a b", ".x"] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }
}
