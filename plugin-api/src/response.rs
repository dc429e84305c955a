//! What a handler answers: the JSON envelope, errors, raw responses.

use std::fmt;

use abi_stable::std_types::{RCowStr, RString, RVec, Tuple2};
use serde::Serialize;

use crate::{Request, abi::RawResponse};

const JSON: &str = "application/json";

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response(RawResponse);

impl Response {
    /// An empty response with `status`.
    pub fn new(status: u16) -> Self {
        Self(RawResponse {
            status,
            content_type: RCowStr::Borrowed("".into()),
            headers: RVec::new(),
            body: RVec::new(),
            extensions: RVec::new(),
        })
    }

    /// A response with `status`, a static content type and a body.
    pub fn bytes(status: u16, content_type: &'static str, body: Vec<u8>) -> Self {
        let mut r = Self::new(status);
        r.0.content_type = RCowStr::Borrowed(content_type.into());
        r.0.body = RVec::from(body);
        r
    }

    /// `value` serialized as the JSON body, as is (no envelope).
    pub fn json<T: Serialize + ?Sized>(status: u16, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Self::bytes(status, JSON, body),
            Err(e) => Self::bytes(
                500,
                JSON,
                format!(
                    r#"{{"code":500,"msg":"response could not be serialized: {}","data":null}}"#,
                    e.to_string().replace('"', "'")
                )
                .into_bytes(),
            ),
        }
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.0
            .headers
            .push(Tuple2(RString::from(name), RString::from(value)));
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.0.body
    }

    #[doc(hidden)]
    pub fn into_raw(self) -> RawResponse {
        self.0
    }

    pub(crate) fn from_raw(raw: RawResponse) -> Self {
        Self(raw)
    }

    /// Sets the body and its content type.
    pub(crate) fn set_body(&mut self, content_type: &str, body: Vec<u8>) {
        self.0.content_type = RCowStr::Owned(RString::from(content_type));
        self.0.body = RVec::from(body);
    }
}

/// Turns a handler's output into a [`Response`].
pub trait IntoResponse {
    /// Builds the response; `request` gives the trace id for error envelopes.
    fn into_response(self, request: &Request<'_>) -> Response;
}

impl IntoResponse for Response {
    fn into_response(self, _: &Request<'_>) -> Response {
        self
    }
}

/// The standard success envelope: `{"code": 200, "msg": "Request success", "data": …}`.
#[derive(Debug, Clone)]
pub struct Json<T>(pub T);

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    code: u16,
    msg: &'a str,
    data: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self, _: &Request<'_>) -> Response {
        Response::json(
            200,
            &Envelope {
                code: 200,
                msg: "Request success",
                data: self.0,
                trace_id: None,
            },
        )
    }
}

/// An error answer: `{"code": N, "msg": "…", "data": null, "trace_id": "…"}`
/// with HTTP status N.
#[derive(Debug, Clone)]
pub struct Error {
    status: u16,
    message: String,
}

impl Error {
    /// An error with HTTP `status` and a message for the caller.
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    /// 404: the thing asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, message)
    }

    /// 500: something failed inside the plugin.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for Error {}

impl IntoResponse for Error {
    fn into_response(self, request: &Request<'_>) -> Response {
        Response::json(
            self.status,
            &Envelope {
                code: self.status,
                msg: &self.message,
                data: (),
                trace_id: Some(request.trace_id()),
            },
        )
        .with_header("x-request-id", request.trace_id())
    }
}

impl<T: IntoResponse, E: IntoResponse> IntoResponse for Result<T, E> {
    fn into_response(self, request: &Request<'_>) -> Response {
        match self {
            Ok(ok) => ok.into_response(request),
            Err(err) => err.into_response(request),
        }
    }
}
