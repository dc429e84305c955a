CREATE TABLE sys_notice (
    id BIGINT PRIMARY KEY,
    title VARCHAR(64) NOT NULL,
    type SMALLINT NOT NULL,
    status SMALLINT NOT NULL,
    content TEXT NOT NULL,
    expire_at BIGINT NULL,
    created_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_time TIMESTAMP NULL
);

CREATE INDEX ix_sys_notice_expire_at ON sys_notice (expire_at);
