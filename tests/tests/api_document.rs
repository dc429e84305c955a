//! `GET /openapi.json` and `GET /docs/`: the core routes and every loaded
//! plugin's routes, current with installs, upgrades and uninstalls; the
//! docs page served from the binary alone.

use serde_json::Value;

fn document(host: &e2e::Host) -> Value {
    let reply = host.get("/openapi.json");
    assert_eq!(reply.status, 200);
    reply.json
}

fn operation<'a>(document: &'a Value, method: &str, path: &str) -> &'a Value {
    let operation = &document["paths"][path][method];
    assert!(operation.is_object(), "{method} {path} is not documented");
    operation
}

#[test]
fn the_document_describes_core_and_plugin_routes() {
    let (_data, host) = e2e::serve(&["hello", "sysinfo", "dict"]);
    let doc = document(&host);
    assert_eq!(doc["openapi"], "3.1.0");
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
    assert!(doc["components"]["schemas"]["ErrorEnvelope"].is_object());

    // Core routes, from the handlers.
    for (method, path) in [
        ("get", "/health"),
        ("get", "/openapi.json"),
        ("post", "/admin/v1/auth/login"),
        ("post", "/admin/v1/auth/logout"),
        ("get", "/admin/v1/sys/plugins"),
        ("post", "/admin/v1/sys/plugins"),
        ("get", "/admin/v1/sys/plugins/changed"),
        ("get", "/admin/v1/sys/plugins/{plugin}"),
        ("delete", "/admin/v1/sys/plugins/{plugin}"),
        ("put", "/admin/v1/sys/plugins/{plugin}/status"),
    ] {
        operation(&doc, method, path);
    }
    let login = operation(&doc, "post", "/admin/v1/auth/login");
    assert!(login.get("security").is_none(), "login needs no token");
    let toggle = operation(&doc, "put", "/admin/v1/sys/plugins/{plugin}/status");
    assert_eq!(toggle["security"][0]["bearer"], serde_json::json!([]));
    assert!(
        toggle["description"]
            .as_str()
            .unwrap()
            .contains("sys:plugin:edit")
    );

    // An extend-level plugin: the manifest's tags, a token, the permission,
    // the schemas it declared, typed path parameters.
    let create = operation(&doc, "post", "/admin/v1/sys/dict-types");
    assert_eq!(create["tags"][0], "Dictionary types");
    assert_eq!(create["x-plugin"], "dict");
    assert_eq!(create["security"][0]["bearer"], serde_json::json!([]));
    let text = create["description"].as_str().unwrap();
    assert!(
        text.contains("Plugin `dict` 0.1.0") && text.contains("`sys:dict:add`"),
        "{text}"
    );
    let body = &create["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(body["required"], serde_json::json!(["name", "code"]));
    let answer = &create["responses"]["200"]["content"]["application/json"]["schema"];
    assert_eq!(
        answer["properties"]["data"]["properties"]["id"]["type"],
        "integer"
    );
    assert!(
        create["responses"]["503"].is_object(),
        "a disabled plugin answers 503"
    );
    let one = operation(&doc, "get", "/admin/v1/sys/dict-types/{id}");
    assert_eq!(one["parameters"][0]["name"], "id");
    assert_eq!(one["parameters"][0]["in"], "path");
    assert_eq!(one["parameters"][0]["schema"]["type"], "integer");
    let list = operation(&doc, "get", "/admin/v1/sys/dict-types");
    let query: Vec<&str> = list["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        query.contains(&"page") && query.contains(&"size") && query.contains(&"name"),
        "{query:?}"
    );

    // An app-level plugin: the router's name as tag, no token.
    let greet = operation(&doc, "get", "/hello/v1/greet");
    assert_eq!(greet["tags"][0], "router_v1");
    assert_eq!(greet["summary"], "Greet someone by name");
    assert!(greet.get("security").is_none());
    assert_eq!(greet["parameters"][0]["name"], "name");
    assert_eq!(greet["parameters"][0]["in"], "query");
    assert!(
        doc["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "Dictionary types")
    );
}

#[test]
fn the_document_follows_install_upgrade_and_uninstall_without_a_restart() {
    let (_data, host) = e2e::serve(&["hello"]);
    assert!(
        document(&host)["paths"]
            .get("/greeter/v1/version")
            .is_none()
    );

    assert_eq!(host.upload(&e2e::greeter(1), "type=zip").status, 200);
    let doc = document(&host);
    let version = operation(&doc, "get", "/greeter/v1/version");
    assert_eq!(version["x-plugin"], "greeter");
    assert_eq!(version["summary"], "Which build answers (build 1)");
    operation(&doc, "get", "/hello/v1/greet");

    assert_eq!(
        host.upload(&e2e::greeter(2), "type=zip&upgrade=true")
            .status,
        200
    );
    let doc = document(&host);
    assert_eq!(
        operation(&doc, "get", "/greeter/v1/version")["summary"],
        "Which build answers (build 2)"
    );

    let removed = host.request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(removed.status, 200, "{:?}", removed.json);
    let doc = document(&host);
    assert!(
        doc["paths"].get("/greeter/v1/version").is_none(),
        "{}",
        doc["paths"]
    );
    assert!(!doc["tags"].as_array().unwrap().iter().any(|t| {
        t["description"]
            .as_str()
            .unwrap_or_default()
            .contains("greeter")
    }));
    operation(&doc, "get", "/hello/v1/greet");
}

#[test]
fn the_docs_page_comes_from_the_binary_and_points_at_the_document() {
    let (_data, host) = e2e::serve(&["hello"]);
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let moved = agent.get(&format!("{}/docs", host.base())).call().unwrap();
    assert_eq!(moved.status(), 308);
    assert_eq!(moved.header("location"), Some("/docs/"));

    let page = agent.get(&format!("{}/docs/", host.base())).call().unwrap();
    assert!(page.content_type().starts_with("text/html"));
    let html = page.into_string().unwrap();
    // Every script and stylesheet is one of the page's own files.
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for part in html.split(attribute).skip(1) {
            let target = part.split('"').next().unwrap();
            assert!(
                !target.contains("//"),
                "the page loads {target} from another host"
            );
            assets.push(target.trim_start_matches("./").to_owned());
        }
    }
    assert!(assets.iter().any(|a| a.ends_with(".js")), "{assets:?}");
    for asset in &assets {
        let reply = agent
            .get(&format!("{}/docs/{asset}", host.base()))
            .call()
            .unwrap();
        assert_eq!(reply.status(), 200, "{asset}");
    }
    let init = agent
        .get(&format!("{}/docs/swagger-initializer.js", host.base()))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(init.contains("\"url\": \"/openapi.json\""), "{init}");
    assert!(init.contains("\"validatorUrl\": \"none\""), "{init}");

    let missing = host.get("/docs/no-such-file.js");
    missing.assert_error(404, "no file /docs/no-such-file.js");
}

#[test]
fn a_method_that_is_not_allowed_names_the_allowed_ones() {
    let (_data, host) = e2e::serve(&["hello"]);
    let bearer = format!("Bearer {}", host.token("admin", e2e::ADMIN_PASSWORD));
    for (method, path, allowed) in [
        ("DELETE", "/hello/v1/greet", "GET"),
        ("POST", "/openapi.json", "GET"),
        ("PATCH", "/admin/v1/sys/plugins", "GET, POST"),
        ("POST", "/docs/index.html", "GET"),
    ] {
        let response = ureq::request(method, &format!("{}{path}", host.base()))
            .set("Authorization", &bearer)
            .call();
        let Err(ureq::Error::Status(405, response)) = response else {
            panic!("{method} {path}: expected 405, got {response:?}");
        };
        assert_eq!(response.header("allow"), Some(allowed), "{method} {path}");
    }
}
