-- The package store: plugin packages (ZIP bytes) by the sha256 of their
-- content, in chunks of at most 1 MiB, so that no packet size limits a
-- package and every backend holds tens of MB alike. A sys_package row is
-- written last, in the same transaction as the chunks: a package is
-- listed whole or not at all.

CREATE TABLE sys_package (
    digest CHAR(64) NOT NULL PRIMARY KEY,
    size BIGINT NOT NULL,
    chunks BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE sys_package_chunk (
    digest CHAR(64) NOT NULL,
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (digest, seq)
);
