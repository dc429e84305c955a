//! Hostile and careless HTTP input, as a table: bodies that stall, declared
//! lengths past the limits, wrong content types, paging past any table,
//! control characters, oversized and malformed heads. Each is answered
//! with the right status (an envelope wherever the request reached the
//! app) in bounded time, and the host keeps serving.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use e2e::Host;
use serde_json::Value;

/// Seconds a body may stall in these tests.
const BODY_TIMEOUT: u64 = 2;

/// What a raw exchange gave: status, the head, the body, how long it took.
struct Raw {
    status: u16,
    head: String,
    body: String,
    elapsed: Duration,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `request` as is on a new connection (and keeps it open: a stalled
/// body stays stalled), then reads the answer.
fn raw(host: &Host, request: &[u8]) -> Raw {
    let address = host.base().trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    stream.write_all(request).expect("send");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if complete(&answer) {
                    break;
                }
            }
            Err(e) if answer.is_empty() => panic!("no answer after {:?}: {e}", started.elapsed()),
            Err(_) => break,
        }
    }
    let elapsed = started.elapsed();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
        elapsed,
    }
}

/// Whether `answer` holds a whole response with a Content-Length body.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .is_some_and(|len| body.len() >= len)
}

fn request(method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

struct Case {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    /// Part of the envelope's message (`None`: the HTTP layer answers
    /// without reaching the app, so without an envelope).
    message: Option<&'static str>,
    /// Answered before the body timeout could fire.
    at_once: bool,
}

fn cases(token: &str) -> Vec<Case> {
    let bearer = ("Authorization", format!("Bearer {token}"));
    let json = ("Content-Type", "application/json".to_owned());
    let length = |n: usize| ("Content-Length", n.to_string());
    let chunked = ("Transfer-Encoding", "chunked".to_owned());
    let multipart = (
        "Content-Type",
        "multipart/form-data; boundary=b0undary".to_owned(),
    );
    let login = br#"{"username":"admin","password":"wrong password"}"#;
    let names: Vec<String> = (0..200).map(|i| format!("X-Field-{i}")).collect();
    let many_headers: Vec<(&str, String)> =
        names.iter().map(|n| (n.as_str(), "x".to_owned())).collect();
    let plain = br#"{"name":"Plain","code":"pl"}"#;
    let nul = br#"{"name":"a\u0000b","code":"nul"}"#;
    vec![
        Case {
            name: "plugin route, chunked body stops mid-way",
            request: request(
                "POST",
                "/hello/v1/echo",
                &[json.clone(), chunked.clone()],
                b"5\r\n{\"a\":\r\n",
            ),
            status: 408,
            message: Some("request body stalled"),
            at_once: false,
        },
        Case {
            name: "plugin route, declared length past the limit, 2 bytes sent",
            request: request(
                "POST",
                "/hello/v1/echo",
                &[json.clone(), length(17_000_000)],
                b"{}",
            ),
            status: 413,
            message: Some("exceeds the limit of 16777216 bytes (PLUGHOST_MAX_BODY)"),
            at_once: true,
        },
        Case {
            name: "plugin route, declared length not reached",
            request: request("POST", "/hello/v1/echo", &[json.clone(), length(100)], b"{"),
            status: 408,
            message: Some("request body stalled"),
            at_once: false,
        },
        Case {
            name: "login, body stops",
            request: request(
                "POST",
                "/admin/v1/auth/login",
                &[json.clone(), length(login.len())],
                &login[..10],
            ),
            status: 408,
            message: Some("request body stalled"),
            at_once: false,
        },
        Case {
            name: "login, declared length past the limit",
            request: request(
                "POST",
                "/admin/v1/auth/login",
                &[json.clone(), length(17_000_000)],
                b"{}",
            ),
            status: 413,
            message: Some("invalid JSON body"),
            at_once: true,
        },
        Case {
            name: "login, not JSON",
            request: request(
                "POST",
                "/admin/v1/auth/login",
                &[("Content-Type", "text/plain".into()), length(login.len())],
                login,
            ),
            status: 415,
            message: Some("invalid JSON body"),
            at_once: true,
        },
        Case {
            name: "install, multipart body stops",
            request: request(
                "POST",
                "/admin/v1/sys/plugins?type=zip",
                &[bearer.clone(), multipart.clone(), length(1000)],
                b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.zip\"\r\n\r\nPK",
            ),
            status: 408,
            message: Some("request body stalled"),
            at_once: false,
        },
        Case {
            name: "install, declared length past the package limit",
            request: request(
                "POST",
                "/admin/v1/sys/plugins?type=zip",
                &[bearer.clone(), multipart, length(300_000_000)],
                b"--b0undary\r\n",
            ),
            status: 413,
            message: Some("(PLUGHOST_MAX_PACKAGE)"),
            at_once: true,
        },
        Case {
            name: "plugin JSON route, text/plain body",
            request: request(
                "POST",
                "/admin/v1/sys/dict-types",
                &[
                    bearer.clone(),
                    ("Content-Type", "text/plain".into()),
                    length(plain.len()),
                ],
                plain,
            ),
            status: 415,
            message: Some("request body must be JSON (Content-Type: application/json), not text/plain"),
            at_once: true,
        },
        Case {
            name: "paging past the last page",
            request: request(
                "GET",
                "/admin/v1/sys/dict-types?page=4611686018427387905&size=2",
                std::slice::from_ref(&bearer),
                b"",
            ),
            status: 422,
            message: Some("page: must be a whole number from 1 to 1000000000, not '4611686018427387905'"),
            at_once: true,
        },
        Case {
            name: "page size out of range",
            request: request(
                "GET",
                "/admin/v1/sys/dict-types?size=100000",
                std::slice::from_ref(&bearer),
                b"",
            ),
            status: 422,
            message: Some("size: must be a whole number from 1 to 200"),
            at_once: true,
        },
        Case {
            name: "NUL in a dict name",
            request: request(
                "POST",
                "/admin/v1/sys/dict-types",
                &[bearer, json, length(nul.len())],
                nul,
            ),
            status: 422,
            message: Some("name: must not contain control characters (found U+0000)"),
            at_once: true,
        },
        Case {
            name: "more header fields than the HTTP layer takes",
            request: request("GET", "/health", &many_headers, b""),
            status: 431,
            message: None,
            at_once: true,
        },
        Case {
            name: "malformed request line",
            request: b"GARBAGE\r\n\r\n".to_vec(),
            status: 400,
            message: None,
            at_once: true,
        },
    ]
}

#[test]
fn hostile_http_input_is_answered_in_bounded_time_with_the_right_status() {
    let (_data, host) = e2e::serve_with(
        &["hello", "dict"],
        &[("PLUGHOST_BODY_TIMEOUT", &BODY_TIMEOUT.to_string())],
    );
    let token = host.token("admin", e2e::ADMIN_PASSWORD);
    for case in cases(&token) {
        let answer = raw(&host, &case.request);
        assert_eq!(
            answer.status, case.status,
            "{}: {}\n{}",
            case.name, answer.head, answer.body
        );
        if let Some(message) = case.message {
            let envelope = answer.json();
            assert_eq!(
                envelope["code"], case.status,
                "{}: {}",
                case.name, answer.body
            );
            let msg = envelope["msg"].as_str().unwrap_or_default();
            assert!(msg.contains(message), "{}: {msg}", case.name);
        }
        let bound = if case.at_once {
            Duration::from_secs(BODY_TIMEOUT) / 2
        } else {
            Duration::from_secs(BODY_TIMEOUT + 5)
        };
        assert!(
            answer.elapsed < bound,
            "{}: answered after {:?}",
            case.name,
            answer.elapsed
        );
        if !case.at_once {
            assert!(
                answer.elapsed >= Duration::from_secs(BODY_TIMEOUT) - Duration::from_millis(100),
                "{}: answered after {:?}, before the body timeout",
                case.name,
                answer.elapsed
            );
        }
        assert_eq!(host.get("/health").status, 200, "{}", case.name);
    }
    // Nothing any of them sent was stored.
    let types = host.get("/admin/v1/sys/dict-types").data().clone();
    assert_eq!(types["total"], 0, "{types}");
}
