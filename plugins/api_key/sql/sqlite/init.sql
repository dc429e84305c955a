-- API keys: only a digest of each key is kept (sha256 of the key's text;
-- the key is shown once, at its creation), with its first characters to
-- tell keys apart.
CREATE TABLE sys_api_key (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL,
    name VARCHAR(64) NOT NULL,
    prefix VARCHAR(16) NOT NULL,
    key_hash CHAR(64) NOT NULL,
    expire_at BIGINT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT uq_sys_api_key_hash UNIQUE (key_hash)
);

CREATE INDEX ix_sys_api_key_user ON sys_api_key (user_id);
