//! The host's private copies of plugin libraries, proven harmless to map
//! before anything maps them.
//!
//! A library is never opened where the operator put it. Its bytes are read
//! once; the ELF headers are checked (a shared object for this machine,
//! every segment and section inside the file: a library cut short or whose
//! headers point past its end would make the loader touch pages past the
//! end of the file, a SIGBUS); the bytes are written once, read-only, to
//! `<data-dir>/libs/<sha256>.so`; and that copy is first opened in a
//! short-lived child process (`plughost probe-library`), which loads it,
//! runs the ABI check and reads the plugin's name. A library that crashes
//! or hangs the child is refused with the reason; the host opens only
//! copies that passed, so overwriting, truncating or deleting a file in the
//! plugin dir never touches mapped code.
//!
//! What is known without reading a library lives in one file,
//! `<data-dir>/libs/index.json`, read once per process: each source's
//! digest with the file's stamp when it was read (an unchanged library is
//! not read again), and each copy whose layout check passed with the host
//! binary that checked it (that binary skips the child next time). Losing
//! an entry (a damaged file, two processes writing it at once) only costs
//! a library read or a probe again.

use std::{
    collections::BTreeMap,
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use object::{
    Endianness,
    elf::{self, FileHeader64},
    read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::plugin::loading::{
    loader::{LayoutCheck, LoadError},
    trust::TrustPolicy,
};

/// The ELF machine of the libraries this host can map.
#[cfg(target_arch = "x86_64")]
const MACHINE: elf::Machine = elf::EM_X86_64;
#[cfg(target_arch = "aarch64")]
const MACHINE: elf::Machine = elf::EM_AARCH64;

/// The hidden command a child runs to open a library for the host.
pub const PROBE_COMMAND: &str = "probe-library";

/// How long the child may take to open a library.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the child prints on success, before the plugin's name.
const PROBE_OK: &str = "plugin ";

/// A library ready to be opened: the host's checked, private copy.
#[derive(Debug, Clone)]
pub struct CachedLibrary {
    /// The copy to open.
    pub path: PathBuf,
    /// The sha256 of its bytes, in hex.
    pub digest: String,
    /// Whether its layout must still be checked in this process.
    pub layout: LayoutCheck,
}

/// The directory of private copies, and how to probe a new one.
#[derive(Debug, Clone)]
pub struct LibraryCache {
    dir: PathBuf,
    /// The `plughost` binary that probes a library in a child process
    /// (none in unit tests, whose binary is the test harness).
    probe: Option<PathBuf>,
    /// The signers whose signatures are checked before a packaged
    /// plugin's library is opened.
    trust: TrustPolicy,
    /// How long ago a source must have last changed for its digest to be
    /// recorded ([`SETTLED`]).
    settled: Duration,
    /// The index file's content, once read (shared by clones).
    index: Arc<Mutex<IndexState>>,
}

/// The index in memory, and whether changes wait for a batch's end.
#[derive(Debug, Default)]
struct IndexState {
    /// Read from its file on first use.
    index: Option<Index>,
    /// Open batches ([`LibraryCache::batch`]): changes are written when
    /// the last ends.
    batches: usize,
    /// Changed since last written.
    dirty: bool,
}

/// Holds the index's changes until dropped (see [`LibraryCache::batch`]).
pub struct Batch<'a>(&'a LibraryCache);

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        let mut state = self.0.index.lock().expect("library index lock");
        state.batches -= 1;
        if state.batches == 0 && state.dirty {
            self.0.write_index(&mut state);
        }
    }
}

/// The file, inside the cache, of what is known without reading libraries.
const INDEX: &str = "index.json";

/// What the cache knows without reading a library.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    /// Per source path: the digest of its bytes, and the file's stamp
    /// ([`stamp`]) when they were read.
    #[serde(default)]
    sources: BTreeMap<String, Known>,
    /// Per copy (by digest): the host binary whose layout check passed on
    /// it ([`host_identity`]).
    #[serde(default)]
    checked: BTreeMap<String, String>,
}

/// A source's digest, and its stamp when it was read.
#[derive(Debug, Serialize, Deserialize)]
struct Known {
    stamp: String,
    digest: String,
}

impl LibraryCache {
    /// The cache in `dir`, probing new libraries with the running binary.
    pub fn new(dir: PathBuf, trust: TrustPolicy) -> Self {
        Self {
            dir,
            probe: std::env::current_exe().ok(),
            trust,
            settled: SETTLED,
            index: Arc::default(),
        }
    }

    /// The signers this host trusts.
    pub fn trust(&self) -> &TrustPolicy {
        &self.trust
    }

    /// The directory of copies.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks the library at `source` and returns the private copy to open.
    ///
    /// A source whose file is unchanged since it was last read (the same
    /// device, inode, size and change times, see [`stamp`]) is not read
    /// again: its copy, named by the digest recorded then, is used.
    pub fn prepare(&self, source: &Path) -> Result<CachedLibrary, LoadError> {
        let refused = |reason: String| LoadError::Damaged {
            path: source.to_owned(),
            reason,
        };
        let unreadable = |e: std::io::Error| LoadError::Open {
            path: source.to_owned(),
            reason: e.to_string(),
        };
        let meta = std::fs::metadata(source).map_err(unreadable)?;
        let stamp = stamp(&meta);
        let known = self
            .known_digest(source, &stamp)
            .filter(|digest| self.copy_path(digest).is_file());
        let digest = match known {
            Some(digest) => digest,
            None => {
                let bytes = std::fs::read(source).map_err(unreadable)?;
                check_elf(&bytes).map_err(refused)?;
                let digest = hex_digest(&bytes);
                let path = self.copy_path(&digest);
                if !path.is_file() {
                    self.write_copy(&path, &bytes).map_err(|e| {
                        refused(format!(
                            "cannot write the host's copy {}: {e}",
                            path.display()
                        ))
                    })?;
                }
                self.remember(source, &meta, stamp, &digest);
                digest
            }
        };
        let path = self.copy_path(&digest);
        let checked_by = self.read_index(|index| {
            index
                .checked
                .get(&digest)
                .map(|by| by.as_str() == host_identity())
        });
        let layout = match checked_by {
            Some(true) => LayoutCheck::AlreadyPassed,
            // Checked by another build: this one checks it in process.
            Some(false) => LayoutCheck::Run,
            None => match &self.probe {
                Some(exe) => {
                    probe(exe, &path).map_err(|reason| match reason {
                        Probe::Refused(message) => LoadError::Probe {
                            path: source.to_owned(),
                            reason: message,
                        },
                        Probe::Crashed(how) => refused(how),
                    })?;
                    // The child is this binary: it ran the layout check.
                    self.mark_checked(&digest);
                    LayoutCheck::AlreadyPassed
                }
                None => LayoutCheck::Run,
            },
        };
        Ok(CachedLibrary {
            path,
            digest,
            layout,
        })
    }

    /// Records that this binary's layout check passed on `copy`, so later
    /// starts of the same binary skip it.
    pub fn layout_passed(&self, copy: &CachedLibrary) {
        if copy.layout == LayoutCheck::Run && self.probe.is_some() {
            self.mark_checked(&copy.digest);
        }
    }

    /// The sha256 of the library at `source`, from the index when the file
    /// is unchanged since it was last read, else by reading it.
    pub fn source_digest(&self, source: &Path) -> Option<String> {
        let meta = std::fs::metadata(source).ok()?;
        self.known_digest(source, &stamp(&meta))
            .or_else(|| file_digest(source))
    }

    fn copy_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.so"))
    }

    /// The digest recorded for `source`, if its file still has `stamp`.
    fn known_digest(&self, source: &Path, stamp: &str) -> Option<String> {
        let key = source.to_str()?;
        self.read_index(|index| {
            index
                .sources
                .get(key)
                .filter(|known| known.stamp == stamp)
                .map(|known| known.digest.clone())
        })
    }

    /// Records `digest` for `source` as it was when `meta` was read (before
    /// its bytes). A file changed in the last seconds is not recorded: a
    /// second change within the file system's timestamp granularity would
    /// leave the same stamp on other bytes.
    fn remember(&self, source: &Path, meta: &std::fs::Metadata, stamp: String, digest: &str) {
        let settled = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .zip(changed_ago(meta))
            .is_some_and(|(modified, changed)| modified.min(changed) >= self.settled);
        let Some(key) = source.to_str().filter(|_| settled) else {
            return;
        };
        let digest = digest.to_owned();
        self.change_index(|index| {
            index
                .sources
                .insert(key.to_owned(), Known { stamp, digest });
            true
        });
    }

    /// Takes the library `digest` as checked: an instance running this
    /// very build ([`build_identity`]) opened it in its probe, so this one
    /// opens it without a probe of its own.
    pub fn vouch(&self, digest: &str) {
        self.mark_checked(digest);
    }

    fn mark_checked(&self, digest: &str) {
        self.change_index(|index| {
            index
                .checked
                .insert(digest.to_owned(), host_identity().to_owned());
            true
        });
    }

    /// Holds every change to the index until the returned guard is
    /// dropped, then writes it once: a start-up with hundreds of new
    /// libraries writes the file once, not twice per library.
    pub fn batch(&self) -> Batch<'_> {
        self.index.lock().expect("library index lock").batches += 1;
        Batch(self)
    }

    /// Runs `read` on the index, read from its file the first time.
    fn read_index<T>(&self, read: impl FnOnce(&Index) -> T) -> T {
        let mut state = self.index.lock().expect("library index lock");
        read(state.index.get_or_insert_with(|| self.load_index()))
    }

    /// Runs `change` on the index; when `change` says it changed anything,
    /// writes it (at the end of the batch, in one).
    fn change_index(&self, change: impl FnOnce(&mut Index) -> bool) {
        let mut state = self.index.lock().expect("library index lock");
        let changed = change(state.index.get_or_insert_with(|| self.load_index()));
        state.dirty |= changed;
        if state.dirty && state.batches == 0 {
            self.write_index(&mut state);
        }
    }

    fn write_index(&self, state: &mut IndexState) {
        let Some(index) = &state.index else {
            return;
        };
        let path = self.dir.join(INDEX);
        let written = serde_json::to_vec(index)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                std::fs::create_dir_all(&self.dir)?;
                write_replacing(&path, &bytes, |_| Ok(()))
            });
        match written {
            Ok(()) => state.dirty = false,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot write the library index: {e}")
            }
        }
    }

    fn load_index(&self) -> Index {
        let path = self.dir.join(INDEX);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), "the library index is damaged and is built again: {e}");
                Index::default()
            }),
            Err(_) => Index::default(),
        }
    }

    /// Writes a copy once: a temporary file, made read-only, renamed into
    /// place (so a copy is whole or absent).
    fn write_copy(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        write_replacing(path, bytes, |tmp| {
            std::fs::File::open(tmp)?.sync_all()?;
            let mut permissions = std::fs::metadata(tmp)?.permissions();
            permissions.set_readonly(true);
            std::fs::set_permissions(tmp, permissions)
        })
    }

    /// Removes the copies whose digest is not in `keep`, their entries in
    /// the index, temporary files an interrupted write left and what an
    /// older version kept here (`.ok` marks, `sources/`). Mapped copies
    /// stay mapped when their file is removed.
    pub fn prune(&self, keep: &std::collections::BTreeSet<String>) {
        let remove = |path: &Path| {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), "cannot remove an unused library copy: {e}");
            }
        };
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let stale = match name.strip_suffix(".so") {
                    Some(digest) => !keep.contains(digest),
                    None => {
                        (name.starts_with('.') && name.ends_with(".tmp")) || name.ends_with(".ok")
                    }
                };
                if stale {
                    remove(&entry.path());
                }
            }
        }
        let older = self.dir.join("sources");
        if older.is_dir()
            && let Err(e) = std::fs::remove_dir_all(&older)
        {
            tracing::warn!(path = %older.display(), "cannot remove an older version's records: {e}");
        }
        self.change_index(|index| {
            let before = (index.sources.len(), index.checked.len());
            index
                .sources
                .retain(|_, known| keep.contains(&known.digest));
            index.checked.retain(|digest, _| keep.contains(digest));
            before != (index.sources.len(), index.checked.len())
        });
    }
}

/// How long ago a file must have last changed for its stamp to be recorded.
const SETTLED: Duration = Duration::from_secs(2);

/// What identifies a file's bytes without reading them, as git's index
/// does: device, inode, size, and modification and change times to the
/// nanosecond. Writing the file changes its change time, which no program
/// can set back.
fn stamp(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt as _;
    format!(
        "{} {} {} {}.{:09} {}.{:09}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec(),
        meta.ctime(),
        meta.ctime_nsec()
    )
}

/// How long ago the file's status last changed.
fn changed_ago(meta: &std::fs::Metadata) -> Option<Duration> {
    use std::os::unix::fs::MetadataExt as _;
    let changed = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(meta.ctime()).ok()?,
            u32::try_from(meta.ctime_nsec()).ok()?,
        );
    changed.elapsed().ok()
}

/// Writes `bytes` to `path` through a temporary file beside it, finished by
/// `finish` and renamed over it, so a reader sees the old or the new
/// content, never a part; the temporary file goes on failure.
fn write_replacing(
    path: &Path,
    bytes: &[u8],
    finish: impl FnOnce(&Path) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = std::fs::write(&tmp, bytes)
        .and_then(|()| finish(&tmp))
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// What names this host binary in a library's check mark: a library's
/// layout checked by one build is not taken as checked by another. The
/// build's id when it has one ([`build_identity`]), else the stamp of its
/// file.
fn host_identity() -> &'static str {
    static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| match build_identity() {
        Some(build) => build.to_owned(),
        None => {
            let exe = std::fs::metadata(RUNNING_EXE)
                .map(|meta| stamp(&meta))
                // Unknown: a mark this process writes will not be trusted later.
                .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
            format!("plughost {} {exe}", env!("CARGO_PKG_VERSION"))
        }
    })
}

/// The running binary, even when its file was replaced since it started.
const RUNNING_EXE: &str = "/proc/self/exe";

/// This build of the host on this kind of machine, as every instance
/// alike names it: the version and the GNU build id the linker wrote into
/// the binary (a hash of its contents), and a digest of what else decides
/// whether opening a library crashes (the CPU's features, the build ids of
/// the dynamic loader and C library this process runs on). `None` for a
/// binary linked without a build id: its checks are then its own.
pub fn build_identity() -> Option<&'static str> {
    static BUILD: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BUILD
        .get_or_init(|| {
            let id = file_build_id(Path::new(RUNNING_EXE))?;
            let mut machine = Sha256::new();
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            let features = cpuinfo
                .lines()
                .find(|line| line.starts_with("flags") || line.starts_with("Features"));
            machine.update(features.unwrap_or_default());
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
            let runtime: std::collections::BTreeSet<&str> = maps
                .lines()
                .filter_map(|line| line.split_whitespace().nth(5))
                .filter(|path| path.contains("/ld-linux") || path.ends_with("/libc.so.6"))
                .collect();
            for path in runtime {
                machine.update(file_build_id(Path::new(path)).unwrap_or_default());
            }
            Some(format!(
                "plughost {} build {} machine {}",
                env!("CARGO_PKG_VERSION"),
                hex::encode(id),
                &hex::encode(machine.finalize())[..16]
            ))
        })
        .as_deref()
}

/// The GNU build id of the ELF file at `path`, from its first 64 KiB
/// (where the notes sit, right after the program headers).
fn file_build_id(path: &Path) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(64 * 1024);
    std::fs::File::open(path)
        .ok()?
        .take(64 * 1024)
        .read_to_end(&mut head)
        .ok()?;
    gnu_build_id(&head).map(<[u8]>::to_vec)
}

/// The GNU build id in the notes of the ELF file starting with `head`.
fn gnu_build_id(head: &[u8]) -> Option<&[u8]> {
    let header = FileHeader64::<Endianness>::parse(head).ok()?;
    let endian = header.endian().ok()?;
    for segment in header.program_headers(endian, head).ok()? {
        if segment.p_type(endian) != elf::PT_NOTE {
            continue;
        }
        let Ok(Some(mut notes)) = segment.notes(endian, head) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == elf::ELF_NOTE_GNU && note.n_type(endian) == elf::NT_GNU_BUILD_ID {
                return Some(note.desc()).filter(|id| !id.is_empty());
            }
        }
    }
    None
}

/// The sha256 of `bytes`, in lower-case hex.
pub fn hex_digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The sha256 of the file at `path`, if it can be read.
pub fn file_digest(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|bytes| hex_digest(&bytes))
}

/// Checks that `bytes` are a 64-bit shared object for this machine whose
/// every program header and section lies inside the file.
pub fn check_elf(bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len() as u64;
    let header = FileHeader64::<Endianness>::parse(bytes).map_err(|e| {
        format!("not an ELF shared object for this platform ({e}); rebuild it as a cdylib")
    })?;
    let endian = header
        .endian()
        .map_err(|e| format!("unsupported ELF encoding ({e})"))?;
    if endian != Endianness::default() {
        return Err("built for a machine of the other byte order; rebuild it for this one".into());
    }
    let file_type = header.e_type(endian);
    if file_type != elf::ET_DYN {
        return Err(format!(
            "ELF file of type {file_type:?}, not a shared object; build the plugin as a cdylib"
        ));
    }
    let machine = header.e_machine(endian);
    if machine != MACHINE {
        return Err(format!(
            "built for machine {machine:?}, this host runs on {MACHINE:?}; rebuild it for this machine"
        ));
    }
    let inside = |offset: u64, size: u64| offset.checked_add(size).is_some_and(|end| end <= len);
    let segments = header.program_headers(endian, bytes).map_err(|e| {
        format!(
            "damaged ELF program headers ({e}): the file is cut short or overwritten; copy it again"
        )
    })?;
    let mut loadable = 0;
    let mut dynamic = false;
    for (i, segment) in segments.iter().enumerate() {
        let (offset, size) = (segment.p_offset(endian), segment.p_filesz(endian));
        if !inside(offset, size) {
            return Err(format!(
                "ELF segment {i} lies at bytes {offset}..{} but the file has {len}: it is cut short or damaged; copy it again",
                offset.saturating_add(size)
            ));
        }
        match segment.p_type(endian) {
            elf::PT_LOAD => {
                if size > segment.p_memsz(endian) {
                    return Err(format!(
                        "ELF segment {i} is larger in the file than in memory: the file is damaged"
                    ));
                }
                loadable += 1;
            }
            elf::PT_DYNAMIC => dynamic = true,
            _ => {}
        }
    }
    if loadable == 0 || !dynamic {
        return Err(
            "the ELF file declares no loadable segments or no dynamic section: it is damaged or not a library".into(),
        );
    }
    let sections = header.section_headers(endian, bytes).map_err(|e| {
        format!(
            "damaged ELF section headers ({e}): the file is cut short or overwritten; copy it again"
        )
    })?;
    for (i, section) in sections.iter().enumerate() {
        let (offset, size) = (section.sh_offset(endian), section.sh_size(endian));
        if section.sh_type(endian) != elf::SHT_NOBITS && !inside(offset, size) {
            return Err(format!(
                "ELF section {i} lies at bytes {offset}..{} but the file has {len}: it is cut short or damaged; copy it again",
                offset.saturating_add(size)
            ));
        }
    }
    Ok(())
}

/// Why the child refused a library.
enum Probe {
    /// The library loads but is not an acceptable plugin (the child's message).
    Refused(String),
    /// Loading it crashed or hung the child.
    Crashed(String),
}

/// Opens `library` in a child process and reads what it found.
fn probe(exe: &Path, library: &Path) -> Result<(), Probe> {
    let mut child = Command::new(exe)
        .arg(PROBE_COMMAND)
        .arg(library)
        .env("PLUGHOST_LOG", "off")
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Probe::Crashed(format!("cannot start {} to check it: {e}", exe.display())))?;
    // Read while it runs: a library that prints much while loading must
    // not stall the child on a full pipe.
    let reader = child.stdout.take().map(|mut stdout| {
        std::thread::spawn(move || {
            let mut out = String::new();
            let _ = stdout.read_to_string(&mut out);
            out
        })
    });
    // Waited for on a thread of its own, so the answer counts from the
    // child's exit, and killed if it does not come in time.
    let pid = rustix::process::Pid::from_child(&child);
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = match exited.recv_timeout(PROBE_TIMEOUT) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(Probe::Crashed(format!("cannot wait for the check: {e}"))),
        Err(_) => {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            let _ = exited.recv();
            return Err(Probe::Crashed(format!(
                "opening it did not finish within {} s (its initialisers hang?)",
                PROBE_TIMEOUT.as_secs()
            )));
        }
    };
    let out = reader.and_then(|r| r.join().ok()).unwrap_or_default();
    let out = out.trim();
    if status.success() && out.starts_with(PROBE_OK) {
        return Ok(());
    }
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return Err(Probe::Crashed(format!(
            "opening it crashed a test process with signal {signal} ({}): the file is damaged; rebuild or copy it again",
            signal_name(signal)
        )));
    }
    Err(Probe::Refused(if out.is_empty() {
        format!("the check of the library failed ({status})")
    } else {
        out.to_owned()
    }))
}

pub(crate) fn signal_name(signal: i32) -> &'static str {
    match signal {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        _ => "a fatal signal",
    }
}

/// The child's side of a probe: opens `library`, prints `plugin <name>` or
/// the reason it is refused. A crash here is the parent's answer.
pub fn run_probe(library: &Path) -> std::process::ExitCode {
    match crate::plugin::loading::loader::load_library(library, LayoutCheck::Run) {
        Ok(opened) => {
            println!("{PROBE_OK}{}", opened.module.name().as_str());
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            // The parent names its own file; the child's path is the copy.
            let text = e.to_string();
            let prefix = format!("{}: ", library.display());
            println!("{}", text.strip_prefix(&prefix).unwrap_or(&text));
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_library() -> Vec<u8> {
        // Any shared object of this machine will do: the C library.
        let candidates = [
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/aarch64-linux-gnu/libc.so.6",
            "/usr/lib/aarch64-linux-gnu/libc.so.6",
        ];
        candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .expect("the C library is readable")
    }

    #[test]
    fn the_running_build_is_named_by_its_build_id() {
        let id = build_identity().expect("the linker writes a GNU build id");
        let words: Vec<&str> = id.split(' ').collect();
        let hex = |word: &str| word.len() >= 16 && word.chars().all(|c| c.is_ascii_hexdigit());
        assert!(
            words.len() == 6
                && words[0] == "plughost"
                && words[2] == "build"
                && hex(words[3])
                && words[4] == "machine"
                && hex(words[5]),
            "{id}"
        );
        assert_eq!(host_identity(), id);
        // The C library has one too; a file cut before its notes has none.
        let libc = own_library();
        assert!(gnu_build_id(&libc).is_some());
        assert_eq!(gnu_build_id(&libc[..64]), None);
    }

    /// A cache in a new directory, and a source holding `lib` there.
    fn with_source(lib: &[u8], settled: Duration) -> (tempfile::TempDir, PathBuf, LibraryCache) {
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("libc.so");
        std::fs::write(&source, lib).unwrap();
        let cache = LibraryCache {
            dir: dir.path().join("libs"),
            probe: None,
            trust: TrustPolicy::default(),
            settled,
            index: Arc::default(),
        };
        (dir, source, cache)
    }

    /// The same cache as the next process sees it (its index read again).
    fn next_process(cache: &LibraryCache) -> LibraryCache {
        LibraryCache {
            index: Arc::default(),
            ..cache.clone()
        }
    }

    fn check(bytes: &[u8], expected: Option<&str>) {
        match (check_elf(bytes), expected) {
            (Ok(()), None) => {}
            (Err(e), Some(part)) => assert!(e.contains(part), "{e:?} lacks {part:?}"),
            (got, want) => panic!("got {got:?}, wanted an error containing {want:?}"),
        }
    }

    #[test]
    fn whole_libraries_pass_and_damaged_ones_are_refused_with_the_reason() {
        let lib = own_library();
        check(&lib, None);
        check(b"", Some("not an ELF shared object"));
        check(b"\x7fELF garbage", Some("not an ELF shared object"));
        for cut in [64, 1000, 4096, lib.len() / 3, lib.len() - 1] {
            check(&lib[..cut], Some("cut short"));
        }
        let mut zeroed = lib.clone();
        // e_phnum = 0: no program headers at all.
        zeroed[56..58].copy_from_slice(&[0, 0]);
        check(&zeroed, Some("no loadable segments"));
        let mut executable = lib.clone();
        executable[16..18].copy_from_slice(&2u16.to_le_bytes());
        check(&executable, Some("not a shared object"));
        let mut foreign = lib.clone();
        foreign[18..20].copy_from_slice(&40u16.to_le_bytes()); // EM_ARM
        check(&foreign, Some("built for machine"));
    }

    #[test]
    fn copies_are_written_once_read_only_and_pruned_when_unused() {
        let (_dir, source, cache) = with_source(&own_library(), SETTLED);
        let copy = cache.prepare(&source).unwrap();
        assert!(
            std::fs::metadata(&copy.path)
                .unwrap()
                .permissions()
                .readonly()
        );
        assert_eq!(copy.digest, file_digest(&source).unwrap());
        // Overwriting the source does not touch the copy.
        std::fs::write(&source, b"").unwrap();
        assert_eq!(file_digest(&copy.path).unwrap(), copy.digest);
        assert!(matches!(
            cache.prepare(&source),
            Err(LoadError::Damaged { .. })
        ));
        std::fs::write(cache.dir().join(".x.tmp"), b"").unwrap();
        cache.prune(&[copy.digest.clone()].into());
        assert!(copy.path.is_file());
        assert!(!cache.dir().join(".x.tmp").exists());
        cache.prune(&Default::default());
        assert!(!copy.path.exists());
    }

    #[test]
    fn an_unchanged_source_is_known_by_its_stamp_and_a_changed_one_is_read_again() {
        let lib = own_library();
        let (_dir, source, mut cache) = with_source(&lib, SETTLED);
        let meta = || stamp(&std::fs::metadata(&source).unwrap());
        // Just written: not settled, so not recorded.
        let first = cache.prepare(&source).unwrap();
        assert_eq!(cache.known_digest(&source, &meta()), None);
        cache.settled = Duration::ZERO;
        assert_eq!(cache.prepare(&source).unwrap().digest, first.digest);
        assert_eq!(
            cache.known_digest(&source, &meta()),
            Some(first.digest.clone())
        );
        assert_eq!(cache.source_digest(&source), Some(first.digest.clone()));
        // Other bytes of the same length: the change time moves on (past
        // the clock's tick), so the record no longer applies.
        std::thread::sleep(Duration::from_millis(50));
        let mut other = lib.clone();
        let last = other.len() - 1;
        other[last] ^= 0xff;
        std::fs::write(&source, &other).unwrap();
        assert_eq!(cache.known_digest(&source, &meta()), None);
        let second = cache.prepare(&source).unwrap();
        assert_eq!(second.digest, hex_digest(&other));
        assert_ne!(second.digest, first.digest);
        // A recorded digest whose copy was pruned is read again.
        cache.prune(&[second.digest.clone()].into());
        assert!(!first.path.exists());
        assert_eq!(
            cache.known_digest(&source, &meta()),
            Some(second.digest.clone())
        );
        std::fs::remove_file(&second.path).unwrap();
        let again = cache.prepare(&source).unwrap();
        assert_eq!(again.digest, second.digest);
        assert!(again.path.is_file());
        // The index is one file, read by the next process.
        let next = next_process(&cache);
        assert_eq!(
            next.known_digest(&source, &meta()),
            Some(second.digest.clone())
        );
        // Entries of digests no longer kept are pruned with their copies.
        cache.prune(&Default::default());
        let next = next_process(&cache);
        assert_eq!(next.known_digest(&source, &meta()), None);
        assert!(next.read_index(|index| index.sources.is_empty() && index.checked.is_empty()));
    }

    #[test]
    fn a_copy_checked_by_this_binary_skips_the_check_and_one_checked_by_another_does_not() {
        let (_dir, source, cache) = with_source(&own_library(), Duration::ZERO);
        let copy = cache.prepare(&source).unwrap();
        assert_eq!(copy.layout, LayoutCheck::Run);
        cache.mark_checked(&copy.digest);
        assert_eq!(
            cache.prepare(&source).unwrap().layout,
            LayoutCheck::AlreadyPassed
        );
        cache.change_index(|index| {
            index
                .checked
                .insert(copy.digest.clone(), "plughost 0.0.1 another build".into());
            true
        });
        assert_eq!(cache.prepare(&source).unwrap().layout, LayoutCheck::Run);
        // A damaged index is built again: the library is read once more.
        std::fs::write(cache.dir().join(INDEX), b"{not json").unwrap();
        let next = next_process(&cache);
        assert_eq!(
            next.known_digest(&source, &stamp(&std::fs::metadata(&source).unwrap())),
            None
        );
        let again = next.prepare(&source).unwrap();
        assert_eq!(
            (again.digest, again.layout),
            (copy.digest, LayoutCheck::Run)
        );
        assert!(
            next.known_digest(&source, &stamp(&std::fs::metadata(&source).unwrap()))
                .is_some()
        );
    }

    #[test]
    fn changes_in_a_batch_are_written_once_at_its_end() {
        let (_dir, source, cache) = with_source(&own_library(), Duration::ZERO);
        let batch = cache.batch();
        let copy = cache.prepare(&source).unwrap();
        cache.mark_checked(&copy.digest);
        assert!(!cache.dir().join(INDEX).exists());
        drop(batch);
        let next = next_process(&cache);
        let again = next.prepare(&source).unwrap();
        assert_eq!(
            (again.digest, again.layout),
            (copy.digest, LayoutCheck::AlreadyPassed)
        );
    }
}
