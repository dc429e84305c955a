//! Operators drop plugins into the plugin dir and restart.

use e2e::{DataDir, Host};

#[test]
fn a_lone_library_and_a_plugin_directory_dropped_in_serve_after_a_restart() {
    let data = DataDir::new();
    let host = Host::start(&data);
    host.get("/hello/v1/greet").assert_error(404, "no route");
    assert_eq!(
        host.get("/admin/v1/sys/plugins").data(),
        &serde_json::json!([])
    );
    assert!(host.stop().success());

    data.drop_library("hello");
    data.install_dir("sysinfo");
    let host = Host::start(&data);
    assert_eq!(
        host.get("/hello/v1/greet?name=Bo").data()["message"],
        "Hello, Bo!"
    );
    assert_eq!(
        host.get("/admin/v1/sys/sysinfo").data()["loaded_plugins"],
        2
    );
    // A lone library's embedded manifest is its manifest.
    let hello = host.plugin("hello");
    assert_eq!(hello["plugin"]["summary"], "Greeting and echo routes");
    assert!(hello["path"].as_str().unwrap().ends_with("libhello.so"));
    assert!(
        host.plugin("sysinfo")["path"]
            .as_str()
            .unwrap()
            .ends_with("sysinfo")
    );
}

#[test]
fn the_same_plugin_installed_twice_is_refused_naming_both_places() {
    let data = DataDir::new();
    data.install_dir("hello");
    data.drop_library("hello");
    let host = Host::start(&data);
    let error = host.plugin("hello")["error"].as_str().unwrap().to_owned();
    assert!(error.contains("installed twice"), "{error}");
    host.get("/hello/v1/greet").assert_error(404, "no route");
}
