//! A native copy of the `hello` plugin's greet handler, compiled into the
//! host. Mounted only with `--bench-baseline`, so that `scripts/bench` can
//! measure plugin dispatch against the same work done natively.

use actix_web::{HttpRequest, HttpResponse, http::StatusCode};
use serde::Serialize;

use super::envelope;

#[derive(Serialize)]
struct Greeting {
    message: String,
}

#[derive(serde::Deserialize)]
struct GreetQuery {
    name: Option<String>,
}

/// `GET /native/hello/v1/greet?name=Ada`
pub(crate) async fn greet(req: HttpRequest) -> HttpResponse {
    match serde_urlencoded::from_str::<GreetQuery>(req.query_string()) {
        Ok(q) => envelope::ok(Greeting {
            message: format!("Hello, {}!", q.name.as_deref().unwrap_or("world")),
        }),
        Err(e) => envelope::error(
            StatusCode::BAD_REQUEST,
            &format!("invalid query string: {e}"),
        ),
    }
}
