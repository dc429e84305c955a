-- The desired plugin set: every plugin installed through the API or the
-- CLI, with its package (by digest in sys_package), its source, who
-- installed it and when. `revision` grows on every install, upgrade and
-- uninstall of the name and never goes backwards (an uninstall marks the
-- row removed).

CREATE TABLE sys_plugin_desired (
    name VARCHAR(64) NOT NULL PRIMARY KEY,
    version VARCHAR(32) NOT NULL,
    digest CHAR(64) NOT NULL,
    source TEXT NOT NULL,
    installed_by VARCHAR(64) NOT NULL,
    installed_at BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    revision BIGINT NOT NULL,
    removed SMALLINT NOT NULL DEFAULT 0
);
