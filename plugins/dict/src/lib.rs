//! `dict`: the data dictionary (types and their entries), an extend-level
//! plugin on the admin app, kept in the host database through host services.

use std::collections::BTreeMap;

use plugin_api::{Error, Json, Paging, Request, Router, Transaction, host, whole};
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

    /// The JSON Schema of a row as answered.
    fn row_schema() -> Value;

    /// The JSON Schema of the create/update body.
    fn input_schema() -> Value;

    /// The filters of the list, as an object schema of query parameters.
    fn filter_schema() -> Value;

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

/// `sort`: a 32-bit whole number (the column's type on every backend).
fn sort(value: Option<i64>) -> Result<Value, Error> {
    let sort = value.unwrap_or(0);
    i32::try_from(sort).map(Value::from).map_err(|_| {
        invalid(
            "sort",
            &format!("must be from {} to {}, not {sort}", i32::MIN, i32::MAX),
        )
    })
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
    #[serde(default, deserialize_with = "whole::optional")]
    status: Option<i64>,
    remark: Option<String>,
}

impl Resource for DictType {
    const TABLE: &'static str = "sys_dict_type";
    const NOUN: &'static str = "dict type";
    const COLUMNS: &'static str = "id, name, code, status, remark";
    const ORDER: &'static str = "id";
    type Input = TypeInput;

    fn row_schema() -> Value {
        row(json!({
            "name": { "type": "string" },
            "code": { "type": "string" },
            "status": status_schema(),
            "remark": { "type": ["string", "null"] },
        }))
    }

    fn input_schema() -> Value {
        input(
            &["name", "code"],
            json!({
                "name": text_schema(32),
                "code": { "type": "string", "minLength": 1, "maxLength": 32, "pattern": "^[A-Za-z0-9_.:-]+$" },
                "status": status_input_schema(),
                "remark": optional_text_schema(500),
            }),
        )
    }

    fn filter_schema() -> Value {
        filters(json!({
            "name": { "type": "string", "description": "part of the name" },
            "code": { "type": "string", "description": "part of the code" },
            "status": status_schema(),
        }))
    }

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
    #[serde(deserialize_with = "whole::required")]
    type_id: i64,
    label: String,
    value: String,
    color: Option<String>,
    #[serde(default, deserialize_with = "whole::optional")]
    sort: Option<i64>,
    #[serde(default, deserialize_with = "whole::optional")]
    status: Option<i64>,
    remark: Option<String>,
}

impl Resource for DictData {
    const TABLE: &'static str = "sys_dict_data";
    const NOUN: &'static str = "dict data";
    const COLUMNS: &'static str = "id, type_id, label, value, color, sort, status, remark";
    const ORDER: &'static str = "sort, id";
    type Input = DataInput;

    fn row_schema() -> Value {
        row(json!({
            "type_id": { "type": "integer" },
            "label": { "type": "string" },
            "value": { "type": "string" },
            "color": { "type": ["string", "null"] },
            "sort": { "type": "integer" },
            "status": status_schema(),
            "remark": { "type": ["string", "null"] },
        }))
    }

    fn input_schema() -> Value {
        input(
            &["type_id", "label", "value"],
            json!({
                "type_id": id_schema(),
                "label": text_schema(32),
                "value": text_schema(32),
                "color": optional_text_schema(32),
                "sort": { "type": ["integer", "null"], "minimum": i32::MIN, "maximum": i32::MAX },
                "status": status_input_schema(),
                "remark": optional_text_schema(500),
            }),
        )
    }

    fn filter_schema() -> Value {
        filters(json!({
            "type_id": id_schema(),
            "label": { "type": "string", "description": "part of the label" },
            "status": status_schema(),
        }))
    }

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
            ("sort", sort(input.sort)?),
            ("status", status(input.status)?),
            ("remark", optional_text("remark", input.remark, 500)?),
        ])
    }
}

/// The schema of a row: `id` and `columns`.
fn row(columns: Value) -> Value {
    let mut properties = columns;
    properties["id"] = id_schema();
    let required: Vec<&String> = properties
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    json!({ "type": "object", "required": required, "properties": properties })
}

/// The schema of a create/update body (unknown fields are refused).
fn input(required: &[&str], properties: Value) -> Value {
    json!({
        "type": "object",
        "required": required,
        "additionalProperties": false,
        "properties": properties,
    })
}

/// The list's query parameters: paging and `filters`.
fn filters(properties: Value) -> Value {
    let mut properties = properties;
    properties["page"] =
        json!({ "type": "integer", "minimum": 1, "maximum": Paging::MAX_PAGE, "default": 1 });
    properties["size"] = json!({ "type": "integer", "minimum": 1, "maximum": 200, "default": 20 });
    json!({ "type": "object", "properties": properties })
}

/// A row id (64-bit).
fn id_schema() -> Value {
    json!({ "type": "integer", "format": "int64", "minimum": i64::MIN, "maximum": i64::MAX })
}

fn status_schema() -> Value {
    json!({ "type": "integer", "enum": [0, 1], "description": "1 enabled, 0 disabled" })
}

/// `status` in a body: 1, 0, or null/absent for 1.
fn status_input_schema() -> Value {
    json!({ "type": ["integer", "null"], "enum": [0, 1, null], "description": "1 enabled (default), 0 disabled" })
}

/// Text of 1 to `max` characters without control characters.
fn text_schema(max: u32) -> Value {
    json!({ "type": "string", "minLength": 1, "maxLength": max, "pattern": PRINTABLE })
}

fn optional_text_schema(max: u32) -> Value {
    json!({ "type": ["string", "null"], "maxLength": max, "pattern": PRINTABLE })
}

/// No control characters but newline and tab (what `printable` checks).
const PRINTABLE: &str = "^[^\\u0000-\\u0008\\u000B-\\u001F\\u007F-\\u009F]*$";

fn id_param(req: &Request<'_>) -> Result<i64, Error> {
    req.path_param("id")
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
    let (clauses, params) = R::filters(&query)?;
    let filter = if clauses.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", clauses.join(" AND "))
    };
    // The page and the count of the whole list in one statement.
    let found = host()
        .query_page_raw(
            &format!("SELECT {} FROM {}{filter}", R::COLUMNS, R::TABLE),
            R::ORDER,
            &params,
            size,
            u64::try_from(offset).unwrap_or(0),
        )
        .await?;
    let (items, total) = (found.rows, found.total);
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
    let id = host().insert(R::TABLE, &columns).await?;
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
    #[serde(deserialize_with = "whole::list")]
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
    let noun = R::NOUN;
    let deleted = json!({
        "type": "object",
        "required": ["deleted"],
        "properties": { "deleted": { "type": "integer", "minimum": 0 } },
    });
    let by_id = json!({ "properties": { "id": id_schema() } });
    Router::new(name)
        .get("", list::<R>)
        .summary(&format!("List {noun} rows, a page at a time, with filters"))
        .query_schema(R::filter_schema())
        .response_schema(json!({
            "type": "object",
            "required": ["items", "total", "page", "size"],
            "properties": {
                "items": { "type": "array", "items": R::row_schema() },
                "total": { "type": "integer", "minimum": 0 },
                "page": { "type": "integer" },
                "size": { "type": "integer" },
            },
        }))
        .get("/{id}", get::<R>)
        .summary(&format!("Get one {noun} by id"))
        .path_schema(by_id.clone())
        .response_schema(R::row_schema())
        .post("", create::<R>)
        .summary(&format!("Create a {noun}"))
        .permission("sys:dict:add")
        .request_schema(R::input_schema())
        .response_schema(R::row_schema())
        .put("/{id}", update::<R>)
        .summary(&format!("Replace a {noun}'s fields"))
        .path_schema(by_id.clone())
        .permission("sys:dict:edit")
        .request_schema(R::input_schema())
        .response_schema(R::row_schema())
        .delete("/{id}", delete_one::<R>)
        .summary(&format!("Delete one {noun}"))
        .path_schema(by_id)
        .permission("sys:dict:del")
        .response_schema(deleted.clone())
        .delete("", delete_many::<R>)
        .summary(&format!("Delete {noun} rows by id"))
        .description("The body lists the ids: `{\"pks\": [1, 2]}` (1 to 1000 of them).")
        .permission("sys:dict:del")
        .request_schema(json!({
            "type": "object",
            "required": ["pks"],
            "additionalProperties": false,
            "properties": {
                "pks": { "type": "array", "minItems": 1, "maxItems": 1000, "items": id_schema() },
            },
        }))
        .response_schema(deleted)
}

fn routers() -> Vec<Router> {
    vec![crud::<DictType>("dict_type"), crud::<DictData>("dict_data")]
}

plugin_api::export_plugin! {
    name: "dict",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    routers: routers,
}

#[cfg(test)]
mod tests {
    use plugin_api::testing::{TestHost, TestUser};
    use serde_json::{Value, json};

    const TYPES: &str = "/admin/v1/sys/dict-types";
    const DATAS: &str = "/admin/v1/sys/dict-datas";

    fn dict() -> TestHost {
        TestHost::start(plugin_api::this_plugin!()).expect("dict loads")
    }

    fn admin() -> TestUser {
        TestUser::superuser(1, "admin")
    }

    fn create(host: &TestHost, path: &str, body: Value) -> Value {
        let reply = host.post(path).json(&body).user(&admin()).send();
        assert_eq!(reply.status, 200, "{}", reply.text());
        reply.data()
    }

    /// A whole number is read from its text exactly, in every form JSON
    /// allows, and nothing else passes for one.
    #[test]
    fn whole_numbers_are_read_exactly_from_their_text() {
        #[derive(serde::Deserialize)]
        struct Ids(#[serde(deserialize_with = "plugin_api::whole::list")] Vec<i64>);
        let read = |text: &str| serde_json::from_str::<Ids>(text).map(|ids| ids.0);
        assert_eq!(
            read(
                "[-2158068809527055.0, 7497.0, -22, 0.0, -0, 1e3, 2.5E+1, 1200e-2, \
                 9223372036854775807, -9223372036854775808.000, 922337203685477580.7e1, \
                 0e99999999999999999999]"
            )
            .expect("whole numbers"),
            [
                -2158068809527055,
                7497,
                -22,
                0,
                0,
                1000,
                25,
                12,
                i64::MAX,
                i64::MIN,
                i64::MAX,
                0
            ]
        );
        for refused in [
            "1.5",
            "1e-1",
            "-9223372036854775809",
            "9223372036854775808.0",
            "-9.223372036854776e18",
            "1e19",
            "1e999999999999",
            "\"5\"",
            "true",
        ] {
            let error = read(&format!("[{refused}]"))
                .err()
                .unwrap_or_else(|| panic!("{refused} is refused"))
                .to_string();
            assert!(
                error.contains(&format!("{refused} is not a 64-bit whole number")),
                "{refused}: {error}"
            );
        }
    }

    #[test]
    fn types_and_their_data_go_through_create_read_update_and_delete() {
        let host = dict();
        let status = create(&host, TYPES, json!({ "name": "Status", "code": "status" }));
        assert_eq!(status["status"], 1, "enabled by default");
        let id = status["id"].as_i64().expect("an id");
        let on = create(
            &host,
            DATAS,
            json!({ "type_id": id, "label": "On", "value": "1", "sort": 2 }),
        );
        create(
            &host,
            DATAS,
            json!({ "type_id": id, "label": "Off", "value": "0", "sort": 1 }),
        );

        let listed = host
            .get(&format!("{DATAS}?type_id={id}"))
            .user(&admin())
            .send()
            .data();
        assert_eq!(listed["total"], 2);
        let labels: Vec<&str> = listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["label"].as_str().unwrap())
            .collect();
        assert_eq!(labels, ["Off", "On"], "ordered by sort");

        let renamed = host
            .put(&format!("{TYPES}/{id}"))
            .json(&json!({ "name": "State", "code": "state", "status": 0 }))
            .user(&admin())
            .send();
        assert_eq!(renamed.status, 200, "{}", renamed.text());
        assert_eq!(
            host.get(&format!("{TYPES}/{id}"))
                .user(&admin())
                .send()
                .data()["code"],
            "state"
        );
        assert_eq!(
            host.get(&format!("{DATAS}/{}", on["id"]))
                .user(&admin())
                .send()
                .data()["value"],
            "1"
        );

        // Deleting a type deletes its data, in one transaction.
        let deleted = host.delete(&format!("{TYPES}/{id}")).user(&admin()).send();
        assert_eq!(deleted.data()["deleted"], 1, "{}", deleted.text());
        assert_eq!(
            host.query("SELECT COUNT(*) AS n FROM sys_dict_data", &[])[0]["n"],
            0
        );
        let gone = host.get(&format!("{TYPES}/{id}")).user(&admin()).send();
        assert_eq!(gone.status, 404);
        assert_eq!(gone.msg(), format!("dict type {id} does not exist"));
    }

    #[test]
    fn writes_need_their_permission() {
        let host = dict();
        let body = json!({ "name": "Color", "code": "color" });
        assert_eq!(host.post(TYPES).json(&body).send().status, 401);
        let reader = TestUser::new(2, "reader").permission("sys:dict:edit");
        let refused = host.post(TYPES).json(&body).user(&reader).send();
        assert_eq!(refused.status, 403);
        assert_eq!(refused.msg(), "permission 'sys:dict:add' is required");
        let writer = TestUser::new(3, "writer").permission("sys:dict:add");
        assert_eq!(
            host.post(TYPES).json(&body).user(&writer).send().status,
            200
        );
        // Reading needs a user (the admin app's guard), no permission.
        assert_eq!(host.get(TYPES).send().status, 401);
        let anyone = TestUser::new(4, "anyone");
        assert_eq!(host.get(TYPES).user(&anyone).send().data()["total"], 1);
    }

    #[test]
    fn bad_input_is_refused_naming_the_field() {
        let host = dict();
        create(&host, TYPES, json!({ "name": "Status", "code": "status" }));
        let post = |body: Value| host.post(TYPES).json(&body).user(&admin()).send();

        let taken = post(json!({ "name": "Again", "code": "status" }));
        assert_eq!(taken.status, 409, "{}", taken.text());
        let code = post(json!({ "name": "Bad", "code": "no spaces" }));
        assert_eq!(code.status, 422);
        assert_eq!(
            code.msg(),
            "code: may hold only letters, digits and _ - . :"
        );
        let long = post(json!({ "name": "x".repeat(33), "code": "long" }));
        assert_eq!(long.msg(), "name: must be 1 to 32 characters long");
        let unknown = post(json!({ "name": "A", "code": "a", "colour": "red" }));
        assert_eq!(unknown.status, 422, "{}", unknown.text());
        assert!(
            unknown.msg().contains("unknown field `colour`"),
            "{}",
            unknown.msg()
        );
        let orphan = host
            .post(DATAS)
            .json(&json!({ "type_id": 99, "label": "L", "value": "v" }))
            .user(&admin())
            .send();
        assert_eq!(orphan.msg(), "type_id: dict type 99 does not exist");
        let id = host.get(&format!("{TYPES}/abc")).user(&admin()).send();
        assert_eq!(id.status, 422);
        assert_eq!(id.msg(), "path parameter 'id': 'abc' is not a valid i64");
        let page = host.get(&format!("{TYPES}?page=0")).user(&admin()).send();
        assert_eq!(page.status, 422, "{}", page.text());
    }

    #[test]
    fn lists_page_and_filter() {
        let host = dict();
        for i in 0..25 {
            create(
                &host,
                TYPES,
                json!({ "name": format!("Type {i}"), "code": format!("t{i}"), "status": i % 2 }),
            );
        }
        let second = host
            .get(&format!("{TYPES}?page=2&size=10"))
            .user(&admin())
            .send()
            .data();
        assert_eq!(second["total"], 25);
        assert_eq!(second["items"].as_array().unwrap().len(), 10);
        assert_eq!(second["items"][0]["code"], "t10");
        let enabled = host
            .get(&format!("{TYPES}?status=1&size=200"))
            .user(&admin())
            .send()
            .data();
        assert_eq!(enabled["total"], 12);
        let named = host
            .get(&format!("{TYPES}?name=Type%202"))
            .user(&admin())
            .send()
            .data();
        assert_eq!(named["total"], 6, "Type 2 and Type 20 to 24");
    }

    #[test]
    fn snowflake_mode_writes_the_hosts_ids() {
        let host = TestHost::options()
            .snowflake()
            .start(plugin_api::this_plugin!())
            .expect("dict loads in snowflake mode");
        let created = create(&host, TYPES, json!({ "name": "Status", "code": "status" }));
        assert_eq!(created["id"], 1_000_001);
    }
}
