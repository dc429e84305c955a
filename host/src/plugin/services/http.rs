//! Outbound HTTP for plugins: the host's client (reqwest on rustls, pooled
//! connections, time-outs, bodies read chunk by chunk), a destination
//! allowed only when the plugin's list names it — the manifest's
//! `[permissions] http`, or the operator's `PLUGHOST_HTTP_ALLOW_<PLUGIN>` —
//! redirects included. Counted per plugin and destination host.
//!
//! *Invariant:* no request leaves for a host:port the plugin's list does
//! not allow, neither the first one nor any redirect.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use abi_stable::std_types::{RResult, RStr, RString, RVec};
use async_ffi::FfiFuture;
use futures_util::FutureExt as _;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::waker::IntoPluginFuture as _;
use crate::plugin::loading::permissions::{self, HostPattern};

/// Each plugin's allowed destinations, as published.
static ALLOWED: RwLock<Option<HashMap<String, Vec<HostPattern>>>> = RwLock::new(None);
/// One client per plugin: its redirect policy checks that plugin's list.
static CLIENTS: Mutex<Option<HashMap<String, reqwest::Client>>> = Mutex::new(None);
/// Response bodies not yet read to their end.
static BODIES: Mutex<Option<HashMap<u64, Body>>> = Mutex::new(None);
static NEXT_BODY: AtomicU64 = AtomicU64::new(1);

/// How long a request may take when the plugin does not say.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// A response body up to this size (as its `Content-Length` says) is read
/// with its head.
const SMALL_BODY: u64 = 64 * 1024;
/// Response bodies one plugin may hold open at once.
const MAX_OPEN_BODIES: usize = 1024;

struct Body {
    plugin: String,
    response: Option<reqwest::Response>,
    /// A small body read whole with its head (one read hands it over).
    buffered: Option<bytes::Bytes>,
    host: String,
}

/// The variable an operator sets to replace `plugin`'s list.
pub fn override_variable(plugin: &str) -> String {
    format!("PLUGHOST_HTTP_ALLOW_{}", plugin.to_ascii_uppercase())
}

/// The destinations `plugin` may reach: the operator's variable when set
/// (a bad pattern in it is logged and allows nothing), else `declared`.
pub fn allowed_for(plugin: &str, declared: &[HostPattern]) -> Vec<HostPattern> {
    let variable = override_variable(plugin);
    match std::env::var(&variable) {
        Ok(text) => permissions::parse_all(text.split(',')).unwrap_or_else(|e| {
            tracing::warn!(plugin, "{variable}: {e}; the plugin may reach no host");
            Vec::new()
        }),
        Err(_) => declared.to_vec(),
    }
}

/// Records what every loaded plugin may reach (and forgets the clients
/// of plugins whose list changed).
pub fn publish(allowed: HashMap<String, Vec<HostPattern>>) {
    let mut current = ALLOWED.write().expect("allowed lock");
    if let Some(clients) = CLIENTS.lock().expect("clients lock").as_mut() {
        clients.retain(|plugin, _| {
            current.as_ref().and_then(|c| c.get(plugin)) == allowed.get(plugin)
        });
    }
    *current = Some(allowed);
}

/// Whether `plugin` may reach `url`; the refusal names both.
fn check(plugin: &str, url: &reqwest::Url) -> Result<(), String> {
    // host_str writes an IPv6 address in brackets, as patterns do.
    let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
        return Err(format!("'{url}' names no host and port"));
    };
    let allowed = ALLOWED.read().expect("allowed lock");
    let list = allowed.as_ref().and_then(|a| a.get(plugin));
    if list.is_some_and(|l| l.iter().any(|p| p.allows(host, port))) {
        return Ok(());
    }
    let shown = list.filter(|l| !l.is_empty()).map_or_else(
        || "none".to_owned(),
        |l| {
            l.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        },
    );
    Err(format!(
        "plugin '{plugin}' may not reach {host}:{port} (allowed: {shown}); declare it in plugin.toml [permissions] http, or set {}",
        override_variable(plugin)
    ))
}

fn client(plugin: &str) -> Result<reqwest::Client, String> {
    let mut clients = CLIENTS.lock().expect("clients lock");
    let clients = clients.get_or_insert_with(HashMap::new);
    if let Some(client) = clients.get(plugin) {
        return Ok(client.clone());
    }
    let owner = plugin.to_owned();
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            let first = attempt.previous()[0].to_string();
            return attempt.error(format!("more than 10 redirects from {first}"));
        }
        match check(&owner, attempt.url()) {
            Ok(()) => attempt.follow(),
            Err(refused) => {
                let url = attempt.url().to_string();
                tracing::warn!(plugin = owner.as_str(), url, "redirect refused: {refused}");
                attempt.error(refused)
            }
        }
    });
    let client = reqwest::Client::builder()
        .redirect(policy)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(format!("plughost/{} ({plugin})", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
    clients.insert(plugin.to_owned(), client.clone());
    Ok(client)
}

fn wire_error(kind: &str, message: impl Into<String>) -> RString {
    RString::from(json!({ "kind": kind, "message": message.into() }).to_string())
}

/// An error of reqwest's in the wire format (the refusal of a redirect
/// keeps its own words).
fn from_reqwest(e: &reqwest::Error) -> RString {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_redirect() {
        "refused"
    } else if e.is_connect() {
        "connect"
    } else {
        "other"
    };
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    wire_error(kind, message)
}

/// The metric handles of one plugin and destination, made once per worker
/// thread (registering a labelled series on every request would cost more
/// than the rest of the bookkeeping).
#[derive(Default)]
struct Handles {
    counters: HashMap<&'static str, metrics::Counter>,
    duration: Option<metrics::Histogram>,
}

thread_local! {
    static HANDLES: std::cell::RefCell<HashMap<String, HashMap<String, Handles>>> =
        std::cell::RefCell::new(HashMap::new());
}

fn with_handles<T>(plugin: &str, host: &str, work: impl FnOnce(&mut Handles) -> T) -> T {
    HANDLES.with(|all| {
        let mut all = all.borrow_mut();
        if !all.get(plugin).is_some_and(|h| h.contains_key(host)) {
            all.entry(plugin.to_owned())
                .or_default()
                .insert(host.to_owned(), Handles::default());
        }
        work(
            all.get_mut(plugin)
                .and_then(|h| h.get_mut(host))
                .expect("just made"),
        )
    })
}

fn count(plugin: &str, host: &str, outcome: &'static str) {
    record(plugin, host, outcome, None);
}

/// Counts an exchange by `outcome` and, for an answer, records how long
/// its head took (one look-up of the handles).
fn record(plugin: &str, host: &str, outcome: &'static str, seconds: Option<f64>) {
    with_handles(plugin, host, |h| {
        h.counters
            .entry(outcome)
            .or_insert_with(|| {
                metrics::counter!("plughost_plugin_http_requests_total", "plugin" => plugin.to_owned(), "host" => host.to_owned(), "outcome" => outcome)
            })
            .increment(1);
        if let Some(seconds) = seconds {
            h.duration
                .get_or_insert_with(|| {
                    metrics::histogram!("plughost_plugin_http_request_duration_seconds", "plugin" => plugin.to_owned(), "host" => host.to_owned())
                })
                .record(seconds);
        }
    });
}

/// A request's head as the plugin writes it (borrowed from its text where
/// no escape forces a copy).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    url: Cow<'a, str>,
    #[serde(default, borrow)]
    headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    timeout_ms: Option<u64>,
}

/// A response's head as the plugin reads it, written straight from the
/// response's header map.
#[derive(Serialize)]
struct Answer<'a> {
    status: u16,
    #[serde(serialize_with = "header_pairs")]
    headers: &'a reqwest::header::HeaderMap,
    body: u64,
    complete: bool,
}

/// Headers as `[[name, value], ...]` (values that are not text left out).
fn header_pairs<S: serde::Serializer>(
    headers: &&reqwest::header::HeaderMap,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        headers
            .iter()
            .filter_map(|(n, v)| Some((n.as_str(), v.to_str().ok()?))),
    )
}

async fn send(plugin: String, head: String, body: Vec<u8>) -> Result<RString, RString> {
    let head: Head<'_> = serde_json::from_str(&head)
        .map_err(|e| wire_error("other", format!("the request is not understood: {e}")))?;
    let url = reqwest::Url::parse(&head.url)
        .map_err(|e| wire_error("other", format!("'{}' is not a URL: {e}", head.url)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(wire_error(
            "other",
            format!("'{url}' is not an http:// or https:// URL"),
        ));
    }
    let host = url.host_str().unwrap_or_default().to_owned();
    if let Err(refused) = check(&plugin, &url) {
        tracing::warn!(plugin, host, "HTTP request refused: {refused}");
        count(&plugin, &host, "refused");
        return Err(wire_error("refused", refused));
    }
    let method = reqwest::Method::from_bytes(head.method.as_bytes())
        .ok()
        .filter(|_| !head.method.bytes().any(|b| b.is_ascii_lowercase()))
        .map_or_else(
            || reqwest::Method::from_bytes(head.method.to_ascii_uppercase().as_bytes()),
            Ok,
        )
        .map_err(|_| wire_error("other", format!("'{}' is not an HTTP method", head.method)))?;
    let open = BODIES
        .lock()
        .expect("bodies lock")
        .as_ref()
        // Counted only when the whole table is that full: no scan per request.
        .filter(|b| b.len() >= MAX_OPEN_BODIES)
        .map_or(0, |b| b.values().filter(|b| b.plugin == plugin).count());
    if open >= MAX_OPEN_BODIES {
        return Err(wire_error(
            "other",
            format!(
                "plugin '{plugin}' holds {open} response bodies unread; read or drop them first"
            ),
        ));
    }
    let client = client(&plugin).map_err(|e| wire_error("other", e))?;
    let mut request = client.request(method, url).timeout(
        head.timeout_ms
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis),
    );
    for (name, value) in &head.headers {
        request = request.header(name.as_ref(), value.as_ref());
    }
    let started = Instant::now();
    let response = match request.body(body).send().await {
        Ok(response) => response,
        Err(e) => {
            count(
                &plugin,
                &host,
                if e.is_timeout() { "timeout" } else { "error" },
            );
            return Err(from_reqwest(&e));
        }
    };
    let status = response.status().as_u16();
    record(
        &plugin,
        &host,
        match status {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        },
        Some(started.elapsed().as_secs_f64()),
    );
    // A body that says it is small is read now: the plugin gets it with
    // one read and knows it is all (no read to learn of its end).
    let small = response
        .content_length()
        .is_some_and(|length| length <= SMALL_BODY);
    let id = NEXT_BODY.fetch_add(1, Ordering::Relaxed);
    let answer = serde_json::to_string(&Answer {
        status,
        headers: response.headers(),
        body: id,
        complete: small,
    })
    .map_err(|e| wire_error("other", format!("the response head cannot be written: {e}")))?;
    let (response, buffered) = if small {
        match response.bytes().await {
            Ok(bytes) => (None, Some(bytes)),
            Err(e) => {
                count(
                    &plugin,
                    &host,
                    if e.is_timeout() { "timeout" } else { "error" },
                );
                return Err(from_reqwest(&e));
            }
        }
    } else {
        (Some(response), None)
    };
    BODIES
        .lock()
        .expect("bodies lock")
        .get_or_insert_with(HashMap::new)
        .insert(
            id,
            Body {
                plugin,
                response,
                buffered,
                host,
            },
        );
    Ok(RString::from(answer))
}

/// [`HostServices::http_send`](plugin_api::abi::HostServices::http_send).
pub(super) extern "C" fn http_send(
    plugin: RStr<'_>,
    head: RString,
    body: RVec<u8>,
) -> FfiFuture<RResult<RString, RString>> {
    send(
        plugin.as_str().to_owned(),
        head.into_string(),
        body.into_vec(),
    )
    .map(RResult::from)
    .into_plugin_ffi()
}

/// [`HostServices::http_read`](plugin_api::abi::HostServices::http_read).
pub(super) extern "C" fn http_read(
    plugin: RStr<'_>,
    body: u64,
) -> FfiFuture<RResult<RVec<u8>, RString>> {
    let plugin = plugin.as_str().to_owned();
    async move {
        // The response is taken out while a chunk is awaited, so other
        // bodies are read meanwhile; it goes back unless it ended.
        let (mut response, host) = {
            let mut bodies = BODIES.lock().expect("bodies lock");
            let entry = bodies
                .as_mut()
                .and_then(|b| b.get_mut(&body))
                .filter(|b| b.plugin == plugin)
                .ok_or_else(|| wire_error("other", format!("response body {body} is not open")))?;
            if let Some(bytes) = entry.buffered.take() {
                let all = RVec::from(bytes.to_vec());
                if let Some(open) = bodies.as_mut() {
                    open.remove(&body);
                }
                return Ok(all);
            }
            let response = entry.response.take().ok_or_else(|| {
                wire_error("other", format!("response body {body} is being read"))
            })?;
            (response, entry.host.clone())
        };
        let chunk = response.chunk().await;
        let mut bodies = BODIES.lock().expect("bodies lock");
        let bodies = bodies.get_or_insert_with(HashMap::new);
        match chunk {
            Ok(Some(bytes)) => {
                if let Some(entry) = bodies.get_mut(&body) {
                    entry.response = Some(response);
                }
                Ok(RVec::from(bytes.to_vec()))
            }
            Ok(None) => {
                bodies.remove(&body);
                Ok(RVec::new())
            }
            Err(e) => {
                bodies.remove(&body);
                count(
                    &plugin,
                    &host,
                    if e.is_timeout() { "timeout" } else { "error" },
                );
                Err(from_reqwest(&e))
            }
        }
    }
    .map(RResult::from)
    .into_plugin_ffi()
}

/// [`HostServices::http_close`](plugin_api::abi::HostServices::http_close).
pub(super) extern "C" fn http_close(plugin: RStr<'_>, body: u64) {
    let mut bodies = BODIES.lock().expect("bodies lock");
    if let Some(bodies) = bodies.as_mut()
        && bodies
            .get(&body)
            .is_some_and(|b| b.plugin == plugin.as_str())
    {
        bodies.remove(&body);
    }
}
