//! The host's database: connection (SQLite, PostgreSQL or MySQL/MariaDB,
//! chosen by `DATABASE_URL`), schema migrations, primary-key mode.

pub mod direct;
pub mod entity;
pub mod lock;
pub mod split;

pub use lock::{DbLock, DbLockError};

use std::{
    path::Path,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use sea_orm::{
    ActiveModelBehavior, ActiveModelTrait, ConnectOptions, ConnectionTrait, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, IntoActiveModel, PrimaryKeyTrait, Statement, TransactionTrait,
};

/// A database backend plughost supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite (the default: a file in the data dir).
    Sqlite,
    /// PostgreSQL.
    Postgresql,
    /// MySQL or MariaDB.
    Mysql,
}

impl Backend {
    /// The name used in manifests and script paths.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgresql => "postgresql",
            Self::Mysql => "mysql",
        }
    }

    fn from_db(backend: DbBackend) -> Self {
        match backend {
            DbBackend::Sqlite => Self::Sqlite,
            DbBackend::Postgres => Self::Postgresql,
            DbBackend::MySql => Self::Mysql,
        }
    }

    /// How the backend escapes quotes in strings (for the script splitter).
    pub fn escapes(self) -> split::Escapes {
        match self {
            Self::Mysql => split::Escapes::Backslash,
            _ => split::Escapes::Standard,
        }
    }
}

/// How primary keys are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PkMode {
    /// The database assigns increasing integers.
    Autoincrement,
    /// The host assigns 64-bit snowflake ids (time, worker, sequence).
    Snowflake,
}

impl PkMode {
    /// The mode's name, as settings and messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Autoincrement => "autoincrement",
            Self::Snowflake => "snowflake",
        }
    }
}

/// The database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Connecting failed.
    #[error("cannot connect to the database {url}: {message}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The driver's message.
        message: String,
    },
    /// A migration failed; the database is as it was before it.
    #[error("schema migration {name} failed at statement {statement} (line {line}): {message}")]
    Migration {
        /// The migration.
        name: String,
        /// The statement's number in its script (1-based).
        statement: usize,
        /// Its line.
        line: usize,
        /// The database's message.
        message: String,
    },
    /// The database was set up in another primary-key mode.
    #[error(
        "the database was created with {found} primary keys but the host runs with {expected}; set PLUGHOST_PK_MODE={found}"
    )]
    PkMode {
        /// The configured mode.
        expected: &'static str,
        /// The mode recorded in the database.
        found: String,
    },
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] DbErr),
    /// The migration lock could not be taken.
    #[error("cannot migrate the schema: {0}")]
    Lock(String),
}

/// The host's database.
pub struct Db {
    conn: DatabaseConnection,
    /// The connections plugin statements run on.
    direct: direct::Direct,
    url: String,
    backend: Backend,
    pk_mode: PkMode,
    ids: Snowflake,
}

/// The database lock schema migrations take.
const MIGRATION_LOCK: &str = "plughost:migrate";
/// How long an instance waits for another one's migrations.
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

/// The file of a SQLite database URL (`None`: another backend, or an
/// in-memory database).
fn sqlite_file(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .map(|rest| rest.split('?').next().unwrap_or_default())
        .filter(|p| !p.is_empty() && !p.contains(":memory:"))
}

/// On SQLite, processes sharing one database file take turns migrating
/// through a lock file beside it (`<file>.migrate.lock`); none for an
/// in-memory database.
async fn sqlite_migration_lock(url: &str) -> Result<Option<std::fs::File>, DbError> {
    let Some(path) = sqlite_file(url) else {
        return Ok(None);
    };
    let lock_path = std::path::PathBuf::from(format!("{path}.migrate.lock"));
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok::<_, std::io::Error>(file)
    })
    .await
    .map_err(|e| DbError::Lock(e.to_string()))?
    .map(Some)
    .map_err(|e| DbError::Lock(format!("the lock file beside {path}: {e}")))
}

/// Hides the password of a database URL for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Whether `e` says the statement's connection was lost: closed by the
/// server (PostgreSQL's SQLSTATE class 08 and 57P01-57P03, a server
/// restart or `pg_terminate_backend`), or broken on the way (an I/O error,
/// MariaDB's "server has gone away").
pub fn connection_lost(e: &DbErr) -> bool {
    use sea_orm::RuntimeErr;
    match e {
        DbErr::Conn(RuntimeErr::SqlxError(e))
        | DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e)) => sqlx_connection_lost(e),
        _ => false,
    }
}

/// [`connection_lost`] for the driver's own error.
pub fn sqlx_connection_lost(e: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx;
    match e {
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

/// Connections the pool keeps.
const POOL_SIZE: u32 = 16;

/// Runs `work` again while its connection turns out lost (the pool hands
/// out connections without pinging them first). A lost connection is
/// closed when it goes back, so after a database restart each pooled one
/// fails once and the statement ends on a fresh connection: at most one
/// try per pooled connection, plus the fresh one. A statement inside a
/// transaction is never run again this way: its transaction is gone too.
pub async fn retrying<T, F, Fut>(work: F) -> Result<T, DbErr>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, DbErr>>,
{
    retrying_while(connection_lost, work).await
}

/// [`retrying`] for any error that `lost` tells apart (sea-orm's, or the
/// plugin statements' own).
pub(crate) async fn retrying_while<T, E, F, Fut>(lost: impl Fn(&E) -> bool, work: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut tries = 1;
    loop {
        match work().await {
            Err(e) if lost(&e) && tries <= POOL_SIZE => {
                tracing::info!(
                    "a database connection was lost ({e}); running the statement again on another"
                );
                tries += 1;
            }
            done => return done,
        }
    }
}

/// The SQLite URL of the default database file in `data_dir`.
pub fn default_url(data_dir: &Path) -> String {
    format!(
        "sqlite://{}?mode=rwc",
        data_dir.join("plughost.db").display()
    )
}

impl Db {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str, pk_mode: PkMode, worker_id: u16) -> Result<Self, DbError> {
        let mut options = ConnectOptions::new(url.to_owned());
        // No ping before a connection is handed out (a round trip per
        // statement): a lost connection shows in the statement that uses
        // it, which then runs again on another (`retrying`).
        options
            .max_connections(POOL_SIZE)
            .connect_timeout(Duration::from_secs(10))
            .test_before_acquire(false)
            .sqlx_logging(false);
        let conn = sea_orm::Database::connect(options)
            .await
            .map_err(|e| DbError::Connect {
                url: redact_url(url),
                message: e.to_string(),
            })?;
        let backend = Backend::from_db(conn.get_database_backend());
        if backend == Backend::Sqlite {
            // Several instances (and the CLI) may share one SQLite file.
            conn.execute_unprepared("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")
                .await?;
        }
        let direct = direct::Direct::open(
            url,
            backend,
            (backend == Backend::Sqlite).then(|| conn.get_sqlite_connection_pool()),
        )
        .map_err(|message| DbError::Connect {
            url: redact_url(url),
            message,
        })?;
        let db = Self {
            conn,
            direct,
            url: url.to_owned(),
            backend,
            pk_mode,
            ids: Snowflake::new(worker_id),
        };
        // Instances starting together on a fresh database take turns.
        match db.lock(MIGRATION_LOCK, MIGRATION_WAIT).await {
            Some(lock) => {
                let lock = lock.map_err(|e| DbError::Lock(e.to_string()))?;
                let migrated = db.migrate().await;
                if let Err(e) = lock.release().await {
                    tracing::warn!("schema migration lock: {e}");
                }
                migrated?;
            }
            None => {
                let _file_lock = sqlite_migration_lock(url).await?;
                db.migrate().await?;
            }
        }
        Ok(db)
    }

    /// Takes the database lock `name`, waiting up to `wait`: a PostgreSQL
    /// advisory lock or a MySQL/MariaDB `GET_LOCK`, held by a connection of
    /// its own. `None` on SQLite, which has no such lock.
    pub async fn lock(&self, name: &str, wait: Duration) -> Option<Result<DbLock, DbLockError>> {
        match self.backend {
            Backend::Sqlite => None,
            backend => Some(DbLock::acquire(&self.url, backend, name, wait).await),
        }
    }

    /// The connection pool.
    pub fn conn(&self) -> &DatabaseConnection {
        &self.conn
    }

    /// The connections plugin statements run on (see [`direct`]).
    pub fn direct(&self) -> &direct::Direct {
        &self.direct
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The primary-key mode.
    pub fn pk_mode(&self) -> PkMode {
        self.pk_mode
    }

    /// The id a new row gets from the host: `Some` in snowflake mode,
    /// `None` when the database assigns it.
    pub fn next_id(&self) -> Option<i64> {
        (self.pk_mode == PkMode::Snowflake).then(|| self.ids.next())
    }

    /// Inserts a row whose key column `id` the database assigns, or in
    /// snowflake mode the host; answers the new id. (With the id given,
    /// MySQL reports no insert id, so none is asked for.)
    pub async fn insert_keyed<A>(
        &self,
        mut model: A,
        id: <A::Entity as EntityTrait>::Column,
    ) -> Result<i64, DbErr>
    where
        A: ActiveModelTrait + ActiveModelBehavior + Send,
        <A::Entity as EntityTrait>::Model: IntoActiveModel<A>,
        <<A::Entity as EntityTrait>::PrimaryKey as PrimaryKeyTrait>::ValueType: Into<i64>,
    {
        match self.next_id() {
            Some(next) => {
                model.set(id, next.into());
                A::Entity::insert(model)
                    .exec_without_returning(&self.conn)
                    .await?;
                Ok(next)
            }
            None => Ok(A::Entity::insert(model)
                .exec(&self.conn)
                .await?
                .last_insert_id
                .into()),
        }
    }

    /// A statement with `?` placeholders (numbered for PostgreSQL) and
    /// bound values, for this connection or a transaction of it.
    pub fn statement(
        &self,
        sql: &str,
        values: impl IntoIterator<Item = sea_orm::Value>,
    ) -> Statement {
        Statement::from_sql_and_values(
            self.conn.get_database_backend(),
            placeholders(self.backend, sql),
            values,
        )
    }

    /// A lock file for `purpose` beside the SQLite database file
    /// (`<file>.<purpose>.lock`), shared by every process on that file;
    /// `None` for other backends and in-memory databases.
    pub fn sqlite_lock_file(&self, purpose: &str) -> Option<std::path::PathBuf> {
        sqlite_file(&self.url)
            .map(|path| std::path::PathBuf::from(format!("{path}.{purpose}.lock")))
    }

    /// Runs a query with bound values and returns its rows (once more on
    /// a fresh connection if its connection was lost).
    pub async fn query(
        &self,
        sql: &str,
        values: Vec<sea_orm::Value>,
    ) -> Result<Vec<sea_orm::QueryResult>, DbErr> {
        let stmt = Statement::from_sql_and_values(self.conn.get_database_backend(), sql, values);
        retrying(|| self.conn.query_all(stmt.clone())).await
    }

    /// Executes a statement outside a transaction (once more on a fresh
    /// connection if its connection was lost).
    pub async fn execute(&self, stmt: Statement) -> Result<sea_orm::ExecResult, DbErr> {
        retrying(|| self.conn.execute(stmt.clone())).await
    }

    async fn migrate(&self) -> Result<(), DbError> {
        self.conn
            .execute_unprepared(
                "CREATE TABLE IF NOT EXISTS plughost_migration (\
                 version BIGINT NOT NULL PRIMARY KEY, \
                 name VARCHAR(128) NOT NULL, \
                 pk_mode VARCHAR(16) NOT NULL)",
            )
            .await?;
        let applied = self
            .query(
                "SELECT version, pk_mode FROM plughost_migration ORDER BY version",
                vec![],
            )
            .await?;
        let mut done = Vec::new();
        for row in applied {
            let version: i64 = row.try_get("", "version")?;
            let mode: String = row.try_get("", "pk_mode")?;
            if mode != self.pk_mode.name() {
                return Err(DbError::PkMode {
                    expected: self.pk_mode.name(),
                    found: mode,
                });
            }
            done.push(version);
        }
        for (version, name, script) in migrations(self.backend, self.pk_mode) {
            if done.contains(&version) {
                continue;
            }
            self.run_migration(version, name, script).await?;
            tracing::info!(
                migration = name,
                backend = self.backend.name(),
                "schema migrated"
            );
        }
        Ok(())
    }

    /// Runs one migration and records it, in one transaction (MySQL commits
    /// DDL implicitly, so there a failed migration may leave earlier
    /// statements of it applied; the message names the statement).
    async fn run_migration(&self, version: i64, name: &str, script: &str) -> Result<(), DbError> {
        let statements =
            split::split(script, self.backend.escapes()).map_err(|e| DbError::Migration {
                name: name.to_owned(),
                statement: 0,
                line: e.line,
                message: e.to_string(),
            })?;
        let txn = self.conn.begin().await?;
        for (i, statement) in statements.iter().enumerate() {
            if let Err(e) = txn.execute_unprepared(&statement.text).await {
                return Err(DbError::Migration {
                    name: name.to_owned(),
                    statement: i + 1,
                    line: statement.line,
                    message: e.to_string(),
                });
            }
        }
        txn.execute(Statement::from_sql_and_values(
            self.conn.get_database_backend(),
            placeholders(
                self.backend,
                "INSERT INTO plughost_migration (version, name, pk_mode) VALUES (?, ?, ?)",
            ),
            [version.into(), name.into(), self.pk_mode.name().into()],
        ))
        .await?;
        txn.commit().await?;
        Ok(())
    }
}

/// Rewrites `?` placeholders to `$1, $2, …` for PostgreSQL, leaving `?`
/// inside quotes and comments alone.
pub fn placeholders(backend: Backend, sql: &str) -> String {
    if backend != Backend::Postgresql {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '-') if chars.peek() == Some(&'-') => quote = Some('\n'),
            (None, '?') => {
                n += 1;
                out.push_str(&format!("${n}"));
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

/// The host's migrations for a backend and key mode, in order.
fn migrations(backend: Backend, pk_mode: PkMode) -> Vec<(i64, &'static str, &'static str)> {
    let init = match (backend, pk_mode) {
        (Backend::Sqlite, PkMode::Autoincrement) => include_str!("../../../sql/sqlite/init.sql"),
        (Backend::Sqlite, PkMode::Snowflake) => {
            include_str!("../../../sql/sqlite/init_snowflake.sql")
        }
        (Backend::Postgresql, PkMode::Autoincrement) => {
            include_str!("../../../sql/postgresql/init.sql")
        }
        (Backend::Postgresql, PkMode::Snowflake) => {
            include_str!("../../../sql/postgresql/init_snowflake.sql")
        }
        (Backend::Mysql, PkMode::Autoincrement) => include_str!("../../../sql/mysql/init.sql"),
        (Backend::Mysql, PkMode::Snowflake) => {
            include_str!("../../../sql/mysql/init_snowflake.sql")
        }
    };
    /// A numbered migration: its name and the script for `backend`.
    macro_rules! numbered {
        ($version:literal, $name:literal) => {
            (
                $version,
                $name,
                match backend {
                    Backend::Sqlite => include_str!(concat!("../../../sql/sqlite/", $name, ".sql")),
                    Backend::Postgresql => {
                        include_str!(concat!("../../../sql/postgresql/", $name, ".sql"))
                    }
                    Backend::Mysql => include_str!(concat!("../../../sql/mysql/", $name, ".sql")),
                },
            )
        };
    }
    vec![
        (1, "0001_init", init),
        numbered!(2, "0002_plugins"),
        numbered!(3, "0003_flags"),
        numbered!(4, "0004_safety"),
        numbered!(5, "0005_flag_history"),
        numbered!(6, "0006_packages"),
        numbered!(7, "0007_instances"),
        numbered!(8, "0008_desired"),
        numbered!(9, "0009_instance_local"),
        numbered!(10, "0010_plugin_events"),
        numbered!(11, "0011_user_profile"),
        numbered!(12, "0012_user_identity"),
        numbered!(13, "0013_login_failures"),
        numbered!(14, "0014_library_checks"),
    ]
}

/// 64-bit snowflake ids: 41 bits of milliseconds since 2020-01-01, 10 bits
/// of worker id, 12 bits of sequence.
struct Snowflake {
    worker: i64,
    state: Mutex<(i64, i64)>,
}

const SNOWFLAKE_EPOCH_MS: i64 = 1_577_836_800_000;

impl Snowflake {
    fn new(worker: u16) -> Self {
        Self {
            worker: i64::from(worker & 0x3ff),
            state: Mutex::new((0, 0)),
        }
    }

    fn now_ms() -> i64 {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        i64::try_from(ms).unwrap_or(i64::MAX) - SNOWFLAKE_EPOCH_MS
    }

    fn next(&self) -> i64 {
        let mut state = self.state.lock().expect("snowflake lock");
        let (last, seq) = *state;
        let mut now = Self::now_ms().max(last);
        let seq = if now == last { (seq + 1) & 0xfff } else { 0 };
        if now == last && seq == 0 {
            // 4,096 ids in this millisecond: take the next one.
            now += 1;
        }
        *state = (now, seq);
        (now << 22) | (self.worker << 12) | seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflake_ids_increase_and_carry_the_worker() {
        let ids = Snowflake::new(7);
        let mut last = 0;
        for _ in 0..10_000 {
            let id = ids.next();
            assert!(id > last);
            assert_eq!((id >> 12) & 0x3ff, 7);
            last = id;
        }
    }

    #[test]
    fn placeholders_are_numbered_for_postgresql_only() {
        assert_eq!(
            placeholders(Backend::Postgresql, "a = ? and b = ?"),
            "a = $1 and b = $2"
        );
        assert_eq!(placeholders(Backend::Mysql, "a = ?"), "a = ?");
        assert_eq!(
            placeholders(
                Backend::Postgresql,
                "a = '?' and b = ? -- c?\nand d = \"?\" and e = ?"
            ),
            "a = '?' and b = $1 -- c?\nand d = \"?\" and e = $2"
        );
    }

    #[test]
    fn passwords_are_hidden_in_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }

    #[test]
    fn every_host_script_splits() {
        for backend in [Backend::Sqlite, Backend::Postgresql, Backend::Mysql] {
            for mode in [PkMode::Autoincrement, PkMode::Snowflake] {
                let counts: Vec<usize> = migrations(backend, mode)
                    .into_iter()
                    .map(|(_, _, script)| split::split(script, backend.escapes()).unwrap().len())
                    .collect();
                assert_eq!(
                    counts,
                    [5, 2, 1, 2, 1, 2, 1, 1, 1, 2, 2, 2, 1, 1],
                    "{backend:?}/{mode:?}"
                );
            }
        }
    }
}
