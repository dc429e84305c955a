//! `sysinfo`: an extend-level plugin reporting host facts through host services.

use plugin_api::{Json, Request, Router, host};
use serde::Serialize;

#[derive(Serialize)]
struct SysInfo {
    host_version: &'static str,
    loaded_plugins: u32,
}

/// `GET /admin/v1/sys/sysinfo`
async fn info(_req: Request<'_>) -> Json<SysInfo> {
    let host = host();
    Json(SysInfo {
        host_version: host.host_version(),
        loaded_plugins: host.loaded_plugins(),
    })
}

fn routers() -> Vec<Router> {
    vec![
        Router::new("sysinfo")
            .get("", info)
            .summary("Host version and loaded plugins")
            .response_schema(serde_json::json!({
                "type": "object",
                "required": ["host_version", "loaded_plugins"],
                "properties": {
                    "host_version": { "type": "string" },
                    "loaded_plugins": { "type": "integer", "minimum": 0 },
                },
            })),
    ]
}

plugin_api::export_plugin! {
    name: "sysinfo",
    manifest: include_str!("../plugin.toml"),
    readme: include_str!("../README.md"),
    routers: routers,
}

#[cfg(test)]
mod tests {
    use plugin_api::testing::{HOST_VERSION, TestHost, TestUser};

    #[test]
    fn reports_the_hosts_version_and_plugin_count_below_the_admin_app() {
        let host = TestHost::start(plugin_api::this_plugin!()).expect("sysinfo loads");
        assert_eq!(
            host.get("/admin/v1/sys/sysinfo").send().status,
            401,
            "inside the admin app"
        );
        let info = host
            .get("/admin/v1/sys/sysinfo")
            .user(&TestUser::new(1, "anyone"))
            .send();
        assert_eq!(info.status, 200, "{}", info.text());
        assert_eq!(info.data()["host_version"], HOST_VERSION);
        assert_eq!(info.data()["loaded_plugins"], 1);
    }
}
