//! Outbound HTTP from plugins through the host's client: an allowed
//! destination answers (bodies read chunk by chunk, JSON both ways); one
//! the plugin may not reach is refused — directly or by a redirect — with
//! an error naming plugin and host and a warning in the log; the
//! operator's `PLUGHOST_HTTP_ALLOW_<PLUGIN>` replaces the manifest's
//! list, which the plugin list shows; `/metrics` counts per destination.

use std::{
    io::{Read, Write},
    net::TcpListener,
};

use e2e::{free_port, serve_with};
use serde_json::json;

/// A one-shot server on 127.0.0.1 that answers its first request with a
/// redirect to `location`; its port.
fn redirecting_to(location: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut buffer = [0u8; 4096];
            let _ = stream.read(&mut buffer);
            let _ = write!(
                stream,
                "HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

#[test]
fn an_allowed_destination_answers_and_others_are_refused_naming_plugin_and_host() {
    let (_data, host) = serve_with(&["ticker", "hello"], &[]);
    let port = host.base().rsplit(':').next().unwrap().to_owned();

    // Allowed (127.0.0.1, any port): the host's own API document, read in chunks.
    let size = ureq::get(&format!("{}/openapi.json", host.base()))
        .call()
        .unwrap()
        .into_string()
        .unwrap()
        .len();
    let fetched = host
        .get(&format!(
            "/ticker/v1/fetch?url=http://127.0.0.1:{port}/openapi.json"
        ))
        .data()
        .clone();
    assert_eq!(fetched["status"], 200, "{fetched}");
    assert_eq!(fetched["content_type"], "application/json");
    assert_eq!(
        fetched["bytes"].as_u64().unwrap() as usize,
        size,
        "{fetched}"
    );
    assert!(fetched["chunks"].as_u64().unwrap() >= 1);

    // JSON there and back.
    let relayed = host.post(
        "/ticker/v1/relay",
        &json!({"url": format!("http://127.0.0.1:{port}/hello/v1/echo"), "json": {"a": [1, 2]}}),
    );
    assert_eq!(
        relayed.data()["data"],
        json!({"a": [1, 2]}),
        "{:?}",
        relayed.json
    );
    // A body past 64 KiB comes chunk by chunk (a small one with its head).
    let large = "x".repeat(200 * 1024);
    let relayed = host.post(
        "/ticker/v1/relay",
        &json!({"url": format!("http://127.0.0.1:{port}/hello/v1/echo"), "json": {"large": large}}),
    );
    assert_eq!(
        relayed.data()["data"]["large"].as_str().map(str::len),
        Some(large.len())
    );

    // Not allowed: another name for the same server.
    host.get(&format!("/ticker/v1/fetch?url=http://localhost:{port}/health"))
        .assert_error(
            500,
            &format!(
                "plugin 'ticker' may not reach localhost:{port} (allowed: 127.0.0.1); declare it in plugin.toml [permissions] http, or set PLUGHOST_HTTP_ALLOW_TICKER"
            ),
        );
    let log = host.log();
    let warning = log
        .lines()
        .find(|l| l.contains("HTTP request refused"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        warning.contains("WARN") && warning.contains("plugin=\"ticker\""),
        "{warning}"
    );
    assert!(warning.contains("host=\"localhost\""), "{warning}");

    // Allowed first hop, redirect to a host it may not reach.
    let redirect = redirecting_to(format!("http://localhost:{port}/health"));
    let refused = host.get(&format!(
        "/ticker/v1/fetch?url=http://127.0.0.1:{redirect}/"
    ));
    refused.assert_error(
        500,
        &format!("plugin 'ticker' may not reach localhost:{port}"),
    );
    assert!(host.log().contains("redirect refused"), "{}", host.log());

    // Nobody listening: a 502 naming the failure.
    let closed = free_port();
    let unreachable = host.get(&format!("/ticker/v1/fetch?url=http://127.0.0.1:{closed}/"));
    assert_eq!(unreachable.status, 502, "{:?}", unreachable.json);

    let ticker = host.plugin("ticker");
    assert_eq!(ticker["http_allow"], json!(["127.0.0.1"]), "{ticker}");
    assert_eq!(host.plugin("hello")["http_allow"], json!([]));
    let metrics = host.metrics();
    for series in [
        "plughost_plugin_http_requests_total{plugin=\"ticker\",host=\"127.0.0.1\",outcome=\"2xx\"} 3",
        "plughost_plugin_http_requests_total{plugin=\"ticker\",host=\"localhost\",outcome=\"refused\"} 1",
    ] {
        assert!(metrics.contains(series), "no {series} in\n{metrics}");
    }
}

#[test]
fn the_operators_list_replaces_the_manifests() {
    let (_data, host) = serve_with(
        &["ticker", "hello"],
        &[(
            "PLUGHOST_HTTP_ALLOW_TICKER",
            "localhost, *.example.org:8443",
        )],
    );
    let port = host.base().rsplit(':').next().unwrap().to_owned();
    let fetched = host
        .get(&format!(
            "/ticker/v1/fetch?url=http://localhost:{port}/health"
        ))
        .data()
        .clone();
    assert_eq!(fetched["status"], 200, "{fetched}");
    host.get(&format!(
        "/ticker/v1/fetch?url=http://127.0.0.1:{port}/health"
    ))
    .assert_error(
        500,
        &format!("may not reach 127.0.0.1:{port} (allowed: localhost, *.example.org:8443)"),
    );
    assert_eq!(
        host.plugin("ticker")["http_allow"],
        json!(["localhost", "*.example.org:8443"])
    );
}
