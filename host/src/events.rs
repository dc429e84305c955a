//! The cluster's event bus: events by topic, delivered to this instance's
//! subscribers at once and to the other instances through Redis pub/sub
//! (`{prefix}_plugin_events`), or without Redis through `sys_plugin_event`,
//! which every serving instance reads four times a second while it has
//! subscribers. Plugins reach it through the events service
//! (`plugin/services/events.rs`, which checks who may publish and
//! subscribe to what); the host publishes its own events on `sys.*`
//! ([`publish_core`]): users, roles and plugins changed.
//!
//! *Invariant:* an instance delivers each event once: its own from memory,
//! the others' from Redis or the table, never both.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use deadpool_redis::redis::AsyncCommands;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use plugin_api::__private::topic_matches as matches;

use crate::{db::Db, redis::Redis};

/// Events a subscription holds before the oldest undelivered ones are
/// dropped (a subscriber that does not keep up).
const QUEUE: usize = 1024;

/// The topics of the host's own events begin with this.
pub const CORE_PREFIX: &str = "sys";

/// One subscriber's queue.
pub type Receiver = Arc<tokio::sync::Mutex<mpsc::Receiver<String>>>;

struct Subscription {
    plugin: String,
    run: u64,
    pattern: String,
    sender: mpsc::Sender<String>,
    receiver: Receiver,
}

static SUBSCRIPTIONS: Mutex<Option<HashMap<u64, Subscription>>> = Mutex::new(None);
static NEXT_SUBSCRIPTION: AtomicU64 = AtomicU64::new(1);
/// Where events go beyond this instance.
static CLUSTER: OnceLock<Cluster> = OnceLock::new();
/// Whether this process receives the other instances' events.
static RECEIVING: AtomicBool = AtomicBool::new(false);

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

/// Subscribes run `run` of `plugin` to the topics `pattern` matches (its
/// permission checked by the caller). The subscription's id.
pub fn subscribe(plugin: &str, run: u64, pattern: &str) -> u64 {
    let (sender, receiver) = mpsc::channel(QUEUE);
    let id = NEXT_SUBSCRIPTION.fetch_add(1, Ordering::Relaxed);
    with_subscriptions(|subscriptions| {
        subscriptions.insert(
            id,
            Subscription {
                plugin: plugin.to_owned(),
                run,
                pattern: pattern.to_owned(),
                sender,
                receiver: Arc::new(tokio::sync::Mutex::new(receiver)),
            },
        );
    });
    id
}

/// The queue of `plugin`'s subscription `id`, while it lasts.
pub fn receiver(plugin: &str, id: u64) -> Option<Receiver> {
    with_subscriptions(|subscriptions| {
        subscriptions
            .get(&id)
            .filter(|s| s.plugin == plugin)
            .map(|s| s.receiver.clone())
    })
}

/// Ends every subscription of run `run` (it stopped).
pub fn end_run(run: u64) {
    with_subscriptions(|subscriptions| subscriptions.retain(|_, s| s.run != run));
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

/// Events this process publishes go to the other instances through
/// `redis`, else through `db`. Every process connects (a CLI command's
/// change is announced too); only a serving host also receives
/// ([`serve`]).
pub fn connect(db: Arc<Db>, redis: Option<(Arc<Redis>, String)>) {
    let cluster = match redis {
        Some((redis, prefix)) => Cluster::Redis {
            redis,
            channel: format!("{prefix}_plugin_events"),
        },
        None => Cluster::Database(db),
    };
    let _ = CLUSTER.set(cluster);
}

/// Receives the other instances' events from now on, on the caller's
/// runtime. Called once by a serving host, after [`connect`].
pub fn serve() {
    if RECEIVING.swap(true, Ordering::AcqRel) {
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
                    tracing::warn!(channel, "ignored a cluster event that is not one");
                    continue;
                };
                if wire.origin != origin() {
                    deliver(&wire.topic, &wire.payload);
                }
            }
            redis.down("the cluster event subscription was closed");
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
            Err(e) => tracing::warn!("cluster events cannot be read: {e}"),
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
                tracing::debug!("old cluster events not deleted now: {e}");
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

/// Publishes `payload` on `topic`: this instance's subscribers at once,
/// the others' through Redis or the database. An error says the event
/// reached this instance only.
pub async fn publish(topic: &str, payload: &str) -> Result<(), String> {
    deliver(topic, payload);
    publish_beyond(topic, payload)
        .await
        .map_err(|e| format!("event '{topic}' reached this instance only: {e}"))
}

/// Publishes one of the host's own events, `sys.<name>`, its payload
/// naming it as `event` (a subscriber of `sys.user.*` tells them apart);
/// a failure to reach the other instances is logged, never the caller's
/// error (the change it announces is made).
pub async fn publish_core(name: &str, payload: &serde_json::Value) {
    let topic = format!("{CORE_PREFIX}.{name}");
    let mut payload = payload.clone();
    if let Some(fields) = payload.as_object_mut() {
        fields.insert("event".into(), name.into());
    }
    if let Err(e) = publish(&topic, &payload.to_string()).await {
        tracing::warn!("{e}");
    }
}
