//! `notice`: notices and announcements of the admin app, a port of FBA's
//! notice plugin: a paged list with filters, get, create, update and
//! delete at `/admin/v1/sys/notices` (`sys:notice:add|edit|del`), plus
//!
//! - `GET /admin/v1/sys/notices/stream`: Server-Sent Events of every
//!   notice created on any instance of the cluster (event `notice`);
//! - an optional `expire_time` (RFC 3339): a `once` job, `purge`, deletes
//!   expired notices every `NOTICE_PURGE_SECONDS`;
//! - `NOTICE_WEBHOOK_URL`: each new notice POSTed there as JSON through
//!   the host's HTTP client (its host allowed by the operator).

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use plugin_api::{
    Cluster, Error, Event, Json, Paging, Request, Response, Router, Schedule, host, whole,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const COLUMNS: &str = "id, title, type, status, content, expire_at, created_time, updated_time";
/// The topic new notices are published on.
const CREATED: &str = "notice.created";

fn invalid(field: &str, message: &str) -> Error {
    Error::new(422, format!("{field}: {message}"))
}

/// A row as answered: `expire_at` (milliseconds) as `expire_time` (RFC 3339).
fn shaped(mut row: Value) -> Value {
    let expire = row
        .as_object_mut()
        .and_then(|o| o.remove("expire_at"))
        .and_then(|v| v.as_i64())
        .and_then(DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    row["expire_time"] = Value::from(expire);
    row
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Input {
    title: String,
    #[serde(rename = "type", deserialize_with = "whole::required")]
    kind: i64,
    #[serde(deserialize_with = "whole::required")]
    status: i64,
    content: String,
    #[serde(default)]
    expire_time: Option<String>,
}

/// The columns a body writes, checked.
fn columns(input: Input) -> Result<Vec<(&'static str, Value)>, Error> {
    let title = input.title.as_str();
    if title.is_empty() || title.chars().count() > 64 {
        return Err(invalid("title", "must be 1 to 64 characters long"));
    }
    if let Some(c) = title.chars().find(|c| c.is_control()) {
        return Err(invalid(
            "title",
            &format!(
                "must not contain control characters (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    if let Some(c) = input
        .content
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(invalid(
            "content",
            &format!(
                "must not contain control characters but newlines and tabs (found U+{:04X})",
                u32::from(c)
            ),
        ));
    }
    if !matches!(input.kind, 0 | 1) {
        return Err(invalid("type", "must be 0 (notice) or 1 (announcement)"));
    }
    if !matches!(input.status, 0 | 1) {
        return Err(invalid("status", "must be 0 (hidden) or 1 (shown)"));
    }
    if input.content.chars().count() > 20_000 {
        return Err(invalid("content", "must be at most 20000 characters long"));
    }
    let expire_at = match input.expire_time.as_deref() {
        None => Value::Null,
        // RFC 3339 allows `t` and `z` in lower case.
        Some(text) => DateTime::parse_from_rfc3339(&text.to_ascii_uppercase())
            .map(|t| Value::from(t.timestamp_millis()))
            .map_err(|e| {
                invalid(
                    "expire_time",
                    &format!("'{text}' is not an RFC 3339 time such as 2030-01-31T12:00:00Z ({e})"),
                )
            })?,
    };
    Ok(vec![
        ("title", Value::from(title)),
        ("type", Value::from(input.kind)),
        ("status", Value::from(input.status)),
        ("content", Value::from(input.content)),
        ("expire_at", expire_at),
    ])
}

async fn fetch(id: i64) -> Result<Value, Error> {
    host()
        .query_json(
            &format!("SELECT {COLUMNS} FROM sys_notice WHERE id = ?"),
            &[json!(id)],
        )
        .await?
        .into_iter()
        .next()
        .map(shaped)
        .ok_or_else(|| Error::not_found(format!("notice {id} does not exist")))
}

#[derive(Serialize)]
struct Page {
    items: Vec<Value>,
    total: i64,
    page: u64,
    size: u64,
}

/// `GET ?page=&size=&title=&type=&status=`.
async fn list(req: Request<'_>) -> Result<Json<Page>, Error> {
    let Paging { page, size, offset } = req.paging(20, 200)?;
    let query: BTreeMap<String, String> = req.query()?;
    let (mut clauses, mut params) = (Vec::new(), Vec::new());
    if let Some(title) = query.get("title").filter(|t| !t.is_empty()) {
        clauses.push("title LIKE ?");
        params.push(Value::from(format!("%{title}%")));
    }
    for field in ["type", "status"] {
        if let Some(v) = query.get(field) {
            let v: i64 = v
                .parse()
                .ok()
                .filter(|v| matches!(v, 0 | 1))
                .ok_or_else(|| invalid(field, "must be 0 or 1"))?;
            clauses.push(if field == "type" {
                "type = ?"
            } else {
                "status = ?"
            });
            params.push(Value::from(v));
        }
    }
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    let found = host()
        .query_page(
            &format!("SELECT {COLUMNS} FROM sys_notice{filter}"),
            "created_time DESC, id DESC",
            &params,
            size,
            u64::try_from(offset).unwrap_or(0),
        )
        .await?;
    Ok(Json(Page {
        items: found.rows.into_iter().map(shaped).collect(),
        total: found.total,
        page,
        size,
    }))
}

/// `GET /{id}`.
async fn get(req: Request<'_>) -> Result<Json<Value>, Error> {
    Ok(Json(fetch(req.path_param("id")?).await?))
}

/// `POST`: creates a notice, tells every instance's feed and the webhook.
async fn create(req: Request<'_>) -> Result<Json<Value>, Error> {
    let columns = columns(req.json()?)?;
    let host = host();
    let id = host.insert("sys_notice", &columns).await?;
    let notice = fetch(id).await?;
    if let Err(e) = host.publish(CREATED, &notice).await {
        host.warn(&format!("notice {id} is not on every live feed: {e}"));
    }
    notify_webhook(notice.clone());
    Ok(Json(notice))
}

/// POSTs a new notice to `NOTICE_WEBHOOK_URL`, if set, in the background.
fn notify_webhook(notice: Value) {
    let Some(url) = host()
        .setting("NOTICE_WEBHOOK_URL")
        .filter(|u| !u.trim().is_empty())
    else {
        return;
    };
    let spawned = host().spawn("webhook", async move {
        let id = notice["id"].clone();
        let sent = host()
            .http("POST", url.trim())
            .json(&json!({ "event": CREATED, "notice": notice }))
            .timeout(Duration::from_secs(10))
            .send()
            .await;
        match sent {
            Ok(response) if (200..300).contains(&response.status()) => {}
            Ok(response) => host().warn(&format!(
                "webhook {url} answered {} for notice {id}",
                response.status()
            )),
            Err(e) => host().warn(&format!("webhook {url} for notice {id}: {e}")),
        }
    });
    if let Err(e) = spawned {
        host().warn(&format!("the webhook is not called: {e}"));
    }
}

/// `PUT /{id}`: replaces a notice's fields.
async fn update(req: Request<'_>) -> Result<Json<Value>, Error> {
    let id: i64 = req.path_param("id")?;
    fetch(id).await?;
    let columns = columns(req.json()?)?;
    let sets: Vec<String> = columns.iter().map(|(c, _)| format!("{c} = ?")).collect();
    let mut values: Vec<Value> = columns.into_iter().map(|(_, v)| v).collect();
    values.push(json!(id));
    host()
        .execute(
            &format!(
                "UPDATE sys_notice SET {}, updated_time = CURRENT_TIMESTAMP WHERE id = ?",
                sets.join(", ")
            ),
            &values,
        )
        .await?;
    Ok(Json(fetch(id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pks {
    #[serde(deserialize_with = "whole::list")]
    pks: Vec<i64>,
}

/// `DELETE` with `{"pks": [...]}`.
async fn delete(req: Request<'_>) -> Result<Json<Value>, Error> {
    let Pks { pks } = req.json()?;
    if pks.is_empty() || pks.len() > 1000 {
        return Err(invalid("pks", "must list 1 to 1000 ids"));
    }
    let marks = vec!["?"; pks.len()].join(", ");
    let params: Vec<Value> = pks.iter().map(|id| json!(id)).collect();
    let done = host()
        .execute(
            &format!("DELETE FROM sys_notice WHERE id IN ({marks})"),
            &params,
        )
        .await?;
    Ok(Json(json!({ "deleted": done.rows_affected })))
}

/// `GET /stream`: every notice created from now on, on any instance.
async fn stream(_req: Request<'_>) -> Result<Response, Error> {
    let every: u64 = host()
        .setting("NOTICE_KEEPALIVE_SECONDS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(15)
        .max(1);
    let (response, events) = host().sse_keep_alive(Duration::from_secs(every))?;
    let mut created = host().subscribe(CREATED)?;
    host().spawn("stream", async move {
        while let Some(notice) = created.next().await {
            if events
                .send(&Event::data(notice).name("notice"))
                .await
                .is_err()
            {
                return; // the client has gone
            }
        }
    })?;
    Ok(response)
}

/// Start hook: the `purge` job.
async fn start() -> Result<(), String> {
    let every: u64 = host()
        .setting("NOTICE_PURGE_SECONDS")
        .and_then(|s| s.trim().parse().ok())
        .filter(|s| *s > 0)
        .ok_or("NOTICE_PURGE_SECONDS must be a whole number of seconds above 0")?;
    host()
        .job(
            "purge",
            Schedule::every(Duration::from_secs(every)),
            Cluster::Once,
            |_tick| async {
                let done = host()
                    .execute(
                        "DELETE FROM sys_notice WHERE expire_at IS NOT NULL AND expire_at <= ?",
                        &[json!(now_ms())],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                if done.rows_affected > 0 {
                    host().info(&format!("purged {} expired notices", done.rows_affected));
                }
                Ok(())
            },
        )
        .map_err(|e| e.to_string())
}

fn id_schema() -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX })
}

fn row_schema() -> Value {
    json!({
        "type": "object",
        "required": ["id", "title", "type", "status", "content", "expire_time", "created_time", "updated_time"],
        "properties": {
            "id": id_schema(),
            "title": { "type": "string" },
            "type": { "type": "integer", "enum": [0, 1] },
            "status": { "type": "integer", "enum": [0, 1] },
            "content": { "type": "string" },
            "expire_time": { "type": ["string", "null"], "format": "date-time" },
            "created_time": { "type": "string" },
            "updated_time": { "type": ["string", "null"] },
        },
    })
}

fn input_schema() -> Value {
    json!({
        "type": "object",
        "required": ["title", "type", "status", "content"],
        "additionalProperties": false,
        "properties": {
            "title": { "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^\\u0000-\\u001F\\u007F-\\u009F]*$" },
            "type": { "type": "integer", "enum": [0, 1], "description": "0 notice, 1 announcement" },
            "status": { "type": "integer", "enum": [0, 1], "description": "0 hidden, 1 shown" },
            "content": { "type": "string", "maxLength": 20000, "pattern": "^[^\\u0000-\\u0008\\u000B\\u000C\\u000E-\\u001F\\u007F-\\u009F]*$" },
            "expire_time": { "type": ["string", "null"], "format": "date-time", "description": "RFC 3339; deleted after it" },
        },
    })
}

fn routers() -> Vec<Router> {
    let by_id = json!({ "properties": { "id": id_schema() } });
    let deleted = json!({
        "type": "object",
        "required": ["deleted"],
        "properties": { "deleted": { "type": "integer", "minimum": 0 } },
    });
    vec![
        Router::new("notice")
            .get("", list)
            .summary("List notices, newest first, a page at a time")
            .query_schema(json!({
                "type": "object",
                "properties": {
                    "page": { "type": "integer", "minimum": 1, "maximum": Paging::MAX_PAGE, "default": 1 },
                    "size": { "type": "integer", "minimum": 1, "maximum": 200, "default": 20 },
                    "title": { "type": "string" },
                    "type": { "type": "integer", "enum": [0, 1] },
                    "status": { "type": "integer", "enum": [0, 1] },
                },
            }))
            .response_schema(json!({
                "type": "object",
                "required": ["items", "total", "page", "size"],
                "properties": {
                    "items": { "type": "array", "items": row_schema() },
                    "total": { "type": "integer", "minimum": 0 },
                    "page": { "type": "integer" },
                    "size": { "type": "integer" },
                },
            }))
            .get("/stream", stream)
            .summary("Notices as they are created, on any instance (Server-Sent Events)")
            .description("A `text/event-stream` answer that stays open: an event `notice` whose data is the notice's JSON, for every notice created from now on in the cluster, and a keep-alive comment while idle.")
            .get("/{id}", get)
            .summary("Get one notice")
            .path_schema(by_id.clone())
            .response_schema(row_schema())
            .post("", create)
            .summary("Create a notice")
            .permission("sys:notice:add")
            .request_schema(input_schema())
            .response_schema(row_schema())
            .put("/{id}", update)
            .summary("Replace a notice's fields")
            .permission("sys:notice:edit")
            .path_schema(by_id)
            .request_schema(input_schema())
            .response_schema(row_schema())
            .delete("", delete)
            .summary("Delete notices by id")
            .description("The body lists the ids: `{\"pks\": [1, 2]}` (1 to 1000 of them).")
            .permission("sys:notice:del")
            .request_schema(json!({
                "type": "object",
                "required": ["pks"],
                "additionalProperties": false,
                "properties": {
                    "pks": { "type": "array", "minItems": 1, "maxItems": 1000, "items": id_schema() },
                },
            }))
            .response_schema(deleted),
    ]
}

plugin_api::export_plugin! {
    name: "notice",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    routers: routers,
    start: start,
}

#[cfg(test)]
mod tests {
    use plugin_api::testing::{TestHost, TestUser};
    use serde_json::json;

    const NOTICES: &str = "/admin/v1/sys/notices";

    #[test]
    fn a_notice_is_created_listed_published_updated_purged_and_deleted() {
        let host = TestHost::options()
            .setting("NOTICE_WEBHOOK_URL", "http://127.0.0.1:9/hook")
            .http("POST", "http://127.0.0.1:9/hook", 204, "")
            .start(plugin_api::this_plugin!())
            .unwrap();
        let admin = TestUser::superuser(1, "admin");
        let created = host
            .post(NOTICES)
            .json(&json!({"title": "Hi", "type": 0, "status": 1, "content": "x", "expire_time": "2000-01-01T00:00:00Z"}))
            .user(&admin)
            .send();
        assert_eq!(created.status, 200, "{}", created.text());
        let notice = created.data();
        assert_eq!(notice["expire_time"], "2000-01-01T00:00:00Z");
        assert_eq!(host.published()[0].0, "notice.created");
        assert_eq!(host.tasks(), ["job:purge", "webhook"]);
        assert!(host.run_task("webhook"));
        assert_eq!(host.http_sent()[0]["url"], "http://127.0.0.1:9/hook");

        let list = host.get(NOTICES).user(&admin).send().data();
        assert_eq!(list["total"], 1);
        let bad = host
            .post(NOTICES)
            .json(&json!({"title": "Hi", "type": 3, "status": 1, "content": "x"}))
            .user(&admin)
            .send();
        assert_eq!(bad.status, 422, "{}", bad.text());
        let late = host
            .post(NOTICES)
            .json(&json!({"title": "Hi", "type": 0, "status": 1, "content": "x", "expire_time": "tomorrow"}))
            .user(&admin)
            .send();
        assert!(
            late.msg().contains("'tomorrow' is not an RFC 3339 time"),
            "{}",
            late.text()
        );

        host.run_job("purge").unwrap();
        let id = notice["id"].as_i64().unwrap();
        assert_eq!(
            host.get(&format!("{NOTICES}/{id}"))
                .user(&admin)
                .send()
                .status,
            404
        );
        let nobody = TestUser::new(2, "nobody");
        let refused = host
            .post(NOTICES)
            .json(&json!({"title": "Hi", "type": 0, "status": 1, "content": "x"}))
            .user(&nobody)
            .send();
        assert_eq!(refused.status, 403);
    }
}
