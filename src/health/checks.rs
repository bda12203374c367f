//! The checks: pure functions from measured figures to a [`Check`] with the production
//! thresholds of [`HealthConfig`], a summary and, unless healthy, a recommendation.

use std::time::Duration;

use serde_json::json;

use crate::config::HealthConfig;
use crate::db::health_sql::ExpiredCounts;
use crate::db::PoolStats;
use crate::error::Error;
use crate::metrics::{PoolSample, RecentEvent};
use crate::write::outage::OutageStatus;

use super::{Check, ProcessView, Status};

/// Names of the checks, which are also the alert kinds.
pub const DATABASE: &str = "database";
/// See [`DATABASE`].
pub const SLOW_QUERIES: &str = "slow_queries";
/// See [`DATABASE`].
pub const POOL: &str = "pool";
/// See [`DATABASE`].
pub const EXPIRED_KEYS: &str = "expired_keys";
/// See [`DATABASE`].
pub const OUTAGE: &str = "outage";
/// See [`DATABASE`].
pub const PROCESSES: &str = "processes";

/// Labels of the expired-key age histogram (time since expiry).
pub use crate::db::admin::AGE_BUCKETS;

fn check(name: &str, status: Status, summary: String, rec: Option<&str>) -> Check {
    Check {
        name: name.into(),
        status,
        summary,
        recommendation: if status == Status::Healthy {
            None
        } else {
            rec.map(str::to_string)
        },
        details: json!({}),
    }
}

fn with(mut c: Check, details: serde_json::Value) -> Check {
    c.details = details;
    c
}

/// Human duration: `850 us`, `12.3 ms`, `500 ms`, `1.2 s`, `3 min`.
pub fn fmt_duration(d: Duration) -> String {
    let us = d.as_micros();
    let one = |v: f64, unit: &str| {
        let t = format!("{v:.1}");
        format!("{} {unit}", t.strip_suffix(".0").unwrap_or(&t))
    };
    if us < 1_000 {
        format!("{us} us")
    } else if us < 1_000_000 {
        one(us as f64 / 1e3, "ms")
    } else if us < 120_000_000 {
        one(us as f64 / 1e6, "s")
    } else {
        format!("{} min", us / 60_000_000)
    }
}

/// What a successful probe of the database measured.
#[derive(Debug, Clone)]
pub struct RoundTrip {
    /// Time of one `SELECT 1` on an open connection.
    pub rtt: Duration,
    /// Time to get the connection (zero when it was already open).
    pub connect: Duration,
}

/// The database answers, and how fast.
pub fn database(probe: &Result<RoundTrip, Error>) -> Check {
    match probe {
        Ok(rt) => with(
            check(
                DATABASE,
                Status::Healthy,
                format!("reachable, round trip {}", fmt_duration(rt.rtt)),
                None,
            ),
            json!({
                "reachable": true,
                "round_trip_ms": rt.rtt.as_secs_f64() * 1e3,
                "connect_ms": rt.connect.as_secs_f64() * 1e3,
            }),
        ),
        Err(e) => with(
            check(
                DATABASE,
                Status::Critical,
                format!("unreachable: {e}"),
                Some(
                    "Check that PostgreSQL is running and reachable from this host (address, \
                     port, firewall, credentials, max_connections). Meanwhile the stores keep \
                     serving from memory and keep writes pending (see the outage check).",
                ),
            ),
            json!({ "reachable": false, "error": e.to_string(), "code": e.code() }),
        ),
    }
}

/// Slow operations (slower than `cfg.slow_query`) within `cfg.slow_window`.
pub fn slow_queries(in_window: usize, recent: &[RecentEvent], cfg: &HealthConfig) -> Check {
    let status = if in_window >= cfg.slow_critical_count.max(1) {
        Status::Critical
    } else if in_window > 0 {
        Status::Warning
    } else {
        Status::Healthy
    };
    let window = fmt_duration(cfg.slow_window);
    let threshold = fmt_duration(cfg.slow_query);
    let slowest = recent.iter().max_by_key(|e| e.duration_us);
    let mut summary =
        format!("{in_window} operation(s) slower than {threshold} in the last {window}");
    if let (Some(s), true) = (slowest, in_window > 0) {
        summary.push_str(&format!(
            "; slowest recent: {} {}",
            s.kind,
            fmt_duration(Duration::from_micros(s.duration_us))
        ));
    }
    with(
        check(
            SLOW_QUERIES,
            status,
            summary,
            Some(
                "Find what makes PostgreSQL slow: locks held by other sessions (pg_locks, \
                 pg_stat_activity), an overloaded or undersized server, long transactions, or \
                 a saturated pool. `authstate health --verbose` lists the slow operations.",
            ),
        ),
        json!({
            "in_window": in_window,
            "window_s": cfg.slow_window.as_secs(),
            "threshold_ms": cfg.slow_query.as_millis() as u64,
            "critical_at": cfg.slow_critical_count,
        }),
    )
}

/// Pool usage (connections in use over the maximum) and callers waiting for a connection.
pub fn pool(stats: PoolStats, history: &[PoolSample], cfg: &HealthConfig) -> Check {
    let in_use = stats.size.saturating_sub(stats.available);
    let usage = if stats.max_size == 0 {
        0.0
    } else {
        in_use as f64 / stats.max_size as f64
    };
    let (status, rec) = if stats.waiting > cfg.pool_waiting_critical {
        (
            Status::Critical,
            "Callers are queueing for a database connection. Look for slow queries or locks \
             holding connections (slow_queries check), then raise pool_size if the server has \
             connections to spare.",
        )
    } else if usage > cfg.pool_usage_warning {
        (
            Status::Warning,
            "The pool is nearly full. If this lasts, raise pool_size (the server must allow \
             it: max_connections) or find what holds connections for long.",
        )
    } else {
        (Status::Healthy, "")
    };
    let peak = history
        .iter()
        .map(|s| s.size.saturating_sub(s.available))
        .max()
        .unwrap_or(in_use);
    let peak_waiting = history.iter().map(|s| s.waiting).max().unwrap_or(0);
    with(
        check(
            POOL,
            status,
            format!(
                "{in_use} of {} connections in use ({:.0} %), {} waiting; last hour peak {peak} in use, {peak_waiting} waiting",
                stats.max_size,
                usage * 100.0,
                stats.waiting
            ),
            Some(rec),
        ),
        json!({
            "max_size": stats.max_size,
            "open": stats.size,
            "idle": stats.available,
            "in_use": in_use,
            "waiting": stats.waiting,
            "usage": usage,
            "peak_in_use_1h": peak,
            "peak_waiting_1h": peak_waiting,
            "samples_1h": history.len(),
        }),
    )
}

/// Expired keys still stored, with their age histogram. `None`: not counted because the
/// database is unreachable (the database check says so).
pub fn expired_keys(
    counted: Option<&Result<ExpiredCounts, Error>>,
    company: Option<&str>,
    cfg: &HealthConfig,
) -> Check {
    let whose = company.map_or(String::new(), |c| format!(" of company {c}"));
    let counts = match counted {
        None => {
            return check(
                EXPIRED_KEYS,
                Status::Unknown,
                "not counted: the database is unreachable".into(),
                None,
            )
        }
        Some(Err(e)) => {
            return with(
                check(
                    EXPIRED_KEYS,
                    Status::Warning,
                    format!("expired keys{whose} could not be counted: {e}"),
                    Some(
                        "The counting query failed or timed out: look for long locks on \
                         whatsapp_keys (pg_locks) and check that migration 0002 (the \
                         whatsapp_keys_expires_at_idx index) is applied (`authstate migrate`).",
                    ),
                ),
                json!({ "error": e.to_string() }),
            )
        }
        Some(Ok(c)) => c,
    };
    let status = if counts.total > cfg.expired_critical {
        Status::Critical
    } else if counts.total > cfg.expired_warning {
        Status::Warning
    } else {
        Status::Healthy
    };
    let at_least = if counts.truncated { "at least " } else { "" };
    let hist: Vec<String> = AGE_BUCKETS
        .iter()
        .zip(counts.buckets)
        .map(|(l, n)| format!("{l} {n}"))
        .collect();
    let mut details = serde_json::Map::new();
    details.insert("total".into(), json!(counts.total));
    details.insert("truncated".into(), json!(counts.truncated));
    details.insert("company".into(), json!(company));
    let mut by_age = serde_json::Map::new();
    for (l, n) in AGE_BUCKETS.iter().zip(counts.buckets) {
        by_age.insert((*l).into(), json!(n));
    }
    details.insert("by_age_since_expiry".into(), by_age.into());
    with(
        check(
            EXPIRED_KEYS,
            status,
            format!(
                "{at_least}{} expired key(s){whose} still stored; since expiry: {}",
                counts.total,
                hist.join(", ")
            ),
            Some(
                "Expired keys are not being deleted. Schedule the expiry cleanup (batched \
                 DELETE FROM whatsapp_keys WHERE expires_at < now(), which uses \
                 whatsapp_keys_expires_at_idx); many old ones mean it has not run for a while.",
            ),
        ),
        details.into(),
    )
}

/// In journal durability, the age of the oldest write not yet in PostgreSQL above which the
/// outage check warns (the flusher normally keeps it within a few flush intervals).
pub const JOURNAL_LAG_WARNING: Duration = Duration::from_secs(60);

/// Outage mode and writes pending replay (or, in journal durability, the journal lag).
pub fn outage(o: &OutageStatus) -> Check {
    let pending = format!(
        "{} call(s) ({} bytes) pending, journal {} bytes",
        o.pending_calls, o.pending_bytes, o.journal_bytes
    );
    let (status, summary, rec) = if o.down {
        (
            Status::Critical,
            format!(
                "database unavailable for {}, {pending}; {} reconnect attempt(s); last error: {}",
                fmt_duration(Duration::from_millis(o.down_for_ms)),
                o.reconnect_attempts,
                o.last_error.as_deref().unwrap_or("unknown")
            ),
            if o.policy == "read-only" {
                "Writes are refused until PostgreSQL is back (read-only policy). Bring the \
                 database back; reads of keys in memory keep working."
            } else {
                "Writes are kept in memory (and in the journal, if configured) and replayed \
                 when PostgreSQL is back. Bring the database back before the pending bound \
                 (max_pending_bytes) is reached; do not delete the journal."
            },
        )
    } else if o.durability == "journal" {
        let lag = format!(
            "journal durability, lag: {} call(s) ({} bytes) not yet in PostgreSQL, oldest {}, \
             journal {} bytes",
            o.pending_calls,
            o.pending_bytes,
            fmt_duration(Duration::from_millis(o.oldest_pending_ms)),
            o.journal_bytes
        );
        if o.oldest_pending_ms > JOURNAL_LAG_WARNING.as_millis() as u64 {
            (
                Status::Warning,
                format!("database up, flusher behind: {lag}"),
                "The journal flusher is not keeping up with the writes (or its commits fail: \
                 see the errors in the log). Acknowledged writes are safe in the journal on \
                 this host; they reach PostgreSQL when it catches up.",
            )
        } else {
            (Status::Healthy, format!("database up; {lag}"), "")
        }
    } else if o.pending_calls > 0 {
        (
            Status::Warning,
            format!("database up, replaying: {pending}"),
            "Pending writes are being replayed; if this does not drain, look at the errors \
             in the log and the database check.",
        )
    } else {
        (
            Status::Healthy,
            format!(
                "database up, nothing pending; {} outage(s) since start",
                o.outages
            ),
            "",
        )
    };
    with(
        check(OUTAGE, status, summary, Some(rec)),
        json!({
            "down": o.down,
            "down_for_ms": o.down_for_ms,
            "pending_calls": o.pending_calls,
            "pending_bytes": o.pending_bytes,
            "oldest_pending_ms": o.oldest_pending_ms,
            "journal_bytes": o.journal_bytes,
            "durability": o.durability,
            "outages": o.outages,
            "policy": o.policy,
        }),
    )
}

/// The live store processes, judged by the checks each one published.
pub fn processes(views: &[ProcessView]) -> Check {
    let live: Vec<&ProcessView> = views.iter().filter(|v| v.live).collect();
    let gone = views.len() - live.len();
    let worst = Status::worst(live.iter().map(|v| v.snapshot.status));
    let bad: Vec<String> = live
        .iter()
        .filter(|v| v.snapshot.status == worst && worst != Status::Healthy)
        .map(|v| {
            let what: Vec<String> = v
                .snapshot
                .checks
                .iter()
                .filter(|c| c.status == worst)
                .map(|c| format!("{}: {}", c.name, c.summary))
                .collect();
            format!(
                "{}:{} ({})",
                v.snapshot.id.host,
                v.snapshot.id.pid,
                what.join("; ")
            )
        })
        .collect();
    let mut summary = format!("{} live store process(es), {gone} gone", live.len());
    if !bad.is_empty() {
        summary.push_str(&format!("; {worst}: {}", bad.join(", ")));
    }
    let rec = live
        .iter()
        .flat_map(|v| v.snapshot.checks.iter())
        .find(|c| c.status == worst)
        .and_then(|c| c.recommendation.clone());
    let mut c = check(PROCESSES, worst, summary, rec.as_deref());
    c.details = json!({ "live": live.len(), "gone": gone });
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig::default()
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_micros(850)), "850 us");
        assert_eq!(fmt_duration(Duration::from_millis(500)), "500 ms");
        assert_eq!(fmt_duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5 min");
    }

    #[test]
    fn thresholds_are_production_ones() {
        assert_eq!(slow_queries(0, &[], &cfg()).status, Status::Healthy);
        assert_eq!(slow_queries(2, &[], &cfg()).status, Status::Warning);
        assert_eq!(slow_queries(3, &[], &cfg()).status, Status::Critical);
        let p = |size, available, waiting| PoolStats {
            max_size: 10,
            size,
            available,
            waiting,
        };
        assert_eq!(pool(p(8, 0, 0), &[], &cfg()).status, Status::Healthy);
        assert_eq!(pool(p(9, 0, 0), &[], &cfg()).status, Status::Warning);
        assert_eq!(pool(p(10, 0, 5), &[], &cfg()).status, Status::Warning);
        assert_eq!(pool(p(10, 0, 6), &[], &cfg()).status, Status::Critical);
        let e = |total| {
            Ok(ExpiredCounts {
                total,
                buckets: [total, 0, 0, 0, 0],
                truncated: false,
            })
        };
        assert_eq!(
            expired_keys(Some(&e(100)), None, &cfg()).status,
            Status::Healthy
        );
        assert_eq!(
            expired_keys(Some(&e(101)), None, &cfg()).status,
            Status::Warning
        );
        assert_eq!(
            expired_keys(Some(&e(501)), None, &cfg()).status,
            Status::Critical
        );
        assert_eq!(expired_keys(None, None, &cfg()).status, Status::Unknown);
    }

    #[test]
    fn every_unhealthy_check_says_what_to_do() {
        let checks = [
            slow_queries(3, &[], &cfg()),
            pool(
                PoolStats {
                    max_size: 1,
                    size: 1,
                    available: 0,
                    waiting: 9,
                },
                &[],
                &cfg(),
            ),
            database(&Err(Error::unavailable("refused"))),
            outage(&OutageStatus {
                down: true,
                ..OutageStatus::default()
            }),
        ];
        for c in checks {
            assert_ne!(c.status, Status::Healthy, "{c:?}");
            assert!(
                c.recommendation.as_deref().is_some_and(|r| r.len() > 20),
                "{c:?}"
            );
        }
        assert_eq!(outage(&OutageStatus::default()).recommendation, None);
    }
}
