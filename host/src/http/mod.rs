//! HTTP: app assembly, the envelope, the plugin dispatcher, core routes.

pub mod access;
pub mod auth;
mod baseline;
pub mod dispatch;
pub mod envelope;
pub mod limits;
pub mod metrics;
pub mod openapi;
mod plugins;
mod ui;
mod users;

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use actix_web::{
    App, HttpRequest, HttpResponse, HttpServer, error::InternalError, http::StatusCode,
    middleware::from_fn, web,
};

use crate::config::StatusCheck;
use crate::{
    auth::AuthService,
    config::Settings,
    plugin::{
        PluginHost,
        running::router::{ADMIN_SCOPE, CORE_ROUTES, Scope},
    },
};

/// What `GET /health` answers.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// Always `ok`.
    status: &'static str,
}

/// What every handler shares.
pub struct AppState {
    /// The plugin system.
    pub plugins: Arc<PluginHost>,
    /// Users, roles, tokens.
    pub auth: Arc<AuthService>,
    /// Whether the status gate runs.
    pub status_check: StatusCheck,
    /// Largest request body for plugin routes.
    pub max_body: usize,
    /// How long a request body may stall.
    pub body_timeout: std::time::Duration,
    /// How long a plugin's handler may take, unless its route says.
    pub plugin_timeout: std::time::Duration,
    /// The API document, current with the route table.
    pub document: Arc<openapi::ApiDocument>,
    /// Where `/metrics` is served instead of the main port.
    pub metrics_bind: Option<std::net::SocketAddr>,
}

/// The 405 of a core resource: its methods come from the core route list
/// (`CORE_ROUTES`, the same list the API document is checked against).
async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    // Each core resource is named by its template as CORE_ROUTES writes it.
    let pattern = req.match_name().unwrap_or_default();
    let allowed: Vec<&str> = CORE_ROUTES
        .iter()
        .filter(|(_, path)| *path == pattern)
        .map(|(method, _)| *method)
        .collect();
    envelope::method_not_allowed(req.method().as_str(), req.path(), &allowed.join(", "))
}

/// `GET /health`: the host answers.
#[utoipa::path(
    get,
    path = "/health",
    summary = "Whether the host is up",
    tag = "host",
    responses(
        (status = 200, description = "The host is up", body = openapi::Envelope<Health>),
    ),
)]
pub(crate) async fn health() -> HttpResponse {
    envelope::ok(Health { status: "ok" })
}

fn extractor_error(message: String) -> actix_web::Error {
    InternalError::from_response(
        message.clone(),
        envelope::error(StatusCode::BAD_REQUEST, &message),
    )
    .into()
}

/// A core resource at `template` (as `CORE_ROUTES` spells it), named by
/// it: the access log, the metrics and the 405's `Allow` read the name.
/// Any other method answers 405.
fn core_resource(template: &str) -> actix_web::Resource {
    named(web::resource(template), template)
}

/// A core resource inside the admin scope, at its full `template`; the
/// plugins' authorizers are asked before its handler runs.
fn admin_resource(
    template: &str,
) -> actix_web::Resource<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let path = template
        .strip_prefix(ADMIN_SCOPE)
        .expect("admin routes live below the admin scope");
    named(web::resource(path), template).wrap(from_fn(auth::policy))
}

/// An embedded page: `/page`, and `/page/{*tail}` for its files.
fn page_resource(page: &str) -> actix_web::Resource {
    named(
        web::resource([page.to_owned(), format!("{page}/{{tail:.*}}")]),
        &format!("{page}/{{*tail}}"),
    )
}

fn named(resource: actix_web::Resource, template: &str) -> actix_web::Resource {
    resource
        .name(template)
        .default_service(web::to(method_not_allowed))
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
    .app_data(web::JsonConfig::default().error_handler(|e, _| {
        use actix_web::error::JsonPayloadError;
        let status = match &e {
            JsonPayloadError::Deserialize(d) if d.is_data() => StatusCode::UNPROCESSABLE_ENTITY,
            JsonPayloadError::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            JsonPayloadError::Payload(p) => limits::payload_status(p),
            _ => StatusCode::BAD_REQUEST,
        };
        let message = format!("invalid JSON body: {e}");
        InternalError::from_response(message.clone(), envelope::error(status, &message)).into()
    }))
    .service(core_resource("/health").route(web::get().to(health)))
    .service(core_resource("/metrics").route(web::get().to(metrics::metrics)))
    .service(core_resource("/openapi.json").route(web::get().to(openapi::api_document)))
    .service(page_resource("/ui").route(web::get().to(ui::page)))
    .service(page_resource("/docs").route(web::get().to(openapi::docs)))
    .service(
        web::scope(ADMIN_SCOPE)
            .wrap(from_fn(auth::guard))
            .service(
                admin_resource("/admin/v1/auth/login")
                    .wrap(from_fn(limits::stall_guard))
                    .route(web::post().to(auth::login)),
            )
            .service(admin_resource("/admin/v1/auth/logout").route(web::post().to(auth::logout)))
            .service(
                admin_resource("/admin/v1/sys/plugins")
                    .wrap(from_fn(limits::stall_guard))
                    .route(web::get().to(plugins::list))
                    .route(web::post().to(plugins::install)),
            )
            .service(
                admin_resource("/admin/v1/sys/plugin-build").route(web::get().to(plugins::build)),
            )
            .service(
                admin_resource("/admin/v1/sys/plugin-catalog")
                    .route(web::get().to(plugins::catalog)),
            )
            .service(
                admin_resource("/admin/v1/sys/plugins/changed")
                    .route(web::get().to(plugins::changed)),
            )
            .service(
                admin_resource("/admin/v1/sys/plugins/{plugin}/status")
                    .route(web::put().to(plugins::toggle)),
            )
            .service(
                admin_resource("/admin/v1/sys/plugins/{plugin}")
                    .route(web::get().to(plugins::download))
                    .route(web::delete().to(plugins::uninstall)),
            )
            .service(
                admin_resource("/admin/v1/sys/users")
                    .route(web::get().to(users::list))
                    .route(web::post().to(users::create)),
            )
            .service(
                admin_resource("/admin/v1/sys/users/{pk}")
                    .route(web::get().to(users::get))
                    .route(web::put().to(users::update))
                    .route(web::delete().to(users::delete)),
            )
            .service(
                admin_resource("/admin/v1/sys/users/{pk}/status")
                    .route(web::put().to(users::status)),
            )
            .service(
                admin_resource("/admin/v1/sys/users/{pk}/roles").route(web::put().to(users::roles)),
            )
            .service(
                admin_resource("/admin/v1/sys/roles")
                    .route(web::get().to(users::list_roles))
                    .route(web::post().to(users::create_role)),
            )
            .service(
                admin_resource("/admin/v1/sys/roles/{name}")
                    .route(web::delete().to(users::delete_role)),
            )
            .service(
                admin_resource("/admin/v1/sys/roles/{name}/permissions")
                    .route(web::put().to(users::permissions)),
            )
            .service(
                admin_resource("/admin/v1/sys/permissions")
                    .route(web::get().to(users::known_permissions)),
            )
            .configure(|admin| {
                if bench_baseline {
                    admin.service(
                        admin_resource("/admin/v1/native/dict-types")
                            .route(web::get().to(baseline::dict_types)),
                    );
                }
            })
            .default_service(dispatch::service(Scope::Admin)),
    );
    if bench_baseline {
        cfg.service(
            web::resource("/native/hello/v1/greet")
                .name("/native/hello/v1/greet")
                .route(web::get().to(baseline::greet)),
        );
        cfg.service(
            web::resource("/native/fetch")
                .name("/native/fetch")
                .route(web::get().to(baseline::fetch)),
        );
    }
    cfg.default_service(dispatch::service(Scope::App));
}

/// The server of `PLUGHOST_METRICS_BIND`: `/metrics` without a token.
fn metrics_server(
    address: std::net::SocketAddr,
    plugins: Arc<PluginHost>,
) -> anyhow::Result<actix_web::dev::Server> {
    let plugins = web::Data::from(plugins);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(plugins.clone())
            .route("/metrics", web::get().to(metrics::open_metrics))
            .default_service(web::to(|req: HttpRequest| async move {
                envelope::error(
                    StatusCode::NOT_FOUND,
                    &format!(
                        "this address serves only GET /metrics, not {} {}",
                        req.method(),
                        req.path()
                    ),
                )
            }))
    })
    .workers(1)
    .disable_signals()
    .bind(address)
    .map_err(|e| {
        anyhow::anyhow!("cannot listen on {address} for metrics (PLUGHOST_METRICS_BIND): {e}")
    })?;
    for address in server.addrs() {
        tracing::info!("metrics on http://{address}/metrics");
    }
    Ok(server.run())
}

/// Loads the plugins and serves until SIGINT/SIGTERM; in-flight requests
/// get `shutdown_timeout` to finish.
pub async fn serve(settings: Settings) -> anyhow::Result<()> {
    if settings.metrics {
        // Before anything records a metric.
        crate::observe::install();
    }
    let core = crate::runtime::Core::open(settings).await?;
    let auth = core.auth.clone();
    auth.watch();
    let admin_password = std::env::var("PLUGHOST_ADMIN_PASSWORD").ok();
    if let Some(generated) = auth.ensure_admin(admin_password).await? {
        // Printed once, on the console only: it is not stored anywhere.
        eprintln!(
            "\nplughost: created the superuser 'admin' with password: {generated}\n\
             Change it with `plughost user passwd admin --password NEW`.\n"
        );
    }
    crate::plugin::isolation::configure(
        core.settings.isolated.clone(),
        crate::plugin::isolation::IsolationConfig {
            exe: std::env::current_exe()?,
            serve_args: crate::plugin::isolation::serve_args(),
            run_dir: core.settings.data_dir.join("run"),
            memory_mb: core.settings.isolated_memory_mb,
            cgroup: crate::plugin::isolation::memory_cgroup(
                &core.settings.isolated,
                core.settings.isolated_memory_mb,
            ),
            health_every: core.settings.isolated_health,
        },
    );
    let plugins = core.plugins().await?;
    let settings = core.settings;
    // Start hooks run before the server takes requests; plugin tasks run
    // on this thread's runtime, which serves none.
    plugins.start_plugins(settings.plugin_runs).await;
    if settings.metrics {
        // Histograms keep their samples until drained: drain them even
        // when nothing scrapes.
        actix_web::rt::spawn(async {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
            loop {
                every.tick().await;
                crate::observe::upkeep();
            }
        });
        plugins.watch_routes(Box::new(|table| {
            crate::observe::plugins_loaded(table.plugins().count());
        }));
    }
    let document = openapi::ApiDocument::watching(&plugins);
    let metrics_server = match settings.metrics_bind {
        Some(address) => Some(metrics_server(address, plugins.clone())?),
        None => None,
    };
    let running = plugins.clone();
    let state = web::Data::new(AppState {
        metrics_bind: settings.metrics_bind,
        document,
        plugins,
        auth,
        status_check: settings.status_check,
        max_body: settings.max_body,
        body_timeout: settings.body_timeout,
        plugin_timeout: settings.plugin_timeout,
    });
    let bench_baseline = settings.bench_baseline;
    let observe = access::Observe {
        access_log: settings.access_log,
    };
    let server = HttpServer::new(move || {
        if observe.access_log {
            // This worker's access lines reach stderr within 100 ms.
            actix_web::rt::spawn(async {
                let mut every = tokio::time::interval(std::time::Duration::from_millis(100));
                loop {
                    every.tick().await;
                    crate::observe::flush_access_log();
                }
            });
        }
        App::new()
            .wrap(observe)
            .app_data(state.clone())
            .configure(|cfg| configure(cfg, bench_baseline))
    })
    .workers(settings.workers)
    .shutdown_timeout(settings.shutdown_timeout.as_secs())
    .disable_signals()
    .bind(settings.bind)
    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.bind))?;
    let addrs = server.addrs();
    let server = server.run();
    // Signal handlers are in place before "listening" is logged, so a
    // SIGTERM right after start-up is a graceful stop, not a kill.
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let handle = server.handle();
    let metrics_handle = metrics_server.as_ref().map(actix_web::dev::Server::handle);
    let grace = settings.shutdown_timeout.as_secs();
    actix_web::rt::spawn(async move {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!("{name} received: finishing in-flight requests (up to {grace} s)");
        if let Some(metrics) = metrics_handle {
            metrics.stop(true).await;
        }
        handle.stop(true).await;
    });
    if let Some(metrics) = metrics_server {
        actix_web::rt::spawn(metrics);
    }
    for addr in addrs {
        tracing::info!("listening on http://{addr}");
    }
    server.await?;
    // Stop hooks once no request is served any more, dependents first.
    running.stop_plugins().await;
    tracing::info!("stopped");
    Ok(())
}
