//! Loading: from a file in the plugin dir to a checked, opened library.
//!
//! `discover` finds candidates, `manifest` parses and validates
//! `plugin.toml`, `libcache` checks a library and makes the host's private
//! copy of it, `loader` opens that copy and checks the contract, `trust`
//! checks a package's signature, `permissions` reads the hosts a plugin
//! may reach. Nothing here changes what the host serves.

pub mod discover;
pub mod libcache;
pub mod loader;
pub mod manifest;
pub mod permissions;
pub mod trust;
