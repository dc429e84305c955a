//! Isolated plugins (`PLUGHOST_ISOLATED_PLUGINS`) through the real binary:
//! a plugin whose handler crashes the process (a null write, `abort`,
//! `exit`, a stack overflow), hangs or blocks costs its own request (502,
//! 504) and a restart of its child, never the host: another plugin keeps
//! answering, the list shows the crashes, a crash loop stops at the limit
//! and marks the plugin `error`, and no child outlives a `kill -9` of the
//! host. The host never maps the isolated library; only the host reaches
//! the child; an uninstall lets the requests in flight finish.

use std::time::{Duration, Instant};

use e2e::{DataDir, Host, eventually};

fn host(env: &[(&str, &str)]) -> (DataDir, Host) {
    let data = DataDir::new();
    for name in ["faulty", "hello"] {
        data.install_dir(name);
    }
    let mut all = vec![("PLUGHOST_ISOLATED_PLUGINS", "faulty")];
    all.extend_from_slice(env);
    let host = Host::start_with(&data, &all);
    (data, host)
}

fn child_pid(host: &Host) -> i64 {
    host.get("/faulty/v1/ok").data()["pid"].as_i64().unwrap()
}

fn alive(pid: i64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[test]
fn a_crashing_plugin_costs_its_request_and_a_restart_never_the_host() {
    let (_data, host) = host(&[]);
    let first = child_pid(&host);
    assert_ne!(
        first,
        i64::from(host.pid()),
        "the plugin runs in a child process"
    );
    let child_maps = std::fs::read_to_string(format!("/proc/{first}/maps")).unwrap();
    let host_maps = std::fs::read_to_string(format!("/proc/{}/maps", host.pid())).unwrap();
    let copy = child_maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|path| path.contains("/libs/") && path.ends_with(".so"))
        .expect("the child maps the library's copy")
        .to_owned();
    assert!(!host_maps.contains(&copy), "the host maps {copy}");
    let mut pid = first;
    for (n, (fault, reason)) in [
        ("segv", "was killed by SIGSEGV"),
        ("abort", "was killed by SIGABRT"),
        ("exit", "exited with status 3"),
        ("overflow", "was killed by SIG"),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = host.get(&format!("/faulty/v1/{fault}"));
        answer.assert_error(
            502,
            "plugin 'faulty' crashed while answering: its child process",
        );
        assert!(
            answer.json["msg"].as_str().unwrap().contains(reason),
            "{fault}: {:?}",
            answer.json
        );
        // Another plugin answers meanwhile, in the host.
        assert_eq!(
            host.get("/hello/v1/greet?name=Ada").data()["message"],
            "Hello, Ada!"
        );
        assert!(
            eventually(Duration::from_secs(10), || host.get("/faulty/v1/ok").status
                == 200),
            "{fault}: the child was not restarted"
        );
        let restarted = child_pid(&host);
        assert_ne!(restarted, pid, "{fault}: a new child");
        assert!(!alive(pid), "{fault}: the crashed child is gone");
        pid = restarted;
        let listed = host.plugin("faulty");
        assert_eq!(listed["isolated"]["crashes"], n as u64 + 1, "{listed}");
        assert!(
            listed["isolated"]["last_crash"]
                .as_str()
                .unwrap()
                .contains(reason),
            "{listed}"
        );
        assert_eq!(listed["state"], "loaded", "{listed}");
    }
    // The fifth crash within a minute: not restarted, listed as an error.
    host.get("/faulty/v1/double-panic")
        .assert_error(502, "plugin 'faulty' crashed while answering");
    std::thread::sleep(Duration::from_millis(500));
    host.get("/faulty/v1/ok")
        .assert_error(503, "plugin 'faulty' crashed 5 times within 60s");
    let listed = host.plugin("faulty");
    assert_eq!(listed["state"], "error", "{listed}");
    assert!(
        listed["error"]
            .as_str()
            .unwrap()
            .contains("it is not restarted"),
        "{listed}"
    );
    assert_eq!(host.get("/hello/v1/greet?name=Ada").status, 200);
    let metrics = host.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("plughost_plugin_crashes_total")
                && l.contains("route=\"/faulty/v1/segv\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

#[test]
fn a_hung_child_gets_504_and_one_that_stops_answering_is_killed_and_restarted() {
    let (_data, host) = host(&[
        ("PLUGHOST_PLUGIN_TIMEOUT", "2"),
        ("PLUGHOST_ISOLATED_HEALTH", "1"),
    ]);
    let first = child_pid(&host);
    // Awaiting forever: 504 at the deadline; the child is fine.
    host.get("/faulty/v1/pending").assert_error(
        504,
        "plugin 'faulty' did not answer GET /faulty/v1/pending within 2s",
    );
    assert_eq!(child_pid(&host), first);
    assert_eq!(
        host.get("/faulty/v1/ok").data()["dropped"],
        1,
        "cancelled in the child"
    );
    // Blocking its thread: the health check kills it, the request gets
    // 502, and a new child serves.
    let started = Instant::now();
    host.get("/faulty/v1/block?ms=30000").assert_error(
        502,
        "its child process was killed: it stopped answering its health check",
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(host.get("/hello/v1/greet?name=Ada").status, 200);
    assert!(eventually(Duration::from_secs(10), || {
        host.get("/faulty/v1/ok").status == 200
    }));
    assert_ne!(child_pid(&host), first);
    assert!(!alive(first));
}

#[test]
fn no_child_outlives_the_host() {
    let (_data, host) = host(&[]);
    let child = child_pid(&host);
    assert!(alive(child));
    host.kill();
    assert!(
        eventually(Duration::from_secs(5), || !alive(child)),
        "the child {child} outlived a kill -9 of the host"
    );
}

#[test]
fn a_child_past_its_memory_cap_dies_and_restarts_and_the_host_stays_flat() {
    let (_data, host) = host(&[("PLUGHOST_ISOLATED_MEMORY_MB", "1024")]);
    let before = e2e::rss_kib(host.pid());
    let first = child_pid(&host);
    assert_eq!(host.get("/faulty/v1/leak?mb=64").data()["held_mb"], 64);
    let answer = host.get("/faulty/v1/leak?mb=2048");
    answer.assert_error(502, "plugin 'faulty' crashed while answering");
    assert!(eventually(Duration::from_secs(10), || {
        host.get("/faulty/v1/ok").status == 200
    }));
    assert_ne!(child_pid(&host), first);
    // What the child held died with it.
    assert_eq!(host.get("/faulty/v1/leak?mb=1").data()["held_mb"], 1);
    let after = e2e::rss_kib(host.pid());
    assert!(
        after < before + 32 * 1024,
        "host RSS {before} KiB -> {after} KiB"
    );
    // Which caps apply, said once at start: a cgroup memory limit where
    // the host's cgroup is delegated (the child is in a cgroup of its own
    // with that limit), else RLIMIT_AS alone, with the reason.
    let log = host.log();
    let child = child_pid(&host);
    if log.contains("capped at 1024 MiB by a cgroup memory limit and RLIMIT_AS") {
        let membership = std::fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap();
        let own = membership
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .unwrap();
        assert!(own.contains("/isolated-faulty-"), "{membership}");
        let max = std::fs::read_to_string(format!("/sys/fs/cgroup{own}/memory.max")).unwrap();
        assert_eq!(max.trim(), (1024u64 << 20).to_string());
    } else {
        let line = log
            .lines()
            .find(|l| l.contains("capped at 1024 MiB of address space by RLIMIT_AS alone: "))
            .unwrap_or_else(|| panic!("no line says which caps apply:\n{log}"));
        assert!(
            ["cgroup", "delegated", "memory controller"]
                .iter()
                .any(|why| line.contains(why)),
            "{line}"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{child}/limits")).unwrap();
    let address_space = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))
        .unwrap();
    assert!(
        address_space.contains(&(1024u64 << 20).to_string()),
        "{address_space}"
    );
}

#[test]
fn only_the_host_reaches_the_child_over_its_lanes() {
    let (data, host) = host(&[]);
    let pid = child_pid(&host);
    let run = data.path().join("run");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&run).unwrap().permissions().mode() & 0o777,
        0o700,
        "{} is the host's alone",
        run.display()
    );
    let lanes: Vec<_> = std::fs::read_dir(&run)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "lanes"))
        .collect();
    assert_eq!(lanes.len(), 1, "{lanes:?}");
    // Another process (this test) connects: the child closes it unread.
    use std::io::{Read as _, Write as _};
    let mut stranger = std::os::unix::net::UnixStream::connect(&lanes[0]).unwrap();
    stranger
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stranger.write_all(&[0u8; 8]);
    let mut answer = Vec::new();
    let read = stranger.read_to_end(&mut answer);
    assert!(
        matches!(read, Ok(0)) || read.is_err() && answer.is_empty(),
        "a stranger's lane was answered: {read:?} {answer:?}"
    );
    // The host's own requests go on, on the same child.
    for _ in 0..20 {
        assert_eq!(host.get("/faulty/v1/ok").status, 200);
    }
    assert_eq!(child_pid(&host), pid);
    assert!(
        host.log()
            .contains("refused a lane from a process other than the host")
    );
}

#[test]
fn an_uninstall_lets_the_requests_in_flight_finish() {
    let (_data, host) = host(&[]);
    let pid = child_pid(&host);
    let (in_flight, uninstalled) = std::thread::scope(|scope| {
        let slow = scope.spawn(|| host.get("/faulty/v1/sleep?ms=1500"));
        std::thread::sleep(Duration::from_millis(300));
        let uninstalled = host.request("DELETE", "/admin/v1/sys/plugins/faulty", None);
        (slow.join().unwrap(), uninstalled)
    });
    assert_eq!(uninstalled.status, 200, "{:?}", uninstalled.json);
    assert_eq!(
        in_flight.status, 200,
        "a request in flight at the uninstall: {:?}",
        in_flight.json
    );
    assert_eq!(host.get("/faulty/v1/ok").status, 404);
    assert!(
        eventually(Duration::from_secs(5), || !alive(pid)),
        "the uninstalled plugin's child {pid} remains"
    );
}
