//! Finding plugins in the plugin directory.
//!
//! A plugin is either a directory `<name>/` holding `plugin.toml`,
//! `README.md` and `lib<name>.so` (and optionally `sql/`), or a lone
//! `lib<name>.so` whose embedded manifest is its manifest. Entries whose
//! names start with `.` (staging, editor files) are ignored, as are files
//! that are not libraries.
//!
//! A directory that came from the package store (an install over HTTP or
//! with the CLI, or an instance converging to the cluster's set) holds the
//! package's sha256 in [`PACKAGE_MARKER`]; every other plugin (a lone
//! library, a directory copied in by hand) is local to this instance.

use std::path::{Path, PathBuf};

/// The file in a plugin directory naming the package it was installed
/// from (its sha256 in the package store).
pub const PACKAGE_MARKER: &str = ".package";

/// The package a plugin directory was installed from; `None` for a lone
/// library or a directory placed by hand.
pub fn package_of(source: &Path) -> Option<String> {
    let text = std::fs::read_to_string(source.join(PACKAGE_MARKER)).ok()?;
    let digest = text.trim();
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| digest.to_ascii_lowercase())
}

/// Marks `dir` as installed from the package `digest`.
pub fn mark_package(dir: &Path, digest: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(PACKAGE_MARKER), format!("{digest}\n"))
}

/// The platform's library file name for plugin `name`.
pub fn library_file_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// The plugin name a library file name implies (`libhello.so` gives `hello`).
pub fn name_from_library_file(file_name: &str) -> Option<&str> {
    file_name
        .strip_prefix(std::env::consts::DLL_PREFIX)?
        .strip_suffix(std::env::consts::DLL_SUFFIX)
}

/// Where a plugin came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A plugin directory.
    Directory(PathBuf),
    /// A lone library file.
    Library(PathBuf),
}

impl Source {
    /// The directory or file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Directory(p) | Self::Library(p) => p,
        }
    }
}

/// One entry of the plugin directory that looks like a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The name its directory or file implies (checked against the library later).
    pub name: String,
    /// Where it is.
    pub source: Source,
}

/// Lists the candidates in `dir`, sorted by name.
pub fn discover(dir: &Path) -> std::io::Result<Vec<Candidate>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            tracing::warn!(entry = ?entry.path(), "ignoring plugin dir entry with a non-UTF-8 name");
            continue;
        };
        if file_name.starts_with('.') {
            continue;
        }
        let file_type = entry.file_type()?;
        let path = entry.path();
        if file_type.is_dir() || (file_type.is_symlink() && path.is_dir()) {
            found.push(Candidate {
                name: file_name.to_owned(),
                source: Source::Directory(path),
            });
        } else if let Some(name) = name_from_library_file(file_name) {
            found.push(Candidate {
                name: name.to_owned(),
                source: Source::Library(path),
            });
        }
    }
    found.sort_by(|a, b| {
        a.name
            .cmp(&b.name)
            .then(a.source.path().cmp(b.source.path()))
    });
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_and_lone_libraries_are_found_and_the_rest_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("dict")).unwrap();
        std::fs::create_dir(root.join(".staging-1")).unwrap();
        std::fs::write(root.join(library_file_name("hello")), b"").unwrap();
        std::fs::write(root.join("notes.txt"), b"").unwrap();
        std::fs::write(root.join("dict.20260101000000.backup.zip"), b"").unwrap();
        let found = discover(root).unwrap();
        let names: Vec<_> = found.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["dict", "hello"]);
        assert!(matches!(found[0].source, Source::Directory(_)));
        assert!(matches!(found[1].source, Source::Library(_)));
    }

    #[test]
    fn only_a_well_formed_marker_names_a_package() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(package_of(dir.path()), None);
        let digest = "AB".repeat(32);
        mark_package(dir.path(), &digest).unwrap();
        assert_eq!(package_of(dir.path()), Some("ab".repeat(32)));
        std::fs::write(dir.path().join(PACKAGE_MARKER), "not a digest").unwrap();
        assert_eq!(package_of(dir.path()), None);
        assert_eq!(package_of(&dir.path().join("lib.so")), None);
    }

    #[test]
    fn library_names_round_trip() {
        assert_eq!(
            name_from_library_file(&library_file_name("a_b")),
            Some("a_b")
        );
        assert_eq!(name_from_library_file("hello.txt"), None);
    }
}
