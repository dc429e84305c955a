//! `/admin/v1/sys/users` and `/admin/v1/sys/roles`: users and roles over
//! HTTP, with the rules of the CLI commands (`crate::auth::manage`) and
//! `sys:user:*` / `sys:role:*` permissions.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Deserializer};

use super::{
    AppState,
    auth::caller,
    envelope::{ApiError, ok},
    openapi::{Envelope, ErrorEnvelope, Null},
};
use crate::auth::{Actor, NewUser, RoleInfo, UserChange, UserFilter, UserInfo, UserPage};

/// Users a page holds at most.
const MAX_PAGE_SIZE: u64 = 200;
/// The last page a list goes to.
const MAX_PAGE: u64 = 1_000_000;
/// A user or role name.
const NAME: &str = "^[A-Za-z0-9_.-]{1,64}$";
/// A permission string.
const PERMISSION: &str = "^[A-Za-z0-9_-]+(:[A-Za-z0-9_-]+)*$";
/// A mail address as the host takes it: no blank or control character,
/// one `@`, a dot inside the domain.
const EMAIL: &str = "^[^@\\x00-\\x20\\x7f-\\x9f]+@[^@.\\x00-\\x20\\x7f-\\x9f][^@\\x00-\\x20\\x7f-\\x9f]*\\.[^@\\x00-\\x20\\x7f-\\x9f]*[^@.\\x00-\\x20\\x7f-\\x9f]$";
/// A nickname: something not blank, no control character.
const NICKNAME: &str =
    "^[^\\x00-\\x1f\\x7f-\\x9f]*[^\\x00-\\x20\\x7f-\\x9f][^\\x00-\\x1f\\x7f-\\x9f]*$";

/// A list of strings matching `pattern` (of at most `max` characters each).
fn strings(pattern: &str, max: usize) -> utoipa::openapi::schema::ArrayBuilder {
    utoipa::openapi::schema::ArrayBuilder::new().items(
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(pattern))
            .max_length(Some(max)),
    )
}

/// A string matching `pattern` (of at most `max` characters), or null.
fn nullable(pattern: &str, max: usize) -> utoipa::openapi::ObjectBuilder {
    use utoipa::openapi::schema::{SchemaType, Type};
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::String, Type::Null]))
        .pattern(Some(pattern))
        .max_length(Some(max))
}

fn nickname_schema() -> utoipa::openapi::ObjectBuilder {
    nullable(NICKNAME, 64)
}

fn email_schema() -> utoipa::openapi::ObjectBuilder {
    nullable(EMAIL, 255)
}

fn role_names() -> utoipa::openapi::schema::ArrayBuilder {
    strings(NAME, 64)
}

fn permission_strings() -> utoipa::openapi::schema::ArrayBuilder {
    strings(PERMISSION, 128)
}

/// A field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(deserializer).map(Some)
}

/// The query of the user list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserQuery {
    /// The page, from 1 (default 1).
    #[param(minimum = 1, maximum = 1_000_000)]
    page: Option<u64>,
    /// Users per page, 1 to 200 (default 20).
    #[param(minimum = 1, maximum = 200)]
    size: Option<u64>,
    /// Only users whose login name contains this.
    username: Option<String>,
    /// Only active (1) or disabled (0) users.
    #[param(minimum = 0, maximum = 1)]
    status: Option<i16>,
}

/// A user to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddUser {
    /// Login name: 1 to 64 letters, digits, `_`, `-`, `.`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    username: String,
    /// Password, 8 to 1024 characters.
    #[schema(min_length = 8, max_length = 1024)]
    password: String,
    /// Role names (each must exist; you must hold every permission they carry).
    #[serde(default)]
    #[schema(schema_with = role_names)]
    roles: Vec<String>,
    /// Passes every permission check (only a superuser may create one).
    #[serde(default)]
    superuser: bool,
    /// Display name: 1 to 64 characters, not all blank, no control character.
    #[schema(schema_with = nickname_schema)]
    nickname: Option<String>,
    /// Mail address (name@domain.tld).
    #[schema(schema_with = email_schema)]
    email: Option<String>,
}

/// What to change of a user: the fields given (`null` clears a nickname
/// or mail address).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpdateUser {
    /// A new login name.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    username: Option<String>,
    /// A new password (tokens issued before are refused); not your own.
    #[schema(min_length = 8, max_length = 1024)]
    password: Option<String>,
    /// Superuser or not (only a superuser may change it; not your own).
    superuser: Option<bool>,
    /// Display name (`null` clears it).
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = nickname_schema)]
    nickname: Option<Option<String>>,
    /// Mail address (`null` clears it).
    #[serde(default, deserialize_with = "present")]
    #[schema(schema_with = email_schema)]
    email: Option<Option<String>>,
}

/// A user's status.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserStatus {
    /// 1 enabled, 0 disabled (no login; every token issued before is refused for good).
    #[schema(value_type = i16, minimum = 0, maximum = 1)]
    status: serde_json::Number,
}

/// A user's roles.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct UserRoles {
    /// Role names: the user's roles from now on.
    #[schema(schema_with = role_names)]
    roles: Vec<String>,
}

/// A role to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct AddRole {
    /// Name: 1 to 64 letters, digits, `_`, `-`, `.`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    name: String,
}

/// A role's permissions.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RolePermissions {
    /// Permission strings (`sys:dict:add`): the role's permissions from now on.
    #[schema(schema_with = permission_strings)]
    permissions: Vec<String>,
}

/// The user `pk` names: the user with that id when it is a number and
/// one has it, else the user with that login name.
async fn user_key(state: &AppState, pk: &str) -> Result<i64, ApiError> {
    if let Ok(id) = pk.parse::<i64>() {
        match state.auth.user(id).await {
            Ok(_) => return Ok(id),
            Err(crate::auth::AuthError::Unknown(message)) => {
                // A name of digits, or nobody: the id's answer when nobody.
                return state
                    .auth
                    .user_id(pk)
                    .await
                    .map_err(|_| crate::auth::AuthError::Unknown(message).into());
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(state.auth.user_id(pk).await?)
}

/// The caller as an actor, once it holds `permission`.
fn actor_with(req: &HttpRequest, permission: &str) -> Result<super::auth::Caller, ApiError> {
    let caller = caller(req)?;
    caller.principal.require(permission)?;
    Ok(caller)
}

/// `GET /admin/v1/sys/users`: a page of users.
#[utoipa::path(
    get,
    path = "/admin/v1/sys/users",
    summary = "List users, a page at a time",
    tag = "users",
    description = "Users by id, with their roles. Needs `sys:user:list`.",
    params(UserQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "A page of users", body = Envelope<UserPage>),
        (status = "default", description = "A bad page or size (422), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn list(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<UserQuery>,
) -> Result<HttpResponse, ApiError> {
    actor_with(&req, "sys:user:list")?;
    let query = query.into_inner();
    let page = query.page.unwrap_or(1);
    let size = query.size.unwrap_or(20);
    if !(1..=MAX_PAGE).contains(&page) || !(1..=MAX_PAGE_SIZE).contains(&size) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "page is 1 to {MAX_PAGE} and size is 1 to {MAX_PAGE_SIZE} (got page {page}, size {size})"
            ),
        ));
    }
    if query.status.is_some_and(|s| !(0..=1).contains(&s)) {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            "status is 1 (active) or 0 (disabled)",
        ));
    }
    let filter = UserFilter {
        username: query.username,
        status: query.status,
    };
    Ok(ok(state.auth.users_page(&filter, page, size).await?))
}

/// `POST /admin/v1/sys/users`: creates a user.
#[utoipa::path(
    post,
    path = "/admin/v1/sys/users",
    summary = "Create a user",
    tag = "users",
    description = "Needs `sys:user:add`; you may give only roles whose permissions you hold, and only a superuser creates a superuser.",
    request_body = AddUser,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user created", body = Envelope<UserInfo>),
        (status = "default", description = "A bad name, password, nickname or address, or an unknown role (422), the name taken (409), no permission or a grant you may not make (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn create(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<AddUser>,
) -> Result<HttpResponse, ApiError> {
    let caller = actor_with(&req, "sys:user:add")?;
    let body = body.into_inner();
    let new = NewUser {
        username: body.username,
        password: body.password,
        roles: body.roles,
        superuser: body.superuser,
        nickname: body.nickname,
        email: body.email,
    };
    let id = state
        .auth
        .create_user(new, Actor::User(&caller.principal))
        .await?;
    Ok(ok(state.auth.user(id).await?))
}

/// `GET /admin/v1/sys/users/{pk}`: one user.
#[utoipa::path(
    get,
    path = "/admin/v1/sys/users/{pk}",
    summary = "Get a user",
    tag = "users",
    description = "Needs `sys:user:list`.",
    params(("pk" = String, Path, description = "The user's id, or its login name (a number names the user with that id if there is one)", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user", body = Envelope<UserInfo>),
        (status = "default", description = "No such user (404), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn get(
    state: web::Data<AppState>,
    req: HttpRequest,
    pk: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    actor_with(&req, "sys:user:list")?;
    let id = user_key(&state, &pk).await?;
    Ok(ok(state.auth.user(id).await?))
}

/// `PUT /admin/v1/sys/users/{pk}`: changes a user.
#[utoipa::path(
    put,
    path = "/admin/v1/sys/users/{pk}",
    summary = "Change a user",
    tag = "users",
    description = "Sets the fields given. A new password refuses the user's older tokens on every instance. Needs `sys:user:edit`; only a superuser changes a superuser, and nobody their own password or superuser flag here.",
    params(("pk" = String, Path, description = "The user's id, or its login name (a number names the user with that id if there is one)", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    request_body = UpdateUser,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user as it is now", body = Envelope<UserInfo>),
        (status = "default", description = "A bad field (422), no such user (404), the name taken or your own account (409), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn update(
    state: web::Data<AppState>,
    req: HttpRequest,
    pk: web::Path<String>,
    body: web::Json<UpdateUser>,
) -> Result<HttpResponse, ApiError> {
    let caller = actor_with(&req, "sys:user:edit")?;
    let body = body.into_inner();
    let change = UserChange {
        username: body.username,
        password: body.password,
        superuser: body.superuser,
        nickname: body.nickname,
        email: body.email,
    };
    let user = state
        .auth
        .update_user(
            user_key(&state, &pk).await?,
            change,
            Actor::User(&caller.principal),
        )
        .await?;
    Ok(ok(user))
}

/// `DELETE /admin/v1/sys/users/{pk}`: deletes a user.
#[utoipa::path(
    delete,
    path = "/admin/v1/sys/users/{pk}",
    summary = "Delete a user",
    tag = "users",
    description = "Its tokens are refused on every instance at once. Needs `sys:user:del`; only a superuser deletes a superuser, and nobody their own account.",
    params(("pk" = String, Path, description = "The user's id, or its login name (a number names the user with that id if there is one)", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = Envelope<Null>),
        (status = "default", description = "No such user (404), your own account (409), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn delete(
    state: web::Data<AppState>,
    req: HttpRequest,
    pk: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let caller = actor_with(&req, "sys:user:del")?;
    state
        .auth
        .delete_user(user_key(&state, &pk).await?, Actor::User(&caller.principal))
        .await?;
    Ok(ok(serde_json::Value::Null))
}

/// `PUT /admin/v1/sys/users/{pk}/status`: disables or enables a user.
#[utoipa::path(
    put,
    path = "/admin/v1/sys/users/{pk}/status",
    summary = "Disable or enable a user",
    tag = "users",
    description = "A disabled user cannot log in, and every token issued before is refused on every instance, also after it is enabled again. Needs `sys:user:edit`.",
    params(("pk" = String, Path, description = "The user's id, or its login name (a number names the user with that id if there is one)", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    request_body = UserStatus,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user as it is now", body = Envelope<UserInfo>),
        (status = "default", description = "A status not 0 or 1 (422), no such user (404), your own account (409), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn status(
    state: web::Data<AppState>,
    req: HttpRequest,
    pk: web::Path<String>,
    body: web::Json<UserStatus>,
) -> Result<HttpResponse, ApiError> {
    let caller = actor_with(&req, "sys:user:edit")?;
    // A whole number written either way (`1`, `1.0`) is the same status.
    let status = body.status.as_f64().unwrap_or(f64::NAN);
    if status != 0.0 && status != 1.0 {
        return Err(ApiError::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("status is 1 (enabled) or 0 (disabled), not {}", body.status),
        ));
    }
    let active = status == 1.0;
    let id = user_key(&state, &pk).await?;
    state
        .auth
        .set_status(id, active, Actor::User(&caller.principal))
        .await?;
    Ok(ok(state.auth.user(id).await?))
}

/// `PUT /admin/v1/sys/users/{pk}/roles`: sets a user's roles.
#[utoipa::path(
    put,
    path = "/admin/v1/sys/users/{pk}/roles",
    summary = "Set a user's roles",
    tag = "users",
    description = "The roles given become the user's roles; tokens in use get the new permissions on every instance. Needs `sys:user:edit`; you may add only roles whose permissions you hold.",
    params(("pk" = String, Path, description = "The user's id, or its login name (a number names the user with that id if there is one)", pattern = "^[A-Za-z0-9_.-]{1,64}$")),
    request_body = UserRoles,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The user as it is now", body = Envelope<UserInfo>),
        (status = "default", description = "No such user (404), an unknown role (422), no permission or a grant you may not make (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn roles(
    state: web::Data<AppState>,
    req: HttpRequest,
    pk: web::Path<String>,
    body: web::Json<UserRoles>,
) -> Result<HttpResponse, ApiError> {
    let caller = actor_with(&req, "sys:user:edit")?;
    let id = user_key(&state, &pk).await?;
    state
        .auth
        .replace_roles(id, &body.roles, Actor::User(&caller.principal))
        .await?;
    Ok(ok(state.auth.user(id).await?))
}

/// `GET /admin/v1/sys/roles`: every role.
#[utoipa::path(
    get,
    path = "/admin/v1/sys/roles",
    summary = "List roles",
    tag = "users",
    description = "Every role with its permissions and how many users hold it, by name. Needs `sys:role:list`.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The roles", body = Envelope<Vec<RoleInfo>>),
        (status = "default", description = "No permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn list_roles(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    actor_with(&req, "sys:role:list")?;
    Ok(ok(state.auth.roles().await?))
}

/// `POST /admin/v1/sys/roles`: creates a role.
#[utoipa::path(
    post,
    path = "/admin/v1/sys/roles",
    summary = "Create a role",
    tag = "users",
    description = "A role without permissions; give it some with `PUT /admin/v1/sys/roles/{name}/permissions`. Needs `sys:role:add`.",
    request_body = AddRole,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The role created", body = Envelope<RoleInfo>),
        (status = "default", description = "A bad name (422), the name taken (409), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn create_role(
    state: web::Data<AppState>,
    req: HttpRequest,
    body: web::Json<AddRole>,
) -> Result<HttpResponse, ApiError> {
    actor_with(&req, "sys:role:add")?;
    state.auth.add_role(&body.name).await?;
    Ok(ok(state.auth.role(&body.name).await?))
}

/// `PUT /admin/v1/sys/roles/{name}/permissions`: sets a role's permissions.
#[utoipa::path(
    put,
    path = "/admin/v1/sys/roles/{name}/permissions",
    summary = "Set a role's permissions",
    tag = "users",
    description = "The permissions given become the role's; tokens in use get them on every instance. Needs `sys:role:edit`; you may add only permissions you hold.",
    params(("name" = String, Path, description = "The role's name")),
    request_body = RolePermissions,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The role as it is now", body = Envelope<RoleInfo>),
        (status = "default", description = "A string that is not a permission (422), no such role (404), no permission or a grant you may not make (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn permissions(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
    body: web::Json<RolePermissions>,
) -> Result<HttpResponse, ApiError> {
    let caller = actor_with(&req, "sys:role:edit")?;
    let name = name.into_inner();
    state
        .auth
        .replace_permissions(&name, &body.permissions, Actor::User(&caller.principal))
        .await?;
    Ok(ok(state.auth.role(&name).await?))
}

/// `DELETE /admin/v1/sys/roles/{name}`: deletes a role.
#[utoipa::path(
    delete,
    path = "/admin/v1/sys/roles/{name}",
    summary = "Delete a role",
    tag = "users",
    description = "Its holders lose its permissions on every instance at once. Needs `sys:role:del`.",
    params(("name" = String, Path, description = "The role's name")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Deleted", body = Envelope<Null>),
        (status = "default", description = "No such role (404), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn delete_role(
    state: web::Data<AppState>,
    req: HttpRequest,
    name: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    actor_with(&req, "sys:role:del")?;
    state.auth.delete_role(&name.into_inner()).await?;
    Ok(ok(serde_json::Value::Null))
}

/// The permission strings an operator can grant.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct KnownPermissions {
    /// The host's own routes'.
    core: Vec<&'static str>,
    /// Each serving plugin's: its routes' and those its manifest defines.
    plugins: std::collections::BTreeMap<String, Vec<String>>,
}

/// `GET /admin/v1/sys/permissions`: every permission string in use.
#[utoipa::path(
    get,
    path = "/admin/v1/sys/permissions",
    summary = "List the permissions there are to grant",
    tag = "users",
    description = "The host's own permission strings and each serving plugin's (its routes' and those its manifest defines under `[permissions] defines`), to give roles with `PUT /admin/v1/sys/roles/{name}/permissions`. Needs `sys:role:list`.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The permissions, by owner", body = Envelope<KnownPermissions>),
        (status = "default", description = "No permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn known_permissions(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    actor_with(&req, "sys:role:list")?;
    Ok(ok(KnownPermissions {
        core: crate::auth::CORE_PERMISSIONS.to_vec(),
        plugins: state.plugins.permissions(),
    }))
}
