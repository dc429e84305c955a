//! The bundled notice plugin (a port of FBA's): CRUD on every backend and
//! key mode with its permissions, the live feed that every instance sends
//! each notice created on any instance, the `purge` job that deletes
//! expired notices, and the webhook through the host's HTTP client.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::mpsc,
    time::{Duration, Instant},
};

use e2e::{As, BACKENDS, Backend, DataDir, Host, TestDatabase, TestRedis, cli, eventually};
use serde_json::{Value, json};

const NOTICES: &str = "/admin/v1/sys/notices";
const SECRET: &str = "a-shared-token-secret-of-at-least-32-chars";

fn notice(title: &str) -> Value {
    json!({"title": title, "type": 0, "status": 1, "content": "Body\nof the notice"})
}

fn crud_round_trip(host: &Host, label: &str) {
    host.post(
        NOTICES,
        &json!({"title": "", "type": 0, "status": 1, "content": "x"}),
    )
    .assert_error(422, "title: must be 1 to 64 characters long");
    host.post(
        NOTICES,
        &json!({"title": "T", "type": 2, "status": 1, "content": "x"}),
    )
    .assert_error(422, "type: must be 0 (notice) or 1 (announcement)");
    host.post(
        NOTICES,
        &json!({"title": "T", "type": 0, "status": 1, "content": "x", "expire_time": "soon"}),
    )
    .assert_error(422, "expire_time: 'soon' is not an RFC 3339 time");
    host.post(
        NOTICES,
        &json!({"title": "T", "type": 0, "status": 1, "content": "x", "expire_time": ""}),
    )
    .assert_error(422, "expire_time: '' is not an RFC 3339 time");
    let first = host.post(NOTICES, &notice("First")).data().clone();
    assert_eq!(first["title"], "First", "{label}");
    // Times read alike on every backend: `YYYY-MM-DD HH:MM:SS`, with the
    // fraction of a second where the backend keeps one.
    let created = first["created_time"]
        .as_str()
        .unwrap_or_else(|| panic!("{label}: {first}"));
    let shape: String = created
        .chars()
        .take(19)
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert_eq!(shape, "dddd-dd-dd dd:dd:dd", "{label}: {created}");
    assert_eq!(first["updated_time"], Value::Null, "{label}");
    assert_eq!(first["content"], "Body\nof the notice");
    assert_eq!(first["expire_time"], Value::Null);
    let id = first["id"].as_i64().unwrap();
    let later = host
        .post(
            NOTICES,
            &json!({"title": "Announcement", "type": 1, "status": 0, "content": "y",
                    "expire_time": "2099-01-31T12:00:00+02:00"}),
        )
        .data()
        .clone();
    assert_eq!(later["expire_time"], "2099-01-31T10:00:00Z", "{label}");

    let page = host
        .get(&format!("{NOTICES}?page=1&size=10"))
        .data()
        .clone();
    assert_eq!(page["total"], 2, "{label}: {page}");
    assert_eq!(page["items"][0]["title"], "Announcement", "newest first");
    let filtered = host.get(&format!("{NOTICES}?type=1")).data().clone();
    assert_eq!(filtered["total"], 1, "{label}");
    let titled = host.get(&format!("{NOTICES}?title=Fir")).data().clone();
    assert_eq!(titled["items"][0]["id"], id, "{label}");

    let updated = host.request(
        "PUT",
        &format!("{NOTICES}/{id}"),
        Some(&json!({"title": "First, edited", "type": 0, "status": 0, "content": "z"})),
    );
    assert_eq!(updated.data()["title"], "First, edited", "{label}");
    assert!(!updated.data()["updated_time"].is_null(), "{label}");
    assert_eq!(host.get(&format!("{NOTICES}/{id}")).data()["status"], 0);

    let deleted = host.request("DELETE", NOTICES, Some(&json!({"pks": [id, later["id"]]})));
    assert_eq!(deleted.data()["deleted"], 2, "{label}");
    host.get(&format!("{NOTICES}/{id}"))
        .assert_error(404, &format!("notice {id} does not exist"));
}

#[test]
fn notices_are_kept_on_every_backend_and_key_mode() {
    for backend in BACKENDS {
        for pk_mode in ["autoincrement", "snowflake"] {
            let database = TestDatabase::create(backend);
            let data = DataDir::new();
            data.install_dir("notice");
            let host = Host::start_on(&data, &database, &[("PLUGHOST_PK_MODE", pk_mode)]);
            crud_round_trip(&host, &format!("{backend:?} {pk_mode}"));
        }
    }
}

#[test]
fn reading_needs_a_token_and_writing_its_permission() {
    let database = TestDatabase::create(Backend::Sqlite);
    let data = DataDir::new();
    data.install_dir("notice");
    let env = database.env();
    let (ok, out) = cli(
        &data,
        &env,
        &["user", "add", "ada", "--password", "ada-password"],
    );
    assert!(ok, "{out}");
    let host = Host::start_on(&data, &database, &[]);
    let token = format!("Bearer {}", host.token("ada", "ada-password"));
    let reader = As::Header(&token);
    assert_eq!(host.request_as(reader, "GET", NOTICES, None).status, 200);
    host.request_as(reader, "POST", NOTICES, Some(&notice("No")))
        .assert_error(403, "sys:notice:add");
    assert_eq!(
        host.request_as(As::Anonymous, "GET", NOTICES, None).status,
        401
    );
}

/// The `data:` lines of `GET /admin/v1/sys/notices/stream` on `host`.
fn feed(host: &Host) -> mpsc::Receiver<String> {
    let token = host.token("admin", e2e::ADMIN_PASSWORD);
    let response = ureq::get(&format!("{}{NOTICES}/stream", host.base()))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .expect("the notice stream");
    assert_eq!(response.content_type(), "text/event-stream");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(response.into_reader()).lines() {
            let Ok(line) = line else { return };
            if let Some(data) = line.strip_prefix("data: ")
                && tx.send(data.to_owned()).is_err()
            {
                return;
            }
        }
    });
    rx
}

#[test]
fn every_instances_stream_sends_each_notice_created_on_any_instance() {
    let redis = TestRedis::start();
    let database = TestDatabase::create(Backend::Postgresql);
    let url = database.env()[0].1.clone();
    let redis_url = redis.url();
    let hosts: Vec<(DataDir, Host)> = ["a", "b", "c"]
        .iter()
        .map(|id| {
            let data = DataDir::new();
            data.install_dir("notice");
            // b runs the plugin isolated: its stream and its events
            // cross the child's socket.
            let env = [
                ("DATABASE_URL", url.as_str()),
                ("REDIS_URL", redis_url.as_str()),
                ("PLUGHOST_JWT_SECRET", SECRET),
                ("PLUGHOST_INSTANCE_ID", id),
                (
                    "PLUGHOST_ISOLATED_PLUGINS",
                    if *id == "b" { "notice" } else { "" },
                ),
            ];
            let host = Host::start_with(&data, &env);
            (data, host)
        })
        .collect();
    let feeds: Vec<mpsc::Receiver<String>> = hosts.iter().map(|(_, h)| feed(h)).collect();
    for (n, (_, creator)) in hosts.iter().enumerate() {
        let title = format!("Made on instance {n}");
        let created = creator.post(NOTICES, &notice(&title));
        assert_eq!(created.status, 200, "{:?}", created.json);
        let sent = Instant::now();
        for (i, feed) in feeds.iter().enumerate() {
            let data = feed
                .recv_timeout(Duration::from_secs(2))
                .unwrap_or_else(|_| panic!("instance {i}'s stream did not send '{title}'"));
            let received: Value = serde_json::from_str(&data).unwrap();
            assert_eq!(received["title"], title, "instance {i}");
            assert_eq!(received["id"], created.data()["id"]);
        }
        assert!(sent.elapsed() < Duration::from_secs(2));
    }
}

/// A server on 127.0.0.1 that keeps the body of every POST it gets.
fn webhook() -> (u16, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buffer = [0u8; 8192];
            // Read the head, then as much body as Content-Length says.
            while let Ok(n) = stream.read(&mut buffer) {
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        let _ = tx.send(body.to_owned());
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n");
        }
    });
    (port, rx)
}

#[test]
fn expired_notices_are_purged_and_the_webhook_gets_each_new_one() {
    purged_and_posted("");
}

/// The same isolated: the job and the webhook run in the child, the list
/// shows the job's runs from it.
#[test]
fn an_isolated_plugins_job_and_webhook_work_the_same() {
    purged_and_posted("notice");
}

fn purged_and_posted(isolated: &str) {
    let (port, hooks) = webhook();
    let hook = format!("http://127.0.0.1:{port}/notices");
    let (_data, host) = e2e::serve_with(
        &["notice"],
        &[
            ("NOTICE_PURGE_SECONDS", "1"),
            ("NOTICE_WEBHOOK_URL", &hook),
            ("PLUGHOST_HTTP_ALLOW_NOTICE", "127.0.0.1"),
            ("PLUGHOST_ISOLATED_PLUGINS", isolated),
        ],
    );
    let soon = chrono_in(Duration::from_secs(1));
    let expiring = host
        .post(
            NOTICES,
            &json!({"title": "Short-lived", "type": 0, "status": 1, "content": "x", "expire_time": soon}),
        )
        .data()
        .clone();
    let lasting = host.post(NOTICES, &notice("Lasting")).data().clone();

    let first: Value =
        serde_json::from_str(&hooks.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
    assert_eq!(first["event"], "notice.created");
    assert_eq!(first["notice"]["title"], "Short-lived");
    let second: Value =
        serde_json::from_str(&hooks.recv_timeout(Duration::from_secs(5)).unwrap()).unwrap();
    assert_eq!(second["notice"]["id"], lasting["id"]);

    let gone = format!("{NOTICES}/{}", expiring["id"]);
    assert!(
        eventually(Duration::from_secs(10), || host.get(&gone).status == 404),
        "the expired notice is still there:\n{}",
        host.log()
    );
    assert_eq!(
        host.get(&format!("{NOTICES}/{}", lasting["id"])).status,
        200
    );
    let purge = &host.plugin("notice")["jobs"][0];
    assert_eq!(purge["name"], "purge");
    assert_eq!(purge["schedule"], "every 1s");
    assert_eq!(purge["outcome"], "ok", "{purge}");
}

/// An RFC 3339 time `after` from now.
fn chrono_in(after: Duration) -> String {
    (chrono::Utc::now() + after).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
