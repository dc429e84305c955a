//! The bundled `casbin_rbac` plugin through the real binary on two
//! instances sharing PostgreSQL and Redis: enabled without policies it
//! changes nothing; a policy added on A decides on B (plugin and core
//! admin routes), a deny winning over an allow; the superuser is exempt;
//! removing the policy lifts it.

use std::time::Duration;

use e2e::{As, eventually};
use serde_json::{Value, json};

const POLICIES: &str = "/admin/v1/sys/casbin/policies";

#[test]
fn policies_made_on_one_instance_decide_on_every_instance() {
    policies_decide(&[]);
}

/// The same with the plugin isolated: its authorizer is asked in its
/// child process.
#[test]
fn an_isolated_plugins_policies_decide_the_same() {
    policies_decide(&[("PLUGHOST_ISOLATED_PLUGINS", "casbin_rbac")]);
}

fn policies_decide(env: &[(&str, &str)]) {
    let pair = e2e::pair(&["dict", "casbin_rbac"], env);
    let (a, b) = (&pair.a, &pair.b);
    assert_eq!(
        a.plugin("casbin_rbac")["access_hooks"],
        json!(["authorize"])
    );

    a.post("/admin/v1/sys/roles", &json!({ "name": "editor" }))
        .data();
    a.request(
        "PUT",
        "/admin/v1/sys/roles/editor/permissions",
        Some(&json!({ "permissions": ["sys:user:list"] })),
    )
    .data();
    a.post(
        "/admin/v1/sys/users",
        &json!({ "username": "bob", "password": "password-of-bob", "roles": ["editor"] }),
    )
    .data();
    let bob = format!("Bearer {}", b.token("bob", "password-of-bob"));
    let on_b = |path: &str| b.request_as(As::Header(&bob), "GET", path, None).status;

    // No policy: nothing changes.
    assert_eq!(on_b("/admin/v1/sys/dict-types"), 200);
    assert_eq!(on_b("/admin/v1/sys/users"), 200);

    // An allow for the role and a deny for bob: the deny wins, on B.
    let add = |policy: Value| a.post(POLICIES, &policy).data().clone();
    add(json!({ "sub": "editor", "path": "/admin/v1/sys/*", "method": "GET", "effect": "allow" }));
    let deny =
        json!({ "sub": "bob", "path": "/admin/v1/sys/dict-*", "method": "*", "effect": "deny" });
    add(deny.clone());
    a.post(POLICIES, &deny)
        .assert_error(409, "this policy exists already");
    assert!(
        eventually(Duration::from_secs(3), || on_b("/admin/v1/sys/dict-types")
            == 403),
        "B did not apply the policy"
    );
    b.request_as(As::Header(&bob), "GET", "/admin/v1/sys/dict-types", None).assert_error(
        403,
        "denied by plugin 'casbin_rbac': policy (bob, /admin/v1/sys/dict-*, *) denies GET /admin/v1/sys/dict-types",
    );
    // Other routes the allow covers go on; the superuser is exempt.
    assert_eq!(on_b("/admin/v1/sys/users"), 200);
    assert_eq!(b.get("/admin/v1/sys/dict-types").status, 200);

    // A deny on a core route for the role.
    add(
        json!({ "sub": "editor", "path": "/admin/v1/sys/users", "method": "GET", "effect": "deny" }),
    );
    assert!(eventually(Duration::from_secs(3), || on_b(
        "/admin/v1/sys/users"
    ) == 403));

    // Bad input is named; removing the deny lifts it on B.
    a.post(
        POLICIES,
        &json!({ "sub": "bob", "path": "relative", "method": "GET", "effect": "allow" }),
    )
    .assert_error(422, "path: a path pattern beginning with '/'");
    let removed = a.request("DELETE", POLICIES, Some(&deny));
    assert_eq!(removed.data()["deleted"], 1);
    assert!(eventually(Duration::from_secs(3), || on_b(
        "/admin/v1/sys/dict-types"
    ) == 200));
    assert_eq!(a.get(POLICIES).data().as_array().unwrap().len(), 2);
}
