//! Installing from a Git repository.
//!
//! The repository is cloned (libgit2) into a staging directory, checked out
//! at the requested ref (branch, tag or commit) or its default branch, and
//! holds either a prebuilt library for this platform next to its
//! `plugin.toml` and `README.md`, or a plugin crate, which is built with
//! cargo under a time limit. Either at the repository's root or in its one
//! subdirectory with a `plugin.toml`. Only the package files are copied
//! into the plugin dir (never `.git`, so never credentials); the source
//! (URL without credentials, ref, commit) is recorded in `.source.json`.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use super::{InstallOptions, Installed, LifecycleError, Staging, blocking, package::packable};
use crate::db::redact_url;
use crate::plugin::{
    PluginHost,
    loading::discover::{library_file_name, name_from_library_file},
};

/// Where Git installs may come from (a setting: it lives with the settings).
pub use crate::config::GitPolicy;

fn refused(message: String) -> LifecycleError {
    LifecycleError::Git(message)
}

/// Checks `url` against the policy.
fn check_url(url: &str, policy: &GitPolicy) -> Result<(), LifecycleError> {
    if let Some(rest) = url.strip_prefix("https://") {
        let authority = rest.split('/').next().unwrap_or_default();
        let host = authority
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .split(':')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        if policy.hosts.iter().any(|h| h.eq_ignore_ascii_case(&host)) {
            return Ok(());
        }
        return Err(LifecycleError::Forbidden(format!(
            "Git host '{host}' is not allowed; allowed: {} (PLUGHOST_GIT_HOSTS)",
            policy.hosts.join(", ")
        )));
    }
    let local = url.starts_with("file://") || url.starts_with('/');
    if local && policy.allow_local {
        return Ok(());
    }
    if local {
        return Err(LifecycleError::Forbidden(
            "local repositories are not allowed; set PLUGHOST_GIT_ALLOW_LOCAL=true to allow file:// URLs and paths".into(),
        ));
    }
    Err(refused(format!(
        "'{}' is not an https:// repository URL",
        redact_url(url)
    )))
}

/// Clones `url` into `dest` and checks out `reference` (or the default
/// branch); returns the commit id.
fn clone(url: &str, reference: Option<&str>, dest: &Path) -> Result<String, LifecycleError> {
    let shown = redact_url(url);
    tracing::info!(repo = %shown, reference, "cloning");
    let repo = git2::Repository::clone(url, dest)
        .map_err(|e| refused(format!("cannot clone {shown}: {}", e.message())))?;
    let commit = match reference {
        None => repo
            .head()
            .and_then(|h| h.peel_to_commit())
            .map_err(|e| refused(format!("{shown} has no commit to install: {}", e.message())))?,
        Some(r) => {
            let object = repo
                .revparse_single(&format!("origin/{r}"))
                .or_else(|_| repo.revparse_single(r))
                .map_err(|_| {
                    refused(format!(
                        "ref '{r}' is neither a branch, a tag nor a commit of {shown}"
                    ))
                })?;
            object
                .peel_to_commit()
                .map_err(|e| refused(format!("ref '{r}' of {shown}: {}", e.message())))?
        }
    };
    repo.checkout_tree(
        commit.as_object(),
        Some(git2::build::CheckoutBuilder::new().force()),
    )
    .and_then(|()| repo.set_head_detached(commit.id()))
    .map_err(|e| refused(format!("cannot check out {}: {}", commit.id(), e.message())))?;
    Ok(commit.id().to_string())
}

/// The directory of the clone that holds the plugin.
fn plugin_root(clone: &Path) -> Result<PathBuf, LifecycleError> {
    if clone.join("plugin.toml").is_file() {
        return Ok(clone.to_owned());
    }
    let mut found = Vec::new();
    for entry in std::fs::read_dir(clone).map_err(|e| LifecycleError::Io(e.to_string()))? {
        let path = entry.map_err(|e| LifecycleError::Io(e.to_string()))?.path();
        if path.is_dir() && path.join("plugin.toml").is_file() {
            found.push(path);
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(refused(
            "the repository has no plugin.toml at its root or in a subdirectory".into(),
        )),
        _ => Err(refused(
            "the repository has several subdirectories with a plugin.toml; install one at a time"
                .into(),
        )),
    }
}

/// The one plugin library file in `dir`, if any.
fn library_in(dir: &Path) -> Result<Option<PathBuf>, LifecycleError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| LifecycleError::Io(e.to_string()))? {
        let path = entry.map_err(|e| LifecycleError::Io(e.to_string()))?.path();
        let is_library = path
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(name_from_library_file)
            .is_some();
        if is_library && path.is_file() {
            found.push(path);
        }
    }
    match found.len() {
        0 => Ok(None),
        1 => Ok(found.pop()),
        _ => Err(refused(format!(
            "{} holds several libraries; a plugin has one",
            dir.display()
        ))),
    }
}

/// The name of the library a crate builds: `[lib] name`, else the package
/// name with `-` as `_`.
fn crate_library_name(dir: &Path) -> Result<String, LifecycleError> {
    let path = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| refused(format!("cannot read {}: {e}", path.display())))?;
    let manifest: toml::Table = text
        .parse()
        .map_err(|e| refused(format!("the crate's Cargo.toml is invalid: {e}")))?;
    let name = manifest
        .get("lib")
        .and_then(|l| l.get("name"))
        .or_else(|| manifest.get("package").and_then(|p| p.get("name")))
        .and_then(toml::Value::as_str)
        .ok_or_else(|| refused("the crate's Cargo.toml names no package".into()))?;
    Ok(name.replace('-', "_"))
}

/// The build a Git install runs on this instance (the lifecycle lock lets
/// one run at a time): its output as it comes, for the plugin page.
#[derive(Debug, Clone, Default, serde::Serialize, utoipa::ToSchema)]
pub struct BuildProgress {
    /// Whether cargo is running now.
    pub running: bool,
    /// The crate directory being built.
    pub crate_dir: Option<String>,
    /// Milliseconds since the build started.
    pub elapsed_ms: u64,
    /// The last lines cargo wrote (at most 50).
    pub lines: Vec<String>,
}

struct Build {
    running: bool,
    crate_dir: Option<String>,
    started: Option<Instant>,
    lines: std::collections::VecDeque<String>,
}

static BUILD: std::sync::Mutex<Build> = std::sync::Mutex::new(Build {
    running: false,
    crate_dir: None,
    started: None,
    lines: std::collections::VecDeque::new(),
});

/// The current (or last) build's progress.
pub fn build_progress() -> BuildProgress {
    let build = BUILD.lock().expect("build progress lock");
    BuildProgress {
        running: build.running,
        crate_dir: build.crate_dir.clone(),
        elapsed_ms: build.started.map_or(0, |s| {
            u64::try_from(s.elapsed().as_millis()).unwrap_or(u64::MAX)
        }),
        lines: build.lines.iter().cloned().collect(),
    }
}

fn build_event(update: impl FnOnce(&mut Build)) {
    update(&mut BUILD.lock().expect("build progress lock"));
}

/// Builds the plugin crate in `dir` with cargo (release), logging its
/// progress, killed after the policy's time limit; returns the library.
pub(crate) fn build(dir: &Path, policy: &GitPolicy) -> Result<PathBuf, LifecycleError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    tracing::info!(crate_dir = %dir.display(), timeout_s = policy.build_timeout.as_secs(), "building the plugin crate");
    let mut child = Command::new(&cargo)
        .args(["build", "--release", "--lib", "--message-format", "short"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&policy.build_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| refused(format!("cannot run {cargo} to build the plugin crate: {e}")))?;
    let stderr = child.stderr.take().expect("stderr is piped");
    build_event(|b| {
        b.running = true;
        b.crate_dir = Some(dir.display().to_string());
        b.started = Some(Instant::now());
        b.lines.clear();
    });
    // However the build ends, it is no longer running.
    struct Ended;
    impl Drop for Ended {
        fn drop(&mut self) {
            build_event(|b| b.running = false);
        }
    }
    let _ended = Ended;
    let tail = std::thread::spawn(move || {
        let mut last = std::collections::VecDeque::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            tracing::info!(target: "plugin_build", "{line}");
            build_event(|b| {
                b.lines.push_back(line.clone());
                if b.lines.len() > 50 {
                    b.lines.pop_front();
                }
            });
            last.push_back(line);
            if last.len() > 20 {
                last.pop_front();
            }
        }
        last.into_iter().collect::<Vec<_>>().join("\n")
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child
            .try_wait()
            .map_err(|e| LifecycleError::Io(e.to_string()))?
        {
            break status;
        }
        if started.elapsed() > policy.build_timeout {
            let _ = child.kill();
            let _ = child.wait();
            build_event(|b| {
                b.lines
                    .push_back("stopped: the build took longer than PLUGHOST_BUILD_TIMEOUT".into());
            });
            return Err(refused(format!(
                "building the plugin crate took longer than {} s (PLUGHOST_BUILD_TIMEOUT); it was stopped",
                policy.build_timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = tail.join().unwrap_or_default();
    if !status.success() {
        return Err(refused(format!(
            "building the plugin crate failed:\n{output}"
        )));
    }
    tracing::info!(seconds = started.elapsed().as_secs(), "plugin crate built");
    // The target dir is shared between builds: take this crate's library.
    let built = policy
        .build_dir
        .join("release")
        .join(library_file_name(&crate_library_name(dir)?));
    if !built.is_file() {
        return Err(refused(format!(
            "the plugin crate built no {} (crate-type = [\"cdylib\"] is needed)",
            built.display()
        )));
    }
    Ok(built)
}

/// Copies the package files of `root` (library `library`) into `dest/<name>/`.
pub(crate) fn stage(root: &Path, library: &Path, dest: &Path) -> Result<String, LifecycleError> {
    let file = library
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default();
    let name = name_from_library_file(file)
        .ok_or_else(|| refused(format!("{} is not a plugin library", library.display())))?
        .to_owned();
    let target = dest.join(&name);
    let io = |e: std::io::Error| LifecycleError::Io(format!("cannot stage {name}: {e}"));
    for required in ["plugin.toml", "README.md"] {
        if !root.join(required).is_file() {
            return Err(refused(format!("the repository's plugin lacks {required}")));
        }
    }
    // The package's files only (never .git): the same list a download packs.
    let library_name = library_file_name(&name);
    for file in packable(root, &name).map_err(io)? {
        if file != library_name {
            let into = target.join(&file);
            std::fs::create_dir_all(into.parent().expect("inside the target")).map_err(io)?;
            std::fs::copy(root.join(&file), into).map_err(io)?;
        }
    }
    std::fs::copy(library, target.join(library_name)).map_err(io)?;
    Ok(name)
}

impl PluginHost {
    /// Installs (or upgrades) a plugin from a Git repository.
    pub async fn install_git(
        &self,
        url: &str,
        reference: Option<&str>,
        options: &InstallOptions,
    ) -> Result<Installed, LifecycleError> {
        check_url(url, &self.git)?;
        let guard = self.take_lock("install from Git").await?;
        let staging = Staging::new(&self.plugin_dir)?;
        let work = staging.path().to_owned();
        let (url_owned, reference_owned, policy, trust) = (
            url.to_owned(),
            reference.map(str::to_owned),
            self.git.clone(),
            self.cache.trust().clone(),
        );
        let name = blocking(move || {
            let checkout = work.join(".clone");
            let commit = clone(&url_owned, reference_owned.as_deref(), &checkout)?;
            let root = plugin_root(&checkout)?;
            let library = match library_in(&root)? {
                Some(prebuilt) => prebuilt,
                None if root.join("Cargo.toml").is_file() => build(&root, &policy)?,
                None => {
                    return Err(refused(format!(
                        "the repository holds neither a {} library nor a plugin crate (Cargo.toml)",
                        std::env::consts::DLL_SUFFIX
                    )));
                }
            };
            let name = stage(&root, &library, &work)?;
            super::check_signature(&work.join(&name), &name, &trust)?;
            let source = serde_json::json!({
                "url": redact_url(&url_owned),
                "ref": reference_owned,
                "commit": commit,
            });
            std::fs::write(work.join(&name).join(".source.json"), source.to_string())
                .map_err(|e| LifecycleError::Io(e.to_string()))?;
            std::fs::remove_dir_all(&checkout).map_err(|e| LifecycleError::Io(e.to_string()))?;
            tracing::info!(plugin = %name, commit, "plugin staged from Git");
            Ok(name)
        })
        .await?;
        self.install_and_finish(guard, staging, &name, options, None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_local: bool) -> GitPolicy {
        GitPolicy {
            hosts: vec!["github.com".into()],
            allow_local,
            build_timeout: Duration::from_secs(1),
            build_dir: PathBuf::new(),
        }
    }

    #[test]
    fn the_library_a_crate_builds_is_named_from_its_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let cargo = dir.path().join("Cargo.toml");
        std::fs::write(&cargo, "[package]\nname = \"my-plugin\"\n").unwrap();
        assert_eq!(crate_library_name(dir.path()).unwrap(), "my_plugin");
        std::fs::write(
            &cargo,
            "[package]\nname = \"x\"\n[lib]\nname = \"greeter\"\n",
        )
        .unwrap();
        assert_eq!(crate_library_name(dir.path()).unwrap(), "greeter");
        std::fs::write(&cargo, "not toml [").unwrap();
        assert!(crate_library_name(dir.path()).is_err());
    }

    #[test]
    fn urls_are_checked_against_the_policy() {
        assert!(check_url("https://github.com/a/b.git", &policy(false)).is_ok());
        assert!(check_url("https://user:token@github.com/a/b.git", &policy(false)).is_ok());
        let err = check_url("https://evil.example/a/b.git", &policy(false))
            .unwrap_err()
            .to_string();
        assert!(err.contains("'evil.example' is not allowed"), "{err}");
        assert!(check_url("http://github.com/a/b.git", &policy(true)).is_err());
        assert!(check_url("git@github.com:a/b.git", &policy(true)).is_err());
        assert!(check_url("file:///srv/repo", &policy(false)).is_err());
        assert!(check_url("/srv/repo", &policy(true)).is_ok());
    }
}
