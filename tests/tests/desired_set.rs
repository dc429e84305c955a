//! Every install records the desired plugin set in the database: the
//! package by digest in the package store, its version, source, who
//! installed it and when, with a revision that never goes backwards.

use e2e::{DataDir, Host, package};
use host::{
    db::{Db, PkMode},
    plugin::{lifecycle::store, loading::libcache::hex_digest},
};
use serde_json::Value;

fn package_of(host: &Host, name: &str) -> Value {
    let list = host.get("/admin/v1/sys/plugins").data().clone();
    list.as_array()
        .unwrap()
        .iter()
        .find(|p| p["plugin"]["name"] == name)
        .map(|p| p["package"].clone())
        .unwrap_or(Value::Null)
}

fn stored(data: &DataDir, digest: &str) -> Vec<u8> {
    let url = format!(
        "sqlite://{}?mode=rwc",
        data.path().join("plughost.db").display()
    );
    e2e::runtime().block_on(async {
        let db = Db::open(&url, PkMode::Autoincrement, 0).await.unwrap();
        store::get(&db, digest).await.unwrap()
    })
}

#[test]
fn installs_upgrades_and_uninstalls_record_the_desired_set_with_their_packages() {
    let (data, host) = e2e::serve(&["hello"]);
    // A plugin dropped in is not part of the desired set.
    assert_eq!(package_of(&host, "hello"), Value::Null);

    let v1 = package("greeter", "greeter_v1", "greeter_v1");
    assert_eq!(host.upload(&v1, "type=zip").status, 200);
    let recorded = package_of(&host, "greeter");
    assert_eq!(recorded["version"], "1.0.0", "{recorded}");
    assert_eq!(recorded["digest"], hex_digest(&v1));
    assert_eq!(recorded["source"]["type"], "zip");
    assert_eq!(recorded["installed_by"], "admin");
    assert_eq!(recorded["revision"], 1);
    assert!(recorded["installed_at"].as_i64().unwrap() > 1_700_000_000_000);
    // The package store gives back exactly what was uploaded.
    assert!(stored(&data, &hex_digest(&v1)) == v1);

    let v2 = package("greeter", "greeter_v2", "greeter_v2");
    assert_eq!(host.upload(&v2, "type=zip&upgrade=true").status, 200);
    let upgraded = package_of(&host, "greeter");
    assert_eq!(upgraded["version"], "2.0.0");
    assert_eq!(upgraded["digest"], hex_digest(&v2));
    assert_eq!(upgraded["revision"], 2);

    // Uninstalled: out of the desired set; reinstalled: the revision goes on.
    assert_eq!(
        host.request("DELETE", "/admin/v1/sys/plugins/greeter", None)
            .status,
        200
    );
    assert_eq!(package_of(&host, "greeter"), Value::Null);
    assert_eq!(host.upload(&v1, "type=zip").status, 200);
    assert_eq!(package_of(&host, "greeter")["revision"], 4);

    // The CLI records itself as the installer.
    let file = data.path().join("sysinfo.zip");
    std::fs::write(&file, package("sysinfo", "sysinfo", "sysinfo")).unwrap();
    let (ok, out) = e2e::cli(
        &data,
        &[],
        &["plugin", "add", "--zip", file.to_str().unwrap()],
    );
    assert!(ok, "{out}");
    let host = {
        assert!(host.stop().success());
        Host::start(&data)
    };
    assert_eq!(package_of(&host, "sysinfo")["installed_by"], "cli");
    assert_eq!(package_of(&host, "greeter")["version"], "1.0.0");
}
