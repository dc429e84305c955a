//! Named locks in the database server, for instances that share only a
//! database: a PostgreSQL advisory lock or a MySQL/MariaDB `GET_LOCK`.
//!
//! Each lock is held by a connection of its own (a pool of one, outside the
//! host's pool): the server releases it when that connection ends, so a
//! holder that dies (even by SIGKILL) frees it at once, and a connection
//! lost while holding it is noticed by [`DbLock::ensure_held`]. SQLite has
//! no such lock; callers fall back to a lock file there.

use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, DatabaseConnection, Statement};

use super::{Backend, redact_url};

/// A database lock that cannot be taken or was lost.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbLockError {
    /// Another connection holds it.
    #[error("held by another instance (database lock '{name}')")]
    Busy {
        /// The lock's name.
        name: String,
    },
    /// The lock's connection failed.
    #[error("the database lock '{name}' failed on {url}: {message}")]
    Failed {
        /// The lock's name.
        name: String,
        /// The database (without password).
        url: String,
        /// The server's message.
        message: String,
    },
}

/// A held database lock; released by [`DbLock::release`] or when dropped
/// (its connection closes).
pub struct DbLock {
    conn: DatabaseConnection,
    backend: Backend,
    name: String,
}

/// The 64-bit key PostgreSQL's advisory locks take, from the lock's name.
fn advisory_key(name: &str) -> i64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(name.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

impl DbLock {
    /// Takes lock `name` on the database at `url` (PostgreSQL or MySQL),
    /// waiting up to `wait` for another holder.
    pub async fn acquire(
        url: &str,
        backend: Backend,
        name: &str,
        wait: Duration,
    ) -> Result<Self, DbLockError> {
        let failed = |e: &dyn std::fmt::Display| DbLockError::Failed {
            name: name.to_owned(),
            url: redact_url(url),
            message: e.to_string(),
        };
        let mut options = ConnectOptions::new(url.to_owned());
        options
            .min_connections(1)
            .max_connections(1)
            .connect_timeout(Duration::from_secs(10))
            .sqlx_logging(false);
        let conn = sea_orm::Database::connect(options)
            .await
            .map_err(|e| failed(&e))?;
        let lock = Self {
            conn,
            backend,
            name: name.to_owned(),
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if lock.try_take().await.map_err(|e| failed(&e))? {
                return Ok(lock);
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = lock.conn.close().await;
                return Err(DbLockError::Busy {
                    name: name.to_owned(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn statement(&self, sql: &str) -> Statement {
        let value: sea_orm::Value = match self.backend {
            Backend::Postgresql => advisory_key(&self.name).into(),
            _ => self.name.clone().into(),
        };
        Statement::from_sql_and_values(self.conn.get_database_backend(), sql, [value])
    }

    /// One attempt: whether the lock is ours now.
    async fn try_take(&self) -> Result<bool, sea_orm::DbErr> {
        let sql = match self.backend {
            Backend::Postgresql => "SELECT pg_try_advisory_lock($1) AS taken",
            // 0: wait no longer than this attempt; 1 taken, 0 held elsewhere.
            _ => "SELECT CAST(COALESCE(GET_LOCK(?, 0), 0) AS SIGNED) AS taken",
        };
        let row = self.conn.query_one(self.statement(sql)).await?;
        Ok(match row {
            Some(row) => match self.backend {
                Backend::Postgresql => row.try_get::<bool>("", "taken")?,
                _ => row.try_get::<i64>("", "taken")? == 1,
            },
            None => false,
        })
    }

    /// Fails if the lock's connection is gone (and with it the lock).
    pub async fn ensure_held(&self) -> Result<(), String> {
        self.conn
            .execute_unprepared("SELECT 1")
            .await
            .map(drop)
            .map_err(|e| format!("its database connection failed: {e}"))
    }

    /// Releases the lock and closes its connection.
    pub async fn release(self) -> Result<(), String> {
        let sql = match self.backend {
            Backend::Postgresql => "SELECT pg_advisory_unlock($1)",
            _ => "SELECT RELEASE_LOCK(?)",
        };
        let released = self.conn.execute(self.statement(sql)).await;
        let _ = self.conn.close().await;
        released
            .map(drop)
            .map_err(|e| format!("its database connection failed: {e}"))
    }
}
