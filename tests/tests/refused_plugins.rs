//! Plugins that cannot load are listed with a reason; the rest serve.

use e2e::{DataDir, Host};

const VALID_HEAD: &str =
    "[plugin]\nsummary = \"s\"\nversion = \"0.1.0\"\ndescription = \"d\"\nauthor = \"a\"\n";

/// (directory name, plugin.toml, expected part of the reason)
fn bad_manifests() -> Vec<(&'static str, String, &'static str)> {
    vec![
        (
            "no_plugin_table",
            "[app]\nrouter = [\"r\"]\n".into(),
            "plugin: the [plugin] table is required",
        ),
        (
            "bad_version",
            VALID_HEAD.replace("0.1.0", "1.0") + "[app]\nrouter = [\"r\"]\n",
            "plugin.version: '1.0' is not a version",
        ),
        (
            "long_summary",
            VALID_HEAD.replace("\"s\"", &format!("\"{}\"", "s".repeat(101)))
                + "[app]\nrouter = [\"r\"]\n",
            "plugin.summary: must be 1 to 100",
        ),
        (
            "no_author",
            VALID_HEAD.replace("author = \"a\"\n", "") + "[app]\nrouter = [\"r\"]\n",
            "plugin.author: is required",
        ),
        (
            "unknown_table",
            format!("{VALID_HEAD}[app]\nrouter = [\"r\"]\n[hooks]\nx = 1\n"),
            "hooks: unknown table",
        ),
        (
            "extend_without_target",
            format!("{VALID_HEAD}[app]\n[api.x]\nprefix = \"/x\"\n"),
            "app.extend: is required",
        ),
        (
            "app_without_router",
            format!("{VALID_HEAD}[app]\n"),
            "app.router: is required",
        ),
        (
            "bad_prefix",
            format!("{VALID_HEAD}[app]\nextend = \"admin\"\n[api.x]\nprefix = \"x y\"\n"),
            "api.x.prefix",
        ),
        (
            "bad_router_name",
            format!("{VALID_HEAD}[app]\nrouter = [\"1r\"]\n"),
            "app.router: '1r' is not a router name",
        ),
        ("not_toml", "[plugin\n".into(), "not valid TOML"),
        (
            "Bad-Name",
            format!("{VALID_HEAD}[app]\nrouter = [\"r\"]\n"),
            "is not a valid plugin name",
        ),
        (
            "changed",
            format!("{VALID_HEAD}[app]\nrouter = [\"r\"]\n"),
            "'changed' is a reserved name",
        ),
    ]
}

#[test]
fn every_refused_plugin_is_listed_with_its_reason_while_the_good_ones_serve() {
    let data = DataDir::new();
    data.install_dir("hello");
    data.install_dir("sysinfo");
    std::fs::write(
        data.plugins().join("libgarbage.so"),
        b"\x7fELF but not really",
    )
    .unwrap();
    data.drop_library("not_a_plugin");
    data.drop_library("contract_major2");
    data.drop_library("contract_layout");
    data.drop_library("needy");
    data.drop_library("cycle_a");
    data.drop_library("cycle_b");
    for (name, manifest, _) in bad_manifests() {
        data.write_manifest_only(name, &manifest);
    }
    // A directory whose library declares another name.
    let renamed = data.plugins().join("impostor");
    std::fs::create_dir(&renamed).unwrap();
    std::fs::copy(
        data.install_dir("panicky").join("plugin.toml"),
        renamed.join("plugin.toml"),
    )
    .unwrap();
    std::fs::write(renamed.join("README.md"), "#").unwrap();
    std::fs::copy(e2e::library("panicky"), renamed.join("libimpostor.so")).unwrap();
    std::fs::remove_dir_all(data.plugins().join("panicky")).unwrap();

    let host = Host::start(&data);
    assert_eq!(host.get("/hello/v1/greet?name=Ada").status, 200);
    assert_eq!(
        host.get("/admin/v1/sys/sysinfo").data()["loaded_plugins"],
        2
    );

    let mut expected: Vec<(String, String)> = vec![
        (
            "garbage".into(),
            "libgarbage.so: refused before loading: not an ELF shared object".into(),
        ),
        (
            "not_a_plugin".into(),
            "not a plughost plugin: it exports no plugin root module".into(),
        ),
        (
            "contract_major2".into(),
            format!(
                "built against plugin-api 2.0.0, this host speaks plugin-api {}",
                e2e::plugin_api_version()
            ),
        ),
        (
            "contract_layout".into(),
            format!(
                "type RawRequest<'a> differs from this host's plugin-api {}",
                e2e::plugin_api_version()
            ),
        ),
        (
            "contract_layout".into(),
            "unexpected field (expected extensions, found extra)".into(),
        ),
        (
            "needy".into(),
            "depends on 'absent', which is not installed (needy -> absent)".into(),
        ),
        (
            "cycle_a".into(),
            "dependency cycle: cycle_a -> cycle_b -> cycle_a".into(),
        ),
        (
            "cycle_b".into(),
            "dependency cycle: cycle_a -> cycle_b -> cycle_a".into(),
        ),
        (
            "impostor".into(),
            "the library declares plugin 'panicky' but is installed as 'impostor'".into(),
        ),
    ];
    for (name, _, reason) in bad_manifests() {
        expected.push((name.into(), reason.into()));
    }
    for (name, reason) in expected {
        let entry = host.plugin(&name);
        assert_eq!(entry["state"], "error", "{name}: {entry}");
        assert_eq!(entry["plugin"]["enable"], "0", "{name}");
        let error = entry["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&reason),
            "{name}: {error:?} should contain {reason:?}"
        );
        assert!(error.len() < 600, "{name}: the reason stays short: {error}");
    }
}

#[test]
fn a_route_collision_is_refused_naming_both_plugins() {
    let data = DataDir::new();
    data.install_dir("hello");
    data.drop_library("collider");
    let host = Host::start(&data);
    // Start-up mounts plugins in name order: `collider` first, so `hello` is refused.
    let hello = host.plugin("hello");
    assert_eq!(hello["state"], "error");
    assert_eq!(
        hello["error"],
        "route GET /hello/v1/greet collides with route GET /hello/v1/greet of plugin 'collider'"
    );
    assert_eq!(host.get("/hello/v1/greet").data(), "collider");
    // None of the refused plugin's routes are mounted.
    host.post("/hello/v1/echo", &serde_json::json!(1))
        .assert_error(404, "no route");
}

#[test]
fn a_route_colliding_with_a_core_route_is_refused_naming_it() {
    let data = DataDir::new();
    data.install_dir("hello");
    let dir = data.install_dir("collider");
    std::fs::write(
        dir.join("plugin.toml"),
        format!("{VALID_HEAD}[app]\nextend = \"admin\"\n[api.router_v1]\nprefix = \"/plugins\"\n"),
    )
    .unwrap();
    let host = Host::start(&data);
    let collider = host.plugin("collider");
    assert_eq!(
        collider["error"],
        "route GET /admin/v1/sys/plugins/greet collides with the host's core route GET /admin/v1/sys/plugins/{plugin}"
    );
    assert_eq!(host.get("/hello/v1/greet").status, 200);
}

#[test]
fn a_manifest_naming_routers_the_library_lacks_is_refused() {
    let data = DataDir::new();
    let dir = data.install_dir("hello");
    std::fs::write(
        dir.join("plugin.toml"),
        format!("{VALID_HEAD}[app]\nrouter = [\"router_v1\", \"router_v2\"]\n"),
    )
    .unwrap();
    let host = Host::start(&data);
    assert_eq!(
        host.plugin("hello")["error"],
        "plugin.toml declares router 'router_v2' but the library has no such router"
    );
}
