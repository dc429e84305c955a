//! The one assembly of a host: the database (migrated), the auth service,
//! Redis, the host services plugins reach, and the plugin host. `serve`
//! and every CLI command build through it, so a plugin loaded by the CLI
//! sees the same database and Redis as one loaded by the server.

use std::sync::Arc;

use crate::{
    auth::{AuthService, load_or_create_secret},
    config::Settings,
    db::Db,
    plugin::{PluginHost, StartError, services},
    redis::Redis,
};

/// The shared parts of a host, before any plugin is loaded.
pub struct Core {
    /// The settings it was built from.
    pub settings: Settings,
    /// Users, roles, tokens (and the database they live in).
    pub auth: Arc<AuthService>,
    /// Redis, when `REDIS_URL` is set.
    pub redis: Option<Arc<Redis>>,
}

impl Core {
    /// Opens the database (creating and migrating its schema) and Redis,
    /// and hands both to the host services plugins call.
    pub async fn open(settings: Settings) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.data_dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create data dir {}: {e}",
                settings.data_dir.display()
            )
        })?;
        let db =
            Arc::new(Db::open(&settings.database_url, settings.pk_mode, settings.worker_id).await?);
        let secret = load_or_create_secret(settings.jwt_secret.as_deref(), &settings.data_dir)?;
        let redis = settings.redis_url.as_deref().map(Redis::open).transpose()?;
        if let Some(redis) = &redis {
            services::set_redis(redis.clone(), &settings.flag_prefix);
        }
        // A token's principal is kept as long as a flag may lag behind.
        let auth = Arc::new(AuthService::new(
            db.clone(),
            &secret,
            settings.token_ttl,
            settings.login,
            settings.flag_reconcile,
            redis.clone().map(|r| (r, settings.flag_prefix.as_str())),
        ));
        crate::events::connect(
            db.clone(),
            redis.clone().map(|r| (r, settings.flag_prefix.clone())),
        );
        services::set_db(db);
        services::identity::set_auth(auth.clone());
        Ok(Self {
            settings,
            auth,
            redis,
        })
    }

    /// The host database.
    pub fn db(&self) -> &Arc<Db> {
        self.auth.db()
    }

    /// Loads the plugin dir into a plugin host (the others serve when one
    /// fails; see [`PluginHost::start`]).
    pub async fn plugins(&self) -> Result<Arc<PluginHost>, StartError> {
        PluginHost::start(&self.settings, self.db().clone(), self.redis.clone()).await
    }
}
