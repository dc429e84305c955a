DROP TABLE sys_dict_data;
DROP TABLE sys_dict_type;
