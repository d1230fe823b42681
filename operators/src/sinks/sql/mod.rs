//! `kind = "sql"`: writes rows into a MySQL/MariaDB, PostgreSQL or SQLite
//! table with batched multi-row `INSERT`s and bound parameters, idempotent
//! on the table's natural key (`mode = "upsert"`), several transactions in
//! flight, transient errors retried with backoff and the whole batch
//! replayed. On PostgreSQL a batch goes through `COPY … FROM STDIN` into a
//! session-local staging table and one `INSERT … SELECT … ON CONFLICT` in
//! the same transaction (`copy = false`: multi-row `INSERT`s as elsewhere).
//!
//! Keys on its `deletes` input (e.g. `changes.deleted`) are deleted by the
//! natural key, so the table mirrors the input; a replayed delete finds
//! nothing and changes nothing.
//!
//! Owns the table writes, the migrations it may run at start
//! ([`migrate`]) and its commit marker (`engine_sink_commits`). It must not
//! decide when a checkpoint happens: the runtime tells it through barriers.

pub mod db;
pub mod migrate;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type, UInt64Type};
use async_trait::async_trait;
use serde::Deserialize;
use sqlx::{MySql, Postgres, QueryBuilder, Sqlite};
use tokio::task::JoinSet;

use crate::api::{BuildContext, Collector, Operator, OperatorError, Resume, Snapshot};
use crate::batch::{Barrier, Batch};
use db::{Dialect, Pool, Tls, describe, is_access_denied, is_transient, redact};

/// Where the writer records the last epoch it committed, in the same
/// transaction as that epoch's rows.
pub const COMMITS_TABLE: &str = "engine_sink_commits";

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Insert, or update the non-key columns when the key exists.
    #[default]
    Upsert,
    /// Plain insert: a key seen before is an error.
    Insert,
}

fn two_thousand() -> usize {
    2000
}
fn four() -> u32 {
    4
}
fn eight() -> u32 {
    8
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSinkConfig {
    /// `mysql://user:pass@host:3306/db`, `mariadb://…`,
    /// `postgres://user:pass@host:5432/db` (or `postgresql://`; libpq's
    /// `sslmode` and `sslrootcert` may be in the query) or `sqlite://path.db`.
    pub url: String,
    pub table: String,
    /// Table columns forming the natural key (a unique index must exist).
    pub key: Vec<String>,
    /// Table column → input column.
    pub columns: BTreeMap<String, String>,
    /// Migrations folder (with one sub-folder per dialect).
    pub migrations: Option<String>,
    /// Apply pending migrations at start. Default: on for SQLite (the
    /// embedded default), off for servers (use `engine migrate up`).
    pub auto_migrate: Option<bool>,
    #[serde(default)]
    pub mode: Mode,
    /// Rows per INSERT statement (capped by the placeholder limit and the
    /// server's max_allowed_packet).
    #[serde(default = "two_thousand")]
    pub batch_rows: usize,
    /// Transactions in flight at once.
    #[serde(default = "four")]
    pub connections: u32,
    /// Attempts per batch on transient errors before the run fails.
    #[serde(default = "eight")]
    pub max_attempts: u32,
    pub ssl_mode: Option<String>,
    pub ssl_ca: Option<String>,
    /// PostgreSQL: rows go through `COPY … FROM STDIN` into a staging table
    /// (the default); `false` writes multi-row `INSERT`s like the other
    /// databases. Ignored elsewhere.
    pub copy: Option<bool>,
    /// A run takes the table's lock for itself (one writer per table).
    /// Sync workers that each own a partition of the keys set this to their
    /// partition (`"${PARTITION}"`): each then locks its own share.
    pub lock_scope: Option<String>,
}

/// MySQL and MariaDB refuse longer table and column names.
const MAX_IDENT: usize = 64;

/// Table and column names are spliced into SQL text, so they must be plain
/// identifiers; each refusal gives its own reason.
fn check_ident(what: &str, s: &str) -> Result<(), OperatorError> {
    let plain = s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let reason = if s.is_empty() {
        format!("{what} name must not be empty")
    } else if !plain || s.starts_with(|c: char| c.is_ascii_digit()) {
        format!("{what} `{s}` must be letters, digits and _ (not starting with a digit)")
    } else if s.len() > MAX_IDENT {
        // Plain ASCII by now: bytes are characters.
        format!("{what} `{s}` is too long: {} characters, at most {MAX_IDENT} (the MySQL/MariaDB limit)", s.len())
    } else {
        return Ok(());
    };
    Err(OperatorError::Config(reason))
}

/// The refusal when another run holds the table's lock (`holder`: the
/// name it left in `engine_sink_locks`).
fn locked_by_another_run(what: &str, holder: Option<String>) -> OperatorError {
    OperatorError::Data(format!(
        "{what} is being written by another run ({}); two runs must not write one table: wait for it to end, or give this run another table",
        holder.unwrap_or_else(|| "its holder left no name".into())
    ))
}

/// Everything a write task needs, shared by every in-flight batch.
struct Shared {
    pool: Pool,
    table: String,
    shown_url: String,
    /// (table column, input column), table order.
    columns: Vec<(String, String)>,
    insert_head: String,
    upsert_tail: String,
    /// (table column, input column) of the natural key, for deletes.
    key_columns: Vec<(String, String)>,
    /// `DELETE FROM t WHERE (k1, k2) IN `.
    delete_head: String,
    /// PostgreSQL's fast path, when on.
    copy: Option<CopyPlan>,
    max_attempts: u32,
    batch_rows: usize,
    max_packet: usize,
    pipeline: String,
    sink: String,
    /// Resolves `url` again when a new connection is refused (1045).
    rotation: Option<Arc<dyn crate::api::Rotation>>,
    tls: Tls,
    /// The URL new connections use, after rotations.
    url: tokio::sync::Mutex<String>,
    /// How many rotations happened: a refusal of an attempt that started
    /// before the last one just tries again.
    rotations: std::sync::atomic::AtomicU64,
}

/// The statements of PostgreSQL's fast path: each batch is copied into a
/// temporary table of the connection's session (created once per session,
/// emptied at every commit) and merged into the target in the same
/// transaction as the batch's epoch marker.
struct CopyPlan {
    /// `CREATE TEMP TABLE IF NOT EXISTS engine_stage … ON COMMIT DELETE ROWS
    /// AS SELECT <columns> FROM <table> WITH NO DATA`: the target's column
    /// types, none of its constraints.
    create: String,
    /// `COPY engine_stage (<columns>) FROM STDIN`, text format.
    copy: String,
    /// `INSERT INTO <table> (<columns>) SELECT … FROM engine_stage` with the
    /// conflict clause of the mode.
    merge: String,
    /// The same keeping only the last row of each key, for a batch that
    /// holds a key twice (upsert mode; the sort costs ~15% otherwise).
    merge_last: String,
    /// Positions of the key columns among the written columns.
    key_idx: Vec<usize>,
    /// Upsert mode: a plain `INSERT … SELECT` tried first (under a
    /// savepoint) while no batch of this run has met an existing key — a
    /// first load then skips ON CONFLICT's speculative insertion, ~25% of
    /// the server's time. The first unique violation switches it off.
    optimistic: Option<String>,
    /// Set once a plain insert met an existing key.
    conflicted: std::sync::atomic::AtomicBool,
}

/// The staging table of PostgreSQL's COPY path, one per session.
const STAGE_TABLE: &str = "engine_stage";

pub struct SqlSink {
    cfg: SqlSinkConfig,
    ctx: BuildContext,
    shared: Option<Arc<Shared>>,
    /// Write tasks; each returns (rows written, rows deleted).
    in_flight: JoinSet<Result<(u64, u64), OperatorError>>,
    /// The newest batch is held back until the next one arrives, so that at
    /// a barrier the epoch marker can commit in the same transaction as the
    /// epoch's last rows.
    held: Option<Batch>,
    rows_written: u64,
    rows_deleted: u64,
    /// The checkpoint a resumed run starts from.
    resumed_from: Option<u64>,
    /// One run writes a table at a time (held from `start` to the end).
    table_lock: Option<TableLock>,
}

/// How a table is locked: a named lock held by a connection of its own on
/// a server, a lock file beside an SQLite database.
enum TableLock {
    File(#[allow(dead_code)] crate::lock::OutputLock),
    /// The connection holding the named lock, and the lock's name.
    MySql(sqlx::MySqlConnection, String),
    /// The connection holding a session advisory lock, and its key.
    Postgres(sqlx::PgConnection, i64),
}

pub fn build(ctx: &BuildContext, cfg: SqlSinkConfig) -> Result<SqlSink, OperatorError> {
    let Some(dialect) = db::dialect_of(&cfg.url) else {
        return Err(OperatorError::Config(format!(
            "unsupported database URL {}: use mysql://, mariadb://, postgres://, postgresql:// or sqlite://",
            redact(&cfg.url)
        )));
    };
    check_ident("table", &cfg.table)?;
    // PostgreSQL cuts longer names to 63 bytes: two long names could end
    // up as one table or column.
    if dialect == Dialect::Postgres
        && let Some(long) = std::iter::once(&cfg.table).chain(cfg.columns.keys()).find(|n| n.len() > 63)
    {
        return Err(OperatorError::Config(format!(
            "`{long}` is too long: {} characters, at most 63 on PostgreSQL",
            long.len()
        )));
    }
    if cfg.columns.is_empty() {
        return Err(OperatorError::Config("columns must map at least one table column".into()));
    }
    for c in cfg.columns.keys() {
        check_ident("column", c)?;
    }
    if cfg.key.is_empty() {
        return Err(OperatorError::Config("key must name the table's natural key columns".into()));
    }
    for k in &cfg.key {
        if !cfg.columns.contains_key(k) {
            return Err(OperatorError::Config(format!("key column `{k}` is not one of the mapped columns")));
        }
    }
    if cfg.batch_rows == 0 || cfg.connections == 0 || cfg.max_attempts == 0 {
        return Err(OperatorError::Config("batch_rows, connections and max_attempts must be at least 1".into()));
    }
    Ok(SqlSink {
        cfg,
        ctx: ctx.clone(),
        shared: None,
        in_flight: JoinSet::new(),
        held: None,
        rows_written: 0,
        rows_deleted: 0,
        table_lock: None,
        resumed_from: None,
    })
}

impl SqlSink {
    fn err(&self, what: &str, cause: String) -> OperatorError {
        OperatorError::Data(format!("{what} table `{}` at {}: {cause}", self.cfg.table, redact(&self.cfg.url)))
    }

    async fn start(&mut self) -> Result<Arc<Shared>, OperatorError> {
        if let Some(s) = &self.shared {
            return Ok(s.clone());
        }
        let tls = Tls { ssl_mode: self.cfg.ssl_mode.clone(), ssl_ca: self.cfg.ssl_ca.clone() };
        let pool = db::connect(&self.cfg.url, self.cfg.connections, &tls)
            .await
            .map_err(|e| OperatorError::Data(format!("table `{}`: {e}", self.cfg.table)))?;
        let dialect = pool.dialect();
        self.table_lock = Some(self.lock_table(&pool).await?);
        if let Some(dir) = &self.cfg.migrations {
            let dir = PathBuf::from(dir);
            let auto = self.cfg.auto_migrate.unwrap_or(dialect == Dialect::Sqlite);
            let (_, pending) =
                migrate::status(&pool, &dir).await.map_err(|e| self.err("migrations for", e.to_string()))?;
            if !pending.is_empty() {
                if auto {
                    migrate::up(&pool, &dir).await.map_err(|e| self.err("migrating", e.to_string()))?;
                } else {
                    return Err(self.err(
                        "migrations pending for",
                        format!(
                            "{} migration(s) not applied (first: V{:03}__{}); run `engine migrate up` on this pipeline file, or set auto_migrate = true",
                            pending.len(),
                            pending[0].version,
                            pending[0].name
                        ),
                    ));
                }
            }
        }
        ensure_commits_table(&pool).await.map_err(|e| self.err("preparing", describe(&e)))?;
        if let Some(epoch) = self.resumed_from {
            // The checkpoint says this sink committed `epoch`; a marker
            // below it means the table lost rows since (restored from a
            // backup, truncated, another database): resuming would not
            // write them again.
            let marker = committed_epoch(&pool, &self.ctx.pipeline, &self.ctx.id)
                .await
                .map_err(|e| self.err("reading the commit marker of", describe(&e)))?;
            if marker.is_none_or(|m| m < epoch as i64) {
                let seen = marker.map(|m| format!("epoch {m}")).unwrap_or_else(|| "no epoch".into());
                return Err(OperatorError::Resume(format!(
                    "table `{}` at {} records {seen} in {COMMITS_TABLE} but checkpoint {epoch} says epoch {epoch} was committed: the table changed since, and resuming would not rewrite the missing rows; run with --from-scratch",
                    self.cfg.table,
                    redact(&self.cfg.url)
                )));
            }
        }
        let max_packet = match &pool {
            Pool::MySql(p) => sqlx::query_scalar::<_, u64>("SELECT @@max_allowed_packet")
                .fetch_one(p)
                .await
                .map(|v| v as usize)
                .unwrap_or(16 << 20),
            // A protocol message holds at most 1 GiB.
            Pool::Postgres(_) | Pool::Sqlite(_) => 1 << 30,
        };
        let columns: Vec<(String, String)> = self.cfg.columns.iter().map(|(t, i)| (t.clone(), i.clone())).collect();
        let q = |s: &str| dialect.quote(s);
        let insert_head = format!(
            "INSERT INTO {} ({}) ",
            q(&self.cfg.table),
            columns.iter().map(|(t, _)| q(t)).collect::<Vec<_>>().join(", ")
        );
        let non_key: Vec<&String> = columns.iter().map(|(t, _)| t).filter(|t| !self.cfg.key.contains(t)).collect();
        let key_columns: Vec<(String, String)> =
            columns.iter().filter(|(t, _)| self.cfg.key.contains(t)).cloned().collect();
        let delete_head = format!(
            "DELETE FROM {} WHERE ({}) IN ",
            q(&self.cfg.table),
            key_columns.iter().map(|(t, _)| q(t)).collect::<Vec<_>>().join(", ")
        );
        // A resumed run replays rows written after its checkpoint; in insert
        // mode those would collide with themselves, so they are skipped.
        let skip_existing = self.resumed_from.is_some();
        let upsert_tail = match (self.cfg.mode, dialect) {
            (Mode::Insert, Dialect::MySql) if skip_existing => {
                format!(" ON DUPLICATE KEY UPDATE {0} = {0}", q(&self.cfg.key[0]))
            }
            (Mode::Insert, Dialect::Sqlite | Dialect::Postgres) if skip_existing => format!(
                " ON CONFLICT ({}) DO NOTHING",
                self.cfg.key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ")
            ),
            (Mode::Insert, _) => String::new(),
            // MariaDB still spells the new row VALUES(col).
            (Mode::Upsert, Dialect::MySql) if non_key.is_empty() => {
                format!(" ON DUPLICATE KEY UPDATE {0} = {0}", q(&self.cfg.key[0]))
            }
            (Mode::Upsert, Dialect::MySql) => format!(
                " ON DUPLICATE KEY UPDATE {}",
                non_key.iter().map(|c| format!("{0} = VALUES({0})", q(c))).collect::<Vec<_>>().join(", ")
            ),
            (Mode::Upsert, Dialect::Sqlite | Dialect::Postgres) if non_key.is_empty() => format!(
                " ON CONFLICT ({}) DO NOTHING",
                self.cfg.key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ")
            ),
            (Mode::Upsert, Dialect::Sqlite | Dialect::Postgres) => format!(
                " ON CONFLICT ({}) DO UPDATE SET {}",
                self.cfg.key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", "),
                non_key.iter().map(|c| format!("{0} = excluded.{0}", q(c))).collect::<Vec<_>>().join(", ")
            ),
        };
        let copy = (dialect == Dialect::Postgres && self.cfg.copy.unwrap_or(true)).then(|| {
            let cols = columns.iter().map(|(t, _)| q(t)).collect::<Vec<_>>().join(", ");
            let keys = self.cfg.key.iter().map(|k| q(k)).collect::<Vec<_>>().join(", ");
            // ON CONFLICT DO UPDATE refuses to touch a row twice in one
            // statement, where MySQL's upsert lets the last one win: keep
            // the last row of each key (COPY appends in input order).
            let plain = format!("SELECT {cols} FROM {STAGE_TABLE}");
            let last = match self.cfg.mode {
                Mode::Upsert => {
                    format!("SELECT DISTINCT ON ({keys}) {cols} FROM {STAGE_TABLE} ORDER BY {keys}, ctid DESC")
                }
                Mode::Insert => plain.clone(),
            };
            CopyPlan {
                create: format!(
                    "CREATE TEMP TABLE IF NOT EXISTS {STAGE_TABLE} ON COMMIT DELETE ROWS AS SELECT {cols} FROM {} WITH NO DATA",
                    q(&self.cfg.table)
                ),
                copy: format!("COPY {STAGE_TABLE} ({cols}) FROM STDIN"),
                optimistic: (self.cfg.mode == Mode::Upsert).then(|| format!("{insert_head}{plain}")),
                // A resumed run replays rows already in the table.
                conflicted: std::sync::atomic::AtomicBool::new(skip_existing),
                merge: format!("{insert_head}{plain}{upsert_tail}"),
                merge_last: format!("{insert_head}{last}{upsert_tail}"),
                key_idx: columns
                    .iter()
                    .enumerate()
                    .filter(|(_, (t, _))| self.cfg.key.contains(t))
                    .map(|(i, _)| i)
                    .collect(),
            }
        });
        tracing::info!(url = %redact(&self.cfg.url), table = %self.cfg.table, "sql sink connected");
        let shared = Arc::new(Shared {
            pool,
            table: self.cfg.table.clone(),
            shown_url: redact(&self.cfg.url),
            columns,
            insert_head,
            upsert_tail,
            key_columns,
            delete_head,
            copy,
            max_attempts: self.cfg.max_attempts,
            batch_rows: self.cfg.batch_rows,
            max_packet,
            pipeline: self.ctx.pipeline.clone(),
            sink: self.ctx.id.clone(),
            rotation: self.ctx.rotation.clone(),
            tls,
            url: tokio::sync::Mutex::new(self.cfg.url.clone()),
            rotations: Default::default(),
        });
        self.shared = Some(shared.clone());
        Ok(shared)
    }

    /// What `lock_scope` adds to the lock's name.
    fn scope(&self) -> String {
        self.cfg.lock_scope.as_deref().filter(|s| !s.is_empty()).map(|s| format!(":{s}")).unwrap_or_default()
    }

    /// Takes the table's lock, or says which run holds it.
    async fn lock_table(&self, pool: &Pool) -> Result<TableLock, OperatorError> {
        let holder = crate::lock::holder(&self.ctx.pipeline, &self.ctx.id);
        let what = format!("table `{}` at {}", self.cfg.table, redact(&self.cfg.url));
        match pool {
            Pool::Sqlite(_) => {
                let file = db::sqlite_file(&self.cfg.url).unwrap_or_default();
                let target = file.with_file_name(format!(
                    "{}.{}{}",
                    file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
                    self.cfg.table,
                    self.scope().replace(['/', '\\'], "_")
                ));
                crate::lock::OutputLock::acquire(&target, &what, &holder).map(TableLock::File)
            }
            Pool::MySql(p) => {
                let db_err = |e: sqlx::Error| OperatorError::Data(format!("locking {what}: {}", describe(&e)));
                let mut conn = p.acquire().await.map_err(db_err)?.detach();
                let database: Option<String> =
                    sqlx::query_scalar("SELECT DATABASE()").fetch_one(&mut conn).await.map_err(db_err)?;
                // MySQL lock names hold at most 64 characters.
                let mut name = format!("engine:{}.{}{}", database.unwrap_or_default(), self.cfg.table, self.scope());
                if name.len() > 64 {
                    use sha2::Digest;
                    let digest = sha2::Sha256::digest(name.as_bytes());
                    name = format!("engine:{}", digest.iter().take(20).map(|b| format!("{b:02x}")).collect::<String>());
                }
                if !db::table_exists(&mut conn, Dialect::MySql, "engine_sink_locks").await.map_err(db_err)? {
                    sqlx::raw_sql(LOCKS_DDL).execute(&mut conn).await.map_err(db_err)?;
                }
                let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 0)")
                    .bind(&name)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(db_err)?;
                if got != Some(1) {
                    let other: Option<String> =
                        sqlx::query_scalar("SELECT holder FROM engine_sink_locks WHERE name = ?")
                            .bind(&name)
                            .fetch_optional(&mut conn)
                            .await
                            .map_err(db_err)?;
                    return Err(locked_by_another_run(&what, other));
                }
                sqlx::query("REPLACE INTO engine_sink_locks (name, holder) VALUES (?, ?)")
                    .bind(&name)
                    .bind(&holder)
                    .execute(&mut conn)
                    .await
                    .map_err(db_err)?;
                Ok(TableLock::MySql(conn, name))
            }
            Pool::Postgres(p) => {
                let db_err = |e: sqlx::Error| OperatorError::Data(format!("locking {what}: {}", describe(&e)));
                let mut conn = p.acquire().await.map_err(db_err)?.detach();
                let database: String =
                    sqlx::query_scalar("SELECT current_database()").fetch_one(&mut conn).await.map_err(db_err)?;
                let name = format!("engine:{database}.{}{}", self.cfg.table, self.scope());
                let key = pg_lock_key(&name);
                if !db::pg_table_exists(&mut conn, "engine_sink_locks").await.map_err(db_err)? {
                    sqlx::raw_sql(PG_LOCKS_DDL).execute(&mut conn).await.map_err(db_err)?;
                }
                // A session lock: held until this connection closes, which
                // a crash of the process does at once.
                let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(key)
                    .fetch_one(&mut conn)
                    .await
                    .map_err(db_err)?;
                if !got {
                    let other: Option<String> =
                        sqlx::query_scalar("SELECT holder FROM engine_sink_locks WHERE name = $1")
                            .bind(&name)
                            .fetch_optional(&mut conn)
                            .await
                            .map_err(db_err)?;
                    return Err(locked_by_another_run(&what, other));
                }
                sqlx::query(
                    "INSERT INTO engine_sink_locks (name, holder) VALUES ($1, $2) \
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder",
                )
                .bind(&name)
                .bind(&holder)
                .execute(&mut conn)
                .await
                .map_err(db_err)?;
                Ok(TableLock::Postgres(conn, key))
            }
        }
    }

    /// The named lock is held by an idle connection for the whole run: a
    /// server's `wait_timeout` or a dropped connection would release it
    /// unnoticed. Checked at every barrier: a run that lost it stops.
    async fn check_lock(&mut self) -> Result<(), OperatorError> {
        let held: Result<Option<i64>, sqlx::Error> = match self.table_lock.as_mut() {
            Some(TableLock::MySql(conn, name)) => {
                sqlx::query_scalar("SELECT IS_USED_LOCK(?) = CONNECTION_ID()").bind(name.as_str()).fetch_one(conn).await
            }
            // A session advisory lock on a bigint key shows in pg_locks
            // as classid (high half) and objid (low half), objsubid 1.
            Some(TableLock::Postgres(conn, key)) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid() \
                 AND granted AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = $1",
            )
            .bind(*key)
            .fetch_one(conn)
            .await
            .map(Some),
            _ => return Ok(()),
        };
        match held {
            Ok(Some(1)) => Ok(()),
            Ok(_) => Err(OperatorError::Data(format!(
                "lost the lock on table `{}` at {} (its connection was closed: server wait_timeout or network); another run may write the table now, so this one stops",
                self.cfg.table,
                redact(&self.cfg.url)
            ))),
            Err(e) => Err(OperatorError::Data(format!(
                "checking the lock on table `{}` at {}: {}",
                self.cfg.table,
                redact(&self.cfg.url),
                describe(&e)
            ))),
        }
    }

    /// Lets the next run have the table.
    async fn unlock_table(&mut self) {
        use sqlx::Connection;
        match self.table_lock.take() {
            Some(TableLock::MySql(conn, _)) => {
                let _ = conn.close().await;
            }
            // Closing the session releases its advisory lock.
            Some(TableLock::Postgres(conn, _)) => {
                let _ = conn.close().await;
            }
            _ => {}
        }
    }

    async fn reap_one(&mut self) -> Result<(), OperatorError> {
        if let Some(joined) = self.in_flight.join_next().await {
            let (written, deleted) = joined.map_err(|e| OperatorError::Data(format!("a write task failed: {e}")))??;
            self.rows_written += written;
            self.rows_deleted += deleted;
        }
        Ok(())
    }

    async fn drain(&mut self) -> Result<(), OperatorError> {
        while !self.in_flight.is_empty() {
            self.reap_one().await?;
        }
        Ok(())
    }
}

const LOCKS_DDL: &str = "CREATE TABLE IF NOT EXISTS engine_sink_locks (name VARCHAR(191) NOT NULL PRIMARY KEY, \
     holder TEXT NOT NULL) DEFAULT CHARSET=utf8mb4";

const PG_LOCKS_DDL: &str =
    "CREATE TABLE IF NOT EXISTS engine_sink_locks (name TEXT NOT NULL PRIMARY KEY, holder TEXT NOT NULL)";

/// The advisory lock key of a lock name: the first 8 bytes of its SHA-256
/// (PostgreSQL's advisory locks are keyed by one bigint).
fn pg_lock_key(name: &str) -> i64 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first)
}

/// The engine's own tables (`engine_sink_locks`, `engine_sink_commits`),
/// created by whoever migrates: a loader with only SELECT, INSERT, UPDATE and
/// DELETE then never needs CREATE.
pub(crate) async fn ensure_engine_tables(pool: &Pool) -> Result<(), sqlx::Error> {
    if let Pool::MySql(p) = pool
        && !db::table_exists(p, Dialect::MySql, "engine_sink_locks").await?
    {
        sqlx::raw_sql(LOCKS_DDL).execute(p).await?;
    }
    if let Pool::Postgres(p) = pool
        && !db::pg_table_exists(p, "engine_sink_locks").await?
    {
        sqlx::raw_sql(PG_LOCKS_DDL).execute(p).await?;
    }
    ensure_commits_table(pool).await
}

async fn ensure_commits_table(pool: &Pool) -> Result<(), sqlx::Error> {
    match pool {
        Pool::MySql(p) if db::table_exists(p, Dialect::MySql, COMMITS_TABLE).await? => Ok(()),
        Pool::MySql(p) => sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS engine_sink_commits (pipeline VARCHAR(191) NOT NULL, sink VARCHAR(191) NOT NULL, \
             epoch BIGINT NOT NULL, PRIMARY KEY (pipeline, sink)) DEFAULT CHARSET=utf8mb4",
        )
        .execute(p)
        .await
        .map(|_| ()),
        Pool::Postgres(p) if db::pg_table_exists(p, COMMITS_TABLE).await? => Ok(()),
        Pool::Postgres(p) => sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS engine_sink_commits (pipeline TEXT NOT NULL, sink TEXT NOT NULL, \
             epoch BIGINT NOT NULL, PRIMARY KEY (pipeline, sink))",
        )
        .execute(p)
        .await
        .map(|_| ()),
        Pool::Sqlite(p) => sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS engine_sink_commits (pipeline TEXT NOT NULL, sink TEXT NOT NULL, \
             epoch INTEGER NOT NULL, PRIMARY KEY (pipeline, sink))",
        )
        .execute(p)
        .await
        .map(|_| ()),
    }
}

/// The last epoch this sink committed, if any: a replayed epoch at or below
/// it is already in the table and is skipped.
pub async fn committed_epoch(pool: &Pool, pipeline: &str, sink: &str) -> Result<Option<i64>, sqlx::Error> {
    const Q: &str = "SELECT epoch FROM engine_sink_commits WHERE pipeline = ? AND sink = ?";
    match pool {
        Pool::MySql(p) => sqlx::query_scalar(Q).bind(pipeline).bind(sink).fetch_optional(p).await,
        Pool::Postgres(p) => {
            sqlx::query_scalar("SELECT epoch FROM engine_sink_commits WHERE pipeline = $1 AND sink = $2")
                .bind(pipeline)
                .bind(sink)
                .fetch_optional(p)
                .await
        }
        Pool::Sqlite(p) => sqlx::query_scalar(Q).bind(pipeline).bind(sink).fetch_optional(p).await,
    }
}

/// Appends one row's values for `columns` to a VALUES tuple.
macro_rules! bind_row {
    ($b:expr, $arrays:expr, $i:expr) => {
        for a in $arrays.iter() {
            let valid = a.is_valid($i);
            match a.data_type() {
                DataType::Int64 => $b.push_bind(valid.then(|| a.as_primitive::<Int64Type>().value($i))),
                DataType::Int32 => $b.push_bind(valid.then(|| a.as_primitive::<Int32Type>().value($i))),
                DataType::UInt64 => $b.push_bind(valid.then(|| a.as_primitive::<UInt64Type>().value($i) as i64)),
                DataType::Float64 => $b.push_bind(valid.then(|| a.as_primitive::<Float64Type>().value($i))),
                DataType::Boolean => $b.push_bind(valid.then(|| a.as_boolean().value($i))),
                _ => $b.push_bind(valid.then(|| a.as_string::<i32>().value($i))),
            };
        }
    };
}

/// Writes the rows in one transaction (statements of at most
/// `rows_per_stmt` rows), plus the epoch marker when given: the marker and
/// the rows commit together or not at all.
async fn write_once(
    s: &Shared,
    arrays: &[ArrayRef],
    rows_per_stmt: usize,
    epoch: Option<u64>,
) -> Result<(), sqlx::Error> {
    let n = arrays.first().map(|a| a.len()).unwrap_or(0);
    macro_rules! marker {
        ($db:ty, $tx:expr, $marker_tail:expr) => {
            if let Some(epoch) = epoch {
                let mut qb = QueryBuilder::<$db>::new("INSERT INTO engine_sink_commits (pipeline, sink, epoch) ");
                qb.push_values([(); 1], |mut b, _| {
                    b.push_bind(s.pipeline.as_str()).push_bind(s.sink.as_str()).push_bind(epoch as i64);
                });
                qb.push($marker_tail);
                qb.build().execute(&mut *$tx).await?;
            }
        };
    }
    macro_rules! run {
        ($db:ty, $pool:expr, $marker_tail:expr) => {{
            let mut tx = $pool.begin().await?;
            let mut start = 0;
            while start < n {
                let end = (start + rows_per_stmt).min(n);
                let mut qb = QueryBuilder::<$db>::new(s.insert_head.as_str());
                qb.push_values(start..end, |mut b, i| {
                    bind_row!(b, arrays, i);
                });
                qb.push(&s.upsert_tail);
                qb.build().execute(&mut *tx).await?;
                start = end;
            }
            marker!($db, tx, $marker_tail);
            tx.commit().await
        }};
    }
    const CONFLICT_EPOCH: &str = " ON CONFLICT (pipeline, sink) DO UPDATE SET epoch = excluded.epoch";
    match &s.pool {
        Pool::MySql(p) => run!(MySql, p, " ON DUPLICATE KEY UPDATE epoch = VALUES(epoch)"),
        Pool::Postgres(p) => match &s.copy {
            Some(plan) => {
                let mut tx = p.begin().await?;
                if n > 0 {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(plan.create.as_str())).execute(&mut *tx).await?;
                    let mut copy = tx.copy_in_raw(&plan.copy).await?;
                    let mut buf = Vec::with_capacity(COPY_CHUNK + 4096);
                    for i in 0..n {
                        copy_text_row(&mut buf, arrays, i);
                        if buf.len() >= COPY_CHUNK {
                            copy.send(std::mem::take(&mut buf)).await?;
                            buf.reserve(COPY_CHUNK + 4096);
                        }
                    }
                    if !buf.is_empty() {
                        copy.send(buf).await?;
                    }
                    copy.finish().await?;
                    let repeats = repeats_a_key(arrays, &plan.key_idx);
                    let mut merged = false;
                    if let Some(insert) = &plan.optimistic
                        && !repeats
                        && !plan.conflicted.load(std::sync::atomic::Ordering::Relaxed)
                    {
                        sqlx::raw_sql("SAVEPOINT engine_plain").execute(&mut *tx).await?;
                        match sqlx::raw_sql(sqlx::AssertSqlSafe(insert.as_str())).execute(&mut *tx).await {
                            Ok(_) => {
                                sqlx::raw_sql("RELEASE SAVEPOINT engine_plain").execute(&mut *tx).await?;
                                merged = true;
                            }
                            // unique_violation: a key is in the table already.
                            Err(e) if db::pg_code(&e) == Some("23505") => {
                                plan.conflicted.store(true, std::sync::atomic::Ordering::Relaxed);
                                sqlx::raw_sql("ROLLBACK TO SAVEPOINT engine_plain").execute(&mut *tx).await?;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    if !merged {
                        let merge = if repeats { &plan.merge_last } else { &plan.merge };
                        sqlx::raw_sql(sqlx::AssertSqlSafe(merge.as_str())).execute(&mut *tx).await?;
                    }
                }
                marker!(Postgres, tx, CONFLICT_EPOCH);
                tx.commit().await
            }
            None => run!(Postgres, p, CONFLICT_EPOCH),
        },
        Pool::Sqlite(p) => run!(Sqlite, p, CONFLICT_EPOCH),
    }
}

/// Whether two rows may share a key: hashes of the key values, so a
/// collision only costs the safe (sorting) merge.
fn repeats_a_key(arrays: &[ArrayRef], key_idx: &[usize]) -> bool {
    use std::hash::{BuildHasher, Hash, Hasher};
    let n = arrays.first().map(|a| a.len()).unwrap_or(0);
    let state = std::collections::hash_map::RandomState::new();
    let mut seen = std::collections::HashSet::with_capacity(n);
    for i in 0..n {
        let mut h = state.build_hasher();
        for &k in key_idx {
            let a = &arrays[k];
            a.is_valid(i).hash(&mut h);
            if a.is_valid(i) {
                match a.data_type() {
                    DataType::Int64 => a.as_primitive::<Int64Type>().value(i).hash(&mut h),
                    DataType::Int32 => a.as_primitive::<Int32Type>().value(i).hash(&mut h),
                    DataType::UInt64 => a.as_primitive::<UInt64Type>().value(i).hash(&mut h),
                    DataType::Float64 => a.as_primitive::<Float64Type>().value(i).to_bits().hash(&mut h),
                    DataType::Boolean => a.as_boolean().value(i).hash(&mut h),
                    _ => a.as_string::<i32>().value(i).hash(&mut h),
                }
            }
        }
        if !seen.insert(h.finish()) {
            return true;
        }
    }
    false
}

/// Bytes of COPY data sent per message.
const COPY_CHUNK: usize = 1 << 20;

/// Appends row `i` in COPY's text format: tab-separated, `\N` for NULL,
/// backslash escapes for backslash, tab, newline and carriage return.
fn copy_text_row(buf: &mut Vec<u8>, arrays: &[ArrayRef], i: usize) {
    use std::io::Write;
    for (c, a) in arrays.iter().enumerate() {
        if c > 0 {
            buf.push(b'\t');
        }
        if !a.is_valid(i) {
            buf.extend_from_slice(b"\\N");
            continue;
        }
        // Writing into a Vec cannot fail.
        let _ = match a.data_type() {
            DataType::Int64 => write!(buf, "{}", a.as_primitive::<Int64Type>().value(i)),
            DataType::Int32 => write!(buf, "{}", a.as_primitive::<Int32Type>().value(i)),
            DataType::UInt64 => write!(buf, "{}", a.as_primitive::<UInt64Type>().value(i)),
            DataType::Float64 => {
                let v = a.as_primitive::<Float64Type>().value(i);
                match (v.is_nan(), v.is_infinite(), v > 0.0) {
                    (true, _, _) => write!(buf, "NaN"),
                    (_, true, true) => write!(buf, "Infinity"),
                    (_, true, false) => write!(buf, "-Infinity"),
                    _ => write!(buf, "{v}"),
                }
            }
            DataType::Boolean => write!(buf, "{}", if a.as_boolean().value(i) { "t" } else { "f" }),
            _ => {
                for &b in a.as_string::<i32>().value(i).as_bytes() {
                    match b {
                        b'\\' => buf.extend_from_slice(b"\\\\"),
                        b'\t' => buf.extend_from_slice(b"\\t"),
                        b'\n' => buf.extend_from_slice(b"\\n"),
                        b'\r' => buf.extend_from_slice(b"\\r"),
                        _ => buf.push(b),
                    }
                }
                Ok(())
            }
        };
    }
    buf.push(b'\n');
}

/// Rows per statement: the configured size, capped by the placeholder
/// limit and by half of max_allowed_packet at this batch's row width.
fn rows_per_statement(s: &Shared, batch: &Batch, dialect: Dialect) -> usize {
    let ncols = s.columns.len().max(1);
    let by_params = dialect.max_params() / ncols;
    let rows = batch.num_rows().max(1);
    // Text-protocol size of a row is close to its Arrow size plus a few
    // bytes of framing per value.
    let row_bytes = batch.records.get_array_memory_size() / rows + 8 * ncols;
    let by_packet = (s.max_packet / 2) / row_bytes.max(1);
    s.batch_rows.min(by_params).min(by_packet).max(1)
}

/// One batch, retried whole on transient errors with exponential backoff
/// and full jitter.
async fn write_batch(s: Arc<Shared>, batch: Batch, epoch: Option<u64>) -> Result<u64, OperatorError> {
    let mut arrays = Vec::with_capacity(s.columns.len());
    for (table_col, input_col) in &s.columns {
        let Some(a) = batch.records.column_by_name(input_col) else {
            let have = batch.records.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>().join(", ");
            return Err(OperatorError::Config(format!(
                "column `{table_col}` maps to input column `{input_col}`, which the input does not have (columns: {have})"
            )));
        };
        let a = match a.data_type() {
            DataType::Int64
            | DataType::Int32
            | DataType::UInt64
            | DataType::Float64
            | DataType::Boolean
            | DataType::Utf8 => a.clone(),
            _ => arrow::compute::cast(a, &DataType::Utf8)
                .map_err(|e| OperatorError::arrow(format!("converting `{input_col}` for the database"), e))?,
        };
        arrays.push(a);
    }
    let rows_per_stmt = rows_per_statement(&s, &batch, s.pool.dialect());
    retry(&s, "writing to", || write_once(&s, &arrays, rows_per_stmt, epoch)).await?;
    Ok(batch.num_rows() as u64)
}

/// Runs `op` until it succeeds, retrying transient errors with exponential
/// backoff and full jitter; the whole transaction is replayed each time.
async fn retry<F, Fut, T>(s: &Shared, what: &str, mut op: F) -> Result<T, OperatorError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 1;
    let mut rotated = false;
    loop {
        let generation = s.rotations.load(std::sync::atomic::Ordering::Acquire);
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if is_access_denied(&e) && !rotated => {
                // Once per failure: a value that did not change means the
                // refusal stands.
                rotated = true;
                if !rotate(s, generation).await {
                    return Err(OperatorError::Data(format!(
                        "{what} table `{}` at {}: {}",
                        s.table,
                        s.shown_url,
                        describe(&e)
                    )));
                }
            }
            Err(e) if is_transient(&e) && attempt < s.max_attempts => {
                let wait = crate::backoff::full_jitter(crate::backoff::cap(Duration::from_millis(100), attempt, 7));
                tracing::warn!(
                    table = %s.table,
                    attempt,
                    error = %describe(&e),
                    wait_ms = wait.as_millis() as u64,
                    "transient database error; replaying the batch"
                );
                metrics::counter!("engine_sql_retries_total", "operator" => s.sink.clone()).increment(1);
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(e) => {
                let why = if is_transient(&e) { format!(" (gave up after {attempt} attempts)") } else { String::new() };
                return Err(OperatorError::Data(format!(
                    "{what} table `{}` at {}: {}{why}",
                    s.table,
                    s.shown_url,
                    describe(&e)
                )));
            }
        }
    }
}

/// After an access-denied: whether `url`'s secret now resolves to a new
/// value (then new connections use it), or already did since the refused
/// attempt started (`generation`).
async fn rotate(s: &Shared, generation: u64) -> bool {
    let Some(rotation) = &s.rotation else { return false };
    let mut url = s.url.lock().await;
    if s.rotations.load(std::sync::atomic::Ordering::Acquire) != generation {
        // Another batch already found the new value while this one ran.
        return true;
    }
    match rotation.refresh("url").await {
        Ok(Some(fresh)) if fresh != *url => match s.pool.set_url(&fresh, &s.tls) {
            Ok(()) => {
                *url = fresh;
                s.rotations.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                tracing::warn!(
                    credential = %rotation.describe("url"),
                    table = %s.table,
                    "the database refused the login (access denied) and the URL's secret now holds a new value: the credential was rotated; going on with it"
                );
                metrics::counter!("engine_secret_rotations_total", "operator" => s.sink.clone()).increment(1);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the rotated URL is unusable");
                false
            }
        },
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(credential = %rotation.describe("url"), error = %e, "resolving the URL again after an access-denied failed");
            false
        }
    }
}

/// Deletes the rows whose natural key is in `batch` (input columns named
/// by `columns`), in one transaction; returns how many rows went.
async fn delete_batch(s: Arc<Shared>, batch: Batch) -> Result<u64, OperatorError> {
    let mut arrays = Vec::with_capacity(s.key_columns.len());
    for (table_col, input_col) in &s.key_columns {
        let Some(a) = batch.records.column_by_name(input_col) else {
            let have = batch.records.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<_>>().join(", ");
            return Err(OperatorError::Config(format!(
                "key column `{table_col}` maps to input column `{input_col}`, which the deletes input does not have (columns: {have})"
            )));
        };
        // Keys bind as integers or text (what `delete_once` knows); other
        // types go as their text, as the write path casts them.
        let a = match a.data_type() {
            DataType::Int64 | DataType::Int32 | DataType::Utf8 => a.clone(),
            _ => arrow::compute::cast(a, &DataType::Utf8)
                .map_err(|e| OperatorError::arrow(format!("converting key `{input_col}` for the database"), e))?,
        };
        arrays.push(a);
    }
    // A few hundred keys per statement keep it well inside every limit.
    let per_stmt = (s.pool.dialect().max_params() / arrays.len().max(1)).clamp(1, 500);
    retry(&s, "deleting from", || delete_once(&s, &arrays, per_stmt)).await
}

async fn delete_once(s: &Shared, arrays: &[ArrayRef], per_stmt: usize) -> Result<u64, sqlx::Error> {
    let n = arrays.first().map(|a| a.len()).unwrap_or(0);
    macro_rules! run {
        ($db:ty, $pool:expr) => {{
            let mut tx = $pool.begin().await?;
            let mut deleted = 0;
            let mut start = 0;
            while start < n {
                let end = (start + per_stmt).min(n);
                let mut qb = QueryBuilder::<$db>::new(s.delete_head.as_str());
                qb.push("(");
                for i in start..end {
                    if i > start {
                        qb.push(", ");
                    }
                    qb.push("(");
                    let mut sep = qb.separated(", ");
                    for a in arrays {
                        let valid = a.is_valid(i);
                        match a.data_type() {
                            DataType::Int64 => sep.push_bind(valid.then(|| a.as_primitive::<Int64Type>().value(i))),
                            DataType::Int32 => sep.push_bind(valid.then(|| a.as_primitive::<Int32Type>().value(i))),
                            _ => sep.push_bind(valid.then(|| a.as_string::<i32>().value(i).to_string())),
                        };
                    }
                    qb.push(")");
                }
                qb.push(")");
                deleted += qb.build().execute(&mut *tx).await?.rows_affected();
                start = end;
            }
            tx.commit().await?;
            Ok(deleted)
        }};
    }
    match &s.pool {
        Pool::MySql(p) => run!(MySql, p),
        Pool::Postgres(p) => run!(Postgres, p),
        Pool::Sqlite(p) => run!(Sqlite, p),
    }
}

#[async_trait]
impl Operator for SqlSink {
    async fn process(&mut self, batch: Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        // A batch announcing the schema of an input with no rows: nothing
        // to write, and no reason to connect.
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let shared = self.start().await?;
        let Some(ready) = self.held.replace(batch) else { return Ok(()) };
        while self.in_flight.len() >= self.cfg.connections as usize {
            self.reap_one().await?;
        }
        self.in_flight.spawn(async move { write_batch(shared, ready, None).await.map(|n| (n, 0)) });
        Ok(())
    }

    async fn delete(&mut self, batch: Batch, _out: &mut Collector) -> Result<(), OperatorError> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let shared = self.start().await?;
        while self.in_flight.len() >= self.cfg.connections as usize {
            self.reap_one().await?;
        }
        self.in_flight.spawn(async move { delete_batch(shared, batch).await.map(|n| (0, n)) });
        Ok(())
    }

    fn plan_start(&mut self, plan: &mut crate::plan::Plan) {
        plan.basis = match self.cfg.mode {
            Mode::Upsert => {
                "the sql sink upserts on its key: new and changed rows are not told apart without reading the table"
                    .into()
            }
            Mode::Insert => "the sql sink inserts every row".into(),
        };
    }

    fn summary(&self) -> Option<String> {
        (self.rows_deleted > 0).then(|| {
            format!(
                "{} rows written, {} deleted",
                crate::sources::file::thousands(self.rows_written),
                crate::sources::file::thousands(self.rows_deleted)
            )
        })
    }

    async fn restore(&mut self, resume: &Resume) -> Result<(), OperatorError> {
        self.resumed_from = Some(resume.epoch);
        Ok(())
    }

    async fn on_barrier(&mut self, barrier: Barrier, _out: &mut Collector) -> Result<Snapshot, OperatorError> {
        // Everything before the barrier must be durable before it is
        // acknowledged. The last batch of the epoch and the epoch marker
        // commit in one transaction, so a replay of this epoch is recognised.
        self.drain().await?;
        let shared = self.start().await?;
        self.check_lock().await?;
        match self.held.take() {
            Some(last) => self.rows_written += write_batch(shared, last, Some(barrier.epoch)).await?,
            None => write_marker(&shared, barrier.epoch).await?,
        }
        Ok(Snapshot::None)
    }

    async fn finish(&mut self, _out: &mut Collector) -> Result<(), OperatorError> {
        if let Some(last) = self.held.take() {
            let shared = self.start().await?;
            self.in_flight.spawn(async move { write_batch(shared, last, None).await.map(|n| (n, 0)) });
        }
        self.drain().await?;
        if let Some(s) = &self.shared {
            tracing::info!(table = %s.table, rows = self.rows_written, deleted = self.rows_deleted, "sql sink finished");
        }
        // The pool stays open: barriers still follow the end of input (the
        // run's last checkpoint covers it); `commit` or `abort` closes it.
        Ok(())
    }

    async fn commit(&mut self) -> Result<(), OperatorError> {
        if let Some(s) = &self.shared {
            s.pool.close().await;
        }
        self.unlock_table().await;
        Ok(())
    }

    async fn open(&mut self) -> Result<(), OperatorError> {
        // Connect, check migrations and take the table's lock before any
        // row moves.
        self.start().await.map(|_| ())
    }

    async fn abort(&mut self) {
        self.in_flight.abort_all();
        if let Some(s) = &self.shared {
            s.pool.close().await;
        }
        self.unlock_table().await;
    }
}

/// Records `epoch` as committed (its rows were committed before).
async fn write_marker(s: &Shared, epoch: u64) -> Result<(), OperatorError> {
    write_once(s, &[], 1, Some(epoch)).await.map_err(|e| {
        OperatorError::Data(format!("recording epoch {epoch} in {COMMITS_TABLE} at {}: {}", s.shown_url, describe(&e)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Collector, OperatorStats};
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};
    use arrow::record_batch::RecordBatch;

    /// Each refusal names its own reason: a 65-character name used to be
    /// told it "must be letters, digits and _".
    #[test]
    fn identifiers_are_refused_for_the_right_reason() {
        let reason = |s: &str| match check_ident("table", s) {
            Err(OperatorError::Config(m)) => m,
            other => panic!("{s}: {other:?}"),
        };
        assert!(check_ident("table", &"t".repeat(64)).is_ok());
        let long = reason(&"t".repeat(65));
        assert!(long.contains("too long") && long.contains("65 characters, at most 64"), "{long}");
        assert!(reason("").contains("must not be empty"));
        assert!(reason("baby names").contains("letters, digits and _"));
        assert!(reason("1names").contains("not starting with a digit"));
        assert!(reason(&"é".repeat(40)).contains("letters, digits and _"));
    }

    /// COPY's text format: a value that looks like an escape, a NULL or a
    /// separator arrives as itself.
    #[test]
    fn copy_text_rows_escape_what_copy_would_read_as_syntax() {
        use arrow::array::{BooleanArray, Float64Array};
        let names: ArrayRef = Arc::new(StringArray::from(vec![Some("a\tb\\N"), Some("line\nbreak\r"), None]));
        let counts: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), None, Some(-3)]));
        let floats: ArrayRef = Arc::new(Float64Array::from(vec![1.5, f64::INFINITY, f64::NAN]));
        let flags: ArrayRef = Arc::new(BooleanArray::from(vec![true, false, true]));
        let arrays = [names, counts, floats, flags];
        let mut buf = Vec::new();
        for i in 0..3 {
            copy_text_row(&mut buf, &arrays, i);
        }
        assert_eq!(
            String::from_utf8(buf).expect("utf-8"),
            "a\\tb\\\\N\t1\t1.5\tt\nline\\nbreak\\r\t\\N\tInfinity\tf\n\\N\t-3\tNaN\tt\n"
        );
    }

    #[test]
    fn a_repeated_key_is_seen_and_distinct_keys_are_not() {
        let names: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "a"]));
        let years: ArrayRef = Arc::new(Int64Array::from(vec![1, 1, 2]));
        let arrays = [names, years];
        assert!(!repeats_a_key(&arrays, &[0, 1]), "(a,1), (b,1), (a,2) are distinct");
        assert!(repeats_a_key(&arrays, &[0]), "a twice");
        assert!(repeats_a_key(&arrays, &[1]), "1 twice");
    }

    #[test]
    fn advisory_lock_keys_are_stable_and_distinct() {
        assert_eq!(pg_lock_key("engine:db.t"), pg_lock_key("engine:db.t"));
        assert_ne!(pg_lock_key("engine:db.t"), pg_lock_key("engine:db.u"));
        assert_ne!(pg_lock_key("engine:db.t"), pg_lock_key("engine:db2.t"));
    }

    fn batch(names: &[&str]) -> Batch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Utf8, false),
            Field::new("c", DataType::Int64, false),
        ]));
        let counts: Vec<i64> = (0..names.len() as i64).collect();
        let rb = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(names.to_vec())), Arc::new(Int64Array::from(counts))],
        );
        Batch::new(rb.expect("batch"))
    }

    /// The exactly-once hook: rows of an epoch and its marker land together,
    /// and the marker tells which epoch is in the table.
    #[tokio::test]
    async fn a_barrier_commits_the_epoch_marker_with_the_rows() {
        let path = std::env::temp_dir().join(format!("engine-sql-epoch-{}-{}.db", std::process::id(), line!()));
        let _ = std::fs::remove_file(&path);
        let url = format!("sqlite://{}", path.display());
        let pool = db::connect(&url, 1, &Tls::default()).await.expect("sqlite");
        if let Pool::Sqlite(p) = &pool {
            sqlx::raw_sql("CREATE TABLE t (name TEXT PRIMARY KEY, c INTEGER NOT NULL)")
                .execute(p)
                .await
                .expect("table");
        }
        let ctx = BuildContext {
            pipeline: "p".into(),
            id: "db".into(),
            batch_size: 10,
            raw_options: serde_json::Value::Null,
            rotation: None,
        };
        let cfg: SqlSinkConfig = serde_json::from_value(serde_json::json!({
            "url": url, "table": "t", "key": ["name"], "columns": { "name": "n", "c": "c" }
        }))
        .expect("config");
        let mut sink = build(&ctx, cfg).expect("build");
        let mut out = Collector::new("db", vec![], Arc::new(OperatorStats::default()), Default::default());
        sink.process(batch(&["a", "b"]), &mut out).await.expect("process");
        sink.process(batch(&["c"]), &mut out).await.expect("process");
        sink.on_barrier(Barrier { epoch: 7 }, &mut out).await.expect("barrier");
        assert_eq!(committed_epoch(&pool, "p", "db").await.expect("epoch"), Some(7));
        // An empty epoch still records its marker.
        sink.on_barrier(Barrier { epoch: 8 }, &mut out).await.expect("barrier");
        sink.process(batch(&["a", "d"]), &mut out).await.expect("process");
        sink.finish(&mut out).await.expect("finish");
        assert_eq!(committed_epoch(&pool, "p", "db").await.expect("epoch"), Some(8));
        if let Pool::Sqlite(p) = &pool {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t").fetch_one(p).await.expect("count");
            assert_eq!(n, 4, "a, b, c, d once each (a upserted)");
        }
        pool.close().await;
        let _ = std::fs::remove_file(&path);
    }
}
