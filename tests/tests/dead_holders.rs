//! A lifecycle lock whose holder is killed (SIGKILL) in the middle of an
//! install is free within a few seconds for every other instance: in
//! Redis its lease (5 s, renewed every second while held) runs out; in
//! the database the server drops it with the dead holder's connection.
//! Three instances each time, the first killed while its install waits
//! in the plugin's start hook.

use std::time::{Duration, Instant};

use e2e::{Backend, DataDir, Host, TestDatabase, TestRedis, package};

/// Kills the holder of the lock among three instances on `backend` (with
/// Redis when `redis`): the next install, on another, waits less than
/// `within`, and the third follows it.
fn a_killed_holder_frees_the_lock(backend: Backend, redis: bool, within: Duration) {
    let database = TestDatabase::create(backend);
    let server = redis.then(TestRedis::start);
    let url = server.as_ref().map(TestRedis::url);
    let mut env: Vec<(&str, String)> = database.env();
    env.extend([
        (
            "PLUGHOST_JWT_SECRET",
            "a-shared-token-secret-of-at-least-32-chars".to_owned(),
        ),
        ("PLUGHOST_HOOK_TIMEOUT", "120".to_owned()),
    ]);
    if let Some(url) = &url {
        env.push(("REDIS_URL", url.clone()));
    }
    let shared: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut holding = shared.clone();
    holding.extend([
        ("TICKER_START", "hang"),
        ("PLUGHOST_LOG", "info,host::plugin::lifecycle::lock=debug"),
    ]);
    let dirs: Vec<DataDir> = (0..3).map(|_| DataDir::new()).collect();
    let holder = Host::start_with(&dirs[0], &holding);
    let others: Vec<Host> = dirs[1..]
        .iter()
        .map(|d| Host::start_with(d, &shared))
        .collect();
    let shown = format!("{backend:?}, Redis: {redis}");
    holder.get("/admin/v1/sys/plugins"); // logged in before the install
    others[0].get("/admin/v1/sys/plugins");
    let ticker = package("ticker", "ticker", "ticker");
    let greeter = e2e::greeter_build(1);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // The holder dies under it: any outcome is fine here.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                holder.upload(&ticker, "type=zip")
            }));
        });
        // The install takes the lock and reaches the start hook, which
        // never returns: the lock stays with it until the holder dies.
        assert!(
            e2e::eventually(Duration::from_secs(30), || holder
                .log()
                .contains("lifecycle lock taken operation=\"install\"")),
            "{shown}: the install did not take the lock:\n{}",
            holder.log()
        );
        std::thread::sleep(Duration::from_secs(2));
        holder.kill();
    });
    let started = Instant::now();
    let reply = others[0].upload(&greeter, "type=zip");
    let waited = started.elapsed();
    assert_eq!(reply.status, 200, "{shown}: {:?}", reply.json);
    eprintln!("{shown}: the next install went through {waited:?} after the holder was killed");
    assert!(
        waited < within,
        "{shown}: the next install waited {waited:?} for a dead holder's lock"
    );
    // The third instance follows it: the cluster works on.
    assert!(
        e2e::eventually(Duration::from_secs(10), || {
            e2e::greeter_version(&others[1]).is_some()
        }),
        "{shown}: the third instance did not follow"
    );
}

#[test]
fn a_killed_holder_frees_the_redis_lock_within_its_lease() {
    a_killed_holder_frees_the_lock(Backend::Postgresql, true, Duration::from_secs(7));
}

#[test]
fn a_killed_holder_frees_the_postgresql_lock_at_once() {
    a_killed_holder_frees_the_lock(Backend::Postgresql, false, Duration::from_secs(3));
}

#[test]
fn a_killed_holder_frees_the_mariadb_lock_at_once() {
    a_killed_holder_frees_the_lock(Backend::Mysql, false, Duration::from_secs(3));
}
