//! The child process of an isolated plugin (`plughost isolated-plugin`):
//! the host re-executed with the host's settings. It dies with the host,
//! caps its own memory, opens the library through the host's checks,
//! reports what the host needs to mount it, and serves the plugin's
//! requests from the socket. Every host service the plugin calls runs
//! here, on this process's own connections (see docs/decisions.md).

use std::{
    cell::RefCell,
    collections::HashMap,
    path::{Path, PathBuf},
    rc::Rc,
    sync::{Arc, atomic::AtomicBool},
};

use abi_stable::std_types::{ROption, RResult, RSlice, RStr, Tuple2};
use futures_util::FutureExt as _;
use plugin_api::abi::{PluginModRef, Principal as AbiPrincipal, RawRequest, StrPair};
use tokio::{net::UnixStream, sync::mpsc};

use super::wire::{self, Hello, ToChild, ToHost, WireRequest, WireRouter};
use crate::{
    config::Settings,
    plugin::{
        loading::{
            loader::{LayoutCheck, load_library},
            manifest::PluginManifest,
        },
        running::registry::embedded_files,
        services::{self, lifespan},
    },
};

/// What the host tells the child to open.
#[derive(Debug, Clone)]
pub struct ChildArgs {
    /// The socket the host listens on.
    pub socket: PathBuf,
    /// The library's private copy.
    pub library: PathBuf,
    /// The plugin's name.
    pub name: String,
    /// Whether this binary compared the library's layout already.
    pub layout_checked: bool,
    /// The memory cap, in MiB (0: none).
    pub memory_mb: u64,
    /// The cgroup to join (its memory limit set by the host), if any.
    pub cgroup: Option<PathBuf>,
}

/// Runs the child until the host closes the socket; the exit code says
/// how it ended.
pub fn main(args: ChildArgs, settings: Settings) -> std::process::ExitCode {
    if let Err(e) = die_with_parent() {
        eprintln!("isolated plugin {}: {e}", args.name);
        return std::process::ExitCode::FAILURE;
    }
    if let Some(dir) = &args.cgroup
        && let Err(e) = super::cgroup::join(dir)
    {
        eprintln!("isolated plugin {}: {e}", args.name);
        return std::process::ExitCode::FAILURE;
    }
    if args.memory_mb > 0
        && let Err(e) = cap_memory(args.memory_mb)
    {
        eprintln!("isolated plugin {}: {e}", args.name);
        return std::process::ExitCode::FAILURE;
    }
    let outcome = actix_web::rt::System::new().block_on(serve(args.clone(), settings));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(plugin = args.name, "isolated plugin: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// SIGKILL when the host dies, however it dies; an orphan already (the
/// host died before this ran) exits at once.
fn die_with_parent() -> std::io::Result<()> {
    let parent = rustix::process::getppid();
    rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
    if rustix::process::getppid() != parent {
        return Err(std::io::Error::other(
            "the host exited before its child started",
        ));
    }
    Ok(())
}

/// Caps this process's address space at `mb` MiB (RLIMIT_AS): past it an
/// allocation fails and the plugin aborts, which the host sees as a crash.
fn cap_memory(mb: u64) -> std::io::Result<()> {
    let bytes = mb.saturating_mul(1 << 20);
    rustix::process::setrlimit(
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: Some(bytes),
            maximum: Some(bytes),
        },
    )
    .map_err(std::io::Error::from)
}

type Writer = mpsc::UnboundedSender<(ToHost, Vec<u8>)>;

/// The child forwards a stream's chunks as they come; the host holds it
/// to the request's deadline.
const STREAM_IDLE: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

async fn serve(args: ChildArgs, settings: Settings) -> anyhow::Result<()> {
    let stream = UnixStream::connect(&args.socket).await?;
    let (reader, writer_half) = stream.into_split();
    let mut reader = wire::Frames::new(reader);
    let (writer, outbox) = mpsc::unbounded_channel::<(ToHost, Vec<u8>)>();
    let writing = actix_web::rt::spawn(wire::pump(writer_half, outbox));
    let plugin_timeout = settings.plugin_timeout;
    let plugin = match open(&args, settings).await {
        Ok(plugin) => plugin,
        Err(reason) => {
            let _ = writer.send((ToHost::Refused { reason }, Vec::new()));
            drop(writer);
            let _ = writing.await;
            return Ok(());
        }
    };
    let plugin = Rc::new(plugin);
    let in_flight = InFlight::default();
    let lanes = listen_for_lanes(&args.socket, &plugin, &in_flight);
    let mut hello = plugin.hello();
    hello.lanes = lanes.is_some();
    let _ = writer.send((ToHost::Hello(Box::new(hello)), Vec::new()));
    // Panics beyond the first few of a site are counted, and the counts
    // reported as each interval ends, as in the host.
    actix_web::rt::spawn(async {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            services::panic_log::flush();
        }
    });
    while let Some((message, body)) = reader.next::<ToChild>().await? {
        match message {
            ToChild::Init => {
                let error = match (plugin.module.init())(services::host_services()) {
                    RResult::ROk(()) => None,
                    RResult::RErr(e) => Some(e.into_string()),
                };
                done(&writer, "init", error);
            }
            ToChild::Start => {
                let error = plugin.start().await.err();
                done(&writer, "start", error);
            }
            ToChild::Stop => {
                plugin.stop().await;
                done(&writer, "stop", None);
            }
            message => dispatch(&plugin, &writer, &in_flight, message, body),
        }
    }
    // The host closed the socket: no new lanes; stop the plugin, let the
    // requests in flight finish (within their deadline), then exit.
    if let Some(lanes) = lanes {
        let _ = std::fs::remove_file(lanes);
    }
    plugin.stop().await;
    let drained = tokio::time::Instant::now() + plugin.longest_deadline(plugin_timeout);
    while !in_flight.borrow().is_empty() && tokio::time::Instant::now() < drained {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Ok(())
}

/// The requests running, by the host's id, to cancel.
type InFlight = Rc<RefCell<HashMap<u64, actix_web::rt::task::JoinHandle<()>>>>;

/// Listens for the host's lanes beside its socket ([`lanes_path`], only
/// the host's own process is served) and serves each; the path, or none
/// when it cannot listen (then everything comes over the one socket).
fn listen_for_lanes(socket: &Path, plugin: &Rc<Opened>, in_flight: &InFlight) -> Option<PathBuf> {
    let path = lanes_path(socket);
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(
                plugin = plugin.name,
                "cannot listen on {}: {e}; requests share one socket",
                path.display()
            );
            return None;
        }
    };
    let (plugin, in_flight) = (plugin.clone(), in_flight.clone());
    actix_web::rt::spawn(async move {
        let host = rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get());
        while let Ok((stream, _)) = listener.accept().await {
            // The socket's directory is the host's; the peer is checked too.
            let peer = stream.peer_cred().ok().and_then(|c| c.pid());
            if peer.is_none() || peer != host {
                tracing::warn!(?peer, "refused a lane from a process other than the host");
                continue;
            }
            let (plugin, in_flight) = (plugin.clone(), in_flight.clone());
            actix_web::rt::spawn(serve_lane(stream, plugin, in_flight));
        }
    });
    Some(path)
}

/// Serves one lane: what comes in on it is answered on it.
async fn serve_lane(stream: UnixStream, plugin: Rc<Opened>, in_flight: InFlight) {
    let (reader, writer_half) = stream.into_split();
    let mut reader = wire::Frames::new(reader);
    let (writer, outbox) = mpsc::unbounded_channel::<(ToHost, Vec<u8>)>();
    actix_web::rt::spawn(wire::pump(writer_half, outbox));
    while let Ok(Some((message, body))) = reader.next::<ToChild>().await {
        match message {
            // The plugin's lifecycle comes over the host's socket, in order.
            ToChild::Init | ToChild::Start | ToChild::Stop => {}
            message => dispatch(&plugin, &writer, &in_flight, message, body),
        }
    }
}

/// Acts on one of the host's messages other than the lifecycle's,
/// answering on `writer`.
fn dispatch(
    plugin: &Rc<Opened>,
    writer: &Writer,
    in_flight: &InFlight,
    message: ToChild,
    body: Vec<u8>,
) {
    match message {
        ToChild::Init | ToChild::Start | ToChild::Stop => {}
        ToChild::Enabled { enabled } => plugin
            .enabled
            .store(enabled, std::sync::atomic::Ordering::Release),
        ToChild::Authenticate { id, authorization } => {
            let (module, writer) = (plugin.module, writer.clone());
            actix_web::rt::spawn(async move {
                let answer = match module.authenticate().flatten() {
                    None => Ok(serde_json::Value::Null),
                    Some(hook) => {
                        match std::panic::AssertUnwindSafe(hook(authorization.into()))
                            .catch_unwind()
                            .await
                        {
                            Ok(RResult::ROk(user)) => Ok(serde_json::json!(user.into_option())),
                            Ok(RResult::RErr(e)) => Err(e.into_string()),
                            Err(_) => Err("the authenticator panicked".into()),
                        }
                    }
                };
                hooked(&writer, id, answer);
            });
        }
        ToChild::Authorize { id, call } => {
            let (module, writer) = (plugin.module, writer.clone());
            actix_web::rt::spawn(async move {
                let answer = match module.authorize().flatten() {
                    None => Ok(serde_json::Value::Null),
                    Some(hook) => match std::panic::AssertUnwindSafe(hook(call.into()))
                        .catch_unwind()
                        .await
                    {
                        Ok(RResult::ROk(denied)) => Ok(serde_json::json!(
                            denied.into_option().map(|r| r.into_string())
                        )),
                        Ok(RResult::RErr(e)) => Err(e.into_string()),
                        Err(_) => Err("the authorizer panicked".into()),
                    },
                };
                hooked(&writer, id, answer);
            });
        }
        ToChild::Plugins { loaded } => {
            services::publish(
                loaded,
                HashMap::from([(plugin.name.clone(), plugin.settings.clone())]),
            );
        }
        ToChild::Metrics { id } => {
            let text = crate::observe::render().unwrap_or_default();
            hooked(writer, id, Ok(serde_json::Value::String(text)));
        }
        ToChild::ListJobs { id } => {
            let jobs = plugin
                .run
                .borrow()
                .as_ref()
                .map(|run| run.jobs())
                .unwrap_or_default();
            hooked(writer, id, Ok(serde_json::Value::from(jobs)));
        }
        ToChild::Ping { id } => {
            let _ = writer.send((ToHost::Pong { id }, Vec::new()));
        }
        ToChild::Cancel { id } => {
            if let Some(task) = in_flight.borrow_mut().remove(&id) {
                task.abort();
            }
        }
        ToChild::Request {
            id,
            handler,
            request,
        } => {
            let (plugin, writer) = (plugin.clone(), writer.clone());
            let mut work = Box::pin(async move {
                answer(&plugin, &writer, id, handler, *request, body).await;
            });
            // Most handlers answer at once: polled here first, they cost
            // no task. One that waits goes on in a task of its own, which
            // polls it again with a waker that wakes it.
            let mut first = std::task::Context::from_waker(std::task::Waker::noop());
            if work.as_mut().poll(&mut first).is_ready() {
                return;
            }
            let tasks = in_flight.clone();
            let task = actix_web::rt::spawn(async move {
                work.await;
                tasks.borrow_mut().remove(&id);
            });
            in_flight.borrow_mut().insert(id, task);
        }
    }
}

/// Sends a hook's answer (or a report's) for exchange `id`.
fn hooked(writer: &Writer, id: u64, answer: Result<serde_json::Value, String>) {
    let _ = writer.send((ToHost::Hooked { id, answer }, Vec::new()));
}

fn done(writer: &Writer, step: &str, error: Option<String>) {
    let _ = writer.send((
        ToHost::Done {
            step: step.to_owned(),
            error,
        },
        Vec::new(),
    ));
}

/// The plugin this child serves.
struct Opened {
    name: String,
    module: PluginModRef,
    contract: String,
    manifest: String,
    settings: std::collections::BTreeMap<String, String>,
    routes: RefCell<Vec<(String, String, Arc<crate::observe::RouteMetrics>)>>,
    enabled: Arc<AtomicBool>,
    run: RefCell<Option<Arc<lifespan::Run>>>,
}

impl Opened {
    fn hello(&self) -> Hello {
        let routers = (self.module.routers())()
            .iter()
            .map(WireRouter::from_spec)
            .collect();
        Hello {
            name: self.name.clone(),
            contract: self.contract.clone(),
            manifest: self.manifest.clone(),
            files: embedded_files(self.module),
            routers,
            authenticate: self.module.authenticate().flatten().is_some(),
            authorize: self.module.authorize().flatten().is_some(),
            pid: std::process::id(),
            lanes: false,
        }
    }

    /// The longest any of its requests may run: `default`, or a route's
    /// own timeout when longer.
    fn longest_deadline(&self, default: std::time::Duration) -> std::time::Duration {
        (self.module.routers())()
            .iter()
            .flat_map(|router| router.routes.iter())
            .flat_map(|route| route.extensions.iter())
            .filter(|Tuple2(name, _)| name.as_str() == plugin_api::abi::route_option::TIMEOUT_MS)
            .filter_map(|Tuple2(_, ms)| ms.parse().ok())
            .map(std::time::Duration::from_millis)
            .fold(default, std::cmp::max)
    }

    /// The metrics of route `method route` (made once).
    fn route_metrics(&self, method: &str, route: &str) -> Arc<crate::observe::RouteMetrics> {
        // A plugin has few routes: a scan, no allocation per request.
        let found = self
            .routes
            .borrow()
            .iter()
            .find(|(m, r, _)| m == method && r == route)
            .map(|(_, _, metrics)| metrics.clone());
        found.unwrap_or_else(|| {
            let metrics = Arc::new(crate::observe::RouteMetrics::new(&self.name, method, route));
            self.routes
                .borrow_mut()
                .push((method.to_owned(), route.to_owned(), metrics.clone()));
            metrics
        })
    }

    async fn start(&self) -> Result<(), String> {
        let run = lifespan::start(&self.name, self.module, self.enabled.clone())
            .await
            .map_err(|e| e.to_string())?;
        *self.run.borrow_mut() = Some(run);
        Ok(())
    }

    async fn stop(&self) {
        let run = self.run.borrow_mut().take();
        if let Some(run) = run {
            lifespan::stop(&run, self.module).await;
        }
    }
}

/// Opens the library and readies the host services for it.
async fn open(args: &ChildArgs, settings: Settings) -> Result<Opened, String> {
    let limits = settings.plugin_runs;
    if settings.metrics {
        crate::observe::install();
    }
    let core = crate::runtime::Core::open(settings)
        .await
        .map_err(|e| format!("the child cannot reach the host's services: {e:#}"))?;
    let check = if args.layout_checked {
        LayoutCheck::AlreadyPassed
    } else {
        LayoutCheck::Run
    };
    let opened = load_library(&args.library, check).map_err(|e| e.to_string())?;
    // The host compares the name it declares with the installed one.
    let declared = opened.module.name().as_str().to_owned();
    let text = opened.module.manifest().as_str().to_owned();
    let manifest = PluginManifest::parse(&text).map_err(|e| format!("embedded manifest: {e}"))?;
    publish_services(&declared, &manifest);
    lifespan::serve_here(limits);
    crate::events::serve();
    drop(core);
    Ok(Opened {
        name: declared,
        module: opened.module,
        contract: opened.contract,
        manifest: text,
        settings: manifest.settings.clone(),
        routes: RefCell::default(),
        enabled: Arc::new(AtomicBool::new(true)),
        run: RefCell::new(None),
    })
}

/// What the host services know of the one plugin here.
fn publish_services(name: &str, manifest: &PluginManifest) {
    fn one<T>(name: &str, value: T) -> HashMap<String, T> {
        HashMap::from([(name.to_owned(), value)])
    }
    services::publish(1, one(name, manifest.settings.clone()));
    services::events::publish_declared(one(name, manifest.events.clone()));
    services::identity::publish_declared(one(name, manifest.identity.clone()));
    services::http::publish(one(name, services::http::allowed_for(name, &manifest.http)));
}

/// Calls handler `handler` with `request` and sends its answer.
async fn answer(
    plugin: &Opened,
    writer: &Writer,
    id: u64,
    handler: u32,
    request: WireRequest,
    body: Vec<u8>,
) {
    let params: Vec<StrPair<'_>> = request
        .params
        .iter()
        .map(|(name, value)| StrPair {
            name: RStr::from_str(name),
            value: RStr::from_str(value),
        })
        .collect();
    let permissions: Vec<RStr<'_>> = request
        .principal
        .as_ref()
        .map(|p| p.permissions.iter().map(|s| RStr::from_str(s)).collect())
        .unwrap_or_default();
    let principal = match &request.principal {
        Some(p) => ROption::RSome(AbiPrincipal {
            user_id: p.user_id,
            username: RStr::from_str(&p.username),
            superuser: p.superuser,
            permissions: RSlice::from_slice(&permissions),
        }),
        None => ROption::RNone,
    };
    let raw = RawRequest {
        method: RStr::from_str(&request.method),
        path: RStr::from_str(&request.path),
        query: RStr::from_str(&request.query),
        params: RSlice::from_slice(&params),
        headers: plugin_api::abi::HeaderSource::from_pairs(&request.headers),
        body: RSlice::from_slice(&body),
        principal,
        trace_id: RStr::from_str(&request.trace_id),
        extensions: RSlice::from_slice(&[]),
    };
    let future = (plugin.module.handle())(handler, &raw);
    // As in the host: the request's trace id on the lines it logs, its
    // route on the panics it counts.
    let context = crate::observe::RequestContext {
        trace: crate::observe::TraceId::parse(&request.trace_id),
        route: Some(plugin.route_metrics(&request.method, &request.route)),
    };
    let traced =
        crate::observe::Traced::new(std::panic::AssertUnwindSafe(future).catch_unwind(), context);
    let response = match traced.await.0 {
        Ok(response) => response,
        Err(_) => {
            let message = format!("internal error in plugin '{}'", plugin.name);
            internal_error(writer, id, &message, &request.trace_id);
            return;
        }
    };
    let stream = response
        .extensions
        .iter()
        .find(|Tuple2(name, _)| name.as_str() == plugin_api::abi::STREAM_EXTENSION)
        .and_then(|Tuple2(_, id)| id.parse::<u64>().ok());
    let head = ToHost::Response {
        id,
        status: response.status,
        content_type: response.content_type.to_string(),
        headers: response
            .headers
            .iter()
            .map(|Tuple2(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        stream: stream.is_some(),
    };
    let Some(stream) = stream else {
        let _ = writer.send((head, response.body.into_vec()));
        return;
    };
    let Some(body) = services::streams::take_body(&plugin.name, stream, STREAM_IDLE) else {
        let message = format!(
            "plugin '{}' answered with stream {stream}, which it has not open",
            plugin.name
        );
        internal_error(writer, id, &message, &request.trace_id);
        return;
    };
    let _ = writer.send((head, Vec::new()));
    let mut body = std::pin::pin!(body);
    while let Some(Ok(chunk)) = futures_util::StreamExt::next(&mut body).await {
        if writer.send((ToHost::Chunk { id }, chunk.to_vec())).is_err() {
            return;
        }
    }
    let _ = writer.send((ToHost::End { id }, Vec::new()));
}

/// Answers request `id` 500 with `message`.
fn internal_error(writer: &Writer, id: u64, message: &str, trace_id: &str) {
    let _ = writer.send((
        ToHost::Response {
            id,
            status: 500,
            content_type: "application/json".into(),
            headers: Vec::new(),
            stream: false,
        },
        crate::http::envelope::error_body(500, message, trace_id),
    ));
}

/// Where the host's socket for `name`'s next child goes.
pub fn socket_path(run_dir: &Path, name: &str, serial: u64) -> PathBuf {
    run_dir.join(format!("{name}-{}-{serial}.sock", std::process::id()))
}

/// Where the child of socket `socket` accepts lanes.
pub fn lanes_path(socket: &Path) -> PathBuf {
    socket.with_extension("lanes")
}
