-- The accounts at providers bound to users: one per provider and user.
-- `provider` is the name the host binds the account under (for OpenID
-- Connect it includes a digest of the issuer).
CREATE TABLE sys_user_social (
    id BIGINT NOT NULL PRIMARY KEY,
    source VARCHAR(32) NOT NULL,
    uid VARCHAR(255) NOT NULL,
    provider VARCHAR(64) NOT NULL,
    user_id BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    CONSTRAINT uq_sys_user_social_user_source UNIQUE (user_id, source)
);
