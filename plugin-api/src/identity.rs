//! Plugins in the identity and access path (contract 1.5): the identity
//! service (find users, find or create the user of an external identity,
//! issue tokens, read a user's access), and the two hooks a plugin may
//! give the host's admin guard: an authenticator (credentials the guard
//! does not know, such as API keys) and an authorizer (a policy asked
//! after RBAC).

use std::{future::Future, panic, pin::Pin};

use abi_stable::std_types::{ROption, RResult, RStr, RString};
use async_ffi::{FfiFuture, FutureExt as _};
use futures_util::FutureExt as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, Host};

/// A user, as the identity service answers it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// Display name.
    pub nickname: Option<String>,
    /// Mail address.
    pub email: Option<String>,
    /// Passes every permission check.
    pub superuser: bool,
    /// 1 active, 0 disabled.
    pub status: i16,
    /// Role names.
    pub roles: Vec<String>,
}

/// An identity from elsewhere (an OAuth or OpenID Connect provider, a
/// directory): the provider's name and its subject, the stable id of the
/// account there, with what the provider says of it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExternalIdentity {
    /// The provider (`github`, `google`, `oidc`, …).
    pub provider: String,
    /// The account's id at the provider (OpenID Connect's `sub`).
    pub subject: String,
    /// The login name wanted for a new user (made unique by the host).
    pub username: Option<String>,
    /// Display name.
    pub nickname: Option<String>,
    /// Mail address.
    pub email: Option<String>,
}

/// An access token issued by the host, as a login issues them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Token {
    /// The JWT, for `Authorization: Bearer`.
    pub access_token: String,
    /// Its expiry, Unix seconds.
    pub expires_at: i64,
}

/// What a user may do.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UserAccess {
    /// Passes every permission check.
    pub superuser: bool,
    /// Role names.
    pub roles: Vec<String>,
    /// Permission strings from its roles.
    pub permissions: Vec<String>,
}

#[derive(Deserialize)]
struct WireError {
    status: u16,
    message: String,
}

impl Host {
    async fn identity<T: DeserializeOwned>(
        &self,
        op: &str,
        request: serde_json::Value,
    ) -> Result<T, Error> {
        let Some(call) = self.services().identity() else {
            return Err(Error::internal(
                "this host has no identity service: it needs a host built with plugin-api 1.5 or later",
            ));
        };
        match call(
            RStr::from(self.plugin()),
            RStr::from(op),
            RString::from(request.to_string()),
        )
        .await
        {
            RResult::ROk(answer) => serde_json::from_str(&answer).map_err(|e| {
                Error::internal(format!("the identity service's answer to {op}: {e}"))
            }),
            RResult::RErr(e) => Err(match serde_json::from_str::<WireError>(&e) {
                Ok(wire) => Error::new(wire.status, wire.message),
                Err(_) => Error::internal(e.into_string()),
            }),
        }
    }

    /// The user with id `id`, if any (`users:read`).
    pub async fn user(&self, id: i64) -> Result<Option<User>, Error> {
        self.identity("user.get", serde_json::json!({ "id": id }))
            .await
    }

    /// The user named `username`, if any (`users:read`).
    pub async fn user_named(&self, username: &str) -> Result<Option<User>, Error> {
        self.identity("user.get", serde_json::json!({ "username": username }))
            .await
    }

    /// The user bound to an external identity: found by its provider and
    /// subject, or created and bound at the identity's first use, with the
    /// roles the operator gives this plugin's users
    /// (`PLUGHOST_IDENTITY_ROLES_<PLUGIN>`) and a password nobody knows
    /// (`users:create`). A disabled user is answered as is: check
    /// [`User::status`] before issuing it a token.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), plugin_api::Error> {
    /// use plugin_api::{ExternalIdentity, host};
    /// let user = host()
    ///     .external_user(&ExternalIdentity {
    ///         provider: "github".into(),
    ///         subject: "583231".into(),
    ///         username: Some("octocat".into()),
    ///         ..ExternalIdentity::default()
    ///     })
    ///     .await?;
    /// let token = host().issue_token(user.id).await?;
    /// # Ok(()) }
    /// ```
    pub async fn external_user(&self, identity: &ExternalIdentity) -> Result<User, Error> {
        let request = serde_json::to_value(identity).map_err(|e| Error::internal(e.to_string()))?;
        self.identity("user.external", request).await
    }

    /// Binds an external identity (`provider`, `subject`) to the existing
    /// user `user_id`, so that [`external_user`](Self::external_user) finds
    /// that user from then on (`users:create`): linking an account at a
    /// provider to a user who is logged in. Binding it again to the same
    /// user changes nothing; an identity bound to another user is a 409.
    pub async fn bind_external(
        &self,
        user_id: i64,
        provider: &str,
        subject: &str,
    ) -> Result<User, Error> {
        self.identity(
            "user.bind",
            serde_json::json!({ "user_id": user_id, "provider": provider, "subject": subject }),
        )
        .await
    }

    /// Unbinds an external identity this plugin bound (`users:create`):
    /// its next use through [`external_user`](Self::external_user) makes a
    /// new user. Whether it was bound.
    pub async fn unbind_external(&self, provider: &str, subject: &str) -> Result<bool, Error> {
        #[derive(Deserialize)]
        struct Unbound {
            removed: bool,
        }
        let unbound: Unbound = self
            .identity(
                "user.unbind",
                serde_json::json!({ "provider": provider, "subject": subject }),
            )
            .await?;
        Ok(unbound.removed)
    }

    /// An access token for user `user_id`, the same a login issues: it
    /// expires, logout revokes it, and a password change or disabling the
    /// user refuses it (`tokens:issue`). A disabled user gets none.
    pub async fn issue_token(&self, user_id: i64) -> Result<Token, Error> {
        self.identity("token.issue", serde_json::json!({ "user_id": user_id }))
            .await
    }

    /// What user `user_id` may do: its roles and permissions (`users:read`).
    pub async fn user_access(&self, user_id: i64) -> Result<UserAccess, Error> {
        self.identity("user.access", serde_json::json!({ "user_id": user_id }))
            .await
    }
}

impl Host {
    /// Deletes, from now on, the rows of `table` whose `column` holds the
    /// id of a user who is deleted: a task of the plugin's, fed by
    /// `sys.user.deleted` (declare it: `[permissions] events =
    /// ["sys.user.deleted"]`). For a table that keeps something per user
    /// (keys, bindings); call it from the start hook. A delete that fails
    /// is logged as a warning.
    pub fn forget_deleted_users(
        &self,
        table: &'static str,
        column: &'static str,
    ) -> Result<(), crate::TaskError> {
        let mut deleted = self.subscribe("sys.user.deleted")?;
        let host = *self;
        self.spawn(&format!("forget-deleted-users:{table}"), async move {
            let sql = format!("DELETE FROM {table} WHERE {column} = ?");
            while let Some(user) = deleted.next_json::<serde_json::Value>().await {
                if let Err(e) = host.execute(&sql, &[user["id"].clone()]).await {
                    host.warn(&format!(
                        "the {table} rows of deleted user {} remain: {e}",
                        user["id"]
                    ));
                }
            }
        })
    }
}

/// An admin request an authorizer decides on (the wire form of
/// [`PluginMod::authorize`](crate::abi::PluginMod::authorize)'s request).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct AdminCall {
    /// The caller's id.
    pub user_id: i64,
    /// The caller's login name.
    pub username: String,
    /// Whether the caller is a superuser.
    pub superuser: bool,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// The caller's permissions.
    pub permissions: Vec<String>,
    /// The request's method (`GET`, …).
    pub method: String,
    /// The route's template (`/admin/v1/sys/users/{pk}`).
    pub route: String,
    /// The request's path (`/admin/v1/sys/users/7`).
    pub path: String,
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The call may go on (to the route's own permission check).
    Allow,
    /// The call is refused with 403, for this reason.
    Deny(String),
}

/// The future of an authenticator, as the macro wraps it.
pub type AuthenticateFuture = Pin<Box<dyn Future<Output = Result<Option<i64>, String>> + Send>>;
/// A plugin's authenticator, as the macro wraps it.
pub type AuthenticateHook = fn(String) -> AuthenticateFuture;
/// The future of an authorizer, as the macro wraps it.
pub type AuthorizeFuture = Pin<Box<dyn Future<Output = Decision> + Send>>;
/// A plugin's authorizer, as the macro wraps it.
pub type AuthorizeHook = fn(AdminCall) -> AuthorizeFuture;

/// [`PluginMod::authenticate`](crate::abi::PluginMod::authenticate).
pub(crate) extern "C" fn authenticate_fn<S: crate::__private::StateAccess>(
    authorization: RString,
) -> FfiFuture<RResult<ROption<i64>, RString>> {
    let hook = S::state().authenticate;
    async move {
        let Some(hook) = hook else {
            return RResult::ROk(ROption::RNone);
        };
        let future = match panic::catch_unwind(|| hook(authorization.into_string())) {
            Ok(future) => future,
            Err(_) => return RResult::RErr(RString::from("the authenticator panicked")),
        };
        match panic::AssertUnwindSafe(future).catch_unwind().await {
            Ok(Ok(user)) => RResult::ROk(user.into()),
            Ok(Err(message)) => RResult::RErr(RString::from(message)),
            Err(_) => RResult::RErr(RString::from("the authenticator panicked")),
        }
    }
    .into_ffi()
}

/// [`PluginMod::authorize`](crate::abi::PluginMod::authorize).
pub(crate) extern "C" fn authorize_fn<S: crate::__private::StateAccess>(
    request: RString,
) -> FfiFuture<RResult<ROption<RString>, RString>> {
    let hook = S::state().authorize;
    async move {
        let Some(hook) = hook else {
            return RResult::ROk(ROption::RNone);
        };
        let call: AdminCall = match serde_json::from_str(&request) {
            Ok(call) => call,
            Err(e) => {
                return RResult::RErr(RString::from(format!("the call is not understood: {e}")));
            }
        };
        let future = match panic::catch_unwind(|| hook(call)) {
            Ok(future) => future,
            Err(_) => return RResult::RErr(RString::from("the authorizer panicked")),
        };
        match panic::AssertUnwindSafe(future).catch_unwind().await {
            Ok(Decision::Allow) => RResult::ROk(ROption::RNone),
            Ok(Decision::Deny(reason)) => RResult::ROk(ROption::RSome(RString::from(reason))),
            Err(_) => RResult::RErr(RString::from("the authorizer panicked")),
        }
    }
    .into_ffi()
}

/// Expands to `Some(hook)` (the async fn wrapped for the host) or `None`.
#[macro_export]
#[doc(hidden)]
macro_rules! __access_hook_or_none {
    ($kind:ident) => {
        None
    };
    (authenticate $hook:path) => {
        Some(
            |authorization: ::std::string::String| -> $crate::__private::AuthenticateFuture {
                ::std::boxed::Box::pin($hook(authorization))
            },
        )
    };
    (authorize $hook:path) => {
        Some(
            |call: $crate::AdminCall| -> $crate::__private::AuthorizeFuture {
                ::std::boxed::Box::pin($hook(call))
            },
        )
    };
}
