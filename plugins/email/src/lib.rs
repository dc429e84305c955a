//! `email`: mail over SMTP, a port of FBA's email plugin.
//!
//! `POST /email/v1/captcha` (token required) with
//! `{"recipients": "a@b" | ["a@b", ...]}` mails a 6-digit code, rendered
//! from `templates/captcha.html`, and keeps it for each recipient in the
//! plugin's key-value store for `EMAIL_CAPTCHA_EXPIRE_SECONDS`.
//! `POST /email/v1/captcha/verify` with `{"recipient", "code"}` checks
//! one (and uses it up). The SMTP conversation (lettre's blocking client)
//! runs on the host's blocking threads, never on a request worker.
//!
//! Where FBA answers success when the mail server fails (it only logs), a
//! failed send here answers 503 (the server cannot be reached) or 502 (it
//! refused the message), naming the server, and keeps no code.

use std::{str::FromStr, time::Duration};

use lettre::{
    Address, Message, SmtpTransport, Transport,
    message::{Mailbox, header::ContentType},
    transport::smtp::{
        Error as SmtpError,
        authentication::Credentials,
        client::{Tls, TlsParameters},
    },
};
use plugin_api::{Error, Json, Request, Router, host};
use serde::Deserialize;
use serde_json::{Value, json};

/// The most addresses one captcha request may name.
const MAX_RECIPIENTS: usize = 10;

/// The captcha mail's template.
const CAPTCHA_TEMPLATE: &str = include_str!("../templates/captcha.html");

#[derive(Deserialize)]
#[serde(untagged)]
enum Recipients {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaptchaBody {
    recipients: Recipients,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    recipient: String,
    code: String,
}

/// A setting as text (empty when unset).
fn setting(key: &str) -> String {
    host().setting(key).unwrap_or_default()
}

/// A setting that must parse as `T`; 503 naming it when it does not.
fn parsed<T: FromStr>(key: &str, what: &str) -> Result<T, Error> {
    let text = setting(key);
    text.trim().parse().map_err(|_| {
        Error::new(
            503,
            format!("email is misconfigured: {key} = '{text}' is not {what}; fix the setting"),
        )
    })
}

/// The mail server and how to talk to it, from the plugin's settings.
struct Smtp {
    host: String,
    port: u16,
    ssl: bool,
    username: String,
    password: String,
    sender: Mailbox,
    timeout: Duration,
}

impl Smtp {
    fn from_settings() -> Result<Self, Error> {
        let host = setting("EMAIL_HOST");
        if host.trim().is_empty() {
            return Err(Error::new(
                503,
                "email is not configured: set EMAIL_HOST (the mail server)",
            ));
        }
        let username = setting("EMAIL_USERNAME");
        let from = match setting("EMAIL_FROM") {
            from if from.trim().is_empty() => username.clone(),
            from => from,
        };
        if from.trim().is_empty() {
            return Err(Error::new(
                503,
                "email is not configured: set EMAIL_FROM or EMAIL_USERNAME (the sender)",
            ));
        }
        let sender = from.trim().parse().map_err(|e| {
            Error::new(
                503,
                format!("email is misconfigured: the sender '{from}' is not an address ({e}); fix EMAIL_FROM or EMAIL_USERNAME"),
            )
        })?;
        Ok(Self {
            host: host.trim().to_owned(),
            port: parsed("EMAIL_PORT", "a port number")?,
            ssl: parsed("EMAIL_SSL", "true or false")?,
            username,
            password: setting("EMAIL_PASSWORD"),
            sender,
            timeout: Duration::from_secs(parsed("EMAIL_TIMEOUT_SECONDS", "a whole number")?),
        })
    }

    /// `host:port`, as messages name the server.
    fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn transport(&self) -> Result<SmtpTransport, Error> {
        let misconfigured = |e: SmtpError| {
            Error::new(
                503,
                format!("email is misconfigured: TLS towards {}: {e}", self.server()),
            )
        };
        let builder = if self.ssl {
            SmtpTransport::relay(&self.host).map_err(misconfigured)?
        } else {
            let tls = TlsParameters::new(self.host.clone()).map_err(misconfigured)?;
            SmtpTransport::builder_dangerous(&self.host).tls(Tls::Opportunistic(tls))
        };
        let mut builder = builder.port(self.port).timeout(Some(self.timeout));
        if !self.username.is_empty() {
            builder = builder.credentials(Credentials::new(
                self.username.clone(),
                self.password.clone(),
            ));
        }
        Ok(builder.build())
    }

    /// Sends `message` on one of the host's blocking threads.
    async fn send(&self, message: Message) -> Result<(), Error> {
        let transport = self.transport()?;
        let sent = host().blocking(move || transport.send(&message)).await?;
        sent.map(|_| ()).map_err(|e| {
            let server = self.server();
            host().warn(&format!("mail to {server} failed: {e}"));
            // An answer of the server's (4xx, 5xx) is its refusal; the
            // rest (connection, TLS, time-out) is not reaching it.
            if e.is_transient() || e.is_permanent() {
                Error::new(
                    502,
                    format!("mail server {server} refused the message: {e}"),
                )
            } else {
                Error::new(503, format!("mail server {server} cannot be reached: {e}"))
            }
        })
    }
}

/// The addresses of a request, checked; 422 naming a bad one.
fn addresses(recipients: Recipients) -> Result<Vec<Address>, Error> {
    let list = match recipients {
        Recipients::One(one) => vec![one],
        Recipients::Many(many) => many,
    };
    if list.is_empty() {
        return Err(Error::new(422, "recipients: name at least one address"));
    }
    if list.len() > MAX_RECIPIENTS {
        return Err(Error::new(
            422,
            format!(
                "recipients: at most {MAX_RECIPIENTS} addresses, not {}",
                list.len()
            ),
        ));
    }
    list.iter()
        .map(|text| {
            text.trim().parse::<Address>().map_err(|e| {
                Error::new(
                    422,
                    format!("recipients: '{text}' is not an e-mail address ({e})"),
                )
            })
        })
        .collect()
}

/// Where the code of `address` is kept.
fn code_key(address: &Address) -> String {
    format!("captcha:{}", address.to_string().to_lowercase())
}

fn attempts_key(address: &Address) -> String {
    format!("attempts:{}", address.to_string().to_lowercase())
}

/// Six random digits.
fn new_code() -> Result<String, Error> {
    // Below the largest multiple of 10^6 a u32 holds, so that every code
    // is as likely as every other.
    const LIMIT: u32 = 4_294_000_000;
    loop {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::internal(format!("no randomness for a code: {e}")))?;
        let n = u32::from_le_bytes(bytes);
        if n < LIMIT {
            return Ok(format!("{:06}", n % 1_000_000));
        }
    }
}

fn render_captcha(code: &str, minutes: u64) -> Result<String, Error> {
    let mut templates = minijinja::Environment::new();
    templates
        .add_template("captcha.html", CAPTCHA_TEMPLATE)
        .and_then(|()| templates.get_template("captcha.html"))
        .and_then(|t| {
            t.render(minijinja::context! { code => code, minutes => minutes, site => "plughost" })
        })
        .map_err(|e| Error::internal(format!("the captcha template cannot be rendered: {e}")))
}

/// `POST /email/v1/captcha`: mails a new code to the recipients.
async fn send_captcha(req: Request<'_>) -> Result<Json<Value>, Error> {
    let body: CaptchaBody = req.json()?;
    let recipients = addresses(body.recipients)?;
    let smtp = Smtp::from_settings()?;
    let seconds: u64 = parsed("EMAIL_CAPTCHA_EXPIRE_SECONDS", "a whole number of seconds")?;
    let code = new_code()?;
    let html = render_captcha(&code, seconds.div_ceil(60))?;
    let mut message = Message::builder()
        .from(smtp.sender.clone())
        .subject("Your verification code");
    for address in &recipients {
        message = message.to(Mailbox::new(None, address.clone()));
    }
    let message = message
        .header(ContentType::TEXT_HTML)
        .body(html)
        .map_err(|e| Error::internal(format!("the captcha mail cannot be built: {e}")))?;

    // Kept before the send, taken back when it fails: a code exists only
    // for a mail that left.
    let ttl = Some(Duration::from_secs(seconds));
    for address in &recipients {
        host().kv_set(&code_key(address), &code, ttl).await?;
        host().kv_del(&attempts_key(address)).await?;
    }
    if let Err(e) = smtp.send(message).await {
        for address in &recipients {
            if let Err(undo) = host().kv_del(&code_key(address)).await {
                host().warn(&format!(
                    "the code of {address} outlives its failed mail: {undo}"
                ));
            }
        }
        return Err(e);
    }
    Ok(Json(Value::Null))
}

/// `POST /email/v1/captcha/verify`: whether `code` is the one mailed to
/// `recipient` (a right code is used up; too many wrong ones burn it).
async fn verify_captcha(req: Request<'_>) -> Result<Json<Value>, Error> {
    let body: VerifyBody = req.json()?;
    let address: Address = body.recipient.trim().parse().map_err(|e| {
        Error::new(
            422,
            format!(
                "recipient: '{}' is not an e-mail address ({e})",
                body.recipient
            ),
        )
    })?;
    let key = code_key(&address);
    let Some(kept) = host().kv_get(&key).await? else {
        return Ok(Json(json!({ "valid": false })));
    };
    if kept == body.code.trim() {
        host().kv_del(&key).await?;
        host().kv_del(&attempts_key(&address)).await?;
        return Ok(Json(json!({ "valid": true })));
    }
    let allowed: i64 = parsed("EMAIL_CAPTCHA_ATTEMPTS", "a whole number")?;
    let seconds: u64 = parsed("EMAIL_CAPTCHA_EXPIRE_SECONDS", "a whole number of seconds")?;
    let wrong = host()
        .kv_incr(
            &attempts_key(&address),
            1,
            Some(Duration::from_secs(seconds)),
        )
        .await?;
    if wrong >= allowed {
        host().kv_del(&key).await?;
    }
    Ok(Json(json!({ "valid": false })))
}

fn routers() -> Vec<Router> {
    vec![
        Router::new("router_v1")
            .prefix("/email/v1")
            .post("/captcha", send_captcha)
            .auth()
            .summary("Mail a verification code")
            .description(
                "Mails a 6-digit code to each recipient and keeps it for \
                 `EMAIL_CAPTCHA_EXPIRE_SECONDS`. 503 when the mail server cannot be \
                 reached or mail is not configured, 502 when it refuses the message.",
            )
            .request_schema(json!({
                "type": "object",
                "required": ["recipients"],
                "additionalProperties": false,
                "properties": {
                    "recipients": {
                        "oneOf": [
                            { "type": "string", "format": "email" },
                            {
                                "type": "array",
                                "items": { "type": "string", "format": "email" },
                                "minItems": 1,
                                "maxItems": MAX_RECIPIENTS,
                            },
                        ],
                    },
                },
            }))
            .response_schema(json!({ "type": "null" }))
            .post("/captcha/verify", verify_captcha)
            .auth()
            .summary("Check a mailed verification code")
            .request_schema(json!({
                "type": "object",
                "required": ["recipient", "code"],
                "additionalProperties": false,
                "properties": {
                    "recipient": { "type": "string", "format": "email" },
                    "code": { "type": "string" },
                },
            }))
            .response_schema(json!({
                "type": "object",
                "required": ["valid"],
                "properties": { "valid": { "type": "boolean" } },
            })),
    ]
}

plugin_api::export_plugin! {
    name: "email",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    routers: routers,
}

#[cfg(test)]
mod tests {
    use plugin_api::testing::{TestHost, TestUser};
    use serde_json::json;

    use super::*;

    #[test]
    fn codes_are_six_digits_and_the_template_shows_code_and_minutes() {
        for _ in 0..100 {
            let code = new_code().unwrap();
            assert_eq!(code.len(), 6);
            assert!(code.bytes().all(|b| b.is_ascii_digit()), "{code}");
        }
        let html = render_captcha("012345", 3).unwrap();
        assert!(
            html.contains("012345") && html.contains("3 minutes"),
            "{html}"
        );
    }

    #[test]
    fn recipients_are_checked_before_anything_is_sent() {
        let host = TestHost::start(plugin_api::this_plugin!()).unwrap();
        let user = TestUser::new(2, "ada");
        for (body, needle) in [
            (json!({"recipients": []}), "name at least one address"),
            (
                json!({"recipients": "not an address"}),
                "'not an address' is not an e-mail address",
            ),
            (
                json!({"recipients": vec!["a@example.com"; 11]}),
                "at most 10 addresses",
            ),
        ] {
            let answer = host
                .post("/email/v1/captcha")
                .json(&body)
                .user(&user)
                .send();
            assert_eq!(answer.status, 422, "{}", answer.text());
            assert!(answer.msg().contains(needle), "{}", answer.msg());
        }
        let anonymous = host
            .post("/email/v1/captcha")
            .json(&json!({"recipients": "a@example.com"}))
            .send();
        assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    }
}
