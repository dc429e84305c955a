//! Users and roles over HTTP (`/admin/v1/sys/users`, `/admin/v1/sys/roles`):
//! the CLI's rules, their permissions, nobody granting what they do not
//! hold or locking themselves out, every change reaching every instance
//! (a deleted user's tokens refused everywhere), and the host's own events
//! reaching a plugin that subscribed to them — from HTTP and from the CLI.

use std::time::Duration;

use e2e::{As, Backend, DataDir, Host, TestDatabase, TestRedis, eventually, sse_lines, until};
use serde_json::{Value, json};

const USERS: &str = "/admin/v1/sys/users";
const ROLES: &str = "/admin/v1/sys/roles";
const SECRET: &str = "users-test-secret-of-at-least-32-chars";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

fn as_user(host: &Host, token: &str, method: &str, path: &str, body: Option<&Value>) -> e2e::Reply {
    host.request_as(As::Header(&bearer(token)), method, path, body)
}

/// Creates user `name` with `roles` as admin; its id.
fn add_user(host: &Host, name: &str, roles: &[&str]) -> i64 {
    let created = host.post(
        USERS,
        &json!({ "username": name, "password": format!("password-of-{name}"), "roles": roles }),
    );
    created.data()["id"].as_i64().expect("an id")
}

/// Creates role `name` holding `permissions` as admin.
fn add_role(host: &Host, name: &str, permissions: &[&str]) {
    host.post(ROLES, &json!({ "name": name })).data();
    let set = host.request(
        "PUT",
        &format!("{ROLES}/{name}/permissions"),
        Some(&json!({ "permissions": permissions })),
    );
    let mut sorted = permissions.to_vec();
    sorted.sort_unstable();
    assert_eq!(set.data()["permissions"], json!(sorted));
}

#[test]
fn users_and_roles_are_managed_over_http_with_the_cli_rules() {
    let (_data, host) = e2e::serve(&[]);
    add_role(&host, "editor", &["sys:dict:add", "sys:dict:edit"]);
    let bob = add_user(&host, "bob", &["editor"]);
    let shown = host.get(&format!("{USERS}/{bob}")).data().clone();
    assert_eq!(
        host.get(&format!("{USERS}/bob")).data()["id"],
        bob,
        "by name too"
    );
    assert_eq!(shown["username"], "bob");
    assert_eq!(shown["roles"], json!(["editor"]));
    assert_eq!(shown["status"], 1);
    assert_eq!(shown["superuser"], false);

    // Bad input: each named, nothing created.
    host.post(USERS, &json!({ "username": "carol", "password": "short" }))
        .assert_error(422, "a password must be 8 to 1024 characters long");
    host.post(
        USERS,
        &json!({ "username": "a b", "password": "long-enough" }),
    )
    .assert_error(422, "user name 'a b' must be 1 to 64 characters");
    host.post(
        USERS,
        &json!({ "username": "carol", "password": "x".repeat(8), "roles": ["nobody"] }),
    )
    .assert_error(
        422,
        "role 'nobody' does not exist; create it with POST /admin/v1/sys/roles",
    );
    host.post(
        USERS,
        &json!({ "username": "bob", "password": "long-enough" }),
    )
    .assert_error(409, "user 'bob' already exists");
    host.post(
        USERS,
        &json!({ "username": "carol", "password": "long-enough", "email": "carol" }),
    )
    .assert_error(422, "'carol' is not a mail address");
    host.post(
        USERS,
        &json!({ "username": "carol", "password": "long-enough", "admin": true }),
    )
    .assert_error(422, "unknown field `admin`");
    host.get(&format!("{USERS}/999999"))
        .assert_error(404, "user 999999 does not exist");
    host.request(
        "PUT",
        &format!("{ROLES}/editor/permissions"),
        Some(&json!({ "permissions": ["not a permission"] })),
    )
    .assert_error(422, "'not a permission' is not a permission string");
    let page = host.get(&format!("{USERS}?page=1&size=1")).data().clone();
    assert_eq!(page["total"], 2, "admin and bob: {page}");
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    let found = host.get(&format!("{USERS}?username=bo")).data().clone();
    assert_eq!(e2e::strings(&found["items"], "/username"), ["bob"]);
    host.get(&format!("{USERS}?size=0"))
        .assert_error(422, "size is 1 to 200");

    // Bob logs in, and holds what his role gives: not the user list.
    let token = host.token("bob", "password-of-bob");
    as_user(&host, &token, "GET", USERS, None)
        .assert_error(403, "permission 'sys:user:list' is required");

    // A nickname and address set, then the nickname cleared with null.
    let changed = host.request(
        "PUT",
        &format!("{USERS}/{bob}"),
        Some(&json!({ "nickname": "Bob B.", "email": "bob@example.org" })),
    );
    assert_eq!(changed.data()["email"], "bob@example.org");
    let cleared = host.request(
        "PUT",
        &format!("{USERS}/{bob}"),
        Some(&json!({ "nickname": null })),
    );
    assert_eq!(cleared.data()["nickname"], Value::Null);
    assert_eq!(cleared.data()["email"], "bob@example.org");

    // Disabled: no login, the token refused; enabled: a new login works.
    let off = host.request(
        "PUT",
        &format!("{USERS}/{bob}/status"),
        Some(&json!({ "status": 0 })),
    );
    assert_eq!(off.data()["status"], 0);
    assert_eq!(
        as_user(&host, &token, "GET", "/admin/v1/sys/plugins", None).status,
        401
    );
    host.login("bob", "password-of-bob")
        .assert_error(401, "wrong username or password");
    host.request(
        "PUT",
        &format!("{USERS}/{bob}/status"),
        Some(&json!({ "status": 7 })),
    )
    .assert_error(422, "status is 1 (enabled) or 0 (disabled)");
    host.request(
        "PUT",
        &format!("{USERS}/{bob}/status"),
        Some(&json!({ "status": 1 })),
    )
    .data();
    let token = host.token("bob", "password-of-bob");

    // The admin cannot lock itself out.
    let admin = host.get(&format!("{USERS}?username=admin")).data()["items"][0]["id"]
        .as_i64()
        .unwrap();
    host.request("DELETE", &format!("{USERS}/{admin}"), None)
        .assert_error(409, "you cannot delete your own account");
    host.request(
        "PUT",
        &format!("{USERS}/{admin}/status"),
        Some(&json!({ "status": 0 })),
    )
    .assert_error(409, "you cannot disable your own account");
    host.request(
        "PUT",
        &format!("{USERS}/{admin}"),
        Some(&json!({ "superuser": false })),
    )
    .assert_error(409, "you cannot change your own superuser flag");

    // Bob manages users, but grants only what he holds.
    add_role(
        &host,
        "usermanager",
        &[
            "sys:user:list",
            "sys:user:add",
            "sys:user:edit",
            "sys:role:edit",
        ],
    );
    add_role(&host, "auditor", &["sys:metrics:read"]);
    let roles = host.request(
        "PUT",
        &format!("{USERS}/{bob}/roles"),
        Some(&json!({ "roles": ["editor", "usermanager"] })),
    );
    assert_eq!(roles.data()["roles"], json!(["editor", "usermanager"]));
    // His token in use gets the new permissions.
    assert_eq!(as_user(&host, &token, "GET", USERS, None).status, 200);
    as_user(
        &host,
        &token,
        "POST",
        USERS,
        Some(&json!({ "username": "carol", "password": "long-enough", "roles": ["auditor"] })),
    )
    .assert_error(
        403,
        "role 'auditor' carries permission 'sys:metrics:read', which you do not hold",
    );
    as_user(
        &host,
        &token,
        "POST",
        USERS,
        Some(&json!({ "username": "carol", "password": "long-enough", "superuser": true })),
    )
    .assert_error(
        403,
        "'carol' is or would be a superuser: only a superuser may change that",
    );
    as_user(
        &host,
        &token,
        "PUT",
        &format!("{ROLES}/editor/permissions"),
        Some(&json!({ "permissions": ["sys:dict:add", "sys:plugin:install"] })),
    )
    .assert_error(
        403,
        "permission 'sys:plugin:install', which you do not hold",
    );
    as_user(
        &host,
        &token,
        "PUT",
        &format!("{USERS}/{admin}"),
        Some(&json!({ "nickname": "x" })),
    )
    .assert_error(403, "'admin' is or would be a superuser");
    let carol = as_user(
        &host,
        &token,
        "POST",
        USERS,
        Some(&json!({ "username": "carol", "password": "long-enough", "roles": ["editor"] })),
    );
    assert_eq!(carol.data()["roles"], json!(["editor"]));
    // Taking a permission away is no grant: allowed.
    let fewer = as_user(
        &host,
        &token,
        "PUT",
        &format!("{ROLES}/editor/permissions"),
        Some(&json!({ "permissions": ["sys:dict:add"] })),
    );
    assert_eq!(fewer.data()["permissions"], json!(["sys:dict:add"]));
    as_user(&host, &token, "DELETE", &format!("{USERS}/{admin}"), None)
        .assert_error(403, "permission 'sys:user:del' is required");
    as_user(
        &host,
        &token,
        "PUT",
        &format!("{USERS}/{bob}"),
        Some(&json!({ "password": "a-new-password" })),
    )
    .assert_error(409, "you cannot change your own password here");

    // A new password from the admin refuses bob's older token.
    host.request(
        "PUT",
        &format!("{USERS}/{bob}"),
        Some(&json!({ "password": "a-new-password" })),
    )
    .data();
    as_user(&host, &token, "GET", USERS, None).assert_error(401, "log in again");
    let token = host.token("bob", "a-new-password");

    // Roles listed with their holders; a role deleted takes its
    // permissions from the tokens in use.
    let listed = host.get(ROLES).data().clone();
    let manager = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "usermanager")
        .unwrap();
    assert_eq!(manager["users"], 1);
    host.request("DELETE", &format!("{ROLES}/usermanager"), None)
        .data();
    as_user(&host, &token, "GET", USERS, None)
        .assert_error(403, "permission 'sys:user:list' is required");
    host.request("DELETE", &format!("{ROLES}/usermanager"), None)
        .assert_error(404, "role 'usermanager' does not exist");

    // Deleted: the token refused, the name free again.
    host.request("DELETE", &format!("{USERS}/{bob}"), None)
        .data();
    as_user(&host, &token, "GET", "/admin/v1/sys/plugins", None)
        .assert_error(401, "the token's user no longer exists or is disabled");
    host.get(&format!("{USERS}/{bob}"))
        .assert_error(404, "does not exist");
    add_user(&host, "bob", &[]);
}

/// Two instances on one database: a change made on A reaches B (a token
/// B had cached refused once its user is deleted), and a plugin on B that
/// subscribed to `sys.user.*` hears of users created and deleted on A and
/// by the CLI.
fn changes_reach_every_instance(backend: Backend, redis: Option<&str>) {
    let database = TestDatabase::create(backend);
    let db_env = database.env();
    let mut env: Vec<(&str, &str)> = db_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env.push(("PLUGHOST_JWT_SECRET", SECRET));
    env.push(("PLUGHOST_FLAG_RECONCILE", "1"));
    if let Some(url) = redis {
        env.push(("REDIS_URL", url));
    }
    let data_a = DataDir::new();
    let a = Host::start_with(&data_a, &env);
    let data_b = DataDir::new();
    data_b.install_dir("ticker");
    let b = Host::start_with(&data_b, &env);
    // The subscription is in place once the answer began.
    let feed = sse_lines(&b, "/ticker/v1/feed?topic=sys.user.*");

    let dave = a.post(
        USERS,
        &json!({ "username": "dave", "password": "password-of-dave" }),
    );
    let dave = dave.data()["id"].as_i64().unwrap();
    // (Without Redis the admin's creation at A's start may come first.)
    let seen = until(&feed, "\"username\":\"dave\"", Duration::from_secs(5));
    let created = seen.last().unwrap();
    assert!(
        created.contains("\"event\":\"user.created\"")
            && created.contains(&format!("\"id\":{dave}")),
        "the event names what happened and to whom: {seen:?}"
    );
    let token = b.token("dave", "password-of-dave");
    assert_eq!(
        as_user(&b, &token, "GET", "/admin/v1/sys/plugins", None).status,
        200
    );
    a.request("DELETE", &format!("{USERS}/{dave}"), None).data();
    assert!(
        eventually(Duration::from_secs(3), || {
            as_user(&b, &token, "GET", "/admin/v1/sys/plugins", None).status == 401
        }),
        "B still takes the deleted user's token"
    );
    let seen = until(&feed, "\"event\":\"user.deleted\"", Duration::from_secs(5));
    assert!(
        seen.last().unwrap().contains("\"username\":\"dave\""),
        "{seen:?}"
    );

    // A user the CLI creates is announced too.
    let cli_env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    let (ok, out) = e2e::cli(
        &data_a,
        &cli_env,
        &["user", "add", "erin", "--password", "password-of-erin"],
    );
    assert!(ok, "{out}");
    let seen = until(&feed, "\"username\":\"erin\"", Duration::from_secs(5));
    assert!(
        seen.last().unwrap().contains("\"event\":\"user.created\""),
        "{seen:?}"
    );
}

#[test]
fn changes_reach_every_instance_through_redis_on_postgresql() {
    let redis = TestRedis::start();
    changes_reach_every_instance(Backend::Postgresql, Some(&redis.url()));
}

#[test]
fn changes_reach_every_instance_through_the_database_on_mariadb() {
    changes_reach_every_instance(Backend::Mysql, None);
}

/// The permissions there are to grant: the host's own and each plugin's
/// (its routes' and its manifest's); a plugin installed later has its
/// permissions granted to the roles `PLUGHOST_GRANT_<PLUGIN>` names.
#[test]
fn the_permissions_to_grant_are_listed_and_granted_at_install() {
    let (_data, host) = e2e::serve_with(
        &["dict"],
        &[("PLUGHOST_GRANT_NOTICE", "editor, nosuchrole")],
    );
    let known = host.get("/admin/v1/sys/permissions").data().clone();
    assert!(
        e2e::strings(&known["core"], "").contains(&"sys:user:add".to_owned()),
        "{known}"
    );
    assert_eq!(
        known["plugins"]["dict"],
        json!(["sys:dict:add", "sys:dict:del", "sys:dict:edit"])
    );
    add_role(&host, "editor", &["sys:dict:add"]);
    let installed = host.upload(&e2e::package("notice", "notice", "notice"), "type=zip");
    assert_eq!(installed.status, 200, "{:?}", installed.json);
    let editor = host.get(ROLES).data()[0].clone();
    assert_eq!(editor["name"], "editor");
    assert_eq!(
        editor["permissions"],
        json!([
            "sys:dict:add",
            "sys:notice:add",
            "sys:notice:del",
            "sys:notice:edit"
        ])
    );
    assert!(
        host.log()
            .contains("PLUGHOST_GRANT_NOTICE: not granted: role 'nosuchrole' does not exist"),
        "{}",
        host.log()
    );
}
