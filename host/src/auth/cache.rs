//! The principals of recent tokens, so that the admin guard does not query
//! the database on every request.
//!
//! An entry lives for a short time (the flag reconcile period) and is
//! dropped at once, on every instance, by whatever can change what a token
//! is allowed: a logout, a password change, a grant or revoke, a user's
//! roles changed, a user disabled. The instance that makes the change
//! clears its own cache and publishes on `{prefix}_auth` in Redis; every
//! instance clears on that message, and on every (re)subscription in case
//! it missed one. Without Redis (or for a change made behind the host's
//! back) an entry's lifetime is the bound, the same as a flag change's
//! without Redis.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use deadpool_redis::redis::{self, AsyncCommands};
use futures_util::StreamExt as _;

use super::Principal;
use crate::redis::Redis;

/// Entries kept at most; past it, expired ones go, and if that is not
/// enough, all of them (a storm of distinct tokens costs queries, never
/// memory).
const CAPACITY: usize = 10_000;

/// One token's principal and the version of the user it was read with.
#[derive(Clone)]
pub(super) struct Cached {
    pub(super) principal: Arc<Principal>,
    pub(super) token_version: i64,
    at: Instant,
}

/// See the module documentation.
pub(super) struct PrincipalCache {
    entries: Mutex<HashMap<String, Cached>>,
    ttl: Duration,
    /// Bumped by every invalidation: a principal read before it is not kept.
    generation: AtomicU64,
    redis: Option<(Arc<Redis>, String)>,
}

impl PrincipalCache {
    /// A cache whose entries live `ttl` (zero: nothing is cached), and
    /// whose invalidations reach other instances through `redis` on
    /// `{prefix}_auth`.
    pub(super) fn new(ttl: Duration, redis: Option<(Arc<Redis>, &str)>) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            ttl,
            generation: AtomicU64::new(0),
            redis: redis.map(|(r, prefix)| (r, format!("{prefix}_auth"))),
        }
    }

    /// The cached principal of token `jti`, if fresh.
    pub(super) fn get(&self, jti: &str) -> Option<Cached> {
        let entries = self.entries.lock().expect("principal cache lock");
        entries
            .get(jti)
            .filter(|c| c.at.elapsed() < self.ttl)
            .cloned()
    }

    /// The generation to pass to [`put`](Self::put) for a principal about
    /// to be read.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps a principal read at `generation`, unless an invalidation came
    /// in between (it may predate the change).
    pub(super) fn put(
        &self,
        jti: &str,
        principal: Arc<Principal>,
        token_version: i64,
        generation: u64,
    ) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().expect("principal cache lock");
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.len() >= CAPACITY {
            entries.retain(|_, c| c.at.elapsed() < self.ttl);
            if entries.len() >= CAPACITY {
                entries.clear();
            }
        }
        entries.insert(
            jti.to_owned(),
            Cached {
                principal,
                token_version,
                at: Instant::now(),
            },
        );
    }

    /// Forgets every principal here.
    pub(super) fn clear(&self) {
        let mut entries = self.entries.lock().expect("principal cache lock");
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Forgets every principal here and tells the other instances to.
    /// A publish that fails is logged: they forget within the lifetime.
    pub(super) async fn invalidate(&self) {
        self.clear();
        let Some((redis, channel)) = &self.redis else {
            return;
        };
        let published = match redis.conn().await {
            Ok(mut conn) => {
                let sent: redis::RedisResult<i64> = conn.publish(channel, "changed").await;
                redis.check(sent).map(drop)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = published {
            tracing::warn!(
                "other instances forget cached principals within {:?}, not at once: {e}",
                self.ttl
            );
        }
    }

    /// Clears on every message of `{prefix}_auth` and on every
    /// (re)subscription, until `cache` is dropped.
    pub(super) fn watch(cache: &Arc<Self>) {
        let Some((redis, channel)) = cache.redis.clone() else {
            return;
        };
        let weak = Arc::downgrade(cache);
        tokio::spawn(subscribe(weak, redis, channel));
    }
}

async fn subscribe(cache: Weak<PrincipalCache>, redis: Arc<Redis>, channel: String) {
    loop {
        if let Ok(mut pubsub) = redis.pubsub().await {
            let subscribed = pubsub.subscribe(&channel).await;
            if redis.check(subscribed).is_ok() {
                let Some(c) = cache.upgrade() else { return };
                // Whatever was published while unsubscribed is covered.
                c.clear();
                drop(c);
                let mut messages = pubsub.on_message();
                while messages.next().await.is_some() {
                    let Some(c) = cache.upgrade() else { return };
                    c.clear();
                }
                redis.down("the principal invalidation subscription was closed");
            }
        }
        if cache.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
