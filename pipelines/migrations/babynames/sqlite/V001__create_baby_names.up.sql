-- One row per (name, year, gender): the natural key is unique, so writes
-- are idempotent upserts. SQLite compares TEXT byte-wise (BINARY) by default.
CREATE TABLE baby_names (
    id        INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL,
    name      TEXT    NOT NULL,
    year      INTEGER NOT NULL,
    gender    TEXT    NOT NULL,
    count     INTEGER NOT NULL,
    UNIQUE (name, year, gender)
);
CREATE INDEX ix_baby_names_year ON baby_names (year);
