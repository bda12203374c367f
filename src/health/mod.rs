//! Health: one report with an overall status and one section per check, the alerts raised
//! when a check changes state, the process snapshot each store publishes for
//! `authstate health`, and the Prometheus exposition.
//!
//! The checks are pure functions of what was measured ([`checks`]), so the same rules judge
//! this process (from memory), another process (from its published snapshot) and the database
//! (from one bounded query). The store gathers the inputs and calls them; this module sits
//! above `db` and `write` and below `store`.

pub mod alerts;
pub mod checks;
pub mod process;
pub mod prometheus;
pub mod render;

use serde::{Deserialize, Serialize};

use crate::cache::CacheStats;
use crate::db::PoolStats;
use crate::metrics::{OpSnapshot, PoolSample, RecentEvent};
use crate::write::outage::OutageStatus;

pub use alerts::AlertEvent;
pub use process::{ProcessSnapshot, ProcessView};

/// How a check (or the whole report) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Healthy,
    /// The check could not run (its input was unavailable, e.g. the database is down and
    /// another check says so). Never the overall status; ignored by alerts.
    Unknown,
    /// Look at it soon.
    Warning,
    /// Look at it now.
    Critical,
}

impl Status {
    /// `healthy`, `unknown`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::Unknown => "unknown",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    /// The exit status of `authstate health`: 0 healthy, 1 warning, 2 critical.
    pub fn exit_code(self) -> u8 {
        match self {
            Status::Healthy | Status::Unknown => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        }
    }

    /// 0 healthy (or unknown), 1 warning, 2 critical: the value of the Prometheus gauge.
    pub fn level(self) -> u8 {
        self.exit_code()
    }

    /// The overall status of `statuses`: the worst one, `Unknown` counting as healthy.
    pub fn worst(statuses: impl IntoIterator<Item = Status>) -> Status {
        statuses
            .into_iter()
            .map(|s| {
                if s == Status::Unknown {
                    Status::Healthy
                } else {
                    s
                }
            })
            .max()
            .unwrap_or(Status::Healthy)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One section of the report.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// `database`, `slow_queries`, `pool`, `expired_keys`, `outage` or `processes`; also the
    /// alert kind.
    pub name: String,
    /// How it stands.
    pub status: Status,
    /// What was found, in plain words.
    pub summary: String,
    /// What to do about it, in plain words; present whenever the status is not healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<String>,
    /// The figures behind the summary (JSON object).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// The health report of [`crate::Store::health`] and `authstate health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    /// The worst status of the checks (`healthy`, `warning` or `critical`).
    pub status: Status,
    /// When the report was made, milliseconds since the Unix epoch.
    pub checked_at_unix_ms: u64,
    /// The database, described without its password.
    pub database: String,
    /// One section per check.
    pub checks: Vec<Check>,
    /// This process: its metrics (operations, pool with history, cache, outage, recent slow
    /// operations and errors). Absent in the command-line tool's database-wide report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessSnapshot>,
    /// Every store process that published a snapshot (database-wide report only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessView>,
}

impl HealthReport {
    /// A report of `checks`, its status their worst.
    pub fn new(database: String, checks: Vec<Check>) -> HealthReport {
        HealthReport {
            status: Status::worst(checks.iter().map(|c| c.status)),
            checked_at_unix_ms: crate::metrics::now_unix_ms(),
            database,
            checks,
            process: None,
            processes: Vec::new(),
        }
    }

    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain data with string keys cannot fail; "{}" keeps the type honest.
        serde_json::to_string_pretty(self).unwrap_or_else(|_| "{}".into())
    }

    /// The report as a text table (see [`render`]); `verbose` adds the operations and the
    /// recent slow operations and errors of each process.
    pub fn to_table(&self, verbose: bool) -> String {
        render::table(self, verbose)
    }
}

/// What to include in a report (see [`crate::Store::health_with`]).
#[derive(Debug, Clone, Default)]
pub struct HealthOptions {
    /// Count expired keys of this company only.
    pub company: Option<String>,
    /// Judge this process from memory (slow queries, pool, outage) and include its metrics.
    pub this_process: bool,
    /// Read every process snapshot from `authstate_processes` and judge the live ones.
    pub processes: bool,
}

/// Everything the store measured, for health reports and benchmarks. No database round trip.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsSnapshot {
    /// Per operation kind.
    pub ops: Vec<OpSnapshot>,
    /// Connection pool.
    pub pool: PoolStats,
    /// Pool samples of the last hour (one per sampling period, oldest first).
    pub pool_history: Vec<PoolSample>,
    /// Read cache.
    pub cache: CacheStats,
    /// Outage state and pending writes.
    pub outage: OutageStatus,
    /// Slow operations within the configured window (5 minutes by default).
    pub slow_in_window: usize,
    /// Recent slow operations, oldest first.
    pub recent_slow: Vec<RecentEvent>,
    /// Recent failed operations, oldest first.
    pub recent_errors: Vec<RecentEvent>,
    /// Companies with a live session in this process.
    pub companies_open: usize,
    /// The key directories that answer "absent" during an outage.
    #[serde(default)]
    pub directory: crate::directory::DirectoryStats,
    /// Company leases: held, pending, lost.
    #[serde(default)]
    pub leases: crate::lease::LeaseStatus,
}

impl MetricsSnapshot {
    /// The snapshot of one operation kind, if any was recorded.
    pub fn op(&self, kind: &str) -> Option<&OpSnapshot> {
        self.ops.iter().find(|o| o.kind == kind)
    }
}
