//! `dict`: the data dictionary (types and their entries), an extend-level
//! plugin on the admin app, kept in the host database through host services.

use std::collections::BTreeMap;

use plugin_api::{Error, Json, Paging, Request, Router, Transaction, host};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json, value::RawValue};

/// One dictionary table served by the generic CRUD handlers below.
trait Resource: 'static {
    /// Table name.
    const TABLE: &'static str;
    /// What a row is called in messages.
    const NOUN: &'static str;
    /// Columns answered, in order.
    const COLUMNS: &'static str;
    /// List order.
    const ORDER: &'static str;
    /// The create/update body.
    type Input: for<'de> Deserialize<'de>;

    /// Turns query parameters into a WHERE clause and its parameters.
    fn filters(query: &BTreeMap<String, String>) -> Result<(Vec<String>, Vec<Value>), Error>;

    /// Checks a body and answers the columns to write.
    async fn columns(input: Self::Input) -> Result<Vec<(&'static str, Value)>, Error>;

    /// Removes what depends on the rows `ids` (inside the delete's transaction).
    async fn delete_dependents(_tx: &Transaction, _ids: &[i64]) -> Result<(), Error> {
        Ok(())
    }
}

fn invalid(field: &str, message: &str) -> Error {
    Error::new(422, format!("{field}: {message}"))
}

/// Control characters (NUL among them) are refused in every text field.
fn printable(field: &str, value: &str) -> Result<(), Error> {
    match value
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\t'))
    {
        Some(c) => Err(invalid(
            field,
            &format!(
                "must not contain control characters (found U+{:04X})",
                u32::from(c)
            ),
        )),
        None => Ok(()),
    }
}

fn text(field: &str, value: &str, max: usize) -> Result<Value, Error> {
    printable(field, value)?;
    let len = value.chars().count();
    if len == 0 || len > max {
        return Err(invalid(
            field,
            &format!("must be 1 to {max} characters long"),
        ));
    }
    Ok(Value::from(value))
}

fn optional_text(field: &str, value: Option<String>, max: usize) -> Result<Value, Error> {
    match value {
        None => Ok(Value::Null),
        Some(v) if v.chars().count() > max => Err(invalid(
            field,
            &format!("must be at most {max} characters long"),
        )),
        Some(v) => printable(field, &v).map(|()| Value::from(v)),
    }
}

fn status(value: Option<i64>) -> Result<Value, Error> {
    match value.unwrap_or(1) {
        s @ (0 | 1) => Ok(Value::from(s)),
        _ => Err(invalid("status", "must be 1 (enabled) or 0 (disabled)")),
    }
}

fn status_filter(
    query: &BTreeMap<String, String>,
    clauses: &mut Vec<String>,
    params: &mut Vec<Value>,
) -> Result<(), Error> {
    if let Some(s) = query.get("status") {
        let s: i64 = s
            .parse()
            .ok()
            .filter(|s| *s == 0 || *s == 1)
            .ok_or_else(|| invalid("status", "must be 0 or 1"))?;
        clauses.push("status = ?".into());
        params.push(Value::from(s));
    }
    Ok(())
}

fn contains_filter(
    query: &BTreeMap<String, String>,
    field: &'static str,
    clauses: &mut Vec<String>,
    params: &mut Vec<Value>,
) {
    if let Some(v) = query.get(field).filter(|v| !v.is_empty()) {
        clauses.push(format!("{field} LIKE ?"));
        params.push(Value::from(format!("%{v}%")));
    }
}

struct DictType;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TypeInput {
    name: String,
    code: String,
    status: Option<i64>,
    remark: Option<String>,
}

impl Resource for DictType {
    const TABLE: &'static str = "sys_dict_type";
    const NOUN: &'static str = "dict type";
    const COLUMNS: &'static str = "id, name, code, status, remark";
    const ORDER: &'static str = "id";
    type Input = TypeInput;

    fn filters(query: &BTreeMap<String, String>) -> Result<(Vec<String>, Vec<Value>), Error> {
        let (mut clauses, mut params) = (Vec::new(), Vec::new());
        contains_filter(query, "name", &mut clauses, &mut params);
        contains_filter(query, "code", &mut clauses, &mut params);
        status_filter(query, &mut clauses, &mut params)?;
        Ok((clauses, params))
    }

    async fn columns(input: TypeInput) -> Result<Vec<(&'static str, Value)>, Error> {
        if !input
            .code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
        {
            return Err(invalid("code", "may hold only letters, digits and _ - . :"));
        }
        Ok(vec![
            ("name", text("name", &input.name, 32)?),
            ("code", text("code", &input.code, 32)?),
            ("status", status(input.status)?),
            ("remark", optional_text("remark", input.remark, 500)?),
        ])
    }

    async fn delete_dependents(tx: &Transaction, ids: &[i64]) -> Result<(), Error> {
        let marks = vec!["?"; ids.len()].join(", ");
        let params: Vec<Value> = ids.iter().map(|id| Value::from(*id)).collect();
        tx.execute(
            &format!("DELETE FROM sys_dict_data WHERE type_id IN ({marks})"),
            &params,
        )
        .await?;
        Ok(())
    }
}

struct DictData;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataInput {
    type_id: i64,
    label: String,
    value: String,
    color: Option<String>,
    sort: Option<i64>,
    status: Option<i64>,
    remark: Option<String>,
}

impl Resource for DictData {
    const TABLE: &'static str = "sys_dict_data";
    const NOUN: &'static str = "dict data";
    const COLUMNS: &'static str = "id, type_id, label, value, color, sort, status, remark";
    const ORDER: &'static str = "sort, id";
    type Input = DataInput;

    fn filters(query: &BTreeMap<String, String>) -> Result<(Vec<String>, Vec<Value>), Error> {
        let (mut clauses, mut params) = (Vec::new(), Vec::new());
        if let Some(t) = query.get("type_id") {
            let t: i64 = t
                .parse()
                .map_err(|_| invalid("type_id", "must be an integer"))?;
            clauses.push("type_id = ?".into());
            params.push(Value::from(t));
        }
        contains_filter(query, "label", &mut clauses, &mut params);
        status_filter(query, &mut clauses, &mut params)?;
        Ok((clauses, params))
    }

    async fn columns(input: DataInput) -> Result<Vec<(&'static str, Value)>, Error> {
        let exists = host()
            .query_json(
                "SELECT id FROM sys_dict_type WHERE id = ?",
                &[json!(input.type_id)],
            )
            .await?;
        if exists.is_empty() {
            return Err(invalid(
                "type_id",
                &format!("dict type {} does not exist", input.type_id),
            ));
        }
        Ok(vec![
            ("type_id", Value::from(input.type_id)),
            ("label", text("label", &input.label, 32)?),
            ("value", text("value", &input.value, 32)?),
            ("color", optional_text("color", input.color, 32)?),
            ("sort", Value::from(input.sort.unwrap_or(0))),
            ("status", status(input.status)?),
            ("remark", optional_text("remark", input.remark, 500)?),
        ])
    }
}

fn id_param(req: &Request<'_>) -> Result<i64, Error> {
    req.param("id")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| invalid("id", "must be an integer"))
}

async fn fetch<R: Resource>(id: i64) -> Result<Value, Error> {
    let sql = format!("SELECT {} FROM {} WHERE id = ?", R::COLUMNS, R::TABLE);
    host()
        .query_json(&sql, &[json!(id)])
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Error::not_found(format!("{} {id} does not exist", R::NOUN)))
}

/// `GET ?page=&size=&…filters`: `{"items", "total", "page", "size"}`.
async fn list<R: Resource>(req: Request<'_>) -> Result<Json<Page>, Error> {
    let Paging { page, size, offset } = req.paging(20, 200)?;
    let mut query: BTreeMap<String, String> = req.query()?;
    query.remove("page");
    query.remove("size");
    let (clauses, mut params) = R::filters(&query)?;
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    let host = host();
    let counted = host
        .query_json(
            &format!("SELECT COUNT(*) AS total FROM {}{filter}", R::TABLE),
            &params,
        )
        .await?;
    let total = counted
        .first()
        .and_then(|r| r["total"].as_i64())
        .unwrap_or(0);
    params.push(json!(size));
    params.push(json!(offset));
    let items = host
        .query_raw(
            &format!(
                "SELECT {} FROM {}{filter} ORDER BY {} LIMIT ? OFFSET ?",
                R::COLUMNS,
                R::TABLE,
                R::ORDER
            ),
            &params,
        )
        .await?;
    Ok(Json(Page {
        items,
        total,
        page,
        size,
    }))
}

/// A page of rows, passed on as the host's JSON.
#[derive(Serialize)]
struct Page {
    items: Box<RawValue>,
    total: i64,
    page: u64,
    size: u64,
}

/// `GET /{id}`.
async fn get<R: Resource>(req: Request<'_>) -> Result<Json<Value>, Error> {
    Ok(Json(fetch::<R>(id_param(&req)?).await?))
}

/// `POST`: creates a row and answers it.
async fn create<R: Resource>(req: Request<'_>) -> Result<Json<Value>, Error> {
    let columns = R::columns(req.json()?).await?;
    let host = host();
    let mut names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    let mut values: Vec<Value> = columns.into_iter().map(|(_, v)| v).collect();
    let given = host.next_id();
    if let Some(id) = given {
        names.insert(0, "id");
        values.insert(0, json!(id));
    }
    let marks = vec!["?"; names.len()].join(", ");
    let sql = format!(
        "INSERT INTO {} ({}) VALUES ({marks})",
        R::TABLE,
        names.join(", ")
    );
    let id = match (given, host.db_backend()) {
        (Some(id), _) => {
            host.execute(&sql, &values).await?;
            id
        }
        (None, "postgresql") => host
            .query_json(&format!("{sql} RETURNING id"), &values)
            .await?
            .first()
            .and_then(|r| r["id"].as_i64())
            .ok_or_else(|| Error::internal("the insert answered no id"))?,
        (None, _) => host
            .execute(&sql, &values)
            .await?
            .last_insert_id
            .ok_or_else(|| Error::internal("the insert answered no id"))?,
    };
    Ok(Json(fetch::<R>(id).await?))
}

/// `PUT /{id}`: replaces a row's fields and answers it.
async fn update<R: Resource>(req: Request<'_>) -> Result<Json<Value>, Error> {
    let id = id_param(&req)?;
    fetch::<R>(id).await?;
    let columns = R::columns(req.json()?).await?;
    let sets: Vec<String> = columns.iter().map(|(c, _)| format!("{c} = ?")).collect();
    let mut values: Vec<Value> = columns.into_iter().map(|(_, v)| v).collect();
    values.push(json!(id));
    let sql = format!(
        "UPDATE {} SET {}, updated_time = CURRENT_TIMESTAMP WHERE id = ?",
        R::TABLE,
        sets.join(", ")
    );
    host().execute(&sql, &values).await?;
    Ok(Json(fetch::<R>(id).await?))
}

async fn delete_ids<R: Resource>(ids: &[i64]) -> Result<u64, Error> {
    let tx = host().begin().await?;
    R::delete_dependents(&tx, ids).await?;
    let marks = vec!["?"; ids.len()].join(", ");
    let params: Vec<Value> = ids.iter().map(|id| json!(id)).collect();
    let done = tx
        .execute(
            &format!("DELETE FROM {} WHERE id IN ({marks})", R::TABLE),
            &params,
        )
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected)
}

/// `DELETE /{id}`.
async fn delete_one<R: Resource>(req: Request<'_>) -> Result<Json<Value>, Error> {
    let id = id_param(&req)?;
    if delete_ids::<R>(&[id]).await? == 0 {
        return Err(Error::not_found(format!("{} {id} does not exist", R::NOUN)));
    }
    Ok(Json(json!({ "deleted": 1 })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Pks {
    pks: Vec<i64>,
}

/// `DELETE` with `{"pks": [...]}`.
async fn delete_many<R: Resource>(req: Request<'_>) -> Result<Json<Value>, Error> {
    let Pks { pks } = req.json()?;
    if pks.is_empty() || pks.len() > 1000 {
        return Err(invalid("pks", "must list 1 to 1000 ids"));
    }
    Ok(Json(json!({ "deleted": delete_ids::<R>(&pks).await? })))
}

fn crud<R: Resource>(name: &str) -> Router {
    Router::new(name)
        .get("", list::<R>)
        .summary("List with pagination and filters")
        .get("/{id}", get::<R>)
        .summary("Get one by id")
        .post("", create::<R>)
        .permission("sys:dict:add")
        .put("/{id}", update::<R>)
        .permission("sys:dict:edit")
        .delete("/{id}", delete_one::<R>)
        .permission("sys:dict:del")
        .delete("", delete_many::<R>)
        .permission("sys:dict:del")
}

fn routers() -> Vec<Router> {
    vec![crud::<DictType>("dict_type"), crud::<DictData>("dict_data")]
}

plugin_api::export_plugin! {
    name: "dict",
    manifest: include_str!("../plugin.toml"),
    routers: routers,
}
