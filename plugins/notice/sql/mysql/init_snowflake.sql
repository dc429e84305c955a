CREATE TABLE sys_notice (
    id BIGINT NOT NULL PRIMARY KEY,
    title VARCHAR(64) NOT NULL,
    type SMALLINT NOT NULL,
    status SMALLINT NOT NULL,
    content TEXT NOT NULL,
    expire_at BIGINT NULL,
    created_time DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_time DATETIME NULL
);

CREATE INDEX ix_sys_notice_expire_at ON sys_notice (expire_at);
