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
    },
    loading::{
        discover::{Candidate, Source},
        libcache::LibraryCache,
        loader::library_contract,
        manifest::PluginManifest,
        trust::{self, CHECKSUMS, SIGNATURE, Statement, TrustPolicy},
    },
    running::registry,
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
    let encrypted = password().is_some() || !no_password;
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

/// Builds the plugin crate in `crate_dir` (release) and writes its package
/// to `output`, signed with the secret key `sign` when given. The package
/// is checked as an install checks it before it is written.
pub fn package(
    crate_dir: &Path,
    output: &Path,
    sign: Option<&Path>,
) -> Result<Packaged, AuthoringError> {
    for required in ["Cargo.toml", "plugin.toml", "README.md"] {
        if !crate_dir.join(required).is_file() {
            return Err(fail(format!(
                "{} has no {required}; a plugin crate needs Cargo.toml, plugin.toml and README.md (`plughost plugin new` writes them)",
                crate_dir.display()
            )));
        }
    }
    let text = std::fs::read_to_string(crate_dir.join("plugin.toml"))
        .map_err(|e| fail(format!("cannot read plugin.toml: {e}")))?;
    let manifest = PluginManifest::parse(&text).map_err(|e| fail(e.to_string()))?;
    // Read before the build, so that a wrong password fails at once.
    let key = sign
        .map(|path| trust::read_secret_key(path, password()))
        .transpose()
        .map_err(|e| fail(e.to_string()))?;

    let policy = GitPolicy {
        hosts: Vec::new(),
        allow_local: true,
        build_timeout: std::time::Duration::from_secs(3600),
        build_dir: target_dir(crate_dir)?,
    };
    let library = git::build(crate_dir, &policy).map_err(|e| fail(e.to_string()))?;

    let work = tempfile::tempdir().map_err(|e| fail(format!("cannot make a work dir: {e}")))?;
    let name = git::stage(crate_dir, &library, work.path()).map_err(|e| fail(e.to_string()))?;
    let dir = work.path().join(&name);
    // A signature left in the crate is not this build's.
    for stale in [CHECKSUMS, SIGNATURE] {
        let _ = std::fs::remove_file(dir.join(stale));
    }

    // The checks of an install: library (in a child first), name, manifest,
    // routers.
    let cache = LibraryCache::new(work.path().join(".libs"), TrustPolicy::default());
    let candidate = Candidate {
        name: name.clone(),
        source: Source::Directory(dir.clone()),
    };
    let (_, opened) = registry::open_candidate(&candidate, &cache);
    let loaded = opened.map_err(|e| fail(format!("plugin '{name}' would be refused: {e}")))?;
    let routers = (loaded.module.routers())().into_vec();
    registry::plugin_routes(&name, &loaded.manifest, &routers)
        .map_err(|e| fail(format!("plugin '{name}' would be refused: {e}")))?;
    let contract = library_contract(
        &cache
            .prepare(&dir.join(super::loading::discover::library_file_name(&name)))
            .map_err(|e| fail(e.to_string()))?
            .path,
    )
    .unwrap_or_else(|| plugin_api::CONTRACT_VERSION.to_owned());

    let version = manifest.version.to_string();
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
    let summary = manifest.json["plugin"]["summary"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let bytes = package::pack(&dir, &name, &text, &summary)
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
