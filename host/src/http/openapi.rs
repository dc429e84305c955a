//! The API document (`GET /openapi.json`, OpenAPI 3.1) and the docs page
//! (`GET /docs/`, Swagger UI embedded in the binary).
//!
//! The core routes are described by `#[utoipa::path]` on their handlers;
//! every loaded plugin's routes are added from the route table, with what
//! each plugin declared (`plugin_api::abi::route_doc`). The document is
//! rendered whenever a route table becomes current (by the install,
//! upgrade or uninstall that swaps it, never by a request) and served as
//! ready bytes.

use std::{
    sync::{Arc, LazyLock},
    time::Instant,
};

use actix_web::{HttpRequest, HttpResponse, http::StatusCode, web};
use arc_swap::ArcSwap;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::{
    Modify, OpenApi, ToSchema,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use super::{AppState, envelope};
use crate::plugin::{
    PluginHost,
    running::router::{MountedRoute, RouteTable, Scope},
};

/// The success envelope: `data` is the route's answer.
#[derive(Serialize, ToSchema)]
pub(crate) struct Envelope<T> {
    /// Always 200.
    #[schema(minimum = 200, maximum = 200)]
    code: u16,
    /// `Request success`, or what the operation did.
    msg: String,
    /// The answer.
    data: T,
}

/// Every error answer: the HTTP status again in `code`, what went wrong
/// and what to do in `msg`, and a trace id (also in `x-request-id`) that
/// the host's log lines for the request carry.
#[derive(Serialize, ToSchema)]
pub(crate) struct ErrorEnvelope {
    /// The HTTP status.
    code: u16,
    /// What went wrong and what to do.
    msg: String,
    /// Always null.
    data: Null,
    /// The request's trace id.
    trace_id: String,
}

/// JSON `null`: the `data` of errors and of answers that carry none.
#[derive(Serialize)]
pub(crate) struct Null;

impl utoipa::PartialSchema for Null {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Null)
            .into()
    }
}

impl ToSchema for Null {}

/// The bearer token every admin route but login needs.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_default()
            .add_security_scheme(
                BEARER,
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .description(Some(
                            "A token from POST /admin/v1/auth/login (`access_token`).",
                        ))
                        .build(),
                ),
            );
    }
}

/// The security scheme's name.
const BEARER: &str = "bearer";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "plughost",
        description = "The host's own routes and every loaded plugin's routes. \
                       Answers are envelopes: `{\"code\", \"msg\", \"data\"}`; errors add `trace_id`.",
    ),
    paths(
        super::health,
        api_document,
        super::metrics::metrics,
        super::auth::login,
        super::auth::logout,
        super::plugins::list,
        super::plugins::install,
        super::plugins::changed,
        super::plugins::build,
        super::plugins::catalog,
        super::plugins::toggle,
        super::plugins::download,
        super::plugins::uninstall,
        super::users::list,
        super::users::create,
        super::users::get,
        super::users::update,
        super::users::delete,
        super::users::status,
        super::users::roles,
        super::users::list_roles,
        super::users::create_role,
        super::users::permissions,
        super::users::delete_role,
        super::users::known_permissions,
    ),
    components(schemas(ErrorEnvelope)),
    modifiers(&BearerAuth),
    tags(
        (name = "host", description = "The host itself"),
        (name = "auth", description = "Tokens"),
        (name = "plugins", description = "The plugin set: list, toggle, install, upgrade, uninstall, download"),
        (name = "users", description = "Users and roles: who may log in, and what their tokens may do"),
    ),
)]
struct CoreApi;

/// The document of the core routes, as JSON.
static CORE: LazyLock<Value> = LazyLock::new(|| {
    serde_json::to_value(CoreApi::openapi()).expect("the core API document is JSON")
});

/// Every method and path the core document describes (upper-case
/// method, OpenAPI path template).
pub fn core_operations() -> Vec<(String, String)> {
    let mut operations = Vec::new();
    for (path, item) in CORE["paths"].as_object().into_iter().flatten() {
        for method in item.as_object().into_iter().flatten().map(|(m, _)| m) {
            operations.push((method.to_ascii_uppercase(), path.clone()));
        }
    }
    operations
}

/// The document of the current route table, rendered when first asked for
/// (not at start-up, nor at every install).
pub struct ApiDocument {
    current: ArcSwap<Rendition>,
}

/// A route table and, once asked for, its document.
struct Rendition {
    table: Arc<RouteTable>,
    bytes: std::sync::OnceLock<Bytes>,
}

impl ApiDocument {
    /// The document of `plugins`' routes, kept current: whenever a route
    /// table becomes current, its document replaces the last one.
    pub fn watching(plugins: &PluginHost) -> Arc<Self> {
        let document = Arc::new(Self {
            current: ArcSwap::from_pointee(Rendition {
                table: plugins.routes(),
                bytes: std::sync::OnceLock::new(),
            }),
        });
        let updated = document.clone();
        plugins.watch_routes(Box::new(move |table| updated.update(table)));
        document
    }

    /// Makes `table`'s document current (rendered when first asked for).
    pub fn update(&self, table: &Arc<RouteTable>) {
        self.current.store(Arc::new(Rendition {
            table: table.clone(),
            bytes: std::sync::OnceLock::new(),
        }));
    }

    /// The current document.
    pub fn bytes(&self) -> Bytes {
        let current = self.current.load_full();
        current
            .bytes
            .get_or_init(|| {
                let started = Instant::now();
                let bytes = render(&current.table);
                let took = started.elapsed();
                crate::observe::document_rendered(took);
                tracing::debug!(
                    bytes = bytes.len(),
                    micros = took.as_micros() as u64,
                    "API document rendered"
                );
                bytes
            })
            .clone()
    }
}

/// The whole document for `table`, as JSON text.
fn render(table: &RouteTable) -> Bytes {
    let mut document = CORE.clone();
    if let Some(version) = document.pointer_mut("/info/version") {
        *version = Value::from(env!("CARGO_PKG_VERSION"));
    }
    let mut tags: Vec<Value> = document["tags"].as_array().cloned().unwrap_or_default();
    let paths = document["paths"]
        .as_object_mut()
        .expect("the core document has paths");
    for (plugin, routes) in table.plugins() {
        let version = plugin.manifest.version.to_string();
        for route in routes {
            let (path, parameters) = openapi_path(&route.path, route.doc.path.as_ref());
            let operation = plugin_operation(&plugin.name, &version, route, parameters);
            let item = paths
                .entry(path)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(item) = item {
                item.insert(route.method.as_str().to_ascii_lowercase(), operation);
            }
            if !tags.iter().any(|t| t["name"] == route.doc.tag.as_str()) {
                tags.push(json!({
                    "name": route.doc.tag,
                    "description": format!("Plugin {} {version}", plugin.name),
                }));
            }
        }
    }
    document["tags"] = Value::Array(tags);
    Bytes::from(serde_json::to_vec(&document).expect("the API document is JSON"))
}

/// A matchit pattern as an OpenAPI path (`{*rest}` becomes `{rest}`) and
/// its path parameters, with the schemas `declared` gives them (strings
/// otherwise).
fn openapi_path(pattern: &str, declared: Option<&Value>) -> (String, Vec<Value>) {
    let mut parameters = Vec::new();
    let segments: Vec<String> = pattern
        .split('/')
        .map(
            |segment| match segment.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                Some(name) => {
                    let name = name.trim_start_matches('*');
                    let schema = declared
                        .and_then(|d| d["properties"].get(name))
                        .cloned()
                        .unwrap_or_else(|| json!({ "type": "string" }));
                    parameters.push(json!({
                        "name": name,
                        "in": "path",
                        "required": true,
                        "schema": schema,
                    }));
                    format!("{{{name}}}")
                }
                None => segment.to_owned(),
            },
        )
        .collect();
    (segments.join("/"), parameters)
}

/// One plugin route as an OpenAPI operation.
fn plugin_operation(plugin: &str, version: &str, route: &MountedRoute, path: Vec<Value>) -> Value {
    let doc = &route.doc;
    let mut description = doc.description.clone().unwrap_or_default();
    if !description.is_empty() {
        description.push_str("\n\n");
    }
    description.push_str(&format!("Plugin `{plugin}` {version}."));
    let secured = route.auth || route.scope == Scope::Admin;
    match &route.permission {
        Some(permission) => {
            description.push_str(&format!(" Needs a token holding `{permission}`."));
        }
        None if secured => description.push_str(" Needs a token."),
        None => {}
    }
    let mut parameters = path;
    if let Some(query) = &doc.query {
        let required: Vec<&str> = query["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for (name, schema) in query["properties"].as_object().into_iter().flatten() {
            let mut parameter = json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "schema": schema,
            });
            if let Some(text) = schema.get("description") {
                parameter["description"] = text.clone();
            }
            parameters.push(parameter);
        }
    }
    let data = doc.response.clone().unwrap_or_else(|| json!({}));
    let mut operation = json!({
        "operationId": format!("{plugin}.{}.{}", route.method.as_str().to_ascii_lowercase(), route.path),
        "summary": doc.summary,
        "description": description,
        "tags": [doc.tag],
        "x-plugin": plugin,
        "parameters": parameters,
        "responses": {
            "200": {
                "description": "Success",
                "content": { "application/json": { "schema": {
                    "type": "object",
                    "required": ["code", "msg", "data"],
                    "properties": {
                        "code": { "type": "integer", "minimum": 200, "maximum": 200 },
                        "msg": { "type": "string" },
                        "data": data,
                    },
                }}},
            },
            "503": error_response(&format!("The plugin '{plugin}' is disabled")),
            "default": error_response("An error; `msg` says what went wrong and what to do"),
        },
    });
    if let Some(schema) = &doc.request {
        operation["requestBody"] = json!({
            "required": true,
            "content": { "application/json": { "schema": schema } },
        });
    }
    if secured {
        operation["security"] = json!([{ BEARER: [] }]);
    }
    operation
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ErrorEnvelope" } } },
    })
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    summary = "This API document",
    tag = "host",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of the core routes and every loaded plugin's routes", content_type = "application/json", body = Object),
    ),
)]
pub(crate) async fn api_document(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(state.document.bytes())
}

/// The docs page's configuration: the document above, no validator (it
/// would call another host), the token kept across reloads.
static DOCS_CONFIG: LazyLock<Arc<utoipa_swagger_ui::Config<'static>>> = LazyLock::new(|| {
    Arc::new(
        utoipa_swagger_ui::Config::new(["/openapi.json"])
            .validator_url("none")
            .persist_authorization(true)
            .display_request_duration(true)
            .try_it_out_enabled(true),
    )
});

/// `GET /docs/{tail}`: Swagger UI, from the files embedded in the binary.
pub(crate) async fn docs(req: HttpRequest) -> HttpResponse {
    let Some(tail) = super::ui::page_file(&req) else {
        return super::ui::to_page_directory(&req);
    };
    match utoipa_swagger_ui::serve(tail, DOCS_CONFIG.clone()) {
        Ok(Some(file)) => HttpResponse::Ok()
            .content_type(file.content_type)
            .body(file.bytes.into_owned()),
        Ok(None) => envelope::error(
            StatusCode::NOT_FOUND,
            &format!("no file {} in the docs page", req.path()),
        ),
        Err(e) => envelope::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the docs page cannot be served: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::running::router::CORE_ROUTES;

    #[test]
    fn core_routes_are_the_documented_ones() {
        let mut documented = core_operations();
        documented.sort();
        let mut core: Vec<(String, String)> = CORE_ROUTES
            .iter()
            .filter(|(_, path)| !path.starts_with("/docs") && !path.starts_with("/ui"))
            .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        core.sort();
        assert_eq!(documented, core);
    }

    #[test]
    fn plugin_names_are_documented_with_the_manifest_pattern() {
        use crate::plugin::loading::manifest::PLUGIN_NAME_PATTERN;
        let mut seen = 0;
        for (_, item) in CORE["paths"].as_object().unwrap() {
            for (_, operation) in item.as_object().unwrap() {
                for parameter in operation["parameters"].as_array().into_iter().flatten() {
                    if parameter["name"] == "plugin" {
                        assert_eq!(parameter["schema"]["pattern"], PLUGIN_NAME_PATTERN);
                        seen += 1;
                    }
                }
            }
        }
        assert_eq!(seen, 3);
    }

    #[test]
    fn catch_all_and_named_parameters_become_path_parameters() {
        let declared = json!({ "properties": { "id": { "type": "integer" } } });
        let (path, parameters) = openapi_path("/files/{id}/{*rest}", Some(&declared));
        assert_eq!(path, "/files/{id}/{rest}");
        assert_eq!(parameters.len(), 2);
        assert_eq!(parameters[0]["schema"]["type"], "integer");
        assert_eq!(parameters[1]["name"], "rest");
        assert_eq!(parameters[1]["schema"]["type"], "string");
    }
}
