//! What is installed, what loaded, and why the rest did not.
//!
//! Start-up runs in phases over every candidate of the plugin dir; each
//! phase can refuse a plugin with a reason, and a refused plugin takes its
//! dependents down with it (named in their reason). Nothing a refused
//! plugin declared is mounted; the others serve.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
};

use abi_stable::std_types::Tuple2;
use actix_web::http::Method;
use plugin_api::abi::{PluginModRef, RouteSpec, RouterSpec};

pub use super::loaded::{Code, LoadedPlugin};
use super::router::{
    ADMIN_SCOPE, ADMIN_SYS_PREFIX, MountedRoute, RouteDoc, RouteError, RouteTable,
    RouteTableBuilder, Scope, check_route_path, join_path,
};
use crate::db::Db;
use crate::plugin::{
    lifecycle::sql::{self, ScriptError},
    loading::{
        discover::{Candidate, Source, library_file_name, package_of},
        libcache::{CachedLibrary, LibraryCache},
        loader::{LoadError, OpenedLibrary, load_library},
        manifest::{
            ManifestError, PLUGIN_NAME_PATTERN, PluginKind, PluginManifest, is_valid_plugin_name,
        },
        trust::{self, TrustError, Verdict},
    },
};

/// Why a plugin is refused: listed with it, and a 422 for an install.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The directory or file name is not a plugin name.
    #[error("'{0}' is not a valid plugin name ({PLUGIN_NAME_PATTERN}); rename it")]
    InvalidName(String),
    /// The name is taken by FBA's keys.
    #[error(
        "'{0}' is a reserved name ('changed' is FBA's restart flag, {{prefix}}:changed; 'sys' begins the host's own event topics); rename the plugin"
    )]
    Reserved(String),
    /// `plugin.toml` cannot be read.
    #[error("cannot read {path}: {message}")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// `plugin.toml` is not a valid manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The directory lacks its README.
    #[error("{0} has no README.md")]
    NoReadme(String),
    /// The directory lacks its library.
    #[error("library {0} is missing")]
    NoLibrary(String),
    /// The library is refused (damaged, not a plugin, another contract).
    #[error(transparent)]
    Library(#[from] LoadError),
    /// The package's signature is refused.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The library declares another name.
    #[error(
        "the library declares plugin '{declared}' but is installed as '{installed}'; rename it to match"
    )]
    NameMismatch {
        /// The name in the library.
        declared: String,
        /// The name it is installed under.
        installed: String,
    },
    /// The plugin declares databases but has no init script for this one.
    #[error(
        "plugin.toml declares databases, but the plugin has no {script} for this host's {backend} database in {pk_mode} mode \
         (neither beside the library nor embedded in it); add the script to the crate's sql/ and rebuild"
    )]
    NoScript {
        /// The script expected.
        script: String,
        /// The host's backend.
        backend: &'static str,
        /// The host's key mode.
        pk_mode: &'static str,
    },
    /// The shipped plugin.toml describes another version than the library.
    #[error(
        "plugin.toml says version {shipped} but the library was built as version {built}; \
         ship the plugin.toml the library was built with (or rebuild the library)"
    )]
    VersionMismatch {
        /// `[plugin] version` of the plugin.toml beside the library.
        shipped: String,
        /// `[plugin] version` of the manifest embedded in the library.
        built: String,
    },
    /// A lone library's embedded manifest is not valid.
    #[error("embedded manifest: {0}")]
    EmbeddedManifest(ManifestError),
    /// The manifest names a router the library lacks.
    #[error("plugin.toml declares router '{0}' but the library has no such router")]
    RouterMissing(String),
    /// The library has a router the manifest does not name.
    #[error("the library's router '{0}' is not declared in plugin.toml")]
    RouterUndeclared(String),
    /// A capability plugin (no `[app]`) exports a router.
    #[error(
        "the library has router '{0}' but plugin.toml has no [app] table (a plugin without routes); declare it under [app] router or [api]"
    )]
    RouterWithoutApp(String),
    /// An app-level router's prefix is not allowed.
    #[error(
        "app-level router '{router}' has prefix '{prefix}': it must start with / and may not be / or lie under {ADMIN_SCOPE}"
    )]
    AppPrefix {
        /// The router.
        router: String,
        /// Its prefix.
        prefix: String,
    },
    /// A route's path is malformed.
    #[error("router '{router}': {source}")]
    RoutePath {
        /// The router.
        router: String,
        /// What is wrong with the path.
        source: Box<RouteError>,
    },
    /// A route's method is not one plugins may serve.
    #[error("router '{router}': unsupported method '{method}'")]
    Method {
        /// The router.
        router: String,
        /// The method.
        method: String,
    },
    /// A route's documentation is not what its key needs.
    #[error(
        "router '{router}', route {method} '{path}': its documentation '{key}' is not JSON ({message}); \
         build the schema with serde_json::json! and Router::{{request,response,query}}_schema"
    )]
    RouteDoc {
        /// The router.
        router: String,
        /// The route's method.
        method: String,
        /// The route's path.
        path: String,
        /// The extension key.
        key: String,
        /// The parse error.
        message: String,
    },
    /// The plugin cannot run isolated (or its child failed to start).
    #[error("isolated: {0}")]
    Isolated(String),
    /// A route's option is not a value the host takes.
    #[error("router '{router}', route {method} '{path}': {message}")]
    RouteOption {
        /// The router.
        router: String,
        /// The route's method.
        method: String,
        /// The route's path.
        path: String,
        /// What is wrong, and what it takes.
        message: String,
    },
    /// A route's permission is not a permission string.
    #[error("router '{router}': '{permission}' is not a permission string (like sys:dict:add)")]
    Permission {
        /// The router.
        router: String,
        /// The permission.
        permission: String,
    },
    /// The plugin is in the plugin dir twice.
    #[error("plugin '{name}' is installed twice ({first} and {second}); remove one")]
    Twice {
        /// The plugin.
        name: String,
        /// Where it was found first.
        first: String,
        /// Where again.
        second: String,
    },
    /// The plugin is part of a dependency cycle.
    #[error("dependency cycle: {0}")]
    Cycle(String),
    /// A dependency is not installed.
    #[error("depends on '{dependency}', which is not installed ({chain})")]
    MissingDependency {
        /// The dependency.
        dependency: String,
        /// The chain that leads to it.
        chain: String,
    },
    /// A dependency failed to load.
    #[error("depends on '{0}', which failed to load")]
    DependencyFailed(String),
    /// A dependency is not loaded on this host (an install).
    #[error("depends on '{0}', which is not installed (or not loaded); install it first")]
    DependencyNotLoaded(String),
    /// The plugin does not support the host's database.
    #[error("the plugin supports {supported} but this host runs on {backend}")]
    Database {
        /// The backends it supports.
        supported: String,
        /// The host's.
        backend: &'static str,
    },
    /// Its routes collide or cannot be mounted.
    #[error(transparent)]
    Routes(#[from] RouteError),
    /// Its init script failed.
    #[error(transparent)]
    Script(#[from] ScriptError),
    /// Its init hook refused.
    #[error("init failed: {0}")]
    Init(String),
    /// Its start hook failed or timed out.
    #[error("not started: {0}")]
    Start(#[from] crate::plugin::services::lifespan::StartError),
    /// A dependency could not be started.
    #[error("not started: it depends on '{0}', which could not be started")]
    DependencyNotStarted(String),
}

/// A plugin's state, as the list endpoint reports it.
pub enum PluginState {
    /// Loaded and mounted (enabled or not).
    Loaded(Arc<LoadedPlugin>),
    /// Refused, with the reason.
    Failed(String),
}

/// One plugin found in the plugin dir.
pub struct PluginRecord {
    /// Its name.
    pub name: String,
    /// Where it was found.
    pub source: PathBuf,
    /// Its manifest, when it could be read.
    pub manifest: Option<PluginManifest>,
    /// Loaded or failed.
    pub state: PluginState,
    /// The package (sha256 in the package store) it was installed from;
    /// `None`: local to this instance (a lone library, a directory placed
    /// by hand).
    pub package: Option<String>,
}

impl PluginRecord {
    /// The loaded plugin, if it loaded.
    pub fn loaded(&self) -> Option<&Arc<LoadedPlugin>> {
        match &self.state {
            PluginState::Loaded(p) => Some(p),
            PluginState::Failed(_) => None,
        }
    }
}

/// The outcome of loading a plugin dir: every record, and the route table.
pub struct LoadOutcome {
    /// Every plugin found, by name.
    pub records: BTreeMap<String, PluginRecord>,
    /// The routes of every plugin that loaded.
    pub table: RouteTable,
}

struct Pending {
    name: String,
    source: PathBuf,
    manifest: Option<PluginManifest>,
    result: Result<Loaded, Refusal>,
}

/// A plugin whose library is open and checked, not yet mounted.
pub(crate) struct Loaded {
    /// Its code; `None` until the child of an isolated plugin runs
    /// ([`start_isolated`]).
    pub(crate) code: Option<Code>,
    /// What starting an isolated plugin's child takes.
    pub(crate) child: Option<ChildToStart>,
    pub(crate) library: PathBuf,
    pub(crate) digest: String,
    /// The trusted key that signed the plugin's package, if any.
    pub(crate) signer: Option<String>,
    /// The plugin-api version the library was built against.
    pub(crate) contract: Option<String>,
    pub(crate) manifest: PluginManifest,
    /// The plugin's directory (lone libraries have none, and so no scripts).
    pub(crate) dir: Option<PathBuf>,
}

/// An isolated plugin's child, to be started: its library copy, and the
/// contract its signature names (checked against the child's report).
pub(crate) struct ChildToStart {
    /// The manifest is the one the library embeds (a lone library).
    from_child: bool,
    copy: PathBuf,
    layout_checked: bool,
    config: crate::plugin::isolation::IsolationConfig,
    signed_contract: Option<String>,
}

impl Loaded {
    /// Its code (a loaded plugin's is known once [`start_isolated`] ran).
    pub(crate) fn code(&self) -> &Code {
        self.code
            .as_ref()
            .expect("an isolated plugin's child is started before its code is used")
    }
}

/// Starts the child of `loaded`, if it runs isolated, and checks what the
/// child reports against the shipped manifest and the signature; a
/// plugin in process is answered as it is.
pub(crate) async fn start_isolated(name: &str, mut loaded: Loaded) -> Result<Loaded, Refusal> {
    let Some(child) = loaded.child.take() else {
        return Ok(loaded);
    };
    let supervisor = crate::plugin::isolation::Supervisor::spawn(
        name,
        child.copy,
        child.layout_checked,
        child.config,
    )
    .await
    .map_err(Refusal::Isolated)?;
    let hello = supervisor.hello();
    if hello.name != name {
        return Err(Refusal::NameMismatch {
            declared: hello.name.clone(),
            installed: name.to_owned(),
        });
    }
    if let Some(signed) = child.signed_contract
        && signed != hello.contract
    {
        return Err(TrustError::Contract {
            plugin: name.to_owned(),
            signed,
            built: hello.contract.clone(),
        }
        .into());
    }
    let built = PluginManifest::parse(&hello.manifest).map_err(Refusal::EmbeddedManifest)?;
    if child.from_child {
        loaded.manifest = built.clone();
    }
    if built.version != loaded.manifest.version {
        return Err(Refusal::VersionMismatch {
            shipped: loaded.manifest.version.to_string(),
            built: built.version.to_string(),
        });
    }
    loaded.contract = Some(hello.contract.clone());
    loaded.code = Some(Code::Isolated(supervisor));
    Ok(loaded)
}

/// A stand-in for `loaded`, to try its routes against a table before
/// anything is mounted (disabled, never served).
pub(crate) fn probe_plugin(name: &str, loaded: &Loaded) -> Arc<LoadedPlugin> {
    Arc::new(LoadedPlugin::new(
        name,
        loaded.manifest.clone(),
        loaded.code().clone(),
        loaded.library.clone(),
        loaded.digest.clone(),
        loaded.signer.clone(),
        false,
    ))
}

/// The `plugin.toml` of a plugin directory: its text and what it says.
fn read_dir_manifest(dir: &Path) -> Result<(String, PluginManifest), Refusal> {
    let path = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&path).map_err(|e| Refusal::Unreadable {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    let manifest = PluginManifest::parse(&text)?;
    Ok((text, manifest))
}

/// Names no plugin may have: their flag key is taken.
const RESERVED_NAMES: [&str; 2] = ["changed", "sys"];

/// Opens one candidate: manifest first (no plugin code runs for a bad
/// one), then the library (checked, copied and probed by `cache`, then its
/// private copy opened), then the name and router checks.
pub(crate) fn open_candidate(
    candidate: &Candidate,
    cache: &LibraryCache,
) -> (Option<PluginManifest>, Result<Loaded, Refusal>) {
    open_checked(candidate, cache, check_candidate(candidate, cache))
}

/// A candidate whose files passed every check that runs no plugin code:
/// what [`open_checked`] needs to open it.
pub(crate) struct Checked {
    shipped_text: Option<String>,
    library: PathBuf,
    verdict: Verdict,
    copy: CachedLibrary,
}

/// What [`check_candidate`] found: the manifest read (if any) and the
/// candidate ready to open, or why not.
pub(crate) type CheckedCandidate = (Option<PluginManifest>, Result<Checked, Refusal>);

/// The checks of a candidate before its library is opened: its name, its
/// manifest, its files, its signature, and the library's private copy
/// (checked, copied and probed by `cache`). Nothing here runs plugin code
/// or touches the host's state, so candidates may be checked on another
/// thread while others are opened.
pub(crate) fn check_candidate(candidate: &Candidate, cache: &LibraryCache) -> CheckedCandidate {
    if !is_valid_plugin_name(&candidate.name) {
        return (None, Err(Refusal::InvalidName(candidate.name.clone())));
    }
    if RESERVED_NAMES.contains(&candidate.name.as_str()) {
        return (None, Err(Refusal::Reserved(candidate.name.clone())));
    }
    let mut shipped_text = None;
    let (file_manifest, library) = match &candidate.source {
        Source::Directory(dir) => {
            let manifest = match read_dir_manifest(dir) {
                Ok((text, m)) => {
                    shipped_text = Some(text);
                    m
                }
                Err(e) => return (None, Err(e)),
            };
            if !dir.join("README.md").is_file() {
                return (
                    Some(manifest),
                    Err(Refusal::NoReadme(dir.display().to_string())),
                );
            }
            let library = dir.join(library_file_name(&candidate.name));
            if !library.is_file() {
                return (
                    Some(manifest),
                    Err(Refusal::NoLibrary(library.display().to_string())),
                );
            }
            (Some(manifest), library)
        }
        Source::Library(path) => (None, path.clone()),
    };
    // A signed package's signature, before its library is opened. The
    // plugin dir is the operator's: an unsigned directory loads, but one
    // whose files differ from what a trusted key signed does not.
    let verdict = match (&candidate.source, &file_manifest) {
        (Source::Directory(dir), Some(manifest)) => {
            let relaxed = cache.trust().relaxed();
            match trust::verify_dir(
                dir,
                &candidate.name,
                &manifest.version.to_string(),
                &relaxed,
            ) {
                Ok(verdict) => verdict,
                Err(e) => return (file_manifest, Err(e.into())),
            }
        }
        _ => Verdict::Unsigned,
    };
    match cache.prepare(&library) {
        Ok(copy) => (
            file_manifest,
            Ok(Checked {
                shipped_text,
                library,
                verdict,
                copy,
            }),
        ),
        Err(e) => (file_manifest, Err(e.into())),
    }
}

/// Opens a checked candidate's library (its private copy), then checks
/// the name it declares, the manifest it embeds and the contract it was
/// signed for.
pub(crate) fn open_checked(
    candidate: &Candidate,
    cache: &LibraryCache,
    (file_manifest, checked): CheckedCandidate,
) -> (Option<PluginManifest>, Result<Loaded, Refusal>) {
    let Checked {
        shipped_text,
        library,
        verdict,
        copy,
    } = match checked {
        Ok(checked) => checked,
        Err(e) => return (file_manifest, Err(e)),
    };
    if let Some(config) = crate::plugin::isolation::config_for(&candidate.name) {
        // Isolated: the child opens the library; this process never maps
        // it. A lone library's manifest is the one it embeds, which the
        // child reports: until then, a stand-in.
        let from_child = file_manifest.is_none();
        let manifest = match file_manifest {
            Some(manifest) => manifest,
            None => match PluginManifest::parse(&format!(
                "[plugin]\nsummary = \"{}\"\nversion = \"0.0.0\"\ndescription = \"-\"\nauthor = \"-\"\n",
                candidate.name
            )) {
                Ok(stand_in) => stand_in,
                Err(e) => return (None, Err(Refusal::EmbeddedManifest(e))),
            },
        };
        let signed_contract = match &verdict {
            Verdict::Signed { statement, .. } => Some(statement.contract.clone()),
            _ => None,
        };
        let loaded = Loaded {
            code: None,
            child: Some(ChildToStart {
                from_child,
                layout_checked: copy.layout
                    == crate::plugin::loading::loader::LayoutCheck::AlreadyPassed,
                copy: copy.path,
                config,
                signed_contract,
            }),
            library,
            digest: copy.digest,
            signer: verdict.signer().map(str::to_owned),
            contract: None,
            manifest: manifest.clone(),
            dir: match &candidate.source {
                Source::Directory(dir) => Some(dir.clone()),
                Source::Library(_) => None,
            },
        };
        return ((!from_child).then_some(manifest), Ok(loaded));
    }
    let opened = load_library(&copy.path, copy.layout).map_err(|e| e.naming(&library));
    if opened.is_ok() {
        cache.layout_passed(&copy);
    }
    let (OpenedLibrary { module, contract }, digest) = match opened.map(|o| (o, copy.digest)) {
        Ok(opened) => opened,
        Err(e) => return (file_manifest, Err(e.into())),
    };
    if let Verdict::Signed { statement, .. } = &verdict
        && contract != statement.contract
    {
        return (
            file_manifest,
            Err(TrustError::Contract {
                plugin: candidate.name.clone(),
                signed: statement.contract.clone(),
                built: contract.clone(),
            }
            .into()),
        );
    }
    let signer = verdict.signer().map(str::to_owned);
    let declared = module.name().as_str();
    if declared != candidate.name {
        return (
            file_manifest,
            Err(Refusal::NameMismatch {
                declared: declared.to_owned(),
                installed: candidate.name.clone(),
            }),
        );
    }
    let manifest = match file_manifest {
        // The library embeds the very text shipped beside it (the usual
        // case): nothing to compare.
        Some(shipped) if shipped_text.as_deref() == Some(module.manifest().as_str()) => shipped,
        file_manifest => match (
            file_manifest,
            PluginManifest::parse(module.manifest().as_str()),
        ) {
            // The shipped plugin.toml decides (an operator may change its
            // settings, tags and prefixes), but it must describe this build.
            (Some(shipped), Ok(built)) if shipped.version != built.version => {
                return (
                    Some(shipped.clone()),
                    Err(Refusal::VersionMismatch {
                        shipped: shipped.version.to_string(),
                        built: built.version.to_string(),
                    }),
                );
            }
            (Some(shipped), _) => shipped,
            (None, Ok(built)) => built,
            (None, Err(e)) => return (None, Err(Refusal::EmbeddedManifest(e))),
        },
    };
    if manifest.isolated && crate::plugin::isolation::configured() {
        tracing::warn!(
            plugin = candidate.name,
            "the plugin asks to run isolated (plugin.toml [plugin] isolated = true) and runs in process: add it to PLUGHOST_ISOLATED_PLUGINS to isolate it"
        );
    }
    let dir = match &candidate.source {
        Source::Directory(dir) => Some(dir.clone()),
        Source::Library(_) => None,
    };
    let loaded = Loaded {
        code: Some(Code::Native(module)),
        child: None,
        library,
        digest,
        signer,
        contract: Some(contract),
        manifest: manifest.clone(),
        dir,
    };
    (Some(manifest), Ok(loaded))
}

/// The files a plugin's library carries (its embedded SQL scripts), by
/// path; none for a plugin built against plugin-api 1.0.
pub fn embedded_files(module: PluginModRef) -> BTreeMap<String, String> {
    module
        .files()
        .map(|files| {
            files()
                .into_iter()
                .map(|Tuple2(path, text)| (path.into_string(), text.into_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The routes a plugin mounts, checked against its manifest.
pub fn plugin_routes(
    plugin: &str,
    manifest: &PluginManifest,
    routers: &[RouterSpec],
) -> Result<Vec<MountedRoute>, Refusal> {
    let library_names: BTreeSet<&str> = routers.iter().map(|r| r.name.as_str()).collect();
    let (declared, scope): (BTreeSet<&str>, Scope) = match &manifest.kind {
        PluginKind::Extend { routers, .. } => {
            (routers.keys().map(String::as_str).collect(), Scope::Admin)
        }
        PluginKind::App { routers } => (routers.iter().map(String::as_str).collect(), Scope::App),
        PluginKind::Capability => (BTreeSet::new(), Scope::App),
    };
    if let Some(missing) = declared.difference(&library_names).next() {
        return Err(Refusal::RouterMissing((*missing).to_owned()));
    }
    let mut routes = Vec::new();
    for router in routers {
        let name = router.name.as_str();
        if !declared.contains(name) {
            if manifest.kind == PluginKind::Capability {
                return Err(Refusal::RouterWithoutApp(name.to_owned()));
            }
            return Err(Refusal::RouterUndeclared(name.to_owned()));
        }
        let prefix = match &manifest.kind {
            PluginKind::Extend { routers, .. } => join_path(ADMIN_SYS_PREFIX, &routers[name]),
            PluginKind::Capability => unreachable!("a capability plugin declares no router"),
            PluginKind::App { .. } => {
                let prefix = router.prefix.as_str();
                let under_admin =
                    prefix == ADMIN_SCOPE || prefix.starts_with(&format!("{ADMIN_SCOPE}/"));
                if !prefix.starts_with('/') || prefix.len() < 2 || under_admin {
                    return Err(Refusal::AppPrefix {
                        router: name.to_owned(),
                        prefix: prefix.to_owned(),
                    });
                }
                prefix.to_owned()
            }
        };
        for route in router.routes.iter() {
            let path = route.path.as_str();
            check_route_path(path).map_err(|source| Refusal::RoutePath {
                router: name.to_owned(),
                source: Box::new(source),
            })?;
            let method = Method::from_bytes(route.method.as_str().as_bytes())
                .ok()
                .filter(|m| {
                    [
                        Method::GET,
                        Method::POST,
                        Method::PUT,
                        Method::DELETE,
                        Method::PATCH,
                    ]
                    .contains(m)
                })
                .ok_or_else(|| Refusal::Method {
                    router: name.to_owned(),
                    method: route.method.to_string(),
                })?;
            let permission = route
                .permission
                .as_ref()
                .map(|p| p.as_str().to_owned())
                .into_option();
            if let Some(p) = permission
                .as_deref()
                .filter(|p| !crate::auth::is_permission(p))
            {
                return Err(Refusal::Permission {
                    router: name.to_owned(),
                    permission: p.to_owned(),
                });
            }
            let doc = route_doc(manifest, name, &method, route)?;
            let timeout = route_timeout(name, &method, route)?;
            let path = join_path(&prefix, path);
            routes.push(MountedRoute {
                metrics: Arc::new(crate::observe::RouteMetrics::new(
                    plugin,
                    method.as_str(),
                    &path,
                )),
                method,
                path,
                handler: route.handler,
                scope,
                auth: route.auth || permission.is_some(),
                permission,
                timeout,
                doc: Arc::new(doc),
            });
        }
    }
    Ok(routes)
}

/// Orders `names` so that dependencies come first; reports missing
/// dependencies and cycles by chain.
pub(crate) fn dependency_order(
    deps: &BTreeMap<String, Vec<String>>,
) -> (Vec<String>, BTreeMap<String, Refusal>) {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    fn visit(
        name: &str,
        deps: &BTreeMap<String, Vec<String>>,
        marks: &mut BTreeMap<String, Mark>,
        stack: &mut Vec<String>,
        order: &mut Vec<String>,
        failed: &mut BTreeMap<String, Refusal>,
    ) {
        match marks.get(name) {
            Some(Mark::Done) => return,
            Some(Mark::Visiting) => {
                let start = stack.iter().position(|n| n == name).unwrap_or(0);
                let mut chain = stack[start..].to_vec();
                chain.push(name.to_owned());
                let chain = chain.join(" -> ");
                for member in &stack[start..] {
                    failed
                        .entry(member.clone())
                        .or_insert_with(|| Refusal::Cycle(chain.clone()));
                }
                return;
            }
            None => {}
        }
        marks.insert(name.to_owned(), Mark::Visiting);
        stack.push(name.to_owned());
        for dep in &deps[name] {
            if !deps.contains_key(dep) {
                failed
                    .entry(name.to_owned())
                    .or_insert_with(|| Refusal::MissingDependency {
                        dependency: dep.clone(),
                        chain: stack.join(" -> ") + " -> " + dep,
                    });
            } else {
                visit(dep, deps, marks, stack, order, failed);
            }
        }
        stack.pop();
        marks.insert(name.to_owned(), Mark::Done);
        order.push(name.to_owned());
    }
    let (mut marks, mut order, mut failed) = (BTreeMap::new(), Vec::new(), BTreeMap::new());
    for name in deps.keys() {
        visit(
            name,
            deps,
            &mut marks,
            &mut Vec::new(),
            &mut order,
            &mut failed,
        );
    }
    (order, failed)
}

/// Opens `candidates`, in order. With more than one CPU their files are
/// checked on a second thread while this one opens the libraries already
/// checked (the dynamic loader opens one library at a time anyway).
fn open_all(
    candidates: &[&Candidate],
    cache: &LibraryCache,
) -> Vec<(Option<PluginManifest>, Result<Loaded, Refusal>)> {
    // What the cache learns is written once, at the end.
    let _batch = cache.batch();
    let serial = || {
        candidates
            .iter()
            .map(|c| open_candidate(c, cache))
            .collect()
    };
    if candidates.len() < 2 || !std::thread::available_parallelism().is_ok_and(|n| n.get() > 1) {
        return serial();
    }
    std::thread::scope(|scope| {
        let (checked_tx, checked) = std::sync::mpsc::channel();
        let checking = std::thread::Builder::new()
            .name("plugin-check".into())
            .spawn_scoped(scope, move || {
                for candidate in candidates {
                    if checked_tx.send(check_candidate(candidate, cache)).is_err() {
                        break;
                    }
                }
            });
        match checking {
            Ok(_) => candidates
                .iter()
                .zip(checked)
                .map(|(candidate, checked)| open_checked(candidate, cache, checked))
                .collect(),
            Err(e) => {
                tracing::debug!("plugins are checked on one thread: {e}");
                serial()
            }
        }
    })
}

/// Loads every candidate and mounts what can be mounted.
pub async fn load_all(
    candidates: &[Candidate],
    cache: &LibraryCache,
    flags: &dyn Fn(&str) -> bool,
    db: Option<&Db>,
) -> LoadOutcome {
    let mut first: BTreeMap<&str, &Candidate> = BTreeMap::new();
    let mut duplicates = Vec::new();
    for candidate in candidates {
        match first.get(candidate.name.as_str()) {
            Some(earlier) => duplicates.push((
                candidate.name.clone(),
                candidate.source.path().to_owned(),
                earlier.source.path().to_owned(),
            )),
            None => {
                first.insert(&candidate.name, candidate);
            }
        }
    }
    let unique: Vec<&Candidate> = first.into_values().collect();
    let mut pending: BTreeMap<String, Pending> = BTreeMap::new();
    for (candidate, (manifest, result)) in unique.iter().zip(open_all(&unique, cache)) {
        let result = match result {
            Ok(loaded) => start_isolated(&candidate.name, loaded).await,
            Err(e) => Err(e),
        };
        // A lone isolated library's manifest came from its child.
        let manifest = manifest.or_else(|| result.as_ref().ok().map(|l| l.manifest.clone()));
        pending.insert(
            candidate.name.clone(),
            Pending {
                name: candidate.name.clone(),
                source: candidate.source.path().to_owned(),
                manifest,
                result,
            },
        );
    }
    for (name, second, first) in duplicates {
        let p = pending
            .get_mut(&name)
            .expect("duplicate of a pending plugin");
        p.result = Err(Refusal::Twice {
            name: name.clone(),
            first: first.display().to_string(),
            second: second.display().to_string(),
        });
    }

    // Dependencies, among the plugins that opened.
    let deps: BTreeMap<String, Vec<String>> = pending
        .values()
        .filter_map(|p| {
            p.result
                .as_ref()
                .ok()
                .map(|l| (p.name.clone(), l.manifest.depends_on.clone()))
        })
        .collect();
    let (order, dep_failures) = dependency_order(&deps);
    for (name, reason) in dep_failures {
        pending.get_mut(&name).expect("known").result = Err(reason);
    }

    // Routes and init, dependencies first; a failure fails the dependents.
    let mut builder = RouteTableBuilder::default();
    let mut records = BTreeMap::new();
    let mut loaded_ok: BTreeSet<String> = BTreeSet::new();
    for name in &order {
        let p = pending.remove(name).expect("ordered names are pending");
        let outcome = match p.result {
            Err(e) => Err(e),
            Ok(l) => match l
                .manifest
                .depends_on
                .iter()
                .find(|d| !loaded_ok.contains(*d))
            {
                Some(dep) => Err(Refusal::DependencyFailed(dep.clone())),
                None => mount(&p.name, l, &mut builder, flags(&p.name), db).await,
            },
        };
        let state = match outcome {
            Ok(plugin) => {
                loaded_ok.insert(p.name.clone());
                PluginState::Loaded(plugin)
            }
            Err(reason) => {
                tracing::warn!(plugin = %p.name, source = %p.source.display(), "plugin not loaded: {reason}");
                PluginState::Failed(reason.to_string())
            }
        };
        records.insert(
            p.name.clone(),
            PluginRecord {
                name: p.name,
                package: package_of(&p.source),
                source: p.source,
                manifest: p.manifest,
                state,
            },
        );
    }
    // Whatever is left failed before ordering.
    for (name, p) in pending {
        let reason = p
            .result
            .err()
            .map_or_else(|| "not loaded".to_owned(), |e| e.to_string());
        tracing::warn!(plugin = %name, source = %p.source.display(), "plugin not loaded: {reason}");
        records.insert(
            name.clone(),
            PluginRecord {
                name,
                package: package_of(&p.source),
                source: p.source,
                manifest: p.manifest,
                state: PluginState::Failed(reason),
            },
        );
    }
    LoadOutcome {
        records,
        table: builder.build(),
    }
}

/// Checks a plugin's routes, reserves them, runs its SQL init script and
/// its init hook, and returns it.
pub(crate) async fn mount(
    name: &str,
    loaded: Loaded,
    builder: &mut RouteTableBuilder,
    enabled: bool,
    db: Option<&Db>,
) -> Result<Arc<LoadedPlugin>, Refusal> {
    // The plugin's scripts, read once from its directory and its library
    // (only where there is a database to run them on).
    let scripts = db.map(|_| sql::Scripts::new(loaded.dir.as_deref(), loaded.code().files()));
    if let (Some(db), Some(scripts)) = (db, &scripts) {
        let backend = db.backend().name();
        let declared = &loaded.manifest.databases;
        if !declared.is_empty() && !declared.iter().any(|d| d == backend) {
            return Err(Refusal::Database {
                supported: declared.join(", "),
                backend,
            });
        }
        // A plugin that declares databases has tables: without the script
        // for this backend and key mode it would answer every request 500.
        let init = sql::script_path(sql::Script::Init, db.backend(), db.pk_mode());
        if !declared.is_empty() && !scripts.has(&init) {
            return Err(Refusal::NoScript {
                script: init,
                pk_mode: db.pk_mode().name(),
                backend,
            });
        }
    }
    let routers: Vec<RouterSpec> = loaded.code().routers();
    let routes = plugin_routes(name, &loaded.manifest, &routers)?;
    let code = loaded.code().clone();
    let plugin = Arc::new(LoadedPlugin::new(
        name,
        loaded.manifest,
        code,
        loaded.library,
        loaded.digest,
        loaded.signer,
        enabled,
    ));
    // Reserve the routes first: a colliding plugin's code never runs.
    builder.add(plugin.clone(), routes)?;
    if let (Some(db), Some(scripts)) = (db, &scripts) {
        let version = plugin.manifest.version.to_string();
        if let Err(e) = sql::init_once(db, name, &version, scripts).await {
            builder.remove_last();
            return Err(e.into());
        }
    }
    match plugin.code.init().await {
        Ok(()) => Ok(plugin),
        Err(message) => {
            builder.remove_last();
            Err(Refusal::Init(message))
        }
    }
}

/// The deadline `route` declares (`plugin_api::abi::route_option`), if any.
fn route_timeout(
    router: &str,
    method: &Method,
    route: &RouteSpec,
) -> Result<Option<std::time::Duration>, Refusal> {
    use plugin_api::abi::route_option::TIMEOUT_MS;
    let Some(Tuple2(_, value)) = route.extensions.iter().find(|Tuple2(k, _)| k == TIMEOUT_MS)
    else {
        return Ok(None);
    };
    let max = crate::config::MAX_PLUGIN_TIMEOUT_SECS * 1000;
    match value.parse::<u64>() {
        Ok(ms @ 1..) if ms <= max => Ok(Some(std::time::Duration::from_millis(ms))),
        _ => Err(Refusal::RouteOption {
            router: router.to_owned(),
            method: method.to_string(),
            path: route.path.to_string(),
            message: format!(
                "its timeout '{value}' ({TIMEOUT_MS}) is not 1 to {max} milliseconds; set it with Router::timeout"
            ),
        }),
    }
}

/// What the API document says of `route`: its summary, the router's tag
/// (the manifest's `[api.<router>] tags`, else the router's name) and the
/// documentation the plugin attached (`plugin_api::abi::route_doc`).
fn route_doc(
    manifest: &PluginManifest,
    router: &str,
    method: &Method,
    route: &RouteSpec,
) -> Result<RouteDoc, Refusal> {
    use plugin_api::abi::route_doc;
    let tag = manifest.json["api"][router]["tags"]
        .as_str()
        .filter(|t| !t.is_empty())
        .unwrap_or(router)
        .to_owned();
    let mut doc = RouteDoc {
        summary: route.summary.to_string(),
        tag,
        ..RouteDoc::default()
    };
    for Tuple2(key, value) in route.extensions.iter() {
        let schema = || {
            serde_json::from_str::<serde_json::Value>(value).map_err(|e| Refusal::RouteDoc {
                router: router.to_owned(),
                method: method.to_string(),
                path: route.path.to_string(),
                key: key.to_string(),
                message: e.to_string(),
            })
        };
        match key.as_str() {
            route_doc::DESCRIPTION => doc.description = Some(value.to_string()),
            route_doc::REQUEST => doc.request = Some(schema()?),
            route_doc::RESPONSE => doc.response = Some(schema()?),
            route_doc::QUERY => doc.query = Some(schema()?),
            route_doc::PATH => doc.path = Some(schema()?),
            // A key of a later contract: this host does not use it.
            _ => {}
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        edges
            .iter()
            .map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn dependencies_come_first_and_cycles_and_missing_ones_are_named_by_chain() {
        let (order, failed) = dependency_order(&graph(&[("a", &["b"]), ("b", &[]), ("c", &["a"])]));
        assert_eq!(order, ["b", "a", "c"]);
        assert!(failed.is_empty());

        let (_, failed) = dependency_order(&graph(&[("a", &["b"]), ("b", &["a"]), ("c", &[])]));
        assert_eq!(failed["a"].to_string(), "dependency cycle: a -> b -> a");
        assert_eq!(failed["b"].to_string(), "dependency cycle: a -> b -> a");
        assert!(!failed.contains_key("c"));

        let (_, failed) = dependency_order(&graph(&[("a", &["zz"])]));
        assert_eq!(
            failed["a"].to_string(),
            "depends on 'zz', which is not installed (a -> zz)"
        );
    }

    fn spec(extensions: &[(&str, &str)]) -> RouteSpec {
        RouteSpec {
            method: "POST".into(),
            path: "/{id}".into(),
            handler: 0,
            auth: false,
            permission: abi_stable::std_types::ROption::RNone,
            summary: "Make one".into(),
            extensions: extensions
                .iter()
                .map(|(k, v)| Tuple2((*k).into(), (*v).into()))
                .collect(),
        }
    }

    #[test]
    fn route_docs_take_the_manifest_tag_and_parse_the_declared_schemas() {
        let manifest = PluginManifest::parse(
            "[plugin]\nsummary = \"s\"\nversion = \"1.0.0\"\ndescription = \"d\"\nauthor = \"a\"\n\
             [app]\nextend = \"admin\"\n[api.things]\nprefix = \"/things\"\ntags = \"Things\"\n",
        )
        .unwrap();
        let doc = route_doc(
            &manifest,
            "things",
            &Method::POST,
            &spec(&[
                ("openapi.request", r#"{"type":"object"}"#),
                (
                    "openapi.path",
                    r#"{"properties":{"id":{"type":"integer"}}}"#,
                ),
                ("openapi.description", "Long text"),
                ("openapi.later", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(doc.tag, "Things");
        assert_eq!(doc.summary, "Make one");
        assert_eq!(doc.description.as_deref(), Some("Long text"));
        assert_eq!(doc.request.unwrap()["type"], "object");
        assert_eq!(doc.path.unwrap()["properties"]["id"]["type"], "integer");
        assert!(doc.response.is_none());

        let refused = route_doc(
            &manifest,
            "things",
            &Method::POST,
            &spec(&[("openapi.response", "{not json")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            refused.starts_with(
                "router 'things', route POST '/{id}': its documentation 'openapi.response' is not JSON"
            ),
            "{refused}"
        );
    }
}
