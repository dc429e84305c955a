//! Signed packages: who built a package, and that nothing in it changed.
//!
//! A signed package carries two more files beside its plugin.toml:
//! `CHECKSUMS`, the sha256 of every other file in the package in
//! `sha256sum` format, and `CHECKSUMS.minisig`, a minisign signature of
//! `CHECKSUMS` whose trusted (signed) comment names the plugin, its version
//! and the contract version it was built against, so a signature cannot be
//! moved to another plugin or version. Both can be checked with the
//! standard tools (`minisign -Vm CHECKSUMS -p key.pub`, `sha256sum -c
//! CHECKSUMS`).
//!
//! Verification reads only these files and the package's bytes: it runs
//! before any byte of the library is loaded.

use std::{
    collections::BTreeMap,
    io::Cursor,
    path::{Path, PathBuf},
};

use minisign::{PublicKey, PublicKeyBox, SecretKey, SecretKeyBox, SignatureBox};

use super::libcache::hex_digest;

/// The list of checksums a signature covers.
pub const CHECKSUMS: &str = "CHECKSUMS";
/// The minisign signature of [`CHECKSUMS`].
pub const SIGNATURE: &str = "CHECKSUMS.minisig";
/// The first word of the signed statement.
const STATEMENT: &str = "plughost-package";

/// What a signature says it is for (its trusted comment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    /// The plugin.
    pub plugin: String,
    /// Its version.
    pub version: String,
    /// The plugin-api version its library was built against.
    pub contract: String,
}

impl Statement {
    fn to_comment(&self) -> String {
        format!(
            "{STATEMENT} plugin={} version={} contract={}",
            self.plugin, self.version, self.contract
        )
    }

    fn parse(comment: &str) -> Option<Self> {
        let mut words = comment.split(' ');
        if words.next()? != STATEMENT {
            return None;
        }
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for word in words {
            let (key, value) = word.split_once('=')?;
            fields.insert(key, value);
        }
        Some(Self {
            plugin: fields.get("plugin")?.to_string(),
            version: fields.get("version")?.to_string(),
            contract: fields.get("contract")?.to_string(),
        })
    }
}

impl std::fmt::Display for Statement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin '{}' {} (plugin-api {})",
            self.plugin, self.version, self.contract
        )
    }
}

/// Why a package's signature is refused, or a key cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TrustError {
    /// No signature, where one is required.
    #[error(
        "plugin '{plugin}' is not signed and this host requires signed packages (PLUGHOST_REQUIRE_SIGNED); \
         build it with `plughost plugin package CRATE_DIR -o OUT.zip --sign KEY`"
    )]
    Unsigned {
        /// The plugin.
        plugin: String,
    },
    /// Signed with a key the host does not trust.
    #[error(
        "plugin '{plugin}' is signed with key {key_id}, which is not among this host's trusted keys \
         (PLUGHOST_TRUSTED_KEYS); add the signer's public key file there if you trust it"
    )]
    UnknownKey {
        /// The plugin.
        plugin: String,
        /// The signing key's id.
        key_id: String,
    },
    /// The signature does not verify with the key it names.
    #[error(
        "plugin '{plugin}': the signature of {CHECKSUMS} does not verify with trusted key {key_id} ({reason}); \
         the package was altered after it was signed"
    )]
    BadSignature {
        /// The plugin.
        plugin: String,
        /// The key.
        key_id: String,
        /// What minisign says.
        reason: String,
    },
    /// The signature is for another plugin or version.
    #[error(
        "plugin '{plugin}' {version}: its signature was made for {signed}; a signature cannot be moved to another plugin or version"
    )]
    Moved {
        /// The plugin in the package.
        plugin: String,
        /// Its version in the package.
        version: String,
        /// What the signature is for.
        signed: String,
    },
    /// A file differs from its signed checksum.
    #[error(
        "plugin '{plugin}': package entry '{entry}' does not match its signed checksum; the package was altered after it was signed"
    )]
    Altered {
        /// The plugin.
        plugin: String,
        /// The entry.
        entry: String,
    },
    /// A file the signature does not cover.
    #[error(
        "plugin '{plugin}': package entry '{entry}' is not covered by the signature; it was added after signing"
    )]
    Unlisted {
        /// The plugin.
        plugin: String,
        /// The entry.
        entry: String,
    },
    /// A signed file is missing.
    #[error(
        "plugin '{plugin}': package entry '{entry}' is signed but missing; the package was altered after it was signed"
    )]
    Missing {
        /// The plugin.
        plugin: String,
        /// The entry.
        entry: String,
    },
    /// The signature files cannot be read.
    #[error("plugin '{plugin}': {message}")]
    Malformed {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        message: String,
    },
    /// A key file cannot be used.
    #[error("key file {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// The signature's contract differs from the library's.
    #[error(
        "plugin '{plugin}': its signature says plugin-api {signed} but the library was built against plugin-api {built}"
    )]
    Contract {
        /// The plugin.
        plugin: String,
        /// The contract in the signature.
        signed: String,
        /// The library's contract.
        built: String,
    },
}

/// The id minisign shows for a key (16 upper-case hex digits).
pub fn key_id(keynum: &[u8]) -> String {
    let mut bytes = [0u8; 8];
    let n = keynum.len().min(8);
    bytes[..n].copy_from_slice(&keynum[..n]);
    format!("{:016X}", u64::from_le_bytes(bytes))
}

/// One public key the host trusts.
#[derive(Debug, Clone)]
struct TrustedKey {
    id: String,
    key: PublicKey,
}

/// Which signers this host trusts, and whether it requires a signature.
#[derive(Debug, Clone, Default)]
pub struct TrustPolicy {
    keys: Vec<TrustedKey>,
    /// Whether unsigned packages are refused.
    pub require: bool,
}

impl TrustPolicy {
    /// Reads the public key files (minisign format) a host trusts.
    pub fn load(files: &[PathBuf], require: bool) -> Result<Self, TrustError> {
        let mut keys = Vec::new();
        for path in files {
            let key = read_public_key(path)?;
            keys.push(TrustedKey {
                id: key_id(key.keynum()),
                key,
            });
        }
        Ok(Self { keys, require })
    }

    /// The same keys, with no signature required (for what the operator
    /// put into the plugin dir).
    pub fn relaxed(&self) -> Self {
        Self {
            keys: self.keys.clone(),
            require: false,
        }
    }

    /// The ids of the trusted keys.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }
}

/// Reads a minisign public key file.
pub fn read_public_key(path: &Path) -> Result<PublicKey, TrustError> {
    let key_error = |message: String| TrustError::Key {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| key_error(e.to_string()))?;
    PublicKeyBox::from_string(&text)
        .and_then(PublicKeyBox::into_public_key)
        .map_err(|e| {
            key_error(format!(
                "not a minisign public key ({e}); use the .pub file `plughost plugin keygen` wrote"
            ))
        })
}

/// What verification found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No signature (allowed by the policy).
    Unsigned,
    /// Signed by a key the host does not trust (allowed: signatures are
    /// not required); treated as unsigned.
    Untrusted {
        /// The signing key.
        key_id: String,
    },
    /// Signed by a trusted key, every file as signed.
    Signed {
        /// The signing key.
        key_id: String,
        /// What the signature is for.
        statement: Statement,
    },
}

impl Verdict {
    /// The trusted signer's key id, if any.
    pub fn signer(&self) -> Option<&str> {
        match self {
            Self::Signed { key_id, .. } => Some(key_id),
            _ => None,
        }
    }
}

/// The files of a package directory a signature covers: every file but the
/// signature's own two and hidden ones (the host's markers), as sorted
/// paths relative to `dir`.
fn covered_files(dir: &Path) -> std::io::Result<Vec<String>> {
    fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let path = format!("{prefix}{name}");
            let kind = entry.file_type()?;
            if kind.is_dir() {
                walk(&entry.path(), &format!("{path}/"), out)?;
            } else if path != CHECKSUMS && path != SIGNATURE {
                out.push(path);
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, "", &mut files)?;
    files.sort();
    Ok(files)
}

/// The `CHECKSUMS` text of a package directory (`sha256sum` format).
pub fn checksums(dir: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    for file in covered_files(dir)? {
        let digest = hex_digest(&std::fs::read(dir.join(&file))?);
        text.push_str(&format!("{digest}  {file}\n"));
    }
    Ok(text)
}

/// Signs the package directory `dir`: writes its `CHECKSUMS` and their
/// signature, stating `statement`. Answers the key's id.
pub fn sign_dir(dir: &Path, key: &SecretKey, statement: &Statement) -> Result<String, TrustError> {
    let malformed = |message: String| TrustError::Malformed {
        plugin: statement.plugin.clone(),
        message,
    };
    let list = checksums(dir).map_err(|e| malformed(format!("cannot hash its files: {e}")))?;
    let signature = sign_bytes(
        key,
        list.as_bytes(),
        &statement.to_comment(),
        &format!("signature of {statement}"),
    )
    .map_err(|e| malformed(format!("cannot sign: {e}")))?;
    std::fs::write(dir.join(CHECKSUMS), &list)
        .and_then(|()| std::fs::write(dir.join(SIGNATURE), signature))
        .map_err(|e| malformed(format!("cannot write the signature: {e}")))?;
    Ok(key_id(key.keynum()))
}

/// A minisign signature of `bytes` (the text of a `.minisig` file) whose
/// trusted comment is `statement`.
pub fn sign_bytes(
    key: &SecretKey,
    bytes: &[u8],
    statement: &str,
    untrusted: &str,
) -> Result<String, String> {
    minisign::sign(
        None,
        key,
        Cursor::new(bytes),
        Some(statement),
        Some(untrusted),
    )
    .map(SignatureBox::into_string)
    .map_err(|e| e.to_string())
}

/// The id of the key a `.minisig` text names, unverified.
pub fn signature_key_id(text: &str) -> Option<String> {
    SignatureBox::from_string(text)
        .ok()
        .map(|signature| key_id(signature.keynum()))
}

/// What [`TrustPolicy::verify_bytes`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BytesVerdict {
    /// No signature (allowed by the policy).
    Unsigned,
    /// Signed by a key the host does not trust (allowed: signatures are
    /// not required).
    Untrusted(String),
    /// Signed by this trusted key.
    Signed(String),
}

impl TrustPolicy {
    /// Checks `signature` (the text of a `.minisig` file, if there is one)
    /// of `bytes`, whose trusted comment must start with `statement`.
    /// The error says what is wrong with `what` and what to do.
    pub fn verify_bytes(
        &self,
        what: &str,
        bytes: &[u8],
        signature: Option<&str>,
        statement: &str,
    ) -> Result<BytesVerdict, String> {
        let Some(text) = signature else {
            return if self.require {
                Err(format!(
                    "{what} is not signed and this host requires signatures (PLUGHOST_REQUIRE_SIGNED); sign it with a trusted key"
                ))
            } else {
                Ok(BytesVerdict::Unsigned)
            };
        };
        let signature = SignatureBox::from_string(text)
            .map_err(|e| format!("the signature of {what} is not a minisign signature ({e})"))?;
        let signer = key_id(signature.keynum());
        let Some(trusted) = self.keys.iter().find(|k| k.id == signer) else {
            return if self.require {
                Err(format!(
                    "{what} is signed with key {signer}, which is not among this host's trusted keys (PLUGHOST_TRUSTED_KEYS); add the signer's public key file there if you trust it"
                ))
            } else {
                Ok(BytesVerdict::Untrusted(signer))
            };
        };
        minisign::verify(&trusted.key, &signature, Cursor::new(bytes), true, false, false)
            .map_err(|e| {
                format!(
                    "the signature of {what} does not verify with trusted key {signer} ({e}): it was altered after it was signed"
                )
            })?;
        let comment = signature.trusted_comment().unwrap_or_default();
        if comment.split(' ').next() != Some(statement) {
            return Err(format!(
                "the signature of {what} was made for something else ('{comment}'); a signature cannot be moved"
            ));
        }
        Ok(BytesVerdict::Signed(signer))
    }
}

/// Reads a secret key file, decrypting it with `password` (or asking for
/// it on a terminal when `None`).
pub fn read_secret_key(path: &Path, password: Option<String>) -> Result<SecretKey, TrustError> {
    let key_error = |message: String| TrustError::Key {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| key_error(e.to_string()))?;
    let boxed = SecretKeyBox::from_string(&text).map_err(|e| key_error(e.to_string()))?;
    let unencrypted = boxed
        .clone()
        .into_unencrypted_secret_key()
        .ok()
        .filter(|k| !k.is_encrypted());
    if let Some(key) = unencrypted {
        return Ok(key);
    }
    if password.is_none() && !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        return Err(key_error(
            "the key is password-protected; set PLUGHOST_SIGNING_PASSWORD".into(),
        ));
    }
    boxed.into_secret_key(password).map_err(|e| {
        key_error(format!(
            "not a usable minisign secret key ({e}); check PLUGHOST_SIGNING_PASSWORD"
        ))
    })
}

/// Verifies the package directory `dir` of plugin `name` at `version`
/// against `policy`.
pub fn verify_dir(
    dir: &Path,
    name: &str,
    version: &str,
    policy: &TrustPolicy,
) -> Result<Verdict, TrustError> {
    let malformed = |message: String| TrustError::Malformed {
        plugin: name.to_owned(),
        message,
    };
    let (list_path, signature_path) = (dir.join(CHECKSUMS), dir.join(SIGNATURE));
    match (list_path.is_file(), signature_path.is_file()) {
        (false, false) if policy.require => {
            return Err(TrustError::Unsigned {
                plugin: name.to_owned(),
            });
        }
        (false, false) => return Ok(Verdict::Unsigned),
        (true, false) => {
            return Err(malformed(format!(
                "the package has {CHECKSUMS} but no {SIGNATURE}; sign it again"
            )));
        }
        (false, true) => {
            return Err(malformed(format!(
                "the package has {SIGNATURE} but no {CHECKSUMS}; sign it again"
            )));
        }
        (true, true) => {}
    }
    let list = std::fs::read(&list_path)
        .map_err(|e| malformed(format!("cannot read {CHECKSUMS}: {e}")))?;
    let signature = std::fs::read_to_string(&signature_path)
        .ok()
        .and_then(|text| SignatureBox::from_string(&text).ok())
        .ok_or_else(|| malformed(format!("{SIGNATURE} is not a minisign signature")))?;
    let signer = key_id(signature.keynum());
    let trusted = policy.keys.iter().find(|k| k.id == signer);
    match trusted {
        Some(key) => minisign::verify(
            &key.key,
            &signature,
            Cursor::new(&list[..]),
            true,
            false,
            false,
        )
        .map_err(|e| TrustError::BadSignature {
            plugin: name.to_owned(),
            key_id: signer.clone(),
            reason: e.to_string(),
        })?,
        None if policy.require => {
            return Err(TrustError::UnknownKey {
                plugin: name.to_owned(),
                key_id: signer,
            });
        }
        None => {}
    }
    let statement = signature
        .trusted_comment()
        .ok()
        .and_then(|c| Statement::parse(&c))
        .ok_or_else(|| {
            malformed(format!(
                "the trusted comment of {SIGNATURE} is not a plughost package statement; sign with `plughost plugin package --sign`"
            ))
        })?;
    if statement.plugin != name || statement.version != version {
        return Err(TrustError::Moved {
            plugin: name.to_owned(),
            version: version.to_owned(),
            signed: statement.to_string(),
        });
    }
    check_checksums(dir, name, &list)?;
    Ok(match trusted {
        Some(_) => Verdict::Signed {
            key_id: signer,
            statement,
        },
        None => {
            tracing::warn!(plugin = name, key_id = %signer, "the package is signed with a key this host does not trust; installed as unsigned");
            Verdict::Untrusted { key_id: signer }
        }
    })
}

/// Compares the files of `dir` with the signed `list`.
fn check_checksums(dir: &Path, name: &str, list: &[u8]) -> Result<(), TrustError> {
    let malformed = |message: String| TrustError::Malformed {
        plugin: name.to_owned(),
        message,
    };
    let text =
        std::str::from_utf8(list).map_err(|_| malformed(format!("{CHECKSUMS} is not text")))?;
    let mut signed: BTreeMap<&str, &str> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        let (digest, file) = line
            .split_once("  ")
            .filter(|(d, _)| d.len() == 64 && d.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| malformed(format!("{CHECKSUMS} has a malformed line '{line}'")))?;
        signed.insert(file, digest);
    }
    let present =
        covered_files(dir).map_err(|e| malformed(format!("cannot list its files: {e}")))?;
    for file in &present {
        let Some(digest) = signed.remove(file.as_str()) else {
            return Err(TrustError::Unlisted {
                plugin: name.to_owned(),
                entry: file.clone(),
            });
        };
        let bytes = std::fs::read(dir.join(file))
            .map_err(|e| malformed(format!("cannot read {file}: {e}")))?;
        if !hex_digest(&bytes).eq_ignore_ascii_case(digest) {
            return Err(TrustError::Altered {
                plugin: name.to_owned(),
                entry: file.clone(),
            });
        }
    }
    if let Some(file) = signed.keys().next() {
        return Err(TrustError::Missing {
            plugin: name.to_owned(),
            entry: (*file).to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(dir: &Path) {
        std::fs::create_dir_all(dir.join("sql/sqlite")).unwrap();
        std::fs::write(dir.join("plugin.toml"), "toml").unwrap();
        std::fs::write(dir.join("README.md"), "readme").unwrap();
        std::fs::write(dir.join("libdemo.so"), "library").unwrap();
        std::fs::write(dir.join("sql/sqlite/init.sql"), "select 1;").unwrap();
        std::fs::write(dir.join(".package"), "marker").unwrap();
    }

    fn statement(version: &str) -> Statement {
        Statement {
            plugin: "demo".into(),
            version: version.into(),
            contract: "1.0.0".into(),
        }
    }

    fn policy_for(pair: &minisign::KeyPair, require: bool) -> TrustPolicy {
        TrustPolicy {
            keys: vec![TrustedKey {
                id: key_id(pair.pk.keynum()),
                key: pair.pk.clone(),
            }],
            require,
        }
    }

    #[test]
    fn signed_packages_verify_and_every_change_is_named() {
        let pair = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let other = minisign::KeyPair::generate_unencrypted_keypair().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("demo");
        package(&dir);
        let policy = policy_for(&pair, true);

        assert!(matches!(
            verify_dir(&dir, "demo", "1.0.0", &policy),
            Err(TrustError::Unsigned { .. })
        ));
        assert_eq!(
            verify_dir(&dir, "demo", "1.0.0", &TrustPolicy::default()).unwrap(),
            Verdict::Unsigned
        );

        let id = sign_dir(&dir, &pair.sk, &statement("1.0.0")).unwrap();
        let verdict = verify_dir(&dir, "demo", "1.0.0", &policy).unwrap();
        assert_eq!(verdict.signer(), Some(id.as_str()));
        let list = std::fs::read_to_string(dir.join(CHECKSUMS)).unwrap();
        assert!(list.contains("  sql/sqlite/init.sql\n"), "{list}");
        assert!(!list.contains(".package"), "{list}");

        // Another version or plugin: the statement does not match.
        assert!(matches!(
            verify_dir(&dir, "demo", "1.0.1", &policy),
            Err(TrustError::Moved { .. })
        ));
        assert!(matches!(
            verify_dir(&dir, "other", "1.0.0", &policy),
            Err(TrustError::Moved { .. })
        ));
        // A key the host does not know.
        let stranger = policy_for(&other, true);
        assert!(matches!(
            verify_dir(&dir, "demo", "1.0.0", &stranger),
            Err(TrustError::UnknownKey { .. })
        ));
        let relaxed = policy_for(&other, false);
        assert!(matches!(
            verify_dir(&dir, "demo", "1.0.0", &relaxed).unwrap(),
            Verdict::Untrusted { .. }
        ));

        // An altered, an added and a removed entry.
        std::fs::write(dir.join("libdemo.so"), "evil").unwrap();
        match verify_dir(&dir, "demo", "1.0.0", &policy) {
            Err(TrustError::Altered { entry, .. }) => assert_eq!(entry, "libdemo.so"),
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.join("libdemo.so"), "library").unwrap();
        std::fs::write(dir.join("sql/sqlite/destroy.sql"), "drop table x;").unwrap();
        match verify_dir(&dir, "demo", "1.0.0", &policy) {
            Err(TrustError::Unlisted { entry, .. }) => assert_eq!(entry, "sql/sqlite/destroy.sql"),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(dir.join("sql/sqlite/destroy.sql")).unwrap();
        std::fs::remove_file(dir.join("README.md")).unwrap();
        match verify_dir(&dir, "demo", "1.0.0", &policy) {
            Err(TrustError::Missing { entry, .. }) => assert_eq!(entry, "README.md"),
            other => panic!("{other:?}"),
        }
        std::fs::write(dir.join("README.md"), "readme").unwrap();

        // A re-written list fails the signature.
        std::fs::write(dir.join(CHECKSUMS), format!("{list}\n")).unwrap();
        assert!(matches!(
            verify_dir(&dir, "demo", "1.0.0", &policy),
            Err(TrustError::BadSignature { .. })
        ));
    }

    #[test]
    fn statements_round_trip() {
        let s = statement("2.3.4");
        assert_eq!(Statement::parse(&s.to_comment()), Some(s));
        assert_eq!(Statement::parse("timestamp:1700000000"), None);
    }
}
