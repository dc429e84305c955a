//! Plugin SQL scripts: `sql/<backend>/{init,destroy}[_snowflake].sql` in a
//! plugin's directory, picked by the host's backend and key mode.
//!
//! A plugin's init script runs once, when the plugin is first loaded; the
//! host records it in `sys_plugin`. The script runs in one transaction on
//! SQLite and PostgreSQL, so a failure leaves nothing behind. MySQL and
//! MariaDB commit DDL implicitly: there, the tables the script created
//! before failing are dropped again.

use std::path::Path;

use sea_orm::{ConnectionTrait, TransactionTrait};

use crate::db::{Backend, Db, PkMode, placeholders, split};

/// Which script of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Creates the plugin's tables and seed data.
    Init,
    /// Removes them (only when an operator asks for data removal).
    Destroy,
}

/// The relative path of a plugin's script for a backend and key mode.
pub fn script_path(script: Script, backend: Backend, pk_mode: PkMode) -> String {
    let stem = match script {
        Script::Init => "init",
        Script::Destroy => "destroy",
    };
    let suffix = match pk_mode {
        PkMode::Autoincrement => "",
        PkMode::Snowflake => "_snowflake",
    };
    format!("sql/{}/{stem}{suffix}.sql", backend.name())
}

/// Runs `plugin`'s init script from `dir` once; returns a reason on failure.
///
/// On SQLite and PostgreSQL the script and its record in `sys_plugin`
/// commit in one transaction, so a kill at any instant leaves both or
/// neither. MySQL and MariaDB commit DDL implicitly: there an intent row
/// (`init_state = 'running'`) is committed first and marked `done` after
/// the script; a restart that finds the intent drops the tables the script
/// creates and runs it again.
pub async fn init_once(db: &Db, plugin: &str, version: &str, dir: &Path) -> Result<(), String> {
    let relative = script_path(Script::Init, db.backend(), db.pk_mode());
    let path = dir.join(&relative);
    if !path.is_file() {
        return Ok(());
    }
    let recorded = db
        .query(
            &placeholders(
                db.backend(),
                "SELECT init_state FROM sys_plugin WHERE name = ?",
            ),
            vec![plugin.into()],
        )
        .await
        .map_err(|e| format!("cannot read sys_plugin: {e}"))?;
    let state: Option<String> = match recorded.first() {
        Some(row) => Some(
            row.try_get("", "init_state")
                .map_err(|e| format!("cannot read sys_plugin: {e}"))?,
        ),
        None => None,
    };
    if state.as_deref() == Some(INIT_DONE) {
        return Ok(());
    }
    let script =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {relative}: {e}"))?;
    let failed = |e: String| format!("init script {relative} failed {e}");
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
                .map_err(|e| format!("cannot record the init of {plugin}: {e}"))?;
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
            .map_err(|e| format!("cannot record the init of {plugin}: {e}"))?;
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

/// Runs `plugin`'s destroy script from `dir`, if it has one, and forgets
/// its init (a later install runs it again). Returns whether a script ran.
pub async fn destroy(db: &Db, plugin: &str, dir: &Path) -> Result<bool, String> {
    let relative = script_path(Script::Destroy, db.backend(), db.pk_mode());
    let path = dir.join(&relative);
    let ran = if path.is_file() {
        let script =
            std::fs::read_to_string(&path).map_err(|e| format!("cannot read {relative}: {e}"))?;
        run_script(db, &script, None)
            .await
            .map_err(|e| format!("destroy script {relative} failed {e}"))?;
        tracing::info!(plugin, script = %relative, "plugin destroy script ran");
        true
    } else {
        false
    };
    forget_init(db, plugin)
        .await
        .map_err(|e| format!("cannot forget the init of {plugin}: {e}"))?;
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
) -> Result<usize, String> {
    let statements =
        split::split(script, db.backend().escapes()).map_err(|e| format!("to parse: {e}"))?;
    let txn = db
        .conn()
        .begin()
        .await
        .map_err(|e| format!("to begin: {e}"))?;
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
            return Err(format!(
                "at statement {} (line {}): {e}",
                i + 1,
                statement.line
            ));
        }
        if let Some(table) = created_table(&statement.text) {
            created.push(table);
        }
    }
    if let Some((plugin, version)) = record {
        record_init(db, &txn, plugin, version, INIT_DONE)
            .await
            .map_err(|e| format!("to record the init of {plugin}: {e}"))?;
    }
    txn.commit().await.map_err(|e| format!("to commit: {e}"))?;
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
pub fn check_kinds(statements: &[split::Statement], allowed: &[&str]) -> Result<(), String> {
    for (i, statement) in statements.iter().enumerate() {
        let kind = statement_kind(&statement.text);
        if !allowed.contains(&kind.as_str()) {
            return Err(format!(
                "statement {} (line {}) is a {} statement; allowed here: {}",
                i + 1,
                statement.line,
                if kind.is_empty() { "malformed" } else { &kind },
                allowed.join(", ")
            ));
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
            check_kinds(&statements, INIT_KINDS).unwrap_err(),
            "statement 2 (line 3) is a DROP statement; allowed here: SELECT, INSERT, SET, DO"
        );
        let all: Vec<&str> = INIT_KINDS.iter().chain(DESTROY_KINDS).copied().collect();
        assert!(check_kinds(&statements, &all).is_ok());
    }
}
