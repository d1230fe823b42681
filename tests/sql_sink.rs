//! The sql sink against the real MariaDB on 127.0.0.1:3306 (root, empty
//! password) and against embedded SQLite. Every MariaDB test creates its own
//! database and drops it afterwards.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::util::*;

const SERVER: &str = "mysql://root@127.0.0.1:3306";

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub name: String,
    rt: tokio::runtime::Runtime,
    pool: sqlx::MySqlPool,
}

impl TestDb {
    pub fn new(tag: &str) -> TestDb {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("engine_test_{tag}_{}_{nanos}", std::process::id());
        let pool = rt.block_on(async {
            let admin = sqlx::MySqlPool::connect(&format!("{SERVER}/"))
                .await
                .expect("MariaDB on 127.0.0.1:3306 (scripts/ensure-mariadb)");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4")))
                .execute(&admin)
                .await
                .expect("create database");
            admin.close().await;
            sqlx::MySqlPool::connect(&format!("{SERVER}/{name}")).await.expect("connect")
        });
        TestDb { name, rt, pool }
    }

    pub fn url(&self) -> String {
        format!("{SERVER}/{}", self.name)
    }

    /// Every row of baby_names as (name, year, gender, count, source_id).
    pub fn rows(&self) -> BTreeSet<(String, i64, String, i64, i64)> {
        self.rt.block_on(async {
            sqlx::query("SELECT name, year, gender, count, source_id FROM baby_names")
                .fetch_all(&self.pool)
                .await
                .expect("select")
                .iter()
                .map(|r| {
                    (
                        r.get::<String, _>(0),
                        r.get::<i16, _>(1) as i64,
                        r.get::<String, _>(2),
                        r.get::<i32, _>(3) as i64,
                        r.get::<i64, _>(4),
                    )
                })
                .collect()
        })
    }

    /// Runs a statement (with the admin connection: CREATE USER, GRANT).
    pub fn execute(&self, sql: &str) {
        self.rt.block_on(async {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(&self.pool).await.expect(sql);
        });
    }

    pub fn scalar(&self, sql: &str) -> i64 {
        self.rt.block_on(async {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string())).fetch_one(&self.pool).await.expect(sql)
        })
    }

    /// Kills every connection of this database except ours; returns how many.
    pub fn kill_engine_connections(&self) -> usize {
        self.kill_engine_connections_except(0)
    }

    /// Kills every connection of this database except ours and `spare`.
    pub fn kill_engine_connections_except(&self, spare: i64) -> usize {
        self.rt.block_on(async {
            let own: i64 =
                sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)").fetch_one(&self.pool).await.expect("id");
            let ids: Vec<i64> = sqlx::query_scalar(
                "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ? AND ID <> ?",
            )
            .bind(&self.name)
            .bind(own)
            .bind(spare)
            .fetch_all(&self.pool)
            .await
            .expect("processlist");
            for id in &ids {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}"))).execute(&self.pool).await;
            }
            ids.len()
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let pool = self.pool.clone();
        self.rt.block_on(async move {
            let _ =
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`"))).execute(&pool).await;
            pool.close().await;
        });
    }
}

/// The rows the CSV sink wrote in the same run, as the table should hold them.
fn expected_from_csv(path: &Path) -> BTreeSet<(String, i64, String, i64, i64)> {
    babynames_rows(path).into_iter().map(|(id, name, year, gender, count)| (name, year, gender, count, id)).collect()
}

/// A pipeline file in `dir`: a CSV source straight into a `baby_names`
/// sql sink at `url`; `extra` lines go into the sink table.
fn sql_pipeline(dir: &Path, name: &str, source: &Path, url: &str, extra: &str) -> String {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            r#"
[pipeline]
batch_size = 2000
[sources.names]
kind = "file"
path = "{}"
[sinks.db]
kind = "sql"
inputs = ["names"]
url = "{url}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
{extra}
"#,
            source.display()
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

fn sample() -> std::path::PathBuf {
    repo().join("pipelines/data/NationalNames.sample.csv")
}

fn env_for(dir: &Path, url: &str) -> Vec<(&'static str, String)> {
    vec![("OUTPUT_DIR", dir.display().to_string()), ("DATABASE_URL", url.to_string())]
}

fn run_env(args: &[&str], env: &[(&'static str, String)]) -> std::process::Output {
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    run(args, &pairs)
}

#[test]
fn babynames_sample_into_mariadb_is_exact_and_idempotent() {
    let db = TestDb::new("e2e");
    let dir = tempfile::tempdir().unwrap();
    let env = env_for(dir.path(), &db.url());

    // A server database is migrated explicitly; the run says so if not.
    let o = run_env(&["run", "pipelines/babynames.toml"], &env);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("run `engine migrate up`"), "{}", stderr(&o));

    let o = run_env(&["migrate", "up", "pipelines/babynames.toml"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_env(&["run", "pipelines/babynames.toml"], &env);
    assert!(o.status.success(), "{}", stderr(&o));

    let expected = expected_from_csv(&dir.path().join("babynames.csv"));
    assert_eq!(expected.len(), 3004);
    let first = db.rows();
    assert_eq!(first, expected);
    let checksum =
        "SELECT CAST(SUM(CRC32(CONCAT_WS('|', name, year, gender, count, source_id))) AS SIGNED) FROM baby_names";
    let sum_before = db.scalar(checksum);

    // Same input again: the table is exactly as after one run.
    let o = run_env(&["run", "pipelines/babynames.toml"], &env);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(db.rows(), first);
    assert_eq!(db.scalar(checksum), sum_before);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), 3004);
}

#[test]
fn babynames_sample_into_sqlite_by_default_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/db/babynames.db", dir.path().display());
    let env = env_for(dir.path(), &url);
    for _ in 0..2 {
        let o = run_env(&["run", "pipelines/babynames.toml"], &env);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let expected = expected_from_csv(&dir.path().join("babynames.csv"));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let rows: BTreeSet<(String, i64, String, i64, i64)> = rt.block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        let rows =
            sqlx::query("SELECT name, year, gender, count, source_id FROM baby_names").fetch_all(&pool).await.unwrap();
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
    });
    assert_eq!(rows, expected);
}

#[test]
fn migrations_up_down_status_and_a_changed_file_is_refused() {
    let db = TestDb::new("migrate");
    let dir = tempfile::tempdir().unwrap();
    // A private copy of the migrations, so the test can edit one.
    let mig = dir.path().join("migrations");
    for dialect in ["mysql", "sqlite"] {
        std::fs::create_dir_all(mig.join(dialect)).unwrap();
        for e in std::fs::read_dir(repo().join("pipelines/migrations/babynames").join(dialect)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), mig.join(dialect).join(e.file_name())).unwrap();
        }
    }
    let pipeline =
        sql_pipeline(dir.path(), "p.toml", &sample(), &db.url(), &format!("migrations = \"{}\"", mig.display()));
    let p = pipeline.as_str();
    let status = |expect: &[&str]| {
        let o = run(&["migrate", "status", p], &[]);
        assert!(o.status.success(), "{}", stderr(&o));
        let out = stdout(&o);
        for e in expect {
            assert!(out.contains(e), "missing {e:?} in\n{out}");
        }
    };
    status(&["pending  V001  create_baby_names", "pending  V002  index_names_by_count"]);
    assert!(run(&["migrate", "up", p], &[]).status.success());
    status(&["applied  V001  create_baby_names", "applied  V002  index_names_by_count"]);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND INDEX_NAME = 'ix_baby_names_year_gender_count'"), 3);

    let o = run(&["migrate", "down", p, "--to", "1"], &[]);
    assert!(o.status.success() && stdout(&o).contains("rolled back  V002"), "{}", stdout(&o));
    status(&["applied  V001  create_baby_names", "pending  V002  index_names_by_count"]);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND INDEX_NAME = 'ix_baby_names_year_gender_count'"), 0);

    // Editing an applied file is refused, naming the file, by up and by run.
    let v1 = mig.join("mysql/V001__create_baby_names.up.sql");
    let mut text = std::fs::read_to_string(&v1).unwrap();
    text.push_str("\n-- edited\n");
    std::fs::write(&v1, text).unwrap();
    let o = run(&["migrate", "up", p], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("V001__create_baby_names.up.sql was changed after it was applied as version 1"), "{err}");
    let o = run(&["run", p], &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("was changed after it was applied"), "{}", stderr(&o));
}

/// A connection killed with KILL mid-run: the batch is replayed on a fresh
/// connection and the table ends exact.
#[test]
fn a_connection_killed_mid_run_is_retried_and_the_table_is_exact() {
    let db = TestDb::new("kill");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("big.csv");
    let rows = 150_000;
    write_big_csv(&csv, rows);
    let url = db.url();
    assert!(run(&["migrate", "up", "pipelines/babynames.toml"], &[("DATABASE_URL", &url)]).status.success());
    let pipeline = sql_pipeline(dir.path(), "p.toml", &csv, &url, "batch_rows = 500\nconnections = 2");
    let child = engine()
        .args(["run", &pipeline])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until rows are landing, then kill the engine's connections, twice.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kills = 0;
    let mut rounds = 0;
    while rounds < 2 && Instant::now() < deadline {
        let n = db.scalar("SELECT COUNT(*) FROM baby_names");
        if n > (rounds as i64 + 1) * 10_000 && (n as usize) < rows {
            kills += db.kill_engine_connections();
            rounds += 1;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(kills > 0, "the run ended before a connection could be killed");
    assert!(stderr(&o).contains("transient database error; replaying the batch"), "no retry seen:\n{}", stderr(&o));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), rows as i64);
    assert_eq!(db.scalar("SELECT COUNT(DISTINCT source_id) FROM baby_names"), rows as i64);
    assert_eq!(db.scalar("SELECT CAST(SUM(source_id) AS SIGNED) FROM baby_names"), (rows * (rows + 1) / 2) as i64);
}

#[test]
fn unicode_and_sql_looking_names_round_trip_verbatim() {
    let db = TestDb::new("unicode");
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "José",
        "Jose",
        "Zoë",
        "Nguyễn",
        "Robert'); DROP TABLE baby_names;--",
        "O\"Brien, Jr",
        "back\\slash",
        "😀 Emoji",
        "ANN",
        "Ann",
    ];
    let mut csv = String::from("Id,Name,Year,Gender,Count\n");
    for (i, n) in names.iter().enumerate() {
        csv.push_str(&format!("{},\"{}\",2000,F,{}\n", i + 1, n.replace('"', "\"\""), i + 10));
    }
    let input = dir.path().join("names.csv");
    std::fs::write(&input, csv).unwrap();
    let url = db.url();
    assert!(run(&["migrate", "up", "pipelines/babynames.toml"], &[("DATABASE_URL", &url)]).status.success());
    let o = run(
        &["run", "pipelines/babynames.toml"],
        &[
            ("DATABASE_URL", &url),
            ("BABYNAMES_CSV", input.to_str().unwrap()),
            ("OUTPUT_DIR", dir.path().to_str().unwrap()),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let got: BTreeSet<String> = db.rows().into_iter().map(|r| r.0).collect();
    let want: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
    assert_eq!(got, want);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'baby_names'"), 1);
}

#[test]
fn permanent_errors_name_the_sink_and_table_and_never_the_password() {
    let db = TestDb::new("perm");
    let dir = tempfile::tempdir().unwrap();
    let pipeline = |url: &str, table: &str| {
        let p = sql_pipeline(dir.path(), &format!("{table}.toml"), &sample(), url, "");
        let text =
            std::fs::read_to_string(&p).unwrap().replace("table = \"baby_names\"", &format!("table = \"{table}\""));
        std::fs::write(&p, text).unwrap();
        p
    };
    let o = run(&["run", &pipeline(&db.url(), "no_such_table")], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains("operator `db` failed: writing to table `no_such_table`"), "{err}");
    assert!(err.contains("error 1146"), "{err}");

    let secret = "hunter2-do-not-print";
    let bad = db.url().replace("root@", &format!("root:{secret}@"));
    let o = run(&["run", &pipeline(&bad, "t")], &[]);
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains("root:***@127.0.0.1"), "{all}");
    assert!(!all.contains(secret), "password leaked:\n{all}");
}
