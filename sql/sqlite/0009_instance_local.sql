-- Whether an instance's plugin is local to it (a lone library or a
-- directory placed by hand) rather than a package of the cluster's set.

ALTER TABLE sys_plugin_instance ADD COLUMN is_local SMALLINT NOT NULL DEFAULT 0;
