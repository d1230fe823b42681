-- One row per (name, year, gender): the natural key is unique, so writes
-- are idempotent upserts. utf8mb4_bin: José and Jose, Ann and ANN are
-- different names (an accent- or case-insensitive collation would merge them).
CREATE TABLE baby_names (
    id        BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    source_id BIGINT          NOT NULL,
    name      VARCHAR(64)     NOT NULL,
    year      SMALLINT        NOT NULL,
    gender    CHAR(1)         NOT NULL,
    count     INT             NOT NULL,
    UNIQUE KEY uq_baby_names_natural (name, year, gender),
    KEY ix_baby_names_year (year)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
