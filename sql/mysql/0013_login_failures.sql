-- Failed logins, counted for the whole cluster when there is no Redis:
-- one row per user name or client address (`subject`: the sha256 of
-- `user:<name>` or `address:<ip>`), its failures since the count last
-- started and when the last one was (Unix ms). A row whose last failure
-- is older than the lockout no longer counts; the host removes such rows
-- now and then.

CREATE TABLE sys_login_failure (
    subject CHAR(64) NOT NULL PRIMARY KEY,
    failures BIGINT NOT NULL,
    last_at BIGINT NOT NULL
);
