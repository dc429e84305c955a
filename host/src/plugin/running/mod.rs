//! The running set: what is loaded, the route table requests use, and the
//! enable flags the gate reads.
//!
//! `loaded` is a mounted plugin, `registry` loads a plugin dir into
//! records, `router` builds route tables, `status` keeps the flags, and
//! `report` shares what each instance serves, `lifespan` starts and stops
//! the loaded plugins in dependency order, `access` asks their
//! authenticators and authorizers; `set` is the one owner of the
//! loaded records and the current route table, changed only through its
//! methods.

pub mod access;
pub mod lifespan;
pub mod loaded;
pub mod registry;
pub mod report;
pub mod router;
pub mod set;
pub mod status;
