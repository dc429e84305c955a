//! `oauth2`: log in with an OpenID Connect provider, GitHub or Google, a
//! port of FBA's oauth2 plugin.
//!
//! `GET /oauth2/v1/{provider}` answers the provider's login URL as `data`;
//! the provider sends the browser back to `GET
//! /oauth2/v1/{provider}/callback`, which trades the code for the
//! account's identity through the host's HTTP client, finds or creates
//! the user bound to it through the host's identity service, issues it a
//! token and redirects to `OAUTH2_FRONTEND_LOGIN_REDIRECT_URI?access_token=…`.
//! A logged-in user binds another provider's account with `POST
//! /oauth2/v1/bindings/{provider}` (its login URL), lists its bindings with
//! `GET /oauth2/v1/bindings` and removes one with `DELETE
//! /oauth2/v1/bindings/{provider}`.
//!
//! The state of each login is kept in the plugin's key-value store (so
//! Redis or the database: any instance takes the callback) for
//! `OAUTH2_STATE_EXPIRE_SECONDS` and used once. Where FBA's port differs:
//! - an account is never joined to an existing user by its mail address
//!   (anyone able to claim an address at a provider would take over the
//!   user); a new identity is a new user, or a logged-in user binds it;
//! - a code is bound to its login by PKCE (S256) as well as the state;
//! - an unbound identity is unbound in the host too, so its next login
//!   does not reach the user it left;
//! - an OpenID Connect subject is bound with its issuer: changing
//!   `OAUTH2_OIDC_ISSUER` never logs one provider's account in as
//!   another's user;
//! - a disabled user gets a 403, not a token.

mod provider;

use std::time::Duration;

use plugin_api::{Error, ExternalIdentity, Json, Request, Response, Router, User, host};
use provider::{Provider, setting};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a login's state holds until its callback.
#[derive(Serialize, Deserialize)]
struct Pending {
    provider: String,
    /// The PKCE verifier of the code.
    verifier: String,
    /// The user binding the account, or none for a login.
    bind_to: Option<i64>,
}

fn state_key(state: &str) -> String {
    format!("state:{state}")
}

/// How long a login may take between its URL and its callback.
fn state_lifetime() -> Result<Duration, Error> {
    let text = setting("OAUTH2_STATE_EXPIRE_SECONDS");
    match text.parse::<u64>() {
        Ok(seconds @ 10..=3600) => Ok(Duration::from_secs(seconds)),
        _ => Err(Error::internal(format!(
            "OAUTH2_STATE_EXPIRE_SECONDS is '{text}': set 10 to 3600 seconds"
        ))),
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The provider's login URL, with a new state kept for its callback.
async fn login_url(provider: Provider, bind_to: Option<i64>) -> Result<Json<String>, Error> {
    let client = provider.client()?;
    let endpoints = provider.endpoints().await?;
    let state = uuid::Uuid::new_v4().simple().to_string();
    let pending = Pending {
        provider: provider.name().into(),
        verifier: provider::new_verifier(),
        bind_to,
    };
    let url = provider.authorize_url(&endpoints, &client, &state, &pending.verifier)?;
    let kept = serde_json::to_string(&pending).map_err(|e| Error::internal(e.to_string()))?;
    host()
        .kv_set(&state_key(&state), &kept, Some(state_lifetime()?))
        .await?;
    Ok(Json(url))
}

/// `GET /{provider}`: where to send the browser to log in.
async fn authorize(req: Request<'_>) -> Result<Json<String>, Error> {
    let provider = Provider::parse(req.param("provider").unwrap_or_default())?;
    login_url(provider, None).await
}

/// What a provider sends back.
#[derive(Deserialize)]
struct Callback {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
    /// RFC 9207: who sent it, where the provider says.
    iss: Option<String>,
}

/// The login a state stands for, used up: a state works once, on any
/// instance, until it expires.
async fn take_state(provider: Provider, state: Option<&str>) -> Result<Pending, Error> {
    let start_again = |why: &str| {
        Error::bad_request(format!(
            "{why}: start again at GET /oauth2/v1/{}",
            provider.name()
        ))
    };
    let state = state
        .filter(|s| !s.is_empty())
        .ok_or_else(|| start_again("the provider sent no state"))?;
    let key = state_key(state);
    let Some(kept) = host().kv_get(&key).await? else {
        return Err(start_again("unknown or expired state"));
    };
    // Only the callback whose delete removed it goes on.
    if !host().kv_del(&key).await? {
        return Err(start_again("that state was used already"));
    }
    let pending: Pending =
        serde_json::from_str(&kept).map_err(|_| start_again("unknown or expired state"))?;
    if pending.provider != provider.name() {
        return Err(start_again(&format!(
            "that state was made for {}",
            pending.provider
        )));
    }
    Ok(pending)
}

/// `GET /{provider}/callback`: the provider sends the browser back here.
async fn callback(req: Request<'_>) -> Result<Response, Error> {
    let provider = Provider::parse(req.param("provider").unwrap_or_default())?;
    let sent: Callback = req.query()?;
    let pending = take_state(provider, sent.state.as_deref()).await?;
    if let Some(error) = sent.error {
        return Err(Error::bad_request(format!(
            "the {} provider did not log you in: {error} {}",
            provider.name(),
            sent.error_description.unwrap_or_default()
        )));
    }
    let code = sent
        .code
        .filter(|c| !c.is_empty())
        .ok_or_else(|| Error::bad_request("the provider sent no code"))?;
    let client = provider.client()?;
    let endpoints = provider.endpoints().await?;
    if let Some(iss) = sent.iss
        && iss != endpoints.issuer
    {
        return Err(Error::bad_request(format!(
            "the answer names issuer {iss}, not {}",
            endpoints.issuer
        )));
    }
    let mut identity = provider
        .identity(&endpoints, &client, &code, &pending.verifier)
        .await?;
    identity.provider = provider.identity_provider(&endpoints);
    match pending.bind_to {
        Some(user_id) => {
            bind(provider, user_id, &identity).await?;
            let to = setting("OAUTH2_FRONTEND_BINDING_REDIRECT_URI");
            Ok(Response::redirect(302, &to))
        }
        None => {
            let user = log_in(provider, &identity).await?;
            let token = host().issue_token(user.id).await?;
            let to = setting("OAUTH2_FRONTEND_LOGIN_REDIRECT_URI");
            let mut query = form_urlencoded::Serializer::new(String::new());
            query.append_pair("access_token", &token.access_token);
            query.append_pair("expires_at", &token.expires_at.to_string());
            let joiner = if to.contains('?') { '&' } else { '?' };
            Ok(Response::redirect(
                302,
                &format!("{to}{joiner}{}", query.finish()),
            ))
        }
    }
}

/// The user of `identity`: bound to it already, or made for it now.
async fn log_in(provider: Provider, identity: &ExternalIdentity) -> Result<User, Error> {
    let user = host().external_user(identity).await?;
    if user.status != 1 {
        return Err(Error::new(
            403,
            format!(
                "user {} is disabled: an administrator can enable it",
                user.username
            ),
        ));
    }
    record(provider, user.id, identity).await?;
    host().info(&format!(
        "{} login of {} as user {}",
        provider.name(),
        identity.subject,
        user.username
    ));
    Ok(user)
}

/// Binds `identity` to the logged-in user `user_id`.
async fn bind(provider: Provider, user_id: i64, identity: &ExternalIdentity) -> Result<(), Error> {
    if let Some(uid) = bound_uid(user_id, provider).await?
        && uid != identity.subject
    {
        return Err(Error::new(
            409,
            format!(
                "you have another {} account bound: remove it first (DELETE /oauth2/v1/bindings/{})",
                provider.name(),
                provider.name()
            ),
        ));
    }
    host()
        .bind_external(user_id, &identity.provider, &identity.subject)
        .await?;
    record(provider, user_id, identity).await
}

/// Keeps the binding of `identity` to user `user_id` in `sys_user_social`
/// (one account per provider and user: the newest).
async fn record(
    provider: Provider,
    user_id: i64,
    identity: &ExternalIdentity,
) -> Result<(), Error> {
    if bound_uid(user_id, provider).await?.as_deref() == Some(identity.subject.as_str()) {
        return Ok(());
    }
    host()
        .execute(
            "DELETE FROM sys_user_social WHERE user_id = ? AND source = ?",
            &[json!(user_id), json!(provider.name())],
        )
        .await?;
    let inserted = host()
        .insert(
            "sys_user_social",
            &[
                ("source", json!(provider.name())),
                ("uid", json!(identity.subject)),
                ("provider", json!(identity.provider)),
                ("user_id", json!(user_id)),
                ("created_at", json!(now())),
            ],
        )
        .await;
    match inserted {
        Ok(_) => Ok(()),
        // Recorded by another instance's login meanwhile.
        Err(_) if bound_uid(user_id, provider).await?.is_some() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The account of `provider` bound to user `user_id`, if any.
async fn bound_uid(user_id: i64, provider: Provider) -> Result<Option<String>, Error> {
    #[derive(Deserialize)]
    struct Row {
        uid: String,
    }
    let rows: Vec<Row> = host()
        .query(
            "SELECT uid FROM sys_user_social WHERE user_id = ? AND source = ?",
            &[json!(user_id), json!(provider.name())],
        )
        .await?;
    Ok(rows.into_iter().next().map(|r| r.uid))
}

fn caller(req: &Request<'_>) -> Result<i64, Error> {
    req.principal()
        .map(|p| p.user_id)
        .ok_or_else(|| Error::new(401, "authentication required"))
}

/// `GET /bindings`: the caller's bound accounts.
async fn bindings(req: Request<'_>) -> Result<Json<Value>, Error> {
    let user = caller(&req)?;
    let rows = host()
        .query_json(
            "SELECT source, uid, created_at FROM sys_user_social WHERE user_id = ? ORDER BY source",
            &[json!(user)],
        )
        .await?;
    Ok(Json(Value::from(rows)))
}

/// `POST /bindings/{provider}`: the login URL that binds the provider's
/// account to the caller.
async fn start_binding(req: Request<'_>) -> Result<Json<String>, Error> {
    let user = caller(&req)?;
    let provider = Provider::parse(req.param("provider").unwrap_or_default())?;
    login_url(provider, Some(user)).await
}

/// `DELETE /bindings/{provider}`: unbinds the caller's account there; its
/// next login makes a new user.
async fn unbind(req: Request<'_>) -> Result<Json<Value>, Error> {
    let user = caller(&req)?;
    let provider = Provider::parse(req.param("provider").unwrap_or_default())?;
    #[derive(Deserialize)]
    struct Row {
        uid: String,
        provider: String,
    }
    let rows: Vec<Row> = host()
        .query(
            "SELECT uid, provider FROM sys_user_social WHERE user_id = ? AND source = ?",
            &[json!(user), json!(provider.name())],
        )
        .await?;
    let Some(row) = rows.into_iter().next() else {
        return Err(Error::not_found(format!(
            "you have no {} account bound",
            provider.name()
        )));
    };
    // The host's binding first: with it gone, the account logs in as no one.
    host().unbind_external(&row.provider, &row.uid).await?;
    host()
        .execute(
            "DELETE FROM sys_user_social WHERE user_id = ? AND source = ?",
            &[json!(user), json!(provider.name())],
        )
        .await?;
    Ok(Json(Value::Null))
}

/// Refuses to start on a setting that cannot work, and forgets the
/// bindings of each user deleted from now on.
async fn start() -> Result<(), String> {
    state_lifetime().map_err(|e| e.message().to_owned())?;
    let issuer = setting("OAUTH2_OIDC_ISSUER");
    if !issuer.is_empty() {
        provider::check_url("OAUTH2_OIDC_ISSUER", &issuer)?;
    }
    for provider in Provider::ALL {
        let redirect = setting(&format!(
            "OAUTH2_{}_REDIRECT_URI",
            provider.name().to_ascii_uppercase()
        ));
        if !redirect.is_empty() {
            url::Url::parse(&redirect).map_err(|e| {
                format!(
                    "OAUTH2_{}_REDIRECT_URI '{redirect}' is not a URL: {e}",
                    provider.name().to_ascii_uppercase()
                )
            })?;
        }
    }
    host()
        .forget_deleted_users("sys_user_social", "user_id")
        .map_err(|e| e.to_string())
}

fn routers() -> Vec<Router> {
    let provider = json!({
        "properties": { "provider": { "type": "string", "enum": ["oidc", "github", "google"] } }
    });
    vec![
        Router::new("v1")
            .prefix("/oauth2/v1")
            .get("/bindings", bindings)
            .auth()
            .summary("Your bound accounts at providers")
            .response_schema(json!({
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["source", "uid", "created_at"],
                    "properties": {
                        "source": { "type": "string", "enum": ["oidc", "github", "google"] },
                        "uid": { "type": "string", "description": "The account's id at the provider" },
                        "created_at": { "type": "integer", "description": "Unix seconds" },
                    },
                },
            }))
            .post("/bindings/{provider}", start_binding)
            .auth()
            .summary("The login URL that binds a provider's account to you")
            .description("Send the browser there; the provider sends it back to the callback, which binds the account and redirects to `OAUTH2_FRONTEND_BINDING_REDIRECT_URI`.")
            .path_schema(provider.clone())
            .response_schema(json!({ "type": "string", "format": "uri" }))
            .delete("/bindings/{provider}", unbind)
            .auth()
            .summary("Unbind your account at a provider")
            .description("Its next login makes a new user.")
            .path_schema(provider.clone())
            .get("/{provider}", authorize)
            .summary("The provider's login URL")
            .description("Send the browser there; the provider sends it back to `/oauth2/v1/{provider}/callback` within `OAUTH2_STATE_EXPIRE_SECONDS`. A provider the operator has not configured is a 404 naming the settings to set.")
            .path_schema(provider.clone())
            .response_schema(json!({ "type": "string", "format": "uri" }))
            .get("/{provider}/callback", callback)
            .summary("Where the provider sends the browser back")
            .description("Logs the account's user in (made at its first login, with the roles of `PLUGHOST_IDENTITY_ROLES_OAUTH2`) and answers 302 to `OAUTH2_FRONTEND_LOGIN_REDIRECT_URI?access_token=…&expires_at=…`. An unknown, used or expired state is a 400.")
            .path_schema(provider)
            .query_schema(json!({
                "properties": {
                    "state": { "type": "string" },
                    "code": { "type": "string" },
                    "error": { "type": "string" },
                    "error_description": { "type": "string" },
                    "iss": { "type": "string" },
                },
            })),
    ]
}

plugin_api::export_plugin! {
    name: "oauth2",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    routers: routers,
    start: start,
}

#[cfg(test)]
mod tests {
    use plugin_api::testing::{TestHost, TestUser};

    const TOKEN_URL: &str = "https://github.com/login/oauth/access_token";
    const USER_URL: &str = "https://api.github.com/user";

    fn github(user: &str) -> TestHost {
        TestHost::options()
            .setting("OAUTH2_GITHUB_CLIENT_ID", "client-1")
            .setting("OAUTH2_GITHUB_CLIENT_SECRET", "secret-1")
            .setting(
                "OAUTH2_GITHUB_REDIRECT_URI",
                "https://admin.example.com/oauth2/v1/github/callback",
            )
            .setting(
                "OAUTH2_FRONTEND_LOGIN_REDIRECT_URI",
                "https://app.example.com/done",
            )
            .http(
                "POST",
                TOKEN_URL,
                200,
                r#"{"access_token":"gho_1","token_type":"bearer"}"#,
            )
            .http("GET", USER_URL, 200, user.to_owned())
            .start(plugin_api::this_plugin!())
            .unwrap()
    }

    /// The state in a login URL.
    fn state_of(url: &str) -> String {
        url::Url::parse(url)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "state")
            .unwrap()
            .1
            .into_owned()
    }

    /// The state of a new GitHub login.
    fn new_state(host: &TestHost) -> String {
        state_of(
            host.get("/oauth2/v1/github")
                .send()
                .data()
                .as_str()
                .unwrap(),
        )
    }

    fn location(response: &plugin_api::testing::TestResponse) -> String {
        response
            .headers
            .iter()
            .find(|(k, _)| k == "location")
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    #[test]
    fn a_github_login_makes_the_user_once_and_redirects_with_a_token() {
        let host = github(r#"{"id":583231,"login":"octocat","name":"The Octocat"}"#);
        let url = host.get("/oauth2/v1/github").send().data();
        let url = url.as_str().unwrap();
        assert!(
            url.starts_with("https://github.com/login/oauth/authorize?"),
            "{url}"
        );
        assert!(
            url.contains("client_id=client-1") && url.contains("code_challenge_method=S256"),
            "{url}"
        );
        let state = state_of(url);
        let back = host
            .get(&format!("/oauth2/v1/github/callback?code=c1&state={state}"))
            .send();
        assert_eq!(back.status, 302, "{}", back.text());
        let to = location(&back);
        assert!(
            to.starts_with("https://app.example.com/done?access_token=test-token-"),
            "{to}"
        );
        let exchange = &host.http_sent()[0];
        assert!(
            exchange["body"]
                .as_str()
                .unwrap_or_default()
                .contains("code_verifier="),
            "{exchange}"
        );
        // The state worked once.
        let again = host
            .get(&format!("/oauth2/v1/github/callback?code=c1&state={state}"))
            .send();
        assert_eq!(again.status, 400);
        assert!(
            again.msg().contains("unknown or expired state"),
            "{}",
            again.msg()
        );
        // The same account logs in as the same user.
        let state = new_state(&host);
        let back = host
            .get(&format!("/oauth2/v1/github/callback?code=c2&state={state}"))
            .send();
        assert_eq!(location(&back), to);
        let user = TestUser::new(1, "octocat");
        let bound = host.get("/oauth2/v1/bindings").user(&user).send().data();
        assert_eq!(bound[0]["source"], "github");
        assert_eq!(bound[0]["uid"], "583231");
    }

    #[test]
    fn unconfigured_and_unknown_providers_are_named() {
        let host = github("{}");
        let google = host.get("/oauth2/v1/google").send();
        assert_eq!(google.status, 404);
        assert!(
            google.msg().contains("OAUTH2_GOOGLE_CLIENT_ID"),
            "{}",
            google.msg()
        );
        let other = host.get("/oauth2/v1/gitlab").send();
        assert_eq!(other.status, 404);
        assert!(
            other.msg().contains("oidc, github or google"),
            "{}",
            other.msg()
        );
        let state = new_state(&host);
        let wrong = host
            .get(&format!("/oauth2/v1/google/callback?code=c&state={state}"))
            .send();
        assert_eq!(wrong.status, 400);
        assert!(wrong.msg().contains("made for github"), "{}", wrong.msg());
    }
}
