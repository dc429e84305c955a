//! The one dispatcher for plugin routes, mounted twice: as the admin
//! scope's default service (extend-level routes, behind admin middleware)
//! and as the app's default service (app-level routes).
//!
//! Per request: one atomic load of the route table, one trie lookup, one
//! atomic read of the plugin's flag (the status gate, no I/O), and a call
//! into the plugin with borrowed request data: headers are read lazily
//! through a callback, the body is passed as a slice, nothing is copied.

use std::panic::AssertUnwindSafe;

use abi_stable::std_types::{ROption, RSlice, RStr, RVec, Tuple2};
use actix_web::{
    HttpRequest, HttpResponse,
    dev::{Payload, ServiceFactory, ServiceRequest, ServiceResponse, fn_service},
    http::{
        StatusCode,
        header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue},
    },
    web,
};
use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, StreamExt};
use plugin_api::abi::{
    HeaderSource, OwnedPair, Principal as AbiPrincipal, RawRequest, RawResponse, StrPair,
};

use super::{
    AppState, envelope,
    envelope::ApiError,
    limits::{Stalling, check_declared_length, may_have_body, payload_status},
};
use crate::{
    config::StatusCheck,
    plugin::{
        isolation::{
            CallError, Reply,
            wire::{WirePrincipal, WireRequest},
        },
        running::{
            registry::Code,
            router::{Scope, Target},
        },
    },
};

/// The dispatcher for one scope: the admin scope's default service serves
/// extend-level routes, the app's default service app-level ones.
pub fn service(
    scope: Scope,
) -> impl ServiceFactory<
    ServiceRequest,
    Config = (),
    Response = ServiceResponse,
    Error = actix_web::Error,
    InitError = (),
> {
    fn_service(move |req: ServiceRequest| dispatch(scope, req))
}

/// Reads the whole request body, refusing more than `limit` bytes (at
/// once when the declared length says so) and a body that stalls for
/// `timeout`.
async fn read_body(
    req: &HttpRequest,
    payload: &mut Payload,
    limit: usize,
    timeout: std::time::Duration,
) -> Result<Bytes, HttpResponse> {
    check_declared_length(req, limit as u64, "PLUGHOST_MAX_BODY")
        .map_err(|e| actix_web::ResponseError::error_response(&e))?;
    let mut payload = Stalling::new(payload.take(), timeout);
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            envelope::error(
                payload_status(&e),
                &format!("request body could not be read: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(envelope::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body exceeds the limit of {limit} bytes (PLUGHOST_MAX_BODY)"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

async fn dispatch(scope: Scope, req: ServiceRequest) -> Result<ServiceResponse, actix_web::Error> {
    let (req, mut payload) = req.into_parts();
    let response = answer(scope, &req, &mut payload).await;
    Ok(ServiceResponse::new(req, response))
}

async fn answer(scope: Scope, req: &HttpRequest, payload: &mut Payload) -> HttpResponse {
    let state = req
        .app_data::<web::Data<AppState>>()
        .expect("AppState is registered on the app");
    let table = state.plugins.routes();
    let path = req.path();
    let Some(matched) = table.lookup(path).filter(|m| m.value.scope == scope) else {
        return envelope::error(
            StatusCode::NOT_FOUND,
            &format!("no route for {} {path}", req.method()),
        );
    };
    let Some(target) = matched.value.get(req.method()) else {
        return envelope::method_not_allowed(req.method().as_str(), path, &matched.value.allowed());
    };
    let plugin = &target.plugin;
    crate::observe::set_route(&target.metrics);
    let _in_flight = target.metrics.enter();
    let enabled = match state.status_check {
        StatusCheck::Cached => plugin.enabled(),
        StatusCheck::Off => true,
        // Boxed: the Redis read's state stays out of every request's future.
        StatusCheck::Redis => Box::pin(state.plugins.flags().remote_enabled(&plugin.name))
            .await
            .unwrap_or_else(|| plugin.enabled()),
    };
    if !enabled {
        target.metrics.refused();
        return envelope::error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "plugin '{}' is disabled; an administrator can enable it with PUT /admin/v1/sys/plugins/{}/status",
                plugin.name, plugin.name
            ),
        );
    }
    // Authentication: the admin scope's guard has already run; an app-level
    // route that asks for it authenticates here.
    let caller = if target.auth {
        let found = match scope {
            Scope::Admin => super::auth::caller(req).map(|c| c.principal),
            Scope::App => state
                .auth
                .authenticate(super::auth::authorization(req))
                .await
                .map(|(principal, _, _)| principal)
                .map_err(ApiError::from),
        };
        match found {
            Ok(principal) => Some(principal),
            Err(e) => return actix_web::ResponseError::error_response(&e),
        }
    } else {
        None
    };
    if let (Some(permission), Some(principal)) = (&target.permission, &caller)
        && let Err(e) = principal.require(permission)
    {
        return actix_web::ResponseError::error_response(&ApiError::from(e));
    }
    // After RBAC, the plugins' policies (on admin routes).
    if let (Scope::Admin, Some(principal)) = (scope, &caller)
        && state.plugins.has_authorizers()
        && let Err(refused) = state
            .plugins
            .authorize_by_plugins(
                principal,
                req.method().as_str(),
                &target.metrics.route,
                path,
            )
            .await
    {
        let e = crate::auth::AuthError::PolicyDenied {
            plugin: refused.plugin,
            reason: refused.reason,
        };
        return actix_web::ResponseError::error_response(&ApiError::from(e));
    }
    let body = if may_have_body(req) {
        match read_body(req, payload, state.max_body, state.body_timeout).await {
            Ok(body) => body,
            Err(response) => return response,
        }
    } else {
        Bytes::new()
    };
    let params: Vec<StrPair<'_>> = matched
        .params
        .iter()
        .map(|(name, value)| StrPair {
            name: RStr::from_str(name),
            value: RStr::from_str(value),
        })
        .collect();
    let permissions: Vec<RStr<'_>> = caller
        .as_ref()
        .map(|p| p.permissions.iter().map(|s| RStr::from_str(s)).collect())
        .unwrap_or_default();
    let principal = match &caller {
        Some(p) => ROption::RSome(AbiPrincipal {
            user_id: p.user_id,
            username: RStr::from_str(&p.username),
            superuser: p.superuser,
            permissions: RSlice::from_slice(&permissions),
        }),
        None => ROption::RNone,
    };
    let trace = envelope::trace_id();
    let deadline = target.timeout.unwrap_or(state.plugin_timeout);
    let module = match &plugin.code {
        Code::Native(module) => *module,
        Code::Isolated(child) => {
            let request = WireRequest {
                method: req.method().as_str().to_owned(),
                path: path.to_owned(),
                query: req.query_string().to_owned(),
                params: matched
                    .params
                    .iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                headers: req
                    .headers()
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect(),
                principal: caller.as_ref().map(|p| WirePrincipal {
                    user_id: p.user_id,
                    username: p.username.clone(),
                    superuser: p.superuser,
                    permissions: p.permissions.to_vec(),
                }),
                trace_id: trace.as_str().to_owned(),
                route: target.metrics.route.to_string(),
            };
            let call = child.call(target.handler, request, body.to_vec());
            return match tokio::time::timeout(deadline, call).await {
                Err(_) => timed_out(req, target, deadline, trace.as_str()),
                Ok(Err(CallError::Down(why))) => {
                    let mut answer = envelope::error_traced(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &why,
                        trace.as_str(),
                    );
                    answer.headers_mut().insert(
                        actix_web::http::header::RETRY_AFTER,
                        HeaderValue::from_static("1"),
                    );
                    answer
                }
                Ok(Ok(Reply::Crashed(reason))) => {
                    target.metrics.crashed();
                    envelope::error_traced(
                        StatusCode::BAD_GATEWAY,
                        &format!(
                            "plugin '{}' crashed while answering: its child process {reason}; it is restarted",
                            plugin.name
                        ),
                        trace.as_str(),
                    )
                }
                Ok(Ok(Reply::Answer {
                    status,
                    content_type,
                    headers,
                    body,
                    stream,
                })) => {
                    let head = headers.iter().map(|(k, v)| (k.as_str(), v.as_str()));
                    let mut response = match start_answer(
                        status,
                        &content_type,
                        head,
                        &plugin.name,
                        trace.as_str(),
                    ) {
                        Ok(response) => response,
                        Err(refused) => return *refused,
                    };
                    match stream {
                        None => response.body(body),
                        Some(chunks) => response.streaming(isolated_body(chunks, deadline)),
                    }
                }
            };
        }
    };
    let raw = RawRequest {
        method: RStr::from_str(req.method().as_str()),
        path: RStr::from_str(path),
        query: RStr::from_str(req.query_string()),
        params: RSlice::from_slice(&params),
        headers: header_source(req.headers()),
        body: RSlice::from_slice(&body),
        principal,
        trace_id: RStr::from_str(trace.as_str()),
        extensions: RSlice::from_slice(&[]),
    };
    let future = (module.handle())(target.handler, &raw);
    // The plugin catches its own panics; this is the backstop for one that
    // escapes its poll function (async_ffi re-raises it here). Past the
    // deadline the handler's future is dropped.
    match tokio::time::timeout(deadline, AssertUnwindSafe(future).catch_unwind()).await {
        Ok(Ok(response)) => into_http(response, &plugin.name, trace.as_str(), deadline),
        Err(_) => timed_out(req, target, deadline, trace.as_str()),
        Ok(Err(_)) => {
            crate::plugin::services::panic_log::panicked(
                &plugin.name,
                "panicked across the boundary (in the handler's future)",
            );
            envelope::error_traced(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("internal error in plugin '{}'", plugin.name),
                trace.as_str(),
            )
        }
    }
}

/// The 504 of a handler past its deadline (its future is dropped).
fn timed_out(
    req: &HttpRequest,
    target: &Target,
    deadline: std::time::Duration,
    trace: &str,
) -> HttpResponse {
    target.metrics.timed_out();
    let plugin = &target.plugin.name;
    let setting = if target.timeout.is_some() {
        "the route's own timeout"
    } else {
        "PLUGHOST_PLUGIN_TIMEOUT"
    };
    tracing::warn!(
        plugin = %plugin,
        route = %target.metrics.route,
        "the handler did not answer within {deadline:?} ({setting}); dropped"
    );
    envelope::error_traced(
        StatusCode::GATEWAY_TIMEOUT,
        &format!(
            "plugin '{plugin}' did not answer {} {} within {} ({setting})",
            req.method(),
            target.metrics.route,
            humantime(deadline)
        ),
        trace,
    )
}

/// An isolated plugin's streamed body: its chunks as the child sends
/// them, ended when the child ends it or sends nothing for `idle`.
fn isolated_body(
    chunks: tokio::sync::mpsc::Receiver<Bytes>,
    idle: std::time::Duration,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(chunks, move |mut chunks| async move {
        match tokio::time::timeout(idle, chunks.recv()).await {
            Ok(Some(chunk)) => Some((Ok(chunk), chunks)),
            _ => None,
        }
    })
}

/// `d` as people write it: `30s`, `1.5s`, `250ms`.
fn humantime(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else if d < std::time::Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs_f64())
    }
}

fn into_http(
    raw: RawResponse,
    plugin: &str,
    trace: &str,
    deadline: std::time::Duration,
) -> HttpResponse {
    let headers = raw
        .headers
        .iter()
        .map(|Tuple2(name, value)| (name.as_str(), value.as_str()));
    let mut response = match start_answer(raw.status, &raw.content_type, headers, plugin, trace) {
        Ok(response) => response,
        Err(refused) => return *refused,
    };
    // A body the plugin sends as it goes (a stream it opened).
    let stream = raw
        .extensions
        .iter()
        .find(|Tuple2(name, _)| name.as_str() == plugin_api::abi::STREAM_EXTENSION)
        .and_then(|Tuple2(_, id)| id.parse::<u64>().ok());
    if let Some(id) = stream {
        return match crate::plugin::services::streams::take_body(plugin, id, deadline) {
            Some(body) => response.streaming(body),
            None => envelope::error_traced(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("plugin '{plugin}' answered with stream {id}, which it has not open"),
                trace,
            ),
        };
    }
    response.body(Bytes::from_owner(raw.body))
}

/// The head of a plugin's answer: its status, content type and headers
/// (invalid ones dropped and logged); an invalid status is a 500.
fn start_answer<'a>(
    status: u16,
    content_type: &str,
    headers: impl Iterator<Item = (&'a str, &'a str)>,
    plugin: &str,
    trace: &str,
) -> Result<actix_web::HttpResponseBuilder, Box<HttpResponse>> {
    let Ok(status) = StatusCode::from_u16(status) else {
        tracing::error!(plugin, status, "plugin answered an invalid status");
        return Err(Box::new(envelope::error_traced(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("plugin '{plugin}' answered invalid status {status}"),
            trace,
        )));
    };
    let mut response = HttpResponse::build(status);
    if content_type == "application/json" {
        response.insert_header((CONTENT_TYPE, HeaderValue::from_static("application/json")));
    } else if !content_type.is_empty() {
        match HeaderValue::from_str(content_type) {
            Ok(value) => {
                response.insert_header((CONTENT_TYPE, value));
            }
            Err(_) => tracing::warn!(plugin, "plugin answered an invalid content type; dropped"),
        }
    }
    for (name, value) in headers {
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            (Ok(name), Ok(value)) => {
                response.append_header((name, value));
            }
            _ => {
                tracing::warn!(plugin, header = %name, "plugin answered an invalid header; dropped")
            }
        }
    }
    Ok(response)
}

pub(crate) fn header_source(headers: &HeaderMap) -> HeaderSource<'_> {
    HeaderSource {
        ctx: std::ptr::from_ref(headers).cast(),
        get: header_get,
        list: header_list,
        _marker: std::marker::PhantomData,
    }
}

#[allow(unsafe_code)]
unsafe extern "C" fn header_get(ctx: *const (), name: RStr<'_>) -> ROption<RStr<'static>> {
    // SAFETY: `ctx` is the `&HeaderMap` of `header_source`, which outlives
    // the plugin's future; the returned string is only used while it lives.
    let headers: &'static HeaderMap = unsafe { &*ctx.cast::<HeaderMap>() };
    headers
        .get(name.as_str())
        .and_then(|v| v.to_str().ok())
        .map(RStr::from_str)
        .into()
}

#[allow(unsafe_code)]
unsafe extern "C" fn header_list(ctx: *const ()) -> RVec<OwnedPair> {
    // SAFETY: as in `header_get`.
    let headers: &HeaderMap = unsafe { &*ctx.cast::<HeaderMap>() };
    headers
        .iter()
        .filter_map(|(name, value)| Some(Tuple2(name.as_str().into(), value.to_str().ok()?.into())))
        .collect()
}
