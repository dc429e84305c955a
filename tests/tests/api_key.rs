//! The bundled `api_key` plugin through the real binary on two instances
//! sharing PostgreSQL and Redis: a key made on A authenticates as its
//! owner on B, with the owner's permissions and nothing more; a deleted
//! key is refused on both within the flag bound; disabling the plugin
//! stops every key at once; a key is no token to log out; a user deleted
//! takes its keys along.

use std::time::Duration;

use e2e::{As, Host, eventually};
use serde_json::json;

const KEYS: &str = "/admin/v1/sys/api-keys";

fn with_key(host: &Host, key: &str, method: &str, path: &str) -> e2e::Reply {
    host.request_as(As::Header(&format!("Bearer {key}")), method, path, None)
}

#[test]
fn a_key_authenticates_as_its_owner_on_every_instance_until_deleted() {
    keys_authenticate(&[]);
}

/// The same with the plugin isolated: its authenticator is asked in its
/// child process.
#[test]
fn an_isolated_plugins_keys_authenticate_the_same() {
    keys_authenticate(&[("PLUGHOST_ISOLATED_PLUGINS", "api_key")]);
}

fn keys_authenticate(extra: &[(&str, &str)]) {
    let mut env = vec![("PLUGHOST_FLAG_RECONCILE", "1")];
    env.extend_from_slice(extra);
    let pair = e2e::pair(&["api_key"], &env);
    let (a, b) = (&pair.a, &pair.b);
    assert_eq!(a.plugin("api_key")["access_hooks"], json!(["authenticate"]));
    // Ada may read plugins and users, nothing more.
    a.post("/admin/v1/sys/roles", &json!({ "name": "reader" }))
        .data();
    a.request(
        "PUT",
        "/admin/v1/sys/roles/reader/permissions",
        Some(&json!({ "permissions": ["sys:user:list"] })),
    )
    .data();
    let ada = a.post(
        "/admin/v1/sys/users",
        &json!({ "username": "ada", "password": "password-of-ada", "roles": ["reader"] }),
    );
    let ada_id = ada.data()["id"].as_i64().unwrap();
    let token = a.token("ada", "password-of-ada");
    let made = a.request_as(
        As::Header(&format!("Bearer {token}")),
        "POST",
        KEYS,
        Some(&json!({ "name": "ci", "expire_seconds": 3600 })),
    );
    let key = made.data()["key"].as_str().unwrap().to_owned();
    let key_id = made.data()["id"].as_i64().unwrap();

    // On B: the key is ada, with her permissions.
    assert_eq!(with_key(b, &key, "GET", "/admin/v1/sys/users").status, 200);
    b.request_as(
        As::Header(&format!("Bearer {key}")),
        "POST",
        "/admin/v1/sys/roles",
        Some(&json!({ "name": "mine" })),
    )
    .assert_error(403, "permission 'sys:role:add' is required");
    let mine = with_key(b, &key, "GET", KEYS);
    assert_eq!(mine.data()[0]["user_id"], ada_id);
    assert!(
        !mine.json.to_string().contains(&key),
        "a key is never listed"
    );
    // Anything else that is not a token is still refused as before.
    with_key(b, "not-a-token", "GET", "/admin/v1/sys/plugins").assert_error(401, "invalid token");
    with_key(b, "plk_0000", "GET", "/admin/v1/sys/plugins").assert_error(
        401,
        "plugin 'api_key' refused the credential: unknown API key",
    );
    // A key is not a token: logging out with it says where to revoke it.
    with_key(b, &key, "POST", "/admin/v1/auth/logout")
        .assert_error(409, "this credential is plugin 'api_key''s, not a token");

    // Disabled: every key stops at once; enabled again: it works again.
    a.put("/admin/v1/sys/plugins/api_key/status").data();
    assert!(
        eventually(Duration::from_secs(3), || {
            with_key(b, &key, "GET", "/admin/v1/sys/users").status == 401
        }),
        "B still takes the key of a disabled plugin"
    );
    a.put("/admin/v1/sys/plugins/api_key/status").data();
    assert!(eventually(Duration::from_secs(3), || {
        with_key(b, &key, "GET", "/admin/v1/sys/users").status == 200
    }));

    // Deleted on A: refused on both within the flag bound (1 s here).
    a.request_as(
        As::Header(&format!("Bearer {token}")),
        "DELETE",
        &format!("{KEYS}/{key_id}"),
        None,
    )
    .data();
    assert!(
        eventually(Duration::from_secs(4), || {
            with_key(a, &key, "GET", "/admin/v1/sys/users").status == 401
                && with_key(b, &key, "GET", "/admin/v1/sys/users").status == 401
        }),
        "a deleted key still works"
    );

    // A user deleted takes its keys along.
    let second = a.request_as(
        As::Header(&format!("Bearer {token}")),
        "POST",
        KEYS,
        Some(&json!({ "name": "second" })),
    );
    let second = second.data()["key"].as_str().unwrap().to_owned();
    assert_eq!(
        with_key(b, &second, "GET", "/admin/v1/sys/users").status,
        200
    );
    a.request("DELETE", &format!("/admin/v1/sys/users/{ada_id}"), None)
        .data();
    assert!(eventually(Duration::from_secs(4), || {
        a.get(KEYS).data().as_array().is_some_and(Vec::is_empty)
    }));
    with_key(b, &second, "GET", "/admin/v1/sys/users").assert_error(401, "unknown API key");
}
