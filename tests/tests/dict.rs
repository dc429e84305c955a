//! The bundled dict plugin: full CRUD on every backend, permissions,
//! validation, snowflake keys on a server backend.

use e2e::{As, BACKENDS, Backend, DataDir, Host, TestDatabase, cli};
use serde_json::{Value, json};

const TYPES: &str = "/admin/v1/sys/dict-types";
const DATAS: &str = "/admin/v1/sys/dict-datas";

fn dict_host(database: &TestDatabase, env: &[(&str, &str)]) -> (DataDir, Host) {
    let data = DataDir::new();
    data.install_dir("dict");
    let host = Host::start_on(&data, database, env);
    (data, host)
}

fn crud_round_trip(host: &Host, label: &str) {
    // Create, with validation errors first.
    host.post(TYPES, &json!({"name": "", "code": "x"}))
        .assert_error(422, "name: must be 1 to 32 characters long");
    host.post(TYPES, &json!({"name": "Gender", "code": "bad code"}))
        .assert_error(422, "code: may hold only");
    host.post(
        TYPES,
        &json!({"name": "Gender", "code": "gender", "status": 7}),
    )
    .assert_error(422, "status: must be 1 (enabled) or 0 (disabled)");
    host.post(
        TYPES,
        &json!({"name": "Gender", "code": "gender", "colour": "x"}),
    )
    .assert_error(422, "unknown field `colour`");
    // Typed path parameters: a value that is not an id is named.
    host.get(&format!("{TYPES}/abc"))
        .assert_error(422, "path parameter 'id': 'abc' is not a valid i64");
    host.get(&format!("{TYPES}/99999999999999999999"))
        .assert_error(422, "'99999999999999999999' is not a valid i64");
    let gender = host
        .post(
            TYPES,
            &json!({"name": "Gender", "code": "gender", "remark": "sex; or gender"}),
        )
        .data()
        .clone();
    assert_eq!(gender["code"], "gender", "{label}");
    assert_eq!(gender["status"], 1);
    assert_eq!(gender["remark"], "sex; or gender");
    let type_id = gender["id"].as_i64().unwrap();
    host.post(TYPES, &json!({"name": "Again", "code": "gender"}))
        .assert_error(409, "conflicts with an existing row");

    // Twenty-five more types, for pagination and filters.
    for i in 0..25 {
        let status = if i % 5 == 0 { 0 } else { 1 };
        let reply = host.post(
            TYPES,
            &json!({"name": format!("Type {i:02}"), "code": format!("t{i:02}"), "status": status}),
        );
        assert_eq!(reply.status, 200, "{label}: {:?}", reply.json);
    }
    let page = host.get(&format!("{TYPES}?page=2&size=10")).data().clone();
    assert_eq!(page["total"], 26, "{label}");
    assert_eq!(page["page"], 2);
    assert_eq!(page["items"].as_array().unwrap().len(), 10);
    assert_eq!(page["items"][0]["name"], "Type 09");
    let last = host.get(&format!("{TYPES}?page=3&size=10")).data().clone();
    assert_eq!(last["items"].as_array().unwrap().len(), 6);
    assert_eq!(last["total"], 26, "{label}");
    // Past the end: no rows to carry the count, which is still the whole.
    let past = host.get(&format!("{TYPES}?page=9&size=10")).data().clone();
    assert_eq!(past["items"], json!([]), "{label}");
    assert_eq!(past["total"], 26, "{label}");
    let filtered = host
        .get(&format!("{TYPES}?name=Type%201&status=1"))
        .data()
        .clone();
    assert_eq!(
        e2e::strings(&filtered["items"], "/name"),
        [
            "Type 11", "Type 12", "Type 13", "Type 14", "Type 16", "Type 17", "Type 18", "Type 19"
        ],
        "{label}"
    );
    assert_eq!(filtered["total"], 8, "{label}: the filter's count");
    host.get(&format!("{TYPES}?size=500"))
        .assert_error(422, "size: must be a whole number from 1 to 200");
    host.get(&format!("{TYPES}?status=x"))
        .assert_error(422, "status: must be 0 or 1");

    // Get, update.
    assert_eq!(
        host.get(&format!("{TYPES}/{type_id}")).data()["name"],
        "Gender"
    );
    host.get(&format!("{TYPES}/999999999"))
        .assert_error(404, "dict type 999999999 does not exist");
    let updated = host
        .request(
            "PUT",
            &format!("{TYPES}/{type_id}"),
            Some(&json!({"name": "Sex", "code": "gender", "status": 0})),
        )
        .data()
        .clone();
    assert_eq!(updated["name"], "Sex");
    assert_eq!(updated["status"], 0);
    assert!(updated["remark"].is_null());
    host.request(
        "PUT",
        &format!("{TYPES}/999999999"),
        Some(&json!({"name": "x", "code": "y"})),
    )
    .assert_error(404, "does not exist");

    // Data entries.
    host.post(
        DATAS,
        &json!({"type_id": 999999999, "label": "x", "value": "y"}),
    )
    .assert_error(422, "type_id: dict type 999999999 does not exist");
    let male = host
        .post(
            DATAS,
            &json!({"type_id": type_id, "label": "Male", "value": "1", "sort": 2, "color": "blue"}),
        )
        .data()
        .clone();
    let female = host
        .post(
            DATAS,
            &json!({"type_id": type_id, "label": "Female", "value": "2", "sort": 1}),
        )
        .data()
        .clone();
    assert_eq!(male["color"], "blue");
    let entries = host
        .get(&format!("{DATAS}?type_id={type_id}"))
        .data()
        .clone();
    assert_eq!(
        e2e::strings(&entries["items"], "/label"),
        ["Female", "Male"],
        "{label}: sorted by sort"
    );
    let changed = host
        .request(
            "PUT",
            &format!("{DATAS}/{}", female["id"]),
            Some(&json!({"type_id": type_id, "label": "Woman", "value": "2"})),
        )
        .data()
        .clone();
    assert_eq!(changed["label"], "Woman");

    // Delete: one, bulk, and a type takes its entries along.
    assert_eq!(
        host.request("DELETE", &format!("{DATAS}/{}", male["id"]), None)
            .data()["deleted"],
        1
    );
    host.request("DELETE", &format!("{DATAS}/{}", male["id"]), None)
        .assert_error(404, "does not exist");
    host.request("DELETE", TYPES, Some(&json!({"pks": []})))
        .assert_error(422, "pks: must list 1 to 1000 ids");
    let ids: Vec<Value> = host.get(&format!("{TYPES}?code=t0&size=200")).data()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].clone())
        .collect();
    assert_eq!(ids.len(), 10);
    assert_eq!(
        host.request("DELETE", TYPES, Some(&json!({"pks": ids})))
            .data()["deleted"],
        10,
        "{label}"
    );
    assert_eq!(
        host.request("DELETE", &format!("{TYPES}/{type_id}"), None)
            .data()["deleted"],
        1
    );
    assert_eq!(
        host.get(&format!("{DATAS}?type_id={type_id}")).data()["total"],
        0,
        "{label}: entries went with their type"
    );
    assert_eq!(host.get(TYPES).data()["total"], 15);
}

#[test]
fn dict_crud_works_on_every_backend() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let (_data, host) = dict_host(&database, &[]);
        crud_round_trip(&host, &format!("{backend:?}"));
    }
}

#[test]
fn a_lone_dict_library_is_a_complete_plugin_on_every_backend_and_key_mode() {
    // No directory, no sql/ beside it: the scripts come from the library.
    for backend in BACKENDS {
        for pk_mode in ["autoincrement", "snowflake"] {
            let database = TestDatabase::create(backend);
            let data = DataDir::new();
            data.drop_library("dict");
            let host = Host::start_on(&data, &database, &[("PLUGHOST_PK_MODE", pk_mode)]);
            assert_eq!(
                host.plugin("dict")["state"],
                "loaded",
                "{backend:?} {pk_mode}"
            );
            crud_round_trip(&host, &format!("lone library, {backend:?}, {pk_mode}"));
        }
    }
}

#[test]
fn a_plugin_declaring_databases_needs_a_script_for_this_one_beside_or_inside_its_library() {
    let database = TestDatabase::create(Backend::Sqlite);
    let data = DataDir::new();
    // dict's directory without its sql/: the library carries the scripts.
    let dict = data.install_dir("dict");
    std::fs::remove_dir_all(dict.join("sql")).unwrap();
    // hello declares databases but has no script anywhere.
    let hello = data.install_dir("hello");
    let manifest = std::fs::read_to_string(hello.join("plugin.toml")).unwrap();
    assert!(manifest.starts_with("[plugin]\n"), "{manifest}");
    std::fs::write(
        hello.join("plugin.toml"),
        manifest.replacen("[plugin]\n", "[plugin]\ndatabase = [\"sqlite\"]\n", 1),
    )
    .unwrap();
    let host = Host::start_on(&data, &database, &[]);
    assert_eq!(host.plugin("dict")["state"], "loaded");
    assert_eq!(host.get(&format!("{TYPES}?page=1&size=5")).status, 200);
    let hello = host.plugin("hello");
    assert_eq!(hello["state"], "error");
    let error = hello["error"].as_str().unwrap();
    assert!(
        error.contains(
            "has no sql/sqlite/init.sql for this host's sqlite database in autoincrement mode"
        ),
        "{error}"
    );
    assert_eq!(host.get("/hello/v1/greet").status, 404);
}

#[test]
fn dict_is_listed_as_required_unless_configured_otherwise() {
    let database = TestDatabase::create(Backend::Sqlite);
    let data = DataDir::new();
    data.install_dir("dict");
    data.install_dir("hello");
    let host = Host::start_on(&data, &database, &[]);
    assert_eq!(host.plugin("dict")["required"], true);
    assert_eq!(host.plugin("hello")["required"], false);
    assert!(host.stop().success());
    let host = Host::start_on(
        &data,
        &database,
        &[("PLUGHOST_REQUIRED_PLUGINS", "hello,sysinfo")],
    );
    assert_eq!(host.plugin("dict")["required"], false);
    assert_eq!(host.plugin("hello")["required"], true);
}

#[test]
fn dict_crud_works_with_snowflake_keys_on_postgresql() {
    let database = TestDatabase::create(Backend::Postgresql);
    let (_data, host) = dict_host(&database, &[("PLUGHOST_PK_MODE", "snowflake")]);
    crud_round_trip(&host, "postgresql snowflake");
    let created = host
        .post(TYPES, &json!({"name": "Flake", "code": "flake"}))
        .data()
        .clone();
    assert!(created["id"].as_i64().unwrap() > 1 << 22);
}

#[test]
fn a_role_with_sys_dict_add_can_add_but_not_delete() {
    let database = TestDatabase::create(Backend::Sqlite);
    let data = DataDir::new();
    let env = database.env();
    for args in [
        &["role", "add", "dict-editor"][..],
        &["role", "grant", "dict-editor", "sys:dict:add"],
        &[
            "user",
            "add",
            "ada",
            "--password",
            "ada-password",
            "--role",
            "dict-editor",
        ],
    ] {
        let (ok, out) = cli(&data, &env, args);
        assert!(ok, "{out}");
    }
    data.install_dir("dict");
    let host = Host::start_on(&data, &database, &[]);
    let ada = format!("Bearer {}", host.token("ada", "ada-password"));
    let who = As::Header(&ada);
    let created = host.request_as(
        who,
        "POST",
        TYPES,
        Some(&json!({"name": "Colour", "code": "colour"})),
    );
    let id = created.data()["id"].clone();
    assert_eq!(host.request_as(who, "GET", TYPES, None).data()["total"], 1);
    host.request_as(who, "DELETE", &format!("{TYPES}/{id}"), None)
        .assert_error(403, "permission 'sys:dict:del' is required");
    host.request_as(
        who,
        "PUT",
        &format!("{TYPES}/{id}"),
        Some(&json!({"name": "C", "code": "c"})),
    )
    .assert_error(403, "permission 'sys:dict:edit' is required");
    host.request_as(As::Anonymous, "GET", TYPES, None)
        .assert_error(401, "authentication required");
    assert_eq!(
        host.request("DELETE", &format!("{TYPES}/{id}"), None)
            .status,
        200,
        "the superuser may"
    );
}
