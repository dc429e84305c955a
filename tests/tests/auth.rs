//! Authentication and RBAC through the real binary, on every backend.

use e2e::{As, BACKENDS, DataDir, Host, TestDatabase, cli};

fn host_on(database: &TestDatabase, env: &[(&str, &str)]) -> (DataDir, Host) {
    let data = DataDir::new();
    data.install_dir("hello");
    data.install_dir("sysinfo");
    data.install_dir("panicky");
    let host = Host::start_on(&data, database, env);
    (data, host)
}

#[test]
fn login_issues_a_bearer_token_and_wrong_credentials_are_refused() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let (_data, host) = host_on(&database, &[]);
        let reply = host.login("admin", e2e::ADMIN_PASSWORD);
        assert_eq!(reply.data()["token_type"], "Bearer", "{backend:?}");
        assert!(reply.data()["access_token"].as_str().unwrap().len() > 20);
        host.login("admin", "wrong-password")
            .assert_error(401, "wrong username or password");
        host.login("nobody", "whatever-password")
            .assert_error(401, "wrong username or password");
        host.request_as(
            As::Anonymous,
            "POST",
            "/admin/v1/auth/login",
            Some(&serde_json::json!({"username": "admin"})),
        )
        .assert_error(422, "missing field `password`");
    }
}

#[test]
fn every_kind_of_token_misuse_answers_401_with_its_own_message() {
    let database = TestDatabase::create(e2e::Backend::Sqlite);
    let (_data, host) = host_on(&database, &[("PLUGHOST_TOKEN_TTL", "1")]);
    let other_database = TestDatabase::create(e2e::Backend::Sqlite);
    let (_other_data, other) = host_on(&other_database, &[]);
    let forged = other.token("admin", e2e::ADMIN_PASSWORD);
    let short_lived = host.token("admin", e2e::ADMIN_PASSWORD);
    let cases: Vec<(As<'_>, &str)> = vec![
        (As::Anonymous, "authentication required"),
        (As::Header("Token abc"), "malformed Authorization header"),
        (As::Header("Bearer"), "malformed Authorization header"),
        (As::Header("Bearer not.a.jwt"), "invalid token (not a JWT)"),
    ];
    for (who, needle) in cases {
        host.request_as(who, "GET", "/admin/v1/sys/plugins", None)
            .assert_error(401, needle);
    }
    let forged = format!("Bearer {forged}");
    host.request_as(As::Header(&forged), "GET", "/admin/v1/sys/plugins", None)
        .assert_error(401, "signature does not match");

    std::thread::sleep(std::time::Duration::from_millis(2100));
    let expired = format!("Bearer {short_lived}");
    host.request_as(As::Header(&expired), "GET", "/admin/v1/sys/plugins", None)
        .assert_error(401, "token expired");
}

#[test]
fn logout_revokes_the_token_on_every_backend() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let (_data, host) = host_on(&database, &[]);
        let token = format!("Bearer {}", host.token("admin", e2e::ADMIN_PASSWORD));
        let who = As::Header(&token);
        assert_eq!(
            host.request_as(who, "GET", "/admin/v1/sys/plugins", None)
                .status,
            200
        );
        assert_eq!(
            host.request_as(who, "POST", "/admin/v1/auth/logout", None)
                .status,
            200
        );
        host.request_as(who, "GET", "/admin/v1/sys/plugins", None)
            .assert_error(401, "token was revoked");
        // Extend-level plugin routes sit behind the same guard.
        host.request_as(who, "GET", "/admin/v1/sys/sysinfo", None)
            .assert_error(401, "token was revoked");
        host.request_as(As::Anonymous, "GET", "/admin/v1/sys/sysinfo", None)
            .assert_error(401, "authentication required");
    }
}

#[test]
fn roles_grant_permissions_to_users_created_on_the_command_line() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let data = DataDir::new();
        let env = database.env();
        let run = |args: &[&str]| {
            let (ok, out) = cli(&data, &env, args);
            assert!(ok, "{backend:?}: plughost {args:?} failed: {out}");
            out
        };
        run(&["role", "add", "reader"]);
        run(&["role", "grant", "reader", "panicky:secret:read"]);
        run(&["role", "add", "operator"]);
        run(&["role", "grant", "operator", "sys:plugin:edit"]);
        run(&[
            "user",
            "add",
            "ada",
            "--password",
            "ada-password",
            "--role",
            "reader",
        ]);
        run(&["user", "add", "bob", "--password", "bob-password"]);
        run(&[
            "user",
            "add",
            "eve",
            "--password",
            "eve-password",
            "--role",
            "operator",
        ]);
        let listing = run(&["user", "list"]);
        assert!(
            listing.contains("ada") && listing.contains("reader"),
            "{listing}"
        );

        // Refusals name the thing.
        let (ok, out) = cli(
            &data,
            &env,
            &["user", "add", "ada", "--password", "another-one"],
        );
        assert!(!ok && out.contains("user 'ada' already exists"), "{out}");
        let (ok, out) = cli(&data, &env, &["role", "grant", "ghost", "a:b"]);
        assert!(!ok && out.contains("role 'ghost' does not exist"), "{out}");
        let (ok, out) = cli(&data, &env, &["user", "add", "zed", "--password", "short"]);
        assert!(!ok && out.contains("8 to 1024 characters"), "{out}");

        data.install_dir("panicky");
        data.install_dir("hello");
        let host = Host::start_on(&data, &database, &[]);
        let ada = format!("Bearer {}", host.token("ada", "ada-password"));
        let bob = format!("Bearer {}", host.token("bob", "bob-password"));
        let eve = format!("Bearer {}", host.token("eve", "eve-password"));

        // A plugin route declaring a permission.
        let reply = host.request_as(As::Header(&ada), "GET", "/panicky/v1/secret", None);
        let principal = &reply.data()["principal"];
        assert_eq!(principal["username"], "ada", "{backend:?}");
        assert_eq!(
            principal["permissions"],
            serde_json::json!(["panicky:secret:read"])
        );
        host.request_as(As::Header(&bob), "GET", "/panicky/v1/secret", None)
            .assert_error(403, "permission 'panicky:secret:read' is required");
        host.request_as(As::Anonymous, "GET", "/panicky/v1/secret", None)
            .assert_error(401, "authentication required");
        // A plugin route needing only a caller; public routes stay public.
        let reply = host.request_as(As::Header(&bob), "GET", "/panicky/v1/whoami", None);
        assert_eq!(reply.data()["principal"]["username"], "bob");
        host.request_as(As::Anonymous, "GET", "/panicky/v1/whoami", None)
            .assert_error(401, "authentication required");
        assert_eq!(
            host.request_as(As::Anonymous, "GET", "/hello/v1/greet", None)
                .status,
            200
        );
        // Core routes: reading needs a token only, toggling sys:plugin:edit.
        assert_eq!(
            host.request_as(As::Header(&bob), "GET", "/admin/v1/sys/plugins", None)
                .status,
            200
        );
        host.request_as(
            As::Header(&bob),
            "PUT",
            "/admin/v1/sys/plugins/hello/status",
            None,
        )
        .assert_error(403, "permission 'sys:plugin:edit' is required");
        let toggled = host.request_as(
            As::Header(&eve),
            "PUT",
            "/admin/v1/sys/plugins/hello/status",
            None,
        );
        assert_eq!(toggled.data()["enable"], "0");
        // The superuser passes every check.
        assert_eq!(
            host.request("GET", "/panicky/v1/secret", None).status,
            401,
            "public request path sends no token"
        );
        let admin = format!("Bearer {}", host.token("admin", e2e::ADMIN_PASSWORD));
        let reply = host.request_as(As::Header(&admin), "GET", "/panicky/v1/secret", None);
        assert_eq!(reply.data()["principal"]["superuser"], true);
    }
}

#[test]
fn the_secret_is_generated_once_and_kept_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let database = TestDatabase::create(e2e::Backend::Sqlite);
    let (data, host) = host_on(&database, &[]);
    let token = format!("Bearer {}", host.token("admin", e2e::ADMIN_PASSWORD));
    let path = data.path().join("jwt.secret");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(host.stop().success());
    // Tokens survive a restart: the secret is reused.
    let host = Host::start_on(&data, &database, &[]);
    assert_eq!(
        host.request_as(As::Header(&token), "GET", "/admin/v1/sys/plugins", None)
            .status,
        200
    );
}

#[test]
fn snowflake_keys_work_on_a_server_backend() {
    let database = TestDatabase::create(e2e::Backend::Postgresql);
    let data = DataDir::new();
    let mut env = database.env();
    env.push(("PLUGHOST_PK_MODE", "snowflake".into()));
    let (ok, out) = cli(
        &data,
        &env,
        &["user", "add", "ada", "--password", "ada-password"],
    );
    assert!(ok, "{out}");
    let id: i64 = out
        .split("(id ")
        .nth(1)
        .and_then(|s| s.trim_end().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no id in {out}"));
    assert!(id > 1 << 22, "a snowflake id carries a timestamp: {id}");
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let host = Host::start_binary("plughost", &data, &pairs);
    assert_eq!(host.login("ada", "ada-password").status, 200);
    // The mode is recorded: the other mode is refused by name.
    let (ok, out) = cli(&data, &database.env(), &["user", "list"]);
    assert!(
        !ok && out.contains("set PLUGHOST_PK_MODE=snowflake"),
        "{out}"
    );
}
