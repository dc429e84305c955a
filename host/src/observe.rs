//! What an operator sees of requests: the request context (its trace id,
//! the plugin route it reached) that every log line written while the
//! request runs carries, and the metrics behind `/metrics`.
//!
//! The context lives in a thread-local that the request's future sets
//! around each of its polls (`Traced`), so a plugin's log line or panic,
//! which the plugin reports synchronously through the host while its
//! handler is polled, lands in the request that caused it. Metrics go to
//! one Prometheus recorder (`metrics` + `metrics-exporter-prometheus`);
//! each plugin route's handles are made when its route table is built, so
//! a request only touches atomics.

use std::{
    cell::RefCell,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{Context as TaskContext, Poll},
    time::Duration,
};

use metrics::{Counter, Gauge, Histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// What a request leaves for the code it runs.
#[derive(Clone, Default)]
pub struct RequestContext {
    /// The request's trace id (answered in `x-request-id`).
    pub trace: Option<TraceId>,
    /// The plugin route it reached, once the dispatcher matched one.
    pub route: Option<Arc<RouteMetrics>>,
}

thread_local! {
    static CURRENT: RefCell<RequestContext> = RefCell::new(RequestContext::default());
}

/// The trace id of the request being polled on this thread, if any.
pub fn current_trace() -> Option<TraceId> {
    CURRENT.with(|c| c.borrow().trace)
}

/// Records that the request being polled reached `route`.
pub fn set_route(route: &Arc<RouteMetrics>) {
    CURRENT.with(|c| c.borrow_mut().route = Some(route.clone()));
}

/// The plugin route the request being polled reached, if any.
pub fn current_route() -> Option<Arc<RouteMetrics>> {
    CURRENT.with(|c| c.borrow().route.clone())
}

pin_project_lite::pin_project! {
    /// A future that is the current request's while it is polled.
    pub struct Traced<F> {
        #[pin]
        inner: F,
        context: RequestContext,
    }
}

impl<F> Traced<F> {
    /// `inner`, run as the request `context`.
    pub fn new(inner: F, context: RequestContext) -> Self {
        Self { inner, context }
    }
}

impl<F: Future> Future for Traced<F> {
    type Output = (F::Output, RequestContext);

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // Swapped in and out, so what the poll adds (the route) stays with
        // this request and the thread's previous context comes back.
        CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), this.context));
        let polled = this.inner.poll(cx);
        CURRENT.with(|c| std::mem::swap(&mut *c.borrow_mut(), this.context));
        polled.map(|output| (output, std::mem::take(this.context)))
    }
}

/// The recorder's handle, when metrics are on.
static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Request latency buckets, seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Turns metrics on for this process: installs the Prometheus recorder
/// and describes every metric. Without it every handle is a no-op.
pub fn install() {
    if HANDLE.get().is_some() {
        return;
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)
        .expect("the buckets are not empty")
        .build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        tracing::warn!("a metrics recorder is installed already; /metrics shows nothing");
        return;
    }
    let _ = HANDLE.set(handle);
    describe();
    metrics::gauge!(
        "plughost_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "contract" => plugin_api::CONTRACT_VERSION,
    )
    .set(1.0);
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "plughost_requests_total",
        "Requests answered, by plugin, method, route template and status class"
    );
    describe_histogram!(
        "plughost_request_duration_seconds",
        Unit::Seconds,
        "Time to answer a request, by plugin, method and route template"
    );
    describe_gauge!(
        "plughost_requests_in_flight",
        "Plugin requests being answered, by plugin, method and route template"
    );
    describe_counter!(
        "plughost_plugin_panics_total",
        "Handler panics, by plugin, method and route template (route '-' outside a request)"
    );
    describe_counter!(
        "plughost_plugin_disabled_total",
        "Requests answered 503 because their plugin is disabled"
    );
    describe_counter!(
        "plughost_plugin_crashes_total",
        "Requests answered 502 because the isolated plugin's child process died with them in flight"
    );
    describe_counter!(
        "plughost_plugin_timeouts_total",
        "Requests answered 504 because their handler passed its deadline (PLUGHOST_PLUGIN_TIMEOUT or the route's)"
    );
    describe_counter!(
        "plughost_lifecycle_operations_total",
        "Plugin operations (install, upgrade, uninstall, toggle, converge) by outcome"
    );
    describe_histogram!(
        "plughost_lifecycle_operation_duration_seconds",
        Unit::Seconds,
        "Time a plugin operation took, by kind"
    );
    describe_gauge!("plughost_plugins_loaded", "Plugins this instance serves");
    describe_gauge!(
        "plughost_plugin_enabled",
        "1 when a loaded plugin is enabled, 0 when disabled"
    );
    describe_gauge!(
        "plughost_plugin_flag_revision",
        "The revision of each plugin's flag this instance applies"
    );
    describe_histogram!(
        "plughost_openapi_render_seconds",
        Unit::Seconds,
        "Time to render the API document, on the first request for it after a route table change"
    );
    describe_gauge!(
        "plughost_build_info",
        "1, labelled with the host's version and its contract version"
    );
}

/// The Prometheus text of every metric, when metrics are on.
pub fn render() -> Option<String> {
    HANDLE.get().map(PrometheusHandle::render)
}

/// `ours` with the series of `others` (isolated plugins' children) added
/// to their families: each family's `# HELP` and `# TYPE` once, and a
/// series `ours` has already (the same name and labels) kept as ours.
pub fn merge(ours: &str, others: &[String]) -> String {
    // Families in order of appearance: name, header lines, sample lines.
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    let mut series: std::collections::HashSet<String> = std::collections::HashSet::new();
    for (n, text) in std::iter::once(ours)
        .chain(others.iter().map(String::as_str))
        .enumerate()
    {
        let mut current: Option<usize> = None;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                let at = match families.iter().position(|(f, _, _)| *f == name) {
                    Some(at) => at,
                    None => {
                        families.push((name, Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                if !families[at].1.iter().any(|h| h == line) {
                    families[at].1.push(line.to_owned());
                }
                current = Some(at);
                continue;
            }
            let (key, value) = line.rsplit_once(' ').unwrap_or((line, ""));
            if n > 0 && series.contains(key) {
                // A counter both count: the sum; anything else: ours.
                let counter = current.is_some_and(|at| {
                    families[at]
                        .1
                        .iter()
                        .any(|h| h.starts_with("# TYPE") && h.ends_with(" counter"))
                });
                if let (true, Ok(theirs)) = (counter, value.parse::<f64>()) {
                    let family = &mut families[current.expect("a counter's family")].2;
                    if let Some(sample) = family
                        .iter_mut()
                        .find(|s| s.rsplit_once(' ').is_some_and(|(k, _)| k == key))
                    {
                        let ours: f64 = sample
                            .rsplit_once(' ')
                            .and_then(|(_, v)| v.parse().ok())
                            .unwrap_or(0.0);
                        *sample = format!("{key} {}", ours + theirs);
                    }
                }
                continue;
            }
            series.insert(key.to_owned());
            let at = match current {
                Some(at) => at,
                None => {
                    families.push((String::new(), Vec::new(), Vec::new()));
                    families.len() - 1
                }
            };
            families[at].2.push(line.to_owned());
            current = Some(at);
        }
    }
    let mut out = String::with_capacity(ours.len());
    for (_, headers, samples) in families {
        for line in headers.iter().chain(&samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Keeps histograms bounded between scrapes (drains their samples).
pub fn upkeep() {
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

/// The series of one plugin route, registered when the route is first
/// used (a host with hundreds of plugins registers none at start-up).
pub struct RouteMetrics {
    /// The plugin.
    pub plugin: Arc<str>,
    /// The route template (`/admin/v1/sys/dict-types/{id}`), never a raw path.
    pub route: Arc<str>,
    method: Box<str>,
    handles: std::sync::OnceLock<Handles>,
}

/// The registered handles of a route's series.
struct Handles {
    by_class: [Counter; 5],
    latency: Histogram,
    in_flight: Gauge,
    panics: Counter,
    disabled: Counter,
    timeouts: Counter,
    crashes: Counter,
}

impl std::fmt::Debug for RouteMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteMetrics")
            .field("plugin", &self.plugin)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

impl RouteMetrics {
    /// The series of `method route` of `plugin`.
    pub fn new(plugin: &str, method: &str, route: &str) -> Self {
        Self {
            plugin: Arc::from(plugin),
            route: Arc::from(route),
            method: Box::from(method),
            handles: std::sync::OnceLock::new(),
        }
    }

    fn handles(&self) -> &Handles {
        self.handles.get_or_init(|| {
            let labels = [
                ("plugin", self.plugin.to_string()),
                ("method", self.method.to_string()),
                ("route", self.route.to_string()),
            ];
            let class = |class: &'static str| {
                let mut all = labels.to_vec();
                all.push(("status", class.to_owned()));
                metrics::counter!("plughost_requests_total", &all)
            };
            Handles {
                by_class: [
                    class("1xx"),
                    class("2xx"),
                    class("3xx"),
                    class("4xx"),
                    class("5xx"),
                ],
                latency: metrics::histogram!("plughost_request_duration_seconds", &labels),
                in_flight: metrics::gauge!("plughost_requests_in_flight", &labels),
                panics: metrics::counter!("plughost_plugin_panics_total", &labels),
                disabled: metrics::counter!("plughost_plugin_disabled_total", &labels),
                timeouts: metrics::counter!("plughost_plugin_timeouts_total", &labels),
                crashes: metrics::counter!("plughost_plugin_crashes_total", &labels),
            }
        })
    }

    /// A request is being answered until the guard is dropped.
    pub fn enter(&self) -> InFlight<'_> {
        self.handles().in_flight.increment(1.0);
        InFlight(self)
    }

    /// The plugin is disabled: the request is answered 503.
    pub fn refused(&self) {
        self.handles().disabled.increment(1);
    }

    /// The handler passed its deadline: the request is answered 504.
    pub fn timed_out(&self) {
        self.handles().timeouts.increment(1);
    }

    /// The plugin's child process died with the request in flight.
    pub fn crashed(&self) {
        self.handles().crashes.increment(1);
    }

    /// The handler panicked.
    pub fn panicked(&self) {
        self.handles().panics.increment(1);
    }

    /// The request was answered `status` after `took`.
    pub fn answered(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        let handles = self.handles();
        handles.by_class[class].increment(1);
        handles.latency.record(took.as_secs_f64());
    }
}

/// A request in flight on a route (the gauge goes down when dropped,
/// also when the client goes away mid-request).
pub struct InFlight<'a>(&'a RouteMetrics);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.handles().in_flight.decrement(1.0);
    }
}

/// A panic of `plugin` outside any route of it (init, a background call).
pub fn panicked_outside(plugin: &str) {
    metrics::counter!("plughost_plugin_panics_total", "plugin" => plugin.to_owned(), "method" => "-", "route" => "-")
        .increment(1);
}

/// A core route answered (its handles made once per worker thread).
pub fn core_answered(method: &actix_web::http::Method, route: &str, status: u16, took: Duration) {
    if HANDLE.get().is_none() {
        return;
    }
    thread_local! {
        static CORE: RefCell<std::collections::HashMap<String, Vec<(actix_web::http::Method, RouteMetrics)>>> =
            RefCell::new(std::collections::HashMap::new());
    }
    CORE.with(|core| {
        let mut core = core.borrow_mut();
        let methods = match core.get_mut(route) {
            Some(methods) => methods,
            None => core.entry(route.to_owned()).or_default(),
        };
        if let Some((_, metrics)) = methods.iter().find(|(m, _)| m == method) {
            metrics.answered(status, took);
            return;
        }
        let metrics = RouteMetrics::new("", method.as_str(), route);
        metrics.answered(status, took);
        methods.push((method.clone(), metrics));
    });
}

/// A plugin operation of `kind` ended (`ok` or not) after `took`.
pub fn lifecycle(kind: &'static str, ok: bool, took: Duration) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::counter!("plughost_lifecycle_operations_total", "kind" => kind, "outcome" => outcome)
        .increment(1);
    metrics::histogram!("plughost_lifecycle_operation_duration_seconds", "kind" => kind)
        .record(took.as_secs_f64());
}

/// The API document was rendered in `took`.
pub fn document_rendered(took: Duration) {
    metrics::histogram!("plughost_openapi_render_seconds").record(took.as_secs_f64());
}

/// What each loaded plugin's flag is, set just before a scrape.
pub fn plugin_state(plugin: &str, enabled: bool, revision: i64) {
    metrics::gauge!("plughost_plugin_enabled", "plugin" => plugin.to_owned()).set(if enabled {
        1.0
    } else {
        0.0
    });
    metrics::gauge!("plughost_plugin_flag_revision", "plugin" => plugin.to_owned())
        .set(revision as f64);
}

/// How many plugins this instance serves.
pub fn plugins_loaded(count: usize) {
    metrics::gauge!("plughost_plugins_loaded").set(count as f64);
}

/// The log line format: tracing-subscriber's, with `trace_id=…` at the end
/// of every line written while a request is polled (a plugin's log lines
/// and panics included), so each matches the `trace_id` of its answer.
pub struct WithTraceId<F>(pub F);

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for WithTraceId<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let Some(trace) = current_trace() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        writeln!(writer, "{line} trace_id={}", trace.as_str())
    }
}

/// The access log: one line per request, in the format of the other log
/// lines, written by the request's worker thread into a buffer of its own
/// and to stderr when the buffer is full, every 100 ms
/// ([`flush_access_log`], run by each worker) and when the worker ends, so
/// a request never waits for a write.
pub fn access_line(method: &str, route: &str, status: u16, took: Duration, trace: &TraceId) {
    ACCESS.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        // The date and time to the second, formatted once per second.
        if buffer.second != now.as_secs() {
            buffer.second = now.as_secs();
            buffer.stamp = chrono::DateTime::from_timestamp(now.as_secs() as i64, 0)
                .unwrap_or_default()
                .format("%Y-%m-%dT%H:%M:%S")
                .to_string();
        }
        // Written piece by piece: this runs for every request, and the
        // formatting machinery costs more than the rest of the line.
        let AccessBuffer { lines, stamp, .. } = &mut *buffer;
        let mut numbers = itoa::Buffer::new();
        lines.reserve(stamp.len() + method.len() + route.len() + 120);
        lines.extend_from_slice(stamp.as_bytes());
        lines.extend_from_slice(&micros(now.subsec_micros()));
        lines.extend_from_slice(b"Z  INFO access: method=");
        lines.extend_from_slice(method.as_bytes());
        lines.extend_from_slice(b" route=\"");
        lines.extend_from_slice(route.as_bytes());
        lines.extend_from_slice(b"\" status=");
        lines.extend_from_slice(numbers.format(status).as_bytes());
        lines.extend_from_slice(b" duration_us=");
        lines.extend_from_slice(numbers.format(took.as_micros()).as_bytes());
        lines.extend_from_slice(b" trace_id=\"");
        lines.extend_from_slice(trace.as_bytes());
        lines.extend_from_slice(b"\"\n");
        if buffer.lines.len() >= 32 * 1024 {
            buffer.flush();
        }
    });
}

/// `.ffffff`: the fraction of a second, six digits.
fn micros(micros: u32) -> [u8; 7] {
    let mut out = *b".000000";
    let mut rest = micros % 1_000_000;
    for digit in out[1..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out
}

/// Writes this thread's buffered access lines.
pub fn flush_access_log() {
    ACCESS.with(|buffer| buffer.borrow_mut().flush());
}

struct AccessBuffer {
    lines: Vec<u8>,
    second: u64,
    stamp: String,
}

impl AccessBuffer {
    fn flush(&mut self) {
        use std::io::Write;
        if !self.lines.is_empty() {
            let _ = std::io::stderr().lock().write_all(&self.lines);
            self.lines.clear();
        }
    }
}

impl Drop for AccessBuffer {
    fn drop(&mut self) {
        self.flush();
    }
}

thread_local! {
    static ACCESS: RefCell<AccessBuffer> = RefCell::new(AccessBuffer {
        lines: Vec::with_capacity(32 * 1024),
        second: 0,
        stamp: String::new(),
    });
}

#[cfg(test)]
mod tests {
    use super::micros;

    #[test]
    fn the_fraction_of_a_second_has_six_digits() {
        assert_eq!(&micros(0), b".000000");
        assert_eq!(&micros(42), b".000042");
        assert_eq!(&micros(999_999), b".999999");
        assert_eq!(&micros(123_456), b".123456");
    }
}

/// The trace id of the request being answered on this thread (every log
/// line it causes carries it), or a fresh one outside a request.
pub fn trace_id() -> TraceId {
    current_trace().unwrap_or_else(new_trace_id)
}

/// A fresh trace id: 16 hex digits, unique enough to find a request in the
/// log, cheap enough for every request (no syscall, no allocation).
pub fn new_trace_id() -> TraceId {
    thread_local! {
        static STATE: std::cell::Cell<u64> = std::cell::Cell::new({
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new().build_hasher().finish() | 1
        });
    }
    // splitmix64 over a per-thread Weyl sequence.
    let mut z = STATE.with(|s| {
        let next = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(next);
        next
    });
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut buf = [0u8; 16];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = b"0123456789abcdef"[((z >> (60 - 4 * i)) & 0xf) as usize];
    }
    TraceId(buf)
}

/// A trace id held on the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceId([u8; 16]);

impl TraceId {
    /// A trace id given as text (16 hex digits), as another process made it.
    pub fn parse(text: &str) -> Option<Self> {
        let bytes: [u8; 16] = text.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_hexdigit)
            .then_some(Self(bytes))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }

    /// The id as ASCII bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}
