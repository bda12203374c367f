//! Per-call latency of the store's basic calls under a few settings side by side, to find
//! where a call's time goes: a `set` of one key, a `get` of one key from PostgreSQL (cache
//! off) and 50 concurrent one-key writers (group commit), each with the lease on and off and
//! with named (cached) and unnamed statements.
//!
//! ```text
//! cargo run --release --example call_latency                  # throwaway cluster
//! DATABASE_URL=... cargo run --release --example call_latency -- --rounds 3 --calls 500
//! ```
//!
//! Settings alternate within each round, so a noisy machine hits them alike; compare the rows
//! of one run. Smoke figures only: the criterion benchmark (`cargo bench --bench store`) is the
//! measurement of record.

use std::time::{Duration, Instant};

use authstate::tempdb::TempCluster;
use authstate::{Config, KeyWrite, PreparedStatements, Store, StoredValue};

/// (name, lease, prepared statements)
const SETTINGS: [(&str, bool, PreparedStatements); 4] = [
    ("lease, named", true, PreparedStatements::On),
    ("lease, unnamed", true, PreparedStatements::Off),
    ("no lease, named", false, PreparedStatements::On),
    ("no lease, unnamed", false, PreparedStatements::Off),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rounds = 2usize;
    let mut calls = 300usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => rounds = args.next().ok_or("--rounds N")?.parse()?,
            "--calls" => calls = args.next().ok_or("--calls N")?.parse()?,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let mut _cluster = None;
    let url = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => url,
        None => {
            let c = TempCluster::start()?;
            c.create_database("latency")?;
            let url = c.url("latency");
            _cluster = Some(c);
            url
        }
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let value = StoredValue::from_json(
            r#"{"private":{"type":"Buffer","data":"AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA="},"public":{"type":"Buffer","data":"BQcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH"}}"#,
        )?;
        println!("median µs per call, {calls} calls each (writers50: {} rounds of 50)", calls / 10);
        println!("| round | setting | set 1 | get 1 (cache off) | writers50 |");
        println!("|---|---|---|---|---|");
        for round in 0..rounds {
            for (i, (name, lease, prepared)) in SETTINGS.iter().enumerate() {
                let mut cfg = Config::from_url(&url)?;
                cfg.lease = *lease;
                cfg.prepared_statements = *prepared;
                cfg.cache.max_bytes = 0;
                let store = Store::open(cfg).await?;
                store.migrate().await?;
                let company = format!("lat-{round}-{i}");
                let s = store.session(&company).await?;
                let put = || KeyWrite::put("pre-key", "1", value.clone());
                s.set(vec![put()?]).await?;
                let mut set1 = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let t = Instant::now();
                    s.set(vec![put()?]).await?;
                    set1.push(t.elapsed());
                }
                let mut get1 = Vec::with_capacity(calls);
                for _ in 0..calls {
                    let t = Instant::now();
                    let found = s.get("pre-key", &["1"]).await?;
                    get1.push(t.elapsed());
                    assert_eq!(found.len(), 1);
                }
                let mut writers = Vec::new();
                for w in 0..50 {
                    writers.push(store.session(&format!("{company}-w{w}")).await?);
                }
                let write = put()?;
                let mut w50 = Vec::new();
                for _ in 0..(calls / 10).max(5) {
                    let t = Instant::now();
                    let sets = writers.iter().map(|s| s.set(vec![write.clone()]));
                    for r in futures_util::future::join_all(sets).await {
                        r?;
                    }
                    w50.push(t.elapsed());
                }
                drop(writers);
                drop(s);
                store.close().await?;
                println!(
                    "| {round} | {name} | {} | {} | {} |",
                    median_us(&mut set1),
                    median_us(&mut get1),
                    median_us(&mut w50)
                );
            }
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

fn median_us(v: &mut [Duration]) -> u128 {
    v.sort_unstable();
    v.get(v.len() / 2).map_or(0, |d| d.as_micros())
}
