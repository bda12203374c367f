//! What the key directory costs (issue: "absence known in memory"): the time and bytes to load
//! it for one company with 10,000 keys, and the memory for 1,000 companies of 2,000 keys each.
//!
//! Run: `cargo bench --bench directory` (real PostgreSQL: `DATABASE_URL`, or a throwaway
//! cluster). Prints one line per figure; the load time is the median of 7 fresh stores.

use std::time::{Duration, Instant};

use authstate::tempdb::TempCluster;
use authstate::{Config, Store};
use tokio::runtime::Runtime;

fn rss_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

async fn loaded(store: &Store, companies: usize) -> Duration {
    let t = Instant::now();
    while store.metrics().directory.companies < companies {
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "directories did not load"
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    t.elapsed()
}

fn main() {
    let (_cluster, url) = match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => (None, url),
        None => {
            let c = TempCluster::start().expect("throwaway PostgreSQL");
            c.create_database("directory").expect("database");
            let url = c.url("directory");
            (Some(c), url)
        }
    };
    let rt = Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::open(Config::from_url(&url).expect("config")).await.expect("open");
        store.migrate().await.expect("migrate");
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("sql");
        tokio::spawn(conn);
        // Key ids shaped like Baileys' (JIDs with device suffixes).
        client
            .batch_execute(
                "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value)
                 SELECT 'big', (ARRAY['session','pre-key','sender-key','lid-mapping'])[1 + g % 4],
                        g::text || '@s.whatsapp.net:' || (g % 7), '{}'::jsonb
                 FROM generate_series(1, 10000) g",
            )
            .await
            .expect("insert 10,000 keys");
        store.close().await.expect("close");

        let mut times = Vec::new();
        let mut bytes = 0;
        for _ in 0..7 {
            let store = Store::open(Config::from_url(&url).expect("config")).await.expect("open");
            let opened = Instant::now();
            let _s = store.session("big").await.expect("session");
            let open_returned = opened.elapsed();
            let t = loaded(&store, 1).await;
            times.push(open_returned + t);
            let d = store.metrics().directory;
            assert_eq!(d.keys, 10_000);
            bytes = d.bytes;
            store.close().await.expect("close");
        }
        times.sort();
        println!(
            "directory: 10,000 keys: load {:.1} ms (median of 7; session open itself does not wait), {} bytes ({:.1} per key)",
            times[3].as_secs_f64() * 1e3,
            bytes,
            bytes as f64 / 10_000.0
        );

        client
            .batch_execute(
                "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value)
                 SELECT 'c' || (g / 2000), (ARRAY['session','pre-key','sender-key','lid-mapping'])[1 + g % 4],
                        g::text || '@s.whatsapp.net:' || (g % 7), '{}'::jsonb
                 FROM generate_series(0, 1999999) g",
            )
            .await
            .expect("insert 2,000,000 keys");
        let store = Store::open(Config::from_url(&url).expect("config")).await.expect("open");
        let rss_before = rss_bytes();
        let mut sessions = Vec::new();
        for c in 0..1000 {
            sessions.push(store.session(&format!("c{c}")).await.expect("session"));
        }
        let t = loaded(&store, 1000).await;
        let d = store.metrics().directory;
        assert_eq!(d.keys, 2_000_000);
        println!(
            "directory: 1,000 companies x 2,000 keys: {} bytes counted ({:.1} MiB, {:.1} per key), process RSS grew {:.1} MiB, all loaded in {:.1} s",
            d.bytes,
            d.bytes as f64 / 1048576.0,
            d.bytes as f64 / 2e6,
            (rss_bytes().saturating_sub(rss_before)) as f64 / 1048576.0,
            t.as_secs_f64()
        );
        store.close().await.expect("close");
    });
}
