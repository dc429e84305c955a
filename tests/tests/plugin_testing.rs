//! A crate made by `plughost plugin new` tests its handlers with
//! `cargo test`, against plugin-api's in-memory host (feature `testing`),
//! and the test fails when the handler breaks; by default the crate
//! carries the plugin-api of the host that made it and builds offline.

use std::process::Command;

/// Runs `cargo test` in `crate_dir`; success and the output.
fn cargo_test(crate_dir: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO"))
        .args(["test", "--quiet", "--offline"])
        .current_dir(crate_dir)
        .envs(e2e::plugin_build_env())
        .output()
        .expect("cargo runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn a_new_plugin_crate_tests_its_handlers_against_the_in_memory_host() {
    let parent = tempfile::tempdir().unwrap();
    for kind in ["app", "extend"] {
        let name = format!("tested_{kind}");
        let crate_dir = e2e::scaffolded_repository(parent.path(), &name, kind);
        let (ok, out) = cargo_test(&crate_dir);
        assert!(ok, "cargo test of a new {kind} plugin: {out}");
        assert!(out.contains("1 passed"), "{out}");

        // A broken handler fails its test, naming what it answered.
        let lib = crate_dir.join("src/lib.rs");
        let source = std::fs::read_to_string(&lib).unwrap();
        let broken = source.replace("Json(\"Hello from", "Json(\"Goodbye from");
        assert_ne!(broken, source, "the handler's greeting is in src/lib.rs");
        std::fs::write(&lib, broken).unwrap();
        let (ok, out) = cargo_test(&crate_dir);
        assert!(!ok, "a broken {kind} handler fails its test: {out}");
        assert!(out.contains(&format!("Goodbye from {name}!")), "{out}");
    }
}

#[test]
fn a_new_capability_plugin_carries_its_hosts_plugin_api_and_builds_offline() {
    let parent = tempfile::tempdir().unwrap();
    let crate_dir = parent.path().join("beat");
    let (ok, out) = e2e::author_cli(
        &[],
        &[
            "plugin",
            "new",
            "beat",
            "--kind",
            "capability",
            "--dir",
            crate_dir.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let cargo = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains(r#"plugin-api = { path = "plugin-api" }"#),
        "{cargo}"
    );
    let sdk = std::fs::read_to_string(crate_dir.join("plugin-api/Cargo.toml")).unwrap();
    assert!(
        sdk.contains(&format!("version = \"{}\"", e2e::plugin_api_version())),
        "{sdk}"
    );
    assert!(crate_dir.join("Cargo.lock").is_file());
    let manifest = std::fs::read_to_string(crate_dir.join("plugin.toml")).unwrap();
    assert!(!manifest.contains("[app]"), "{manifest}");

    // No registry serves this plugin-api: the crate builds from what it carries.
    let (ok, out) = cargo_test(&crate_dir);
    assert!(ok, "cargo test of a new capability plugin: {out}");
    assert!(out.contains("1 passed"), "{out}");

    // plughost plugin check takes it as a plugin without routes.
    let (ok, out) = e2e::author_cli(
        &e2e::plugin_build_env(),
        &["plugin", "check", crate_dir.to_str().unwrap()],
    );
    assert!(ok, "{out}");
}
