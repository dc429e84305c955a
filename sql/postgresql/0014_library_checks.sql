-- Libraries a build of the host opened in its probe process and found
-- sound, per package: an instance running the same build (the binary's
-- GNU build id) that fetches the package opens its library without a
-- probe of its own. Rows go with their package (the store's collection).

CREATE TABLE sys_library_check (
    package CHAR(64) NOT NULL,
    build VARCHAR(160) NOT NULL,
    library CHAR(64) NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    PRIMARY KEY (package, build)
);
