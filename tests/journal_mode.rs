//! Journal durability (`Durability::Journal`) against a real PostgreSQL and real processes: a
//! `set` resolves once fsynced to the journal; the flusher commits in order, coalesced; reads
//! see every acknowledged write; close flushes; SIGKILL loses no acknowledged write; another
//! host cannot take a lease over while a journal may hold unflushed writes.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use authstate::{Config, Durability, ErrorKind, KeyWrite, Store, StoredValue};
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Env vars that turn the ignored `journal_child` test into a writer process.
const CHILD_URL: &str = "AUTHSTATE_JOURNAL_CHILD_URL";
const CHILD_JOURNAL: &str = "AUTHSTATE_JOURNAL_CHILD_JOURNAL";
/// Lines of the child start with this, so libtest's own output is never taken for one.
const TAG: &str = "@@ ";
/// Concurrent writers in the child (so the appender groups several calls per fsync).
const WRITERS: usize = 4;
const COMPANY: &str = "kill";

fn config(url: &str, journal: &Path) -> Config {
    let mut cfg = Config::from_url(url).expect("config");
    cfg.durability = Durability::Journal;
    cfg.journal_path = Some(journal.to_path_buf());
    cfg.pool_size = 4;
    cfg
}

fn val(v: serde_json::Value) -> StoredValue {
    StoredValue::from_value(v).expect("value")
}

fn put(id: &str, v: serde_json::Value) -> KeyWrite {
    KeyWrite::put("pre-key", id, val(v)).expect("key write")
}

/// `n` of a `{"n": n, ...}` value.
fn n_of(v: &StoredValue) -> u64 {
    v.to_value()["n"].as_u64().expect("a value with n")
}

/// The `n` of pre-key `id` of `company` in PostgreSQL itself.
async fn db_n(url: &str, company: &str, id: &str) -> Option<u64> {
    let db = common::sql(url).await;
    db.query_opt(
        "SELECT (value->>'n')::int8 FROM whatsapp_keys \
         WHERE company_id = $1 AND key_type = 'pre-key' AND key_id = $2",
        &[&company, &id],
    )
    .await
    .expect("query")
    .map(|r| r.get::<_, i64>(0) as u64)
}

async fn db_keys(url: &str, company: &str) -> i64 {
    let db = common::sql(url).await;
    db.query_one(
        "SELECT count(*) FROM whatsapp_keys WHERE company_id = $1",
        &[&company],
    )
    .await
    .expect("count")
    .get(0)
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_land_in_order_coalesced_reads_see_them_before_the_flush_and_close_flushes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let j2 = journal.clone();
    let (store, url) = common::store_with("jorder", move |c| {
        c.durability = Durability::Journal;
        c.journal_path = Some(j2);
        // Nothing is flushed before close: what reads see comes from the journal's overlay.
        c.journal_flush_interval = Duration::from_secs(3600);
    })
    .await;
    let s = store.session("acme").await.expect("session");
    // 200 rewrites of one key, deletes and re-creations, a clear in the middle, creds.
    for n in 0..200u64 {
        s.set(vec![put("hot", serde_json::json!({ "n": n }))])
            .await
            .expect("set");
    }
    s.set(vec![put("gone", serde_json::json!({ "n": 1 }))])
        .await
        .expect("set");
    s.clear().await.expect("clear");
    s.set(vec![
        put("after", serde_json::json!({ "n": 7 })),
        put("hot", serde_json::json!({ "n": 500 })),
    ])
    .await
    .expect("set");
    s.set(vec![KeyWrite::delete("pre-key", "after").expect("delete")])
        .await
        .expect("delete");
    s.set(vec![put("after", serde_json::json!({ "n": 8 }))])
        .await
        .expect("set");
    s.save_creds(val(serde_json::json!({ "me": "x", "n": 3 })))
        .await
        .expect("creds");

    // Acknowledged, not in PostgreSQL yet, and read back from memory.
    assert_eq!(db_keys(&url, "acme").await, 0, "nothing flushed yet");
    assert!(file_len(&journal) > 0);
    let got: HashMap<String, u64> = s
        .get("pre-key", &["hot", "gone", "after"])
        .await
        .expect("get")
        .into_iter()
        .map(|(k, v)| (k, n_of(&v)))
        .collect();
    assert_eq!(
        got,
        HashMap::from([("hot".to_string(), 500), ("after".to_string(), 8)])
    );
    let creds = s.load_creds().await.expect("creds").expect("some creds");
    assert_eq!(n_of(&creds), 3);

    // The lag: coalesced to the calls still needed (the clear and what follows it).
    let before = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(30)).await;
    let o = store.metrics().outage;
    assert_eq!(o.durability, "journal");
    assert!(!o.down, "{o:?}");
    assert!(
        o.pending_calls <= 5,
        "200 rewrites of one key coalesce: {o:?}"
    );
    assert!(o.pending_calls >= 3, "{o:?}");
    assert!(o.pending_bytes > 0, "{o:?}");
    assert!(o.oldest_pending_ms >= 30, "{o:?}");
    assert!(o.journal_bytes > 0, "{o:?}");
    let report = store.health().await.expect("health");
    let check = report
        .checks
        .iter()
        .find(|c| c.name == "outage")
        .expect("outage check");
    assert!(check.summary.contains("lag"), "{}", check.summary);
    assert_eq!(
        check.details["pending_calls"].as_u64(),
        Some(o.pending_calls as u64)
    );
    assert!(check.details["oldest_pending_ms"].as_u64() >= Some(30));
    let prom = store.prometheus();
    assert!(
        prom.contains("authstate_pending_oldest_age_seconds"),
        "{prom}"
    );
    let waited = before.elapsed();
    assert!(waited >= Duration::from_millis(30));

    // Close flushes, in order: the final state, the journal emptied.
    let report = store.close().await.expect("close");
    assert!(report.unflushed.is_empty(), "{report:?}");
    assert!(report.flushed_calls >= 3, "{report:?}");
    assert_eq!(file_len(&journal), 0);
    assert_eq!(db_n(&url, "acme", "hot").await, Some(500));
    assert_eq!(db_n(&url, "acme", "after").await, Some(8));
    assert_eq!(db_n(&url, "acme", "gone").await, None, "the clear landed");
    assert_eq!(db_keys(&url, "acme").await, 2);

    // A commit-mode store sees the same.
    let plain = Store::open(Config::from_url(&url).expect("config"))
        .await
        .expect("open");
    let s = plain.session("acme").await.expect("session");
    let creds = s.load_creds().await.expect("creds").expect("creds");
    assert_eq!(n_of(&creds), 3);
    plain.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flusher_commits_in_the_background_and_empties_the_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let j2 = journal.clone();
    let (store, url) = common::store_with("jflush", move |c| {
        c.durability = Durability::Journal;
        c.journal_path = Some(j2);
    })
    .await;
    let s = store.session("acme").await.expect("session");
    // Many concurrent callers: grouped fsyncs; each keeps its own order.
    let mut tickets = Vec::new();
    for n in 0..500u64 {
        let id = format!("k{}", n % 50);
        tickets.push(
            s.set_begin(vec![put(&id, serde_json::json!({ "n": n }))])
                .expect("set"),
        );
    }
    for t in tickets {
        t.wait().await.expect("acknowledged");
    }
    // The flusher catches up by itself (no close): wait for the lag to reach zero.
    tokio::time::timeout(Duration::from_secs(60), async {
        while store.metrics().outage.pending_calls > 0 || file_len(&journal) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the flusher drains the journal");
    for k in 0..50u64 {
        assert_eq!(
            db_n(&url, "acme", &format!("k{k}")).await,
            Some(450 + k),
            "last value wins for k{k}"
        );
    }
    let count = |kind: &str| {
        store
            .metrics()
            .ops
            .iter()
            .find(|o| o.kind == kind)
            .map_or(0, |o| o.count)
    };
    assert!(count("flush") >= 1);
    // One per group of calls written with one fsync (how many calls share one depends on
    // the disk's fsync time, so it is printed, not asserted).
    let appends = count("journal_append");
    assert!(appends >= 1);
    println!("500 calls in {appends} journal appends");
    store.close().await.expect("close");
}

/// Rewrites of a few keys while nothing is flushed: the journal is compacted to the live
/// calls instead of growing, and a crash after that (the store dropped without close) still
/// replays the last value of every key at the next open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_is_compacted_while_nothing_is_flushed_and_replays_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let j2 = journal.clone();
    let (store, url) = common::store_with("jcompact", move |c| {
        c.durability = Durability::Journal;
        c.journal_path = Some(j2);
        c.journal_flush_interval = Duration::from_secs(3600);
    })
    .await;
    let s = store.session("acme").await.expect("session");
    let pad = "x".repeat(3000);
    let mut appended = 0usize;
    for n in 0..800u64 {
        let v = serde_json::json!({ "n": n, "pad": pad });
        appended += v.to_string().len();
        s.set(vec![put(&format!("k{}", n % 5), v)])
            .await
            .expect("set");
    }
    assert!(appended > 2_000_000);
    // The records' length; the file also holds space reserved past them.
    let len = store.metrics().outage.journal_bytes;
    assert!(
        len < 1_100_000,
        "{appended} bytes appended, the journal holds {len}"
    );
    assert!(file_len(&journal) >= len);
    assert_eq!(store.metrics().outage.pending_calls, 5);
    assert_eq!(db_keys(&url, "acme").await, 0, "nothing flushed");
    drop(s);
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut cfg = Config::from_url(&url).expect("config");
    cfg.durability = Durability::Journal;
    cfg.journal_path = Some(journal.clone());
    // The dropped store's lease is still live: the journal's token takes it over.
    let store = Store::open(cfg).await.expect("reopen");
    for k in 0..5u64 {
        assert_eq!(db_n(&url, "acme", &format!("k{k}")).await, Some(795 + k));
    }
    store.close().await.expect("close");
    assert_eq!(file_len(&journal), 0);
}

/// An acknowledged call PostgreSQL refuses for its data (here a trigger raising a data
/// exception for one key) does not block the journal: the chunk is replayed call by call, the
/// refused call goes to the lost-writes file, every other call lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_postgres_refuses_goes_to_the_lost_file_and_the_others_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let lost = dir.path().join("lost.jsonl");
    let (j2, l2) = (journal.clone(), lost.clone());
    let (store, url) = common::store_with("jpoison", move |c| {
        c.durability = Durability::Journal;
        c.journal_path = Some(j2);
        c.lost_writes_path = Some(l2);
        c.journal_flush_interval = Duration::from_secs(3600);
    })
    .await;
    common::sql(&url)
        .await
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.key_id = 'poison' THEN \
               RAISE EXCEPTION 'poison refused' USING ERRCODE = '22023'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON whatsapp_keys \
             FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .expect("trigger");
    let s = store.session("acme").await.expect("session");
    for (id, n) in [("a", 1), ("poison", 2), ("b", 3), ("a", 4)] {
        s.set(vec![put(id, serde_json::json!({ "n": n }))])
            .await
            .expect("acknowledged");
    }
    drop(s);
    let report = store.close().await.expect("close");
    assert!(report.unflushed.is_empty(), "{report:?}");
    assert_eq!(file_len(&journal), 0);
    assert_eq!(db_n(&url, "acme", "a").await, Some(4));
    assert_eq!(db_n(&url, "acme", "b").await, Some(3));
    assert_eq!(db_n(&url, "acme", "poison").await, None);
    let text = std::fs::read_to_string(&lost).expect("lost file");
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("poison") && text.contains("refused"),
        "{text}"
    );
    assert_eq!(store.metrics().leases.lost_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_durability_without_a_journal_path_is_refused() {
    let url = common::fresh_database("jnopath").await;
    let mut cfg = Config::from_url(&url).expect("config");
    cfg.durability = Durability::Journal;
    let e = Store::open(cfg).await.expect_err("no journal path");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("journal"), "{e}");
}

/// The database stops under journal durability: writes go on being journaled and
/// acknowledged (read back from memory) up to `max_pending_bytes`, then BACKLOG; once the
/// server is back the reconnect loop replays them and the journal empties.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_keeps_journaling_up_to_the_bound_then_replays() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(authstate::tempdb::TempCluster::start)
            .await
            .expect("join")
            .expect("a throwaway PostgreSQL of this test"),
    );
    let url = cluster.url("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let mut cfg = config(&url, &journal);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.statement_timeout = Duration::from_secs(2);
    cfg.max_pending_bytes = 6_000;
    let store = Store::open(cfg).await.expect("open");
    store.migrate().await.expect("migrate");
    let s = store.session("acme").await.expect("session");
    s.set(vec![put("before", serde_json::json!({ "n": 0 }))])
        .await
        .expect("set");

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop("fast"))
        .await
        .expect("join")
        .expect("stop the server");
    let pad = "p".repeat(200);
    let mut acked = Vec::new();
    let mut refused = None;
    for n in 0..200u64 {
        match s
            .set(vec![put(
                &format!("k{n}"),
                serde_json::json!({ "n": n, "pad": pad }),
            )])
            .await
        {
            Ok(()) => acked.push(n),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("the pending bound is reached");
    assert_eq!(e.kind(), ErrorKind::Backlog, "{e}");
    assert!(acked.len() >= 10, "{} acknowledged", acked.len());
    // Acknowledged during the outage: read back from memory.
    let last = format!("k{}", acked[acked.len() - 1]);
    let got = s.get("pre-key", &[&last]).await.expect("from memory");
    assert_eq!(got.len(), 1);
    // The flusher met the outage: outage mode, the lag still there.
    tokio::time::timeout(Duration::from_secs(60), async {
        while !store.metrics().outage.down {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("outage mode");
    let o = store.metrics().outage;
    assert!(o.pending_calls >= acked.len(), "{o:?}");

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server())
        .await
        .expect("join")
        .expect("start the server");
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let o = store.metrics().outage;
            if !o.down && o.pending_calls == 0 && file_len(&journal) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("replayed once the server is back");
    for n in &acked {
        assert_eq!(db_n(&url, "acme", &format!("k{n}")).await, Some(*n));
    }
    drop(s);
    store.close().await.expect("close");
}

/// Another host is refused while a journal may hold unflushed writes, even once the lease
/// expired; the journal's own host takes it (replaying the journal); the operator's forced
/// release lets the other host in and the old journal then goes to the lost-writes file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_host_cannot_take_a_lease_whose_journal_holds_unflushed_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("a.journal");
    let url = common::fresh_database("jlease").await;
    let on = |host: &str, journal: Option<&Path>| {
        let mut c = Config::from_url(&url).expect("config");
        c.lease_host = Some(host.to_string());
        c.pool_size = 4;
        if let Some(j) = journal {
            c.durability = Durability::Journal;
            c.journal_path = Some(j.to_path_buf());
            c.journal_flush_interval = Duration::from_secs(3600);
        }
        c
    };
    let expire = |company: &'static str| {
        let url = url.clone();
        async move {
            common::sql(&url)
                .await
                .execute(
                    "UPDATE authstate_leases SET expires_at = now() - interval '1 s' \
                     WHERE company_id = $1",
                    &[&company],
                )
                .await
                .expect("expire the lease");
        }
    };
    let m = Store::open(on("host-a", None)).await.expect("open");
    m.migrate().await.expect("migrate");
    m.close().await.expect("close");

    // host-a writes in journal durability, then "crashes": dropped without close (no flush,
    // no release, its heartbeat stops). The write is only in its journal.
    let a = Store::open(on("host-a", Some(&journal)))
        .await
        .expect("open a");
    let s = a.session("acme").await.expect("session");
    s.set(vec![put("k", serde_json::json!({ "n": 1 }))])
        .await
        .expect("set");
    drop(s);
    drop(a);
    // Let the aborted background tasks of the dropped store go before the lease row is
    // changed under them (not a timed assertion: nothing is measured).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(file_len(&journal) > 0);
    assert_eq!(db_n(&url, "acme", "k").await, None);
    expire("acme").await;

    // host-b: refused, told who and why.
    let b = Store::open(on("host-b", None)).await.expect("open b");
    let e = b.session("acme").await.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("host-a") && msg.contains("journal") && msg.contains("--force"),
        "{msg}"
    );

    // host-a restarts: it takes the lease, replays its journal first; a clean close flushes
    // and releases, and then host-b gets in.
    let a2 = Store::open(on("host-a", Some(&journal)))
        .await
        .expect("reopen a");
    assert_eq!(db_n(&url, "acme", "k").await, Some(1), "replayed at open");
    let s = a2
        .session("acme")
        .await
        .expect("host-a gets its lease back");
    drop(s);
    let report = a2.close().await.expect("close");
    assert!(report.unflushed.is_empty());
    let sb = b
        .session("acme")
        .await
        .expect("host-b after a clean release");
    drop(sb);

    // Again, but host-a is lost for good: the operator releases by force.
    let journal2 = dir.path().join("a2.journal");
    let a3 = Store::open(on("host-a", Some(&journal2)))
        .await
        .expect("open a3");
    let s = a3.session("beta").await.expect("session");
    s.set(vec![put("k", serde_json::json!({ "n": 2 }))])
        .await
        .expect("set");
    drop(s);
    drop(a3);
    tokio::time::sleep(Duration::from_millis(200)).await;
    expire("beta").await;
    let e = b.session("beta").await.expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    // The operator's command: refused without --force, then done.
    let cli = |force: bool| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_authstate"));
        cmd.args(["lease", "release", "beta", "--json", "--database-url", &url]);
        if force {
            cmd.arg("--force");
        }
        cmd.output()
    };
    let out = cli(false).await.expect("run authstate");
    assert!(!out.status.success());
    let out = cli(true).await.expect("run authstate");
    assert!(out.status.success(), "{out:?}");
    let forced: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(forced["journal_host"], "host-a", "{forced}");
    assert_eq!(forced["holder_host"], "host-a", "{forced}");
    // The library call it runs: a second release finds the lease free already.
    let again = authstate::ops::lease::force_release(&on("host-b", None), "beta")
        .await
        .expect("force release")
        .expect("a lease row");
    assert_eq!(again.journal_host, None);
    let sb = b
        .session("beta")
        .await
        .expect("host-b after the forced release");
    sb.set(vec![put("k", serde_json::json!({ "n": 3 }))])
        .await
        .expect("host-b writes");
    drop(sb);
    b.close().await.expect("close b");

    // host-a's journal replayed later is not applied over host-b: it goes to the lost file.
    let lost = dir.path().join("lost.jsonl");
    let mut cfg = on("host-a", Some(&journal2));
    cfg.lost_writes_path = Some(lost.clone());
    let a4 = Store::open(cfg).await.expect("reopen a");
    assert_eq!(db_n(&url, "acme", "k").await, Some(1));
    assert_eq!(db_n(&url, "beta", "k").await, Some(3), "not overwritten");
    assert_eq!(a4.metrics().leases.lost_calls, 1);
    let text = std::fs::read_to_string(&lost).expect("lost file");
    assert!(text.contains("beta"), "{text}");
    a4.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// SIGKILL under traffic
// ---------------------------------------------------------------------------------------------

/// Run only as a child of `sigkill_under_traffic_loses_no_acknowledged_write` (which sets the
/// env vars): opens the store (replaying the journal first), prints where each writer's
/// sequence stands (`START w n`), then writes increasing values with `WRITERS` concurrent
/// writers and prints each acknowledged one (`ACK w n`) until it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a writer process killed by sigkill_under_traffic_loses_no_acknowledged_write"]
async fn journal_child() {
    let (Ok(url), Ok(journal)) = (std::env::var(CHILD_URL), std::env::var(CHILD_JOURNAL)) else {
        return;
    };
    let mut cfg = config(&url, Path::new(&journal));
    // A killed child's lease is taken over by the next one on this host without waiting long
    // when its journal was empty (with writes in it, the journal's token takes it at once).
    cfg.lease_expiry = Duration::from_millis(400);
    cfg.lease_heartbeat = Duration::from_millis(100);
    cfg.journal_flush_interval = Duration::from_millis(2);
    let store = Store::open(cfg).await.expect("child: open");
    let s = store
        .session_wait(COMPANY, Duration::from_secs(30))
        .await
        .expect("child: session");
    let ids: Vec<String> = (0..WRITERS).map(|w| format!("w{w}")).collect();
    let start: HashMap<String, u64> = s
        .get("pre-key", &ids)
        .await
        .expect("child: read")
        .into_iter()
        .map(|(k, v)| (k, n_of(&v)))
        .collect();
    let mut out = String::new();
    for id in &ids {
        let n = start.get(id).copied().unwrap_or(0);
        out.push_str(&format!("{TAG}START {id} {n}\n"));
    }
    print!("{out}");
    let mut tasks = Vec::new();
    for (w, id) in ids.into_iter().enumerate() {
        let s = s.clone();
        let from = start.get(&id).copied().unwrap_or(0);
        tasks.push(tokio::spawn(async move {
            for n in from + 1.. {
                // The writer's key (rewritten every time: coalesced) and a key per value.
                s.set(vec![
                    put(&id, serde_json::json!({ "n": n, "pad": "x".repeat(300) })),
                    put(&format!("{id}-{}", n % 64), serde_json::json!({ "n": n })),
                ])
                .await
                .expect("child: set");
                println!("{TAG}ACK {id} {n}");
                if w == 0 && n % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_traffic_loses_no_acknowledged_write() {
    const KILLS: usize = 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("kill.journal");
    let (store, url) = common::store("jkill").await;
    store.close().await.expect("close");
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut total_acks = 0usize;
    let mut replayed_rounds = 0usize;
    for round in 0..KILLS {
        let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "journal_child",
                "--exact",
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_URL, &url)
            .env(CHILD_JOURNAL, &journal)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the child");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let journal_at_start = file_len(&journal);
        // Every START must be at or past what the previous child had acknowledged: the
        // journal was replayed at open, before the child's first read.
        let mut started = 0;
        let mut acks_this_round = 0usize;
        let kill_after = rand::thread_rng().gen_range(1..400usize);
        let record = |l: &str, acked: &mut HashMap<String, u64>, started: &mut usize| {
            let Some(rest) = l.find(TAG).map(|i| &l[i + TAG.len()..]) else {
                return false;
            };
            let parts: Vec<&str> = rest.split_whitespace().collect();
            match parts.as_slice() {
                ["START", id, n] => {
                    let n: u64 = n.parse().expect("n");
                    let before = acked.get(*id).copied().unwrap_or(0);
                    assert!(
                        n >= before,
                        "round {round}: {id} restarted at {n}, but {before} was acknowledged"
                    );
                    *started += 1;
                }
                ["ACK", id, n] => {
                    let n: u64 = n.parse().expect("n");
                    let e = acked.entry(id.to_string()).or_insert(0);
                    assert!(n > *e, "acks of {id} go up");
                    *e = n;
                    return true;
                }
                _ => {}
            }
            false
        };
        tokio::time::timeout(Duration::from_secs(60), async {
            while acks_this_round < kill_after {
                let l = lines
                    .next_line()
                    .await
                    .expect("child stdout")
                    .expect("the child exited early");
                if record(&l, &mut acked, &mut started) {
                    acks_this_round += 1;
                }
            }
        })
        .await
        .expect("child acknowledgements");
        child.start_kill().expect("SIGKILL the child");
        // What the child printed before it died was acknowledged too.
        while let Some(l) = lines.next_line().await.expect("child stdout") {
            if record(&l, &mut acked, &mut started) {
                acks_this_round += 1;
            }
        }
        let status = child.wait().await.expect("wait");
        assert!(!status.success(), "killed");
        assert_eq!(started, WRITERS, "round {round}: every writer started");
        total_acks += acks_this_round;
        if journal_at_start > 0 {
            replayed_rounds += 1;
        }
    }
    // The last child's journal: replayed by a store of this process, then everything is in
    // PostgreSQL at or past what was acknowledged.
    let store = Store::open({
        let mut c = config(&url, &journal);
        c.lease_expiry = Duration::from_millis(400);
        c.lease_heartbeat = Duration::from_millis(100);
        c
    })
    .await
    .expect("reopen");
    let s = store
        .session_wait(COMPANY, Duration::from_secs(30))
        .await
        .expect("session");
    for (id, n) in &acked {
        let got = s.get("pre-key", &[id]).await.expect("get");
        let v = got.first().map(|(_, v)| n_of(v));
        assert!(v >= Some(*n), "{id}: acknowledged {n}, read {v:?}");
    }
    drop(s);
    let report = store.close().await.expect("close");
    assert!(report.unflushed.is_empty());
    assert_eq!(file_len(&journal), 0);
    for (id, n) in &acked {
        let v = db_n(&url, COMPANY, id).await;
        assert!(v >= Some(*n), "{id}: acknowledged {n}, in PostgreSQL {v:?}");
    }
    println!(
        "{KILLS} kills, {total_acks} acknowledged writes, {replayed_rounds} rounds started with \
         a journal to replay; last acknowledged: {acked:?}"
    );
    assert_eq!(acked.len(), WRITERS);
    assert!(total_acks >= KILLS);
}
