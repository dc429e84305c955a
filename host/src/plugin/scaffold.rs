//! `plughost plugin new`: a plugin crate that builds and loads as is, and
//! `plughost plugin sdk`: the plugin-api source of this host's contract,
//! which `plugin new` puts into the crate, so it builds wherever it is
//! made, without a registry serving plugin-api.

use std::path::{Path, PathBuf};

use rust_embed::RustEmbed;

use super::manifest::{PLUGIN_NAME_PATTERN, is_valid_plugin_name};

/// Which kind of plugin to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Its own top-level routes (`/<name>/v1/...`).
    App,
    /// Routes inside the admin app (`/admin/v1/sys/<name>`).
    Extend,
    /// No routes: a start hook and a scheduled job.
    Capability,
}

/// The plugin-api crate this host was built with (its manifest and source).
#[derive(RustEmbed)]
#[folder = "../plugin-api/"]
struct PluginApiSource;

/// The workspace's manifest (its dependency table) and lock file.
const WORKSPACE_MANIFEST: &str = include_str!("../../../Cargo.toml");
const WORKSPACE_LOCK: &str = include_str!("../../../Cargo.lock");

/// Where `plugin new` puts the SDK, inside the crate.
const SDK_DIR: &str = "plugin-api";

/// plugin-api's Cargo.toml with the workspace's values written in, so it
/// builds on its own.
fn standalone_manifest() -> anyhow::Result<String> {
    let file = PluginApiSource::get("Cargo.toml")
        .ok_or_else(|| anyhow::anyhow!("this host carries no plugin-api manifest"))?;
    let mut manifest: toml::Table = std::str::from_utf8(&file.data)?.parse()?;
    let workspace: toml::Table = WORKSPACE_MANIFEST.parse()?;
    let shared = workspace.get("workspace").and_then(toml::Value::as_table);
    let package_values = shared
        .and_then(|w| w.get("package"))
        .and_then(toml::Value::as_table);
    let dependency_values = shared
        .and_then(|w| w.get("dependencies"))
        .and_then(toml::Value::as_table);
    if let Some(package) = manifest
        .get_mut("package")
        .and_then(toml::Value::as_table_mut)
    {
        for (key, value) in package.iter_mut() {
            let inherited = value.get("workspace").and_then(toml::Value::as_bool) == Some(true);
            if inherited && let Some(v) = package_values.and_then(|p| p.get(key)) {
                *value = v.clone();
            }
        }
    }
    for section in ["dependencies", "dev-dependencies"] {
        let Some(deps) = manifest
            .get_mut(section)
            .and_then(toml::Value::as_table_mut)
        else {
            continue;
        };
        for (name, spec) in deps.iter_mut() {
            if spec.get("workspace").and_then(toml::Value::as_bool) != Some(true) {
                continue;
            }
            let mut resolved = match dependency_values.and_then(|d| d.get(name)) {
                Some(toml::Value::String(version)) => {
                    let mut t = toml::Table::new();
                    t.insert("version".into(), toml::Value::String(version.clone()));
                    t
                }
                Some(toml::Value::Table(t)) => t.clone(),
                _ => anyhow::bail!("the workspace does not say which {name} plugin-api uses"),
            };
            if let Some(own) = spec.as_table() {
                for (key, value) in own {
                    match (key.as_str(), resolved.get_mut("features")) {
                        ("workspace", _) => {}
                        ("features", Some(toml::Value::Array(features))) => {
                            features.extend(value.as_array().cloned().unwrap_or_default());
                        }
                        _ => {
                            resolved.insert(key.clone(), value.clone());
                        }
                    }
                }
            }
            *spec = toml::Value::Table(resolved);
        }
    }
    manifest.remove("lints");
    Ok(format!(
        "# plugin-api {}, the contract of the plughost that wrote it\n# (`plughost plugin sdk`).\n{}",
        plugin_api::CONTRACT_VERSION,
        toml::to_string(&manifest)?
    ))
}

/// Writes the plugin-api source of this host's contract into `dir` (a
/// crate that builds on its own); answers the directory.
pub fn write_sdk(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() && std::fs::read_dir(dir)?.next().is_some() {
        anyhow::bail!(
            "{} exists and is not empty; choose another directory",
            dir.display()
        );
    }
    for path in PluginApiSource::iter().filter(|p| p.starts_with("src/")) {
        let file = PluginApiSource::get(&path).expect("an embedded file");
        let target = dir.join(path.as_ref());
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(target, &file.data)?;
    }
    std::fs::write(dir.join("Cargo.toml"), standalone_manifest()?)?;
    Ok(dir.to_owned())
}

/// The plugin-api dependency: a path when `spec` is an existing
/// directory, a version when it is one, else the SDK in the crate (as the
/// table that follows `plugin-api = `).
fn dependency(spec: Option<&str>) -> String {
    match spec {
        Some(s) if Path::new(s).is_dir() => {
            let path = Path::new(s);
            let absolute = path.canonicalize().unwrap_or_else(|_| path.to_owned());
            format!("path = {:?}", absolute.display().to_string())
        }
        Some(version) => format!("version = {version:?}"),
        None => format!("path = {SDK_DIR:?}"),
    }
}

fn manifest(name: &str, kind: Kind) -> String {
    let head = format!(
        "[plugin]\nsummary = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"The {name} plugin.\"\nauthor = \"you\"\ntags = [\"other\"]\n\n"
    );
    match kind {
        Kind::App => format!("{head}[app]\nrouter = [\"router_v1\"]\n"),
        Kind::Extend => format!(
            "{head}[app]\nextend = \"admin\"\n\n[api.{name}]\nprefix = \"/{name}\"\ntags = \"{name}\"\n"
        ),
        // No [app] and no [api]: a plugin without routes.
        Kind::Capability => format!("{head}[settings]\nHEARTBEAT_SECONDS = 60\n"),
    }
}

fn capability_source(name: &str) -> String {
    format!(
        r#"//! `{name}`: a plughost plugin without routes: a start hook and a job.

use std::time::Duration;

use plugin_api::{{Cluster, Schedule, host}};

/// Runs after the host loaded the plugin, before it serves: declares the
/// `heartbeat` job, on one instance of the cluster per tick.
async fn start() -> Result<(), String> {{
    let every: u64 = host()
        .setting("HEARTBEAT_SECONDS")
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    host()
        .job("heartbeat", Schedule::every(Duration::from_secs(every)), Cluster::Once, |_tick| async {{
            host().info("{name} is alive");
            Ok(())
        }})
        .map_err(|e| e.to_string())
}}

plugin_api::export_plugin! {{
    name: "{name}",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    start: start,
}}

/// `cargo test` runs the hooks and jobs against an in-memory host.
#[cfg(test)]
mod tests {{
    use plugin_api::testing::TestHost;

    #[test]
    fn its_heartbeat_job_runs() {{
        let host = TestHost::start(plugin_api::this_plugin!()).expect("the plugin loads");
        assert_eq!(host.jobs()["heartbeat"]["every_ms"], 60_000);
        host.run_job("heartbeat").expect("the job runs");
        assert!(host.logs().contains(&"INFO {name} is alive".to_owned()));
    }}
}}
"#
    )
}

fn source(name: &str, kind: Kind) -> String {
    let (router, path, token) = match kind {
        Kind::Capability => return capability_source(name),
        Kind::App => (
            format!("Router::new(\"router_v1\").prefix(\"/{name}/v1\")"),
            format!("/{name}/v1/hello"),
            "",
        ),
        // The manifest's [api.{name}] prefix places it under /admin/v1/sys.
        Kind::Extend => (
            format!("Router::new(\"{name}\")"),
            format!("/admin/v1/sys/{name}/hello"),
            " (needs a token)",
        ),
    };
    let route_doc = format!("GET {path}{token}");
    format!(
        r#"//! `{name}`: a plughost plugin.

use plugin_api::{{Error, Json, Request, Router}};

/// `{route_doc}`
async fn hello(_req: Request<'_>) -> Result<Json<String>, Error> {{
    Ok(Json("Hello from {name}!".to_owned()))
}}

fn routers() -> Vec<Router> {{
    vec![{router}.get("/hello", hello)]
}}

plugin_api::export_plugin! {{
    name: "{name}",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    routers: routers,
}}

/// `cargo test` runs the handlers against an in-memory host.
#[cfg(test)]
mod tests {{
    use plugin_api::testing::{{TestHost, TestUser}};

    #[test]
    fn says_hello() {{
        let host = TestHost::start(plugin_api::this_plugin!()).expect("the plugin loads");
        let reply = host
            .get("{path}")
            .user(&TestUser::new(1, "admin"))
            .send();
        assert_eq!(reply.status, 200, "{{}}", reply.text());
        assert_eq!(reply.data(), "Hello from {name}!");
    }}
}}
"#
    )
}

/// Writes the crate into `dir` (default `./NAME`); returns the directory.
pub fn create(
    name: &str,
    kind: Kind,
    dir: Option<PathBuf>,
    plugin_api: Option<String>,
) -> anyhow::Result<PathBuf> {
    if !is_valid_plugin_name(name) {
        anyhow::bail!("'{name}' is not a valid plugin name: it must match {PLUGIN_NAME_PATTERN}");
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        anyhow::bail!(
            "{} exists and is not empty; choose another --dir",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir.join("src"))?;
    if plugin_api.is_none() {
        write_sdk(&dir.join(SDK_DIR))?;
        // The versions this host was built with: the crate resolves to
        // them, from cargo's cache when there is no network.
        std::fs::write(dir.join("Cargo.lock"), WORKSPACE_LOCK)?;
    }
    let cargo = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nplugin-api = {{ {api} }}\n\n\
         # The in-memory host the handler tests run against.\n\
         [dev-dependencies]\nplugin-api = {{ {api}, features = [\"testing\"] }}\n\n\
         # A plugin is its own workspace, whatever directory it sits in.\n[workspace]\n",
        api = dependency(plugin_api.as_deref())
    );
    let files = [
        ("Cargo.toml", cargo),
        ("plugin.toml", manifest(name, kind)),
        (
            "README.md",
            format!(
                "# {name}\n\nA plughost plugin. `cargo test` runs its handlers against an in-memory host; `plughost plugin package . -o {name}.zip [--sign KEY]` builds it and writes its package; `cargo build --release` alone builds `target/release/lib{name}.so`; `cargo doc --open --features plugin-api/testing` documents the contract and its test host.\n"
            ),
        ),
        ("src/lib.rs", source(name, kind)),
        (".gitignore", "/target\n".into()),
    ];
    for (file, text) in files {
        std::fs::write(dir.join(file), text)?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifests_it_writes_are_valid() {
        for kind in [Kind::App, Kind::Extend, Kind::Capability] {
            crate::plugin::loading::manifest::PluginManifest::parse(&manifest("demo", kind))
                .unwrap();
        }
    }
}

#[cfg(test)]
mod sdk_tests {
    use super::*;

    #[test]
    fn the_sdk_manifest_stands_alone_with_the_workspace_versions() {
        let manifest: toml::Table = standalone_manifest().unwrap().parse().unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("plugin-api"));
        assert_eq!(
            manifest["package"]["version"].as_str(),
            Some(plugin_api::CONTRACT_VERSION)
        );
        assert!(manifest["package"]["edition"].is_str());
        let abi = &manifest["dependencies"]["abi_stable"];
        assert!(abi.get("workspace").is_none(), "{abi}");
        assert!(abi["version"].is_str(), "{abi}");
        let rusqlite = &manifest["dependencies"]["rusqlite"];
        assert_eq!(rusqlite["optional"].as_bool(), Some(true), "{rusqlite}");
        assert!(manifest.get("lints").is_none());
    }
}
