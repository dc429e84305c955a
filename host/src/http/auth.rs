//! `/admin/v1/auth`: login and logout, and the admin scope's guard.

use std::sync::Arc;

use actix_web::{
    Error, HttpMessage, HttpRequest, HttpResponse,
    body::{EitherBody, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    http::{StatusCode, header::AUTHORIZATION},
    middleware::Next,
    web,
};
use serde::Deserialize;

use super::{
    AppState,
    envelope::{ApiError, ok},
    openapi::{Envelope, ErrorEnvelope, Null},
};
use crate::auth::{AuthError, Principal};

/// The login path, the one admin route that needs no token.
pub const LOGIN_PATH: &str = "/admin/v1/auth/login";

/// What the guard leaves in the request for handlers.
#[derive(Clone)]
pub struct Caller {
    /// Who is calling.
    pub principal: Arc<Principal>,
    /// The token's id and expiry (for logout).
    pub token: (String, i64),
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let error = ApiError::new(status, e.to_string());
        match e.retry_after() {
            Some(seconds) => error.retry_after(seconds),
            None => error,
        }
    }
}

/// The `Authorization` header as text, if any.
pub fn authorization(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
}

/// The caller the guard authenticated (every admin route but login has one).
pub fn caller(req: &HttpRequest) -> Result<Caller, ApiError> {
    req.extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| AuthError::Missing.into())
}

/// Guards the admin scope: every route but login needs a valid token.
pub async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    if req.path() == LOGIN_PATH {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
        .clone();
    let header = authorization(req.request());
    let found = match state.auth.authenticate(header).await {
        Ok((principal, jti, exp)) => Ok(Caller {
            principal,
            token: (jti, exp),
        }),
        // Not a token of this host's: a plugin's credential, perhaps.
        Err(e @ (AuthError::Invalid(_) | AuthError::Malformed)) => match header {
            Some(header) => by_plugins(&state, header).await.and_then(|c| c.ok_or(e)),
            None => Err(e),
        },
        Err(e) => Err(e),
    };
    match found {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        Err(e) => {
            let response = actix_web::ResponseError::error_response(&ApiError::from(e));
            Ok(req.into_response(response).map_into_right_body())
        }
    }
}

/// What the caller's token id says of a credential a plugin vouched for.
const VOUCHED: &str = "plugin:";

/// The caller whose credential `header` an enabled plugin's authenticator
/// vouches for: the answer kept like a token's principal (for the flag
/// bound, cleared by the same invalidations), keyed by the plugin and a
/// digest of the credential; `None` when no plugin knows it.
async fn by_plugins(state: &AppState, header: &str) -> Result<Option<Caller>, AuthError> {
    use sha2::Digest as _;
    let digest = hex::encode(sha2::Sha256::digest(header.as_bytes()));
    let authenticators = state.plugins.authenticators();
    if authenticators.is_empty() {
        return Ok(None);
    }
    let key = |plugin: &str| format!("{VOUCHED}{plugin}:{digest}");
    for plugin in &authenticators {
        if let Some(principal) = state.auth.vouched(&key(plugin)) {
            return Ok(Some(Caller {
                principal,
                token: (key(plugin), 0),
            }));
        }
    }
    let generation = state.auth.generation();
    match state.plugins.authenticate_by_plugins(header).await {
        Ok(Some((plugin, user))) => {
            let principal = state.auth.vouch(&key(&plugin), user, generation).await?;
            Ok(Some(Caller {
                principal,
                token: (key(&plugin), 0),
            }))
        }
        Ok(None) => Ok(None),
        Err(refused) => Err(AuthError::RefusedByPlugin {
            plugin: refused.plugin,
            message: refused.reason,
        }),
    }
}

/// Asks the enabled plugins' authorizers whether the caller may call the
/// core admin route this wraps (its template is the resource's name);
/// the login route has no caller and passes.
pub async fn policy(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered")
        .clone();
    let caller = req.extensions().get::<Caller>().cloned();
    if let Some(caller) = caller.filter(|_| state.plugins.has_authorizers()) {
        let route = req.match_name().unwrap_or_default().to_owned();
        let decided = state
            .plugins
            .authorize_by_plugins(&caller.principal, req.method().as_str(), &route, req.path())
            .await;
        if let Err(refused) = decided {
            let e = AuthError::PolicyDenied {
                plugin: refused.plugin,
                reason: refused.reason,
            };
            let response = actix_web::ResponseError::error_response(&ApiError::from(e));
            return Ok(req.into_response(response).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// A login: the user's name and password.
#[derive(Deserialize, utoipa::ToSchema)]
pub(crate) struct Login {
    /// The user's name.
    username: String,
    /// The password.
    password: String,
}

/// `POST /admin/v1/auth/login`: `{"username", "password"}` to a token.
#[utoipa::path(
    post,
    path = "/admin/v1/auth/login",
    summary = "Log in: a token for a user name and password",
    tag = "auth",
    request_body = Login,
    responses(
        (status = 200, description = "A token for the `Authorization: Bearer` header", body = Envelope<crate::auth::Issued>),
        (status = "default", description = "Wrong name or password (401), too many failures (429), too many logins at once (503, with Retry-After)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn login(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<Login>,
) -> Result<HttpResponse, ApiError> {
    let address = req.peer_addr().map(|a| a.ip());
    let issued = state
        .auth
        .login(&body.username, &body.password, address)
        .await?;
    Ok(ok(issued))
}

/// `POST /admin/v1/auth/logout`: revokes the caller's token.
#[utoipa::path(
    post,
    path = "/admin/v1/auth/logout",
    summary = "Log out: revoke this token",
    tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token is revoked on every instance", body = Envelope<Null>),
        (status = "default", description = "No valid token (401)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn logout(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req)?;
    let (jti, exp) = caller.token;
    if let Some(plugin) = jti.strip_prefix(VOUCHED) {
        let plugin = plugin.split(':').next().unwrap_or_default();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "this credential is plugin '{plugin}''s, not a token: revoke it where it was made"
            ),
        ));
    }
    state.auth.logout(jti, exp).await?;
    Ok(ok(serde_json::Value::Null))
}
