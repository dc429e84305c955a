//! What live upgrades leave behind in process: each upgrade's old library
//! copy is removed from `<data-dir>/libs` at once (its code stays mapped
//! while requests use it), and its package from the package store, so the
//! disk stays flat however many upgrades run; only the copies of the builds
//! being served remain.

use std::time::Instant;

use e2e::{DataDir, Host};

/// The library copies in `libs/`: how many, and their bytes.
fn copies(data: &DataDir) -> (usize, u64) {
    std::fs::read_dir(data.path().join("libs"))
        .expect("libs dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".so"))
        .fold((0, 0), |(n, bytes), e| {
            (n + 1, bytes + e.metadata().map(|m| m.len()).unwrap_or(0))
        })
}

#[test]
fn two_hundred_upgrades_leave_one_copy_per_served_build() {
    let data = DataDir::new();
    data.install_dir("hello");
    let host = Host::start(&data);
    assert_eq!(host.upload(&e2e::greeter_build(0), "type=zip").status, 200);
    let (n, one_each) = copies(&data);
    assert_eq!(n, 2, "hello and greeter");
    let package = e2e::greeter_build(0).len() as u64;
    let start = dir_bytes(data.path());
    let started = Instant::now();
    for build in 1..=200 {
        upgrade(&host, build);
        let (n, bytes) = copies(&data);
        assert_eq!(n, 2, "after upgrade {build}: the old build's copy remains");
        // Each build is 20 bytes longer or shorter at most.
        assert!(
            bytes.abs_diff(one_each) < 64,
            "after upgrade {build}: {bytes} bytes"
        );
    }
    assert_eq!(e2e::greeter_version(&host).as_deref(), Some("1"));
    assert_data_dir_flat(&data, start, package);
    eprintln!(
        "200 upgrades took {:?}; host RSS {} KiB",
        started.elapsed(),
        e2e::rss_kib(host.pid())
    );
}

/// Upgrades greeter on `host` to its distinct build `build`.
fn upgrade(host: &Host, build: u32) {
    let reply = host.upload(
        &e2e::greeter_build(build),
        "type=zip&upgrade=true&force=true",
    );
    assert_eq!(reply.status, 200, "upgrade {build}: {:?}", reply.json);
}

/// The bytes of every file under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_bytes(&e.path()),
                    _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// The data dir stays within `bound` bytes of `start` (the package store in
/// its SQLite database included) after 200 upgrades of a build of
/// `package` bytes: each upgrade's package left the store.
fn assert_data_dir_flat(data: &DataDir, start: u64, package: u64) {
    let end = dir_bytes(data.path());
    eprintln!(
        "data dir: {} KiB before, {} KiB after (a package is {} KiB)",
        start / 1024,
        end / 1024,
        package / 1024
    );
    // The database reuses the pages a removed package freed; its write-ahead
    // log holds a few packages at most. 200 kept packages would be 200x.
    assert!(
        end < start + 6 * package,
        "the data dir grew from {start} to {end} bytes over 200 upgrades of a {package}-byte package"
    );
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = stat.rsplit_once(") ")?.1.to_owned();
                    let mut fields = after.split_whitespace();
                    let state = fields.next()?.to_owned();
                    let parent: u32 = fields.next()?.parse().ok()?;
                    Some(parent == pid && state != "Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

#[test]
fn two_hundred_isolated_upgrades_leave_nothing_of_the_old_builds() {
    let data = DataDir::new();
    data.install_dir("hello");
    let host = Host::start_with(&data, &[("PLUGHOST_ISOLATED_PLUGINS", "greeter")]);
    assert_eq!(host.upload(&e2e::greeter_build(0), "type=zip").status, 200);
    // Warm: the first upgrades settle the host's allocator and caches.
    for build in 1..=10 {
        upgrade(&host, build);
    }
    let before = e2e::rss_kib(host.pid());
    let package = e2e::greeter_build(0).len() as u64;
    let start = dir_bytes(data.path());
    let started = Instant::now();
    for build in 11..=210 {
        upgrade(&host, build);
        assert_eq!(copies(&data).0, 2, "after upgrade {build}");
    }
    eprintln!("200 isolated upgrades took {:?}", started.elapsed());
    assert_eq!(e2e::greeter_version(&host).as_deref(), Some("1"));
    assert_data_dir_flat(&data, start, package);
    let after = e2e::rss_kib(host.pid());
    // In process each build stays mapped (about its size, 10 MiB for a
    // debug build: 2 GiB over 200); isolated, the host maps none of them
    // and keeps a few tens of KiB per upgrade (measured 16 MiB over 200,
    // a debug build).
    eprintln!("isolated: host RSS {before} KiB before, {after} KiB after");
    assert!(
        after < before + 48 * 1024,
        "host RSS grew from {before} KiB to {after} KiB over 200 isolated upgrades"
    );
    assert!(
        e2e::eventually(std::time::Duration::from_secs(5), || children_of(
            host.pid()
        )
        .len()
            == 1),
        "old children remain: {:?}",
        children_of(host.pid())
    );
}
