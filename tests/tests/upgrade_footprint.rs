//! What live upgrades leave behind in process: each upgrade's old library
//! copy is removed from `<data-dir>/libs` at once (its code stays mapped
//! while requests use it), so the disk stays flat however many upgrades
//! run; only the copies of the builds being served remain.

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
    let started = Instant::now();
    for build in 1..=200 {
        let reply = host.upload(
            &e2e::greeter_build(build),
            "type=zip&upgrade=true&force=true",
        );
        assert_eq!(reply.status, 200, "upgrade {build}: {:?}", reply.json);
        let (n, bytes) = copies(&data);
        assert_eq!(n, 2, "after upgrade {build}: the old build's copy remains");
        // Each build is 20 bytes longer or shorter at most.
        assert!(
            bytes.abs_diff(one_each) < 64,
            "after upgrade {build}: {bytes} bytes"
        );
    }
    assert_eq!(e2e::greeter_version(&host).as_deref(), Some("1"));
    eprintln!("200 upgrades took {:?}", started.elapsed());
}
