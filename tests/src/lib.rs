//! End-to-end test harness: runs the real `plughost` binary on a free
//! loopback port with a temporary data dir and talks HTTP to it.
//!
//! The binary and the plugin libraries must be built first
//! (`scripts/test` does: `cargo build --workspace` and `scripts/build-fixtures`).

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use serde_json::Value;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from)
}

fn must_exist(path: PathBuf) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: build first with scripts/test (or cargo build --workspace && scripts/build-fixtures)",
        path.display()
    );
    path
}

/// A binary built into the debug target dir (`plughost`, or the
/// `plughost-next` fixture built against plugin-api 1.1).
pub fn binary(name: &str) -> PathBuf {
    must_exist(target_dir().join("debug").join(name))
}

/// The built library of plugin `name` (workspace plugins and fixtures).
pub fn library(name: &str) -> PathBuf {
    must_exist(target_dir().join("debug").join(format!("lib{name}.so")))
}

/// The source directory (plugin.toml, README.md) of plugin `name`.
pub fn source_dir(name: &str) -> PathBuf {
    let bundled = root().join("plugins").join(name);
    if bundled.is_dir() {
        return bundled;
    }
    must_exist(
        root()
            .join("tests")
            .join("fixtures")
            .join("plugins")
            .join(name),
    )
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy file");
        }
    }
}

/// The plugin dir's lock file, which every plugin operation takes.
pub const LOCK_FILE: &str = ".lifecycle.lock";

/// A temporary data dir with a plugin dir inside.
pub struct DataDir {
    dir: tempfile::TempDir,
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDir {
    /// A new, empty data dir.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("plugin dir");
        Self { dir }
    }

    /// The data dir.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The plugin dir.
    pub fn plugins(&self) -> PathBuf {
        self.dir.path().join("plugins")
    }

    /// What an operation left in the plugin dir: its hidden entries
    /// (staging directories, temporary files) but the plugin dir's lock
    /// file, which stays.
    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir(self.plugins())
            .expect("plugin dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with('.') && f != LOCK_FILE)
            .collect()
    }

    /// Installs plugin `name` as a directory: plugin.toml, README.md, library.
    pub fn install_dir(&self, name: &str) -> PathBuf {
        let dir = self.plugins().join(name);
        std::fs::create_dir_all(&dir).expect("plugin subdir");
        let src = source_dir(name);
        for file in ["plugin.toml", "README.md"] {
            let from = src.join(file);
            if from.exists() {
                std::fs::copy(&from, dir.join(file)).expect("copy plugin file");
            } else {
                std::fs::write(dir.join(file), format!("# {name}\n")).expect("write README");
            }
        }
        std::fs::copy(library(name), dir.join(format!("lib{name}.so"))).expect("copy library");
        let sql = src.join("sql");
        if sql.is_dir() {
            copy_tree(&sql, &dir.join("sql"));
        }
        dir
    }

    /// Drops plugin `name`'s library into the plugin dir as a lone file.
    pub fn drop_library(&self, name: &str) {
        std::fs::copy(library(name), self.plugins().join(format!("lib{name}.so")))
            .expect("copy library");
    }

    /// Writes a plugin directory with the given manifest and a README, no library.
    pub fn write_manifest_only(&self, name: &str, manifest: &str) {
        let dir = self.plugins().join(name);
        std::fs::create_dir_all(&dir).expect("plugin subdir");
        std::fs::write(dir.join("plugin.toml"), manifest).expect("write manifest");
        std::fs::write(dir.join("README.md"), "# fixture\n").expect("write README");
    }
}

/// An HTTP answer: status and parsed JSON body (`Value::Null` if not JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body as JSON.
    pub json: Value,
    /// The `x-request-id` header, if any.
    pub request_id: Option<String>,
    /// The `retry-after` header, if any.
    pub retry_after: Option<String>,
}

impl Reply {
    fn from_response(response: ureq::Response) -> Self {
        let status = response.status();
        let request_id = response.header("x-request-id").map(str::to_owned);
        let retry_after = response.header("retry-after").map(str::to_owned);
        let text = response.into_string().unwrap_or_default();
        Self {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            request_id,
            retry_after,
        }
    }

    /// Asserts the envelope of an error: `code` equals the status, `msg`
    /// contains `needle`, `data` is null and a trace id is present.
    pub fn assert_error(&self, status: u16, needle: &str) {
        assert_eq!(self.status, status, "{:?}", self.json);
        assert_eq!(self.json["code"], status, "{:?}", self.json);
        assert!(self.json["data"].is_null(), "{:?}", self.json);
        let msg = self.json["msg"].as_str().unwrap_or_default();
        assert!(
            msg.contains(needle),
            "message {msg:?} should contain {needle:?}"
        );
        let trace = self.json["trace_id"].as_str().expect("trace_id on errors");
        assert_eq!(
            self.request_id.as_deref(),
            Some(trace),
            "x-request-id carries the trace id"
        );
    }

    /// Asserts a 200 envelope and returns its `data`.
    pub fn data(&self) -> &Value {
        assert_eq!(self.status, 200, "{:?}", self.json);
        assert_eq!(self.json["code"], 200, "{:?}", self.json);
        assert_eq!(self.json["msg"], "Request success");
        &self.json["data"]
    }
}

/// The password the harness gives the `admin` superuser.
pub const ADMIN_PASSWORD: &str = "admin-test-password";

/// Who a request is sent as.
#[derive(Debug, Clone, Copy)]
pub enum As<'a> {
    /// The `admin` superuser (a token from logging in once).
    Admin,
    /// No `Authorization` header.
    Anonymous,
    /// This `Authorization` header value, as is.
    Header(&'a str),
}

/// A running `plughost serve`.
pub struct Host {
    child: Option<Child>,
    base: String,
    log: Arc<Mutex<String>>,
    agent: ureq::Agent,
    admin_token: std::sync::OnceLock<String>,
}

impl Host {
    /// Starts the host on `data` with extra environment variables.
    pub fn start_with(data: &DataDir, env: &[(&str, &str)]) -> Self {
        Self::start_binary("plughost", data, env)
    }

    /// Starts the host on `data` and `database`, with extra environment.
    pub fn start_on(data: &DataDir, database: &TestDatabase, env: &[(&str, &str)]) -> Self {
        let db_env = database.env();
        let mut all: Vec<(&str, &str)> = db_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        all.extend_from_slice(env);
        Self::start_binary("plughost", data, &all)
    }

    /// Starts the binary `name` (see [`binary`]) on `data`, with two HTTP
    /// workers unless `env` sets `PLUGHOST_WORKERS`.
    pub fn start_binary(name: &str, data: &DataDir, env: &[(&str, &str)]) -> Self {
        let workers = env
            .iter()
            .find(|(k, _)| *k == "PLUGHOST_WORKERS")
            .map_or("2", |(_, v)| *v);
        let mut command = Command::new(binary(name));
        command
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--workers",
                workers,
                "--data-dir",
            ])
            .arg(data.path())
            .env("PLUGHOST_LOG", "info")
            .env("PLUGHOST_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env_remove("PLUGHOST_CONFIG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn plughost");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                let mut log = sink.lock().expect("log lock");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "plughost did not start listening:\n{}",
                    log.lock().expect("log")
                );
            }
        };
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(30))
            .build();
        Self {
            child: Some(child),
            base: format!("http://{addr}"),
            log,
            agent,
            admin_token: std::sync::OnceLock::new(),
        }
    }

    /// Starts the host on `data`.
    pub fn start(data: &DataDir) -> Self {
        Self::start_with(data, &[])
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Everything the host logged so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    fn send(&self, request: ureq::Request, body: Option<&Value>) -> Reply {
        let result = match body {
            Some(json) => request.send_json(json),
            None => request.call(),
        };
        match result {
            Ok(response) | Err(ureq::Error::Status(_, response)) => Reply::from_response(response),
            Err(e) => panic!("request failed: {e}\nhost log:\n{}", self.log()),
        }
    }

    fn admin_header(&self) -> String {
        let token = self
            .admin_token
            .get_or_init(|| self.token("admin", ADMIN_PASSWORD));
        format!("Bearer {token}")
    }

    /// Uploads `archive` as the multipart field `file` to
    /// `POST /admin/v1/sys/plugins?{query}`, as the admin.
    pub fn upload(&self, archive: &[u8], query: &str) -> Reply {
        let boundary = "plughost-test-boundary-7d1c9a";
        let mut body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"plugin.zip\"\r\n\
             Content-Type: application/zip\r\n\r\n"
        )
        .into_bytes();
        body.extend_from_slice(archive);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let request = self
            .agent
            .post(&format!("{}/admin/v1/sys/plugins?{query}", self.base))
            .set("Authorization", &self.admin_header())
            .set(
                "Content-Type",
                &format!("multipart/form-data; boundary={boundary}"),
            );
        match request.send_bytes(&body) {
            Ok(response) | Err(ureq::Error::Status(_, response)) => Reply::from_response(response),
            Err(e) => panic!("upload failed: {e}\nhost log:\n{}", self.log()),
        }
    }

    /// `GET path` as the admin, raw: status, content type, content
    /// disposition, body.
    pub fn download(&self, path: &str) -> (u16, String, String, Vec<u8>) {
        let request = self
            .agent
            .get(&format!("{}{path}", self.base))
            .set("Authorization", &self.admin_header());
        match request.call() {
            Ok(response) | Err(ureq::Error::Status(_, response)) => {
                let status = response.status();
                let kind = response.content_type().to_owned();
                let disposition = response
                    .header("content-disposition")
                    .unwrap_or_default()
                    .to_owned();
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut response.into_reader(), &mut body)
                    .expect("read body");
                (status, kind, disposition, body)
            }
            Err(e) => panic!("download failed: {e}"),
        }
    }

    /// Logs in and returns the access token.
    pub fn login(&self, username: &str, password: &str) -> Reply {
        self.request_as(
            As::Anonymous,
            "POST",
            "/admin/v1/auth/login",
            Some(&serde_json::json!({"username": username, "password": password})),
        )
    }

    /// A token of `username`, or a panic naming why login failed.
    pub fn token(&self, username: &str, password: &str) -> String {
        let reply = self.login(username, password);
        reply.data()["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// A request sent as `who`.
    pub fn request_as(&self, who: As<'_>, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let mut request = self.agent.request(method, &format!("{}{path}", self.base));
        match who {
            As::Admin => request = request.set("Authorization", &self.admin_header()),
            As::Header(value) => request = request.set("Authorization", value),
            As::Anonymous => {}
        }
        self.send(request, body)
    }

    /// A request with any method and an optional JSON body; requests to
    /// the admin app are sent as the `admin` superuser.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let who = if path.starts_with("/admin/v1/") {
            As::Admin
        } else {
            As::Anonymous
        };
        self.request_as(who, method, path, body)
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None)
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, Some(body))
    }

    /// `PUT path` without a body.
    pub fn put(&self, path: &str) -> Reply {
        self.request("PUT", path, None)
    }

    /// The list endpoint's entry for `name`.
    pub fn plugin(&self, name: &str) -> Value {
        let list = self.get("/admin/v1/sys/plugins");
        list.data()
            .as_array()
            .expect("list is an array")
            .iter()
            .find(|p| p["plugin"]["name"] == name)
            .unwrap_or_else(|| panic!("plugin {name} not listed: {:?}", list.json))
            .clone()
    }

    /// What every instance reported about plugin `name`, as this host
    /// lists it: (instance id, state, version); empty when it is not listed.
    pub fn instances(&self, name: &str) -> Vec<(String, String, String)> {
        let list = self.get("/admin/v1/sys/plugins");
        let entry = list
            .data()
            .as_array()
            .expect("list is an array")
            .iter()
            .find(|p| p["plugin"]["name"] == name)
            .cloned()
            .unwrap_or(Value::Null);
        entry["instances"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|i| {
                        let text = |key: &str| i[key].as_str().unwrap_or_default().to_owned();
                        (text("id"), text("state"), text("version"))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The process id of the running host.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the process with SIGKILL, as a crash would (it is reaped when
    /// the `Host` is dropped).
    pub fn kill(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-KILL", &child.id().to_string()])
                .status();
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    /// Sends SIGTERM, waits for the process to exit, and answers how it
    /// exited and everything it logged (its last line included).
    pub fn stop_and_log(mut self) -> (ExitStatus, String) {
        let status = self.terminate();
        // The reader thread takes the last lines after the exit.
        eventually(Duration::from_secs(5), || self.log().contains("stopped"));
        (status, self.log())
    }

    /// The Prometheus text of `/metrics`, read as the admin.
    pub fn metrics(&self) -> String {
        let response = self
            .agent
            .get(&format!("{}/metrics", self.base))
            .set("Authorization", &self.admin_header())
            .call()
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\nhost log:\n{}", self.log()));
        response.into_string().expect("metrics text")
    }

    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("host running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for plughost") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("plughost did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A data dir with plugins `names` installed as directories, and a host
/// serving it with extra environment variables `env`.
pub fn serve_with(names: &[&str], env: &[(&str, &str)]) -> (DataDir, Host) {
    let data = DataDir::new();
    for name in names {
        data.install_dir(name);
    }
    let host = Host::start_with(&data, env);
    (data, host)
}

/// [`serve_with`] without extra environment.
pub fn serve(names: &[&str]) -> (DataDir, Host) {
    serve_with(names, &[])
}

/// A database backend the suite runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The default: a SQLite file in the data dir.
    Sqlite,
    /// The server at `PLUGHOST_TEST_POSTGRES_URL`.
    Postgresql,
    /// The server at `PLUGHOST_TEST_MYSQL_URL`.
    Mysql,
}

impl Backend {
    /// The backend's name, as the host and script paths spell it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgresql => "postgresql",
            Self::Mysql => "mysql",
        }
    }
}

/// The string at JSON `pointer` (e.g. `/plugin/name`) of every element of
/// the array `rows`; panics naming the pointer when one is missing.
pub fn strings(rows: &Value, pointer: &str) -> Vec<String> {
    rows.as_array()
        .unwrap_or_else(|| panic!("not an array: {rows}"))
        .iter()
        .map(|row| {
            row.pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("no string at {pointer} in {row}"))
                .to_owned()
        })
        .collect()
}

/// Every backend, SQLite first.
pub const BACKENDS: [Backend; 3] = [Backend::Sqlite, Backend::Postgresql, Backend::Mysql];

fn server_url(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the suite with scripts/test, which starts PostgreSQL and MariaDB on loopback")
    })
}

/// A fresh, empty database for one test, dropped afterwards.
pub struct TestDatabase {
    /// Its backend.
    pub backend: Backend,
    url: Option<String>,
    name: String,
}

impl TestDatabase {
    /// Creates a database on `backend`'s server (SQLite needs nothing).
    pub fn create(backend: Backend) -> Self {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("plughost_test_{}_{n}", std::process::id());
        let url = match backend {
            Backend::Sqlite => None,
            Backend::Postgresql => {
                let server = server_url("PLUGHOST_TEST_POSTGRES_URL");
                run_sql_client(backend, &server, &format!("CREATE DATABASE {name}"));
                Some(format!("{server}/{name}"))
            }
            Backend::Mysql => {
                let server = server_url("PLUGHOST_TEST_MYSQL_URL");
                run_sql_client(backend, &server, &format!("CREATE DATABASE {name}"));
                Some(format!("{server}/{name}"))
            }
        };
        Self { backend, url, name }
    }

    /// The environment that points the host at this database.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.url
            .iter()
            .map(|url| ("DATABASE_URL", url.clone()))
            .collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (var, backend) = match self.backend {
            Backend::Sqlite => return,
            Backend::Postgresql => ("PLUGHOST_TEST_POSTGRES_URL", self.backend),
            Backend::Mysql => ("PLUGHOST_TEST_MYSQL_URL", self.backend),
        };
        if let Ok(server) = std::env::var(var) {
            run_sql_client(
                backend,
                &server,
                &format!("DROP DATABASE IF EXISTS {}", self.name),
            );
        }
    }
}

impl TestDatabase {
    /// What `sql` selects in this PostgreSQL database, one row per line,
    /// columns separated by `|`.
    pub fn select(&self, sql: &str) -> String {
        assert_eq!(self.backend, Backend::Postgresql, "select reads PostgreSQL");
        let url = self.url.as_deref().expect("a PostgreSQL URL");
        let output = Command::new("psql")
            .arg(url)
            .args(["-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "{sql} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Closes every connection to this database from the server's side
    /// (what a database restart or failover does to a host's pool).
    pub fn sever_connections(&self) {
        let Some(server) = self
            .url
            .as_deref()
            .and_then(|u| u.rsplit_once('/'))
            .map(|(s, _)| s)
        else {
            return;
        };
        let name = &self.name;
        match self.backend {
            Backend::Postgresql => {
                run_sql_client(
                    self.backend,
                    server,
                    &format!(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                    ),
                );
            }
            Backend::Mysql => {
                let ids = run_sql_client(
                    self.backend,
                    server,
                    &format!("SELECT id FROM information_schema.processlist WHERE db = '{name}'"),
                );
                for id in ids.split_whitespace().filter(|w| w.parse::<u64>().is_ok()) {
                    run_sql_client(self.backend, server, &format!("KILL {id}"));
                }
            }
            Backend::Sqlite => {}
        }
    }
}

/// Runs one statement on a server with its command-line client; what it
/// printed (MariaDB's without column names).
fn run_sql_client(backend: Backend, server: &str, sql: &str) -> String {
    let output = match backend {
        Backend::Postgresql => Command::new("psql")
            .arg(format!("{server}/postgres"))
            .args(["-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output(),
        Backend::Mysql => {
            // mysql://user@host:port
            let rest = server.trim_start_matches("mysql://");
            let (user, hostport) = rest.split_once('@').unwrap_or(("root", rest));
            let (host, port) = hostport.split_once(':').unwrap_or((hostport, "3306"));
            Command::new("mariadb")
                .args([
                    "--no-defaults",
                    "-h",
                    host,
                    "-P",
                    port,
                    "-u",
                    user,
                    "-N",
                    "-e",
                    sql,
                ])
                .output()
        }
        Backend::Sqlite => return String::new(),
    }
    .expect("run the database client");
    assert!(
        output.status.success(),
        "{sql} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs `plughost ARGS` (a management command) on `data` with `env`;
/// returns (success, stdout + stderr).
pub fn cli(data: &DataDir, env: &[(&str, String)], args: &[&str]) -> (bool, String) {
    let data_dir = data.path().to_str().expect("a UTF-8 temp path");
    let mut all = args.to_vec();
    all.extend(["--data-dir", data_dir]);
    author_cli(env, &all)
}

/// Runs an author's `plughost` command (no host settings: `plugin new`,
/// `plugin package`, `plugin keygen`) with `env` added; whether it
/// succeeded, and what it printed.
pub fn author_cli(env: &[(&str, String)], args: &[&str]) -> (bool, String) {
    let output = Command::new(binary("plughost"))
        .args(args)
        .env("PLUGHOST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("run plughost");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `plughost plugin keygen` of key `name` in `dir` (with `env`, and the
/// `extra` arguments): the secret key's path and the key id.
pub fn key_pair(
    dir: &Path,
    name: &str,
    env: &[(&str, String)],
    extra: &[&str],
) -> (String, String) {
    let secret = dir.join(name);
    let mut args = vec![
        "plugin",
        "keygen",
        "--out",
        secret.to_str().expect("a UTF-8 path"),
    ];
    args.extend_from_slice(extra);
    let (ok, out) = author_cli(env, &args);
    assert!(ok, "keygen: {out}");
    let id = out
        .split("key id ")
        .nth(1)
        .and_then(|rest| rest.get(..16))
        .unwrap_or_else(|| panic!("no key id in: {out}"))
        .to_owned();
    (secret.display().to_string(), id)
}

/// A free TCP port on 127.0.0.1 (free when asked; a server started on it
/// right away gets it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A real SMTP server for one test (`tests/smtp/server.py`, aiosmtpd) on a
/// free loopback port: it requires a login and keeps every message it
/// accepts. Stopped when dropped.
pub struct TestSmtp {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl TestSmtp {
    /// A server that takes the login `user`/`password` and accepts each
    /// message after `delay`.
    pub fn start(user: &str, password: &str, delay: Duration) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("a temp dir for mail");
        let mut child = Command::new("python3")
            .arg(root().join("tests/smtp/server.py"))
            .args([
                "--port",
                &port.to_string(),
                "--user",
                user,
                "--password",
                password,
            ])
            .arg("--dir")
            .arg(dir.path())
            .args(["--delay", &delay.as_secs_f64().to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 tests/smtp/server.py (scripts/test-deps installs aiosmtpd)");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout piped"))
            .read_line(&mut ready)
            .expect("the SMTP server's first line");
        assert_eq!(ready.trim(), "ready", "the SMTP server did not start");
        Self { child, port, dir }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The messages it accepted so far, in order, each with an
    /// `X-Rcpt-To` header naming its envelope recipients.
    pub fn messages(&self) -> Vec<String> {
        let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(self.dir.path())
            .expect("the mail dir")
            .filter_map(|e| {
                let path = e.ok()?.path();
                let n = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".eml")?
                    .parse()
                    .ok()?;
                Some((n, path))
            })
            .collect();
        files.sort();
        files
            .into_iter()
            .map(|(_, path)| std::fs::read_to_string(path).expect("a message"))
            .collect()
    }
}

impl Drop for TestSmtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real OpenID Connect provider for one test (`tests/oidc/provider.mjs`,
/// panva's oidc-provider on the machine's Node, installed by
/// scripts/test-deps) on a free loopback port, with one client. Its login
/// page signs in any login name. Stopped when dropped.
pub struct TestOidc {
    child: Child,
    port: u16,
}

impl TestOidc {
    /// A provider with client `client_id`/`client_secret` that may
    /// redirect to `redirect_uris`.
    pub fn start(client_id: &str, client_secret: &str, redirect_uris: &[&str]) -> Self {
        let port = free_port();
        let node = std::env::var("PLUGHOST_TEST_NODE").unwrap_or_else(|_| "node".into());
        let mut child = Command::new(node)
            .arg(root().join("tests/oidc/provider.mjs"))
            .args([&port.to_string(), client_id, client_secret])
            .args(redirect_uris)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node tests/oidc/provider.mjs (scripts/test-deps installs oidc-provider)");
        let mut ready = String::new();
        BufReader::new(child.stdout.take().expect("stdout piped"))
            .read_line(&mut ready)
            .expect("the OpenID Connect provider's first line");
        assert_eq!(
            ready.trim(),
            "ready",
            "the OpenID Connect provider did not start (scripts/test-deps installs it)"
        );
        Self { child, port }
    }

    /// Its issuer: `http://127.0.0.1:<port>`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for TestOidc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private `redis-server` for one test, on a free loopback port, without
/// persistence: stopping and starting it again gives an empty (flushed)
/// Redis on the same URL. Stopped when dropped.
pub struct TestRedis {
    port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl TestRedis {
    /// Starts one (`redis-server` from PATH, or `PLUGHOST_TEST_REDIS_SERVER`).
    pub fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        redis.restart();
        redis
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server again (empty) after [`TestRedis::stop`].
    pub fn restart(&mut self) {
        let server =
            std::env::var("PLUGHOST_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&server)
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {server} ({e}): install redis-server (scripts/services start does)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Runs one command with `redis-cli` and returns its output.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed on port {}", self.port))
    }

    /// The JSON value under `key`, if any.
    pub fn json(&self, key: &str) -> Option<Value> {
        let text = self.cli(&["--raw", "GET", key]);
        (!text.is_empty()).then(|| serde_json::from_str(&text).expect("a JSON value"))
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 10 ms until it holds or `within` passes; returns
/// whether it held.
pub fn eventually(within: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A single-threaded Tokio runtime, for tests that call the host's library
/// (its database, its locks) directly.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a Tokio runtime")
}

/// The package of the `greeter` fixture, build 1 or 2 (versions 1.0.0 and
/// 2.0.0 of one plugin).
pub fn greeter(build: u8) -> Vec<u8> {
    package(
        "greeter",
        &format!("greeter_v{build}"),
        &format!("greeter_v{build}"),
    )
}

/// A greeter package (of `greeter_v1`'s code) whose library is a build of
/// its own: its bytes end with `build`, so each `build` is a distinct
/// library (another digest, another mapping). Stored, not deflated: made
/// in bulk.
pub fn greeter_build(build: u32) -> Vec<u8> {
    let mut files = package_files("greeter", "greeter_v1", "greeter_v1");
    for (name, bytes) in &mut files {
        if name.ends_with(".so") {
            bytes.extend_from_slice(format!("plughost-test-build-{build:08}").as_bytes());
        }
    }
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    zip_with(&refs, zip::CompressionMethod::Stored)
}

/// The build `GET /greeter/v1/version` answers on `host` (`None`: not 200).
pub fn greeter_version(host: &Host) -> Option<String> {
    let reply = host.get("/greeter/v1/version");
    (reply.status == 200).then(|| reply.json["data"].as_str().unwrap_or_default().to_owned())
}

/// Runs `during` while `threads` threads call `probe` in a loop (each
/// stops when `during` returns, or after 60 s); returns what `during`
/// returned and how many probes answered true and false.
pub fn under_load<T>(
    threads: usize,
    probe: impl Fn() -> bool + Sync,
    during: impl FnOnce() -> T,
) -> (T, u32, u32) {
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    let stop = AtomicBool::new(false);
    let (served, failed) = (AtomicU32::new(0), AtomicU32::new(0));
    let result = std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let counter = if probe() { &served } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let result = during();
        stop.store(true, Ordering::Relaxed);
        result
    });
    (result, served.into_inner(), failed.into_inner())
}

/// A plugin package: the ZIP `POST /admin/v1/sys/plugins?type=zip` takes,
/// with `files` (path inside the archive, contents) in order.
pub fn zip_of(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    zip_with(files, zip::CompressionMethod::Deflated)
}

/// A ZIP archive of `files`, each stored with `method`.
pub fn zip_with(files: &[(&str, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in files {
        zip.start_file(*name, options).expect("zip entry");
        zip.write_all(bytes).expect("zip write");
    }
    zip.finish().expect("zip finish").into_inner()
}

/// The package files of fixture or bundled plugin `source` (built as
/// `lib{library}.so`), under the top directory `top`.
pub fn package_files(top: &str, source: &str, library: &str) -> Vec<(String, Vec<u8>)> {
    let src = source_dir(source);
    let mut files = vec![
        (
            format!("{top}/plugin.toml"),
            std::fs::read(src.join("plugin.toml")).expect("plugin.toml"),
        ),
        (
            format!("{top}/README.md"),
            format!("# {top}\n").into_bytes(),
        ),
        (
            format!("{top}/lib{top}.so"),
            std::fs::read(crate::library(library)).expect("library"),
        ),
    ];
    let sql = src.join("sql");
    if sql.is_dir() {
        for backend in std::fs::read_dir(&sql).expect("sql dir") {
            let backend = backend.expect("entry").path();
            for script in std::fs::read_dir(&backend).expect("backend dir") {
                let script = script.expect("entry").path();
                files.push((
                    format!(
                        "{top}/sql/{}/{}",
                        backend.file_name().unwrap().to_string_lossy(),
                        script.file_name().unwrap().to_string_lossy()
                    ),
                    std::fs::read(&script).expect("script"),
                ));
            }
        }
    }
    files
}

/// [`package_files`] zipped.
pub fn package(top: &str, source: &str, library: &str) -> Vec<u8> {
    let files = package_files(top, source, library);
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    zip_of(&refs)
}

/// Every file and directory under `dir` with its contents (directories as
/// empty), to show a directory is byte-identical before and after.
pub fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            let relative = path.strip_prefix(dir).expect("inside").to_owned();
            if relative == Path::new(LOCK_FILE) {
                // The plugin dir's lock names its latest holder.
                continue;
            }
            if path.is_dir() {
                stack.push(path);
                out.insert(relative, Vec::new());
            } else {
                out.insert(relative, std::fs::read(&path).expect("read file"));
            }
        }
    }
    out
}

/// The entries of a ZIP archive (name, contents), in order; directories
/// are left out.
pub fn zip_entries(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).expect("a ZIP archive");
    let mut entries = Vec::new();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).expect("entry");
        if entry.is_dir() {
            continue;
        }
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read entry");
        entries.push((entry.name().to_owned(), bytes));
    }
    entries
}

/// The entry names of a ZIP archive.
pub fn zip_names(archive: &[u8]) -> Vec<String> {
    let zip = zip::ZipArchive::new(std::io::Cursor::new(archive)).expect("a ZIP archive");
    let mut names: Vec<String> = zip.file_names().map(str::to_owned).collect();
    names.sort();
    names
}

/// Runs `git args` in `repo` (a fixed identity, branch `main`); its output.
pub fn git(repo: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=plughost",
            "-c",
            "user.email=tests@plughost.invalid",
        ])
        .args(["-c", "init.defaultBranch=main"])
        .arg("-C")
        .arg(repo)
        .args(args)
        .output()
        .expect("run git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// The version of the workspace's plugin-api (the contract this host speaks).
pub fn plugin_api_version() -> String {
    let manifest = std::fs::read_to_string(root().join("plugin-api/Cargo.toml"))
        .expect("plugin-api/Cargo.toml");
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("a version line")
        .to_owned()
}

/// The cargo target dir plugin crates built by the tests share (so their
/// dependencies are built once), as `CARGO_TARGET_DIR` for `plugin
/// package` and `plugin check`.
pub fn plugin_build_env() -> Vec<(&'static str, String)> {
    vec![(
        "CARGO_TARGET_DIR",
        root().join("target/plugin-builds").display().to_string(),
    )]
}

/// A plugin crate made by `plughost plugin new NAME --kind KIND` in
/// `parent/NAME`, committed to a new Git repository there; its path.
pub fn scaffolded_repository(parent: &Path, name: &str, kind: &str) -> PathBuf {
    let crate_dir = parent.join(name);
    let api = root().join("plugin-api");
    let (ok, out) = author_cli(
        &[],
        &[
            "plugin",
            "new",
            name,
            "--kind",
            kind,
            "--dir",
            crate_dir.to_str().unwrap(),
            "--plugin-api",
            api.to_str().unwrap(),
        ],
    );
    assert!(ok, "plughost plugin new {name}: {out}");
    git(&crate_dir, &["init", "-q"]);
    git(&crate_dir, &["add", "."]);
    git(&crate_dir, &["commit", "-qm", "scaffold"]);
    crate_dir
}

/// Increments the `notes` fixture's counter `key` from `threads` threads
/// at once (spread over `hosts`), `each` times per
/// thread, and answers every value the increments returned, sorted.
pub fn count_concurrently(hosts: &[&Host], key: &str, threads: usize, each: usize) -> Vec<i64> {
    let mut seen: Vec<i64> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let host = hosts[t % hosts.len()];
                scope.spawn(move || {
                    (0..each)
                        .map(|_| {
                            let reply =
                                host.request("POST", &format!("/notes/v1/counter/{key}"), None);
                            assert_eq!(reply.status, 200, "{:?}", reply.json);
                            reply.data().as_i64().expect("a count")
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("counting thread"))
            .collect()
    });
    seen.sort_unstable();
    seen
}

/// Opens `GET path` on `host` as a stream and forwards its lines.
pub fn sse_lines(host: &Host, path: &str) -> mpsc::Receiver<String> {
    let response = ureq::get(&format!("{}{path}", host.base()))
        .call()
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(response.content_type(), "text/event-stream");
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(response.into_reader()).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// The lines `feed` gives within `within` until one contains `needle`;
/// panics naming what came when none does.
pub fn until(feed: &mpsc::Receiver<String>, needle: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match feed.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(needle);
                seen.push(line);
                if found {
                    return seen;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the feed ended before '{needle}': {seen:?}")
            }
        }
    }
    panic!("no '{needle}' within {within:?}: {seen:?}");
}

/// Two instances on one PostgreSQL database and one Redis, each with a
/// plugin dir of its own holding `plugins`; stopped, then the database and
/// Redis dropped, when dropped.
pub struct Pair {
    /// The first instance.
    pub a: Host,
    /// The second instance.
    pub b: Host,
    _data: (DataDir, DataDir),
    _database: TestDatabase,
    _redis: TestRedis,
}

impl Pair {
    /// The database the two share.
    pub fn database(&self) -> &TestDatabase {
        &self._database
    }
}

/// Starts a [`Pair`] with extra environment `env` (a shared token secret
/// is set).
pub fn pair(plugins: &[&str], env: &[(&str, &str)]) -> Pair {
    let redis = TestRedis::start();
    let database = TestDatabase::create(Backend::Postgresql);
    let db_env = database.env();
    let redis_url = redis.url();
    let mut all: Vec<(&str, &str)> = db_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    all.extend([
        (
            "PLUGHOST_JWT_SECRET",
            "a-pair-token-secret-of-at-least-32-chars",
        ),
        ("REDIS_URL", redis_url.as_str()),
    ]);
    all.extend_from_slice(env);
    let data = (DataDir::new(), DataDir::new());
    for name in plugins {
        data.0.install_dir(name);
        data.1.install_dir(name);
    }
    let a = Host::start_with(&data.0, &all);
    let b = Host::start_with(&data.1, &all);
    Pair {
        a,
        b,
        _data: data,
        _database: database,
        _redis: redis,
    }
}

/// Field `field` (`VmRSS:`, `VmHWM:`, ...) of process `pid`'s
/// `/proc/<pid>/status`, KiB.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Process `pid`'s resident memory, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}
