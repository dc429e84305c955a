//! HTTP: app assembly, the envelope, the plugin dispatcher, core routes.

mod baseline;
pub mod dispatch;
pub mod envelope;
mod plugins;

use std::sync::Arc;

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer, error::InternalError, http::StatusCode, web,
};

use crate::{
    config::Settings,
    plugin::{PluginHost, router::Scope},
};
use dispatch::StatusCheck;

/// What every handler shares.
pub struct AppState {
    /// The plugin system.
    pub plugins: Arc<PluginHost>,
    /// Whether the status gate runs.
    pub status_check: StatusCheck,
    /// Largest request body for plugin routes.
    pub max_body: usize,
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    envelope::error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{} is not allowed on {}", req.method(), req.path()),
    )
}

async fn health() -> HttpResponse {
    envelope::ok(serde_json::json!({ "status": "ok" }))
}

fn extractor_error(message: String) -> actix_web::Error {
    InternalError::from_response(
        message.clone(),
        envelope::error(StatusCode::BAD_REQUEST, &message),
    )
    .into()
}

/// Registers every route of the host on an app.
pub fn configure(cfg: &mut web::ServiceConfig, bench_baseline: bool) {
    cfg.app_data(
        web::PathConfig::default()
            .error_handler(|e, req| extractor_error(format!("invalid path {}: {e}", req.path()))),
    )
    .app_data(
        web::QueryConfig::default()
            .error_handler(|e, _| extractor_error(format!("invalid query string: {e}"))),
    )
    .service(
        web::resource("/health")
            .route(web::get().to(health))
            .default_service(web::to(method_not_allowed)),
    )
    .service(
        web::scope("/admin/v1")
            .service(
                web::resource("/sys/plugins")
                    .route(web::get().to(plugins::list))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/sys/plugins/changed")
                    .route(web::get().to(plugins::changed))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/sys/plugins/{plugin}/status")
                    .route(web::put().to(plugins::toggle))
                    .default_service(web::to(method_not_allowed)),
            )
            .default_service(dispatch::service(Scope::Admin)),
    );
    if bench_baseline {
        cfg.route("/native/hello/v1/greet", web::get().to(baseline::greet));
    }
    cfg.default_service(dispatch::service(Scope::App));
}

/// Loads the plugins and serves until SIGINT/SIGTERM; in-flight requests
/// get `shutdown_timeout` to finish.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    let plugins = PluginHost::start(&settings)?;
    let state = web::Data::new(AppState {
        plugins,
        status_check: settings.status_check,
        max_body: settings.max_body,
    });
    let bench_baseline = settings.bench_baseline;
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .configure(|cfg| configure(cfg, bench_baseline))
    })
    .workers(settings.workers)
    .shutdown_timeout(settings.shutdown_timeout.as_secs())
    .bind(settings.bind)
    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.bind))?;
    for addr in server.addrs() {
        tracing::info!("listening on http://{addr}");
    }
    server.run().await?;
    tracing::info!("stopped");
    Ok(())
}
