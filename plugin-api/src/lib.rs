//! # plugin-api — the contract between plughost and its plugins
//!
//! A plugin is a `cdylib` crate that depends on this crate, declares its
//! routers and exports them with [`export_plugin!`]. The host loads the
//! library, checks its type layout against its own copy of this contract,
//! mounts the routers and calls the handlers.
//!
//! ```
//! use plugin_api::{Error, Json, Request, Router};
//! use serde::Deserialize;
//!
//! #[derive(Deserialize)]
//! struct Greet {
//!     name: Option<String>,
//! }
//!
//! async fn greet(req: Request<'_>) -> Result<Json<serde_json::Value>, Error> {
//!     let q: Greet = req.query()?;
//!     let name = q.name.unwrap_or_else(|| "world".into());
//!     Ok(Json(serde_json::json!({ "message": format!("Hello, {name}!") })))
//! }
//!
//! fn routers() -> Vec<Router> {
//!     vec![Router::new("router_v1").prefix("/hello/v1").get("/greet", greet)]
//! }
//!
//! plugin_api::export_plugin! {
//!     name: "hello",
//!     manifest: "[plugin]\nsummary = \"s\"\nversion = \"0.1.0\"\ndescription = \"d\"\nauthor = \"a\"\n[app]\nrouter = [\"router_v1\"]\n",
//!     routers: routers,
//! }
//! ```
//!
//! Handlers are ordinary `async fn`s taking a [`Request`] and returning
//! anything that implements [`IntoResponse`]: [`Json`] (the standard success
//! envelope), [`Response`], [`Error`] or a `Result` of those. A panic in a
//! handler, before or after an `.await`, becomes a 500 envelope and a line
//! in the host's log; it never crosses into the host.
//!
//! Plugins link no async runtime: they reach the outside world through the
//! [`Host`] services (see [`host`]).

pub mod abi;
mod host;
mod request;
mod response;
mod router;

#[doc(hidden)]
pub mod __private;

pub use host::{Host, host};
pub use request::{Principal, Request};
pub use response::{Error, IntoResponse, Json, Response};
pub use router::Router;

/// The version of this contract, as the host compares it.
pub const CONTRACT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Exports a plugin's root module from a `cdylib` crate.
///
/// * `name`: the plugin's name, `^[a-z][a-z0-9_]{0,63}$`; the host
///   refuses a library whose file or directory name says otherwise.
/// * `manifest`: the plugin.toml text, usually `include_str!("../plugin.toml")`.
/// * `routers`: a `fn() -> Vec<Router>`.
/// * `init` (optional): a `fn(&Host) -> Result<(), String>` run once after
///   loading, before any request.
#[macro_export]
macro_rules! export_plugin {
    (name: $name:expr, manifest: $manifest:expr, routers: $routers:path $(, init: $init:path)? $(,)?) => {
        static __PLUGHOST_PLUGIN: $crate::__private::PluginState =
            $crate::__private::PluginState::new($name, $routers, $crate::__private::init_or_none!($($init)?));

        #[allow(unsafe_code)]
        #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
        #[doc(hidden)]
        pub static __PLUGHOST_LIB_HEADER: $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn erased_module() -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(root_module)
            }
            fn root_module() -> $crate::abi::PluginModRef {
                $crate::__private::root_module::<__PluginHandlers>($name, $manifest)
            }
            struct __PluginHandlers;
            impl $crate::__private::StateAccess for __PluginHandlers {
                fn state() -> &'static $crate::__private::PluginState {
                    &__PLUGHOST_PLUGIN
                }
            }
            // SAFETY: `erased_module` returns the `PluginModRef` built by `root_module`.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginModRef,
                >(
                    erased_module,
                    $crate::__private::abi_stable::library::CheckTypeLayout::Yes,
                )
            }
        };
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn export_name_is_the_symbol_abi_stable_looks_up() {
        let source = include_str!("lib.rs");
        let wanted = format!(
            "export_name = \"{}\"",
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
        assert!(source.contains(&wanted), "export_plugin! must use {wanted}");
    }
}
