//! The plugin page (`/ui/`) and the docs page (`/docs/`) driven in a real
//! headless Chromium (Debian's `chromium` and `chromium-driver`) through
//! WebDriver: log in, see the bundled plugins, toggle one and see its route
//! answer 503, upload a package and see it listed and serving, see its
//! routes, uninstall it after confirming, read an error, and use a narrow
//! screen. The browser may reach 127.0.0.1 only, so a page that loaded
//! anything from another host would fail. Screenshots of the main states
//! go to `target/ui-screenshots/`.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

/// A chromedriver on a free loopback port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Self {
        let binary = std::env::var("PLUGHOST_TEST_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        assert!(
            std::path::Path::new(&binary).exists(),
            "{binary} is missing: install Debian's chromium and chromium-driver \
             (scripts/test does, as root) or set PLUGHOST_TEST_CHROMEDRIVER"
        );
        let port = e2e::free_port();
        let child = Command::new(&binary)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let ready = e2e::eventually(Duration::from_secs(20), || {
            ureq::get(&format!("{url}/status")).call().is_ok()
        });
        assert!(ready, "chromedriver did not answer on {url}");
        Self { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn browser(driver: &Driver) -> Client {
    let chromium =
        std::env::var("PLUGHOST_TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let profile = tempfile::tempdir().unwrap().keep();
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-quic", "--window-size=1280,1000",
                format!("--user-data-dir={}", profile.display()),
                // Only loopback resolves: anything from another host fails to load.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            ],
        },
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    ClientBuilder::native()
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

fn screenshots() -> PathBuf {
    let dir = e2e::root().join("target/ui-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn snap(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap();
}

/// Waits until `script` (a function body returning a value) returns true.
async fn until(client: &Client, what: &str, script: &str) {
    until_within(client, what, script, Duration::from_secs(20)).await;
}

async fn until_within(client: &Client, what: &str, script: &str, limit: Duration) {
    let started = Instant::now();
    loop {
        let value = client.execute(script, vec![]).await.unwrap();
        if value == Value::Bool(true) {
            return;
        }
        if started.elapsed() > limit {
            let page = client.source().await.unwrap_or_default();
            panic!("waited {limit:?} for {what}; the page:\n{page}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn click(client: &Client, css: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .click()
        .await
        .unwrap();
}

async fn type_into(client: &Client, id: &str, text: &str) {
    client
        .wait()
        .for_element(Locator::Id(id))
        .await
        .unwrap_or_else(|e| panic!("no #{id}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

async fn text_of(client: &Client, id: &str) -> String {
    client
        .find(Locator::Id(id))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Logs in as admin with the keyboard: type, then Enter submits.
async fn log_in(client: &Client) {
    type_into(client, "username", "admin").await;
    type_into(
        client,
        "password",
        &format!("{}\u{E007}", e2e::ADMIN_PASSWORD),
    )
    .await;
}

/// A browser on `base`'s plugin page, logged in as admin.
async fn page_logged_in(driver: &Driver, base: &str) -> Client {
    let client = browser(driver).await;
    client.goto(&format!("{base}/ui/")).await.unwrap();
    log_in(&client).await;
    client
}

/// The text of the table row whose `data-{kind}` is `name`.
async fn row_of(client: &Client, kind: &str, name: &str) -> String {
    client
        .find(Locator::Css(&format!("tr[data-{kind}='{name}']")))
        .await
        .unwrap_or_else(|_| panic!("no row for {kind} {name}"))
        .text()
        .await
        .unwrap()
}

async fn row_text(client: &Client, plugin: &str) -> String {
    row_of(client, "plugin", plugin).await
}

/// Every resource the page loaded came from `base`.
async fn assert_only_local_resources(client: &Client, base: &str) {
    let loaded = client
        .execute(
            "return performance.getEntriesByType('resource').map(e => e.name)\
             .concat([location.href]);",
            vec![],
        )
        .await
        .unwrap();
    for url in loaded.as_array().unwrap() {
        let url = url.as_str().unwrap();
        assert!(
            url.starts_with(base),
            "the page loaded {url} from another host"
        );
    }
}

#[test]
fn the_plugin_page_manages_plugins_in_a_real_browser() {
    let (_data, host) = e2e::serve_with(
        &["hello", "sysinfo", "dict", "ticker", "beacon"],
        &[("TICKER_JOB_MS", "60000")],
    );
    let driver = Driver::start();
    let base = host.base().to_owned();
    let package = tempfile::tempdir().unwrap();
    let greeter = package.path().join("greeter.zip");
    std::fs::write(&greeter, e2e::greeter(1)).unwrap();
    let junk = package.path().join("junk.zip");
    std::fs::write(&junk, b"this is not a zip archive").unwrap();

    e2e::runtime().block_on(async {
        let client = browser(&driver).await;
        client.goto(&format!("{base}/ui")).await.unwrap();
        assert_eq!(client.current_url().await.unwrap().path(), "/ui/");

        log_in(&client).await;
        until(
            &client,
            "the bundled plugins",
            "return ['hello', 'sysinfo', 'dict'].every(n => \
             document.querySelector(`tr[data-plugin='${n}'] .state-loaded`));",
        )
        .await;
        let dict = row_text(&client, "dict").await;
        assert!(
            dict.contains("0.1.0") && dict.contains("extend (admin)") && dict.contains("unsigned"),
            "{dict}"
        );
        assert!(row_text(&client, "hello").await.contains("app"));
        // What a plugin does in time and may reach: its job, its hosts; a
        // plugin without routes is a capability.
        let ticker = row_text(&client, "ticker").await;
        assert!(
            ticker.contains("1 job")
                && ticker.contains("may reach 127.0.0.1")
                && ticker.contains("uses identity: users:read, users:create"),
            "{ticker}"
        );
        click(&client, "tr[data-plugin='ticker'] details.jobs summary").await;
        let ticker = row_text(&client, "ticker").await;
        // (A run may fall within the test: the last run is not asserted.)
        assert!(
            ticker.contains("count every 1m, once per tick in the cluster;")
                && ticker.contains("; next run 20"),
            "{ticker}"
        );
        assert!(row_text(&client, "beacon").await.contains("capability"));
        assert_only_local_resources(&client, &base).await;
        // Every state and signer reads whole in a 1280 px window.
        until(&client, "states on one line each", STATES_WHOLE).await;
        snap(&client, "1-plugins").await;

        // Toggle hello off: the page shows it disabled, its route answers 503.
        click(&client, "tr[data-plugin='hello'] button.toggle").await;
        until(
            &client,
            "hello disabled",
            "return !!document.querySelector(\"tr[data-plugin='hello'] .state-disabled\");",
        )
        .await;
        host.get("/hello/v1/greet")
            .assert_error(503, "plugin 'hello' is disabled");
        assert!(row_text(&client, "hello").await.contains("Enable"));
        snap(&client, "2-hello-disabled").await;

        // Upload a package: listed, serving, with its routes.
        type_into(&client, "upload-file", greeter.to_str().unwrap()).await;
        click(&client, "#upload-form button[type=submit]").await;
        until(
            &client,
            "greeter listed",
            "return !!document.querySelector(\"tr[data-plugin='greeter'] .state-loaded\");",
        )
        .await;
        let message = text_of(&client, "message").await;
        assert!(
            message.contains("plugin 'greeter' 1.0.0 installed"),
            "{message}"
        );
        assert_eq!(e2e::greeter_version(&host).as_deref(), Some("1"));
        click(&client, "tr[data-plugin='greeter'] details summary").await;
        let routes = row_text(&client, "greeter").await;
        assert!(routes.contains("GET /greeter/v1/version"), "{routes}");
        assert!(routes.contains("Which build answers (build 1)"), "{routes}");
        snap(&client, "3-greeter-installed").await;

        // An error is shown as the envelope's msg.
        type_into(&client, "upload-file", junk.to_str().unwrap()).await;
        click(&client, "#upload-form button[type=submit]").await;
        until(
            &client,
            "the error",
            "return !document.getElementById('error').hidden;",
        )
        .await;
        let shown = text_of(&client, "error").await;
        let answered = host.upload(b"this is not a zip archive", "type=zip");
        assert_eq!(shown, answered.json["msg"].as_str().unwrap());
        snap(&client, "4-error").await;

        // Uninstall, after confirming in the dialog.
        click(&client, "tr[data-plugin='greeter'] button.uninstall").await;
        let confirm = client
            .wait()
            .for_element(Locator::Id("confirm-yes"))
            .await
            .unwrap();
        let question = text_of(&client, "confirm-text").await;
        assert!(question.contains("Uninstall 'greeter'"), "{question}");
        snap(&client, "5-confirm-uninstall").await;
        confirm.click().await.unwrap();
        until(
            &client,
            "greeter gone",
            "return !document.querySelector(\"tr[data-plugin='greeter']\");",
        )
        .await;
        assert_eq!(host.get("/greeter/v1/version").status, 404);

        // A narrow screen: plugins as cards, nothing wider than the viewport.
        client.set_window_size(390, 900).await.unwrap();
        until(
            &client,
            "a narrow layout",
            "return innerWidth <= 640 \
             && document.documentElement.scrollWidth <= document.documentElement.clientWidth \
             && getComputedStyle(document.querySelector('#plugins tbody tr')).display === 'block' \
             && ![...document.querySelectorAll('main *')] \
                .some(e => e.getBoundingClientRect().right > innerWidth + 1);",
        )
        .await;
        snap(&client, "6-narrow").await;

        // The docs page renders the document, from this host alone.
        client.set_window_size(1280, 1000).await.unwrap();
        client.goto(&format!("{base}/docs/")).await.unwrap();
        until(
            &client,
            "Swagger UI with the plugin routes",
            "return [...document.querySelectorAll('.opblock-summary-path')]\
             .some(e => e.textContent.includes('/admin/v1/sys/dict-types'));",
        )
        .await;
        assert_only_local_resources(&client, &base).await;
        snap(&client, "7-docs").await;

        client.close().await.unwrap();
    });
}

/// Whether every state and signer on the page reads on one line (a
/// narrow column must not split "unsigned" or "disabled" mid-word).
const STATES_WHOLE: &str = "return [...document.querySelectorAll('.state, .signer, .catalog-state')]\
    .every(e => { const r = document.createRange(); r.selectNodeContents(e); \
    return r.getClientRects().length === 1; });";

#[test]
fn the_plugin_page_browses_the_catalog_and_installs_and_upgrades_from_it() {
    let folder = tempfile::tempdir().unwrap();
    for (file, bytes) in [
        ("greeter-1.0.0.zip", e2e::greeter(1)),
        ("greeter-2.0.0.zip", e2e::greeter(2)),
        (
            "api_key-0.1.0.zip",
            e2e::package("api_key", "api_key", "api_key"),
        ),
    ] {
        std::fs::write(folder.path().join(file), bytes).unwrap();
    }
    let (ok, out) = e2e::author_cli(&[], &["catalog", "build", folder.path().to_str().unwrap()]);
    assert!(ok, "{out}");
    let catalog = folder.path().display().to_string();
    let (_data, host) = e2e::serve_with(&["hello"], &[("PLUGHOST_CATALOG", &catalog)]);
    // Installed before the page opens: the catalog offers an upgrade.
    assert_eq!(host.upload(&e2e::greeter(1), "type=zip").status, 200);
    let driver = Driver::start();
    let base = host.base().to_owned();

    e2e::runtime().block_on(async {
        let client = page_logged_in(&driver, &base).await;
        until(
            &client,
            "the catalog",
            "return !!document.querySelector(\"tr[data-entry='greeter']\") \
             && !!document.querySelector(\"tr[data-entry='api_key']\");",
        )
        .await;
        let greeter = row_of(&client, "entry", "greeter").await;
        assert!(
            greeter.contains("Greeter, build 2")
                && greeter.contains("2.0.0")
                && greeter.contains("by plughost tests")
                && greeter.contains("unsigned")
                && greeter.contains("1.0.0 installed, 2.0.0 offered")
                && greeter.contains("Upgrade to 2.0.0"),
            "{greeter}"
        );
        let api_key = row_of(&client, "entry", "api_key").await;
        assert!(
            api_key.contains("auth")
                && api_key.contains("not installed")
                && api_key.contains("Install"),
            "{api_key}"
        );
        let note = text_of(&client, "catalog-note").await;
        assert!(note.contains("index unsigned"), "{note}");
        // Every state reads whole in a 1280 px window.
        until(&client, "states on one line each", STATES_WHOLE).await;
        snap(&client, "8-catalog").await;

        // Search by tag, then by name.
        type_into(&client, "catalog-search", "auth").await;
        until(
            &client,
            "only api_key",
            "return document.querySelectorAll('#catalog tbody tr').length === 1 \
             && !!document.querySelector(\"tr[data-entry='api_key']\");",
        )
        .await;
        client
            .find(Locator::Id("catalog-search"))
            .await
            .unwrap()
            .clear()
            .await
            .unwrap();
        type_into(&client, "catalog-search", "GREET").await;
        until(
            &client,
            "only greeter",
            "return document.querySelectorAll('#catalog tbody tr').length === 1 \
             && !!document.querySelector(\"tr[data-entry='greeter']\");",
        )
        .await;

        // Upgrade from the catalog: the new build serves.
        click(&client, "tr[data-entry='greeter'] button.upgrade").await;
        until(
            &client,
            "greeter upgraded",
            "return (document.querySelector(\"tr[data-entry='greeter']\") || {}).textContent \
             ?.includes('2.0.0 installed');",
        )
        .await;
        let message = text_of(&client, "message").await;
        assert!(
            message.contains("upgraded from 1.0.0 to 2.0.0"),
            "{message}"
        );
        assert_eq!(e2e::greeter_version(&host).as_deref(), Some("2"));
        assert!(
            !row_of(&client, "entry", "greeter")
                .await
                .contains("Upgrade"),
        );

        // Uninstalled elsewhere: Install puts the newest back.
        assert_eq!(
            host.request("DELETE", "/admin/v1/sys/plugins/greeter", None)
                .status,
            200
        );
        click(&client, "#catalog-refresh").await;
        until(
            &client,
            "greeter installable",
            "return !!document.querySelector(\"tr[data-entry='greeter'] button.install\");",
        )
        .await;
        click(&client, "tr[data-entry='greeter'] button.install").await;
        until(
            &client,
            "greeter installed",
            "return document.getElementById('message').textContent \
             .includes(\"plugin 'greeter' 2.0.0 installed\") \
             && !!document.querySelector(\"tr[data-plugin='greeter'] .state-loaded\");",
        )
        .await;
        assert_eq!(e2e::greeter_version(&host).as_deref(), Some("2"));
        until(&client, "states on one line each", STATES_WHOLE).await;
        assert_only_local_resources(&client, &base).await;
        snap(&client, "9-catalog-installed").await;
        client.close().await.unwrap();
    });
}

#[test]
fn the_plugin_page_installs_from_git_showing_the_build_output() {
    // A plugin crate from `plugin new`, committed to a local repository.
    let repo = tempfile::tempdir().unwrap();
    let crate_dir = e2e::scaffolded_repository(repo.path(), "pagedemo", "app");
    let build_dir = e2e::root().join("target").join("plugin-builds");
    let build_dir = build_dir.display().to_string();
    let (_data, host) = e2e::serve_with(
        &["hello"],
        &[
            ("PLUGHOST_GIT_ALLOW_LOCAL", "true"),
            ("PLUGHOST_BUILD_DIR", &build_dir),
        ],
    );
    let driver = Driver::start();
    let base = host.base().to_owned();

    e2e::runtime().block_on(async {
        let client = page_logged_in(&driver, &base).await;
        client
            .wait()
            .for_element(Locator::Css("tr[data-plugin='hello']"))
            .await
            .unwrap();
        type_into(
            &client,
            "git-url",
            &format!("file://{}", crate_dir.display()),
        )
        .await;
        click(&client, "#git-form button[type=submit]").await;
        // cargo's own lines appear while the install runs or at its end.
        until_within(
            &client,
            "cargo's output in the page",
            "return document.getElementById('git-build').textContent.includes('Finished');",
            Duration::from_secs(300),
        )
        .await;
        until_within(
            &client,
            "pagedemo listed",
            "return !!document.querySelector(\"tr[data-plugin='pagedemo'] .state-loaded\");",
            Duration::from_secs(60),
        )
        .await;
        snap(&client, "8-git-installed").await;
        client.close().await.unwrap();
    });
    let build = host.get("/admin/v1/sys/plugin-build");
    let build = build.data();
    assert_eq!(build["running"], false);
    assert!(
        build["crate_dir"].as_str().unwrap().ends_with(".clone"),
        "{build}"
    );
    let lines: Vec<&str> = build["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("Compiling pagedemo")),
        "{lines:?}"
    );
    assert!(lines.last().unwrap().contains("Finished"), "{lines:?}");
}

#[test]
fn the_plugin_page_manages_users_and_roles_in_a_real_browser() {
    let (_data, host) = e2e::serve(&["dict"]);
    let driver = Driver::start();
    let base = host.base().to_owned();
    e2e::runtime().block_on(async {
        let client = page_logged_in(&driver, &base).await;
        until(
            &client,
            "the admin in the users view",
            "return !!document.querySelector(\"tr[data-user='admin']\");",
        )
        .await;
        // The permissions there are to grant, the host's and each plugin's.
        click(&client, "#known-permissions summary").await;
        let known = text_of(&client, "known-permissions").await;
        assert!(
            known.contains("host: sys:metrics:read")
                && known.contains("dict: sys:dict:add, sys:dict:del, sys:dict:edit"),
            "{known}"
        );
        assert!(row_of(&client, "user", "admin").await.contains("superuser"));

        // A role, then its permissions, typed and saved.
        type_into(&client, "new-role", "editor\u{E007}").await;
        until(
            &client,
            "the new role",
            "return !!document.querySelector(\"tr[data-role='editor']\");",
        )
        .await;
        let permissions = client
            .find(Locator::Css("tr[data-role='editor'] input"))
            .await
            .unwrap();
        permissions
            .send_keys("sys:dict:add, sys:dict:edit\u{E007}")
            .await
            .unwrap();
        until(
            &client,
            "the role's permissions saved",
            "return document.querySelector('#message').textContent\
             .includes(\"Role 'editor' holds sys:dict:add, sys:dict:edit\");",
        )
        .await;
        let role = host.get("/admin/v1/sys/roles").data().clone();
        assert_eq!(role[0]["permissions"], json!(["sys:dict:add", "sys:dict:edit"]));

        // A user with that role, from the form.
        type_into(&client, "new-username", "bob").await;
        type_into(&client, "new-password", "password-of-bob").await;
        type_into(&client, "new-roles", "editor\u{E007}").await;
        until(
            &client,
            "bob listed with his role",
            "return !!document.querySelector(\"tr[data-user='bob']\") \
             && document.querySelector(\"tr[data-user='bob'] input\").value === 'editor';",
        )
        .await;
        assert!(row_of(&client, "user", "bob").await.contains("active"));
        let token = host.token("bob", "password-of-bob");
        snap(&client, "8-users").await;

        // Disabled from the page: his token is refused at once.
        click(&client, "tr[data-user='bob'] button.user-toggle").await;
        until(
            &client,
            "bob disabled",
            "return document.querySelector(\"tr[data-user='bob'] .state\").textContent === 'disabled';",
        )
        .await;
        let refused = host.request_as(
            e2e::As::Header(&format!("Bearer {token}")),
            "GET",
            "/admin/v1/sys/plugins",
            None,
        );
        assert_eq!(refused.status, 401);

        // A refusal reads as the API says it.
        click(&client, "tr[data-user='admin'] button.user-delete").await;
        click(&client, "#confirm-yes").await;
        until(
            &client,
            "the refusal to delete oneself",
            "return document.querySelector('#error').textContent\
             .includes('you cannot delete your own account');",
        )
        .await;

        // Deleted after confirming.
        click(&client, "tr[data-user='bob'] button.user-delete").await;
        assert_eq!(text_of(&client, "confirm-yes").await, "Delete");
        click(&client, "#confirm-yes").await;
        until(
            &client,
            "bob gone",
            "return !document.querySelector(\"tr[data-user='bob']\");",
        )
        .await;
        assert_eq!(host.get("/admin/v1/sys/users").data()["total"], 1);
        assert_only_local_resources(&client, &base).await;
        client.close().await.unwrap();
    });
}
