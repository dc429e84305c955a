CREATE TABLE sys_dict_type (
    id INTEGER PRIMARY KEY,
    name VARCHAR(32) NOT NULL,
    code VARCHAR(32) NOT NULL,
    status SMALLINT NOT NULL DEFAULT 1,
    remark TEXT NULL,
    created_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_time TIMESTAMP NULL,
    CONSTRAINT uq_sys_dict_type_code UNIQUE (code)
);

CREATE TABLE sys_dict_data (
    id INTEGER PRIMARY KEY,
    type_id BIGINT NOT NULL,
    label VARCHAR(32) NOT NULL,
    value VARCHAR(32) NOT NULL,
    color VARCHAR(32) NULL,
    sort INT NOT NULL DEFAULT 0,
    status SMALLINT NOT NULL DEFAULT 1,
    remark TEXT NULL,
    created_time TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_time TIMESTAMP NULL
);

CREATE INDEX ix_sys_dict_data_type_id ON sys_dict_data (type_id);
