DROP TABLE sys_user_social;
