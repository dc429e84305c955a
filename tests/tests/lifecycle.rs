//! Install, upgrade, uninstall and download while the host serves: through
//! the real binary, with real packages built from the workspace.

use std::time::{Duration, Instant};

use e2e::{
    DataDir, Host, greeter, greeter_version, package, package_files, snapshot, zip_names, zip_of,
};

#[test]
fn an_uploaded_package_serves_at_once_without_restart() {
    let (data, host) = e2e::serve(&["hello"]);
    assert_eq!(host.get("/greeter/v1/version").status, 404);

    let reply = host.upload(&greeter(1), "type=zip");
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    let msg = reply.json["msg"].as_str().unwrap();
    assert!(
        msg.contains("plugin 'greeter' 1.0.0 installed") && msg.contains("no restart"),
        "{msg}"
    );
    assert_eq!(reply.json["data"]["name"], "greeter");
    assert_eq!(greeter_version(&host).as_deref(), Some("1"));
    assert_eq!(host.plugin("greeter")["state"], "loaded");
    assert_eq!(host.get("/hello/v1/greet").status, 200);
    // In place, nothing left behind, and nothing a restart would change.
    assert!(data.leftovers().is_empty(), "{:?}", data.leftovers());
    assert!(data.plugins().join("greeter/libgreeter.so").is_file());
    assert_eq!(host.get("/admin/v1/sys/plugins/changed").data(), false);

    // It stays installed across a restart.
    assert!(host.stop().success());
    let host = Host::start(&data);
    assert_eq!(greeter_version(&host).as_deref(), Some("1"));
}

#[test]
fn upgrades_need_asking_keep_the_flag_and_refuse_downgrades_unless_forced() {
    let (_data, host) = e2e::serve(&["hello"]);
    host.upload(&greeter(1), "type=zip");
    host.upload(&greeter(2), "type=zip").assert_error(
        409,
        "plugin 'greeter' 1.0.0 is installed; to replace it with 2.0.0, install with upgrade=true",
    );
    host.put("/admin/v1/sys/plugins/greeter/status");

    let reply = host.upload(&greeter(2), "type=zip&upgrade=true");
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert_eq!(reply.json["data"]["previous"], "1.0.0");
    assert!(
        reply.json["msg"]
            .as_str()
            .unwrap()
            .contains("upgraded from 1.0.0 to 2.0.0")
    );
    // Still disabled: the flag survived the upgrade.
    host.get("/greeter/v1/version")
        .assert_error(503, "plugin 'greeter' is disabled");
    host.put("/admin/v1/sys/plugins/greeter/status");
    assert_eq!(greeter_version(&host).as_deref(), Some("2"));

    host.upload(&greeter(1), "type=zip&upgrade=true")
        .assert_error(
            409,
            "plugin 'greeter' 2.0.0 is installed and 1.0.0 is not newer; install with force=true",
        );
    assert_eq!(greeter_version(&host).as_deref(), Some("2"));
    assert_eq!(
        host.upload(&greeter(1), "type=zip&upgrade=true&force=true")
            .status,
        200
    );
    assert_eq!(greeter_version(&host).as_deref(), Some("1"));
}

#[test]
fn a_live_upgrade_under_load_fails_no_request_and_in_flight_ones_finish_on_the_old_build() {
    let (_data, host) = e2e::serve(&["hello"]);
    assert_eq!(host.upload(&greeter(1), "type=zip").status, 200);
    let build2 = greeter(2);
    let ((upgrade_started, upgrade_done, slow), served, failed) = e2e::under_load(
        4,
        || greeter_version(&host).is_some(),
        || {
            std::thread::scope(|scope| {
                // Slow requests (5 s) in flight across the upgrade: when each
                // started and ended, and which build answered it.
                let slow: Vec<_> = (0..4)
                    .map(|_| {
                        scope.spawn(|| {
                            let started = Instant::now();
                            let reply = host.get("/greeter/v1/slow?ms=5000");
                            assert_eq!(reply.status, 200, "{:?}", reply.json);
                            (started, Instant::now(), reply.json["data"].clone())
                        })
                    })
                    .collect();
                std::thread::sleep(Duration::from_millis(200));
                let upgrade_started = Instant::now();
                let reply = host.upload(&build2, "type=zip&upgrade=true");
                let upgrade_done = Instant::now();
                assert_eq!(reply.status, 200, "{:?}", reply.json);
                let slow: Vec<_> = slow.into_iter().map(|s| s.join().unwrap()).collect();
                (upgrade_started, upgrade_done, slow)
            })
        },
    );
    assert_eq!(failed, 0, "failed requests during the upgrade");
    assert!(served > 50);
    let across: Vec<_> = slow
        .iter()
        .filter(|(started, ended, _)| *started < upgrade_started && *ended > upgrade_done)
        .collect();
    assert_eq!(
        across.len(),
        4,
        "every slow request was in flight across the upgrade (it took {:?})",
        upgrade_done - upgrade_started
    );
    for (_, _, build) in across {
        assert_eq!(
            build, "1",
            "an in-flight request finishes on the build it started on"
        );
    }
    assert_eq!(greeter_version(&host).as_deref(), Some("2"));
}

#[test]
fn uninstall_removes_routes_files_and_flag_and_keeps_a_backup() {
    let (data, host) = e2e::serve(&["hello"]);
    host.upload(&greeter(1), "type=zip");
    let reply = host.request("DELETE", "/admin/v1/sys/plugins/greeter", None);
    assert_eq!(reply.status, 200, "{:?}", reply.json);
    assert!(
        reply.json["msg"]
            .as_str()
            .unwrap()
            .contains("routes are gone")
    );
    assert_eq!(host.get("/greeter/v1/version").status, 404);
    assert!(!data.plugins().join("greeter").exists());
    let listed = host.get("/admin/v1/sys/plugins");
    assert!(
        listed
            .data()
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["plugin"]["name"] != "greeter"),
        "{:?}",
        listed.json
    );
    let backup = std::path::PathBuf::from(reply.json["data"]["backup"].as_str().unwrap());
    let file = backup.file_name().unwrap().to_str().unwrap();
    assert!(
        backup.starts_with(data.path().join("backups")),
        "{backup:?}"
    );
    assert!(
        file.starts_with("greeter.")
            && file.ends_with(".backup.zip")
            && file.len() == "greeter.20261124000000.backup.zip".len(),
        "{file}"
    );
    // The backup is an installable package: install it again.
    let bytes = std::fs::read(&backup).unwrap();
    assert_eq!(host.upload(&bytes, "type=zip").status, 200);
    assert_eq!(greeter_version(&host).as_deref(), Some("1"));
}

#[test]
fn uninstall_refuses_required_plugins_dependencies_bad_names_and_outside_dev() {
    let (_data, host) = e2e::serve(&["hello", "dict"]);
    host.request("DELETE", "/admin/v1/sys/plugins/dict", None)
        .assert_error(409, "plugin 'dict' is required (PLUGHOST_REQUIRED_PLUGINS)");
    host.request("DELETE", "/admin/v1/sys/plugins/Bad.Name", None)
        .assert_error(400, "'Bad.Name' is not a valid plugin name");
    assert_eq!(host.download("/admin/v1/sys/plugins/..%2F..%2Fetc").0, 400);
    host.request("DELETE", "/admin/v1/sys/plugins/absent", None)
        .assert_error(404, "plugin 'absent' is not installed");

    let (_data, prod) = e2e::serve_with(&["hello"], &[("PLUGHOST_ENVIRONMENT", "prod")]);
    prod.request("DELETE", "/admin/v1/sys/plugins/hello", None)
        .assert_error(403, "only in the dev environment");
    assert_eq!(prod.get("/hello/v1/greet").status, 200);
}

#[test]
fn a_download_reinstalls_to_the_same_routes_and_carries_only_package_files() {
    let data = DataDir::new();
    data.install_dir("hello");
    data.drop_library("sysinfo");
    data.drop_library("panicky");
    // Files that must never leave the host in a download.
    let dir = data.plugins().join("hello");
    std::fs::write(dir.join(".env"), "SECRET=1").unwrap();
    std::fs::create_dir_all(dir.join("target/release")).unwrap();
    std::fs::write(dir.join("target/release/build.log"), "x").unwrap();
    let host = Host::start(&data);

    let (status, kind, disposition, bytes) = host.download("/admin/v1/sys/plugins/hello");
    assert_eq!(status, 200);
    assert_eq!(kind, "application/x-zip-compressed");
    assert_eq!(disposition, "attachment; filename=hello.zip");
    assert_eq!(
        zip_names(&bytes),
        [
            "hello/",
            "hello/README.md",
            "hello/libhello.so",
            "hello/plugin.toml"
        ]
    );

    // A lone library downloads as a full package, manifest written out.
    let (status, _, _, lone) = host.download("/admin/v1/sys/plugins/sysinfo");
    assert_eq!(status, 200);
    assert_eq!(
        zip_names(&lone),
        [
            "sysinfo/",
            "sysinfo/README.md",
            "sysinfo/libsysinfo.so",
            "sysinfo/plugin.toml"
        ]
    );
    // The library embeds its README (`readme:` in export_plugin!), and the
    // package carries it; a library that embeds none gets one written from
    // its manifest's summary.
    let readme = |archive: &[u8], entry: &str| {
        let (_, bytes) = e2e::zip_entries(archive)
            .into_iter()
            .find(|(name, _)| name == entry)
            .unwrap_or_else(|| panic!("{entry} in the package"));
        String::from_utf8(bytes).unwrap()
    };
    assert_eq!(
        readme(&lone, "sysinfo/README.md"),
        std::fs::read_to_string(e2e::root().join("plugins/sysinfo/README.md")).unwrap()
    );
    let (status, _, _, written) = host.download("/admin/v1/sys/plugins/panicky");
    assert_eq!(status, 200);
    assert_eq!(
        readme(&written, "panicky/README.md"),
        "# panicky\n\nMisbehaving handlers\n"
    );

    // Round trip: uninstall, reinstall the download, same routes.
    assert_eq!(
        host.request("DELETE", "/admin/v1/sys/plugins/sysinfo", None)
            .status,
        200
    );
    assert_eq!(host.get("/admin/v1/sys/sysinfo").status, 404);
    assert_eq!(host.upload(&lone, "type=zip").status, 200);
    assert_eq!(host.get("/admin/v1/sys/sysinfo").status, 200);
    assert!(data.plugins().join("sysinfo/plugin.toml").is_file());
}

/// A hostile or broken package, the status it must get, and a phrase of
/// the message.
fn hostile() -> Vec<(&'static str, Vec<u8>, u16, &'static str)> {
    let good = package_files("greeter", "greeter_v1", "greeter_v1");
    let with = |extra: &[(&str, &[u8])]| {
        let mut files: Vec<(&str, Vec<u8>)> =
            good.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        files.extend(extra.iter().map(|(n, b)| (*n, b.to_vec())));
        zip_of(&files)
    };
    let without = |skip: &str| {
        let files: Vec<(&str, Vec<u8>)> = good
            .iter()
            .filter(|(n, _)| !n.ends_with(skip))
            .map(|(n, b)| (n.as_str(), b.clone()))
            .collect();
        zip_of(&files)
    };
    let replaced = |name: &str, bytes: &[u8]| {
        let files: Vec<(&str, Vec<u8>)> = good
            .iter()
            .map(|(n, b)| {
                (
                    n.as_str(),
                    if n.ends_with(name) {
                        bytes.to_vec()
                    } else {
                        b.clone()
                    },
                )
            })
            .collect();
        zip_of(&files)
    };
    let symlink = {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        for (n, b) in &good {
            zip.start_file(n.as_str(), options).unwrap();
            zip.write_all(b).unwrap();
        }
        zip.add_symlink("greeter/sql", "/etc", options).unwrap();
        zip.finish().unwrap().into_inner()
    };
    // Two entries with the same name: written under different names of the
    // same length, then one renamed in the bytes.
    let duplicate = {
        let archive = with(&[("greeter/dup_a.txt", b"a"), ("greeter/dup_b.txt", b"b")]);
        let (from, to) = (b"dup_b.txt", b"dup_a.txt");
        let mut bytes = archive.clone();
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to);
            }
            i += 1;
        }
        bytes
    };
    let bomb = with(&[("greeter/zeros.bin", &vec![0u8; 20 << 20])]);
    let mut manifest_bad = String::from_utf8(good[0].1.clone()).unwrap();
    manifest_bad = manifest_bad.replace("version = \"1.0.0\"", "version = \"1.0\"");
    let impostor = {
        let files = package_files("impostor", "greeter_v1", "greeter_v1");
        let refs: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        zip_of(&refs)
    };
    vec![
        (
            "not a zip",
            b"PK\x03\x04 this is not an archive".to_vec(),
            400,
            "not a ZIP archive",
        ),
        (
            "traversal",
            with(&[("greeter/../../evil.txt", b"x")]),
            400,
            "'.' and '..' components",
        ),
        (
            "absolute path",
            with(&[("/tmp/evil.txt", b"x")]),
            400,
            "absolute paths",
        ),
        ("link", symlink, 400, "links are not allowed"),
        ("duplicate entry", duplicate, 400, "dup_a.txt"),
        (
            "case collision",
            with(&[("greeter/readme.md", b"x")]),
            400,
            "collides with 'greeter/README.md' when case is ignored",
        ),
        (
            "second top directory",
            with(&[("other/x.txt", b"x")]),
            400,
            "outside the package's one top directory 'greeter/'",
        ),
        (
            "file at the top",
            with(&[("stray.txt", b"x")]),
            400,
            "outside the package's one top directory",
        ),
        ("bomb", bomb, 400, "more than the limit of 100:1"),
        (
            "missing README",
            without("README.md"),
            400,
            "greeter/ lacks README.md",
        ),
        (
            "missing library",
            without("libgreeter.so"),
            400,
            "greeter/ lacks libgreeter.so",
        ),
        (
            "bad manifest",
            replaced("plugin.toml", manifest_bad.as_bytes()),
            422,
            "version",
        ),
        (
            "bad library",
            replaced("libgreeter.so", b"\x7fELF not really"),
            422,
            "not an ELF shared object",
        ),
        (
            "wrong top directory",
            impostor,
            422,
            "the library declares plugin 'greeter' but is installed as 'impostor'",
        ),
        (
            "colliding routes",
            package("collider", "collider", "collider"),
            422,
            "collides with route GET /hello/v1/greet of plugin 'hello'",
        ),
        (
            "missing dependency",
            package("needy", "needy", "needy"),
            422,
            "depends on 'absent'",
        ),
    ]
}

#[test]
fn every_hostile_package_is_refused_and_leaves_the_plugin_dir_byte_identical() {
    let (data, host) = e2e::serve(&["hello"]);
    let before = snapshot(&data.plugins());
    let listed = host.get("/admin/v1/sys/plugins").json;
    for (case, archive, status, phrase) in hostile() {
        let reply = host.upload(&archive, "type=zip");
        assert_eq!(reply.status, status, "{case}: {:?}", reply.json);
        reply.assert_error(status, phrase);
        assert!(
            snapshot(&data.plugins()) == before,
            "{case}: the plugin dir changed"
        );
    }
    // The same list, but for when each instance last reported.
    let unseen = |mut list: serde_json::Value| {
        for item in list.as_array_mut().unwrap() {
            for instance in item["instances"].as_array_mut().unwrap() {
                instance.as_object_mut().unwrap().remove("seen_at");
            }
        }
        list
    };
    assert_eq!(
        unseen(host.get("/admin/v1/sys/plugins").json["data"].clone()),
        unseen(listed["data"].clone())
    );
    assert_eq!(host.get("/hello/v1/greet").status, 200);
}

#[test]
fn package_limits_are_enforced_while_reading() {
    let (data, host) = e2e::serve_with(
        &["hello"],
        &[
            ("PLUGHOST_MAX_UNPACKED", "3000000"),
            ("PLUGHOST_MAX_PACKAGE_ENTRIES", "8"),
        ],
    );
    let before = snapshot(&data.plugins());
    let good = package_files("greeter", "greeter_v1", "greeter_v1");
    let mut files: Vec<(&str, Vec<u8>)> =
        good.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    // Incompressible, so only the total limit can stop it.
    let noise: Vec<u8> = (0..4_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    files.push(("greeter/noise.bin", noise));
    host.upload(&zip_of(&files), "type=zip")
        .assert_error(413, "unpacks to more than the limit of 3000000 bytes");
    let many: Vec<(String, Vec<u8>)> = (0..9).map(|i| (format!("greeter/f{i}"), vec![1])).collect();
    let refs: Vec<(&str, Vec<u8>)> = many.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    host.upload(&zip_of(&refs), "type=zip")
        .assert_error(400, "9 entries, more than the limit of 8");
    assert!(snapshot(&data.plugins()) == before);

    let (_data, small) = e2e::serve_with(&["hello"], &[("PLUGHOST_MAX_PACKAGE", "1000")]);
    small
        .upload(&package("greeter", "greeter_v1", "greeter_v1"), "type=zip")
        .assert_error(413, "larger than the limit of 1000 bytes");
    small
        .upload(b"", "type=nope")
        .assert_error(400, "type must be 'zip'");
}

#[test]
fn a_process_killed_during_install_restarts_with_all_of_the_plugin_or_none() {
    let archive = greeter(1);
    let (mut whole, mut none) = (0, 0);
    // Kill points from before the upload starts to after it has finished
    // (an install takes some 150 ms here).
    for i in 0..12u64 {
        let data = DataDir::new();
        data.install_dir("hello");
        let host = Host::start(&data);
        host.plugin("hello"); // logged in before the race
        std::thread::scope(|scope| {
            let upload = scope.spawn(|| {
                // The host may die under it: any outcome is fine here.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    host.upload(&archive, "type=zip")
                }));
            });
            if i == 11 {
                // The last kill comes after the install has answered.
                let _ = upload.join();
            } else {
                std::thread::sleep(Duration::from_millis(i * 35));
            }
            host.kill();
        });
        drop(host);
        let host = Host::start(&data);
        let state = host
            .get("/admin/v1/sys/plugins")
            .data()
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["plugin"]["name"] == "greeter")
            .map(|p| p["state"].clone());
        match state {
            Some(state) => {
                assert_eq!(state, "loaded", "run {i}: a partial plugin");
                assert_eq!(greeter_version(&host).as_deref(), Some("1"), "run {i}");
                whole += 1;
            }
            None => {
                assert_eq!(host.get("/greeter/v1/version").status, 404);
                none += 1;
            }
        }
        let leftovers = data.leftovers();
        assert!(leftovers.is_empty(), "run {i}: {leftovers:?}");
    }
    eprintln!("killed installs: {whole} complete, {none} absent");
    assert!(
        whole > 0 && none > 0,
        "the kills hit only one side: {whole} complete, {none} absent"
    );
}
