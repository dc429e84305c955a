//! Users and roles: what the CLI commands and the admin API change. Every
//! change clears the cached principals on every instance and is announced
//! on the cluster's bus (`sys.user.*`, `sys.role.*`).
//!
//! Over HTTP the caller is an [`Actor::User`], held to two rules the
//! operator at the command line is not: nobody grants what they do not
//! hold (a role's permissions, a superuser flag), and nobody locks
//! themselves out (deletes, disables or demotes their own account, or
//! changes their own password behind their tokens' back).

use std::collections::BTreeMap;

use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, Set, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{
    AuthError, AuthService, Principal, check_name, check_password, is_permission, random_password,
};
use crate::{
    db::entity::{role, role_permission, user, user_role},
    events::publish_core,
};

/// Who asks for a change.
#[derive(Clone, Copy)]
pub enum Actor<'a> {
    /// The operator at the command line: every change is theirs to make.
    Operator,
    /// A user over HTTP.
    User(&'a Principal),
}

impl Actor<'_> {
    fn is(&self, id: i64) -> bool {
        matches!(self, Self::User(p) if p.user_id == id)
    }

    /// Refused unless the actor may hand out `permission`.
    fn may_grant(&self, permission: &str, what: &str) -> Result<(), AuthError> {
        match self {
            Self::User(p) if !p.has(permission) => Err(AuthError::Denied(format!(
                "{what} carries permission '{permission}', which you do not hold; only a holder (or a superuser) may grant it"
            ))),
            _ => Ok(()),
        }
    }

    /// Refused unless the actor may change a superuser or make one.
    fn may_touch_superuser(&self, username: &str) -> Result<(), AuthError> {
        match self {
            Self::User(p) if !p.superuser => Err(AuthError::Denied(format!(
                "'{username}' is or would be a superuser: only a superuser may change that"
            ))),
            _ => Ok(()),
        }
    }
}

/// One user, as the list and the admin API show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserInfo {
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
    /// Role names, sorted.
    pub roles: Vec<String>,
}

/// One role with its permissions.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RoleInfo {
    /// Id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Permission strings, sorted.
    pub permissions: Vec<String>,
    /// How many users hold it.
    pub users: u64,
}

/// A page of users.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UserPage {
    /// The users of this page, by id.
    pub items: Vec<UserInfo>,
    /// How many users match.
    pub total: u64,
    /// The page (from 1).
    pub page: u64,
    /// Users per page.
    pub size: u64,
}

/// A user to create.
#[derive(Debug, Default)]
pub struct NewUser {
    /// Login name.
    pub username: String,
    /// Password (8 to 1024 characters).
    pub password: String,
    /// Role names.
    pub roles: Vec<String>,
    /// Passes every permission check.
    pub superuser: bool,
    /// Display name.
    pub nickname: Option<String>,
    /// Mail address.
    pub email: Option<String>,
}

/// What to change of a user: each field given is set (`Some(None)`
/// clears a nickname or mail address).
#[derive(Debug, Default)]
pub struct UserChange {
    /// A new login name.
    pub username: Option<String>,
    /// A new password (older tokens are refused).
    pub password: Option<String>,
    /// Superuser or not.
    pub superuser: Option<bool>,
    /// Display name.
    pub nickname: Option<Option<String>>,
    /// Mail address.
    pub email: Option<Option<String>>,
}

/// An identity from elsewhere, as a plugin gives it: the provider and
/// the account's id there, with what the provider says of it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    /// The provider (`github`, `oidc`, …).
    pub provider: String,
    /// The account's id at the provider.
    pub subject: String,
    /// The login name wanted for a new user.
    pub username: Option<String>,
    /// Display name.
    pub nickname: Option<String>,
    /// Mail address.
    pub email: Option<String>,
}

/// Refused unless `provider` and `subject` can name an external identity.
fn check_external_id(provider: &str, subject: &str) -> Result<(), AuthError> {
    let provider_ok = !provider.is_empty()
        && provider.len() <= 64
        && provider
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !provider_ok {
        return Err(AuthError::Rejected(format!(
            "provider '{provider}' must be 1 to 64 letters, digits, '_', '-' or '.'"
        )));
    }
    if subject.is_empty() || subject.len() > 255 {
        return Err(AuthError::Rejected(
            "an external identity's subject is 1 to 255 bytes".into(),
        ));
    }
    Ok(())
}

/// `wanted` as a login name: characters a name may not hold become `_`,
/// at most 56 of them (room for a suffix that makes it unique).
fn login_name(wanted: &str) -> String {
    let name: String = wanted
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(56)
        .collect();
    if name.trim_matches('_').is_empty() {
        "user".to_owned()
    } else {
        name
    }
}

/// Which users a page lists.
#[derive(Debug, Default)]
pub struct UserFilter {
    /// Login names containing this.
    pub username: Option<String>,
    /// Only active (1) or disabled (0) users.
    pub status: Option<i16>,
}

/// A space or a control character: what a mail address may not hold and
/// a nickname may not be made of only (the same set the API document's
/// patterns name, `\x00-\x20` and `\x7f-\x9f`).
fn blank(c: char) -> bool {
    c <= ' ' || c.is_control()
}

fn check_nickname(nickname: Option<&str>) -> Result<(), AuthError> {
    match nickname {
        Some(n)
            if n.chars().all(blank)
                || n.chars().count() > 64
                || n.chars().any(char::is_control) =>
        {
            Err(AuthError::Rejected(
                "a nickname must be 1 to 64 characters, not all blank, without control characters"
                    .into(),
            ))
        }
        _ => Ok(()),
    }
}

fn check_email(email: Option<&str>) -> Result<(), AuthError> {
    let Some(email) = email else { return Ok(()) };
    let valid = email.chars().count() <= 255
        && !email.chars().any(blank)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.contains('@')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    if valid {
        Ok(())
    } else {
        Err(AuthError::Rejected(format!(
            "'{email}' is not a mail address (name@domain.tld, at most 255 characters)"
        )))
    }
}

fn info(u: user::Model, roles: Vec<String>) -> UserInfo {
    UserInfo {
        id: u.id,
        username: u.username,
        nickname: u.nickname,
        email: u.email,
        superuser: u.is_superuser,
        status: u.status,
        roles,
    }
}

impl AuthService {
    /// The user with id `id`.
    async fn user_by_id(&self, id: i64) -> Result<user::Model, AuthError> {
        user::Entity::find_by_id(id)
            .one(self.db.conn())
            .await?
            .ok_or_else(|| {
                AuthError::Unknown(format!(
                    "user {id} does not exist; GET /admin/v1/sys/users lists the users"
                ))
            })
    }

    /// The id of user `username`.
    pub async fn user_id(&self, username: &str) -> Result<i64, AuthError> {
        Ok(self.existing_user(username).await?.id)
    }

    /// The roles of each of `users`, by user id.
    async fn roles_of(&self, users: &[i64]) -> Result<BTreeMap<i64, Vec<String>>, AuthError> {
        let links = user_role::Entity::find()
            .filter(user_role::Column::UserId.is_in(users.iter().copied()))
            .all(self.db.conn())
            .await?;
        let roles = role::Entity::find()
            .filter(role::Column::Id.is_in(links.iter().map(|l| l.role_id)))
            .all(self.db.conn())
            .await?;
        let mut by_user: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for link in links {
            if let Some(r) = roles.iter().find(|r| r.id == link.role_id) {
                by_user
                    .entry(link.user_id)
                    .or_default()
                    .push(r.name.clone());
            }
        }
        by_user.values_mut().for_each(|names| names.sort());
        Ok(by_user)
    }

    /// User `id` with its roles.
    pub async fn user(&self, id: i64) -> Result<UserInfo, AuthError> {
        let found = self.user_by_id(id).await?;
        let mut roles = self.roles_of(&[id]).await?;
        Ok(info(found, roles.remove(&id).unwrap_or_default()))
    }

    /// A page of the users `filter` matches, by id.
    pub async fn users_page(
        &self,
        filter: &UserFilter,
        page: u64,
        size: u64,
    ) -> Result<UserPage, AuthError> {
        let mut query = user::Entity::find().order_by_asc(user::Column::Id);
        if let Some(name) = filter.username.as_deref().filter(|n| !n.is_empty()) {
            query = query.filter(user::Column::Username.contains(name));
        }
        if let Some(status) = filter.status {
            query = query.filter(user::Column::Status.eq(status));
        }
        let paginator = query.paginate(self.db.conn(), size);
        let total = paginator.num_items().await?;
        let users = paginator.fetch_page(page.saturating_sub(1)).await?;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let mut roles = self.roles_of(&ids).await?;
        Ok(UserPage {
            items: users
                .into_iter()
                .map(|u| {
                    let names = roles.remove(&u.id).unwrap_or_default();
                    info(u, names)
                })
                .collect(),
            total,
            page,
            size,
        })
    }

    /// Every user with its roles, by name (the CLI's list).
    pub async fn list_users(&self) -> Result<Vec<UserInfo>, AuthError> {
        let users = user::Entity::find()
            .order_by_asc(user::Column::Username)
            .all(self.db.conn())
            .await?;
        let ids: Vec<i64> = users.iter().map(|u| u.id).collect();
        let mut roles = self.roles_of(&ids).await?;
        Ok(users
            .into_iter()
            .map(|u| {
                let names = roles.remove(&u.id).unwrap_or_default();
                info(u, names)
            })
            .collect())
    }

    /// The roles named, each checked to exist and, unless in `held`
    /// (taking nothing new), to carry nothing the actor may not grant.
    async fn grantable_roles(
        &self,
        names: &[String],
        held: &[String],
        actor: Actor<'_>,
    ) -> Result<Vec<i64>, AuthError> {
        let mut ids = Vec::new();
        for name in names {
            // A role the request's body names, not its path: a 422.
            let found = self.find_role(name).await.map_err(|e| match e {
                AuthError::Unknown(message) => AuthError::Rejected(message),
                other => other,
            })?;
            if !held.contains(name) && matches!(actor, Actor::User(p) if !p.superuser) {
                for carried in role_permission::Entity::find()
                    .filter(role_permission::Column::RoleId.eq(found.id))
                    .all(self.db.conn())
                    .await?
                {
                    actor.may_grant(&carried.permission, &format!("role '{name}'"))?;
                }
            }
            if !ids.contains(&found.id) {
                ids.push(found.id);
            }
        }
        Ok(ids)
    }

    /// Creates a user, with roles. Its id.
    pub async fn create_user(&self, new: NewUser, actor: Actor<'_>) -> Result<i64, AuthError> {
        check_name("user", &new.username)?;
        check_password(&new.password)?;
        check_nickname(new.nickname.as_deref())?;
        check_email(new.email.as_deref())?;
        if new.superuser {
            actor.may_touch_superuser(&new.username)?;
        }
        if self.find_user(&new.username).await?.is_some() {
            return Err(AuthError::Exists(format!("user '{}'", new.username)));
        }
        let role_ids = self.grantable_roles(&new.roles, &[], actor).await?;
        let hash = self.hash_password(new.password).await?;
        let model = user::ActiveModel {
            username: Set(new.username.clone()),
            password_hash: Set(hash),
            is_superuser: Set(new.superuser),
            status: Set(1),
            nickname: Set(new.nickname),
            email: Set(new.email),
            ..Default::default()
        };
        let id = match self.db.insert_keyed(model, user::Column::Id).await {
            Ok(id) => id,
            // Created by someone else meanwhile: the unique name says so.
            Err(_) if self.find_user(&new.username).await?.is_some() => {
                return Err(AuthError::Exists(format!("user '{}'", new.username)));
            }
            Err(e) => return Err(e.into()),
        };
        for role_id in role_ids {
            user_role::ActiveModel {
                user_id: Set(id),
                role_id: Set(role_id),
            }
            .insert(self.db.conn())
            .await?;
        }
        publish_core(
            "user.created",
            &json!({ "id": id, "username": new.username, "roles": new.roles }),
        )
        .await;
        Ok(id)
    }

    /// Creates a user, with roles (the CLI's `user add`).
    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        superuser: bool,
        roles: &[String],
    ) -> Result<i64, AuthError> {
        self.create_user(
            NewUser {
                username: username.to_owned(),
                password: password.to_owned(),
                roles: roles.to_vec(),
                superuser,
                ..NewUser::default()
            },
            Actor::Operator,
        )
        .await
    }

    /// Changes user `id`: what `change` gives. A new password or a lost
    /// superuser flag makes its older tokens refused. The user after it.
    pub async fn update_user(
        &self,
        id: i64,
        change: UserChange,
        actor: Actor<'_>,
    ) -> Result<UserInfo, AuthError> {
        let found = self.user_by_id(id).await?;
        if found.is_superuser || change.superuser == Some(true) {
            actor.may_touch_superuser(&found.username)?;
        }
        if actor.is(id) && change.superuser.is_some_and(|s| s != found.is_superuser) {
            return Err(AuthError::Conflict(
                "you cannot change your own superuser flag; another superuser can".into(),
            ));
        }
        if actor.is(id) && change.password.is_some() {
            return Err(AuthError::Conflict(
                "you cannot change your own password here; use `plughost user passwd`, or ask another administrator"
                    .into(),
            ));
        }
        if let Some(name) = &change.username {
            check_name("user", name)?;
            if *name != found.username && self.find_user(name).await?.is_some() {
                return Err(AuthError::Exists(format!("user '{name}'")));
            }
        }
        if let Some(password) = &change.password {
            check_password(password)?;
        }
        check_nickname(change.nickname.as_ref().and_then(Option::as_deref))?;
        check_email(change.email.as_ref().and_then(Option::as_deref))?;
        let mut changed = Vec::new();
        let version = found.token_version + 1;
        let was_superuser = found.is_superuser;
        let mut model: user::ActiveModel = found.into();
        if let Some(name) = change.username {
            model.username = Set(name);
            changed.push("username");
        }
        if let Some(password) = change.password {
            model.password_hash = Set(self.hash_password(password).await?);
            model.token_version = Set(version);
            changed.push("password");
        }
        if let Some(superuser) = change.superuser {
            model.is_superuser = Set(superuser);
            if was_superuser && !superuser {
                model.token_version = Set(version);
            }
            changed.push("superuser");
        }
        if let Some(nickname) = change.nickname {
            model.nickname = Set(nickname);
            changed.push("nickname");
        }
        if let Some(email) = change.email {
            model.email = Set(email);
            changed.push("email");
        }
        if !changed.is_empty() {
            model.update(self.db.conn()).await?;
            self.principals.invalidate().await;
        }
        let now = self.user(id).await?;
        if !changed.is_empty() {
            publish_core(
                "user.updated",
                &json!({ "id": id, "username": now.username, "changed": changed }),
            )
            .await;
        }
        Ok(now)
    }

    /// Sets a user's password (the CLI's `user passwd`).
    pub async fn set_password(&self, username: &str, password: &str) -> Result<(), AuthError> {
        let id = self.user_id(username).await?;
        self.update_user(
            id,
            UserChange {
                password: Some(password.to_owned()),
                ..UserChange::default()
            },
            Actor::Operator,
        )
        .await
        .map(|_| ())
    }

    /// Disables user `id` (no login, and every token issued before is
    /// refused for good, also after it is enabled again) or enables it.
    /// Whether anything changed.
    pub async fn set_status(
        &self,
        id: i64,
        active: bool,
        actor: Actor<'_>,
    ) -> Result<bool, AuthError> {
        let found = self.user_by_id(id).await?;
        if found.is_superuser {
            actor.may_touch_superuser(&found.username)?;
        }
        if actor.is(id) && !active {
            return Err(AuthError::Conflict(
                "you cannot disable your own account; another administrator can".into(),
            ));
        }
        let status = i16::from(active);
        if found.status == status {
            return Ok(false);
        }
        let version = found.token_version + 1;
        let username = found.username.clone();
        let mut model: user::ActiveModel = found.into();
        model.status = Set(status);
        if !active {
            model.token_version = Set(version);
        }
        model.update(self.db.conn()).await?;
        self.principals.invalidate().await;
        publish_core(
            if active {
                "user.enabled"
            } else {
                "user.disabled"
            },
            &json!({ "id": id, "username": username }),
        )
        .await;
        Ok(true)
    }

    /// Disables or enables user `username` (the CLI's `user disable` and
    /// `user enable`).
    pub async fn set_active(&self, username: &str, active: bool) -> Result<bool, AuthError> {
        let id = self.user_id(username).await?;
        self.set_status(id, active, Actor::Operator).await
    }

    /// Deletes user `id`: its tokens are refused on every instance at once
    /// (through the principal caches' invalidation), its roles let go.
    pub async fn delete_user(&self, id: i64, actor: Actor<'_>) -> Result<(), AuthError> {
        let found = self.user_by_id(id).await?;
        if found.is_superuser {
            actor.may_touch_superuser(&found.username)?;
        }
        if actor.is(id) {
            return Err(AuthError::Conflict(
                "you cannot delete your own account; another administrator can".into(),
            ));
        }
        let txn = self.db.conn().begin().await?;
        user_role::Entity::delete_many()
            .filter(user_role::Column::UserId.eq(id))
            .exec(&txn)
            .await?;
        txn.execute(self.db.statement(
            "DELETE FROM sys_user_identity WHERE user_id = ?",
            [id.into()],
        ))
        .await?;
        user::Entity::delete_by_id(id).exec(&txn).await?;
        txn.commit().await?;
        self.principals.invalidate().await;
        publish_core(
            "user.deleted",
            &json!({ "id": id, "username": found.username }),
        )
        .await;
        Ok(())
    }

    /// The user bound to external identity `ext`, found by its provider
    /// and subject, or created with `roles` and a password nobody knows
    /// and bound to it (by `plugin`) at its first use.
    pub async fn external_user(
        &self,
        plugin: &str,
        ext: External,
        roles: &[String],
    ) -> Result<UserInfo, AuthError> {
        check_external_id(&ext.provider, &ext.subject)?;
        if let Some(id) = self.bound_user(&ext.provider, &ext.subject).await? {
            return self.user(id).await;
        }
        let wanted = ext
            .username
            .clone()
            .or_else(|| {
                ext.email
                    .as_deref()
                    .and_then(|e| e.split('@').next())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| format!("{}_{}", ext.provider, ext.subject));
        let base = login_name(&wanted);
        let mut username = base.clone();
        let mut n = 1;
        while self.find_user(&username).await?.is_some() {
            n += 1;
            username = format!("{base}-{n}");
        }
        let nickname = ext
            .nickname
            .map(|n| {
                n.chars()
                    .filter(|c| !c.is_control())
                    .take(64)
                    .collect::<String>()
            })
            .filter(|n| check_nickname(Some(n)).is_ok());
        let email = ext.email.filter(|e| check_email(Some(e)).is_ok());
        let id = self
            .create_user(
                NewUser {
                    username,
                    password: random_password(),
                    roles: roles.to_vec(),
                    superuser: false,
                    nickname,
                    email,
                },
                Actor::Operator,
            )
            .await?;
        let bind = self
            .db
            .execute(self.db.statement(
                "INSERT INTO sys_user_identity (provider, subject, user_id, plugin) VALUES (?, ?, ?, ?)",
                [
                    ext.provider.clone().into(),
                    ext.subject.clone().into(),
                    id.into(),
                    plugin.into(),
                ],
            ))
            .await;
        if let Err(e) = bind {
            // Bound by another instance meanwhile: its user is the one.
            let _ = self.delete_user(id, Actor::Operator).await;
            return match self.bound_user(&ext.provider, &ext.subject).await? {
                Some(winner) => self.user(winner).await,
                None => Err(e.into()),
            };
        }
        self.user(id).await
    }

    /// The user external identity `provider`/`subject` is bound to, if any.
    async fn bound_user(&self, provider: &str, subject: &str) -> Result<Option<i64>, AuthError> {
        let rows = self
            .db
            .query(
                &crate::db::placeholders(
                    self.db.backend(),
                    "SELECT user_id FROM sys_user_identity WHERE provider = ? AND subject = ?",
                ),
                vec![provider.into(), subject.into()],
            )
            .await?;
        rows.first()
            .map(|row| row.try_get::<i64>("", "user_id"))
            .transpose()
            .map_err(AuthError::from)
    }

    /// Binds external identity `provider`/`subject` to the existing user
    /// `user_id` (by `plugin`): from then on it finds that user. Binding
    /// it again to the same user changes nothing; an identity bound to
    /// another user is a conflict.
    pub async fn bind_external(
        &self,
        plugin: &str,
        user_id: i64,
        provider: &str,
        subject: &str,
    ) -> Result<UserInfo, AuthError> {
        check_external_id(provider, subject)?;
        let user = self.user(user_id).await?;
        let taken = |owner: i64| {
            if owner == user_id {
                Ok(())
            } else {
                Err(AuthError::Conflict(format!(
                    "the {provider} account {subject} is bound to another user: unbind it there first"
                )))
            }
        };
        if let Some(owner) = self.bound_user(provider, subject).await? {
            return taken(owner).map(|()| user);
        }
        let bind = self
            .db
            .execute(self.db.statement(
                "INSERT INTO sys_user_identity (provider, subject, user_id, plugin) VALUES (?, ?, ?, ?)",
                [provider.into(), subject.into(), user_id.into(), plugin.into()],
            ))
            .await;
        if let Err(e) = bind {
            // Bound by another instance meanwhile.
            return match self.bound_user(provider, subject).await? {
                Some(owner) => taken(owner).map(|()| user),
                None => Err(e.into()),
            };
        }
        tracing::info!(plugin, user_id, provider, "external identity bound");
        Ok(user)
    }

    /// Unbinds external identity `provider`/`subject`, if `plugin` bound
    /// it: its next use finds (or makes) another user. Whether it was
    /// bound.
    pub async fn unbind_external(
        &self,
        plugin: &str,
        provider: &str,
        subject: &str,
    ) -> Result<bool, AuthError> {
        check_external_id(provider, subject)?;
        let done = self
            .db
            .execute(self.db.statement(
                "DELETE FROM sys_user_identity WHERE provider = ? AND subject = ? AND plugin = ?",
                [provider.into(), subject.into(), plugin.into()],
            ))
            .await?;
        if done.rows_affected() > 0 {
            tracing::info!(plugin, provider, "external identity unbound");
        }
        Ok(done.rows_affected() > 0)
    }

    /// Makes `roles` the roles of user `id`. Its roles after it.
    pub async fn replace_roles(
        &self,
        id: i64,
        roles: &[String],
        actor: Actor<'_>,
    ) -> Result<Vec<String>, AuthError> {
        let found = self.user_by_id(id).await?;
        if found.is_superuser {
            actor.may_touch_superuser(&found.username)?;
        }
        let held = self.roles_of(&[id]).await?.remove(&id).unwrap_or_default();
        // Only what is added is checked: keeping or taking a role away
        // grants nothing.
        let wanted = self.grantable_roles(roles, &held, actor).await?;
        let txn = self.db.conn().begin().await?;
        user_role::Entity::delete_many()
            .filter(user_role::Column::UserId.eq(id))
            .exec(&txn)
            .await?;
        for role_id in wanted {
            user_role::ActiveModel {
                user_id: Set(id),
                role_id: Set(role_id),
            }
            .insert(&txn)
            .await?;
        }
        txn.commit().await?;
        self.principals.invalidate().await;
        let now = self.roles_of(&[id]).await?.remove(&id).unwrap_or_default();
        publish_core(
            "user.roles_changed",
            &json!({ "id": id, "username": found.username, "roles": now }),
        )
        .await;
        Ok(now)
    }

    /// Gives user `username` the roles `add` and takes `remove` from it
    /// (the CLI's `user roles`). Its roles after it.
    pub async fn set_roles(
        &self,
        username: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<Vec<String>, AuthError> {
        let id = self.user_id(username).await?;
        for name in add.iter().chain(remove) {
            self.find_role(name).await?;
        }
        let held = self.roles_of(&[id]).await?.remove(&id).unwrap_or_default();
        let mut wanted: Vec<String> = held.into_iter().filter(|r| !remove.contains(r)).collect();
        wanted.extend(add.iter().filter(|r| !remove.contains(r)).cloned());
        self.replace_roles(id, &wanted, Actor::Operator).await
    }

    /// Every role with its permissions, by name.
    pub async fn roles(&self) -> Result<Vec<RoleInfo>, AuthError> {
        let roles = role::Entity::find()
            .order_by_asc(role::Column::Name)
            .all(self.db.conn())
            .await?;
        let permissions = role_permission::Entity::find().all(self.db.conn()).await?;
        let links = user_role::Entity::find().all(self.db.conn()).await?;
        Ok(roles
            .into_iter()
            .map(|r| {
                let mut held: Vec<String> = permissions
                    .iter()
                    .filter(|p| p.role_id == r.id)
                    .map(|p| p.permission.clone())
                    .collect();
                held.sort();
                RoleInfo {
                    id: r.id,
                    users: links.iter().filter(|l| l.role_id == r.id).count() as u64,
                    name: r.name,
                    permissions: held,
                }
            })
            .collect())
    }

    /// Role `name` with its permissions.
    pub async fn role(&self, name: &str) -> Result<RoleInfo, AuthError> {
        self.find_role(name).await?;
        self.roles()
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| AuthError::Unknown(format!("role '{name}' does not exist")))
    }

    /// Creates a role. Its id.
    pub async fn add_role(&self, name: &str) -> Result<i64, AuthError> {
        check_name("role", name)?;
        let exists = || async {
            role::Entity::find()
                .filter(role::Column::Name.eq(name))
                .one(self.db.conn())
                .await
        };
        if exists().await?.is_some() {
            return Err(AuthError::Exists(format!("role '{name}'")));
        }
        let model = role::ActiveModel {
            name: Set(name.to_owned()),
            ..Default::default()
        };
        let id = match self.db.insert_keyed(model, role::Column::Id).await {
            Ok(id) => id,
            Err(_) if exists().await?.is_some() => {
                return Err(AuthError::Exists(format!("role '{name}'")));
            }
            Err(e) => return Err(e.into()),
        };
        publish_core("role.created", &json!({ "id": id, "name": name })).await;
        Ok(id)
    }

    /// Deletes role `name`: its holders lose its permissions on every
    /// instance at once.
    pub async fn delete_role(&self, name: &str) -> Result<(), AuthError> {
        let found = self.find_role(name).await?;
        let txn = self.db.conn().begin().await?;
        role_permission::Entity::delete_many()
            .filter(role_permission::Column::RoleId.eq(found.id))
            .exec(&txn)
            .await?;
        user_role::Entity::delete_many()
            .filter(user_role::Column::RoleId.eq(found.id))
            .exec(&txn)
            .await?;
        role::Entity::delete_by_id(found.id).exec(&txn).await?;
        txn.commit().await?;
        self.principals.invalidate().await;
        publish_core("role.deleted", &json!({ "id": found.id, "name": name })).await;
        Ok(())
    }

    /// Makes role `name` hold exactly `add` added to what it holds, less
    /// `remove` (`replace`: exactly `add`). What it holds after it.
    async fn change_permissions(
        &self,
        name: &str,
        add: &[String],
        remove: &[String],
        replace: bool,
        actor: Actor<'_>,
    ) -> Result<Vec<String>, AuthError> {
        if let Some(bad) = add.iter().chain(remove).find(|p| !is_permission(p)) {
            return Err(AuthError::Rejected(format!(
                "'{bad}' is not a permission string (like sys:dict:add: letters, digits, '_', '-', separated by ':')"
            )));
        }
        let found = self.find_role(name).await?;
        let held: Vec<String> = role_permission::Entity::find()
            .filter(role_permission::Column::RoleId.eq(found.id))
            .all(self.db.conn())
            .await?
            .into_iter()
            .map(|p| p.permission)
            .collect();
        for permission in add.iter().filter(|p| !held.contains(p)) {
            actor.may_grant(permission, &format!("role '{name}'"))?;
        }
        let mut wanted: Vec<String> = if replace {
            add.to_vec()
        } else {
            held.iter()
                .filter(|p| !remove.contains(p))
                .chain(add.iter().filter(|p| !remove.contains(p)))
                .cloned()
                .collect()
        };
        wanted.sort();
        wanted.dedup();
        let mut before = held;
        before.sort();
        if wanted == before {
            return Ok(wanted);
        }
        let txn = self.db.conn().begin().await?;
        role_permission::Entity::delete_many()
            .filter(role_permission::Column::RoleId.eq(found.id))
            .exec(&txn)
            .await?;
        for permission in &wanted {
            role_permission::ActiveModel {
                role_id: Set(found.id),
                permission: Set(permission.clone()),
            }
            .insert(&txn)
            .await?;
        }
        txn.commit().await?;
        self.principals.invalidate().await;
        publish_core(
            "role.permissions_changed",
            &json!({ "id": found.id, "name": name, "permissions": wanted }),
        )
        .await;
        Ok(wanted)
    }

    /// Makes `permissions` the permissions of role `name`.
    pub async fn replace_permissions(
        &self,
        name: &str,
        permissions: &[String],
        actor: Actor<'_>,
    ) -> Result<Vec<String>, AuthError> {
        self.change_permissions(name, permissions, &[], true, actor)
            .await
    }

    /// Adds permissions to a role (the CLI's `role grant`).
    pub async fn grant(&self, role_name: &str, permissions: &[String]) -> Result<(), AuthError> {
        self.change_permissions(role_name, permissions, &[], false, Actor::Operator)
            .await
            .map(|_| ())
    }

    /// Takes permissions from a role (the CLI's `role revoke`). Those it
    /// did not hold.
    pub async fn revoke(
        &self,
        role_name: &str,
        permissions: &[String],
    ) -> Result<Vec<String>, AuthError> {
        let held = self.role(role_name).await?.permissions;
        let absent = permissions
            .iter()
            .filter(|p| !held.contains(p))
            .cloned()
            .collect();
        self.change_permissions(role_name, &[], permissions, false, Actor::Operator)
            .await?;
        Ok(absent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicknames_and_mail_addresses_are_checked() {
        assert!(check_nickname(Some("Ada Lovelace")).is_ok());
        assert!(check_nickname(None).is_ok());
        assert!(check_nickname(Some("  ")).is_err());
        assert!(check_nickname(Some("a\u{7}")).is_err());
        assert!(check_email(Some("ada@example.org")).is_ok());
        for bad in [
            "ada",
            "ada@",
            "@example.org",
            "ada@example",
            "a da@example.org",
            "ada@.org",
        ] {
            assert!(check_email(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_user_grants_only_what_it_holds_and_only_a_superuser_makes_one() {
        let p = Principal {
            user_id: 7,
            username: "ops".into(),
            superuser: false,
            permissions: vec!["sys:dict:add".into()],
            roles: vec!["editor".into()],
        };
        let actor = Actor::User(&p);
        assert!(actor.may_grant("sys:dict:add", "role 'x'").is_ok());
        let refused = actor.may_grant("sys:user:del", "role 'x'").unwrap_err();
        assert_eq!(refused.status(), 403);
        assert!(refused.to_string().contains("'sys:user:del'"));
        assert!(actor.may_touch_superuser("root").is_err());
        assert!(Actor::Operator.may_touch_superuser("root").is_ok());
        assert!(actor.is(7) && !Actor::Operator.is(7));
    }
}
