//! Authentication and RBAC: users with argon2 password hashes, JWT access
//! tokens (revocable), roles carrying permission strings.

mod cache;
mod manage;
mod secret;
mod throttle;

use std::{sync::Arc, time::Duration};

use argon2::{
    Argon2, PasswordHash, PasswordHasher,
    password_hash::{SaltString, rand_core::OsRng},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use sea_orm::{ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, QueryFilter, Set};
use serde::{Deserialize, Serialize};

use crate::{
    db::{
        Db,
        entity::{role, token_revocation, user},
        placeholders,
    },
    redis::Redis,
};
use cache::PrincipalCache;
pub use manage::{Actor, External, NewUser, RoleInfo, UserChange, UserFilter, UserInfo, UserPage};
pub use secret::{SecretError, load_or_create_secret, random_password};
use throttle::{HashGate, LoginThrottle};
pub use throttle::{LoginLimits, Throttled};

/// The authenticated caller of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Principal {
    /// The user's id.
    pub user_id: i64,
    /// The user's login name.
    pub username: String,
    /// Passes every permission check.
    pub superuser: bool,
    /// Permission strings from the user's roles.
    pub permissions: Vec<String>,
    /// The user's roles.
    pub roles: Vec<String>,
}

impl Principal {
    /// Whether the caller holds `permission`.
    pub fn has(&self, permission: &str) -> bool {
        self.superuser || self.permissions.iter().any(|p| p == permission)
    }

    /// `Ok` when the caller holds `permission`, the 403 error otherwise.
    pub fn require(&self, permission: &str) -> Result<(), AuthError> {
        if self.has(permission) {
            Ok(())
        } else {
            Err(AuthError::Forbidden(permission.to_owned()))
        }
    }
}

/// Why a caller or a management request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error(
        "authentication required: send `Authorization: Bearer <token>` with a token from POST /admin/v1/auth/login"
    )]
    Missing,
    /// The header is not `Bearer <token>`.
    #[error("malformed Authorization header: expected `Bearer <token>`")]
    Malformed,
    /// Not a token this host signed.
    #[error("invalid token ({0}); log in again")]
    Invalid(String),
    /// Past its expiry.
    #[error("token expired; log in again")]
    Expired,
    /// Logged out.
    #[error("token was revoked by logout; log in again")]
    Revoked,
    /// The token's user was deleted or disabled.
    #[error("the token's user no longer exists or is disabled")]
    UserGone,
    /// Issued before the user's password changed or the user was disabled.
    #[error(
        "token was issued before the user's password changed or the user was disabled; log in again"
    )]
    Superseded,
    /// Too many failed logins for the name or from the address.
    #[error("{}", throttled_message(*.0))]
    Throttled(Throttled),
    /// Too many logins at once.
    #[error("too many logins at once; try again in a second")]
    Busy,
    /// Wrong username or password.
    #[error("wrong username or password")]
    BadCredentials,
    /// A plugin's authenticator refused its credential.
    #[error("plugin '{plugin}' refused the credential: {message}")]
    RefusedByPlugin {
        /// The plugin.
        plugin: String,
        /// Why.
        message: String,
    },
    /// A plugin's authorizer denied the call.
    #[error("denied by plugin '{plugin}': {reason}")]
    PolicyDenied {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: String,
    },
    /// The caller lacks a permission.
    #[error("permission '{0}' is required")]
    Forbidden(String),
    /// The caller may not make this change (the message says why).
    #[error("{0}")]
    Denied(String),
    /// The change would leave things in a state it may not (the message
    /// says which, and who can make it).
    #[error("{0}")]
    Conflict(String),
    /// A name is taken.
    #[error("{0} already exists")]
    Exists(String),
    /// A name is unknown (the message says what to do).
    #[error("{0}")]
    Unknown(String),
    /// A value is not acceptable.
    #[error("{0}")]
    Rejected(String),
    /// The database failed.
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

impl AuthError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing
            | Self::Malformed
            | Self::Invalid(_)
            | Self::Expired
            | Self::Revoked
            | Self::UserGone
            | Self::Superseded
            | Self::BadCredentials
            | Self::RefusedByPlugin { .. } => 401,
            Self::Throttled(_) => 429,
            Self::Busy => 503,
            Self::Forbidden(_) | Self::Denied(_) | Self::PolicyDenied { .. } => 403,
            Self::Exists(_) | Self::Conflict(_) => 409,
            Self::Unknown(_) => 404,
            Self::Rejected(_) => 422,
            Self::Db(_) => 500,
        }
    }

    /// Seconds a client should wait before trying again, for answers that say so.
    pub fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Throttled(t) => Some(t.retry_after()),
            Self::Busy => Some(1),
            _ => None,
        }
    }
}

fn throttled_message(t: Throttled) -> String {
    let (what, seconds) = match t {
        Throttled::User(_) => ("for this user name", t.retry_after()),
        Throttled::Address(_) => ("from this address", t.retry_after()),
    };
    format!("too many failed logins {what}; try again in {seconds} s")
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    name: String,
    jti: String,
    iat: i64,
    exp: i64,
    /// The user's token version at issue (tokens from before it had one: 0).
    #[serde(default)]
    ver: i64,
}

/// A token handed out at login.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Issued {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// Users, roles, tokens.
pub struct AuthService {
    db: Arc<Db>,
    hashes: HashGate,
    throttle: LoginThrottle,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    principals: Arc<PrincipalCache>,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn hash_now(password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Rejected(format!("cannot hash password: {e}")))
}

/// Whether `password` matches the argon2 PHC string `phc`, hashing in
/// `memory` (grown once to the hash's memory cost, then reused).
fn verify_in(memory: &mut Vec<argon2::Block>, password: &str, phc: &str) -> bool {
    let mut check = || -> Option<bool> {
        let parsed = PasswordHash::new(phc).ok()?;
        let algorithm = argon2::Algorithm::try_from(parsed.algorithm).ok()?;
        let version = argon2::Version::try_from(parsed.version.unwrap_or(0x13)).ok()?;
        let params = argon2::Params::try_from(&parsed).ok()?;
        let expected = parsed.hash?;
        let mut salt = [0u8; 64];
        let salt = parsed.salt?.decode_b64(&mut salt).ok()?;
        let blocks = params.block_count();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        let mut out = vec![0u8; expected.len()];
        Argon2::new(algorithm, version, params)
            .hash_password_into_with_memory(
                password.as_bytes(),
                salt,
                &mut out,
                &mut memory[..blocks],
            )
            .ok()?;
        // Output compares in constant time.
        Some(argon2::password_hash::Output::new(&out).ok()? == expected)
    };
    check().unwrap_or(false)
}

/// A hash no password matches, verified for unknown users so that a
/// login takes as long whether the name exists or not.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_now(&random_password()).expect("argon2 hashes a random password"))
}

impl AuthService {
    /// Hashes a password with argon2 (slow on purpose, 19 MiB while it
    /// runs: off the async workers, and never more at once than the gate
    /// allows). Only user management hashes new passwords.
    async fn hash_password(&self, password: String) -> Result<String, AuthError> {
        let _slot = self.hashes.enter().await.ok_or(AuthError::Busy)?;
        tokio::task::spawn_blocking(move || hash_now(&password))
            .await
            .map_err(|e| AuthError::Rejected(format!("password hashing failed: {e}")))?
    }

    /// Whether `password` matches `hash` (`None`: the dummy hash).
    async fn verify_password(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, AuthError> {
        let mut slot = self.hashes.enter().await.ok_or(AuthError::Busy)?;
        let matched = tokio::task::spawn_blocking(move || {
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(|| dummy_hash().to_owned());
            let matched = verify_in(&mut slot.memory, &password, &hash);
            // The slot (and its memory) goes back to the gate here.
            drop(slot);
            known && matched
        })
        .await
        .unwrap_or(false);
        Ok(matched)
    }
}

fn check_name(kind: &str, name: &str) -> Result<(), AuthError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(AuthError::Rejected(format!(
            "{kind} name '{name}' must be 1 to 64 characters of letters, digits, '_', '-' or '.'"
        )))
    }
}

fn check_password(password: &str) -> Result<(), AuthError> {
    let length = password.chars().count();
    if !(8..=1024).contains(&length) {
        return Err(AuthError::Rejected(
            "a password must be 8 to 1024 characters long".into(),
        ));
    }
    Ok(())
}

impl AuthService {
    /// A service signing tokens with `secret`, valid for `ttl`, with
    /// logins limited by `limits`; the principals of tokens in use are
    /// kept for `principal_ttl`, and their invalidations travel through
    /// `redis` (with the flags' key prefix).
    pub fn new(
        db: Arc<Db>,
        secret: &[u8],
        ttl: Duration,
        limits: LoginLimits,
        principal_ttl: Duration,
        redis: Option<(Arc<Redis>, &str)>,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        let throttle = LoginThrottle::new(limits, db.clone(), redis.clone());
        Self {
            db,
            hashes: HashGate::new(limits.concurrent_hashes),
            throttle,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
            principals: Arc::new(PrincipalCache::new(principal_ttl, redis)),
        }
    }

    /// Listens for other instances' invalidations of cached principals
    /// (a server does; a one-shot command only publishes its own).
    pub fn watch(&self) {
        PrincipalCache::watch(&self.principals);
    }

    /// The database the service works on.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Checks a username and password from a client at `address` and
    /// issues a token. Names and addresses with too many recent failures
    /// are refused before any hash is computed; unknown names cost the
    /// same hash as known ones.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        address: Option<std::net::IpAddr>,
    ) -> Result<Issued, AuthError> {
        self.throttle
            .check(username, address)
            .await
            .map_err(AuthError::Throttled)?;
        let found = user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .one(self.db.conn())
            .await?
            .filter(|u| u.status == 1);
        let hash = found.as_ref().map(|u| u.password_hash.clone());
        let matched = self.verify_password(password.to_owned(), hash).await?;
        let Some(found) = found.filter(|_| matched) else {
            self.throttle.failed(username, address).await;
            return Err(AuthError::BadCredentials);
        };
        self.throttle.succeeded(username, address).await;
        self.sign(&found)
    }

    /// A token for `user`, as a login issues it.
    fn sign(&self, user: &user::Model) -> Result<Issued, AuthError> {
        let iat = now();
        let exp = iat + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: user.id.to_string(),
            name: user.username.clone(),
            jti: format!("{:032x}", rand_u128()),
            iat,
            exp,
            ver: user.token_version,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Rejected(format!("cannot sign token: {e}")))?;
        Ok(Issued {
            access_token: token,
            token_type: "Bearer",
            expires_at: exp,
        })
    }

    /// A token for active user `user_id`, as a login issues it (for a
    /// plugin that authenticated the user elsewhere).
    pub async fn issue_for(&self, user_id: i64) -> Result<Issued, AuthError> {
        let found = user::Entity::find_by_id(user_id)
            .one(self.db.conn())
            .await?
            .filter(|u| u.status == 1)
            .ok_or(AuthError::UserGone)?;
        self.sign(&found)
    }

    fn decode(&self, authorization: Option<&str>) -> Result<Claims, AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Malformed)?;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::InvalidSignature => {
                    AuthError::Invalid("signature does not match".into())
                }
                ErrorKind::InvalidToken
                | ErrorKind::Base64(_)
                | ErrorKind::Json(_)
                | ErrorKind::Utf8(_) => AuthError::Invalid("not a JWT".into()),
                ErrorKind::InvalidAlgorithm => AuthError::Invalid("unexpected algorithm".into()),
                other => AuthError::Invalid(format!("{other:?}")),
            })
    }

    /// The caller of a request with this `Authorization` header: the
    /// token's cached principal, or one query that reads the revocation,
    /// the user and their permissions (then cached).
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<(Arc<Principal>, String, i64), AuthError> {
        let claims = self.decode(authorization)?;
        let user_id: i64 = claims
            .sub
            .parse()
            .map_err(|_| AuthError::Invalid("bad subject".into()))?;
        if let Some(cached) = self
            .principals
            .get(&claims.jti)
            .filter(|c| c.principal.user_id == user_id)
        {
            if claims.ver < cached.token_version {
                return Err(AuthError::Superseded);
            }
            return Ok((cached.principal, claims.jti, claims.exp));
        }
        let generation = self.principals.generation();
        let (principal, version) = self
            .load_principal(user_id, Some((&claims.jti, claims.ver)))
            .await?;
        let principal = Arc::new(principal);
        self.principals
            .put(&claims.jti, principal.clone(), version, generation);
        Ok((principal, claims.jti, claims.exp))
    }

    /// Loads a user's principal (roles and their permissions).
    pub async fn principal(&self, user_id: i64) -> Result<Principal, AuthError> {
        Ok(self.load_principal(user_id, None).await?.0)
    }

    /// The principal a plugin's authenticator answered for credential
    /// `key` (a digest of it, named by the plugin), while cached.
    pub fn vouched(&self, key: &str) -> Option<Arc<Principal>> {
        self.principals.get(key).map(|c| c.principal)
    }

    /// The principal of user `user_id`, whom a plugin's authenticator
    /// vouched for with credential `key`, loaded and kept like a token's
    /// (cleared by the same invalidations). `generation` is the cache's
    /// generation from before the plugin was asked.
    pub async fn vouch(
        &self,
        key: &str,
        user_id: i64,
        generation: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        let (principal, version) = self.load_principal(user_id, None).await?;
        let principal = Arc::new(principal);
        self.principals
            .put(key, principal.clone(), version, generation);
        Ok(principal)
    }

    /// The principal cache's generation (see [`Self::vouch`]).
    pub fn generation(&self) -> u64 {
        self.principals.generation()
    }

    /// One row per permission of an active user (one row with NULL for a
    /// user without any), each saying whether token `jti` is revoked and
    /// the user's token version (a token of an older one is superseded).
    /// The principal and that version.
    async fn load_principal(
        &self,
        user_id: i64,
        token: Option<(&str, i64)>,
    ) -> Result<(Principal, i64), AuthError> {
        let sql = placeholders(
            self.db.backend(),
            "SELECT u.username, u.is_superuser, u.token_version, rp.permission, ro.name AS role, \
             (SELECT COUNT(*) FROM sys_token_revocation r WHERE r.jti = ?) AS revoked \
             FROM sys_user u \
             LEFT JOIN sys_user_role ur ON ur.user_id = u.id \
             LEFT JOIN sys_role ro ON ro.id = ur.role_id \
             LEFT JOIN sys_role_permission rp ON rp.role_id = ur.role_id \
             WHERE u.id = ? AND u.status = 1",
        );
        let rows = self
            .db
            .query(&sql, vec![token.map_or("", |t| t.0).into(), user_id.into()])
            .await?;
        let first = rows.first().ok_or(AuthError::UserGone)?;
        if first.try_get::<i64>("", "revoked")? > 0 {
            return Err(AuthError::Revoked);
        }
        let current: i64 = first.try_get("", "token_version")?;
        if token.is_some_and(|(_, version)| version < current) {
            return Err(AuthError::Superseded);
        }
        let (mut permissions, mut roles) = (Vec::new(), Vec::new());
        for row in &rows {
            if let Some(p) = row.try_get::<Option<String>>("", "permission")? {
                permissions.push(p);
            }
            if let Some(r) = row.try_get::<Option<String>>("", "role")? {
                roles.push(r);
            }
        }
        for list in [&mut permissions, &mut roles] {
            list.sort();
            list.dedup();
        }
        let principal = Principal {
            user_id,
            username: first.try_get("", "username")?,
            superuser: first.try_get("", "is_superuser")?,
            permissions,
            roles,
        };
        Ok((principal, current))
    }

    /// Revokes a token until its expiry.
    pub async fn logout(&self, jti: String, expires_at: i64) -> Result<(), AuthError> {
        let _ = token_revocation::Entity::delete_many()
            .filter(token_revocation::Column::ExpiresAt.lt(now()))
            .exec(self.db.conn())
            .await;
        token_revocation::ActiveModel {
            jti: Set(jti),
            expires_at: Set(expires_at),
        }
        .insert(self.db.conn())
        .await?;
        self.principals.invalidate().await;
        Ok(())
    }

    async fn find_user(&self, username: &str) -> Result<Option<user::Model>, AuthError> {
        Ok(user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .one(self.db.conn())
            .await?)
    }

    async fn find_role(&self, name: &str) -> Result<role::Model, AuthError> {
        role::Entity::find()
            .filter(role::Column::Name.eq(name))
            .one(self.db.conn())
            .await?
            .ok_or_else(|| {
                AuthError::Unknown(format!(
                    "role '{name}' does not exist; create it with POST /admin/v1/sys/roles or `plughost role add {name}`"
                ))
            })
    }

    async fn existing_user(&self, username: &str) -> Result<user::Model, AuthError> {
        self.find_user(username).await?.ok_or_else(|| {
            AuthError::Unknown(format!(
                "user '{username}' does not exist; `plughost user list` or GET /admin/v1/sys/users lists the users"
            ))
        })
    }

    /// Creates the superuser `admin` on first start. Returns the password
    /// when it was generated (to be printed once).
    pub async fn ensure_admin(
        &self,
        password: Option<String>,
    ) -> Result<Option<String>, AuthError> {
        if self.find_user("admin").await?.is_some() {
            return Ok(None);
        }
        let (password, generated) = match password {
            Some(p) => (p, false),
            None => (random_password(), true),
        };
        if let Err(e) = self.add_user("admin", &password, true, &[]).await {
            // Instances starting together on a fresh database: another one
            // created it first.
            if self.find_user("admin").await?.is_some() {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(generated.then_some(password))
    }
}

/// The permission strings the host's own routes check.
pub const CORE_PERMISSIONS: &[&str] = &[
    "sys:metrics:read",
    "sys:plugin:edit",
    "sys:plugin:install",
    "sys:plugin:uninstall",
    "sys:role:add",
    "sys:role:del",
    "sys:role:edit",
    "sys:role:list",
    "sys:user:add",
    "sys:user:del",
    "sys:user:edit",
    "sys:user:list",
];

/// Whether `p` looks like a permission string (`sys:dict:add`).
pub fn is_permission(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 128
        && p.split(':').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
}

fn rand_u128() -> u128 {
    use argon2::password_hash::rand_core::RngCore;
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    u128::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_and_names_are_checked() {
        assert!(is_permission("sys:dict:add"));
        assert!(is_permission("sys:plugin:install"));
        assert!(!is_permission("sys::add"));
        assert!(!is_permission("sys:dict add"));
        assert!(check_name("user", "ada.l-1").is_ok());
        assert!(check_name("user", "a b").is_err());
        assert!(check_password("short").is_err());
    }

    #[test]
    fn superusers_pass_every_check_and_others_need_the_permission() {
        let p = Principal {
            user_id: 1,
            username: "u".into(),
            superuser: false,
            permissions: vec!["sys:dict:add".into()],
            roles: vec!["editor".into()],
        };
        assert!(p.require("sys:dict:add").is_ok());
        assert_eq!(
            p.require("sys:dict:del").unwrap_err().to_string(),
            "permission 'sys:dict:del' is required"
        );
        let admin = Principal {
            superuser: true,
            ..p
        };
        assert!(admin.has("anything:at:all"));
    }
}

#[cfg(test)]
mod verify_tests {
    use super::*;

    #[test]
    fn pooled_verification_agrees_with_argon2_and_reuses_its_memory() {
        let hash = hash_now("correct horse").unwrap();
        let mut memory = Vec::new();
        assert!(verify_in(&mut memory, "correct horse", &hash));
        let allocated = memory.as_ptr();
        assert!(!verify_in(&mut memory, "wrong horse", &hash));
        assert!(!verify_in(&mut memory, "correct horse", "not a PHC string"));
        assert_eq!(memory.as_ptr(), allocated, "the buffer is reused");
        assert_eq!(memory.len(), argon2::Params::DEFAULT.block_count());
    }
}
