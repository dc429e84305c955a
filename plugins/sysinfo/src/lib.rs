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
    routers: routers,
}
