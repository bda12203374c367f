//! The health report as a plain-text table for terminals and cron mails.

use std::fmt::Write;
use std::time::Duration;

use crate::metrics::{OpSnapshot, RecentEvent};

use super::checks::fmt_duration;
use super::{HealthReport, ProcessSnapshot};

/// `YYYY-MM-DD HH:MM:SS UTC` of milliseconds since the Unix epoch.
pub fn utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn us(v: u64) -> String {
    fmt_duration(Duration::from_micros(v))
}

fn ago(ms: u64) -> String {
    format!("{} ago", fmt_duration(Duration::from_millis(ms)))
}

fn ops_table(out: &mut String, indent: &str, ops: &[OpSnapshot]) {
    if ops.is_empty() {
        let _ = writeln!(out, "{indent}(no operations recorded)");
        return;
    }
    let _ = writeln!(
        out,
        "{indent}{:<12} {:>9} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "OPERATION", "COUNT", "ERRORS", "SLOW", "P50", "P95", "P99", "MAX"
    );
    for o in ops {
        let _ = writeln!(
            out,
            "{indent}{:<12} {:>9} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10}",
            o.kind,
            o.count,
            o.errors,
            o.slow,
            us(o.p50_us),
            us(o.p95_us),
            us(o.p99_us),
            us(o.max_us)
        );
    }
}

fn events(out: &mut String, indent: &str, title: &str, list: &[RecentEvent]) {
    let _ = writeln!(
        out,
        "{indent}{title}: {}",
        if list.is_empty() { "none" } else { "" }
    );
    for e in list.iter().rev() {
        let _ = writeln!(
            out,
            "{indent}  {}  {:<10} {:>10}  {}",
            utc(e.at_unix_ms),
            e.kind,
            us(e.duration_us),
            e.error.as_deref().unwrap_or("")
        );
    }
}

fn process_details(out: &mut String, p: &ProcessSnapshot) {
    let indent = "    ";
    ops_table(out, indent, &p.ops);
    let _ = writeln!(
        out,
        "{indent}cache: {} entries, {} bytes, {} hits, {} misses; pool peak (1 h): {} in use",
        p.cache.entries, p.cache.bytes, p.cache.hits, p.cache.misses, p.pool_peak_in_use_1h
    );
    events(out, indent, "recent slow operations", &p.recent_slow);
    events(out, indent, "recent errors", &p.recent_errors);
}

/// The report as a table: the overall status, one line per check (with its recommendation
/// under it), then this process or the published processes.
pub fn table(r: &HealthReport, verbose: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "authstate health: {}   {}   {}",
        r.status.as_str().to_uppercase(),
        r.database,
        utc(r.checked_at_unix_ms)
    );
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<14} {:<9} SUMMARY", "CHECK", "STATUS");
    for c in &r.checks {
        let _ = writeln!(out, "{:<14} {:<9} {}", c.name, c.status.as_str(), c.summary);
        if let Some(rec) = &c.recommendation {
            let _ = writeln!(out, "{:<24} -> {rec}", "");
        }
    }
    if let Some(p) = &r.process {
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "this process: {} pid {} (store {}), up since {}, {} companies open",
            p.id.host,
            p.id.pid,
            p.id.instance,
            utc(p.id.started_at_unix_ms),
            p.companies_open
        );
        if verbose {
            process_details(&mut out, p);
        } else {
            ops_table(&mut out, "    ", &p.ops);
        }
    }
    if !r.processes.is_empty() {
        let live = r.processes.iter().filter(|v| v.live).count();
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "STORE PROCESSES ({live} live, {} gone)",
            r.processes.len() - live
        );
        let _ = writeln!(
            out,
            "{:<20} {:>7} {:<9} {:>12} {:>8} {:>10} {:>10} {:>9} {:>8} {:>9} {:>9}",
            "HOST",
            "PID",
            "STATUS",
            "UPDATED",
            "OPS",
            "P95 GET",
            "P95 SET",
            "POOL",
            "WAITING",
            "PENDING",
            "COMPANIES"
        );
        for v in &r.processes {
            let p = &v.snapshot;
            let status = if v.live { p.status.as_str() } else { "gone" };
            let ops: u64 = p.ops.iter().map(|o| o.count).sum();
            let p95 = |k: &str| {
                p.ops
                    .iter()
                    .find(|o| o.kind == k)
                    .map_or("-".to_string(), |o| us(o.p95_us))
            };
            let _ = writeln!(
                out,
                "{:<20} {:>7} {:<9} {:>12} {:>8} {:>10} {:>10} {:>9} {:>8} {:>9} {:>9}",
                p.id.host,
                p.id.pid,
                status,
                ago(v.age_ms),
                ops,
                p95("get"),
                p95("set"),
                format!(
                    "{}/{}",
                    p.pool.size.saturating_sub(p.pool.available),
                    p.pool.max_size
                ),
                p.pool.waiting,
                p.outage.pending_calls,
                p.companies_open
            );
            if verbose && v.live {
                for c in p.checks.iter().filter(|c| c.status.level() > 0) {
                    let _ = writeln!(out, "    {} {}: {}", c.name, c.status, c.summary);
                }
                process_details(&mut out, p);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_000_000_123), "2026-11-18 11:06:40 UTC");
    }
}
