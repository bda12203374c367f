//! Configuration: where the database is, how to reach it, and the store's policies.
//!
//! [`Config::from_env`] reads `DATABASE_URL` or, without it, the libpq `PG*` variables, so the
//! same environment that works for `psql` works here. `sslmode` and `sslrootcert` are handled
//! by us (tokio-postgres knows only disable/prefer/require); TLS goes through rustls.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::error::{Error, Result};

/// How TLS is used for the database connection, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without verifying the certificate (libpq's default).
    #[default]
    Prefer,
    /// TLS always; the certificate is verified only when `sslrootcert` is given (as libpq does).
    Require,
    /// TLS, and the server certificate must chain to `sslrootcert`.
    VerifyCa,
    /// TLS, the certificate must chain to `sslrootcert` and name the host. Use this in production.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(Error::invalid(format!(
                "sslmode must be disable, prefer, require, verify-ca or verify-full, got {other:?}"
            )))
            }
        })
    }
}

/// What writes do while the database is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutagePolicy {
    /// Keep writes in a bounded pending log (and the journal, when configured) and replay them
    /// in order when the database is back. Unless you have special needs this is the safe choice.
    #[default]
    Buffer,
    /// Refuse writes at once with [`Error::ReadOnly`] until the database is back.
    ReadOnly,
}

impl FromStr for OutagePolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "buffer" => Ok(OutagePolicy::Buffer),
            "read-only" | "readonly" => Ok(OutagePolicy::ReadOnly),
            other => Err(Error::invalid(format!(
                "outage policy must be buffer or read-only, got {other:?}"
            ))),
        }
    }
}

/// When a write counts as saved (see the README's "Durability modes").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// A write resolves once it is committed in PostgreSQL (or, during an outage, kept by the
    /// outage policy). Nothing is lost if the host is lost.
    #[default]
    Commit,
    /// A write resolves once it is fsynced to the local journal ([`Config::journal_path`],
    /// required); a background flusher commits the journal to PostgreSQL in order, repeated
    /// writes of a key coalesced (last value wins). For a service that restarts on the same
    /// host: the journal is replayed at the next open. Writes not yet flushed are lost if the
    /// host (its disk) is lost.
    Journal,
}

impl FromStr for Durability {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "commit" => Ok(Durability::Commit),
            "journal" => Ok(Durability::Journal),
            other => Err(Error::invalid(format!(
                "durability must be commit or journal, got {other:?}"
            ))),
        }
    }
}

/// Whether the store's hot statements (`get`, creds, the write) are named prepared statements,
/// prepared once per connection and cached (PostgreSQL then neither parses nor plans them
/// again), or unnamed ones, which the server parses and plans at every call.
///
/// Named statements live on one server connection. A pooler in transaction mode hands each
/// transaction to any server connection, so there they fail ("prepared statement does not
/// exist") or, worse, run another client's statement of the same name, unless the pooler
/// tracks them itself (pgbouncer 1.21+ with `max_prepared_statements` > 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PreparedStatements {
    /// Named when the connection reaches PostgreSQL itself, unnamed behind a pooler: each new
    /// connection compares the backend process id the server announced at login with the one
    /// that runs its statements (`pg_backend_pid()`); a pooler announces its own, so they
    /// differ. Once one connection is seen behind a pooler, the store stays unnamed.
    #[default]
    Auto,
    /// Always named (direct connections, or a pooler that supports them).
    On,
    /// Always unnamed: behind any pooler, whatever its version and settings.
    Off,
}

impl FromStr for PreparedStatements {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(PreparedStatements::Auto),
            "on" | "true" | "1" => Ok(PreparedStatements::On),
            "off" | "false" | "0" => Ok(PreparedStatements::Off),
            other => Err(Error::invalid(format!(
                "prepared_statements must be auto, on or off, got {other:?}"
            ))),
        }
    }
}

/// Time to live per key type: every write sets `expires_at = now() + ttl(type)`, rounded up to
/// a step of 1/128 of the TTL (at most an hour), so that rewrites within a step leave the
/// expiry index alone (HOT updates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TtlPolicy {
    /// TTL of types without an entry in `per_type`.
    pub default: Duration,
    /// TTL by key type.
    pub per_type: HashMap<String, Duration>,
}

impl Default for TtlPolicy {
    /// Production's values: 7 days for lid-mapping, pre-key, session and sender-key, 14 days for
    /// the rest.
    fn default() -> Self {
        let week = Duration::from_secs(7 * 24 * 3600);
        let per_type = ["lid-mapping", "pre-key", "session", "sender-key"]
            .into_iter()
            .map(|t| (t.to_string(), week))
            .collect();
        TtlPolicy {
            default: week * 2,
            per_type,
        }
    }
}

impl TtlPolicy {
    /// The TTL that applies to `key_type`.
    pub fn ttl(&self, key_type: &str) -> Duration {
        self.per_type.get(key_type).copied().unwrap_or(self.default)
    }
}

/// Bounds of the in-memory read cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries (keys, known-absent keys and creds) kept.
    pub max_entries: usize,
    /// Most bytes of value text kept.
    pub max_bytes: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 200_000,
            max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Health thresholds (production's values by default), alert cooldowns, and how often the
/// store samples itself and publishes its process snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// An operation slower than this is a slow query (warning).
    pub slow_query: Duration,
    /// This many slow queries within [`HealthConfig::slow_window`] are critical.
    pub slow_critical_count: usize,
    /// The window in which slow queries are counted.
    pub slow_window: Duration,
    /// Pool usage (connections in use / maximum) above this is a warning.
    pub pool_usage_warning: f64,
    /// More callers than this waiting for a connection is critical.
    pub pool_waiting_critical: usize,
    /// More expired keys than this is a warning.
    pub expired_warning: u64,
    /// More expired keys than this is critical.
    pub expired_critical: u64,
    /// Most expired rows the histogram query reads (it says when it stopped there): far above
    /// the critical threshold, and it bounds the cost of the background check that runs every
    /// `db_check_interval` (an index-only range scan of at most this many entries).
    pub expired_scan_limit: u64,
    /// Least time between two alerts about slow queries (also the database and outage).
    pub cooldown_queries: Duration,
    /// Least time between two alerts about the pool.
    pub cooldown_pool: Duration,
    /// Least time between two alerts about expired keys.
    pub cooldown_expired: Duration,
    /// How often the pool is sampled and the in-memory checks run (alerts without callers).
    pub sample_interval: Duration,
    /// How often the background checks also ask the database (reachability, expired keys).
    pub db_check_interval: Duration,
    /// How long one health query may take before its check is reported unknown.
    pub query_timeout: Duration,
    /// How often the process snapshot is written to `authstate_processes`; `None`: never.
    pub publish_interval: Option<Duration>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            slow_query: Duration::from_millis(500),
            slow_critical_count: 3,
            slow_window: Duration::from_secs(300),
            pool_usage_warning: 0.8,
            pool_waiting_critical: 5,
            expired_warning: 100,
            expired_critical: 500,
            expired_scan_limit: 100_000,
            cooldown_queries: Duration::from_secs(300),
            cooldown_pool: Duration::from_secs(300),
            cooldown_expired: Duration::from_secs(1800),
            sample_interval: Duration::from_secs(10),
            db_check_interval: Duration::from_secs(60),
            query_timeout: Duration::from_secs(5),
            publish_interval: Some(Duration::from_secs(15)),
        }
    }
}

/// Everything the store needs to run. Build it with [`Config::from_env`] or [`Config::from_url`]
/// and adjust the public fields.
#[derive(Clone)]
pub struct Config {
    /// Connection parameters (host, port, user, password, dbname...) without TLS settings.
    pub pg: tokio_postgres::Config,
    /// TLS mode.
    pub ssl_mode: SslMode,
    /// PEM file with the root certificate(s) the server must chain to (verify-ca/verify-full).
    pub ssl_root_cert: Option<PathBuf>,
    /// Most connections in the pool.
    pub pool_size: usize,
    /// Longest wait to open a connection or get one from the pool.
    pub connect_timeout: Duration,
    /// Longest a statement may run; also the client-side bound on any database call.
    pub statement_timeout: Duration,
    /// Connections idle for longer are closed.
    pub idle_timeout: Option<Duration>,
    /// Read cache bounds.
    pub cache: CacheConfig,
    /// TTL per key type.
    pub ttl: TtlPolicy,
    /// Coalesce concurrent writes into shared commits. Off means one transaction per call.
    pub group_commit: bool,
    /// Parallel writer lanes for group commit (calls of one company always use the same lane).
    /// Fewer lanes make fewer, larger commits (PostgreSQL's cost is per statement more than
    /// per row); two keep one company's huge login burst from delaying everyone else.
    pub write_lanes: usize,
    /// Most statements a writer lane sends before the first of them is answered (pipelining on
    /// one connection): over a slow link a write then waits one round trip instead of waiting
    /// for the commit in flight first. 1 turns pipelining off (a proxy that cannot pipeline).
    pub pipeline_depth: usize,
    /// Send ahead only as far as the link's latency warrants (measured by each lane), up to
    /// `pipeline_depth`: on a fast link statements in flight mostly split group commits (more
    /// statements, more database CPU), so a lane sends only as many as the server can run
    /// while one crosses the link. Off: always up to `pipeline_depth` (tests that need a known
    /// depth). For the least database CPU on a fast link, set `pipeline_depth` to 1.
    pub pipeline_pacing: bool,
    /// What writes do during an outage.
    pub outage_policy: OutagePolicy,
    /// Append-only journal for writes accepted during an outage (and every write in
    /// [`Durability::Journal`], which requires it); replayed on start.
    pub journal_path: Option<PathBuf>,
    /// When a write resolves: committed in PostgreSQL (default) or fsynced to the journal.
    pub durability: Durability,
    /// Journal durability: how long the flusher lets writes gather before it commits the
    /// next batch. Longer coalesces more rewrites of a key into one and makes fewer commits
    /// (less PostgreSQL work, and less CPU taken from the service's own thread), and keeps
    /// more in the journal (the lag: what a lost host loses). Default 50 ms: with 10 ms the
    /// benchmark's journal messaging ran ~25 % slower on 2 cores (the flusher's commits
    /// competing for them); longer gained nothing more.
    pub journal_flush_interval: Duration,
    /// Bound on writes kept during an outage (bytes of value text).
    pub max_pending_bytes: usize,
    /// Run the operator cleanup (`authstate cleanup`) (default types and batch) in-process this often; `None`
    /// (the default) leaves cleanup to `authstate cleanup`.
    pub cleanup_every: Option<Duration>,
    /// Health thresholds, alert cooldowns and the process snapshot.
    pub health: HealthConfig,
    /// One writer per company: a session holds the company's lease, a second process opening
    /// it gets `LOCKED` (or waits, [`crate::Store::session_wait`]), and every write is fenced
    /// by the lease. On by default; off only when a single process uses the database.
    pub lease: bool,
    /// How long a lease lives without a heartbeat: the longest an account stays blocked after
    /// its holder died (SIGKILL, host gone). Default 30 s.
    pub lease_expiry: Duration,
    /// How often the held leases are renewed (one statement for all of them). Default 10 s,
    /// so two heartbeats in a row may fail (a short network stall, a database failover, a
    /// long GC pause) before a lease can be taken over.
    pub lease_heartbeat: Duration,
    /// Where writes acknowledged during an outage are written when they cannot be applied
    /// because another holder took the lease over meanwhile. Default: next to the journal
    /// (`<journal>.lost`), else `authstate-lost-<pid>.jsonl` in the temp directory.
    pub lost_writes_path: Option<PathBuf>,
    /// The host name written into lease rows (default: the machine's host name). In journal
    /// durability a lease row records the host whose journal may hold unflushed writes, and
    /// only a store with the same host name may take it over: set this to a stable name when
    /// the journal's disk outlives the machine's host name (a container whose volume is
    /// reattached to its replacement).
    pub lease_host: Option<String>,
    /// Named (cached) or unnamed statements; see [`PreparedStatements`]. Default `Auto`. Also
    /// set by `prepared_statements=auto|on|off` in the URL (or key=value string) or the
    /// `AUTHSTATE_PREPARED_STATEMENTS` variable.
    pub prepared_statements: PreparedStatements,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("database", &self.describe())
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("cache", &self.cache)
            .field("group_commit", &self.group_commit)
            .field("write_lanes", &self.write_lanes)
            .field("pipeline_depth", &self.pipeline_depth)
            .field("pipeline_pacing", &self.pipeline_pacing)
            .field("outage_policy", &self.outage_policy)
            .field("journal_path", &self.journal_path)
            .field("durability", &self.durability)
            .field("journal_flush_interval", &self.journal_flush_interval)
            .field("max_pending_bytes", &self.max_pending_bytes)
            .field("cleanup_every", &self.cleanup_every)
            .field("health", &self.health)
            .field("lease", &self.lease)
            .field("lease_expiry", &self.lease_expiry)
            .field("lease_heartbeat", &self.lease_heartbeat)
            .field("lost_writes_path", &self.lost_writes_path)
            .field("lease_host", &self.lease_host)
            .field("prepared_statements", &self.prepared_statements)
            .finish_non_exhaustive()
    }
}

impl Config {
    /// Defaults around the given connection parameters.
    pub fn new(pg: tokio_postgres::Config) -> Config {
        Config {
            pg,
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
            pool_size: 20,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            idle_timeout: Some(Duration::from_secs(600)),
            cache: CacheConfig::default(),
            ttl: TtlPolicy::default(),
            group_commit: true,
            write_lanes: 2,
            pipeline_depth: 32,
            pipeline_pacing: true,
            outage_policy: OutagePolicy::Buffer,
            journal_path: None,
            durability: Durability::Commit,
            journal_flush_interval: Duration::from_millis(50),
            max_pending_bytes: 64 * 1024 * 1024,
            cleanup_every: None,
            health: HealthConfig::default(),
            lease: true,
            lease_expiry: Duration::from_secs(30),
            lease_heartbeat: Duration::from_secs(10),
            lost_writes_path: None,
            lease_host: None,
            prepared_statements: PreparedStatements::Auto,
        }
    }

    /// Reads `DATABASE_URL`, or the libpq `PG*` variables when it is not set, plus
    /// `PGSSLMODE`/`PGSSLROOTCERT`.
    pub fn from_env() -> Result<Config> {
        match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => Config::from_url(&url),
            _ => Config::from_pg_env(),
        }
    }

    /// Parses a `postgres://` URL or a libpq `key=value` string. Variables `PGSSLMODE` and
    /// `PGSSLROOTCERT` fill in what the string does not say.
    pub fn from_url(url: &str) -> Result<Config> {
        let (rest, ssl) = split_ssl_params(url)?;
        let pg = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| Error::invalid(format!("bad database URL: {e}")))?;
        let mut cfg = Config::new(pg);
        cfg.apply_ssl(ssl)?;
        cfg.finish_pg();
        Ok(cfg)
    }

    fn from_pg_env() -> Result<Config> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut pg = tokio_postgres::Config::new();
        let host = var("PGHOST").unwrap_or_else(|| {
            if std::path::Path::new("/var/run/postgresql").is_dir() {
                "/var/run/postgresql".into()
            } else {
                "localhost".into()
            }
        });
        for h in host.split(',') {
            pg.host(h);
        }
        if let Some(p) = var("PGPORT") {
            let port = p
                .parse::<u16>()
                .map_err(|_| Error::invalid(format!("PGPORT is not a port: {p:?}")))?;
            pg.port(port);
        }
        let user = var("PGUSER")
            .or_else(|| var("USER"))
            .unwrap_or_else(|| "postgres".into());
        pg.user(&user);
        if let Some(pw) = var("PGPASSWORD") {
            pg.password(pw);
        }
        pg.dbname(var("PGDATABASE").unwrap_or(user));
        if let Some(app) = var("PGAPPNAME") {
            pg.application_name(&app);
        }
        let mut cfg = Config::new(pg);
        if let Some(t) = var("PGCONNECT_TIMEOUT") {
            let secs: u64 = t
                .parse()
                .map_err(|_| Error::invalid(format!("PGCONNECT_TIMEOUT is not seconds: {t:?}")))?;
            cfg.connect_timeout = Duration::from_secs(secs.max(1));
        }
        cfg.apply_ssl(SslParams::default())?;
        cfg.finish_pg();
        Ok(cfg)
    }

    fn apply_ssl(&mut self, ssl: SslParams) -> Result<()> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let Some(mode) = ssl.mode.or_else(|| env("PGSSLMODE")) {
            self.ssl_mode = mode.parse()?;
        }
        if let Some(root) = ssl.root_cert.or_else(|| env("PGSSLROOTCERT")) {
            self.ssl_root_cert = Some(PathBuf::from(root));
        }
        if let Some(t) = ssl.connect_timeout {
            self.connect_timeout = t;
        }
        if let Some(p) = ssl
            .prepared_statements
            .or_else(|| env("AUTHSTATE_PREPARED_STATEMENTS"))
        {
            self.prepared_statements = p.parse()?;
        }
        Ok(())
    }

    fn finish_pg(&mut self) {
        if self.pg.get_application_name().is_none() {
            self.pg.application_name("authstate");
        }
    }

    /// The connection described without its password, for logs and the health report:
    /// `postgres://user@host:port/dbname?sslmode=...`.
    pub fn describe(&self) -> String {
        let user = self.pg.get_user().unwrap_or("");
        let hosts: Vec<String> = self
            .pg
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(s) => s.clone(),
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .collect();
        let ports: Vec<String> = self.pg.get_ports().iter().map(u16::to_string).collect();
        let mode = match self.ssl_mode {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        };
        format!(
            "postgres://{user}@{}:{}/{}?sslmode={mode}",
            hosts.join(","),
            if ports.is_empty() {
                "5432".to_string()
            } else {
                ports.join(",")
            },
            self.pg.get_dbname().unwrap_or("")
        )
    }
}

/// What a connection string says that tokio-postgres does not take from it.
#[derive(Default)]
struct SslParams {
    mode: Option<String>,
    root_cert: Option<String>,
    connect_timeout: Option<Duration>,
    prepared_statements: Option<String>,
}

/// Takes `sslmode`, `sslrootcert`, `connect_timeout` and `prepared_statements` out of a URL or
/// key=value string: tokio-postgres does not know verify-ca/verify-full, sslrootcert, nor the
/// store's own `prepared_statements`.
fn split_ssl_params(url: &str) -> Result<(String, SslParams)> {
    let mut ssl = SslParams::default();
    let mut take = |k: &str, v: String| -> Result<bool> {
        match k {
            "sslmode" => ssl.mode = Some(v),
            "sslrootcert" => ssl.root_cert = Some(v),
            "prepared_statements" => ssl.prepared_statements = Some(v),
            "connect_timeout" => {
                let secs: u64 = v.parse().map_err(|_| {
                    Error::invalid(format!("connect_timeout is not seconds: {v:?}"))
                })?;
                ssl.connect_timeout = Some(Duration::from_secs(secs.max(1)));
            }
            "sslcert" | "sslkey" => {
                return Err(Error::invalid(
                    "client certificates (sslcert/sslkey) are not supported",
                ))
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let trimmed = url.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_string(), ssl));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode_str(v).decode_utf8_lossy().into_owned();
            if !take(k, value)? {
                kept.push(pair);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((rest, ssl))
    } else {
        let mut kept = Vec::new();
        for (k, v, raw) in key_value_pairs(trimmed)? {
            if !take(&k, v)? {
                kept.push(raw);
            }
        }
        Ok((kept.join(" "), ssl))
    }
}

/// Splits a libpq `key=value key='quoted value'` string, keeping each pair's raw text.
fn key_value_pairs(s: &str) -> Result<Vec<(String, String, String)>> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        let start = i;
        let mut key = String::new();
        while i < chars.len() && chars[i] != '=' && !chars[i].is_whitespace() {
            key.push(chars[i]);
            i += 1;
        }
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() || chars[i] != '=' {
            return Err(Error::invalid(format!(
                "bad connection string near {key:?}: expected key=value"
            )));
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i] == '\'' {
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
            if i >= chars.len() {
                return Err(Error::invalid("bad connection string: unterminated quote"));
            }
            i += 1;
        } else {
            while i < chars.len() && !chars[i].is_whitespace() {
                if chars[i] == '\\' && i + 1 < chars.len() {
                    i += 1;
                }
                value.push(chars[i]);
                i += 1;
            }
        }
        out.push((key, value, chars[start..i].iter().collect()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_verify_full() {
        let c = Config::from_url(
            "postgres://app:s3cret@db.example.com:6432/wa?sslmode=verify-full&sslrootcert=%2Fetc%2Froot.crt&application_name=x",
        )
        .unwrap();
        assert_eq!(c.ssl_mode, SslMode::VerifyFull);
        assert_eq!(c.ssl_root_cert, Some(PathBuf::from("/etc/root.crt")));
        assert_eq!(c.pg.get_dbname(), Some("wa"));
        assert_eq!(c.pg.get_ports(), &[6432]);
        assert_eq!(c.pg.get_application_name(), Some("x"));
    }

    #[test]
    fn password_never_in_debug_or_describe() {
        let c = Config::from_url("postgres://app:s3cret@localhost/wa").unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!c.describe().contains("s3cret"));
        let c = Config::from_url("host=localhost password='s3 cret' dbname=wa sslmode=require")
            .unwrap();
        assert!(!format!("{c:?}").contains("s3 cret"));
        assert_eq!(c.ssl_mode, SslMode::Require);
        assert_eq!(c.pg.get_password(), Some("s3 cret".as_bytes()));
    }

    #[test]
    fn prepared_statements_from_the_url() {
        let c =
            Config::from_url("postgres://app@pgbouncer:6432/wa?prepared_statements=off").unwrap();
        assert_eq!(c.prepared_statements, PreparedStatements::Off);
        assert_eq!(c.pg.get_dbname(), Some("wa"));
        let c = Config::from_url("host=db dbname=wa prepared_statements=on").unwrap();
        assert_eq!(c.prepared_statements, PreparedStatements::On);
        let e = Config::from_url("host=db prepared_statements=sometimes").unwrap_err();
        assert_eq!(e.code(), "INVALID");
    }

    #[test]
    fn bad_sslmode_is_refused() {
        let e = Config::from_url("postgres://localhost/x?sslmode=maybe").unwrap_err();
        assert_eq!(e.code(), "INVALID");
    }

    #[test]
    fn ttl_defaults() {
        let t = TtlPolicy::default();
        assert_eq!(t.ttl("session"), Duration::from_secs(7 * 86400));
        assert_eq!(t.ttl("app-state-sync-key"), Duration::from_secs(14 * 86400));
    }
}
