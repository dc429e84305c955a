//! Outbound HTTP through the host's client (contract 1.4).

use std::time::Duration;

use abi_stable::std_types::{RResult, RStr, RString, RVec};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{Error, Host};

/// Why an HTTP request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpErrorKind {
    /// The plugin may not reach that host (or a redirect led elsewhere).
    Refused,
    /// No answer in time.
    Timeout,
    /// No connection (refused, unreachable, TLS).
    Connect,
    /// Anything else (a bad URL, a broken body).
    Other,
}

/// A failed HTTP request, with the host's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    kind: HttpErrorKind,
    message: String,
}

impl HttpError {
    fn new(kind: HttpErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    fn decode(wire: RString) -> Self {
        #[derive(Deserialize)]
        struct Wire {
            kind: String,
            message: String,
        }
        match serde_json::from_str::<Wire>(&wire) {
            Ok(w) => Self::new(
                match w.kind.as_str() {
                    "refused" => HttpErrorKind::Refused,
                    "timeout" => HttpErrorKind::Timeout,
                    "connect" => HttpErrorKind::Connect,
                    _ => HttpErrorKind::Other,
                },
                w.message,
            ),
            Err(_) => Self::new(HttpErrorKind::Other, wire.into_string()),
        }
    }

    /// What kind of failure.
    pub fn kind(&self) -> HttpErrorKind {
        self.kind
    }

    /// What happened, in words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for HttpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HttpError {}

/// A failed outbound request as a handler's answer: 504 for a time-out,
/// 502 for anything the other side did, 500 for a refusal (the plugin's
/// own configuration).
impl From<HttpError> for Error {
    fn from(e: HttpError) -> Self {
        let status = match e.kind {
            HttpErrorKind::Refused => 500,
            HttpErrorKind::Timeout => 504,
            HttpErrorKind::Connect | HttpErrorKind::Other => 502,
        };
        Error::new(status, e.message)
    }
}

/// An HTTP request to send with [`HttpRequest::send`]; made by
/// [`Host::http`].
#[must_use = "a request does nothing until it is sent"]
pub struct HttpRequest {
    host: Host,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    timeout: Option<Duration>,
}

#[derive(Serialize)]
struct Head<'a> {
    method: &'a str,
    url: &'a str,
    headers: &'a [(String, String)],
    timeout_ms: Option<u64>,
}

impl HttpRequest {
    /// Adds a request header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sends `value` as the JSON body (`Content-Type: application/json`).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        self.body = serde_json::to_vec(value).unwrap_or_default();
        self.header("content-type", "application/json")
    }

    /// Sends `body` as it is.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// How long the whole exchange may take, body included (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sends the request; answers once the response's head has arrived.
    /// Any status is an answer (check [`HttpResponse::status`]); an error
    /// is a request that got none: refused by the host, timed out, no
    /// connection.
    pub async fn send(self) -> Result<HttpResponse, HttpError> {
        let services = self.host.services();
        let (Some(send), Some(read), Some(close)) = (
            services.http_send(),
            services.http_read(),
            services.http_close(),
        ) else {
            return Err(HttpError::new(
                HttpErrorKind::Refused,
                "this host sends no HTTP requests for plugins: it needs a host built with plugin-api 1.4 or later",
            ));
        };
        let head = Head {
            method: &self.method,
            url: &self.url,
            headers: &self.headers,
            timeout_ms: self
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        };
        let head = serde_json::to_string(&head).unwrap_or_default();
        let plugin = self.host.plugin();
        match send(
            RStr::from(plugin),
            RString::from(head),
            RVec::from(self.body),
        )
        .await
        {
            RResult::ROk(answer) => {
                #[derive(Deserialize)]
                struct Answer {
                    status: u16,
                    headers: Vec<(String, String)>,
                    body: u64,
                    /// The host read the whole body: one read gives it all.
                    #[serde(default)]
                    complete: bool,
                }
                let answer: Answer = serde_json::from_str(&answer)
                    .map_err(|e| HttpError::new(HttpErrorKind::Other, e.to_string()))?;
                Ok(HttpResponse {
                    plugin,
                    status: answer.status,
                    headers: answer.headers,
                    body: Some(answer.body),
                    complete: answer.complete,
                    read,
                    close,
                })
            }
            RResult::RErr(e) => Err(HttpError::decode(e)),
        }
    }
}

type ReadFn = extern "C" fn(RStr<'_>, u64) -> async_ffi::FfiFuture<RResult<RVec<u8>, RString>>;
type CloseFn = extern "C" fn(RStr<'_>, u64);

/// A response: its status and headers at once, its body as it comes.
/// Dropping it unread lets the host drop the rest of the body.
pub struct HttpResponse {
    plugin: &'static str,
    status: u16,
    headers: Vec<(String, String)>,
    body: Option<u64>,
    complete: bool,
    read: ReadFn,
    close: CloseFn,
}

impl HttpResponse {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first header named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every header, in order.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The next chunk of the body, as it arrives; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, HttpError> {
        let Some(body) = self.body else {
            return Ok(None);
        };
        match (self.read)(RStr::from(self.plugin), body).await {
            RResult::ROk(bytes) if bytes.is_empty() => {
                self.body = None;
                Ok(None)
            }
            RResult::ROk(bytes) => {
                if self.complete {
                    // The host handed over the whole body and let it go.
                    self.body = None;
                }
                Ok(Some(bytes.into_vec()))
            }
            RResult::RErr(e) => {
                self.body = None;
                Err(HttpError::decode(e))
            }
        }
    }

    /// The whole body.
    pub async fn bytes(mut self) -> Result<Vec<u8>, HttpError> {
        let mut all = Vec::new();
        while let Some(chunk) = self.chunk().await? {
            all.extend_from_slice(&chunk);
        }
        Ok(all)
    }

    /// The whole body as text (invalid UTF-8 replaced).
    pub async fn text(self) -> Result<String, HttpError> {
        Ok(String::from_utf8_lossy(&self.bytes().await?).into_owned())
    }

    /// The whole body parsed as JSON into `T`.
    pub async fn json<T: DeserializeOwned>(self) -> Result<T, HttpError> {
        let bytes = self.bytes().await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            HttpError::new(
                HttpErrorKind::Other,
                format!("the response is not the JSON expected: {e}"),
            )
        })
    }
}

impl Drop for HttpResponse {
    fn drop(&mut self) {
        if let Some(body) = self.body.take() {
            (self.close)(RStr::from(self.plugin), body);
        }
    }
}

impl Host {
    /// An HTTP request with `method` to `url`, sent through the host's
    /// client (pooled connections, TLS, time-outs) — the plugin links no
    /// HTTP client of its own. The host sends it only to the hosts the
    /// plugin may reach: its plugin.toml declares them,
    ///
    /// ```toml
    /// [permissions]
    /// http = ["api.github.com", "*.example.com", "127.0.0.1:8080"]
    /// ```
    ///
    /// and the operator may replace the list with
    /// `PLUGHOST_HTTP_ALLOW_<PLUGIN>`. Anything else, a redirect included,
    /// is refused ([`HttpErrorKind::Refused`]) and logged.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), plugin_api::Error> {
    /// let user: serde_json::Value = plugin_api::host()
    ///     .http("GET", "https://api.github.com/users/octocat")
    ///     .header("accept", "application/json")
    ///     .send()
    ///     .await?
    ///     .json()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn http(&self, method: &str, url: &str) -> HttpRequest {
        HttpRequest {
            host: *self,
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: None,
        }
    }
}
