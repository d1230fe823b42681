-- "Most popular names of a year" reads by (year, gender, count).
CREATE INDEX ix_baby_names_year_gender_count ON baby_names (year, gender, count);
