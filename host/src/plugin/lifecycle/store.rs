//! The package store: plugin packages kept in the host database by the
//! sha256 of their bytes, in chunks of at most [`CHUNK`] bytes, so that a
//! package of tens of MB fits every backend (no statement carries more than
//! one chunk, far below MySQL's packet limit).
//!
//! A package is written in one transaction, chunks first and its
//! `sys_package` row last; a package is read back whole and its digest
//! checked, so altered or missing bytes are refused, naming the digest.

use sea_orm::{ConnectionTrait, DbErr, TransactionTrait};

use crate::{
    db::{Backend, Db},
    plugin::loading::libcache::hex_digest,
};

/// The largest chunk a package is stored in.
pub const CHUNK: usize = 1024 * 1024;

/// A package that cannot be stored or read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No package with that digest.
    #[error("package {0} is not in the package store")]
    Missing(String),
    /// Its chunks do not add up to what its row records.
    #[error(
        "package {digest} is incomplete in the package store ({found} of {expected} bytes); install it again"
    )]
    Incomplete {
        /// The package.
        digest: String,
        /// The size recorded.
        expected: u64,
        /// The bytes found.
        found: u64,
    },
    /// The bytes read back hash to another digest.
    #[error(
        "package {expected} in the package store was altered: its bytes hash to {found}; install it again"
    )]
    Digest {
        /// The digest it is stored under.
        expected: String,
        /// The digest of the bytes found.
        found: String,
    },
    /// The database failed.
    #[error("the package store failed: {0}")]
    Db(#[from] DbErr),
}

/// Stores `bytes` and returns their digest; a package already stored is
/// not written again.
pub async fn put(db: &Db, bytes: &[u8]) -> Result<String, StoreError> {
    let digest = hex_digest(bytes);
    let stored = db
        .conn()
        .query_one(db.statement(
            "SELECT digest FROM sys_package WHERE digest = ?",
            [digest.as_str().into()],
        ))
        .await?;
    if stored.is_some() {
        return Ok(digest);
    }
    let txn = db.conn().begin().await?;
    // Chunks a failed write of the same package may have left.
    txn.execute(db.statement(
        "DELETE FROM sys_package_chunk WHERE digest = ?",
        [digest.as_str().into()],
    ))
    .await?;
    let mut chunks = 0i64;
    for (seq, chunk) in bytes.chunks(CHUNK).enumerate() {
        txn.execute(db.statement(
            "INSERT INTO sys_package_chunk (digest, seq, data) VALUES (?, ?, ?)",
            [
                digest.as_str().into(),
                i64::try_from(seq).unwrap_or(i64::MAX).into(),
                chunk.to_vec().into(),
            ],
        ))
        .await?;
        chunks += 1;
    }
    txn.execute(db.statement(
        "INSERT INTO sys_package (digest, size, chunks) VALUES (?, ?, ?)",
        [
            digest.as_str().into(),
            i64::try_from(bytes.len()).unwrap_or(i64::MAX).into(),
            chunks.into(),
        ],
    ))
    .await?;
    txn.commit().await?;
    Ok(digest)
}

/// The package stored under `digest`, checked against it.
pub async fn get(db: &Db, digest: &str) -> Result<Vec<u8>, StoreError> {
    let row = db
        .conn()
        .query_one(db.statement(
            "SELECT size, chunks FROM sys_package WHERE digest = ?",
            [digest.into()],
        ))
        .await?
        .ok_or_else(|| StoreError::Missing(digest.to_owned()))?;
    let size: i64 = row.try_get("", "size")?;
    let chunks: i64 = row.try_get("", "chunks")?;
    let expected = u64::try_from(size).unwrap_or(0);
    let mut bytes = Vec::with_capacity(usize::try_from(expected).unwrap_or(0));
    // One chunk per query: memory and packets stay at one chunk.
    for seq in 0..chunks {
        let chunk = db
            .conn()
            .query_one(db.statement(
                "SELECT data FROM sys_package_chunk WHERE digest = ? AND seq = ?",
                [digest.into(), seq.into()],
            ))
            .await?;
        match chunk {
            Some(chunk) => bytes.extend_from_slice(&chunk.try_get::<Vec<u8>>("", "data")?),
            None => break,
        }
    }
    if bytes.len() as u64 != expected {
        return Err(StoreError::Incomplete {
            digest: digest.to_owned(),
            expected,
            found: bytes.len() as u64,
        });
    }
    let found = hex_digest(&bytes);
    if found != digest {
        return Err(StoreError::Digest {
            expected: digest.to_owned(),
            found,
        });
    }
    Ok(bytes)
}

/// Removes the packages the desired set no longer names (the builds an
/// upgrade replaced, uninstalled plugins, an install that failed after
/// storing its package) and returns how many went, so the store holds one
/// package per installed plugin however many upgrades run. The caller
/// holds the lifecycle lock: every package is stored and every desired row
/// written under it, so nothing it removes is about to be named.
pub async fn collect(db: &Db) -> Result<u64, StoreError> {
    let txn = db.conn().begin().await?;
    let removed = txn
        .execute(db.statement(
            "DELETE FROM sys_package WHERE digest NOT IN \
             (SELECT digest FROM sys_plugin_desired WHERE removed = 0)",
            [],
        ))
        .await?
        .rows_affected();
    if removed > 0 {
        for sql in [
            "DELETE FROM sys_package_chunk WHERE digest NOT IN (SELECT digest FROM sys_package)",
            "DELETE FROM sys_library_check WHERE package NOT IN (SELECT digest FROM sys_package)",
        ] {
            txn.execute(db.statement(sql, [])).await?;
        }
    }
    txn.commit().await?;
    Ok(removed)
}

/// The library of `package` that an instance running `build` opened in
/// its probe and found sound (its digest), if one recorded it.
pub async fn checked_library(
    db: &Db,
    package: &str,
    build: &str,
) -> Result<Option<String>, StoreError> {
    let row = db
        .conn()
        .query_one(db.statement(
            "SELECT library FROM sys_library_check WHERE package = ? AND build = ?",
            [package.into(), build.into()],
        ))
        .await?;
    Ok(row.map(|row| row.try_get("", "library")).transpose()?)
}

/// Records that `build` opened `library`, the library of `package`, and
/// found it sound (a second record of the same is a no-op).
pub async fn record_checked(
    db: &Db,
    package: &str,
    build: &str,
    library: &str,
) -> Result<(), StoreError> {
    let sql = match db.backend() {
        Backend::Mysql => {
            "INSERT IGNORE INTO sys_library_check (package, build, library) VALUES (?, ?, ?)"
        }
        _ => {
            "INSERT INTO sys_library_check (package, build, library) VALUES (?, ?, ?) \
             ON CONFLICT (package, build) DO NOTHING"
        }
    };
    db.conn()
        .execute(db.statement(sql, [package.into(), build.into(), library.into()]))
        .await?;
    Ok(())
}
