//! Plugins reach the host database and key-value store through host
//! services, and their SQL init scripts run once, all or nothing, on every
//! backend.

use e2e::{BACKENDS, Backend, DataDir, Host, TestDatabase};
use serde_json::json;

fn notes_host(database: &TestDatabase, env: &[(&str, &str)]) -> (DataDir, Host) {
    let data = DataDir::new();
    data.install_dir("notes");
    let host = Host::start_on(&data, database, env);
    (data, host)
}

#[test]
fn a_plugin_queries_inserts_and_rolls_back_through_host_services_on_every_backend() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let (_data, host) = notes_host(&database, &[]);
        let info = host.get("/notes/v1/backend").data().clone();
        assert_eq!(info["backend"], backend.name());
        assert!(
            info["next_id"].is_null(),
            "autoincrement mode has no host ids"
        );

        // The init script ran: its seed row (with a quoted semicolon) is there.
        let notes = host.get("/notes/v1/notes").data().clone();
        assert_eq!(
            notes,
            json!([{"id": 1, "text": "seeded; by init"}]),
            "{backend:?}"
        );

        let created = host.post("/notes/v1/notes", &json!({"text": "second"}));
        assert_eq!(created.data()["id"], 2, "{backend:?}");
        // Parameters are bound, never spliced.
        let tricky = "it's'); DROP TABLE fixture_note; --";
        assert_eq!(
            host.post("/notes/v1/notes", &json!({"text": tricky}))
                .status,
            200
        );
        // A unique violation is a 409 with the database's message.
        host.post("/notes/v1/notes", &json!({"text": "second"}))
            .assert_error(409, "conflicts with an existing row");
        // A transaction dropped without commit leaves nothing.
        assert_eq!(
            host.post("/notes/v1/notes/fail", &json!({"text": "ghost"}))
                .status,
            418
        );
        let texts = e2e::strings(host.get("/notes/v1/notes").data(), "/text");
        assert_eq!(texts, ["seeded; by init", "second", tricky], "{backend:?}");
    }
}

#[test]
fn the_key_value_store_sets_gets_expires_and_deletes_per_plugin() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let (_data, host) = notes_host(&database, &[]);
        let put = |key: &str, value: &str, ttl: Option<u64>| {
            let path = match ttl {
                Some(ms) => format!("/notes/v1/kv/{key}?ttl_ms={ms}"),
                None => format!("/notes/v1/kv/{key}"),
            };
            let url = format!("{}{path}", host.base());
            assert_eq!(ureq::put(&url).send_string(value).unwrap().status(), 200);
        };
        assert!(host.get("/notes/v1/kv/a").data().is_null());
        put("a", "one", None);
        put("a", "two", None);
        assert_eq!(host.get("/notes/v1/kv/a").data(), "two", "{backend:?}");
        put("short", "lived", Some(300));
        assert_eq!(host.get("/notes/v1/kv/short").data(), "lived");
        std::thread::sleep(std::time::Duration::from_millis(600));
        assert!(
            host.get("/notes/v1/kv/short").data().is_null(),
            "{backend:?}: expired"
        );
        assert_eq!(host.request("DELETE", "/notes/v1/kv/a", None).data(), true);
        assert_eq!(host.request("DELETE", "/notes/v1/kv/a", None).data(), false);
    }
}

#[test]
fn counters_increment_atomically_expire_by_window_and_refuse_what_is_not_a_number() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let (_data, host) = notes_host(&database, &[]);
        // 6 threads x 10 increments: every value from 1 to 60 is answered once.
        let seen = e2e::count_concurrently(&[&host], "hits", 6, 10);
        assert_eq!(seen, (1..=60).collect::<Vec<_>>(), "{backend:?}");
        assert_eq!(host.get("/notes/v1/kv/hits").data(), "60", "{backend:?}");
        assert_eq!(
            host.request("POST", "/notes/v1/counter/hits?by=-70", None)
                .data(),
            -10
        );

        // The first increment of a window sets its expiry; later ones keep it.
        let window = "/notes/v1/counter/window?ttl_ms=400";
        assert_eq!(host.request("POST", window, None).data(), 1);
        assert_eq!(host.request("POST", window, None).data(), 2);
        std::thread::sleep(std::time::Duration::from_millis(700));
        assert_eq!(
            host.request("POST", window, None).data(),
            1,
            "{backend:?}: a new window after expiry"
        );

        // Not a number, or past i64: refused, and the key is left as it was.
        let url = format!("{}/notes/v1/kv/word", host.base());
        ureq::put(&url).send_string("abc").expect("kv put");
        host.request("POST", "/notes/v1/counter/word", None)
            .assert_error(
                500,
                "key 'word' does not hold a whole number; kv_incr only counts",
            );
        assert_eq!(host.get("/notes/v1/kv/word").data(), "abc", "{backend:?}");
        let big = format!("/notes/v1/counter/big?by={}", i64::MAX);
        assert_eq!(host.request("POST", &big, None).data(), i64::MAX);
        host.request("POST", "/notes/v1/counter/big", None)
            .assert_error(
                500,
                "adding 1 to key 'big' would not fit a 64-bit whole number",
            );
        assert_eq!(
            host.get("/notes/v1/kv/big").data(),
            i64::MAX.to_string().as_str(),
            "{backend:?}"
        );
    }
}

#[test]
fn statements_survive_the_database_closing_every_connection() {
    for backend in [Backend::Postgresql, Backend::Mysql] {
        let database = TestDatabase::create(backend);
        let (_data, host) = notes_host(&database, &[]);
        // Warm both pools (the host's own, which counters use, and the
        // one plugin statements run on): several connections each, all
        // idle afterwards.
        let seen = e2e::count_concurrently(&[&host], "warm", 4, 5);
        assert_eq!(seen.len(), 20);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        assert_eq!(host.get("/notes/v1/notes").status, 200);
                    }
                });
            }
        });
        assert_eq!(
            host.request("GET", "/admin/v1/sys/plugins", None).status,
            200
        );

        database.sever_connections();
        // No ping before use: each lost connection fails its statement,
        // which runs again on a fresh one; nothing reaches the caller.
        for round in 0..3 {
            let notes = host.get("/notes/v1/notes");
            assert_eq!(
                notes.status, 200,
                "{backend:?} round {round}: {:?}",
                notes.json
            );
            let created = host.post(
                "/notes/v1/notes",
                &json!({ "text": format!("after {round}") }),
            );
            assert_eq!(created.status, 200, "{backend:?}: {:?}", created.json);
            // The admin guard's query too.
            let listed = host.request("GET", "/admin/v1/sys/plugins", None);
            assert_eq!(listed.status, 200, "{backend:?}: {:?}", listed.json);
        }
        let texts = e2e::strings(host.get("/notes/v1/notes").data(), "/text");
        assert_eq!(
            texts,
            ["seeded; by init", "after 0", "after 1", "after 2"],
            "{backend:?}: each insert ran once"
        );
        assert!(
            host.log().contains("a database connection was lost"),
            "{backend:?}: the retry is logged:\n{}",
            host.log()
        );
    }
}

#[test]
fn statements_a_plugin_drops_half_way_disturb_no_later_statement() {
    for backend in [Backend::Postgresql, Backend::Mysql] {
        let database = TestDatabase::create(backend);
        let (_data, host) = notes_host(&database, &[]);
        // As many handlers as the pool has connections stop waiting for
        // their statement half-way and drop it; the server finishes each,
        // and its answer waits, unread, on the connection.
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    let gave_up = host.get("/notes/v1/slow?ms=600&give_up_ms=100");
                    assert_eq!(gave_up.status, 200, "{backend:?}: {:?}", gave_up.json);
                    assert_eq!(gave_up.data(), false, "{backend:?}: the handler gave up");
                });
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(900));
        // A connection handed out with the sleep's answer unread would
        // answer the next statement with it.
        std::thread::scope(|scope| {
            for _ in 0..8 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        let notes = host.get("/notes/v1/notes");
                        assert_eq!(notes.status, 200, "{backend:?}: {:?}", notes.json);
                        assert_eq!(
                            e2e::strings(notes.data(), "/text"),
                            ["seeded; by init"],
                            "{backend:?}"
                        );
                    }
                });
            }
        });
    }
}

#[test]
fn the_init_script_runs_once_and_survives_restarts() {
    let database = TestDatabase::create(Backend::Sqlite);
    let (data, host) = notes_host(&database, &[]);
    host.post("/notes/v1/notes", &json!({"text": "kept"}));
    assert!(host.stop().success());
    let host = Host::start_on(&data, &database, &[]);
    let notes = host.get("/notes/v1/notes").data().clone();
    assert_eq!(
        notes.as_array().unwrap().len(),
        2,
        "not seeded twice: {notes}"
    );
}

#[test]
fn snowflake_mode_gives_plugins_host_made_ids() {
    let database = TestDatabase::create(Backend::Mysql);
    let (_data, host) = notes_host(&database, &[("PLUGHOST_PK_MODE", "snowflake")]);
    let id = host
        .post("/notes/v1/notes", &json!({"text": "flake"}))
        .data()["id"]
        .as_i64()
        .unwrap();
    assert!(id > 1 << 22, "snowflake id: {id}");
    assert!(
        host.get("/notes/v1/backend").data()["next_id"]
            .as_i64()
            .unwrap()
            > id
    );
}

#[test]
fn a_failing_init_script_leaves_no_table_behind_and_names_the_database_error() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let data = DataDir::new();
        let dir = data.install_dir("badinit");
        data.install_dir("hello");
        let host = Host::start_on(&data, &database, &[]);
        let entry = host.plugin("badinit");
        assert_eq!(entry["state"], "error");
        let error = entry["error"].as_str().unwrap();
        let script = format!("sql/{}/init.sql", backend.name());
        assert!(
            error.contains(&format!(
                "init script {script} failed at statement 3 (line 3)"
            )) && error.contains("fixture_no_such_table"),
            "{backend:?}: {error}"
        );
        host.get("/badinit/v1/x").assert_error(404, "no route");
        assert_eq!(host.get("/hello/v1/greet").status, 200);
        assert!(host.stop().success());

        // Fixed script, same table name: it only succeeds if the failed run
        // left no table behind.
        let fixed = std::fs::read_to_string(dir.join(&script))
            .unwrap()
            .replace("INSERT INTO fixture_no_such_table (id) VALUES (1);\n", "");
        std::fs::write(dir.join(&script), fixed).unwrap();
        let host = Host::start_on(&data, &database, &[]);
        assert_eq!(
            host.plugin("badinit")["state"],
            "loaded",
            "{backend:?}: {}",
            host.plugin("badinit")
        );
        assert_eq!(host.get("/badinit/v1/x").data(), "badinit");
    }
}

#[test]
fn a_plugin_without_the_hosts_backend_is_refused_with_that_reason() {
    let database = TestDatabase::create(Backend::Sqlite);
    let data = DataDir::new();
    let dir = data.install_dir("notes");
    let manifest = std::fs::read_to_string(dir.join("plugin.toml"))
        .unwrap()
        .replace(
            "database = [\"sqlite\", \"postgresql\", \"mysql\"]",
            "database = [\"postgresql\"]",
        );
    std::fs::write(dir.join("plugin.toml"), manifest).unwrap();
    let host = Host::start_on(&data, &database, &[]);
    assert_eq!(
        host.plugin("notes")["error"],
        "the plugin supports postgresql but this host runs on sqlite"
    );
}
