//! `casbin_rbac`: path policies on every admin route, a port of FBA's
//! casbin_rbac plugin. `POST/GET/DELETE /admin/v1/sys/casbin/policies`
//! (`{sub, path, method, effect}`: a role or a user name, a path pattern, a
//! method or `*`, `allow` or `deny`). Through the host's authorizer hook,
//! after the role permissions, every admin request of a caller who is not
//! a superuser is matched against the policies of its user name and roles:
//! a deny wins over an allow, and a request no policy matches is left to
//! the role permissions unless `RBAC_CASBIN_DEFAULT=deny`. A `*` in a
//! path matches the rest of the path, as casbin's keyMatch does.
//!
//! The policies are held in memory and decided without I/O; a change on
//! any instance reloads them on every instance (event
//! `casbin_rbac.changed`). The matcher is this file's, not the casbin
//! crate's: see docs/decisions.md.

use std::sync::{Arc, RwLock};

use plugin_api::{AdminCall, Decision, Error, Json, Request, Router, host};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The topic a change of the policies is announced on.
const CHANGED: &str = "casbin_rbac.changed";

/// One policy.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Policy {
    sub: String,
    path: String,
    method: String,
    effect: String,
}

/// The policies every decision reads, replaced whole on a change.
static POLICIES: RwLock<Option<Arc<Vec<Policy>>>> = RwLock::new(None);

/// The plugin's settings, read once at start.
struct Settings {
    default_deny: bool,
    exclude: String,
}

static SETTINGS: std::sync::OnceLock<Settings> = std::sync::OnceLock::new();

/// Whether `path` matches `pattern` as casbin's keyMatch decides: equal,
/// or, when the pattern has a `*`, beginning with what comes before it.
fn key_match(path: &str, pattern: &str) -> bool {
    match pattern.find('*') {
        Some(star) => path.starts_with(&pattern[..star]),
        None => path == pattern,
    }
}

/// Whether `rule` (`METHOD /path`, a path that may end in `*`) names the call.
fn names(rule: &str, method: &str, path: &str) -> bool {
    let mut parts = rule.split_whitespace();
    match (parts.next(), parts.next(), parts.next()) {
        (Some(m), Some(p), None) => {
            (m == "*" || m.eq_ignore_ascii_case(method)) && key_match(path, p)
        }
        _ => false,
    }
}

/// The decision for `call` under `policies`, `default_deny` for a call no
/// policy matches, `exclude` the calls never checked.
fn decide(call: &AdminCall, policies: &[Policy], default_deny: bool, exclude: &str) -> Decision {
    if call.superuser
        || exclude
            .split(',')
            .any(|rule| names(rule, &call.method, &call.path))
    {
        return Decision::Allow;
    }
    let mut allowed = false;
    for p in policies {
        let subject = p.sub == call.username || call.roles.contains(&p.sub);
        let method = p.method == "*" || p.method.eq_ignore_ascii_case(&call.method);
        if subject && method && key_match(&call.path, &p.path) {
            if p.effect == "deny" {
                return Decision::Deny(format!(
                    "policy ({}, {}, {}) denies {} {}",
                    p.sub, p.path, p.method, call.method, call.path
                ));
            }
            allowed = true;
        }
    }
    if !allowed && default_deny {
        return Decision::Deny(format!(
            "no policy allows {} {} to {} (RBAC_CASBIN_DEFAULT=deny)",
            call.method, call.path, call.username
        ));
    }
    Decision::Allow
}

/// The authorizer: the call decided under the policies in memory.
async fn authorize(call: AdminCall) -> Decision {
    let policies = POLICIES
        .read()
        .ok()
        .and_then(|p| p.clone())
        .unwrap_or_default();
    let settings = SETTINGS.get_or_init(read_settings);
    decide(&call, &policies, settings.default_deny, &settings.exclude)
}

fn read_settings() -> Settings {
    Settings {
        default_deny: host()
            .setting("RBAC_CASBIN_DEFAULT")
            .is_some_and(|d| d.trim().eq_ignore_ascii_case("deny")),
        exclude: host().setting("RBAC_CASBIN_EXCLUDE").unwrap_or_default(),
    }
}

/// Reads the policies from the table into memory.
async fn reload() -> Result<(), Error> {
    let rows: Vec<Policy> = host()
        .query(
            "SELECT sub, path, method, effect FROM sys_casbin_rule ORDER BY id",
            &[],
        )
        .await?;
    if let Ok(mut policies) = POLICIES.write() {
        *policies = Some(Arc::new(rows));
    }
    Ok(())
}

/// Reloads here and tells the other instances to.
async fn changed() {
    if let Err(e) = reload().await {
        host().warn(&format!("the policies were not reloaded: {e}"));
    }
    if let Err(e) = host().publish(CHANGED, &json!({})).await {
        host().warn(&format!(
            "the other instances learn of the change late: {e}"
        ));
    }
}

fn checked(input: Policy) -> Result<Policy, Error> {
    let bad = |field: &str, what: &str| Error::new(422, format!("{field}: {what}"));
    // A blank: a space or a control character (as the schema's patterns say).
    let blank = |c: char| c <= ' ' || c.is_control();
    if input.sub.is_empty() || input.sub.chars().count() > 64 || input.sub.chars().any(blank) {
        return Err(bad(
            "sub",
            "a role or user name, 1 to 64 characters without blanks",
        ));
    }
    if !input.path.starts_with('/')
        || input.path.chars().count() > 255
        || input.path.chars().any(blank)
    {
        return Err(bad(
            "path",
            "a path pattern beginning with '/', at most 255 characters, without blanks",
        ));
    }
    if !matches!(
        input.method.as_str(),
        "*" | "GET" | "POST" | "PUT" | "PATCH" | "DELETE"
    ) {
        return Err(bad(
            "method",
            "GET, POST, PUT, PATCH, DELETE or * (upper case)",
        ));
    }
    if !matches!(input.effect.as_str(), "allow" | "deny") {
        return Err(bad("effect", "allow or deny"));
    }
    Ok(input)
}

/// `POST /policies`: adds a policy (once).
async fn create(req: Request<'_>) -> Result<Json<Value>, Error> {
    let policy = checked(req.json()?)?;
    let exists: Vec<Value> = host()
        .query(
            "SELECT id FROM sys_casbin_rule WHERE sub = ? AND path = ? AND method = ? AND effect = ?",
            &[json!(policy.sub), json!(policy.path), json!(policy.method), json!(policy.effect)],
        )
        .await?;
    if !exists.is_empty() {
        return Err(Error::new(409, "this policy exists already"));
    }
    let id = host()
        .insert(
            "sys_casbin_rule",
            &[
                ("sub", json!(policy.sub)),
                ("path", json!(policy.path)),
                ("method", json!(policy.method)),
                ("effect", json!(policy.effect)),
            ],
        )
        .await?;
    changed().await;
    let mut answer = json!(policy);
    answer["id"] = json!(id);
    Ok(Json(answer))
}

/// `GET /policies`: every policy.
async fn list(_req: Request<'_>) -> Result<Json<Value>, Error> {
    let rows: Vec<Value> = host()
        .query(
            "SELECT id, sub, path, method, effect FROM sys_casbin_rule ORDER BY id",
            &[],
        )
        .await?;
    Ok(Json(Value::from(rows)))
}

/// `DELETE /policies` with the policy: removes it.
async fn delete(req: Request<'_>) -> Result<Json<Value>, Error> {
    let policy = checked(req.json()?)?;
    let done = host()
        .execute(
            "DELETE FROM sys_casbin_rule WHERE sub = ? AND path = ? AND method = ? AND effect = ?",
            &[
                json!(policy.sub),
                json!(policy.path),
                json!(policy.method),
                json!(policy.effect),
            ],
        )
        .await?;
    if done.rows_affected == 0 {
        return Err(Error::new(404, "no such policy"));
    }
    changed().await;
    Ok(Json(json!({ "deleted": done.rows_affected })))
}

/// Loads the policies, and reloads them when any instance changes them.
async fn start() -> Result<(), String> {
    SETTINGS.get_or_init(read_settings);
    reload().await.map_err(|e| e.to_string())?;
    let mut changes = host().subscribe(CHANGED).map_err(|e| e.to_string())?;
    host()
        .spawn("reload", async move {
            while changes.next().await.is_some() {
                if let Err(e) = reload().await {
                    host().warn(&format!("the policies were not reloaded: {e}"));
                }
            }
        })
        .map_err(|e| e.to_string())
}

fn routers() -> Vec<Router> {
    let policy = json!({
        "type": "object",
        "required": ["sub", "path", "method", "effect"],
        "additionalProperties": false,
        "properties": {
            "sub": { "type": "string", "pattern": "^[^\\x00-\\x20\\x7f-\\x9f]{1,64}$" },
            "path": { "type": "string", "pattern": "^/[^\\x00-\\x20\\x7f-\\x9f]{0,254}$" },
            "method": { "type": "string", "enum": ["*", "GET", "POST", "PUT", "PATCH", "DELETE"] },
            "effect": { "type": "string", "enum": ["allow", "deny"] },
        },
    });
    vec![
        Router::new("casbin")
            .get("/policies", list)
            .summary("List the policies")
            .post("/policies", create)
            .summary("Add a policy")
            .permission("sys:casbin:add")
            .request_schema(policy.clone())
            .delete("/policies", delete)
            .summary("Remove a policy")
            .permission("sys:casbin:del")
            .request_schema(policy),
    ]
}

plugin_api::export_plugin! {
    name: "casbin_rbac",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    routers: routers,
    start: start,
    authorize: authorize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(username: &str, roles: &[&str], method: &str, path: &str) -> AdminCall {
        AdminCall {
            user_id: 2,
            username: username.into(),
            superuser: false,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            permissions: vec![],
            method: method.into(),
            route: path.into(),
            path: path.into(),
        }
    }

    fn policy(sub: &str, path: &str, method: &str, effect: &str) -> Policy {
        Policy {
            sub: sub.into(),
            path: path.into(),
            method: method.into(),
            effect: effect.into(),
        }
    }

    #[test]
    fn key_match_is_casbins() {
        assert!(key_match("/admin/v1/sys/users", "/admin/v1/sys/users"));
        assert!(key_match(
            "/admin/v1/sys/users/7/roles",
            "/admin/v1/sys/users/*"
        ));
        assert!(key_match("/admin/v1/sys/users/", "/admin/v1/sys/users/*"));
        assert!(!key_match("/admin/v1/sys/users", "/admin/v1/sys/users/*"));
        assert!(!key_match("/admin/v1/sys/roles", "/admin/v1/sys/users"));
    }

    #[test]
    fn a_deny_wins_and_nothing_matched_is_left_to_rbac_unless_denied_by_default() {
        let policies = vec![
            policy("editor", "/admin/v1/sys/dict-*", "*", "allow"),
            policy("bob", "/admin/v1/sys/dict-types", "DELETE", "deny"),
        ];
        let bob = |m, p| decide(&call("bob", &["editor"], m, p), &policies, false, "");
        assert_eq!(bob("GET", "/admin/v1/sys/dict-types"), Decision::Allow);
        assert!(
            matches!(bob("DELETE", "/admin/v1/sys/dict-types"), Decision::Deny(r) if r.contains("denies DELETE"))
        );
        assert_eq!(bob("GET", "/admin/v1/sys/users"), Decision::Allow);
        let strict = decide(
            &call("bob", &["editor"], "GET", "/admin/v1/sys/users"),
            &policies,
            true,
            "",
        );
        assert!(matches!(strict, Decision::Deny(r) if r.contains("no policy allows")));
        let excluded = decide(
            &call("bob", &[], "POST", "/admin/v1/auth/logout"),
            &policies,
            true,
            "POST /admin/v1/auth/logout, GET /admin/v1/sys/plugins*",
        );
        assert_eq!(excluded, Decision::Allow);
        let mut root = call("root", &[], "DELETE", "/admin/v1/sys/dict-types");
        root.superuser = true;
        assert_eq!(decide(&root, &policies, true, ""), Decision::Allow);
    }
}
