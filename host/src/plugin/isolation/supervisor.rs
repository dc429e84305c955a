//! The host's side of an isolated plugin: its child process, the requests
//! in flight to it, and what happens when it crashes or hangs.
//!
//! *Invariant:* the host never maps an isolated plugin's library; the
//! child does, and everything the host knows of the plugin came from the
//! child's `Hello`.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use tokio::{
    net::UnixListener,
    sync::{mpsc, oneshot},
};

use super::wire::{self, Hello, ToChild, ToHost, WireRequest};

/// Crashes within [`CRASH_WINDOW`] after which a child is not restarted.
pub const CRASH_LIMIT: usize = 5;
/// The window [`CRASH_LIMIT`] counts crashes in.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);
/// The first restart's delay; each crash in the window doubles it.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest a restart waits.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a child may take to open its library and say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);

/// How the host runs isolated plugins (from its settings).
#[derive(Debug, Clone)]
pub struct IsolationConfig {
    /// The host binary, re-executed as the child.
    pub exe: PathBuf,
    /// The arguments `serve` was given, passed on to the child.
    pub serve_args: Vec<std::ffi::OsString>,
    /// Where the sockets go.
    pub run_dir: PathBuf,
    /// The child's memory cap, MiB (0: none).
    pub memory_mb: u64,
    /// The delegated cgroup children get a memory limit in, if any.
    pub cgroup: Option<Arc<super::cgroup::Delegated>>,
    /// How often the child is asked whether it is there; it is killed
    /// when an answer is this late.
    pub health_every: Duration,
}

/// What a request to the child came to.
pub enum Reply {
    /// The plugin's answer.
    Answer {
        /// Status.
        status: u16,
        /// Content type.
        content_type: String,
        /// Further headers.
        headers: Vec<(String, String)>,
        /// The body, when not streamed.
        body: Vec<u8>,
        /// The streamed body's chunks.
        stream: Option<mpsc::Receiver<Bytes>>,
    },
    /// The child died with the request in flight.
    Crashed(String),
}

/// Why a request did not reach the plugin.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No child is serving (it is restarting, or was given up on).
    #[error("{0}")]
    Down(String),
}

/// Frames on their way to a child.
type Outbox = mpsc::UnboundedSender<(ToChild, Vec<u8>)>;

/// One running child.
struct Link {
    pid: u32,
    /// What goes to the child; taken to close the socket (the child
    /// exits at its end).
    outbox: Mutex<Option<Outbox>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Reply>>>,
    streams: Mutex<HashMap<u64, mpsc::Sender<Bytes>>>,
    steps: Mutex<VecDeque<oneshot::Sender<Option<String>>>>,
    pongs: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    hooks: Mutex<HashMap<u64, oneshot::Sender<Result<serde_json::Value, String>>>>,
    jobs: Mutex<Vec<serde_json::Value>>,
    next: AtomicU64,
    /// Why the host killed it, when it did.
    killed_for: Mutex<Option<String>>,
    /// Its reader saw it end (set under the owners lock).
    dead: AtomicBool,
    /// Where the child accepts lanes, if it does.
    lanes: Option<PathBuf>,
}

thread_local! {
    /// This thread's lanes, by the child they go to.
    static LANES: std::cell::RefCell<Vec<(Weak<Link>, Outbox)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

impl Link {
    fn send(&self, message: ToChild, body: Vec<u8>) -> bool {
        self.outbox
            .lock()
            .expect("outbox lock")
            .as_ref()
            .is_some_and(|outbox| outbox.send((message, body)).is_ok())
    }

    /// Where this thread sends requests: its own lane to the child when
    /// the child takes lanes and this thread runs a Tokio runtime (an
    /// HTTP worker: the lane's writer and reader run there, so a request
    /// and its answer never wait on another thread of the host), else the
    /// child's socket. A lane is opened on a thread's first request.
    fn outbox_here(self: &Arc<Self>) -> Option<Outbox> {
        let here = self.lanes.as_ref().and_then(|path| {
            let runtime = tokio::runtime::Handle::try_current().ok()?;
            LANES.with_borrow_mut(|lanes| {
                lanes.retain(|(link, outbox)| link.strong_count() > 0 && !outbox.is_closed());
                if let Some((_, outbox)) = lanes
                    .iter()
                    .find(|(link, _)| std::ptr::eq(link.as_ptr(), Arc::as_ptr(self)))
                {
                    return Some(outbox.clone());
                }
                let (outbox, frames) = mpsc::unbounded_channel();
                runtime.spawn(open_lane(Arc::downgrade(self), path.clone(), frames));
                lanes.push((Arc::downgrade(self), outbox.clone()));
                Some(outbox)
            })
        });
        here.or_else(|| self.outbox.lock().expect("outbox lock").clone())
    }

    /// Closes the socket: the child stops its plugin and exits.
    fn close(&self) {
        self.outbox.lock().expect("outbox lock").take();
    }

    fn kill(&self, why: &str) {
        *self.killed_for.lock().expect("killed lock") = Some(why.to_owned());
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }

    /// Runs one of the plugin's hooks in the child; its error, if any.
    async fn step(&self, message: ToChild) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.steps.lock().expect("steps lock").push_back(done);
        if !self.send(message, Vec::new()) {
            return Err("its child process has exited".into());
        }
        match answer.await {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(error),
            Err(_) => Err("its child process exited".into()),
        }
    }
}

/// Crashes so far.
#[derive(Default)]
struct Crashes {
    total: u64,
    last: Option<String>,
    recent: VecDeque<Instant>,
    gave_up: Option<String>,
}

/// An isolated plugin's child, supervised.
pub struct Supervisor {
    name: String,
    library: PathBuf,
    layout_checked: bool,
    config: IsolationConfig,
    hello: Hello,
    link: ArcSwapOption<Link>,
    started: AtomicBool,
    enabled: AtomicBool,
    loaded: std::sync::atomic::AtomicU32,
    retired: AtomicBool,
    crashes: Mutex<Crashes>,
    serial: AtomicU64,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Supervisor {
    /// Starts a child for plugin `name` on library copy `library`; it
    /// answers once the child has opened it.
    pub async fn spawn(
        name: &str,
        library: PathBuf,
        layout_checked: bool,
        config: IsolationConfig,
    ) -> Result<Arc<Self>, String> {
        let serial = AtomicU64::new(0);
        let (link, hello) = start_child(name, &library, layout_checked, &config, &serial).await?;
        let supervisor = Arc::new(Self {
            name: name.to_owned(),
            library,
            layout_checked,
            config,
            hello,
            link: ArcSwapOption::empty(),
            started: AtomicBool::new(false),
            enabled: AtomicBool::new(true),
            loaded: std::sync::atomic::AtomicU32::new(1),
            retired: AtomicBool::new(false),
            crashes: Mutex::default(),
            serial,
        });
        supervisor.attach(link);
        Ok(supervisor)
    }

    /// What the child reported of the plugin.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The child's process id, while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.link.load().as_ref().map(|l| l.pid)
    }

    /// Crashes so far, the last one's reason, and why restarts stopped.
    pub fn crashes(&self) -> (u64, Option<String>, Option<String>) {
        let crashes = self.crashes.lock().expect("crashes lock");
        (crashes.total, crashes.last.clone(), crashes.gave_up.clone())
    }

    /// Runs the plugin's init hook in the child.
    pub async fn init(&self) -> Result<(), String> {
        self.current()?.step(ToChild::Init).await
    }

    /// Runs its start hook; a restarted child runs it again.
    pub async fn start(&self) -> Result<(), String> {
        self.current()?.step(ToChild::Start).await?;
        self.started.store(true, Ordering::Release);
        Ok(())
    }

    /// Runs its stop hook and ends the child for good.
    pub async fn stop(&self) {
        self.retired.store(true, Ordering::Release);
        self.started.store(false, Ordering::Release);
        if let Some(link) = self.link.swap(None) {
            let stopped = tokio::time::timeout(
                crate::plugin::services::lifespan::hook_timeout() + Duration::from_secs(1),
                link.step(ToChild::Stop),
            )
            .await;
            if !matches!(stopped, Ok(Ok(()))) {
                link.kill("it was stopped");
            }
            // The child exits when its socket closes.
            link.close();
        }
    }

    /// Asks the plugin's authenticator (in the child) about an
    /// `Authorization` header: its user, or none.
    pub async fn authenticate(&self, authorization: &str) -> Result<Option<i64>, String> {
        let answer = self
            .ask(|id| ToChild::Authenticate {
                id,
                authorization: authorization.to_owned(),
            })
            .await?;
        serde_json::from_value(answer).map_err(|e| e.to_string())
    }

    /// Asks the plugin's authorizer (in the child) about an admin call
    /// (`plugin_api::AdminCall` as JSON): its denial, or none.
    pub async fn authorize(&self, call: &str) -> Result<Option<String>, String> {
        let answer = self
            .ask(|id| ToChild::Authorize {
                id,
                call: call.to_owned(),
            })
            .await?;
        serde_json::from_value(answer).map_err(|e| e.to_string())
    }

    async fn ask(&self, message: impl FnOnce(u64) -> ToChild) -> Result<serde_json::Value, String> {
        let link = self.current()?;
        let id = link.next.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        {
            let mut hooks = link.hooks.lock().expect("hooks lock");
            if link.dead.load(Ordering::SeqCst) {
                return Err(format!(
                    "plugin '{}' is restarting after a crash",
                    self.name
                ));
            }
            hooks.insert(id, answer);
        }
        let sent = link
            .outbox_here()
            .is_some_and(|outbox| outbox.send((message(id), Vec::new())).is_ok());
        if !sent {
            return Err("its child process has exited".into());
        }
        answered
            .await
            .unwrap_or_else(|_| Err("its child process exited".into()))
    }

    /// The plugin's jobs, as its child last reported them.
    pub fn jobs(&self) -> Vec<serde_json::Value> {
        self.link
            .load()
            .as_ref()
            .map(|l| l.jobs.lock().expect("jobs lock").clone())
            .unwrap_or_default()
    }

    /// Asks the child for the plugin's jobs now (the list shows them).
    pub async fn refresh_jobs(&self) {
        if let Ok(serde_json::Value::Array(jobs)) = self.ask(|id| ToChild::ListJobs { id }).await
            && let Some(link) = self.link.load_full()
        {
            *link.jobs.lock().expect("jobs lock") = jobs;
        }
    }

    /// The child's metrics (Prometheus text), empty when it has none.
    pub async fn metrics(&self) -> String {
        match self.ask(|id| ToChild::Metrics { id }).await {
            Ok(serde_json::Value::String(text)) => text,
            _ => String::new(),
        }
    }

    /// Tells the child how many plugins the host serves.
    pub fn set_loaded(&self, loaded: u32) {
        self.loaded.store(loaded, Ordering::Release);
        if let Some(link) = self.link.load_full() {
            link.send(ToChild::Plugins { loaded }, Vec::new());
        }
    }

    /// Tells the child the plugin's flag.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
        if let Some(link) = self.link.load_full() {
            link.send(ToChild::Enabled { enabled }, Vec::new());
        }
    }

    fn current(&self) -> Result<Arc<Link>, String> {
        self.link.load_full().ok_or_else(|| {
            match self.crashes.lock().expect("crashes lock").gave_up.clone() {
                Some(why) => why,
                None => format!("plugin '{}' is restarting after a crash", self.name),
            }
        })
    }

    /// Sends a request to the child and waits for its answer. Dropping
    /// the future (the deadline passed, the client left) cancels it there.
    pub async fn call(
        &self,
        handler: u32,
        request: WireRequest,
        body: Vec<u8>,
    ) -> Result<Reply, CallError> {
        let link = self.current().map_err(CallError::Down)?;
        let id = link.next.fetch_add(1, Ordering::Relaxed);
        let (answer, reply) = oneshot::channel();
        {
            // Its reader marks it dead before it fails what is pending,
            // under this lock: a request is either failed there or
            // refused here.
            let mut pending = link.pending.lock().expect("pending lock");
            if link.dead.load(Ordering::SeqCst) {
                return Err(CallError::Down(format!(
                    "plugin '{}' is restarting after a crash",
                    self.name
                )));
            }
            pending.insert(id, answer);
        }
        let outbox = link.outbox_here();
        let cancel = CancelOnDrop {
            link: &link,
            outbox: outbox.as_ref(),
            id,
            armed: true,
        };
        let request = ToChild::Request {
            id,
            handler,
            request: Box::new(request),
        };
        if outbox
            .as_ref()
            .is_none_or(|o| o.send((request, body)).is_err())
        {
            return Ok(Reply::Crashed(self.exit_reason()));
        }
        let reply = reply.await;
        let mut cancel = cancel;
        cancel.armed = false;
        Ok(reply.unwrap_or_else(|_| Reply::Crashed(self.exit_reason())))
    }

    fn exit_reason(&self) -> String {
        self.crashes
            .lock()
            .expect("crashes lock")
            .last
            .clone()
            .unwrap_or_else(|| "its child process exited".into())
    }

    /// Makes `link` the child that serves, and watches its health.
    fn attach(self: &Arc<Self>, link: Arc<Link>) {
        self.link.store(Some(link.clone()));
        let dead = {
            let mut owners = OWNERS.lock().expect("owners lock");
            let dead = link.dead.load(Ordering::Acquire);
            if !dead {
                owners
                    .get_or_insert_with(HashMap::new)
                    .insert(link.pid, Arc::downgrade(self));
            }
            dead
        };
        if dead {
            // It died before it was attached: nobody else will say so.
            let reason = self.exit_reason();
            self.crashed(Some(&link), reason);
            return;
        }
        let weak = Arc::downgrade(self);
        let every = self.config.health_every;
        tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                tokio::time::sleep(every).await;
                let Some(supervisor) = weak.upgrade() else {
                    return;
                };
                let current = supervisor.link.load_full();
                if !current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &link)) {
                    return;
                }
                n += 1;
                let (pong, answered) = oneshot::channel();
                link.pongs.lock().expect("pongs lock").insert(n, pong);
                if !link.send(ToChild::Ping { id: n }, Vec::new()) {
                    return;
                }
                drop(supervisor);
                if tokio::time::timeout(every, answered).await.is_err() {
                    tracing::warn!(
                        pid = link.pid,
                        "an isolated plugin's child did not answer its health check within {every:?}: killed"
                    );
                    link.kill(&format!(
                        "it stopped answering its health check (no answer within {every:?})"
                    ));
                    return;
                }
            }
        });
    }

    /// The child serving `link` (or one that never served) died: why,
    /// then a restart with backoff, unless the plugin is retired or
    /// crashes too often.
    fn crashed(self: &Arc<Self>, link: Option<&Arc<Link>>, reason: String) {
        if let Some(link) = link {
            let current = self.link.load_full();
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, link)) {
                self.link.store(None);
            }
        }
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        let backoff = {
            let mut crashes = self.crashes.lock().expect("crashes lock");
            crashes.total += 1;
            crashes.last = Some(reason.clone());
            crashes.recent.push_back(now);
            while crashes
                .recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > CRASH_WINDOW)
            {
                crashes.recent.pop_front();
            }
            if crashes.recent.len() >= CRASH_LIMIT {
                let why = format!(
                    "plugin '{}' crashed {} times within {}s (last: {reason}); it is not restarted: upgrade or reinstall it, or restart the host",
                    self.name,
                    crashes.recent.len(),
                    CRASH_WINDOW.as_secs()
                );
                tracing::error!(plugin = self.name, "{why}");
                crashes.gave_up = Some(why);
                return;
            }
            let doublings = u32::try_from(crashes.recent.len().saturating_sub(1)).unwrap_or(16);
            (FIRST_BACKOFF * 2u32.saturating_pow(doublings)).min(MAX_BACKOFF)
        };
        tracing::warn!(
            plugin = self.name,
            "its child process {reason}; restarting in {backoff:?}"
        );
        let supervisor = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            supervisor.restart().await;
        });
    }

    async fn restart(self: Arc<Self>) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        let started = start_child(
            &self.name,
            &self.library,
            self.layout_checked,
            &self.config,
            &self.serial,
        )
        .await;
        let link = match started {
            Ok((link, _)) => link,
            Err(reason) => {
                self.crashed(None, format!("could not be restarted: {reason}"));
                return;
            }
        };
        let ready = async {
            link.step(ToChild::Init).await?;
            link.send(
                ToChild::Plugins {
                    loaded: self.loaded.load(Ordering::Acquire),
                },
                Vec::new(),
            );
            if !self.enabled.load(Ordering::Acquire) {
                link.send(ToChild::Enabled { enabled: false }, Vec::new());
            }
            if self.started.load(Ordering::Acquire) {
                link.step(ToChild::Start).await?;
            }
            Ok::<(), String>(())
        };
        match ready.await {
            Ok(()) => {
                if self.retired.load(Ordering::Acquire) {
                    link.kill("it was stopped");
                    return;
                }
                tracing::info!(
                    plugin = self.name,
                    pid = link.pid,
                    "its child process restarted"
                );
                self.attach(link);
            }
            Err(reason) => {
                link.kill("its restart failed");
                self.crashed(Some(&link), format!("failed to restart: {reason}"));
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if let Some(link) = self.link.swap(None) {
            link.kill("its plugin is gone");
        }
    }
}

/// Removes a request from the child's work when its caller stops waiting.
struct CancelOnDrop<'a> {
    link: &'a Link,
    /// Where the request went: the cancel follows it there.
    outbox: Option<&'a Outbox>,
    id: u64,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.link
                .pending
                .lock()
                .expect("pending lock")
                .remove(&self.id);
            if let Some(outbox) = self.outbox {
                let _ = outbox.send((ToChild::Cancel { id: self.id }, Vec::new()));
            }
        }
    }
}

/// Connects a lane to the child of `link` and carries `frames` over it,
/// handing what comes back to the requests waiting on `link`; when the
/// child cannot be reached there, `frames` go over its socket.
async fn open_lane(
    link: Weak<Link>,
    path: PathBuf,
    mut frames: mpsc::UnboundedReceiver<(ToChild, Vec<u8>)>,
) {
    match tokio::net::UnixStream::connect(&path).await {
        Ok(stream) => {
            let (reader, writer) = stream.into_split();
            if let Some(link) = link.upgrade() {
                tokio::spawn(async move {
                    let mut reader = wire::Frames::new(reader);
                    while let Ok(Some((message, body))) = reader.next::<ToHost>().await {
                        deliver(&link, message, body).await;
                    }
                });
            }
            wire::pump(writer, frames).await;
        }
        Err(e) => {
            tracing::warn!(
                "cannot open a lane to an isolated plugin's child at {} ({e}); this thread's requests go over its socket",
                path.display()
            );
            while let Some((message, body)) = frames.recv().await {
                if !link.upgrade().is_some_and(|link| link.send(message, body)) {
                    return;
                }
            }
        }
    }
}

/// Where a link's reader reports a death: the supervisor of each child,
/// by process id.
static OWNERS: Mutex<Option<HashMap<u32, std::sync::Weak<Supervisor>>>> = Mutex::new(None);

/// Starts a child and waits for its hello.
async fn start_child(
    name: &str,
    library: &std::path::Path,
    layout_checked: bool,
    config: &IsolationConfig,
    serial: &AtomicU64,
) -> Result<(Arc<Link>, Hello), String> {
    // The sockets' directory is the host's alone.
    std::fs::create_dir_all(&config.run_dir)
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&config.run_dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|e| format!("cannot create {}: {e}", config.run_dir.display()))?;
    let socket = super::child::socket_path(
        &config.run_dir,
        name,
        serial.fetch_add(1, Ordering::Relaxed),
    );
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)
        .map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    // A cgroup of its own where one is delegated (RLIMIT_AS caps it either way).
    let mut cgroup = super::cgroup::ChildCgroup::new(
        config
            .cgroup
            .as_ref()
            .filter(|_| config.memory_mb > 0)
            .and_then(|delegated| {
                let stem = socket.file_stem()?.to_string_lossy().into_owned();
                delegated
                    .child(&stem, config.memory_mb.saturating_mul(1 << 20))
                    .map_err(|e| {
                        tracing::warn!(plugin = name, "{e}; its child is capped by RLIMIT_AS alone")
                    })
                    .ok()
            }),
    );
    let mut command = tokio::process::Command::new(&config.exe);
    command
        .arg("isolated-plugin")
        .arg("--socket")
        .arg(&socket)
        .arg("--library")
        .arg(library)
        .arg("--name")
        .arg(name)
        .arg("--memory-mb")
        .arg(config.memory_mb.to_string())
        .args(
            cgroup
                .path()
                .map(|dir| [std::ffi::OsStr::new("--cgroup"), dir.as_os_str()])
                .into_iter()
                .flatten(),
        )
        .args(layout_checked.then_some("--layout-checked"))
        .args(&config.serve_args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(false);
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", config.exe.display()))?;
    let pid = child.id().unwrap_or_default();
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(HELLO_TIMEOUT, listener.accept()) => accepted,
        status = child.wait() => {
            let _ = std::fs::remove_file(&socket);
            return Err(format!("its child process {} before it connected", describe(status.ok())));
        }
    };
    let _ = std::fs::remove_file(&socket);
    let stream = match accepted {
        Ok(Ok((stream, _))) => stream,
        Ok(Err(e)) => {
            let _ = child.start_kill();
            return Err(format!("cannot accept its child process: {e}"));
        }
        Err(_) => {
            let _ = child.start_kill();
            return Err(format!(
                "its child process did not connect within {HELLO_TIMEOUT:?}"
            ));
        }
    };
    let (reader, writer) = stream.into_split();
    let mut reader = wire::Frames::new(reader);
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, reader.next::<ToHost>()).await {
        Ok(Ok(Some((ToHost::Hello(hello), _)))) => *hello,
        Ok(Ok(Some((ToHost::Refused { reason }, _)))) => {
            let _ = child.wait().await;
            return Err(reason);
        }
        Ok(Ok(_)) | Ok(Err(_)) => {
            let status = child.wait().await.ok();
            return Err(format!(
                "its child process {} while opening the library",
                describe(status)
            ));
        }
        Err(_) => {
            let _ = child.start_kill();
            return Err(format!(
                "its child process did not open the library within {HELLO_TIMEOUT:?}"
            ));
        }
    };
    let (outbox, outgoing) = mpsc::unbounded_channel::<(ToChild, Vec<u8>)>();
    let link = Arc::new(Link {
        pid,
        outbox: Mutex::new(Some(outbox)),
        pending: Mutex::default(),
        streams: Mutex::default(),
        steps: Mutex::default(),
        pongs: Mutex::default(),
        hooks: Mutex::default(),
        jobs: Mutex::default(),
        next: AtomicU64::new(1),
        killed_for: Mutex::new(None),
        dead: AtomicBool::new(false),
        lanes: hello.lanes.then(|| super::child::lanes_path(&socket)),
    });
    tokio::spawn(wire::pump(writer, outgoing));
    let reading = link.clone();
    let memory_mb = config.memory_mb;
    tokio::spawn(async move {
        let link = reading;
        while let Ok(Some((message, body))) = reader.next::<ToHost>().await {
            deliver(&link, message, body).await;
        }
        // The child is gone (or broke the protocol): why, then tell the
        // requests in flight and the supervisor.
        let status = match tokio::time::timeout(Duration::from_secs(2), child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                let _ = child.start_kill();
                child.wait().await.ok()
            }
        };
        let mut reason = match link.killed_for.lock().expect("killed lock").take() {
            Some(why) => format!("was killed: {why}"),
            None => describe(status),
        };
        if let Some(dir) = cgroup.take() {
            if super::cgroup::oom_killed(&dir) {
                reason.push_str(&format!(
                    " (past its memory limit of {memory_mb} MiB, PLUGHOST_ISOLATED_MEMORY_MB)"
                ));
            }
            tokio::spawn(super::cgroup::remove(dir));
        }
        let owner = {
            let mut owners = OWNERS.lock().expect("owners lock");
            link.dead.store(true, Ordering::SeqCst);
            owners
                .as_mut()
                .and_then(|owners| owners.remove(&link.pid))
                .and_then(|weak| weak.upgrade())
        };
        // Its writer task ends with the socket.
        link.close();
        if let Some(lanes) = &link.lanes {
            let _ = std::fs::remove_file(lanes);
        }
        let pending: Vec<_> = link.pending.lock().expect("pending lock").drain().collect();
        link.streams.lock().expect("streams lock").clear();
        link.steps.lock().expect("steps lock").clear();
        link.hooks.lock().expect("hooks lock").clear();
        if let Some(supervisor) = owner
            .as_ref()
            .filter(|s| !s.retired.load(Ordering::Acquire))
        {
            supervisor.crashes.lock().expect("crashes lock").last = Some(reason.clone());
        }
        for (_, answer) in pending {
            let _ = answer.send(Reply::Crashed(reason.clone()));
        }
        if let Some(supervisor) = owner {
            supervisor.crashed(Some(&link), reason);
        }
    });
    Ok((link, hello))
}

/// Routes one message of the child's.
async fn deliver(link: &Link, message: ToHost, body: Vec<u8>) {
    match message {
        ToHost::Response {
            id,
            status,
            content_type,
            headers,
            stream,
        } => {
            let Some(answer) = link.pending.lock().expect("pending lock").remove(&id) else {
                return;
            };
            let stream = stream.then(|| {
                let (chunks, receiver) = mpsc::channel(64);
                link.streams
                    .lock()
                    .expect("streams lock")
                    .insert(id, chunks);
                receiver
            });
            let _ = answer.send(Reply::Answer {
                status,
                content_type,
                headers,
                body,
                stream,
            });
        }
        ToHost::Chunk { id } => {
            let chunks = link.streams.lock().expect("streams lock").get(&id).cloned();
            if let Some(chunks) = chunks
                && chunks.send(Bytes::from(body)).await.is_err()
            {
                link.streams.lock().expect("streams lock").remove(&id);
                link.send(ToChild::Cancel { id }, Vec::new());
            }
        }
        ToHost::End { id } => {
            link.streams.lock().expect("streams lock").remove(&id);
        }
        ToHost::Done { error, .. } => {
            if let Some(done) = link.steps.lock().expect("steps lock").pop_front() {
                let _ = done.send(error);
            }
        }
        ToHost::Hooked { id, answer } => {
            if let Some(asked) = link.hooks.lock().expect("hooks lock").remove(&id) {
                let _ = asked.send(answer);
            }
        }
        ToHost::Pong { id } => {
            if let Some(pong) = link.pongs.lock().expect("pongs lock").remove(&id) {
                let _ = pong.send(());
            }
        }
        ToHost::Hello(_) | ToHost::Refused { .. } => {}
    }
}

/// An exit status in words: "exited with status 3", "was killed by
/// SIGSEGV".
fn describe(status: Option<std::process::ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match status {
        Some(s) if s.signal().is_some() => {
            let signal = s.signal().unwrap_or_default();
            format!(
                "was killed by {}",
                crate::plugin::loading::libcache::signal_name(signal)
            )
        }
        Some(s) => match s.code() {
            Some(code) => format!("exited with status {code}"),
            None => "exited".into(),
        },
        None => "exited".into(),
    }
}
