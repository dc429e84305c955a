//! `hello`: an app-level plugin with a greeting and an echo route.

use plugin_api::{Error, Json, Request, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Deserialize)]
struct GreetQuery {
    name: Option<String>,
}

#[derive(Serialize)]
struct Greeting {
    message: String,
}

/// `GET /hello/v1/greet?name=Ada`
async fn greet(req: Request<'_>) -> Result<Json<Greeting>, Error> {
    let query: GreetQuery = req.query()?;
    let name = query.name.as_deref().unwrap_or("world");
    Ok(Json(Greeting {
        message: format!("Hello, {name}!"),
    }))
}

/// `POST /hello/v1/echo`: the JSON body back as `data`.
async fn echo(req: Request<'_>) -> Result<Json<serde_json::Value>, Error> {
    Ok(Json(req.json()?))
}

fn routers() -> Vec<Router> {
    vec![
        Router::new("router_v1")
            .prefix("/hello/v1")
            .get("/greet", greet)
            .summary("Greet someone by name")
            .query_schema(json!({
                "type": "object",
                "properties": { "name": { "type": "string", "description": "who to greet (default: world)" } },
            }))
            .response_schema(json!({
                "type": "object",
                "required": ["message"],
                "properties": { "message": { "type": "string" } },
            }))
            .post("/echo", echo)
            .summary("Echo the JSON body")
            .description("Answers the request's JSON body as `data`, unchanged.")
            .request_schema(json!({}))
            .response_schema(json!({})),
    ]
}

plugin_api::export_plugin! {
    name: "hello",
    manifest: include_str!("../plugin.toml"),
    routers: routers,
}
