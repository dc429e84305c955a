//! Enable flags across instances: two real `plughost` processes sharing one
//! real Redis and one database agree on every toggle, at once, and keep
//! serving through a Redis outage.

use std::{
    sync::atomic::{AtomicBool, AtomicU32, Ordering},
    time::Duration,
};

use e2e::{Backend, DataDir, Host, TestDatabase, TestRedis, eventually};

const SECRET: &str = "a-shared-token-secret-of-at-least-32-chars";

/// A data dir with `plugins` and a host on the shared `database_url`
/// (None: the data dir's own SQLite file) and Redis.
fn instance(
    plugins: &[&str],
    redis: &TestRedis,
    database_url: Option<&str>,
    extra: &[(&str, &str)],
) -> (DataDir, Host) {
    let data = DataDir::new();
    for name in plugins {
        data.install_dir(name);
    }
    let redis_url = redis.url();
    let mut env = vec![
        ("REDIS_URL", redis_url.as_str()),
        ("PLUGHOST_JWT_SECRET", SECRET),
        // Events must carry changes: the reconcile is far too slow to.
        ("PLUGHOST_FLAG_RECONCILE", "60"),
    ];
    if let Some(url) = database_url {
        env.push(("DATABASE_URL", url));
    }
    env.extend_from_slice(extra);
    let host = Host::start_with(&data, &env);
    (data, host)
}

fn greet(host: &Host) -> u16 {
    host.get("/hello/v1/greet").status
}

fn revision(host: &Host, plugin: &str) -> i64 {
    host.plugin(plugin)["revision"].as_i64().expect("revision")
}

fn postgres_url(database: &TestDatabase) -> String {
    database.env()[0].1.clone()
}

#[test]
fn a_toggle_on_one_instance_is_enforced_by_the_other_at_once() {
    let redis = TestRedis::start();
    let database = TestDatabase::create(Backend::Postgresql);
    let url = postgres_url(&database);
    let (_da, a) = instance(&["hello", "sysinfo"], &redis, Some(&url), &[]);
    // B serves only hello: its start-up must not delete sysinfo's key.
    let (_db, b) = instance(&["hello"], &redis, Some(&url), &[]);
    assert_eq!(
        redis.json("fba:plugin:sysinfo").unwrap()["plugin"]["enable"],
        "1"
    );

    assert_eq!(
        a.put("/admin/v1/sys/plugins/hello/status").data()["enable"],
        "0"
    );
    assert!(
        eventually(Duration::from_secs(2), || greet(&b) == 503),
        "B still serves hello:\n{}",
        b.log()
    );
    // Redis holds what FBA stores: the manifest plus name and enable.
    let stored = redis.json("fba:plugin:hello").expect("hello's key");
    assert_eq!(stored["plugin"]["enable"], "0");
    assert_eq!(stored["plugin"]["name"], "hello");
    assert_eq!(stored["app"]["router"][0], "router_v1");

    assert_eq!(
        b.put("/admin/v1/sys/plugins/hello/status").data()["enable"],
        "1"
    );
    assert!(eventually(Duration::from_secs(2), || greet(&a) == 200));
    assert_eq!(revision(&a, "hello"), 3);
    assert_eq!(revision(&b, "hello"), 3);
    assert!(b.log().contains("plugin status applied"), "{}", b.log());
}

/// `n` toggles of hello, split over both instances, all at once; each must
/// succeed.
fn toggle_concurrently(a: &Host, b: &Host, n: usize) {
    // Log in first, so the toggles race each other and not the logins.
    a.plugin("hello");
    b.plugin("hello");
    let failures = AtomicU32::new(0);
    std::thread::scope(|scope| {
        for i in 0..n {
            let host = if i % 2 == 0 { a } else { b };
            let failures = &failures;
            scope.spawn(move || {
                let reply = host.put("/admin/v1/sys/plugins/hello/status");
                if reply.status != 200 {
                    eprintln!("toggle failed: {:?}", reply.json);
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(failures.load(Ordering::Relaxed), 0);
}

#[test]
fn fifty_concurrent_toggles_from_both_sides_end_in_the_state_the_count_implies() {
    let redis = TestRedis::start();
    let database = TestDatabase::create(Backend::Postgresql);
    let url = postgres_url(&database);
    let (_da, a) = instance(&["hello"], &redis, Some(&url), &[]);
    let (_db, b) = instance(&["hello"], &redis, Some(&url), &[]);

    toggle_concurrently(&a, &b, 50);
    // 50 flips from revision 1: revision 51, enabled; no flip lost.
    for host in [&a, &b] {
        assert!(
            eventually(Duration::from_secs(2), || revision(host, "hello") == 51),
            "revision {}",
            revision(host, "hello")
        );
        assert_eq!(host.plugin("hello")["plugin"]["enable"], "1");
        assert_eq!(greet(host), 200);
    }
    assert_eq!(
        redis.json("fba:plugin:hello").unwrap()["plugin"]["enable"],
        "1"
    );

    toggle_concurrently(&a, &b, 1);
    for host in [&a, &b] {
        assert!(eventually(Duration::from_secs(2), || greet(host) == 503));
    }
    assert_eq!(
        redis.json("fba:plugin:hello").unwrap()["plugin"]["enable"],
        "0"
    );
}

#[test]
fn two_instances_on_one_sqlite_file_agree_too() {
    let redis = TestRedis::start();
    let shared = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        shared.path().join("shared.db").display()
    );
    let (_da, a) = instance(&["hello"], &redis, Some(&url), &[]);
    let (_db, b) = instance(&["hello"], &redis, Some(&url), &[]);

    a.put("/admin/v1/sys/plugins/hello/status");
    assert!(eventually(Duration::from_secs(2), || greet(&b) == 503));
    toggle_concurrently(&a, &b, 21);
    for host in [&a, &b] {
        assert!(eventually(Duration::from_secs(2), || revision(
            host, "hello"
        ) == 23));
        assert_eq!(greet(host), 200);
    }
}

#[test]
fn a_redis_outage_keeps_the_gate_serving_and_everything_reconverges() {
    let mut redis = TestRedis::start();
    let database = TestDatabase::create(Backend::Postgresql);
    let url = postgres_url(&database);
    // A fast reconcile: the outage is retried many times, logged once.
    let fast = [("PLUGHOST_FLAG_RECONCILE", "0.2")];
    let (_da, a) = instance(&["hello", "sysinfo"], &redis, Some(&url), &fast);
    let (_db, b) = instance(&["hello", "sysinfo"], &redis, Some(&url), &fast);
    a.put("/admin/v1/sys/plugins/sysinfo/status");
    assert!(eventually(Duration::from_secs(2), || {
        b.get("/admin/v1/sys/sysinfo").status == 503
    }));

    // Traffic on the enabled plugin, on both instances, through it all.
    let stop = AtomicBool::new(false);
    let (served, failed) = (AtomicU32::new(0), AtomicU32::new(0));
    std::thread::scope(|scope| {
        for host in [&a, &b] {
            let (stop, served, failed) = (&stop, &served, &failed);
            scope.spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    match greet(host) {
                        200 => served.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            });
        }
        std::thread::sleep(Duration::from_millis(300));
        redis.stop();
        std::thread::sleep(Duration::from_secs(1));

        // Toggles need Redis to reach the other instances: refused, clearly.
        a.put("/admin/v1/sys/plugins/hello/status")
            .assert_error(503, &format!("Redis at {} is unavailable", redis.url()));
        assert_eq!(a.get("/admin/v1/sys/sysinfo").status, 503);
        assert_eq!(b.plugin("sysinfo")["plugin"]["enable"], "0");

        // Back, empty (as flushed): the database re-seeds it.
        redis.restart();
        assert!(
            eventually(Duration::from_secs(5), || {
                redis
                    .json("fba:plugin:sysinfo")
                    .is_some_and(|v| v["plugin"]["enable"] == "0")
                    && redis
                        .json("fba:plugin:hello")
                        .is_some_and(|v| v["plugin"]["enable"] == "1")
            }),
            "Redis not re-seeded:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "gate errors during the outage"
    );
    assert!(
        served.load(Ordering::Relaxed) > 50,
        "too little traffic to tell"
    );

    for host in [&a, &b] {
        let log = host.log();
        assert_eq!(log.matches("Redis is unavailable").count(), 1, "{log}");
        assert!(
            eventually(Duration::from_secs(3), || host
                .log()
                .matches("Redis is reachable again")
                .count()
                == 1),
            "{log}"
        );
        // The flushed Redis did not re-enable anything.
        assert_eq!(host.get("/admin/v1/sys/sysinfo").status, 503);
    }
    // Events flow again.
    a.put("/admin/v1/sys/plugins/hello/status");
    assert!(eventually(Duration::from_secs(2), || greet(&b) == 503));
}

#[test]
fn the_redis_status_check_reads_redis_per_request_and_falls_back_to_the_cache() {
    let mut redis = TestRedis::start();
    let (_data, host) = instance(&["hello"], &redis, None, &[("STATUS_CHECK", "redis")]);
    assert_eq!(greet(&host), 200);
    // Written behind the host's back: the per-request read sees it at once.
    redis.cli(&[
        "SET",
        "fba:plugin:hello",
        r#"{"plugin":{"name":"hello","enable":"0"}}"#,
    ]);
    host.get("/hello/v1/greet")
        .assert_error(503, "plugin 'hello' is disabled");
    // A missing key or an unreachable Redis: the cached flag (FBA answers 500).
    redis.cli(&["DEL", "fba:plugin:hello"]);
    assert_eq!(greet(&host), 200);
    redis.stop();
    assert_eq!(greet(&host), 200);
}

#[test]
fn the_redis_status_check_needs_a_redis_url() {
    let data = DataDir::new();
    let (ok, out) = e2e::cli(
        &data,
        &[("STATUS_CHECK", "redis".into())],
        &["user", "list"],
    );
    assert!(!ok);
    assert!(
        out.contains("status_check") && out.contains("REDIS_URL"),
        "{out}"
    );
}

#[test]
fn a_host_starts_while_redis_is_down_and_seeds_it_when_it_comes() {
    let mut redis = TestRedis::start();
    redis.stop();
    let (_data, host) = instance(
        &["hello"],
        &redis,
        None,
        &[("PLUGHOST_FLAG_RECONCILE", "0.2")],
    );
    assert_eq!(greet(&host), 200);
    host.put("/admin/v1/sys/plugins/hello/status")
        .assert_error(503, "is unavailable");
    redis.restart();
    assert!(
        eventually(Duration::from_secs(5), || redis
            .json("fba:plugin:hello")
            .is_some_and(|v| v["plugin"]["enable"] == "1")),
        "{}",
        host.log()
    );
    assert_eq!(host.put("/admin/v1/sys/plugins/hello/status").status, 200);
    assert_eq!(greet(&host), 503);
}

#[test]
fn a_bad_redis_url_stops_start_up_naming_it() {
    let data = DataDir::new();
    let (ok, out) = e2e::cli(
        &data,
        &[("REDIS_URL", "http://127.0.0.1:1".into())],
        &["serve", "--bind", "127.0.0.1:0"],
    );
    assert!(!ok);
    assert!(
        out.contains("REDIS_URL http://127.0.0.1:1 is not a Redis URL"),
        "{out}"
    );
}

#[test]
fn the_key_value_service_lives_in_redis_when_configured() {
    let mut redis = TestRedis::start();
    let database = TestDatabase::create(Backend::Postgresql);
    let url = postgres_url(&database);
    let (_da, a) = instance(&["notes"], &redis, Some(&url), &[]);
    let (_db, b) = instance(&["notes"], &redis, Some(&url), &[]);
    let put = |host: &Host, path: &str, value: &str| {
        let reply = ureq::put(&format!("{}{path}", host.base())).send_string(value);
        assert_eq!(reply.expect("kv put").status(), 200);
    };
    put(&a, "/notes/v1/kv/shared", "from-a");
    assert_eq!(b.get("/notes/v1/kv/shared").data(), "from-a");
    assert_eq!(
        redis.cli(&["--raw", "GET", "fba:plugin_kv:notes:shared"]),
        "from-a"
    );

    put(&a, "/notes/v1/kv/brief?ttl_ms=300", "soon gone");
    let ttl: i64 = redis
        .cli(&["PTTL", "fba:plugin_kv:notes:brief"])
        .parse()
        .unwrap();
    assert!((1..=300).contains(&ttl), "ttl {ttl}");
    assert!(eventually(Duration::from_secs(2), || b
        .get("/notes/v1/kv/brief")
        .data()
        .is_null()));
    assert_eq!(
        b.request("DELETE", "/notes/v1/kv/shared", None).data(),
        true
    );
    assert!(a.get("/notes/v1/kv/shared").data().is_null());

    // Counters are shared by the instances and atomic across them.
    let seen = e2e::count_concurrently(&[&a, &b], "hits", 6, 10);
    assert_eq!(seen, (1..=60).collect::<Vec<_>>());
    assert_eq!(
        redis.cli(&["--raw", "GET", "fba:plugin_kv:notes:hits"]),
        "60"
    );
    assert_eq!(
        a.request("POST", "/notes/v1/counter/window?ttl_ms=60000", None)
            .data(),
        1
    );
    assert_eq!(
        b.request("POST", "/notes/v1/counter/window?ttl_ms=1", None)
            .data(),
        2
    );
    let ttl: i64 = redis
        .cli(&["PTTL", "fba:plugin_kv:notes:window"])
        .parse()
        .unwrap();
    assert!(
        (1_000..=60_000).contains(&ttl),
        "the window's first increment set its expiry: {ttl}"
    );
    put(&a, "/notes/v1/kv/word", "abc");
    b.request("POST", "/notes/v1/counter/word?ttl_ms=500", None)
        .assert_error(500, "key 'word' does not hold a whole number");
    assert_eq!(redis.cli(&["PTTL", "fba:plugin_kv:notes:word"]), "-1");

    redis.stop();
    a.get("/notes/v1/kv/shared")
        .assert_error(500, &format!("Redis at {} is unavailable", redis.url()));
}

#[test]
fn plugin_operations_take_the_lifecycle_lock_in_redis() {
    let redis = TestRedis::start();
    let (data, host) = instance(&["hello"], &redis, None, &[("PLUGHOST_LOCK_WAIT", "1")]);
    // Another instance's operation holds the lock.
    redis.cli(&[
        "SET",
        "fba:plugin_lock",
        "token install (pid 1)",
        "PX",
        "60000",
    ]);
    let before = e2e::snapshot(&data.plugins());
    host.upload(
        &e2e::package("greeter", "greeter_v1", "greeter_v1"),
        "type=zip",
    )
    .assert_error(
        409,
        "another plugin operation is in progress (token install (pid 1))",
    );
    host.request("DELETE", "/admin/v1/sys/plugins/hello", None)
        .assert_error(409, "another plugin operation is in progress");
    assert!(e2e::snapshot(&data.plugins()) == before);
    redis.cli(&["DEL", "fba:plugin_lock"]);
    assert_eq!(
        host.upload(
            &e2e::package("greeter", "greeter_v1", "greeter_v1"),
            "type=zip"
        )
        .status,
        200
    );
    // Released after the operation.
    assert_eq!(redis.cli(&["EXISTS", "fba:plugin_lock"]), "0");
}

#[test]
fn revisions_never_go_backwards_across_an_uninstall_and_a_reinstall() {
    let redis = TestRedis::start();
    let database = TestDatabase::create(Backend::Postgresql);
    let url = postgres_url(&database);
    let (_da, a) = instance(&["hello"], &redis, Some(&url), &[]);
    let (_db, b) = instance(&["hello"], &redis, Some(&url), &[]);
    // Installed on A (B follows), toggled twice: B has applied revision 3.
    let package = e2e::package("sysinfo", "sysinfo", "sysinfo");
    assert_eq!(a.upload(&package, "type=zip").status, 200);
    assert!(eventually(Duration::from_secs(5), || b
        .get("/admin/v1/sys/sysinfo")
        .status
        == 200));
    a.put("/admin/v1/sys/plugins/sysinfo/status");
    a.put("/admin/v1/sys/plugins/sysinfo/status");
    assert!(eventually(Duration::from_secs(2), || revision(
        &b, "sysinfo"
    ) == 3));

    // Uninstalled and reinstalled on A: the flag continues, it does not restart.
    assert_eq!(
        a.request("DELETE", "/admin/v1/sys/plugins/sysinfo", None)
            .status,
        200
    );
    assert_eq!(
        redis.json("fba:plugin:sysinfo"),
        None,
        "the key goes with the plugin"
    );
    let reply = a.upload(&package, "type=zip");
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(a.plugin("sysinfo")["plugin"]["enable"], "1");
    assert!(eventually(Duration::from_secs(5), || b
        .get("/admin/v1/sys/sysinfo")
        .status
        == 200));
    let reinstalled = revision(&a, "sysinfo");
    assert!(
        reinstalled > 3,
        "revision {reinstalled} after the reinstall"
    );

    // A toggle after the reinstall reaches B, which had applied revision 3.
    assert_eq!(
        a.put("/admin/v1/sys/plugins/sysinfo/status").data()["enable"],
        "0"
    );
    assert!(
        eventually(Duration::from_secs(2), || {
            b.get("/admin/v1/sys/sysinfo").status == 503
        }),
        "B ignored the toggle after the reinstall:\n{}",
        b.log()
    );
    assert_eq!(revision(&a, "sysinfo"), revision(&b, "sysinfo"));
}
