//! Authentication and RBAC: users with argon2 password hashes, JWT access
//! tokens (revocable), roles carrying permission strings.

mod secret;

use std::{sync::Arc, time::Duration};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};
use serde::{Deserialize, Serialize};

use crate::db::{
    Db,
    entity::{role, role_permission, token_revocation, user, user_role},
    placeholders,
};
pub use secret::{SecretError, load_or_create_secret, random_password};

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
    /// Wrong username or password.
    #[error("wrong username or password")]
    BadCredentials,
    /// The caller lacks a permission.
    #[error("permission '{0}' is required")]
    Forbidden(String),
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
            | Self::BadCredentials => 401,
            Self::Forbidden(_) => 403,
            Self::Exists(_) => 409,
            Self::Unknown(_) => 404,
            Self::Rejected(_) => 422,
            Self::Db(_) => 500,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    name: String,
    jti: String,
    iat: i64,
    exp: i64,
}

/// A token handed out at login.
#[derive(Debug, Serialize)]
pub struct Issued {
    /// The JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Expiry, Unix seconds.
    pub expires_at: i64,
}

/// One user, as `user list` shows it.
#[derive(Debug, Serialize)]
pub struct UserInfo {
    /// Id.
    pub id: i64,
    /// Login name.
    pub username: String,
    /// Superuser flag.
    pub superuser: bool,
    /// 1 active, 0 disabled.
    pub status: i16,
    /// Role names.
    pub roles: Vec<String>,
}

/// Users, roles, tokens.
pub struct AuthService {
    db: Arc<Db>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Hashes a password with argon2 (slow on purpose: run off the async workers).
async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Rejected(format!("cannot hash password: {e}")))
    })
    .await
    .map_err(|e| AuthError::Rejected(format!("password hashing failed: {e}")))?
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|parsed| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
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
    if password.chars().count() < 8 {
        return Err(AuthError::Rejected(
            "a password must be at least 8 characters long".into(),
        ));
    }
    Ok(())
}

impl AuthService {
    /// A service signing tokens with `secret`, valid for `ttl`.
    pub fn new(db: Arc<Db>, secret: &[u8], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            db,
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// The database the service works on.
    pub fn db(&self) -> &Arc<Db> {
        &self.db
    }

    /// Checks a username and password and issues a token.
    pub async fn login(&self, username: &str, password: &str) -> Result<Issued, AuthError> {
        let found = user::Entity::find()
            .filter(user::Column::Username.eq(username))
            .one(self.db.conn())
            .await?;
        let Some(found) = found.filter(|u| u.status == 1) else {
            // Spend the same time as a real check, so that timing does not
            // tell which usernames exist.
            let _ = hash_password(password.to_owned()).await;
            return Err(AuthError::BadCredentials);
        };
        if !verify_password(password.to_owned(), found.password_hash.clone()).await {
            return Err(AuthError::BadCredentials);
        }
        let iat = now();
        let exp = iat + i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: found.id.to_string(),
            name: found.username.clone(),
            jti: format!("{:032x}", rand_u128()),
            iat,
            exp,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Rejected(format!("cannot sign token: {e}")))?;
        Ok(Issued {
            access_token: token,
            token_type: "Bearer",
            expires_at: exp,
        })
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

    /// The caller of a request with this `Authorization` header: one
    /// query reads the revocation, the user and their permissions.
    pub async fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Result<(Principal, String, i64), AuthError> {
        let claims = self.decode(authorization)?;
        let user_id: i64 = claims
            .sub
            .parse()
            .map_err(|_| AuthError::Invalid("bad subject".into()))?;
        let principal = self.load_principal(user_id, Some(&claims.jti)).await?;
        Ok((principal, claims.jti, claims.exp))
    }

    /// Loads a user's principal (roles and their permissions).
    pub async fn principal(&self, user_id: i64) -> Result<Principal, AuthError> {
        self.load_principal(user_id, None).await
    }

    /// One row per permission of an active user (one row with NULL for a
    /// user without any), each saying whether token `jti` is revoked.
    async fn load_principal(
        &self,
        user_id: i64,
        jti: Option<&str>,
    ) -> Result<Principal, AuthError> {
        let sql = placeholders(
            self.db.backend(),
            "SELECT u.username, u.is_superuser, rp.permission, \
             (SELECT COUNT(*) FROM sys_token_revocation r WHERE r.jti = ?) AS revoked \
             FROM sys_user u \
             LEFT JOIN sys_user_role ur ON ur.user_id = u.id \
             LEFT JOIN sys_role_permission rp ON rp.role_id = ur.role_id \
             WHERE u.id = ? AND u.status = 1",
        );
        let rows = self
            .db
            .query(&sql, vec![jti.unwrap_or("").into(), user_id.into()])
            .await?;
        let first = rows.first().ok_or(AuthError::UserGone)?;
        if first.try_get::<i64>("", "revoked")? > 0 {
            return Err(AuthError::Revoked);
        }
        let mut permissions = Vec::new();
        for row in &rows {
            if let Some(p) = row.try_get::<Option<String>>("", "permission")? {
                permissions.push(p);
            }
        }
        permissions.sort();
        permissions.dedup();
        Ok(Principal {
            user_id,
            username: first.try_get("", "username")?,
            superuser: first.try_get("", "is_superuser")?,
            permissions,
        })
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
        Ok(())
    }

    async fn insert_user(
        &self,
        username: &str,
        hash: String,
        superuser: bool,
    ) -> Result<i64, AuthError> {
        let model = user::ActiveModel {
            username: Set(username.to_owned()),
            password_hash: Set(hash),
            is_superuser: Set(superuser),
            status: Set(1),
            ..Default::default()
        };
        Ok(self.db.insert_keyed(model, user::Column::Id).await?)
    }

    /// Creates a user, with roles.
    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        superuser: bool,
        roles: &[String],
    ) -> Result<i64, AuthError> {
        check_name("user", username)?;
        check_password(password)?;
        if self.find_user(username).await?.is_some() {
            return Err(AuthError::Exists(format!("user '{username}'")));
        }
        let mut role_ids = Vec::new();
        for name in roles {
            role_ids.push(self.find_role(name).await?.id);
        }
        let hash = hash_password(password.to_owned()).await?;
        let id = self.insert_user(username, hash, superuser).await?;
        for role_id in role_ids {
            user_role::ActiveModel {
                user_id: Set(id),
                role_id: Set(role_id),
            }
            .insert(self.db.conn())
            .await?;
        }
        Ok(id)
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
                    "role '{name}' does not exist; create it with `plughost role add {name}`"
                ))
            })
    }

    /// Sets a user's password.
    pub async fn set_password(&self, username: &str, password: &str) -> Result<(), AuthError> {
        check_password(password)?;
        let found = self.find_user(username).await?.ok_or_else(|| {
            AuthError::Unknown(format!(
                "user '{username}' does not exist; create it with `plughost user add {username}`"
            ))
        })?;
        let mut model: user::ActiveModel = found.into();
        model.password_hash = Set(hash_password(password.to_owned()).await?);
        model.update(self.db.conn()).await?;
        Ok(())
    }

    /// Every user with its roles.
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, AuthError> {
        let users = user::Entity::find()
            .order_by_asc(user::Column::Username)
            .all(self.db.conn())
            .await?;
        let roles = role::Entity::find().all(self.db.conn()).await?;
        let links = user_role::Entity::find().all(self.db.conn()).await?;
        Ok(users
            .into_iter()
            .map(|u| {
                let mut names: Vec<String> = links
                    .iter()
                    .filter(|l| l.user_id == u.id)
                    .filter_map(|l| roles.iter().find(|r| r.id == l.role_id))
                    .map(|r| r.name.clone())
                    .collect();
                names.sort();
                UserInfo {
                    id: u.id,
                    username: u.username,
                    superuser: u.is_superuser,
                    status: u.status,
                    roles: names,
                }
            })
            .collect())
    }

    /// Creates a role.
    pub async fn add_role(&self, name: &str) -> Result<i64, AuthError> {
        check_name("role", name)?;
        if role::Entity::find()
            .filter(role::Column::Name.eq(name))
            .one(self.db.conn())
            .await?
            .is_some()
        {
            return Err(AuthError::Exists(format!("role '{name}'")));
        }
        let model = role::ActiveModel {
            name: Set(name.to_owned()),
            ..Default::default()
        };
        Ok(self.db.insert_keyed(model, role::Column::Id).await?)
    }

    /// Adds permissions to a role (already held ones are kept once).
    pub async fn grant(&self, role_name: &str, permissions: &[String]) -> Result<(), AuthError> {
        if let Some(bad) = permissions.iter().find(|p| !is_permission(p)) {
            return Err(AuthError::Rejected(format!(
                "'{bad}' is not a permission string (like sys:dict:add: letters, digits, '_', '-', separated by ':')"
            )));
        }
        let found = self.find_role(role_name).await?;
        let txn = self.db.conn().begin().await?;
        for permission in permissions {
            let exists = role_permission::Entity::find_by_id((found.id, permission.clone()))
                .one(&txn)
                .await?
                .is_some();
            if !exists {
                role_permission::ActiveModel {
                    role_id: Set(found.id),
                    permission: Set(permission.clone()),
                }
                .insert(&txn)
                .await?;
            }
        }
        txn.commit().await?;
        Ok(())
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
        self.add_user("admin", &password, true, &[]).await?;
        Ok(generated.then_some(password))
    }
}

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
