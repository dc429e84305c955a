//! The admin guard keeps the principal of each token in use, and every
//! change to what a token may do reaches every instance: through Redis at
//! once, without Redis within the flag reconcile period. Two instances on
//! one database, on SQLite, PostgreSQL and MariaDB.

use std::time::Duration;

use e2e::{As, Backend, DataDir, Host, TestDatabase, TestRedis, eventually};

const SECRET: &str = "principal-cache-test-secret-of-32-chars";
const PLUGINS: &str = "/admin/v1/sys/plugins";
const SECRET_ROUTE: &str = "/panicky/v1/secret";

/// Where both instances keep their data: a shared SQLite file or a
/// database on the backend's server.
struct Shared {
    _database: TestDatabase,
    _dir: tempfile::TempDir,
    url: String,
}

fn shared(backend: Backend) -> Shared {
    let dir = tempfile::tempdir().unwrap();
    let database = TestDatabase::create(backend);
    let url = match database.env().into_iter().next() {
        Some((_, url)) => url,
        None => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("shared.db").display()
        ),
    };
    Shared {
        _database: database,
        _dir: dir,
        url,
    }
}

fn env<'a>(
    shared: &'a Shared,
    redis: Option<&'a str>,
    reconcile: &'a str,
) -> Vec<(&'a str, &'a str)> {
    let mut env = vec![
        ("DATABASE_URL", shared.url.as_str()),
        ("PLUGHOST_JWT_SECRET", SECRET),
        ("PLUGHOST_FLAG_RECONCILE", reconcile),
    ];
    if let Some(url) = redis {
        env.push(("REDIS_URL", url));
    }
    env
}

fn instance(env: &[(&str, &str)]) -> (DataDir, Host) {
    let data = DataDir::new();
    data.install_dir("panicky");
    let host = Host::start_with(&data, env);
    (data, host)
}

fn status(host: &Host, token: &str, path: &str) -> u16 {
    host.request_as(As::Header(&format!("Bearer {token}")), "GET", path, None)
        .status
}

fn cli(data: &DataDir, env: &[(&str, &str)], args: &[&str]) {
    let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let (ok, out) = e2e::cli(data, &env, args);
    assert!(ok, "plughost {args:?}: {out}");
}

/// Logout, a password change, a grant, a revoke, a user's roles changed
/// and a user disabled, each made on A (or by the CLI), take effect on B
/// within `bound`, while B had the principal cached.
fn changes_reach_the_other_instance(
    backend: Backend,
    redis: Option<&str>,
    reconcile: &str,
    bound: Duration,
) {
    let shared = shared(backend);
    let env = env(&shared, redis, reconcile);
    let (data_a, a) = instance(&env);
    let (_data_b, b) = instance(&env);
    let label = format!("{backend:?}, Redis: {}", redis.is_some());
    // Both instances answer `token` on `path` with `want` within the bound.
    let both = |token: &str, path: &str, want: u16, what: &str| {
        for (name, host) in [("A", &a), ("B", &b)] {
            assert!(
                eventually(bound, || status(host, token, path) == want),
                "{label}: {name} {what}"
            );
        }
    };

    // Logout on A: refused on A at once, and on B within the bound.
    let token = a.token("admin", e2e::ADMIN_PASSWORD);
    assert_eq!(status(&a, &token, PLUGINS), 200, "{label}");
    assert_eq!(status(&b, &token, PLUGINS), 200, "{label}: B caches it");
    let out = a.request_as(
        As::Header(&format!("Bearer {token}")),
        "POST",
        "/admin/v1/auth/logout",
        None,
    );
    assert_eq!(out.status, 200, "{label}: {:?}", out.json);
    assert_eq!(
        status(&a, &token, PLUGINS),
        401,
        "{label}: A forgets at once"
    );
    assert!(
        eventually(bound, || status(&b, &token, PLUGINS) == 401),
        "{label}: B refuses the revoked token within {bound:?}"
    );

    // A password change by the CLI: every older token is refused.
    let token = b.token("admin", e2e::ADMIN_PASSWORD);
    assert_eq!(status(&a, &token, PLUGINS), 200, "{label}");
    assert_eq!(status(&b, &token, PLUGINS), 200, "{label}");
    cli(
        &data_a,
        &env,
        &[
            "user",
            "passwd",
            "admin",
            "--password",
            "a-new-password-123",
        ],
    );
    both(
        &token,
        PLUGINS,
        401,
        "refuses a token from before the password change",
    );
    assert_eq!(
        a.login("admin", "a-new-password-123").status,
        200,
        "{label}"
    );

    // A grant by the CLI: the held token gains the permission everywhere.
    cli(&data_a, &env, &["role", "add", "reader"]);
    cli(
        &data_a,
        &env,
        &[
            "user",
            "add",
            "bob",
            "--password",
            "bob-password-123",
            "--role",
            "reader",
        ],
    );
    let bob = a.token("bob", "bob-password-123");
    assert_eq!(status(&a, &bob, SECRET_ROUTE), 403, "{label}");
    assert_eq!(
        status(&b, &bob, SECRET_ROUTE),
        403,
        "{label}: B caches bob without it"
    );
    cli(
        &data_a,
        &env,
        &["role", "grant", "reader", "panicky:secret:read"],
    );
    both(&bob, SECRET_ROUTE, 200, "sees bob's new permission");

    // A revoke by the CLI: the held token loses the permission everywhere.
    cli(
        &data_a,
        &env,
        &["role", "revoke", "reader", "panicky:secret:read"],
    );
    both(&bob, SECRET_ROUTE, 403, "sees bob lose the permission");

    // The user's roles changed by the CLI: taking the role that holds the
    // permission takes it, giving it back gives it.
    cli(
        &data_a,
        &env,
        &["role", "grant", "reader", "panicky:secret:read"],
    );
    both(&bob, SECRET_ROUTE, 200, "sees bob's permission again");
    cli(
        &data_a,
        &env,
        &["user", "roles", "bob", "--remove", "reader"],
    );
    both(&bob, SECRET_ROUTE, 403, "sees bob lose the role");
    cli(&data_a, &env, &["user", "roles", "bob", "--add", "reader"]);
    both(&bob, SECRET_ROUTE, 200, "sees bob hold the role again");

    // A user disabled by the CLI: its token is refused everywhere, it
    // cannot log in, and enabling it again does not revive the old token.
    cli(&data_a, &env, &["user", "disable", "bob"]);
    both(&bob, PLUGINS, 401, "refuses the disabled user's token");
    b.request_as(As::Header(&format!("Bearer {bob}")), "GET", PLUGINS, None)
        .assert_error(401, "no longer exists or is disabled");
    assert_eq!(b.login("bob", "bob-password-123").status, 401, "{label}");
    cli(&data_a, &env, &["user", "enable", "bob"]);
    let fresh = b.token("bob", "bob-password-123");
    assert_eq!(status(&a, &fresh, SECRET_ROUTE), 200, "{label}");
    for host in [&a, &b] {
        host.request_as(As::Header(&format!("Bearer {bob}")), "GET", PLUGINS, None)
            .assert_error(401, "log in again");
    }
}

#[test]
fn with_redis_every_change_reaches_every_instance_at_once() {
    let redis = TestRedis::start();
    let url = redis.url();
    for backend in [Backend::Sqlite, Backend::Postgresql, Backend::Mysql] {
        // The entries' own lifetime (60 s) is far longer than the bound:
        // only the published invalidations can meet it.
        changes_reach_the_other_instance(backend, Some(&url), "60", Duration::from_secs(2));
    }
}

#[test]
fn without_redis_changes_reach_every_instance_within_the_reconcile_period() {
    for backend in [Backend::Sqlite, Backend::Postgresql, Backend::Mysql] {
        changes_reach_the_other_instance(backend, None, "1", Duration::from_secs(3));
    }
}
