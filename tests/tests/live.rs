//! Events across the cluster and live answers: an event published on one
//! instance reaches a Server-Sent Events feed on another, through Redis
//! and through the database alone, each once; an idle feed gets
//! keep-alive comments and ends when its plugin stops; a plugin may
//! subscribe only to its own topics and the ones it declares.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use e2e::{Backend, DataDir, Host, TestDatabase, TestRedis, sse_lines as lines_of, until};
use serde_json::json;

const SECRET: &str = "a-shared-token-secret-of-at-least-32-chars";

fn two_instances(redis: Option<&str>) -> (TestDatabase, Vec<(DataDir, Host)>) {
    let database = TestDatabase::create(Backend::Postgresql);
    let url = database.env()[0].1.clone();
    let hosts = ["a", "b"]
        .iter()
        .map(|id| {
            let data = DataDir::new();
            data.install_dir("ticker");
            let mut env = vec![
                ("DATABASE_URL", url.as_str()),
                ("PLUGHOST_JWT_SECRET", SECRET),
                ("PLUGHOST_INSTANCE_ID", id),
            ];
            if let Some(redis) = redis {
                env.push(("REDIS_URL", redis));
            }
            let host = Host::start_with(&data, &env);
            (data, host)
        })
        .collect();
    (database, hosts)
}

fn an_event_reaches_a_feed_on_another_instance_once(redis: Option<&str>) {
    let (_database, hosts) = two_instances(redis);
    let (a, b) = (&hosts[0].1, &hosts[1].1);
    let feed = lines_of(a, "/ticker/v1/feed");
    // The feed's subscription is in place once its answer began.
    assert_eq!(
        b.post("/ticker/v1/say", &json!({"text": "from b"})).status,
        200
    );
    let seen = until(&feed, "from b", Duration::from_secs(3));
    assert!(seen.contains(&"event: said".to_owned()), "{seen:?}");
    assert_eq!(seen.last().unwrap(), r#"data: {"text":"from b"}"#);

    // Said on the feed's own instance: delivered once, not echoed back.
    assert_eq!(
        a.post("/ticker/v1/say", &json!({"text": "from a"})).status,
        200
    );
    assert_eq!(
        b.post("/ticker/v1/say", &json!({"text": "after"})).status,
        200
    );
    let seen = until(&feed, "after", Duration::from_secs(3));
    let from_a = seen.iter().filter(|l| l.contains("from a")).count();
    assert_eq!(from_a, 1, "{seen:?}");
}

#[test]
fn an_event_reaches_a_feed_on_another_instance_once_through_redis() {
    let redis = TestRedis::start();
    an_event_reaches_a_feed_on_another_instance_once(Some(&redis.url()));
}

#[test]
fn an_event_reaches_a_feed_on_another_instance_once_through_the_database() {
    an_event_reaches_a_feed_on_another_instance_once(None);
}

#[test]
fn an_idle_feed_gets_keep_alive_comments_and_ends_when_its_plugin_stops() {
    let (_data, host) = e2e::serve_with(&["ticker", "hello"], &[("TICKER_KEEPALIVE_MS", "200")]);
    let feed = lines_of(&host, "/ticker/v1/feed");
    until(&feed, ": keep-alive", Duration::from_secs(3));

    let removed = host.request("DELETE", "/admin/v1/sys/plugins/ticker", None);
    assert_eq!(removed.status, 200, "{:?}", removed.json);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match feed.recv_timeout(Duration::from_millis(100)) {
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            _ if Instant::now() > deadline => panic!("the feed did not end with its plugin"),
            _ => {}
        }
    }
    assert!(
        host.log().contains("ticker task feed ended"),
        "{}",
        host.log()
    );
    assert_eq!(host.get("/hello/v1/greet").status, 200);
}

#[test]
fn a_plugin_subscribes_to_its_own_topics_and_declared_ones_only() {
    let (_data, host) = e2e::serve_with(&["ticker"], &[]);
    assert_eq!(
        host.get("/ticker/v1/subscribe?topic=ticker.said").data(),
        "subscribed"
    );
    assert_eq!(
        host.get("/ticker/v1/subscribe?topic=hello.greeted").data(),
        "plugin 'ticker' may not subscribe to 'hello.greeted': declare it in plugin.toml [permissions] events"
    );
    // The host's own events, as far as declared (`sys.user.*`).
    assert_eq!(
        host.get("/ticker/v1/subscribe?topic=sys.user.deleted")
            .data(),
        "subscribed"
    );
    assert_eq!(
        host.get("/ticker/v1/subscribe?topic=sys.role.created")
            .data(),
        "plugin 'ticker' may not subscribe to 'sys.role.created': declare it in plugin.toml [permissions] events"
    );
    let bad = host
        .get("/ticker/v1/subscribe?topic=nonsense")
        .data()
        .clone();
    assert!(
        bad.as_str().unwrap().contains("'nonsense' is not a topic"),
        "{bad}"
    );
}
