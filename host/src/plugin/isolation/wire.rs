//! What the host and an isolated plugin's child process say to each other
//! over their Unix socket: frames of a head (serde's compact binary form,
//! postcard: both ends are the same binary) and a byte body
//! (`[u32 head length][u32 body length][head][body]`, big-endian), the
//! body carrying request and response bodies and stream chunks unencoded.
//!
//! The socket the host listens on carries the plugin's lifecycle, health
//! checks and whatever else the host sends; each of the host's HTTP
//! workers also opens a lane of its own to the child (see [`Hello::lanes`]).

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The largest head a frame may have.
const MAX_HEAD: u32 = 16 << 20;
/// The largest body a frame may have.
const MAX_BODY: u32 = 1 << 30;

/// What the host sends the child.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToChild {
    /// Run the plugin's init hook (after the host ran its SQL).
    Init,
    /// Run its start hook (and from then on its tasks and jobs).
    Start,
    /// Run its stop hook; the child exits once the socket closes.
    Stop,
    /// The plugin's flag changed.
    Enabled {
        /// Whether it serves.
        enabled: bool,
    },
    /// A request for handler `handler`; the frame's body is its body.
    Request {
        /// The host's id of the exchange.
        id: u64,
        /// The handler id.
        handler: u32,
        /// What the handler reads.
        request: Box<WireRequest>,
    },
    /// The host stopped waiting for request `id` (its deadline passed, or
    /// the client left): drop its future.
    Cancel {
        /// The exchange.
        id: u64,
    },
    /// Ask the plugin's authenticator about an `Authorization` header.
    Authenticate {
        /// The exchange.
        id: u64,
        /// The header's value.
        authorization: String,
    },
    /// Ask the plugin's authorizer about an admin call
    /// (`plugin_api::AdminCall` as JSON).
    Authorize {
        /// The exchange.
        id: u64,
        /// The call.
        call: String,
    },
    /// How many plugins the host serves (`Host::loaded_plugins`).
    Plugins {
        /// The count.
        loaded: u32,
    },
    /// Render the child's metrics (answered as `Hooked`, a string).
    Metrics {
        /// The exchange.
        id: u64,
    },
    /// Report the plugin's jobs (answered as `Hooked`, an array), for the
    /// plugin list.
    ListJobs {
        /// The exchange.
        id: u64,
    },
    /// Are you there?
    Ping {
        /// Echoed in the answer.
        id: u64,
    },
}

/// A request's parts, owned.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct WireRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Path parameters.
    pub params: Vec<(String, String)>,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The caller, when authenticated.
    pub principal: Option<WirePrincipal>,
    /// The route's template (for the child's metrics).
    #[serde(default)]
    pub route: String,
    /// The request's trace id.
    pub trace_id: String,
}

/// An authenticated caller.
#[derive(Debug, Serialize, Deserialize)]
pub struct WirePrincipal {
    /// Id.
    pub user_id: i64,
    /// Login name.
    pub username: String,
    /// Passes every check.
    pub superuser: bool,
    /// Its permissions.
    pub permissions: Vec<String>,
}

/// What the child sends the host.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToHost {
    /// The library is open: what the host needs to mount it.
    Hello(Box<Hello>),
    /// The library could not be opened or checked.
    Refused {
        /// Why.
        reason: String,
    },
    /// An answer to `Init`, `Start` or `Stop`.
    Done {
        /// Which (`init`, `start`, `stop`).
        step: String,
        /// Its failure, if it failed.
        error: Option<String>,
    },
    /// The head of request `id`'s answer; the frame's body is its body,
    /// unless `stream` says chunks follow.
    Response {
        /// The exchange.
        id: u64,
        /// Status.
        status: u16,
        /// Content type.
        content_type: String,
        /// Further headers.
        headers: Vec<(String, String)>,
        /// Whether the body comes as `Chunk` frames, then `End`.
        stream: bool,
    },
    /// A chunk of request `id`'s streamed body (the frame's body).
    Chunk {
        /// The exchange.
        id: u64,
    },
    /// Request `id`'s streamed body ended.
    End {
        /// The exchange.
        id: u64,
    },
    /// A hook's answer: the authenticator's user (or null), the
    /// authorizer's denial (or null); or the hook's failure.
    Hooked {
        /// The exchange.
        id: u64,
        /// Its answer.
        #[serde(with = "json_text")]
        answer: Result<serde_json::Value, String>,
    },
    /// Here.
    Pong {
        /// The ping's id.
        id: u64,
    },
}

/// What the child reports of the plugin it opened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    /// The name the library declares.
    pub name: String,
    /// The contract version it was built against.
    pub contract: String,
    /// The manifest it embeds.
    pub manifest: String,
    /// The files it embeds (README, SQL scripts), by path.
    pub files: std::collections::BTreeMap<String, String>,
    /// Its routers.
    pub routers: Vec<WireRouter>,
    /// Whether it has an authenticator.
    pub authenticate: bool,
    /// Whether it has an authorizer.
    pub authorize: bool,
    /// The child's process id.
    pub pid: u32,
    /// Whether it accepts lanes beside the host's socket
    /// (`child::lanes_path`): further connections, one per HTTP worker of
    /// the host, that carry requests and their answers (and `Cancel`,
    /// `Authenticate`, `Authorize`) without a hop through another thread.
    pub lanes: bool,
}

/// A router, as `plugin_api::abi::RouterSpec` says it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRouter {
    /// Name.
    pub name: String,
    /// Prefix.
    pub prefix: String,
    /// Routes.
    pub routes: Vec<WireRoute>,
}

/// A route, as `plugin_api::abi::RouteSpec` says it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WireRoute {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Handler id.
    pub handler: u32,
    /// Needs a caller.
    pub auth: bool,
    /// Needs this permission.
    pub permission: Option<String>,
    /// One line.
    pub summary: String,
    /// Its documentation and options.
    pub extensions: Vec<(String, String)>,
}

impl WireRouter {
    /// The router as the library gave it.
    pub fn from_spec(spec: &plugin_api::abi::RouterSpec) -> Self {
        Self {
            name: spec.name.to_string(),
            prefix: spec.prefix.to_string(),
            routes: spec
                .routes
                .iter()
                .map(|r| WireRoute {
                    method: r.method.to_string(),
                    path: r.path.to_string(),
                    handler: r.handler,
                    auth: r.auth,
                    permission: r.permission.as_ref().map(|p| p.to_string()).into_option(),
                    summary: r.summary.to_string(),
                    extensions: r
                        .extensions
                        .iter()
                        .map(|abi_stable::std_types::Tuple2(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                })
                .collect(),
        }
    }

    /// The router as the host mounts a library's.
    pub fn into_spec(self) -> plugin_api::abi::RouterSpec {
        use abi_stable::std_types::{RString, Tuple2};
        plugin_api::abi::RouterSpec {
            name: self.name.into(),
            prefix: self.prefix.into(),
            routes: self
                .routes
                .into_iter()
                .map(|r| plugin_api::abi::RouteSpec {
                    method: r.method.into(),
                    path: r.path.into(),
                    handler: r.handler,
                    auth: r.auth,
                    permission: r.permission.map(RString::from).into(),
                    summary: r.summary.into(),
                    extensions: r
                        .extensions
                        .into_iter()
                        .map(|(k, v)| Tuple2(k.into(), v.into()))
                        .collect(),
                })
                .collect(),
            extensions: abi_stable::std_types::RVec::new(),
        }
    }
}

/// A frame: a head and a body.
pub type Frame<T> = (T, Vec<u8>);

/// Appends one frame to `out`.
fn encode<T: Serialize>(out: &mut Vec<u8>, head: &T, body: &[u8]) -> std::io::Result<()> {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    postcard::to_io(head, &mut *out).map_err(std::io::Error::other)?;
    let head_len = out.len() - start - 8;
    let sizes = |n: usize| u32::try_from(n).map_err(|_| std::io::Error::other("frame too large"));
    out[start..start + 4].copy_from_slice(&sizes(head_len)?.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&sizes(body.len())?.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// Writes the frames `frames` receives until it closes or a write fails:
/// all those waiting at once in one write (under load, many answers share
/// a system call).
pub async fn pump<T: Serialize, W: tokio::io::AsyncWrite + Unpin>(
    mut to: W,
    mut frames: tokio::sync::mpsc::UnboundedReceiver<(T, Vec<u8>)>,
) {
    let mut out = Vec::new();
    while let Some((head, body)) = frames.recv().await {
        out.clear();
        if encode(&mut out, &head, &body).is_err() {
            return;
        }
        while out.len() < 1 << 20
            && let Ok((head, body)) = frames.try_recv()
        {
            if encode(&mut out, &head, &body).is_err() {
                return;
            }
        }
        if to.write_all(&out).await.is_err() || to.flush().await.is_err() {
            return;
        }
    }
}

/// The frames coming in on one socket, read through one buffer.
pub struct Frames<R> {
    from: tokio::io::BufReader<R>,
    head: Vec<u8>,
}

impl<R: tokio::io::AsyncRead + Unpin> Frames<R> {
    /// Frames read from `from`.
    pub fn new(from: R) -> Self {
        Self {
            from: tokio::io::BufReader::with_capacity(64 << 10, from),
            head: Vec::new(),
        }
    }

    /// The next frame; `None` at the end of the stream.
    pub async fn next<T: serde::de::DeserializeOwned>(
        &mut self,
    ) -> std::io::Result<Option<Frame<T>>> {
        let mut prefix = [0u8; 8];
        match self.from.read_exact(&mut prefix).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let head_len = u32::from_be_bytes(prefix[..4].try_into().expect("4 bytes"));
        let body_len = u32::from_be_bytes(prefix[4..].try_into().expect("4 bytes"));
        if head_len > MAX_HEAD || body_len > MAX_BODY {
            return Err(std::io::Error::other(format!(
                "a frame of {head_len} + {body_len} bytes is over the limits"
            )));
        }
        self.head.resize(head_len as usize, 0);
        self.from.read_exact(&mut self.head).await?;
        let mut body = vec![0u8; body_len as usize];
        self.from.read_exact(&mut body).await?;
        let head = postcard::from_bytes(&self.head).map_err(std::io::Error::other)?;
        Ok(Some((head, body)))
    }
}

/// A hook's answer goes as JSON text: the head's binary form has no room
/// for a value of any shape.
mod json_text {
    use serde::{Deserialize as _, Deserializer, Serialize as _, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer>(
        answer: &Result<serde_json::Value, String>,
        to: S,
    ) -> Result<S::Ok, S::Error> {
        answer
            .as_ref()
            .map(serde_json::Value::to_string)
            .map_err(Clone::clone)
            .serialize(to)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        from: D,
    ) -> Result<Result<serde_json::Value, String>, D::Error> {
        match Result::<String, String>::deserialize(from)? {
            Ok(text) => serde_json::from_str(&text)
                .map(Ok)
                .map_err(D::Error::custom),
            Err(failure) => Ok(Err(failure)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of head reads back as it was written, bodies beside them.
    #[tokio::test]
    async fn frames_round_trip() {
        let request = ToChild::Request {
            id: 7,
            handler: 3,
            request: Box::new(WireRequest {
                method: "POST".into(),
                path: "/p/v1/x".into(),
                query: "a=1".into(),
                params: vec![("id".into(), "9".into())],
                headers: vec![("x-y".into(), "z".into())],
                principal: Some(WirePrincipal {
                    user_id: 1,
                    username: "admin".into(),
                    superuser: true,
                    permissions: vec!["sys:user:add".into()],
                }),
                route: "/p/v1/{id}".into(),
                trace_id: "0123456789abcdef".into(),
            }),
        };
        let hooked = ToHost::Hooked {
            id: 8,
            answer: Ok(serde_json::json!([{"name": "job", "next": null}])),
        };
        let failed = ToHost::Hooked {
            id: 9,
            answer: Err("the authorizer panicked".into()),
        };
        let mut out = Vec::new();
        encode(&mut out, &request, b"body").unwrap();
        encode(&mut out, &hooked, b"").unwrap();
        encode(&mut out, &failed, b"").unwrap();
        let mut from = Frames::new(out.as_slice());
        let (head, body) = from.next::<ToChild>().await.unwrap().unwrap();
        assert_eq!(format!("{head:?}"), format!("{request:?}"));
        assert_eq!(body, b"body");
        for sent in [hooked, failed] {
            let (head, body) = from.next::<ToHost>().await.unwrap().unwrap();
            assert_eq!(format!("{head:?}"), format!("{sent:?}"));
            assert!(body.is_empty());
        }
        assert!(from.next::<ToHost>().await.unwrap().is_none());
    }
}
