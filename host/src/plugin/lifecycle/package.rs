//! Plugin packages: the ZIP an operator uploads and the one a download
//! gives back.
//!
//! A package holds one top-level directory `<name>/` with `plugin.toml`,
//! `README.md`, the library `lib<name>.so` and optionally `sql/`. Unpacking
//! checks every entry's name before writing anything, and enforces the size
//! limits while decompressing (a bomb is stopped at the limit, not found
//! after the disk is full).

use std::{
    collections::HashMap,
    io::{Read, Write},
    path::{Component, Path, PathBuf},
};

use zip::{CompressionMethod, ZipArchive, ZipWriter, write::SimpleFileOptions};

use crate::plugin::loading::{
    discover::library_file_name,
    manifest::is_valid_plugin_name,
    trust::{CHECKSUMS, SIGNATURE},
};

/// Limits on an uploaded package (a setting: it lives with the settings).
pub use crate::config::PackageLimits as Limits;

/// A package that is refused.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Not a ZIP archive.
    #[error("the package is not a ZIP archive ({0})")]
    NotZip(String),
    /// The archive is too large.
    #[error("the package is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// Too many entries.
    #[error("the package has {count} entries, more than the limit of {limit}")]
    TooManyEntries {
        /// How many.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// An entry that may not be unpacked.
    #[error("package entry '{entry}' is refused: {reason}")]
    Entry {
        /// The entry's name, as stored.
        entry: String,
        /// Why.
        reason: String,
    },
    /// The entries unpack to too much.
    #[error("the package unpacks to more than the limit of {limit} bytes (at entry '{entry}')")]
    TooMuch {
        /// Where the limit was reached.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// The required files are not there.
    #[error(
        "the package must hold one directory <name>/ with plugin.toml, README.md and {library}: {missing}"
    )]
    Layout {
        /// The library file name expected.
        library: String,
        /// What is missing.
        missing: String,
    },
    /// Writing the unpacked files failed.
    #[error("cannot unpack into {path}: {message}")]
    Io {
        /// Where.
        path: String,
        /// Why.
        message: String,
    },
}

fn refuse(entry: &str, reason: impl Into<String>) -> PackageError {
    PackageError::Entry {
        entry: entry.to_owned(),
        reason: reason.into(),
    }
}

const S_IFMT: u32 = 0o170_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// Checks one entry name; returns its components (the first is the top
/// directory).
fn check_name(name: &str) -> Result<Vec<&str>, PackageError> {
    if name.contains('\\') {
        return Err(refuse(name, "backslashes are not allowed in entry names"));
    }
    if name.contains('\0') {
        return Err(refuse(name, "NUL bytes are not allowed in entry names"));
    }
    if name.starts_with('/') || Path::new(name).has_root() || name.get(1..2) == Some(":") {
        return Err(refuse(name, "absolute paths are not allowed"));
    }
    let trimmed = name.strip_suffix('/').unwrap_or(name);
    let parts: Vec<&str> = trimmed.split('/').collect();
    for part in &parts {
        match *part {
            "" => return Err(refuse(name, "empty path components are not allowed")),
            "." | ".." => return Err(refuse(name, "'.' and '..' components are not allowed")),
            _ => {}
        }
    }
    if !Path::new(trimmed)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(refuse(name, "only plain relative paths are allowed"));
    }
    Ok(parts)
}

fn u16_at(bytes: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?).into())
}

fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    usize::try_from(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?)).ok()
}

/// The entry names as the central directory lists them, duplicates
/// included (`None` for ZIP64 archives, whose counts live elsewhere, or
/// when the directory cannot be walked; the ZIP reader judges those).
fn central_directory_names(bytes: &[u8]) -> Option<Vec<String>> {
    const END: [u8; 4] = [0x50, 0x4b, 0x05, 0x06];
    const ENTRY: [u8; 4] = [0x50, 0x4b, 0x01, 0x02];
    let start = bytes.len().saturating_sub(22 + 65_535);
    let end = (start..=bytes.len().checked_sub(22)?)
        .rev()
        .find(|&i| bytes[i..i + 4] == END)?;
    let count = u16_at(bytes, end + 10)?;
    let mut at = u32_at(bytes, end + 16)?;
    if count == 0xFFFF || at == 0xFFFF_FFFF {
        return None;
    }
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        if bytes.get(at..at + 4)? != ENTRY {
            return None;
        }
        let (name_len, extra_len, comment_len) = (
            u16_at(bytes, at + 28)?,
            u16_at(bytes, at + 30)?,
            u16_at(bytes, at + 32)?,
        );
        let name = bytes.get(at + 46..at + 46 + name_len)?;
        names.push(String::from_utf8_lossy(name).into_owned());
        at += 46 + name_len + extra_len + comment_len;
    }
    Some(names)
}

/// Unpacks `archive` into `dest` (which must exist and be empty) after
/// checking it; returns the name of its top directory.
pub fn unpack(archive: &[u8], limits: &Limits, dest: &Path) -> Result<String, PackageError> {
    let size = archive.len() as u64;
    if size > limits.max_archive {
        return Err(PackageError::TooLarge {
            size,
            limit: limits.max_archive,
        });
    }
    let mut zip = ZipArchive::new(std::io::Cursor::new(archive))
        .map_err(|e| PackageError::NotZip(e.to_string()))?;
    if zip.len() > limits.max_entries {
        return Err(PackageError::TooManyEntries {
            count: zip.len(),
            limit: limits.max_entries,
        });
    }

    // The crate's index keeps one entry per name: a second entry of the
    // same name is only visible in the central directory itself.
    if let Some(names) = central_directory_names(archive) {
        let mut seen = std::collections::HashSet::new();
        if let Some(twice) = names.iter().find(|n| !seen.insert(n.as_str())) {
            return Err(refuse(twice, "it appears twice"));
        }
    }

    // Every name first: nothing is written for a package with one bad entry.
    let mut top: Option<String> = None;
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut files = Vec::new();
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| PackageError::NotZip(e.to_string()))?;
        let name = std::str::from_utf8(entry.name_raw())
            .map_err(|_| refuse(&String::from_utf8_lossy(entry.name_raw()), "not UTF-8"))?
            .to_owned();
        let parts = check_name(&name)?;
        if entry.encrypted() {
            return Err(refuse(&name, "encrypted entries are not allowed"));
        }
        let kind = entry.unix_mode().map(|m| m & S_IFMT);
        if kind == Some(S_IFLNK) {
            return Err(refuse(&name, "links are not allowed"));
        }
        let is_dir = entry.is_dir() || kind == Some(S_IFDIR);
        if let Some(k) = kind
            && k != 0
            && k != S_IFREG
            && k != S_IFDIR
        {
            return Err(refuse(&name, "only files and directories are allowed"));
        }
        match &top {
            None => top = Some(parts[0].to_owned()),
            Some(t) if t != parts[0] => {
                return Err(refuse(
                    &name,
                    format!("it is outside the package's one top directory '{t}/'"),
                ));
            }
            Some(_) => {}
        }
        if parts.len() == 1 && !is_dir {
            return Err(refuse(
                &name,
                "files must be inside the top directory <name>/",
            ));
        }
        let normalized = parts.join("/");
        if let Some(other) = seen.insert(normalized.to_lowercase(), name.clone()) {
            return Err(refuse(
                &name,
                if other.trim_end_matches('/') == normalized {
                    "it appears twice".to_owned()
                } else {
                    format!("it collides with '{other}' when case is ignored")
                },
            ));
        }
        let declared = entry.size();
        let packed = entry.compressed_size().max(1);
        if declared / packed > limits.max_ratio {
            return Err(refuse(
                &name,
                format!(
                    "it expands {}:1, more than the limit of {}:1",
                    declared / packed,
                    limits.max_ratio
                ),
            ));
        }
        if !is_dir {
            files.push((i, normalized, packed));
        }
    }
    let top = top.ok_or_else(|| PackageError::Layout {
        library: "lib<name>.so".into(),
        missing: "the archive is empty".into(),
    })?;
    if !is_valid_plugin_name(&top) {
        return Err(refuse(
            &format!("{top}/"),
            format!(
                "the top directory must be the plugin's name ({})",
                crate::plugin::loading::manifest::PLUGIN_NAME_PATTERN
            ),
        ));
    }

    // Then the contents, each entry and the total held to the limits while
    // decompressing, whatever the headers claim.
    let io = |path: &Path, e: std::io::Error| PackageError::Io {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    for (i, name, packed) in files {
        let mut entry = zip.by_index(i).map_err(|e| refuse(&name, e.to_string()))?;
        let path = dest.join(&name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut written: u64 = 0;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| refuse(&name, format!("it cannot be read: {e}")))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            total += n as u64;
            if total > limits.max_unpacked {
                return Err(PackageError::TooMuch {
                    entry: name,
                    limit: limits.max_unpacked,
                });
            }
            if written / packed > limits.max_ratio {
                return Err(refuse(
                    &name,
                    format!("it expands more than the limit of {}:1", limits.max_ratio),
                ));
            }
            out.write_all(&buf[..n]).map_err(|e| io(&path, e))?;
        }
        out.sync_all().map_err(|e| io(&path, e))?;
    }

    let dir = dest.join(&top);
    let library = library_file_name(&top);
    let missing: Vec<&str> = ["plugin.toml", "README.md", library.as_str()]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .collect();
    if !missing.is_empty() {
        let missing = format!("{top}/ lacks {}", missing.join(", "));
        return Err(PackageError::Layout { library, missing });
    }
    Ok(top)
}

/// The files of a plugin directory a package carries, relative to it: the
/// manifest, the README, the library, the SQL scripts and, when signed,
/// the checksums and their signature. Nothing else
/// (build artefacts, editor files, credentials) is ever packed or staged.
pub fn packable(dir: &Path, name: &str) -> std::io::Result<Vec<String>> {
    let mut files = Vec::new();
    for fixed in [
        "plugin.toml",
        "README.md",
        &library_file_name(name),
        CHECKSUMS,
        SIGNATURE,
    ] {
        if dir.join(fixed).is_file() {
            files.push(fixed.to_owned());
        }
    }
    let sql = dir.join("sql");
    if sql.is_dir() {
        for backend in std::fs::read_dir(&sql)? {
            let backend = backend?;
            if !backend.file_type()?.is_dir() {
                continue;
            }
            let backend_name = backend.file_name().to_string_lossy().into_owned();
            for script in std::fs::read_dir(backend.path())? {
                let script = script?;
                let file = script.file_name().to_string_lossy().into_owned();
                if script.file_type()?.is_file() && file.ends_with(".sql") {
                    files.push(format!("sql/{backend_name}/{file}"));
                }
            }
        }
    }
    files.sort();
    Ok(files)
}

/// What a plugin's package is made from.
pub enum PackSource {
    /// A plugin directory: its package files as they are.
    Dir(PathBuf),
    /// A lone library, with the manifest and README it embeds (written out
    /// as `plugin.toml` and `README.md`).
    Library {
        /// The library file.
        path: PathBuf,
        /// The embedded manifest's text.
        manifest: String,
        /// The embedded README, or one written from the manifest.
        readme: String,
    },
}

impl PackSource {
    /// The directory or library file.
    pub fn path(&self) -> &Path {
        match self {
            Self::Dir(path) | Self::Library { path, .. } => path,
        }
    }
}

/// Packs plugin `name` as an installable ZIP.
pub fn pack(source: &PackSource, name: &str) -> std::io::Result<Vec<u8>> {
    let mut zip = ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .unix_permissions(0o644);
    let to_io = |e: zip::result::ZipError| std::io::Error::other(e.to_string());
    zip.add_directory(format!("{name}/"), options)
        .map_err(to_io)?;
    match source {
        PackSource::Dir(dir) => {
            for file in packable(dir, name)? {
                zip.start_file(format!("{name}/{file}"), options)
                    .map_err(to_io)?;
                zip.write_all(&std::fs::read(dir.join(&file))?)?;
            }
        }
        PackSource::Library {
            path,
            manifest,
            readme,
        } => {
            zip.start_file(format!("{name}/plugin.toml"), options)
                .map_err(to_io)?;
            zip.write_all(manifest.as_bytes())?;
            zip.start_file(format!("{name}/README.md"), options)
                .map_err(to_io)?;
            zip.write_all(readme.as_bytes())?;
            zip.start_file(format!("{name}/{}", library_file_name(name)), options)
                .map_err(to_io)?;
            zip.write_all(&std::fs::read(path)?)?;
        }
    }
    Ok(zip.finish().map_err(to_io)?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_names_are_checked() {
        for bad in [
            "/etc/passwd",
            "a/../../x",
            "a/./x",
            "a//x",
            "C:/x",
            "a\\x",
            "..",
        ] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(check_name("a/b/c.sql").unwrap(), ["a", "b", "c.sql"]);
        assert_eq!(check_name("a/").unwrap(), ["a"]);
    }
}
