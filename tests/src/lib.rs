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
}

impl Reply {
    fn from_response(response: ureq::Response) -> Self {
        let status = response.status();
        let request_id = response.header("x-request-id").map(str::to_owned);
        let text = response.into_string().unwrap_or_default();
        Self {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
            request_id,
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

/// A running `plughost serve`.
pub struct Host {
    child: Option<Child>,
    base: String,
    log: Arc<Mutex<String>>,
    agent: ureq::Agent,
}

impl Host {
    /// Starts the host on `data` with extra environment variables.
    pub fn start_with(data: &DataDir, env: &[(&str, &str)]) -> Self {
        Self::start_binary("plughost", data, env)
    }

    /// Starts the binary `name` (see [`binary`]) on `data`.
    pub fn start_binary(name: &str, data: &DataDir, env: &[(&str, &str)]) -> Self {
        let mut command = Command::new(binary(name));
        command
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--workers",
                "2",
                "--data-dir",
            ])
            .arg(data.path())
            .env("PLUGHOST_LOG", "info")
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

    /// A request with any method and an optional JSON body.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Reply {
        let request = self.agent.request(method, &format!("{}{path}", self.base));
        self.send(request, body)
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

    /// Sends SIGTERM and waits for the process to exit.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
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
