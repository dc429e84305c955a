//! `/admin/v1/sys/plugins`: list, changed, status toggle.

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::{
    AppState,
    auth::caller,
    envelope::{ApiError, ok},
};

/// `GET /admin/v1/sys/plugins`: every plugin found, sorted by name.
pub(crate) async fn list(state: web::Data<AppState>) -> HttpResponse {
    ok(state.plugins.list())
}

/// `GET /admin/v1/sys/plugins/changed`: whether a restart would change anything.
pub(crate) async fn changed(state: web::Data<AppState>) -> HttpResponse {
    ok(state.plugins.changed())
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
