//! `GET /metrics`: every metric in Prometheus' text format. On the main
//! port it needs a bearer token holding `sys:metrics:read` (Prometheus'
//! `authorization` setting); with `PLUGHOST_METRICS_BIND` it is served on
//! that address only, without a token, and the main port answers 404.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};

use super::{
    AppState,
    auth::authorization,
    envelope::{self, ApiError},
};
use crate::plugin::PluginHost;

/// The permission a scraper's token needs on the main port.
pub const PERMISSION: &str = "sys:metrics:read";

/// The metrics as Prometheus text, with the per-plugin gauges set as of
/// now and the series of isolated plugins' children.
async fn scrape(plugins: &PluginHost) -> HttpResponse {
    for (name, enabled, revision) in plugins.flag_states() {
        crate::observe::plugin_state(&name, enabled, revision);
    }
    let Some(ours) = crate::observe::render() else {
        return envelope::error(
            StatusCode::NOT_FOUND,
            "metrics are off on this instance (PLUGHOST_METRICS=false)",
        );
    };
    let children = plugins.isolated_metrics().await;
    let text = if children.is_empty() {
        ours
    } else {
        crate::observe::merge(&ours, &children)
    };
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

/// `GET /metrics` on the main port.
#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Prometheus metrics",
    tag = "host",
    description = "Every metric in Prometheus' text format. Needs a token holding `sys:metrics:read`; \
                   answers 404 when metrics are off or served on PLUGHOST_METRICS_BIND instead.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition format 0.0.4", content_type = "text/plain", body = String),
        (status = "default", description = "No valid token (401), no permission (403), served elsewhere or off (404)", body = super::openapi::ErrorEnvelope),
    ),
)]
pub(crate) async fn metrics(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Some(address) = state.metrics_bind {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("metrics are served on http://{address}/metrics (PLUGHOST_METRICS_BIND)"),
        ));
    }
    let (principal, _, _) = state.auth.authenticate(authorization(&req)).await?;
    principal.require(PERMISSION)?;
    Ok(scrape(&state.plugins).await)
}

/// `GET /metrics` on `PLUGHOST_METRICS_BIND`: no token (that address is
/// the operator's to protect).
pub(crate) async fn open_metrics(plugins: web::Data<PluginHost>) -> HttpResponse {
    scrape(&plugins).await
}
