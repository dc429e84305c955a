-- Tokens carry the user's token_version; changing the password bumps it,
-- so tokens issued before the change are refused.
-- sys_plugin.init_state: 'done' once a plugin's init script and its record
-- committed together; 'running' marks an init in progress on backends
-- where DDL commits implicitly (MySQL, MariaDB), so a restart after a kill
-- undoes what the script created and runs it again.

ALTER TABLE sys_user ADD COLUMN token_version BIGINT NOT NULL DEFAULT 0;

ALTER TABLE sys_plugin ADD COLUMN init_state VARCHAR(16) NOT NULL DEFAULT 'done';
