//! The request a handler receives.

use std::borrow::Cow;

use abi_stable::std_types::{ROption, RStr};
use serde::de::DeserializeOwned;

use crate::{Error, abi::RawRequest};

/// One incoming request, borrowed from the host while the handler runs.
///
/// Everything is read lazily: a header, the query or the body costs
/// nothing until the handler asks for it.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    raw: &'a RawRequest<'a>,
}

/// A page of a list, from [`Request::paging`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    /// The page number, from 1.
    pub page: u64,
    /// Rows per page.
    pub size: u64,
    /// The first row of the page (`(page - 1) * size`, known to fit).
    pub offset: i64,
}

impl Paging {
    /// The highest page [`Request::paging`] accepts (a higher one is a
    /// 422), for documenting the `page` parameter.
    pub const MAX_PAGE: u64 = 1_000_000_000;
}

/// Whether a `Content-Type` value names JSON (`application/json`,
/// `application/*+json`, with or without parameters).
fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The authenticated caller of a route behind authentication.
#[derive(Clone, Copy, Debug)]
pub struct Principal<'a> {
    /// The user's id.
    pub user_id: i64,
    /// The user's login name.
    pub username: &'a str,
    /// Whether the user passes every permission check.
    pub superuser: bool,
    permissions: &'a [RStr<'a>],
}

impl Principal<'_> {
    /// Whether the caller holds `permission` (superusers hold every permission).
    pub fn has_permission(&self, permission: &str) -> bool {
        self.superuser || self.permissions.iter().any(|p| p.as_str() == permission)
    }

    /// The permission strings the caller holds.
    pub fn permissions(&self) -> impl Iterator<Item = &str> {
        self.permissions.iter().map(|p| p.as_str())
    }
}

impl<'a> Request<'a> {
    #[doc(hidden)]
    pub fn from_raw(raw: &'a RawRequest<'a>) -> Self {
        Self { raw }
    }

    /// The HTTP method, upper case.
    pub fn method(&self) -> &'a str {
        self.raw.method.as_str()
    }

    /// The request path, without the query string.
    pub fn path(&self) -> &'a str {
        self.raw.path.as_str()
    }

    /// The raw query string, without `?`.
    pub fn query_string(&self) -> &'a str {
        self.raw.query.as_str()
    }

    /// The query string deserialized into `T` (400 envelope when it does not fit).
    pub fn query<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_urlencoded::from_str(self.query_string())
            .map_err(|e| Error::bad_request(format!("invalid query string: {e}")))
    }

    /// One query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<Cow<'a, str>> {
        form_urlencoded::parse(self.query_string().as_bytes())
            .find_map(|(k, v)| (k == name).then_some(v))
    }

    /// A path parameter matched by the route pattern (`{id}` gives `param("id")`).
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.raw
            .params
            .iter()
            .find(|p| p.name.as_str() == name)
            .map(|p| p.value.as_str())
    }

    /// A path parameter parsed as `T` (`req.path_param::<i64>("id")`).
    ///
    /// A value that does not parse answers 422 naming the parameter and
    /// the value; a name the route pattern does not have is the handler's
    /// mistake and answers 500.
    pub fn path_param<T: std::str::FromStr>(&self, name: &str) -> Result<T, Error> {
        let value = self.param(name).ok_or_else(|| {
            Error::internal(format!(
                "the route {} has no path parameter '{name}'",
                self.path()
            ))
        })?;
        value.parse().map_err(|_| {
            let wanted = std::any::type_name::<T>();
            let wanted = wanted.rsplit("::").next().unwrap_or(wanted);
            Error::new(
                422,
                format!("path parameter '{name}': '{value}' is not a valid {wanted}"),
            )
        })
    }

    /// A request header by case-insensitive name (`None` when absent or not UTF-8).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        let source = &self.raw.headers;
        // SAFETY: the host guarantees `ctx` and the returned string live for 'a.
        #[allow(unsafe_code)]
        let found = unsafe { (source.get)(source.ctx, RStr::from(name)) };
        match found {
            ROption::RSome(value) => Some(value.as_str()),
            ROption::RNone => None,
        }
    }

    /// Every request header, copied out as (name, value) pairs.
    pub fn headers(&self) -> Vec<(String, String)> {
        let source = &self.raw.headers;
        // SAFETY: the host guarantees `ctx` lives for 'a.
        #[allow(unsafe_code)]
        let all = unsafe { (source.list)(source.ctx) };
        all.into_iter()
            .map(|pair| (pair.0.into_string(), pair.1.into_string()))
            .collect()
    }

    /// The request body.
    pub fn body(&self) -> &'a [u8] {
        self.raw.body.as_slice()
    }

    /// The body parsed as JSON into `T`: 415 when the request declares
    /// another content type, 400 when it is not JSON, 422 naming the field
    /// when it does not fit `T`. A request without `Content-Type` is read
    /// as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        if let Some(declared) = self.header("content-type")
            && !is_json_media_type(declared)
        {
            return Err(Error::new(
                415,
                format!(
                    "request body must be JSON (Content-Type: application/json), not {declared}"
                ),
            ));
        }
        serde_json::from_slice(self.body()).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                Error::new(422, format!("request body does not fit: {e}"))
            }
            _ => Error::bad_request(format!("request body is not valid JSON: {e}")),
        })
    }

    /// The page asked for by the `page` (from 1, default 1) and `size`
    /// (from 1 to `max_size`, default `default_size`) query parameters
    /// (`page` from 1 to [`Paging::MAX_PAGE`]),
    /// with the row offset it starts at; 422 naming the parameter when one
    /// is not a whole number in range, or the page lies beyond any row a
    /// database can address.
    ///
    /// ```
    /// # fn list(req: plugin_api::Request<'_>) -> Result<(), plugin_api::Error> {
    /// let page = req.paging(20, 200)?;
    /// let sql = "SELECT id, name FROM t ORDER BY id LIMIT ? OFFSET ?";
    /// let params = [serde_json::json!(page.size), serde_json::json!(page.offset)];
    /// # Ok(()) }
    /// ```
    pub fn paging(&self, default_size: u64, max_size: u64) -> Result<Paging, Error> {
        let number = |name: &str, default: u64, max: u64| -> Result<u64, Error> {
            match self.query_param(name) {
                None => Ok(default),
                Some(text) => text
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=max).contains(n))
                    .ok_or_else(|| {
                        Error::new(
                            422,
                            format!("{name}: must be a whole number from 1 to {max}, not '{text}'"),
                        )
                    }),
            }
        };
        let size = number("size", default_size.clamp(1, max_size), max_size)?;
        let page = number("page", 1, Paging::MAX_PAGE)?;
        let offset = (page - 1)
            .checked_mul(size)
            .and_then(|o| i64::try_from(o).ok())
            .ok_or_else(|| {
                Error::new(
                    422,
                    format!(
                        "page: {page} lies beyond the last page any table can have at size {size}"
                    ),
                )
            })?;
        Ok(Paging { page, size, offset })
    }

    /// The authenticated caller, when the route sits behind authentication.
    pub fn principal(&self) -> Option<Principal<'a>> {
        match &self.raw.principal {
            ROption::RSome(p) => Some(Principal {
                user_id: p.user_id,
                username: p.username.as_str(),
                superuser: p.superuser,
                permissions: p.permissions.as_slice(),
            }),
            ROption::RNone => None,
        }
    }

    /// This request's trace id (sent back as `x-request-id` on errors).
    pub fn trace_id(&self) -> &'a str {
        self.raw.trace_id.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::is_json_media_type;

    #[test]
    fn json_media_types_are_recognised_with_parameters_and_suffixes() {
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/problem+json", true),
            ("text/plain", false),
            ("application/x-www-form-urlencoded", false),
            ("text/json+xml", false),
            ("", false),
        ] {
            assert_eq!(is_json_media_type(value), json, "{value}");
        }
    }
}
