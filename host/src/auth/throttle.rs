//! What keeps login from being used to exhaust the host: a bound on the
//! password hashes in flight (each argon2 hash holds 19 MiB while it runs),
//! and a throttle on repeated failures per user name and per client address.

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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Failed logins per user name and per client address.
pub(crate) struct LoginThrottle {
    limits: LoginLimits,
    maps: Mutex<(FailureMap<String>, FailureMap<IpAddr>)>,
}

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

impl LoginThrottle {
    pub(crate) fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            maps: Mutex::new((FailureMap::new(), FailureMap::new())),
        }
    }

    /// Refuses a login for `username` from `address` that follows too many failures.
    pub(crate) fn check(&self, username: &str, address: Option<IpAddr>) -> Result<(), Throttled> {
        let now = Instant::now();
        let maps = self.maps.lock().expect("throttle lock");
        let l = &self.limits;
        if let Some(wait) = maps
            .0
            .wait(&username.to_owned(), l.failures_per_user, l.lockout, now)
        {
            return Err(Throttled::User(wait));
        }
        if let Some(wait) =
            address.and_then(|a| maps.1.wait(&a, l.failures_per_address, l.lockout, now))
        {
            return Err(Throttled::Address(wait));
        }
        Ok(())
    }

    /// Counts a failed login.
    pub(crate) fn failed(&self, username: &str, address: Option<IpAddr>) {
        let now = Instant::now();
        let mut maps = self.maps.lock().expect("throttle lock");
        maps.0.fail(username.to_owned(), self.limits.lockout, now);
        if let Some(address) = address {
            maps.1.fail(address, self.limits.lockout, now);
        }
    }

    /// A successful login clears the name's and the address's failures.
    pub(crate) fn succeeded(&self, username: &str, address: Option<IpAddr>) {
        let mut maps = self.maps.lock().expect("throttle lock");
        maps.0.clear(&username.to_owned());
        if let Some(address) = address {
            maps.1.clear(&address);
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
