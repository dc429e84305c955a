//! The Redis connection (when `REDIS_URL` is set), shared by the flag
//! store, the lifecycle lock and the key-value host service.
//!
//! Every command goes through [`Redis::check`], which tracks whether Redis
//! is reachable: the first failure logs the outage once, the first success
//! after it logs the recovery once, so a host whose Redis is down neither
//! floods its log nor stays silent.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use deadpool_redis::{Config, Connection, Pool, PoolConfig, Runtime, Timeouts, redis};

use crate::db::redact_url;

/// A Redis operation that failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RedisError {
    /// Redis cannot be reached.
    #[error(
        "Redis at {url} is unavailable ({message}); plugins keep serving with the last known flags, and this works again once Redis is back"
    )]
    Unavailable {
        /// The URL, without its password.
        url: String,
        /// The driver's message.
        message: String,
    },
    /// Redis answered with an error.
    #[error("Redis at {url} refused the command: {message}")]
    Command {
        /// The URL, without its password.
        url: String,
        /// Redis's message.
        message: String,
    },
}

/// A Redis server the host uses.
pub struct Redis {
    pool: Pool,
    client: redis::Client,
    url: String,
    up: AtomicBool,
}

impl Redis {
    /// Prepares the pool for `url`; nothing connects yet, so a host whose
    /// Redis is down still starts (with the flags from the database).
    pub fn open(url: &str) -> anyhow::Result<Arc<Self>> {
        let shown = redact_url(url);
        let client = redis::Client::open(url).map_err(|e| {
            anyhow::anyhow!("REDIS_URL {shown} is not a Redis URL (redis://HOST:PORT/DB): {e}")
        })?;
        let mut config = Config::from_url(url);
        config.pool = Some(PoolConfig {
            max_size: 32,
            timeouts: Timeouts {
                wait: Some(Duration::from_secs(2)),
                create: Some(Duration::from_secs(1)),
                recycle: Some(Duration::from_secs(1)),
            },
            ..PoolConfig::default()
        });
        let pool = config
            .create_pool(Some(Runtime::Tokio1))
            .map_err(|e| anyhow::anyhow!("REDIS_URL {shown}: {e}"))?;
        Ok(Arc::new(Self {
            pool,
            client,
            url: shown,
            up: AtomicBool::new(true),
        }))
    }

    /// A pooled connection.
    pub async fn conn(&self) -> Result<Connection, RedisError> {
        match self.pool.get().await {
            Ok(conn) => Ok(conn),
            Err(e) => Err(self.down(&e.to_string())),
        }
    }

    /// A dedicated connection for a subscription.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, RedisError> {
        let result = self.client.get_async_pubsub().await;
        self.check(result)
    }

    /// Passes a command's result on, recording whether Redis answered.
    pub fn check<T>(&self, result: redis::RedisResult<T>) -> Result<T, RedisError> {
        match result {
            Ok(value) => {
                self.mark_up();
                Ok(value)
            }
            Err(e)
                if e.is_io_error()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error() =>
            {
                Err(self.down(&e.to_string()))
            }
            Err(e) => {
                self.mark_up();
                Err(RedisError::Command {
                    url: self.url.clone(),
                    message: e.to_string(),
                })
            }
        }
    }

    /// Records that Redis answered; logs the recovery once.
    pub fn mark_up(&self) {
        if !self.up.swap(true, Ordering::AcqRel) {
            tracing::info!(redis = %self.url, "Redis is reachable again");
        }
    }

    /// Records an outage (logged once, at its start) and returns the error.
    pub fn down(&self, message: &str) -> RedisError {
        if self.up.swap(false, Ordering::AcqRel) {
            tracing::warn!(
                redis = %self.url,
                "Redis is unavailable ({message}): plugins keep serving with the last known flags; \
                 flag changes and the key-value service answer errors until it returns"
            );
        }
        RedisError::Unavailable {
            url: self.url.clone(),
            message: message.to_owned(),
        }
    }
}
