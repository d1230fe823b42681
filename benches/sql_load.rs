//! Loading the full NationalNames.csv (1,924,665 rows) into one table, in
//! one run, on MariaDB and on PostgreSQL.
//!
//! MariaDB, three ways:
//! - our pipeline: file -> validate -> dedupe -> sql (multi-row upserts);
//! - `LOAD DATA LOCAL INFILE` of the same CSV via the `mariadb` client: the
//!   practical limit of the server on one connection; and the CSV cut into
//!   as many parts as the sink has connections, loaded concurrently;
//! - for each, the server process's CPU time per row (from /proc);
//! - pandas `to_sql(method="multi", chunksize=1000)`, when python3 has
//!   pandas, SQLAlchemy and PyMySQL.
//!
//! PostgreSQL, four ways, each into its own identical, empty table:
//! - our pipeline with COPY into a staging table and `INSERT … SELECT … ON
//!   CONFLICT` (the default);
//! - our pipeline with `copy = false` (multi-row `INSERT … ON CONFLICT`);
//! - `psql -c "\copy … from …"` of the same CSV: one connection, one
//!   stream, no conflict handling — the server's practical limit;
//! - pandas `to_sql` as above, when python3 has pandas, SQLAlchemy and
//!   psycopg2.
//!
//! ```text
//! scripts/fetch-babynames && scripts/ensure-mariadb && scripts/ensure-postgres
//! cargo bench -p engine --bench sql_load
//! ```
//! Env: `BENCH_CSV`, `BENCH_MYSQL` (server URL without database, default
//! mysql://root@127.0.0.1:3306), `BENCH_PG` (default
//! postgres://postgres@127.0.0.1:5432), `BENCH_SQL_TARGETS` (`mariadb`,
//! `postgres` or both, comma-separated; default both),
//! `BENCH_SQL_CONNECTIONS`, `BENCH_SQL_BATCH_ROWS`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

mod common;
use common::{client_output, input_csv, mariadb, repo, server_cpu_seconds, source_validate_dedupe, summary_peak_mib};

fn server_cpu_per_row(before: Option<f64>, rows: u64) {
    if let (Some(b), Some(a)) = (before, server_cpu_seconds())
        && rows > 0
    {
        println!("    server CPU {:.2} s, {:.2} µs per row", a - b, (a - b) * 1e6 / rows as f64);
    }
}

/// `csv` cut into `n` files of whole lines, each with the header.
fn split_csv(csv: &std::path::Path, n: usize, dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read(csv)?;
    let body = text.iter().position(|&b| b == b'\n').map_or(text.len(), |i| i + 1);
    let (header, rows) = text.split_at(body);
    let mut parts = Vec::with_capacity(n);
    let mut start = 0;
    for i in 0..n {
        let mut end = if i + 1 == n { rows.len() } else { (rows.len() * (i + 1) / n).max(start) };
        while end < rows.len() && end > 0 && rows[end - 1] != b'\n' {
            end += 1;
        }
        let path = dir.join(format!("part-{i}.csv"));
        let mut out = header.to_vec();
        out.extend_from_slice(&rows[start..end]);
        std::fs::write(&path, out)?;
        parts.push(path);
        start = end;
    }
    Ok(parts)
}

fn report(label: &str, rows: u64, secs: f64) -> f64 {
    let rate = rows as f64 / secs;
    println!("{label:<52} {rows:>9} rows  {secs:>7.2} s  {rate:>10.0} rows/s");
    rate
}

/// pandas `to_sql` of the same file into `table` at `sqlalchemy_url`, as a
/// reference, when pandas, SQLAlchemy and `driver` are installed.
fn pandas_reference(csv: &std::path::Path, sqlalchemy_url: &str, table: &str, ours: f64, driver: &str) {
    let script = r#"
import sys, time
import pandas as pd
from sqlalchemy import create_engine
df = pd.read_csv(sys.argv[1]).rename(columns={"Id": "source_id", "Name": "name", "Year": "year", "Gender": "gender", "Count": "count"})
eng = create_engine(sys.argv[2])
t = time.perf_counter()
df.to_sql(sys.argv[3], eng, if_exists="append", index=False, method="multi", chunksize=1000)
print(len(df), time.perf_counter() - t)
"#;
    match Command::new("python3").args(["-c", script]).arg(csv).arg(sqlalchemy_url).arg(table).output() {
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
            "pandas/SQLAlchemy/{driver} not available: `pip install pandas sqlalchemy {driver}` to add the reference"
        ),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let Some(csv) = input_csv() else { return };
    let targets = std::env::var("BENCH_SQL_TARGETS").unwrap_or_else(|_| "mariadb,postgres".into());
    if targets.split(',').any(|t| t.trim() == "mariadb") {
        bench_mariadb(&csv);
    }
    if targets.split(',').any(|t| t.trim() == "postgres") {
        bench_postgres(&csv);
    }
}

fn psql(server: &str, db: &str, sql: &str) -> Result<String, String> {
    client_output(
        "psql",
        Command::new("psql").args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            &format!("{server}/{db}"),
            "-c",
            sql,
        ]),
    )
}

/// A sql sink pipeline into `table` at `url`, with `extra` sink lines.
fn sink_pipeline(csv: &std::path::Path, url: &str, table: &str, extra: &str) -> String {
    let connections = std::env::var("BENCH_SQL_CONNECTIONS").unwrap_or_else(|_| "4".into());
    let batch_rows = std::env::var("BENCH_SQL_BATCH_ROWS").unwrap_or_else(|_| "2000".into());
    format!(
        r#"
[pipeline]
name = "bench-sql"
{fragment}
[sinks.db]
kind = "sql"
inputs = ["unique"]
url = "{url}"
table = "{table}"
key = ["name", "year", "gender"]
columns = {{ name = "Name", year = "Year", gender = "Gender", count = "Count", source_id = "Id" }}
connections = {connections}
batch_rows = {batch_rows}
{extra}
"#,
        fragment = source_validate_dedupe(csv)
    )
}

/// Runs the engine on `pipeline`: seconds and the run's peak memory (MiB).
fn run_engine(pipeline: &std::path::Path) -> (f64, f64) {
    let engine = PathBuf::from(env!("CARGO_BIN_EXE_engine"));
    let t = Instant::now();
    let o = Command::new(&engine)
        .args(["run", pipeline.to_str().unwrap_or_default(), "--no-progress", "--log-level", "warn"])
        .current_dir(repo())
        .output()
        .expect("run engine");
    let secs = t.elapsed().as_secs_f64();
    if !o.status.success() {
        println!("engine failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    (secs, summary_peak_mib(&String::from_utf8_lossy(&o.stdout)))
}

fn bench_postgres(csv: &std::path::Path) {
    let server = std::env::var("BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let db = format!("engine_bench_{}", std::process::id());
    if let Err(e) = psql(&server, "postgres", &format!("CREATE DATABASE {db}")) {
        println!("PostgreSQL not reachable (run scripts/ensure-postgres): {e}");
        return;
    }
    let url = format!("{server}/{db}");
    let dir = std::env::temp_dir().join(format!("engine-sql-bench-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // baby_names from the migrations; the others are copies of it
    // (columns, identity, unique key and indexes).
    let migrate = dir.join("migrate.toml");
    let text = sink_pipeline(csv, &url, "baby_names", "migrations = \"pipelines/migrations/babynames\"");
    std::fs::write(&migrate, text).expect("write pipeline");
    let o = Command::new(PathBuf::from(env!("CARGO_BIN_EXE_engine")))
        .args(["migrate", "up", migrate.to_str().unwrap_or_default()])
        .current_dir(repo())
        .output()
        .expect("migrate");
    if !o.status.success() {
        println!("migrate up failed: {}", String::from_utf8_lossy(&o.stderr));
        return;
    }
    for t in ["baby_names_insert", "baby_names_copy"] {
        if let Err(e) = psql(&server, &db, &format!("CREATE TABLE {t} (LIKE baby_names INCLUDING ALL)")) {
            println!("creating {t}: {e}");
            return;
        }
    }
    println!("input: {} into PostgreSQL database {db}", csv.display());
    let count = |t: &str| -> u64 {
        psql(&server, &db, &format!("SELECT COUNT(*) FROM {t}")).ok().and_then(|s| s.parse().ok()).unwrap_or(0)
    };

    // 1. Our pipeline, COPY path.
    let p = dir.join("copy.toml");
    std::fs::write(&p, sink_pipeline(csv, &url, "baby_names", "")).expect("write pipeline");
    let (secs, peak) = run_engine(&p);
    let ours = report("engine: … -> sql (COPY into staging, then merge)", count("baby_names"), secs);
    println!("{:<52} peak RSS {peak:.0} MiB", "");

    // 2. Our pipeline, multi-row INSERTs.
    let p = dir.join("insert.toml");
    std::fs::write(&p, sink_pipeline(csv, &url, "baby_names_insert", "copy = false")).expect("write pipeline");
    let (secs, peak) = run_engine(&p);
    let inserts = report("engine: … -> sql (multi-row INSERT … ON CONFLICT)", count("baby_names_insert"), secs);
    println!("{:<52} peak RSS {peak:.0} MiB", "");
    println!("ratio COPY path / INSERT path: {:.2}x", ours / inserts);

    // 3. psql \copy of the same file into an identical table.
    let t = Instant::now();
    let copy = psql(
        &server,
        &db,
        &format!(
            "\\copy baby_names_copy (source_id, name, year, gender, count) from '{}' with (format csv, header true)",
            csv.display()
        ),
    );
    let copy_secs = t.elapsed().as_secs_f64();
    match copy {
        Ok(_) => {
            let c = report("psql \\copy", count("baby_names_copy"), copy_secs);
            println!("ratio engine / \\copy: {:.2}x", ours / c);
        }
        Err(e) => println!("\\copy failed: {e}"),
    }

    // 4. pandas, when available.
    let _ = psql(&server, &db, "TRUNCATE TABLE baby_names_copy");
    pandas_reference(
        csv,
        &url.replace("postgres://", "postgresql+psycopg2://"),
        "baby_names_copy",
        ours,
        "psycopg2-binary",
    );

    let _ = psql(&server, "postgres", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn bench_mariadb(csv: &std::path::Path) {
    let server = std::env::var("BENCH_MYSQL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    let db = format!("engine_bench_{}", std::process::id());
    if let Err(e) = mariadb("", &format!("CREATE DATABASE {db} CHARACTER SET utf8mb4")) {
        println!("MariaDB not reachable (run scripts/ensure-mariadb): {e}");
        return;
    }
    let url = format!("{server}/{db}");
    let dir = std::env::temp_dir().join(format!("engine-sql-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let connections = std::env::var("BENCH_SQL_CONNECTIONS").unwrap_or_else(|_| "4".into());
    let batch_rows = std::env::var("BENCH_SQL_BATCH_ROWS").unwrap_or_else(|_| "2000".into());
    let pipeline = dir.join("sql.toml");
    let extra = "migrations = \"pipelines/migrations/babynames\"\nauto_migrate = true";
    std::fs::write(&pipeline, sink_pipeline(csv, &url, "baby_names", extra)).expect("write pipeline");
    println!(
        "input: {} into MariaDB table {db}.baby_names (connections = {connections}, batch_rows = {batch_rows})",
        csv.display()
    );

    // 1. Our pipeline (creates the table through its migrations).
    let cpu = server_cpu_seconds();
    let (ours_secs, peak) = run_engine(&pipeline);
    println!("engine peak RSS {peak:.0} MiB");
    let rows: u64 = mariadb(&db, "SELECT COUNT(*) FROM baby_names").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    let ours = report("engine: file -> validate -> dedupe -> sql (upsert)", rows, ours_secs);
    server_cpu_per_row(cpu, rows);

    // 1b. LOAD DATA split over as many connections as the sink uses: one
    // part file (with the header) per connection, loaded concurrently.
    let _ = mariadb(&db, "TRUNCATE TABLE baby_names");
    let n: usize = connections.parse().unwrap_or(4).max(1);
    match split_csv(csv, n, &dir) {
        Ok(parts) => {
            let cpu = server_cpu_seconds();
            let t = Instant::now();
            let loads: Vec<_> = parts
                .iter()
                .map(|part| {
                    Command::new("mariadb")
                        .args(["--local-infile=1", "-h127.0.0.1", "-uroot", &db, "-e"])
                        .arg(format!(
                            "LOAD DATA LOCAL INFILE '{}' INTO TABLE baby_names FIELDS TERMINATED BY ',' \
                             OPTIONALLY ENCLOSED BY '\"' IGNORE 1 LINES (source_id, name, year, gender, count)",
                            part.display()
                        ))
                        .spawn()
                })
                .collect();
            let ok = loads.into_iter().all(|c| c.and_then(|mut c| c.wait()).is_ok_and(|s| s.success()));
            let secs = t.elapsed().as_secs_f64();
            let rows: u64 =
                mariadb(&db, "SELECT COUNT(*) FROM baby_names").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
            if ok {
                let l = report(&format!("LOAD DATA LOCAL INFILE x{n} connections"), rows, secs);
                println!("ratio engine / LOAD DATA over {n} connections: {:.2}x", ours / l);
                server_cpu_per_row(cpu, rows);
            } else {
                println!("LOAD DATA over {n} connections failed");
            }
        }
        Err(e) => println!("splitting the input failed: {e}"),
    }

    // 2. LOAD DATA LOCAL INFILE into the same, emptied table.
    let _ = mariadb(&db, "TRUNCATE TABLE baby_names");
    let cpu = server_cpu_seconds();
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
            server_cpu_per_row(cpu, rows);
        }
        Err(e) => println!("LOAD DATA failed: {e}"),
    }

    // 3. pandas, when available.
    let _ = mariadb(&db, "TRUNCATE TABLE baby_names");
    pandas_reference(csv, &url.replace("mysql://", "mysql+pymysql://"), "baby_names", ours, "pymysql");

    let _ = mariadb("", &format!("DROP DATABASE IF EXISTS {db}"));
    let _ = std::fs::remove_dir_all(&dir);
}
