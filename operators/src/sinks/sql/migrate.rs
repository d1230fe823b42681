//! Versioned migrations: `<dir>/<dialect>/V001__name.up.sql` with an optional
//! `V001__name.down.sql`. Applied versions are recorded in
//! `engine_migrations` with the checksum of their up file, so an applied
//! file that was edited afterwards is caught before anything else runs.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::db::{Dialect, Pool, describe};

pub const STATUS_TABLE: &str = "engine_migrations";

#[derive(Clone, Debug)]
pub struct Migration {
    pub version: i64,
    pub name: String,
    pub up_path: PathBuf,
    pub up_sql: String,
    pub down_sql: Option<String>,
    pub checksum: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("migrations folder {0}: {1}")]
    Folder(String, String),
    #[error(
        "{file} was changed after it was applied as version {version} (checksum {applied} recorded, {now} now); restore it, or roll back with `engine migrate down` before editing"
    )]
    Changed { file: String, version: i64, applied: String, now: String },
    #[error("version {0} is applied but its file is missing from {1}")]
    Missing(i64, String),
    #[error("migration {file}: {cause}")]
    Apply { file: String, cause: String },
    #[error("cannot roll back version {0}: it has no .down.sql file")]
    NoDown(i64),
    #[error("{0}")]
    Db(String),
}

fn db(e: sqlx::Error) -> MigrateError {
    MigrateError::Db(describe(&e))
}

/// Reads `<dir>/<dialect>/`, ordered by version.
pub fn load(dir: &Path, dialect: Dialect) -> Result<Vec<Migration>, MigrateError> {
    let folder = dir.join(dialect.name());
    let shown = folder.display().to_string();
    let entries = std::fs::read_dir(&folder).map_err(|e| MigrateError::Folder(shown.clone(), e.to_string()))?;
    let mut out: Vec<Migration> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| MigrateError::Folder(shown.clone(), e.to_string()))?;
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = file.strip_suffix(".up.sql") else { continue };
        let Some((v, name)) = stem.strip_prefix('V').and_then(|s| s.split_once("__")) else {
            return Err(MigrateError::Folder(shown, format!("`{file}` is not named V<version>__<name>.up.sql")));
        };
        let version: i64 = v
            .parse()
            .map_err(|_| MigrateError::Folder(shown.clone(), format!("`{file}`: `{v}` is not a version number")))?;
        let up_path = entry.path();
        let up_sql =
            std::fs::read_to_string(&up_path).map_err(|e| MigrateError::Folder(shown.clone(), e.to_string()))?;
        let down_path = folder.join(format!("{stem}.down.sql"));
        let down_sql = std::fs::read_to_string(&down_path).ok();
        let checksum = format!("{:x}", Sha256::digest(up_sql.as_bytes()));
        if out.iter().any(|m| m.version == version) {
            return Err(MigrateError::Folder(shown, format!("two files have version {version}")));
        }
        out.push(Migration { version, name: name.to_string(), up_path, up_sql, down_sql, checksum });
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}

async fn exec(pool: &Pool, sql: &str) -> Result<(), sqlx::Error> {
    match pool {
        Pool::MySql(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(p).await.map(|_| ()),
        Pool::Postgres(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(p).await.map(|_| ()),
        Pool::Sqlite(p) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string())).execute(p).await.map(|_| ()),
    }
}

async fn ensure_table(pool: &Pool) -> Result<(), MigrateError> {
    if let Pool::MySql(p) = pool
        && super::db::table_exists(p, Dialect::MySql, STATUS_TABLE).await.map_err(db)?
    {
        return Ok(());
    }
    if let Pool::Postgres(p) = pool
        && super::db::pg_table_exists(p, STATUS_TABLE).await.map_err(db)?
    {
        return Ok(());
    }
    let sql = match pool.dialect() {
        Dialect::MySql => format!(
            "CREATE TABLE IF NOT EXISTS {STATUS_TABLE} (version BIGINT PRIMARY KEY, name VARCHAR(255) NOT NULL, \
             checksum CHAR(64) NOT NULL, applied_at VARCHAR(40) NOT NULL) DEFAULT CHARSET=utf8mb4"
        ),
        Dialect::Postgres => format!(
            "CREATE TABLE IF NOT EXISTS {STATUS_TABLE} (version BIGINT PRIMARY KEY, name TEXT NOT NULL, \
             checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
        ),
        Dialect::Sqlite => format!(
            "CREATE TABLE IF NOT EXISTS {STATUS_TABLE} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, \
             checksum TEXT NOT NULL, applied_at TEXT NOT NULL)"
        ),
    };
    exec(pool, &sql).await.map_err(db)
}

pub async fn applied(pool: &Pool) -> Result<Vec<Applied>, MigrateError> {
    ensure_table(pool).await?;
    let q = format!("SELECT version, name, checksum, applied_at FROM {STATUS_TABLE} ORDER BY version");
    macro_rules! fetch {
        ($p:expr) => {
            sqlx::query(sqlx::AssertSqlSafe(q))
                .fetch_all($p)
                .await
                .map_err(db)?
                .iter()
                .map(|r| Applied { version: r.get(0), name: r.get(1), checksum: r.get(2), applied_at: r.get(3) })
                .collect()
        };
    }
    let rows: Vec<Applied> = match pool {
        Pool::MySql(p) => fetch!(p),
        Pool::Postgres(p) => fetch!(p),
        Pool::Sqlite(p) => fetch!(p),
    };
    Ok(rows)
}

/// Refuses when an applied file changed or disappeared.
fn verify(files: &[Migration], applied: &[Applied], dir: &Path) -> Result<(), MigrateError> {
    for a in applied {
        match files.iter().find(|m| m.version == a.version) {
            None => return Err(MigrateError::Missing(a.version, dir.display().to_string())),
            Some(m) if m.checksum != a.checksum => {
                return Err(MigrateError::Changed {
                    file: m.up_path.display().to_string(),
                    version: m.version,
                    applied: a.checksum[..12.min(a.checksum.len())].to_string(),
                    now: m.checksum[..12].to_string(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Applied and pending migrations, checked against the files.
pub async fn status(pool: &Pool, dir: &Path) -> Result<(Vec<Applied>, Vec<Migration>), MigrateError> {
    let files = load(dir, pool.dialect())?;
    let done = applied(pool).await?;
    verify(&files, &done, dir)?;
    let pending = files.into_iter().filter(|m| !done.iter().any(|a| a.version == m.version)).collect();
    Ok((done, pending))
}

fn now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format!("{secs}")
}

/// Applies every pending migration in order, and creates the engine's own
/// tables when missing; returns what was applied.
pub async fn up(pool: &Pool, dir: &Path) -> Result<Vec<Migration>, MigrateError> {
    let (_, pending) = status(pool, dir).await?;
    for m in &pending {
        let insert = format!(
            "INSERT INTO {STATUS_TABLE} (version, name, checksum, applied_at) VALUES ({}, '{}', '{}', '{}')",
            m.version,
            m.name.replace('\'', "''"),
            m.checksum,
            now()
        );
        let apply = |e: sqlx::Error| MigrateError::Apply { file: m.up_path.display().to_string(), cause: describe(&e) };
        if let Pool::Postgres(p) = pool {
            // PostgreSQL's DDL is transactional: a migration and its record
            // land together, or a failed one leaves nothing half-applied.
            let mut tx = p.begin().await.map_err(db)?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(m.up_sql.clone())).execute(&mut *tx).await.map_err(apply)?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(insert)).execute(&mut *tx).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
            tracing::info!(version = m.version, name = %m.name, "migration applied");
            continue;
        }
        exec(pool, &m.up_sql).await.map_err(apply)?;
        exec(pool, &insert).await.map_err(db)?;
        tracing::info!(version = m.version, name = %m.name, "migration applied");
    }
    super::ensure_engine_tables(pool).await.map_err(db)?;
    Ok(pending)
}

/// Rolls back every applied version above `to`, newest first.
pub async fn down(pool: &Pool, dir: &Path, to: i64) -> Result<Vec<i64>, MigrateError> {
    let (done, _) = status(pool, dir).await?;
    let files = load(dir, pool.dialect())?;
    let mut rolled = Vec::new();
    for a in done.iter().rev().filter(|a| a.version > to) {
        let m = files
            .iter()
            .find(|m| m.version == a.version)
            .ok_or(MigrateError::Missing(a.version, dir.display().to_string()))?;
        let down = m.down_sql.as_deref().ok_or(MigrateError::NoDown(m.version))?;
        let apply = |e: sqlx::Error| MigrateError::Apply {
            file: format!("{} (down)", m.up_path.display()),
            cause: describe(&e),
        };
        let forget = format!("DELETE FROM {STATUS_TABLE} WHERE version = {}", m.version);
        if let Pool::Postgres(p) = pool {
            let mut tx = p.begin().await.map_err(db)?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(down.to_string())).execute(&mut *tx).await.map_err(apply)?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(forget)).execute(&mut *tx).await.map_err(db)?;
            tx.commit().await.map_err(db)?;
        } else {
            exec(pool, down).await.map_err(apply)?;
            exec(pool, &forget).await.map_err(db)?;
        }
        tracing::info!(version = m.version, name = %m.name, "migration rolled back");
        rolled.push(m.version);
    }
    Ok(rolled)
}
