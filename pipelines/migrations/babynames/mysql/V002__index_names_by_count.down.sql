DROP INDEX ix_baby_names_year_gender_count ON baby_names;
