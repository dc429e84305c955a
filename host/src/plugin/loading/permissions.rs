//! What a plugin may reach: the hosts its manifest declares under
//! `[permissions] http` (or the operator's `PLUGHOST_HTTP_ALLOW_<PLUGIN>`),
//! as patterns `host`, `host:port`, `*.domain` or `*.domain:port`
//! (`[::1]:8080` for IPv6). A pattern without a port allows every port.

use std::fmt;

/// One allowed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// The host, lower case; for `*.domain`, the `.domain` suffix.
    host: String,
    /// Whether it is a `*.` pattern (any host under the domain).
    wildcard: bool,
    /// The port, or any.
    port: Option<u16>,
}

impl HostPattern {
    /// Reads a pattern, or says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let bad = |why: &str| {
            Err(format!(
                "'{text}' is not a host pattern ({why}; use host, host:port, *.domain or *.domain:port)"
            ))
        };
        if text.contains('/') {
            return bad("a host, not a URL or a path");
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            // [v6]:port or [v6]
            let Some((v6, after)) = rest.split_once(']') else {
                return bad("an IPv6 address needs its closing ']'");
            };
            if v6.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("not an IPv6 address");
            }
            match after.strip_prefix(':') {
                Some(port) => (format!("[{v6}]"), Some(port)),
                None if after.is_empty() => (format!("[{v6}]"), None),
                None => return bad("unexpected text after ']'"),
            }
        } else {
            match text.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), Some(port)),
                None => (text.clone(), None),
            }
        };
        let port = match port {
            Some(p) => match p.parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => return bad("the port is not 1-65535"),
            },
            None => None,
        };
        let (wildcard, name) = match host.strip_prefix("*.") {
            Some(domain) => (true, domain.to_owned()),
            None => (false, host),
        };
        let valid_name = name.starts_with('[')
            || (!name.is_empty()
                && name.len() <= 253
                && name.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                }));
        if !valid_name {
            return bad("not a host name");
        }
        Ok(Self {
            host: if wildcard { format!(".{name}") } else { name },
            wildcard,
            port,
        })
    }

    /// Whether `host` (as a URL names it, lower case) at `port` is allowed.
    pub fn allows(&self, host: &str, port: u16) -> bool {
        let host = host.to_ascii_lowercase();
        let host_ok = if self.wildcard {
            host.ends_with(&self.host) && host.len() > self.host.len()
        } else {
            host == self.host
        };
        host_ok && self.port.is_none_or(|p| p == port)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard {
            write!(f, "*{}", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// Reads a list of patterns (a manifest's, or an operator's
/// comma-separated one), naming the first bad one.
pub fn parse_all<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<Vec<HostPattern>, String> {
    texts
        .into_iter()
        .filter(|t| !t.trim().is_empty())
        .map(HostPattern::parse)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, host: &str, port: u16, allowed: bool) {
        let p = HostPattern::parse(pattern).unwrap();
        assert_eq!(p.allows(host, port), allowed, "{pattern} vs {host}:{port}");
    }

    #[test]
    fn patterns_allow_their_hosts_and_ports_only() {
        check("api.github.com", "api.github.com", 443, true);
        check("api.github.com", "API.GitHub.com", 80, true);
        check("api.github.com", "github.com", 443, false);
        check("api.github.com:443", "api.github.com", 8443, false);
        check("*.example.com", "a.example.com", 443, true);
        check("*.example.com", "a.b.example.com", 443, true);
        check("*.example.com", "example.com", 443, false);
        check("*.example.com", "badexample.com", 443, false);
        check("127.0.0.1", "127.0.0.1", 8080, true);
        check("127.0.0.1:8080", "127.0.0.1", 8081, false);
        check("[::1]:8080", "[::1]", 8080, true);
        check("[::1]", "[::1]", 1, true);
    }

    #[test]
    fn bad_patterns_are_refused_saying_why() {
        for (text, why) in [
            ("http://x.com", "a host, not a URL"),
            ("x.com:0", "the port is not 1-65535"),
            ("x.com:99999", "the port is not 1-65535"),
            ("", "not a host name"),
            ("a b.com", "not a host name"),
            ("[::1", "closing ']'"),
            ("[nope]", "not an IPv6 address"),
            ("*.", "not a host name"),
        ] {
            let e = HostPattern::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
        assert_eq!(
            parse_all(["a.com", " ", "*.b.org:8443"])
                .unwrap()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["a.com", "*.b.org:8443"]
        );
    }
}
