//! The route table: every mounted plugin route, behind one atomic swap.
//!
//! Both extend-level routes (under `/admin/v1/sys`, reached through the
//! admin scope) and app-level routes (top level) live in one table, looked
//! up by one dispatcher. A new table is built beside the old one and
//! swapped in whole: a request holds the table it started with, and with it
//! every library that table refers to.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use actix_web::http::Method;

use super::loaded::LoadedPlugin;
use crate::observe::RouteMetrics;

/// Where an extend-level router of the admin app is mounted.
pub const ADMIN_SYS_PREFIX: &str = "/admin/v1/sys";
/// The admin app's scope; app-level routes may not live below it.
pub const ADMIN_SCOPE: &str = "/admin/v1";

/// Which dispatcher serves a route (and so which middleware it inherits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Inside the admin scope (extend-level).
    Admin,
    /// At the top level (app-level).
    App,
}

/// The routes the host itself serves; plugin routes may not overlap them.
pub const CORE_ROUTES: &[(&str, &str)] = &[
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/metrics"),
    ("GET", "/docs"),
    ("GET", "/docs/{*tail}"),
    ("GET", "/ui"),
    ("GET", "/ui/{*tail}"),
    ("GET", "/admin/v1/sys/plugin-build"),
    ("GET", "/admin/v1/sys/plugin-catalog"),
    ("GET", "/admin/v1/sys/plugins"),
    ("POST", "/admin/v1/sys/plugins"),
    ("GET", "/admin/v1/sys/plugins/changed"),
    ("GET", "/admin/v1/sys/plugins/{plugin}"),
    ("DELETE", "/admin/v1/sys/plugins/{plugin}"),
    ("PUT", "/admin/v1/sys/plugins/{plugin}/status"),
    ("POST", "/admin/v1/auth/login"),
    ("POST", "/admin/v1/auth/logout"),
    ("GET", "/admin/v1/sys/users"),
    ("POST", "/admin/v1/sys/users"),
    ("GET", "/admin/v1/sys/users/{pk}"),
    ("PUT", "/admin/v1/sys/users/{pk}"),
    ("DELETE", "/admin/v1/sys/users/{pk}"),
    ("PUT", "/admin/v1/sys/users/{pk}/status"),
    ("PUT", "/admin/v1/sys/users/{pk}/roles"),
    ("GET", "/admin/v1/sys/roles"),
    ("POST", "/admin/v1/sys/roles"),
    ("DELETE", "/admin/v1/sys/roles/{name}"),
    ("PUT", "/admin/v1/sys/roles/{name}/permissions"),
    ("GET", "/admin/v1/sys/permissions"),
];

/// One route a plugin asks to mount.
#[derive(Debug, Clone)]
pub struct MountedRoute {
    /// HTTP method.
    pub method: Method,
    /// Full path pattern (`/admin/v1/sys/dict-types/{id}`).
    pub path: String,
    /// The handler id inside the plugin.
    pub handler: u32,
    /// Which dispatcher serves it.
    pub scope: Scope,
    /// Whether the caller must be authenticated.
    pub auth: bool,
    /// The permission the caller must hold.
    pub permission: Option<String>,
    /// How long its handler may take, when the route says.
    pub timeout: Option<std::time::Duration>,
    /// What the API document says of it.
    pub doc: Arc<RouteDoc>,
    /// Its metrics.
    pub metrics: Arc<RouteMetrics>,
}

/// A route's documentation: its summary, the tag it is listed under, and
/// what the plugin declared through `plugin_api::abi::route_doc`.
#[derive(Debug, Default)]
pub struct RouteDoc {
    /// One line.
    pub summary: String,
    /// Longer text (Markdown).
    pub description: Option<String>,
    /// The tag: the manifest's `[api.<router>] tags`, or the router's name.
    pub tag: String,
    /// JSON Schema of the request body.
    pub request: Option<serde_json::Value>,
    /// JSON Schema of `data` in the success envelope.
    pub response: Option<serde_json::Value>,
    /// Object schema of the query parameters.
    pub query: Option<serde_json::Value>,
    /// Object schema of the path parameters.
    pub path: Option<serde_json::Value>,
}

/// The plugin and handler a request is dispatched to.
pub struct Target {
    /// The plugin (its library stays loaded while this table lives).
    pub plugin: Arc<LoadedPlugin>,
    /// Handler id.
    pub handler: u32,
    /// Whether the caller must be authenticated (always, in the admin scope).
    pub auth: bool,
    /// The permission the caller must hold.
    pub permission: Option<String>,
    /// How long its handler may take, when the route says.
    pub timeout: Option<std::time::Duration>,
    /// The route's metrics.
    pub metrics: Arc<RouteMetrics>,
}

/// Every method mounted at one path pattern.
pub struct PathRoutes {
    /// The dispatcher that serves this path.
    pub scope: Scope,
    /// Method to target.
    pub methods: Vec<(Method, Target)>,
}

impl PathRoutes {
    /// The target for `method`, if mounted.
    pub fn get(&self, method: &Method) -> Option<&Target> {
        self.methods
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, t)| t)
    }

    /// The mounted methods, for a 405 answer.
    pub fn allowed(&self) -> String {
        self.methods
            .iter()
            .map(|(m, _)| m.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The immutable table the dispatcher reads.
pub struct RouteTable {
    router: matchit::Router<PathRoutes>,
    accepted: Vec<(Arc<LoadedPlugin>, Vec<MountedRoute>)>,
}

impl Default for RouteTable {
    fn default() -> Self {
        Self {
            router: matchit::Router::new(),
            accepted: Vec::new(),
        }
    }
}

impl RouteTable {
    /// Every plugin in the table with the routes it mounts, in the order
    /// they were added.
    pub fn plugins(&self) -> impl Iterator<Item = (&Arc<LoadedPlugin>, &[MountedRoute])> {
        self.accepted.iter().map(|(p, r)| (p, r.as_slice()))
    }

    /// Looks a request path up (a trailing slash is ignored).
    pub fn lookup<'t, 'p>(
        &'t self,
        path: &'p str,
    ) -> Option<matchit::Match<'t, 'p, &'t PathRoutes>> {
        let path = match path.len() {
            0 | 1 => path,
            n if path.ends_with('/') => &path[..n - 1],
            _ => path,
        };
        self.router.at(path).ok()
    }
}

/// Splits a pattern into segments.
fn segments(path: &str) -> Vec<&str> {
    path.split('/').filter(|s| !s.is_empty()).collect()
}

fn is_param(segment: &str) -> bool {
    segment.starts_with('{') && segment.ends_with('}')
}

fn is_catch_all(segment: &str) -> bool {
    segment.starts_with("{*")
}

/// Whether some concrete path matches both patterns.
pub fn patterns_overlap(a: &str, b: &str) -> bool {
    let (a, b) = (segments(a), segments(b));
    let mut i = 0;
    loop {
        match (a.get(i), b.get(i)) {
            (None, None) => return true,
            (Some(x), _) if is_catch_all(x) => return b.len() > i,
            (_, Some(y)) if is_catch_all(y) => return a.len() > i,
            (Some(x), Some(y)) if x == y || is_param(x) || is_param(y) => i += 1,
            _ => return false,
        }
    }
}

/// A route that cannot be mounted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path below the prefix does not start with `/`.
    #[error("route path '{0}' must be empty or start with /")]
    NotAbsolute(String),
    /// A `{param}` shares its segment with other text.
    #[error("route path '{0}': a parameter must be a whole segment like {{id}}")]
    PartialParameter(String),
    /// A `{*rest}` is not the last segment.
    #[error("route path '{0}': {{*rest}} must be the last segment")]
    CatchAllNotLast(String),
    /// The route overlaps one of the host's own.
    #[error("route {method} {path} collides with the host's core route {core_method} {core_path}")]
    Core {
        /// The route's method.
        method: String,
        /// The route's path.
        path: String,
        /// The core route's method.
        core_method: &'static str,
        /// The core route's path.
        core_path: &'static str,
    },
    /// The plugin declares the same route twice.
    #[error("route {method} {path} is declared twice")]
    Twice {
        /// The route's method.
        method: String,
        /// The route's path.
        path: String,
    },
    /// The route overlaps another plugin's.
    #[error(
        "route {method} {path} collides with route {their_method} {their_path} of plugin '{plugin}'"
    )]
    Collides {
        /// The route's method.
        method: String,
        /// The route's path.
        path: String,
        /// The other route's method.
        their_method: String,
        /// The other route's path.
        their_path: String,
        /// The plugin that has it.
        plugin: String,
    },
    /// The route trie refused the routes.
    #[error("routes of plugin '{plugin}' cannot be mounted: {reason}")]
    Unmountable {
        /// The plugin.
        plugin: String,
        /// The trie's reason.
        reason: String,
    },
}

/// Checks the shape of a route path below its prefix.
pub fn check_route_path(path: &str) -> Result<(), RouteError> {
    if !(path.is_empty() || path.starts_with('/')) {
        return Err(RouteError::NotAbsolute(path.to_owned()));
    }
    let segs = segments(path);
    for (i, seg) in segs.iter().enumerate() {
        let braces = seg.contains('{') || seg.contains('}');
        let whole = is_param(seg) && seg.len() > 2 && !seg[1..seg.len() - 1].contains(['{', '}']);
        if braces && !whole {
            return Err(RouteError::PartialParameter(path.to_owned()));
        }
        if is_catch_all(seg) && i + 1 != segs.len() {
            return Err(RouteError::CatchAllNotLast(path.to_owned()));
        }
    }
    Ok(())
}

/// Joins a mount prefix and a route path into one normalised pattern.
pub fn join_path(prefix: &str, path: &str) -> String {
    let joined = format!(
        "/{}/{}",
        prefix.trim_matches('/'),
        path.trim_start_matches('/')
    );
    let segs = segments(&joined);
    format!("/{}", segs.join("/"))
}

/// An accepted route, as the collision index holds it.
#[derive(Clone)]
struct Indexed<P> {
    owner: P,
    method: Method,
    path: String,
}

/// Accepted route patterns in a trie of segments, so that the patterns a
/// new one overlaps are found by walking its own segments, not by
/// comparing it with every accepted route.
struct PatternIndex<P> {
    literal: HashMap<String, PatternIndex<P>>,
    param: Option<Box<PatternIndex<P>>>,
    /// Patterns ending here with a `{*rest}` segment.
    catch_all: Vec<Indexed<P>>,
    /// Patterns ending here.
    ends: Vec<Indexed<P>>,
}

impl<P> Default for PatternIndex<P> {
    fn default() -> Self {
        Self {
            literal: HashMap::new(),
            param: None,
            catch_all: Vec::new(),
            ends: Vec::new(),
        }
    }
}

impl<P> PatternIndex<P> {
    fn insert(&mut self, route: Indexed<P>) {
        let segs: Vec<String> = segments(&route.path)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut node = self;
        for seg in &segs {
            if is_catch_all(seg) {
                node.catch_all.push(route);
                return;
            }
            node = if is_param(seg) {
                node.param.get_or_insert_with(Box::default)
            } else {
                node.literal.entry(seg.clone()).or_default()
            };
        }
        node.ends.push(route);
    }

    /// Removes the routes at `path` whose owner `is_owner` picks.
    fn remove(&mut self, path: &str, is_owner: impl Fn(&P) -> bool) {
        let mut node = self;
        for seg in segments(path) {
            if is_catch_all(seg) {
                node.catch_all.retain(|r| !is_owner(&r.owner));
                return;
            }
            let next = if is_param(seg) {
                node.param.as_deref_mut()
            } else {
                node.literal.get_mut(seg)
            };
            match next {
                Some(next) => node = next,
                None => return,
            }
        }
        node.ends.retain(|r| !is_owner(&r.owner));
    }

    /// Calls `found` with every indexed pattern that some concrete path
    /// matches together with `segs[i..]` (what [`patterns_overlap`] says),
    /// until it answers true; whether it did.
    fn overlapping(
        &self,
        segs: &[&str],
        i: usize,
        found: &mut dyn FnMut(&Indexed<P>) -> bool,
    ) -> bool {
        let Some(seg) = segs.get(i) else {
            return self.ends.iter().any(&mut *found);
        };
        // A `{*rest}` here matches whatever has a segment here.
        if self.catch_all.iter().any(&mut *found) {
            return true;
        }
        if is_catch_all(seg) {
            return self.any_below(found);
        }
        if let Some(param) = &self.param
            && param.overlapping(segs, i + 1, found)
        {
            return true;
        }
        if is_param(seg) {
            self.literal
                .values()
                .any(|child| child.overlapping(segs, i + 1, found))
        } else {
            self.literal
                .get(*seg)
                .is_some_and(|child| child.overlapping(segs, i + 1, found))
        }
    }

    /// Every pattern with a segment below this node.
    fn any_below(&self, found: &mut dyn FnMut(&Indexed<P>) -> bool) -> bool {
        self.catch_all.iter().any(&mut *found)
            || self.param.as_ref().is_some_and(|p| p.all(found))
            || self.literal.values().any(|child| child.all(found))
    }

    fn all(&self, found: &mut dyn FnMut(&Indexed<P>) -> bool) -> bool {
        self.ends.iter().any(&mut *found) || self.any_below(found)
    }
}

/// Builds route tables, refusing plugins whose routes collide. Each
/// [`add`](Self::add) costs what the plugin's own routes cost (an index
/// walk and a trie insert per route), whatever the number of plugins
/// already accepted; [`build`](Self::build) makes the table once.
#[derive(Default)]
pub struct RouteTableBuilder {
    accepted: Vec<(Arc<LoadedPlugin>, Vec<MountedRoute>)>,
    index: PatternIndex<Arc<LoadedPlugin>>,
    /// Every distinct accepted path, in matchit's trie, to learn what it
    /// refuses before the table is built; and how many routes use each.
    trial: matchit::Router<()>,
    paths: HashMap<String, usize>,
}

impl RouteTableBuilder {
    /// Starts from `table`'s plugins, without plugin `except` (the one an
    /// install replaces or an uninstall removes).
    pub fn from_table(table: &RouteTable, except: Option<&str>) -> Self {
        let mut builder = Self::default();
        for (plugin, routes) in &table.accepted {
            if Some(plugin.name.as_str()) != except {
                builder.accept(plugin.clone(), routes.clone());
            }
        }
        builder
    }

    /// Records an accepted plugin in the index and the trial trie.
    fn accept(&mut self, plugin: Arc<LoadedPlugin>, routes: Vec<MountedRoute>) {
        for route in &routes {
            self.index.insert(Indexed {
                owner: plugin.clone(),
                method: route.method.clone(),
                path: route.path.clone(),
            });
            let users = self.paths.entry(route.path.clone()).or_insert(0);
            if *users == 0 {
                // Known to fit: checked by `add`, or part of a built table.
                let _ = self.trial.insert(route.path.clone(), ());
            }
            *users += 1;
        }
        self.accepted.push((plugin, routes));
    }

    /// Adds every route of `plugin`, or none of them with the reason.
    pub fn add(
        &mut self,
        plugin: Arc<LoadedPlugin>,
        routes: Vec<MountedRoute>,
    ) -> Result<(), RouteError> {
        let mut own = HashSet::new();
        for route in &routes {
            for (core_method, core_path) in CORE_ROUTES {
                if patterns_overlap(&route.path, core_path) {
                    return Err(RouteError::Core {
                        method: route.method.to_string(),
                        path: route.path.clone(),
                        core_method,
                        core_path,
                    });
                }
            }
            if !own.insert((&route.method, route.path.as_str())) {
                return Err(RouteError::Twice {
                    method: route.method.to_string(),
                    path: route.path.clone(),
                });
            }
            let mut clash = None;
            self.index
                .overlapping(&segments(&route.path), 0, &mut |theirs| {
                    let collides = theirs.path != route.path || theirs.method == route.method;
                    if collides {
                        clash = Some(theirs.clone());
                    }
                    collides
                });
            if let Some(theirs) = clash {
                return Err(RouteError::Collides {
                    method: route.method.to_string(),
                    path: route.path.clone(),
                    their_method: theirs.method.to_string(),
                    their_path: theirs.path,
                    plugin: theirs.owner.name.clone(),
                });
            }
        }
        // What the trie would refuse (parameters named differently at one
        // place, say), tried on the new paths alone.
        let mut inserted = Vec::new();
        for route in &routes {
            if self.paths.contains_key(&route.path) || inserted.contains(&&route.path) {
                continue;
            }
            if let Err(e) = self.trial.insert(route.path.clone(), ()) {
                // A refused insert may have reshaped the trie: make it again.
                self.trial = matchit::Router::new();
                for path in self.paths.keys() {
                    let _ = self.trial.insert(path.clone(), ());
                }
                return Err(RouteError::Unmountable {
                    plugin: plugin.name.clone(),
                    reason: e.to_string(),
                });
            }
            inserted.push(&route.path);
        }
        self.accept(plugin, routes);
        Ok(())
    }

    /// Takes the most recently added plugin back out.
    pub fn remove_last(&mut self) {
        let Some((plugin, routes)) = self.accepted.pop() else {
            return;
        };
        for route in &routes {
            self.index
                .remove(&route.path, |owner| Arc::ptr_eq(owner, &plugin));
            if let Some(users) = self.paths.get_mut(&route.path) {
                *users -= 1;
                if *users == 0 {
                    self.paths.remove(&route.path);
                    self.trial.remove(route.path.clone());
                }
            }
        }
    }

    /// The table of every accepted plugin.
    pub fn build(&self) -> RouteTable {
        let mut by_path: BTreeMap<&str, PathRoutes> = BTreeMap::new();
        for (plugin, routes) in &self.accepted {
            for route in routes {
                by_path
                    .entry(&route.path)
                    .or_insert_with(|| PathRoutes {
                        scope: route.scope,
                        methods: Vec::new(),
                    })
                    .methods
                    .push((
                        route.method.clone(),
                        Target {
                            plugin: plugin.clone(),
                            handler: route.handler,
                            auth: route.auth || route.scope == Scope::Admin,
                            permission: route.permission.clone(),
                            timeout: route.timeout,
                            metrics: route.metrics.clone(),
                        },
                    ));
            }
        }
        let mut router = matchit::Router::new();
        for (path, routes) in by_path {
            router
                .insert(path, routes)
                .expect("every accepted path was inserted into the trial trie");
        }
        RouteTable {
            router,
            accepted: self.accepted.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn overlapping_patterns_are_detected() {
        let cases = [
            ("/a/b", "/a/b", true),
            ("/a/{id}", "/a/b", true),
            ("/a/{id}", "/a/{name}", true),
            ("/a/{id}/x", "/a/b/y", false),
            ("/a", "/a/b", false),
            ("/a/{*rest}", "/a/b/c", true),
            ("/a/{*rest}", "/a", false),
            (
                "/admin/v1/sys/plugins/{plugin}",
                "/admin/v1/sys/plugins/x",
                true,
            ),
            ("/hello/v1/greet", "/health", false),
        ];
        for (a, b, want) in cases {
            assert_eq!(patterns_overlap(a, b), want, "{a} vs {b}");
            assert_eq!(patterns_overlap(b, a), want, "{b} vs {a}");
        }
    }

    /// The index finds exactly the patterns `patterns_overlap` pairs with
    /// a new one, on a mix of literals, parameters and catch-alls; and
    /// forgets what is removed.
    #[test]
    fn the_pattern_index_agrees_with_the_pairwise_check() {
        let patterns = [
            "/",
            "/a",
            "/a/b",
            "/a/{id}",
            "/a/{id}/x",
            "/a/b/y",
            "/a/{*rest}",
            "/b/{x}/{y}",
            "/b/c/d",
            "/{top}",
            "/{top}/z",
            "/c/{*all}",
            "/c",
            "/admin/v1/sys/plugins/{plugin}",
            "/admin/v1/sys/dict-types/{id}",
        ];
        let mut index = PatternIndex::default();
        for (owner, path) in patterns.iter().enumerate() {
            index.insert(Indexed {
                owner,
                method: Method::GET,
                path: (*path).to_owned(),
            });
        }
        let probes = patterns.iter().copied().chain([
            "/a/q",
            "/a/b/c/d",
            "/{any}/{thing}",
            "/{*everything}",
            "/q/r/s",
            "/admin/v1/sys/dict-types",
            "/admin/{x}/sys/plugins/p",
        ]);
        for probe in probes {
            let mut found = BTreeSet::new();
            index.overlapping(&segments(probe), 0, &mut |r| {
                found.insert(r.owner);
                false
            });
            let expected: BTreeSet<usize> = patterns
                .iter()
                .enumerate()
                .filter(|(_, p)| patterns_overlap(p, probe))
                .map(|(i, _)| i)
                .collect();
            assert_eq!(found, expected, "patterns overlapping {probe}");
        }
        index.remove("/a/{id}", |owner| *owner == 3);
        index.remove("/a/{*rest}", |owner| *owner == 6);
        let mut found = Vec::new();
        index.overlapping(&segments("/a/{x}"), 0, &mut |r| {
            found.push(r.path.clone());
            false
        });
        found.sort();
        assert_eq!(found, ["/a/b", "/{top}/z"]);
    }

    #[test]
    fn route_paths_are_checked_and_joined() {
        assert!(check_route_path("").is_ok());
        assert!(check_route_path("/{id}").is_ok());
        assert!(check_route_path("/x/{*rest}").is_ok());
        assert!(check_route_path("x").is_err());
        assert!(check_route_path("/a{id}").is_err());
        assert!(check_route_path("/{*rest}/x").is_err());
        assert_eq!(join_path("/sysinfo", ""), "/sysinfo");
        assert_eq!(
            join_path("/admin/v1/sys/dict-types", "/"),
            "/admin/v1/sys/dict-types"
        );
        assert_eq!(join_path("/hello/v1", "/greet"), "/hello/v1/greet");
        assert_eq!(join_path("/", ""), "/");
    }
}
