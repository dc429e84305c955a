//! The identity service (contract 1.5): users found by id or name, the
//! user of an external identity found or created, tokens issued, a user's
//! access read — each only for a plugin whose manifest declares it
//! (`[permissions] identity`).
//!
//! *Invariant:* a plugin reaches no user, and issues no token, beyond what
//! its manifest declares; the roles of the users it creates are the
//! operator's (`PLUGHOST_IDENTITY_ROLES_<PLUGIN>`), never the plugin's.

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock, RwLock},
};

use abi_stable::std_types::{RResult, RStr, RString};
use async_ffi::FfiFuture;
use futures_util::FutureExt as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::waker::IntoPluginFuture as _;
use crate::auth::{AuthError, AuthService, External};

static AUTH: OnceLock<Arc<AuthService>> = OnceLock::new();
/// What each loaded plugin declared it uses.
static DECLARED: RwLock<Option<HashMap<String, Vec<String>>>> = RwLock::new(None);

/// The service plugins call answers from `auth`.
pub fn set_auth(auth: Arc<AuthService>) {
    let _ = AUTH.set(auth);
}

/// Records what each loaded plugin declared (`[permissions] identity`).
pub fn publish_declared(declared: HashMap<String, Vec<String>>) {
    *DECLARED.write().expect("declared lock") = Some(declared);
}

/// The variable an operator sets to grant `plugin`'s permissions to
/// roles when it is installed.
pub fn grant_variable(plugin: &str) -> String {
    format!("PLUGHOST_GRANT_{}", plugin.to_ascii_uppercase())
}

/// Grants `permissions` (a plugin's, just installed) to the roles the
/// operator names in `PLUGHOST_GRANT_<PLUGIN>`; a role that does not exist
/// is logged and skipped.
pub async fn grant_on_install(plugin: &str, permissions: &[String]) {
    let variable = grant_variable(plugin);
    let (Some(auth), Ok(roles)) = (AUTH.get(), std::env::var(&variable)) else {
        return;
    };
    if permissions.is_empty() {
        return;
    }
    for role in roles.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        match auth.grant(role, permissions).await {
            Ok(()) => tracing::info!(
                plugin,
                role,
                "{variable}: granted {}",
                permissions.join(", ")
            ),
            Err(e) => tracing::warn!(plugin, role, "{variable}: not granted: {e}"),
        }
    }
}

/// The variable an operator sets to give `plugin`'s new users roles.
pub fn roles_variable(plugin: &str) -> String {
    format!("PLUGHOST_IDENTITY_ROLES_{}", plugin.to_ascii_uppercase())
}

/// The roles `plugin`'s new users get: the operator's list, else none.
fn roles_for(plugin: &str) -> Vec<String> {
    std::env::var(roles_variable(plugin))
        .map(|text| {
            text.split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn wire_error(status: u16, message: impl Into<String>) -> String {
    json!({ "status": status, "message": message.into() }).to_string()
}

fn from_auth(e: &AuthError) -> String {
    wire_error(e.status(), e.to_string())
}

/// What `op` needs, or why it is not an op.
fn grant_of(op: &str) -> Result<&'static str, String> {
    match op {
        "user.get" | "user.access" => Ok("users:read"),
        "user.external" | "user.bind" | "user.unbind" => Ok("users:create"),
        "token.issue" => Ok("tokens:issue"),
        other => Err(wire_error(
            400,
            format!(
                "'{other}' is not an identity operation (user.get, user.external, user.bind, user.unbind, token.issue, user.access)"
            ),
        )),
    }
}

/// Refused unless `plugin` declared `grant`.
fn check(plugin: &str, grant: &str) -> Result<(), String> {
    let declared = DECLARED
        .read()
        .expect("declared lock")
        .as_ref()
        .is_some_and(|d| d.get(plugin).is_some_and(|g| g.iter().any(|x| x == grant)));
    if declared {
        Ok(())
    } else {
        tracing::warn!(plugin, grant, "identity service refused: not declared");
        Err(wire_error(
            403,
            format!(
                "plugin '{plugin}' may not use the identity service for {grant}: declare it in plugin.toml [permissions] identity"
            ),
        ))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Find {
    id: Option<i64>,
    username: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForUser {
    user_id: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Binding {
    user_id: Option<i64>,
    provider: String,
    subject: String,
}

fn parse<'a, T: Deserialize<'a>>(op: &str, request: &'a str) -> Result<T, String> {
    serde_json::from_str(request)
        .map_err(|e| wire_error(400, format!("the request of {op} is not understood: {e}")))
}

async fn call(plugin: String, op: String, request: String) -> Result<String, String> {
    check(&plugin, grant_of(&op)?)?;
    let auth = AUTH
        .get()
        .ok_or_else(|| wire_error(503, "the identity service is not ready"))?;
    let answer: Value = match op.as_str() {
        "user.get" => {
            let find: Find = parse(&op, &request)?;
            let id = match (find.id, find.username) {
                (Some(id), None) => Some(id),
                (None, Some(name)) => match auth.user_id(&name).await {
                    Ok(id) => Some(id),
                    Err(AuthError::Unknown(_)) => None,
                    Err(e) => return Err(from_auth(&e)),
                },
                _ => return Err(wire_error(400, "user.get takes {\"id\"} or {\"username\"}")),
            };
            match id {
                None => Value::Null,
                Some(id) => match auth.user(id).await {
                    Ok(user) => json!(user),
                    Err(AuthError::Unknown(_)) => Value::Null,
                    Err(e) => return Err(from_auth(&e)),
                },
            }
        }
        "user.external" => {
            let external: External = parse(&op, &request)?;
            let user = auth
                .external_user(&plugin, external, &roles_for(&plugin))
                .await
                .map_err(|e| match e {
                    AuthError::Unknown(message) => wire_error(
                        500,
                        format!("{message} (named in {})", roles_variable(&plugin)),
                    ),
                    other => from_auth(&other),
                })?;
            json!(user)
        }
        "user.bind" => {
            let Binding {
                user_id,
                provider,
                subject,
            } = parse(&op, &request)?;
            let user_id = user_id.ok_or_else(|| {
                wire_error(
                    400,
                    "user.bind takes {\"user_id\", \"provider\", \"subject\"}",
                )
            })?;
            let user = auth
                .bind_external(&plugin, user_id, &provider, &subject)
                .await
                .map_err(|e| match e {
                    AuthError::Unknown(_) | AuthError::UserGone => {
                        wire_error(404, format!("user {user_id} does not exist"))
                    }
                    other => from_auth(&other),
                })?;
            json!(user)
        }
        "user.unbind" => {
            let Binding {
                user_id: None,
                provider,
                subject,
            } = parse(&op, &request)?
            else {
                return Err(wire_error(
                    400,
                    "user.unbind takes {\"provider\", \"subject\"}",
                ));
            };
            let removed = auth
                .unbind_external(&plugin, &provider, &subject)
                .await
                .map_err(|e| from_auth(&e))?;
            json!({ "removed": removed })
        }
        "token.issue" => {
            let ForUser { user_id } = parse(&op, &request)?;
            let issued = auth.issue_for(user_id).await.map_err(|e| match e {
                AuthError::UserGone => wire_error(
                    404,
                    format!("user {user_id} does not exist or is disabled: no token is issued"),
                ),
                other => from_auth(&other),
            })?;
            tracing::info!(plugin, user_id, "token issued through the identity service");
            json!({ "access_token": issued.access_token, "expires_at": issued.expires_at })
        }
        "user.access" => {
            let ForUser { user_id } = parse(&op, &request)?;
            let principal = auth.principal(user_id).await.map_err(|e| match e {
                AuthError::UserGone => {
                    wire_error(404, format!("user {user_id} does not exist or is disabled"))
                }
                other => from_auth(&other),
            })?;
            json!({
                "superuser": principal.superuser,
                "roles": principal.roles,
                "permissions": principal.permissions,
            })
        }
        _ => unreachable!("grant_of knows every op"),
    };
    Ok(answer.to_string())
}

/// [`HostServices::identity`](plugin_api::abi::HostServices::identity).
pub(super) extern "C" fn identity(
    plugin: RStr<'_>,
    op: RStr<'_>,
    request: RString,
) -> FfiFuture<RResult<RString, RString>> {
    call(
        plugin.as_str().to_owned(),
        op.as_str().to_owned(),
        request.into_string(),
    )
    .map(|r| r.map(RString::from).map_err(RString::from).into())
    .into_plugin_ffi()
}
