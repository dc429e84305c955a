//! Installing from Git (local repositories made by the `git` command) and
//! the `plughost plugin` commands, through the real binary.

use std::path::Path;

use e2e::{DataDir, Host, cli, git, package, zip_names};

/// Writes greeter build `build` as a prebuilt package at the repo's root.
fn put_greeter(repo: &Path, build: u8) {
    let source = e2e::source_dir(&format!("greeter_v{build}"));
    std::fs::copy(source.join("plugin.toml"), repo.join("plugin.toml")).unwrap();
    std::fs::write(repo.join("README.md"), "# greeter\n").unwrap();
    std::fs::copy(
        e2e::library(&format!("greeter_v{build}")),
        repo.join("libgreeter.so"),
    )
    .unwrap();
}

fn version(host: &Host) -> Option<String> {
    let reply = host.get("/greeter/v1/version");
    (reply.status == 200).then(|| reply.json["data"].as_str().unwrap().to_owned())
}

#[test]
fn a_repository_with_a_prebuilt_library_installs_at_a_pinned_ref_and_upgrades() {
    let repo = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    put_greeter(repo.path(), 1);
    git(repo.path(), &["add", "."]);
    git(repo.path(), &["commit", "-qm", "build 1"]);
    git(repo.path(), &["tag", "v1"]);
    let v1 = git(repo.path(), &["rev-parse", "HEAD"]);
    put_greeter(repo.path(), 2);
    git(repo.path(), &["commit", "-qam", "build 2"]);

    let (data, host) = e2e::serve_with(&["hello"], &[("PLUGHOST_GIT_ALLOW_LOCAL", "true")]);
    let url = repo.path().display().to_string();
    let reply = host.request(
        "POST",
        &format!("/admin/v1/sys/plugins?type=git&repo_url={url}&ref=v1"),
        None,
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(version(&host).as_deref(), Some("1"));
    // The source is recorded; nothing of the repository itself is kept.
    let dir = data.plugins().join("greeter");
    let source: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(".source.json")).unwrap()).unwrap();
    assert_eq!(source["commit"], v1);
    assert_eq!(source["ref"], "v1");
    assert!(!dir.join(".git").exists());
    // The desired set records the Git source and the packed plugin.
    let listed = host.plugin("greeter");
    assert_eq!(listed["package"]["source"]["type"], "git", "{listed}");
    assert_eq!(listed["package"]["source"]["commit"], v1);
    assert_eq!(listed["package"]["digest"].as_str().unwrap().len(), 64);
    // And a download carries no trace of it.
    let (_, _, _, bytes) = host.download("/admin/v1/sys/plugins/greeter");
    assert!(
        zip_names(&bytes)
            .iter()
            .all(|n| !n.contains(".source") && !n.contains(".git"))
    );

    // The default branch holds build 2: an upgrade.
    let reply = host.request(
        "POST",
        &format!("/admin/v1/sys/plugins?type=git&repo_url={url}&upgrade=true"),
        None,
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(version(&host).as_deref(), Some("2"));

    let before = e2e::snapshot(&data.plugins());
    host.request(
        "POST",
        &format!("/admin/v1/sys/plugins?type=git&repo_url={url}&ref=nope&upgrade=true&force=true"),
        None,
    )
    .assert_error(422, "ref 'nope' is neither a branch, a tag nor a commit");
    assert!(
        e2e::snapshot(&data.plugins()) == before,
        "a refused install changed the plugin dir"
    );
}

#[test]
fn git_sources_are_limited_to_allowed_hosts_and_local_only_when_allowed() {
    let (_data, host) = e2e::serve(&["hello"]);
    host.request(
        "POST",
        "/admin/v1/sys/plugins?type=git&repo_url=/srv/repo",
        None,
    )
    .assert_error(403, "set PLUGHOST_GIT_ALLOW_LOCAL=true");
    host.request(
        "POST",
        "/admin/v1/sys/plugins?type=git&repo_url=https://evil.example/x.git",
        None,
    )
    .assert_error(403, "Git host 'evil.example' is not allowed");
    host.request(
        "POST",
        "/admin/v1/sys/plugins?type=git&repo_url=http://github.com/x.git",
        None,
    )
    .assert_error(422, "is not an https:// repository URL");
    host.request("POST", "/admin/v1/sys/plugins?type=git", None)
        .assert_error(400, "type=git needs repo_url");
}

#[test]
fn a_crate_made_by_plugin_new_builds_from_git_through_the_cli_and_serves() {
    let repo = tempfile::tempdir().unwrap();
    let crate_dir = e2e::scaffolded_repository(repo.path(), "demo", "extend");
    let data = DataDir::new();

    // Plugin builds share one target dir across test runs.
    let build_dir = e2e::root().join("target").join("plugin-builds");
    let env = [
        ("PLUGHOST_GIT_ALLOW_LOCAL", "true".to_owned()),
        ("PLUGHOST_BUILD_DIR", build_dir.display().to_string()),
        ("PLUGHOST_LOG", "info".to_owned()),
    ];
    let (ok, out) = cli(
        &data,
        &env,
        &["plugin", "add", "--git", crate_dir.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert!(out.contains("installed plugin 'demo' 0.1.0"), "{out}");
    assert!(
        out.contains("building the plugin crate"),
        "build progress is shown: {out}"
    );

    let host = Host::start(&data);
    assert_eq!(
        host.get("/admin/v1/sys/demo/hello").data(),
        "Hello from demo!"
    );
}

#[test]
fn the_plugin_commands_manage_the_plugin_dir_with_the_same_rules() {
    let data = DataDir::new();
    data.install_dir("hello");
    let archive = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        archive.path(),
        package("greeter", "greeter_v1", "greeter_v1"),
    )
    .unwrap();
    let zip = archive.path().to_str().unwrap();

    let (ok, out) = cli(&data, &[], &["plugin", "add", "--zip", zip]);
    assert!(
        ok && out.contains("installed plugin 'greeter' 1.0.0"),
        "{out}"
    );
    let (ok, out) = cli(&data, &[], &["plugin", "add", "--zip", zip]);
    assert!(!ok && out.contains("install with upgrade=true"), "{out}");
    let (ok, out) = cli(&data, &[], &["plugin", "disable", "greeter"]);
    assert!(ok && out.contains("plugin 'greeter' disabled"), "{out}");
    let (ok, out) = cli(&data, &[], &["plugin", "list"]);
    assert!(ok, "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("greeter"))
        .expect("greeter listed");
    assert!(
        line.contains("1.0.0") && line.contains("disabled"),
        "{line}"
    );

    // A server started on the dir serves what the commands left.
    let host = Host::start(&data);
    host.get("/greeter/v1/version")
        .assert_error(503, "plugin 'greeter' is disabled");
    assert_eq!(host.get("/admin/v1/sys/plugins/changed").data(), false);
    // An install next to the running server: a restart would change it.
    let sysinfo = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(sysinfo.path(), package("sysinfo", "sysinfo", "sysinfo")).unwrap();
    let (ok, out) = cli(
        &data,
        &[],
        &["plugin", "add", "--zip", sysinfo.path().to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert_eq!(host.get("/admin/v1/sys/plugins/changed").data(), true);
    drop(host);

    let (ok, out) = cli(&data, &[], &["plugin", "enable", "greeter"]);
    assert!(ok && out.contains("plugin 'greeter' enabled"), "{out}");
    let packed = data.path().join("out.zip");
    let (ok, out) = cli(
        &data,
        &[],
        &["plugin", "pack", "greeter", "-o", packed.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    assert!(
        zip_names(&std::fs::read(&packed).unwrap()).contains(&"greeter/libgreeter.so".to_owned())
    );
    let (ok, out) = cli(&data, &[], &["plugin", "remove", "greeter"]);
    assert!(
        ok && out.contains("removed plugin 'greeter' (backup:"),
        "{out}"
    );
    let (ok, out) = cli(&data, &[], &["plugin", "remove", "absent"]);
    assert!(!ok && out.contains("not installed"), "{out}");
    assert!(!data.plugins().join("greeter").exists());
}

#[test]
fn plugins_loaded_by_the_cli_get_the_same_host_services_as_the_server() {
    // notes refuses to start when its init sees no database.
    let data = DataDir::new();
    let archive = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(archive.path(), package("notes", "notes", "notes")).unwrap();
    let (ok, out) = cli(
        &data,
        &[],
        &["plugin", "add", "--zip", archive.path().to_str().unwrap()],
    );
    assert!(
        ok && out.contains("installed plugin 'notes' 0.1.0"),
        "{out}"
    );
    let (ok, out) = cli(&data, &[], &["plugin", "list"]);
    let line = out
        .lines()
        .find(|l| l.starts_with("notes"))
        .expect("notes listed");
    assert!(ok && line.contains("loaded"), "{out}");
    // Its init script ran once, through the CLI; the server finds its table.
    let host = Host::start(&data);
    assert_eq!(host.plugin("notes")["state"], "loaded");
    assert_eq!(host.get("/notes/v1/notes").status, 200);
}
