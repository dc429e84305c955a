//! Every instance reports what it serves, and the plugin list shows, per
//! plugin, what each instance reported: a split cluster is seen at a glance.

use std::time::Duration;

use e2e::{Backend, DataDir, Host, TestDatabase, eventually};

const SECRET: &str = "a-shared-token-secret-of-at-least-32-chars";

fn instance(id: &str, plugins: &[&str], url: &str) -> (DataDir, Host) {
    let data = DataDir::new();
    for name in plugins {
        data.install_dir(name);
    }
    let host = Host::start_with(
        &data,
        &[
            ("DATABASE_URL", url),
            ("PLUGHOST_JWT_SECRET", SECRET),
            ("PLUGHOST_INSTANCE_ID", id),
            ("PLUGHOST_FLAG_RECONCILE", "0.2"),
        ],
    );
    (data, host)
}

/// (instance id, state) of each instance that reported `plugin`, in `host`'s list.
fn reports(host: &Host, plugin: &str) -> Vec<(String, String)> {
    host.instances(plugin)
        .into_iter()
        .map(|(id, state, _)| (id, state))
        .collect()
}

fn pair(id: &str, state: &str) -> (String, String) {
    (id.to_owned(), state.to_owned())
}

#[test]
fn the_list_shows_what_every_instance_serves() {
    let database = TestDatabase::create(Backend::Postgresql);
    let url = database.env()[0].1.clone();
    let (_da, a) = instance("a", &["hello", "sysinfo"], &url);
    let (_db, b) = instance("b", &["hello"], &url);
    // c has a hello it cannot load: a library that is not one.
    let (_dc, c) = {
        let data = DataDir::new();
        data.install_dir("sysinfo");
        std::fs::create_dir_all(data.plugins().join("hello")).unwrap();
        for file in ["plugin.toml", "README.md"] {
            std::fs::copy(
                e2e::source_dir("hello").join(file),
                data.plugins().join("hello").join(file),
            )
            .unwrap();
        }
        std::fs::write(data.plugins().join("hello/libhello.so"), b"not a library").unwrap();
        let host = Host::start_with(
            &data,
            &[
                ("DATABASE_URL", url.as_str()),
                ("PLUGHOST_JWT_SECRET", SECRET),
                ("PLUGHOST_INSTANCE_ID", "c"),
            ],
        );
        (data, host)
    };
    assert_eq!(
        reports(&a, "hello"),
        [pair("a", "loaded"), pair("b", "loaded"), pair("c", "error")]
    );
    assert_eq!(
        reports(&b, "sysinfo"),
        [pair("a", "loaded"), pair("c", "loaded")]
    );
    // b does not serve sysinfo: listed as absent here, with who does.
    let listed = b.get("/admin/v1/sys/plugins").data().clone();
    let sysinfo = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"]["name"] == "sysinfo")
        .unwrap();
    assert_eq!(sysinfo["state"], "absent", "{sysinfo}");
    // c's reason is in every instance's list.
    let from_a = a.get("/admin/v1/sys/plugins").data().clone();
    let hello = from_a
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"]["name"] == "hello")
        .unwrap();
    let on_c = hello["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == "c")
        .unwrap();
    assert!(
        on_c["error"]
            .as_str()
            .unwrap()
            .contains("not an ELF shared object"),
        "{on_c}"
    );
    assert_eq!(on_c["version"], "0.1.0");

    // A toggle on a is reported as a's state; b follows by the reconcile.
    a.put("/admin/v1/sys/plugins/hello/status");
    assert!(
        eventually(Duration::from_secs(5), || {
            reports(&c, "hello")
                == [
                    pair("a", "disabled"),
                    pair("b", "disabled"),
                    pair("c", "error"),
                ]
        }),
        "{:?}",
        reports(&c, "hello")
    );
    // An uninstall on b is reported right after it answered.
    assert_eq!(
        b.request("DELETE", "/admin/v1/sys/plugins/hello", None)
            .status,
        200
    );
    assert!(
        eventually(Duration::from_secs(2), || {
            reports(&a, "hello") == [pair("a", "disabled"), pair("c", "error")]
        }),
        "{:?}",
        reports(&a, "hello")
    );
}
