//! The bundled plugins serve their routes through the real binary.

use serde_json::json;

fn host_with_bundled() -> (e2e::DataDir, e2e::Host) {
    e2e::serve(&["hello", "sysinfo"])
}

#[test]
fn hello_greets_by_name_and_echoes_json() {
    let (_data, host) = host_with_bundled();
    let reply = host.get("/hello/v1/greet?name=Ada");
    assert_eq!(reply.data(), &json!({"message": "Hello, Ada!"}));
    let reply = host.get("/hello/v1/greet");
    assert_eq!(reply.data(), &json!({"message": "Hello, world!"}));
    let body = json!({"nested": {"list": [1, 2, 3]}, "text": "é"});
    assert_eq!(host.post("/hello/v1/echo", &body).data(), &body);
}

#[test]
fn echo_refuses_a_body_that_is_not_json() {
    let (_data, host) = host_with_bundled();
    let url = format!("{}/hello/v1/echo", host.base());
    let response = ureq::post(&url)
        .set("content-type", "application/json")
        .send_string("{not json");
    let Err(ureq::Error::Status(400, response)) = response else {
        panic!("expected 400, got {response:?}");
    };
    let body: serde_json::Value = response.into_json().unwrap();
    assert!(
        body["msg"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );
}

#[test]
fn sysinfo_reports_host_version_and_loaded_plugins_through_host_services() {
    let (_data, host) = host_with_bundled();
    let data = host.get("/admin/v1/sys/sysinfo").data().clone();
    assert_eq!(data["host_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(data["loaded_plugins"], 2);
}

#[test]
fn the_list_shows_every_plugin_sorted_in_the_fba_shape() {
    let (_data, host) = host_with_bundled();
    let list = host.get("/admin/v1/sys/plugins").data().clone();
    assert_eq!(e2e::strings(&list, "/plugin/name"), ["hello", "sysinfo"]);
    let sysinfo = host.plugin("sysinfo");
    assert_eq!(sysinfo["plugin"]["enable"], "1");
    assert_eq!(sysinfo["plugin"]["version"], "0.1.0");
    assert_eq!(sysinfo["app"]["extend"], "admin");
    assert_eq!(sysinfo["api"]["sysinfo"]["prefix"], "/sysinfo");
    assert_eq!(sysinfo["state"], "loaded");
    assert!(sysinfo["error"].is_null());
    let hello = host.plugin("hello");
    assert_eq!(hello["app"]["router"], json!(["router_v1"]));
    assert_eq!(
        host.get("/admin/v1/sys/plugins/changed").data(),
        &json!(false)
    );
}

#[test]
fn unknown_routes_and_wrong_methods_answer_error_envelopes() {
    let (_data, host) = host_with_bundled();
    host.get("/nowhere")
        .assert_error(404, "no route for GET /nowhere");
    host.get("/admin/v1/sys/nowhere")
        .assert_error(404, "/admin/v1/sys/nowhere");
    host.request("DELETE", "/hello/v1/greet", None)
        .assert_error(405, "allowed: GET");
    host.request("DELETE", "/admin/v1/sys/plugins/changed", None)
        .assert_error(405, "DELETE");
    assert_eq!(host.get("/health").data()["status"], "ok");
}

#[test]
fn plugin_path_parameters_are_validated() {
    let (_data, host) = host_with_bundled();
    host.put("/admin/v1/sys/plugins/Hello/status")
        .assert_error(400, "is not a valid plugin name");
    host.put("/admin/v1/sys/plugins/..%2Fetc/status")
        .assert_error(400, "is not a valid plugin name");
    host.put("/admin/v1/sys/plugins/absent/status")
        .assert_error(404, "plugin 'absent' is not installed");
}

#[test]
fn handlers_see_path_params_headers_and_their_own_settings_only() {
    let (_data, host) = e2e::serve(&["panicky"]);
    let url = format!("{}/panicky/v1/inspect/42", host.base());
    let body: serde_json::Value = ureq::get(&url)
        .set("X-Test-Agent", "probe")
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let data = &body["data"];
    assert_eq!(data["id"], "42");
    assert_eq!(data["agent"], "probe");
    assert_eq!(data["greeting"], "hi from the manifest");
    // Arrays and tables arrive as JSON text.
    let parse = |key: &str| -> serde_json::Value {
        serde_json::from_str(data[key].as_str().expect("a string")).expect("JSON text")
    };
    assert_eq!(
        parse("exclude"),
        json!([
            ["POST", "/api/v1/auth/logout"],
            ["POST", "/api/v1/auth/token/new"]
        ])
    );
    assert_eq!(parse("limits"), json!({"rpm": 60, "burst": 1.5}));
    assert!(
        data["undeclared"].is_null(),
        "a plugin reads only settings it declares"
    );
    assert_eq!(data["trace_id_len"], 16);
}

#[test]
fn the_environment_overrides_a_declared_plugin_setting() {
    let (_data, host) = e2e::serve_with(
        &["panicky"],
        &[("PANICKY_GREETING", "hi from the environment")],
    );
    let reply = host.get("/panicky/v1/inspect/1");
    assert_eq!(reply.data()["greeting"], "hi from the environment");
}

#[test]
fn bodies_are_read_whether_sized_or_chunked_and_refused_above_the_limit() {
    let (_data, host) = e2e::serve_with(&["hello"], &[("PLUGHOST_MAX_BODY", "64")]);
    let url = format!("{}/hello/v1/echo", host.base());
    // No content-length: ureq streams a reader with chunked transfer encoding.
    let chunked: serde_json::Value = ureq::post(&url)
        .set("content-type", "application/json")
        .send(&b"{\"chunked\": true}"[..])
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(chunked["data"], json!({"chunked": true}));
    let big = json!({"text": "x".repeat(100)});
    // Declared too large: refused before the body is read.
    host.post("/hello/v1/echo", &big).assert_error(
        413,
        "request body of 111 bytes exceeds the limit of 64 bytes (PLUGHOST_MAX_BODY)",
    );
    // Chunked, so undeclared: refused when the limit is passed.
    let response = ureq::post(&url)
        .set("content-type", "application/json")
        .send(big.to_string().as_bytes());
    let Err(ureq::Error::Status(413, response)) = response else {
        panic!("a chunked body over the limit was not refused: {response:?}");
    };
    let refused: serde_json::Value = response.into_json().unwrap();
    assert_eq!(
        refused["msg"],
        "request body exceeds the limit of 64 bytes (PLUGHOST_MAX_BODY)"
    );
    // The host keeps serving after refusing a body.
    assert_eq!(host.post("/hello/v1/echo", &json!([1])).data(), &json!([1]));
}
