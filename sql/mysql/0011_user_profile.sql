-- A user's display name and mail address (set over HTTP, or from an
-- external identity's claims).

ALTER TABLE sys_user ADD COLUMN nickname VARCHAR(64) NULL;
ALTER TABLE sys_user ADD COLUMN email VARCHAR(255) NULL;
