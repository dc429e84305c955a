//! Plugins that live in time: start hooks in dependency order before the
//! routes serve, stop hooks in reverse order at SIGTERM, uninstall and
//! upgrade (the new build started before its routes go live), a failing
//! or hanging start hook isolated to its plugin and its dependents,
//! background tasks owned by the plugin (cancelled when it stops, a panic
//! contained and counted), blocking work off the request workers and
//! bounded per plugin, and capability plugins without routes.

use std::time::Duration;

use e2e::{DataDir, Host, cli, eventually, serve_with};

/// Where `needle` first appears in `log`, or a panic showing the log.
fn at(log: &str, needle: &str) -> usize {
    log.find(needle)
        .unwrap_or_else(|| panic!("the log has no '{needle}':\n{log}"))
}

fn ticks(host: &Host) -> u64 {
    host.get("/ticker/v1/state").data()["ticks"]
        .as_u64()
        .unwrap()
}

/// The value of the series `name{labels}` (labels as rendered, in order).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn start_hooks_run_in_dependency_order_before_serving_and_stop_hooks_in_reverse_at_sigterm() {
    let data = DataDir::new();
    for name in ["ticker", "beacon", "hello"] {
        data.install_dir(name);
    }
    // A CLI command loads the plugins and starts none.
    let (ok, out) = cli(&data, &[], &["plugin", "list"]);
    assert!(ok, "{out}");
    assert!(!out.contains("start hook ran"), "{out}");

    let host = Host::start(&data);
    let state = host.get("/ticker/v1/state").data().clone();
    assert_eq!(state["started"], true, "served only once started: {state}");
    let refused = state["init_spawn"].as_str().unwrap();
    assert!(
        refused.contains("plugin 'ticker' cannot spawn task 'too-early': it is not running"),
        "{refused}"
    );
    let first = ticks(&host);
    assert!(
        eventually(Duration::from_secs(10), || ticks(&host) > first + 3),
        "the tick task runs in the background"
    );

    // beacon, a capability plugin: no routes, loaded, started after ticker.
    let beacon = host.plugin("beacon");
    assert_eq!(beacon["state"], "loaded", "{beacon}");
    let log = host.log();
    assert!(at(&log, "ticker start hook ran") < at(&log, "beacon start hook ran"));

    let (status, log) = host.stop_and_log();
    assert!(status.success(), "{log}");
    let beacon_stopped = at(&log, "beacon stop hook ran");
    let ticker_stopped = at(&log, "ticker stop hook ran after");
    assert!(
        beacon_stopped < ticker_stopped,
        "dependents stop first:\n{log}"
    );
    assert!(
        ticker_stopped < at(&log, "ticker task tick ended"),
        "its task is cancelled after its stop hook:\n{log}"
    );
    assert!(at(&log, "ticker task tick ended") < at(&log, "host::http: stopped"));
}

#[test]
fn a_start_hook_that_fails_or_hangs_refuses_its_plugin_and_dependents_while_others_serve() {
    for (setting, extra, reason) in [
        (
            "fail",
            None,
            "not started: its start hook failed: told to fail by TICKER_START",
        ),
        (
            "hang",
            Some(("PLUGHOST_HOOK_TIMEOUT", "1")),
            "not started: its start hook did not finish within 1s (PLUGHOST_HOOK_TIMEOUT)",
        ),
    ] {
        let mut env = vec![("TICKER_START", setting)];
        env.extend(extra);
        let (_data, host) = {
            let data = DataDir::new();
            for name in ["ticker", "beacon", "hello"] {
                data.install_dir(name);
            }
            let host = Host::start_with(&data, &env);
            (data, host)
        };
        let ticker = host.plugin("ticker");
        assert_eq!(ticker["state"], "error", "{ticker}");
        assert_eq!(ticker["error"], reason, "{ticker}");
        let beacon = host.plugin("beacon");
        assert_eq!(beacon["state"], "error", "{beacon}");
        assert_eq!(
            beacon["error"],
            "not started: it depends on 'ticker', which could not be started"
        );
        assert_eq!(host.get("/ticker/v1/state").status, 404);
        assert_eq!(
            host.get("/hello/v1/greet?name=Ada").data()["message"],
            "Hello, Ada!"
        );
        let log = host.log();
        assert!(!log.contains("beacon start hook ran"), "{log}");
        // A run that failed owns no task: the hanging hook's future is gone.
        let (status, log) = host.stop_and_log();
        assert!(status.success(), "{log}");
        assert!(!log.contains("ticker stop hook ran"), "{log}");
    }
}

#[test]
fn a_panicking_task_is_logged_with_its_plugin_and_counted_and_the_plugin_serves_on() {
    let (_data, host) = serve_with(&["ticker"], &[]);
    assert_eq!(
        host.post("/ticker/v1/panic", &serde_json::json!({})).status,
        200
    );
    assert!(
        eventually(Duration::from_secs(10), || host.log().contains(
            "task panicked; the plugin's other tasks and routes go on"
        )),
        "{}",
        host.log()
    );
    let log = host.log();
    let line = log.lines().find(|l| l.contains("task panicked")).unwrap();
    assert!(
        line.contains("plugin=\"ticker\"") || line.contains("plugin=ticker"),
        "{line}"
    );
    assert!(
        line.contains("task=\"boom\"") || line.contains("task=boom"),
        "{line}"
    );
    assert!(
        log.contains("the boom task blew up"),
        "the plugin's panic line:\n{log}"
    );

    let metrics = host.metrics();
    assert_eq!(
        sample(
            &metrics,
            "plughost_plugin_tasks_total{plugin=\"ticker\",outcome=\"panicked\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "plughost_plugin_tasks{plugin=\"ticker\"}"),
        Some(1.0),
        "the tick task runs on:\n{metrics}"
    );
    let before = ticks(&host);
    assert!(eventually(Duration::from_secs(10), || ticks(&host) > before));
}

#[test]
fn blocking_work_runs_off_the_request_workers_and_at_most_the_plugins_share_at_once() {
    let (_data, host) = serve_with(&["ticker"], &[("PLUGHOST_PLUGIN_BLOCKING", "2")]);
    let answers: Vec<serde_json::Value> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..6)
            .map(|_| scope.spawn(|| host.get("/ticker/v1/blocking?ms=300").data().clone()))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let handlers: std::collections::BTreeSet<&str> = answers
        .iter()
        .map(|a| a["handler_thread"].as_str().unwrap())
        .collect();
    for answer in &answers {
        let work = answer["work_thread"].as_str().unwrap();
        assert!(
            !handlers.contains(work),
            "work ran on a request worker: {answers:?}"
        );
    }
    let most = answers
        .iter()
        .map(|a| a["most_at_once"].as_u64().unwrap())
        .max();
    assert_eq!(most, Some(2), "six calls, two at once: {answers:?}");

    host.get("/ticker/v1/blocking-panic")
        .assert_error(500, "blocking work of plugin 'ticker' panicked");
    assert_eq!(host.get("/ticker/v1/state").status, 200);
}

#[test]
fn an_upgrade_starts_the_new_build_before_its_routes_go_live_then_stops_the_old_one() {
    let (_data, host) = serve_with(&["hello"], &[]);
    assert_eq!(host.upload(&e2e::greeter(1), "type=zip").status, 200);
    assert!(host.log().contains("greeter build 1 started"));
    let upgraded = host.upload(&e2e::greeter(2), "type=zip&upgrade=true");
    assert_eq!(upgraded.status, 200, "{:?}", upgraded.json);
    assert_eq!(e2e::greeter_version(&host).as_deref(), Some("2"));
    let log = host.log();
    assert!(
        at(&log, "greeter build 2 started") < at(&log, "greeter build 1 stopped"),
        "{log}"
    );
    assert!(
        at(&log, "greeter build 1 stopped") < at(&log, "greeter build 1 pulse ended"),
        "{log}"
    );
    assert!(!log.contains("greeter build 2 pulse ended"), "{log}");

    let removed = host.request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(removed.status, 200, "{:?}", removed.json);
    let log = host.log();
    assert!(
        at(&log, "greeter build 2 stopped") < at(&log, "greeter build 2 pulse ended"),
        "{log}"
    );
}
