//! Outage mode behind pgbouncer (the Debian package, transaction pooling mode): the store talks
//! only to the pooler, and the faults happen behind it or to it:
//! - PostgreSQL stopped (`pg_ctl stop -m immediate`) behind a live pgbouncer: the client sees
//!   no refused connection, but a query that waits for a server connection (a hang, up to
//!   pgbouncer's `query_wait_timeout`, 120 s) or a pooler error at query time;
//! - PostgreSQL killed with SIGKILL (postmaster and backends) behind it;
//! - pgbouncer itself stopped (SIGTERM, its immediate shutdown) and started again.
//!
//! Three companies write all the time (keys, deletes, creds). Each test checks that the store
//! noticed within its bound (statement timeout + connect timeout, plus scheduling margin), that
//! no write was refused or took longer than that bound, that writes were kept while the fault
//! lasted, that the store recovered by itself, and with SQL directly against PostgreSQL that
//! every acknowledged write is there (the last value of each key, deletions too).
//!
//! pgbouncer is installed by `scripts/install-pgbouncer.sh` (run by `scripts/test-all.sh`).
//! `cargo test --test pgbouncer -- --nocapture` prints detect/recover times;
//! `RUST_LOG=authstate=debug` adds the store's own log (outage entered, reconnect attempts).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
#[path = "common/pgbouncer.rs"]
mod pgbouncer;

use authstate::tempdb::TempCluster;
use authstate::{Config, KeyWrite, OutageStatus, Session, Store, StoredValue};
use base64::Engine as _;
use common::sql;
use pgbouncer::{is_zombie, Bouncer};
use serde_json::{json, Value};

/// One test at a time: each stops and kills servers and measures times on a 2-core machine.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const DB: &str = "pgb";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);
/// The store's bound on one database call, plus margin for a busy machine.
const BOUND: Duration = Duration::from_millis(
    STATEMENT_TIMEOUT.as_millis() as u64 + CONNECT_TIMEOUT.as_millis() as u64 + 1500,
);
const COMPANIES: [&str; 3] = ["pgb_a", "pgb_b", "pgb_c"];

// ---------------------------------------------------------------------------------------------
// Set-up
// ---------------------------------------------------------------------------------------------

/// A throwaway cluster owned by one test (stopped and removed on drop, also on panic).
struct Pg {
    cluster: Arc<TempCluster>,
}

impl Pg {
    async fn start() -> Pg {
        let cluster = tokio::task::spawn_blocking(TempCluster::start)
            .await
            .expect("join")
            .expect("start a throwaway PostgreSQL");
        Pg {
            cluster: Arc::new(cluster),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&TempCluster) -> T + Send + 'static,
    ) -> T {
        let c = self.cluster.clone();
        tokio::task::spawn_blocking(move || f(&c))
            .await
            .expect("join")
    }

    /// `pg_ctl stop -m immediate`.
    async fn stop(&self) {
        self.blocking(|c| c.stop("immediate"))
            .await
            .expect("stop the server");
    }

    /// SIGKILL to the postmaster and, in the same `kill -9`, to all its children.
    async fn kill(&self) {
        let pid = self
            .cluster
            .postmaster_pid()
            .expect("postmaster.pid while the server runs");
        let mut pids = vec![pid.to_string()];
        pids.extend(children_of(pid).iter().map(u32::to_string));
        let status = tokio::process::Command::new("kill")
            .arg("-9")
            .args(&pids)
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -9 {pids:?}: {status}");
    }

    /// Starts the server, retrying while a killed postmaster is still a zombie holding its
    /// lock files (see tests/outage.rs).
    async fn start_server(&self) {
        let started = Instant::now();
        loop {
            if let Some(pid) = self.cluster.postmaster_pid() {
                if is_zombie(pid) {
                    let c = &self.cluster;
                    let socket_lock = format!(".s.PGSQL.{}.lock", c.port());
                    let _ = std::fs::remove_file(c.socket_dir().join(socket_lock));
                    let _ = std::fs::remove_file(c.data_dir().join("postmaster.pid"));
                }
            }
            match self.blocking(|c| c.start_server()).await {
                Ok(()) => return,
                Err(_) if started.elapsed() < Duration::from_secs(60) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("server did not restart: {e}"),
            }
        }
    }
}

/// Pids whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
            let ppid = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()?;
            (ppid == parent).then_some(pid)
        })
        .collect()
}

/// A cluster with database `DB`, pgbouncer in front of it, and a migrated store that knows
/// only the pooler's address.
struct Setup {
    pg: Pg,
    bouncer: Arc<Bouncer>,
    /// PostgreSQL itself (unix socket), for checking what reached it.
    direct: String,
    store: Store,
}

async fn setup() -> Setup {
    let pg = Pg::start().await;
    pg.blocking(|c| c.create_database(DB))
        .await
        .expect("create database");
    let direct = pg.cluster.url(DB);
    // pgbouncer cannot pass on the store's `options=-c statement_timeout=...` (it is in
    // ignore_startup_parameters): the server-side bound is set on the database instead.
    sql(&direct)
        .await
        .batch_execute(&format!(
            "ALTER DATABASE {DB} SET statement_timeout = {}",
            STATEMENT_TIMEOUT.as_millis()
        ))
        .await
        .expect("set statement_timeout on the database");
    let port = pg.cluster.port();
    let bouncer = Arc::new(
        tokio::task::spawn_blocking(move || Bouncer::start(port))
            .await
            .expect("join"),
    );
    let mut cfg = Config::from_url(&bouncer.url(DB)).expect("config");
    cfg.connect_timeout = CONNECT_TIMEOUT;
    cfg.statement_timeout = STATEMENT_TIMEOUT;
    cfg.pool_size = 4;
    let store = Store::open(cfg).await.expect("open through pgbouncer");
    store.migrate().await.expect("migrate through pgbouncer");
    Setup {
        pg,
        bouncer,
        direct,
        store,
    }
}

fn status(store: &Store) -> OutageStatus {
    store.metrics().outage
}

/// Polls `cond` every 10 ms; panics after `limit`. Returns how long it took.
async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

fn buffer(seed: u64, len: usize) -> Value {
    let bytes: Vec<u8> = (0..len as u64)
        .map(|i| (seed.wrapping_mul(31).wrapping_add(i * 7) % 251) as u8)
        .collect();
    json!({"type": "Buffer", "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

fn val(v: &Value) -> StoredValue {
    StoredValue::from_value(v.clone()).expect("value")
}

// ---------------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------------

/// What one writer had acknowledged.
#[derive(Default)]
struct Acked {
    /// The last acknowledged value of each key it wrote (`None`: deleted).
    keys: BTreeMap<String, Option<Value>>,
    /// The last acknowledged creds.
    creds: Option<Value>,
    calls: usize,
    calls_while_down: usize,
    slowest: Duration,
}

/// Writes until `stop`: a new key per call, every 4th call deletes an earlier key, every 5th
/// overwrites one, every 7th saves creds. Any refused write fails the test.
async fn writer(store: Store, s: Session, stop: Arc<AtomicBool>) -> Acked {
    let company = s.company_id().to_string();
    let mut acked = Acked::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let mut writes: Vec<(String, Option<Value>)> = vec![(
            format!("w{n}"),
            Some(json!({"company": company, "n": n, "key": buffer(n, 32)})),
        )];
        if n % 4 == 0 {
            writes.push((format!("w{}", n - 2), None));
        }
        if n % 5 == 0 {
            writes.push((format!("w{}", n - 3), Some(json!({"again": n}))));
        }
        let call = writes
            .iter()
            .map(|(id, v)| match v {
                Some(v) => KeyWrite::put("pre-key", id, val(v)),
                None => KeyWrite::delete("pre-key", id),
            })
            .collect::<authstate::Result<Vec<_>>>()
            .expect("key writes");
        let down_before = status(&store).down;
        let t = Instant::now();
        if let Err(e) = s.set(call).await {
            panic!("{company}: write {n} refused after {:?}: {e}", t.elapsed());
        }
        if n % 7 == 0 {
            let creds = json!({"registrationId": n, "noiseKey": buffer(n + 1, 32)});
            if let Err(e) = s.save_creds(val(&creds)).await {
                panic!("{company}: creds {n} refused after {:?}: {e}", t.elapsed());
            }
            acked.creds = Some(creds);
        }
        acked.slowest = acked.slowest.max(t.elapsed());
        if down_before || status(&store).down {
            acked.calls_while_down += 1;
        }
        acked.calls += 1;
        for (id, v) in writes {
            acked.keys.insert(id, v);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    acked
}

/// Every acknowledged write of `company` as PostgreSQL holds it (read directly, not through
/// the pooler): lists what is missing or different.
async fn lost_writes(direct: &str, company: &str, acked: &Acked) -> Vec<String> {
    let client = sql(direct).await;
    let rows = client
        .query(
            "SELECT key_id, value::text FROM whatsapp_keys WHERE company_id = $1 AND key_type = 'pre-key'",
            &[&company],
        )
        .await
        .expect("select keys");
    let in_db: HashMap<String, Value> = rows
        .iter()
        .map(|r| {
            let text: &str = r.get(1);
            (r.get(0), serde_json::from_str(text).expect("jsonb text"))
        })
        .collect();
    let mut lost = Vec::new();
    for (id, v) in &acked.keys {
        match (v, in_db.get(id)) {
            (Some(v), Some(d)) if d == v => {}
            (None, None) => {}
            (v, d) => lost.push(format!(
                "{company}/{id}: acknowledged {}, PostgreSQL has {}",
                v.as_ref().map_or("deletion".to_string(), |v| v.to_string()),
                d.map_or("nothing".to_string(), |d| d.to_string())
            )),
        }
    }
    for id in in_db.keys() {
        if !acked.keys.contains_key(id) {
            lost.push(format!("{company}/{id}: in PostgreSQL, never written"));
        }
    }
    let creds = client
        .query_opt(
            "SELECT creds::text FROM whatsapp_auth WHERE company_id = $1",
            &[&company],
        )
        .await
        .expect("select creds")
        .map(|r| serde_json::from_str::<Value>(r.get::<_, &str>(0)).expect("jsonb text"));
    if creds != acked.creds {
        lost.push(format!("{company}: creds differ"));
    }
    lost
}

// ---------------------------------------------------------------------------------------------
// The faults
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Fault {
    PostgresStopped,
    PostgresKilled,
    PgbouncerStopped,
}

async fn through_a_fault(fault: Fault) {
    let _serial = SERIAL.lock().await;
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    let Setup {
        pg,
        bouncer,
        direct,
        store,
    } = setup().await;
    let mut sessions = Vec::new();
    for c in COMPANIES {
        sessions.push(store.session(c).await.expect("session"));
    }
    // The documented condition for answering "absent" during an outage.
    wait_for("key directories loaded", Duration::from_secs(10), || {
        store.metrics().directory.companies >= COMPANIES.len()
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = sessions
        .iter()
        .map(|s| tokio::spawn(writer(store.clone(), s.clone(), stop.clone())))
        .collect();

    // Traffic through the pooler, then the fault in the middle of it.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = status(&store);
    assert!(!before.down, "no outage before the fault: {before:?}");
    match fault {
        Fault::PostgresStopped => pg.stop().await,
        Fault::PostgresKilled => pg.kill().await,
        Fault::PgbouncerStopped => {
            let b = bouncer.clone();
            tokio::task::spawn_blocking(move || b.stop())
                .await
                .expect("join");
        }
    }
    let detect = wait_for("outage mode", BOUND, || status(&store).down).await;

    // The outage goes on: writes are kept, never-stored keys are answered absent.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = status(&store);
    assert!(during.down, "{during:?}");
    assert!(during.pending_calls > 0, "writes kept: {during:?}");
    let absent = sessions[0]
        .get("pre-key", &["never-written".to_string()])
        .await
        .expect("a never-stored key during the outage");
    assert!(absent.is_empty(), "{absent:?}");

    let ended = Instant::now();
    match fault {
        Fault::PostgresStopped | Fault::PostgresKilled => pg.start_server().await,
        Fault::PgbouncerStopped => {
            let b = bouncer.clone();
            tokio::task::spawn_blocking(move || b.launch())
                .await
                .expect("join");
        }
    }
    let recover = wait_for("recovery", Duration::from_secs(60), || !status(&store).down).await;
    let recover_from_end = ended.elapsed();
    let after = status(&store);
    assert_eq!(after.pending_calls, 0, "{after:?}");
    assert_eq!(after.outages, 1, "{after:?}");
    // Traffic through the pooler again, then stop and flush.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.push(w.await.expect("writer"));
    }
    let report = store.close().await.expect("close");
    assert!(report.unflushed.is_empty(), "{report:?}");

    let calls: usize = acked.iter().map(|a| a.calls).sum();
    let while_down: usize = acked.iter().map(|a| a.calls_while_down).sum();
    let slowest = acked.iter().map(|a| a.slowest).max().unwrap_or_default();
    let mut lost = Vec::new();
    for (company, a) in COMPANIES.iter().zip(&acked) {
        lost.extend(lost_writes(&direct, company, a).await);
    }
    eprintln!(
        "[pgbouncer] {fault:?}: detect {detect:?} (bound {BOUND:?}), slowest write {slowest:?}, \
         {calls} write calls ({while_down} while down, {} pending at most seen), \
         recover {recover:?} after the fault ended ({recover_from_end:?} from the command that \
         ended it), lost {}",
        during.pending_calls,
        lost.len()
    );
    assert!(while_down > 0, "writes were acknowledged during the outage");
    assert!(
        slowest < BOUND,
        "a write took {slowest:?}, longer than the bound {BOUND:?}"
    );
    if !lost.is_empty() {
        eprintln!("[pgbouncer] log: {}", bouncer.log_tail());
    }
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:#?}");
    drop(bouncer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_behind_pgbouncer() {
    through_a_fault(Fault::PostgresStopped).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkilled_behind_pgbouncer() {
    through_a_fault(Fault::PostgresKilled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbouncer_stopped_and_started_again() {
    through_a_fault(Fault::PgbouncerStopped).await;
}

/// The first reads after PostgreSQL died behind the pooler meet the failure themselves (no
/// write has noticed it yet): pgbouncer holds the query while it cannot reach the server, so
/// each read ends at the store's bound. A never-stored key is still answered absent from the
/// key directory; only a stored key that is not in memory fails, with a connectivity error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_that_meets_the_failure_answers_absent_keys() {
    let _serial = SERIAL.lock().await;
    let Setup {
        pg,
        bouncer,
        direct,
        store,
    } = setup().await;
    // A stored key that this process never read or wrote: its value is only in PostgreSQL.
    sql(&direct)
        .await
        .execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES ('first_read', 'pre-key', 'by-hand', '{\"z\":1}')",
            &[],
        )
        .await
        .expect("insert by hand");
    let s = store.session("first_read").await.expect("session");
    s.set(vec![
        KeyWrite::put("pre-key", "1", val(&json!({"a": 1}))).expect("key")
    ])
    .await
    .expect("write before");
    wait_for("key directory loaded", Duration::from_secs(10), || {
        let d = store.metrics().directory;
        d.companies >= 1 && d.keys >= 2
    })
    .await;
    assert!(!status(&store).down);

    pg.stop().await;
    // The lease is held, so a key the directory does not hold is answered absent without a
    // query (and meets nothing).
    let r = s.get("pre-key", &["never-stored".to_string()]).await;
    assert!(matches!(r, Ok(ref v) if v.is_empty()), "{r:?}");
    // The read that meets the failure: the absent key is answered, the stored key that is
    // only in PostgreSQL fails within the bound, and the outage has begun.
    let t = Instant::now();
    let r = s
        .get(
            "pre-key",
            &["also-never".to_string(), "by-hand".to_string()],
        )
        .await;
    let took = t.elapsed();
    assert!(matches!(r, Err(ref e) if e.is_unavailable()), "{r:?}");
    assert!(status(&store).down, "the read started the outage");
    assert!(took < BOUND, "the read took {took:?}, bound {BOUND:?}");
    let r = s.get("pre-key", &["never-stored".to_string()]).await;
    assert!(matches!(r, Ok(ref v) if v.is_empty()), "{r:?}");
    let r = s.get("pre-key", &["by-hand".to_string()]).await;
    assert!(matches!(r, Err(ref e) if e.is_unavailable()), "{r:?}");
    // The cached key is served.
    let r = s.get("pre-key", &["1".to_string()]).await.expect("cached");
    assert_eq!(r.len(), 1);

    pg.start_server().await;
    wait_for("recovery", Duration::from_secs(60), || !status(&store).down).await;
    let r = s
        .get("pre-key", &["by-hand".to_string()])
        .await
        .expect("read after");
    assert_eq!(r.len(), 1);
    store.close().await.expect("close");
    drop(bouncer);
}

/// `PreparedStatements::Auto` (the default) finds the pooler: the store behind pgbouncer sends
/// unnamed statements (pgbouncer 1.18 cannot carry named ones in transaction mode) and its
/// calls work, while a store on PostgreSQL itself, same server, uses named ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_only_without_the_pooler() {
    let _serial = SERIAL.lock().await;
    let Setup {
        pg: _pg,
        bouncer,
        direct,
        store,
    } = setup().await;
    let s = store.session("stmts").await.expect("session");
    for i in 0..8 {
        s.set(vec![KeyWrite::put(
            "pre-key",
            &i.to_string(),
            val(&json!({"i": i})),
        )
        .expect("key")])
            .await
            .expect("write through pgbouncer");
    }
    assert!(
        !store.uses_named_statements(),
        "behind pgbouncer the store must send unnamed statements"
    );
    let mut cfg = Config::from_url(&direct).expect("config");
    cfg.lease = false;
    cfg.cache.max_bytes = 0;
    let beside = Store::open(cfg).await.expect("open directly");
    let r = beside.session("stmts").await.expect("session");
    for i in 0..8 {
        let got = r.get("pre-key", &[i.to_string()]).await.expect("read");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.to_value(), json!({"i": i}));
    }
    assert!(beside.uses_named_statements(), "directly: named statements");
    beside.close().await.expect("close");
    store.close().await.expect("close");
    drop(bouncer);
}
