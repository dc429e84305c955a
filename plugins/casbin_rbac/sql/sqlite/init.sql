-- Casbin policies: a subject (a role or a user name) allowed or denied a
-- method on a path pattern.
CREATE TABLE sys_casbin_rule (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sub VARCHAR(64) NOT NULL,
    path VARCHAR(255) NOT NULL,
    method VARCHAR(16) NOT NULL,
    effect VARCHAR(8) NOT NULL
);
