//! The store's metrics in the Prometheus/OpenMetrics text format, written by the
//! `prometheus-client` crate (the Prometheus project's Rust client) from a snapshot taken at
//! scrape time, so recording stays a plain in-memory update.
//!
//! Names follow the Prometheus conventions: base units (`_seconds`, `_bytes`), `_total`
//! counters, one `op` label per operation kind. Serve it with [`CONTENT_TYPE`].

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::metrics::LATENCY_BUCKETS;

use super::{Check, MetricsSnapshot};

/// The HTTP `Content-Type` of [`crate::Store::prometheus`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Debug)]
struct Snapshot {
    m: MetricsSnapshot,
    checks: Vec<Check>,
}

type R = Result<(), std::fmt::Error>;

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<Unit>, v: f64) -> R {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?;
    g.encode(m)
}

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> R {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, None, c.metric_type())?;
    c.encode(m)
}

/// A counter with one sample per operation kind.
fn per_op(
    enc: &mut DescriptorEncoder,
    snap: &MetricsSnapshot,
    name: &str,
    help: &str,
    f: impl Fn(&crate::metrics::OpSnapshot) -> u64,
) -> R {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for op in &snap.ops {
        let labels = [("op", &*op.kind)];
        ConstCounter::new(f(op)).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut enc: DescriptorEncoder) -> R {
        let s = &self.m;
        let e = &mut enc;
        per_op(
            e,
            s,
            "authstate_operations",
            "Store operations by kind.",
            |o| o.count,
        )?;
        per_op(
            e,
            s,
            "authstate_operation_errors",
            "Store operations that failed.",
            |o| o.errors,
        )?;
        per_op(
            e,
            s,
            "authstate_slow_operations",
            "Store operations slower than the slow-query threshold (500 ms by default).",
            |o| o.slow,
        )?;
        {
            let mut m = e.encode_descriptor(
                "authstate_operation_duration",
                "Latency of store operations (enqueue to commit for writes).",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            for op in &s.ops {
                // The snapshot's buckets are cumulative; the encoder wants each bucket's own.
                let mut buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
                let mut below = 0u64;
                for (le, &cum) in LATENCY_BUCKETS.iter().zip(&op.buckets) {
                    buckets.push((*le, cum.saturating_sub(below)));
                    below = below.max(cum);
                }
                buckets.push((f64::MAX, op.count.saturating_sub(below)));
                let labels = [("op", &*op.kind)];
                m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    op.sum_us as f64 / 1e6,
                    op.count,
                    &buckets,
                    None,
                )?;
            }
        }
        let p = &s.pool;
        gauge(
            e,
            "authstate_pool_max_connections",
            "Configured pool size.",
            None,
            p.max_size as f64,
        )?;
        gauge(
            e,
            "authstate_pool_open_connections",
            "Connections open.",
            None,
            p.size as f64,
        )?;
        gauge(
            e,
            "authstate_pool_idle_connections",
            "Connections open and idle.",
            None,
            p.available as f64,
        )?;
        gauge(
            e,
            "authstate_pool_waiting_callers",
            "Callers waiting for a connection.",
            None,
            p.waiting as f64,
        )?;
        let c = &s.cache;
        gauge(
            e,
            "authstate_cache_entries",
            "Read cache entries.",
            None,
            c.entries as f64,
        )?;
        gauge(
            e,
            "authstate_cache",
            "Bytes held by the read cache.",
            Some(Unit::Bytes),
            c.bytes as f64,
        )?;
        counter(
            e,
            "authstate_cache_hits",
            "Lookups answered from the cache.",
            c.hits,
        )?;
        counter(
            e,
            "authstate_cache_misses",
            "Lookups that went to the database.",
            c.misses,
        )?;
        let o = &s.outage;
        gauge(
            e,
            "authstate_outage_active",
            "1 while the database is unreachable (outage mode).",
            None,
            if o.down { 1.0 } else { 0.0 },
        )?;
        gauge(
            e,
            "authstate_outage_duration",
            "Length of the current outage.",
            Some(Unit::Seconds),
            o.down_for_ms as f64 / 1e3,
        )?;
        counter(
            e,
            "authstate_outages",
            "Outages since the store opened.",
            o.outages,
        )?;
        gauge(
            e,
            "authstate_pending_oldest_age",
            "Age of the oldest acknowledged write not yet in PostgreSQL (outage, or journal lag).",
            Some(Unit::Seconds),
            o.oldest_pending_ms as f64 / 1e3,
        )?;
        gauge(
            e,
            "authstate_pending_calls",
            "Acknowledged write calls not yet in PostgreSQL (kept during an outage, or the \
             journal lag in journal durability).",
            None,
            o.pending_calls as f64,
        )?;
        gauge(
            e,
            "authstate_pending",
            "Bytes of acknowledged writes not yet in PostgreSQL.",
            Some(Unit::Bytes),
            o.pending_bytes as f64,
        )?;
        gauge(
            e,
            "authstate_journal",
            "Size of the journal file.",
            Some(Unit::Bytes),
            o.journal_bytes as f64,
        )?;
        gauge(
            e,
            "authstate_companies_open",
            "Companies with a live session.",
            None,
            s.companies_open as f64,
        )?;
        gauge(
            e,
            "authstate_slow_operations_in_window",
            "Slow operations within the slow-query window (5 minutes by default).",
            None,
            s.slow_in_window as f64,
        )?;
        if !self.checks.is_empty() {
            let mut m = e.encode_descriptor(
                "authstate_health_status",
                "Last status of each health check: 0 healthy (or unknown), 1 warning, 2 critical.",
                None,
                MetricType::Gauge,
            )?;
            for ch in &self.checks {
                let labels = [("check", ch.name.as_str())];
                ConstGauge::new(i64::from(ch.status.level())).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The exposition text of `snapshot`, plus the last status of each of `checks`.
pub fn render(snapshot: MetricsSnapshot, checks: Vec<Check>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Snapshot {
        m: snapshot,
        checks,
    }));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a metric above.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        tracing::error!(error = %e, "prometheus encoding failed");
    }
    out
}
