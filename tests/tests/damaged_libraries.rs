//! Damaged libraries never take the host down: cut short, headers pointing
//! past the end, zeroed program headers, another machine, or an initialiser
//! that crashes whoever loads it. Each is refused with its reason at
//! start-up, through HTTP and through the CLI, and the rest serve. Files
//! overwritten or truncated in place while the host serves never reach
//! mapped code.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use e2e::{DataDir, Host, package_files, snapshot, zip_of};

fn u16_at(bytes: &[u8], at: usize) -> usize {
    usize::from(u16::from_le_bytes([bytes[at], bytes[at + 1]]))
}

fn u64_at(bytes: &[u8], at: usize) -> usize {
    usize::try_from(u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())).unwrap()
}

/// The byte ranges of the program headers of an ELF64 file.
fn program_headers(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
    let (offset, size, count) = (u64_at(bytes, 32), u16_at(bytes, 54), u16_at(bytes, 56));
    (0..count)
        .map(|i| offset + i * size..offset + (i + 1) * size)
        .collect()
}

/// (name, damaged library bytes, expected part of the reason)
fn damaged() -> Vec<(String, Vec<u8>, &'static str)> {
    let good = std::fs::read(e2e::library("hello")).unwrap();
    let len = good.len();
    let mut cases: Vec<(String, Vec<u8>, &str)> =
        [1_000, 4_096, 100_000, 400_000, len / 2, len - 1]
            .into_iter()
            .map(|cut| (format!("cut{cut}"), good[..cut].to_vec(), "cut short"))
            .collect();

    let mut past_end = good.clone();
    let load = program_headers(&good)
        .into_iter()
        .filter(|h| good[h.start..h.start + 4] == [1, 0, 0, 0])
        .nth(1)
        .expect("a second PT_LOAD");
    past_end[load.start + 8..load.start + 16].copy_from_slice(&(len as u64 + 4096).to_le_bytes());
    cases.push(("pastend".into(), past_end, "lies at bytes"));

    let mut zeroed = good.clone();
    for header in program_headers(&good) {
        zeroed[header].fill(0);
    }
    cases.push(("zeroedheaders".into(), zeroed, "no loadable segments"));

    let mut foreign = good.clone();
    foreign[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    cases.push(("foreign".into(), foreign, "built for machine"));

    cases.push(("empty".into(), Vec::new(), "not an ELF shared object"));
    cases.push((
        "crashyinit".into(),
        std::fs::read(e2e::library("crashy_init")).unwrap(),
        "crashed a test process with signal 11 (SIGSEGV)",
    ));
    cases
}

fn package_with_library(library: Vec<u8>) -> Vec<u8> {
    let mut files = package_files("hello", "hello", "hello");
    files
        .iter_mut()
        .find(|(name, _)| name.ends_with(".so"))
        .expect("a library entry")
        .1 = library;
    let refs: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    zip_of(&refs)
}

#[test]
fn damaged_libraries_in_the_plugin_dir_are_listed_with_their_reason_and_the_rest_serve() {
    let data = DataDir::new();
    data.install_dir("sysinfo");
    let cases = damaged();
    for (name, bytes, _) in &cases {
        std::fs::write(data.plugins().join(format!("lib{name}.so")), bytes).unwrap();
    }
    let host = Host::start(&data);
    for (name, _, reason) in &cases {
        let item = host.plugin(name);
        assert_eq!(item["state"], "error", "{name}: {item}");
        let error = item["error"].as_str().unwrap();
        assert!(
            error.contains(reason) && error.contains(&format!("lib{name}.so")),
            "{name}: {error}"
        );
    }
    assert_eq!(host.get("/admin/v1/sys/sysinfo").status, 200);
    assert_eq!(host.get("/health").status, 200);
}

#[test]
fn damaged_libraries_uploaded_or_added_by_the_cli_are_refused_and_nothing_is_installed() {
    let (data, host) = e2e::serve(&["sysinfo"]);
    let before = snapshot(&data.plugins());
    for (name, bytes, reason) in damaged() {
        let archive = package_with_library(bytes);
        let reply = host.upload(&archive, "type=zip");
        assert_eq!(reply.status, 422, "{name}: {:?}", reply.json);
        let msg = reply.json["msg"].as_str().unwrap();
        assert!(msg.contains(reason), "{name}: {msg}");
        assert_eq!(host.get("/health").status, 200, "{name}");
        assert_eq!(snapshot(&data.plugins()), before, "{name}");

        let file = data.path().join(format!("{name}.zip"));
        std::fs::write(&file, &archive).unwrap();
        let (ok, out) = e2e::cli(
            &data,
            &[],
            &["plugin", "add", "--zip", file.to_str().unwrap()],
        );
        assert!(!ok, "{name}: {out}");
        assert!(out.contains(reason), "{name}: {out}");
        assert_eq!(snapshot(&data.plugins()), before, "{name}");
    }
    // The good package still installs.
    let reply = host.upload(&e2e::package("hello", "hello", "hello"), "type=zip");
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(host.get("/hello/v1/greet").status, 200);
}

#[test]
fn libraries_overwritten_or_truncated_in_place_while_serving_never_crash_the_host() {
    let data = DataDir::new();
    data.install_dir("panicky");
    data.drop_library("hello");
    let host = Arc::new(Host::start(&data));
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (host, stop, served, failed) =
                (host.clone(), stop.clone(), served.clone(), failed.clone());
            std::thread::spawn(move || {
                let path = if i % 2 == 0 {
                    "/panicky/v1/inspect/7"
                } else {
                    "/hello/v1/greet"
                };
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < deadline {
                    if host.get(path).status == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let panicky = data.plugins().join("panicky/libpanicky.so");
    let hello = data.plugins().join("libhello.so");
    let other = std::fs::read(e2e::library("sysinfo")).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for round in 0..5 {
        // `cp other.so libpanicky.so`: the same inode, rewritten.
        std::fs::write(&panicky, &other).unwrap();
        std::fs::write(&hello, &other[..other.len() / (round + 2)]).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // `: > libpanicky.so`
        std::fs::File::create(&panicky).unwrap();
        std::fs::File::create(&hello).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    for thread in load {
        thread.join().expect("a load thread");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 20);
    assert_eq!(host.get("/panicky/v1/inspect/8").data()["id"], "8");
    assert_eq!(host.get("/admin/v1/sys/plugins/changed").data(), true);
    // The next start lists the damage with its reason.
    let host = Arc::into_inner(host).expect("threads are done");
    assert!(host.stop().success());
    let host = Host::start(&data);
    for name in ["panicky", "hello"] {
        let item = host.plugin(name);
        assert_eq!(item["state"], "error", "{item}");
    }
}

#[test]
fn checked_libraries_are_recorded_by_digest_and_unused_copies_pruned() {
    let (data, host) = e2e::serve(&["hello"]);
    let libs = data.path().join("libs");
    let names = || {
        let mut names: Vec<String> = std::fs::read_dir(&libs)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    };
    // The copies the host checked, by digest, in its index.
    let checked = || {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(libs.join("index.json")).unwrap()).unwrap();
        let mut checked: Vec<String> = index["checked"]
            .as_object()
            .unwrap()
            .keys()
            .map(|digest| format!("{digest}.so"))
            .collect();
        checked.sort();
        checked
    };
    let first = names();
    assert_eq!(first.len(), 2, "{first:?}");
    assert!(first[0].ends_with(".so") && first[1] == "index.json");
    assert_eq!(checked(), [first[0].clone()]);
    let copy = libs.join(&first[0]);
    assert!(std::fs::metadata(&copy).unwrap().permissions().readonly());
    assert!(host.stop().success());

    // Replaced by another plugin: the next start copies that one and drops the old copy.
    std::fs::remove_dir_all(data.plugins().join("hello")).unwrap();
    data.drop_library("sysinfo");
    let host = Host::start(&data);
    assert_eq!(host.plugin("sysinfo")["state"], "loaded");
    let second = names();
    assert_eq!(second.len(), 2, "{second:?}");
    assert!(!second.contains(&first[0]));
    assert_eq!(checked(), [second[0].clone()]);
}

#[test]
fn leftovers_of_interrupted_operations_are_removed_at_the_next_start() {
    let data = DataDir::new();
    let backups = data.path().join("backups");
    let libs = data.path().join("libs");
    for dir in [&backups, &libs] {
        std::fs::create_dir_all(dir).unwrap();
    }
    let planted = [
        backups.join(".hello.0123456789abcdef.tmp"),
        libs.join(".0123456789abcdef.tmp"),
        data.plugins()
            .join(".staging-0123456789abcdef/hello/libhello.so"),
    ];
    for file in &planted {
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, b"").unwrap();
    }
    let kept = backups.join("hello.20260101000000.backup.zip");
    std::fs::write(&kept, b"PK").unwrap();
    let host = Host::start(&data);
    assert_eq!(host.get("/health").status, 200);
    for file in &planted {
        assert!(!file.exists(), "{} was left", file.display());
    }
    assert!(!data.plugins().join(".staging-0123456789abcdef").exists());
    assert!(kept.is_file(), "a finished backup is kept");
}
