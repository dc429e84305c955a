//! Instances that share only a database (no Redis) take turns: lifecycle
//! operations hold a lock in the database server (PostgreSQL advisory
//! lock, MySQL/MariaDB GET_LOCK), and instances starting together on a
//! fresh database migrate its schema once, one after the other.

use std::{sync::Arc, time::Duration};

use e2e::{Backend, DataDir, Host, TestDatabase};
use host::{
    db::{Db, PkMode},
    plugin::lifecycle::lock::{LifecycleLock, LockError},
};

fn url(database: &TestDatabase) -> String {
    database.env()[0].1.clone()
}

fn one_holder_at_a_time_across_instances_sharing_the_database(backend: Backend) {
    let database = TestDatabase::create(backend);
    e2e::runtime().block_on(async {
        // Two "instances": each its own pool and data dir, no Redis.
        let (a, b) = (
            Arc::new(
                Db::open(&url(&database), PkMode::Autoincrement, 0)
                    .await
                    .unwrap(),
            ),
            Arc::new(
                Db::open(&url(&database), PkMode::Autoincrement, 1)
                    .await
                    .unwrap(),
            ),
        );
        let lock = |db: &Arc<Db>, dir: &str| {
            LifecycleLock::new(
                None,
                Some(db.clone()),
                "fba:plugin_lock".into(),
                Duration::from_secs(30),
                std::env::temp_dir().join(dir),
            )
        };
        let (on_a, on_b) = (lock(&a, "a.lock"), lock(&b, "b.lock"));
        let held = on_a.acquire("install hello", Duration::ZERO).await.unwrap();
        held.ensure_held().await.unwrap();
        match on_b
            .acquire("uninstall hello", Duration::from_millis(300))
            .await
        {
            Err(LockError::Busy { holder }) => assert!(
                holder.contains("another instance holds the database lock 'fba:plugin_lock'"),
                "{holder}"
            ),
            other => panic!("{backend:?}: expected busy, got {:?}", other.map(|_| ())),
        }
        // A waiter gets it as soon as the holder releases.
        let waiter = tokio::spawn(async move {
            on_b.acquire("uninstall hello", Duration::from_secs(10))
                .await
                .map(|_guard| ())
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        held.release().await.unwrap();
        waiter.await.unwrap().unwrap();
        // A holder dropped without release (a crash) frees it too.
        let dropped = on_a
            .acquire("install", Duration::from_secs(5))
            .await
            .unwrap();
        drop(dropped);
        let again = lock(&b, "b.lock")
            .acquire("install", Duration::from_secs(5))
            .await
            .unwrap();
        again.release().await.unwrap();
    });
}

#[test]
fn one_holder_at_a_time_across_instances_sharing_postgresql() {
    one_holder_at_a_time_across_instances_sharing_the_database(Backend::Postgresql);
}

#[test]
fn one_holder_at_a_time_across_instances_sharing_mysql() {
    one_holder_at_a_time_across_instances_sharing_the_database(Backend::Mysql);
}

fn instances_started_together_migrate_a_fresh_database_once(backend: Backend) {
    let database = TestDatabase::create(backend);
    let shared = DataDir::new();
    let sqlite_url = format!(
        "sqlite://{}?mode=rwc",
        shared.path().join("shared.db").display()
    );
    let url = match backend {
        Backend::Sqlite => sqlite_url,
        _ => url(&database),
    };
    let dirs: Vec<DataDir> = (0..3).map(|_| DataDir::new()).collect();
    let hosts: Vec<Host> = std::thread::scope(|scope| {
        let started: Vec<_> = dirs
            .iter()
            .enumerate()
            .map(|(i, dir)| {
                let (url, worker) = (url.clone(), i.to_string());
                scope.spawn(move || {
                    Host::start_with(
                        dir,
                        &[
                            ("DATABASE_URL", url.as_str()),
                            ("PLUGHOST_WORKER_ID", worker.as_str()),
                            (
                                "PLUGHOST_JWT_SECRET",
                                "a shared secret of at least 32 characters",
                            ),
                        ],
                    )
                })
            })
            .collect();
        started
            .into_iter()
            .map(|h| h.join().expect("a host started"))
            .collect()
    });
    for host in &hosts {
        assert_eq!(host.get("/health").status, 200, "{backend:?}");
        assert_eq!(host.get("/admin/v1/sys/plugins").status, 200, "{backend:?}");
    }
    let mut migrated: Vec<String> = hosts
        .iter()
        .flat_map(|h| {
            h.log()
                .lines()
                .filter(|l| l.contains("schema migrated"))
                .filter_map(|l| {
                    l.split("migration=\"")
                        .nth(1)?
                        .split('"')
                        .next()
                        .map(str::to_owned)
                })
                .collect::<Vec<_>>()
        })
        .collect();
    migrated.sort();
    // Every migration ran once, on whichever instance got there first: the
    // init script (one of two, by key mode) and each numbered one.
    let expected = std::fs::read_dir(e2e::root().join("sql").join(backend.name()))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_str().unwrap() != "init_snowflake.sql"
        })
        .count();
    let mut once = migrated.clone();
    once.dedup();
    assert_eq!(migrated, once, "{backend:?}: a migration ran twice");
    assert_eq!(migrated.len(), expected, "{backend:?}: {migrated:?}");
}

#[test]
fn instances_started_together_migrate_a_fresh_postgresql_database_once() {
    instances_started_together_migrate_a_fresh_database_once(Backend::Postgresql);
}

#[test]
fn instances_started_together_migrate_a_fresh_mysql_database_once() {
    instances_started_together_migrate_a_fresh_database_once(Backend::Mysql);
}

#[test]
fn instances_started_together_migrate_one_fresh_sqlite_file_once() {
    instances_started_together_migrate_a_fresh_database_once(Backend::Sqlite);
}
