//! The bundled `oauth2` plugin through the real binary on two instances
//! sharing PostgreSQL and Redis, against a real OpenID Connect provider
//! (panva's oidc-provider on loopback, tests/oidc): the test plays the
//! browser, signing in on the provider's own login and consent pages and
//! carrying each redirect, and the load balancer, taking each login's
//! callback to the other instance. The first login makes the user (with
//! the operator's roles) and the same account logs in as the same user;
//! a state works once and expires; a logged-in user binds an account and
//! unbinds it; a disabled user gets no token; a deleted user's bindings
//! go with it. Its table works on every backend and key mode.

use std::time::{Duration, Instant};

use e2e::{As, Backend, DataDir, Host, TestDatabase, TestOidc, eventually};
use serde_json::{Value, json};

const CLIENT_ID: &str = "plughost-test";
const CLIENT_SECRET: &str = "a-client-secret-for-the-tests";
const FRONTEND: &str = "http://127.0.0.1:9/app/logged-in";
const BOUND: &str = "http://127.0.0.1:9/app/profile";

/// A browser: its own cookies, redirects carried by the test.
fn browser() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(10))
        .build()
}

fn location(response: &ureq::Response) -> String {
    response
        .header("location")
        .unwrap_or_else(|| panic!("no location in a {} answer", response.status()))
        .to_owned()
}

/// Signs in as `login` at the provider from its login URL `url`, through
/// its login and consent pages; the URL it sends the browser back to
/// (this host's callback, with the code and state).
fn sign_in(provider: &TestOidc, url: &str, login: &str) -> String {
    let browser = browser();
    let issuer = provider.issuer();
    let absolute = |to: String| {
        if to.starts_with('/') {
            format!("{issuer}{to}")
        } else {
            to
        }
    };
    let mut next = url.to_owned();
    for _ in 0..10 {
        if !next.starts_with(&issuer) {
            return next;
        }
        let answer = browser.get(&next).call().expect("the provider answers");
        if answer.status() != 200 {
            next = absolute(location(&answer));
            continue;
        }
        // Its login page, or its consent page.
        let page = answer.into_string().unwrap();
        let form: Vec<(&str, &str)> = if page.contains("name=\"login\"") {
            vec![("prompt", "login"), ("login", login), ("password", "any")]
        } else {
            vec![("prompt", "consent")]
        };
        let posted = match browser.post(&next).send_form(&form) {
            Ok(answer) => answer,
            Err(ureq::Error::Status(_, answer)) => answer,
            Err(e) => panic!("posting the provider's page: {e}"),
        };
        assert!(
            (300..400).contains(&posted.status()),
            "the provider's page answered {}: {}",
            posted.status(),
            posted.into_string().unwrap_or_default()
        );
        next = absolute(location(&posted));
    }
    panic!("the provider never sent the browser back");
}

/// The callback `back` (a URL on the load balancer) delivered to `host`;
/// its status and `location`.
fn deliver(host: &Host, back: &str) -> (u16, String, Value) {
    let path = &back[back.find("/oauth2/").expect("a callback URL")..];
    let answer = match browser().get(&format!("{}{path}", host.base())).call() {
        Ok(answer) => answer,
        Err(ureq::Error::Status(_, answer)) => answer,
        Err(e) => panic!("the callback: {e}"),
    };
    let status = answer.status();
    let to = answer.header("location").unwrap_or_default().to_owned();
    let body = answer.into_json().unwrap_or(Value::Null);
    (status, to, body)
}

/// The access token in a login's redirect to the frontend.
fn token_in(to: &str) -> String {
    assert!(to.starts_with(&format!("{FRONTEND}?access_token=")), "{to}");
    let to = url::Url::parse(to).unwrap();
    let expires_at: i64 = to
        .query_pairs()
        .find(|(k, _)| k == "expires_at")
        .expect("expires_at")
        .1
        .parse()
        .unwrap();
    assert!(expires_at > chrono::Utc::now().timestamp());
    to.query_pairs()
        .find(|(k, _)| k == "access_token")
        .unwrap()
        .1
        .into_owned()
}

/// A login URL from `host` (`/oauth2/v1/oidc`).
fn login_url(host: &Host) -> String {
    host.get("/oauth2/v1/oidc")
        .data()
        .as_str()
        .unwrap()
        .to_owned()
}

/// Logs in as `login` (URL from `from`, callback on `to`): the token.
fn log_in(provider: &TestOidc, from: &Host, to: &Host, login: &str) -> String {
    let back = sign_in(provider, &login_url(from), login);
    let (status, location, body) = deliver(to, &back);
    assert_eq!(status, 302, "{body}");
    token_in(&location)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn user_named(host: &Host, name: &str) -> Option<Value> {
    let page = host.get(&format!("/admin/v1/sys/users?username={name}"));
    page.data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == name)
        .cloned()
}

#[test]
fn an_openid_connect_login_makes_the_user_once_on_any_instance() {
    // The browser reaches the instances through a load balancer's address.
    let balancer = format!("http://127.0.0.1:{}", e2e::free_port());
    let callback = format!("{balancer}/oauth2/v1/oidc/callback");
    let provider = TestOidc::start(CLIENT_ID, CLIENT_SECRET, &[&callback]);
    let issuer = provider.issuer();
    let pair = e2e::pair(
        &["oauth2"],
        &[
            ("OAUTH2_OIDC_ISSUER", &issuer),
            ("OAUTH2_OIDC_CLIENT_ID", CLIENT_ID),
            ("OAUTH2_OIDC_CLIENT_SECRET", CLIENT_SECRET),
            ("OAUTH2_OIDC_REDIRECT_URI", &callback),
            ("OAUTH2_FRONTEND_LOGIN_REDIRECT_URI", FRONTEND),
            ("OAUTH2_FRONTEND_BINDING_REDIRECT_URI", BOUND),
            ("OAUTH2_STATE_EXPIRE_SECONDS", "10"),
            ("PLUGHOST_HTTP_ALLOW_OAUTH2", "127.0.0.1"),
            ("PLUGHOST_IDENTITY_ROLES_OAUTH2", "sso"),
        ],
    );
    let (a, b) = (&pair.a, &pair.b);
    a.post("/admin/v1/sys/roles", &json!({ "name": "sso" }))
        .data();
    // A login left at the callback, to expire while the rest runs.
    let expiring = sign_in(&provider, &login_url(a), "late");
    let expiring_since = Instant::now();

    // Alice's first login: URL from A, callback on B.
    let url = login_url(a);
    assert!(url.starts_with(&format!("{issuer}/auth?")), "{url}");
    assert!(url.contains("code_challenge_method=S256"), "{url}");
    let back = sign_in(&provider, &url, "alice");
    let (status, to, body) = deliver(b, &back);
    assert_eq!(status, 302, "{body}");
    let token = token_in(&to);
    let alice = user_named(a, "alice").expect("alice made at her first login");
    assert_eq!(alice["roles"], json!(["sso"]));
    assert_eq!(alice["email"], "alice@example.test");
    assert_eq!(alice["nickname"], "Test alice");
    // The token is a login's: it works on both instances.
    for host in [a, b] {
        let mine = host.request_as(
            As::Header(&bearer(&token)),
            "GET",
            "/oauth2/v1/bindings",
            None,
        );
        assert_eq!(mine.data()[0]["source"], "oidc");
        assert_eq!(mine.data()[0]["uid"], "alice");
    }
    // A state works once.
    let (status, _, body) = deliver(a, &back);
    assert_eq!(status, 400, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("state"), "{body}");

    // The same account logs in as the same user, the other way round.
    let again = log_in(&provider, b, a, "alice");
    let mine = a.request_as(
        As::Header(&bearer(&again)),
        "GET",
        "/oauth2/v1/bindings",
        None,
    );
    assert_eq!(mine.data().as_array().unwrap().len(), 1);
    let alice_again = user_named(a, "alice").unwrap();
    assert_eq!(alice_again["id"], alice["id"]);
    assert!(user_named(a, "alice-2").is_none(), "no second user");

    // Carol (a password user) binds her account at the provider; then
    // that account logs in as carol.
    a.post(
        "/admin/v1/sys/users",
        &json!({ "username": "carol", "password": "password-of-carol" }),
    )
    .data();
    let carol = a.token("carol", "password-of-carol");
    let bind = b.request_as(
        As::Header(&bearer(&carol)),
        "POST",
        "/oauth2/v1/bindings/oidc",
        None,
    );
    let back = sign_in(&provider, bind.data().as_str().unwrap(), "carol-sso");
    let (status, to, body) = deliver(a, &back);
    assert_eq!((status, to.as_str()), (302, BOUND), "{body}");
    let sso = log_in(&provider, a, b, "carol-sso");
    let mine = b.request_as(
        As::Header(&bearer(&sso)),
        "GET",
        "/oauth2/v1/bindings",
        None,
    );
    assert_eq!(mine.data()[0]["uid"], "carol-sso");
    assert!(user_named(a, "carol-sso").is_none(), "bound, not made");
    // Alice's account is bound to alice: carol cannot take it.
    let bind = a.request_as(
        As::Header(&bearer(&carol)),
        "POST",
        "/oauth2/v1/bindings/oidc",
        None,
    );
    let back = sign_in(&provider, bind.data().as_str().unwrap(), "alice");
    let (status, _, body) = deliver(b, &back);
    assert_eq!(status, 409, "{body}");

    // Unbound, carol's account no longer reaches carol: it makes a user.
    let unbound = a.request_as(
        As::Header(&bearer(&carol)),
        "DELETE",
        "/oauth2/v1/bindings/oidc",
        None,
    );
    unbound.data();
    let mine = b.request_as(
        As::Header(&bearer(&carol)),
        "GET",
        "/oauth2/v1/bindings",
        None,
    );
    assert_eq!(mine.data(), &json!([]));
    let unbound = a.request_as(
        As::Header(&bearer(&carol)),
        "DELETE",
        "/oauth2/v1/bindings/oidc",
        None,
    );
    unbound.assert_error(404, "you have no oidc account bound");
    log_in(&provider, b, a, "carol-sso");
    assert!(
        user_named(a, "carol-sso").is_some(),
        "a new user for the unbound account"
    );

    // A disabled user gets no token.
    let id = alice["id"].as_i64().unwrap();
    a.request(
        "PUT",
        &format!("/admin/v1/sys/users/{id}/status"),
        Some(&json!({ "status": 0 })),
    )
    .data();
    let back = sign_in(&provider, &login_url(b), "alice");
    let (status, _, body) = deliver(a, &back);
    assert_eq!(status, 403, "{body}");
    assert!(
        body["msg"].as_str().unwrap().contains("alice is disabled"),
        "{body}"
    );

    // Deleted: alice's bindings go with her, and her account makes a new user.
    a.request("DELETE", &format!("/admin/v1/sys/users/{id}"), None)
        .data();
    let database = pair.database();
    assert!(
        eventually(Duration::from_secs(5), || {
            database.select(&format!(
                "SELECT count(*) FROM sys_user_social WHERE user_id = {id}"
            )) == "0"
        }),
        "the deleted user's bindings remain"
    );
    log_in(&provider, a, b, "alice");
    let new_alice = user_named(a, "alice").expect("alice made again");
    assert_ne!(new_alice["id"], alice["id"]);

    // The login left at its callback has expired by now.
    if let Some(left) = Duration::from_secs(11).checked_sub(expiring_since.elapsed()) {
        std::thread::sleep(left);
    }
    let (status, _, body) = deliver(b, &expiring);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["msg"]
            .as_str()
            .unwrap()
            .contains("unknown or expired state"),
        "{body}"
    );
    assert!(user_named(a, "late").is_none());
}

#[test]
fn a_plain_http_issuer_that_is_not_loopback_is_refused_at_start() {
    let (_data, host) = e2e::serve_with(
        &["oauth2"],
        &[("OAUTH2_OIDC_ISSUER", "http://id.example.com")],
    );
    let listed = host.plugin("oauth2");
    assert_eq!(listed["state"], "error", "{listed}");
    assert_eq!(
        listed["error"],
        "not started: its start hook failed: OAUTH2_OIDC_ISSUER 'http://id.example.com' is plain http to a host that is not loopback: use https"
    );
    assert_eq!(host.get("/oauth2/v1/oidc").status, 404);
}

#[test]
fn a_login_is_recorded_on_every_backend_and_key_mode() {
    let balancer = format!("http://127.0.0.1:{}", e2e::free_port());
    let callback = format!("{balancer}/oauth2/v1/oidc/callback");
    let provider = TestOidc::start(CLIENT_ID, CLIENT_SECRET, &[&callback]);
    let issuer = provider.issuer();
    for (backend, mode) in [
        (Backend::Sqlite, "autoincrement"),
        (Backend::Mysql, "autoincrement"),
        (Backend::Mysql, "snowflake"),
        (Backend::Postgresql, "snowflake"),
    ] {
        let database = TestDatabase::create(backend);
        let data = DataDir::new();
        data.install_dir("oauth2");
        let host = Host::start_on(
            &data,
            &database,
            &[
                ("PLUGHOST_PK_MODE", mode),
                ("OAUTH2_OIDC_ISSUER", &issuer),
                ("OAUTH2_OIDC_CLIENT_ID", CLIENT_ID),
                ("OAUTH2_OIDC_CLIENT_SECRET", CLIENT_SECRET),
                ("OAUTH2_OIDC_REDIRECT_URI", &callback),
                ("OAUTH2_FRONTEND_LOGIN_REDIRECT_URI", FRONTEND),
                ("PLUGHOST_HTTP_ALLOW_OAUTH2", "127.0.0.1"),
            ],
        );
        let token = log_in(&provider, &host, &host, "dora");
        let mine = host.request_as(
            As::Header(&bearer(&token)),
            "GET",
            "/oauth2/v1/bindings",
            None,
        );
        assert_eq!(mine.status, 200, "{backend:?} {mode}: {:?}", mine.json);
        assert_eq!(mine.data()[0]["uid"], "dora", "{backend:?} {mode}");
    }
}
