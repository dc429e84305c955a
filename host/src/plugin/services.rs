//! The host services a plugin receives at init, as a stable-ABI vtable.
//!
//! The vtable holds plain `extern "C"` functions; each takes the calling
//! plugin's name, and reads what it needs from this module's state, which
//! the plugin host refreshes whenever the set of loaded plugins changes.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        OnceLock, RwLock,
        atomic::{AtomicU32, Ordering},
    },
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{ROption, RStr, RString},
};
use async_ffi::{FfiFuture, FutureExt};
use plugin_api::abi::{HostRef, HostServices, level};

static LOADED: AtomicU32 = AtomicU32::new(0);
static SETTINGS: RwLock<Option<HashMap<String, BTreeMap<String, String>>>> = RwLock::new(None);

/// Records what the services report: the loaded plugins and their settings.
pub fn publish(loaded: u32, settings: HashMap<String, BTreeMap<String, String>>) {
    LOADED.store(loaded, Ordering::Relaxed);
    *SETTINGS.write().expect("settings lock") = Some(settings);
}

extern "C" fn log(plugin: RStr<'_>, lvl: u8, message: RStr<'_>) {
    let (plugin, message) = (plugin.as_str(), message.as_str());
    match lvl {
        level::ERROR => tracing::error!(target: "plugin", plugin, "{message}"),
        level::WARN => tracing::warn!(target: "plugin", plugin, "{message}"),
        level::INFO => tracing::info!(target: "plugin", plugin, "{message}"),
        _ => tracing::debug!(target: "plugin", plugin, "{message}"),
    }
}

/// A plugin setting: the environment first, then the manifest's `[settings]`.
fn setting_value(plugin: &str, key: &str) -> Option<String> {
    let declared = SETTINGS
        .read()
        .expect("settings lock")
        .as_ref()
        .and_then(|all| all.get(plugin)?.get(key).cloned());
    // Only keys the plugin declares can be overridden: a plugin cannot read
    // arbitrary host environment (credentials) through this service.
    declared.map(|value| std::env::var(key).unwrap_or(value))
}

extern "C" fn setting(plugin: RStr<'_>, key: RStr<'_>) -> ROption<RString> {
    setting_value(plugin.as_str(), key.as_str())
        .map(RString::from)
        .into()
}

extern "C" fn host_version() -> RStr<'static> {
    RStr::from_str(env!("CARGO_PKG_VERSION"))
}

extern "C" fn sleep(millis: u64) -> FfiFuture<()> {
    actix_web::rt::time::sleep(std::time::Duration::from_millis(millis)).into_ffi()
}

extern "C" fn loaded_plugins() -> u32 {
    LOADED.load(Ordering::Relaxed)
}

/// The vtable handed to every plugin.
pub fn host_services() -> HostRef {
    static SERVICES: OnceLock<HostRef> = OnceLock::new();
    *SERVICES.get_or_init(|| {
        HostServices {
            log,
            setting,
            host_version,
            loaded_plugins,
            sleep,
        }
        .leak_into_prefix()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_declared_settings_are_visible_and_the_environment_overrides_them() {
        let mut declared = BTreeMap::new();
        declared.insert("PLUGHOST_TEST_GREETING".to_owned(), "hi".to_owned());
        declared.insert("PLUGHOST_TEST_OTHER".to_owned(), "x".to_owned());
        publish(1, HashMap::from([("demo".to_owned(), declared)]));
        assert_eq!(
            setting_value("demo", "PLUGHOST_TEST_GREETING").as_deref(),
            Some("hi")
        );
        assert_eq!(setting_value("demo", "PATH"), None);
        assert_eq!(setting_value("other", "PLUGHOST_TEST_GREETING"), None);
        assert_eq!(loaded_plugins(), 1);
    }
}
