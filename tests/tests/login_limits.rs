//! Login cannot be used to exhaust the host: a storm of concurrent bad
//! logins keeps memory flat, repeated failures are throttled per user name
//! and per address for the whole cluster (in Redis, or in the database
//! without it; reset by a success), and a password change
//! invalidates the tokens issued before it.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::Duration,
};

use e2e::{ADMIN_PASSWORD, As};
use serde_json::json;

/// The largest resident set the host may reach during the storm, in KiB.
/// One argon2 hash holds 19 MiB; unbounded, 1,000 at once took gigabytes.
const PEAK_RSS_BOUND_KIB: u64 = 192 * 1024;

fn login_body(username: &str, password: &str) -> String {
    json!({ "username": username, "password": password }).to_string()
}

#[test]
fn a_storm_of_a_thousand_concurrent_bad_logins_keeps_memory_flat() {
    // Throttling off for this test: every login reaches the hash gate.
    let (_data, host) = e2e::serve_with(
        &[],
        &[
            ("PLUGHOST_LOGIN_FAILURES", "1000000"),
            ("PLUGHOST_LOGIN_ADDRESS_FAILURES", "1000000"),
        ],
    );
    let address = host.base().trim_start_matches("http://").to_owned();
    let before = e2e::rss_kib(host.pid());
    let body = login_body("admin", "not the password");
    let request = format!(
        "POST /admin/v1/auth/login HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    // 1,000 connections open at once, each with its request sent.
    let mut streams: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut stream = TcpStream::connect(&address).expect("connect");
            stream.write_all(request.as_bytes()).expect("send");
            stream
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let status: u16 = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no answer: {answer:?}"));
        if status == 503 {
            assert!(answer.contains("retry-after: 1"), "{answer}");
        }
        *statuses.entry(status).or_default() += 1;
    }
    let peak = e2e::status_kib(host.pid(), "VmHWM:");
    eprintln!(
        "login storm: {statuses:?}; RSS before {} MiB, peak {} MiB (bound {} MiB)",
        before / 1024,
        peak / 1024,
        PEAK_RSS_BOUND_KIB / 1024
    );
    assert!(
        statuses.keys().all(|s| [401, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(statuses.get(&401).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(peak < PEAK_RSS_BOUND_KIB, "peak RSS {peak} KiB");
    // And the right password still works.
    assert!(!host.token("admin", ADMIN_PASSWORD).is_empty());
}

#[test]
fn repeated_failures_are_throttled_per_name_and_per_address_and_a_success_resets() {
    let (_data, host) = e2e::serve_with(
        &[],
        &[
            ("PLUGHOST_LOGIN_FAILURES", "3"),
            ("PLUGHOST_LOGIN_ADDRESS_FAILURES", "6"),
            ("PLUGHOST_LOGIN_LOCKOUT", "2"),
        ],
    );
    // Two failures, then the right password: the count starts again.
    for _ in 0..2 {
        host.login("admin", "wrong password")
            .assert_error(401, "wrong username or password");
    }
    assert_eq!(host.login("admin", ADMIN_PASSWORD).status, 200);
    for _ in 0..3 {
        host.login("admin", "wrong password")
            .assert_error(401, "wrong username or password");
    }
    // The fourth try is refused before any hash, the right password too.
    let refused = host.login("admin", ADMIN_PASSWORD);
    refused.assert_error(
        429,
        "too many failed logins for this user name; try again in",
    );
    assert!(
        matches!(refused.retry_after.as_deref(), Some("1" | "2")),
        "{:?}",
        refused.retry_after
    );
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(host.login("admin", ADMIN_PASSWORD).status, 200);

    // Per address: failures spread over many names.
    for i in 0..6 {
        host.login(&format!("nobody{i}"), "wrong password")
            .assert_error(401, "wrong username or password");
    }
    host.login("someone-else", "wrong password")
        .assert_error(429, "too many failed logins from this address");
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(host.login("admin", ADMIN_PASSWORD).status, 200);
}

#[test]
fn tokens_issued_before_a_password_change_are_refused() {
    // The server keeps a token's principal for the flag reconcile period;
    // a change made by another process (this CLI, without Redis to tell
    // it) is seen within that bound, like a flag change.
    let (data, host) = e2e::serve_with(&[], &[("PLUGHOST_FLAG_RECONCILE", "1")]);
    let old = host.token("admin", ADMIN_PASSWORD);
    let header = format!("Bearer {old}");
    assert_eq!(
        host.request_as(As::Header(&header), "GET", "/admin/v1/sys/plugins", None)
            .status,
        200
    );
    let (ok, out) = e2e::cli(
        &data,
        &[],
        &[
            "user",
            "passwd",
            "admin",
            "--password",
            "a brand new password",
        ],
    );
    assert!(ok, "{out}");
    assert!(e2e::eventually(std::time::Duration::from_secs(3), || {
        host.request_as(As::Header(&header), "GET", "/admin/v1/sys/plugins", None)
            .status
            == 401
    }));
    host.request_as(As::Header(&header), "GET", "/admin/v1/sys/plugins", None)
        .assert_error(
            401,
            "token was issued before the user's password changed or the user was disabled; log in again",
        );
    let new = host.token("admin", "a brand new password");
    let header = format!("Bearer {new}");
    assert_eq!(
        host.request_as(As::Header(&header), "GET", "/admin/v1/sys/plugins", None)
            .status,
        200
    );
}

/// Three instances on one `backend` database (and one Redis when `redis`),
/// each failing a login once in turn: the fourth try, on any of them, is
/// refused, as on one instance; after the lockout it goes through.
fn failures_count_for_the_cluster(backend: e2e::Backend, redis: bool) {
    let database = e2e::TestDatabase::create(backend);
    let server = redis.then(e2e::TestRedis::start);
    let url = server.as_ref().map(e2e::TestRedis::url);
    let mut env: Vec<(&str, String)> = database.env();
    env.extend([
        ("PLUGHOST_LOGIN_FAILURES", "3".to_owned()),
        ("PLUGHOST_LOGIN_ADDRESS_FAILURES", "100".to_owned()),
        ("PLUGHOST_LOGIN_LOCKOUT", "3".to_owned()),
    ]);
    if let Some(url) = &url {
        env.push(("REDIS_URL", url.clone()));
    }
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let dirs: Vec<e2e::DataDir> = (0..3).map(|_| e2e::DataDir::new()).collect();
    let hosts: Vec<e2e::Host> = dirs
        .iter()
        .map(|d| e2e::Host::start_with(d, &env))
        .collect();
    let shown = format!("{backend:?}, Redis: {redis}");
    for host in &hosts {
        host.login("admin", "wrong password")
            .assert_error(401, "wrong username or password");
    }
    for host in &hosts {
        let refused = host.login("admin", ADMIN_PASSWORD);
        assert_eq!(refused.status, 429, "{shown}: {:?}", refused.json);
        refused.assert_error(
            429,
            "too many failed logins for this user name; try again in",
        );
    }
    std::thread::sleep(Duration::from_millis(3100));
    assert_eq!(
        hosts[2].login("admin", ADMIN_PASSWORD).status,
        200,
        "{shown}"
    );
    // The success cleared the count everywhere: two more failures pass.
    for host in &hosts[..2] {
        host.login("admin", "wrong password")
            .assert_error(401, "wrong username or password");
    }
    assert_eq!(
        hosts[0].login("admin", ADMIN_PASSWORD).status,
        200,
        "{shown}"
    );
}

#[test]
fn failures_count_for_the_cluster_in_redis() {
    failures_count_for_the_cluster(e2e::Backend::Postgresql, true);
}

#[test]
fn failures_count_for_the_cluster_in_postgresql_without_redis() {
    failures_count_for_the_cluster(e2e::Backend::Postgresql, false);
}

#[test]
fn failures_count_for_the_cluster_in_mariadb_without_redis() {
    failures_count_for_the_cluster(e2e::Backend::Mysql, false);
}
