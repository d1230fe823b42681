//! Loading the full NationalNames.csv (1,924,665 rows) into one MariaDB
//! table, in one run, three ways:
//!
//! - our pipeline: file -> validate -> dedupe -> sql (multi-row upserts);
//! - `LOAD DATA LOCAL INFILE` of the same CSV via the `mariadb` client: the
//!   practical limit of the server;
//! - pandas `to_sql(method="multi", chunksize=1000)`, when python3 has
//!   pandas, SQLAlchemy and PyMySQL.
//!
//! ```text
//! scripts/fetch-babynames && scripts/ensure-mariadb
//! cargo bench -p engine --bench sql_load
//! ```
//! Env: `BENCH_CSV`, `BENCH_MYSQL` (server URL without database, default
//! mysql://root@127.0.0.1:3306), `BENCH_SQL_CONNECTIONS`, `BENCH_SQL_BATCH_ROWS`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

mod common;
use common::{input_csv, repo, source_validate_dedupe};

fn mariadb(db: &str, sql: &str) -> Result<String, String> {
    let o = Command::new("mariadb")
        .args(["--local-infile=1", "-h127.0.0.1", "-uroot", "-N", "-B", db, "-e", sql])
        .output()
        .map_err(|e| format!("mariadb client: {e}"))?;
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn report(label: &str, rows: u64, secs: f64) -> f64 {
    let rate = rows as f64 / secs;
    println!("{label:<52} {rows:>9} rows  {secs:>7.2} s  {rate:>10.0} rows/s");
    rate
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(csv) = input_csv() else { return };
    let server = std::env::var("BENCH_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let db = format!("engine_bench_{}", std::process::id());
    if let Err(e) = mariadb("", &format!("CREATE DATABASE {db} CHARACTER SET utf8mb4")) {
        println!("MariaDB not reachable (run scripts/ensure-mariadb): {e}");
        return;
    }
    let url = format!("{server}/{db}");
    let engine = PathBuf::from(env!("CARGO_BIN_EXE_engine"));
    let dir = std::env::temp_dir().join(format!("engine-sql-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let connections = std::env::var("BENCH_SQL_CONNECTIONS").unwrap_or_else(|_| "4".into());
    let batch_rows = std::env::var("BENCH_SQL_BATCH_ROWS").unwrap_or_else(|_| "2000".into());
    let pipeline = dir.join("sql.toml");
    std::fs::write(
        &pipeline,
        format!(
            r#"
[pipeline]
name = "bench-sql"
{fragment}
[sinks.db]
kind = "sql"
inputs = ["unique"]
url = "{url}"
table = "baby_names"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
migrations = "pipelines/migrations/babynames"
auto_migrate = true
connections = {connections}
batch_rows = {batch_rows}
"#,
            fragment = source_validate_dedupe(&csv)
        ),
    )
    .expect("write pipeline");
    println!(
        "input: {} into MariaDB table {db}.baby_names (connections = {connections}, batch_rows = {batch_rows})",
        csv.display()
    );

    // 1. Our pipeline (creates the table through its migrations).
    let t = Instant::now();
    let o = Command::new(&engine)
        .args(["run", pipeline.to_str().unwrap_or_default(), "--no-progress", "--log-level", "warn"])
        .current_dir(repo())
        .output()
        .expect("run engine");
    let ours_secs = t.elapsed().as_secs_f64();
    if !o.status.success() {
        println!("engine failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let rows: u64 = mariadb(&db, "SELECT COUNT(*) FROM baby_names").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let ours = report("engine: file -> validate -> dedupe -> sql (upsert)", rows, ours_secs);

    // 2. LOAD DATA LOCAL INFILE into the same, emptied table.
    let _ = mariadb(&db, "TRUNCATE TABLE baby_names");
    let t = Instant::now();
    let load = mariadb(
        &db,
        &format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE baby_names FIELDS TERMINATED BY ',' OPTIONALLY ENCLOSED BY '\"' \
             IGNORE 1 LINES (source_id, name, year, gender, count)",
            csv.display()
        ),
    );
    let load_secs = t.elapsed().as_secs_f64();
    match load {
        Ok(_) => {
            let rows: u64 =
                mariadb(&db, "SELECT COUNT(*) FROM baby_names").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            let l = report("LOAD DATA LOCAL INFILE (mariadb client)", rows, load_secs);
            println!("ratio engine / LOAD DATA: {:.2}x", ours / l);
        }
        Err(e) => println!("LOAD DATA failed: {e}"),
    }

    // 3. pandas, when available.
    let _ = mariadb(&db, "TRUNCATE TABLE baby_names");
    let script = r#"
import sys, time
import pandas as pd
from sqlalchemy import create_engine
df = pd.read_csv(sys.argv[1]).rename(columns={"Id": "source_id", "Name": "name", "Year": "year", "Gender": "gender", "Count": "count"})
eng = create_engine(sys.argv[2].replace("mysql://", "mysql+pymysql://"))
t = time.perf_counter()
df.to_sql("baby_names", eng, if_exists="append", index=False, method="multi", chunksize=1000)
print(len(df), time.perf_counter() - t)
"#;
    match Command::new("python3").args(["-c", script]).arg(&csv).arg(&url).output() {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let mut it = text.split_whitespace();
            if let (Some(r), Some(s)) = (it.next().and_then(|x| x.parse().ok()), it.next().and_then(|x| x.parse().ok()))
            {
                let p = report("pandas to_sql(method=multi, chunksize=1000)", r, s);
                println!("ratio engine / pandas: {:.2}x", ours / p);
            }
        }
        _ => println!(
            "pandas/SQLAlchemy/PyMySQL not available: `pip install pandas sqlalchemy pymysql` to add the reference"
        ),
    }

    let _ = mariadb("", &format!("DROP DATABASE IF EXISTS {db}"));
    let _ = std::fs::remove_dir_all(&dir);
}
