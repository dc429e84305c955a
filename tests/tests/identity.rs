//! The identity service through the real binary (the `ticker` fixture
//! declares `users:read` and `users:create`, not `tokens:issue`): users
//! found by name with their access, the user of an external identity
//! created once with the operator's roles and found again, and an
//! undeclared call refused naming what to declare.

use e2e::{DataDir, Host};
use serde_json::json;

#[test]
fn a_plugin_reaches_users_as_far_as_its_manifest_declares() {
    let data = DataDir::new();
    data.install_dir("ticker");
    let host = Host::start_with(&data, &[("PLUGHOST_IDENTITY_ROLES_TICKER", "member")]);
    host.post("/admin/v1/sys/roles", &json!({ "name": "member" }))
        .data();
    host.request(
        "PUT",
        "/admin/v1/sys/roles/member/permissions",
        Some(&json!({ "permissions": ["sys:notice:add"] })),
    )
    .data();

    // The list says what the plugin may ask of the identity service.
    assert_eq!(
        host.plugin("ticker")["identity"],
        json!(["users:read", "users:create"])
    );
    let admin = host.get("/ticker/v1/user?name=admin").data().clone();
    assert_eq!(admin["user"]["username"], "admin");
    assert_eq!(
        host.get("/ticker/v1/user?name=nobody").data()["user"],
        json!(null)
    );

    // An external identity: a user made once, with the operator's roles
    // and a unique name, found again by its provider and subject.
    let first = host.post(
        "/ticker/v1/external",
        &json!({ "provider": "github", "subject": "583231", "username": "admin", "email": "octo@example.org" }),
    );
    let first = first.data().clone();
    assert_eq!(first["username"], "admin-2", "{first}");
    assert_eq!(first["roles"], json!(["member"]));
    assert_eq!(first["email"], "octo@example.org");
    let again = host.post(
        "/ticker/v1/external",
        &json!({ "provider": "github", "subject": "583231", "username": "someone-else" }),
    );
    assert_eq!(again.data()["id"], first["id"]);
    let other = host.post(
        "/ticker/v1/external",
        &json!({ "provider": "google", "subject": "583231" }),
    );
    assert_ne!(other.data()["id"], first["id"]);
    let access = host.get("/ticker/v1/user?name=admin-2").data().clone();
    assert_eq!(access["permissions"], json!(["sys:notice:add"]));
    host.post(
        "/ticker/v1/external",
        &json!({ "provider": "bad provider", "subject": "x" }),
    )
    .assert_error(422, "provider 'bad provider' must be 1 to 64 letters");

    // Not declared: refused, and the refusal says what to declare.
    host.post("/ticker/v1/token", &json!({ "user_id": first["id"] }))
        .assert_error(403, "plugin 'ticker' may not use the identity service for tokens:issue: declare it in plugin.toml [permissions] identity");

    // A deleted user's binding goes with it: the identity makes a new user.
    let id = first["id"].as_i64().unwrap();
    host.request("DELETE", &format!("/admin/v1/sys/users/{id}"), None)
        .data();
    let anew = host.post(
        "/ticker/v1/external",
        &json!({ "provider": "github", "subject": "583231", "username": "octocat" }),
    );
    assert_ne!(anew.data()["id"], first["id"]);
    assert_eq!(anew.data()["username"], "octocat");
}

/// A plugin's policy (the `ticker` fixture's authorizer denies the routes
/// `TICKER_DENY` lists to all but superusers) is asked after RBAC on core
/// and plugin admin routes alike, answers 403 naming itself, and stops
/// applying the moment the plugin is disabled.
#[test]
fn a_plugins_policy_decides_after_rbac_on_every_admin_route() {
    let data = DataDir::new();
    data.install_dir("ticker");
    data.install_dir("api_key");
    let host = Host::start_with(
        &data,
        &[("TICKER_DENY", "/admin/v1/sys/roles, /admin/v1/sys/api-keys")],
    );
    assert_eq!(host.plugin("ticker")["access_hooks"], json!(["authorize"]));
    host.post("/admin/v1/sys/roles", &json!({ "name": "reader" }))
        .data();
    host.request(
        "PUT",
        "/admin/v1/sys/roles/reader/permissions",
        Some(&json!({ "permissions": ["sys:role:list", "sys:user:list"] })),
    )
    .data();
    host.post(
        "/admin/v1/sys/users",
        &json!({ "username": "bob", "password": "password-of-bob", "roles": ["reader"] }),
    )
    .data();
    let bob = format!("Bearer {}", host.token("bob", "password-of-bob"));
    let as_bob = |path: &str| host.request_as(e2e::As::Header(&bob), "GET", path, None);
    // A core route and a plugin's admin route, denied; another, allowed.
    as_bob("/admin/v1/sys/roles").assert_error(
        403,
        "denied by plugin 'ticker': bob may not GET /admin/v1/sys/roles",
    );
    as_bob("/admin/v1/sys/api-keys").assert_error(
        403,
        "denied by plugin 'ticker': bob may not GET /admin/v1/sys/api-keys",
    );
    assert_eq!(as_bob("/admin/v1/sys/users").status, 200);
    // RBAC still holds: what bob's roles do not give is refused as before.
    host.request_as(
        e2e::As::Header(&bob),
        "POST",
        "/admin/v1/sys/users",
        Some(&json!({ "username": "carol", "password": "password-of-carol" })),
    )
    .assert_error(403, "permission 'sys:user:add' is required");
    // The superuser passes this policy.
    assert_eq!(host.get("/admin/v1/sys/roles").status, 200);
    // Disabled: the policy no longer applies.
    host.put("/admin/v1/sys/plugins/ticker/status").data();
    assert_eq!(as_bob("/admin/v1/sys/roles").status, 200);
}
