//! Settings: command line, then environment, then an optional TOML file,
//! then built-in defaults, in that order of precedence.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::Args;
use serde::Deserialize;

use crate::db::PkMode;

/// The longest deadline a plugin request may have, the operator's or a
/// route's: a day, in seconds.
pub const MAX_PLUGIN_TIMEOUT_SECS: u64 = 86_400;

/// Whether the status gate runs (off only to measure its cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusCheck {
    /// Read the in-process flag cache on every request.
    Cached,
    /// Read the flag from Redis on every request, as FBA does (falling back
    /// to the cache when Redis cannot answer); for comparison.
    Redis,
    /// Skip the gate (benchmarks only).
    Off,
}

/// Settings a user can give on the command line or in the environment.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// Address to listen on.
    #[arg(long, global = true, env = "PLUGHOST_BIND")]
    pub bind: Option<SocketAddr>,
    /// Directory for the host's state (flags, plugins).
    #[arg(long, global = true, env = "PLUGHOST_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Plugin directory (default: <data-dir>/plugins).
    #[arg(long, global = true, env = "PLUGHOST_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,
    /// A TOML file with any of these settings (keys as the long flags, with `_`).
    #[arg(long, global = true, env = "PLUGHOST_CONFIG")]
    pub config: Option<PathBuf>,
    /// HTTP worker threads (default: one per core).
    #[arg(long, global = true, env = "PLUGHOST_WORKERS")]
    pub workers: Option<usize>,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, global = true, env = "PLUGHOST_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<u64>,
    /// Largest request body a plugin route accepts, in bytes.
    #[arg(long, global = true, env = "PLUGHOST_MAX_BODY")]
    pub max_body: Option<usize>,
    /// Key prefix of the plugin flags (FBA's `PLUGIN_REDIS_PREFIX`).
    #[arg(long, global = true, env = "PLUGIN_REDIS_PREFIX")]
    pub plugin_redis_prefix: Option<String>,
    /// Redis for the plugin flags across instances, the lifecycle lock and the key-value service (default: none).
    #[arg(long, global = true, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Seconds between reconciles of the plugin flags with the database (and Redis).
    #[arg(long, global = true, env = "PLUGHOST_FLAG_RECONCILE")]
    pub flag_reconcile: Option<f64>,
    /// Status gate on plugin routes: `cached` (default), `redis` (one Redis GET per request, as FBA) or `off` (benchmarks only).
    #[arg(long, global = true, env = "STATUS_CHECK", value_enum)]
    pub status_check: Option<StatusCheck>,
    /// Plugins that may not be uninstalled, comma-separated (default: dict).
    #[arg(
        long,
        global = true,
        env = "PLUGHOST_REQUIRED_PLUGINS",
        value_delimiter = ','
    )]
    pub required_plugins: Option<Vec<String>>,
    /// Database URL: sqlite://FILE, postgres://… or mysql://… (default: SQLite in the data dir).
    #[arg(long, global = true, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Primary keys of new rows: `autoincrement` (default) or `snowflake`.
    #[arg(long, global = true, env = "PLUGHOST_PK_MODE", value_enum)]
    pub pk_mode: Option<PkMode>,
    /// This instance's snowflake worker id (0-1023).
    #[arg(long, global = true, env = "PLUGHOST_WORKER_ID")]
    pub worker_id: Option<u16>,
    /// Token signing secret, at least 32 characters (default: generated once into <data-dir>/jwt.secret).
    #[arg(
        long,
        global = true,
        env = "PLUGHOST_JWT_SECRET",
        hide_env_values = true
    )]
    pub jwt_secret: Option<String>,
    /// Access token lifetime in seconds.
    #[arg(long, global = true, env = "PLUGHOST_TOKEN_TTL")]
    pub token_ttl: Option<u64>,
    /// `dev` (uninstalling allowed) or any other name, e.g. `prod` (FBA's `ENVIRONMENT`).
    #[arg(long, global = true, env = "PLUGHOST_ENVIRONMENT")]
    pub environment: Option<String>,
    /// Directory of uninstall backups (default: <data-dir>/backups).
    #[arg(long, global = true, env = "PLUGHOST_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Backups kept per plugin.
    #[arg(long, global = true, env = "PLUGHOST_BACKUP_KEEP")]
    pub backup_keep: Option<usize>,
    /// Largest plugin package accepted, in bytes.
    #[arg(long, global = true, env = "PLUGHOST_MAX_PACKAGE")]
    pub max_package: Option<u64>,
    /// Most entries in a plugin package.
    #[arg(long, global = true, env = "PLUGHOST_MAX_PACKAGE_ENTRIES")]
    pub max_package_entries: Option<usize>,
    /// Largest total a plugin package unpacks to, in bytes.
    #[arg(long, global = true, env = "PLUGHOST_MAX_UNPACKED")]
    pub max_unpacked: Option<u64>,
    /// Largest unpacked-to-packed ratio of a package entry.
    #[arg(long, global = true, env = "PLUGHOST_MAX_RATIO")]
    pub max_ratio: Option<u64>,
    /// Seconds a plugin operation waits for another one to finish.
    #[arg(long, global = true, env = "PLUGHOST_LOCK_WAIT")]
    pub lock_wait: Option<u64>,
    /// Hosts `https://` Git installs may name, comma-separated.
    #[arg(long, global = true, env = "PLUGHOST_GIT_HOSTS", value_delimiter = ',')]
    pub git_hosts: Option<Vec<String>>,
    /// Plugin catalogs to list and install from: URLs or paths of a catalog's folder or its index.json, comma-separated.
    #[arg(
        long = "plugin-catalog",
        global = true,
        env = "PLUGHOST_CATALOG",
        value_delimiter = ','
    )]
    pub plugin_catalog: Option<Vec<String>>,
    /// Seconds reading a catalog's index may take in all (default 15).
    #[arg(long, global = true, env = "PLUGHOST_CATALOG_TIMEOUT")]
    pub catalog_timeout: Option<u64>,
    /// Allow Git installs from file:// URLs and local paths.
    #[arg(long, global = true, env = "PLUGHOST_GIT_ALLOW_LOCAL", value_parser = clap::builder::FalseyValueParser::new())]
    pub git_allow_local: bool,
    /// Seconds a plugin crate's build may take.
    #[arg(long, global = true, env = "PLUGHOST_BUILD_TIMEOUT")]
    pub build_timeout: Option<u64>,
    /// Cargo target dir for plugin builds (default: <data-dir>/build).
    #[arg(long, global = true, env = "PLUGHOST_BUILD_DIR")]
    pub build_dir: Option<PathBuf>,
    /// This instance's name in the plugin list's `instances` (default: a random id kept in <data-dir>/instance.id).
    #[arg(long, global = true, env = "PLUGHOST_INSTANCE_ID")]
    pub instance_id: Option<String>,
    /// Seconds a plugin's start or stop hook may take.
    #[arg(long, global = true, env = "PLUGHOST_HOOK_TIMEOUT")]
    pub hook_timeout: Option<u64>,
    /// Blocking calls one plugin may run at once (the rest wait).
    #[arg(long, global = true, env = "PLUGHOST_PLUGIN_BLOCKING")]
    pub plugin_blocking: Option<usize>,
    /// Seconds a request body may stall (no bytes arriving) before the request is answered 408.
    #[arg(long, global = true, env = "PLUGHOST_BODY_TIMEOUT")]
    pub body_timeout: Option<u64>,
    /// Seconds a plugin's handler may take to answer (a route may declare its own) before the request is answered 504.
    #[arg(long, global = true, env = "PLUGHOST_PLUGIN_TIMEOUT")]
    pub plugin_timeout: Option<u64>,
    /// Plugins that run in a supervised child process: names separated by commas, or `*` for all.
    #[arg(long, global = true, env = "PLUGHOST_ISOLATED_PLUGINS")]
    pub isolated_plugins: Option<String>,
    /// The address space an isolated plugin's child may take, in MiB (0: no cap).
    #[arg(long, global = true, env = "PLUGHOST_ISOLATED_MEMORY_MB")]
    pub isolated_memory_mb: Option<u64>,
    /// Seconds between health checks of an isolated plugin's child; one not answered within as long kills it.
    #[arg(long, global = true, env = "PLUGHOST_ISOLATED_HEALTH")]
    pub isolated_health: Option<u64>,
    /// Password hashes computed at once (logins beyond wait briefly, then answer 503).
    #[arg(long, global = true, env = "PLUGHOST_PASSWORD_HASHES")]
    pub password_hashes: Option<usize>,
    /// Failed logins for one user name before it answers 429 until the lockout ends.
    #[arg(long, global = true, env = "PLUGHOST_LOGIN_FAILURES")]
    pub login_failures: Option<u32>,
    /// Failed logins from one client address before it answers 429 until the lockout ends.
    #[arg(long, global = true, env = "PLUGHOST_LOGIN_ADDRESS_FAILURES")]
    pub login_address_failures: Option<u32>,
    /// Seconds a throttled user name or address waits after its last failed login.
    #[arg(long, global = true, env = "PLUGHOST_LOGIN_LOCKOUT")]
    pub login_lockout: Option<u64>,
    /// Log one line per request (method, route template, status, duration, trace id): true or false (default true).
    #[arg(long, global = true, env = "PLUGHOST_ACCESS_LOG", value_parser = clap::builder::BoolishValueParser::new())]
    pub access_log: Option<bool>,
    /// Record metrics for `/metrics`: true or false (default true).
    #[arg(long, global = true, env = "PLUGHOST_METRICS", value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics: Option<bool>,
    /// Serve `/metrics` on this address instead, without a token (default: on the main port, with a token holding sys:metrics:read).
    #[arg(long, global = true, env = "PLUGHOST_METRICS_BIND")]
    pub metrics_bind: Option<SocketAddr>,
    /// Public key files (minisign format) of the signers whose packages this host trusts, comma-separated.
    #[arg(
        long,
        global = true,
        env = "PLUGHOST_TRUSTED_KEYS",
        value_delimiter = ','
    )]
    pub trusted_keys: Option<Vec<PathBuf>>,
    /// Refuse packages not signed by a trusted key: true or false (default: true when the environment is `prod`, else false).
    #[arg(long, global = true, env = "PLUGHOST_REQUIRE_SIGNED", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_signed: Option<bool>,
    /// Also mount the native baseline route `/native/hello/v1/greet` (benchmarks).
    #[arg(long, global = true, env = "PLUGHOST_BENCH_BASELINE", value_parser = clap::builder::FalseyValueParser::new())]
    pub bench_baseline: bool,
}

/// The same settings read from a file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    bind: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    plugin_dir: Option<PathBuf>,
    workers: Option<usize>,
    shutdown_timeout: Option<u64>,
    max_body: Option<usize>,
    plugin_redis_prefix: Option<String>,
    redis_url: Option<String>,
    flag_reconcile: Option<f64>,
    status_check: Option<StatusCheck>,
    access_log: Option<bool>,
    metrics: Option<bool>,
    metrics_bind: Option<SocketAddr>,
    trusted_keys: Option<Vec<PathBuf>>,
    require_signed: Option<bool>,
    bench_baseline: Option<bool>,
    required_plugins: Option<Vec<String>>,
    database_url: Option<String>,
    pk_mode: Option<PkMode>,
    worker_id: Option<u16>,
    jwt_secret: Option<String>,
    token_ttl: Option<u64>,
    environment: Option<String>,
    backup_dir: Option<PathBuf>,
    backup_keep: Option<usize>,
    max_package: Option<u64>,
    max_package_entries: Option<usize>,
    max_unpacked: Option<u64>,
    max_ratio: Option<u64>,
    lock_wait: Option<u64>,
    plugin_catalog: Option<Vec<String>>,
    catalog_timeout: Option<u64>,
    git_hosts: Option<Vec<String>>,
    git_allow_local: Option<bool>,
    build_timeout: Option<u64>,
    build_dir: Option<PathBuf>,
    body_timeout: Option<u64>,
    plugin_timeout: Option<u64>,
    isolated_plugins: Option<String>,
    isolated_memory_mb: Option<u64>,
    isolated_health: Option<u64>,
    instance_id: Option<String>,
    hook_timeout: Option<u64>,
    plugin_blocking: Option<usize>,
    password_hashes: Option<usize>,
    login_failures: Option<u32>,
    login_address_failures: Option<u32>,
    login_lockout: Option<u64>,
}

/// The resolved settings the host runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Listen address.
    pub bind: SocketAddr,
    /// State directory.
    pub data_dir: PathBuf,
    /// Plugin directory.
    pub plugin_dir: PathBuf,
    /// HTTP worker threads.
    pub workers: usize,
    /// Grace period for in-flight requests on shutdown.
    pub shutdown_timeout: Duration,
    /// Largest request body for plugin routes.
    pub max_body: usize,
    /// Flag key prefix, without the trailing colon.
    pub flag_prefix: String,
    /// Redis URL, when flags are shared through Redis.
    pub redis_url: Option<String>,
    /// Interval of the flag reconcile.
    pub flag_reconcile: Duration,
    /// Status gate mode.
    pub status_check: StatusCheck,
    /// Whether the native baseline route is mounted.
    pub bench_baseline: bool,
    /// Plugins that may not be uninstalled.
    pub required_plugins: Vec<String>,
    /// Database URL.
    pub database_url: String,
    /// Primary-key mode.
    pub pk_mode: PkMode,
    /// Snowflake worker id.
    pub worker_id: u16,
    /// Configured token secret (else the data dir's file).
    pub jwt_secret: Option<String>,
    /// Access token lifetime.
    pub token_ttl: Duration,
    /// `dev` allows uninstalling.
    pub environment: String,
    /// Where uninstall backups go.
    pub backup_dir: PathBuf,
    /// Backups kept per plugin.
    pub backup_keep: usize,
    /// Limits on plugin packages.
    pub package_limits: PackageLimits,
    /// Where Git installs may come from, and plugin builds.
    pub git: GitPolicy,
    /// How long a plugin operation waits for another one.
    pub lock_wait: Duration,
    /// The plugin catalogs (`PLUGHOST_CATALOG`): their indexes.
    pub catalogs: Vec<crate::plugin::lifecycle::catalog::Location>,
    /// How long reading a catalog's index may take.
    pub catalog_timeout: Duration,
    /// How long a request body may stall.
    pub body_timeout: Duration,
    /// How long a plugin's handler may take, unless its route says.
    pub plugin_timeout: Duration,
    /// Which plugins run isolated.
    pub isolated: crate::plugin::isolation::Isolated,
    /// An isolated child's address space cap, MiB (0: none).
    pub isolated_memory_mb: u64,
    /// How often an isolated child's health is checked.
    pub isolated_health: Duration,
    /// This instance's name, when set (else the data dir's `instance.id`).
    pub instance_id: Option<String>,
    /// How logins are limited.
    pub login: crate::auth::LoginLimits,
    /// Whether each request is logged.
    pub access_log: bool,
    /// Whether metrics are recorded.
    pub metrics: bool,
    /// A separate address for `/metrics` (no token there).
    pub metrics_bind: Option<SocketAddr>,
    /// Which package signers are trusted, and whether a signature is required.
    pub trust: crate::plugin::loading::trust::TrustPolicy,
    /// How long lifespan hooks may take, and how much blocking work a plugin may run at once.
    pub plugin_runs: PluginRunLimits,
}

/// Limits on an uploaded package.
#[derive(Debug, Clone, Copy)]
pub struct PackageLimits {
    /// Largest archive, in bytes.
    pub max_archive: u64,
    /// Most entries.
    pub max_entries: usize,
    /// Largest total of unpacked bytes.
    pub max_unpacked: u64,
    /// Largest ratio of an entry's unpacked to packed size.
    pub max_ratio: u64,
}

impl Default for PackageLimits {
    fn default() -> Self {
        Self {
            max_archive: 256 << 20,
            max_entries: 10_000,
            max_unpacked: 1 << 30,
            max_ratio: 100,
        }
    }
}

/// Where Git installs may come from, and how plugin crates are built.
#[derive(Debug, Clone)]
pub struct GitPolicy {
    /// Hosts `https://` URLs may name.
    pub hosts: Vec<String>,
    /// Whether `file://` URLs and local paths are allowed.
    pub allow_local: bool,
    /// How long a plugin crate's build may take.
    pub build_timeout: Duration,
    /// Cargo's target dir for plugin builds (kept between builds).
    pub build_dir: PathBuf,
}

/// Bounds on what a running plugin does in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PluginRunLimits {
    /// How long a start or stop hook may take.
    pub hook_timeout: Duration,
    /// Blocking calls of one plugin running at once.
    pub blocking: usize,
}

impl Default for PluginRunLimits {
    fn default() -> Self {
        Self {
            hook_timeout: Duration::from_secs(10),
            blocking: 8,
        }
    }
}

/// A settings file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown keys.
    #[error("config file {path} is invalid: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("setting {name} is invalid: {message}")]
    Invalid {
        /// The setting.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Settings {
    /// Resolves the settings from the arguments and their optional file.
    pub fn resolve(args: &SettingsArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let data_dir = args
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("data"));
        let plugin_dir = args
            .plugin_dir
            .clone()
            .or(file.plugin_dir)
            .unwrap_or_else(|| data_dir.join("plugins"));
        let workers = args
            .workers
            .or(file.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if workers == 0 {
            return Err(ConfigError::Invalid {
                name: "workers",
                message: "must be at least 1".into(),
            });
        }
        let flag_prefix = args
            .plugin_redis_prefix
            .clone()
            .or(file.plugin_redis_prefix)
            .unwrap_or_else(|| "fba:plugin".into());
        let flag_prefix = flag_prefix.trim_end_matches(':').to_owned();
        if flag_prefix.is_empty() {
            return Err(ConfigError::Invalid {
                name: "plugin_redis_prefix",
                message: "must not be empty".into(),
            });
        }
        let flag_reconcile = args.flag_reconcile.or(file.flag_reconcile).unwrap_or(5.0);
        if !(0.05..=3600.0).contains(&flag_reconcile) {
            return Err(ConfigError::Invalid {
                name: "flag_reconcile",
                message: format!("{flag_reconcile} s is out of range 0.05-3600"),
            });
        }
        let redis_url = args.redis_url.clone().or(file.redis_url);
        let status_check = args
            .status_check
            .or(file.status_check)
            .unwrap_or(StatusCheck::Cached);
        if status_check == StatusCheck::Redis && redis_url.is_none() {
            return Err(ConfigError::Invalid {
                name: "status_check",
                message: "`redis` reads the flags from Redis on every request and needs REDIS_URL"
                    .into(),
            });
        }
        let body_timeout = args.body_timeout.or(file.body_timeout).unwrap_or(15);
        if body_timeout == 0 {
            return Err(ConfigError::Invalid {
                name: "body_timeout",
                message: "must be at least 1 second".into(),
            });
        }
        let plugin_timeout = args.plugin_timeout.or(file.plugin_timeout).unwrap_or(30);
        if !(1..=MAX_PLUGIN_TIMEOUT_SECS).contains(&plugin_timeout) {
            return Err(ConfigError::Invalid {
                name: "plugin_timeout",
                message: format!("must be 1 to {MAX_PLUGIN_TIMEOUT_SECS} seconds"),
            });
        }
        let isolated_health = args.isolated_health.or(file.isolated_health).unwrap_or(5);
        if isolated_health == 0 {
            return Err(ConfigError::Invalid {
                name: "isolated_health",
                message: "must be at least 1 second".into(),
            });
        }
        let login = {
            let default = crate::auth::LoginLimits::default();
            crate::auth::LoginLimits {
                concurrent_hashes: args
                    .password_hashes
                    .or(file.password_hashes)
                    .unwrap_or(default.concurrent_hashes)
                    .max(1),
                failures_per_user: args
                    .login_failures
                    .or(file.login_failures)
                    .unwrap_or(default.failures_per_user)
                    .max(1),
                failures_per_address: args
                    .login_address_failures
                    .or(file.login_address_failures)
                    .unwrap_or(default.failures_per_address)
                    .max(1),
                lockout: args
                    .login_lockout
                    .or(file.login_lockout)
                    .map_or(default.lockout, Duration::from_secs),
            }
        };
        let instance_id = args.instance_id.clone().or(file.instance_id);
        if let Some(id) = &instance_id
            && (id.is_empty() || id.len() > 64)
        {
            return Err(ConfigError::Invalid {
                name: "instance_id",
                message: format!("'{id}' must be 1 to 64 characters"),
            });
        }
        let metrics = args.metrics.or(file.metrics).unwrap_or(true);
        let metrics_bind = args.metrics_bind.or(file.metrics_bind);
        if metrics_bind.is_some() && !metrics {
            return Err(ConfigError::Invalid {
                name: "metrics_bind",
                message:
                    "serves the metrics, which PLUGHOST_METRICS=false turns off; set one of them"
                        .into(),
            });
        }
        let environment = args
            .environment
            .clone()
            .or(file.environment)
            .unwrap_or_else(|| "dev".into());
        let trusted_keys = args
            .trusted_keys
            .clone()
            .or(file.trusted_keys)
            .unwrap_or_default();
        let trust = crate::plugin::loading::trust::TrustPolicy::load(
            &trusted_keys,
            args.require_signed
                .or(file.require_signed)
                .unwrap_or(environment == "prod"),
        )
        .map_err(|e| ConfigError::Invalid {
            name: "trusted_keys",
            message: e.to_string(),
        })?;
        let catalogs = args
            .plugin_catalog
            .clone()
            .or(file.plugin_catalog)
            .unwrap_or_default()
            .iter()
            .map(|c| c.trim())
            .filter(|c| !c.is_empty())
            .map(crate::plugin::lifecycle::catalog::Location::catalog)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid {
                name: "catalog",
                message: e.to_string(),
            })?;
        Ok(Self {
            access_log: args.access_log.or(file.access_log).unwrap_or(true),
            metrics,
            metrics_bind,
            trust,
            body_timeout: Duration::from_secs(body_timeout),
            plugin_timeout: Duration::from_secs(plugin_timeout),
            isolated: crate::plugin::isolation::Isolated::parse(
                args.isolated_plugins
                    .as_deref()
                    .or(file.isolated_plugins.as_deref())
                    .unwrap_or_default(),
            ),
            isolated_memory_mb: args
                .isolated_memory_mb
                .or(file.isolated_memory_mb)
                .unwrap_or(0),
            isolated_health: Duration::from_secs(isolated_health),
            instance_id,
            login,
            bind: args
                .bind
                .or(file.bind)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8000))),
            plugin_dir,
            workers,
            shutdown_timeout: Duration::from_secs(
                args.shutdown_timeout
                    .or(file.shutdown_timeout)
                    .unwrap_or(30),
            ),
            max_body: args.max_body.or(file.max_body).unwrap_or(16 * 1024 * 1024),
            flag_prefix,
            redis_url,
            flag_reconcile: Duration::from_secs_f64(flag_reconcile),
            status_check,
            bench_baseline: args.bench_baseline || file.bench_baseline.unwrap_or(false),
            required_plugins: args
                .required_plugins
                .clone()
                .or(file.required_plugins)
                .unwrap_or_else(|| vec!["dict".to_owned()]),
            database_url: args
                .database_url
                .clone()
                .or(file.database_url)
                .unwrap_or_else(|| crate::db::default_url(&data_dir)),
            pk_mode: args
                .pk_mode
                .or(file.pk_mode)
                .unwrap_or(PkMode::Autoincrement),
            worker_id: worker_id(args.worker_id.or(file.worker_id))?,
            jwt_secret: args.jwt_secret.clone().or(file.jwt_secret),
            token_ttl: Duration::from_secs(args.token_ttl.or(file.token_ttl).unwrap_or(86_400)),
            environment,
            backup_dir: args
                .backup_dir
                .clone()
                .or(file.backup_dir)
                .unwrap_or_else(|| data_dir.join("backups")),
            backup_keep: args.backup_keep.or(file.backup_keep).unwrap_or(10).max(1),
            package_limits: {
                let default = PackageLimits::default();
                PackageLimits {
                    max_archive: args
                        .max_package
                        .or(file.max_package)
                        .unwrap_or(default.max_archive),
                    max_entries: args
                        .max_package_entries
                        .or(file.max_package_entries)
                        .unwrap_or(default.max_entries),
                    max_unpacked: args
                        .max_unpacked
                        .or(file.max_unpacked)
                        .unwrap_or(default.max_unpacked),
                    max_ratio: args
                        .max_ratio
                        .or(file.max_ratio)
                        .unwrap_or(default.max_ratio)
                        .max(1),
                }
            },
            lock_wait: Duration::from_secs(args.lock_wait.or(file.lock_wait).unwrap_or(10)),
            catalogs,
            catalog_timeout: Duration::from_secs(
                args.catalog_timeout
                    .or(file.catalog_timeout)
                    .unwrap_or(15)
                    .max(1),
            ),
            plugin_runs: {
                let default = PluginRunLimits::default();
                PluginRunLimits {
                    hook_timeout: args
                        .hook_timeout
                        .or(file.hook_timeout)
                        .map_or(default.hook_timeout, Duration::from_secs),
                    blocking: args
                        .plugin_blocking
                        .or(file.plugin_blocking)
                        .unwrap_or(default.blocking)
                        .max(1),
                }
            },
            git: GitPolicy {
                hosts: args
                    .git_hosts
                    .clone()
                    .or(file.git_hosts)
                    .unwrap_or_else(|| {
                        ["github.com", "gitlab.com", "gitee.com", "codeberg.org"]
                            .map(String::from)
                            .to_vec()
                    }),
                allow_local: args.git_allow_local || file.git_allow_local.unwrap_or(false),
                build_timeout: Duration::from_secs(
                    args.build_timeout.or(file.build_timeout).unwrap_or(600),
                ),
                build_dir: args
                    .build_dir
                    .clone()
                    .or(file.build_dir)
                    .unwrap_or_else(|| data_dir.join("build")),
            },
            data_dir,
        })
    }
}

fn worker_id(id: Option<u16>) -> Result<u16, ConfigError> {
    match id {
        Some(id) if id > 1023 => Err(ConfigError::Invalid {
            name: "worker_id",
            message: format!("{id} is out of range 0-1023"),
        }),
        id => Ok(id.unwrap_or(0)),
    }
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_wins_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plughost.toml");
        std::fs::write(&file, "bind = \"127.0.0.1:9001\"\nworkers = 3\n").unwrap();
        let args = SettingsArgs {
            config: Some(file),
            workers: Some(5),
            ..Default::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.bind.port(), 9001);
        assert_eq!(s.workers, 5);
        assert_eq!(s.plugin_dir, PathBuf::from("data/plugins"));
        assert_eq!(s.flag_prefix, "fba:plugin");
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plughost.toml");
        std::fs::write(&file, "bnd = \"x\"\n").unwrap();
        let args = SettingsArgs {
            config: Some(file),
            ..Default::default()
        };
        let err = Settings::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("bnd"), "{err}");
    }
}
