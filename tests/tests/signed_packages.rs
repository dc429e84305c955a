//! Signed packages, from `plughost plugin keygen` and `plugin package
//! --sign` to a host that requires signatures: a package signed by a
//! trusted key installs and is listed with its signer; unsigned, unknown
//! key, altered and added entries, and a signature moved to
//! another plugin or version are refused through HTTP and the CLI, each
//! with the plugin dir unchanged.

use e2e::{DataDir, Host, author_cli, cli, key_pair, snapshot, zip_entries, zip_of};

/// Rewrites a package: `edit` changes its entries.
fn rewrite(archive: &[u8], edit: impl FnOnce(&mut Vec<(String, Vec<u8>)>)) -> Vec<u8> {
    let mut entries = zip_entries(archive);
    edit(&mut entries);
    let refs: Vec<(&str, Vec<u8>)> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.clone()))
        .collect();
    zip_of(&refs)
}

#[test]
fn signed_packages_install_and_tampered_ones_are_refused_everywhere() {
    let work = tempfile::tempdir().unwrap();
    let (trusted, trusted_id) = key_pair(work.path(), "trusted.key", &[], &["--no-password"]);
    let password = [("PLUGHOST_SIGNING_PASSWORD", "correct horse".to_owned())];
    let (stranger, _) = key_pair(work.path(), "stranger.key", &password, &[]);
    assert!(
        std::fs::read_to_string(&stranger)
            .unwrap()
            .contains("plughost signing key"),
    );
    // An existing key is not overwritten.
    let (ok, out) = author_cli(
        &[],
        &["plugin", "keygen", "--out", &trusted, "--no-password"],
    );
    assert!(!ok && out.contains("--force"), "{out}");

    // A new plugin crate, packaged signed (twice: each key) and unsigned.
    let crate_dir = e2e::scaffolded_repository(work.path(), "signed_demo", "app");
    let target = e2e::plugin_build_env();
    let package = |out: &str, sign: Option<&str>, env: &[(&str, String)]| -> Vec<u8> {
        let file = work.path().join(out);
        let mut args = vec![
            "plugin",
            "package",
            crate_dir.to_str().unwrap(),
            "-o",
            file.to_str().unwrap(),
        ];
        if let Some(key) = sign {
            args.extend(["--sign", key]);
        }
        let mut env = env.to_vec();
        env.extend(target.iter().cloned());
        let (ok, out) = author_cli(&env, &args);
        assert!(ok, "plugin package: {out}");
        assert!(out.contains("plugin 'signed_demo' 0.1.0"), "{out}");
        std::fs::read(file).unwrap()
    };
    let signed = package("signed.zip", Some(&trusted), &[]);
    assert!(
        e2e::zip_names(&signed).contains(&"signed_demo/CHECKSUMS.minisig".to_owned()),
        "{:?}",
        e2e::zip_names(&signed)
    );
    let by_stranger = package("stranger.zip", Some(&stranger), &password);
    let unsigned = package("unsigned.zip", None, &[]);
    // A wrong password fails before anything is built.
    let (ok, out) = author_cli(
        &[("PLUGHOST_SIGNING_PASSWORD", "wrong".to_owned())],
        &[
            "plugin",
            "package",
            crate_dir.to_str().unwrap(),
            "-o",
            work.path().join("never.zip").to_str().unwrap(),
            "--sign",
            &stranger,
        ],
    );
    assert!(!ok && out.contains("PLUGHOST_SIGNING_PASSWORD"), "{out}");
    assert!(!work.path().join("never.zip").exists());

    let altered = rewrite(&signed, |entries| {
        let readme = entries
            .iter_mut()
            .find(|(n, _)| n == "signed_demo/README.md")
            .unwrap();
        readme.1.extend_from_slice(b"\nOne more line.\n");
    });
    let added = rewrite(&signed, |entries| {
        entries.push((
            "signed_demo/sql/sqlite/init.sql".into(),
            b"INSERT INTO sys_dict_type (name) VALUES ('x');".to_vec(),
        ));
    });
    let other_version = rewrite(&signed, |entries| {
        let manifest = entries
            .iter_mut()
            .find(|(n, _)| n == "signed_demo/plugin.toml")
            .unwrap();
        let text = String::from_utf8(manifest.1.clone()).unwrap();
        manifest.1 = text
            .replace("version = \"0.1.0\"", "version = \"0.2.0\"")
            .into_bytes();
    });
    let other_plugin = rewrite(&signed, |entries| {
        for (name, _) in entries.iter_mut() {
            *name = name
                .replace("signed_demo/", "other_demo/")
                .replace("libsigned_demo.so", "libother_demo.so");
        }
    });

    let keys = [
        ("PLUGHOST_TRUSTED_KEYS", format!("{trusted}.pub")),
        ("PLUGHOST_REQUIRE_SIGNED", "true".to_owned()),
    ];
    let env: Vec<(&str, &str)> = keys.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let data = DataDir::new();
    // An operator's lone library is trusted as it is, and listed unsigned.
    data.drop_library("hello");
    let host = Host::start_with(&data, &env);
    assert!(host.plugin("hello")["signer"].is_null());
    let before = snapshot(&data.plugins());

    let refused: [(&str, &Vec<u8>, &str); 6] = [
        ("unsigned", &unsigned, "is not signed"),
        (
            "unknown key",
            &by_stranger,
            "not among this host's trusted keys",
        ),
        (
            "altered",
            &altered,
            "'README.md' does not match its signed checksum",
        ),
        (
            "added",
            &added,
            "'sql/sqlite/init.sql' is not covered by the signature",
        ),
        (
            "other version",
            &other_version,
            "made for plugin 'signed_demo' 0.1.0",
        ),
        (
            "other plugin",
            &other_plugin,
            "made for plugin 'signed_demo' 0.1.0",
        ),
    ];
    for (what, archive, needle) in refused {
        let reply = host.upload(archive, "type=zip");
        assert_eq!(reply.status, 422, "{what}: {:?}", reply.json);
        reply.assert_error(422, needle);
        assert_eq!(
            snapshot(&data.plugins()),
            before,
            "{what}: the plugin dir changed"
        );
    }
    // Every refusal again through the CLI, on the same plugin dir.
    for (what, archive, needle) in refused {
        let file = work.path().join("cli.zip");
        std::fs::write(&file, archive).unwrap();
        let cli_env: Vec<(&str, String)> = keys.to_vec();
        let (ok, out) = cli(
            &data,
            &cli_env,
            &["plugin", "add", "--zip", file.to_str().unwrap()],
        );
        assert!(!ok && out.contains(needle), "CLI {what}: {out}");
        assert_eq!(
            snapshot(&data.plugins()),
            before,
            "CLI {what}: the plugin dir changed"
        );
    }

    // The signed package installs, serves and is listed with its signer.
    let reply = host.upload(&signed, "type=zip");
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(
        host.get("/signed_demo/v1/hello").data(),
        "Hello from signed_demo!"
    );
    assert_eq!(host.plugin("signed_demo")["signer"], trusted_id.as_str());
    // A download keeps the signature; after a restart it still verifies.
    let (status, _, _, downloaded) = host.download("/admin/v1/sys/plugins/signed_demo");
    assert_eq!(status, 200);
    assert!(e2e::zip_names(&downloaded).contains(&"signed_demo/CHECKSUMS.minisig".to_owned()));
    drop(host);
    let host = Host::start_with(&data, &env);
    assert_eq!(host.plugin("signed_demo")["signer"], trusted_id.as_str());
    assert_eq!(host.plugin("signed_demo")["state"], "loaded");
}

#[test]
fn signatures_are_required_in_prod_by_default_and_optional_in_dev() {
    let prod = DataDir::new();
    let host = Host::start_with(&prod, &[("PLUGHOST_ENVIRONMENT", "prod")]);
    host.upload(
        &e2e::package("greeter", "greeter_v1", "greeter_v1"),
        "type=zip",
    )
    .assert_error(422, "PLUGHOST_REQUIRE_SIGNED");
    drop(host);
    let dev = DataDir::new();
    let host = Host::start(&dev);
    let reply = host.upload(
        &e2e::package("greeter", "greeter_v1", "greeter_v1"),
        "type=zip",
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(host.plugin("greeter")["signer"].is_null());
}

#[test]
fn a_plugin_toml_of_another_version_than_the_library_is_refused_naming_both() {
    let data = DataDir::new();
    let host = Host::start(&data);
    let before = snapshot(&data.plugins());
    let archive = rewrite(
        &e2e::package("greeter", "greeter_v1", "greeter_v1"),
        |entries| {
            let manifest = entries
                .iter_mut()
                .find(|(n, _)| n == "greeter/plugin.toml")
                .unwrap();
            let text = String::from_utf8(manifest.1.clone()).unwrap();
            assert!(text.contains("version = \"1.0.0\""), "{text}");
            manifest.1 = text
                .replace("version = \"1.0.0\"", "version = \"3.0.0\"")
                .into_bytes();
        },
    );
    host.upload(&archive, "type=zip").assert_error(
        422,
        "plugin.toml says version 3.0.0 but the library was built as version 1.0.0",
    );
    assert_eq!(snapshot(&data.plugins()), before);
}

#[test]
fn author_commands_show_only_their_own_options() {
    for command in ["new", "package", "keygen"] {
        let (ok, help) = author_cli(&[], &["plugin", command, "--help"]);
        assert!(ok, "{help}");
        assert!(
            !help.contains("--data-dir") && !help.contains("--database-url"),
            "plugin {command} --help lists server options:\n{help}"
        );
    }
    let (_, help) = author_cli(&[], &["plugin", "new", "--help"]);
    assert!(help.contains("--plugin-api"), "{help}");
    // `plugin new` depends on this host's contract by default: its source,
    // written into the crate; `--plugin-api VERSION` names a registry's.
    let dir = tempfile::tempdir().unwrap();
    let crate_dir = dir.path().join("versioned");
    let (ok, out) = author_cli(
        &[],
        &[
            "plugin",
            "new",
            "versioned",
            "--dir",
            crate_dir.to_str().unwrap(),
        ],
    );
    assert!(ok, "{out}");
    let cargo = std::fs::read_to_string(crate_dir.join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains("plugin-api = { path = \"plugin-api\" }"),
        "{cargo}"
    );
    assert!(
        cargo.contains(
            "[dev-dependencies]\nplugin-api = { path = \"plugin-api\", features = [\"testing\"] }"
        ),
        "the handler tests' in-memory host: {cargo}"
    );
    let version = e2e::plugin_api_version();
    let sdk = std::fs::read_to_string(crate_dir.join("plugin-api/Cargo.toml")).unwrap();
    assert!(sdk.contains(&format!("version = \"{version}\"")), "{sdk}");
    let registry = dir.path().join("registry");
    let (ok, out) = author_cli(
        &[],
        &[
            "plugin",
            "new",
            "registry",
            "--dir",
            registry.to_str().unwrap(),
            "--plugin-api",
            &version,
        ],
    );
    assert!(ok, "{out}");
    let cargo = std::fs::read_to_string(registry.join("Cargo.toml")).unwrap();
    assert!(
        cargo.contains(&format!("plugin-api = {{ version = \"{version}\" }}")),
        "{cargo}"
    );
    assert!(!registry.join("plugin-api").exists());
}
