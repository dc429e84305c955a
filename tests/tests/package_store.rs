//! The package store keeps packages of tens of MB in every backend, by
//! digest and in chunks, refuses bytes altered in the database, and lets go
//! of the packages the desired set no longer names.

use e2e::{Backend, DataDir, TestDatabase};
use host::{
    db::{Db, PkMode},
    plugin::lifecycle::{
        desired,
        store::{self, CHUNK, StoreError},
    },
};
use sea_orm::ConnectionTrait;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// 40 MB that do not compress (a real package's libraries do not either).
fn package_bytes() -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..40 * 1024 * 1024 + 123)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn packages_round_trip_and_altered_bytes_are_refused(backend: Backend) {
    let database = TestDatabase::create(backend);
    let data = DataDir::new();
    let url = match backend {
        Backend::Sqlite => format!(
            "sqlite://{}?mode=rwc",
            data.path().join("store.db").display()
        ),
        _ => database.env()[0].1.clone(),
    };
    runtime().block_on(async {
        let db = Db::open(&url, PkMode::Autoincrement, 0).await.unwrap();
        let bytes = package_bytes();
        let digest = store::put(&db, &bytes).await.unwrap();
        assert_eq!(digest.len(), 64);
        assert!(
            store::get(&db, &digest).await.unwrap() == bytes,
            "{backend:?}: round trip"
        );
        // Stored once, however often it is put.
        assert_eq!(store::put(&db, &bytes).await.unwrap(), digest);
        let count = |sql: &'static str| {
            let db = &db;
            let digest = digest.clone();
            async move {
                db.conn()
                    .query_one(db.statement(sql, [digest.into()]))
                    .await
                    .unwrap()
                    .unwrap()
                    .try_get::<i64>("", "n")
                    .unwrap()
            }
        };
        let chunks = count("SELECT COUNT(*) AS n FROM sys_package_chunk WHERE digest = ?").await;
        assert_eq!(chunks as usize, bytes.len().div_ceil(CHUNK), "{backend:?}");
        assert_eq!(
            count("SELECT COUNT(*) AS n FROM sys_package WHERE digest = ?").await,
            1
        );

        // A chunk changed in the database: refused, naming the digest.
        let mut altered = bytes[CHUNK..2 * CHUNK].to_vec();
        altered[7] ^= 0xff;
        db.conn()
            .execute(db.statement(
                "UPDATE sys_package_chunk SET data = ? WHERE digest = ? AND seq = 1",
                [altered.into(), digest.as_str().into()],
            ))
            .await
            .unwrap();
        match store::get(&db, &digest).await {
            Err(e @ StoreError::Digest { .. }) => {
                let message = e.to_string();
                assert!(
                    message.contains(&digest) && message.contains("was altered"),
                    "{message}"
                );
            }
            other => panic!(
                "{backend:?}: an altered package was not refused: {:?}",
                other.map(|b| b.len())
            ),
        }
        // A chunk gone: refused as incomplete.
        db.conn()
            .execute(db.statement(
                "DELETE FROM sys_package_chunk WHERE digest = ? AND seq = 3",
                [digest.as_str().into()],
            ))
            .await
            .unwrap();
        assert!(matches!(
            store::get(&db, &digest).await,
            Err(StoreError::Incomplete { .. })
        ));
        assert!(matches!(
            store::get(&db, &"0".repeat(64)).await,
            Err(StoreError::Missing(_))
        ));

        // Collected: what the desired set does not name goes, chunks and
        // probe records and all; what it names stays until it is uninstalled.
        let named = store::put(&db, b"a package the desired set names")
            .await
            .unwrap();
        let plugin = desired::Desired {
            name: "kept".into(),
            version: "1.0.0".into(),
            digest: named.clone(),
            source: serde_json::json!({"type": "zip"}),
            installed_by: "test".into(),
            installed_at: 0,
            revision: 0,
            removed: false,
        };
        desired::record(&db, &plugin, "").await.unwrap();
        // A build's probe of each package's library, recorded once.
        let build = "plughost 0.0.0 build 00 machine 00";
        for package in [&digest, &named] {
            store::record_checked(&db, package, build, &"1".repeat(64))
                .await
                .unwrap();
            store::record_checked(&db, package, build, &"1".repeat(64))
                .await
                .unwrap();
            assert_eq!(
                store::checked_library(&db, package, build).await.unwrap(),
                Some("1".repeat(64)),
                "{backend:?}"
            );
        }
        assert_eq!(
            store::checked_library(&db, &named, "another build")
                .await
                .unwrap(),
            None
        );
        assert_eq!(store::collect(&db).await.unwrap(), 1, "{backend:?}");
        assert!(matches!(
            store::get(&db, &digest).await,
            Err(StoreError::Missing(_))
        ));
        // Its probe's record goes with it; the named package's stays.
        assert_eq!(
            store::checked_library(&db, &digest, build).await.unwrap(),
            None,
            "{backend:?}"
        );
        assert!(
            store::checked_library(&db, &named, build)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(
            count("SELECT COUNT(*) AS n FROM sys_package_chunk WHERE digest = ?").await,
            0,
            "{backend:?}: chunks of a collected package remain"
        );
        assert_eq!(
            store::get(&db, &named).await.unwrap(),
            b"a package the desired set names"
        );
        assert_eq!(store::collect(&db).await.unwrap(), 0);
        // Uninstalled: its package goes too.
        desired::remove(&db, "kept").await.unwrap();
        assert_eq!(store::collect(&db).await.unwrap(), 1, "{backend:?}");
        assert!(matches!(
            store::get(&db, &named).await,
            Err(StoreError::Missing(_))
        ));
    });
}

#[test]
fn packages_round_trip_in_sqlite() {
    packages_round_trip_and_altered_bytes_are_refused(Backend::Sqlite);
}

#[test]
fn packages_round_trip_in_postgresql() {
    packages_round_trip_and_altered_bytes_are_refused(Backend::Postgresql);
}

#[test]
fn packages_round_trip_in_mysql() {
    packages_round_trip_and_altered_bytes_are_refused(Backend::Mysql);
}
