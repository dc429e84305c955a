//! Install, upgrade and uninstall while serving, and packing for download.
//!
//! An install checks everything before the plugin dir is touched: the
//! package (see [`crate::plugin::lifecycle::package`]), the manifest, the library (loaded and
//! ABI-checked from the staging directory), the name it declares, the
//! installed version, its dependencies and its routes. Then, under the
//! lifecycle lock: one atomic rename (an exchange, for an upgrade) moves the
//! staged directory into place, the init SQL and the plugin's init run, and
//! a new route table is swapped in. A failure after the rename renames back.
//! A process killed at any point leaves the old plugin or the new one:
//! staging directories (`.staging-*`, ignored by discovery) are removed at
//! start-up, and a plugin renamed into place whose init never ran gets it at
//! the next start.
//!
//! Requests in flight keep the route table they started with, and with it
//! the plugin version they started on; libraries are never unloaded, and a
//! new version is always loaded from a new file.

use std::path::{Path, PathBuf};

pub mod catalog;
pub mod converge;
pub mod desired;
pub mod git;
pub mod lock;
pub mod package;
pub mod sql;
pub mod store;

use crate::plugin::{
    PluginError, PluginHost,
    loading::{
        discover::{Candidate, Source, library_file_name, mark_package},
        libcache,
        manifest::{PluginManifest, Version, is_valid_plugin_name},
        trust::{self, TrustPolicy, Verdict},
    },
    running::{
        registry::{self, PluginRecord, PluginState, Refusal},
        router::RouteTableBuilder,
        status::FlagError,
    },
};
use lock::{LockError, LockGuard};
use package::PackageError;
use sql::ScriptError;
use store::StoreError;

/// Prefix of the staging directories inside the plugin dir.
pub const STAGING_PREFIX: &str = ".staging-";

/// A lifecycle operation that cannot be done.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// The package is refused.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The plugin in the package is refused (manifest, library, name,
    /// dependencies, routes, init).
    #[error("plugin '{plugin}': {reason}")]
    Refused {
        /// The plugin.
        plugin: String,
        /// Why.
        reason: Box<Refusal>,
    },
    /// The Git source cannot be used (URL policy, clone, build).
    #[error("{0}")]
    Git(String),
    /// A plugin script failed.
    #[error(transparent)]
    Script(#[from] ScriptError),
    /// The package could not be stored (nothing was installed).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The plugin serves here but could not be recorded in the desired set.
    #[error(
        "plugin '{plugin}' is installed on this instance but could not be recorded in the database ({message}); install it again"
    )]
    Record {
        /// The plugin.
        plugin: String,
        /// Why.
        message: String,
    },
    /// The operation conflicts with what is installed.
    #[error("{0}")]
    Conflict(String),
    /// The operation is not allowed here.
    #[error("{0}")]
    Forbidden(String),
    /// The plugin named is not there or not a name.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The lifecycle lock failed.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The flags could not be recorded.
    #[error(transparent)]
    Flags(#[from] FlagError),
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
    /// A plugin catalog cannot be used.
    #[error(transparent)]
    Catalog(#[from] catalog::CatalogError),
    /// Following the cluster under this instance's lock alone, a step
    /// found the cluster's own work undone (the plugin's init script): it
    /// is taken again under the cluster's lock.
    #[error(
        "plugin '{0}': its init script has not run in the cluster; taken again under the cluster's lock"
    )]
    NeedsClusterLock(String),
}

impl LifecycleError {
    fn refused(plugin: &str, reason: Refusal) -> Self {
        Self::Refused {
            plugin: plugin.to_owned(),
            reason: Box::new(reason),
        }
    }

    /// The HTTP status this error answers: 413 for a package over a
    /// limit, 400 for a malformed one, 422 for a plugin refused, 409 for a
    /// conflict or a busy lock, 403 outside dev, 503 when the database or
    /// Redis is unreachable, 500 for the host's own failures.
    pub fn status(&self) -> u16 {
        use crate::redis::RedisError;
        match self {
            Self::Package(PackageError::TooLarge { .. } | PackageError::TooMuch { .. }) => 413,
            Self::Package(PackageError::Io { .. }) | Self::Io(_) => 500,
            Self::Package(_) => 400,
            Self::Refused { .. }
            | Self::Git(_)
            | Self::Script(ScriptError::Failed { .. } | ScriptError::Read { .. }) => 422,
            Self::Script(ScriptError::Record { .. }) | Self::Record { .. } => 500,
            Self::Conflict(_) | Self::Lock(LockError::Busy { .. }) => 409,
            Self::Forbidden(_) => 403,
            Self::Store(StoreError::Db(_)) => 503,
            Self::Store(_) => 500,
            Self::Plugin(e) => e.status(),
            Self::Catalog(e) => e.status(),
            Self::Lock(LockError::Redis(RedisError::Unavailable { .. }))
            | Self::Flags(FlagError::Redis(RedisError::Unavailable { .. })) => 503,
            Self::Lock(_) | Self::Flags(_) | Self::NeedsClusterLock(_) => 500,
        }
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> LifecycleError {
    LifecycleError::Io(format!("cannot {what} {}: {e}", path.display()))
}

/// What an install asks for.
#[derive(Debug, Clone, Default)]
pub struct InstallOptions {
    /// Replace an installed plugin with a newer version.
    pub upgrade: bool,
    /// Also replace it with an older or the same version.
    pub force: bool,
    /// Who installs it (a user name, or `cli`), for the desired set.
    pub installed_by: String,
    /// Set when this instance converges to the cluster's package with this
    /// digest: the desired set already records it, and nothing is
    /// recorded or published again.
    pub(crate) cluster: Option<String>,
}

/// Where an install takes the plugin from.
#[derive(Clone, Copy)]
pub(crate) enum Placement<'a> {
    /// `<staging>/<name>/`, renamed into place at the commit point.
    Staged(&'a Staging),
    /// The plugin dir's own `<name>/`, put there by another process on the
    /// same plugin dir (the CLI, an instance sharing it).
    InPlace,
}

/// What an install did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Installed {
    /// The plugin.
    pub name: String,
    /// Its version now.
    pub version: String,
    /// The version it replaced.
    pub previous: Option<String>,
}

/// What an uninstall did.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Uninstalled {
    /// The plugin.
    pub name: String,
    /// The backup of what was removed here (`None`: this instance did not
    /// have it; the package stays in the package store).
    #[schema(value_type = Option<String>)]
    pub backup: Option<PathBuf>,
    /// Whether its tables were dropped.
    pub purged: bool,
}

impl Uninstalled {
    /// The backup, for messages.
    pub fn backup_text(&self) -> String {
        self.backup.as_ref().map_or_else(
            || "none (this instance did not have it)".to_owned(),
            |p| p.display().to_string(),
        )
    }
}

/// A staging directory in the plugin dir, removed when dropped.
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    /// Creates a fresh one in `plugin_dir` (same filesystem, so renames
    /// into place are atomic).
    pub fn new(plugin_dir: &Path) -> Result<Self, LifecycleError> {
        let path = plugin_dir.join(format!("{STAGING_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&path).map_err(|e| io_error("create", &path, e))?;
        Ok(Self { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), "cannot remove staging directory: {e}");
        }
    }
}

/// Checks the signature of the package staged as `dir` (plugin `name`)
/// against the host's trusted keys, before its library is opened. A
/// package whose manifest cannot be read is left to the manifest's own
/// check, which names what is wrong.
pub(crate) fn check_signature(
    dir: &Path,
    name: &str,
    trust: &TrustPolicy,
) -> Result<Verdict, LifecycleError> {
    let version = std::fs::read_to_string(dir.join("plugin.toml"))
        .ok()
        .and_then(|text| PluginManifest::parse(&text).ok())
        .map(|manifest| manifest.version.to_string());
    match version {
        Some(version) => trust::verify_dir(dir, name, &version, trust)
            .map_err(|e| LifecycleError::refused(name, e.into())),
        None => Ok(Verdict::Unsigned),
    }
}

/// Removes the temporary files an interrupted backup left in `backup_dir`
/// (`.{plugin}.{uuid}.tmp`; finished backups never start with a dot).
pub fn remove_backup_leftovers(backup_dir: &Path) {
    remove_left_behind(backup_dir, "temporary backup file", |name| {
        name.starts_with('.') && name.ends_with(".tmp")
    });
}

/// Removes staging directories an interrupted operation left behind.
pub fn remove_leftovers(plugin_dir: &Path) {
    remove_left_behind(plugin_dir, "staging directory", |name| {
        name.starts_with(STAGING_PREFIX)
    });
}

/// Removes the entries of `dir` whose names say an interrupted operation
/// left them (`what` names them in the log).
fn remove_left_behind(dir: &Path, what: &str, left_behind: impl Fn(&str) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if !left_behind(&entry.file_name().to_string_lossy()) {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {
                tracing::info!(path = %path.display(), "removed a {what} an interrupted operation left")
            }
            Err(e) => tracing::warn!(path = %path.display(), "cannot remove a {what}: {e}"),
        }
    }
}

/// Swaps two paths atomically (both must exist).
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    rustix::fs::renameat_with(
        rustix::fs::CWD,
        a,
        rustix::fs::CWD,
        b,
        rustix::fs::RenameFlags::EXCHANGE,
    )
    .map_err(std::io::Error::from)
}

/// Runs file work on a blocking thread, off the HTTP workers.
pub(super) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, LifecycleError> + Send + 'static,
) -> Result<T, LifecycleError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LifecycleError::Io(format!("a file operation failed: {e}")))?
}

/// Makes a rename durable.
fn sync_dir(dir: &Path) {
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!(dir = %dir.display(), "cannot sync directory: {e}");
    }
}

impl PluginHost {
    /// Takes the cluster's lock, then this plugin dir's.
    pub(super) async fn take_lock(&self, operation: &str) -> Result<LockGuard, LifecycleError> {
        let guard = self.lock.acquire(operation, self.lock_wait).await?;
        Ok(guard.with_local(&self.local_lock, self.lock_wait).await?)
    }

    /// Takes this plugin dir's lock alone: enough to bring it to the
    /// cluster's set, which other instances do at the same time.
    pub(super) async fn take_local_lock(
        &self,
        operation: &str,
    ) -> Result<LockGuard, LifecycleError> {
        Ok(lock::local(&self.local_lock, operation, self.lock_wait).await?)
    }

    /// Removes a staging directory (and what it holds: an old version, a
    /// clone) on a blocking thread.
    pub(super) async fn discard(staging: Staging) {
        let _ = tokio::task::spawn_blocking(move || drop(staging)).await;
    }

    /// Ends an operation: removes the library copies no plugin here uses
    /// any more (an upgrade's old build, an uninstalled plugin's: mapped
    /// code stays mapped, requests in flight keep it), then releases the
    /// lock, which kept any other operation on this data dir from making a
    /// copy meanwhile. Losing the lock by then is logged (the operation
    /// checked it before its commit point).
    pub(super) async fn finish(&self, guard: LockGuard) {
        let keep: std::collections::BTreeSet<String> = self
            .set
            .records()
            .values()
            .filter_map(super::running::registry::PluginRecord::loaded)
            .map(|p| p.digest.clone())
            .collect();
        let cache = self.cache.clone();
        let _ = tokio::task::spawn_blocking(move || cache.prune(&keep)).await;
        // The package store is the cluster's: only under its lock.
        if guard.cluster_wide() {
            match store::collect(&self.db).await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(
                    "removed {n} package(s) no longer installed from the package store"
                ),
                Err(e) => tracing::warn!("could not remove packages no longer installed: {e}"),
            }
        }
        if let Err(e) = guard.release().await {
            tracing::error!("{e}");
        }
    }

    /// Installs (or upgrades) a plugin from a ZIP package.
    pub async fn install_zip(
        &self,
        archive: Vec<u8>,
        options: &InstallOptions,
    ) -> Result<Installed, LifecycleError> {
        let guard = self.take_lock("install").await?;
        let staging = Staging::new(&self.plugin_dir)?;
        let dest = staging.path().to_owned();
        let (limits, trust) = (self.limits, self.cache.trust().clone());
        let started = std::time::Instant::now();
        let (name, archive) = blocking(move || {
            let name = package::unpack(&archive, &limits, &dest)?;
            check_signature(&dest.join(&name), &name, &trust)?;
            Ok((name, archive))
        })
        .await?;
        tracing::debug!(plugin = %name, ms = started.elapsed().as_millis(), "package unpacked");
        self.install_and_finish(guard, staging, &name, options, Some(archive))
            .await
    }

    /// Installs the plugin staged as `<staging>/<name>/` (see
    /// [`Self::install_staged`]), then removes the staging directory,
    /// releases the lock and, once installed, announces it to the cluster.
    pub(super) async fn install_and_finish(
        &self,
        guard: LockGuard,
        staging: Staging,
        name: &str,
        options: &InstallOptions,
        archive: Option<Vec<u8>>,
    ) -> Result<Installed, LifecycleError> {
        let result = self
            .install_staged(&guard, Placement::Staged(&staging), name, options, archive)
            .await;
        Self::discard(staging).await;
        self.finish(guard).await;
        if let Ok(installed) = &result {
            self.announce(&installed.name).await;
            let event = if installed.previous.is_some() {
                "plugin.upgraded"
            } else {
                "plugin.installed"
            };
            crate::events::publish_core(event, &serde_json::json!(installed)).await;
            let permissions = self
                .permissions()
                .remove(&installed.name)
                .unwrap_or_default();
            crate::plugin::services::identity::grant_on_install(&installed.name, &permissions)
                .await;
        }
        result
    }

    /// Installs the plugin at `placement`. An install asked for (HTTP, CLI)
    /// stores its package (`archive`, the uploaded ZIP; `None`: the staged
    /// directory packed) before the commit point and records it in the
    /// desired set once it serves; an instance converging to the cluster's
    /// set (`options.cluster`) records nothing.
    pub(crate) async fn install_staged(
        &self,
        guard: &LockGuard,
        placement: Placement<'_>,
        name: &str,
        options: &InstallOptions,
        archive: Option<Vec<u8>>,
    ) -> Result<Installed, LifecycleError> {
        let target = self.plugin_dir.join(name);
        let staged = match placement {
            Placement::Staged(staging) => staging.path().join(name),
            Placement::InPlace => target.clone(),
        };
        let candidate = Candidate {
            name: name.to_owned(),
            source: Source::Directory(staged.clone()),
        };
        let started = std::time::Instant::now();
        // A package the cluster installs: an instance of this very build
        // has opened its library in a probe already.
        let build = libcache::build_identity();
        let vouched = match (&options.cluster, build) {
            (Some(package), Some(build)) => store::checked_library(&self.db, package, build)
                .await
                .unwrap_or_else(|e| {
                    tracing::debug!(plugin = name, "the library checks cannot be read: {e}");
                    None
                }),
            _ => None,
        };
        if let Some(library) = &vouched {
            self.cache.vouch(library);
        }
        // Loading a library (dlopen, relocations, ABI check) blocks: off the
        // HTTP workers, which keep serving meanwhile.
        let cache = self.cache.clone();
        let (_, opened) =
            blocking(move || Ok(registry::open_candidate(&candidate, &cache))).await?;
        tracing::debug!(
            plugin = name,
            ms = started.elapsed().as_millis(),
            checked_elsewhere = vouched.is_some(),
            "library opened"
        );
        let loaded = opened.map_err(|reason| LifecycleError::refused(name, reason))?;
        let mut loaded = registry::start_isolated(name, loaded)
            .await
            .map_err(|reason| LifecycleError::refused(name, reason))?;
        let version = loaded.manifest.version;

        // What is installed under that name now.
        let (previous, previous_enabled, replaced) = {
            let records = self.set.records();
            match records.get(name) {
                None => (None, None, None),
                Some(record) => {
                    let installed = record.manifest.as_ref().map(|m| m.version);
                    let shown = installed
                        .as_ref()
                        .map_or_else(|| "(unreadable)".to_owned(), ToString::to_string);
                    if !options.upgrade {
                        return Err(LifecycleError::Conflict(format!(
                            "plugin '{name}' {shown} is installed; to replace it with {version}, install with upgrade=true"
                        )));
                    }
                    if !record.source.is_dir() {
                        return Err(LifecycleError::Conflict(format!(
                            "plugin '{name}' was dropped in as the lone library {}; remove it (or uninstall the plugin) and install again",
                            record.source.display()
                        )));
                    }
                    if let Some(installed) = &installed
                        && version <= *installed
                        && !options.force
                    {
                        return Err(LifecycleError::Conflict(format!(
                            "plugin '{name}' {installed} is installed and {version} is not newer; install with force=true to replace it anyway"
                        )));
                    }
                    let enabled = record.loaded().map(|p| p.enabled());
                    let replaced = match placement {
                        Placement::Staged(_) => Some(record.source.clone()),
                        Placement::InPlace => None,
                    };
                    (installed.map(|v| v.to_string()), enabled, replaced)
                }
            }
        };
        if options.cluster.is_none() {
            self.check_desired(name, version, options).await?;
        }
        // Following the cluster alongside other instances: nothing here
        // may write what is the cluster's (init SQL runs once, under the
        // cluster's lock, on the instance that installs).
        if !guard.cluster_wide() {
            let scripts = sql::Scripts::new(Some(&staged), loaded.code().files());
            if sql::init_pending(&self.db, name, &scripts).await? {
                return Err(LifecycleError::NeedsClusterLock(name.to_owned()));
            }
        }
        {
            let records = self.set.records();
            if let Some(missing) = loaded
                .manifest
                .depends_on
                .iter()
                .find(|d| records.get(*d).and_then(PluginRecord::loaded).is_none())
            {
                return Err(LifecycleError::refused(
                    name,
                    Refusal::DependencyNotLoaded(missing.clone()),
                ));
            }
        }
        // Routes: checked against everything else before anything moves.
        let routers = loaded.code().routers();
        let routes = registry::plugin_routes(name, &loaded.manifest, &routers)
            .map_err(|reason| LifecycleError::refused(name, reason))?;
        let table = self.routes();
        let mut trial = RouteTableBuilder::from_table(&table, Some(name));
        let probe = registry::probe_plugin(name, &loaded);
        trial
            .add(probe, routes)
            .map_err(|e| LifecycleError::refused(name, e.into()))?;

        // The package, stored before anything moves (another instance may
        // fetch it as soon as the desired set names it), and named in the
        // plugin's directory.
        let digest = match &options.cluster {
            Some(digest) => digest.clone(),
            None => {
                let (dir, owned) = (staged.clone(), name.to_owned());
                let bytes = match archive {
                    Some(bytes) => bytes,
                    None => {
                        blocking(move || {
                            package::pack(&package::PackSource::Dir(dir.clone()), &owned)
                                .map_err(|e| io_error("pack", &dir, e))
                        })
                        .await?
                    }
                };
                store::put(&self.db, &bytes).await?
            }
        };
        if let Some(build) = build
            && vouched.as_deref() != Some(loaded.digest.as_str())
            && let Err(e) = store::record_checked(&self.db, &digest, build, &loaded.digest).await
        {
            // Others of this build then probe the library themselves.
            tracing::warn!(plugin = name, "cannot record the library's check: {e}");
        }
        if let Placement::Staged(_) = placement {
            let dir = staged.clone();
            let marked = digest.clone();
            blocking(move || {
                mark_package(&dir, &marked).map_err(|e| io_error("write into", &dir, e))
            })
            .await?;
        }
        guard.ensure_held().await?;

        // The commit point: into place in one rename (an exchange for an
        // upgrade), made durable; on a blocking thread, like every file step.
        if let Placement::Staged(_) = placement {
            let (from, to, old, dir) = (
                staged.clone(),
                target.clone(),
                replaced.clone(),
                self.plugin_dir.clone(),
            );
            blocking(move || {
                match &old {
                    Some(old) => exchange(&from, old).map_err(|e| io_error("replace", old, e))?,
                    None => {
                        if to.exists() {
                            return Err(LifecycleError::Conflict(format!(
                                "{} exists but is not an installed plugin; remove it first",
                                to.display()
                            )));
                        }
                        std::fs::rename(&from, &to)
                            .map_err(|e| io_error("move into place", &to, e))?;
                    }
                }
                sync_dir(&dir);
                Ok(())
            })
            .await?;
        }
        let undo = || {
            let (staged, target, replaced, dir, name) = (
                staged.clone(),
                target.clone(),
                replaced.clone(),
                self.plugin_dir.clone(),
                name.to_owned(),
            );
            let moved = matches!(placement, Placement::Staged(_));
            blocking(move || {
                if !moved {
                    return Ok(());
                }
                let result = match &replaced {
                    Some(old) => exchange(&staged, old),
                    None => std::fs::rename(&target, &staged),
                };
                if let Err(e) = result {
                    tracing::error!(plugin = name, "cannot roll the plugin dir back: {e}");
                }
                sync_dir(&dir);
                Ok(())
            })
        };

        // Init SQL and the plugin's init, against the table without the old version.
        loaded.library = target.join(library_file_name(name));
        loaded.dir = Some(target.clone());
        let recorded = self.flags.flag(name).await?;
        let enabled = previous_enabled
            .or(recorded.as_ref().map(|f| f.enabled))
            .unwrap_or(true);
        let mut builder = RouteTableBuilder::from_table(&table, Some(name));
        let started = std::time::Instant::now();
        let plugin =
            match registry::mount(name, loaded, &mut builder, enabled, Some(&self.db)).await {
                Ok(plugin) => plugin,
                Err(reason) => {
                    let _ = undo().await;
                    return Err(LifecycleError::refused(name, reason));
                }
            };
        tracing::debug!(
            plugin = name,
            ms = started.elapsed().as_millis(),
            "plugin mounted"
        );
        // A serving host starts the new build before its routes go live;
        // the old build serves meanwhile and stops once they are. The same
        // library mounted again shares its statics with the old build,
        // which then stops first.
        let replacing = self
            .set
            .records()
            .get(name)
            .and_then(PluginRecord::loaded)
            .cloned();
        let same_library = replacing
            .as_ref()
            .is_some_and(|old| old.digest == plugin.digest);
        if self.serving() {
            if same_library {
                self.retire(replacing.clone()).await;
            }
            self.publish_services_with(Some(&plugin));
            if let Err(e) = plugin.start().await {
                let _ = undo().await;
                self.publish_services();
                if same_library
                    && let Some(old) = &replacing
                    && let Err(e) = old.start().await
                {
                    tracing::error!(
                        plugin = name,
                        "the build it replaced cannot start again: {e}"
                    );
                }
                return Err(LifecycleError::refused(name, e.into()));
            }
        }
        let flags = match self
            .flags
            .sync(
                recorded.into_iter().collect(),
                &[(name.to_owned(), plugin.manifest.flag_value(name, true))],
            )
            .await
        {
            Ok(flags) => flags,
            Err(e) => {
                plugin.stop().await;
                let _ = undo().await;
                return Err(e.into());
            }
        };
        let manifest = plugin.manifest.clone();
        let text = plugin.code.manifest_text();
        let left = self.set.mount(
            PluginRecord {
                name: name.to_owned(),
                source: target.clone(),
                manifest: Some(manifest),
                state: PluginState::Loaded(plugin),
                package: Some(digest.clone()),
            },
            builder.build(),
        );
        if !same_library {
            self.retire(left).await;
        }
        for flag in flags.iter().filter(|f| f.name == name) {
            self.apply(&flag.name, flag.enabled, flag.revision);
        }
        self.forget_divergence(name);
        self.publish_services();
        self.report_soon();
        if options.cluster.is_none() {
            self.record_desired(name, &target, &version.to_string(), digest, options, &text)
                .await
                .map_err(|e| LifecycleError::Record {
                    plugin: name.to_owned(),
                    message: e.to_string(),
                })?;
        }
        tracing::info!(plugin = name, %version, previous = ?previous, "plugin installed; its routes are live");
        Ok(Installed {
            name: name.to_owned(),
            version: version.to_string(),
            previous,
        })
    }

    /// Refuses an install the cluster's desired set conflicts with: the
    /// name installed (on any instance) without `upgrade`, or at a version
    /// not older without `force`. Checked under the lifecycle lock, so of
    /// two installs of one plugin on two instances one wins and the other
    /// gets a conflict.
    async fn check_desired(
        &self,
        name: &str,
        version: Version,
        options: &InstallOptions,
    ) -> Result<(), LifecycleError> {
        let Some(installed) = desired::get(&self.db, name)
            .await
            .map_err(StoreError::from)?
        else {
            return Ok(());
        };
        let by = format!(
            "by {} at {}",
            installed.installed_by,
            chrono::DateTime::from_timestamp_millis(installed.installed_at)
                .map_or_else(String::new, |t| t.to_rfc3339())
        );
        if !options.upgrade {
            return Err(LifecycleError::Conflict(format!(
                "plugin '{name}' {} is installed in the cluster ({by}); to replace it with {version}, install with upgrade=true",
                installed.version
            )));
        }
        let newer = installed
            .version
            .parse::<Version>()
            .is_ok_and(|old| version > old);
        if !newer && !options.force {
            return Err(LifecycleError::Conflict(format!(
                "plugin '{name}' {} is installed in the cluster ({by}) and {version} is not newer; install with force=true to replace it anyway",
                installed.version
            )));
        }
        Ok(())
    }

    /// Records an installed plugin in the desired set (its package is in
    /// the store already): version, digest, source (`.source.json` of a Git
    /// install), who and when.
    async fn record_desired(
        &self,
        name: &str,
        dir: &Path,
        version: &str,
        digest: String,
        options: &InstallOptions,
        manifest: &str,
    ) -> Result<i64, sea_orm::DbErr> {
        let source = std::fs::read_to_string(dir.join(".source.json"))
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .map(|mut git| {
                git["type"] = "git".into();
                git
            })
            .unwrap_or_else(|| serde_json::json!({ "type": "zip" }));
        let installed_by = if options.installed_by.is_empty() {
            "unknown".to_owned()
        } else {
            options.installed_by.clone()
        };
        desired::record(
            &self.db,
            &desired::Desired {
                name: name.to_owned(),
                version: version.to_owned(),
                digest,
                source,
                installed_by,
                installed_at: chrono::Utc::now().timestamp_millis(),
                revision: 0,
                removed: false,
            },
            manifest,
        )
        .await
    }

    /// Uninstalls a plugin: backup, routes gone, files removed, flag
    /// removed; its tables are dropped (destroy script) only with `purge`.
    pub async fn uninstall(&self, name: &str, purge: bool) -> Result<Uninstalled, LifecycleError> {
        if !is_valid_plugin_name(name) {
            return Err(PluginError::InvalidName(name.to_owned()).into());
        }
        if !self.dev {
            return Err(LifecycleError::Forbidden(format!(
                "uninstalling is allowed only in the dev environment (PLUGHOST_ENVIRONMENT=dev); this host runs in '{}'",
                self.environment
            )));
        }
        if self.is_required(name) {
            return Err(LifecycleError::Conflict(format!(
                "plugin '{name}' is required (PLUGHOST_REQUIRED_PLUGINS) and cannot be uninstalled"
            )));
        }
        let guard = self.take_lock("uninstall").await?;
        let result = self.uninstall_locked(&guard, name, purge).await;
        self.finish(guard).await;
        if let Ok(uninstalled) = &result {
            self.announce(name).await;
            let event = serde_json::json!({ "name": name, "purged": uninstalled.purged });
            crate::events::publish_core("plugin.uninstalled", &event).await;
        }
        result
    }

    async fn uninstall_locked(
        &self,
        guard: &LockGuard,
        name: &str,
        purge: bool,
    ) -> Result<Uninstalled, LifecycleError> {
        let in_cluster = desired::get(&self.db, name)
            .await
            .map_err(StoreError::from)?;
        let here = {
            let records = self.set.records();
            let dependents: Vec<&str> = records
                .values()
                .filter_map(PluginRecord::loaded)
                .filter(|p| p.manifest.depends_on.iter().any(|d| d == name))
                .map(|p| p.name.as_str())
                .collect();
            if !dependents.is_empty() {
                return Err(LifecycleError::Conflict(format!(
                    "plugin '{name}' is needed by {}; uninstall those first",
                    dependents
                        .iter()
                        .map(|d| format!("'{d}'"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            records.get(name).map(|record| record.source.clone())
        };
        let (backup, purged) = match (here, &in_cluster) {
            (Some(source), _) => {
                let (backup, purged) = self.remove_here(guard, name, &source, purge).await?;
                (Some(backup), purged)
            }
            // Installed in the cluster, not here (this instance could not
            // serve it): the desired set is what is uninstalled.
            (None, Some(package)) => {
                guard.ensure_held().await?;
                self.flags.remove(name).await?;
                let purged = if purge {
                    let staging = converge::fetch(
                        &self.db,
                        self.limits,
                        self.cache.trust(),
                        &self.plugin_dir,
                        package,
                    )
                    .await?;
                    let scripts =
                        sql::Scripts::new(Some(&staging.path().join(name)), Default::default());
                    let purged = sql::destroy(&self.db, name, &scripts).await;
                    Self::discard(staging).await;
                    purged?
                } else {
                    false
                };
                (None, purged)
            }
            (None, None) => return Err(PluginError::NotFound(name.to_owned()).into()),
        };
        self.forget_divergence(name);
        self.report_soon();
        if let Err(e) = desired::remove(&self.db, name).await {
            return Err(LifecycleError::Record {
                plugin: name.to_owned(),
                message: e.to_string(),
            });
        }
        tracing::info!(plugin = name, backup = ?backup, purged, "plugin uninstalled");
        Ok(Uninstalled {
            name: name.to_owned(),
            backup,
            purged,
        })
    }

    /// Takes the plugin at `source` out of this instance: backup, flag
    /// removed, routes gone, files removed, tables dropped with `purge`.
    async fn remove_here(
        &self,
        guard: &LockGuard,
        name: &str,
        source: &Path,
        purge: bool,
    ) -> Result<(PathBuf, bool), LifecycleError> {
        let backup = self.backup(name).await?;
        guard.ensure_held().await?;
        self.flags.remove(name).await?;
        let embedded = self
            .set
            .records()
            .get(name)
            .and_then(PluginRecord::loaded)
            .map(|p| p.code.files())
            .unwrap_or_default();

        // Routes go first, then the files: from here on nothing serves it.
        let left = self.set.unmount(name);
        self.retire(left).await;
        self.publish_services();
        let staging = Staging::new(&self.plugin_dir)?;
        let moved = staging.path().join(name);
        let (from, to, dir) = (source.to_owned(), moved.clone(), self.plugin_dir.clone());
        blocking(move || {
            std::fs::rename(&from, &to).map_err(|e| io_error("remove", &from, e))?;
            sync_dir(&dir);
            Ok(())
        })
        .await?;
        let purged = if purge {
            let scripts = sql::Scripts::new(moved.is_dir().then_some(moved.as_path()), embedded);
            sql::destroy(&self.db, name, &scripts).await?
        } else {
            false
        };
        Self::discard(staging).await;
        Ok((backup, purged))
    }

    /// The installable ZIP of an installed plugin.
    pub fn pack(&self, name: &str) -> Result<Vec<u8>, LifecycleError> {
        let source = self.pack_source(name)?;
        package::pack(&source, name).map_err(|e| io_error("pack", source.path(), e))
    }

    /// What a package of `name` is made from: its directory, or its lone
    /// library with the manifest and README the library embeds.
    fn pack_source(&self, name: &str) -> Result<package::PackSource, LifecycleError> {
        if !is_valid_plugin_name(name) {
            return Err(PluginError::InvalidName(name.to_owned()).into());
        }
        let records = self.set.records();
        let record = records
            .get(name)
            .ok_or_else(|| PluginError::NotFound(name.to_owned()))?;
        if record.source.is_dir() {
            return Ok(package::PackSource::Dir(record.source.clone()));
        }
        let p = record.loaded().ok_or_else(|| {
            LifecycleError::Conflict(format!(
                "plugin '{name}' failed to load and has no readable manifest to pack"
            ))
        })?;
        Ok(package::PackSource::Library {
            path: record.source.clone(),
            manifest: p.code.manifest_text(),
            readme: readme_of(name, &p.code, &p.manifest.json),
        })
    }

    /// Writes `{name}.{YYYYMMDDHHMMSS}.backup.zip` into the backups dir
    /// (temporary file, then rename) and keeps the newest `backup_keep`.
    async fn backup(&self, name: &str) -> Result<PathBuf, LifecycleError> {
        let source = self.pack_source(name)?;
        let owned = name.to_owned();
        let bytes = blocking(move || {
            package::pack(&source, &owned).map_err(|e| io_error("pack", source.path(), e))
        })
        .await?;
        let (dir, owned, keep) = (self.backup_dir.clone(), name.to_owned(), self.backup_keep);
        blocking(move || {
            let name = owned;
            std::fs::create_dir_all(&dir).map_err(|e| io_error("create", &dir, e))?;
            let stamp = chrono::Utc::now().format("%Y%m%d%H%M%S");
            let mut path = dir.join(format!("{name}.{stamp}.backup.zip"));
            let mut n = 1;
            while path.exists() {
                path = dir.join(format!("{name}.{stamp}-{n}.backup.zip"));
                n += 1;
            }
            let tmp = dir.join(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
            let written = std::fs::write(&tmp, &bytes)
                .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
                .map_err(|e| io_error("write", &tmp, e))
                .and_then(|()| {
                    std::fs::rename(&tmp, &path).map_err(|e| io_error("write", &path, e))
                });
            if let Err(e) = written {
                // A full disk leaves nothing behind.
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
            sync_dir(&dir);
            prune_backups(&dir, &name, keep);
            Ok(path)
        })
        .await
    }
}

/// The README of plugin `name` when it is packed from a lone library: the
/// one the library embeds (`readme:` in `export_plugin!`), else a heading
/// and the manifest's `plugin.summary`.
fn readme_of(name: &str, code: &registry::Code, manifest: &serde_json::Value) -> String {
    code.files()
        .remove(plugin_api::abi::README_PATH)
        .unwrap_or_else(|| {
            let summary = manifest
                .pointer("/plugin/summary")
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default();
            format!("# {name}\n\n{summary}\n")
        })
}

/// Keeps the newest `keep` backups of `name` in `backup_dir`.
fn prune_backups(backup_dir: &Path, name: &str, keep: usize) {
    let prefix = format!("{name}.");
    let Ok(entries) = std::fs::read_dir(backup_dir) else {
        return;
    };
    let mut backups: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|f| f.to_str()).is_some_and(|f| {
                f.starts_with(&prefix)
                    && f.ends_with(".backup.zip")
                    && f[prefix.len()..].starts_with(|c: char| c.is_ascii_digit())
            })
        })
        .collect();
    backups.sort();
    let excess = backups.len().saturating_sub(keep);
    for old in &backups[..excess] {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(path = %old.display(), "cannot remove an old backup: {e}");
        }
    }
}
