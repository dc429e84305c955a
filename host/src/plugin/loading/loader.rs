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

/// How many differences of abi_stable's (very long) layout report reach the user.
const LAYOUT_REPORT_ERRORS: usize = 4;

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
        "{path}: type {type_name} differs from this host's plugin-api {expected} (the plugin says it was built against {found}): {summary}; rebuild the plugin against plugin-api {expected}"
    )]
    Layout {
        /// The library.
        path: PathBuf,
        /// The innermost type that differs.
        type_name: String,
        /// The host's contract version.
        expected: String,
        /// The plugin's contract version.
        found: String,
        /// The first differences.
        summary: String,
    },
    /// The file is not safe to map: cut short, headers pointing past its
    /// end, the wrong machine, or it crashed a test process.
    #[error("{path}: refused before loading: {reason}")]
    Damaged {
        /// The library.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The test process that opened the library refused it.
    #[error("{path}: {reason}")]
    Probe {
        /// The library.
        path: PathBuf,
        /// The test process's reason.
        reason: String,
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

impl LoadError {
    /// The same error, naming `path` as the library (the file the operator
    /// knows, rather than the host's copy that was opened).
    pub fn naming(mut self, shown: &Path) -> Self {
        match &mut self {
            Self::Open { path, .. }
            | Self::NoRootModule { path }
            | Self::Version { path, .. }
            | Self::Layout { path, .. }
            | Self::Damaged { path, .. }
            | Self::Probe { path, .. }
            | Self::Other { path, .. } => shown.clone_into(path),
        }
        self
    }
}

fn host_version() -> VersionNumber {
    VersionNumber::new(PluginModRef::VERSION_STRINGS).expect("plugin-api has a valid version")
}

fn plugin_version(header: &LibHeader) -> String {
    VersionNumber::new(header.version_strings())
        .map(|v| v.to_string())
        .unwrap_or_else(|_| header.version_strings().version.to_string())
}

/// What a layout report says differs: the innermost type with errors and
/// each error with its expected and found value, on one line.
///
/// abi_stable's report runs to hundreds of lines (the full layout of both
/// types at every level); the whole of it goes to the debug log.
fn summarize_layout_report(report: &str) -> (String, String) {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    // The innermost type with errors: the last `type:` line of the last
    // non-empty "N error(s)inside:" block, before that block's layouts.
    let mut type_name = None;
    for (i, line) in lines.iter().enumerate() {
        let Some(count) = line.strip_suffix("error(s)inside:") else {
            continue;
        };
        if count.trim().parse::<u32>().is_ok_and(|n| n > 0) {
            type_name = lines[i + 1..]
                .iter()
                .take_while(|l| !l.starts_with("Layout of expected type"))
                .filter_map(|l| l.strip_prefix("type:"))
                .last()
                .map(str::to_owned);
        }
    }
    // The value after a `Expected:`/`Found:` header: a field's name, or the
    // first line.
    let value_after = |start: usize| -> String {
        let block = lines[start..]
            .iter()
            .take_while(|l| !l.is_empty() && !l.starts_with("Found:"));
        let block: Vec<&&str> = block.collect();
        block
            .iter()
            .find_map(|l| l.strip_prefix("field_name:"))
            .or_else(|| block.first().map(|l| **l))
            .unwrap_or("?")
            .to_owned()
    };
    let mut errors = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(what) = line.strip_prefix("Error:") else {
            continue;
        };
        let expected = lines[i..]
            .iter()
            .position(|l| *l == "Expected:")
            .map(|k| value_after(i + k + 1));
        let found = lines[i..]
            .iter()
            .position(|l| *l == "Found:")
            .map(|k| value_after(i + k + 1));
        errors.push(match (expected, found) {
            (Some(e), Some(f)) => format!("{what} (expected {e}, found {f})"),
            _ => what.to_owned(),
        });
        if errors.len() == LAYOUT_REPORT_ERRORS {
            break;
        }
    }
    let summary = if errors.is_empty() {
        lines
            .iter()
            .filter(|l| !l.is_empty())
            .take(3)
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        errors.join("; ")
    };
    (type_name.unwrap_or_else(|| "PluginMod".to_owned()), summary)
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
            let (type_name, summary) = summarize_layout_report(&report);
            LoadError::Layout {
                path,
                type_name,
                expected: host_version().to_string(),
                found: header
                    .map(plugin_version)
                    .unwrap_or_else(|| "unknown".into()),
                summary,
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

/// Whether the contract's layout must be compared with the library's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutCheck {
    /// Compare them (abi_stable's check of every type the contract holds).
    Run,
    /// This host binary already compared them for this very library (its
    /// digest): only the version is checked.
    AlreadyPassed,
}

/// An opened library: its root module and the plugin-api version it was
/// built against.
pub struct OpenedLibrary {
    /// The root module.
    pub module: PluginModRef,
    /// The contract version its header states.
    pub contract: String,
}

/// Opens the library at `path` and returns its checked root module.
///
/// A plugin built against the same or a newer 1.x contract passes
/// abi_stable's check directly; one built against an older 1.x contract is
/// accepted through [`accept_older_minor`]. With
/// [`LayoutCheck::AlreadyPassed`] the layout comparison, which this binary
/// made before on the same bytes, is not repeated.
#[allow(unsafe_code)]
pub fn load_library(path: &Path, check: LayoutCheck) -> Result<OpenedLibrary, LoadError> {
    let header = lib_header_from_path(path).map_err(|e| describe(path, None, e))?;
    let module = match check {
        // SAFETY: this binary compared the layouts of these exact bytes
        // (the copy is named by its digest) and accepted them.
        LayoutCheck::AlreadyPassed => {
            let host = host_version();
            if let Ok(plugin) = VersionNumber::new(header.version_strings())
                && plugin.major == host.major
                && plugin.minor < host.minor
            {
                older_minor_accepted(plugin);
            }
            unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }
                .map_err(|e| describe(path, Some(header), e))?
        }
        LayoutCheck::Run => match header.init_root_module::<PluginModRef>() {
            Ok(module) => module,
            Err(LibraryError::AbiInstability(report)) => accept_older_minor(header)
                .map_err(|()| describe(path, Some(header), LibraryError::AbiInstability(report)))?,
            Err(e) => return Err(describe(path, Some(header), e)),
        },
    };
    Ok(OpenedLibrary {
        module,
        contract: plugin_version(header),
    })
}

fn older_minor_accepted(plugin: VersionNumber) {
    tracing::info!(
        plugin_contract = %plugin,
        host_contract = %host_version(),
        "accepting a plugin built against an older minor version of plugin-api"
    );
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
    older_minor_accepted(plugin);
    // SAFETY: the layouts were checked above, in the direction that is valid
    // for a plugin older than the host; fields the plugin lacks are only read
    // through `Option` accessors.
    unsafe { header.init_root_module_with_unchecked_layout::<PluginModRef>() }.map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_reports_are_cut_to_the_type_and_the_differences() {
        let report = "0 error(s).\n0 error(s)inside:\n  type:PluginMod\nLayout of expected type:\n  type:PluginMod\n\n\
            2 error(s)inside:\n    field_name:0\n    type:PluginMod\n\n    field_name:0\n    type:RawRequest<'a>\n\
            Layout of expected type:\n    type:RawRequest<'a>\n\n\
            Error:incompatible type size\nExpected:\n    192\nFound:\n    200\n\n\
            Error:unexpected field\nExpected:\n    field_name:extensions\n    type:RSlice<'a>\nFound:\n    field_name:extra\n    type:u64\n";
        let (type_name, summary) = summarize_layout_report(report);
        assert_eq!(type_name, "RawRequest<'a>");
        assert_eq!(
            summary,
            "incompatible type size (expected 192, found 200); unexpected field (expected extensions, found extra)"
        );
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("libgarbage.so");
        std::fs::write(&path, b"definitely not an ELF file").unwrap();
        let Err(err) = load_library(&path, LayoutCheck::Run) else {
            panic!("garbage loaded")
        };
        assert!(matches!(err, LoadError::Open { .. }), "{err}");
        assert!(err.to_string().contains("libgarbage.so"), "{err}");
    }
}
