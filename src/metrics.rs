//! In-memory metrics: per operation kind count, errors and latency percentiles (HdrHistogram),
//! the recent slow operations and errors, and the connection pool's history.
//!
//! Recording takes a short lock and no database round trip; a snapshot is cheap enough to take
//! on every health check and every Prometheus scrape. This module is a leaf: the store feeds it
//! (operations from the sessions and the write path, pool samples from a background task).

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Operations slower than this count as slow (production threshold).
pub const SLOW_QUERY: Duration = Duration::from_millis(500);

/// Recent slow operations and recent errors kept each (for `authstate health --verbose`).
pub const RECENT_EVENTS: usize = 50;

/// Pool samples kept: one hour at the store's 10 s sampling period.
pub const POOL_HISTORY: usize = 360;

/// Upper bounds (seconds) of the Prometheus latency histogram buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The recorder every part of the store reports to.
pub(crate) struct Metrics {
    inner: Mutex<Inner>,
    pool: Mutex<VecDeque<PoolSample>>,
    /// Operations slower than this count as slow.
    slow_query: Duration,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(SLOW_QUERY)
    }
}

#[derive(Default)]
struct Inner {
    ops: BTreeMap<&'static str, OpStats>,
    /// Newest last; each slow operation with its monotonic time, for windowed counts.
    slow: VecDeque<(Instant, RecentEvent)>,
    errors: VecDeque<RecentEvent>,
}

struct OpStats {
    count: u64,
    errors: u64,
    slow: u64,
    /// Sum of all latencies, microseconds (the histogram's `_sum`).
    sum_us: u128,
    hist: Option<Histogram<u64>>,
}

impl OpStats {
    fn new() -> OpStats {
        OpStats {
            count: 0,
            errors: 0,
            slow: 0,
            sum_us: 0,
            // 1 us .. 1 h with 3 significant digits; creation only fails for invalid bounds.
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).ok(),
        }
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, v: T, cap: usize) {
    while q.len() >= cap {
        q.pop_front();
    }
    q.push_back(v);
}

/// Milliseconds since the Unix epoch, now.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Metrics {
    /// A recorder that counts operations slower than `slow_query` as slow.
    pub(crate) fn new(slow_query: Duration) -> Metrics {
        Metrics {
            inner: Mutex::default(),
            pool: Mutex::default(),
            slow_query,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every method finishes its bookkeeping before it could panic: a poisoned lock is fine.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one operation of `kind` that took `elapsed`.
    pub(crate) fn record(&self, kind: &'static str, elapsed: Duration, ok: bool) {
        self.record_event(kind, elapsed, if ok { None } else { Some(String::new()) });
    }

    /// Records one operation and, when it failed, its error for the recent-errors list.
    pub(crate) fn record_result<T>(
        &self,
        kind: &'static str,
        elapsed: Duration,
        result: &Result<T, Error>,
    ) {
        self.record_event(
            kind,
            elapsed,
            result.as_ref().err().map(ToString::to_string),
        );
    }

    fn record_event(&self, kind: &'static str, elapsed: Duration, error: Option<String>) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let mut inner = self.lock();
        let s = inner.ops.entry(kind).or_insert_with(OpStats::new);
        s.count += 1;
        s.sum_us += u128::from(us);
        if error.is_some() {
            s.errors += 1;
        }
        let slow = elapsed > self.slow_query;
        if slow {
            s.slow += 1;
        }
        if let Some(h) = s.hist.as_mut() {
            h.saturating_record(us.max(1));
        }
        let event = RecentEvent {
            kind: Cow::Borrowed(kind),
            at_unix_ms: now_unix_ms(),
            duration_us: us,
            error: error.filter(|e| !e.is_empty()),
        };
        if slow {
            push_bounded(
                &mut inner.slow,
                (Instant::now(), event.clone()),
                RECENT_EVENTS,
            );
        }
        if event.error.is_some() {
            push_bounded(&mut inner.errors, event, RECENT_EVENTS);
        }
    }

    /// Slow operations that finished within the last `window` (at most [`RECENT_EVENTS`]).
    pub(crate) fn slow_within(&self, window: Duration) -> usize {
        let inner = self.lock();
        inner
            .slow
            .iter()
            .filter(|(at, _)| at.elapsed() <= window)
            .count()
    }

    /// Recent slow operations and errors, oldest first.
    pub(crate) fn recent(&self) -> (Vec<RecentEvent>, Vec<RecentEvent>) {
        let inner = self.lock();
        (
            inner.slow.iter().map(|(_, e)| e.clone()).collect(),
            inner.errors.iter().cloned().collect(),
        )
    }

    pub(crate) fn ops(&self) -> Vec<OpSnapshot> {
        let inner = self.lock();
        inner
            .ops
            .iter()
            .map(|(kind, s)| {
                let q = |p: f64| s.hist.as_ref().map_or(0, |h| h.value_at_quantile(p));
                let buckets = LATENCY_BUCKETS
                    .iter()
                    .map(|&le| {
                        let bound = (le * 1e6) as u64;
                        s.hist
                            .as_ref()
                            .map_or(0, |h| h.count_between(0, bound).min(s.count))
                    })
                    .collect();
                OpSnapshot {
                    kind: Cow::Borrowed(*kind),
                    count: s.count,
                    errors: s.errors,
                    slow: s.slow,
                    sum_us: u64::try_from(s.sum_us).unwrap_or(u64::MAX),
                    p50_us: q(0.50),
                    p95_us: q(0.95),
                    p99_us: q(0.99),
                    max_us: s.hist.as_ref().map_or(0, |h| h.max()),
                    buckets,
                }
            })
            .collect()
    }

    /// Keeps one pool sample (the oldest beyond [`POOL_HISTORY`] is dropped).
    pub(crate) fn sample_pool(&self, sample: PoolSample) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        push_bounded(&mut pool, sample, POOL_HISTORY);
    }

    /// The pool samples, oldest first.
    pub(crate) fn pool_history(&self) -> Vec<PoolSample> {
        let pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        pool.iter().copied().collect()
    }
}

/// Counts and latency percentiles of one kind of operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpSnapshot {
    /// `get`, `set`, `creds_load`, `creds_save`, `clear`, `commit` (one group commit), ...
    pub kind: Cow<'static, str>,
    /// Operations recorded.
    pub count: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Operations slower than the slow-query threshold ([`SLOW_QUERY`] by default).
    pub slow: u64,
    /// Sum of all latencies, microseconds.
    #[serde(default)]
    pub sum_us: u64,
    /// Median latency, microseconds.
    pub p50_us: u64,
    /// 95th percentile, microseconds.
    pub p95_us: u64,
    /// 99th percentile, microseconds.
    pub p99_us: u64,
    /// Slowest, microseconds.
    pub max_us: u64,
    /// Operations at or below each bound of [`LATENCY_BUCKETS`] (cumulative).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<u64>,
}

/// One slow or failed operation, for `--verbose` views.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecentEvent {
    /// The operation kind.
    pub kind: Cow<'static, str>,
    /// When it finished, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// How long it took, microseconds.
    pub duration_us: u64,
    /// Its error, when it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The connection pool at one moment.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoolSample {
    /// When, milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// Configured maximum.
    pub max_size: usize,
    /// Connections open.
    pub size: usize,
    /// Open and idle.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slow_operations_and_errors_are_kept_bounded() {
        let m = Metrics::default();
        for _ in 0..(RECENT_EVENTS + 5) {
            m.record("get", SLOW_QUERY + Duration::from_millis(1), true);
        }
        m.record_result::<()>(
            "set",
            Duration::from_millis(1),
            &Err(Error::database("boom")),
        );
        m.record("get", Duration::from_millis(1), true);
        let (slow, errors) = m.recent();
        assert_eq!(slow.len(), RECENT_EVENTS);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].error.as_deref().unwrap_or("").contains("boom"));
        assert_eq!(m.slow_within(Duration::from_secs(60)), RECENT_EVENTS);
        let ops = m.ops();
        let get = ops.iter().find(|o| o.kind == "get").unwrap();
        assert_eq!(
            (get.count, get.slow),
            (RECENT_EVENTS as u64 + 6, RECENT_EVENTS as u64 + 5)
        );
        // One fast operation is under the 1 ms bucket bound... and every one under 10 s.
        assert_eq!(get.buckets.len(), LATENCY_BUCKETS.len());
        assert_eq!(*get.buckets.last().unwrap(), get.count);
        assert!(get.buckets.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn pool_history_keeps_the_last_hour() {
        let m = Metrics::default();
        for i in 0..(POOL_HISTORY + 10) {
            m.sample_pool(PoolSample {
                at_unix_ms: i as u64,
                ..PoolSample::default()
            });
        }
        let h = m.pool_history();
        assert_eq!(h.len(), POOL_HISTORY);
        assert_eq!(h[0].at_unix_ms, 10);
    }
}
