//! Answers beyond a JSON envelope: redirects, cookies, file downloads;
//! and reading what browsers send: cookies, multipart uploads.

use std::time::Duration;

use crate::{Error, Request, Response};

/// Whether a cookie goes with cross-site requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// Only with requests from the same site.
    Strict,
    /// Also with top-level navigations from other sites (a redirect back
    /// from an OAuth provider).
    Lax,
    /// With every request (needs `secure`).
    None,
}

/// A cookie to set with [`Response::with_cookie`]: `HttpOnly`, `Path=/` and
/// `SameSite=Lax` unless told otherwise.
#[derive(Debug, Clone)]
pub struct Cookie(cookie::Cookie<'static>);

impl Cookie {
    /// A cookie `name=value`.
    pub fn new(name: &str, value: &str) -> Self {
        let mut c = cookie::Cookie::new(name.to_owned(), value.to_owned());
        c.set_http_only(true);
        c.set_path("/");
        c.set_same_site(cookie::SameSite::Lax);
        Self(c)
    }

    /// A cookie that removes `name` from the browser.
    pub fn removal(name: &str) -> Self {
        let mut c = Self::new(name, "");
        c.0.make_removal();
        c
    }

    /// The path it is sent for.
    pub fn path(mut self, path: &str) -> Self {
        self.0.set_path(path.to_owned());
        self
    }

    /// The domain it is sent to.
    pub fn domain(mut self, domain: &str) -> Self {
        self.0.set_domain(domain.to_owned());
        self
    }

    /// How long it lives (a session cookie without).
    pub fn max_age(mut self, age: Duration) -> Self {
        let seconds = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        self.0.set_max_age(cookie::time::Duration::seconds(seconds));
        self
    }

    /// Whether scripts may not read it (default true).
    pub fn http_only(mut self, yes: bool) -> Self {
        self.0.set_http_only(yes);
        self
    }

    /// Whether it goes over HTTPS only.
    pub fn secure(mut self, yes: bool) -> Self {
        self.0.set_secure(yes);
        self
    }

    /// Its `SameSite` (default `Lax`).
    pub fn same_site(mut self, same_site: SameSite) -> Self {
        self.0.set_same_site(match same_site {
            SameSite::Strict => cookie::SameSite::Strict,
            SameSite::Lax => cookie::SameSite::Lax,
            SameSite::None => cookie::SameSite::None,
        });
        self
    }

    /// The `Set-Cookie` header value.
    pub fn to_header(&self) -> String {
        self.0.to_string()
    }
}

impl Response {
    /// A redirect to `location` with `status` (301, 302, 303, 307 or 308;
    /// anything else is 302): the way back from an OAuth provider, or to a
    /// page after a form.
    pub fn redirect(status: u16, location: &str) -> Self {
        let status = if matches!(status, 301 | 302 | 303 | 307 | 308) {
            status
        } else {
            302
        };
        Response::new(status).with_header("location", location)
    }

    /// Sets `cookie` on the answer (any number of them).
    pub fn with_cookie(self, cookie: &Cookie) -> Self {
        self.with_header("set-cookie", &cookie.to_header())
    }

    /// A file download: `body` with `content_type`, saved by the browser
    /// as `file_name` (`Content-Disposition: attachment`, the name
    /// written for old and new browsers alike).
    pub fn attachment(file_name: &str, content_type: &str, body: Vec<u8>) -> Self {
        let plain: String = file_name
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let encoded: String = file_name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let mut response = Response::new(200)
            .with_header(
                "content-disposition",
                &format!("attachment; filename=\"{plain}\"; filename*=UTF-8''{encoded}"),
            )
            .with_header("x-content-type-options", "nosniff");
        response.set_body(content_type, body);
        response
    }
}

/// One part of a `multipart/form-data` body: a form field, or a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// The field's name.
    pub name: String,
    /// The file's name, for a file.
    pub file_name: Option<String>,
    /// The part's content type, when it says one.
    pub content_type: Option<String>,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl Part {
    /// The bytes as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

impl Request<'_> {
    /// The value of cookie `name` the browser sent, if any.
    pub fn cookie(&self, name: &str) -> Option<String> {
        let header = self.header("cookie")?;
        cookie::Cookie::split_parse(header)
            .filter_map(Result::ok)
            .find(|c| c.name() == name)
            .map(|c| c.value().to_owned())
    }

    /// The parts of a `multipart/form-data` body, in order (an upload
    /// form's fields and files): 415 when the request is not multipart,
    /// 400 naming what is wrong with a malformed body. The host has read
    /// the whole body already (within the plugin route's body limit).
    pub async fn multipart(&self) -> Result<Vec<Part>, Error> {
        let declared = self.header("content-type").unwrap_or("");
        let boundary = multer::parse_boundary(declared).map_err(|_| {
            Error::new(
                415,
                format!(
                    "request body must be multipart/form-data with a boundary, not '{declared}'"
                ),
            )
        })?;
        let body = bytes::Bytes::copy_from_slice(self.body());
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let mut form = multer::Multipart::new(stream, boundary);
        let mut parts = Vec::new();
        let bad = |e: multer::Error| Error::bad_request(format!("multipart body: {e}"));
        while let Some(field) = form.next_field().await.map_err(bad)? {
            let name = field.name().unwrap_or_default().to_owned();
            let file_name = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(ToString::to_string);
            let data = field.bytes().await.map_err(bad)?.to_vec();
            parts.push(Part {
                name,
                file_name,
                content_type,
                data,
            });
        }
        Ok(parts)
    }
}
