-- Events plugins publish, as instances without Redis share them: each
-- instance reads the rows of the last few seconds it has not delivered
-- yet (created_at, Unix milliseconds); rows older than a minute are
-- deleted.

CREATE TABLE sys_plugin_event (
    id BIGSERIAL PRIMARY KEY,
    topic VARCHAR(200) NOT NULL,
    payload TEXT NOT NULL,
    origin VARCHAR(64) NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE INDEX idx_sys_plugin_event_created ON sys_plugin_event (created_at);
