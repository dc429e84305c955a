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
    readme: include_str!("../README.md"),
    routers: routers,
}

#[cfg(test)]
mod tests {
    use plugin_api::testing::TestHost;
    use serde_json::json;

    fn hello() -> TestHost {
        TestHost::start(plugin_api::this_plugin!()).expect("hello loads")
    }

    #[test]
    fn greets_by_name_and_the_world_by_default() {
        let host = hello();
        let ada = host.get("/hello/v1/greet?name=Ada").send();
        assert_eq!(ada.status, 200, "{}", ada.text());
        assert_eq!(ada.data(), json!({ "message": "Hello, Ada!" }));
        let world = host.get("/hello/v1/greet").send();
        assert_eq!(world.data()["message"], "Hello, world!");
        // Percent-decoded like any query string.
        let spaced = host.get("/hello/v1/greet?name=Ada%20Lovelace").send();
        assert_eq!(spaced.data()["message"], "Hello, Ada Lovelace!");
    }

    #[test]
    fn echoes_json_and_refuses_what_is_not() {
        let host = hello();
        let body = json!({ "a": [1, 2, { "b": null }] });
        let echoed = host.post("/hello/v1/echo").json(&body).send();
        assert_eq!(echoed.status, 200, "{}", echoed.text());
        assert_eq!(echoed.data(), body);
        let broken = host
            .post("/hello/v1/echo")
            .header("content-type", "application/json")
            .body("{not json")
            .send();
        assert_eq!(broken.status, 400, "{}", broken.text());
        assert_eq!(broken.json()["code"], 400);
        assert!(broken.json()["data"].is_null());
    }

    #[test]
    fn only_its_own_routes_answer() {
        let host = hello();
        assert_eq!(host.get("/hello/v1/nope").send().status, 404);
        assert_eq!(host.delete("/hello/v1/greet").send().status, 404);
    }
}
