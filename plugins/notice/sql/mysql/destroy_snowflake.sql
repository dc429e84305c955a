DROP TABLE sys_notice;
