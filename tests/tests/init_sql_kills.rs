//! A host killed (SIGKILL) at any instant of an install whose plugin has an
//! init script restarts with the whole plugin (tables, record, routes) or
//! none of it, on every backend: the script and its record commit together
//! (SQLite, PostgreSQL), or an interrupted script is undone and run again
//! (MySQL/MariaDB).

use std::time::Duration;

use e2e::{Backend, DataDir, Host, TestDatabase, package};

const KILLS: u64 = 50;

fn killed_installs_leave_all_or_nothing(backend: Backend) {
    let archive = package("notes", "notes", "notes");
    let (mut whole, mut none) = (0, 0);
    for i in 0..KILLS {
        let database = TestDatabase::create(backend);
        let data = DataDir::new();
        let host = Host::start_on(&data, &database, &[]);
        host.get("/admin/v1/sys/plugins"); // logged in before the race
        std::thread::scope(|scope| {
            let upload = scope.spawn(|| {
                // The host may die under it: any outcome is fine here.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    host.upload(&archive, "type=zip")
                }));
            });
            if i == KILLS - 1 {
                // The last kill comes after the install has answered.
                let _ = upload.join();
            } else {
                // Kill points spread over the install (some 100-400 ms here).
                std::thread::sleep(Duration::from_millis(i * 9));
            }
            host.kill();
        });
        drop(host);
        let host = Host::start_on(&data, &database, &[]);
        let listed = host.get("/admin/v1/sys/plugins").json;
        let notes = listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["plugin"]["name"] == "notes")
            .cloned();
        match notes {
            Some(item) => {
                assert_eq!(item["state"], "loaded", "{backend:?} run {i}: {item}");
                let reply = host.get("/notes/v1/notes");
                assert_eq!(reply.status, 200, "{backend:?} run {i}: {:?}", reply.json);
                whole += 1;
            }
            None => {
                assert_eq!(host.get("/notes/v1/notes").status, 404);
                // Nothing half-done either: a later install works.
                let reply = host.upload(&archive, "type=zip");
                assert_eq!(reply.status, 200, "{backend:?} run {i}: {:?}", reply.json);
                assert_eq!(
                    host.get("/notes/v1/notes").status,
                    200,
                    "{backend:?} run {i}"
                );
                none += 1;
            }
        }
    }
    eprintln!("{backend:?}: killed installs: {whole} complete, {none} absent");
    assert!(
        whole > 0 && none > 0,
        "{backend:?}: the kills hit only one side: {whole} complete, {none} absent"
    );
}

#[test]
fn killed_installs_with_init_sql_leave_all_or_nothing_on_sqlite() {
    killed_installs_leave_all_or_nothing(Backend::Sqlite);
}

#[test]
fn killed_installs_with_init_sql_leave_all_or_nothing_on_postgresql() {
    killed_installs_leave_all_or_nothing(Backend::Postgresql);
}

#[test]
fn killed_installs_with_init_sql_leave_all_or_nothing_on_mysql() {
    killed_installs_leave_all_or_nothing(Backend::Mysql);
}
