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
//! plugin dir never touches mapped code. A passed copy is marked
//! (`<sha256>.ok`), so later starts skip the child.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use object::{
    Endianness,
    elf::{self, FileHeader64},
    read::elf::{FileHeader as _, ProgramHeader as _, SectionHeader as _},
};
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
}

impl LibraryCache {
    /// The cache in `dir`, probing new libraries with the running binary.
    pub fn new(dir: PathBuf, trust: TrustPolicy) -> Self {
        Self {
            dir,
            probe: std::env::current_exe().ok(),
            trust,
            settled: SETTLED,
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
        let known = self
            .known_digest(source, &meta)
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
                self.remember(source, &meta, &digest);
                digest
            }
        };
        let path = self.copy_path(&digest);
        let marker = self.dir.join(format!("{digest}.ok"));
        let layout = match std::fs::read_to_string(&marker) {
            Ok(checked_by) if checked_by == host_identity() => LayoutCheck::AlreadyPassed,
            Ok(_) => LayoutCheck::Run,
            Err(_) => match &self.probe {
                Some(exe) => {
                    probe(exe, &path).map_err(|reason| match reason {
                        Probe::Refused(message) => LoadError::Probe {
                            path: source.to_owned(),
                            reason: message,
                        },
                        Probe::Crashed(how) => refused(how),
                    })?;
                    // The child is this binary: it ran the layout check.
                    self.write_marker(&marker);
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
            self.write_marker(&self.dir.join(format!("{}.ok", copy.digest)));
        }
    }

    /// The sha256 of the library at `source`, from its record when the file
    /// is unchanged since it was last read, else by reading it.
    pub fn source_digest(&self, source: &Path) -> Option<String> {
        let meta = std::fs::metadata(source).ok()?;
        self.known_digest(source, &meta)
            .or_else(|| file_digest(source))
    }

    fn copy_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.so"))
    }

    /// Where the digest of the library at `source` is recorded.
    fn record_path(&self, source: &Path) -> PathBuf {
        self.dir
            .join(SOURCES)
            .join(hex_digest(source.as_os_str().as_encoded_bytes()))
    }

    /// The digest recorded for `source`, if its file is unchanged since.
    fn known_digest(&self, source: &Path, meta: &std::fs::Metadata) -> Option<String> {
        let record = std::fs::read_to_string(self.record_path(source)).ok()?;
        let (recorded, digest) = record.trim_end().split_once('\n')?;
        (recorded == stamp(meta)
            && digest.len() == 64
            && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_owned())
    }

    /// Records `digest` for `source` as it was when `meta` was read (before
    /// its bytes). A file changed in the last seconds is not recorded: a
    /// second change within the file system's timestamp granularity would
    /// leave the same stamp on other bytes.
    fn remember(&self, source: &Path, meta: &std::fs::Metadata, digest: &str) {
        let settled = meta
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .zip(changed_ago(meta))
            .is_some_and(|(modified, changed)| modified.min(changed) >= self.settled);
        if !settled {
            return;
        }
        let path = self.record_path(source);
        let text = format!("{}\n{digest}\n", stamp(meta));
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| write_replacing(&path, text.as_bytes(), |_| Ok(())));
        if let Err(e) = written {
            tracing::debug!(path = %path.display(), "cannot record a library's digest: {e}");
        }
    }

    fn write_marker(&self, marker: &Path) {
        if let Err(e) = write_replacing(marker, host_identity().as_bytes(), |_| Ok(())) {
            tracing::warn!(path = %marker.display(), "cannot record a checked library: {e}");
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

    /// Removes the copies (and their marks) whose digest is not in `keep`
    /// and temporary files an interrupted write left; when a copy went, also
    /// the records of sources that named a copy not kept. Mapped copies stay mapped when their file is
    /// removed.
    pub fn prune(&self, keep: &std::collections::BTreeSet<String>) {
        let remove = |path: &Path| {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), "cannot remove an unused library copy: {e}");
            }
        };
        let temporary = |name: &str| name.starts_with('.') && name.ends_with(".tmp");
        let mut removed = false;
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let digest = name
                    .strip_suffix(".so")
                    .or_else(|| name.strip_suffix(".ok"));
                let stale = match digest {
                    Some(d) => !keep.contains(d),
                    None => temporary(&name),
                };
                if stale {
                    remove(&entry.path());
                    removed = true;
                }
            }
        }
        // A record names a copy: with no copy removed, none is stale.
        if !removed {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(self.dir.join(SOURCES)) {
            for entry in entries.flatten() {
                let record = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let digest = record.lines().nth(1).unwrap_or_default();
                if !keep.contains(digest) || temporary(&entry.file_name().to_string_lossy()) {
                    remove(&entry.path());
                }
            }
        }
    }
}

/// The directory, inside the cache, of the digests recorded per source.
const SOURCES: &str = "sources";

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
/// layout checked by one build is not taken as checked by another.
fn host_identity() -> &'static str {
    static IDENTITY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    IDENTITY.get_or_init(|| {
        let exe = std::env::current_exe()
            .and_then(std::fs::metadata)
            .map(|meta| stamp(&meta))
            // Unknown: a mark this process writes will not be trusted later.
            .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string());
        format!("plughost {} {exe}", env!("CARGO_PKG_VERSION"))
    })
}

/// The sha256 of `bytes`, in lower-case hex.
pub fn hex_digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < PROBE_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Probe::Crashed(format!(
                    "opening it did not finish within {} s (its initialisers hang?)",
                    PROBE_TIMEOUT.as_secs()
                )));
            }
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

fn signal_name(signal: i32) -> &'static str {
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
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("libc.so");
        std::fs::write(&source, own_library()).unwrap();
        let cache = LibraryCache {
            dir: dir.path().join("libs"),
            probe: None,
            trust: TrustPolicy::default(),
            settled: SETTLED,
        };
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
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("libc.so");
        let lib = own_library();
        std::fs::write(&source, &lib).unwrap();
        let mut cache = LibraryCache {
            dir: dir.path().join("libs"),
            probe: None,
            trust: TrustPolicy::default(),
            settled: SETTLED,
        };
        let meta = || std::fs::metadata(&source).unwrap();
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
        // Records of digests no longer kept are pruned with their copies.
        cache.prune(&Default::default());
        assert_eq!(
            std::fs::read_dir(cache.dir().join(SOURCES))
                .unwrap()
                .count(),
            0
        );
    }
}
