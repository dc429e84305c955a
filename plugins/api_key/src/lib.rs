//! `api_key`: API keys a user makes for scripts and services, a port of
//! FBA's api_key plugin. `POST /admin/v1/sys/api-keys` (`{name,
//! expire_seconds?}`) answers the key once; `GET` lists the caller's keys
//! (a superuser's: everyone's), masked; `DELETE /admin/v1/sys/api-keys/{pk}`
//! revokes one. A key sent as `Authorization: Bearer <key>` authenticates
//! as its owner on every admin route of every instance, through the host's
//! authenticator hook: the host asks this plugin about a credential it does
//! not know, and keeps the answer as it keeps a token's for the flag bound,
//! so a deleted or expired key is refused everywhere within it. Only a
//! sha256 digest of each key is stored (a key is 256 random bits: a fast
//! digest is enough, unlike a password). A deleted user's keys go with it
//! (`sys.user.deleted`).

use plugin_api::{Error, Json, Request, Router, host, whole};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// What every key begins with: the authenticator passes on anything else.
const KEY_PREFIX: &str = "plk_";
/// The longest a key may live: ten years.
const MAX_EXPIRE_SECONDS: i64 = 10 * 365 * 24 * 3600;

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn digest(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// A new key: the prefix and 256 random bits in hex.
fn new_key() -> String {
    format!(
        "{KEY_PREFIX}{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn caller(req: &Request<'_>) -> Result<(i64, bool), Error> {
    let p = req
        .principal()
        .ok_or_else(|| Error::new(401, "authentication required"))?;
    Ok((p.user_id, p.superuser))
}

/// A stored key as listed: its first characters only.
fn shown(mut row: Value) -> Value {
    let prefix = row["prefix"].as_str().unwrap_or_default().to_owned();
    if let Some(fields) = row.as_object_mut() {
        fields.remove("prefix");
        fields.insert("key".into(), Value::from(format!("{prefix}…")));
    }
    row
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKey {
    name: String,
    #[serde(default, deserialize_with = "whole::optional")]
    expire_seconds: Option<i64>,
}

/// `POST`: a key for the caller, shown this once.
async fn create(req: Request<'_>) -> Result<Json<Value>, Error> {
    let (user, _) = caller(&req)?;
    let input: NewKey = req.json()?;
    let name = input.name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err(Error::new(422, "name: must be 1 to 64 characters"));
    }
    if let Some(seconds) = input.expire_seconds
        && !(1..=MAX_EXPIRE_SECONDS).contains(&seconds)
    {
        return Err(Error::new(
            422,
            format!(
                "expire_seconds: must be 1 to {MAX_EXPIRE_SECONDS} (ten years), or left out for a key that does not expire"
            ),
        ));
    }
    let key = new_key();
    let created = now();
    let expire_at = input.expire_seconds.map(|s| created + s);
    let prefix: String = key.chars().take(KEY_PREFIX.len() + 8).collect();
    let id = host()
        .insert(
            "sys_api_key",
            &[
                ("user_id", json!(user)),
                ("name", json!(name)),
                ("prefix", json!(prefix)),
                ("key_hash", json!(digest(&key))),
                ("expire_at", json!(expire_at)),
                ("created_at", json!(created)),
            ],
        )
        .await?;
    Ok(Json(json!({
        "id": id,
        "key": key,
        "name": name,
        "user_id": user,
        "expire_at": expire_at,
        "created_at": created,
    })))
}

/// `GET`: the caller's keys (a superuser's: everyone's), masked.
async fn list(req: Request<'_>) -> Result<Json<Value>, Error> {
    let (user, superuser) = caller(&req)?;
    let columns = "id, user_id, name, prefix, expire_at, created_at";
    let rows: Vec<Value> = if superuser {
        host()
            .query(
                &format!("SELECT {columns} FROM sys_api_key ORDER BY id"),
                &[],
            )
            .await?
    } else {
        host()
            .query(
                &format!("SELECT {columns} FROM sys_api_key WHERE user_id = ? ORDER BY id"),
                &[json!(user)],
            )
            .await?
    };
    Ok(Json(Value::from(
        rows.into_iter().map(shown).collect::<Vec<_>>(),
    )))
}

/// `DELETE /{pk}`: revokes a key of the caller's (a superuser: anyone's).
async fn delete(req: Request<'_>) -> Result<Json<Value>, Error> {
    let (user, superuser) = caller(&req)?;
    let id: i64 = req.path_param("pk")?;
    let done = if superuser {
        host()
            .execute("DELETE FROM sys_api_key WHERE id = ?", &[json!(id)])
            .await?
    } else {
        host()
            .execute(
                "DELETE FROM sys_api_key WHERE id = ? AND user_id = ?",
                &[json!(id), json!(user)],
            )
            .await?
    };
    if done.rows_affected == 0 {
        return Err(Error::new(404, format!("API key {id} does not exist")));
    }
    Ok(Json(Value::Null))
}

/// The authenticator: the owner of a live key; `None` for a credential
/// that is not a key; an error for a key that is unknown (deleted) or
/// expired.
async fn authenticate(authorization: String) -> Result<Option<i64>, String> {
    let Some(key) = authorization
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|k| k.starts_with(KEY_PREFIX))
    else {
        return Ok(None);
    };
    #[derive(Deserialize)]
    struct Found {
        user_id: i64,
        expire_at: Option<i64>,
    }
    let found: Vec<Found> = host()
        .query(
            "SELECT user_id, expire_at FROM sys_api_key WHERE key_hash = ?",
            &[json!(digest(key))],
        )
        .await
        .map_err(|e| format!("the key cannot be checked now: {e}"))?;
    match found.first() {
        None => Err("unknown API key (deleted, or never made)".into()),
        Some(k) if k.expire_at.is_some_and(|at| at <= now()) => Err(format!(
            "API key expired at {}",
            chrono::DateTime::from_timestamp(k.expire_at.unwrap_or_default(), 0)
                .map(|t| t.to_rfc3339())
                .unwrap_or_default()
        )),
        Some(k) => Ok(Some(k.user_id)),
    }
}

/// Deletes the keys of each user deleted from now on.
async fn start() -> Result<(), String> {
    host()
        .forget_deleted_users("sys_api_key", "user_id")
        .map_err(|e| e.to_string())
}

fn routers() -> Vec<Router> {
    let key_row = json!({
        "type": "object",
        "required": ["id", "user_id", "name", "key", "expire_at", "created_at"],
        "properties": {
            "id": { "type": "integer" },
            "user_id": { "type": "integer" },
            "name": { "type": "string" },
            "key": { "type": "string", "description": "The key's first characters" },
            "expire_at": { "type": ["integer", "null"], "description": "Unix seconds" },
            "created_at": { "type": "integer", "description": "Unix seconds" },
        },
    });
    vec![
        Router::new("api_key")
            .post("", create)
            .summary("Make an API key (shown this once)")
            .description("The key authenticates as you (`Authorization: Bearer <key>`) on every admin route until it expires or is deleted.")
            .request_schema(json!({
                "type": "object",
                "required": ["name"],
                "additionalProperties": false,
                "properties": {
                    "name": { "type": "string", "minLength": 1, "maxLength": 64, "pattern": "\\S" },
                    "expire_seconds": { "type": ["integer", "null"], "minimum": 1, "maximum": MAX_EXPIRE_SECONDS },
                },
            }))
            .response_schema(json!({
                "type": "object",
                "required": ["id", "key", "name", "user_id", "expire_at", "created_at"],
                "properties": {
                    "id": { "type": "integer" },
                    "key": { "type": "string" },
                    "name": { "type": "string" },
                    "user_id": { "type": "integer" },
                    "expire_at": { "type": ["integer", "null"] },
                    "created_at": { "type": "integer" },
                },
            }))
            .get("", list)
            .summary("List your API keys (a superuser: everyone's), masked")
            .response_schema(json!({ "type": "array", "items": key_row }))
            .delete("/{pk}", delete)
            .summary("Delete an API key: refused on every instance within the flag bound")
            .path_schema(json!({ "properties": { "pk": { "type": "integer", "format": "int64" } } })),
    ]
}

plugin_api::export_plugin! {
    name: "api_key",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    routers: routers,
    start: start,
    authenticate: authenticate,
}

#[cfg(test)]
mod tests {
    use plugin_api::testing::{TestHost, TestUser};
    use serde_json::json;

    #[test]
    fn a_key_authenticates_as_its_owner_until_deleted() {
        let host = TestHost::start(plugin_api::this_plugin!()).unwrap();
        let ada = TestUser::new(7, "ada");
        let made = host
            .post("/admin/v1/sys/api-keys")
            .user(&ada)
            .json(&json!({ "name": "ci" }))
            .send();
        let key = made.data()["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("plk_") && key.len() == 68, "{key}");
        assert_eq!(host.authenticate(&format!("Bearer {key}")), Ok(Some(7)));
        assert_eq!(host.authenticate("Bearer eyJhbGciOi.x.y"), Ok(None));
        let listed = host.get("/admin/v1/sys/api-keys").user(&ada).send();
        let shown = listed.data()[0]["key"].as_str().unwrap().to_owned();
        assert!(shown.ends_with('…') && key.starts_with(shown.trim_end_matches('…')));
        assert!(!listed.text().contains(&key), "the key is never listed");
        // Another user sees none of ada's keys and deletes none.
        let bob = TestUser::new(8, "bob");
        assert_eq!(
            host.get("/admin/v1/sys/api-keys").user(&bob).send().data(),
            json!([])
        );
        let id = made.data()["id"].as_i64().unwrap();
        let path = format!("/admin/v1/sys/api-keys/{id}");
        assert_eq!(host.delete(&path).user(&bob).send().status, 404);
        assert_eq!(host.delete(&path).user(&ada).send().status, 200);
        let refused = host.authenticate(&format!("Bearer {key}")).unwrap_err();
        assert!(refused.contains("unknown API key"), "{refused}");
    }

    #[test]
    fn a_key_past_its_expiry_is_refused_and_bad_input_is_named() {
        let host = TestHost::start(plugin_api::this_plugin!()).unwrap();
        let ada = TestUser::new(7, "ada");
        let bad = host
            .post("/admin/v1/sys/api-keys")
            .user(&ada)
            .json(&json!({ "name": "ci", "expire_seconds": 0 }))
            .send();
        assert_eq!(bad.status, 422);
        assert!(bad.msg().contains("expire_seconds"), "{}", bad.msg());
        let made = host
            .post("/admin/v1/sys/api-keys")
            .user(&ada)
            .json(&json!({ "name": "short", "expire_seconds": 1 }))
            .send();
        let key = made.data()["key"].as_str().unwrap().to_owned();
        host.query("UPDATE sys_api_key SET expire_at = 1", &[]);
        let refused = host.authenticate(&format!("Bearer {key}")).unwrap_err();
        assert!(refused.contains("expired"), "{refused}");
    }
}
