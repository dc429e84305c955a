//! What each instance serves, shared through the database: every instance
//! rewrites its own rows of `sys_plugin_instance` (one per plugin: state,
//! version, error, when it was seen) at start-up, after every change and on
//! every reconcile, and the plugin list shows every instance's rows, so an
//! operator sees at a glance which instances disagree.

use std::path::Path;

use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};
use serde::Serialize;

use crate::db::Db;

/// The file that keeps a generated instance id across restarts.
const INSTANCE_FILE: &str = "instance.id";

/// What one instance reported about one plugin.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InstanceState {
    /// The instance.
    pub id: String,
    /// `loaded`, `disabled` or `error`.
    pub state: String,
    /// The version it serves (or failed to load).
    pub version: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Local to that instance (a lone library or a directory placed by
    /// hand), not a package of the cluster's set.
    pub local: bool,
    /// When the instance last reported, Unix milliseconds.
    pub seen_at: i64,
}

/// One plugin as this instance reports it.
pub struct Reported {
    /// The plugin.
    pub name: String,
    /// `loaded`, `disabled` or `error`.
    pub state: &'static str,
    /// Its version, when known.
    pub version: String,
    /// Why it failed.
    pub error: Option<String>,
    /// Local to this instance.
    pub local: bool,
}

impl Reported {
    /// As instance `id` reports it at `seen_at`.
    pub fn as_state(&self, id: &str, seen_at: i64) -> InstanceState {
        InstanceState {
            id: id.to_owned(),
            state: self.state.to_owned(),
            version: self.version.clone(),
            error: self.error.clone(),
            local: self.local,
            seen_at,
        }
    }
}

/// This instance's id: the configured one, else a random id created once
/// in the data dir.
pub fn instance_id(configured: Option<&str>, data_dir: &Path) -> String {
    if let Some(id) = configured {
        return id.to_owned();
    }
    let path = data_dir.join(INSTANCE_FILE);
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return id.trim().to_owned();
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    if let Err(e) = std::fs::write(&path, &id) {
        tracing::warn!(path = %path.display(), "cannot keep the instance id: {e}");
    }
    id
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Replaces this instance's rows with `plugins`, in one transaction.
pub async fn publish(db: &Db, instance: &str, plugins: &[Reported]) -> Result<(), DbErr> {
    let seen_at = now_ms();
    let txn = db.conn().begin().await?;
    txn.execute(db.statement(
        "DELETE FROM sys_plugin_instance WHERE instance = ?",
        [instance.into()],
    ))
    .await?;
    // Many rows per statement: one round trip per plugin made start-up
    // with hundreds of plugins wait on the database.
    const ROWS_PER_STATEMENT: usize = 100;
    for chunk in plugins.chunks(ROWS_PER_STATEMENT) {
        let rows = vec!["(?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
        let values = chunk.iter().flat_map(|plugin| {
            [
                instance.into(),
                plugin.name.as_str().into(),
                plugin.state.into(),
                plugin.version.as_str().into(),
                plugin.error.clone().into(),
                i16::from(plugin.local).into(),
                seen_at.into(),
            ]
        });
        txn.execute(db.statement(
            &format!(
                "INSERT INTO sys_plugin_instance \
                 (instance, name, state, version, error, is_local, seen_at) VALUES {rows}"
            ),
            values,
        ))
        .await?;
    }
    txn.commit().await
}

/// Every instance's report, by plugin name (instances sorted by id).
pub async fn all(db: &Db) -> Result<Vec<(String, InstanceState)>, DbErr> {
    let rows = db
        .conn()
        .query_all(db.statement(
            "SELECT instance, name, state, version, error, is_local, seen_at FROM sys_plugin_instance \
             ORDER BY name, instance",
            [],
        ))
        .await?;
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get("", "name")?,
                InstanceState {
                    id: row.try_get("", "instance")?,
                    state: row.try_get("", "state")?,
                    version: row.try_get("", "version")?,
                    error: row.try_get("", "error")?,
                    local: row.try_get::<i16>("", "is_local")? != 0,
                    seen_at: row.try_get("", "seen_at")?,
                },
            ))
        })
        .collect()
}
