-- The users of external identities (an OAuth or OpenID Connect provider,
-- a directory): each provider's subject bound to one user, by the plugin
-- that asked for it through the identity service.

CREATE TABLE sys_user_identity (
    provider VARCHAR(64) NOT NULL,
    subject VARCHAR(255) NOT NULL,
    user_id BIGINT NOT NULL,
    plugin VARCHAR(64) NOT NULL,
    PRIMARY KEY (provider, subject)
);

CREATE INDEX idx_sys_user_identity_user ON sys_user_identity (user_id);
