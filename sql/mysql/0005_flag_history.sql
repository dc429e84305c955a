-- An uninstalled plugin's flag row stays, marked removed, so its revision
-- never goes backwards: a reinstall revives the row one revision higher,
-- and instances that applied a higher revision before still accept the
-- toggles that follow.

ALTER TABLE sys_plugin_flag ADD COLUMN removed SMALLINT NOT NULL DEFAULT 0;
