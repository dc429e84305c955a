//! The desired plugin set, in the database: which plugins were installed
//! through the API or the CLI, at which version, from which package (its
//! digest in the package store), from where, by whom and when. Every
//! install and uninstall records itself here; a row's revision grows on
//! every change and never goes backwards (an uninstall marks the row
//! removed).

use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde::Serialize;

use crate::db::Db;

/// One installed plugin, as the cluster should serve it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Desired {
    /// The plugin.
    #[serde(skip)]
    pub name: String,
    /// Its version.
    pub version: String,
    /// The sha256 of its package in the package store.
    pub digest: String,
    /// Where it came from: `{"type": "zip"}` or `{"type": "git", "url", "ref", "commit"}`.
    pub source: serde_json::Value,
    /// Who installed it (a user name, or `cli`).
    pub installed_by: String,
    /// When, Unix milliseconds.
    pub installed_at: i64,
    /// Grows on every install, upgrade and uninstall of this name.
    pub revision: i64,
    /// Uninstalled: no instance serves it any more.
    #[serde(skip)]
    pub removed: bool,
}

/// Records `plugin` as installed (a new row, or the next revision of its
/// row); returns the revision.
pub async fn record(db: &Db, plugin: &Desired, manifest: &str) -> Result<i64, DbErr> {
    let txn = db.conn().begin().await?;
    let source = plugin.source.to_string();
    let values = || -> Vec<sea_orm::Value> {
        vec![
            plugin.version.as_str().into(),
            plugin.digest.as_str().into(),
            source.as_str().into(),
            plugin.installed_by.as_str().into(),
            plugin.installed_at.into(),
            manifest.into(),
            plugin.name.as_str().into(),
        ]
    };
    let updated = txn
        .execute(db.statement(
            "UPDATE sys_plugin_desired SET version = ?, digest = ?, source = ?, installed_by = ?, \
             installed_at = ?, manifest = ?, revision = revision + 1, removed = 0 WHERE name = ?",
            values(),
        ))
        .await?;
    if updated.rows_affected() == 0 {
        txn.execute(db.statement(
            "INSERT INTO sys_plugin_desired \
             (version, digest, source, installed_by, installed_at, manifest, name, revision, removed) \
             VALUES (?, ?, ?, ?, ?, ?, ?, 1, 0)",
            values(),
        ))
        .await?;
    }
    let revision = txn
        .query_one(db.statement(
            "SELECT revision FROM sys_plugin_desired WHERE name = ?",
            [plugin.name.as_str().into()],
        ))
        .await?
        .map(|row| row.try_get::<i64>("", "revision"))
        .transpose()?
        .unwrap_or(1);
    txn.commit().await?;
    Ok(revision)
}

/// Records `name` as uninstalled (its row kept, marked removed, one
/// revision higher).
pub async fn remove(db: &Db, name: &str) -> Result<(), DbErr> {
    db.conn()
        .execute(db.statement(
            "UPDATE sys_plugin_desired SET removed = 1, revision = revision + 1 \
             WHERE name = ? AND removed = 0",
            [name.into()],
        ))
        .await
        .map(drop)
}

/// Every installed plugin of the desired set, by name.
pub async fn all(db: &Db) -> Result<Vec<Desired>, DbErr> {
    select(db, "WHERE removed = 0 ORDER BY name", None).await
}

/// Every name the desired set has ever held, uninstalled ones too (marked
/// `removed`), by name.
pub async fn every(db: &Db) -> Result<Vec<Desired>, DbErr> {
    select(db, "ORDER BY name", None).await
}

/// The installed plugin `name`, if the desired set has it.
pub async fn get(db: &Db, name: &str) -> Result<Option<Desired>, DbErr> {
    Ok(select(db, "WHERE removed = 0 AND name = ?", Some(name))
        .await?
        .pop())
}

async fn select(db: &Db, filter: &str, name: Option<&str>) -> Result<Vec<Desired>, DbErr> {
    let values: Vec<sea_orm::Value> = name.into_iter().map(Into::into).collect();
    let rows = db
        .conn()
        .query_all(db.statement(
            &format!(
                "SELECT name, version, digest, source, installed_by, installed_at, revision, \
                 removed FROM sys_plugin_desired {filter}"
            ),
            values,
        ))
        .await?;
    rows.iter()
        .map(|row| {
            let source: String = row.try_get("", "source")?;
            Ok(Desired {
                name: row.try_get("", "name")?,
                version: row.try_get("", "version")?,
                digest: row.try_get("", "digest")?,
                source: serde_json::from_str(&source).unwrap_or(serde_json::Value::Null),
                installed_by: row.try_get("", "installed_by")?,
                installed_at: row.try_get("", "installed_at")?,
                revision: row.try_get("", "revision")?,
                removed: row.try_get::<i16>("", "removed")? != 0,
            })
        })
        .collect()
}
