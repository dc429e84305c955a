-- Plugin enable flags. The database is their source of truth: every
-- instance reconciles its in-process flags from here, and a flushed or
-- replaced Redis is re-seeded from here. `revision` grows by one on every
-- change, so an instance applies an event only if it is newer than what it
-- has. `value` is the FBA-shaped manifest JSON the Redis key carries.

CREATE TABLE sys_plugin_flag (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    enabled SMALLINT NOT NULL,
    revision BIGINT NOT NULL,
    value TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
