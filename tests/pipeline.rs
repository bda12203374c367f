//! Pipelined writes over a slow link: a lane sends the next batch while earlier ones are in
//! flight, keeps per-company order and each caller's own outcome, and handles a failure of an
//! earlier batch as `src/write/lane.rs` defines it.
//!
//! Real PostgreSQL behind the delay proxy (`authstate::delay_proxy`, 10 ms each way). The proxy
//! can hold the server's answers: a test sends a write, holds its answer, and checks that the
//! next write still reaches the server (the proxy counts statement round trips). Nothing here
//! measures time; the waits below are bounds that turn a hang into a failure with a message.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use authstate::delay_proxy::DelayProxy;
use authstate::{Config, ErrorKind, KeyWrite, Store, StoredValue, WriteTicket};
use serde_json::Value;

/// How long a condition may take before the test fails (a bound, not a measurement).
const PATIENCE: Duration = Duration::from_secs(20);
/// The pipeline depth of the lane under test (pacing off, so it is this).
const DEPTH: usize = 8;

/// A proxy to the database of `url` adding 10 ms each way, and a config that goes through it.
async fn proxied(url: &str) -> (DelayProxy, Config) {
    let direct = Config::from_url(url).expect("config");
    let (host, port) = match (direct.pg.get_hosts().first(), direct.pg.get_ports().first()) {
        (Some(tokio_postgres::config::Host::Tcp(h)), Some(p)) => (h.clone(), *p),
        (Some(tokio_postgres::config::Host::Unix(_)), Some(p)) => ("127.0.0.1".to_string(), *p),
        _ => ("127.0.0.1".to_string(), 5432),
    };
    let proxy = DelayProxy::start(
        ([127, 0, 0, 1], 0).into(),
        format!("{host}:{port}"),
        Duration::from_millis(10),
    )
    .await
    .expect("start the delay proxy");
    let mut via = format!(
        "host=127.0.0.1 port={} dbname={} user={} sslmode=disable",
        proxy.local_addr().port(),
        direct.pg.get_dbname().unwrap_or("postgres"),
        direct.pg.get_user().unwrap_or("postgres"),
    );
    if let Some(pw) = direct.pg.get_password() {
        via.push_str(&format!(
            " password='{}'",
            String::from_utf8_lossy(pw).replace('\'', "\\'")
        ));
    }
    let mut cfg = Config::from_url(&via).expect("proxied config");
    // One lane, so every write below shares one pipeline, of a known depth; a small pool.
    cfg.write_lanes = 1;
    cfg.pipeline_depth = DEPTH;
    cfg.pipeline_pacing = false;
    cfg.pool_size = 4;
    cfg.connect_timeout = Duration::from_secs(2);
    cfg.statement_timeout = Duration::from_secs(20);
    (proxy, cfg)
}

fn val(n: i64) -> StoredValue {
    StoredValue::from_json(&format!("{{\"n\":{n}}}")).expect("value")
}

fn put(t: &str, id: &str, n: i64) -> KeyWrite {
    KeyWrite::put(t, id, val(n)).expect("key write")
}

/// Polls `cond` every 5 ms; fails the test after [`PATIENCE`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < PATIENCE,
            "gave up after {PATIENCE:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts a write and waits until the proxy has passed its statement to the server.
async fn send(proxy: &DelayProxy, what: &str, start: impl FnOnce() -> WriteTicket) -> WriteTicket {
    let before = proxy.stats().requests;
    let ticket = start();
    wait_until(&format!("{what} to reach the server"), || {
        proxy.stats().requests > before
    })
    .await;
    ticket
}

/// Every key of `company` as PostgreSQL holds it: `(type, id) -> value`.
async fn db_keys(url: &str, company: &str) -> HashMap<(String, String), Value> {
    let client = common::sql(url).await;
    let rows = client
        .query(
            "SELECT key_type, key_id, value::text FROM whatsapp_keys WHERE company_id = $1",
            &[&company],
        )
        .await
        .expect("read keys");
    rows.iter()
        .map(|r| {
            let v: String = r.get(2);
            (
                (r.get(0), r.get(1)),
                serde_json::from_str(&v).expect("json"),
            )
        })
        .collect()
}

fn n_of(keys: &HashMap<(String, String), Value>, t: &str, id: &str) -> Option<i64> {
    keys.get(&(t.to_string(), id.to_string()))
        .and_then(|v| v.get("n"))
        .and_then(Value::as_i64)
}

async fn open(cfg: Config) -> Store {
    let store = Store::open(cfg).await.expect("open store");
    store.migrate().await.expect("migrate");
    store
}

/// Each write is sent while the answer to the one before is held in the proxy: without
/// pipelining the second would never leave. One statement per write, order kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_are_sent_while_earlier_ones_are_in_flight() {
    let url = common::fresh_database("pipe_inflight").await;
    let (proxy, cfg) = proxied(&url).await;
    let store = open(cfg).await;
    let s = store.session("acme").await.expect("session");
    // Opens the lane's connection and prepares the write statements on it.
    s.set(vec![put("session", "warm", 0)]).await.expect("warm");

    const N: i64 = 5;
    let before = proxy.stats();
    proxy.reset_max_in_flight();
    proxy.hold(true);
    let mut tickets = Vec::new();
    for i in 1..=N {
        let writes = vec![put("session", "x", i), put("pre-key", &i.to_string(), i)];
        let t = send(&proxy, &format!("write {i}"), || {
            s.set_begin(writes).expect("set")
        })
        .await;
        tickets.push(t);
    }
    let held = proxy.stats();
    assert!(
        held.max_in_flight >= N as u64,
        "{N} writes in flight at once, the proxy saw at most {}",
        held.max_in_flight
    );
    proxy.hold(false);
    for (i, t) in tickets.into_iter().enumerate() {
        t.wait()
            .await
            .unwrap_or_else(|e| panic!("write {}: {e}", i + 1));
    }
    let after = proxy.stats();
    let statements = after.requests - before.requests;
    assert!(
        statements <= N as u64 + 1,
        "{N} writes took {statements} statement round trips (at most one each, plus one)"
    );

    let keys = db_keys(&url, "acme").await;
    assert_eq!(n_of(&keys, "session", "x"), Some(N), "the last write wins");
    for i in 1..=N {
        assert_eq!(n_of(&keys, "pre-key", &i.to_string()), Some(i));
    }
    // The cache holds the last write too.
    let got: HashMap<_, _> = s
        .get("session", &["x"])
        .await
        .expect("get")
        .into_iter()
        .collect();
    assert_eq!(got.get("x"), Some(&val(N)));
    store.close().await.expect("close");
}

/// A trigger that refuses any write of a key whose id is `poison` (a real server-side refusal
/// that is no connectivity failure).
async fn add_poison_trigger(url: &str) {
    common::sql(url)
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.key_id = 'poison' THEN RAISE EXCEPTION 'refused by the test trigger'; END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON whatsapp_keys
               FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .expect("create trigger");
}

/// (a) A refused batch in the middle of the pipeline fails only its own callers; the batches
/// sent after it commit, and a retried caller of a merged batch does not land after a later
/// write of the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_fails_alone_and_later_writes_commit() {
    let url = common::fresh_database("pipe_refused").await;
    let (proxy, cfg) = proxied(&url).await;
    let store = open(cfg).await;
    add_poison_trigger(&url).await;
    let s = store.session("acme").await.expect("session");
    let other = store.session("other").await.expect("session");
    s.set(vec![put("session", "warm", 0)]).await.expect("warm");
    other
        .set(vec![put("session", "gone", 0)])
        .await
        .expect("warm");

    // 1. A batch of one caller: it fails, the write sent after it commits.
    proxy.hold(true);
    let poison = send(&proxy, "the refused write", || {
        s.set_begin(vec![put("session", "poison", 1), put("session", "y", 1)])
            .expect("set")
    })
    .await;
    let later = send(&proxy, "the later write", || {
        s.set_begin(vec![put("session", "y", 2)]).expect("set")
    })
    .await;
    proxy.hold(false);
    let e = poison.wait().await.expect_err("the refused write fails");
    assert_eq!(e.kind(), ErrorKind::Database, "{e}");
    assert!(e.message().contains("refused by the test trigger"), "{e}");
    later.wait().await.expect("the later write commits");
    let keys = db_keys(&url, "acme").await;
    assert_eq!(n_of(&keys, "session", "y"), Some(2));
    assert_eq!(n_of(&keys, "session", "poison"), None, "nothing of it");

    // 2. A merged batch [good, refused], then a clear, then a later write of the good key.
    // The pipeline is filled first (answers held) so that these wait in the queue together
    // and are taken as those three batches when the answers come.
    proxy.hold(true);
    let mut fill = Vec::new();
    for i in 0..DEPTH {
        let id = format!("fill{i}");
        fill.push(
            send(&proxy, &format!("filler {i}"), || {
                s.set_begin(vec![put("session", &id, 1)]).expect("set")
            })
            .await,
        );
    }
    let good = s.set_begin(vec![put("session", "z", 1)]).expect("set");
    let bad = s.set_begin(vec![put("session", "poison", 2)]).expect("set");
    let clear = other.clear_begin().expect("clear");
    let last = s.set_begin(vec![put("session", "z", 2)]).expect("set");
    proxy.hold(false);
    for (i, t) in fill.into_iter().enumerate() {
        t.wait().await.unwrap_or_else(|e| panic!("filler {i}: {e}"));
    }
    good.wait()
        .await
        .expect("the good caller of the merged batch");
    let e = bad.wait().await.expect_err("the refused caller");
    assert!(e.message().contains("refused by the test trigger"), "{e}");
    clear.wait().await.expect("the clear after it");
    last.wait().await.expect("the later write");
    let keys = db_keys(&url, "acme").await;
    assert_eq!(
        n_of(&keys, "session", "z"),
        Some(2),
        "the later write of z stands after the retry of the earlier one"
    );
    assert_eq!(n_of(&keys, "session", "poison"), None);
    assert!(db_keys(&url, "other").await.is_empty(), "the clear ran");
    let got: HashMap<_, _> = s
        .get("session", &["z", "poison"])
        .await
        .expect("get")
        .into_iter()
        .collect();
    assert_eq!(got.get("z"), Some(&val(2)));
    assert!(!got.contains_key("poison"));
    store.close().await.expect("close");
}

/// (b) The connection is cut while writes are in flight: all of them go to the outage mode,
/// are acknowledged (buffer policy), and are replayed in order once the database is back,
/// before a write made during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_diverts_every_write_in_flight_and_replays_in_order() {
    let url = common::fresh_database("pipe_cut").await;
    let (proxy, cfg) = proxied(&url).await;
    let store = open(cfg).await;
    let s = store.session("acme").await.expect("session");
    s.set(vec![put("session", "warm", 0)]).await.expect("warm");

    proxy.hold(true);
    let mut tickets = Vec::new();
    for i in 1..=3 {
        let writes = vec![put("session", "x", i), put("pre-key", &i.to_string(), i)];
        tickets.push(
            send(&proxy, &format!("write {i}"), || {
                s.set_begin(writes).expect("set")
            })
            .await,
        );
    }
    // The network goes: open connections die, new ones are refused.
    proxy.refuse(true);
    proxy.cut();
    for (i, t) in tickets.into_iter().enumerate() {
        t.wait()
            .await
            .unwrap_or_else(|e| panic!("write {} is kept by the outage mode: {e}", i + 1));
    }
    assert!(store.metrics().outage.down, "in outage mode");
    let during = s.set(vec![put("session", "x", 4)]);
    during.await.expect("a write during the outage is kept");
    let got: HashMap<_, _> = s
        .get("session", &["x"])
        .await
        .expect("read your writes")
        .into_iter()
        .collect();
    assert_eq!(got.get("x"), Some(&val(4)));

    proxy.hold(false);
    proxy.refuse(false);
    wait_until("the outage to end (replay)", || {
        let o = store.metrics().outage;
        !o.down && o.pending_calls == 0
    })
    .await;
    let keys = db_keys(&url, "acme").await;
    assert_eq!(
        n_of(&keys, "session", "x"),
        Some(4),
        "replayed in order, the outage's write last"
    );
    for i in 1..=3 {
        assert_eq!(n_of(&keys, "pre-key", &i.to_string()), Some(i));
    }
    store.close().await.expect("close");
}
