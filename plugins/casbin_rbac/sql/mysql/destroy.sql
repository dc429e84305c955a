DROP TABLE sys_casbin_rule;
