//! The status gate: toggles take effect at once and survive restarts.

use e2e::{DataDir, Host};

#[test]
fn toggling_off_gives_503_naming_the_plugin_and_on_gives_200_without_restart() {
    let (_data, host) = e2e::serve(&["hello", "sysinfo"]);
    assert_eq!(host.get("/hello/v1/greet?name=A").status, 200);

    let off = host.put("/admin/v1/sys/plugins/hello/status");
    assert_eq!(off.data()["enable"], "0");
    host.get("/hello/v1/greet?name=A")
        .assert_error(503, "plugin 'hello' is disabled");
    host.post("/hello/v1/echo", &serde_json::json!(1))
        .assert_error(503, "plugin 'hello' is disabled");
    assert_eq!(host.plugin("hello")["plugin"]["enable"], "0");
    assert_eq!(host.plugin("hello")["state"], "disabled");
    // Other plugins are untouched.
    assert_eq!(host.get("/admin/v1/sys/sysinfo").status, 200);

    let on = host.put("/admin/v1/sys/plugins/hello/status");
    assert_eq!(on.data()["enable"], "1");
    assert_eq!(host.get("/hello/v1/greet?name=A").status, 200);
}

#[test]
fn a_disabled_flag_survives_a_restart() {
    let (data, host) = e2e::serve(&["hello", "sysinfo"]);
    host.put("/admin/v1/sys/plugins/sysinfo/status");
    host.get("/admin/v1/sys/sysinfo")
        .assert_error(503, "sysinfo");
    assert!(host.stop().success());

    let host = Host::start(&data);
    host.get("/admin/v1/sys/sysinfo")
        .assert_error(503, "sysinfo");
    assert_eq!(host.plugin("sysinfo")["plugin"]["enable"], "0");
    assert_eq!(host.get("/hello/v1/greet").status, 200);

    assert_eq!(host.plugin("sysinfo")["revision"], 2);
}

#[test]
fn flags_an_earlier_version_kept_in_flags_json_are_imported_once() {
    let data = DataDir::new();
    data.install_dir("hello");
    data.install_dir("sysinfo");
    std::fs::write(
        data.path().join("flags.json"),
        r#"{"fba:plugin:sysinfo": {"plugin": {"name": "sysinfo", "enable": "0"}}}"#,
    )
    .unwrap();
    let host = Host::start(&data);
    host.get("/admin/v1/sys/sysinfo")
        .assert_error(503, "sysinfo");
    assert_eq!(host.get("/hello/v1/greet").status, 200);
    assert!(!data.path().join("flags.json").exists());
    assert!(data.path().join("flags.json.imported").exists());
    assert!(
        host.log().contains("imported plugin flags"),
        "{}",
        host.log()
    );
}

#[test]
fn a_plugin_that_failed_to_load_cannot_be_toggled() {
    let data = DataDir::new();
    data.write_manifest_only("broken", "[plugin]\nsummary = 1\n");
    let host = Host::start(&data);
    host.put("/admin/v1/sys/plugins/broken/status")
        .assert_error(409, "plugin 'broken' is not loaded");
}
