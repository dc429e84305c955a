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
mod answers;
#[doc(hidden)]
pub mod counter;
mod db;
mod events;
mod export;
mod host;
mod http;
mod identity;
mod jobs;
mod lifespan;
#[doc(hidden)]
pub mod page;
mod request;
mod response;
mod router;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod whole;

#[doc(hidden)]
pub mod __private;

pub use answers::{Cookie, Part, SameSite};
pub use db::{DbError, DbErrorKind, Executed, Transaction};
pub use events::Subscription;
pub use host::{Host, host};
pub use http::{HttpError, HttpErrorKind, HttpRequest, HttpResponse};
pub use identity::{AdminCall, Decision, ExternalIdentity, Token, User, UserAccess};
pub use jobs::{Cluster, Schedule};
pub use lifespan::TaskError;
pub use page::Page;
pub use request::{Paging, Principal, Request};
pub use response::{Error, IntoResponse, Json, Response};
pub use router::Router;
pub use stream::{BodySender, Event, EventSender};

/// The version of this contract, as the host compares it.
pub const CONTRACT_VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    #[test]
    fn export_name_is_the_symbol_abi_stable_looks_up() {
        let source = include_str!("export.rs");
        let wanted = format!(
            "export_name = \"{}\"",
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
        assert!(source.contains(&wanted), "export_plugin! must use {wanted}");
    }
}
