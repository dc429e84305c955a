//! Native copies of plugin handlers, compiled into the host: the `hello`
//! plugin's greet, the `dict` plugin's type list, and the `ticker`
//! fixture's fetch (outbound HTTP on reqwest, without the host service). Mounted only with
//! `--bench-baseline`, so that `scripts/bench` can measure plugin dispatch
//! against the same work done natively.

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

#[derive(serde::Deserialize)]
struct PageQuery {
    page: Option<u64>,
    size: Option<u64>,
}

/// `GET /admin/v1/native/dict-types?page=&size=`: the `dict` plugin's list,
/// same queries, same answer, behind the same admin guard.
pub(crate) async fn dict_types(
    _state: actix_web::web::Data<super::AppState>,
    req: HttpRequest,
) -> HttpResponse {
    let Ok(q) = serde_urlencoded::from_str::<PageQuery>(req.query_string()) else {
        return envelope::error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "page and size must be integers",
        );
    };
    let (page, size) = (
        q.page.unwrap_or(1).max(1),
        q.size.unwrap_or(20).clamp(1, 200),
    );
    let limit = size;
    let offset = (page - 1) * size;
    let found = crate::plugin::services::run_page(
        0,
        "SELECT id, name, code, status, remark FROM sys_dict_type",
        "id",
        "[]",
        limit,
        offset,
    )
    .await;
    let found = found.and_then(|text| {
        serde_json::from_str::<plugin_api::Page<Box<serde_json::value::RawValue>>>(&text)
            .map_err(|e| e.to_string().into())
    });
    match found {
        Ok(found) => envelope::ok(serde_json::json!({
            "items": found.rows, "total": found.total, "page": page, "size": size,
        })),
        Err(e) => envelope::error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

#[derive(serde::Deserialize)]
struct FetchQuery {
    url: String,
}

/// `GET /native/fetch?url=U`: what the `ticker` fixture's `/fetch` does
/// through the host's HTTP service, on a reqwest client of its own: U
/// fetched, its body read chunk by chunk, status and sizes answered.
pub(crate) async fn fetch(req: HttpRequest) -> HttpResponse {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(reqwest::Client::new);
    let Ok(q) = serde_urlencoded::from_str::<FetchQuery>(req.query_string()) else {
        return envelope::error(StatusCode::BAD_REQUEST, "url is required");
    };
    let sent = client
        .get(&q.url)
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => return envelope::error(StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let (mut chunks, mut bytes) = (0usize, 0usize);
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                chunks += 1;
                bytes += chunk.len();
            }
            Ok(None) => break,
            Err(e) => return envelope::error(StatusCode::BAD_GATEWAY, &e.to_string()),
        }
    }
    envelope::ok(serde_json::json!({
        "status": response.status().as_u16(),
        "content_type": response.headers().get("content-type").and_then(|v| v.to_str().ok()),
        "chunks": chunks,
        "bytes": bytes,
    }))
}
