//! One plugin set for the whole cluster: instances on one database (and
//! one Redis, where the test says), each with its own plugin dir, follow
//! every install, upgrade and uninstall made on any of them or with the CLI.

use std::time::Duration;

use e2e::{
    Backend, DataDir, Host, TestDatabase, TestRedis, eventually, greeter, greeter_version, package,
};

const SECRET: &str = "a-shared-token-secret-of-at-least-32-chars";
/// Long enough that only an event can carry a change in time.
const SLOW_RECONCILE: &str = "60";
const WITHIN: Duration = Duration::from_secs(10);

/// The status `/greeter/v1/version` answers on `host`.
fn status(host: &Host) -> u16 {
    host.get("/greeter/v1/version").status
}

/// An instance `id` on `url` (with `redis`, when given), its plugin dir
/// holding `local` plugins as directories placed by hand.
fn node(
    id: &str,
    url: &str,
    redis: Option<&str>,
    reconcile: &str,
    local: &[&str],
) -> (DataDir, Host) {
    let data = DataDir::new();
    for name in local {
        data.install_dir(name);
    }
    let host = start(&data, id, url, redis, reconcile);
    (data, host)
}

fn start(data: &DataDir, id: &str, url: &str, redis: Option<&str>, reconcile: &str) -> Host {
    let mut env = vec![
        ("DATABASE_URL", url),
        ("PLUGHOST_JWT_SECRET", SECRET),
        ("PLUGHOST_INSTANCE_ID", id),
        ("PLUGHOST_FLAG_RECONCILE", reconcile),
    ];
    if let Some(redis) = redis {
        env.push(("REDIS_URL", redis));
    }
    Host::start_with(data, &env)
}

fn three_instances_follow_every_change(backend: Backend) {
    let database = TestDatabase::create(backend);
    let url = database.env()[0].1.clone();
    let redis = TestRedis::start();
    let r = redis.url();
    let (_da, a) = node("a", &url, Some(&r), SLOW_RECONCILE, &["hello"]);
    let (db_, b) = node("b", &url, Some(&r), SLOW_RECONCILE, &[]);
    let (_dc, c) = node("c", &url, Some(&r), SLOW_RECONCILE, &[]);

    // Install on A: B and C serve it.
    assert_eq!(a.upload(&greeter(1), "type=zip").status, 200);
    for host in [&b, &c] {
        assert!(
            eventually(WITHIN, || greeter_version(host).as_deref() == Some("1")),
            "not served on {}:\n{}",
            host.base(),
            host.log()
        );
    }
    assert!(db_.plugins().join("greeter/libgreeter.so").is_file());
    // Every instance reports it, and a local plugin stays where it is.
    assert!(eventually(WITHIN, || {
        b.instances("greeter")
            == [
                ("a".into(), "loaded".into(), "1.0.0".into()),
                ("b".into(), "loaded".into(), "1.0.0".into()),
                ("c".into(), "loaded".into(), "1.0.0".into()),
            ]
    }));
    assert_eq!(b.get("/hello/v1/greet").status, 404);
    assert_eq!(a.plugin("hello")["local"], true);
    assert_eq!(a.plugin("greeter")["local"], false);

    // Upgrade from B while C serves under load: no request fails on C, and
    // requests in flight finish on the build they started on.
    let (slow, served, failed) = e2e::under_load(
        4,
        || greeter_version(&c).is_some(),
        || {
            std::thread::scope(|scope| {
                let slow: Vec<_> = (0..3)
                    .map(|_| {
                        scope.spawn(|| {
                            let reply = c.get("/greeter/v1/slow?ms=3000");
                            assert_eq!(reply.status, 200, "{:?}", reply.json);
                            reply.json["data"].clone()
                        })
                    })
                    .collect();
                std::thread::sleep(Duration::from_millis(200));
                let reply = b.upload(&greeter(2), "type=zip&upgrade=true");
                assert_eq!(reply.status, 200, "{:?}", reply.json);
                assert!(
                    eventually(WITHIN, || greeter_version(&c).as_deref() == Some("2")),
                    "{}",
                    c.log()
                );
                std::thread::sleep(Duration::from_millis(200));
                slow.into_iter()
                    .map(|s| s.join().unwrap())
                    .collect::<Vec<_>>()
            })
        },
    );
    assert_eq!(failed, 0, "failed requests on C");
    assert!(served > 20);
    assert!(slow.iter().all(|build| build == "1"), "{slow:?}");
    assert!(eventually(WITHIN, || greeter_version(&a).as_deref() == Some("2")));

    // Uninstall on C: gone on A and B, files too.
    let reply = c.request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    for host in [&a, &b] {
        assert!(eventually(WITHIN, || status(host) == 404), "{}", host.log());
    }
    assert!(eventually(WITHIN, || !db_
        .plugins()
        .join("greeter")
        .exists()));

    // Reinstalled, then toggled on different instances: everyone follows.
    assert_eq!(a.upload(&greeter(1), "type=zip").status, 200);
    for host in [&b, &c] {
        assert!(eventually(WITHIN, || greeter_version(host).as_deref() == Some("1")));
    }
    assert_eq!(b.put("/admin/v1/sys/plugins/greeter/status").status, 200);
    for host in [&a, &b, &c] {
        assert!(eventually(WITHIN, || status(host) == 503));
    }
    assert_eq!(c.put("/admin/v1/sys/plugins/greeter/status").status, 200);
    for host in [&a, &b, &c] {
        assert!(eventually(WITHIN, || status(host) == 200));
    }

    // An install of a plugin the cluster has, on an instance that has it
    // or not yet: a conflict.
    a.upload(&greeter(1), "type=zip")
        .assert_error(409, "plugin 'greeter' 1.0.0 is installed");

    // Two installs of one package on two instances at once: one wins.
    let reply = a.request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    for host in [&b, &c] {
        assert!(eventually(WITHIN, || status(host) == 404));
    }
    let archive = greeter(2);
    let (first, second) = std::thread::scope(|scope| {
        let one = scope.spawn(|| a.upload(&archive, "type=zip"));
        let two = scope.spawn(|| b.upload(&archive, "type=zip"));
        (one.join().unwrap(), two.join().unwrap())
    });
    let mut statuses = [first.status, second.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "{:?} {:?}", first.json, second.json);
    let loser = if first.status == 409 { first } else { second };
    loser.assert_error(409, "plugin 'greeter' 2.0.0 is installed");
    for host in [&a, &b, &c] {
        assert!(eventually(WITHIN, || greeter_version(host).as_deref() == Some("2")));
    }
    // No staging directory left behind where the packages were fetched
    // (it is removed just after the new table serves).
    assert!(
        eventually(WITHIN, || db_.leftovers().is_empty()),
        "{:?}",
        db_.leftovers()
    );
}

#[test]
fn three_instances_on_postgresql_and_redis_follow_every_change() {
    three_instances_follow_every_change(Backend::Postgresql);
}

#[test]
fn three_instances_on_mariadb_and_redis_follow_every_change() {
    three_instances_follow_every_change(Backend::Mysql);
}

#[test]
fn without_redis_the_reconcile_carries_install_upgrade_and_uninstall() {
    let database = TestDatabase::create(Backend::Postgresql);
    let url = database.env()[0].1.clone();
    let (_da, a) = node("a", &url, None, "0.3", &[]);
    let (_db, b) = node("b", &url, None, "0.3", &[]);

    assert_eq!(a.upload(&greeter(1), "type=zip").status, 200);
    assert!(eventually(WITHIN, || greeter_version(&b).as_deref() == Some("1")));
    assert_eq!(b.upload(&greeter(2), "type=zip&upgrade=true").status, 200);
    assert!(eventually(WITHIN, || greeter_version(&a).as_deref() == Some("2")));
    let reply = a.request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(eventually(WITHIN, || status(&b) == 404));
}

#[test]
fn late_and_killed_instances_converge_when_they_start() {
    let database = TestDatabase::create(Backend::Postgresql);
    let url = database.env()[0].1.clone();
    let redis = TestRedis::start();
    let r = redis.url();
    let (_da, a) = node("a", &url, Some(&r), SLOW_RECONCILE, &[]);
    assert_eq!(a.upload(&greeter(1), "type=zip").status, 200);
    assert_eq!(
        a.upload(&package("notes", "notes", "notes"), "type=zip")
            .status,
        200
    );

    // A new instance serves the whole set as soon as it answers.
    let (late_data, late) = node("late", &url, Some(&r), SLOW_RECONCILE, &[]);
    assert_eq!(greeter_version(&late).as_deref(), Some("1"));
    assert_eq!(late.plugin("notes")["state"], "loaded");

    // Killed while the cluster changes, at points from before the fetch to
    // after it: it serves what the desired set says once restarted.
    let mut late = late;
    for (i, build) in [2u8, 1, 2, 1, 2, 1].into_iter().enumerate() {
        let reply = a.upload(&greeter(build), "type=zip&upgrade=true&force=true");
        assert_eq!(reply.status, 200, "{:?}", reply.json);
        std::thread::sleep(Duration::from_millis(i as u64 * 15));
        late.kill();
        drop(late);
        late = start(&late_data, "late", &url, Some(&r), SLOW_RECONCILE);
        assert_eq!(
            greeter_version(&late),
            Some(build.to_string()),
            "run {i}: {}",
            late.log()
        );
        assert!(late_data.leftovers().is_empty(), "run {i}");
    }

    // Killed while the cluster uninstalled it: gone once restarted.
    late.kill();
    drop(late);
    let reply = a.request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    let late = start(&late_data, "late", &url, Some(&r), SLOW_RECONCILE);
    assert_eq!(status(&late), 404);
    assert!(!late_data.plugins().join("greeter").exists());
    assert_eq!(late.plugin("notes")["state"], "loaded");
}

#[test]
fn altered_package_bytes_are_refused_on_every_instance_naming_the_digest() {
    let database = TestDatabase::create(Backend::Postgresql);
    let url = database.env()[0].1.clone();
    let (_da, a) = node("a", &url, None, "0.3", &[]);
    let archive = greeter(1);
    assert_eq!(a.upload(&archive, "type=zip").status, 200);
    let digest = host::plugin::loading::libcache::hex_digest(&archive);
    execute(
        &url,
        &format!(
            "UPDATE sys_package_chunk SET data = overlay(data placing '\\x00'::bytea from 200 for 1) \
             WHERE digest = '{digest}' AND seq = 0"
        ),
    );
    let (_db, b) = node("b", &url, None, "0.3", &[]);
    let (_dc, c) = node("c", &url, None, "0.3", &[]);
    for host in [&b, &c] {
        assert_eq!(status(host), 404);
        let item = host.plugin("greeter");
        assert_eq!(item["state"], "error", "{item}");
        let error = item["error"].as_str().unwrap();
        assert!(
            error.contains(&format!(
                "package {digest} in the package store was altered"
            )),
            "{error}"
        );
    }
    assert!(eventually(WITHIN, || {
        let all = a.instances("greeter");
        all.len() == 3 && all.iter().filter(|(_, state, _)| state == "error").count() == 2
    }));
    // A still serves its copy.
    assert_eq!(greeter_version(&a).as_deref(), Some("1"));
}

#[test]
fn a_cli_install_is_served_by_running_instances_without_restart() {
    let database = TestDatabase::create(Backend::Postgresql);
    let url = database.env()[0].1.clone();
    let redis = TestRedis::start();
    let r = redis.url();
    let (da, a) = node("a", &url, Some(&r), SLOW_RECONCILE, &[]);
    let (_db, b) = node("b", &url, Some(&r), SLOW_RECONCILE, &[]);
    let env = [
        ("DATABASE_URL", url.clone()),
        ("REDIS_URL", r.clone()),
        ("PLUGHOST_JWT_SECRET", SECRET.to_owned()),
    ];

    // Into A's own data dir, next to the running A.
    let file = da.path().join("greeter.zip");
    std::fs::write(&file, greeter(1)).unwrap();
    let (ok, out) = e2e::cli(
        &da,
        &env,
        &["plugin", "add", "--zip", file.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    for host in [&a, &b] {
        assert!(
            eventually(WITHIN, || greeter_version(host).as_deref() == Some("1")),
            "{}",
            host.log()
        );
    }

    // From a data dir of its own.
    let tool = DataDir::new();
    let file = tool.path().join("greeter.zip");
    std::fs::write(&file, greeter(2)).unwrap();
    let (ok, out) = e2e::cli(
        &tool,
        &env,
        &[
            "plugin",
            "add",
            "--zip",
            file.to_str().unwrap(),
            "--upgrade",
        ],
    );
    assert!(ok, "{out}");
    for host in [&a, &b] {
        assert!(eventually(WITHIN, || greeter_version(host).as_deref() == Some("2")));
    }
    let (ok, out) = e2e::cli(&tool, &env, &["plugin", "remove", "greeter"]);
    assert!(ok, "{out}");
    for host in [&a, &b] {
        assert!(eventually(WITHIN, || status(host) == 404));
    }
}

#[test]
fn a_local_library_stays_local_and_a_name_in_both_is_refused_naming_both() {
    let database = TestDatabase::create(Backend::Postgresql);
    let url = database.env()[0].1.clone();
    let redis = TestRedis::start();
    let r = redis.url();
    let (_da, a) = node("a", &url, Some(&r), "0.3", &[]);
    let db_ = DataDir::new();
    db_.drop_library("hello");
    let b = start(&db_, "b", &url, Some(&r), "0.3");
    assert_eq!(b.get("/hello/v1/greet").status, 200);
    assert_eq!(b.plugin("hello")["local"], true);
    // Never pushed to A.
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(a.get("/hello/v1/greet").status, 404);
    assert!(a.instances("hello").iter().all(|(id, _, _)| id == "b"));

    // The cluster installs the same name: B serves neither, and says why.
    assert_eq!(
        a.upload(&package("hello", "hello", "hello"), "type=zip")
            .status,
        200
    );
    assert_eq!(a.get("/hello/v1/greet").status, 200);
    assert!(eventually(WITHIN, || b.get("/hello/v1/greet").status == 404));
    let item = b.plugin("hello");
    assert_eq!(item["state"], "error");
    let error = item["error"].as_str().unwrap();
    assert!(
        error.contains("is both local to this instance")
            && error.contains(&db_.plugins().join("libhello.so").display().to_string())
            && error.contains("installed in the cluster (0.1.0 from package"),
        "{error}"
    );
    // A restart keeps refusing it; once the local library is removed, the
    // next reconcile serves the cluster's.
    let b = {
        assert!(b.stop().success());
        start(&db_, "b", &url, Some(&r), "0.3")
    };
    assert_eq!(b.get("/hello/v1/greet").status, 404);
    assert_eq!(b.plugin("hello")["state"], "error");
    std::fs::remove_file(db_.plugins().join("libhello.so")).unwrap();
    assert!(
        eventually(WITHIN, || b.get("/hello/v1/greet").status == 200),
        "{}",
        b.log()
    );
    assert_eq!(b.plugin("hello")["local"], false);
}

#[test]
fn instances_on_one_sqlite_file_follow_each_other() {
    let shared = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        shared.path().join("cluster.db").display()
    );
    let (_da, a) = node("a", &url, None, "0.3", &[]);
    let (_db, b) = node("b", &url, None, "0.3", &[]);
    assert_eq!(a.upload(&greeter(1), "type=zip").status, 200);
    assert!(eventually(WITHIN, || greeter_version(&b).as_deref() == Some("1")));
    let reply = b.request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(eventually(WITHIN, || status(&a) == 404));
}

/// Runs one statement on the database at `url`.
fn execute(url: &str, sql: &str) {
    use host::db::{Db, PkMode};
    use sea_orm::ConnectionTrait;
    e2e::runtime().block_on(async {
        let db = Db::open(url, PkMode::Autoincrement, 0).await.unwrap();
        db.conn().execute_unprepared(sql).await.unwrap();
    });
}
