//! `/admin/v1/sys/plugins`: list, changed, status toggle, install,
//! uninstall, download.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use futures_util::StreamExt;
use serde_json::json;

use super::{
    AppState,
    auth::caller,
    envelope::{ApiError, ok, ok_saying},
    limits::{declared_length, payload_status},
};
use crate::plugin::lifecycle::InstallOptions;

/// `GET /admin/v1/sys/plugins`: every plugin found, sorted by name.
pub(crate) async fn list(state: web::Data<AppState>) -> HttpResponse {
    ok(state.plugins.list().await)
}

/// `GET /admin/v1/sys/plugins/changed`: whether a restart would change
/// anything (it reads and hashes the plugin dir's libraries: off the workers).
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

/// `PUT /admin/v1/sys/plugins/{plugin}/status`: flips the enable flag
/// (permission `sys:plugin:edit`).
pub(crate) async fn toggle(
    state: web::Data<AppState>,
    req: HttpRequest,
    plugin: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    caller(&req)?.principal.require("sys:plugin:edit")?;
    let name = plugin.into_inner();
    let enabled = state.plugins.toggle(&name).await?;
    Ok(ok(json!({
        "name": name,
        "enable": if enabled { "1" } else { "0" },
    })))
}

/// The query of `POST /admin/v1/sys/plugins`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct InstallQuery {
    #[serde(rename = "type")]
    kind: Option<String>,
    repo_url: Option<String>,
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    #[serde(default)]
    upgrade: bool,
    #[serde(default)]
    force: bool,
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
    let installed = match query.kind.as_deref() {
        Some("zip") => {
            let archive = read_upload(&req, payload, state.plugins.package_limit()).await?;
            state.plugins.install_zip(archive, &options).await?
        }
        Some("git") => {
            let url = query.repo_url.ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "type=git needs repo_url (an https:// URL of an allowed host)",
                )
            })?;
            state
                .plugins
                .install_git(&url, query.git_ref.as_deref(), &options)
                .await?
        }
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "type must be 'zip' (multipart field 'file') or 'git' (with repo_url), not {}",
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
#[derive(Debug, serde::Deserialize)]
pub(crate) struct UninstallQuery {
    #[serde(default)]
    purge: bool,
}

/// `DELETE /admin/v1/sys/plugins/{plugin}[?purge=true]` (permission
/// `sys:plugin:uninstall`, dev environment only).
pub(crate) async fn uninstall(
    state: web::Data<AppState>,
    req: HttpRequest,
    plugin: web::Path<String>,
    query: web::Query<UninstallQuery>,
) -> Result<HttpResponse, ApiError> {
    caller(&req)?.principal.require("sys:plugin:uninstall")?;
    let done = state.plugins.uninstall(&plugin, query.purge).await?;
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
