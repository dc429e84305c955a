//! Panicking plugin handlers are contained: a 500 envelope and a log line;
//! a flood of them is logged as a few lines and a count per interval.

use std::time::Duration;

/// How many times the log reports the panic of `payload`: lines of its own
/// plus the counts of the lines it stands for.
fn panics_logged(log: &str, payload: &str) -> (usize, u64) {
    let own: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!(": {payload}")))
        .collect();
    let site = own
        .first()
        .and_then(|l| l.split("panicked at ").nth(1))
        .and_then(|rest| rest.split(": ").next())
        .map(|location| format!("panicked at {location}: "))
        .expect("one line of its own");
    let counted = log
        .lines()
        .filter_map(|l| l.split(&site).nth(1))
        .filter_map(|rest| rest.split_once(" more times in the last "))
        .filter_map(|(count, _)| count.parse::<u64>().ok())
        .sum();
    (own.len(), counted)
}

#[test]
fn panicking_sync_and_async_handlers_give_500_while_everything_else_keeps_answering() {
    let (_data, host) = e2e::serve(&["panicky", "hello"]);
    for round in 0..1000 {
        let sync = host.get("/panicky/v1/sync");
        assert_eq!(sync.status, 500, "round {round}: {:?}", sync.json);
        let async_ = host.get("/panicky/v1/async");
        assert_eq!(async_.status, 500, "round {round}: {:?}", async_.json);
        let hello = host.get("/hello/v1/greet?name=Ada");
        assert_eq!(hello.status, 200, "round {round}");
    }
    host.get("/panicky/v1/sync")
        .assert_error(500, "internal error in plugin 'panicky'");
    host.get("/panicky/v1/async")
        .assert_error(500, "internal error in plugin 'panicky'");
    let log = host.log();
    assert!(
        log.contains("sync handler exploded"),
        "panic logged:\n{log}"
    );
    assert!(log.contains("async handler exploded"), "panic logged");
    assert!(log.contains("panicky/src/lib.rs"), "panic location logged");
    assert_eq!(host.get("/admin/v1/sys/plugins").status, 200);
    // 1,001 panics of each route: a few lines each, the rest counted once
    // their interval ends; every panic is accounted for.
    for payload in ["sync handler exploded", "async handler exploded"] {
        assert!(
            e2e::eventually(Duration::from_secs(25), || {
                let (own, counted) = panics_logged(&host.log(), payload);
                own as u64 + counted == 1001
            }),
            "{payload}: {:?} lines and counted, of 1001:\n{}",
            panics_logged(&host.log(), payload),
            host.log()
                .lines()
                .filter(|l| l.contains("more times"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let (own, _) = panics_logged(&host.log(), payload);
        assert!(own <= 20, "{payload}: {own} lines of their own");
    }
    assert!(
        host.stop().success(),
        "the host exits cleanly after 2,002 panics"
    );
}
