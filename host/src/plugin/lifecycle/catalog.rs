//! Plugin catalogs: a signed JSON index of plugin packages, one entry per
//! plugin version, read from a URL or a path.
//!
//! A catalog is a folder: `index.json` (see [`Index`]), its signature
//! `index.json.minisig` (minisign, the same keys as packages, trusted
//! comment `plughost-catalog`), and the packages the entries point at
//! (relative URLs resolve against the index). `plughost catalog build`
//! writes it from a folder of packages, each read with the install's own
//! checks. A host lists the catalogs of `PLUGHOST_CATALOG`
//! ([`PluginHost::catalog`]) and installs by name through the install path
//! ([`PluginHost::install_from_catalog`]): a package's sha256 is checked
//! against the index before the package is opened, and its signature as
//! for any package.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{InstallOptions, Installed, LifecycleError};
use crate::plugin::{
    PluginHost,
    loading::{
        libcache::hex_digest,
        manifest::{Version, is_valid_plugin_name},
        trust::{BytesVerdict, TrustPolicy},
    },
};

/// The index file of a catalog folder.
pub const INDEX: &str = "index.json";
/// The signature of [`INDEX`] beside it.
pub const INDEX_SIGNATURE: &str = "index.json.minisig";
/// The first word of a catalog signature's trusted comment.
pub const STATEMENT: &str = "plughost-catalog";
/// The index format this host reads and writes.
pub const FORMAT: u32 = 1;
/// The largest index read.
const MAX_INDEX: u64 = 8 * 1024 * 1024;
/// The largest signature read.
const MAX_SIGNATURE: u64 = 16 * 1024;
/// How long connecting to a catalog may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long downloading a package may take in all.
const PACKAGE_TIMEOUT: Duration = Duration::from_secs(120);

/// A catalog's index.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Index {
    /// The index format ([`FORMAT`]).
    pub format: u32,
    /// When it was built (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generated_at: Option<String>,
    /// One entry per plugin version.
    pub entries: Vec<Entry>,
}

/// One version of one plugin in a catalog.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Entry {
    /// The plugin's name.
    pub name: String,
    /// The `[plugin]` fields of its manifest.
    pub plugin: About,
    /// The plugin-api version its library was built against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contract: Option<String>,
    /// Its package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<PackageRef>,
    /// Its Git repository (installed as `type=git` is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git: Option<GitRef>,
    /// The id of the key that signed the package, if it is signed (the
    /// host verifies the signature when it installs it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
}

/// The `[plugin]` table of a manifest, as a catalog lists it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct About {
    /// One line.
    #[serde(default)]
    pub summary: String,
    /// `x.y.z`.
    pub version: String,
    /// What it does.
    #[serde(default)]
    pub description: String,
    /// Who wrote it.
    #[serde(default)]
    pub author: String,
    /// Tags to search by.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The databases it supports (empty: any).
    #[serde(default)]
    pub database: Vec<String>,
    /// An icon URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
}

/// Where a package is, and its digest.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackageRef {
    /// Relative to the index, or an http(s) URL.
    pub url: String,
    /// The sha256 of the package file, in hex.
    pub sha256: String,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// A Git source.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GitRef {
    /// The repository (https://).
    pub url: String,
    /// A branch, tag or commit (default: the default branch).
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// Why a catalog cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CatalogError {
    /// No catalog is configured.
    #[error(
        "no plugin catalog is configured; set PLUGHOST_CATALOG to one or more catalog URLs or paths"
    )]
    NotConfigured,
    /// The catalog (or a package in it) cannot be reached or read.
    #[error("catalog {catalog}: {message}")]
    Unreachable {
        /// The catalog, or the file in it.
        catalog: String,
        /// What failed, and what to do.
        message: String,
    },
    /// The index is not one this host reads.
    #[error("catalog {catalog}: {message}")]
    Invalid {
        /// The catalog.
        catalog: String,
        /// What is wrong, and what to do.
        message: String,
    },
    /// Its signature does not do.
    #[error("catalog {catalog}: {message}")]
    Untrusted {
        /// The catalog.
        catalog: String,
        /// What is wrong, and what to do.
        message: String,
    },
    /// No entry of that name (and version).
    #[error("{0}")]
    NotFound(String),
    /// The entry cannot be installed here.
    #[error("{0}")]
    Incompatible(String),
    /// A package differs from what the index says.
    #[error(
        "package {url} hashes to {found}, but the catalog's index says {expected}: the package or the index was changed after the catalog was built; build the catalog again"
    )]
    Digest {
        /// The package.
        url: String,
        /// The index's digest.
        expected: String,
        /// The package's.
        found: String,
    },
}

impl CatalogError {
    /// The HTTP status it answers.
    pub fn status(&self) -> u16 {
        match self {
            Self::NotConfigured | Self::NotFound(_) => 404,
            Self::Unreachable { .. } | Self::Invalid { .. } => 502,
            Self::Untrusted { .. } | Self::Digest { .. } => 422,
            Self::Incompatible(_) => 409,
        }
    }
}

/// Where a catalog's index, or a package, is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// An http(s) URL.
    Url(reqwest::Url),
    /// A file.
    Path(PathBuf),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(url) => write!(f, "{url}"),
            Self::Path(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Location {
    /// The index a catalog setting names: a URL or a path, of the index
    /// itself or of its folder.
    pub fn catalog(text: &str) -> Result<Self, CatalogError> {
        let text = text.trim();
        let invalid = |message: String| CatalogError::Invalid {
            catalog: text.to_owned(),
            message,
        };
        if text.starts_with("http://") || text.starts_with("https://") {
            let mut url = reqwest::Url::parse(text)
                .map_err(|e| invalid(format!("not a URL ({e}); give an http(s) URL or a path")))?;
            if !url.path().ends_with(".json") {
                if !url.path().ends_with('/') {
                    url.set_path(&format!("{}/", url.path()));
                }
                url = url.join(INDEX).map_err(|e| invalid(e.to_string()))?;
            }
            return Ok(Self::Url(url));
        }
        if text.contains("://") {
            return Err(invalid(
                "only http://, https:// and paths are read; give the catalog's URL or folder"
                    .into(),
            ));
        }
        let path = PathBuf::from(text);
        Ok(Self::Path(
            if path.extension().is_some_and(|e| e == "json") {
                path
            } else {
                path.join(INDEX)
            },
        ))
    }

    /// `reference` (an entry's package URL) resolved against this index.
    /// A catalog on the web may point only at http(s) URLs; one on disk
    /// also at files beside its index.
    pub fn resolve(&self, reference: &str) -> Result<Self, String> {
        if reference.starts_with("http://") || reference.starts_with("https://") {
            return reqwest::Url::parse(reference)
                .map(Self::Url)
                .map_err(|e| format!("package URL '{reference}' is not a URL ({e})"));
        }
        if reference.contains("://") || reference.starts_with('/') {
            return Err(format!(
                "package URL '{reference}' is neither http(s) nor relative to the index"
            ));
        }
        match self {
            Self::Url(url) => url
                .join(reference)
                .map(Self::Url)
                .map_err(|e| format!("package URL '{reference}' does not resolve ({e})")),
            Self::Path(path) => {
                if Path::new(reference)
                    .components()
                    .any(|c| !matches!(c, std::path::Component::Normal(_)))
                {
                    return Err(format!(
                        "package path '{reference}' must stay inside the catalog's folder"
                    ));
                }
                Ok(Self::Path(
                    path.parent().unwrap_or(Path::new(".")).join(reference),
                ))
            }
        }
    }

    /// This location with `suffix` appended (the signature beside an index).
    fn with_suffix(&self, suffix: &str) -> Self {
        match self {
            Self::Url(url) => {
                let mut url = url.clone();
                url.set_path(&format!("{}{suffix}", url.path()));
                Self::Url(url)
            }
            Self::Path(path) => {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                Self::Path(PathBuf::from(name))
            }
        }
    }

    /// Reads at most `limit` bytes within `timeout`; `None` when there is
    /// nothing there (404, no such file).
    pub async fn read(&self, limit: u64, timeout: Duration) -> Result<Option<Vec<u8>>, String> {
        match self {
            Self::Path(path) => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path, limit))
                    .await
                    .map_err(|e| e.to_string())?
            }
            Self::Url(url) => tokio::time::timeout(timeout, fetch(url, limit))
                .await
                .map_err(|_| {
                    format!(
                        "no complete answer within {} s (PLUGHOST_CATALOG_TIMEOUT for an index); check that the server is up and reachable",
                        timeout.as_secs()
                    )
                })?,
        }
    }
}

fn read_file(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("it is larger than the limit of {limit} bytes"));
    }
    Ok(Some(bytes))
}

fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("plughost/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with rustls")
    })
}

async fn fetch(url: &reqwest::Url, limit: u64) -> Result<Option<Vec<u8>>, String> {
    let mut response = client()
        .get(url.clone())
        .send()
        .await
        .map_err(|e| format!("cannot be reached ({e}); check the URL and the network"))?;
    match response.status() {
        reqwest::StatusCode::NOT_FOUND => return Ok(None),
        status if !status.is_success() => {
            return Err(format!("the server answered {status}"));
        }
        _ => {}
    }
    if let Some(length) = response.content_length().filter(|l| *l > limit) {
        return Err(format!(
            "it is {length} bytes, larger than the limit of {limit} bytes"
        ));
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| format!("the answer broke off ({e})"))?
    {
        if (bytes.len() + chunk.len()) as u64 > limit {
            return Err(format!("it is larger than the limit of {limit} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Some(bytes))
}

/// A catalog as read: its index (checked) and its signer.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Where its index is.
    pub location: Location,
    /// The trusted key that signed the index, if one did.
    pub signer: Option<String>,
    /// The index.
    pub index: Index,
}

impl Catalog {
    /// Reads and checks the catalog at `location` with the signature
    /// policy `trust`.
    /// Reading the index and its signature may take `timeout` each.
    pub async fn read(
        location: Location,
        trust: &TrustPolicy,
        timeout: Duration,
    ) -> Result<Self, CatalogError> {
        let source = location.to_string();
        let unreachable = |message: String| CatalogError::Unreachable {
            catalog: source.clone(),
            message,
        };
        let bytes = location
            .read(MAX_INDEX, timeout)
            .await
            .map_err(&unreachable)?
            .ok_or_else(|| {
                unreachable(format!(
                    "there is no {INDEX} there; point PLUGHOST_CATALOG at a catalog's folder or index (`plughost catalog build DIR` writes one)"
                ))
            })?;
        let signature = location
            .with_suffix(".minisig")
            .read(MAX_SIGNATURE, timeout)
            .await
            .map_err(|e| unreachable(format!("{INDEX_SIGNATURE}: {e}")))?;
        let signature = signature
            .map(|s| {
                String::from_utf8(s).map_err(|_| CatalogError::Untrusted {
                    catalog: source.clone(),
                    message: format!("{INDEX_SIGNATURE} is not text"),
                })
            })
            .transpose()?;
        let verdict = trust
            .verify_bytes(
                &format!("its {INDEX}"),
                &bytes,
                signature.as_deref(),
                STATEMENT,
            )
            .map_err(|message| CatalogError::Untrusted {
                catalog: source.clone(),
                message,
            })?;
        let index = parse_index(&bytes).map_err(|message| CatalogError::Invalid {
            catalog: source.clone(),
            message,
        })?;
        Ok(Self {
            location,
            signer: match verdict {
                BytesVerdict::Signed(key) => Some(key),
                BytesVerdict::Unsigned | BytesVerdict::Untrusted(_) => None,
            },
            index,
        })
    }
}

/// Parses and checks an index: its format, and every entry's name,
/// version, digest and source.
pub fn parse_index(bytes: &[u8]) -> Result<Index, String> {
    let index: Index = serde_json::from_slice(bytes)
        .map_err(|e| format!("{INDEX} is not a catalog index ({e})"))?;
    if index.format != FORMAT {
        return Err(format!(
            "{INDEX} has format {}, this host reads format {FORMAT}; upgrade the host or build the catalog with this version",
            index.format
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for entry in &index.entries {
        let name = &entry.name;
        if !is_valid_plugin_name(name) {
            return Err(format!("entry '{name}': not a plugin name"));
        }
        let version = &entry.plugin.version;
        if version.parse::<Version>().is_err() {
            return Err(format!("entry '{name}': version '{version}' is not x.y.z"));
        }
        if !seen.insert((name.clone(), version.clone())) {
            return Err(format!("entry '{name}' {version} appears twice"));
        }
        match (&entry.package, &entry.git) {
            (None, None) => {
                return Err(format!(
                    "entry '{name}' {version} has neither a package nor a git source"
                ));
            }
            (Some(package), _) if !is_sha256(&package.sha256) => {
                return Err(format!(
                    "entry '{name}' {version}: package sha256 '{}' is not 64 hex digits",
                    package.sha256
                ));
            }
            _ => {}
        }
    }
    Ok(index)
}

fn is_sha256(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether a library built against plugin-api `contract` loads on this
/// host (the same major version; `None`: not known until installed).
pub fn compatible(contract: Option<&str>) -> bool {
    let major = |v: &str| v.split('.').next().map(str::to_owned);
    contract.is_none_or(|c| major(c) == major(plugin_api::CONTRACT_VERSION))
}

/// One plugin across the configured catalogs, as the host lists it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listed {
    /// Its newest version offered here (compatible, if one is).
    #[serde(flatten)]
    pub entry: Entry,
    /// The catalog it comes from.
    pub catalog: String,
    /// Every version offered, newest first.
    pub versions: Vec<String>,
    /// Whether its library can load on this host (its contract's major
    /// version is this host's).
    pub compatible: bool,
    /// The version installed here, if any.
    pub installed: Option<String>,
    /// A newer compatible version than the one installed, if any.
    pub upgrade: Option<String>,
}

/// A configured catalog and whether it could be read.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Source {
    /// Its index.
    pub location: String,
    /// The trusted key that signed the index, if one did.
    pub signer: Option<String>,
    /// How many entries it has.
    pub entries: usize,
    /// Why it cannot be used, if it cannot.
    pub error: Option<String>,
}

/// What `GET /admin/v1/sys/plugin-catalog` answers.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Listing {
    /// The configured catalogs.
    pub catalogs: Vec<Source>,
    /// Every plugin they offer, by name.
    pub plugins: Vec<Listed>,
}

/// The version an entry offers.
fn version_of(entry: &Entry) -> Version {
    entry.plugin.version.parse().unwrap_or(Version(0, 0, 0))
}

/// Every entry of `catalogs` by plugin name, newest version first; of the
/// same version in two catalogs, the first configured wins.
fn by_name(catalogs: &[Catalog]) -> BTreeMap<String, Vec<(&Catalog, &Entry)>> {
    let mut all: BTreeMap<String, Vec<(&Catalog, &Entry)>> = BTreeMap::new();
    for catalog in catalogs {
        for entry in &catalog.index.entries {
            let versions = all.entry(entry.name.clone()).or_default();
            if !versions
                .iter()
                .any(|(_, e)| e.plugin.version == entry.plugin.version)
            {
                versions.push((catalog, entry));
            }
        }
    }
    for versions in all.values_mut() {
        versions.sort_by_key(|(_, e)| std::cmp::Reverse(version_of(e)));
    }
    all
}

impl PluginHost {
    /// Reads every configured catalog (at once); each is the catalog or
    /// why it cannot be used.
    pub async fn read_catalogs(&self) -> Result<Vec<Result<Catalog, CatalogError>>, CatalogError> {
        if self.catalogs.is_empty() {
            return Err(CatalogError::NotConfigured);
        }
        let (trust, timeout) = (self.cache.trust(), self.catalog_timeout);
        Ok(futures_util::future::join_all(
            self.catalogs
                .iter()
                .map(|location| Catalog::read(location.clone(), trust, timeout)),
        )
        .await)
    }

    /// The plugins the configured catalogs offer, with what is installed
    /// here and the upgrades on offer.
    pub async fn catalog(&self) -> Result<Listing, CatalogError> {
        let read = self.read_catalogs().await?;
        let mut sources = Vec::new();
        let mut catalogs = Vec::new();
        for (location, result) in self.catalogs.iter().zip(read) {
            match result {
                Ok(catalog) => {
                    sources.push(Source {
                        location: catalog.location.to_string(),
                        signer: catalog.signer.clone(),
                        entries: catalog.index.entries.len(),
                        error: None,
                    });
                    catalogs.push(catalog);
                }
                Err(e) => sources.push(Source {
                    location: location.to_string(),
                    signer: None,
                    entries: 0,
                    error: Some(e.to_string()),
                }),
            }
        }
        let installed: BTreeMap<String, Version> = self
            .set
            .records()
            .iter()
            .filter_map(|(name, r)| Some((name.clone(), r.manifest.as_ref()?.version)))
            .collect();
        let plugins = by_name(&catalogs)
            .into_iter()
            .map(|(name, versions)| {
                let usable = |e: &Entry| compatible(e.contract.as_deref());
                let (catalog, entry) = versions
                    .iter()
                    .find(|(_, e)| usable(e))
                    .unwrap_or(&versions[0]);
                let here = installed.get(&name);
                let upgrade = here.and_then(|here| {
                    versions
                        .iter()
                        .find(|(_, e)| usable(e) && version_of(e) > *here)
                        .map(|(_, e)| e.plugin.version.clone())
                });
                Listed {
                    entry: (*entry).clone(),
                    catalog: catalog.location.to_string(),
                    versions: versions
                        .iter()
                        .map(|(_, e)| e.plugin.version.clone())
                        .collect(),
                    compatible: usable(entry),
                    installed: here.map(ToString::to_string),
                    upgrade,
                }
            })
            .collect();
        Ok(Listing {
            catalogs: sources,
            plugins,
        })
    }

    /// Installs plugin `name` from the configured catalogs (or upgrades
    /// it, when installed): `version`, else the newest compatible one.
    /// The package is downloaded, its sha256 checked against the index,
    /// then installed as an uploaded package is (its signature checked as
    /// for any package); a Git entry is installed as `type=git` is.
    pub async fn install_from_catalog(
        &self,
        name: &str,
        version: Option<&str>,
        options: &InstallOptions,
    ) -> Result<Installed, LifecycleError> {
        let read = self.read_catalogs().await?;
        let mut failed = Vec::new();
        let catalogs: Vec<Catalog> = read
            .into_iter()
            .filter_map(|r| r.map_err(|e| failed.push(e.to_string())).ok())
            .collect();
        let all = by_name(&catalogs);
        let not_found = |what: String| {
            let mut message = what;
            if !failed.is_empty() {
                message.push_str(&format!(
                    " (and {} catalog(s) could not be read: {})",
                    failed.len(),
                    failed.join("; ")
                ));
            }
            CatalogError::NotFound(message)
        };
        let versions = all.get(name).ok_or_else(|| {
            not_found(format!(
                "no configured catalog offers plugin '{name}'; `plughost plugin search` lists what they offer"
            ))
        })?;
        let chosen = match version {
            Some(wanted) => versions.iter().find(|(_, e)| e.plugin.version == wanted),
            None => versions
                .iter()
                .find(|(_, e)| compatible(e.contract.as_deref())),
        };
        let Some((catalog, entry)) = chosen else {
            let offered: Vec<&str> = versions
                .iter()
                .map(|(_, e)| e.plugin.version.as_str())
                .collect();
            return Err(match version {
                Some(wanted) => not_found(format!(
                    "the catalogs offer plugin '{name}' in {}, not {wanted}",
                    offered.join(", ")
                )),
                None => CatalogError::Incompatible(format!(
                    "every version of plugin '{name}' the catalogs offer ({}) was built against another major version of plugin-api than this host's {}",
                    offered.join(", "),
                    plugin_api::CONTRACT_VERSION
                )),
            }
            .into());
        };
        if !compatible(entry.contract.as_deref()) {
            return Err(CatalogError::Incompatible(format!(
                "plugin '{name}' {} was built against plugin-api {}, this host speaks {}; choose another version",
                entry.plugin.version,
                entry.contract.as_deref().unwrap_or("?"),
                plugin_api::CONTRACT_VERSION
            ))
            .into());
        }
        let mut options = options.clone();
        // By name: an installed plugin is upgraded.
        options.upgrade |= self.is_installed(name);
        match (&entry.package, &entry.git) {
            (Some(package), _) => {
                let location = catalog.location.resolve(&package.url).map_err(|message| {
                    CatalogError::Invalid {
                        catalog: catalog.location.to_string(),
                        message,
                    }
                })?;
                let bytes = location
                    .read(self.limits.max_archive, PACKAGE_TIMEOUT)
                    .await
                    .and_then(|b| b.ok_or_else(|| "there is no such file".to_owned()))
                    .map_err(|message| CatalogError::Unreachable {
                        catalog: location.to_string(),
                        message,
                    })?;
                let found = hex_digest(&bytes);
                if !found.eq_ignore_ascii_case(&package.sha256) {
                    return Err(CatalogError::Digest {
                        url: location.to_string(),
                        expected: package.sha256.clone(),
                        found,
                    }
                    .into());
                }
                // The package must be the entry's plugin and version: an
                // index written by hand could name one and point at another.
                match package_identity(&bytes) {
                    Some((found, version))
                        if found == entry.name && version == entry.plugin.version => {}
                    found => {
                        return Err(CatalogError::Invalid {
                            catalog: catalog.location.to_string(),
                            message: format!(
                                "entry '{name}' {} points at {}; build the catalog again",
                                entry.plugin.version,
                                found.map_or_else(
                                    || "a package without a readable plugin.toml".to_owned(),
                                    |(n, v)| format!("a package of plugin '{n}' {v}")
                                )
                            ),
                        }
                        .into());
                    }
                }
                self.install_zip(bytes, &options).await
            }
            (None, Some(git)) => {
                self.install_git(&git.url, git.reference.as_deref(), &options)
                    .await
            }
            (None, None) => Err(CatalogError::Invalid {
                catalog: catalog.location.to_string(),
                message: format!("entry '{name}' has neither a package nor a git source"),
            }
            .into()),
        }
    }
}

/// What [`build`] wrote.
#[derive(Debug)]
pub struct Built {
    /// The index file.
    pub index: PathBuf,
    /// Its entries.
    pub entries: usize,
    /// The key that signed it, if one did.
    pub signer: Option<String>,
    /// The packages left out, each with why.
    pub refused: Vec<(String, Vec<String>)>,
}

/// Writes the catalog index of the packages (`*.zip`) in `dir`: each read
/// with the install's own checks ([`crate::plugin::authoring::check`],
/// signatures against `trust`); a package that fails them is left out and
/// named in [`Built::refused`]. Package URLs are the file names, under
/// `base_url` when given. With `sign` (a secret key), the index is signed
/// beside it; without, a signature left from before is removed.
pub fn build(
    dir: &Path,
    sign: Option<&minisign::SecretKey>,
    base_url: Option<&str>,
    trust: &TrustPolicy,
) -> Result<Built, String> {
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.ends_with(".zip") && !name.starts_with('.'))
        .collect();
    files.sort();
    let mut entries: Vec<Entry> = Vec::new();
    let mut refused = Vec::new();
    for file in files {
        let path = dir.join(&file);
        let bytes =
            std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let report = crate::plugin::authoring::check(&path, trust).map_err(|e| e.to_string())?;
        if !report.problems.is_empty() {
            refused.push((file, report.problems));
            continue;
        }
        let about = report
            .manifest
            .as_ref()
            .and_then(|m| m.get("plugin"))
            .cloned()
            .and_then(|plugin| serde_json::from_value::<About>(plugin).ok());
        let Some(about) = about else {
            refused.push((
                file,
                vec!["its manifest has no readable [plugin] table".into()],
            ));
            continue;
        };
        if let Some(other) = entries
            .iter()
            .find(|e| e.name == report.name && e.plugin.version == about.version)
        {
            refused.push((
                file,
                vec![format!(
                    "plugin '{}' {} is already indexed from {}; keep one package per version",
                    report.name,
                    about.version,
                    other.package.as_ref().map_or("", |p| p.url.as_str())
                )],
            ));
            continue;
        }
        let url = match base_url {
            Some(base) => format!("{}/{file}", base.trim_end_matches('/')),
            None => file.clone(),
        };
        entries.push(Entry {
            name: report.name.clone(),
            plugin: about,
            contract: report.contract.clone(),
            package: Some(PackageRef {
                url,
                sha256: hex_digest(&bytes),
                size: Some(bytes.len() as u64),
            }),
            git: None,
            signer: report.signer.clone().or_else(|| package_signer(&bytes)),
        });
    }
    entries.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then_with(|| version_of(b).cmp(&version_of(a)))
    });
    let count = entries.len();
    let index = Index {
        format: FORMAT,
        generated_at: Some(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        entries,
    };
    let mut text = serde_json::to_vec_pretty(&index).map_err(|e| e.to_string())?;
    text.push(b'\n');
    let index_path = dir.join(INDEX);
    let signature_path = dir.join(INDEX_SIGNATURE);
    let signer = match sign {
        Some(key) => {
            let signature = crate::plugin::loading::trust::sign_bytes(
                key,
                &text,
                &format!("{STATEMENT} format={FORMAT} entries={count}"),
                "signature of a plughost catalog index",
            )
            .map_err(|e| format!("cannot sign the index: {e}"))?;
            write_new(&signature_path, signature.as_bytes())?;
            Some(crate::plugin::loading::trust::key_id(key.keynum()))
        }
        None => {
            match std::fs::remove_file(&signature_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove the old {INDEX_SIGNATURE}: {e}")),
            }
            None
        }
    };
    write_new(&index_path, &text)?;
    Ok(Built {
        index: index_path,
        entries: count,
        signer,
        refused,
    })
}

/// Writes `bytes` to `path` whole (a temporary file renamed over it).
fn write_new(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot write {}: {e}", path.display())
        })
}

/// The plugin and version a package holds (its top directory and its
/// `plugin.toml`), if they can be read; the install checks the rest.
fn package_identity(bytes: &[u8]) -> Option<(String, String)> {
    use std::io::Read as _;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
    let top = zip.file_names().next()?.split('/').next()?.to_owned();
    let mut text = String::new();
    zip.by_name(&format!("{top}/plugin.toml"))
        .ok()?
        .take(MAX_INDEX)
        .read_to_string(&mut text)
        .ok()?;
    let manifest = crate::plugin::loading::manifest::PluginManifest::parse(&text).ok()?;
    Some((top, manifest.version.to_string()))
}

/// The id of the key a package's signature names (unverified: hosts
/// verify it when they install the package).
fn package_signer(bytes: &[u8]) -> Option<String> {
    use std::io::Read as _;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).ok()?;
    let name = zip
        .file_names()
        .find(|n| {
            n.matches('/').count() == 1
                && n.ends_with(&format!("/{}", crate::plugin::loading::trust::SIGNATURE))
        })?
        .to_owned();
    let mut text = String::new();
    zip.by_name(&name)
        .ok()?
        .take(MAX_SIGNATURE)
        .read_to_string(&mut text)
        .ok()?;
    crate::plugin::loading::trust::signature_key_id(&text)
}
