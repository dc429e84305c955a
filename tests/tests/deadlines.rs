//! Every plugin request has a deadline (`PLUGHOST_PLUGIN_TIMEOUT`, or the
//! route's own): past it the client gets 504 naming the plugin and the
//! route, the handler's future is dropped, and /metrics counts it; other
//! plugins answer meanwhile. A streamed body without keep-alive that
//! falls silent for the deadline is ended.

use std::{
    io::Read as _,
    time::{Duration, Instant},
};

use e2e::{DataDir, Host};

fn host(env: &[(&str, &str)]) -> (DataDir, Host) {
    let data = DataDir::new();
    for name in ["faulty", "hello"] {
        data.install_dir(name);
    }
    let host = Host::start_with(&data, env);
    (data, host)
}

#[test]
fn a_handler_past_its_deadline_gets_504_and_is_dropped() {
    let (_data, host) = host(&[("PLUGHOST_PLUGIN_TIMEOUT", "1")]);
    // Four hung requests in flight on a host with the default workers:
    // the others still answer at once.
    let hung: Vec<_> = (0..4)
        .map(|_| {
            let base = host.base().to_owned();
            std::thread::spawn(move || {
                let started = Instant::now();
                let answer = ureq::get(&format!("{base}/faulty/v1/pending")).call();
                let status = match &answer {
                    Ok(r) => r.status(),
                    Err(ureq::Error::Status(code, _)) => *code,
                    Err(e) => panic!("{e}"),
                };
                let body: serde_json::Value = match answer {
                    Ok(r) | Err(ureq::Error::Status(_, r)) => r.into_json().unwrap(),
                    Err(_) => unreachable!(),
                };
                (status, body, started.elapsed())
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    assert_eq!(
        host.get("/hello/v1/greet?name=Ada").data()["message"],
        "Hello, Ada!"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "hello waited"
    );
    for request in hung {
        let (status, body, took) = request.join().unwrap();
        assert_eq!(status, 504, "{body}");
        assert_eq!(
            body["msg"],
            "plugin 'faulty' did not answer GET /faulty/v1/pending within 1s (PLUGHOST_PLUGIN_TIMEOUT)"
        );
        assert!(body["trace_id"].is_string(), "{body}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(5),
            "{took:?}"
        );
    }
    // It asked to run isolated; this operator did not isolate it: said.
    assert_eq!(host.plugin("faulty")["isolation_requested"], true);
    assert!(host.log().contains(
        "the plugin asks to run isolated (plugin.toml [plugin] isolated = true) and runs in process"
    ));
    // Each handler's future was dropped, not left running.
    assert_eq!(host.get("/faulty/v1/ok").data()["dropped"], 4);
    let metrics = host.metrics();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("plughost_plugin_timeouts_total")
                && l.contains("plugin=\"faulty\"")
                && l.contains("route=\"/faulty/v1/pending\"")
        })
        .unwrap_or_else(|| panic!("no timeout series in {metrics}"));
    assert!(line.ends_with(" 4"), "{line}");
    // Within the deadline: answered.
    assert_eq!(host.get("/faulty/v1/sleep?ms=100").data()["slept_ms"], 100);
}

#[test]
fn a_route_may_declare_its_own_deadline() {
    let (_data, host) = host(&[]);
    host.get("/faulty/v1/quick?ms=1000").assert_error(
        504,
        "plugin 'faulty' did not answer GET /faulty/v1/quick within 300ms (the route's own timeout)",
    );
    assert_eq!(host.get("/faulty/v1/quick?ms=10").data()["slept_ms"], 10);
    // The operator's default (30 s) leaves the others alone.
    assert_eq!(
        host.get("/faulty/v1/sleep?ms=1000").data()["slept_ms"],
        1000
    );
}

#[test]
fn a_silent_stream_without_keep_alive_is_ended_at_the_deadline() {
    silent_stream_ends("");
}

/// The same from an isolated plugin: the chunks cross its child's socket.
#[test]
fn an_isolated_plugins_silent_stream_is_ended_the_same() {
    silent_stream_ends("faulty");
}

fn silent_stream_ends(isolated: &str) {
    let (_data, host) = host(&[
        ("PLUGHOST_PLUGIN_TIMEOUT", "1"),
        ("PLUGHOST_ISOLATED_PLUGINS", isolated),
    ]);
    let started = Instant::now();
    let answer = ureq::get(&format!(
        "{}/faulty/v1/trickle?chunks=3&ms=400",
        host.base()
    ))
    .call()
    .unwrap();
    assert_eq!(answer.status(), 200);
    let mut body = String::new();
    answer.into_reader().read_to_string(&mut body).unwrap();
    assert_eq!(body, "chunk 0\nchunk 1\nchunk 2\n");
    // Three chunks 400 ms apart (each gap within the deadline), the last
    // at 800 ms, then one silent second.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1750) && took < Duration::from_secs(8),
        "{took:?}"
    );
}

#[test]
fn a_deadline_out_of_range_is_refused() {
    let data = DataDir::new();
    let (ok, out) = e2e::cli(
        &data,
        &[("PLUGHOST_PLUGIN_TIMEOUT", "0".to_owned())],
        &["plugin", "list"],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("plugin_timeout") && out.contains("1 to 86400 seconds"),
        "{out}"
    );
}
