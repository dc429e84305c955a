//! Plugin statements on the driver itself.
//!
//! The host's own tables go through sea-orm; the statements plugins send
//! (the request path) run on sqlx, the driver sea-orm wraps, because the
//! ORM stood in the way there: its pool pinged the server before and after
//! every statement (three round trips for one), and its rows became
//! `serde_json::Value` trees that were then written out again.
//!
//! - **PostgreSQL and MySQL/MariaDB**: connections of a pool of the host's
//!   own (deadpool), handed out and taken back without a ping. A lost
//!   connection shows in the statement that used it, which then runs again
//!   on another. A connection whose statement was dropped half-way (a
//!   plugin stopped waiting for it) is closed, not pooled: sqlx drains a
//!   dropped query's answer before the next statement, but a statement
//!   dropped while its message was being written would leave the
//!   connection in the middle of one. Each connection keeps its prepared
//!   statements.
//! - **SQLite**: the one pool sea-orm opened (a second pool on the same
//!   file would only add writers to wait on, and an in-memory database
//!   exists once, in that pool).
//!
//! Rows are written straight into the JSON text the plugin receives: each
//! column's kind is read once per result from its type, then every value
//! is decoded as that type and written, with the column names of the query
//! in its order (a repeated name keeps its last column).

use std::{
    ops::{Deref, DerefMut},
    str::FromStr,
    time::Duration,
};

use deadpool::managed::{self, Metrics, Object, RecycleResult};
use sea_orm::sqlx::{
    self, Column as _, ConnectOptions as _, Connection, Database, Encode, Row, Type, TypeInfo as _,
    ValueRef as _,
    mysql::{MySql, MySqlConnectOptions, MySqlConnection, MySqlRow},
    postgres::{PgConnectOptions, PgConnection, PgRow, Postgres, types::Oid},
    sqlite::{Sqlite, SqlitePool, SqliteRow},
};
use serde_json::Value;

use super::{Backend, POOL_SIZE, placeholders, retrying_while};

/// How long a statement waits for a free connection.
const WAIT: Duration = Duration::from_secs(30);
/// How long making a connection may take.
const CONNECT: Duration = Duration::from_secs(10);

/// What went wrong with a plugin statement.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The driver's error (the database's own, or the connection's).
    #[error("{0}")]
    Sql(#[from] sqlx::Error),
    /// No connection became free or could be made in time.
    #[error("no database connection: {0}")]
    Pool(String),
}

impl DirectError {
    /// The database's own error, if it is one (for its kind and message).
    pub fn database(&self) -> Option<&dyn sqlx::error::DatabaseError> {
        match self {
            Self::Sql(sqlx::Error::Database(e)) => Some(e.as_ref()),
            _ => None,
        }
    }

    fn lost(&self) -> bool {
        matches!(self, Self::Sql(e) if super::sqlx_connection_lost(e))
    }
}

/// What an executed statement did.
#[derive(Debug, Clone, Copy)]
pub struct Executed {
    /// Rows inserted, updated or deleted.
    pub rows_affected: u64,
    /// The id of the inserted row (SQLite and MySQL; none on PostgreSQL).
    pub last_insert_id: Option<i64>,
}

/// Makes and takes back the connections of a pool: no ping either way.
pub struct Connector<C: Connection> {
    options: <C as Connection>::Options,
}

impl<C: Connection> managed::Manager for Connector<C> {
    type Type = C;
    type Error = sqlx::Error;

    async fn create(&self) -> Result<C, sqlx::Error> {
        self.options.connect().await
    }

    async fn recycle(&self, _: &mut C, _: &Metrics) -> RecycleResult<sqlx::Error> {
        Ok(())
    }
}

type Pool<C> = managed::Pool<Connector<C>>;

/// Runs `$work` with `$c` bound to the checked-out connection `$conn`,
/// which stays out of the pool if the work is dropped half-way or loses
/// the connection.
macro_rules! checked {
    ($conn:expr, |$c:ident| $work:expr) => {{
        let checkout = &mut $conn;
        checkout.clean = false;
        let done = {
            let $c = &mut **checkout;
            $work.await
        }
        .map_err(DirectError::Sql);
        checkout.clean = !done.as_ref().is_err_and(DirectError::lost);
        done
    }};
}

/// The connections plugin statements run on.
pub enum Direct {
    /// PostgreSQL.
    Postgres(Pool<PgConnection>),
    /// MySQL or MariaDB.
    Mysql(Pool<MySqlConnection>),
    /// SQLite: sea-orm's pool.
    Sqlite(SqlitePool),
}

fn pool<C: Connection>(options: <C as Connection>::Options) -> Result<Pool<C>, String> {
    managed::Pool::builder(Connector { options })
        .max_size(POOL_SIZE as usize)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(WAIT))
        .create_timeout(Some(CONNECT))
        .build()
        .map_err(|e| e.to_string())
}

impl Direct {
    /// The pool for `url` (PostgreSQL, MySQL), or sea-orm's SQLite pool.
    /// Connections are made when first needed.
    pub fn open(url: &str, backend: Backend, sqlite: Option<&SqlitePool>) -> Result<Self, String> {
        Ok(match backend {
            Backend::Postgresql => Self::Postgres(pool(
                PgConnectOptions::from_str(url)
                    .map_err(|e| e.to_string())?
                    .disable_statement_logging(),
            )?),
            Backend::Mysql => Self::Mysql(pool(
                MySqlConnectOptions::from_str(url)
                    .map_err(|e| e.to_string())?
                    .disable_statement_logging(),
            )?),
            Backend::Sqlite => {
                Self::Sqlite(sqlite.ok_or("the SQLite database has no pool")?.clone())
            }
        })
    }

    fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgresql,
            Self::Mysql(_) => Backend::Mysql,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// Runs a query (`?` placeholders) and answers its rows as a JSON
    /// array of objects (with `counted`, see [`rows_json`]). A statement
    /// whose connection turns out lost runs again on another, at most once
    /// per pooled connection plus once.
    pub async fn rows(
        &self,
        sql: &str,
        params: &[Value],
        counted: bool,
    ) -> Result<(String, Option<i64>), DirectError> {
        let sql = placeholders(self.backend(), sql);
        retrying_while(DirectError::lost, || self.rows_once(&sql, params, counted)).await
    }

    async fn rows_once(
        &self,
        sql: &str,
        params: &[Value],
        counted: bool,
    ) -> Result<(String, Option<i64>), DirectError> {
        {
            match self {
                Self::Postgres(pool) => {
                    let mut conn = Checkout::get(pool).await?;
                    let rows = checked!(conn, |c| bind(sqlx::query(sql), params).fetch_all(c))?;
                    Ok(rows_json(&rows, counted))
                }
                Self::Mysql(pool) => {
                    let mut conn = Checkout::get(pool).await?;
                    let rows = checked!(conn, |c| bind(sqlx::query(sql), params).fetch_all(c))?;
                    Ok(rows_json(&rows, counted))
                }
                Self::Sqlite(pool) => {
                    let rows = bind(sqlx::query(sql), params).fetch_all(pool).await?;
                    Ok(rows_json(&rows, counted))
                }
            }
        }
    }

    /// Executes a statement (`?` placeholders).
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<Executed, DirectError> {
        let sql = placeholders(self.backend(), sql);
        retrying_while(DirectError::lost, || self.execute_once(&sql, params)).await
    }

    async fn execute_once(&self, sql: &str, params: &[Value]) -> Result<Executed, DirectError> {
        {
            match self {
                Self::Postgres(pool) => {
                    let mut conn = Checkout::get(pool).await?;
                    let done = checked!(conn, |c| bind(sqlx::query(sql), params).execute(c))?;
                    Ok(done.executed())
                }
                Self::Mysql(pool) => {
                    let mut conn = Checkout::get(pool).await?;
                    let done = checked!(conn, |c| bind(sqlx::query(sql), params).execute(c))?;
                    Ok(done.executed())
                }
                Self::Sqlite(pool) => {
                    let done = bind(sqlx::query(sql), params).execute(pool).await?;
                    Ok(Executed {
                        rows_affected: done.rows_affected(),
                        last_insert_id: Some(done.last_insert_rowid()),
                    })
                }
            }
        }
    }

    /// Begins a transaction on a connection of its own.
    pub async fn begin(&self) -> Result<Transaction, DirectError> {
        retrying_while(DirectError::lost, || self.begin_once()).await
    }

    async fn begin_once(&self) -> Result<Transaction, DirectError> {
        {
            Ok(match self {
                Self::Postgres(pool) => {
                    let mut conn = Checkout::get(pool).await?;
                    checked!(conn, |c| sqlx::Executor::execute(c, "BEGIN"))?;
                    Transaction::Postgres(conn)
                }
                Self::Mysql(pool) => {
                    let mut conn = Checkout::get(pool).await?;
                    checked!(conn, |c| sqlx::Executor::execute(c, "BEGIN"))?;
                    Transaction::Mysql(conn)
                }
                Self::Sqlite(pool) => Transaction::Sqlite(pool.begin().await?),
            })
        }
    }
}

/// An open transaction. Dropped unfinished, it rolls back: on SQLite by
/// sqlx, elsewhere by closing its connection.
pub enum Transaction {
    /// On a PostgreSQL connection.
    Postgres(Checkout<PgConnection>),
    /// On a MySQL or MariaDB connection.
    Mysql(Checkout<MySqlConnection>),
    /// On SQLite.
    Sqlite(sqlx::Transaction<'static, Sqlite>),
}

impl Transaction {
    /// Runs a query inside the transaction (never again on failure); the
    /// answer is [`Direct::rows`]'.
    pub async fn rows(
        &mut self,
        sql: &str,
        params: &[Value],
        counted: bool,
    ) -> Result<(String, Option<i64>), DirectError> {
        Ok(match self {
            Self::Postgres(conn) => {
                let sql = placeholders(Backend::Postgresql, sql);
                rows_json(
                    &checked!(*conn, |c| bind(sqlx::query(&sql), params).fetch_all(c))?,
                    counted,
                )
            }
            Self::Mysql(conn) => rows_json(
                &checked!(*conn, |c| bind(sqlx::query(sql), params).fetch_all(c))?,
                counted,
            ),
            Self::Sqlite(tx) => rows_json(
                &bind(sqlx::query(sql), params).fetch_all(&mut **tx).await?,
                counted,
            ),
        })
    }

    /// Executes a statement inside the transaction.
    pub async fn execute(&mut self, sql: &str, params: &[Value]) -> Result<Executed, DirectError> {
        match self {
            Self::Postgres(conn) => {
                let sql = placeholders(Backend::Postgresql, sql);
                let done = checked!(*conn, |c| bind(sqlx::query(&sql), params).execute(c))?;
                Ok(done.executed())
            }
            Self::Mysql(conn) => {
                let done = checked!(*conn, |c| bind(sqlx::query(sql), params).execute(c))?;
                Ok(done.executed())
            }
            Self::Sqlite(tx) => {
                let done = bind(sqlx::query(sql), params).execute(&mut **tx).await?;
                Ok(Executed {
                    rows_affected: done.rows_affected(),
                    last_insert_id: Some(done.last_insert_rowid()),
                })
            }
        }
    }

    /// Commits (`commit`) or rolls back; the connection goes back to the
    /// pool only when that succeeded.
    pub async fn finish(self, commit: bool) -> Result<(), DirectError> {
        let end = if commit { "COMMIT" } else { "ROLLBACK" };
        match self {
            Self::Postgres(mut conn) => {
                checked!(conn, |c| sqlx::Executor::execute(c, end)).map(drop)
            }
            Self::Mysql(mut conn) => checked!(conn, |c| sqlx::Executor::execute(c, end)).map(drop),
            Self::Sqlite(tx) if commit => Ok(tx.commit().await?),
            Self::Sqlite(tx) => Ok(tx.rollback().await?),
        }
    }
}

/// A pooled connection that goes back to the pool only after a statement
/// on it finished without losing it; otherwise (dropped half-way, or the
/// connection lost) it is closed.
pub struct Checkout<C: Connection> {
    conn: Option<Object<Connector<C>>>,
    clean: bool,
}

impl<C: Connection> Checkout<C> {
    async fn get(pool: &Pool<C>) -> Result<Self, DirectError> {
        let conn = pool.get().await.map_err(|e| match e {
            managed::PoolError::Backend(e) => DirectError::Sql(e),
            managed::PoolError::Timeout(_) => {
                DirectError::Pool(format!("none became free within {} s", WAIT.as_secs()))
            }
            other => DirectError::Pool(other.to_string()),
        })?;
        Ok(Self {
            conn: Some(conn),
            clean: true,
        })
    }
}

impl<C: Connection> Deref for Checkout<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.conn.as_ref().expect("a checked-out connection")
    }
}

impl<C: Connection> DerefMut for Checkout<C> {
    fn deref_mut(&mut self) -> &mut C {
        self.conn.as_mut().expect("a checked-out connection")
    }
}

impl<C: Connection> Drop for Checkout<C> {
    fn drop(&mut self) {
        if !self.clean
            && let Some(conn) = self.conn.take()
        {
            // Out of the pool; dropping it closes the socket, and the
            // server rolls back whatever it had open.
            drop(Object::take(conn));
        }
    }
}

/// A parameter's `NULL` without a type of its own: PostgreSQL infers it
/// from where the parameter stands (a text `NULL` would be refused by a
/// `BIGINT` column); MySQL and SQLite take any `NULL`.
struct Null;

impl Type<Postgres> for Null {
    fn type_info() -> sqlx::postgres::PgTypeInfo {
        // OID 0: unspecified, as the protocol says, so the server decides.
        sqlx::postgres::PgTypeInfo::with_oid(Oid(0))
    }
}

impl Encode<'_, Postgres> for Null {
    fn encode_by_ref(
        &self,
        _buf: &mut sqlx::postgres::PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

impl Type<MySql> for Null {
    fn type_info() -> sqlx::mysql::MySqlTypeInfo {
        <&str as Type<MySql>>::type_info()
    }
}

impl Encode<'_, MySql> for Null {
    fn encode_by_ref(
        &self,
        _buf: &mut Vec<u8>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        Ok(sqlx::encode::IsNull::Yes)
    }
}

impl Type<Sqlite> for Null {
    fn type_info() -> sqlx::sqlite::SqliteTypeInfo {
        <&str as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Null {
    fn encode_by_ref(
        &self,
        _buf: &mut Vec<sqlx::sqlite::SqliteArgumentValue<'q>>,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        // The arguments write the NULL for a value that says it is one.
        Ok(sqlx::encode::IsNull::Yes)
    }
}

/// The parameters bound to `query`: JSON `null`, booleans, whole numbers
/// (64-bit), other numbers (double), strings, and arrays or objects as
/// their JSON text.
fn bind<'q, DB>(
    mut query: sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>,
    params: &'q [Value],
) -> sqlx::query::Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    bool: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    f64: Encode<'q, DB> + Type<DB>,
    &'q str: Encode<'q, DB> + Type<DB>,
    Null: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
{
    for param in params {
        query = match param {
            Value::Null => query.bind(Null),
            Value::Bool(b) => query.bind(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => query.bind(i),
                None => query.bind(n.as_f64().unwrap_or_default()),
            },
            Value::String(s) => query.bind(s.as_str()),
            other => query.bind(other.to_string()),
        };
    }
    query
}

/// What a statement's result says it did.
trait Inserted {
    fn executed(&self) -> Executed;
}

impl Inserted for sqlx::postgres::PgQueryResult {
    fn executed(&self) -> Executed {
        // PostgreSQL reports no insert id: `RETURNING id` with a query.
        Executed {
            rows_affected: self.rows_affected(),
            last_insert_id: None,
        }
    }
}

impl Inserted for sqlx::mysql::MySqlQueryResult {
    fn executed(&self) -> Executed {
        Executed {
            rows_affected: self.rows_affected(),
            last_insert_id: i64::try_from(self.last_insert_id()).ok(),
        }
    }
}

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    I8,
    I16,
    I32,
    I64,
    U8,
    U16,
    U32,
    U64,
    Oid,
    F32,
    F64,
    Text,
    Json,
    /// As an array of byte values.
    Bytes,
    /// A date and time without a zone, as `YYYY-MM-DD HH:MM:SS[.f]` (what
    /// SQLite's `CURRENT_TIMESTAMP` writes, so every backend answers alike).
    DateTime,
    /// A date and time with a zone, as RFC 3339 in UTC.
    DateTimeUtc,
    /// A date, `YYYY-MM-DD`.
    Date,
    /// A time of day, `HH:MM:SS[.f]`.
    Time,
    /// SQLite: by the storage class of each value.
    Dynamic,
    /// A type the host does not read (left out of the row).
    Skip,
}

/// A driver's rows, written as JSON.
trait JsonRow: Row {
    /// How the column `column` is written.
    fn kind(column: &<Self::Database as Database>::Column) -> Kind;

    /// Writes the value at `i` as `kind` (`null` when it cannot be read so).
    fn write(&self, i: usize, kind: Kind, out: &mut Vec<u8>);

    /// The whole number at `i` (a count).
    fn count(&self, i: usize) -> Option<i64>;
}

/// The kind of the first check that matched, in sea-orm's order.
fn first_match(checks: impl IntoIterator<Item = (bool, Kind)>) -> Kind {
    checks
        .into_iter()
        .find_map(|(matches, kind)| matches.then_some(kind))
        .unwrap_or(Kind::Skip)
}

/// Whether `T` is the column's very type.
fn is<DB: Database, T: Type<DB>>(info: &DB::TypeInfo) -> bool {
    T::type_info() == *info
}

/// Writes the date and time kinds (`null` for anything else).
fn put_time<R>(row: &R, i: usize, kind: Kind, out: &mut Vec<u8>)
where
    R: Row,
    usize: sqlx::ColumnIndex<R>,
    for<'r> Option<chrono::NaiveDateTime>: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<chrono::DateTime<chrono::Utc>>:
        sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<chrono::NaiveDate>: sqlx::Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<chrono::NaiveTime>: sqlx::Decode<'r, R::Database> + Type<R::Database>,
{
    let text = match kind {
        Kind::DateTime => row
            .try_get::<Option<chrono::NaiveDateTime>, _>(i)
            .map(|t| t.map(|t| t.format("%Y-%m-%d %H:%M:%S%.f").to_string())),
        Kind::DateTimeUtc => row
            .try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(i)
            .map(|t| t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))),
        Kind::Date => row
            .try_get::<Option<chrono::NaiveDate>, _>(i)
            .map(|t| t.map(|t| t.format("%Y-%m-%d").to_string())),
        Kind::Time => row
            .try_get::<Option<chrono::NaiveTime>, _>(i)
            .map(|t| t.map(|t| t.format("%H:%M:%S%.f").to_string())),
        _ => Ok(None),
    };
    put(out, text);
}

/// Writes `value` as JSON (`null` for a value that cannot be decoded).
fn put<T: serde::Serialize>(out: &mut Vec<u8>, value: Result<Option<T>, sqlx::Error>) {
    let _ = serde_json::to_writer(&mut *out, &value.ok().flatten());
}

macro_rules! write_typed {
    ($row:expr, $i:expr, $kind:expr, $out:expr, { $($k:ident => $t:ty),* $(,)? }, $rest:expr) => {
        match $kind {
            $(Kind::$k => put($out, $row.try_get::<Option<$t>, _>($i)),)*
            _ => $rest,
        }
    };
}

impl JsonRow for PgRow {
    fn count(&self, i: usize) -> Option<i64> {
        self.try_get::<i64, _>(i).ok()
    }

    fn kind(column: &sqlx::postgres::PgColumn) -> Kind {
        let info = column.type_info();
        let exact = [
            (is::<Postgres, bool>(info), Kind::Bool),
            (is::<Postgres, i8>(info), Kind::I8),
            (is::<Postgres, i16>(info), Kind::I16),
            (is::<Postgres, i32>(info), Kind::I32),
            (is::<Postgres, i64>(info), Kind::I64),
            (is::<Postgres, Oid>(info), Kind::Oid),
            (is::<Postgres, f32>(info), Kind::F32),
            (is::<Postgres, f64>(info), Kind::F64),
            (<Value as Type<Postgres>>::compatible(info), Kind::Json),
            (<String as Type<Postgres>>::compatible(info), Kind::Text),
            (<Vec<u8> as Type<Postgres>>::compatible(info), Kind::Bytes),
            (is::<Postgres, chrono::NaiveDateTime>(info), Kind::DateTime),
            (
                is::<Postgres, chrono::DateTime<chrono::Utc>>(info),
                Kind::DateTimeUtc,
            ),
            (is::<Postgres, chrono::NaiveDate>(info), Kind::Date),
            (is::<Postgres, chrono::NaiveTime>(info), Kind::Time),
        ];
        first_match(exact)
    }

    fn write(&self, i: usize, kind: Kind, out: &mut Vec<u8>) {
        write_typed!(self, i, kind, out, {
            Bool => bool, I8 => i8, I16 => i16, I32 => i32, I64 => i64,
            F32 => f32, F64 => f64, Text => String, Json => Value, Bytes => Vec<u8>,
        }, match kind {
            Kind::Oid => put(out, self.try_get::<Option<Oid>, _>(i).map(|o| o.map(|o| o.0))),
            Kind::DateTime | Kind::DateTimeUtc | Kind::Date | Kind::Time => put_time(self, i, kind, out),
            _ => out.extend_from_slice(b"null"),
        })
    }
}

impl JsonRow for MySqlRow {
    fn count(&self, i: usize) -> Option<i64> {
        self.try_get::<i64, _>(i).ok()
    }

    fn kind(column: &sqlx::mysql::MySqlColumn) -> Kind {
        let info = column.type_info();
        let exact = [
            (is::<MySql, bool>(info), Kind::Bool),
            (is::<MySql, i8>(info), Kind::I8),
            (is::<MySql, i16>(info), Kind::I16),
            (is::<MySql, i32>(info), Kind::I32),
            (is::<MySql, i64>(info), Kind::I64),
            (is::<MySql, u8>(info), Kind::U8),
            (is::<MySql, u16>(info), Kind::U16),
            (is::<MySql, u32>(info), Kind::U32),
            (is::<MySql, u64>(info), Kind::U64),
            (is::<MySql, f32>(info), Kind::F32),
            (is::<MySql, f64>(info), Kind::F64),
            (is::<MySql, chrono::NaiveDateTime>(info), Kind::DateTime),
            (
                is::<MySql, chrono::DateTime<chrono::Utc>>(info),
                Kind::DateTimeUtc,
            ),
            (is::<MySql, chrono::NaiveDate>(info), Kind::Date),
            (is::<MySql, chrono::NaiveTime>(info), Kind::Time),
            (is::<MySql, String>(info), Kind::Text),
            (<String as Type<MySql>>::compatible(info), Kind::Text),
            (<Value as Type<MySql>>::compatible(info), Kind::Json),
            (<Vec<u8> as Type<MySql>>::compatible(info), Kind::Bytes),
        ];
        first_match(exact)
    }

    fn write(&self, i: usize, kind: Kind, out: &mut Vec<u8>) {
        write_typed!(self, i, kind, out, {
            Bool => bool, I8 => i8, I16 => i16, I32 => i32, I64 => i64,
            U8 => u8, U16 => u16, U32 => u32, U64 => u64,
            F32 => f32, F64 => f64, Text => String, Json => Value, Bytes => Vec<u8>,
        }, match kind {
            Kind::DateTime | Kind::DateTimeUtc | Kind::Date | Kind::Time => put_time(self, i, kind, out),
            _ => out.extend_from_slice(b"null"),
        })
    }
}

impl JsonRow for SqliteRow {
    fn count(&self, i: usize) -> Option<i64> {
        self.try_get::<i64, _>(i).ok()
    }

    fn kind(column: &sqlx::sqlite::SqliteColumn) -> Kind {
        let info = column.type_info();
        if is::<Sqlite, bool>(info) {
            Kind::Bool
        } else if is::<Sqlite, Vec<u8>>(info) {
            Kind::Bytes
        } else {
            // Declared integer, real and text columns may hold any value
            // (and expressions have no declared type): by the value.
            Kind::Dynamic
        }
    }

    fn write(&self, i: usize, kind: Kind, out: &mut Vec<u8>) {
        let class = match self.try_get_raw(i) {
            Ok(value) if value.is_null() => return out.extend_from_slice(b"null"),
            Ok(value) => value.type_info().name().to_owned(),
            Err(_) => return out.extend_from_slice(b"null"),
        };
        match (kind, class.as_str()) {
            (Kind::Bool, "INTEGER" | "BOOLEAN") => put(out, self.try_get::<Option<bool>, _>(i)),
            (Kind::Bytes, "BLOB") => put(out, self.try_get::<Option<Vec<u8>>, _>(i)),
            (_, "INTEGER" | "BOOLEAN") => put(out, self.try_get::<Option<i64>, _>(i)),
            (_, "REAL") => put(out, self.try_get::<Option<f64>, _>(i)),
            (_, "BLOB") => put(
                out,
                self.try_get::<Option<Vec<u8>>, _>(i)
                    .map(|b| b.map(|b| String::from_utf8_lossy(&b).into_owned())),
            ),
            _ => put(out, self.try_get::<Option<String>, _>(i)),
        }
    }
}

/// `rows` as a JSON array of objects. With `counted`, the last column is a
/// count over the whole result (`COUNT(*) OVER ()`): it is left out of the
/// objects and answered beside them (`None` without rows).
fn rows_json<R: JsonRow>(rows: &[R], counted: bool) -> (String, Option<i64>) {
    let Some(first) = rows.first() else {
        return ("[]".to_owned(), None);
    };
    let columns = first.columns();
    let shown = columns.len() - usize::from(counted && !columns.is_empty());
    let total = counted.then(|| first.count(shown)).flatten();
    let columns = &columns[..shown];
    // Each written column: its index, kind and name as a JSON key.
    let written: Vec<(usize, Kind, String)> = columns
        .iter()
        .enumerate()
        .filter(|(i, c)| {
            !columns[i + 1..]
                .iter()
                .any(|later| later.name() == c.name())
        })
        .map(|(i, c)| (i, R::kind(c), c.name()))
        .filter(|(_, kind, _)| *kind != Kind::Skip)
        .map(|(i, kind, name)| {
            let key = serde_json::to_string(name).expect("a string is JSON");
            (i, kind, key)
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len() * (2 + written.len() * 24) + 2);
    out.push(b'[');
    for (n, row) in rows.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.push(b'{');
        for (k, (i, kind, key)) in written.iter().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            out.extend_from_slice(key.as_bytes());
            out.push(b':');
            row.write(*i, *kind, &mut out);
        }
        out.push(b'}');
    }
    out.push(b']');
    let text = String::from_utf8(out).expect("serde_json writes UTF-8");
    (text, total)
}
