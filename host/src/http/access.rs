//! The middleware around every request: it gives the request its trace id
//! (the context every log line it causes carries, answered in
//! `x-request-id`), records the request's metrics and writes its access
//! log line (method, route template, status, duration, trace id).

use std::{
    future::{Future, Ready, ready},
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use actix_web::{
    Error,
    dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready},
    http::{
        Method,
        header::{HeaderName, HeaderValue},
    },
};

use super::envelope::{TraceId, new_trace_id};
use crate::observe::{RequestContext, Traced, core_answered};

/// The middleware; `access_log` says whether each request is logged.
#[derive(Clone, Copy)]
pub struct Observe {
    /// Whether to write one line per request.
    pub access_log: bool,
}

impl<S, B> Transform<S, ServiceRequest> for Observe
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Transform = ObserveService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(ObserveService {
            service,
            access_log: self.access_log,
        }))
    }
}

/// The middleware around one app.
pub struct ObserveService<S> {
    service: S,
    access_log: bool,
}

impl<S, B> Service<ServiceRequest> for ObserveService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
{
    type Response = ServiceResponse<B>;
    type Error = Error;
    type Future = Observed<S::Future>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let trace = new_trace_id();
        let method = req.method().clone();
        let context = RequestContext {
            trace: Some(trace),
            route: None,
        };
        Observed {
            inner: Traced::new(self.service.call(req), context),
            started: Instant::now(),
            method,
            trace,
            access_log: self.access_log,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being answered.
    pub struct Observed<F> {
        #[pin]
        inner: Traced<F>,
        started: Instant,
        method: Method,
        trace: TraceId,
        access_log: bool,
    }
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl<F, B> Future for Observed<F>
where
    F: Future<Output = Result<ServiceResponse<B>, Error>>,
{
    type Output = Result<ServiceResponse<B>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let (mut result, context) = std::task::ready!(this.inner.poll(cx));
        let took = this.started.elapsed();
        let status = match &mut result {
            Ok(response) => {
                if let Ok(value) = HeaderValue::from_bytes(this.trace.as_bytes()) {
                    response.headers_mut().insert(REQUEST_ID, value);
                }
                response.status()
            }
            Err(e) => e.as_response_error().status_code(),
        };
        let route: &str = match &context.route {
            Some(route) => {
                route.answered(status.as_u16(), took);
                &route.route
            }
            None => {
                // Core resources are named by their route template.
                let route = result
                    .as_ref()
                    .ok()
                    .and_then(|r| r.request().match_name())
                    .unwrap_or("-");
                core_answered(this.method, route, status.as_u16(), took);
                route
            }
        };
        if *this.access_log {
            crate::observe::access_line(
                this.method.as_str(),
                route,
                status.as_u16(),
                took,
                this.trace,
            );
        }
        Poll::Ready(result)
    }
}
