//! A private plugin catalog: `plughost catalog build` indexes a folder of
//! packages (a broken one is named and left out) and signs the index; the
//! folder, served on loopback by a static web server (Python's
//! `http.server`) or read as a path, is what hosts list and install from
//! by name: install, upgrade, the installed and upgrade states, the
//! package's digest checked against the index, an entry pointing at
//! another plugin's package refused, the index's signature against the
//! trusted keys, a catalog that cannot be read named, and the install
//! reaching a second instance on the same database. An FBA market index
//! converts with the jq line the docs give, and its Git entry installs.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use e2e::{
    Backend, DataDir, Host, TestDatabase, author_cli, cli, eventually, free_port, greeter,
    greeter_version, key_pair, plugin_api_version, zip_of,
};
use serde_json::Value;

/// A static web server for `dir` on loopback, stopped when dropped.
struct StaticServer {
    child: Child,
    url: String,
}

impl StaticServer {
    fn start(dir: &Path) -> Self {
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1"])
            .arg(port.to_string())
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let up = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "the static server did not start");
        Self {
            child,
            url: format!("http://127.0.0.1:{port}/"),
        }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Signs `folder`'s index.json as a publisher with the secret key file
/// `key` would (minisign, the catalog's trusted comment).
fn sign_index(key: &str, folder: &Path) {
    let text = std::fs::read_to_string(key).unwrap();
    let secret = minisign::SecretKeyBox::from_string(&text)
        .unwrap()
        .into_unencrypted_secret_key()
        .unwrap();
    let index = std::fs::read(folder.join("index.json")).unwrap();
    let signature = minisign::sign(
        None,
        &secret,
        std::io::Cursor::new(index),
        Some("plughost-catalog format=1"),
        None,
    )
    .unwrap();
    std::fs::write(folder.join("index.json.minisig"), signature.into_string()).unwrap();
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The catalog listing's entry for `name`.
fn listed(host: &Host, name: &str) -> Value {
    let reply = host.get("/admin/v1/sys/plugin-catalog");
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    reply.data()["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed: {:?}", reply.json))
}

fn build(dir: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["catalog", "build", dir.to_str().unwrap()];
    args.extend_from_slice(extra);
    author_cli(&[], &args)
}

#[test]
fn a_signed_catalog_on_loopback_lists_installs_and_upgrades_by_name() {
    let work = tempfile::tempdir().unwrap();
    let (key, key_id) = key_pair(work.path(), "catalog.key", &[], &["--no-password"]);
    let public = format!("{key}.pub");
    let folder = work.path().join("catalog");
    std::fs::create_dir(&folder).unwrap();
    let (v1, v2) = (greeter(1), greeter(2));
    std::fs::write(folder.join("greeter-1.0.0.zip"), &v1).unwrap();
    std::fs::write(folder.join("greeter-2.0.0.zip"), &v2).unwrap();
    // A package an install refuses: no library.
    std::fs::write(
        folder.join("broken.zip"),
        zip_of(&[
            ("broken/plugin.toml", b"[plugin]\nsummary = \"b\"\nversion = \"1.0.0\"\ndescription = \"b\"\nauthor = \"b\"\n".to_vec()),
            ("broken/README.md", b"# broken\n".to_vec()),
        ]),
    )
    .unwrap();

    // Built: the broken package named and left out, the rest indexed.
    let (ok, out) = build(&folder, &["--sign", &key]);
    assert!(!ok && out.contains("left out broken.zip"), "{out}");
    std::fs::remove_file(folder.join("broken.zip")).unwrap();
    let (ok, out) = build(&folder, &["--sign", &key]);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 entries") && out.contains(&format!("signed with key {key_id}")),
        "{out}"
    );
    let index: Value =
        serde_json::from_slice(&std::fs::read(folder.join("index.json")).unwrap()).unwrap();
    let entries = index["entries"].as_array().unwrap();
    assert_eq!(index["format"], 1);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["name"], "greeter");
    assert_eq!(entries[0]["plugin"]["version"], "2.0.0");
    assert_eq!(entries[1]["plugin"]["version"], "1.0.0");
    assert_eq!(entries[1]["package"]["url"], "greeter-1.0.0.zip");
    assert_eq!(entries[1]["package"]["sha256"], sha256_hex(&v1));
    assert_eq!(entries[1]["contract"], plugin_api_version());
    assert!(!entries[1]["plugin"]["summary"].as_str().unwrap().is_empty());
    assert!(folder.join("index.json.minisig").is_file());

    let server = StaticServer::start(&folder);
    let database = TestDatabase::create(Backend::Postgresql);
    let env = [
        ("PLUGHOST_CATALOG", server.url.as_str()),
        ("PLUGHOST_TRUSTED_KEYS", public.as_str()),
        (
            "PLUGHOST_JWT_SECRET",
            "a-shared-token-secret-of-at-least-32-chars",
        ),
    ];
    let (data_a, data_b) = (DataDir::new(), DataDir::new());
    let a = Host::start_on(&data_a, &database, &env);
    let b = Host::start_on(&data_b, &database, &env);

    let reply = a.get("/admin/v1/sys/plugin-catalog");
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    let source = &reply.data()["catalogs"][0];
    assert_eq!(source["signer"], key_id.as_str(), "{source}");
    assert_eq!(source["entries"], 2);
    assert!(source["error"].is_null());
    let greeter_entry = listed(&a, "greeter");
    assert_eq!(greeter_entry["plugin"]["version"], "2.0.0");
    assert_eq!(
        greeter_entry["versions"],
        serde_json::json!(["2.0.0", "1.0.0"])
    );
    assert_eq!(greeter_entry["compatible"], true);
    assert!(greeter_entry["installed"].is_null());
    assert!(greeter_entry["upgrade"].is_null());

    // Installed by name and version, on every instance.
    let reply = a.request(
        "POST",
        "/admin/v1/sys/plugins?type=catalog&name=greeter&version=1.0.0",
        None,
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(greeter_version(&a).as_deref(), Some("1"));
    assert!(
        eventually(Duration::from_secs(15), || greeter_version(&b).as_deref()
            == Some("1")),
        "{}",
        b.log()
    );
    let greeter_entry = listed(&a, "greeter");
    assert_eq!(greeter_entry["installed"], "1.0.0");
    assert_eq!(greeter_entry["upgrade"], "2.0.0");

    // Upgraded by name: the newest compatible version.
    let reply = a.request(
        "POST",
        "/admin/v1/sys/plugins?type=catalog&name=greeter",
        None,
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(
        reply.json["msg"]
            .as_str()
            .unwrap()
            .contains("upgraded from 1.0.0 to 2.0.0"),
        "{:?}",
        reply.json
    );
    assert_eq!(greeter_version(&a).as_deref(), Some("2"));
    let greeter_entry = listed(&a, "greeter");
    assert_eq!(greeter_entry["installed"], "2.0.0");
    assert!(greeter_entry["upgrade"].is_null());

    // What the catalogs do not offer, by name and by version.
    a.request(
        "POST",
        "/admin/v1/sys/plugins?type=catalog&name=nosuch",
        None,
    )
    .assert_error(404, "no configured catalog offers plugin 'nosuch'");
    a.request(
        "POST",
        "/admin/v1/sys/plugins?type=catalog&name=greeter&version=9.9.9",
        None,
    )
    .assert_error(404, "offer plugin 'greeter' in 2.0.0, 1.0.0, not 9.9.9");
    a.request("POST", "/admin/v1/sys/plugins?type=catalog", None)
        .assert_error(400, "type=catalog needs name");

    // A package changed after the catalog was built: refused before it is
    // opened, and nothing changes.
    std::fs::write(folder.join("greeter-1.0.0.zip"), &v2).unwrap();
    a.request(
        "POST",
        "/admin/v1/sys/plugins?type=catalog&name=greeter&version=1.0.0&force=true",
        None,
    )
    .assert_error(422, "the catalog's index says");
    assert_eq!(greeter_version(&a).as_deref(), Some("2"));

    // An entry (written by hand, signed again) pointing at another
    // plugin's package: refused before the install, naming both.
    let api_key = e2e::package("api_key", "api_key", "api_key");
    std::fs::write(folder.join("greeter-1.0.0.zip"), &api_key).unwrap();
    let mut forged: Value =
        serde_json::from_slice(&std::fs::read(folder.join("index.json")).unwrap()).unwrap();
    forged["entries"][1]["package"]["sha256"] = Value::from(sha256_hex(&api_key));
    let forged = serde_json::to_vec(&forged).unwrap();
    std::fs::write(folder.join("index.json"), &forged).unwrap();
    sign_index(&key, &folder);
    a.request(
        "POST",
        "/admin/v1/sys/plugins?type=catalog&name=greeter&version=1.0.0&force=true",
        None,
    )
    .assert_error(
        502,
        "entry 'greeter' 1.0.0 points at a package of plugin 'api_key'",
    );
    assert_eq!(greeter_version(&a).as_deref(), Some("2"));

    // An index changed after it was signed: refused, naming the signature.
    let text = std::fs::read_to_string(folder.join("index.json")).unwrap();
    std::fs::write(
        folder.join("index.json"),
        text.replace("\"2.0.0\"", "\"2.0.1\""),
    )
    .unwrap();
    let reply = a.get("/admin/v1/sys/plugin-catalog");
    assert_eq!(reply.status, 200);
    let error = reply.data()["catalogs"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("does not verify with trusted key"),
        "{error}"
    );
    assert_eq!(reply.data()["plugins"], serde_json::json!([]));
    a.request(
        "POST",
        "/admin/v1/sys/plugins?type=catalog&name=greeter",
        None,
    )
    .assert_error(404, "does not verify with trusted key");
    drop(server);
    // Gone: a clear error at once, not a hang.
    let started = std::time::Instant::now();
    let reply = a.get("/admin/v1/sys/plugin-catalog");
    let error = reply.data()["catalogs"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("cannot be reached"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_catalog_read_as_a_path_serves_the_cli_and_signatures_are_required_when_asked() {
    let work = tempfile::tempdir().unwrap();
    let folder: PathBuf = work.path().join("catalog");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("greeter-1.0.0.zip"), greeter(1)).unwrap();
    let (ok, out) = build(&folder, &["--base-url", "https://plugins.example/catalog/"]);
    assert!(ok && out.contains("unsigned"), "{out}");
    let index: Value =
        serde_json::from_slice(&std::fs::read(folder.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["entries"][0]["package"]["url"],
        "https://plugins.example/catalog/greeter-1.0.0.zip"
    );
    let (ok, out) = build(&folder, &["--base-url", "plugins.example"]);
    assert!(!ok && out.contains("not an http(s) URL"), "{out}");
    // Relative again, for the path below.
    let (ok, out) = build(&folder, &[]);
    assert!(ok, "{out}");
    let path = folder.display().to_string();

    // Search: by term, in a catalog given on the command line.
    let (ok, out) = author_cli(&[], &["plugin", "search", "greet", "--catalog", &path]);
    assert!(
        ok && out.contains("greeter") && out.contains("1.0.0"),
        "{out}"
    );
    let (ok, out) = author_cli(
        &[],
        &["plugin", "search", "no-such-term", "--catalog", &path],
    );
    assert!(ok && !out.contains("greeter "), "{out}");
    let (ok, out) = author_cli(&[], &["plugin", "search"]);
    assert!(!ok && out.contains("PLUGHOST_CATALOG"), "{out}");

    // Added by name with the CLI, from PLUGHOST_CATALOG.
    let data = DataDir::new();
    let env = [("PLUGHOST_CATALOG", path.clone())];
    let (ok, out) = cli(&data, &env, &["plugin", "add", "--catalog", "greeter"]);
    assert!(
        ok && out.contains("installed plugin 'greeter' 1.0.0"),
        "{out}"
    );
    let host = Host::start_with(&data, &[]);
    assert_eq!(greeter_version(&host).as_deref(), Some("1"));
    drop(host);

    // A host that requires signatures refuses the unsigned index.
    let strict = DataDir::new();
    let host = Host::start_with(
        &strict,
        &[
            ("PLUGHOST_CATALOG", path.as_str()),
            ("PLUGHOST_REQUIRE_SIGNED", "true"),
        ],
    );
    let reply = host.get("/admin/v1/sys/plugin-catalog");
    let error = reply.data()["catalogs"][0]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("is not signed"), "{error}");
    drop(host);

    // A server that never answers, and an index past the size limit: a
    // clear error within the timeout, never a hang.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/", silent.local_addr().unwrap());
    let huge = work.path().join("huge");
    std::fs::create_dir(&huge).unwrap();
    std::fs::write(huge.join("index.json"), vec![b' '; 9 * 1024 * 1024]).unwrap();
    let catalogs = format!("{silent_url},{}", huge.display());
    let host = Host::start_with(
        &strict,
        &[
            ("PLUGHOST_CATALOG", catalogs.as_str()),
            ("PLUGHOST_CATALOG_TIMEOUT", "1"),
        ],
    );
    let started = std::time::Instant::now();
    let reply = host.get("/admin/v1/sys/plugin-catalog");
    assert!(started.elapsed() < Duration::from_secs(5));
    let errors: Vec<String> = reply.data()["catalogs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["error"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        errors[0].contains("no complete answer within 1 s"),
        "{errors:?}"
    );
    assert!(errors[1].contains("larger than the limit"), "{errors:?}");
    drop(silent);

    // A host without catalogs says how to configure one.
    let bare = DataDir::new();
    let host = Host::start_with(&bare, &[]);
    host.get("/admin/v1/sys/plugin-catalog")
        .assert_error(404, "PLUGHOST_CATALOG");
    // A catalog setting that is neither a URL nor a path stops the start.
    let (ok, out) = cli(
        &bare,
        &[("PLUGHOST_CATALOG", "ftp://plugins.example/".to_owned())],
        &["plugin", "list"],
    );
    assert!(
        !ok && out.contains("only http://, https:// and paths"),
        "{out}"
    );
}

/// The jq program docs/plugin-authoring.md gives for converting an FBA
/// market index, as written there.
fn documented_jq_program() -> String {
    let doc = std::fs::read_to_string(e2e::root().join("docs/plugin-authoring.md")).unwrap();
    let start = doc.find("jq '").expect("the jq line in the docs") + 4;
    let end = start
        + doc[start..]
            .find("' market.json")
            .expect("the end of the jq line");
    doc[start..end].to_owned()
}

#[test]
fn an_fba_market_index_converts_with_the_documented_jq_line_and_its_git_entry_installs() {
    // A repository holding a prebuilt greeter, tagged v1.
    let repo = tempfile::tempdir().unwrap();
    e2e::git(repo.path(), &["init", "-q"]);
    let source = e2e::source_dir("greeter_v1");
    std::fs::copy(source.join("plugin.toml"), repo.path().join("plugin.toml")).unwrap();
    std::fs::write(repo.path().join("README.md"), "# greeter\n").unwrap();
    std::fs::copy(
        e2e::library("greeter_v1"),
        repo.path().join("libgreeter.so"),
    )
    .unwrap();
    e2e::git(repo.path(), &["add", "."]);
    e2e::git(repo.path(), &["commit", "-qm", "build 1"]);
    e2e::git(repo.path(), &["tag", "v1"]);

    // FBA's market entry: the [plugin] table and git {url, branch, path}.
    let market = serde_json::json!([{
        "plugin": {
            "icon": "https://plugins.example/greeter.svg",
            "summary": "Greeter, build 1",
            "version": "1.0.0",
            "description": "A test plugin",
            "author": "plughost tests",
            "tags": ["other"],
            "database": ["mysql", "postgresql"]
        },
        "git": {"url": repo.path().display().to_string(), "branch": "v1", "path": "plugins/greeter"}
    }]);
    let folder = tempfile::tempdir().unwrap();
    let market_file = folder.path().join("market.json");
    std::fs::write(&market_file, market.to_string()).unwrap();
    let output = Command::new("jq")
        .arg(documented_jq_program())
        .arg(&market_file)
        .output()
        .expect("jq (scripts/test-deps installs it)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(folder.path().join("index.json"), &output.stdout).unwrap();
    let index: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(index["entries"][0]["name"], "greeter", "{index}");
    assert_eq!(index["entries"][0]["git"]["ref"], "v1", "{index}");

    let catalog = folder.path().display().to_string();
    let (_data, host) = e2e::serve_with(
        &[],
        &[
            ("PLUGHOST_CATALOG", catalog.as_str()),
            ("PLUGHOST_GIT_ALLOW_LOCAL", "true"),
        ],
    );
    let entry = listed(&host, "greeter");
    assert_eq!(entry["plugin"]["summary"], "Greeter, build 1");
    assert_eq!(entry["compatible"], true);
    assert!(entry["contract"].is_null());
    let reply = host.request(
        "POST",
        "/admin/v1/sys/plugins?type=catalog&name=greeter",
        None,
    );
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(greeter_version(&host).as_deref(), Some("1"));
    assert_eq!(host.plugin("greeter")["package"]["source"]["type"], "git");
    assert_eq!(listed(&host, "greeter")["installed"], "1.0.0");
}
