//! `/admin/v1/sys/plugins`: list, changed, status toggle, install,
//! uninstall, download.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use futures_util::StreamExt;

use super::{
    AppState,
    auth::caller,
    envelope::{ApiError, ok, ok_saying},
    limits::{declared_length, payload_status},
    openapi::{Envelope, ErrorEnvelope},
};
use crate::plugin::lifecycle::InstallOptions;

/// One plugin in the list (this describes the JSON `PluginHost::list`
/// builds): the manifest as FBA keeps it (`plugin` with `name` and
/// `enable` added, `app`, `api`, `settings`) and what the host adds.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct PluginEntry {
    /// `[plugin]` of the manifest, with `name` and `enable` ("1"/"0").
    #[schema(value_type = Object)]
    plugin: serde_json::Value,
    /// `loaded`, `disabled`, `error` or `absent` (in the cluster's set but
    /// not on this instance).
    state: String,
    /// Why it is not served, when it is not.
    error: Option<String>,
    /// Whether it is local to this instance (not a package of the cluster's set).
    local: bool,
    /// Where it is in the plugin dir.
    path: Option<String>,
    /// Whether another loaded plugin depends on it.
    required: Option<bool>,
    /// The revision of its flag.
    revision: Option<i64>,
    /// What every instance reports for it.
    instances: Vec<crate::plugin::running::report::InstanceState>,
    /// Its entry in the cluster's set, if it has one.
    package: Option<crate::plugin::lifecycle::desired::Desired>,
    /// What it may ask of the identity service (`[permissions] identity`).
    identity: Option<Vec<String>>,
    /// Its access hooks: `authenticate`, `authorize`.
    access_hooks: Option<Vec<String>>,
}

/// Runs a plugin operation of `kind`, counting it by outcome and timing it.
async fn timed<T, E>(
    kind: &'static str,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = operation.await;
    crate::observe::lifecycle(kind, result.is_ok(), started.elapsed());
    result
}

/// `GET /admin/v1/sys/plugins`: every plugin found, sorted by name.
#[utoipa::path(
    get,
    path = "/admin/v1/sys/plugins",
    summary = "List every plugin",
    tag = "plugins",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every plugin found on this instance or in the cluster's set, by name", body = Envelope<Vec<PluginEntry>>),
        (status = "default", description = "No valid token (401)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn list(state: web::Data<AppState>) -> HttpResponse {
    ok(state.plugins.list().await)
}

/// `GET /admin/v1/sys/plugins/changed`: whether a restart would change
/// anything (it reads and hashes the plugin dir's libraries: off the workers).
#[utoipa::path(
    get,
    path = "/admin/v1/sys/plugins/changed",
    summary = "Whether a restart would change what is served",
    tag = "plugins",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Whether the plugin dir differs from what this instance serves (a restart would change something)", body = Envelope<bool>),
        (status = "default", description = "No valid token (401)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn changed(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let plugins = state.plugins.clone();
    web::block(move || plugins.changed())
        .await
        .map(ok)
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot compare the plugin dir: {e}"),
            )
        })
}

/// `GET /admin/v1/sys/plugin-catalog`: what the configured catalogs
/// offer, with the versions installed here and the upgrades on offer.
#[utoipa::path(
    get,
    path = "/admin/v1/sys/plugin-catalog",
    summary = "The plugins the configured catalogs offer",
    tag = "plugins",
    description = "Reads every catalog of `PLUGHOST_CATALOG` (its index checked against the trusted keys) and lists each plugin once: its newest compatible version, every version offered, the version installed here and a newer compatible version on offer. A catalog that cannot be read is listed with the reason.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The catalogs and what they offer", body = Envelope<crate::plugin::lifecycle::catalog::Listing>),
        (status = "default", description = "No catalog configured (404), no valid token (401)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn catalog(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let listing = state
        .plugins
        .catalog()
        .await
        .map_err(crate::plugin::lifecycle::LifecycleError::from)?;
    Ok(ok(listing))
}

/// What a toggle answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Toggled {
    /// The plugin.
    name: String,
    /// Its flag now: "1" enabled, "0" disabled.
    #[schema(pattern = "^[01]$")]
    enable: &'static str,
}

/// `GET /admin/v1/sys/plugin-build`: the Git install build running on
/// this instance, or the last one (one runs at a time).
#[utoipa::path(
    get,
    path = "/admin/v1/sys/plugin-build",
    summary = "The output of the Git install build on this instance",
    tag = "plugins",
    description = "What cargo printed so far in the build of a Git install on this instance (the plugin page shows it while an install from Git runs).",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The running or last build", body = Envelope<crate::plugin::lifecycle::git::BuildProgress>),
        (status = "default", description = "No valid token (401)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn build() -> HttpResponse {
    ok(crate::plugin::lifecycle::git::build_progress())
}

/// `PUT /admin/v1/sys/plugins/{plugin}/status`: flips the enable flag
/// (permission `sys:plugin:edit`).
#[utoipa::path(
    put,
    path = "/admin/v1/sys/plugins/{plugin}/status",
    summary = "Enable or disable a plugin",
    tag = "plugins",
    description = "Flips the plugin's enable flag on every instance. Needs `sys:plugin:edit`.",
    params(("plugin" = String, Path, description = "The plugin's name", pattern = "^[a-z][a-z0-9_]{0,63}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The flag as it is now", body = Envelope<Toggled>),
        (status = "default", description = "No such plugin (404), no permission (403), Redis down (503)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn toggle(
    state: web::Data<AppState>,
    req: HttpRequest,
    plugin: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller(&req)?.principal.require("sys:plugin:edit")?;
    let name = plugin.into_inner();
    let enabled = timed("toggle", state.plugins.toggle(&name)).await?;
    Ok(ok(Toggled {
        name,
        enable: if enabled { "1" } else { "0" },
    }))
}

/// The query of `POST /admin/v1/sys/plugins`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct InstallQuery {
    /// `zip` (the package in the multipart field `file`), `git` or
    /// `catalog` (with `name`).
    #[serde(rename = "type")]
    #[param(rename = "type", value_type = String, pattern = "^(zip|git|catalog)$")]
    kind: Option<String>,
    /// With `type=catalog`: the plugin to install or upgrade.
    name: Option<String>,
    /// With `type=catalog`: the version (default: the newest compatible one).
    version: Option<String>,
    /// With `type=git`: an https:// URL of an allowed host.
    repo_url: Option<String>,
    /// With `type=git`: a branch, tag or commit (default: the default branch).
    #[serde(rename = "ref")]
    #[param(rename = "ref")]
    git_ref: Option<String>,
    /// Replace an installed older version.
    #[serde(default)]
    upgrade: bool,
    /// Allow the same or an older version.
    #[serde(default)]
    force: bool,
}

/// The upload of `POST /admin/v1/sys/plugins?type=zip`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct Upload {
    /// The plugin package (a ZIP: `<name>/plugin.toml`, the library, `sql/`, README).
    #[schema(content_media_type = "application/zip")]
    file: Vec<u8>,
}

/// Reads the multipart field `file`, refusing more than `limit` bytes.
async fn read_upload(
    req: &HttpRequest,
    payload: web::Payload,
    limit: u64,
) -> Result<Vec<u8>, ApiError> {
    // The form around the package is small; a declared length beyond the
    // package limit and that slack is refused before reading.
    if let Some(length) = declared_length(req).filter(|l| *l > limit.saturating_add(64 * 1024)) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the upload of {length} bytes is larger than the limit of {limit} bytes for a package (PLUGHOST_MAX_PACKAGE)"
            ),
        ));
    }
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, m);
    let unreadable = |e: actix_multipart::MultipartError| match &e {
        actix_multipart::MultipartError::Payload(p) => ApiError::new(
            payload_status(p),
            format!("the upload could not be read: {p}"),
        ),
        _ => bad(format!("the upload could not be read: {e}")),
    };
    let mut form = actix_multipart::Multipart::new(req.headers(), payload);
    while let Some(field) = form.next().await {
        let mut field = field.map_err(|e| match &e {
            actix_multipart::MultipartError::Payload(_) => unreadable(e),
            _ => bad(format!(
                "expected a multipart/form-data upload with the package in the field 'file' ({e})"
            )),
        })?;
        if field.name() != Some("file") {
            while let Some(chunk) = field.next().await {
                chunk.map_err(unreadable)?;
            }
            continue;
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(unreadable)?;
            if (bytes.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "the package is larger than the limit of {limit} bytes (PLUGHOST_MAX_PACKAGE)"
                    ),
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        return Ok(bytes);
    }
    Err(bad(
        "the multipart field 'file' with the plugin package is missing".into(),
    ))
}

/// `POST /admin/v1/sys/plugins?type=zip` (multipart field `file`) or
/// `?type=git&repo_url=…[&ref=…]`, with `upgrade=true` to replace an
/// installed version and `force=true` to allow an older or the same one
/// (permission `sys:plugin:install`).
#[utoipa::path(
    post,
    path = "/admin/v1/sys/plugins",
    summary = "Install or upgrade a plugin (ZIP upload or Git)",
    tag = "plugins",
    description = "Installs or upgrades a plugin on every instance, without a restart. Needs `sys:plugin:install`.",
    params(InstallQuery),
    request_body(content = Option<Upload>, content_type = "multipart/form-data", description = "With `type=zip`: the package"),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Installed and serving", body = Envelope<crate::plugin::lifecycle::Installed>),
        (status = "default", description = "A bad package or source (400, 413, 422), installed already (409), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn install(
    state: web::Data<AppState>,
    req: HttpRequest,
    query: web::Query<InstallQuery>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let caller = caller(&req)?;
    caller.principal.require("sys:plugin:install")?;
    let query = query.into_inner();
    let options = InstallOptions {
        upgrade: query.upgrade,
        force: query.force,
        installed_by: caller.principal.username.clone(),
        ..InstallOptions::default()
    };
    let kind = if query.upgrade { "upgrade" } else { "install" };
    let installed = match query.kind.as_deref() {
        Some("zip") => {
            let archive = read_upload(&req, payload, state.plugins.package_limit()).await?;
            timed(kind, state.plugins.install_zip(archive, &options)).await?
        }
        Some("git") => {
            let url = query.repo_url.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "type=git needs repo_url (an https:// URL of an allowed host)",
                )
            })?;
            timed(
                kind,
                state
                    .plugins
                    .install_git(&url, query.git_ref.as_deref(), &options),
            )
            .await?
        }
        Some("catalog") => {
            let name = query.name.filter(|n| !n.is_empty()).ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "type=catalog needs name (the plugin to install from the configured catalogs)",
                )
            })?;
            let kind = if state.plugins.is_installed(&name) {
                "upgrade"
            } else {
                kind
            };
            timed(
                kind,
                state
                    .plugins
                    .install_from_catalog(&name, query.version.as_deref(), &options),
            )
            .await?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "type must be 'zip' (multipart field 'file'), 'git' (with repo_url) or 'catalog' (with name), not {}",
                    other.map_or("missing".into(), |o| format!("'{o}'"))
                ),
            ));
        }
    };
    let msg = match &installed.previous {
        Some(previous) => format!(
            "plugin '{}' upgraded from {previous} to {}; its routes are live, no restart needed",
            installed.name, installed.version
        ),
        None => format!(
            "plugin '{}' {} installed; its routes are live, no restart needed",
            installed.name, installed.version
        ),
    };
    Ok(ok_saying(&msg, installed))
}

/// The query of `DELETE /admin/v1/sys/plugins/{plugin}`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct UninstallQuery {
    /// Also drop the plugin's tables (its uninstall script).
    #[serde(default)]
    purge: bool,
}

/// `DELETE /admin/v1/sys/plugins/{plugin}[?purge=true]` (permission
/// `sys:plugin:uninstall`, dev environment only).
#[utoipa::path(
    delete,
    path = "/admin/v1/sys/plugins/{plugin}",
    summary = "Uninstall a plugin",
    tag = "plugins",
    description = "Uninstalls a plugin from every instance, keeping a backup. Needs `sys:plugin:uninstall`; refused when `environment` is `prod`.",
    params(("plugin" = String, Path, description = "The plugin's name", pattern = "^[a-z][a-z0-9_]{0,63}$"), UninstallQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Uninstalled; its routes are gone", body = Envelope<crate::plugin::lifecycle::Uninstalled>),
        (status = "default", description = "No such plugin (404), another plugin depends on it (409), no permission (403)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn uninstall(
    state: web::Data<AppState>,
    req: HttpRequest,
    plugin: web::Path<String>,
    query: web::Query<UninstallQuery>,
) -> Result<HttpResponse, ApiError> {
    caller(&req)?.principal.require("sys:plugin:uninstall")?;
    let done = timed("uninstall", state.plugins.uninstall(&plugin, query.purge)).await?;
    let msg = format!(
        "plugin '{}' uninstalled; its routes are gone; backup: {}{}",
        done.name,
        done.backup_text(),
        if done.purged {
            "; its tables were dropped"
        } else {
            ""
        }
    );
    Ok(ok_saying(&msg, done))
}

/// `GET /admin/v1/sys/plugins/{plugin}`: the plugin as an installable ZIP.
#[utoipa::path(
    get,
    path = "/admin/v1/sys/plugins/{plugin}",
    summary = "Download a plugin as a package",
    tag = "plugins",
    params(("plugin" = String, Path, description = "The plugin's name", pattern = "^[a-z][a-z0-9_]{0,63}$")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The plugin as a package, installable elsewhere", content_type = "application/x-zip-compressed", body = Vec<u8>),
        (status = "default", description = "No such plugin (404)", body = ErrorEnvelope),
    ),
)]
pub(crate) async fn download(
    state: web::Data<AppState>,
    plugin: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let name = plugin.into_inner();
    let plugins = state.plugins.clone();
    let bytes = {
        let name = name.clone();
        web::block(move || plugins.pack(&name))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))??
    };
    Ok(HttpResponse::Ok()
        .content_type("application/x-zip-compressed")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename={name}.zip"),
        ))
        .body(bytes))
}
