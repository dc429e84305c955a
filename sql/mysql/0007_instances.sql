-- What each instance serves: one row per instance and plugin, rewritten by
-- the instance at start-up, after every change and on every reconcile
-- (seen_at, Unix milliseconds, says how fresh it is). The plugin list shows
-- them, so a cluster whose instances disagree is seen at a glance.

CREATE TABLE sys_plugin_instance (
    instance VARCHAR(64) NOT NULL,
    name VARCHAR(64) NOT NULL,
    state VARCHAR(16) NOT NULL,
    version VARCHAR(32) NOT NULL,
    error TEXT NULL,
    seen_at BIGINT NOT NULL,
    PRIMARY KEY (instance, name)
);
