//! The snapshot each store process publishes to `authstate_processes` (migration 0004), so
//! `authstate health` run anywhere sees the live services' in-memory figures.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::CacheStats;
use crate::db::health_sql::ProcessRow;
use crate::db::PoolStats;
use crate::metrics::{OpSnapshot, RecentEvent};

use super::{Check, Status};

/// Recent slow operations and errors included in a published snapshot (each).
pub const PUBLISHED_RECENT: usize = 10;

/// Who a store process is.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// Host name.
    pub host: String,
    /// Operating-system process id.
    pub pid: u32,
    /// Random id of this store (a process may open several stores).
    pub instance: String,
    /// When the store opened, milliseconds since the Unix epoch.
    pub started_at_unix_ms: u64,
}

impl ProcessIdentity {
    /// The identity of a store opened now in this process.
    pub(crate) fn new() -> ProcessIdentity {
        ProcessIdentity {
            host: gethostname::gethostname().to_string_lossy().into_owned(),
            pid: std::process::id(),
            instance: hex::encode(rand::random::<[u8; 8]>()),
            started_at_unix_ms: crate::metrics::now_unix_ms(),
        }
    }
}

/// Outage figures as a snapshot carries them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutageSummary {
    /// The database is considered unreachable.
    pub down: bool,
    /// For how long, milliseconds.
    pub down_for_ms: u64,
    /// Calls kept and not yet replayed.
    pub pending_calls: usize,
    /// Bytes of value text kept.
    pub pending_bytes: usize,
    /// Age of the oldest call not yet in PostgreSQL, milliseconds.
    #[serde(default)]
    pub oldest_pending_ms: u64,
    /// Size of the journal file.
    pub journal_bytes: u64,
    /// Outages since the store opened.
    pub outages: u64,
}

/// One store process's figures and its own verdict on them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessSnapshot {
    /// Who.
    #[serde(flatten)]
    pub id: ProcessIdentity,
    /// When this snapshot was taken, milliseconds since the Unix epoch (its host's clock).
    pub updated_at_unix_ms: u64,
    /// How often the process publishes, milliseconds (a row older than three periods is gone).
    pub publish_interval_ms: u64,
    /// The worst of `checks`.
    pub status: Status,
    /// The process's in-memory checks: slow queries, pool, outage.
    pub checks: Vec<Check>,
    /// Per operation kind.
    pub ops: Vec<OpSnapshot>,
    /// Connection pool now.
    pub pool: PoolStats,
    /// Most connections in use during the last hour.
    #[serde(default)]
    pub pool_peak_in_use_1h: usize,
    /// Read cache.
    pub cache: CacheStats,
    /// Outage state and pending writes.
    pub outage: OutageSummary,
    /// Companies with a live session.
    pub companies_open: usize,
    /// Slow operations in the slow-query window.
    #[serde(default)]
    pub slow_in_window: usize,
    /// The most recent slow operations (at most [`PUBLISHED_RECENT`]).
    #[serde(default)]
    pub recent_slow: Vec<RecentEvent>,
    /// The most recent errors (at most [`PUBLISHED_RECENT`]).
    #[serde(default)]
    pub recent_errors: Vec<RecentEvent>,
}

/// A published snapshot as the command-line tool sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessView {
    /// False when the row was not updated for three publish periods: the process is gone
    /// (crashed or killed; a clean close deletes its row).
    pub live: bool,
    /// Milliseconds since the row was last written, by the database's clock.
    pub age_ms: u64,
    /// What it published.
    pub snapshot: ProcessSnapshot,
}

impl ProcessView {
    /// A row of `authstate_processes`; `None` when its snapshot is not readable (written by
    /// an incompatible version).
    pub(crate) fn from_row(row: &ProcessRow) -> Option<ProcessView> {
        let mut snapshot: ProcessSnapshot = serde_json::from_str(&row.snapshot_json).ok()?;
        // The row's own columns are authoritative.
        snapshot.id.host.clone_from(&row.host);
        snapshot.id.pid = row.pid;
        snapshot.id.instance.clone_from(&row.instance);
        snapshot.id.started_at_unix_ms = row.started_at_unix_ms;
        snapshot.updated_at_unix_ms = row.updated_at_unix_ms;
        let period = Duration::from_millis(snapshot.publish_interval_ms.max(1_000));
        let live = u128::from(row.age_ms) <= (period * 3).as_millis() + 5_000;
        Some(ProcessView {
            live,
            age_ms: row.age_ms,
            snapshot,
        })
    }
}
