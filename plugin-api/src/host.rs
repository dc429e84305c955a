//! The services the host lends to a plugin.

use std::sync::OnceLock;

use abi_stable::std_types::{ROption, RStr};

use crate::abi::{HostRef, level};

/// The host's services, as seen by one plugin.
///
/// Available from [`host`] once the host has initialised the plugin, which
/// it always does before the first request.
#[derive(Clone, Copy)]
pub struct Host {
    services: HostRef,
    plugin: &'static str,
}

static HOST: OnceLock<Host> = OnceLock::new();

/// The host's services for this plugin.
///
/// # Panics
///
/// When called before the host has initialised the plugin (for example from
/// a `static` initialiser). Inside a handler this never happens.
pub fn host() -> &'static Host {
    HOST.get()
        .expect("plugin_api::host() called before the host initialised the plugin")
}

pub(crate) fn install(services: HostRef, plugin: &'static str) -> &'static Host {
    HOST.get_or_init(|| Host { services, plugin })
}

impl Host {
    pub(crate) fn services(&self) -> HostRef {
        self.services
    }

    /// The name of the plugin these services are bound to.
    pub fn plugin(&self) -> &'static str {
        self.plugin
    }

    fn log(&self, level: u8, message: &str) {
        (self.services.log())(RStr::from(self.plugin), level, RStr::from(message));
    }

    /// Writes an error line into the host's log.
    pub fn error(&self, message: &str) {
        self.log(level::ERROR, message);
    }

    /// Writes a warning into the host's log.
    pub fn warn(&self, message: &str) {
        self.log(level::WARN, message);
    }

    /// Writes an informational line into the host's log.
    pub fn info(&self, message: &str) {
        self.log(level::INFO, message);
    }

    /// Writes a debugging line into the host's log.
    pub fn debug(&self, message: &str) {
        self.log(level::DEBUG, message);
    }

    /// A setting of this plugin: the environment variable `key` when set,
    /// otherwise the value of `key` in the manifest's `[settings]` table.
    pub fn setting(&self, key: &str) -> Option<String> {
        match (self.services.setting())(RStr::from(self.plugin), RStr::from(key)) {
            ROption::RSome(value) => Some(value.into_string()),
            ROption::RNone => None,
        }
    }

    /// The host's version.
    pub fn host_version(&self) -> &'static str {
        (self.services.host_version())().as_str()
    }

    /// Waits `duration` on the host's timer (plugins run no runtime of their own).
    pub async fn sleep(&self, duration: std::time::Duration) {
        let millis = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        (self.services.sleep())(millis).await;
    }

    /// How many plugins the host has loaded right now.
    pub fn loaded_plugins(&self) -> u32 {
        (self.services.loaded_plugins())()
    }
}
