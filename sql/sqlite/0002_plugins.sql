-- Plugin support: the key-value store plugins reach through host services,
-- and which version of each plugin has had its init script run.

CREATE TABLE sys_kv (
    kv_key VARCHAR(255) NOT NULL PRIMARY KEY,
    kv_value TEXT NOT NULL,
    expires_at BIGINT NULL
);

CREATE TABLE sys_plugin (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    init_version VARCHAR(32) NOT NULL,
    initialized_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
