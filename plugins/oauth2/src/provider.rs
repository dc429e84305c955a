//! The providers: any OpenID Connect provider, from its issuer's discovery
//! document, and GitHub and Google, from their documented endpoints. Each
//! one knows its client (from the settings), where to send the browser,
//! how to trade a code for an access token and how to read who logged in.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{
    Engine as _, engine::general_purpose::STANDARD, engine::general_purpose::URL_SAFE_NO_PAD,
};
use plugin_api::{Error, ExternalIdentity, host};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use url::Url;

/// How long one exchange with a provider may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a discovery document is used before it is read again.
const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// The largest answer read from a provider.
const MAX_ANSWER: usize = 256 * 1024;

/// A provider this plugin speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Provider {
    Oidc,
    Github,
    Google,
}

/// This host's client at a provider.
pub(crate) struct Client {
    pub(crate) id: String,
    secret: String,
    pub(crate) redirect_uri: String,
}

/// Where a provider's steps happen.
#[derive(Clone)]
pub(crate) struct Endpoints {
    /// Whom the identities belong to (OpenID Connect's `iss`).
    pub(crate) issuer: String,
    authorize: String,
    token: String,
    userinfo: String,
    /// Whether the client authenticates with HTTP Basic (else in the form).
    basic_auth: bool,
}

impl Provider {
    /// Every provider, as `{provider}` names them.
    pub(crate) const ALL: [Provider; 3] = [Provider::Oidc, Provider::Github, Provider::Google];

    /// The provider `{provider}` names.
    pub(crate) fn parse(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| {
                Error::not_found(format!(
                    "'{name}' is not a provider here: use oidc, github or google"
                ))
            })
    }

    /// Its name in paths and in the bindings (`source`).
    pub(crate) fn name(self) -> &'static str {
        match self {
            Provider::Oidc => "oidc",
            Provider::Github => "github",
            Provider::Google => "google",
        }
    }

    /// Its settings' prefix.
    fn prefix(self) -> &'static str {
        match self {
            Provider::Oidc => "OAUTH2_OIDC",
            Provider::Github => "OAUTH2_GITHUB",
            Provider::Google => "OAUTH2_GOOGLE",
        }
    }

    /// What it is asked to share.
    fn scope(self) -> &'static str {
        match self {
            Provider::Oidc | Provider::Google => "openid profile email",
            Provider::Github => "read:user user:email",
        }
    }

    /// This host's client there, from the settings; a 404 naming what to
    /// set when the operator has not configured it.
    pub(crate) fn client(self) -> Result<Client, Error> {
        let prefix = self.prefix();
        let read = |key: &str| setting(&format!("{prefix}_{key}"));
        let mut needed = vec!["CLIENT_ID", "CLIENT_SECRET", "REDIRECT_URI"];
        if self == Provider::Oidc {
            needed.insert(0, "ISSUER");
        }
        let missing: Vec<String> = needed
            .iter()
            .filter(|key| read(key).is_empty())
            .map(|key| format!("{prefix}_{key}"))
            .collect();
        if !missing.is_empty() {
            return Err(Error::not_found(format!(
                "{} login is not configured on this host: set {}",
                self.name(),
                missing.join(", ")
            )));
        }
        Ok(Client {
            id: read("CLIENT_ID"),
            secret: read("CLIENT_SECRET"),
            redirect_uri: read("REDIRECT_URI"),
        })
    }

    /// Where its steps happen: fixed for GitHub and Google, discovered
    /// (and kept for an hour) for OpenID Connect.
    pub(crate) async fn endpoints(self) -> Result<Endpoints, Error> {
        let fixed = |issuer: &str, authorize: &str, token: &str, userinfo: &str| Endpoints {
            issuer: issuer.into(),
            authorize: authorize.into(),
            token: token.into(),
            userinfo: userinfo.into(),
            basic_auth: false,
        };
        match self {
            Provider::Github => Ok(fixed(
                "https://github.com",
                "https://github.com/login/oauth/authorize",
                "https://github.com/login/oauth/access_token",
                "https://api.github.com/user",
            )),
            Provider::Google => Ok(fixed(
                "https://accounts.google.com",
                "https://accounts.google.com/o/oauth2/v2/auth",
                "https://oauth2.googleapis.com/token",
                "https://openidconnect.googleapis.com/v1/userinfo",
            )),
            Provider::Oidc => discover(&setting("OAUTH2_OIDC_ISSUER")).await,
        }
    }

    /// The name the host binds this provider's identities under: OpenID
    /// Connect subjects are unique per issuer only, so the issuer is part
    /// of it (a digest, so that it fits), and an identity of one issuer
    /// never logs in as the user of another's.
    pub(crate) fn identity_provider(self, endpoints: &Endpoints) -> String {
        match self {
            Provider::Oidc => format!(
                "oidc.{}",
                &hex::encode(Sha256::digest(endpoints.issuer.as_bytes()))[..16]
            ),
            other => other.name().into(),
        }
    }

    /// Where to send the browser: the provider's login page, asking for a
    /// code for `client`, tied to `state` and to the verifier whose
    /// challenge it carries (PKCE).
    pub(crate) fn authorize_url(
        self,
        endpoints: &Endpoints,
        client: &Client,
        state: &str,
        verifier: &str,
    ) -> Result<String, Error> {
        let mut url = Url::parse(&endpoints.authorize)
            .map_err(|e| Error::new(502, format!("the {} authorize endpoint: {e}", self.name())))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &client.id)
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("scope", self.scope())
            .append_pair("state", state)
            .append_pair("code_challenge", &challenge(verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(url.into())
    }

    /// Trades `code` for an access token, then reads who logged in.
    pub(crate) async fn identity(
        self,
        endpoints: &Endpoints,
        client: &Client,
        code: &str,
        verifier: &str,
    ) -> Result<ExternalIdentity, Error> {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("code_verifier", verifier);
        let mut request = host()
            .http("POST", &endpoints.token)
            .header("accept", "application/json")
            .header("content-type", "application/x-www-form-urlencoded")
            .timeout(EXCHANGE_TIMEOUT);
        if endpoints.basic_auth {
            // RFC 6749 2.3.1: each part form-encoded, then Basic.
            let part = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let credentials = format!("{}:{}", part(&client.id), part(&client.secret));
            request = request.header(
                "authorization",
                &format!("Basic {}", STANDARD.encode(credentials)),
            );
        } else {
            form.append_pair("client_id", &client.id)
                .append_pair("client_secret", &client.secret);
        }
        let answer = request.body(form.finish()).send().await?;
        let status = answer.status();
        let granted: Value = read_json(self, "token", answer.bytes().await?)?;
        let Some(access_token) = granted["access_token"].as_str().filter(|t| !t.is_empty()) else {
            // GitHub answers 200 with an error; others a 400 or 401.
            let error = granted["error"].as_str().unwrap_or("no access_token");
            let detail = granted["error_description"].as_str().unwrap_or_default();
            let refused = matches!(error, "invalid_grant" | "bad_verification_code");
            return Err(Error::new(
                if refused { 400 } else { 502 },
                format!(
                    "the {} provider did not give an access token for the code (HTTP {status}): {error} {detail}",
                    self.name()
                )
                .trim_end()
                .to_owned(),
            ));
        };
        let answer = host()
            .http("GET", &endpoints.userinfo)
            .header("accept", "application/json")
            .header("authorization", &format!("Bearer {access_token}"))
            // GitHub's API refuses requests without one.
            .header("user-agent", "plughost-oauth2")
            .timeout(EXCHANGE_TIMEOUT)
            .send()
            .await?;
        if answer.status() != 200 {
            return Err(Error::new(
                502,
                format!(
                    "the {} provider's user info answered HTTP {} to its own access token",
                    self.name(),
                    answer.status()
                ),
            ));
        }
        let info: Value = read_json(self, "user info", answer.bytes().await?)?;
        let identity = self.identity_of(&info)?;
        // OpenID Connect core 5.3.2: the user info must be the ID token's.
        if let Some(id_token) = granted["id_token"].as_str() {
            let sub = id_token_subject(id_token).ok_or_else(|| {
                Error::new(
                    502,
                    format!("the {} provider's ID token cannot be read", self.name()),
                )
            })?;
            if sub != identity.subject {
                return Err(Error::new(
                    502,
                    format!(
                        "the {} provider's user info is for subject {} but its ID token for {sub}",
                        self.name(),
                        identity.subject
                    ),
                ));
            }
        }
        Ok(identity)
    }

    /// The identity in a user info answer. A mail address counts only if
    /// the provider says it verified it.
    fn identity_of(self, info: &Value) -> Result<ExternalIdentity, Error> {
        let text = |key: &str| {
            info[key]
                .as_str()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
        };
        let verified =
            info["email_verified"] == Value::Bool(true) || info["email_verified"] == "true";
        let subject = match self {
            // GitHub's ids are numbers.
            Provider::Github => info["id"].as_i64().map(|id| id.to_string()),
            Provider::Oidc | Provider::Google => text("sub"),
        }
        .ok_or_else(|| {
            Error::new(
                502,
                format!(
                    "the {} provider's user info names no account id",
                    self.name()
                ),
            )
        })?;
        let (username, nickname, email) = match self {
            // GitHub shows only a verified address as the public one.
            Provider::Github => (text("login"), text("name"), text("email")),
            Provider::Google => (
                text("email")
                    .filter(|_| verified)
                    .and_then(|e| e.split('@').next().map(str::to_owned)),
                text("name"),
                text("email").filter(|_| verified),
            ),
            Provider::Oidc => (
                text("preferred_username"),
                text("name"),
                text("email").filter(|_| verified),
            ),
        };
        Ok(ExternalIdentity {
            provider: String::new(),
            subject,
            username,
            nickname,
            email,
        })
    }
}

/// A setting as text (empty when unset).
pub(crate) fn setting(key: &str) -> String {
    host().setting(key).unwrap_or_default().trim().to_owned()
}

/// Refused unless `url` is https, or plain http to a loopback address.
pub(crate) fn check_url(what: &str, url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("{what} '{url}' is not a URL: {e}"))?;
    let loopback = match parsed.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        None => false,
    };
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if loopback => Ok(parsed),
        "http" => Err(format!(
            "{what} '{url}' is plain http to a host that is not loopback: use https"
        )),
        other => Err(format!("{what} '{url}' is {other}: use https")),
    }
}

/// The discovered endpoints, with the issuer and when they were read.
static DISCOVERED: Mutex<Option<(Instant, Endpoints)>> = Mutex::new(None);

/// The endpoints of the OpenID Connect provider at `issuer`, from its
/// discovery document, which must name the same issuer.
async fn discover(issuer: &str) -> Result<Endpoints, Error> {
    let kept = DISCOVERED.lock().map(|d| d.clone()).unwrap_or_default();
    if let Some((read_at, endpoints)) = kept
        && endpoints.issuer == issuer
        && read_at.elapsed() < DISCOVERY_TTL
    {
        return Ok(endpoints);
    }
    let unusable = |why: String| Error::new(502, format!("OAUTH2_OIDC_ISSUER {issuer}: {why}"));
    check_url("OAUTH2_OIDC_ISSUER", issuer).map_err(|e| Error::new(500, e))?;
    let url = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let answer = host()
        .http("GET", &url)
        .header("accept", "application/json")
        .timeout(EXCHANGE_TIMEOUT)
        .send()
        .await?;
    if answer.status() != 200 {
        return Err(unusable(format!(
            "its discovery document {url} answered HTTP {}",
            answer.status()
        )));
    }
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        authorization_endpoint: String,
        token_endpoint: String,
        userinfo_endpoint: Option<String>,
        #[serde(default)]
        token_endpoint_auth_methods_supported: Vec<String>,
    }
    let document: Discovery = read_json(Provider::Oidc, "discovery", answer.bytes().await?)?;
    // OpenID Connect discovery 4.3: the document is the issuer's own.
    if document.issuer != issuer {
        return Err(unusable(format!(
            "its discovery document names another issuer, {}",
            document.issuer
        )));
    }
    let userinfo = document
        .userinfo_endpoint
        .ok_or_else(|| unusable("its discovery document has no userinfo_endpoint".into()))?;
    for (what, url) in [
        ("authorization_endpoint", &document.authorization_endpoint),
        ("token_endpoint", &document.token_endpoint),
        ("userinfo_endpoint", &userinfo),
    ] {
        check_url(what, url).map_err(unusable)?;
    }
    let methods = &document.token_endpoint_auth_methods_supported;
    let endpoints = Endpoints {
        issuer: document.issuer,
        authorize: document.authorization_endpoint,
        token: document.token_endpoint,
        userinfo,
        // The default when a provider lists none (discovery 3).
        basic_auth: methods.is_empty() || methods.iter().any(|m| m == "client_secret_basic"),
    };
    if let Ok(mut kept) = DISCOVERED.lock() {
        *kept = Some((Instant::now(), endpoints.clone()));
    }
    Ok(endpoints)
}

/// A provider's JSON answer, or a 502 saying it is none.
fn read_json<T: serde::de::DeserializeOwned>(
    provider: Provider,
    what: &str,
    body: Vec<u8>,
) -> Result<T, Error> {
    if body.len() > MAX_ANSWER {
        return Err(Error::new(
            502,
            format!(
                "the {} provider's {what} answer is over {MAX_ANSWER} bytes",
                provider.name()
            ),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| {
        Error::new(
            502,
            format!(
                "the {} provider's {what} answer is not the JSON expected: {e}",
                provider.name()
            ),
        )
    })
}

/// A new PKCE code verifier: 256 random bits, base64url.
pub(crate) fn new_verifier() -> String {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 challenge of `verifier` (RFC 7636 4.2).
fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The `sub` of an ID token. Its signature is not checked: it came
/// straight from the token endpoint over the connection the host opened
/// (OpenID Connect core 3.1.3.7), and only its subject is compared.
fn id_token_subject(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims["sub"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_to_loopback() {
        assert!(check_url("x", "https://id.example.com").is_ok());
        assert!(check_url("x", "http://127.0.0.1:9000").is_ok());
        assert!(check_url("x", "http://[::1]:9000/realms/a").is_ok());
        assert!(check_url("x", "http://localhost:9000").is_ok());
        let refused = check_url("OAUTH2_OIDC_ISSUER", "http://id.example.com").unwrap_err();
        assert!(
            refused.contains("OAUTH2_OIDC_ISSUER") && refused.contains("https"),
            "{refused}"
        );
        assert!(check_url("x", "ftp://id.example.com").is_err());
        assert!(check_url("x", "not a url").is_err());
    }

    #[test]
    fn the_challenge_is_rfc_7636s() {
        // RFC 7636 appendix B.
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let verifier = new_verifier();
        assert_eq!(verifier.len(), 43);
        assert_ne!(verifier, new_verifier());
    }

    #[test]
    fn an_unverified_address_is_not_taken() {
        let info = serde_json::json!({
            "sub": "248289761001", "preferred_username": "jane",
            "name": "Jane Doe", "email": "jane@example.com", "email_verified": false,
        });
        let identity = Provider::Oidc.identity_of(&info).unwrap();
        assert_eq!(identity.subject, "248289761001");
        assert_eq!(identity.username.as_deref(), Some("jane"));
        assert_eq!(identity.email, None);
        let github = serde_json::json!({ "id": 583231, "login": "octocat", "name": "The Octocat" });
        let identity = Provider::Github.identity_of(&github).unwrap();
        assert_eq!(
            (identity.subject.as_str(), identity.username.as_deref()),
            ("583231", Some("octocat"))
        );
        assert!(
            Provider::Google
                .identity_of(&serde_json::json!({ "name": "x" }))
                .is_err()
        );
    }
}
