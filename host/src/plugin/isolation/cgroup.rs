//! A cgroup v2 memory limit for isolated plugins' children, where the
//! host's own cgroup is delegated to it (systemd's `Delegate=yes`, a
//! container given a cgroup namespace of its own): the host moves itself
//! into a leaf `host` of its cgroup (cgroup v2 hands a controller only to
//! the children of a cgroup that holds no process), turns the memory
//! controller on for its children, and each child joins a cgroup of its
//! own with `memory.max` (swap off) before it opens its library. The limit
//! counts resident memory, page cache included, which RLIMIT_AS (set as
//! well) does not; past it the kernel kills the child and the host says
//! so. Where no cgroup is delegated, RLIMIT_AS alone caps the child and
//! the host's log says why.

use std::path::{Path, PathBuf};

/// The leaf the host moves itself into.
const HOST_LEAF: &str = "host";
/// The prefix of each child's cgroup.
const CHILD_PREFIX: &str = "isolated-";

/// The host's delegated cgroup.
#[derive(Debug)]
pub struct Delegated {
    dir: PathBuf,
}

impl Delegated {
    /// The host's cgroup, when it is a cgroup v2 one the host may manage
    /// and the memory controller is available there; else why not.
    pub fn find() -> Result<Self, String> {
        let membership = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| format!("cannot read /proc/self/cgroup: {e}"))?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let dir = cgroup_dir(&membership, &mounts)?;
        let controllers = read(&dir.join("cgroup.controllers"))?;
        if !controllers.split_whitespace().any(|c| c == "memory") {
            return Err(format!(
                "the memory controller is not available in {} (it has: {})",
                dir.display(),
                if controllers.trim().is_empty() {
                    "none"
                } else {
                    controllers.trim()
                }
            ));
        }
        let writable = |path: &Path| {
            rustix::fs::access(path, rustix::fs::Access::WRITE_OK).map_err(|_| {
                format!(
                    "{} is not delegated to this host (cannot write {})",
                    dir.display(),
                    path.display()
                )
            })
        };
        writable(&dir)?;
        writable(&dir.join("cgroup.subtree_control"))?;
        writable(&dir.join("cgroup.procs"))?;
        Ok(Self { dir })
    }

    /// Readies the cgroup for children: removes those a killed host left,
    /// moves the host into its leaf and turns the memory controller on.
    /// Refused when the cgroup holds processes other than this one (it is
    /// not the host's alone).
    pub fn prepare(&self) -> Result<(), String> {
        self.sweep();
        let subtree = read(&self.dir.join("cgroup.subtree_control"))?;
        if subtree.split_whitespace().any(|c| c == "memory") {
            return Ok(());
        }
        let ours = std::process::id().to_string();
        let others = read(&self.dir.join("cgroup.procs"))?
            .lines()
            .filter(|pid| !pid.trim().is_empty() && pid.trim() != ours)
            .count();
        if others > 0 {
            return Err(format!(
                "{} holds {others} other process(es); give the host a cgroup of its own (systemd: Delegate=yes)",
                self.dir.display()
            ));
        }
        let leaf = self.dir.join(HOST_LEAF);
        match std::fs::create_dir(&leaf) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", leaf.display())),
        }
        write(&leaf.join("cgroup.procs"), &ours)?;
        write(&self.dir.join("cgroup.subtree_control"), "+memory")
    }

    /// A new cgroup for the child named `name`, limited to `bytes` of
    /// memory and no swap.
    pub fn child(&self, name: &str, bytes: u64) -> Result<PathBuf, String> {
        let dir = self.dir.join(format!("{CHILD_PREFIX}{name}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
        write(&dir.join("memory.max"), &bytes.to_string())?;
        // Not every kernel accounts swap; without it there is none to cap.
        let _ = write(&dir.join("memory.swap.max"), "0");
        Ok(dir)
    }

    fn sweep(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(CHILD_PREFIX)
            {
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// A child's cgroup, removed when dropped unless taken (a child that never
/// started leaves none behind).
pub struct ChildCgroup(Option<PathBuf>);

impl ChildCgroup {
    /// Owns `dir`, if there is one.
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self(dir)
    }

    /// The cgroup.
    pub fn path(&self) -> Option<&Path> {
        self.0.as_deref()
    }

    /// Takes it over (the caller removes it).
    pub fn take(&mut self) -> Option<PathBuf> {
        self.0.take()
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(remove(dir));
        }
    }
}

/// Puts this process into the cgroup `dir` (a child does, before it opens
/// its library).
pub fn join(dir: &Path) -> Result<(), String> {
    write(&dir.join("cgroup.procs"), &std::process::id().to_string())
}

/// Whether the kernel killed a process of cgroup `dir` for its memory.
pub fn oom_killed(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("memory.events"))
        .ok()
        .and_then(|events| {
            events
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .is_some_and(|n| n > 0)
}

/// Removes a child's cgroup once its process is gone (the kernel may take
/// a moment to see it empty).
pub async fn remove(dir: PathBuf) {
    for _ in 0..50 {
        match std::fs::remove_dir(&dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
    tracing::warn!("cannot remove the cgroup {}", dir.display());
}

/// The directory of this process's cgroup v2 cgroup, from
/// `/proc/self/cgroup` and `/proc/self/mountinfo`.
fn cgroup_dir(membership: &str, mounts: &str) -> Result<PathBuf, String> {
    let relative = membership
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("this host is in no cgroup v2 hierarchy (no 0:: line in /proc/self/cgroup)")?;
    // mountinfo: `id parent major:minor root mount-point options... - type source options`.
    let mount = mounts
        .lines()
        .filter_map(|l| {
            let (fields, tail) = l.split_once(" - ")?;
            let fs_type = tail.split_whitespace().next()?;
            let mut fields = fields.split_whitespace();
            let root = fields.nth(3)?;
            let point = fields.next()?;
            (fs_type == "cgroup2").then_some((root, point))
        })
        // The mount showing the hierarchy from its root (a container's
        // namespace root is its own `/`).
        .find(|(root, _)| *root == "/")
        .map(|(_, point)| point)
        .ok_or("no cgroup v2 file system is mounted")?;
    let relative = relative.trim().trim_start_matches('/');
    Ok(if relative.is_empty() {
        PathBuf::from(mount)
    } else {
        Path::new(mount).join(relative)
    })
}

fn read(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value)
        .map_err(|e| format!("cannot write {value} to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
24 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - cgroup2 cgroup2 rw,nsdelegate
";

    #[test]
    fn the_cgroup_dir_is_the_v2_mount_and_the_0_line() {
        assert_eq!(
            cgroup_dir("0::/system.slice/plughost.service\n", MOUNTS).unwrap(),
            Path::new("/sys/fs/cgroup/system.slice/plughost.service")
        );
        // A container's own namespace: `0::/`.
        assert_eq!(
            cgroup_dir("0::/\n", MOUNTS).unwrap(),
            Path::new("/sys/fs/cgroup")
        );
        // Hybrid: v1 controllers, the v2 hierarchy mounted beside them.
        let hybrid = "4:memory:/a\n0::/\n";
        let mounts = "40 30 0:30 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup_dir(hybrid, mounts).unwrap(),
            Path::new("/sys/fs/cgroup/unified")
        );
    }

    #[test]
    fn without_v2_it_says_why() {
        let v1 = "4:memory:/a\n1:cpu:/\n";
        assert!(cgroup_dir(v1, MOUNTS).unwrap_err().contains("no cgroup v2"));
        assert!(
            cgroup_dir("0::/\n", "24 30 0:22 / /sys rw - sysfs sysfs rw\n")
                .unwrap_err()
                .contains("no cgroup v2 file system")
        );
    }
}
