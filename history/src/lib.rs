//! Run history: one row per run of a pipeline in `<state>/history.db`
//! (SQLite, WAL), written by `engine run --state DIR` and, later, by
//! `engine serve` for the runs it starts. A run is recorded as `running`
//! when it starts and finished with its outcome, exit code, figures and
//! report; a row still `running` whose process is gone is a lost run.
//!
//! This crate owns the schema and its queries; it knows nothing of how a
//! run is executed or reported (the engine hands in a [`Finished`]).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Serialize;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("run history at {path}: {cause}")]
    Db { path: String, cause: String },
}

/// The history of one state directory.
pub struct History {
    pool: SqlitePool,
    path: PathBuf,
}

/// A run as it starts.
#[derive(Clone, Debug)]
pub struct Started {
    pub id: String,
    pub pipeline: String,
    /// `cli`, `schedule`, `catch-up`, `retry`, `api`.
    pub trigger: String,
    /// Who asked (the API's caller, the user running the CLI).
    pub by: Option<String>,
    pub started_at_ms: i64,
    pub pid: u32,
    pub resumed_from: Option<u64>,
}

/// A run as it ended.
#[derive(Clone, Debug)]
pub struct Finished {
    pub ended_at_ms: i64,
    /// `completed`, `failed`, `interrupted`, `aborted`, `up_to_date`.
    pub outcome: String,
    pub exit_code: i32,
    pub failed_operator: Option<String>,
    pub error: Option<String>,
    pub checkpoints: u64,
    pub rows_read: u64,
    pub rows_rejected: u64,
    /// Per-operator figures, as the end-of-run report has them.
    pub report: serde_json::Value,
}

/// One row of the history.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Run {
    pub id: String,
    pub pipeline: String,
    pub trigger: String,
    pub by: Option<String>,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub failed_operator: Option<String>,
    pub error: Option<String>,
    pub resumed_from: Option<i64>,
    pub checkpoints: Option<i64>,
    pub rows_read: Option<i64>,
    pub rows_rejected: Option<i64>,
    pub pid: i64,
    pub report: Option<serde_json::Value>,
}

/// Whether process `pid` is alive: it exists and is not a zombie (a dead
/// process its new parent has not reaped, as in a container whose init
/// does not reap).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Which runs [`History::find`] returns.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub pipeline: Option<String>,
    pub outcome: Option<String>,
    pub trigger: Option<String>,
    pub limit: u32,
}

const COLUMNS: &str = "id, pipeline, trigger, by, started_at_ms, ended_at_ms, outcome, exit_code, failed_operator,
    error, resumed_from, checkpoints, rows_read, rows_rejected, pid, report";

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    trigger TEXT NOT NULL,
    by TEXT,
    started_at_ms INTEGER NOT NULL,
    ended_at_ms INTEGER,
    outcome TEXT NOT NULL,
    exit_code INTEGER,
    failed_operator TEXT,
    error TEXT,
    resumed_from INTEGER,
    checkpoints INTEGER,
    rows_read INTEGER,
    rows_rejected INTEGER,
    pid INTEGER NOT NULL,
    report TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_pipeline ON runs (pipeline, started_at_ms);";

impl History {
    /// Opens (creating) `<dir>/history.db`.
    pub async fn open(dir: &Path) -> Result<History, HistoryError> {
        let path = dir.join("history.db");
        let err = |cause: String| HistoryError::Db { path: path.display().to_string(), cause };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(|e| err(e.to_string()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool =
            SqlitePoolOptions::new().max_connections(2).connect_with(opts).await.map_err(|e| err(e.to_string()))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(|e| err(e.to_string()))?;
        Ok(History { pool, path })
    }

    fn err(&self, e: sqlx::Error) -> HistoryError {
        HistoryError::Db { path: self.path.display().to_string(), cause: e.to_string() }
    }

    pub async fn started(&self, s: &Started) -> Result<(), HistoryError> {
        sqlx::query(
            "INSERT INTO runs (id, pipeline, trigger, by, started_at_ms, outcome, resumed_from, pid)
             VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.pipeline)
        .bind(&s.trigger)
        .bind(&s.by)
        .bind(s.started_at_ms)
        .bind(s.resumed_from.map(|e| e as i64))
        .bind(s.pid as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn finished(&self, id: &str, f: &Finished) -> Result<(), HistoryError> {
        sqlx::query(
            "UPDATE runs SET ended_at_ms = ?, outcome = ?, exit_code = ?, failed_operator = ?, error = ?,
             checkpoints = ?, rows_read = ?, rows_rejected = ?, report = ? WHERE id = ?",
        )
        .bind(f.ended_at_ms)
        .bind(&f.outcome)
        .bind(f.exit_code)
        .bind(&f.failed_operator)
        .bind(&f.error)
        .bind(f.checkpoints as i64)
        .bind(f.rows_read as i64)
        .bind(f.rows_rejected as i64)
        .bind(f.report.to_string())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Runs still `running` whose process is gone (killed with the machine
    /// or by kill -9) become `lost`; returns their ids.
    pub async fn mark_lost(&self, alive: &dyn Fn(u32) -> bool) -> Result<Vec<String>, HistoryError> {
        let rows = sqlx::query("SELECT id, pid FROM runs WHERE outcome = 'running'")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let mut lost = Vec::new();
        for r in rows {
            let (id, pid): (String, i64) = (r.get(0), r.get(1));
            if !alive(pid as u32) {
                sqlx::query("UPDATE runs SET outcome = 'lost' WHERE id = ? AND outcome = 'running'")
                    .bind(&id)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| self.err(e))?;
                lost.push(id);
            }
        }
        Ok(lost)
    }

    /// The newest runs first, of one pipeline or all.
    pub async fn list(&self, pipeline: Option<&str>, limit: u32) -> Result<Vec<Run>, HistoryError> {
        self.find(&Filter { pipeline: pipeline.map(str::to_string), limit, ..Filter::default() }).await
    }

    /// The newest runs first that pass `f`.
    pub async fn find(&self, f: &Filter) -> Result<Vec<Run>, HistoryError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM runs
             WHERE (? IS NULL OR pipeline = ?) AND (? IS NULL OR outcome = ?) AND (? IS NULL OR trigger = ?)
             ORDER BY started_at_ms DESC, id DESC LIMIT ?"
        )))
        .bind(&f.pipeline)
        .bind(&f.pipeline)
        .bind(&f.outcome)
        .bind(&f.outcome)
        .bind(&f.trigger)
        .bind(&f.trigger)
        .bind(f.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(row_to_run).collect())
    }

    /// Per pipeline and outcome: how many runs, and when the newest of them
    /// ended (ms since the epoch; `None` while none has an end).
    pub async fn outcomes(&self) -> Result<Vec<(String, String, i64, Option<i64>)>, HistoryError> {
        let rows =
            sqlx::query("SELECT pipeline, outcome, COUNT(*), MAX(ended_at_ms) FROM runs GROUP BY pipeline, outcome")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect())
    }

    /// One run.
    pub async fn get(&self, id: &str) -> Result<Option<Run>, HistoryError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM runs WHERE id = ?")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(row.as_ref().map(row_to_run))
    }

    /// A scheduled slot that did not run (`skipped`, `missed`), with why.
    pub async fn not_run(
        &self,
        id: &str,
        pipeline: &str,
        slot_ms: i64,
        outcome: &str,
        why: &str,
    ) -> Result<(), HistoryError> {
        sqlx::query(
            "INSERT OR IGNORE INTO runs (id, pipeline, trigger, started_at_ms, ended_at_ms, outcome, error, pid)
             VALUES (?, ?, 'schedule', ?, ?, ?, ?, 0)",
        )
        .bind(id)
        .bind(pipeline)
        .bind(slot_ms)
        .bind(slot_ms)
        .bind(outcome)
        .bind(why)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Ends a run its own process could not end (it was killed, or never
    /// started): only a row still `running`, or none yet, is written.
    /// Returns whether it wrote.
    pub async fn end_if_running(
        &self,
        s: &Started,
        ended_at_ms: i64,
        outcome: &str,
        exit_code: Option<i32>,
        error: &str,
    ) -> Result<bool, HistoryError> {
        let done = sqlx::query(
            "INSERT INTO runs (id, pipeline, trigger, by, started_at_ms, ended_at_ms, outcome, exit_code, error, pid)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET ended_at_ms = excluded.ended_at_ms, outcome = excluded.outcome,
               exit_code = excluded.exit_code, error = excluded.error
             WHERE runs.outcome = 'running'",
        )
        .bind(&s.id)
        .bind(&s.pipeline)
        .bind(&s.trigger)
        .bind(&s.by)
        .bind(s.started_at_ms)
        .bind(ended_at_ms)
        .bind(outcome)
        .bind(exit_code)
        .bind(error)
        .bind(s.pid as i64)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

fn row_to_run(r: &sqlx::sqlite::SqliteRow) -> Run {
    let report: Option<String> = r.get(15);
    Run {
        id: r.get(0),
        pipeline: r.get(1),
        trigger: r.get(2),
        by: r.get(3),
        started_at_ms: r.get(4),
        ended_at_ms: r.get(5),
        outcome: r.get(6),
        exit_code: r.get(7),
        failed_operator: r.get(8),
        error: r.get(9),
        resumed_from: r.get(10),
        checkpoints: r.get(11),
        rows_read: r.get(12),
        rows_rejected: r.get(13),
        pid: r.get(14),
        report: report.and_then(|t| serde_json::from_str(&t).ok()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_are_recorded_listed_and_lost_ones_marked() {
        let dir = tempfile::tempdir().unwrap();
        let h = History::open(dir.path()).await.unwrap();
        let start = |id: &str, t: i64, pid: u32| Started {
            id: id.into(),
            pipeline: "babynames".into(),
            trigger: "cli".into(),
            by: Some("ops".into()),
            started_at_ms: t,
            pid,
            resumed_from: None,
        };
        h.started(&start("a", 1, 1)).await.unwrap();
        h.finished(
            "a",
            &Finished {
                ended_at_ms: 5,
                outcome: "failed".into(),
                exit_code: 1,
                failed_operator: Some("db".into()),
                error: Some("connection refused".into()),
                checkpoints: 2,
                rows_read: 10,
                rows_rejected: 1,
                report: serde_json::json!({"operators": []}),
            },
        )
        .await
        .unwrap();
        h.started(&start("b", 7, 4_000_000)).await.unwrap();
        let lost = h.mark_lost(&|pid| pid != 4_000_000 && pid != 1).await.unwrap();
        assert_eq!(lost, ["b"]);
        let runs = h.list(Some("babynames"), 10).await.unwrap();
        assert_eq!(
            runs.iter().map(|r| (r.id.as_str(), r.outcome.as_str())).collect::<Vec<_>>(),
            [("b", "lost"), ("a", "failed")]
        );
        assert_eq!(runs[1].failed_operator.as_deref(), Some("db"));
        assert_eq!(runs[1].report, Some(serde_json::json!({"operators": []})));
        assert!(h.list(Some("other"), 10).await.unwrap().is_empty());
    }
}
