//! Limits on request bodies: a body that stops arriving is answered 408
//! after the body timeout; a declared length above a route's limit is
//! answered 413 before any of it is read.
//!
//! One stream wrapper, [`Stalling`], carries the timeout for every route
//! that reads a body: the plugin dispatcher wraps its payload itself (no
//! middleware on the plugin hot path), and the core routes that read bodies
//! (login, install) take it through [`stall_guard`].

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    Error, HttpMessage as _, HttpRequest,
    body::MessageBody,
    dev::{Payload, ServiceRequest, ServiceResponse},
    error::PayloadError,
    http::{
        StatusCode,
        header::{CONTENT_LENGTH, TRANSFER_ENCODING},
    },
    middleware::Next,
    web,
};
use bytes::Bytes;
use futures_util::{Stream, future::Future as _};
use tokio::time::{Instant, Sleep};

use super::{AppState, envelope::ApiError};

/// Whether the request can carry a body at all (HTTP/1.1 framing).
pub fn may_have_body(req: &HttpRequest) -> bool {
    let headers = req.headers();
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get(CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// The length a request declares (`Content-Length`), if it does.
pub fn declared_length(req: &HttpRequest) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// The 413 for a request whose declared length exceeds `limit`, before
/// any of its body is read.
pub fn check_declared_length(req: &HttpRequest, limit: u64, setting: &str) -> Result<(), ApiError> {
    match declared_length(req) {
        Some(length) if length > limit => Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "request body of {length} bytes exceeds the limit of {limit} bytes ({setting})"
            ),
        )),
        _ => Ok(()),
    }
}

/// The message of a stalled body's error, for [`is_stalled`].
const STALLED: &str = "request body stalled";

/// A payload that fails with a timeout when no bytes arrive for `timeout`.
pub struct Stalling {
    inner: Payload,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
}

impl Stalling {
    /// Wraps `inner`; the clock starts now and restarts on every chunk.
    pub fn new(inner: Payload, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl Stream for Stalling {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                let deadline = Instant::now() + this.timeout;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(item)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{STALLED}: no bytes for {} s (PLUGHOST_BODY_TIMEOUT); send the whole body without pausing",
                        this.timeout.as_secs()
                    ),
                ))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

/// Whether a payload error is a stalled body (answered 408, not 400).
pub fn is_stalled(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == io::ErrorKind::TimedOut)
}

/// The status for a body that could not be read.
pub fn payload_status(e: &PayloadError) -> StatusCode {
    match e {
        _ if is_stalled(e) => StatusCode::REQUEST_TIMEOUT,
        PayloadError::Overflow => StatusCode::PAYLOAD_TOO_LARGE,
        _ => StatusCode::BAD_REQUEST,
    }
}

/// Wraps the body of a core route that reads one in [`Stalling`].
pub async fn stall_guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if may_have_body(req.request()) {
        let timeout = req
            .app_data::<web::Data<AppState>>()
            .expect("AppState is registered")
            .body_timeout;
        let payload = req.take_payload();
        req.set_payload(Payload::Stream {
            payload: Box::pin(Stalling::new(payload, timeout)),
        });
    }
    next.call(req).await
}
