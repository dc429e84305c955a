//! `plughost plugin check PATH`: the install's checks without a host, on
//! each kind of input, good and bad; exit 0 exactly when it would install.

use std::path::Path;

use e2e::{DataDir, author_cli, zip_of};

fn check(path: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["plugin", "check", path.to_str().unwrap()];
    args.extend_from_slice(extra);
    author_cli(&[], &args)
}

fn passes(path: &Path, extra: &[&str], needle: &str) {
    let (ok, out) = check(path, extra);
    assert!(ok && out.contains(needle), "{}: {out}", path.display());
}

fn fails(path: &Path, extra: &[&str], needle: &str) {
    let (ok, out) = check(path, extra);
    assert!(!ok, "{} passed: {out}", path.display());
    assert!(
        out.contains(needle),
        "{} lacks {needle:?}: {out}",
        path.display()
    );
}

#[test]
fn manifests_directories_libraries_and_packages_are_checked_as_an_install_would() {
    let work = tempfile::tempdir().unwrap();

    // plugin.toml
    let manifest = e2e::source_dir("notes").join("plugin.toml");
    passes(&manifest, &[], "would install");
    let bad = work.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &bad,
        text.replace("version = \"0.1.0\"", "version = \"1.0\""),
    )
    .unwrap();
    fails(&bad, &[], "plugin.version: '1.0' is not a version");

    // A plugin directory: good (with its SQL), and one whose plugin.toml
    // says another version than its library.
    let data = DataDir::new();
    let notes = data.install_dir("notes");
    passes(
        &notes,
        &[],
        &format!(
            "ok: plugin 'notes' 0.1.0 (plugin-api {}) would install, unsigned",
            e2e::plugin_api_version()
        ),
    );
    let hello = data.install_dir("hello");
    let text = std::fs::read_to_string(hello.join("plugin.toml")).unwrap();
    std::fs::write(
        hello.join("plugin.toml"),
        text.replace("version = \"0.1.0\"", "version = \"0.3.0\""),
    )
    .unwrap();
    fails(
        &hello,
        &[],
        "plugin.toml says version 0.3.0 but the library was built as version 0.1.0",
    );
    // A route on a core route.
    let collider = data.install_dir("collider");
    let text = std::fs::read_to_string(collider.join("plugin.toml")).unwrap();
    let head = text.split("[app]").next().unwrap().to_owned();
    std::fs::write(
        collider.join("plugin.toml"),
        format!("{head}[app]\nextend = \"admin\"\n[api.router_v1]\nprefix = \"/plugins\"\n"),
    )
    .unwrap();
    fails(&collider, &[], "collides with the host's core route");

    // Lone libraries: a plugin, and a shared object that is not one.
    passes(&e2e::library("hello"), &[], "plugin 'hello' 0.1.0");
    let not_a_plugin = work.path().join("libnot_a_plugin.so");
    std::fs::copy(e2e::library("not_a_plugin"), &not_a_plugin).unwrap();
    fails(&not_a_plugin, &[], "problem:");

    // Packages: good; with a path-traversal entry; unsigned where a
    // signature is required.
    let good = work.path().join("greeter.zip");
    std::fs::write(&good, e2e::package("greeter", "greeter_v1", "greeter_v1")).unwrap();
    passes(&good, &[], "ok: plugin 'greeter' 1.0.0");
    fails(&good, &["--require-signed"], "is not signed");
    let evil = work.path().join("evil.zip");
    std::fs::write(&evil, zip_of(&[("greeter/../../evil.txt", b"x".to_vec())])).unwrap();
    fails(&evil, &[], "'..' components are not allowed");

    // Something that is none of these.
    let other = work.path().join("notes.txt");
    std::fs::write(&other, "hello").unwrap();
    let (ok, out) = check(&other, &[]);
    assert!(!ok && out.contains("is neither a plugin.toml"), "{out}");
}

#[test]
fn a_crate_is_built_and_checked_and_a_signed_package_verified() {
    let work = tempfile::tempdir().unwrap();
    let crate_dir = e2e::scaffolded_repository(work.path(), "checked", "extend");
    let target = e2e::plugin_build_env();
    let (ok, out) = author_cli(&target, &["plugin", "check", crate_dir.to_str().unwrap()]);
    assert!(ok && out.contains("ok: plugin 'checked' 0.1.0"), "{out}");

    // Signed with a key, checked against it and against another.
    let key = work.path().join("k.key");
    let other = work.path().join("other.key");
    for k in [&key, &other] {
        let (ok, out) = author_cli(
            &[],
            &[
                "plugin",
                "keygen",
                "--out",
                k.to_str().unwrap(),
                "--no-password",
            ],
        );
        assert!(ok, "{out}");
    }
    let package = work.path().join("checked.zip");
    let (ok, out) = author_cli(
        &target,
        &[
            "plugin",
            "package",
            crate_dir.to_str().unwrap(),
            "-o",
            package.to_str().unwrap(),
            "--sign",
            key.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let trusted = format!("{}.pub", key.display());
    let untrusted = format!("{}.pub", other.display());
    passes(
        &package,
        &["--trusted-key", &trusted, "--require-signed"],
        "signed by key",
    );
    fails(
        &package,
        &["--trusted-key", &untrusted, "--require-signed"],
        "not among this host's trusted keys",
    );

    // A crate whose plugin.toml is broken stops before the build.
    let text = std::fs::read_to_string(crate_dir.join("plugin.toml")).unwrap();
    std::fs::write(crate_dir.join("plugin.toml"), text.replace("[app]", "[ap]")).unwrap();
    let (ok, out) = author_cli(&target, &["plugin", "check", crate_dir.to_str().unwrap()]);
    assert!(!ok && out.contains("unknown table"), "{out}");
}
