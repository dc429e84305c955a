//! plughost: an actix-web host that loads plugins built against `plugin-api`
//! as native libraries and serves their routes.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of this crate.

pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod events;
pub mod http;
pub mod observe;
pub mod plugin;
pub mod redis;
pub mod runtime;
