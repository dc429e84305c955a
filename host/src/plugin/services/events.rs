//! Events by topic across the cluster. A plugin publishes on its own
//! topics (`<plugin>.<name>`) and subscribes to its own and to the ones
//! its manifest declares (`[permissions] events`). An event reaches this
//! instance's subscribers at once and the other instances through Redis
//! pub/sub (`{prefix}_plugin_events`), or without Redis through
//! `sys_plugin_event`, which every serving instance reads four times a
//! second while it has subscribers.
//!
//! *Invariant:* a stopped run has no subscription (they end with it), and
//! an instance delivers each event once: its own from memory, the others'
//! from Redis or the table, never both.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use abi_stable::std_types::{RResult, RStr, RString};
use async_ffi::FfiFuture;
use deadpool_redis::redis::AsyncCommands;
use futures_util::{FutureExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use plugin_api::__private::topic_matches as matches;

use super::lifespan::run_of;
use super::waker::IntoPluginFuture as _;
use crate::{db::Db, redis::Redis};

/// Events a subscription holds before the oldest undelivered ones are
/// dropped (a subscriber that does not keep up).
const QUEUE: usize = 1024;

struct Subscription {
    plugin: String,
    run: u64,
    pattern: String,
    sender: mpsc::Sender<String>,
    receiver: Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>,
}

static SUBSCRIPTIONS: Mutex<Option<HashMap<u64, Subscription>>> = Mutex::new(None);
static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);
/// The topics each plugin may subscribe to besides its own.
static DECLARED: RwLock<Option<HashMap<String, Vec<String>>>> = RwLock::new(None);
/// Where events go beyond this instance.
static CLUSTER: OnceLock<Cluster> = OnceLock::new();

enum Cluster {
    Redis { redis: Arc<Redis>, channel: String },
    Database(Arc<Db>),
}

/// This process, as the origin of the events it publishes.
fn origin() -> &'static str {
    static ORIGIN: OnceLock<String> = OnceLock::new();
    ORIGIN.get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
}

#[derive(Serialize, Deserialize)]
struct Wire {
    origin: String,
    topic: String,
    payload: String,
}

fn with_subscriptions<T>(work: impl FnOnce(&mut HashMap<u64, Subscription>) -> T) -> T {
    work(
        SUBSCRIPTIONS
            .lock()
            .expect("subscriptions lock")
            .get_or_insert_with(HashMap::new),
    )
}

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

/// Delivers an event to this instance's subscribers.
fn deliver(topic: &str, payload: &str) {
    with_subscriptions(|subscriptions| {
        for sub in subscriptions
            .values()
            .filter(|s| matches(&s.pattern, topic))
        {
            if sub.sender.try_send(payload.to_owned()).is_err() {
                tracing::warn!(
                    plugin = sub.plugin.as_str(),
                    topic,
                    "an event was dropped: the subscriber has {QUEUE} events it has not read"
                );
            }
        }
    });
}

/// Ends every subscription of run `run` (it stopped).
pub(super) fn end_run(run: u64) {
    with_subscriptions(|subscriptions| subscriptions.retain(|_, s| s.run != run));
}

/// Events go to the other instances through `redis`, else through `db`,
/// from now on; the receiving side runs on the caller's runtime. Called
/// once by a serving host.
pub fn serve(db: Arc<Db>, redis: Option<(Arc<Redis>, String)>) {
    let cluster = match redis {
        Some((redis, prefix)) => Cluster::Redis {
            redis,
            channel: format!("{prefix}_plugin_events"),
        },
        None => Cluster::Database(db),
    };
    if CLUSTER.set(cluster).is_err() {
        return;
    }
    match CLUSTER.get() {
        Some(Cluster::Redis { redis, channel }) => {
            tokio::spawn(receive_from_redis(redis.clone(), channel.clone()));
        }
        Some(Cluster::Database(db)) => {
            tokio::spawn(receive_from_database(db.clone()));
        }
        None => {}
    }
}

async fn receive_from_redis(redis: Arc<Redis>, channel: String) {
    loop {
        if let Ok(mut pubsub) = redis.pubsub().await
            && redis.check(pubsub.subscribe(&channel).await).is_ok()
        {
            let mut messages = pubsub.on_message();
            while let Some(message) = messages.next().await {
                let Ok(wire) = message
                    .get_payload::<String>()
                    .map_err(|_| ())
                    .and_then(|p| serde_json::from_str::<Wire>(&p).map_err(|_| ()))
                else {
                    tracing::warn!(channel, "ignored a plugin event that is not one");
                    continue;
                };
                if wire.origin != origin() {
                    deliver(&wire.topic, &wire.payload);
                }
            }
            redis.down("the plugin event subscription was closed");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn receive_from_database(db: Arc<Db>) {
    // Ids delivered in the last few seconds: rows committed out of id
    // order are still found, and none twice.
    let mut delivered: VecDeque<(i64, i64)> = VecDeque::new();
    let mut pruned = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if with_subscriptions(|s| s.is_empty()) {
            continue;
        }
        let now = now_ms();
        while delivered.front().is_some_and(|(_, at)| *at < now - 10_000) {
            delivered.pop_front();
        }
        let recent = crate::db::placeholders(
            db.backend(),
            "SELECT id, topic, payload, origin FROM sys_plugin_event WHERE created_at >= ? ORDER BY id",
        );
        let rows = crate::db::retrying(|| db.query(&recent, vec![(now - 5_000).into()])).await;
        match rows {
            Ok(rows) => {
                for row in rows {
                    let (Ok(id), Ok(topic), Ok(payload), Ok(from)) = (
                        row.try_get::<i64>("", "id"),
                        row.try_get::<String>("", "topic"),
                        row.try_get::<String>("", "payload"),
                        row.try_get::<String>("", "origin"),
                    ) else {
                        continue;
                    };
                    if delivered.iter().any(|(d, _)| *d == id) {
                        continue;
                    }
                    delivered.push_back((id, now));
                    if from != origin() {
                        deliver(&topic, &payload);
                    }
                }
            }
            Err(e) => tracing::warn!("plugin events cannot be read: {e}"),
        }
        if now - pruned > 30_000 {
            pruned = now;
            let old = db
                .execute(db.statement(
                    "DELETE FROM sys_plugin_event WHERE created_at < ?",
                    vec![(now - 60_000).into()],
                ))
                .await;
            if let Err(e) = old {
                tracing::debug!("old plugin events not deleted now: {e}");
            }
        }
    }
}

async fn publish_beyond(topic: &str, payload: &str) -> Result<(), String> {
    match CLUSTER.get() {
        None => Ok(()),
        Some(Cluster::Redis { redis, channel }) => {
            let wire = serde_json::to_string(&Wire {
                origin: origin().to_owned(),
                topic: topic.to_owned(),
                payload: payload.to_owned(),
            })
            .map_err(|e| e.to_string())?;
            let mut conn = redis.conn().await.map_err(|e| e.to_string())?;
            let sent: deadpool_redis::redis::RedisResult<i64> = conn.publish(channel, wire).await;
            redis.check(sent).map(|_| ()).map_err(|e| e.to_string())
        }
        Some(Cluster::Database(db)) => db
            .execute(db.statement(
                "INSERT INTO sys_plugin_event (topic, payload, origin, created_at) VALUES (?, ?, ?, ?)",
                vec![
                    topic.into(),
                    payload.into(),
                    origin().into(),
                    now_ms().into(),
                ],
            ))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
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
        deliver(&topic, &payload);
        publish_beyond(&topic, &payload)
            .await
            .map_err(|e| format!("event '{topic}' reached this instance only: {e}"))
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
        let (sender, receiver) = mpsc::channel(QUEUE);
        let id = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
        with_subscriptions(|subscriptions| {
            subscriptions.insert(
                id,
                Subscription {
                    plugin: plugin.to_owned(),
                    run: run.id(),
                    pattern: pattern.to_owned(),
                    sender,
                    receiver: Arc::new(tokio::sync::Mutex::new(receiver)),
                },
            );
        });
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
    let receiver = with_subscriptions(|subscriptions| {
        subscriptions
            .get(&subscription)
            .filter(|s| s.plugin == plugin)
            .map(|s| s.receiver.clone())
    });
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
