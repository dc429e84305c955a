//! What an operator sees: `/metrics` (Prometheus text, per plugin and route
//! template, behind a token holding `sys:metrics:read` or on its own
//! address), the access log, and the trace id on every log line a request
//! causes, a plugin's panic included.

use e2e::{DataDir, Host, cli};

fn metrics_text(host: &Host, bearer: Option<&str>) -> (u16, String) {
    let mut request = ureq::get(&format!("{}/metrics", host.base()));
    if let Some(token) = bearer {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    match request.call() {
        Ok(response) => (response.status(), response.into_string().unwrap()),
        Err(ureq::Error::Status(status, response)) => (status, response.into_string().unwrap()),
        Err(e) => panic!("GET /metrics: {e}"),
    }
}

/// The value of the series `name{labels}` (labels as rendered, in order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_each_plugin_route_by_template_behind_a_token() {
    let data = DataDir::new();
    for name in ["hello", "panicky"] {
        data.install_dir(name);
    }
    let env: Vec<(&str, String)> = Vec::new();
    for args in [
        &["role", "add", "scraper"][..],
        &["role", "grant", "scraper", "sys:metrics:read"],
        &[
            "user",
            "add",
            "prom",
            "--password",
            "prom-password",
            "--role",
            "scraper",
        ],
        &["user", "add", "nobody", "--password", "nobody-password"],
    ] {
        let (ok, out) = cli(&data, &env, args);
        assert!(ok, "plughost {args:?}: {out}");
    }
    let host = Host::start(&data);

    let (status, body) = metrics_text(&host, None);
    assert_eq!(status, 401, "{body}");
    let nobody = host.token("nobody", "nobody-password");
    let (status, body) = metrics_text(&host, Some(&nobody));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("sys:metrics:read"), "{body}");

    for _ in 0..3 {
        assert_eq!(host.get("/hello/v1/greet?name=x").status, 200);
    }
    assert_eq!(host.get("/panicky/v1/inspect/42").status, 200);
    assert_eq!(host.get("/panicky/v1/sync").status, 500);
    assert_eq!(host.put("/admin/v1/sys/plugins/hello/status").status, 200);
    assert_eq!(host.get("/hello/v1/greet").status, 503);

    let prom = host.token("prom", "prom-password");
    let (status, text) = metrics_text(&host, Some(&prom));
    assert_eq!(status, 200, "{text}");
    let greet = r#"plugin="hello",method="GET",route="/hello/v1/greet""#;
    assert_eq!(
        sample(
            &text,
            &format!("plughost_requests_total{{{greet},status=\"2xx\"}}")
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            &format!("plughost_requests_total{{{greet},status=\"5xx\"}}")
        ),
        Some(1.0),
        "the 503 of the disabled plugin"
    );
    assert_eq!(
        sample(&text, &format!("plughost_plugin_disabled_total{{{greet}}}")),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("plughost_request_duration_seconds_count{{{greet}}}")
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(&text, &format!("plughost_requests_in_flight{{{greet}}}")),
        Some(0.0)
    );
    let inspect = r#"plugin="panicky",method="GET",route="/panicky/v1/inspect/{id}""#;
    assert_eq!(
        sample(
            &text,
            &format!("plughost_requests_total{{{inspect},status=\"2xx\"}}")
        ),
        Some(1.0),
        "{text}"
    );
    assert!(!text.contains("inspect/42"), "a raw path became a label");
    let sync = r#"plugin="panicky",method="GET",route="/panicky/v1/sync""#;
    assert_eq!(
        sample(&text, &format!("plughost_plugin_panics_total{{{sync}}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"plughost_lifecycle_operations_total{kind="toggle",outcome="ok"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, "plughost_plugins_loaded"), Some(2.0));
    assert_eq!(
        sample(&text, r#"plughost_plugin_enabled{plugin="hello"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"plughost_plugin_enabled{plugin="panicky"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"plughost_plugin_flag_revision{plugin="hello"}"#),
        Some(2.0),
        "{text}"
    );
    assert!(text.contains("plughost_build_info{version=\""), "{text}");
    // The API document is rendered when first asked for, once per table.
    assert_eq!(
        sample(&text, "plughost_openapi_render_seconds_count"),
        None,
        "{text}"
    );
    for _ in 0..2 {
        assert_eq!(host.get("/openapi.json").status, 200);
    }
    let (_, text) = metrics_text(&host, Some(&prom));
    assert_eq!(
        sample(&text, "plughost_openapi_render_seconds_count"),
        Some(1.0),
        "{text}"
    );
}

#[test]
fn metrics_can_move_to_their_own_address_or_be_off() {
    let port = e2e::free_port();
    let address = format!("127.0.0.1:{port}");
    let (_data, host) = e2e::serve_with(&["hello"], &[("PLUGHOST_METRICS_BIND", &address)]);
    assert_eq!(host.get("/hello/v1/greet").status, 200);
    let text = ureq::get(&format!("http://{address}/metrics"))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    assert!(
        text.contains(r#"route="/hello/v1/greet",status="2xx"} 1"#),
        "{text}"
    );
    let admin = host.token("admin", e2e::ADMIN_PASSWORD);
    let (status, body) = metrics_text(&host, Some(&admin));
    assert_eq!(status, 404);
    assert!(
        body.contains(&format!("served on http://{address}/metrics")),
        "{body}"
    );

    let (_data, off) = e2e::serve_with(&["hello"], &[("PLUGHOST_METRICS", "false")]);
    let admin = off.token("admin", e2e::ADMIN_PASSWORD);
    let (status, body) = metrics_text(&off, Some(&admin));
    assert_eq!(status, 404);
    assert!(body.contains("metrics are off"), "{body}");
}

#[test]
fn every_log_line_of_a_request_carries_its_trace_id() {
    let (_data, host) = e2e::serve(&["hello", "panicky"]);
    let ok = ureq::get(&format!("{}/hello/v1/greet", host.base()))
        .call()
        .unwrap();
    let greet_trace = ok
        .header("x-request-id")
        .expect("every answer has x-request-id")
        .to_owned();
    let boom = host.get("/panicky/v1/sync");
    let trace = boom.json["trace_id"].as_str().unwrap().to_owned();
    // Each access line is written when its answer is done, on the worker
    // that served it: wait for both, in whatever order they came.
    assert!(e2e::eventually(std::time::Duration::from_secs(5), || {
        let log = host.log();
        log.contains("route=\"/panicky/v1/sync\" status=500")
            && log.contains("route=\"/hello/v1/greet\" status=200")
    }));
    let log = host.log();
    let panic_line = log
        .lines()
        .find(|l| l.contains("sync handler exploded"))
        .unwrap_or_else(|| panic!("no panic line in:\n{log}"));
    assert!(
        panic_line.ends_with(&format!("trace_id={trace}")),
        "{panic_line}"
    );
    let access = log
        .lines()
        .find(|l| l.contains("route=\"/panicky/v1/sync\""))
        .unwrap();
    assert!(
        access.contains("method=GET") && access.contains(&trace) && access.contains("duration_us="),
        "{access}"
    );
    // `2026-11-24T20:09:55.123456Z  INFO access: …`, like the other lines.
    let stamp = access.split_whitespace().next().unwrap();
    assert!(
        stamp.len() == 27
            && stamp.ends_with('Z')
            && stamp.as_bytes()[10] == b'T'
            && stamp.as_bytes()[19] == b'.'
            && stamp[20..26].bytes().all(|b| b.is_ascii_digit()),
        "{access}"
    );
    assert!(
        access.contains(
            "Z  INFO access: method=GET route=\"/panicky/v1/sync\" status=500 duration_us="
        ),
        "{access}"
    );
    let greet = log
        .lines()
        .find(|l| l.contains("route=\"/hello/v1/greet\""))
        .unwrap();
    assert!(
        greet.contains(&greet_trace) && greet.contains("status=200"),
        "{greet}"
    );
    // Unknown paths are logged as "-", never as the raw path.
    assert_eq!(host.get("/no/such/path/123").status, 404);
    assert!(e2e::eventually(std::time::Duration::from_secs(5), || host
        .log()
        .contains("route=\"-\" status=404")));
    assert!(!host.log().contains("/no/such/path/123\" status"));

    let (_data, quiet) = e2e::serve_with(&["hello"], &[("PLUGHOST_ACCESS_LOG", "false")]);
    assert_eq!(quiet.get("/hello/v1/greet").status, 200);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!quiet.log().contains("access:"), "{}", quiet.log());
}
