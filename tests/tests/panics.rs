//! Panicking plugin handlers are contained: a 500 envelope and a log line.

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
    assert!(
        host.stop().success(),
        "the host exits cleanly after 2,002 panics"
    );
}
