//! The bundled `email` plugin against a real SMTP server that requires a
//! login (aiosmtpd): a captcha mailed and verified once, a refused login
//! answered 502 and an unreachable server 503 (neither keeping a code),
//! and sends in flight that hold no request worker.

use std::time::Duration;

use e2e::{DataDir, Host, TestSmtp, free_port};
use serde_json::json;

const USER: &str = "mailer@example.com";
const PASSWORD: &str = "smtp-test-password";

/// A host serving the bundled `email` (and `hello`) against `port`, logging
/// in with `password`.
fn host_mailing_to(port: u16, password: &str) -> (DataDir, Host) {
    let port = port.to_string();
    e2e::serve_with(
        &["email", "hello"],
        &[
            ("EMAIL_HOST", "127.0.0.1"),
            ("EMAIL_PORT", &port),
            ("EMAIL_USERNAME", USER),
            ("EMAIL_PASSWORD", password),
            ("EMAIL_TIMEOUT_SECONDS", "5"),
        ],
    )
}

/// A message's headers, and its body with its quoted-printable encoding
/// undone.
fn unquoted(message: &str) -> String {
    let (headers, body) = message
        .split_once("\r\n\r\n")
        .or_else(|| message.split_once("\n\n"))
        .expect("headers and a body");
    let joined = body.replace("=\r\n", "").replace("=\n", "");
    let mut text = Vec::new();
    let mut bytes = joined.bytes();
    while let Some(b) = bytes.next() {
        if b != b'=' {
            text.push(b);
            continue;
        }
        let hex: Vec<u8> = bytes.by_ref().take(2).collect();
        let value = std::str::from_utf8(&hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .unwrap_or_else(|| panic!("bad quoted-printable escape in:\n{message}"));
        text.push(value);
    }
    format!(
        "{headers}\n\n{}",
        String::from_utf8(text).expect("a UTF-8 body")
    )
}

/// The 6-digit code in a captcha mail.
fn code_in(message: &str) -> String {
    message
        .split('>')
        .filter_map(|part| part.split('<').next())
        .find(|text| text.len() == 6 && text.bytes().all(|b| b.is_ascii_digit()))
        .unwrap_or_else(|| panic!("no code in:\n{message}"))
        .to_owned()
}

/// `POST path` with `body`, as the admin.
fn post(host: &Host, path: &str, body: &serde_json::Value) -> e2e::Reply {
    host.request_as(e2e::As::Admin, "POST", path, Some(body))
}

fn verify(host: &Host, recipient: &str, code: &str) -> bool {
    let reply = post(
        host,
        "/email/v1/captcha/verify",
        &json!({"recipient": recipient, "code": code}),
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    reply.data()["valid"].as_bool().unwrap()
}

#[test]
fn a_captcha_is_mailed_through_a_server_that_requires_a_login_and_verifies_once() {
    let smtp = TestSmtp::start(USER, PASSWORD, Duration::ZERO);
    let (_data, host) = host_mailing_to(smtp.port(), PASSWORD);

    let anonymous = host.request_as(
        e2e::As::Anonymous,
        "POST",
        "/email/v1/captcha",
        Some(&json!({"recipients": "ada@example.com"})),
    );
    assert_eq!(anonymous.status, 401, "{:?}", anonymous.json);
    assert!(smtp.messages().is_empty());

    let sent = post(
        &host,
        "/email/v1/captcha",
        &json!({"recipients": ["ada@example.com", "Bob@Example.com"]}),
    );
    assert_eq!(sent.status, 200, "{:?}\n{}", sent.json, host.log());
    assert_eq!(sent.json["data"], serde_json::Value::Null);
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let message = &unquoted(&messages[0]);
    assert!(
        message.starts_with("X-Rcpt-To: ada@example.com, Bob@Example.com"),
        "{message}"
    );
    assert!(message.contains(&format!("From: {USER}")), "{message}");
    assert!(
        message.contains("Subject: Your verification code"),
        "{message}"
    );
    assert!(
        message.contains("valid for <strong>3 minutes</strong>"),
        "{message}"
    );
    let code = code_in(message);

    let wrong = if code == "000000" { "000001" } else { "000000" };
    assert!(!verify(&host, "ada@example.com", wrong));
    assert!(verify(&host, "ada@example.com", &code));
    assert!(
        !verify(&host, "ada@example.com", &code),
        "a code is used once"
    );
    assert!(
        verify(&host, "bob@example.com", &code),
        "each recipient has it"
    );
}

#[test]
fn a_refused_login_is_a_502_and_an_unreachable_server_a_503_and_neither_keeps_a_code() {
    let smtp = TestSmtp::start(USER, PASSWORD, Duration::ZERO);
    let (_data, host) = host_mailing_to(smtp.port(), "not-the-password");
    let refused = post(
        &host,
        "/email/v1/captcha",
        &json!({"recipients": "ada@example.com"}),
    );
    refused.assert_error(
        502,
        &format!("mail server 127.0.0.1:{} refused the message", smtp.port()),
    );
    assert!(smtp.messages().is_empty());
    let log = host.log();
    assert!(
        log.contains("mail to 127.0.0.1") && log.contains("plugin=\"email\""),
        "{log}"
    );
    drop(host);

    let closed = free_port();
    let (_data, host) = host_mailing_to(closed, PASSWORD);
    let unreachable = post(
        &host,
        "/email/v1/captcha",
        &json!({"recipients": "ada@example.com"}),
    );
    unreachable.assert_error(
        503,
        &format!("mail server 127.0.0.1:{closed} cannot be reached"),
    );
    // No code was kept for the mail that never left: every guess fails,
    // and none burns anything (the attempts key is never written).
    for guess in ["000000", "123456", "999999"] {
        assert!(!verify(&host, "ada@example.com", guess));
    }
}

#[test]
fn sends_waiting_on_a_slow_mail_server_hold_no_request_worker() {
    let smtp = TestSmtp::start(USER, PASSWORD, Duration::from_secs(2));
    // Two request workers; eight sends in flight, each held 2 s by the server.
    let (_data, host) = host_mailing_to(smtp.port(), PASSWORD);
    host.plugin("email"); // logs the admin in before the sends start
    let finished = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let sends: Vec<_> = (0..8)
            .map(|i| {
                let (host, finished) = (&host, &finished);
                scope.spawn(move || {
                    let reply = post(
                        host,
                        "/email/v1/captcha",
                        &json!({"recipients": format!("user{i}@example.com")}),
                    );
                    finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    reply.status
                })
            })
            .collect();
        // The sends are in the mail server's hands (it holds each 2 s).
        std::thread::sleep(Duration::from_millis(500));
        let greeting = host.get("/hello/v1/greet?name=Ada");
        assert_eq!(greeting.status, 200);
        assert_eq!(
            finished.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "another route answered while every send still waited on the mail server"
        );
        for send in sends {
            assert_eq!(send.join().unwrap(), 200);
        }
    });
    assert_eq!(smtp.messages().len(), 8);
}
