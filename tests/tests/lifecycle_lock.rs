//! The lifecycle lock in a real Redis: one holder at a time across
//! instances, renewed while held, and a lost lock is an error.

use std::{sync::Arc, time::Duration};

use e2e::TestRedis;
use host::{
    plugin::lifecycle::lock::{LifecycleLock, LockError},
    redis::Redis,
};

fn lock(redis: &TestRedis, ttl: Duration) -> LifecycleLock {
    // One Redis handle per lock: two "instances".
    let handle: Arc<Redis> = Redis::open(&redis.url()).unwrap();
    LifecycleLock::new(
        Some(handle),
        None,
        "fba:plugin_lock".into(),
        ttl,
        "unused".into(),
    )
}

#[test]
fn one_holder_at_a_time_and_the_lock_outlives_its_expiry_while_held() {
    let redis = TestRedis::start();
    let (a, b) = (
        lock(&redis, Duration::from_millis(300)),
        lock(&redis, Duration::from_millis(300)),
    );
    e2e::runtime().block_on(async {
        let held = a.acquire("install hello", Duration::ZERO).await.unwrap();
        // Held for well past its expiry: renewal keeps it.
        tokio::time::sleep(Duration::from_millis(900)).await;
        held.ensure_held().await.unwrap();
        match b
            .acquire("uninstall hello", Duration::from_millis(200))
            .await
        {
            Err(LockError::Busy { holder }) => {
                assert!(holder.contains("install hello"), "{holder}")
            }
            other => panic!("expected busy, got {:?}", other.map(|_| ())),
        }
        held.release().await.unwrap();
        let next = b.acquire("uninstall hello", Duration::ZERO).await.unwrap();
        next.release().await.unwrap();
        assert_eq!(redis.cli(&["EXISTS", "fba:plugin_lock"]), "0");
    });
}

#[test]
fn a_crashed_holder_blocks_only_until_the_expiry() {
    let redis = TestRedis::start();
    // Someone took it and died: no renewals.
    redis.cli(&["SET", "fba:plugin_lock", "dead holder", "PX", "400"]);
    let a = lock(&redis, Duration::from_secs(5));
    e2e::runtime().block_on(async {
        let started = std::time::Instant::now();
        let held = a
            .acquire("install hello", Duration::from_secs(3))
            .await
            .unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        held.release().await.unwrap();
    });
}

#[test]
fn a_lock_taken_away_is_reported_as_lost_not_ignored() {
    let redis = TestRedis::start();
    let a = lock(&redis, Duration::from_millis(300));
    e2e::runtime().block_on(async {
        let held = a.acquire("upgrade hello", Duration::ZERO).await.unwrap();
        redis.cli(&["SET", "fba:plugin_lock", "an intruder"]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        let err = held.ensure_held().await.unwrap_err().to_string();
        assert!(err.contains("lost during upgrade hello"), "{err}");
        assert!(held.release().await.is_err());
        // The intruder's lock is left alone.
        assert_eq!(redis.cli(&["GET", "fba:plugin_lock"]), "an intruder");
    });
}

#[test]
fn losing_redis_while_holding_the_lock_is_reported_as_lost() {
    let mut redis = TestRedis::start();
    let a = lock(&redis, Duration::from_millis(300));
    e2e::runtime().block_on(async {
        let held = a.acquire("install hello", Duration::ZERO).await.unwrap();
        redis.stop();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let err = held.ensure_held().await.unwrap_err().to_string();
        assert!(err.contains("could not be renewed"), "{err}");
        // Without Redis it cannot be taken either.
        let err = a
            .acquire("install sysinfo", Duration::ZERO)
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unavailable"), "{err}");
    });
}

#[test]
fn without_redis_the_lock_is_a_file_shared_by_the_processes_of_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lifecycle.lock");
    // Two holders on one file, as a server and a CLI would be.
    let a = LifecycleLock::new(
        None,
        None,
        String::new(),
        Duration::from_secs(1),
        file.clone(),
    );
    let b = LifecycleLock::new(None, None, String::new(), Duration::from_secs(1), file);
    e2e::runtime().block_on(async {
        let held = a.acquire("install hello", Duration::ZERO).await.unwrap();
        match b
            .acquire("install sysinfo", Duration::from_millis(100))
            .await
        {
            Err(LockError::Busy { holder }) => {
                assert!(holder.starts_with("install hello (pid "), "{holder}")
            }
            other => panic!("expected busy, got {:?}", other.map(|_| ())),
        }
        held.release().await.unwrap();
        b.acquire("install sysinfo", Duration::ZERO).await.unwrap();
    });
}
