//! `plughost plugin new`: a plugin crate that builds and loads as is.

use std::path::{Path, PathBuf};

use super::manifest::{PLUGIN_NAME_PATTERN, is_valid_plugin_name};

/// Which kind of plugin to create.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Its own top-level routes (`/<name>/v1/...`).
    App,
    /// Routes inside the admin app (`/admin/v1/sys/<name>`).
    Extend,
}

/// The plugin-api dependency: a path when `spec` is an existing
/// directory, else a version: `spec`, by default the contract version this
/// host speaks. As the table that follows `plugin-api = `.
fn dependency(spec: Option<String>) -> String {
    match spec {
        Some(s) if Path::new(&s).is_dir() => {
            let path = Path::new(&s);
            let absolute = path.canonicalize().unwrap_or_else(|_| path.to_owned());
            format!("path = {:?}", absolute.display().to_string())
        }
        Some(version) => format!("version = {version:?}"),
        None => format!("version = {:?}", plugin_api::CONTRACT_VERSION),
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
    }
}

fn source(name: &str, kind: Kind) -> String {
    let (router, path, token) = match kind {
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
    let cargo = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nplugin-api = {{ {api} }}\n\n\
         # The in-memory host the handler tests run against.\n\
         [dev-dependencies]\nplugin-api = {{ {api}, features = [\"testing\"] }}\n\n\
         # A plugin is its own workspace, whatever directory it sits in.\n[workspace]\n",
        api = dependency(plugin_api)
    );
    let files = [
        ("Cargo.toml", cargo),
        ("plugin.toml", manifest(name, kind)),
        (
            "README.md",
            format!(
                "# {name}\n\nA plughost plugin. `cargo test` runs its handlers against an in-memory host; `plughost plugin package . -o {name}.zip [--sign KEY]` builds it and writes its package; `cargo build --release` alone builds `target/release/lib{name}.so`.\n"
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
        for kind in [Kind::App, Kind::Extend] {
            crate::plugin::loading::manifest::PluginManifest::parse(&manifest("demo", kind))
                .unwrap();
        }
    }
}
