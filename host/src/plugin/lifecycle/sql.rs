//! Plugin SQL scripts: `sql/<backend>/{init,destroy}[_snowflake].sql` in a
//! plugin's directory, picked by the host's backend and key mode.
//!
//! A plugin's init script runs once, when the plugin is first loaded; the
//! host records it in `sys_plugin`. The script runs in one transaction on
//! SQLite and PostgreSQL, so a failure leaves nothing behind. MySQL and
//! MariaDB commit DDL implicitly: there, the tables the script created
//! before failing are dropped again.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};

use crate::db::{Backend, Db, PkMode, placeholders, split};

/// Why a script did not run to its commit.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The script cannot be split into statements.
    #[error("to parse: {0}")]
    Parse(String),
    /// The transaction could not begin.
    #[error("to begin: {0}")]
    Begin(DbErr),
    /// A statement failed; the transaction was rolled back.
    #[error("at statement {index} (line {line}): {message}")]
    Statement {
        /// Its position, from 1.
        index: usize,
        /// Its first line in the script.
        line: usize,
        /// The database's message.
        message: String,
    },
    /// The record of the plugin's init could not be written.
    #[error("to record the init of {plugin}: {source}")]
    Record {
        /// The plugin.
        plugin: String,
        /// The database's error.
        source: DbErr,
    },
    /// The transaction could not commit.
    #[error("to commit: {0}")]
    Commit(DbErr),
}

/// A plugin script that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    /// The script file cannot be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The script, relative to the plugin's directory.
        path: String,
        /// Why.
        message: String,
    },
    /// The script failed (and was rolled back, or undone on MySQL).
    #[error("{script} script {path} failed {source}")]
    Failed {
        /// Which script.
        script: Script,
        /// The script, relative to the plugin's directory.
        path: String,
        /// What failed.
        source: RunError,
    },
    /// The host's record of plugin scripts (`sys_plugin`) failed.
    #[error("cannot {what} of {plugin}: {source}")]
    Record {
        /// What was being done.
        what: &'static str,
        /// The plugin.
        plugin: String,
        /// The database's error.
        source: DbErr,
    },
}

/// A statement of a kind a command does not run.
#[derive(Debug, thiserror::Error)]
#[error(
    "statement {index} (line {line}) is a {kind} statement; allowed here: {}",
    allowed.join(", ")
)]
pub struct KindError {
    /// Its position, from 1.
    pub index: usize,
    /// Its first line.
    pub line: usize,
    /// Its kind (`malformed` when it has none).
    pub kind: String,
    /// The kinds allowed.
    pub allowed: Vec<String>,
}

/// Which script of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Creates the plugin's tables and seed data.
    Init,
    /// Removes them (only when an operator asks for data removal).
    Destroy,
}

impl Script {
    fn stem(self) -> &'static str {
        match self {
            Self::Init => "init",
            Self::Destroy => "destroy",
        }
    }
}

impl std::fmt::Display for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.stem())
    }
}

/// Where a plugin's scripts come from: the `sql/` beside its library (a
/// package), else the scripts its library carries (embedded by the export
/// macro, so a lone library is a complete plugin).
#[derive(Debug, Clone, Default)]
pub struct Scripts {
    dir: Option<PathBuf>,
    embedded: BTreeMap<String, String>,
}

impl Scripts {
    /// The scripts of a plugin in `dir` (if a directory) whose library
    /// carries `embedded`.
    pub fn new(dir: Option<&Path>, embedded: BTreeMap<String, String>) -> Self {
        Self {
            dir: dir.map(Path::to_owned),
            embedded,
        }
    }

    /// The script at `relative` (`sql/<backend>/<script>.sql`), if the
    /// plugin has it.
    pub fn read(&self, relative: &str) -> Result<Option<String>, ScriptError> {
        if let Some(dir) = &self.dir {
            let path = dir.join(relative);
            if path.is_file() {
                return std::fs::read_to_string(&path)
                    .map(Some)
                    .map_err(|e| ScriptError::Read {
                        path: relative.to_owned(),
                        message: e.to_string(),
                    });
            }
        }
        Ok(self.embedded.get(relative).cloned())
    }

    /// Whether the plugin has the script at `relative`.
    pub fn has(&self, relative: &str) -> bool {
        self.dir
            .as_ref()
            .is_some_and(|d| d.join(relative).is_file())
            || self.embedded.contains_key(relative)
    }
}

/// The relative path of a plugin's script for a backend and key mode.
pub fn script_path(script: Script, backend: Backend, pk_mode: PkMode) -> String {
    let stem = script.stem();
    let suffix = match pk_mode {
        PkMode::Autoincrement => "",
        PkMode::Snowflake => "_snowflake",
    };
    format!("sql/{}/{stem}{suffix}.sql", backend.name())
}

/// `plugin`'s init record: `done`, `running` (MySQL/MariaDB, interrupted
/// or under way), or none.
async fn init_state(db: &Db, plugin: &str) -> Result<Option<String>, DbErr> {
    let recorded = db
        .query(
            &placeholders(
                db.backend(),
                "SELECT init_state FROM sys_plugin WHERE name = ?",
            ),
            vec![plugin.into()],
        )
        .await?;
    recorded
        .first()
        .map(|row| row.try_get("", "init_state"))
        .transpose()
}

/// Whether `plugin` has an init script for this database that has not run
/// to its end in the cluster (an instance that only follows the cluster
/// must not run it: the instance that installs does).
pub async fn init_pending(db: &Db, plugin: &str, scripts: &Scripts) -> Result<bool, ScriptError> {
    let relative = script_path(Script::Init, db.backend(), db.pk_mode());
    if !scripts.has(&relative) {
        return Ok(false);
    }
    let state = init_state(db, plugin)
        .await
        .map_err(|source| ScriptError::Record {
            what: "read the init record",
            plugin: plugin.to_owned(),
            source,
        })?;
    Ok(state.as_deref() != Some(INIT_DONE))
}

/// Runs `plugin`'s init script from `dir` once; returns a reason on failure.
///
/// On SQLite and PostgreSQL the script and its record in `sys_plugin`
/// commit in one transaction, so a kill at any instant leaves both or
/// neither. MySQL and MariaDB commit DDL implicitly: there an intent row
/// (`init_state = 'running'`) is committed first and marked `done` after
/// the script; a restart that finds the intent drops the tables the script
/// creates and runs it again.
pub async fn init_once(
    db: &Db,
    plugin: &str,
    version: &str,
    scripts: &Scripts,
) -> Result<(), ScriptError> {
    let record = |what: &'static str| {
        move |source: DbErr| ScriptError::Record {
            what,
            plugin: plugin.to_owned(),
            source,
        }
    };
    let relative = script_path(Script::Init, db.backend(), db.pk_mode());
    let Some(script) = scripts.read(&relative)? else {
        return Ok(());
    };
    let state = init_state(db, plugin)
        .await
        .map_err(record("read the init record"))?;
    if state.as_deref() == Some(INIT_DONE) {
        return Ok(());
    }
    let failed = |source: RunError| ScriptError::Failed {
        script: Script::Init,
        path: relative.clone(),
        source,
    };
    if db.backend() == Backend::Mysql {
        if state.is_some() {
            let dropped = drop_created_tables(db, &script).await;
            tracing::warn!(
                plugin,
                tables = dropped.join(", "),
                "an earlier init of this plugin was interrupted; dropped what its script creates and running it again"
            );
        } else {
            record_init(db, db.conn(), plugin, version, INIT_RUNNING)
                .await
                .map_err(record("record the init"))?;
        }
        if let Err(e) = run_script(db, &script, None).await {
            let _ = forget_init(db, plugin).await;
            return Err(failed(e));
        }
        db.conn()
            .execute(db.statement(
                "UPDATE sys_plugin SET init_state = ? WHERE name = ?",
                [INIT_DONE.into(), plugin.into()],
            ))
            .await
            .map_err(record("record the init"))?;
    } else {
        run_script(db, &script, Some((plugin, version)))
            .await
            .map_err(failed)?;
    }
    tracing::info!(plugin, script = %relative, "plugin init script ran");
    Ok(())
}

/// `sys_plugin.init_state` of a plugin whose init script committed.
const INIT_DONE: &str = "done";
/// `sys_plugin.init_state` while a MySQL init script runs.
const INIT_RUNNING: &str = "running";

async fn record_init(
    db: &Db,
    conn: &impl ConnectionTrait,
    plugin: &str,
    version: &str,
    state: &str,
) -> Result<(), sea_orm::DbErr> {
    conn.execute(db.statement(
        "INSERT INTO sys_plugin (name, init_version, init_state) VALUES (?, ?, ?)",
        [plugin.into(), version.into(), state.into()],
    ))
    .await
    .map(drop)
}

async fn forget_init(db: &Db, plugin: &str) -> Result<(), sea_orm::DbErr> {
    db.conn()
        .execute(db.statement("DELETE FROM sys_plugin WHERE name = ?", [plugin.into()]))
        .await
        .map(drop)
}

/// Drops the tables `script` creates, last first (MySQL: what an
/// interrupted or failed script left); returns their names.
async fn drop_created_tables(db: &Db, script: &str) -> Vec<String> {
    let tables: Vec<String> = split::split(script, db.backend().escapes())
        .map(|statements| {
            statements
                .iter()
                .filter_map(|s| created_table(&s.text))
                .collect()
        })
        .unwrap_or_default();
    for table in tables.iter().rev() {
        if let Err(e) = db
            .conn()
            .execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
            .await
        {
            tracing::warn!(table, "cannot drop a table of an interrupted init: {e}");
        }
    }
    tables
}

/// Runs `plugin`'s destroy script, if it has one, and forgets its init (a
/// later install runs it again). Returns whether a script ran.
pub async fn destroy(db: &Db, plugin: &str, scripts: &Scripts) -> Result<bool, ScriptError> {
    let relative = script_path(Script::Destroy, db.backend(), db.pk_mode());
    let ran = if let Some(script) = scripts.read(&relative)? {
        run_script(db, &script, None)
            .await
            .map_err(|source| ScriptError::Failed {
                script: Script::Destroy,
                path: relative.clone(),
                source,
            })?;
        tracing::info!(plugin, script = %relative, "plugin destroy script ran");
        true
    } else {
        false
    };
    forget_init(db, plugin)
        .await
        .map_err(|source| ScriptError::Record {
            what: "forget the init",
            plugin: plugin.to_owned(),
            source,
        })?;
    Ok(ran)
}

/// Runs a script in one transaction, and with `record` (plugin, version)
/// records that plugin's init as done in the same transaction. On MySQL
/// and MariaDB, where DDL commits implicitly, the tables the script
/// created before failing are dropped again.
pub async fn run_script(
    db: &Db,
    script: &str,
    record: Option<(&str, &str)>,
) -> Result<usize, RunError> {
    let statements =
        split::split(script, db.backend().escapes()).map_err(|e| RunError::Parse(e.to_string()))?;
    let txn = db.conn().begin().await.map_err(RunError::Begin)?;
    let mut created = Vec::new();
    for (i, statement) in statements.iter().enumerate() {
        if let Err(e) = txn.execute_unprepared(&statement.text).await {
            let _ = txn.rollback().await;
            if db.backend() == Backend::Mysql {
                for table in created.iter().rev() {
                    let _ = db
                        .conn()
                        .execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                        .await;
                }
            }
            return Err(RunError::Statement {
                index: i + 1,
                line: statement.line,
                message: e.to_string(),
            });
        }
        if let Some(table) = created_table(&statement.text) {
            created.push(table);
        }
    }
    if let Some((plugin, version)) = record {
        record_init(db, &txn, plugin, version, INIT_DONE)
            .await
            .map_err(|source| RunError::Record {
                plugin: plugin.to_owned(),
                source,
            })?;
    }
    txn.commit().await.map_err(RunError::Commit)?;
    Ok(statements.len())
}

/// The table a `CREATE TABLE [IF NOT EXISTS] name` statement creates.
fn created_table(statement: &str) -> Option<String> {
    let words: Vec<&str> = statement
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .flat_map(str::split_whitespace)
        .take(6)
        .collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    if upper.first()? != "CREATE" || upper.get(1)? != "TABLE" {
        return None;
    }
    let name = if upper.get(2).map(String::as_str) == Some("IF") {
        words.get(5)?
    } else {
        words.get(2)?
    };
    let name = name.split('(').next()?.trim_matches('`');
    (!name.is_empty()).then(|| format!("`{name}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_picked_by_backend_and_key_mode() {
        assert_eq!(
            script_path(Script::Init, Backend::Sqlite, PkMode::Autoincrement),
            "sql/sqlite/init.sql"
        );
        assert_eq!(
            script_path(Script::Destroy, Backend::Mysql, PkMode::Snowflake),
            "sql/mysql/destroy_snowflake.sql"
        );
    }

    #[test]
    fn created_tables_are_recognised() {
        assert_eq!(
            created_table("CREATE TABLE a (x int)").as_deref(),
            Some("`a`")
        );
        assert_eq!(
            created_table("create table if not exists `b`(x int)").as_deref(),
            Some("`b`")
        );
        assert_eq!(
            created_table("-- c\nCREATE TABLE c\n(x int)").as_deref(),
            Some("`c`")
        );
        assert_eq!(created_table("INSERT INTO a VALUES (1)"), None);
    }
}

/// Statement kinds `plughost sql` runs by default.
pub const INIT_KINDS: &[&str] = &["SELECT", "INSERT", "SET", "DO"];
/// Statement kinds `plughost sql --destroy` runs besides those.
pub const DESTROY_KINDS: &[&str] = &["DROP", "DELETE", "ALTER"];

/// The first keyword of a statement (comments and parentheses skipped).
pub fn statement_kind(text: &str) -> String {
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '(');
        if let Some(after) = rest.strip_prefix("--") {
            rest = after.split_once('\n').map_or("", |(_, r)| r);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.split_once("*/").map_or("", |(_, r)| r);
        } else {
            break;
        }
    }
    rest.chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_uppercase()
}

/// Checks every statement's kind against `allowed`; the refusal names the
/// statement, its line and its kind.
pub fn check_kinds(statements: &[split::Statement], allowed: &[&str]) -> Result<(), KindError> {
    for (i, statement) in statements.iter().enumerate() {
        let kind = statement_kind(&statement.text);
        if !allowed.contains(&kind.as_str()) {
            return Err(KindError {
                index: i + 1,
                line: statement.line,
                kind: if kind.is_empty() {
                    "malformed".into()
                } else {
                    kind
                },
                allowed: allowed.iter().map(|k| (*k).to_owned()).collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod kind_tests {
    use super::*;

    #[test]
    fn statement_kinds_are_read_past_comments_and_checked() {
        assert_eq!(
            statement_kind("-- c\n/* d */ insert into t values (1)"),
            "INSERT"
        );
        assert_eq!(statement_kind("(select 1)"), "SELECT");
        let statements = split::split(
            "insert into a values (1);\n\ndrop table a;",
            split::Escapes::Standard,
        )
        .unwrap();
        assert_eq!(
            check_kinds(&statements, INIT_KINDS)
                .unwrap_err()
                .to_string(),
            "statement 2 (line 3) is a DROP statement; allowed here: SELECT, INSERT, SET, DO"
        );
        let all: Vec<&str> = INIT_KINDS.iter().chain(DESTROY_KINDS).copied().collect();
        assert!(check_kinds(&statements, &all).is_ok());
    }
}
