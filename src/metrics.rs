//! In-memory metrics: per query kind count, errors and latency percentiles (HdrHistogram).
//!
//! Recording takes a short lock and no database round trip; a snapshot is cheap enough to take
//! on every health check.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Queries slower than this count as slow (production threshold).
pub const SLOW_QUERY: Duration = Duration::from_millis(500);

/// The recorder every part of the store reports to.
#[derive(Default)]
pub(crate) struct Metrics {
    ops: Mutex<BTreeMap<&'static str, OpStats>>,
}

struct OpStats {
    count: u64,
    errors: u64,
    slow: u64,
    hist: Option<Histogram<u64>>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            count: 0,
            errors: 0,
            slow: 0,
            // 1 us .. 1 h with 3 significant digits; creation only fails for invalid bounds.
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).ok(),
        }
    }
}

impl Metrics {
    /// Records one operation of `kind` that took `elapsed`.
    pub(crate) fn record(&self, kind: &'static str, elapsed: Duration, ok: bool) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let s = ops.entry(kind).or_insert_with(OpStats::new);
        s.count += 1;
        if !ok {
            s.errors += 1;
        }
        if elapsed > SLOW_QUERY {
            s.slow += 1;
        }
        if let Some(h) = s.hist.as_mut() {
            let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
            h.saturating_record(us.max(1));
        }
    }

    pub(crate) fn ops(&self) -> Vec<OpSnapshot> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.iter()
            .map(|(kind, s)| {
                let q = |p: f64| s.hist.as_ref().map_or(0, |h| h.value_at_quantile(p));
                OpSnapshot {
                    kind,
                    count: s.count,
                    errors: s.errors,
                    slow: s.slow,
                    p50_us: q(0.50),
                    p95_us: q(0.95),
                    p99_us: q(0.99),
                    max_us: s.hist.as_ref().map_or(0, |h| h.max()),
                }
            })
            .collect()
    }
}

/// Counts and latency percentiles of one kind of operation.
#[derive(Debug, Clone, Serialize)]
pub struct OpSnapshot {
    /// `get`, `set`, `creds_load`, `creds_save`, `clear`, `commit` (one group commit), ...
    pub kind: &'static str,
    /// Operations recorded.
    pub count: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Operations slower than [`SLOW_QUERY`].
    pub slow: u64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 95th percentile, microseconds.
    pub p95_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Slowest, microseconds.
    pub max_us: u64,
}
