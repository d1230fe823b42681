DROP TABLE baby_names;
