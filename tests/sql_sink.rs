//! The sql sink against the real servers — MariaDB on 127.0.0.1:3306 (root,
//! empty password) and PostgreSQL on 127.0.0.1:5432 (postgres, trust) — and
//! against embedded SQLite. The server tests are one suite: each body takes
//! a [`Backend`] and [`on_both!`] runs it on each, as
//! `sql_sink::<test>::mariadb` and `sql_sink::<test>::postgres`. Every
//! server test creates its own database and drops it afterwards.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::util::*;

const SERVER: &str = "mysql://root@127.0.0.1:3306";
const PG_SERVER: &str = "postgres://postgres@127.0.0.1:5432";

/// The server a test runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    MariaDb,
    Postgres,
}

impl Backend {
    /// The migrations sub-folder of this server's dialect.
    pub fn dialect(self) -> &'static str {
        match self {
            Backend::MariaDb => "mysql",
            Backend::Postgres => "postgres",
        }
    }

    /// SQL for the connection's current database (MySQL) or schema.
    pub fn current_schema(self) -> &'static str {
        match self {
            Backend::MariaDb => "DATABASE()",
            Backend::Postgres => "current_schema()",
        }
    }

    /// `expr` as a 64-bit integer (MySQL spells it SIGNED).
    pub fn as_i64(self, expr: &str) -> String {
        match self {
            Backend::MariaDb => format!("CAST({expr} AS SIGNED)"),
            Backend::Postgres => format!("CAST({expr} AS BIGINT)"),
        }
    }

    /// An order-independent checksum of every baby_names row and value.
    pub fn checksum_sql(self) -> String {
        let hash = match self {
            Backend::MariaDb => "CRC32(CONCAT_WS('|', name, year, gender, count, source_id))",
            Backend::Postgres => "hashtext(concat_ws('|', name, year, gender, count, source_id))",
        };
        format!("SELECT {} FROM baby_names", self.as_i64(&format!("SUM({hash})")))
    }
}

/// Runs a test body `fn(Backend)` once per server: `<body>::mariadb` and
/// `<body>::postgres`.
macro_rules! on_both {
    ($($body:ident),* $(,)?) => {$(
        mod $body {
            #[test]
            fn mariadb() {
                super::$body(super::Backend::MariaDb)
            }
            #[test]
            fn postgres() {
                super::$body(super::Backend::Postgres)
            }
        }
    )*};
}

enum AdminPool {
    MySql(sqlx::MySqlPool),
    /// A pool on the test's database, and one on `postgres` to drop it from.
    Postgres(sqlx::PgPool, sqlx::PgPool),
}

/// A database of its own for one test, dropped at the end.
pub struct TestDb {
    pub name: String,
    pub backend: Backend,
    rt: tokio::runtime::Runtime,
    pool: AdminPool,
}

/// Runs a query on whichever pool the database has.
macro_rules! on_pool {
    ($self:expr, |$p:ident| $e:expr) => {
        match &$self.pool {
            AdminPool::MySql($p) => $e,
            AdminPool::Postgres($p, _) => $e,
        }
    };
}

impl TestDb {
    /// A MariaDB database.
    pub fn new(tag: &str) -> TestDb {
        TestDb::on(Backend::MariaDb, tag)
    }

    pub fn on(backend: Backend, tag: &str) -> TestDb {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let name = format!("engine_test_{tag}_{}_{nanos}", std::process::id());
        let pool = rt.block_on(async {
            match backend {
                Backend::MariaDb => {
                    let admin = sqlx::MySqlPool::connect(&format!("{SERVER}/"))
                        .await
                        .expect("MariaDB on 127.0.0.1:3306 (scripts/ensure-mariadb)");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{name}` CHARACTER SET utf8mb4")))
                        .execute(&admin)
                        .await
                        .expect("create database");
                    admin.close().await;
                    AdminPool::MySql(sqlx::MySqlPool::connect(&format!("{SERVER}/{name}")).await.expect("connect"))
                }
                Backend::Postgres => {
                    let admin = sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .connect(&format!("{PG_SERVER}/postgres"))
                        .await
                        .expect("PostgreSQL on 127.0.0.1:5432 (scripts/ensure-postgres)");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\" ENCODING 'UTF8'")))
                        .execute(&admin)
                        .await
                        .expect("create database");
                    let pool = sqlx::PgPool::connect(&format!("{PG_SERVER}/{name}")).await.expect("connect");
                    AdminPool::Postgres(pool, admin)
                }
            }
        });
        TestDb { name, backend, rt, pool }
    }

    pub fn url(&self) -> String {
        match self.backend {
            Backend::MariaDb => format!("{SERVER}/{}", self.name),
            Backend::Postgres => format!("{PG_SERVER}/{}", self.name),
        }
    }

    /// Every row of baby_names as (name, year, gender, count, source_id).
    pub fn rows(&self) -> BTreeSet<(String, i64, String, i64, i64)> {
        const Q: &str = "SELECT name, year, gender, count, source_id FROM baby_names";
        let rows = self.rt.block_on(async {
            on_pool!(self, |p| sqlx::query(Q)
                .fetch_all(p)
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
                .collect::<BTreeSet<_>>())
        });
        rows
    }

    /// Runs a statement (with the admin connection: CREATE USER, GRANT).
    pub fn execute(&self, sql: &str) {
        self.rt.block_on(async {
            on_pool!(self, |p| {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(p).await.expect(sql);
            })
        });
    }

    pub fn scalar(&self, sql: &str) -> i64 {
        self.rt.block_on(async {
            on_pool!(self, |p| sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_one(p)
                .await
                .expect(sql))
        })
    }

    /// Kills every connection of this database except ours; returns how many.
    pub fn kill_engine_connections(&self) -> usize {
        self.kill_engine_connections_except(0)
    }

    /// Kills every connection of this database except ours and `spare`
    /// (a MariaDB connection id or a PostgreSQL backend pid).
    pub fn kill_engine_connections_except(&self, spare: i64) -> usize {
        self.rt.block_on(async {
            match &self.pool {
                AdminPool::MySql(pool) => {
                    let own: i64 = sqlx::query_scalar("SELECT CAST(CONNECTION_ID() AS SIGNED)")
                        .fetch_one(pool)
                        .await
                        .expect("id");
                    let ids: Vec<i64> = sqlx::query_scalar(
                        "SELECT CAST(ID AS SIGNED) FROM information_schema.PROCESSLIST WHERE DB = ? AND ID <> ? AND ID <> ?",
                    )
                    .bind(&self.name)
                    .bind(own)
                    .bind(spare)
                    .fetch_all(pool)
                    .await
                    .expect("processlist");
                    for id in &ids {
                        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("KILL {id}"))).execute(pool).await;
                    }
                    ids.len()
                }
                AdminPool::Postgres(pool, _) => {
                    // Our own pool's connections are all in this test, not
                    // in the engine: spare every one of them.
                    let killed: Vec<bool> = sqlx::query_scalar(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = $1 AND pid <> $2 AND application_name = 'engine'",
                    )
                    .bind(&self.name)
                    .bind(spare as i32)
                    .fetch_all(pool)
                    .await
                    .expect("pg_stat_activity");
                    killed.iter().filter(|k| **k).count()
                }
            }
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        match &self.pool {
            AdminPool::MySql(pool) => {
                let pool = pool.clone();
                self.rt.block_on(async move {
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                        .execute(&pool)
                        .await;
                    pool.close().await;
                });
            }
            AdminPool::Postgres(pool, admin) => {
                let (pool, admin) = (pool.clone(), admin.clone());
                self.rt.block_on(async move {
                    pool.close().await;
                    // FORCE: an engine a failed test left behind must not
                    // keep the database alive.
                    let _ =
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")))
                            .execute(&admin)
                            .await;
                    admin.close().await;
                });
            }
        }
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

on_both!(
    babynames_sample_is_exact_and_idempotent,
    migrations_up_down_status_and_a_changed_file_is_refused,
    a_connection_killed_mid_run_is_retried_and_the_table_is_exact,
    unicode_and_sql_looking_names_round_trip_verbatim,
    permanent_errors_name_the_sink_and_table_and_never_the_password,
    a_second_run_on_the_same_table_is_refused,
    the_epoch_marker_deletes_and_insert_mode_work,
    a_key_twice_in_one_batch_keeps_the_last_row,
);

fn babynames_sample_is_exact_and_idempotent(backend: Backend) {
    let db = TestDb::on(backend, "e2e");
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
    let checksum = backend.checksum_sql();
    let checksum = checksum.as_str();
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

fn migrations_up_down_status_and_a_changed_file_is_refused(backend: Backend) {
    let db = TestDb::on(backend, "migrate");
    let dir = tempfile::tempdir().unwrap();
    // A private copy of the migrations, so the test can edit one.
    let mig = dir.path().join("migrations");
    for dialect in ["mysql", "postgres", "sqlite"] {
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
    // Columns of the index: one row per column on MySQL, a count of them
    // on PostgreSQL.
    let index_columns = match backend {
        Backend::MariaDb => {
            "SELECT COUNT(*) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND INDEX_NAME = 'ix_baby_names_year_gender_count'"
        }
        Backend::Postgres => {
            "SELECT COALESCE(SUM(i.indnatts), 0)::bigint FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'ix_baby_names_year_gender_count'"
        }
    };
    assert_eq!(db.scalar(index_columns), 3);

    let o = run(&["migrate", "down", p, "--to", "1"], &[]);
    assert!(o.status.success() && stdout(&o).contains("rolled back  V002"), "{}", stdout(&o));
    status(&["applied  V001  create_baby_names", "pending  V002  index_names_by_count"]);
    assert_eq!(db.scalar(index_columns), 0);

    // Editing an applied file is refused, naming the file, by up and by run.
    let v1 = mig.join(backend.dialect()).join("V001__create_baby_names.up.sql");
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
fn a_connection_killed_mid_run_is_retried_and_the_table_is_exact(backend: Backend) {
    let db = TestDb::on(backend, "kill");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("big.csv");
    let rows = 150_000;
    write_big_csv(&csv, rows);
    let url = db.url();
    assert!(run(&["migrate", "up", "pipelines/babynames.toml"], &[("DATABASE_URL", &url)]).status.success());
    let pipeline = sql_pipeline(dir.path(), "p.toml", &csv, &url, "batch_rows = 500\nconnections = 2");
    let mut child = engine()
        .args(["run", &pipeline])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read stderr as it comes: the kills go on until the engine reports a
    // replayed batch. A connection killed between two statements is just
    // replaced by the pool, with no statement to replay, so one or two
    // kills may not be enough.
    let mut err_pipe = child.stderr.take().unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = std::io::Read::read(&mut err_pipe, &mut buf) {
                if n == 0 {
                    break;
                }
                log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let retried = || log.lock().unwrap().contains("transient database error; replaying the batch");
    // Wait until rows are landing, then kill the engine's connections every
    // 5,000 rows until a batch was replayed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kills = 0;
    let mut last = 0;
    while !retried() && Instant::now() < deadline {
        let n = db.scalar("SELECT COUNT(*) FROM baby_names");
        if n as usize >= rows {
            break;
        }
        if n >= 10_000 && n >= last + 5_000 {
            kills += db.kill_engine_connections();
            last = n;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = child.wait_with_output().unwrap();
    reader.join().unwrap();
    let err = log.lock().unwrap().clone();
    assert!(o.status.success(), "{err}");
    assert!(kills > 0, "the run ended before a connection could be killed");
    assert!(retried(), "no retry seen after {kills} kills:\n{err}");
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), rows as i64);
    assert_eq!(db.scalar("SELECT COUNT(DISTINCT source_id) FROM baby_names"), rows as i64);
    let sum = format!("SELECT {} FROM baby_names", backend.as_i64("SUM(source_id)"));
    assert_eq!(db.scalar(&sum), (rows * (rows + 1) / 2) as i64);
}

fn unicode_and_sql_looking_names_round_trip_verbatim(backend: Backend) {
    let db = TestDb::on(backend, "unicode");
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
        // COPY's text format escapes these.
        "tab\there",
        "\\N",
        "a\\tb",
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
    let tables = format!(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = 'baby_names'",
        backend.current_schema()
    );
    assert_eq!(db.scalar(&tables), 1);
}

fn permanent_errors_name_the_sink_and_table_and_never_the_password(backend: Backend) {
    let db = TestDb::on(backend, "perm");
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
    // The server's own code: MySQL's error number, PostgreSQL's SQLSTATE.
    let code = match backend {
        Backend::MariaDb => "error 1146",
        Backend::Postgres => "error 42P01: relation \"no_such_table\" does not exist",
    };
    assert!(err.contains(code), "{err}");

    let secret = "hunter2-do-not-print";
    let user = match backend {
        Backend::MariaDb => "root",
        // Trust auth takes any password: a user that does not exist is
        // refused whatever it sends.
        Backend::Postgres => "nobody_here",
    };
    let bad = db.url().replacen("root@", "nobody_here@", 1).replacen("postgres@", "nobody_here@", 1);
    let bad = bad.replace("nobody_here@", &format!("{user}:{secret}@"));
    let o = run(&["run", &pipeline(&bad, "t")], &[]);
    assert_eq!(o.status.code(), Some(1));
    let all = format!("{}{}", stdout(&o), stderr(&o));
    assert!(all.contains(&format!("{user}:***@127.0.0.1")), "{all}");
    assert!(!all.contains(secret), "password leaked:\n{all}");
}

/// Two runs on one table: the second is refused, naming the first (a
/// named lock on MySQL, an advisory lock on PostgreSQL).
fn a_second_run_on_the_same_table_is_refused(backend: Backend) {
    let db = TestDb::on(backend, "locks");
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("big.csv");
    write_big_csv(&csv, 20_000);
    let url = db.url();
    assert!(run(&["migrate", "up", "pipelines/babynames.toml"], &[("DATABASE_URL", &url)]).status.success());
    // A throttled blackhole beside the table keeps the first run going.
    let slow = "[sinks.slow]\nkind = \"blackhole\"\ninputs = [\"names\"]\ndelay_ms = 500";
    let first = sql_pipeline(dir.path(), "first.toml", &csv, &url, &format!("batch_rows = 500\n{slow}"));
    let second = sql_pipeline(dir.path(), "second.toml", &csv, &url, "");
    let mut child = engine()
        .args(["run", "--no-progress", &first])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while db.scalar("SELECT COUNT(*) FROM baby_names") == 0 {
        assert!(t.elapsed() < Duration::from_secs(30), "the first run never wrote");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = run(&["run", "--no-progress", &second], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("table `baby_names` at") && err.contains("is being written by another run ("), "{err}");
    let _ = child.kill();
    let _ = child.wait();
    // Once the first run is gone (its session with it), the table is free.
    let o = run(&["run", "--no-progress", &second], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), 20_000);
}

/// The epoch marker, deletes and `mode = "insert"` on each server: a run
/// with checkpoints records its last epoch in engine_sink_commits; keys on
/// the deletes input go; an insert-mode run into a table that holds a key
/// fails naming the server's duplicate-key error.
fn the_epoch_marker_deletes_and_insert_mode_work(backend: Backend) {
    let db = TestDb::on(backend, "modes");
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    assert!(run(&["migrate", "up", "pipelines/babynames.toml"], &[("DATABASE_URL", &url)]).status.success());
    let csv = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, format!("Id,Name,Year,Gender,Count\n{body}")).unwrap();
        p
    };
    // Enough rows, and a slow sink beside the table, for the first run to
    // pass several checkpoints (a run shorter than one interval takes none).
    let bulk: String = (0..20_000).map(|i| format!("{},Bulk{i},1990,F,1\n", 100 + i)).collect();
    let all = csv("all.csv", &format!("1,Ann,2000,F,10\n2,Bob,2000,M,20\n3,Cy,2001,M,30\n{bulk}"));
    let kept = csv("kept.csv", "1,Ann,2000,F,11\n3,Cy,2001,M,30\n");
    let gone = csv("gone.csv", "0,Bob,2000,M,0\n0,Nobody,1999,F,0\n");
    let p = dir.path().join("modes.toml");
    let run_with = |mode: &str, rows: &Path, deletes: bool, slow: bool| {
        let slow = if slow { "[sinks.slow]\nkind = \"blackhole\"\ninputs = [\"rows\"]\ndelay_ms = 100\n" } else { "" };
        let deletes = if deletes {
            format!("[sources.gone]\nkind = \"file\"\npath = \"{}\"\n", gone.display())
        } else {
            String::new()
        };
        let sink_deletes = if deletes.is_empty() { "" } else { "deletes = [\"gone\"]" };
        std::fs::write(
            &p,
            format!(
                r#"
[pipeline]
name = "modes"
[pipeline.checkpoint]
interval = "100ms"
dir = "{dir}/checkpoints"
[sources.rows]
kind = "file"
path = "{rows}"
{deletes}
[sinks.db]
kind = "sql"
inputs = ["rows"]
{sink_deletes}
url = "{url}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
mode = "{mode}"
batch_rows = 500
{slow}
"#,
                dir = dir.path().display(),
                rows = rows.display(),
            ),
        )
        .unwrap();
        run(&["run", "--no-progress", "--from-scratch", p.to_str().unwrap()], &[])
    };
    let o = run_with("upsert", &all, false, true);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(db.rows().len(), 20_003);
    assert_eq!(db.scalar("SELECT COUNT(*) FROM engine_sink_commits WHERE pipeline = 'modes' AND sink = 'db'"), 1);
    let first_epoch = db.scalar("SELECT MAX(epoch) FROM engine_sink_commits WHERE pipeline = 'modes'");
    assert!(first_epoch >= 2, "epoch {first_epoch}\n{}", stdout(&o));
    db.execute("DELETE FROM baby_names WHERE name LIKE 'Bulk%'");

    // Upsert Ann's new count, delete Bob (and a key that is not there).
    let o = run_with("upsert", &kept, true, false);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: BTreeSet<_> =
        [("Ann".to_string(), 2000, "F".to_string(), 11, 1), ("Cy".to_string(), 2001, "M".to_string(), 30, 3)].into();
    assert_eq!(db.rows(), want);
    assert!(stderr(&o).contains("1 deleted") || stdout(&o).contains("1 deleted"), "{}", stderr(&o));

    // Insert mode: a key already in the table is an error naming it.
    let o = run_with("insert", &kept, false, false);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let dup = match backend {
        Backend::MariaDb => "error 1062",
        Backend::Postgres => "error 23505",
    };
    assert!(err.contains("writing to table `baby_names`") && err.contains(dup), "{err}");
    assert_eq!(db.rows(), want, "a failed insert changes nothing");
}

/// Without dedupe a key may come twice in one batch: the last row wins, as
/// MySQL's `ON DUPLICATE KEY UPDATE` does (PostgreSQL's `ON CONFLICT DO
/// UPDATE` refuses to touch a row twice in one statement, so the COPY path
/// keeps the last row of each key before merging).
fn a_key_twice_in_one_batch_keeps_the_last_row(backend: Backend) {
    let db = TestDb::on(backend, "twice");
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    assert!(run(&["migrate", "up", "pipelines/babynames.toml"], &[("DATABASE_URL", &url)]).status.success());
    let csv = dir.path().join("twice.csv");
    std::fs::write(&csv, "Id,Name,Year,Gender,Count\n1,Ann,2000,F,10\n2,Bob,2000,M,20\n3,Ann,2000,F,11\n").unwrap();
    let p = sql_pipeline(dir.path(), "twice.toml", &csv, &url, "");
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let want: BTreeSet<_> =
        [("Ann".to_string(), 2000, "F".to_string(), 11, 3), ("Bob".to_string(), 2000, "M".to_string(), 20, 2)].into();
    assert_eq!(db.rows(), want);
}

/// TLS on PostgreSQL follows libpq's `sslmode`, in the URL or as the
/// sink's `ssl_mode`: `require` encrypts (the local server has a
/// certificate), `verify-full` also checks the host name — the local
/// certificate names `localhost`, so 127.0.0.1 is refused — and an unknown
/// mode is refused naming the ones there are.
#[test]
fn postgres_ssl_modes_follow_libpq() {
    let db = TestDb::on(Backend::Postgres, "tls");
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    assert!(run(&["migrate", "up", "pipelines/babynames.toml"], &[("DATABASE_URL", &url)]).status.success());
    let csv = dir.path().join("few.csv");
    write_big_csv(&csv, 100);
    let p = sql_pipeline(dir.path(), "require.toml", &csv, &url, "ssl_mode = \"require\"");
    let o = run(&["run", "--no-progress", &p], &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(db.scalar("SELECT COUNT(*) FROM baby_names"), 100);

    let p = sql_pipeline(dir.path(), "full.toml", &csv, &format!("{url}?sslmode=verify-full"), "");
    let o = run(&["run", "--no-progress", &p], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("table `baby_names`: cannot connect to") && err.contains("certificate"), "{err}");

    let p = sql_pipeline(dir.path(), "bogus.toml", &csv, &url, "ssl_mode = \"sometimes\"");
    let o = run(&["run", "--no-progress", &p], &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ssl_mode `sometimes` is not one of disable, allow, prefer, require, verify-ca, verify-full"),
        "{err}"
    );
}
