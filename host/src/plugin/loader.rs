//! Opening a plugin library and checking it speaks this host's contract.
//!
//! Each library is opened through its own header (never abi_stable's
//! per-type module cache, which would hand back the first plugin for every
//! path). Libraries are never unloaded: abi_stable leaks them on purpose,
//! since unloading Rust code with thread-locals is unsound.

use std::path::{Path, PathBuf};

use abi_stable::{
    StableAbi,
    abi_stability::abi_checking::check_layout_compatibility,
    library::{LibHeader, LibraryError, RootModule, lib_header_from_path},
    sabi_types::VersionNumber,
};
use plugin_api::abi::PluginModRef;

/// How many lines of abi_stable's (very long) layout report reach the user.
const LAYOUT_REPORT_LINES: usize = 6;

/// Why a library was refused.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// dlopen failed: not a library for this platform, or missing symbols.
    #[error("{path}: not a loadable library for this platform: {reason}")]
    Open {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        reason: String,
    },
    /// The library loads but exports no plughost root module.
    #[error(
        "{path}: not a plughost plugin: it exports no plugin root module (build it with plugin_api::export_plugin!)"
    )]
    NoRootModule {
        /// The library.
        path: PathBuf,
    },
    /// The contract's major version differs.
    #[error(
        "{path}: built against plugin-api {found}, this host speaks plugin-api {expected}: rebuild the plugin against plugin-api {expected_major}.x"
    )]
    Version {
        /// The library.
        path: PathBuf,
        /// The host's contract version.
        expected: String,
        /// The plugin's contract version.
        found: String,
        /// The host's major version.
        expected_major: u32,
    },
    /// The contract's types differ in layout.
    #[error(
        "{path}: type layout of {type_name} differs from this host's plugin-api {expected} (plugin built against {found}); rebuild the plugin against plugin-api {expected}: {summary}"
    )]
    Layout {
        /// The library.
        path: PathBuf,
        /// The root module type.
        type_name: &'static str,
        /// The host's contract version.
        expected: String,
        /// The plugin's contract version.
        found: String,
        /// The first differences.
        summary: String,
    },
    /// abi_stable itself differs, or the root module failed to build.
    #[error("{path}: {reason}")]
    Other {
        /// The library.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

fn host_version() -> VersionNumber {
    VersionNumber::new(PluginModRef::VERSION_STRINGS).expect("plugin-api has a valid version")
}

fn plugin_version(header: &LibHeader) -> String {
    VersionNumber::new(header.version_strings())
        .map(|v| v.to_string())
        .unwrap_or_else(|_| header.version_strings().version.to_string())
}

/// Keeps the first lines of abi_stable's layout report that say what differs.
fn summarize_layout_report(report: &str) -> String {
    let lines: Vec<&str> = report
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            lower.contains("expected") || lower.contains("found") || lower.contains("error")
        })
        .take(LAYOUT_REPORT_LINES)
        .collect();
    if lines.is_empty() {
        report
            .lines()
            .take(LAYOUT_REPORT_LINES)
            .collect::<Vec<_>>()
            .join(" | ")
    } else {
        lines.join(" | ")
    }
}

fn describe(path: &Path, header: Option<&LibHeader>, error: LibraryError) -> LoadError {
    let path = path.to_owned();
    match error {
        LibraryError::OpenError { err, .. } => LoadError::Open {
            path,
            reason: err.to_string(),
        },
        LibraryError::GetSymbolError { .. } => LoadError::NoRootModule { path },
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => LoadError::Version {
            path,
            expected: expected_version.to_string(),
            found: actual_version.to_string(),
            expected_major: expected_version.major,
        },
        LibraryError::AbiInstability(report) => {
            let report = report.to_string();
            tracing::debug!(library = %path.display(), "full layout report:\n{report}");
            LoadError::Layout {
                path,
                type_name: "PluginMod",
                expected: host_version().to_string(),
                found: header
                    .map(plugin_version)
                    .unwrap_or_else(|| "unknown".into()),
                summary: summarize_layout_report(&report),
            }
        }
        LibraryError::InvalidAbiHeader(found) => LoadError::Other {
            path,
            reason: format!(
                "built with an incompatible abi_stable (header {found:?}); rebuild the plugin against plugin-api {}",
                host_version()
            ),
        },
        LibraryError::RootModule { err, .. } => LoadError::Other {
            path,
            reason: format!("the plugin's root module failed to build: {err}"),
        },
        other => LoadError::Other {
            path,
            reason: other.to_string(),
        },
    }
}

/// Opens the library at `path` and returns its checked root module.
///
/// A plugin built against the same or a newer 1.x contract passes
/// abi_stable's check directly; one built against an older 1.x contract is
/// accepted through [`accept_older_minor`].
pub fn load_library(path: &Path) -> Result<PluginModRef, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| describe(path, None, e))?;
    match header.init_root_module::<PluginModRef>() {
        Ok(module) => Ok(module),
        Err(LibraryError::AbiInstability(report)) => accept_older_minor(header)
            .map_err(|()| describe(path, Some(header), LibraryError::AbiInstability(report))),
        Err(e) => Err(describe(path, Some(header), e)),
    }
}

/// Accepts a plugin built against an older minor version of this contract.
///
/// abi_stable only accepts a library whose prefix types have at least the
/// fields the host knows ("too many fields" otherwise). A plugin built
/// against 1.x with x older than the host's minor has fewer root-module
/// fields; it is still compatible when the layouts check the other way
/// round (the plugin's layout as the interface, the host's as the
/// implementation), which still refuses changed types and moved prefixes.
/// The host then reads the fields added after the plugin's version only
/// through their `Option` accessors.
#[allow(unsafe_code)]
fn accept_older_minor(header: &LibHeader) -> Result<PluginModRef, ()> {
    let host = host_version();
    let plugin = VersionNumber::new(header.version_strings()).map_err(|_| ())?;
    if plugin.major != host.major || plugin.minor >= host.minor {
        return Err(());
    }
    let plugin_layout = header.layout().ok_or(())?;
    check_layout_compatibility(plugin_layout, <PluginModRef as StableAbi>::LAYOUT).map_err(
        |e| {
            tracing::debug!("reversed layout check failed too: {e}");
        },
    )?;
    // SAFETY: the layouts were checked above, in the direction that is valid
    // for a plugin older than the host; fields the plugin lacks are only read
    // through `Option` accessors.
    unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_reports_are_cut_to_the_lines_that_differ() {
        let report = "Error:\n  a\n  b\nfield  expected: u32\n  found: u64\n\n".repeat(50);
        let summary = summarize_layout_report(&report);
        assert_eq!(summary.matches(" | ").count(), LAYOUT_REPORT_LINES - 1);
        assert!(summary.starts_with("Error:"), "{summary}");
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libgarbage.so");
        std::fs::write(&path, b"definitely not an ELF file").unwrap();
        let err = load_library(&path).unwrap_err();
        assert!(matches!(err, LoadError::Open { .. }), "{err}");
        assert!(err.to_string().contains("libgarbage.so"), "{err}");
    }
}
