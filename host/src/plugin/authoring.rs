//! What a plugin author runs without a host: `plughost plugin keygen`
//! (a signing key pair) and `plughost plugin package` (a crate built and
//! turned into the installable, optionally signed, package).
//!
//! A package is checked with the code an install uses before it is
//! written: the manifest, the library (ELF, ABI, the name it declares, in
//! a child process first), its routers against the manifest, and the
//! signature.

use std::path::{Path, PathBuf};

use super::{
    lifecycle::{
        git::{self, GitPolicy},
        package,
        sql::{Script, Scripts, script_path},
    },
    loading::{
        discover::{Candidate, Source},
        libcache::LibraryCache,
        manifest::PluginManifest,
        trust::{self, CHECKSUMS, SIGNATURE, Statement, TrustPolicy},
    },
    running::{registry, router::RouteTableBuilder},
};

/// The environment variable holding a secret key's password.
pub const PASSWORD_VARIABLE: &str = "PLUGHOST_SIGNING_PASSWORD";

/// Something an author asked for that cannot be done: what, and what to do.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct AuthoringError(String);

fn fail(message: impl Into<String>) -> AuthoringError {
    AuthoringError(message.into())
}

/// The password for a secret key, from [`PASSWORD_VARIABLE`].
fn password() -> Option<String> {
    std::env::var(PASSWORD_VARIABLE)
        .ok()
        .filter(|p| !p.is_empty())
}

/// A key pair that was written.
#[derive(Debug)]
pub struct Generated {
    /// The secret key's file.
    pub secret: PathBuf,
    /// The public key's file.
    pub public: PathBuf,
    /// The key's id.
    pub key_id: String,
    /// Whether the secret key is password-protected.
    pub encrypted: bool,
}

/// Writes a new key pair: `out` (secret, readable by its owner only) and
/// `out.pub`. The secret key is encrypted with [`PASSWORD_VARIABLE`], or a
/// password asked on the terminal, unless `no_password`.
pub fn keygen(out: &Path, no_password: bool, force: bool) -> Result<Generated, AuthoringError> {
    let public = PathBuf::from(format!("{}.pub", out.display()));
    for path in [out, public.as_path()] {
        if path.exists() && !force {
            return Err(fail(format!(
                "{} exists; choose another --out or pass --force to replace it",
                path.display()
            )));
        }
    }
    let encrypted = password().is_some() || !no_password;
    let pair = match (password(), no_password) {
        (Some(password), _) => minisign::KeyPair::generate_encrypted_keypair(Some(password)),
        (None, true) => minisign::KeyPair::generate_unencrypted_keypair(),
        (None, false) if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            minisign::KeyPair::generate_encrypted_keypair(None)
        }
        (None, false) => {
            return Err(fail(format!(
                "the secret key needs a password: set {PASSWORD_VARIABLE}, or pass --no-password for a key that is not protected"
            )));
        }
    }
    .map_err(|e| fail(format!("cannot generate a key pair: {e}")))?;
    let key_id = trust::key_id(pair.pk.keynum());
    let secret_text = pair
        .sk
        .to_box(Some(&format!("plughost signing key {key_id}")))
        .map_err(|e| fail(e.to_string()))?
        .into_string();
    let public_text = pair
        .pk
        .to_box()
        .map_err(|e| fail(e.to_string()))?
        .into_string();
    write_private(out, secret_text.as_bytes())?;
    std::fs::write(&public, public_text)
        .map_err(|e| fail(format!("cannot write {}: {e}", public.display())))?;
    Ok(Generated {
        secret: out.to_owned(),
        public,
        key_id,
        encrypted,
    })
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AuthoringError> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| fail(format!("cannot write {}: {e}", path.display())))
}

/// A package that was written.
#[derive(Debug)]
pub struct Packaged {
    /// The plugin.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The contract its library was built against.
    pub contract: String,
    /// The signing key's id, when signed.
    pub key_id: Option<String>,
    /// The package's size in bytes.
    pub size: usize,
}

/// The target dir cargo uses for the crate in `dir` (a workspace's, when
/// the crate is a member of one).
fn target_dir(dir: &Path) -> Result<PathBuf, AuthoringError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = std::process::Command::new(&cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| fail(format!("cannot run {cargo}: {e}")))?;
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).map_err(|_| {
        fail(format!(
            "`cargo metadata` failed for {}; is it a crate?",
            dir.display()
        ))
    })?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| fail("`cargo metadata` names no target directory"))
}

/// A plugin crate built and staged as a package directory in a temporary
/// directory (removed when dropped).
struct Staged {
    work: tempfile::TempDir,
    name: String,
    manifest: PluginManifest,
}

impl Staged {
    fn dir(&self) -> PathBuf {
        self.work.path().join(&self.name)
    }
}

/// Builds the plugin crate in `crate_dir` (release, cargo's output as it
/// goes) and stages its package files, without a signature.
fn build_and_stage(crate_dir: &Path) -> Result<Staged, AuthoringError> {
    for required in ["Cargo.toml", "plugin.toml", "README.md"] {
        if !crate_dir.join(required).is_file() {
            return Err(fail(format!(
                "{} has no {required}; a plugin crate needs Cargo.toml, plugin.toml and README.md (`plughost plugin new` writes them)",
                crate_dir.display()
            )));
        }
    }
    let manifest_text = std::fs::read_to_string(crate_dir.join("plugin.toml"))
        .map_err(|e| fail(format!("cannot read plugin.toml: {e}")))?;
    let manifest = PluginManifest::parse(&manifest_text).map_err(|e| fail(e.to_string()))?;
    let policy = GitPolicy {
        hosts: Vec::new(),
        allow_local: true,
        build_timeout: std::time::Duration::from_secs(3600),
        build_dir: target_dir(crate_dir)?,
    };
    let library = git::build(crate_dir, &policy).map_err(|e| fail(e.to_string()))?;
    let work = tempfile::tempdir().map_err(|e| fail(format!("cannot make a work dir: {e}")))?;
    let name = git::stage(crate_dir, &library, work.path()).map_err(|e| fail(e.to_string()))?;
    let staged = Staged {
        work,
        name,
        manifest,
    };
    // A signature left in the crate is not this build's.
    for stale in [CHECKSUMS, SIGNATURE] {
        let _ = std::fs::remove_file(staged.dir().join(stale));
    }
    Ok(staged)
}

/// What an install would find in a package directory: the checks of
/// [`registry::open_candidate`] (manifest, README, signature, library in a
/// child process, ABI, declared name, versions), the routers against the
/// manifest and the core routes, and the SQL scripts. `problems` refuse
/// it; `notes` do not.
#[derive(Debug, Default)]
pub struct Inspection {
    /// The plugin.
    pub name: String,
    /// Its version, once the manifest was read.
    pub version: Option<String>,
    /// The contract its library was built against, once opened.
    pub contract: Option<String>,
    /// The trusted key that signed it.
    pub signer: Option<String>,
    /// Its manifest as JSON (the library's, or the plugin.toml beside
    /// it), once it opened.
    pub manifest: Option<serde_json::Value>,
    /// Why an install would refuse it, each with what to do.
    pub problems: Vec<String>,
    /// What an install accepts but an operator should know.
    pub notes: Vec<String>,
}

/// Inspects plugin `candidate` (a package directory or a lone library)
/// with the signature policy `trust`, through the install's own checks.
fn inspect(candidate: &Candidate, trust: &TrustPolicy) -> Inspection {
    let name = candidate.name.as_str();
    let mut report = Inspection {
        name: name.to_owned(),
        ..Inspection::default()
    };
    let dir = match &candidate.source {
        Source::Directory(dir) => Some(dir.as_path()),
        Source::Library(_) => None,
    };
    // The install's signature check (with `require`) before anything opens.
    if let Some(dir) = dir {
        match super::lifecycle::check_signature(dir, name, trust) {
            Ok(verdict) => report.signer = verdict.signer().map(str::to_owned),
            Err(e) => {
                report.problems.push(e.to_string());
                return report;
            }
        }
    }
    let work = match tempfile::tempdir() {
        Ok(work) => work,
        Err(e) => {
            report.problems.push(format!("cannot make a work dir: {e}"));
            return report;
        }
    };
    let cache = LibraryCache::new(work.path().join("libs"), trust.clone());
    let (manifest, opened) = registry::open_candidate(candidate, &cache);
    report.version = manifest.as_ref().map(|m| m.version.to_string());
    let loaded = match opened {
        Ok(loaded) => loaded,
        Err(e) => {
            report.problems.push(e.to_string());
            return report;
        }
    };
    report.version = Some(loaded.manifest.version.to_string());
    report.contract.clone_from(&loaded.contract);
    report.manifest = Some(loaded.manifest.json.clone());
    let routers = loaded.code().routers();
    match registry::plugin_routes(name, &loaded.manifest, &routers) {
        Ok(routes) => {
            let probe = registry::probe_plugin(name, &loaded);
            let mut table = RouteTableBuilder::default();
            if let Err(e) = table.add(probe, routes) {
                report.problems.push(e.to_string());
            }
        }
        Err(e) => report.problems.push(e.to_string()),
    }
    let scripts = Scripts::new(dir, loaded.code().files());
    inspect_sql(&scripts, &loaded.manifest, &mut report);
    report
}

/// [`inspect`] of the package directory `dir` of plugin `name`.
fn inspect_dir(dir: &Path, name: &str, trust: &TrustPolicy) -> Inspection {
    inspect(
        &Candidate {
            name: name.to_owned(),
            source: Source::Directory(dir.to_owned()),
        },
        trust,
    )
}

/// The plugin's SQL scripts (beside the library, else embedded in it):
/// each must split into statements on its backend, and a plugin that
/// declares databases must have an init script for each of them in both
/// key modes (a host on that backend and mode refuses it otherwise).
fn inspect_sql(scripts: &Scripts, manifest: &PluginManifest, report: &mut Inspection) {
    use crate::db::{Backend, PkMode};
    let declared: Vec<Backend> = [Backend::Sqlite, Backend::Postgresql, Backend::Mysql]
        .into_iter()
        .filter(|b| manifest.databases.iter().any(|d| d == b.name()))
        .collect();
    for backend in [Backend::Sqlite, Backend::Postgresql, Backend::Mysql] {
        for pk_mode in [PkMode::Autoincrement, PkMode::Snowflake] {
            for script in [Script::Init, Script::Destroy] {
                let relative = script_path(script, backend, pk_mode);
                match scripts.read(&relative) {
                    Ok(Some(text)) => {
                        if let Err(e) = crate::db::split::split(&text, backend.escapes()) {
                            report
                                .problems
                                .push(format!("{relative}: {e}; fix the script"));
                        }
                    }
                    Ok(None) if matches!(script, Script::Init) && declared.contains(&backend) => {
                        report.problems.push(format!(
                            "plugin.toml declares {} but the plugin has no {relative}: a host on {} in {} mode would refuse it; add the script to sql/",
                            backend.name(),
                            backend.name(),
                            pk_mode.name()
                        ));
                    }
                    Ok(None) => {}
                    Err(e) => report.problems.push(e.to_string()),
                }
            }
        }
    }
}

/// Checks `path` as an install would, without a host: a plugin.toml, a
/// plugin directory, a lone library, a plugin crate (built first) or a
/// package ZIP (unpacked with the install's limits first). `trust` is the
/// signature policy to check against.
pub fn check(path: &Path, trust: &TrustPolicy) -> Result<Inspection, AuthoringError> {
    let file_name = path
        .file_name()
        .and_then(|f| f.to_str())
        .unwrap_or_default()
        .to_owned();
    if path.is_file() && file_name.ends_with(".toml") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let mut report = Inspection::default();
        match PluginManifest::parse(&text) {
            Ok(manifest) => report.version = Some(manifest.version.to_string()),
            Err(e) => report.problems.push(e.to_string()),
        }
        report.name = path
            .parent()
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Ok(report);
    }
    if path.is_file() && file_name.ends_with(".zip") {
        let bytes = std::fs::read(path)
            .map_err(|e| fail(format!("cannot read {}: {e}", path.display())))?;
        let work = tempfile::tempdir().map_err(|e| fail(format!("cannot make a work dir: {e}")))?;
        let name = match package::unpack(&bytes, &package::Limits::default(), work.path()) {
            Ok(name) => name,
            Err(e) => {
                return Ok(Inspection {
                    name: file_name,
                    problems: vec![e.to_string()],
                    ..Inspection::default()
                });
            }
        };
        return Ok(inspect_dir(&work.path().join(&name), &name, trust));
    }
    if path.is_file() {
        let Some(name) = super::loading::discover::name_from_library_file(&file_name) else {
            return Err(fail(format!(
                "{} is neither a plugin.toml, a package ZIP, a plugin library (lib<name>.so), a plugin directory nor a crate",
                path.display()
            )));
        };
        return Ok(inspect(
            &Candidate {
                name: name.to_owned(),
                source: Source::Library(path.to_owned()),
            },
            trust,
        ));
    }
    if path.join("Cargo.toml").is_file() {
        let staged = build_and_stage(path)?;
        return Ok(inspect_dir(&staged.dir(), &staged.name, trust));
    }
    if path.is_dir() {
        return Ok(inspect_dir(path, &file_name, trust));
    }
    Err(fail(format!("{} does not exist", path.display())))
}

/// Builds the plugin crate in `crate_dir` (release) and writes its package
/// to `output`, signed with the secret key `sign` when given. The package
/// is checked as an install checks it before it is written.
pub fn package(
    crate_dir: &Path,
    output: &Path,
    sign: Option<&Path>,
) -> Result<Packaged, AuthoringError> {
    // Read before the build, so that a wrong password fails at once.
    let key = sign
        .map(|path| trust::read_secret_key(path, password()))
        .transpose()
        .map_err(|e| fail(e.to_string()))?;
    let staged = build_and_stage(crate_dir)?;
    let (dir, name) = (staged.dir(), staged.name.clone());
    let report = inspect_dir(&dir, &name, &TrustPolicy::default());
    if let Some(problem) = report.problems.first() {
        return Err(fail(format!("plugin '{name}' would be refused: {problem}")));
    }
    for note in &report.notes {
        eprintln!("note: {note}");
    }
    let contract = report
        .contract
        .unwrap_or_else(|| plugin_api::CONTRACT_VERSION.to_owned());
    let version = staged.manifest.version.to_string();
    let key_id = match &key {
        Some(key) => Some(
            trust::sign_dir(
                &dir,
                key,
                &Statement {
                    plugin: name.clone(),
                    version: version.clone(),
                    contract: contract.clone(),
                },
            )
            .map_err(|e| fail(e.to_string()))?,
        ),
        None => None,
    };
    let bytes = package::pack(&package::PackSource::Dir(dir.clone()), &name)
        .map_err(|e| fail(format!("cannot pack {}: {e}", dir.display())))?;
    let tmp = output.with_extension("zip.tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, output))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            fail(format!("cannot write {}: {e}", output.display()))
        })?;
    Ok(Packaged {
        name,
        version,
        contract,
        key_id,
        size: bytes.len(),
    })
}

/// Writes the catalog index of the packages in `dir`
/// ([`super::lifecycle::catalog::build`]), signed with the secret key
/// `sign` when given (its password, if any, from PLUGHOST_SIGNING_PASSWORD).
pub fn build_catalog(
    dir: &Path,
    sign: Option<&Path>,
    base_url: Option<&str>,
    trust: &TrustPolicy,
) -> Result<super::lifecycle::catalog::Built, AuthoringError> {
    if let Some(base) = base_url
        && !(base.starts_with("http://") || base.starts_with("https://"))
    {
        return Err(fail(format!(
            "--base-url {base} is not an http(s) URL; give the URL the catalog's folder is served at"
        )));
    }
    let key = sign
        .map(|path| trust::read_secret_key(path, password()))
        .transpose()
        .map_err(|e| fail(e.to_string()))?;
    super::lifecycle::catalog::build(dir, key.as_ref(), base_url, trust).map_err(fail)
}
