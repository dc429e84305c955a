//! Plugin SQL scripts: `sql/<backend>/{init,destroy}[_snowflake].sql` in a
//! plugin's directory, picked by the host's backend and key mode.
//!
//! A plugin's init script runs once, when the plugin is first loaded; the
//! host records it in `sys_plugin`. The script runs in one transaction on
//! SQLite and PostgreSQL, so a failure leaves nothing behind. MySQL and
//! MariaDB commit DDL implicitly: there, the tables the script created
//! before failing are dropped again.

use std::path::Path;

use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

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
pub async fn init_once(db: &Db, plugin: &str, version: &str, dir: &Path) -> Result<(), String> {
    let relative = script_path(Script::Init, db.backend(), db.pk_mode());
    let path = dir.join(&relative);
    if !path.is_file() {
        return Ok(());
    }
    let done = db
        .query(
            &placeholders(
                db.backend(),
                "SELECT init_version FROM sys_plugin WHERE name = ?",
            ),
            vec![plugin.into()],
        )
        .await
        .map_err(|e| format!("cannot read sys_plugin: {e}"))?;
    if !done.is_empty() {
        return Ok(());
    }
    let script =
        std::fs::read_to_string(&path).map_err(|e| format!("cannot read {relative}: {e}"))?;
    run_script(db, &script)
        .await
        .map_err(|e| format!("init script {relative} failed {e}"))?;
    db.conn()
        .execute(Statement::from_sql_and_values(
            db.conn().get_database_backend(),
            placeholders(
                db.backend(),
                "INSERT INTO sys_plugin (name, init_version) VALUES (?, ?)",
            ),
            vec![plugin.into(), version.into()],
        ))
        .await
        .map_err(|e| format!("cannot record the init of {plugin}: {e}"))?;
    tracing::info!(plugin, script = %relative, "plugin init script ran");
    Ok(())
}

/// Runs a script: all or nothing where the backend allows it.
pub async fn run_script(db: &Db, script: &str) -> Result<usize, String> {
    let statements =
        split::split(script, db.backend().escapes()).map_err(|e| format!("to parse: {e}"))?;
    let failed = |i: usize, line: usize, e: sea_orm::DbErr| {
        format!("at statement {} (line {line}): {e}", i + 1)
    };
    if db.backend() == Backend::Mysql {
        let mut created = Vec::new();
        for (i, statement) in statements.iter().enumerate() {
            if let Err(e) = db.conn().execute_unprepared(&statement.text).await {
                for table in created.iter().rev() {
                    let _ = db
                        .conn()
                        .execute_unprepared(&format!("DROP TABLE IF EXISTS {table}"))
                        .await;
                }
                return Err(failed(i, statement.line, e));
            }
            if let Some(table) = created_table(&statement.text) {
                created.push(table);
            }
        }
        return Ok(statements.len());
    }
    let txn = db
        .conn()
        .begin()
        .await
        .map_err(|e| format!("to begin: {e}"))?;
    for (i, statement) in statements.iter().enumerate() {
        if let Err(e) = txn.execute_unprepared(&statement.text).await {
            let _ = txn.rollback().await;
            return Err(failed(i, statement.line, e));
        }
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
