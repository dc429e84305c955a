//! Named routers: what the manifest's `[api.<name>]` and `[app] router` refer to.

use abi_stable::std_types::{ROption, RString, RVec, Tuple2};
use async_ffi::LocalBorrowingFfiFuture;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;

use crate::{
    Error, IntoResponse, Request,
    abi::{RawRequest, RawResponse, RouteSpec, RouterSpec, route_doc, route_option},
};

/// A handler stored type-erased inside a router.
pub(crate) trait ErasedHandler: Send + Sync + 'static {
    fn call<'a>(&'a self, raw: &'a RawRequest<'a>) -> LocalBorrowingFfiFuture<'a, RawResponse>;
}

struct AsyncHandler<F>(F);

impl<F, O> ErasedHandler for AsyncHandler<F>
where
    F: for<'a> AsyncFn(Request<'a>) -> O + Send + Sync + 'static,
    O: IntoResponse,
{
    fn call<'a>(&'a self, raw: &'a RawRequest<'a>) -> LocalBorrowingFfiFuture<'a, RawResponse> {
        LocalBorrowingFfiFuture::new(async move {
            let request = Request::from_raw(raw);
            // Calling the handler may panic before any future exists
            // (a plain fn returning a future), or while it is polled.
            let future = match std::panic::catch_unwind(AssertUnwindSafe(|| (self.0)(request))) {
                Ok(future) => future,
                Err(_) => return panic_response(&request),
            };
            match AssertUnwindSafe(future).catch_unwind().await {
                Ok(output) => output.into_response(&request).into_raw(),
                Err(_) => panic_response(&request),
            }
        })
    }
}

/// The 500 answer for a panicking handler; the plugin's panic hook has
/// already logged the panic with its location through the host.
pub(crate) fn panic_response(request: &Request<'_>) -> RawResponse {
    let plugin = crate::__private::current_plugin_name();
    Error::internal(format!(
        "internal error in plugin '{plugin}': the handler panicked"
    ))
    .into_response(request)
    .into_raw()
}

struct Route {
    spec: RouteSpec,
    handler: Box<dyn ErasedHandler>,
}

/// A named set of routes.
///
/// ```
/// # use plugin_api::{Json, Request, Router};
/// async fn list(_req: Request<'_>) -> Json<Vec<u32>> {
///     Json(vec![1, 2, 3])
/// }
/// let router = Router::new("dict_data").get("", list).permission("sys:dict:list");
/// ```
pub struct Router {
    name: String,
    prefix: String,
    routes: Vec<Route>,
}

impl Router {
    /// A router named `name` (the manifest refers to it by this name).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            prefix: String::new(),
            routes: Vec::new(),
        }
    }

    /// The prefix an app-level router is mounted at (e.g. `/hello/v1`).
    /// Extend-level routers take their prefix from the manifest.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Adds a route for `method` at `path` (below the prefix; `{name}` captures a segment).
    pub fn route<F, O>(mut self, method: &str, path: &str, handler: F) -> Self
    where
        F: for<'a> AsyncFn(Request<'a>) -> O + Send + Sync + 'static,
        O: IntoResponse,
    {
        self.routes.push(Route {
            spec: RouteSpec {
                method: RString::from(method.to_ascii_uppercase()),
                path: RString::from(path),
                handler: 0,
                auth: false,
                permission: ROption::RNone,
                summary: RString::new(),
                extensions: RVec::new(),
            },
            handler: Box::new(AsyncHandler(handler)),
        });
        self
    }

    /// Adds a `GET` route.
    pub fn get<F, O>(self, path: &str, handler: F) -> Self
    where
        F: for<'a> AsyncFn(Request<'a>) -> O + Send + Sync + 'static,
        O: IntoResponse,
    {
        self.route("GET", path, handler)
    }

    /// Adds a `POST` route.
    pub fn post<F, O>(self, path: &str, handler: F) -> Self
    where
        F: for<'a> AsyncFn(Request<'a>) -> O + Send + Sync + 'static,
        O: IntoResponse,
    {
        self.route("POST", path, handler)
    }

    /// Adds a `PUT` route.
    pub fn put<F, O>(self, path: &str, handler: F) -> Self
    where
        F: for<'a> AsyncFn(Request<'a>) -> O + Send + Sync + 'static,
        O: IntoResponse,
    {
        self.route("PUT", path, handler)
    }

    /// Adds a `DELETE` route.
    pub fn delete<F, O>(self, path: &str, handler: F) -> Self
    where
        F: for<'a> AsyncFn(Request<'a>) -> O + Send + Sync + 'static,
        O: IntoResponse,
    {
        self.route("DELETE", path, handler)
    }

    fn last_route(&mut self) -> &mut RouteSpec {
        &mut self
            .routes
            .last_mut()
            .expect("call get/post/put/delete before setting route options")
            .spec
    }

    /// The last added route needs an authenticated caller.
    pub fn auth(mut self) -> Self {
        self.last_route().auth = true;
        self
    }

    /// The last added route needs `permission` (implies authentication).
    pub fn permission(mut self, permission: &str) -> Self {
        let route = self.last_route();
        route.auth = true;
        route.permission = ROption::RSome(RString::from(permission));
        self
    }

    /// A one-line summary of the last added route, for the API documentation.
    pub fn summary(mut self, summary: &str) -> Self {
        self.last_route().summary = RString::from(summary);
        self
    }

    /// A longer description (Markdown) of the last added route, for the
    /// API documentation.
    pub fn description(self, text: &str) -> Self {
        self.document(route_doc::DESCRIPTION, text.to_owned())
    }

    /// The JSON Schema of the last added route's request body.
    ///
    /// ```
    /// # use plugin_api::{Json, Request, Router};
    /// # async fn create(_req: Request<'_>) -> Json<u64> { Json(1) }
    /// use serde_json::json;
    /// let router = Router::new("notes").post("", create).request_schema(json!({
    ///     "type": "object",
    ///     "required": ["text"],
    ///     "properties": { "text": { "type": "string", "maxLength": 500 } }
    /// }));
    /// ```
    pub fn request_schema(self, schema: serde_json::Value) -> Self {
        self.document(route_doc::REQUEST, schema.to_string())
    }

    /// The JSON Schema of `data` in the last added route's success envelope.
    pub fn response_schema(self, schema: serde_json::Value) -> Self {
        self.document(route_doc::RESPONSE, schema.to_string())
    }

    /// The last added route's query parameters, as an object schema: each
    /// property is a parameter, `required` names the mandatory ones.
    pub fn query_schema(self, schema: serde_json::Value) -> Self {
        self.document(route_doc::QUERY, schema.to_string())
    }

    /// The schemas of the last added route's path parameters, as an
    /// object schema: each property is a `{name}` of the path (one it does
    /// not name is documented as a string).
    pub fn path_schema(self, schema: serde_json::Value) -> Self {
        self.document(route_doc::PATH, schema.to_string())
    }

    /// How long the last added route's handler may take to answer
    /// (1 ms to a day), instead of the operator's `PLUGHOST_PLUGIN_TIMEOUT`
    /// (default 30 s): past it the client gets 504 and the handler's
    /// future is dropped. For a route that legitimately works long (an
    /// export, a call to a slow service), or one that must fail fast.
    /// A streamed answer's body is not under it once the head is sent.
    pub fn timeout(self, timeout: std::time::Duration) -> Self {
        let millis = timeout.as_millis().max(1);
        self.document(route_option::TIMEOUT_MS, millis.to_string())
    }

    fn document(mut self, key: &str, value: String) -> Self {
        let extensions = &mut self.last_route().extensions;
        extensions.retain(|Tuple2(k, _)| k.as_str() != key);
        extensions.push(Tuple2(RString::from(key), RString::from(value)));
        self
    }
}

/// Every router of a plugin, flattened: handler ids index `handlers`.
pub(crate) struct RouteTable {
    pub(crate) specs: Vec<RouterSpec>,
    pub(crate) handlers: Vec<Box<dyn ErasedHandler>>,
}

impl RouteTable {
    pub(crate) fn build(routers: Vec<Router>) -> Self {
        let mut handlers = Vec::new();
        let specs = routers
            .into_iter()
            .map(|router| RouterSpec {
                name: RString::from(router.name),
                prefix: RString::from(router.prefix),
                routes: router
                    .routes
                    .into_iter()
                    .map(|route| {
                        let mut spec = route.spec;
                        spec.handler = u32::try_from(handlers.len()).expect("too many routes");
                        handlers.push(route.handler);
                        spec
                    })
                    .collect(),
                extensions: RVec::new(),
            })
            .collect();
        Self { specs, handlers }
    }
}
