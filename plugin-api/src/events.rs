//! Events by topic across the cluster (contract 1.4).

use abi_stable::std_types::{RResult, RStr, RString};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Host, TaskError, lifespan};

/// A subscription to a topic: [`next`](Subscription::next) answers its
/// events as they come, from every instance of the cluster. It ends when
/// the plugin stops.
pub struct Subscription {
    plugin: &'static str,
    id: u64,
    next: extern "C" fn(RStr<'_>, u64) -> async_ffi::FfiFuture<RResult<RString, RString>>,
}

impl Subscription {
    /// The next event's payload, as published; `None` once the
    /// subscription has ended (the plugin is stopping).
    pub async fn next(&mut self) -> Option<String> {
        match (self.next)(RStr::from(self.plugin), self.id).await {
            RResult::ROk(payload) => Some(payload.into_string()),
            RResult::RErr(_) => None,
        }
    }

    /// The next event parsed as JSON into `T` (an event that does not fit
    /// is skipped); `None` once the subscription has ended.
    pub async fn next_json<T: DeserializeOwned>(&mut self) -> Option<T> {
        loop {
            let payload = self.next().await?;
            if let Ok(value) = serde_json::from_str(&payload) {
                return Some(value);
            }
        }
    }
}

impl Host {
    /// Publishes `payload` (as JSON) on `topic` to the subscribers of every
    /// instance of the cluster, this one's at once, the others' through
    /// Redis or, without it, the database (within a second). A plugin
    /// publishes on its own topics only: `<plugin>.<name>`.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), plugin_api::TaskError> {
    /// plugin_api::host()
    ///     .publish("notice.created", &serde_json::json!({"id": 7, "title": "Hi"}))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        payload: &T,
    ) -> Result<(), TaskError> {
        let Some(publish) = self.services().event_publish() else {
            return Err(TaskError::new(
                "this host carries no plugin events: it needs a host built with plugin-api 1.4 or later",
            ));
        };
        let payload = serde_json::to_string(payload).map_err(|e| TaskError::new(e.to_string()))?;
        match publish(
            RStr::from(self.plugin()),
            RStr::from(topic),
            RString::from(payload),
        )
        .await
        {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(TaskError::new(e.into_string())),
        }
    }

    /// Subscribes to `topic` (or every topic of a plugin, `<plugin>.*`):
    /// the plugin's own, or another plugin's that its plugin.toml declares
    /// (`[permissions] events = ["notice.*"]`). From the start hook on;
    /// the subscription ends when the plugin stops.
    pub fn subscribe(&self, topic: &str) -> Result<Subscription, TaskError> {
        let services = self.services();
        let (Some(subscribe), Some(next)) = (services.event_subscribe(), services.event_next())
        else {
            return Err(TaskError::new(
                "this host carries no plugin events: it needs a host built with plugin-api 1.4 or later",
            ));
        };
        match subscribe(
            RStr::from(self.plugin()),
            lifespan::owner(),
            RStr::from(topic),
        ) {
            RResult::ROk(id) => Ok(Subscription {
                plugin: self.plugin(),
                id,
                next,
            }),
            RResult::RErr(e) => Err(TaskError::new(e.into_string())),
        }
    }
}
