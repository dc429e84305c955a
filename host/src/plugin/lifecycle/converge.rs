//! Every instance converges to the cluster's plugin set.
//!
//! The desired set (`sys_plugin_desired`) says which plugins the cluster
//! serves and from which package. An install, upgrade or uninstall on any
//! instance (or with the CLI) records it there and announces it on
//! `{prefix}_plugins` (Redis, when configured). Every instance, on the
//! announcement and on every reconcile, compares what it serves with the
//! desired set and, under the lifecycle lock:
//!
//! - fetches a package it lacks (or an older one it has) from the package
//!   store, digest-checked, unpacks it with the checks of an upload into a
//!   staging directory, and installs it through the install path
//!   ([`PluginHost::install_staged`]), without recording it again;
//! - loads in place a plugin another process on the same plugin dir put
//!   there (the CLI, an instance sharing the dir);
//! - takes out a plugin the cluster uninstalled;
//! - refuses a name that a local plugin (a lone library or a directory
//!   placed by hand) holds here and the cluster installs too: neither is
//!   served, and the reason names both.
//!
//! What an instance cannot converge to (a damaged package, a plugin its
//! host cannot load) is kept with the reason and reported in the list, and
//! tried again only when the desired set changes or the instance restarts.
//! At start-up the plugin dir is brought to the desired set before
//! anything is loaded ([`prepare`]), so the plugins load in one pass.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use deadpool_redis::redis;

use super::{
    InstallOptions, LifecycleError, Placement, Staging, blocking, desired::Desired, io_error,
    package, store, sync_dir,
};
use crate::{
    db::Db,
    plugin::{
        PluginHost,
        loading::{
            discover::{self, Candidate, mark_package, package_of},
            trust::TrustPolicy,
        },
        running::registry::{PluginRecord, PluginState, Refusal},
    },
};

/// A package of the desired set this instance does not serve, and why.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// The package it should serve.
    pub digest: String,
    /// The version it should serve.
    pub version: String,
    /// Why it does not.
    pub reason: String,
}

impl Divergence {
    fn of(desired: &Desired, reason: impl Into<String>) -> Self {
        Self {
            digest: desired.digest.clone(),
            version: desired.version.clone(),
            reason: reason.into(),
        }
    }
}

/// What converging does for one name.
#[derive(Debug)]
enum Step {
    /// Fetch the package and install it (or replace an older package).
    Fetch(Desired),
    /// Load the plugin dir's own copy, which is the desired package.
    Adopt(Desired),
    /// The cluster uninstalled it.
    Remove(String),
    /// A local plugin holds the name.
    Conflict(Desired, PathBuf),
}

/// The refusal of a name both local here and installed in the cluster.
fn conflict_reason(desired: &Desired, local: &Path) -> String {
    format!(
        "plugin '{}' is both local to this instance ({}) and installed in the cluster \
         ({} from package {}); neither is served here: remove the local copy to serve the \
         cluster's, or uninstall it from the cluster",
        desired.name,
        local.display(),
        desired.version,
        &desired.digest[..12.min(desired.digest.len())]
    )
}

/// The steps that bring `records` (what this instance has) to `desired`.
fn plan(
    desired: &[Desired],
    records: &BTreeMap<String, PluginRecord>,
    plugin_dir: &Path,
    diverged: &BTreeMap<String, Divergence>,
) -> Vec<Step> {
    let tried = |d: &Desired| diverged.get(&d.name).is_some_and(|t| t.digest == d.digest);
    let mut steps = Vec::new();
    for d in desired {
        let record = records.get(&d.name);
        if d.removed {
            if record.is_some_and(|r| r.package.is_some()) {
                steps.push(Step::Remove(d.name.clone()));
            }
            continue;
        }
        let on_disk = package_of(&plugin_dir.join(&d.name));
        let step = match record {
            Some(r) if r.package.as_deref() == Some(&d.digest) => None,
            Some(r) if r.package.is_none() && r.source.exists() => {
                (!tried(d)).then(|| Step::Conflict(d.clone(), r.source.clone()))
            }
            // The local copy that held the name was removed.
            Some(r) if r.package.is_none() => Some(Step::Fetch(d.clone())),
            _ if on_disk.as_deref() == Some(&d.digest) => Some(Step::Adopt(d.clone())),
            _ if tried(d) => None,
            _ => Some(Step::Fetch(d.clone())),
        };
        steps.extend(step);
    }
    steps
}

/// Fetches package `desired` from the store and unpacks it, with the checks
/// of an upload, into a new staging directory in `plugin_dir`, marked with
/// its digest.
pub(super) async fn fetch(
    db: &Db,
    limits: package::Limits,
    trust: &TrustPolicy,
    plugin_dir: &Path,
    desired: &Desired,
) -> Result<Staging, LifecycleError> {
    let bytes = store::get(db, &desired.digest).await?;
    let staging = Staging::new(plugin_dir)?;
    let dest = staging.path().to_owned();
    let (expected, digest, trust) = (desired.name.clone(), desired.digest.clone(), trust.clone());
    let result = blocking(move || {
        let name = package::unpack(&bytes, &limits, &dest)?;
        if name != expected {
            return Err(LifecycleError::Conflict(format!(
                "package {digest} holds plugin '{name}', but the desired set installs it as '{expected}'"
            )));
        }
        let dir = dest.join(&name);
        super::check_signature(&dir, &name, &trust)?;
        mark_package(&dir, &digest).map_err(|e| io_error("write into", &dir, e))
    })
    .await;
    match result {
        Ok(()) => Ok(staging),
        Err(e) => {
            PluginHost::discard(staging).await;
            Err(e)
        }
    }
}

/// Whether an error may pass by itself (the database or the lock was
/// unavailable): the step is tried again at the next reconcile rather than
/// recorded as this instance's divergence.
fn transient(e: &LifecycleError) -> bool {
    matches!(
        e,
        LifecycleError::Store(store::StoreError::Db(_)) | LifecycleError::Lock(_)
    )
}

/// What start-up found in the desired set for the plugin dir.
#[derive(Default)]
pub struct Prepared {
    /// Plugins not to load (a local plugin the cluster also installs), as
    /// refused records.
    pub refused: Vec<PluginRecord>,
    /// What could not be brought here, by name.
    pub diverged: BTreeMap<String, Divergence>,
}

/// Brings the plugin dir to the desired set before anything is loaded:
/// packages it lacks or holds older are fetched and put into place,
/// packages the cluster uninstalled are taken out, and local plugins whose
/// name the cluster also installs are set aside as refused. `candidates`
/// is updated to what is in the plugin dir afterwards. The caller holds
/// the lifecycle lock.
pub async fn prepare(
    db: &Db,
    limits: package::Limits,
    trust: &TrustPolicy,
    plugin_dir: &Path,
    candidates: &mut Vec<Candidate>,
) -> Result<Prepared, sea_orm::DbErr> {
    let desired = super::desired::every(db).await?;
    let mut prepared = Prepared::default();
    let mut changed = false;
    for d in &desired {
        let found = candidates.iter().find(|c| c.name == d.name);
        let package = found.and_then(|c| package_of(c.source.path()));
        if d.removed {
            if let (Some(found), Some(_)) = (found, package) {
                let path = found.source.path().to_owned();
                match take_out(plugin_dir, &path).await {
                    Ok(()) => {
                        tracing::info!(plugin = %d.name, "removed: the cluster uninstalled it");
                        changed = true;
                    }
                    Err(e) => tracing::warn!(plugin = %d.name, "cannot remove: {e}"),
                }
            }
            continue;
        }
        match (found, package) {
            (Some(_), Some(digest)) if digest == d.digest => {}
            (Some(found), None) => {
                let reason = conflict_reason(d, found.source.path());
                tracing::warn!(plugin = %d.name, "{reason}");
                prepared.refused.push(PluginRecord {
                    name: d.name.clone(),
                    source: found.source.path().to_owned(),
                    manifest: None,
                    state: PluginState::Failed(reason.clone()),
                    package: None,
                });
                prepared
                    .diverged
                    .insert(d.name.clone(), Divergence::of(d, reason));
            }
            (found, _) => {
                let old = found.map(|c| c.source.path().to_owned());
                match put_in_place(db, limits, trust, plugin_dir, d, old).await {
                    Ok(()) => {
                        tracing::info!(plugin = %d.name, version = %d.version, "fetched from the package store");
                        changed = true;
                    }
                    Err(e) => {
                        tracing::warn!(plugin = %d.name, "cannot fetch its package: {e}");
                        if !transient(&e) {
                            prepared
                                .diverged
                                .insert(d.name.clone(), Divergence::of(d, e.to_string()));
                        }
                    }
                }
            }
        }
    }
    if changed && let Ok(found) = discover::discover(plugin_dir) {
        *candidates = found;
    }
    let refused: BTreeSet<&str> = prepared.refused.iter().map(|r| r.name.as_str()).collect();
    candidates.retain(|c| !refused.contains(c.name.as_str()));
    Ok(prepared)
}

/// Fetches `desired` and renames it into place (exchanged with `old`, the
/// older package there, which is then removed).
async fn put_in_place(
    db: &Db,
    limits: package::Limits,
    trust: &TrustPolicy,
    plugin_dir: &Path,
    desired: &Desired,
    old: Option<PathBuf>,
) -> Result<(), LifecycleError> {
    let staging = fetch(db, limits, trust, plugin_dir, desired).await?;
    let (from, to, dir) = (
        staging.path().join(&desired.name),
        plugin_dir.join(&desired.name),
        plugin_dir.to_owned(),
    );
    let moved = blocking(move || {
        match &old {
            Some(old) if old == &to => {
                super::exchange(&from, &to).map_err(|e| io_error("replace", &to, e))?;
            }
            _ => std::fs::rename(&from, &to).map_err(|e| io_error("move into place", &to, e))?,
        }
        sync_dir(&dir);
        Ok(())
    })
    .await;
    PluginHost::discard(staging).await;
    moved
}

/// Moves `path` out of the plugin dir (into a staging directory, then
/// removed).
async fn take_out(plugin_dir: &Path, path: &Path) -> Result<(), LifecycleError> {
    let staging = Staging::new(plugin_dir)?;
    let (from, to, dir) = (
        path.to_owned(),
        staging.path().join("removed"),
        plugin_dir.to_owned(),
    );
    let moved = blocking(move || {
        match std::fs::rename(&from, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove", &from, e)),
        }
        sync_dir(&dir);
        Ok(())
    })
    .await;
    PluginHost::discard(staging).await;
    moved
}

impl PluginHost {
    /// Tells the other instances that the desired set changed (on Redis;
    /// without it they find out at their next reconcile).
    pub(crate) async fn announce(&self, name: &str) {
        let Some(redis) = self.flags.redis() else {
            return;
        };
        let published = async {
            let mut conn = redis.conn().await?;
            let result: redis::RedisResult<i64> = redis::cmd("PUBLISH")
                .arg(self.flags.plugins_channel())
                .arg(name)
                .query_async(&mut conn)
                .await;
            redis.check(result).map(drop)
        };
        if let Err(e) = published.await {
            tracing::warn!(
                plugin = name,
                "plugin change recorded but not announced ({e}); other instances follow at their next reconcile"
            );
        }
    }

    /// Asks the background converger to compare this instance with the
    /// desired set.
    pub(crate) fn converge_soon(&self) {
        self.converge_due.notify_one();
    }

    /// Forgets why this instance did not serve `name` (it serves it now,
    /// or the desired set changed).
    pub(crate) fn forget_divergence(&self, name: &str) {
        self.diverged.lock().expect("divergence lock").remove(name);
    }

    /// Why this instance does not serve what the desired set says, by name.
    pub(crate) fn divergence(&self) -> BTreeMap<String, Divergence> {
        self.diverged.lock().expect("divergence lock").clone()
    }

    fn diverge(&self, desired: &Desired, reason: String) {
        tracing::warn!(plugin = %desired.name, version = %desired.version, "cannot serve the cluster's package: {reason}");
        self.diverged
            .lock()
            .expect("divergence lock")
            .insert(desired.name.clone(), Divergence::of(desired, reason));
    }

    /// Brings this instance to the desired set: what to do is worked out
    /// without the lock (nothing, almost always), then again under it.
    pub async fn converge(&self) {
        let desired = match super::desired::every(&self.db).await {
            Ok(desired) => desired,
            Err(e) => {
                tracing::debug!("the desired plugin set cannot be read: {e}");
                return;
            }
        };
        // Divergences of names the desired set no longer asks for.
        {
            let wanted: BTreeMap<&str, &str> = desired
                .iter()
                .filter(|d| !d.removed)
                .map(|d| (d.name.as_str(), d.digest.as_str()))
                .collect();
            self.diverged
                .lock()
                .expect("divergence lock")
                .retain(|name, d| wanted.get(name.as_str()) == Some(&d.digest.as_str()));
        }
        let steps = plan(
            &desired,
            &self.set.records(),
            &self.plugin_dir,
            &self.divergence(),
        );
        if steps.is_empty() {
            return;
        }
        // This plugin dir's lock alone: every instance follows the cluster
        // at once. A step that finds the cluster's own work undone (an init
        // script) makes a second pass under the cluster's lock.
        for cluster in [false, true] {
            let operation = "converging to the cluster's plugin set";
            let taken = if cluster {
                self.take_lock(operation).await
            } else {
                self.take_local_lock(operation).await
            };
            let guard = match taken {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::info!("not converging now ({e}); trying again shortly");
                    self.retry_converge();
                    return;
                }
            };
            let result = self.converge_locked(&guard).await;
            self.finish(guard).await;
            match result {
                Ok(false) => break,
                Ok(true) => {}
                Err(e) => {
                    tracing::info!("converging stopped ({e}); trying again shortly");
                    self.retry_converge();
                    break;
                }
            }
        }
        self.report_soon();
    }

    fn retry_converge(&self) {
        let due = self.converge_due.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            due.notify_one();
        });
    }

    /// Runs the steps that bring this instance to the desired set; whether
    /// some need the cluster's lock (taken under this instance's alone).
    async fn converge_locked(&self, guard: &super::LockGuard) -> Result<bool, LifecycleError> {
        let desired = super::desired::every(&self.db)
            .await
            .map_err(store::StoreError::from)?;
        let mut steps = plan(
            &desired,
            &self.set.records(),
            &self.plugin_dir,
            &self.divergence(),
        );
        // Passes, until one makes no progress: a plugin whose dependency
        // arrives in the same pass waits for the next one.
        let mut cluster = false;
        loop {
            let mut waiting = Vec::new();
            let before = steps.len();
            for step in steps {
                let started = std::time::Instant::now();
                match self.run_step(guard, &step).await {
                    Ok(()) => {
                        let name = match &step {
                            Step::Fetch(d) | Step::Adopt(d) | Step::Conflict(d, _) => &d.name,
                            Step::Remove(name) => name,
                        };
                        let served = !self.divergence().contains_key(name);
                        crate::observe::lifecycle("converge", served, started.elapsed());
                    }
                    Err(Later::Dependency) => waiting.push(step),
                    Err(Later::ClusterLock) => cluster = true,
                }
            }
            if waiting.is_empty() || waiting.len() == before {
                for step in waiting {
                    if let Step::Fetch(d) | Step::Adopt(d) = &step {
                        self.diverge(d, "its dependencies cannot be served here".into());
                    }
                }
                return Ok(cluster);
            }
            steps = waiting;
        }
    }

    /// Runs one step; `Err(Later)` when it needs a dependency first, or
    /// the cluster's lock.
    async fn run_step(&self, guard: &super::LockGuard, step: &Step) -> Result<(), Later> {
        match step {
            Step::Conflict(d, local) => {
                let reason = conflict_reason(d, local);
                tracing::warn!(plugin = %d.name, "{reason}");
                let manifest = self
                    .set
                    .records()
                    .get(&d.name)
                    .and_then(|r| r.manifest.clone());
                let left = self.set.refuse(PluginRecord {
                    name: d.name.clone(),
                    source: local.clone(),
                    manifest,
                    state: PluginState::Failed(reason.clone()),
                    package: None,
                });
                self.retire(left).await;
                self.publish_services();
                self.diverged
                    .lock()
                    .expect("divergence lock")
                    .insert(d.name.clone(), Divergence::of(d, reason));
                Ok(())
            }
            Step::Remove(name) => self.remove_uninstalled(name).await,
            Step::Fetch(d) | Step::Adopt(d) => {
                let options = InstallOptions {
                    upgrade: true,
                    force: true,
                    installed_by: d.installed_by.clone(),
                    cluster: Some(d.digest.clone()),
                };
                let result = match step {
                    Step::Adopt(_) => {
                        self.install_staged(guard, Placement::InPlace, &d.name, &options, None)
                            .await
                    }
                    _ => match fetch(
                        &self.db,
                        self.limits,
                        self.cache.trust(),
                        &self.plugin_dir,
                        d,
                    )
                    .await
                    {
                        Ok(staging) => {
                            // A refused local copy that was removed meanwhile.
                            let stale = self
                                .set
                                .records()
                                .get(&d.name)
                                .is_some_and(|r| r.package.is_none() && !r.source.exists());
                            if stale {
                                let left = self.set.unmount(&d.name);
                                self.retire(left).await;
                            }
                            let result = self
                                .install_staged(
                                    guard,
                                    Placement::Staged(&staging),
                                    &d.name,
                                    &options,
                                    None,
                                )
                                .await;
                            Self::discard(staging).await;
                            result
                        }
                        Err(e) => Err(e),
                    },
                };
                match result {
                    Ok(installed) => {
                        tracing::info!(plugin = %d.name, version = %installed.version, "now serving the cluster's package");
                        Ok(())
                    }
                    Err(LifecycleError::Refused { reason, .. })
                        if matches!(*reason, Refusal::DependencyNotLoaded(_)) =>
                    {
                        Err(Later::Dependency)
                    }
                    Err(LifecycleError::NeedsClusterLock(_)) => Err(Later::ClusterLock),
                    Err(LifecycleError::Store(store::StoreError::Missing(digest)))
                        if self.superseded(&d.name, &digest).await =>
                    {
                        // Another instance replaced it meanwhile (and the
                        // store let the old package go): follow the new one.
                        tracing::info!(plugin = %d.name, "the cluster moved past package {digest}; following it");
                        self.retry_converge();
                        Ok(())
                    }
                    Err(e) if transient(&e) => {
                        tracing::info!(plugin = %d.name, "not converged now: {e}");
                        self.retry_converge();
                        Ok(())
                    }
                    Err(e) => {
                        self.diverge(d, e.to_string());
                        Ok(())
                    }
                }
            }
        }
    }

    /// Whether the desired set no longer installs `name` from `digest`.
    async fn superseded(&self, name: &str, digest: &str) -> bool {
        super::desired::get(&self.db, name)
            .await
            .ok()
            .flatten()
            .is_none_or(|d| d.removed || d.digest != digest)
    }

    /// Takes out a plugin the cluster uninstalled (its flag and tables were
    /// dealt with by the instance that uninstalled it).
    async fn remove_uninstalled(&self, name: &str) -> Result<(), Later> {
        let (source, package, dependents) = {
            let records = self.set.records();
            let Some(record) = records.get(name) else {
                return Ok(());
            };
            let dependents: Vec<String> = records
                .values()
                .filter_map(PluginRecord::loaded)
                .filter(|p| p.manifest.depends_on.iter().any(|d| d == name))
                .map(|p| p.name.clone())
                .collect();
            (record.source.clone(), record.package.clone(), dependents)
        };
        if !dependents.is_empty() {
            // They go first when the cluster uninstalled them too.
            return Err(Later::Dependency);
        }
        let left = self.set.unmount(name);
        self.retire(left).await;
        self.publish_services();
        // Only the copy it served: another process on the same plugin dir
        // may have put a new one there.
        if source.is_dir()
            && package_of(&source) == package
            && let Err(e) = take_out(&self.plugin_dir, &source).await
        {
            tracing::warn!(plugin = name, "{e}");
        }
        self.forget_divergence(name);
        tracing::info!(plugin = name, "removed: the cluster uninstalled it");
        Ok(())
    }

    /// Records in the desired set the plugins this instance serves from a
    /// package the desired set does not know (a fresh database; an install
    /// killed between its commit point and its record), and those a Git
    /// install put here before the desired set existed (`.source.json`).
    pub(crate) async fn import_unrecorded(&self) {
        let known: BTreeSet<String> = match super::desired::every(&self.db).await {
            Ok(rows) => rows.into_iter().map(|d| d.name).collect(),
            Err(e) => {
                tracing::warn!("the desired plugin set cannot be read: {e}");
                return;
            }
        };
        let importable: Vec<(String, PathBuf)> = self
            .set
            .records()
            .values()
            .filter(|r| r.loaded().is_some() && !known.contains(&r.name) && r.source.is_dir())
            .filter(|r| r.package.is_some() || r.source.join(".source.json").is_file())
            .map(|r| (r.name.clone(), r.source.clone()))
            .collect();
        if importable.is_empty() {
            return;
        }
        let Ok(guard) = self.take_lock("importing installed plugins").await else {
            return;
        };
        for (name, dir) in importable {
            match self.import(&name, &dir).await {
                Ok(()) => tracing::info!(plugin = %name, "recorded in the cluster's plugin set"),
                Err(e) => {
                    tracing::warn!(plugin = %name, "not recorded in the cluster's plugin set: {e}")
                }
            }
        }
        self.finish(guard).await;
    }

    async fn import(&self, name: &str, dir: &Path) -> Result<(), LifecycleError> {
        if super::desired::get(&self.db, name)
            .await
            .map_err(store::StoreError::from)?
            .is_some()
        {
            return Ok(());
        }
        let (text, version) = {
            let records = self.set.records();
            let plugin = records
                .get(name)
                .and_then(PluginRecord::loaded)
                .ok_or_else(|| LifecycleError::Io(format!("plugin '{name}' is not loaded")))?;
            (
                plugin.code.manifest_text(),
                plugin.manifest.version.to_string(),
            )
        };
        let (from, owned) = (dir.to_owned(), name.to_owned());
        let bytes = blocking(move || {
            package::pack(&package::PackSource::Dir(from.clone()), &owned)
                .map_err(|e| io_error("pack", &from, e))
        })
        .await?;
        let digest = store::put(&self.db, &bytes).await?;
        let marked = (dir.to_owned(), digest.clone());
        blocking(move || {
            mark_package(&marked.0, &marked.1).map_err(|e| io_error("write into", &marked.0, e))
        })
        .await?;
        self.set.set_package(name, &digest);
        let options = InstallOptions {
            installed_by: "import".into(),
            ..InstallOptions::default()
        };
        self.record_desired(name, dir, &version, digest, &options, &text)
            .await
            .map_err(|e| LifecycleError::Record {
                plugin: name.to_owned(),
                message: e.to_string(),
            })?;
        self.announce(name).await;
        Ok(())
    }
}

/// Why a step waits.
enum Later {
    /// For another step (a dependency) first.
    Dependency,
    /// For the cluster's lock.
    ClusterLock,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(name: &str, digest: &str, removed: bool) -> Desired {
        Desired {
            name: name.into(),
            version: "1.0.0".into(),
            digest: digest.repeat(64),
            source: serde_json::Value::Null,
            installed_by: "t".into(),
            installed_at: 0,
            revision: 1,
            removed,
        }
    }

    fn record(name: &str, source: PathBuf, package: Option<&str>) -> PluginRecord {
        PluginRecord {
            name: name.into(),
            source,
            manifest: None,
            state: PluginState::Failed("not loaded in this test".into()),
            package: package.map(|p| p.repeat(64)),
        }
    }

    #[test]
    fn the_plan_fetches_adopts_removes_and_refuses_local_names() {
        let dir = tempfile::tempdir().unwrap();
        let plugins = dir.path();
        // `local` is a directory placed by hand; `shared` holds package b
        // on disk (put there by another process); `lone` a lone library.
        std::fs::create_dir(plugins.join("local")).unwrap();
        std::fs::create_dir(plugins.join("shared")).unwrap();
        mark_package(&plugins.join("shared"), &"b".repeat(64)).unwrap();
        std::fs::write(plugins.join("liblone.so"), b"").unwrap();
        let records: BTreeMap<String, PluginRecord> = [
            record("same", plugins.join("same"), Some("a")),
            record("old", plugins.join("old"), Some("a")),
            record("local", plugins.join("local"), None),
            record("lone", plugins.join("liblone.so"), None),
            record("gone", plugins.join("gone"), Some("a")),
            record("kept", plugins.join("kept"), None),
            record("moved", plugins.join("libmoved.so"), None),
        ]
        .into_iter()
        .map(|r| (r.name.clone(), r))
        .collect();
        let wanted = [
            desired("same", "a", false),
            desired("old", "c", false),
            desired("new", "d", false),
            desired("shared", "b", false),
            desired("local", "e", false),
            desired("lone", "e", false),
            desired("gone", "a", true),
            desired("kept", "a", true),
            desired("bad", "f", false),
            desired("moved", "e", false),
        ];
        let tried = |digest: &str, reason: &str| Divergence {
            digest: digest.repeat(64),
            version: "1.0.0".into(),
            reason: reason.into(),
        };
        // `bad` was refused, `moved` was a conflict whose local copy is gone.
        let diverged = BTreeMap::from([
            ("bad".to_owned(), tried("f", "altered")),
            (
                "moved".to_owned(),
                tried("e", "both local and in the cluster"),
            ),
        ]);
        let steps: Vec<String> = plan(&wanted, &records, plugins, &diverged)
            .iter()
            .map(|s| match s {
                Step::Fetch(d) => format!("fetch {}", d.name),
                Step::Adopt(d) => format!("adopt {}", d.name),
                Step::Remove(n) => format!("remove {n}"),
                Step::Conflict(d, _) => format!("refuse {}", d.name),
            })
            .collect();
        assert_eq!(
            steps,
            [
                "fetch old",
                "fetch new",
                "adopt shared",
                "refuse local",
                "refuse lone",
                "remove gone",
                "fetch moved"
            ]
        );
    }

    #[test]
    fn a_conflict_names_both_sources() {
        let reason = conflict_reason(&desired("hello", "a", false), Path::new("/p/libhello.so"));
        assert!(reason.contains("/p/libhello.so"), "{reason}");
        assert!(
            reason.contains("1.0.0 from package aaaaaaaaaaaa"),
            "{reason}"
        );
    }
}
