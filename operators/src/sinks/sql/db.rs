//! Connections and dialects: turns a URL into a pool, knows how each
//! database spells an upsert and quotes a name, tells a transient error from
//! a permanent one, and keeps credentials out of every message.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{MySqlPool, SqlitePool};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::MySql => "mysql",
            Dialect::Sqlite => "sqlite",
        }
    }

    /// Bound parameters one statement may carry.
    pub fn max_params(self) -> usize {
        match self {
            Dialect::MySql => 65_535,
            Dialect::Sqlite => 32_766,
        }
    }

    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql => format!("`{ident}`"),
            Dialect::Sqlite => format!("\"{ident}\""),
        }
    }
}

/// TLS settings passed through to the driver.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// `disabled`, `preferred`, `required`, `verify_ca`, `verify_identity`.
    pub ssl_mode: Option<String>,
    pub ssl_ca: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Pool {
    MySql(MySqlPool),
    Sqlite(SqlitePool),
}

impl Pool {
    pub fn dialect(&self) -> Dialect {
        match self {
            Pool::MySql(_) => Dialect::MySql,
            Pool::Sqlite(_) => Dialect::Sqlite,
        }
    }

    /// Connections opened from now on log in with `url` (a rotated
    /// password); open ones stay as they are.
    pub fn set_url(&self, url: &str, tls: &Tls) -> Result<(), String> {
        match self {
            Pool::MySql(p) => {
                p.set_connect_options(mysql_options(url, tls)?);
                Ok(())
            }
            Pool::Sqlite(_) => Ok(()),
        }
    }

    pub async fn close(&self) {
        match self {
            Pool::MySql(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}

pub fn dialect_of(url: &str) -> Option<Dialect> {
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Some(Dialect::MySql)
    } else if url.starts_with("sqlite:") {
        Some(Dialect::Sqlite)
    } else {
        None
    }
}

/// The URL with its password replaced, fit for logs and errors.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            // Query parameters may carry secrets too (e.g. ssl keys).
            if u.query().is_some() {
                u.set_query(Some("…"));
            }
            u.to_string()
        }
        Err(_) => url.split('@').next_back().map(|rest| format!("…@{rest}")).unwrap_or_else(|| "<url>".into()),
    }
}

fn mysql_options(url: &str, tls: &Tls) -> Result<MySqlConnectOptions, String> {
    let shown = redact(url);
    let url = url.replacen("mariadb://", "mysql://", 1);
    let mut opts = MySqlConnectOptions::from_str(&url).map_err(|e| format!("invalid URL {shown}: {e}"))?;
    opts = opts.charset("utf8mb4");
    if let Some(mode) = &tls.ssl_mode {
        let m = MySqlSslMode::from_str(mode).map_err(|_| {
            format!("ssl_mode `{mode}` is not one of disabled, preferred, required, verify_ca, verify_identity")
        })?;
        opts = opts.ssl_mode(m);
    }
    if let Some(ca) = &tls.ssl_ca {
        opts = opts.ssl_ca(ca);
    }
    Ok(opts)
}

/// Whether `table` exists in the connection's database. Checked before any
/// `CREATE TABLE IF NOT EXISTS`: MySQL demands the CREATE privilege for that
/// statement even when the table is there, and a least-privilege loader has
/// none.
pub async fn table_exists<'c, E>(executor: E, dialect: Dialect, table: &str) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::MySql>,
{
    debug_assert_eq!(dialect, Dialect::MySql);
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
    )
    .bind(table)
    .fetch_one(executor)
    .await?;
    Ok(n > 0)
}

/// Access denied (MySQL 1045): the password no longer works, perhaps
/// rotated in the vault.
pub fn is_access_denied(e: &sqlx::Error) -> bool {
    mysql_number(e) == Some(1045)
}

pub async fn connect(url: &str, connections: u32, tls: &Tls) -> Result<Pool, String> {
    let shown = redact(url);
    match dialect_of(url) {
        Some(Dialect::MySql) => {
            let opts = mysql_options(url, tls)?;
            let pool = MySqlPoolOptions::new()
                .max_connections(connections.max(1))
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await
                .map_err(|e| format!("cannot connect to {shown}: {}", describe(&e)))?;
            Ok(Pool::MySql(pool))
        }
        Some(Dialect::Sqlite) => {
            let opts = SqliteConnectOptions::from_str(url).map_err(|e| format!("invalid URL {shown}: {e}"))?;
            if let Some(parent) = opts.get_filename().parent()
                && !parent.as_os_str().is_empty()
            {
                std::fs::create_dir_all(parent).map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
            }
            let opts = opts
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(30));
            // SQLite has one writer at a time: more connections only contend.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .map_err(|e| format!("cannot open {shown}: {}", describe(&e)))?;
            Ok(Pool::Sqlite(pool))
        }
        None => Err(format!("unsupported database URL {shown}: use mysql://, mariadb:// or sqlite://")),
    }
}

/// The database file of a `sqlite://` URL.
pub fn sqlite_file(url: &str) -> Option<std::path::PathBuf> {
    let opts = SqliteConnectOptions::from_str(url).ok()?;
    Some(opts.get_filename().to_path_buf())
}

/// MySQL/MariaDB error number, when the error comes from the server.
pub fn mysql_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>().map(|m| m.number()),
        _ => None,
    }
}

/// Worth retrying: the same statement may succeed on another attempt.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            if let Some(n) = mysql_number(e) {
                // deadlock, lock wait timeout, too many connections, server
                // gone away, lost connection, server shutdown, query
                // interrupted, connection killed (MariaDB)
                return matches!(n, 1213 | 1205 | 1040 | 2006 | 2013 | 1053 | 1317 | 1927);
            }
            // SQLite: SQLITE_BUSY, SQLITE_LOCKED.
            matches!(db.code().as_deref(), Some("5") | Some("6"))
        }
        _ => false,
    }
}

/// An error as a user should read it: the server's number and text.
pub fn describe(e: &sqlx::Error) -> String {
    match (e, mysql_number(e)) {
        (sqlx::Error::Database(db), Some(n)) => format!("error {n}: {}", db.message()),
        (sqlx::Error::Database(db), None) => db.message().to_string(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("mysql://app:s3cret@db:3306/x"), "mysql://app:***@db:3306/x");
        assert_eq!(redact("mysql://root@127.0.0.1:3306/test"), "mysql://root@127.0.0.1:3306/test");
        assert!(!redact("mysql://a:pw@h/x?ssl-key=secret").contains("secret"));
        assert!(!redact("not a url: user:pw@host").contains("pw"));
    }
}
