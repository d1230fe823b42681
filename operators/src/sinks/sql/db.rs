//! Connections and dialects: turns a URL into a pool, knows how each
//! database spells an upsert and quotes a name, tells a transient error from
//! a permanent one, and keeps credentials out of every message.

use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{MySqlPool, PgPool, SqlitePool};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Postgres,
    Sqlite,
}

impl Dialect {
    pub fn name(self) -> &'static str {
        match self {
            Dialect::MySql => "mysql",
            Dialect::Postgres => "postgres",
            Dialect::Sqlite => "sqlite",
        }
    }

    /// Bound parameters one statement may carry.
    pub fn max_params(self) -> usize {
        match self {
            Dialect::MySql | Dialect::Postgres => 65_535,
            Dialect::Sqlite => 32_766,
        }
    }

    pub fn quote(self, ident: &str) -> String {
        match self {
            Dialect::MySql => format!("`{ident}`"),
            Dialect::Postgres | Dialect::Sqlite => format!("\"{ident}\""),
        }
    }
}

/// TLS settings passed through to the driver.
#[derive(Clone, Debug, Default)]
pub struct Tls {
    /// `disabled`, `preferred`, `required`, `verify_ca`, `verify_identity`;
    /// on PostgreSQL also libpq's own spellings (`disable`, `allow`,
    /// `prefer`, `require`, `verify-ca`, `verify-full`).
    pub ssl_mode: Option<String>,
    /// CA certificate file (PostgreSQL: `sslrootcert`).
    pub ssl_ca: Option<String>,
}

#[derive(Clone, Debug)]
pub enum Pool {
    MySql(MySqlPool),
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Pool {
    pub fn dialect(&self) -> Dialect {
        match self {
            Pool::MySql(_) => Dialect::MySql,
            Pool::Postgres(_) => Dialect::Postgres,
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
            Pool::Postgres(p) => {
                p.set_connect_options(pg_options(url, tls)?);
                Ok(())
            }
            Pool::Sqlite(_) => Ok(()),
        }
    }

    pub async fn close(&self) {
        match self {
            Pool::MySql(p) => p.close().await,
            Pool::Postgres(p) => p.close().await,
            Pool::Sqlite(p) => p.close().await,
        }
    }
}

pub fn dialect_of(url: &str) -> Option<Dialect> {
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        Some(Dialect::MySql)
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Some(Dialect::Postgres)
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

/// libpq's `sslmode` for the sink's `ssl_mode`: the MySQL spellings the
/// other dialect takes map onto their libpq equivalents (`verify_identity`
/// is `verify-full`), and libpq's own are accepted as they are.
pub fn pg_ssl_mode(mode: &str) -> Result<PgSslMode, String> {
    Ok(match mode.to_ascii_lowercase().replace('_', "-").as_str() {
        "disable" | "disabled" => PgSslMode::Disable,
        "allow" => PgSslMode::Allow,
        "prefer" | "preferred" => PgSslMode::Prefer,
        "require" | "required" => PgSslMode::Require,
        "verify-ca" => PgSslMode::VerifyCa,
        "verify-full" | "verify-identity" => PgSslMode::VerifyFull,
        _ => {
            return Err(format!(
                "ssl_mode `{mode}` is not one of disable, allow, prefer, require, verify-ca, verify-full (libpq's sslmode; disabled, preferred, required, verify_ca and verify_identity are accepted too)"
            ));
        }
    })
}

/// Options of a `postgres://` or `postgresql://` URL. `sslmode` and
/// `sslrootcert` may be given in the URL (libpq's names) or as the sink's
/// `ssl_mode`/`ssl_ca`; the sink's options win.
fn pg_options(url: &str, tls: &Tls) -> Result<PgConnectOptions, String> {
    let shown = redact(url);
    // libpq's default is `prefer`; so is sqlx's. A mode in the URL is
    // checked by the same rules as `ssl_mode`, so a typo is caught here.
    if let Ok(u) = url::Url::parse(url)
        && let Some((_, m)) = u.query_pairs().find(|(k, _)| k == "sslmode" || k == "ssl-mode")
    {
        pg_ssl_mode(&m).map_err(|e| format!("invalid URL {shown}: {e}"))?;
    }
    let mut opts = PgConnectOptions::from_str(url).map_err(|e| format!("invalid URL {shown}: {e}"))?;
    // sqlx logs server notices at INFO (e.g. "relation already exists,
    // skipping" for each staging table); only warnings matter here.
    opts = opts.options([("client_min_messages", "warning")]).application_name("engine");
    if let Some(mode) = &tls.ssl_mode {
        opts = opts.ssl_mode(pg_ssl_mode(mode)?);
    }
    if let Some(ca) = &tls.ssl_ca {
        opts = opts.ssl_root_cert(ca);
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

/// [`table_exists`] on PostgreSQL: in the search path's first schema that
/// has it. Checked before `CREATE TABLE IF NOT EXISTS` for the same reason:
/// PostgreSQL checks the CREATE privilege on the schema first.
pub async fn pg_table_exists<'c, E>(executor: E, table: &str) -> Result<bool, sqlx::Error>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL").bind(table).fetch_one(executor).await
}

/// Access denied (MySQL 1045): the password no longer works, perhaps
/// rotated in the vault.
pub fn is_access_denied(e: &sqlx::Error) -> bool {
    // PostgreSQL: invalid_password, invalid_authorization_specification.
    mysql_number(e) == Some(1045) || matches!(pg_code(e), Some("28P01" | "28000"))
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
        Some(Dialect::Postgres) => {
            let opts = pg_options(url, tls)?;
            let pool = PgPoolOptions::new()
                .max_connections(connections.max(1))
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(opts)
                .await
                .map_err(|e| format!("cannot connect to {shown}: {}", describe(&e)))?;
            Ok(Pool::Postgres(pool))
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
        None => Err(format!(
            "unsupported database URL {shown}: use mysql://, mariadb://, postgres://, postgresql:// or sqlite://"
        )),
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

/// PostgreSQL's SQLSTATE, when the error comes from a PostgreSQL server.
pub fn pg_code(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) => db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>().map(|p| p.code()),
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
            if let Some(code) = pg_code(e) {
                // serialization failure, deadlock, admin/crash shutdown,
                // cannot connect now, too many connections, and the
                // connection exceptions (class 08)
                return matches!(code, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300")
                    || code.starts_with("08");
            }
            // SQLite: SQLITE_BUSY, SQLITE_LOCKED.
            matches!(db.code().as_deref(), Some("5") | Some("6"))
        }
        _ => false,
    }
}

/// An error as a user should read it: the server's number and text.
pub fn describe(e: &sqlx::Error) -> String {
    if let (Some(code), sqlx::Error::Database(db)) = (pg_code(e), e) {
        // PostgreSQL: its SQLSTATE, its message and, when it gives one,
        // the detail (which row, which key).
        let detail = db
            .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
            .and_then(|p| p.detail())
            .map(|d| format!(" ({d})"))
            .unwrap_or_default();
        return format!("error {code}: {}{detail}", db.message());
    }
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
        assert_eq!(redact("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert!(!redact("postgresql://app:s3cret@db/x?sslmode=require&password=pw2").contains("pw2"));
    }

    #[test]
    fn postgres_urls_and_libpq_ssl_modes() {
        assert_eq!(dialect_of("postgres://u@h/db"), Some(Dialect::Postgres));
        assert_eq!(dialect_of("postgresql://u@h/db"), Some(Dialect::Postgres));
        for (given, want) in [
            ("disable", PgSslMode::Disable),
            ("disabled", PgSslMode::Disable),
            ("prefer", PgSslMode::Prefer),
            ("required", PgSslMode::Require),
            ("require", PgSslMode::Require),
            ("verify-ca", PgSslMode::VerifyCa),
            ("verify_ca", PgSslMode::VerifyCa),
            ("verify-full", PgSslMode::VerifyFull),
            ("verify_identity", PgSslMode::VerifyFull),
        ] {
            assert!(
                matches!((pg_ssl_mode(given), want), (Ok(a), b) if std::mem::discriminant(&a) == std::mem::discriminant(&b)),
                "{given}"
            );
        }
        let err = pg_ssl_mode("verify").unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
        let tls = Tls { ssl_mode: Some("verify-full".into()), ssl_ca: Some("/etc/ca.pem".into()) };
        let o = pg_options("postgres://u:pw@db.example:6543/app?sslmode=disable", &tls).expect("options");
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyFull), "the sink's ssl_mode wins over the URL's");
        assert_eq!((o.get_host(), o.get_port(), o.get_database()), ("db.example", 6543, Some("app")));
        let o = pg_options("postgresql://u@h/app?sslmode=verify-ca&sslrootcert=/ca.pem", &Tls::default()).expect("url");
        assert!(matches!(o.get_ssl_mode(), PgSslMode::VerifyCa));
        let e = pg_options("postgres://u:pw@h/app?sslmode=sometimes", &Tls::default()).unwrap_err();
        assert!(e.contains("sslmode") || e.contains("ssl_mode"), "{e}");
        assert!(!e.contains("pw@"), "{e}");
    }
}
