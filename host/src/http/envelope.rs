//! The JSON envelope every answer uses, errors included.
//!
//! Success: `{"code": 200, "msg": "Request success", "data": …}`.
//! Error: `{"code": N, "msg": "…", "data": null, "trace_id": "…"}` with HTTP
//! status N and the trace id also in `x-request-id`.

use std::cell::Cell;

use actix_web::{
    HttpResponse, ResponseError,
    http::{StatusCode, header::HeaderValue},
};
use serde::Serialize;

use crate::{
    plugin::{
        PluginError,
        lifecycle::{
            LifecycleError, lock::LockError, package::PackageError, sql::ScriptError,
            store::StoreError,
        },
        running::status::FlagError,
    },
    redis::RedisError,
};

/// The trace id of the request being answered on this thread (every log
/// line it causes carries it), or a fresh one outside a request.
pub fn trace_id() -> TraceId {
    crate::observe::current_trace().unwrap_or_else(new_trace_id)
}

/// A fresh trace id: 16 hex digits, unique enough to find a request in the
/// log, cheap enough for every request (no syscall, no allocation).
pub fn new_trace_id() -> TraceId {
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
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
    /// The id as text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("hex digits are ASCII")
    }

    /// The id as ASCII bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    code: u16,
    msg: &'a str,
    data: T,
    #[serde(skip_serializing_if = "Option::is_none")]
    trace_id: Option<&'a str>,
}

/// A 200 envelope around `data`.
pub fn ok<T: Serialize>(data: T) -> HttpResponse {
    ok_saying("Request success", data)
}

/// A 200 envelope around `data` with its own message.
pub fn ok_saying<T: Serialize>(msg: &str, data: T) -> HttpResponse {
    HttpResponse::Ok().json(Envelope {
        code: 200,
        msg,
        data,
        trace_id: None,
    })
}

/// A 405 envelope for `method` on `path`, with the `Allow` header.
pub fn method_not_allowed(method: &str, path: &str, allowed: &str) -> HttpResponse {
    let mut response = error(
        StatusCode::METHOD_NOT_ALLOWED,
        &format!("{method} is not allowed on {path} (allowed: {allowed})"),
    );
    if let Ok(value) = HeaderValue::from_str(allowed) {
        response
            .headers_mut()
            .insert(actix_web::http::header::ALLOW, value);
    }
    response
}

/// An error envelope with `status` and `msg`, with a new trace id.
pub fn error(status: StatusCode, msg: &str) -> HttpResponse {
    error_traced(status, msg, trace_id().as_str())
}

/// An error envelope with a given trace id.
pub fn error_traced(status: StatusCode, msg: &str, trace_id: &str) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    if let Ok(value) = HeaderValue::from_str(trace_id) {
        response.insert_header(("x-request-id", value));
    }
    response.json(Envelope {
        code: status.as_u16(),
        msg,
        data: (),
        trace_id: Some(trace_id),
    })
}

/// An error of a core route, rendered as an envelope.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    /// An error with a status and a message naming the thing and what to do.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// The same error, telling the client to try again after `seconds`.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if self.status.is_server_error() && self.retry_after.is_none() {
            tracing::error!("{}", self.message);
        }
        let mut response = error(self.status, &self.message);
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(
                actix_web::http::header::RETRY_AFTER,
                HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        let status = match &e {
            LifecycleError::Package(
                PackageError::TooLarge { .. } | PackageError::TooMuch { .. },
            ) => StatusCode::PAYLOAD_TOO_LARGE,
            LifecycleError::Package(PackageError::Io { .. }) | LifecycleError::Io(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            LifecycleError::Package(_) => StatusCode::BAD_REQUEST,
            LifecycleError::Refused { .. }
            | LifecycleError::Git(_)
            | LifecycleError::Script(ScriptError::Failed { .. } | ScriptError::Read { .. }) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            LifecycleError::Script(ScriptError::Record { .. }) | LifecycleError::Record { .. } => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            LifecycleError::Conflict(_) | LifecycleError::Lock(LockError::Busy { .. }) => {
                StatusCode::CONFLICT
            }
            LifecycleError::Forbidden(_) => StatusCode::FORBIDDEN,
            LifecycleError::Store(StoreError::Db(_)) => StatusCode::SERVICE_UNAVAILABLE,
            LifecycleError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
            LifecycleError::Plugin(e) => return Self::from_plugin_error(e),
            LifecycleError::Lock(LockError::Redis(RedisError::Unavailable { .. }))
            | LifecycleError::Flags(FlagError::Redis(RedisError::Unavailable { .. })) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            LifecycleError::Lock(_) | LifecycleError::Flags(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        Self::from_plugin_error(&e)
    }
}

impl ApiError {
    fn from_plugin_error(e: &PluginError) -> Self {
        let status = match e {
            PluginError::InvalidName(_) => StatusCode::BAD_REQUEST,
            PluginError::NotFound(_) => StatusCode::NOT_FOUND,
            PluginError::NotLoaded { .. } => StatusCode::CONFLICT,
            PluginError::Flags(FlagError::Redis(RedisError::Unavailable { .. })) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            PluginError::Flags(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Self::new(status, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_are_hex_and_differ() {
        let a = trace_id();
        let b = trace_id();
        assert_eq!(a.as_str().len(), 16);
        assert!(a.as_str().bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a.as_str(), b.as_str());
    }
}
