//! The JSON envelope every answer uses, errors included.
//!
//! Success: `{"code": 200, "msg": "Request success", "data": …}`.
//! Error: `{"code": N, "msg": "…", "data": null, "trace_id": "…"}` with HTTP
//! status N and the trace id also in `x-request-id`.

use actix_web::{
    HttpResponse, ResponseError,
    http::{StatusCode, header::HeaderValue},
};
use serde::Serialize;

pub use crate::observe::{TraceId, new_trace_id, trace_id};
use crate::plugin::{PluginError, lifecycle::LifecycleError};

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

/// An error envelope's JSON bytes (for an answer made elsewhere: an
/// isolated plugin's child).
pub fn error_body(status: u16, msg: &str, trace_id: &str) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        code: status,
        msg,
        data: (),
        trace_id: Some(trace_id),
    })
    .unwrap_or_default()
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
        Self::new(status(e.status()), e.to_string())
    }
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> Self {
        Self::new(status(e.status()), e.to_string())
    }
}

/// The status an error says it answers (500 if it says none that exists).
fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
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
