//! The host's database and key-value store, as a plugin sees them.
//!
//! Statements use `?` placeholders on every backend (the host numbers them
//! for PostgreSQL) and take their parameters as JSON values, never spliced
//! into the SQL. Rows come back as JSON objects, or deserialized into a
//! type.

use std::time::Duration;

use abi_stable::std_types::{ROption, RResult, RStr, RString};
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, value::RawValue};

use crate::{Error, Host};

/// What kind of database error happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// A unique constraint (or primary key) was violated.
    Unique,
    /// A foreign key constraint was violated.
    ForeignKey,
    /// Anything else.
    Other,
}

/// A database error, with the database's message.
#[derive(Debug, Clone)]
pub struct DbError {
    /// The kind.
    pub kind: DbErrorKind,
    /// The database's message.
    pub message: String,
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for DbError {}

impl From<DbError> for Error {
    /// Unique violations answer 409, the rest 500.
    fn from(e: DbError) -> Self {
        match e.kind {
            DbErrorKind::Unique => Error::new(
                409,
                format!("conflicts with an existing row: {}", e.message),
            ),
            DbErrorKind::ForeignKey => {
                Error::new(409, format!("refers to a missing row: {}", e.message))
            }
            DbErrorKind::Other => Error::internal(format!("database error: {}", e.message)),
        }
    }
}

/// A database error as the contract carries it: JSON with a kind
/// (`unique`, `foreign_key` or `other`) and the message.
pub fn wire_error(kind: &str, message: String) -> RString {
    RString::from(serde_json::json!({ "kind": kind, "message": message }).to_string())
}

/// The parameters of a statement as the contract carries them: a JSON
/// array (empty text for none). The error is the wire error to answer.
pub fn wire_params(params: &str) -> Result<Vec<Value>, RString> {
    if params.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(params)
        .map_err(|e| wire_error("other", format!("parameters must be a JSON array: {e}")))
}

#[derive(Deserialize)]
struct WireError {
    kind: String,
    message: String,
}

pub(crate) fn decode_error(text: RString) -> DbError {
    match serde_json::from_str::<WireError>(&text) {
        Ok(w) => DbError {
            kind: match w.kind.as_str() {
                "unique" => DbErrorKind::Unique,
                "foreign_key" => DbErrorKind::ForeignKey,
                _ => DbErrorKind::Other,
            },
            message: w.message,
        },
        Err(_) => DbError {
            kind: DbErrorKind::Other,
            message: text.into_string(),
        },
    }
}

pub(crate) fn other(message: String) -> DbError {
    DbError {
        kind: DbErrorKind::Other,
        message,
    }
}

/// What a statement did.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Executed {
    /// Rows inserted, updated or deleted.
    pub rows_affected: u64,
    /// The id of an inserted row (SQLite, MySQL; on PostgreSQL use
    /// `RETURNING id` with a query instead).
    pub last_insert_id: Option<i64>,
}

/// A time to live as the contract carries it: 0 for none, else at least 1 ms.
pub(crate) fn ttl_millis(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

pub(crate) fn encode(params: &[Value]) -> RString {
    RString::from(Value::Array(params.to_vec()).to_string())
}

impl Host {
    /// The database backend: `sqlite`, `postgresql` or `mysql`.
    pub fn db_backend(&self) -> &'static str {
        (self.services().db_backend())().as_str()
    }

    /// The id for a new row when the host runs in snowflake mode; `None`
    /// when the database assigns ids.
    pub fn next_id(&self) -> Option<i64> {
        (self.services().next_id())().into_option()
    }

    /// The rows of a query as the host's JSON text.
    async fn rows_text(&self, tx: u64, sql: &str, params: &[Value]) -> Result<RString, DbError> {
        match (self.services().sql_query())(
            RStr::from(self.plugin()),
            tx,
            RString::from(sql),
            encode(params),
        )
        .await
        {
            RResult::ROk(rows) => Ok(rows),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }

    async fn raw_query(&self, tx: u64, sql: &str, params: &[Value]) -> Result<Vec<Value>, DbError> {
        let rows = self.rows_text(tx, sql, params).await?;
        serde_json::from_str(&rows).map_err(|e| other(e.to_string()))
    }

    async fn raw_execute(&self, tx: u64, sql: &str, params: &[Value]) -> Result<Executed, DbError> {
        let answer = (self.services().sql_execute())(
            RStr::from(self.plugin()),
            tx,
            RString::from(sql),
            encode(params),
        )
        .await;
        match answer {
            RResult::ROk(done) => serde_json::from_str(&done).map_err(|e| other(e.to_string())),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }

    /// Runs a query; rows as JSON objects.
    pub async fn query_json(&self, sql: &str, params: &[Value]) -> Result<Vec<Value>, DbError> {
        self.raw_query(0, sql, params).await
    }

    /// Runs a query; rows as the host's JSON text (an array of objects),
    /// to pass on into a response without building values.
    pub async fn query_raw(&self, sql: &str, params: &[Value]) -> Result<Box<RawValue>, DbError> {
        let rows = self.rows_text(0, sql, params).await?;
        RawValue::from_string(rows.into_string()).map_err(|e| other(e.to_string()))
    }

    /// Runs a query; rows deserialized into `T`.
    pub async fn query<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<T>, DbError> {
        rows_into(self.raw_query(0, sql, params).await?)
    }

    /// Executes a statement.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<Executed, DbError> {
        self.raw_execute(0, sql, params).await
    }

    /// Inserts one row into `table` and answers its id, in either key
    /// mode on every backend: in snowflake mode the host's next id is
    /// written into the `id` column; with autoincrement the database makes
    /// it (read with `RETURNING id` on PostgreSQL, as the insert id
    /// elsewhere). `table` and the column names are written into the
    /// statement as they are: pass the plugin's own names, never a
    /// request's; the values are bound.
    ///
    /// ```no_run
    /// # async fn example() -> Result<(), plugin_api::DbError> {
    /// use serde_json::json;
    /// let id = plugin_api::host()
    ///     .insert("my_note", &[("title", json!("Hi")), ("body", json!("…"))])
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn insert(&self, table: &str, columns: &[(&str, Value)]) -> Result<i64, DbError> {
        let given = self.next_id();
        let mut names: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
        let mut values: Vec<Value> = columns.iter().map(|(_, v)| v.clone()).collect();
        if let Some(id) = given {
            names.insert(0, "id");
            values.insert(0, Value::from(id));
        }
        let marks = vec!["?"; names.len()].join(", ");
        let sql = format!(
            "INSERT INTO {table} ({}) VALUES ({marks})",
            names.join(", ")
        );
        match (given, self.db_backend()) {
            (Some(id), _) => self.execute(&sql, &values).await.map(|_| id),
            (None, "postgresql") => self
                .query_json(&format!("{sql} RETURNING id"), &values)
                .await?
                .first()
                .and_then(|row| row["id"].as_i64())
                .ok_or_else(|| other(format!("the insert into {table} answered no id"))),
            (None, _) => self
                .execute(&sql, &values)
                .await?
                .last_insert_id
                .ok_or_else(|| other(format!("the insert into {table} answered no id"))),
        }
    }

    /// Begins a transaction; it rolls back unless committed.
    pub async fn begin(&self) -> Result<Transaction, DbError> {
        match (self.services().sql_begin())(RStr::from(self.plugin())).await {
            RResult::ROk(id) => Ok(Transaction {
                host: *self,
                id,
                open: true,
            }),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }

    /// Reads a key of this plugin's key-value namespace.
    pub async fn kv_get(&self, key: &str) -> Result<Option<String>, DbError> {
        match (self.services().kv_get())(RStr::from(self.plugin()), RString::from(key)).await {
            RResult::ROk(ROption::RSome(v)) => Ok(Some(v.into_string())),
            RResult::ROk(ROption::RNone) => Ok(None),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }

    /// Writes a key, with an optional time to live.
    pub async fn kv_set(
        &self,
        key: &str,
        value: &str,
        ttl: Option<Duration>,
    ) -> Result<(), DbError> {
        let ttl_ms = ttl_millis(ttl);
        match (self.services().kv_set())(
            RStr::from(self.plugin()),
            RString::from(key),
            RString::from(value),
            ttl_ms,
        )
        .await
        {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }

    /// Deletes a key; whether it existed.
    pub async fn kv_del(&self, key: &str) -> Result<bool, DbError> {
        match (self.services().kv_del())(RStr::from(self.plugin()), RString::from(key)).await {
            RResult::ROk(existed) => Ok(existed),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }
}

fn rows_into<T: DeserializeOwned>(rows: Vec<Value>) -> Result<Vec<T>, DbError> {
    rows.into_iter()
        .map(|row| serde_json::from_value(row).map_err(|e| other(format!("row does not fit: {e}"))))
        .collect()
}

/// An open transaction. Dropped without [`commit`](Self::commit), it rolls back.
pub struct Transaction {
    host: Host,
    id: u64,
    open: bool,
}

impl Transaction {
    /// Runs a query inside the transaction; rows deserialized into `T`.
    pub async fn query<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<T>, DbError> {
        rows_into(self.host.raw_query(self.id, sql, params).await?)
    }

    /// Runs a query inside the transaction; rows as JSON objects.
    pub async fn query_json(&self, sql: &str, params: &[Value]) -> Result<Vec<Value>, DbError> {
        self.host.raw_query(self.id, sql, params).await
    }

    /// Executes a statement inside the transaction.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<Executed, DbError> {
        self.host.raw_execute(self.id, sql, params).await
    }

    /// Commits.
    pub async fn commit(mut self) -> Result<(), DbError> {
        self.open = false;
        self.finish(true).await
    }

    /// Rolls back.
    pub async fn rollback(mut self) -> Result<(), DbError> {
        self.open = false;
        self.finish(false).await
    }

    async fn finish(&self, commit: bool) -> Result<(), DbError> {
        match (self.host.services().sql_finish())(self.id, commit).await {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(decode_error(e)),
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if self.open {
            // The host rolls back on its own task; the future need not be awaited.
            drop((self.host.services().sql_finish())(self.id, false));
        }
    }
}
