//! Plugins and hosts built against different minor versions of plugin-api
//! work together in every combination; a different major version or a
//! changed frozen type is refused. The workspace is plugin-api 1.5 (1.1
//! appended the root module's `files`, 1.2 the host services' `kv_incr`,
//! 1.3 their `sql_page`, 1.4 the root module's `start` and `stop` and the
//! services' `spawn` and `blocking`, 1.5 the services' `identity` and the
//! root module's `authenticate` and `authorize`); `contract_v1_0` to
//! `contract_v1_4` are built against the real 1.0 to 1.4, and
//! `plughost-next` and `contract_next` against a 1.6 with one more
//! optional root-module field (see scripts/build-fixtures).

use e2e::{DataDir, Host};

#[test]
fn hosts_and_plugins_of_contract_1_0_to_1_6_load_each_other_in_every_combination() {
    let data = DataDir::new();
    data.drop_library("contract_v1_0"); // built against 1.0.0
    data.drop_library("contract_v1_1"); // built against 1.1.0
    data.drop_library("contract_v1_2"); // built against 1.2.0
    data.drop_library("contract_v1_3"); // built against 1.3.0
    data.drop_library("contract_v1_4"); // built against 1.4.0
    data.drop_library("hello"); // built against 1.5.0
    data.drop_library("ticker"); // 1.5.0, with lifespan hooks and a task
    data.drop_library("contract_next"); // built against 1.6.0
    for binary in ["plughost", "plughost-next"] {
        let host = Host::start_binary(binary, &data, &[]);
        assert_eq!(
            host.get("/contract_v1_0/x").data(),
            "contract_v1_0",
            "{binary} serves a 1.0 plugin"
        );
        assert_eq!(
            host.get("/contract_v1_1/x").data(),
            "contract_v1_1",
            "{binary} serves a 1.1 plugin"
        );
        assert_eq!(
            host.get("/contract_v1_2/x").data(),
            "contract_v1_2",
            "{binary} serves a 1.2 plugin"
        );
        assert_eq!(
            host.get("/contract_v1_3/x").data(),
            "contract_v1_3",
            "{binary} serves a 1.3 plugin"
        );
        assert_eq!(
            host.get("/contract_v1_4/x").data(),
            "contract_v1_4",
            "{binary} serves a 1.4 plugin"
        );
        assert_eq!(
            host.get("/hello/v1/greet?name=Ada").data()["message"],
            "Hello, Ada!",
            "{binary} serves a 1.5 plugin"
        );
        let ticker = host.get("/ticker/v1/state").data().clone();
        assert_eq!(
            ticker["started"], true,
            "{binary} runs a 1.5 plugin's start hook"
        );
        assert_eq!(
            host.get("/contract_next/x").data(),
            "contract_next",
            "{binary} serves a 1.6 plugin"
        );
        let log = host.log();
        assert!(
            log.contains("older minor version of plugin-api"),
            "{binary} takes the older-minor path for the 1.0 plugin:\n{log}"
        );
    }
}

#[test]
fn a_newer_host_still_refuses_a_changed_frozen_type_and_another_major_version() {
    let data = DataDir::new();
    data.drop_library("contract_layout");
    data.drop_library("contract_major2");
    let host = Host::start_binary("plughost-next", &data, &[]);
    let layout = host.plugin("contract_layout");
    let error = layout["error"].as_str().unwrap();
    assert!(
        error.contains("type RawRequest<'a> differs from this host's plugin-api 1.6.0"),
        "{error}"
    );
    let major = host.plugin("contract_major2");
    let error = major["error"].as_str().unwrap();
    assert!(
        error.contains("built against plugin-api 2.0.0, this host speaks plugin-api 1.6.0"),
        "{error}"
    );
}
