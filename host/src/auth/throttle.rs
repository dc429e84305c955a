//! What keeps login from being used to exhaust the host: a bound on the
//! password hashes in flight (each argon2 hash holds 19 MiB while it runs),
//! and a throttle on repeated failures per user name and per client
//! address, counted for the whole cluster.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use argon2::Block;
use sea_orm::ConnectionTrait as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    db::{Backend, Db},
    redis::Redis,
};

/// How login is limited.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    /// Password hashes computed at once (the rest wait).
    pub concurrent_hashes: usize,
    /// Failed logins for one user name before it is throttled.
    pub failures_per_user: u32,
    /// Failed logins from one client address before it is throttled.
    pub failures_per_address: u32,
    /// How long a throttled name or address waits after its last failure.
    pub lockout: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            concurrent_hashes: std::thread::available_parallelism().map_or(1, |n| n.get()),
            failures_per_user: 5,
            failures_per_address: 20,
            lockout: Duration::from_secs(60),
        }
    }
}

/// How many requests may wait for a hash slot, per slot: beyond that,
/// waiting would only pile up memory and latency.
const WAITERS_PER_SLOT: usize = 16;
/// How long a request waits for a hash slot.
const HASH_WAIT: Duration = Duration::from_secs(5);
/// Entries kept per throttle map; expired ones are dropped first.
const MAX_ENTRIES: usize = 100_000;

/// The bound on password hashes in flight, and the memory they hash in:
/// one argon2 block buffer per slot, allocated once and reused, so the
/// memory of logins is `slots × 19 MiB` whatever the allocator keeps.
pub(crate) struct HashGate {
    slots: Arc<Semaphore>,
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

/// A slot to hash in, with its memory; both go back when it is dropped.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    /// The argon2 blocks this slot hashes in.
    pub(crate) memory: Vec<Block>,
    buffers: Arc<Mutex<Vec<Vec<Block>>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        self.buffers.lock().expect("buffers lock").push(memory);
    }
}

impl HashGate {
    pub(crate) fn new(concurrent: usize) -> Self {
        let concurrent = concurrent.max(1);
        Self {
            slots: Arc::new(Semaphore::new(concurrent)),
            buffers: Arc::new(Mutex::new(Vec::new())),
            waiting: AtomicUsize::new(0),
            max_waiting: concurrent * WAITERS_PER_SLOT,
        }
    }

    /// A slot to hash in, or `None` when too many wait already or none
    /// came free in time (the caller answers 503 with Retry-After).
    pub(crate) async fn enter(&self) -> Option<Slot> {
        let permit = match self.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                // Counted until this future ends, also when the client goes away.
                let _waiter = Waiter::enter(&self.waiting);
                if self.waiting.load(Ordering::Acquire) > self.max_waiting {
                    return None;
                }
                tokio::time::timeout(HASH_WAIT, self.slots.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let memory = self
            .buffers
            .lock()
            .expect("buffers lock")
            .pop()
            .unwrap_or_default();
        Some(Slot {
            _permit: permit,
            memory,
            buffers: self.buffers.clone(),
        })
    }
}

/// One request waiting for a hash slot.
struct Waiter<'a>(&'a AtomicUsize);

impl<'a> Waiter<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failed logins per key, forgotten `lockout` after the last one.
struct FailureMap<K> {
    entries: HashMap<K, Failures>,
}

impl<K: std::hash::Hash + Eq + Clone> FailureMap<K> {
    fn new() -> Self {
        Self {
            entries: HashMap::new(),
        }
    }

    /// The time left before `key` may try again, if it is throttled.
    fn wait(&self, key: &K, limit: u32, lockout: Duration, now: Instant) -> Option<Duration> {
        let f = self.entries.get(key)?;
        let left = lockout.checked_sub(now.duration_since(f.last))?;
        (f.count >= limit && !left.is_zero()).then_some(left)
    }

    fn fail(&mut self, key: K, lockout: Duration, now: Instant) {
        if self.entries.len() >= MAX_ENTRIES {
            self.entries
                .retain(|_, f| now.duration_since(f.last) < lockout);
        }
        if self.entries.len() >= MAX_ENTRIES {
            // Still full of live entries: make room rather than grow.
            self.entries.clear();
        }
        let entry = self.entries.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(entry.last) >= lockout {
            entry.count = 0;
        }
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    fn clear(&mut self, key: &K) {
        self.entries.remove(key);
    }
}

/// Failed logins per user name and per client address, counted for the
/// whole cluster: in Redis when it is configured (one key per name or
/// address, its count and expiry moved in one script), else in the host
/// database (`sys_login_failure`, one statement per failure), so that N
/// instances allow no more guesses than one. Each instance also counts in
/// memory, and decides from that while the shared count cannot be read.
pub(crate) struct LoginThrottle {
    limits: LoginLimits,
    shared: Shared,
    local: Mutex<(FailureMap<String>, FailureMap<IpAddr>)>,
    failures: AtomicUsize,
}

/// Where the cluster's counts are kept.
enum Shared {
    Redis { redis: Arc<Redis>, prefix: String },
    Database(Arc<Db>),
}

/// Counts a failure: one more, and the count lives `lockout` past it.
const FAIL_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return n
";

/// Why a login is refused before its password is checked.
#[derive(Debug, Clone, Copy)]
pub enum Throttled {
    /// Too many failures for the user name.
    User(Duration),
    /// Too many failures from the client address.
    Address(Duration),
}

impl Throttled {
    /// Seconds until the next try may succeed (at least 1).
    pub fn retry_after(self) -> u64 {
        let (Self::User(d) | Self::Address(d)) = self;
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }
}

/// The key a name's or an address's failures are counted under: a digest,
/// so that a login's arbitrary input makes a key of fixed length.
fn subject(kind: &str, value: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(format!("{kind}:{value}")))
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl LoginThrottle {
    /// Counts in Redis (`redis`: the server and the key prefix) when
    /// given, else in `db`.
    pub(crate) fn new(limits: LoginLimits, db: Arc<Db>, redis: Option<(Arc<Redis>, &str)>) -> Self {
        let shared = match redis {
            Some((redis, prefix)) => Shared::Redis {
                redis,
                prefix: format!("{prefix}_login_failures"),
            },
            None => Shared::Database(db),
        };
        Self {
            limits,
            shared,
            local: Mutex::new((FailureMap::new(), FailureMap::new())),
            failures: AtomicUsize::new(0),
        }
    }

    /// The subjects of a login: its name's, and its address's if known.
    fn subjects(username: &str, address: Option<IpAddr>) -> (String, Option<String>) {
        (
            subject("user", username),
            address.map(|a| subject("address", &a.to_string())),
        )
    }

    /// Refuses a login for `username` from `address` that follows too many
    /// failures, on any instance.
    pub(crate) async fn check(
        &self,
        username: &str,
        address: Option<IpAddr>,
    ) -> Result<(), Throttled> {
        let l = self.limits;
        let (user, from) = Self::subjects(username, address);
        match self.shared_waits(&user, from.as_deref()).await {
            Ok((user_wait, address_wait)) => {
                if let Some(wait) = user_wait {
                    return Err(Throttled::User(wait));
                }
                if let Some(wait) = address_wait {
                    return Err(Throttled::Address(wait));
                }
                Ok(())
            }
            Err(e) => {
                tracing::warn!(
                    "login failures cannot be read ({e}); this instance's own count decides"
                );
                let now = Instant::now();
                let local = self.local.lock().expect("throttle lock");
                if let Some(wait) =
                    local
                        .0
                        .wait(&username.to_owned(), l.failures_per_user, l.lockout, now)
                {
                    return Err(Throttled::User(wait));
                }
                if let Some(wait) =
                    address.and_then(|a| local.1.wait(&a, l.failures_per_address, l.lockout, now))
                {
                    return Err(Throttled::Address(wait));
                }
                Ok(())
            }
        }
    }

    /// How long the name and the address wait, by the cluster's counts.
    async fn shared_waits(
        &self,
        user: &str,
        address: Option<&str>,
    ) -> Result<(Option<Duration>, Option<Duration>), String> {
        let l = self.limits;
        let subjects: Vec<(&str, u32)> = std::iter::once((user, l.failures_per_user))
            .chain(address.map(|a| (a, l.failures_per_address)))
            .collect();
        let mut waits = Vec::with_capacity(subjects.len());
        match &self.shared {
            Shared::Redis { redis, prefix } => {
                let mut conn = redis.conn().await.map_err(|e| e.to_string())?;
                let mut pipe = deadpool_redis::redis::pipe();
                for (subject, _) in &subjects {
                    let key = format!("{prefix}:{subject}");
                    pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
                }
                let answers: deadpool_redis::redis::RedisResult<Vec<(Option<u64>, i64)>> = {
                    let flat: deadpool_redis::redis::RedisResult<
                        Vec<deadpool_redis::redis::Value>,
                    > = pipe.query_async(&mut conn).await;
                    flat.and_then(|values| {
                        values
                            .chunks(2)
                            .map(|pair| {
                                Ok((
                                    deadpool_redis::redis::from_redis_value(pair[0].clone())?,
                                    deadpool_redis::redis::from_redis_value(pair[1].clone())?,
                                ))
                            })
                            .collect()
                    })
                };
                for ((count, ttl_ms), (_, limit)) in redis
                    .check(answers)
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .zip(&subjects)
                {
                    let throttled = count.unwrap_or(0) >= u64::from(*limit) && ttl_ms > 0;
                    waits.push(
                        throttled
                            .then(|| Duration::from_millis(u64::try_from(ttl_ms).unwrap_or(0))),
                    );
                }
            }
            Shared::Database(db) => {
                let now = unix_ms();
                let lockout_ms = i64::try_from(l.lockout.as_millis()).unwrap_or(i64::MAX);
                for (subject, limit) in &subjects {
                    let row = db
                        .conn()
                        .query_one(db.statement(
                            "SELECT failures, last_at FROM sys_login_failure WHERE subject = ?",
                            [(*subject).into()],
                        ))
                        .await
                        .map_err(|e| e.to_string())?;
                    let wait = match row {
                        Some(row) => {
                            let failures: i64 =
                                row.try_get("", "failures").map_err(|e| e.to_string())?;
                            let last: i64 =
                                row.try_get("", "last_at").map_err(|e| e.to_string())?;
                            let left = lockout_ms.saturating_sub(now.saturating_sub(last));
                            (failures >= i64::from(*limit) && left > 0)
                                .then(|| Duration::from_millis(u64::try_from(left).unwrap_or(0)))
                        }
                        None => None,
                    };
                    waits.push(wait);
                }
            }
        }
        Ok((
            waits.first().copied().flatten(),
            waits.get(1).copied().flatten(),
        ))
    }

    /// Counts a failed login, on this instance and for the cluster.
    pub(crate) async fn failed(&self, username: &str, address: Option<IpAddr>) {
        {
            let now = Instant::now();
            let mut local = self.local.lock().expect("throttle lock");
            local.0.fail(username.to_owned(), self.limits.lockout, now);
            if let Some(address) = address {
                local.1.fail(address, self.limits.lockout, now);
            }
        }
        let (user, from) = Self::subjects(username, address);
        let subjects: Vec<String> = std::iter::once(user).chain(from).collect();
        if let Err(e) = self.count_shared(&subjects).await {
            tracing::warn!("a failed login cannot be counted for the cluster: {e}");
        }
    }

    async fn count_shared(&self, subjects: &[String]) -> Result<(), String> {
        let lockout_ms = i64::try_from(self.limits.lockout.as_millis()).unwrap_or(i64::MAX);
        match &self.shared {
            Shared::Redis { redis, prefix } => {
                let mut conn = redis.conn().await.map_err(|e| e.to_string())?;
                for subject in subjects {
                    let counted: deadpool_redis::redis::RedisResult<i64> =
                        deadpool_redis::redis::Script::new(FAIL_SCRIPT)
                            .key(format!("{prefix}:{subject}"))
                            .arg(lockout_ms)
                            .invoke_async(&mut conn)
                            .await;
                    redis.check(counted).map_err(|e| e.to_string())?;
                }
            }
            Shared::Database(db) => {
                let now = unix_ms();
                let stale = now.saturating_sub(lockout_ms);
                // One statement: the count starts again once the lockout
                // has passed since the last failure.
                let upsert = match db.backend() {
                    Backend::Mysql => {
                        "INSERT INTO sys_login_failure (subject, failures, last_at) VALUES (?, 1, ?) \
                         ON DUPLICATE KEY UPDATE failures = IF(last_at < ?, 1, failures + 1), last_at = ?"
                    }
                    _ => {
                        "INSERT INTO sys_login_failure (subject, failures, last_at) VALUES (?, 1, ?) \
                         ON CONFLICT (subject) DO UPDATE SET failures = CASE WHEN sys_login_failure.last_at < ? \
                         THEN 1 ELSE sys_login_failure.failures + 1 END, last_at = ?"
                    }
                };
                for subject in subjects {
                    db.conn()
                        .execute(db.statement(
                            upsert,
                            [
                                subject.as_str().into(),
                                now.into(),
                                stale.into(),
                                now.into(),
                            ],
                        ))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                // Now and then, what no longer counts goes.
                if self
                    .failures
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(64)
                {
                    db.conn()
                        .execute(db.statement(
                            "DELETE FROM sys_login_failure WHERE last_at < ?",
                            [stale.into()],
                        ))
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// A successful login clears the name's and the address's failures.
    pub(crate) async fn succeeded(&self, username: &str, address: Option<IpAddr>) {
        {
            let mut local = self.local.lock().expect("throttle lock");
            local.0.clear(&username.to_owned());
            if let Some(address) = address {
                local.1.clear(&address);
            }
        }
        let (user, from) = Self::subjects(username, address);
        let subjects: Vec<String> = std::iter::once(user).chain(from).collect();
        let cleared = match &self.shared {
            Shared::Redis { redis, prefix } => match redis.conn().await {
                Ok(mut conn) => {
                    let keys: Vec<String> =
                        subjects.iter().map(|s| format!("{prefix}:{s}")).collect();
                    let deleted: deadpool_redis::redis::RedisResult<i64> =
                        deadpool_redis::redis::cmd("DEL")
                            .arg(&keys)
                            .query_async(&mut conn)
                            .await;
                    redis.check(deleted).map(drop).map_err(|e| e.to_string())
                }
                Err(e) => Err(e.to_string()),
            },
            Shared::Database(db) => {
                let mut result = Ok(());
                for subject in &subjects {
                    if let Err(e) = db
                        .conn()
                        .execute(db.statement(
                            "DELETE FROM sys_login_failure WHERE subject = ?",
                            [subject.as_str().into()],
                        ))
                        .await
                    {
                        result = Err(e.to_string());
                    }
                }
                result
            }
        };
        if let Err(e) = cleared {
            tracing::warn!("a successful login cannot clear the cluster's failure counts: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_throttle_after_the_limit_until_the_lockout_ends_and_success_resets() {
        let lockout = Duration::from_secs(60);
        let mut map = FailureMap::new();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(map.wait(&"ada", 3, lockout, t0).is_none(), "failure {i}");
            map.fail("ada", lockout, t0);
        }
        let wait = map.wait(&"ada", 3, lockout, t0 + Duration::from_secs(10));
        assert_eq!(wait, Some(Duration::from_secs(50)));
        assert!(map.wait(&"bob", 3, lockout, t0).is_none());
        assert!(map.wait(&"ada", 3, lockout, t0 + lockout).is_none());
        // After the lockout the count starts again.
        map.fail("ada", lockout, t0 + lockout);
        assert!(map.wait(&"ada", 3, lockout, t0 + lockout).is_none());
        map.clear(&"ada");
        assert!(map.entries.is_empty());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(Throttled::User(Duration::from_millis(1)).retry_after(), 1);
        assert_eq!(Throttled::Address(Duration::from_secs(3)).retry_after(), 3);
    }
}
