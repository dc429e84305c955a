//! The lifecycle lock: one install, upgrade or uninstall at a time, across
//! every instance when Redis is configured; without Redis, across every
//! instance sharing a PostgreSQL or MySQL/MariaDB database through a lock
//! in the database server (see [`crate::db::DbLock`]); on SQLite, across
//! the processes (server and CLI) sharing a data dir, through a lock file
//! (`flock`).
//!
//! The Redis lock is a key holding a random token, set only if absent and
//! with an expiry (a lease of 5 s), so a killed holder cannot block the
//! others for longer than that. While held, a task renews it every fifth,
//! and only while the key still holds the token. Failing to take the lock is
//! an error; losing it (the key expired or was taken, or Redis stayed
//! unreachable for a whole expiry) is recorded and every later
//! [`LockGuard::ensure_held`] fails, so the operation stops instead of
//! carrying on unprotected.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use deadpool_redis::redis::{self, AsyncCommands};
use tokio::task::JoinHandle;

use crate::{
    db::{Backend, Db, DbLock, DbLockError},
    redis::{Redis, RedisError},
};

/// The lock cannot be taken or was lost.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    /// Another operation holds it.
    #[error("another plugin operation is in progress ({holder}); try again when it has finished")]
    Busy {
        /// What the holder recorded about itself.
        holder: String,
    },
    /// Redis failed while taking or releasing it.
    #[error("the plugin lifecycle lock is unavailable: {0}")]
    Redis(#[from] RedisError),
    /// The database lock failed.
    #[error("the plugin lifecycle lock is unavailable: {0}")]
    Database(String),
    /// The lock file cannot be used.
    #[error("the plugin lifecycle lock file {path} cannot be used: {message}")]
    File {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The lock was lost while held.
    #[error(
        "the plugin lifecycle lock was lost during {operation} ({reason}); the operation was stopped"
    )]
    Lost {
        /// The operation that held it.
        operation: String,
        /// What happened.
        reason: String,
    },
}

/// Compare-and-extend: renews the expiry only while the key holds our token.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Compare-and-delete: releases only our own lock.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// The lock of one host.
pub enum LifecycleLock {
    /// A lock file, for the processes sharing a data dir.
    File(PathBuf),
    /// Across instances, in Redis.
    Redis {
        /// The server.
        redis: Arc<Redis>,
        /// The lock's key.
        key: String,
        /// How long the lock outlives a holder that stopped renewing it.
        ttl: Duration,
        /// The instance taking it, named in its token.
        owner: String,
    },
    /// Across instances sharing a PostgreSQL or MySQL/MariaDB database.
    Database {
        /// The database.
        db: Arc<Db>,
        /// The lock's name.
        name: String,
    },
}

/// A held lock; released by [`LockGuard::release`] (or, as a fallback, when
/// dropped).
pub struct LockGuard {
    operation: String,
    held: Held,
    /// The lock of this instance's own plugin dir (a file lock in its data
    /// dir), taken with the cluster's or alone.
    local: Option<std::fs::File>,
    /// Whether `held` is the cluster's lock (else only `local` is held).
    cluster: bool,
}

enum Held {
    File {
        _file: std::fs::File,
    },
    Redis {
        redis: Arc<Redis>,
        key: String,
        token: String,
        lost: Arc<Mutex<Option<String>>>,
        renewer: JoinHandle<()>,
    },
    Database(DbLock),
    Released,
}

impl LifecycleLock {
    /// The lock for this host: in Redis under `key` when given, else in
    /// the database `db` under the same name when it is PostgreSQL or
    /// MySQL/MariaDB, else on the lock file `file`.
    pub fn new(
        redis: Option<Arc<Redis>>,
        db: Option<Arc<Db>>,
        key: String,
        ttl: Duration,
        file: PathBuf,
    ) -> Self {
        match (redis, db) {
            (Some(redis), _) => Self::Redis {
                redis,
                key,
                ttl,
                owner: String::new(),
            },
            (None, Some(db)) if db.backend() != Backend::Sqlite => Self::Database { db, name: key },
            _ => Self::File(file),
        }
    }

    /// Names the instance that takes the lock (in Redis, its token says
    /// `instance {owner}, pid {pid}`), so that a restart of the same
    /// instance can free a lock its killed predecessor held.
    pub fn owned_by(mut self, instance: &str) -> Self {
        if let Self::Redis { owner, .. } = &mut self {
            instance.clone_into(owner);
        }
        self
    }

    /// Frees the Redis lock if a previous process of this instance (on this
    /// machine, by its pid) held it and is gone, instead of waiting out
    /// its expiry. Returns whether it did.
    pub async fn free_orphaned(&self) -> Result<bool, LockError> {
        let Self::Redis {
            redis, key, owner, ..
        } = self
        else {
            return Ok(false);
        };
        if owner.is_empty() {
            return Ok(false);
        }
        let mut conn = redis.conn().await?;
        let holder: redis::RedisResult<Option<String>> = conn.get(key).await;
        let Some(holder) = redis.check(holder)? else {
            return Ok(false);
        };
        let mark = format!("(instance {owner}, pid ");
        let pid = holder
            .split_once(&mark)
            .and_then(|(_, rest)| rest.strip_suffix(')'))
            .and_then(|pid| pid.parse::<u32>().ok());
        let orphaned = pid.is_some_and(|pid| {
            pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists()
        });
        if !orphaned {
            return Ok(false);
        }
        let freed: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(key)
            .arg(&holder)
            .invoke_async(&mut conn)
            .await;
        let freed = redis.check(freed)? == 1;
        if freed {
            tracing::warn!(
                holder,
                "freed the lifecycle lock a killed process of this instance held"
            );
        }
        Ok(freed)
    }

    /// Takes the lock for `operation`, waiting up to `wait` for a holder
    /// to finish.
    pub async fn acquire(&self, operation: &str, wait: Duration) -> Result<LockGuard, LockError> {
        let held = match self {
            Self::File(path) => lock_file(path, operation, wait).await?,
            Self::Database { db, name } => match db.lock(name, wait).await {
                Some(Ok(lock)) => Held::Database(lock),
                Some(Err(DbLockError::Busy { .. })) => {
                    return Err(LockError::Busy {
                        holder: format!("another instance holds the database lock '{name}'"),
                    });
                }
                Some(Err(e)) => return Err(LockError::Database(e.to_string())),
                None => unreachable!("a database lock is chosen only where the backend has one"),
            },
            Self::Redis {
                redis,
                key,
                ttl,
                owner,
            } => {
                let token = if owner.is_empty() {
                    format!(
                        "{} {operation} (pid {})",
                        uuid::Uuid::new_v4(),
                        std::process::id()
                    )
                } else {
                    format!(
                        "{} {operation} (instance {owner}, pid {})",
                        uuid::Uuid::new_v4(),
                        std::process::id()
                    )
                };
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                let deadline = tokio::time::Instant::now() + wait;
                let mut conn = redis.conn().await?;
                loop {
                    let taken: redis::RedisResult<Option<String>> = redis::cmd("SET")
                        .arg(key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut conn)
                        .await;
                    if redis.check(taken)?.is_some() {
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        let holder: redis::RedisResult<Option<String>> = conn.get(key).await;
                        let holder = redis
                            .check(holder)?
                            .unwrap_or_else(|| "just released".into());
                        return Err(LockError::Busy { holder });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                let lost = Arc::new(Mutex::new(None));
                let renewer = tokio::spawn(renew(
                    redis.clone(),
                    key.clone(),
                    token.clone(),
                    *ttl,
                    lost.clone(),
                ));
                Held::Redis {
                    redis: redis.clone(),
                    key: key.clone(),
                    token,
                    lost,
                    renewer,
                }
            }
        };
        tracing::debug!(operation, "lifecycle lock taken");
        Ok(LockGuard {
            operation: operation.to_owned(),
            held,
            local: None,
            cluster: true,
        })
    }
}

/// Takes only the lock of one instance's plugin dir (the file `path`), for
/// `operation`, waiting up to `wait`: what an instance needs to bring its
/// own plugin dir to the cluster's set, which other instances do at the
/// same time.
pub async fn local(path: &Path, operation: &str, wait: Duration) -> Result<LockGuard, LockError> {
    let Held::File { _file: file } = lock_file(path, operation, wait).await? else {
        unreachable!("a lock file is held as a file");
    };
    Ok(LockGuard {
        operation: operation.to_owned(),
        held: Held::Released,
        local: Some(file),
        cluster: false,
    })
}

/// Takes the lock file, waiting up to `wait`; the holder writes what it is
/// doing into it, for the message another process gets.
async fn lock_file(path: &Path, operation: &str, wait: Duration) -> Result<Held, LockError> {
    let failed = |e: &dyn std::fmt::Display| LockError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|e| failed(&e))?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => break,
            Err(rustix::io::Errno::WOULDBLOCK) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let holder = std::fs::read_to_string(path).unwrap_or_default();
                return Err(LockError::Busy {
                    holder: if holder.is_empty() {
                        "another process on this data dir".into()
                    } else {
                        holder
                    },
                });
            }
            Err(e) => return Err(failed(&e)),
        }
    }
    let mut writer = &file;
    file.set_len(0)
        .and_then(|()| {
            std::io::Write::write_all(
                &mut writer,
                format!("{operation} (pid {})", std::process::id()).as_bytes(),
            )
        })
        .map_err(|e| failed(&e))?;
    Ok(Held::File { _file: file })
}

/// Renews the lock every fifth of its expiry (its lease) while it holds
/// our token: a holder that stops renewing frees it within one lease; a
/// Redis that does not answer for a whole lease loses it.
async fn renew(
    redis: Arc<Redis>,
    key: String,
    token: String,
    ttl: Duration,
    lost: Arc<Mutex<Option<String>>>,
) {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
    let script = redis::Script::new(RENEW);
    let mut renewed_at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(ttl / 5).await;
        let result = match redis.conn().await {
            Ok(mut conn) => {
                let r: redis::RedisResult<i64> = script
                    .key(&key)
                    .arg(&token)
                    .arg(ttl_ms)
                    .invoke_async(&mut conn)
                    .await;
                redis.check(r).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let reason = match result {
            Ok(1) => {
                renewed_at = tokio::time::Instant::now();
                continue;
            }
            Ok(_) => "it expired or another holder took it".to_owned(),
            Err(e) if renewed_at.elapsed() < ttl => {
                tracing::warn!("lifecycle lock not renewed, retrying: {e}");
                continue;
            }
            Err(e) => format!("it could not be renewed within its expiry: {e}"),
        };
        tracing::error!("lifecycle lock lost: {reason}");
        *lost.lock().expect("lock state") = Some(reason);
        return;
    }
}

impl LockGuard {
    /// Also takes the lock of this instance's plugin dir (the file `path`),
    /// waiting up to `wait`; the cluster's lock is released if it cannot.
    pub async fn with_local(mut self, path: &Path, wait: Duration) -> Result<Self, LockError> {
        match local(path, &self.operation, wait).await {
            Ok(mut local) => {
                self.local = local.local.take();
                Ok(self)
            }
            Err(e) => {
                if let Err(release) = self.release().await {
                    tracing::error!("{release}");
                }
                Err(e)
            }
        }
    }

    /// Whether this is the cluster's lock (else only this instance's).
    pub fn cluster_wide(&self) -> bool {
        self.cluster
    }

    /// Fails if the lock was lost; call it before every step that must be
    /// protected.
    pub async fn ensure_held(&self) -> Result<(), LockError> {
        let lost = match &self.held {
            Held::Redis { lost, .. } => lost.lock().expect("lock state").clone(),
            Held::Database(lock) => lock.ensure_held().await.err(),
            Held::File { .. } | Held::Released => None,
        };
        match lost {
            Some(reason) => Err(LockError::Lost {
                operation: self.operation.clone(),
                reason,
            }),
            None => Ok(()),
        }
    }

    /// Releases the lock; fails if it had been lost meanwhile.
    pub async fn release(mut self) -> Result<(), LockError> {
        // The instance's own lock goes after the cluster's (below).
        let _local = self.local.take();
        let held = std::mem::replace(&mut self.held, Held::Released);
        if let Held::Database(lock) = held {
            return lock.release().await.map_err(|reason| LockError::Lost {
                operation: self.operation.clone(),
                reason,
            });
        }
        let Held::Redis {
            redis,
            key,
            token,
            lost,
            renewer,
        } = held
        else {
            return Ok(());
        };
        renewer.abort();
        if let Some(reason) = lost.lock().expect("lock state").clone() {
            return Err(LockError::Lost {
                operation: self.operation.clone(),
                reason,
            });
        }
        let mut conn = redis.conn().await?;
        let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
            .key(&key)
            .arg(&token)
            .invoke_async(&mut conn)
            .await;
        if redis.check(released)? == 0 {
            return Err(LockError::Lost {
                operation: self.operation.clone(),
                reason: "it expired or another holder took it".into(),
            });
        }
        Ok(())
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if let Held::Redis {
            redis,
            key,
            token,
            renewer,
            ..
        } = std::mem::replace(&mut self.held, Held::Released)
        {
            renewer.abort();
            // Not released explicitly (an early return): release it anyway,
            // or it would block every other operation until it expires.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                if let Ok(mut conn) = redis.conn().await {
                    let _: redis::RedisResult<i64> = redis::Script::new(RELEASE)
                        .key(&key)
                        .arg(&token)
                        .invoke_async(&mut conn)
                        .await;
                }
            });
        }
    }
}
