//! Criterion benchmarks of the core against a real PostgreSQL (`DATABASE_URL`, or a throwaway
//! cluster started here).
//!
//! Run: `cargo bench --bench store`. Groups: `set` (1 key, 100 keys, 812 pre-keys, and a
//! one-statement-per-key baseline for 100 keys), `get` (1 and 1,000 keys, from PostgreSQL with
//! the cache off, and from the cache), `writers50` (50 concurrent single-key writers, with and
//! without group commit).

use std::time::Duration;

use authstate::codec::buffer_node;
use authstate::tempdb::TempCluster;
use authstate::{Config, KeyWrite, Session, Store, StoredValue};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde_json::json;
use tokio::runtime::Runtime;

struct Db {
    _cluster: Option<TempCluster>,
    url: String,
}

fn database() -> Db {
    match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => Db {
            _cluster: None,
            url,
        },
        None => {
            let c = TempCluster::start().expect("throwaway PostgreSQL");
            c.create_database("bench").expect("create database");
            Db {
                url: c.url("bench"),
                _cluster: Some(c),
            }
        }
    }
}

fn pre_key(i: usize) -> StoredValue {
    let mut public = [7u8; 33];
    public[0] = 5;
    public[1] = i as u8;
    StoredValue::from_value(
        json!({"private": buffer_node(&[i as u8; 32]), "public": buffer_node(&public)}),
    )
    .expect("value")
}

fn session_value(i: usize) -> StoredValue {
    let chains: serde_json::Map<String, serde_json::Value> = (0..8)
        .map(|c| (format!("BQ{c:03}{i:08}AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="), json!({"chainKey": {"counter": i, "key": "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80="}, "chainType": 1, "messageKeys": {}})))
        .collect();
    StoredValue::from_value(json!({"_sessions": {"BXf0cmNl": {"registrationId": 1234, "currentRatchet": {"rootKey": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "previousCounter": i}, "_chains": chains}}, "version": "v1"})).expect("value")
}

async fn open(url: &str, tweak: impl FnOnce(&mut Config)) -> Store {
    let mut cfg = Config::from_url(url).expect("config");
    tweak(&mut cfg);
    let store = Store::open(cfg).await.expect("open");
    store.migrate().await.expect("migrate");
    store
}

fn bench_set(c: &mut Criterion, rt: &Runtime, url: &str) {
    let store = rt.block_on(open(url, |_| {}));
    let s: Session = rt.block_on(store.session("bench-set")).expect("session");
    let mut g = c.benchmark_group("set");
    g.sample_size(30).measurement_time(Duration::from_secs(6));
    for n in [1usize, 100, 812] {
        let writes: Vec<KeyWrite> = (0..n)
            .map(|i| KeyWrite::put("pre-key", &i.to_string(), pre_key(i)).expect("write"))
            .collect();
        g.bench_with_input(BenchmarkId::new("keys", n), &writes, |b, w| {
            b.to_async(rt)
                .iter(|| async { s.set(w.clone()).await.expect("set") })
        });
    }
    // Baseline: the old module's way for comparison, one INSERT ... ON CONFLICT per key.
    let cfg = Config::from_url(url).expect("config");
    let client = rt.block_on(async {
        let (client, conn) = cfg
            .pg
            .connect(tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(conn);
        client
    });
    let values: Vec<String> = (0..100).map(|i| pre_key(i).as_str().to_string()).collect();
    g.bench_function("per_key_statements_baseline/100", |b| {
        b.to_async(rt).iter(|| async {
            let tx_sql = "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, updated_at) VALUES ('bench-base', 'pre-key', $1, $2::text::jsonb, now()) ON CONFLICT (company_id, key_type, key_id) DO UPDATE SET value = EXCLUDED.value";
            client.batch_execute("BEGIN").await.expect("begin");
            for (i, v) in values.iter().enumerate() {
                client.execute(tx_sql, &[&i.to_string(), v]).await.expect("insert");
            }
            client.batch_execute("COMMIT").await.expect("commit");
        })
    });
    g.finish();
    rt.block_on(store.close()).expect("close");
}

fn bench_get(c: &mut Criterion, rt: &Runtime, url: &str) {
    let cold = rt.block_on(open(url, |cfg| cfg.cache.max_bytes = 0));
    // `cold` holds the company's lease and seeds it; `warm` reads beside it without a lease.
    let warm = rt.block_on(open(url, |cfg| cfg.lease = false));
    let s_cold = rt.block_on(cold.session("bench-get")).expect("session");
    let s_warm = rt.block_on(warm.session("bench-get")).expect("session");
    let writes: Vec<KeyWrite> = (0..1000)
        .map(|i| {
            KeyWrite::put(
                "session",
                &format!("55{i:09}@s.whatsapp.net:0"),
                session_value(i),
            )
            .expect("write")
        })
        .collect();
    rt.block_on(s_cold.set(writes)).expect("seed");
    let mut g = c.benchmark_group("get");
    g.sample_size(30).measurement_time(Duration::from_secs(6));
    for n in [1usize, 1000] {
        let ids: Vec<String> = (0..n)
            .map(|i| format!("55{i:09}@s.whatsapp.net:0"))
            .collect();
        g.bench_with_input(BenchmarkId::new("postgres", n), &ids, |b, ids| {
            b.to_async(rt).iter(|| async {
                assert_eq!(
                    s_cold.get("session", ids).await.expect("get").len(),
                    ids.len()
                )
            })
        });
        rt.block_on(s_warm.get("session", &ids)).expect("warm up");
        g.bench_with_input(BenchmarkId::new("cached", n), &ids, |b, ids| {
            b.to_async(rt).iter(|| async {
                assert_eq!(
                    s_warm.get("session", ids).await.expect("get").len(),
                    ids.len()
                )
            })
        });
    }
    g.finish();
    rt.block_on(cold.close()).expect("close");
    rt.block_on(warm.close()).expect("close");
}

fn bench_writers(c: &mut Criterion, rt: &Runtime, url: &str) {
    let mut g = c.benchmark_group("writers50");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for group_commit in [true, false] {
        let store = rt.block_on(open(url, |cfg| cfg.group_commit = group_commit));
        let sessions: Vec<Session> = (0..50)
            .map(|w| {
                rt.block_on(store.session(&format!("bench-w{w}")))
                    .expect("session")
            })
            .collect();
        let value = session_value(1);
        let name = if group_commit {
            "group_commit"
        } else {
            "no_group_commit"
        };
        g.bench_function(name, |b| {
            b.to_async(rt).iter(|| async {
                let calls = sessions.iter().map(|s| {
                    let w = vec![
                        KeyWrite::put("session", "peer@s.whatsapp.net:0", value.clone())
                            .expect("write"),
                    ];
                    s.set(w)
                });
                for r in futures_util::future::join_all(calls).await {
                    r.expect("set");
                }
            })
        });
        rt.block_on(store.close()).expect("close");
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let db = database();
    let rt = Runtime::new().expect("runtime");
    bench_set(c, &rt, &db.url);
    bench_get(c, &rt, &db.url);
    bench_writers(c, &rt, &db.url);
}

criterion_group!(store, benches);
criterion_main!(store);
