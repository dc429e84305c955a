//! `plughost sql FILE`: checked statement kinds, one transaction, a real splitter.

use e2e::{BACKENDS, DataDir, Host, TestDatabase, cli};

#[test]
fn plughost_sql_runs_allowed_scripts_whole_and_refuses_the_rest_on_every_backend() {
    for backend in BACKENDS {
        let database = TestDatabase::create(backend);
        let data = DataDir::new();
        data.install_dir("notes");
        // Start once so the schema and the notes plugin's table exist.
        let host = Host::start_on(&data, &database, &[]);
        assert!(host.stop().success());
        let env = database.env();
        let script = |name: &str, text: &str| {
            let path = data.path().join(name);
            std::fs::write(&path, text).unwrap();
            path.to_string_lossy().into_owned()
        };

        let good = script(
            "good.sql",
            "-- a comment; with a semicolon\n\
             INSERT INTO fixture_note (text) VALUES ('one; two');\n\
             /* block; comment */ INSERT INTO fixture_note (text) VALUES ('it''s three');\n\
             SELECT COUNT(*) FROM fixture_note;\n",
        );
        let (ok, out) = cli(&data, &env, &["sql", &good]);
        assert!(ok && out.contains("ran 3 statements"), "{backend:?}: {out}");

        let drop = script(
            "drop.sql",
            "INSERT INTO fixture_note (text) VALUES ('x');\nDROP TABLE fixture_note;\n",
        );
        let (ok, out) = cli(&data, &env, &["sql", &drop]);
        assert!(!ok, "{out}");
        assert!(
            out.contains("statement 2 (line 2) is a DROP statement")
                && out.contains("nothing was run"),
            "{out}"
        );

        let update = script("update.sql", "UPDATE fixture_note SET text = 'y';\n");
        let (ok, out) = cli(&data, &env, &["sql", &update]);
        assert!(!ok && out.contains("is a UPDATE statement"), "{out}");

        let unclosed = script(
            "open.sql",
            "INSERT INTO fixture_note (text) VALUES ('never closed);\n",
        );
        let (ok, out) = cli(&data, &env, &["sql", &unclosed]);
        assert!(
            !ok && out.contains("line 1: a 'string' is never closed"),
            "{out}"
        );

        // A failing statement rolls the whole script back (where DDL is
        // transactional; these are all DML).
        let failing = script(
            "failing.sql",
            "INSERT INTO fixture_note (text) VALUES ('four');\nINSERT INTO fixture_no_table (x) VALUES (1);\n",
        );
        let (ok, out) = cli(&data, &env, &["sql", &failing]);
        assert!(
            !ok && out.contains("at statement 2 (line 2)") && out.contains("rolled back"),
            "{out}"
        );

        let host = Host::start_on(&data, &database, &[]);
        let texts = e2e::strings(host.get("/notes/v1/notes").data(), "/text");
        assert_eq!(
            texts,
            ["seeded; by init", "one; two", "it's three"],
            "{backend:?}"
        );
        assert!(host.stop().success());

        let (ok, out) = cli(&data, &env, &["sql", "--destroy", &drop]);
        assert!(ok, "{backend:?}: {out}");
    }
}
