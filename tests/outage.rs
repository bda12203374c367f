//! Outage mode under real faults: a throwaway PostgreSQL per test that the test stops, kills
//! (SIGKILL) or cuts off behind a frozen TCP proxy; the process itself killed by SIGKILL during
//! an outage with a journal. Every test checks what reached PostgreSQL with plain SQL.
//!
//! The tests run one at a time (a lock below): they stop and kill servers and measure times,
//! and the machine has two cores. Each prints its measurements with `eprintln!`, so
//! `cargo test --test outage -- --nocapture` shows detect/recover times and lost-write counts.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

mod common;

use authstate::tempdb::TempCluster;
use authstate::{
    Config, ErrorKind, KeyWrite, OutagePolicy, OutageStatus, Session, Store, StoredValue,
};
use base64::Engine as _;
use common::sql;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// One test at a time: each owns a PostgreSQL it stops and kills, and measures times.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// Env vars that turn the ignored `child_writer` test into the crash victim of
/// `sigkill_during_outage_with_journal`.
const CHILD_URL: &str = "AUTHSTATE_OUTAGE_CHILD_URL";
const CHILD_JOURNAL: &str = "AUTHSTATE_OUTAGE_CHILD_JOURNAL";

// ---------------------------------------------------------------------------------------------
// Set-up helpers
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

    /// Unix-socket URL of the `postgres` database.
    fn url(&self) -> String {
        self.cluster.url("postgres")
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

    /// Starts the server, retrying while a killed postmaster's orphans still hold its shared
    /// memory (they exit once they notice the postmaster is gone).
    async fn start_server(&self) {
        let started = Instant::now();
        loop {
            // A SIGKILLed postmaster stays a zombie until PID 1 reaps it, which on this VM takes
            // a second or two; PostgreSQL takes the zombie's pid in postmaster.pid for a live
            // server. A zombie holds nothing (its orphans still attached to the shared memory
            // are caught by PostgreSQL's own check), so its stale lock files can go.
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
                Err(e) if started.elapsed() < Duration::from_secs(60) => {
                    let log = std::fs::read_to_string(self.cluster.socket_dir().join("server.log"))
                        .unwrap_or_default();
                    let tail: Vec<&str> = log.lines().rev().take(2).collect();
                    tracing_free_note(&format!("start failed, retrying: {e} {tail:?}"));
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("server did not restart: {e}"),
            }
        }
    }

    /// SIGKILL to the postmaster; with `with_backends`, in the same `kill -9` to every child
    /// of it too (a whole-server crash: transactions in flight die half-way). Without, the
    /// orphaned backends finish what they are running, as after an OOM kill of the postmaster.
    async fn kill_postmaster(&self, with_backends: bool) {
        let pid = self
            .cluster
            .postmaster_pid()
            .expect("postmaster.pid while the server runs");
        let mut pids = vec![pid.to_string()];
        if with_backends {
            pids.extend(children_of(pid).iter().map(u32::to_string));
        }
        let status = tokio::process::Command::new("kill")
            .arg("-9")
            .args(&pids)
            .status()
            .await
            .expect("run kill");
        assert!(status.success(), "kill -9 {pids:?}: {status}");
    }
}

/// The third field of /proc/<pid>/stat is `Z` for a process that died and was not reaped.
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|s| s == "Z"))
        })
        .unwrap_or(false)
}

/// Pids whose parent is `parent` (from /proc).
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn tracing_free_note(msg: &str) {
    if std::env::var_os("OUTAGE_TEST_VERBOSE").is_some() {
        eprintln!("[outage] {msg}");
    }
}

fn config(url: &str) -> Config {
    let mut cfg = Config::from_url(url).expect("config");
    cfg.connect_timeout = CONNECT_TIMEOUT;
    cfg.statement_timeout = STATEMENT_TIMEOUT;
    cfg.pool_size = 4;
    cfg
}

async fn open(cfg: Config) -> Store {
    let store = Store::open(cfg).await.expect("open store");
    store.migrate().await.expect("migrate");
    store
}

/// Every key of `company` as PostgreSQL holds it: `(type, id) -> value`.
async fn db_keys(url: &str, company: &str) -> HashMap<(String, String), Value> {
    let client = sql(url).await;
    let rows = client
        .query(
            "SELECT key_type, key_id, value::text FROM whatsapp_keys WHERE company_id = $1",
            &[&company],
        )
        .await
        .expect("select keys");
    rows.iter()
        .map(|r| {
            let text: &str = r.get(2);
            (
                (r.get::<_, String>(0), r.get::<_, String>(1)),
                serde_json::from_str(text).expect("jsonb text"),
            )
        })
        .collect()
}

async fn db_creds(url: &str, company: &str) -> Option<Value> {
    let client = sql(url).await;
    client
        .query_opt(
            "SELECT creds::text FROM whatsapp_auth WHERE company_id = $1",
            &[&company],
        )
        .await
        .expect("select creds")
        .map(|r| serde_json::from_str(r.get::<_, &str>(0)).expect("jsonb text"))
}

fn val(v: Value) -> StoredValue {
    StoredValue::from_value(v).expect("value")
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn buffer(bytes: &[u8]) -> Value {
    json!({"type": "Buffer", "data": b64(bytes)})
}

/// Deterministic pseudo-random bytes (so the parent of a killed child can recompute values).
fn bytes_for(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen()).collect()
}

/// The bytes of a canonical buffer node, for a byte-exact comparison.
fn buffer_bytes(v: &Value) -> Vec<u8> {
    assert_eq!(v["type"], "Buffer", "not a buffer node: {v}");
    base64::engine::general_purpose::STANDARD
        .decode(v["data"].as_str().expect("base64 data"))
        .expect("valid base64")
}

fn put(t: &str, id: &str, v: &StoredValue) -> KeyWrite {
    KeyWrite::put(t, id, v.clone()).expect("key write")
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
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

/// The first read after the server went away meets the failure itself and starts the outage.
/// For a key that was never stored it answers absent when the company's key directory had
/// loaded (loaded in the background after session open, so this races with a stop right after
/// the open), else Unavailable; nothing else. A read the directory answers while the lease is
/// held asks nothing of the database, so it meets no failure: then the next call that must
/// reach the database (opening another company takes its lease) starts the outage.
async fn first_read_meets_the_failure(store: &Store, s: &Session, key_type: &str, id: &str) {
    let r = s.get(key_type, &ids(&[id])).await;
    assert!(
        matches!(r, Ok(ref v) if v.is_empty())
            || matches!(r, Err(ref e) if e.kind() == ErrorKind::Unavailable),
        "{r:?}"
    );
    if !status(store).down {
        assert!(matches!(r, Ok(ref v) if v.is_empty()), "{r:?}");
        store
            .session("outage-probe")
            .await
            .expect("a session opens during an outage");
    }
    assert!(
        status(store).down,
        "the read (or the next call) started the outage"
    );
}

async fn get_map(
    s: &Session,
    t: &str,
    id_list: &[String],
) -> authstate::Result<HashMap<String, StoredValue>> {
    Ok(s.get(t, id_list).await?.into_iter().collect())
}

// ---------------------------------------------------------------------------------------------
// 1. Server stopped: cache, read-your-writes, status, self-recovery, byte-exact replay
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_reads_from_cache_buffers_writes_and_recovers() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    let store = open(config(&url)).await;
    // A key the store has never read (so not cached), stored before the session opened.
    sql(&url)
        .await
        .execute(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES ('acme', 'pre-key', 'uncached', '{\"z\":1}')",
            &[],
        )
        .await
        .expect("insert uncached");
    let s = store.session("acme").await.expect("session");
    let other = store.session("beta").await.expect("session");

    // Before the outage: creds and keys, loaded once so the cache holds them.
    let creds1 = val(
        json!({"noiseKey": {"private": buffer(&bytes_for(1, 32)), "public": buffer(&bytes_for(2, 32))}, "registrationId": 4711}),
    );
    assert!(s.save_creds(creds1.clone()).await.expect("save creds"));
    let mut before = Vec::new();
    for n in 0..20 {
        let v = val(
            json!({"private": buffer(&bytes_for(100 + n, 32)), "public": buffer(&bytes_for(200 + n, 33))}),
        );
        before.push((n.to_string(), v));
    }
    s.set(before.iter().map(|(id, v)| put("pre-key", id, v)).collect())
        .await
        .expect("set before");
    other
        .set(vec![put(
            "session",
            "x@s.whatsapp.net:1",
            &val(json!({"a": 1})),
        )])
        .await
        .expect("set other");
    let before_ids: Vec<String> = before.iter().map(|(i, _)| i.clone()).collect();
    assert_eq!(s.get("pre-key", &before_ids).await.expect("get").len(), 20);
    assert_eq!(s.load_creds().await.expect("creds"), Some(creds1.clone()));
    // The key directory (loaded in the background at session open) knows every stored key.
    wait_for("key directories loaded", Duration::from_secs(10), || {
        store.metrics().directory.companies >= 2
    })
    .await;

    // The outage.
    pg.stop().await;
    let stopped = Instant::now();

    // The first uncached read meets the failure: a typed error, never an empty answer.
    let first = s.get("pre-key", &ids(&["uncached"])).await;
    assert!(
        matches!(first, Err(ref e) if e.kind() == ErrorKind::Unavailable),
        "uncached read during the outage: {first:?}"
    );
    let detect = stopped.elapsed();
    let st = status(&store);
    assert!(st.down, "{st:?}");
    assert!(st.down_since_unix_ms.is_some());
    assert!(st.last_error.is_some());
    assert_eq!(st.outages, 1);
    assert_eq!(st.policy, "buffer");

    // Cached keys and creds keep working.
    let cached = get_map(&s, "pre-key", &before_ids)
        .await
        .expect("cached read");
    for (id, v) in &before {
        assert_eq!(cached.get(id), Some(v), "cached key {id}");
    }
    assert_eq!(
        s.load_creds().await.expect("cached creds"),
        Some(creds1.clone())
    );
    // Keys that were never stored are absent, known from the key directory, not from the
    // database; with cached keys next to them too.
    for list in [ids(&["never-written"]), ids(&["0", "never-written", "x"])] {
        let r = get_map(&s, "pre-key", &list)
            .await
            .expect("absent keys during the outage");
        assert_eq!(
            r.keys().cloned().collect::<Vec<_>>(),
            list.iter()
                .filter(|i| *i == "0")
                .cloned()
                .collect::<Vec<_>>()
        );
    }
    assert!(s
        .get("sender-key-memory", &ids(&["120363@g.us"]))
        .await
        .expect("new group")
        .is_empty());
    // Only a stored key that is not in memory fails, fast, with Unavailable.
    for list in [ids(&["uncached"]), ids(&["0", "uncached", "never-written"])] {
        let t = Instant::now();
        let r = s.get("pre-key", &list).await;
        assert!(
            matches!(r, Err(ref e) if e.kind() == ErrorKind::Unavailable),
            "{list:?}: {r:?}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "fail fast: {:?}",
            t.elapsed()
        );
    }
    let r = store
        .session("gamma")
        .await
        .expect("session")
        .load_creds()
        .await;
    assert!(
        matches!(r, Err(ref e) if e.kind() == ErrorKind::Unavailable),
        "uncached creds: {r:?}"
    );

    // Writes are acknowledged at once and read back (read-your-writes, deletes too).
    let mut during: BTreeMap<String, StoredValue> = BTreeMap::new();
    let mut calls = 0usize;
    for batch in 0..5u64 {
        let mut writes = Vec::new();
        for n in 0..10u64 {
            let id = format!("{}@s.whatsapp.net:{n}", 1000 + batch);
            let v = val(
                json!({"_sessions": {"k": b64(&bytes_for(batch * 100 + n, 40))}, "raw": buffer(&bytes_for(batch * 1000 + n, 57))}),
            );
            writes.push(put("session", &id, &v));
            during.insert(id, v);
        }
        let t = Instant::now();
        s.set(writes).await.expect("set during the outage");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "buffered write took {:?}",
            t.elapsed()
        );
        calls += 1;
    }
    let new0 =
        val(json!({"private": buffer(&bytes_for(999, 32)), "public": buffer(&bytes_for(998, 33))}));
    s.set(vec![
        put("pre-key", "0", &new0),
        KeyWrite::delete("pre-key", "1").expect("delete"),
    ])
    .await
    .expect("overwrite and delete");
    calls += 1;
    let creds2 = val(
        json!({"noiseKey": {"private": buffer(&bytes_for(3, 32)), "public": buffer(&bytes_for(4, 32))}, "registrationId": 4712}),
    );
    assert!(s
        .save_creds(creds2.clone())
        .await
        .expect("save creds during the outage"));
    calls += 1;
    other.clear().await.expect("clear during the outage");
    let after_clear = val(json!({"b": buffer(&[0, 1, 2, 255])}));
    other
        .set(vec![put("sender-key", "g@g.us::a::0", &after_clear)])
        .await
        .expect("set after clear");
    calls += 2;

    let during_ids: Vec<String> = during.keys().cloned().collect();
    let back = get_map(&s, "session", &during_ids)
        .await
        .expect("read your writes");
    assert_eq!(back.len(), during.len());
    for (id, v) in &during {
        assert_eq!(back.get(id), Some(v), "pending value of {id}");
    }
    let back = get_map(&s, "pre-key", &ids(&["0", "1", "2"]))
        .await
        .expect("overlay");
    assert_eq!(back.get("0"), Some(&new0));
    assert!(!back.contains_key("1"), "deleted during the outage");
    assert_eq!(back.get("2"), Some(&before[2].1));
    assert_eq!(s.load_creds().await.expect("creds"), Some(creds2.clone()));
    assert!(other
        .get("session", &ids(&["x@s.whatsapp.net:1"]))
        .await
        .expect("cleared")
        .is_empty());
    assert_eq!(other.load_creds().await.expect("cleared creds"), None);
    assert_eq!(
        get_map(&other, "sender-key", &ids(&["g@g.us::a::0"]))
            .await
            .expect("after clear")
            .get("g@g.us::a::0"),
        Some(&after_clear)
    );

    // Status while down: pending calls/bytes and reconnect attempts.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let st = status(&store);
    assert!(st.down);
    assert_eq!(st.pending_calls, calls, "{st:?}");
    assert!(st.pending_bytes > 5 * 10 * 100, "{st:?}");
    assert!(st.reconnect_attempts >= 1, "{st:?}");
    assert!(st.down_for_ms >= 800, "{st:?}");
    assert_eq!(st.journal_bytes, 0);

    // The server comes back: the store recovers by itself.
    pg.start_server().await;
    let back_up = Instant::now();
    wait_for("recovery", Duration::from_secs(20), || !status(&store).down).await;
    let recover = back_up.elapsed();
    let st = status(&store);
    assert_eq!(
        (
            st.pending_calls,
            st.pending_bytes,
            st.down_since_unix_ms,
            st.down_for_ms
        ),
        (0, 0, None, 0),
        "{st:?}"
    );

    // Everything written during the outage is in PostgreSQL, byte-exact.
    let rows = db_keys(&url, "acme").await;
    let mut lost = 0;
    for (id, v) in &during {
        match rows.get(&("session".to_string(), id.clone())) {
            Some(db) => {
                assert_eq!(db, &v.to_value(), "{id}");
                assert_eq!(buffer_bytes(&db["raw"]), buffer_bytes(&v.to_value()["raw"]));
            }
            None => lost += 1,
        }
    }
    let db0 = &rows[&("pre-key".to_string(), "0".to_string())];
    assert_eq!(buffer_bytes(&db0["private"]), bytes_for(999, 32));
    assert_eq!(buffer_bytes(&db0["public"]), bytes_for(998, 33));
    assert!(
        !rows.contains_key(&("pre-key".to_string(), "1".to_string())),
        "delete replayed"
    );
    assert_eq!(db_creds(&url, "acme").await, Some(creds2.to_value()));
    let other_rows = db_keys(&url, "beta").await;
    assert_eq!(
        other_rows.len(),
        1,
        "clear then set replayed in order: {other_rows:?}"
    );
    assert_eq!(
        other_rows[&("sender-key".to_string(), "g@g.us::a::0".to_string())],
        after_clear.to_value()
    );
    assert_eq!(db_creds(&url, "beta").await, None);
    assert_eq!(lost, 0);

    // Back to normal: uncached reads and writes go to the database again.
    let r = get_map(&s, "pre-key", &ids(&["uncached"]))
        .await
        .expect("uncached read after recovery");
    assert_eq!(r["uncached"].to_value(), json!({"z": 1}));
    s.set(vec![put("pre-key", "after", &val(json!(1)))])
        .await
        .expect("write after");
    assert!(db_keys(&url, "acme")
        .await
        .contains_key(&("pre-key".to_string(), "after".to_string())));

    eprintln!(
        "[outage] server stopped: detect {detect:?} (first call after stop), recover {recover:?} after restart, {} calls replayed, lost {lost}",
        calls
    );
    let report = store.close().await.expect("close");
    assert!(report.unflushed.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 2. SIGKILL of the process during an outage with a journal
// ---------------------------------------------------------------------------------------------

/// The value the child writes for call `n` (the parent recomputes it).
fn child_value(n: u64) -> StoredValue {
    val(
        json!({"private": buffer(&bytes_for(n, 32)), "public": buffer(&bytes_for(n + 1_000_000, 33)), "n": n}),
    )
}

fn child_session_value(n: u64) -> StoredValue {
    val(json!({"_sessions": {"base": b64(&bytes_for(n + 2_000_000, 48))}, "version": "v1", "n": n}))
}

/// Run only as a child of `sigkill_during_outage_with_journal` (which sets the env vars).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the crash victim of sigkill_during_outage_with_journal, run in a child process"]
async fn child_writer() {
    let (Ok(url), Ok(journal)) = (std::env::var(CHILD_URL), std::env::var(CHILD_JOURNAL)) else {
        return;
    };
    let mut cfg = config(&url);
    cfg.journal_path = Some(PathBuf::from(journal));
    let store = Store::open(cfg).await.expect("child: open");
    let s = store.session("crashy").await.expect("child: session");
    println!("READY");
    // Wait for the parent to stop the database.
    let mut line = String::new();
    BufReader::new(tokio::io::stdin())
        .read_line(&mut line)
        .await
        .expect("child: stdin");
    for n in 0u64.. {
        s.set(vec![
            put("pre-key", &n.to_string(), &child_value(n)),
            put(
                "session",
                &format!("{n}@s.whatsapp.net:0"),
                &child_session_value(n),
            ),
        ])
        .await
        .expect("child: set during the outage");
        println!("ACK {n}");
        if n % 25 == 0 {
            s.save_creds(val(json!({"me": {"id": "1@s.whatsapp.net"}, "n": n})))
                .await
                .expect("child: save creds");
            println!("CREDS {n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_outage_with_journal() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    open(config(&url)).await.close().await.expect("close");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("outage.journal");

    let mut child = tokio::process::Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "child_writer",
            "--exact",
            "--nocapture",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_URL, &url)
        .env(CHILD_JOURNAL, &journal)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut stdin = child.stdin.take().expect("stdin");
    let mut acked: Vec<u64> = Vec::new();
    let mut creds_acked: Vec<u64> = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(l) = lines.next_line().await.expect("child stdout") {
            // libtest prints "test child_writer ... " without a newline before the output.
            if l.trim_end().ends_with("READY") {
                return;
            }
        }
        panic!("the child exited before READY");
    })
    .await
    .expect("child READY");

    pg.stop().await;
    stdin.write_all(b"go\n").await.expect("tell the child");
    stdin.flush().await.expect("flush");
    let kill_after = 300;
    tokio::time::timeout(Duration::from_secs(60), async {
        while acked.len() < kill_after {
            let l = lines
                .next_line()
                .await
                .expect("child stdout")
                .expect("the child exited early");
            record(&l, &mut acked, &mut creds_acked);
        }
    })
    .await
    .expect("child acknowledgements");
    child.kill().await.expect("SIGKILL the child");
    // What the child printed before it died was acknowledged too.
    while let Some(l) = lines.next_line().await.expect("child stdout") {
        record(&l, &mut acked, &mut creds_acked);
    }
    let journal_len = records_len(&journal);
    assert!(journal_len > 0);

    // A new process while the database is still down: the journal is loaded as pending, served
    // from memory, and close() reports it (it stays in the journal).
    let down_store = Store::open(config_with_journal(&url, &journal))
        .await
        .expect("open while down");
    let st = status(&down_store);
    assert!(st.down, "{st:?}");
    assert!(
        st.pending_calls >= acked.len(),
        "{st:?} vs {} acked",
        acked.len()
    );
    let s = down_store.session("crashy").await.expect("session");
    let last = *acked.last().expect("acks");
    let got = get_map(&s, "pre-key", &[last.to_string()])
        .await
        .expect("read from the journal");
    assert_eq!(got.get(&last.to_string()), Some(&child_value(last)));
    let report = down_store.close().await.expect("close while down");
    assert_eq!(report.flushed_calls, 0);
    assert_eq!(report.unflushed.len(), st.pending_calls);
    assert_eq!(records_len(&journal), journal_len);

    // Restart PostgreSQL; a new store replays the journal before anything else, then truncates.
    pg.start_server().await;
    let opened = Instant::now();
    let store = Store::open(config_with_journal(&url, &journal))
        .await
        .expect("open after restart");
    let replay = opened.elapsed();
    let st = status(&store);
    assert!(!st.down, "journal replayed during open: {st:?}");
    assert_eq!((st.pending_calls, st.journal_bytes), (0, 0), "{st:?}");
    assert_eq!(
        std::fs::metadata(&journal).expect("journal").len(),
        0,
        "journal truncated"
    );

    let rows = db_keys(&url, "crashy").await;
    let mut lost = 0;
    for n in &acked {
        let pk = rows.get(&("pre-key".to_string(), n.to_string()));
        let ss = rows.get(&("session".to_string(), format!("{n}@s.whatsapp.net:0")));
        if pk != Some(&child_value(*n).to_value())
            || ss != Some(&child_session_value(*n).to_value())
        {
            lost += 1;
        }
    }
    let creds = db_creds(&url, "crashy").await.expect("creds replayed");
    let last_creds = *creds_acked.last().expect("creds acks");
    assert!(
        creds["n"].as_u64().expect("n") >= last_creds,
        "creds {creds} older than the last acknowledged save {last_creds}"
    );
    eprintln!(
        "[outage] SIGKILL with journal: {} writes acknowledged before the kill ({} creds saves), journal {journal_len} bytes replayed in {replay:?} at open, lost {lost}",
        acked.len(),
        creds_acked.len()
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    // Nothing is replayed twice: a second open finds an empty journal.
    store.close().await.expect("close");
    let again = Store::open(config_with_journal(&url, &journal))
        .await
        .expect("open again");
    assert!(!status(&again).down);
    again.close().await.expect("close");
}

/// Records one line of the child's stdout: `ACK n` (a set) or `CREDS n` (a creds save).
fn record(line: &str, acked: &mut Vec<u64>, creds: &mut Vec<u64>) {
    if let Some(n) = line.trim().strip_prefix("ACK ") {
        acked.push(n.parse().expect("ack number"));
    } else if let Some(n) = line.trim().strip_prefix("CREDS ") {
        creds.push(n.parse().expect("creds number"));
    }
}

fn config_with_journal(url: &str, journal: &Path) -> Config {
    let mut cfg = config(url);
    cfg.journal_path = Some(journal.to_path_buf());
    cfg
}

// ---------------------------------------------------------------------------------------------
// 3. Network hang: a proxy that stops forwarding but keeps the sockets open
// ---------------------------------------------------------------------------------------------

/// A TCP proxy to PostgreSQL that can be frozen: nothing is forwarded in either direction,
/// connections (old and new) stay open.
struct Proxy {
    port: u16,
    frozen: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let (frozen, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((down, _)) = listener.accept().await {
                let rx = rx.clone();
                conns.spawn(async move {
                    let Ok(up) = TcpStream::connect(("127.0.0.1", target)).await else {
                        return;
                    };
                    let (dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    tokio::join!(pump(dr, uw, rx.clone()), pump(ur, dw, rx));
                });
                while conns.try_join_next().is_some() {}
            }
        });
        Proxy { port, frozen, task }
    }

    fn url(&self) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        )
    }

    fn freeze(&self, on: bool) {
        self.frozen.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Data read just before a freeze is held until the thaw.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_hang_times_out_within_bound_and_recovers() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let direct = pg.url();
    let proxy = Proxy::start(pg.cluster.port()).await;
    let store = open(config(&proxy.url())).await;
    let s = store.session("hang").await.expect("session");
    wait_for("key directory loaded", Duration::from_secs(10), || {
        store.metrics().directory.companies >= 1
    })
    .await;
    let v0 = val(json!({"public": buffer(&bytes_for(7, 33))}));
    s.set(vec![put("pre-key", "cached", &v0)])
        .await
        .expect("set before");
    // Warm a few pooled connections so the freeze catches them mid-life.
    let warm = (0..3).map(|i| {
        let s = s.clone();
        async move { s.get("pre-key", &[format!("warm{i}")]).await }
    });
    for r in futures_util::future::join_all(warm).await {
        assert!(r.expect("warm read").is_empty());
    }

    proxy.freeze(true);
    let frozen_at = Instant::now();
    let bound = STATEMENT_TIMEOUT + CONNECT_TIMEOUT + Duration::from_millis(1500);
    // A read and a write meet the hang at the same time: both end within the bound.
    let (rd, w) = tokio::join!(
        async {
            let t = Instant::now();
            (s.get("pre-key", &ids(&["uncached"])).await, t.elapsed())
        },
        async {
            let t = Instant::now();
            let v = val(json!({"during": buffer(&bytes_for(8, 16))}));
            (s.set(vec![put("pre-key", "w0", &v)]).await, t.elapsed())
        }
    );
    // "uncached" was never stored: answered absent once the read met the hang.
    assert!(
        matches!(rd.0, Ok(ref v) if v.is_empty())
            || matches!(rd.0, Err(ref e) if e.is_unavailable()),
        "read during a hang: {:?}",
        rd.0
    );
    assert!(rd.1 < bound, "read took {:?}, bound {bound:?}", rd.1);
    w.0.expect("write during a hang is kept");
    assert!(w.1 < bound, "write took {:?}, bound {bound:?}", w.1);
    wait_for("outage mode", bound, || status(&store).down).await;
    let detect = frozen_at.elapsed();
    assert!(detect < bound, "detected after {detect:?}");

    // In outage mode: fast answers, writes buffered, cached reads served.
    let mut expected = vec![(
        "w0".to_string(),
        val(json!({"during": buffer(&bytes_for(8, 16))})),
    )];
    for n in 1..20u64 {
        let v = val(json!({"n": n, "b": buffer(&bytes_for(n + 50, 24))}));
        let t = Instant::now();
        s.set(vec![put("pre-key", &format!("w{n}"), &v)])
            .await
            .expect("buffered");
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "buffered write took {:?}",
            t.elapsed()
        );
        expected.push((format!("w{n}"), v));
    }
    let t = Instant::now();
    // A key never stored is answered absent from the key directory, at once, during the hang.
    let r = s.get("pre-key", &ids(&["other-uncached"])).await;
    assert!(matches!(r, Ok(ref v) if v.is_empty()), "{r:?}");
    assert!(t.elapsed() < Duration::from_millis(500));
    assert_eq!(
        get_map(&s, "pre-key", &ids(&["cached"]))
            .await
            .expect("cached")["cached"],
        v0
    );
    // Reconnect probes against the hung network are bounded too: let a few run.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = status(&store);
    assert!(st.down && st.reconnect_attempts >= 1, "{st:?}");
    assert_eq!(st.pending_calls, 20, "{st:?}");

    proxy.freeze(false);
    let thawed = Instant::now();
    wait_for("recovery after the thaw", Duration::from_secs(30), || {
        !status(&store).down
    })
    .await;
    let recover = thawed.elapsed();
    let rows = db_keys(&direct, "hang").await;
    let lost = expected
        .iter()
        .filter(|(id, v)| rows.get(&("pre-key".to_string(), id.clone())) != Some(&v.to_value()))
        .count();
    eprintln!(
        "[outage] network hang: calls ended within {:?}/{:?} (read/write, bound {bound:?}), detect {detect:?}, recover {recover:?} after the thaw, lost {lost}",
        rd.1,
        w.1
    );
    assert_eq!(lost, 0);
    let report = store.close().await.expect("close");
    assert!(report.unflushed.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 4. PostgreSQL SIGKILLed in the middle of large sets, 20 times
// ---------------------------------------------------------------------------------------------

const BIG_SET_KEYS: usize = 2000;

/// One big `set`: its call name, whether it went through the buffer-policy store, its outcome.
type SetOutcome = (String, bool, authstate::Result<()>);

/// One `set` that owns its keys: `<call>-<n>`, each valued `{"m": <call>, "n": n, ...}`.
fn big_set(call: &str) -> Vec<KeyWrite> {
    (0..BIG_SET_KEYS)
        .map(|n| {
            let v = val(json!({"m": call, "n": n, "public": {"type": "Buffer", "data": "BQECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g"}}));
            put("pre-key", &format!("{call}-{n}"), &v)
        })
        .collect()
}

/// Per call: (rows, rows whose marker is that call), for the companies given, in one snapshot.
async fn call_counts(url: &str, companies: &[&str]) -> HashMap<String, (i64, i64)> {
    let client = sql(url).await;
    let companies: Vec<String> = companies.iter().map(|c| c.to_string()).collect();
    let rows = client
        .query(
            "SELECT split_part(key_id, '-', 1) AS call, count(*),
                    count(*) FILTER (WHERE value->>'m' = split_part(key_id, '-', 1))
             FROM whatsapp_keys WHERE company_id = ANY($1) GROUP BY 1",
            &[&companies],
        )
        .await
        .expect("count calls");
    rows.iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                (r.get::<_, i64>(1), r.get::<_, i64>(2)),
            )
        })
        .collect()
}

fn assert_no_partial(counts: &HashMap<String, (i64, i64)>, when: &str) {
    for (call, (rows, marked)) in counts {
        assert_eq!(
            *rows, BIG_SET_KEYS as i64,
            "{when}: call {call} is partial: {rows} rows"
        );
        assert_eq!(rows, marked, "{when}: call {call} has foreign values");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkilled_during_large_sets_20_times() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    let buffered = open(config(&url)).await;
    let mut ro_cfg = config(&url);
    ro_cfg.outage_policy = OutagePolicy::ReadOnly;
    let read_only = open(ro_cfg).await;
    let outcomes: Arc<StdMutex<Vec<SetOutcome>>> = Arc::default();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    let mut recover_times = Vec::new();
    let mut detected = 0;
    let started = Instant::now();
    for iter in 0..20 {
        let outages_before = status(&buffered).outages + status(&read_only).outages;
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..4 {
            let (store, company, is_buf) = if t < 3 {
                (buffered.clone(), format!("kb{t}"), true)
            } else {
                (read_only.clone(), "kr".to_string(), false)
            };
            let outcomes = outcomes.clone();
            tasks.spawn(async move {
                let s = store.session(&company).await.expect("session");
                for c in 0..2 {
                    let call = format!("i{iter}t{t}c{c}");
                    let r = s.set(big_set(&call)).await;
                    outcomes.lock().expect("lock").push((call, is_buf, r));
                }
            });
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(30..250))).await;
        // Even rounds: the postmaster alone (orphans finish their statement); odd rounds: the
        // whole server at once (transactions die half-way).
        pg.kill_postmaster(iter % 2 == 1).await;
        let killed = Instant::now();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(r) = tasks.join_next().await {
                r.expect("writer task");
            }
        })
        .await
        .expect("every set answered after the kill");
        pg.start_server().await;
        let restarted = killed.elapsed();
        // Atomicity, checked in one snapshot right after the restart (before or during replay).
        assert_no_partial(
            &call_counts(&url, &["kb0", "kb1", "kb2", "kr"]).await,
            &format!("after restart {iter}"),
        );
        let back = Instant::now();
        wait_for("both stores up", Duration::from_secs(30), || {
            !status(&buffered).down && !status(&read_only).down
        })
        .await;
        if status(&buffered).outages + status(&read_only).outages > outages_before {
            detected += 1;
            recover_times.push(back.elapsed());
        }
        tracing_free_note(&format!(
            "iteration {iter}: kill to restarted {restarted:?}, restart to up {:?}, total {:?}",
            back.elapsed(),
            killed.elapsed()
        ));
    }
    // A last write through each store proves they work normally again.
    buffered
        .session("kb0")
        .await
        .expect("s")
        .set(big_set("final0"))
        .await
        .expect("final buffered");
    read_only
        .session("kr")
        .await
        .expect("s")
        .set(big_set("final1"))
        .await
        .expect("final read-only");

    let counts = call_counts(&url, &["kb0", "kb1", "kb2", "kr"]).await;
    assert_no_partial(&counts, "at the end");
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("lock"));
    let (mut acked, mut lost, mut refused_buffered, mut refused_ro, mut refused_present) =
        (0, 0, 0, 0, 0);
    for (call, is_buf, r) in outcomes.iter() {
        let present = counts.get(call).map_or(0, |c| c.0);
        match r {
            Ok(()) => {
                acked += 1;
                if present != BIG_SET_KEYS as i64 {
                    lost += 1;
                }
            }
            Err(e) => {
                if *is_buf {
                    refused_buffered += 1;
                    eprintln!("[outage] buffered set {call} failed: {e}");
                } else {
                    assert!(
                        matches!(
                            e.kind(),
                            ErrorKind::ReadOnly | ErrorKind::Unavailable | ErrorKind::Timeout
                        ),
                        "read-only store: {e:?}"
                    );
                    refused_ro += 1;
                    // Ambiguous failures (the commit met the crash) may have committed: all or none.
                    if present != 0 {
                        refused_present += 1;
                    }
                }
            }
        }
    }
    recover_times.sort();
    eprintln!(
        "[outage] postmaster SIGKILL x20 in {:?}: {} outages detected, recover (restart -> up) median {:?} max {:?}; {} sets acknowledged ({} keys), lost {} sets; read-only store refused {} sets ({} of them committed whole before the crash); buffered store refused {}",
        started.elapsed(),
        detected,
        recover_times.get(recover_times.len() / 2),
        recover_times.last(),
        acked,
        acked * BIG_SET_KEYS,
        lost,
        refused_ro,
        refused_present,
        refused_buffered
    );
    assert_eq!(lost, 0, "acknowledged sets lost");
    assert_eq!(
        refused_buffered, 0,
        "the buffer policy keeps writes during the outage"
    );
    assert!(detected >= 10, "most kills should land mid-set: {detected}");
    buffered.close().await.expect("close");
    read_only.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// 5. read-only policy
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_policy_refuses_writes_during_outage_and_recovers() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    let mut cfg = config(&url);
    cfg.outage_policy = OutagePolicy::ReadOnly;
    let store = open(cfg).await;
    let s = store.session("ro").await.expect("session");
    wait_for("key directory loaded", Duration::from_secs(10), || {
        store.metrics().directory.companies >= 1
    })
    .await;
    let v = val(json!({"public": buffer(&bytes_for(1, 33))}));
    s.set(vec![put("pre-key", "1", &v)]).await.expect("set");
    let creds = val(json!({"registrationId": 1}));
    s.save_creds(creds.clone()).await.expect("creds");

    pg.stop().await;
    let stopped = Instant::now();
    first_read_meets_the_failure(&store, &s, "pre-key", "uncached").await;
    let detect = stopped.elapsed();
    assert!(status(&store).down);

    let t = Instant::now();
    let w = s.set(vec![put("pre-key", "2", &v)]).await;
    assert!(
        matches!(w, Err(ref e) if e.kind() == ErrorKind::ReadOnly),
        "{w:?}"
    );
    let c = s.save_creds(val(json!({"registrationId": 2}))).await;
    assert!(
        matches!(c, Err(ref e) if e.kind() == ErrorKind::ReadOnly),
        "{c:?}"
    );
    let d = s.clear().await;
    assert!(
        matches!(d, Err(ref e) if e.kind() == ErrorKind::ReadOnly),
        "{d:?}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "refused at once: {:?}",
        t.elapsed()
    );
    // Reads from memory still work, and the refused writes are not visible.
    let got = get_map(&s, "pre-key", &ids(&["1"])).await.expect("cached");
    assert_eq!(got["1"], v);
    assert_eq!(s.load_creds().await.expect("creds"), Some(creds.clone()));
    // The refused write left nothing: the key is absent (known from the key directory).
    assert!(matches!(
        s.get("pre-key", &ids(&["2"])).await,
        Ok(ref v) if v.is_empty()
    ));
    let st = status(&store);
    assert_eq!(
        (st.policy, st.pending_calls, st.pending_bytes),
        ("read-only", 0, 0),
        "{st:?}"
    );

    pg.start_server().await;
    let back = Instant::now();
    wait_for("recovery", Duration::from_secs(20), || !status(&store).down).await;
    let recover = back.elapsed();
    s.set(vec![put("pre-key", "3", &v)])
        .await
        .expect("write after recovery");
    let rows = db_keys(&url, "ro").await;
    assert!(rows.contains_key(&("pre-key".to_string(), "1".to_string())));
    assert!(rows.contains_key(&("pre-key".to_string(), "3".to_string())));
    assert!(
        !rows.contains_key(&("pre-key".to_string(), "2".to_string())),
        "refused write absent"
    );
    assert_eq!(db_creds(&url, "ro").await, Some(creds.to_value()));
    eprintln!("[outage] read-only policy: detect {detect:?}, recover {recover:?}, lost 0 (refused writes are not acknowledged)");
    store.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// 6. close() during an outage
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_during_outage_reports_unflushed_calls_and_journal_replays_them() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let store = open(config_with_journal(&url, &journal)).await;
    // No outage: close reports nothing.
    assert_eq!(
        store.close().await.expect("close"),
        authstate::CloseReport::default()
    );

    let store = Store::open(config_with_journal(&url, &journal))
        .await
        .expect("open");
    let a = store.session("alpha").await.expect("session");
    let b = store.session("bravo").await.expect("session");
    a.set(vec![put("pre-key", "old", &val(json!(0)))])
        .await
        .expect("committed");
    b.set(vec![put("pre-key", "gone", &val(json!(0)))])
        .await
        .expect("committed");
    pg.stop().await;
    first_read_meets_the_failure(&store, &a, "pre-key", "x").await;
    let v1 = val(json!({"b": buffer(&bytes_for(61, 20))}));
    let v2 = val(json!(["1@s.whatsapp.net", "2@lid"]));
    a.set(vec![
        put("pre-key", "1", &v1),
        put("device-list", "1@s.whatsapp.net", &v2),
    ])
    .await
    .expect("kept");
    a.set(vec![KeyWrite::delete("pre-key", "old").expect("delete")])
        .await
        .expect("kept");
    let creds = val(json!({"registrationId": 9}));
    a.save_creds(creds.clone()).await.expect("kept");
    b.clear().await.expect("kept");
    let report = store.close().await.expect("close");
    assert_eq!(report.flushed_calls, 0);
    type Call<'a> = (String, &'a str, Vec<(String, String)>);
    let got: Vec<Call> = report
        .unflushed
        .iter()
        .map(|u| (u.company_id.clone(), u.kind, u.keys.clone()))
        .collect();
    let pair = |t: &str, i: &str| (t.to_string(), i.to_string());
    assert_eq!(
        got,
        vec![
            (
                "alpha".into(),
                "keys",
                vec![
                    pair("pre-key", "1"),
                    pair("device-list", "1@s.whatsapp.net")
                ]
            ),
            ("alpha".into(), "keys", vec![pair("pre-key", "old")]),
            ("alpha".into(), "creds", vec![]),
            ("bravo".into(), "clear", vec![]),
        ],
        "exactly the unflushed calls, in order"
    );
    assert!(std::fs::metadata(&journal).expect("journal").len() > 0);
    // The store is closed for callers.
    assert!(matches!(
        a.set(vec![put("pre-key", "z", &v1)]).await,
        Err(ref e) if e.kind() == ErrorKind::Closed
    ));

    pg.start_server().await;
    let store = Store::open(config_with_journal(&url, &journal))
        .await
        .expect("reopen");
    assert!(!status(&store).down);
    assert_eq!(std::fs::metadata(&journal).expect("journal").len(), 0);
    let rows = db_keys(&url, "alpha").await;
    assert_eq!(rows.get(&pair("pre-key", "1")), Some(&v1.to_value()));
    assert_eq!(
        rows.get(&pair("device-list", "1@s.whatsapp.net")),
        Some(&v2.to_value())
    );
    assert!(!rows.contains_key(&pair("pre-key", "old")));
    assert_eq!(db_creds(&url, "alpha").await, Some(creds.to_value()));
    assert!(db_keys(&url, "bravo").await.is_empty());
    eprintln!("[outage] close during outage: 4 calls reported unflushed, replayed by the next open, lost 0");
    store.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// 7. The pending bound
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_bound_refuses_with_backlog_and_keeps_nothing_partial() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    let mut cfg = config(&url);
    cfg.max_pending_bytes = 10_000;
    let store = open(cfg).await;
    let s = store.session("bounded").await.expect("session");
    pg.stop().await;
    first_read_meets_the_failure(&store, &s, "pre-key", "x").await;

    let big = |n: u64| val(json!({"b": b64(&bytes_for(n, 2100))})); // ~2.8 KB of text each
    let mut kept = Vec::new();
    for n in 0..3u64 {
        s.set(vec![put("session", &format!("k{n}"), &big(n))])
            .await
            .expect("within the bound");
        kept.push(n);
    }
    let st = status(&store);
    assert_eq!(st.pending_calls, 3);
    let room = 10_000 - st.pending_bytes;
    assert!(room < 2 * big(9).len(), "room {room}");
    // A call whose keys would each fit, but not together: refused whole.
    let half = val(json!({"b": b64(&bytes_for(70, room * 3 / 8))}));
    assert!(half.len() < room && 2 * half.len() > room);
    let r = s
        .set(vec![
            put("session", "h1", &half),
            put("session", "h2", &half),
        ])
        .await;
    assert!(
        matches!(r, Err(ref e) if e.kind() == ErrorKind::Backlog),
        "{r:?}"
    );
    // A big call is refused too; a small one still fits; the bound holds.
    let r = s.set(vec![put("session", "k9", &big(9))]).await;
    assert!(
        matches!(r, Err(ref e) if e.kind() == ErrorKind::Backlog),
        "{r:?}"
    );
    s.set(vec![put("session", "small", &val(json!(1)))])
        .await
        .expect("small still fits");
    // Several queued at once (merged by group commit): each call gets its own answer.
    let t1 = s
        .set_begin(vec![put("session", "k10", &big(10))])
        .expect("begin");
    let t2 = s
        .set_begin(vec![put("session", "tiny", &val(json!(2)))])
        .expect("begin");
    let (r1, r2) = tokio::join!(t1.wait(), t2.wait());
    assert!(
        matches!(r1, Err(ref e) if e.kind() == ErrorKind::Backlog),
        "{r1:?}"
    );
    r2.expect("a small call queued with a refused one is kept");
    let st = status(&store);
    assert!(st.pending_bytes <= 10_000, "{st:?}");
    assert_eq!(st.pending_calls, 5, "{st:?}");
    // Nothing of a refused call is visible: answered absent when the key directory had loaded
    // before the stop (it is loaded in the background at session open, so that races with the
    // stop above), else Unavailable (the read needs the database).
    for id in ["h1", "h2", "k9", "k10"] {
        let r = s.get("session", &ids(&[id])).await;
        assert!(
            matches!(r, Ok(ref v) if v.is_empty())
                || matches!(r, Err(ref e) if e.kind() == ErrorKind::Unavailable),
            "{id}: {r:?}"
        );
    }

    pg.start_server().await;
    wait_for("recovery", Duration::from_secs(20), || !status(&store).down).await;
    let rows = db_keys(&url, "bounded").await;
    let mut present: Vec<&str> = rows.keys().map(|(_, i)| i.as_str()).collect();
    present.sort();
    assert_eq!(present, vec!["k0", "k1", "k2", "small", "tiny"]);
    for n in kept {
        assert_eq!(
            rows[&("session".to_string(), format!("k{n}"))],
            big(n).to_value()
        );
    }
    eprintln!("[outage] pending bound: refused calls got Backlog, nothing partial, 5 kept calls replayed, lost 0");
    store.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// 8. A large journal replayed at open while the reconnect loop also wakes up
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_journal_replay_at_open_then_a_second_outage_recovers() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let store = open(config_with_journal(&url, &journal)).await;
    let s = store.session("big").await.expect("session");
    pg.stop().await;
    first_read_meets_the_failure(&store, &s, "pre-key", "x").await;
    // ~300 calls of 60 keys: a replay long enough for the reconnect loop's first attempt
    // (after ~100 ms) to start while Store::open is still replaying.
    let calls = 300;
    for c in 0..calls {
        let writes = (0..60)
            .map(|n| {
                put(
                    "session",
                    &format!("{c}-{n}"),
                    &val(json!({"c": c, "n": n, "pad": b64(&bytes_for(n, 200))})),
                )
            })
            .collect();
        s.set(writes).await.expect("kept");
    }
    let report = store.close().await.expect("close");
    assert_eq!(report.unflushed.len(), calls);

    pg.start_server().await;
    let t = Instant::now();
    let store = Store::open(config_with_journal(&url, &journal))
        .await
        .expect("reopen");
    let replay = t.elapsed();
    assert!(!status(&store).down);
    let s = store.session("big").await.expect("session");
    // Newer writes right after open must not be overwritten by a late second replay.
    let newer = val(json!({"newer": true}));
    s.set(vec![
        put("session", "0-0", &newer),
        put("session", "299-59", &newer),
    ])
    .await
    .expect("write after open");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rows = db_keys(&url, "big").await;
    assert_eq!(rows.len(), calls * 60);
    assert_eq!(
        rows[&("session".to_string(), "0-0".to_string())],
        newer.to_value(),
        "stale replay after newer write"
    );
    assert_eq!(
        rows[&("session".to_string(), "299-59".to_string())],
        newer.to_value(),
        "stale replay after newer write"
    );

    // The reconnect loop is still alive: a second outage ends by itself.
    pg.stop().await;
    let second = val(json!({"second": 1}));
    s.set(vec![put("session", "second", &second)])
        .await
        .expect("kept in the second outage");
    assert!(status(&store).down);
    pg.start_server().await;
    let back = Instant::now();
    wait_for(
        "recovery from the second outage",
        Duration::from_secs(20),
        || !status(&store).down,
    )
    .await;
    let recover = back.elapsed();
    assert_eq!(
        db_keys(&url, "big").await[&("session".to_string(), "second".to_string())],
        second.to_value()
    );
    eprintln!("[outage] large journal: {} calls ({} keys) replayed in {replay:?} at open; second outage recovered in {recover:?}; lost 0", calls, calls * 60);
    store.close().await.expect("close");
}

// ---------------------------------------------------------------------------------------------
// 9. A torn journal tail (a crash mid-append) followed by more writes in the next process
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_journal_tail_then_more_writes_are_all_replayed() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let store = open(config_with_journal(&url, &journal)).await;
    let s = store.session("torn").await.expect("session");
    pg.stop().await;
    first_read_meets_the_failure(&store, &s, "pre-key", "x").await;
    let first = val(json!({"name": "café ☕", "b": buffer(&bytes_for(1, 16))}));
    s.set(vec![put("pre-key", "1", &first)])
        .await
        .expect("kept");
    let report = store.close().await.expect("close");
    assert_eq!(report.unflushed.len(), 1);
    // What a SIGKILL in the middle of an append leaves: part of a record, cut inside a
    // multi-byte character, no newline (that call was never acknowledged).
    let mut torn = br#"{"c":"torn","op":"keys","w":[["pre-key","2",{"name":"caf"#.to_vec();
    torn.push(0xC3);
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&journal)
        .expect("journal");
    std::io::Write::write_all(&mut f, &torn).expect("append torn tail");
    drop(f);

    // The next process starts while the database is still down and takes more writes.
    let store = Store::open(config_with_journal(&url, &journal))
        .await
        .expect("open with a torn tail");
    let s = store.session("torn").await.expect("session");
    assert_eq!(
        get_map(&s, "pre-key", &ids(&["1"]))
            .await
            .expect("from the journal")["1"],
        first
    );
    let second = val(json!({"n": 2}));
    s.set(vec![put("pre-key", "3", &second)])
        .await
        .expect("kept after the torn tail");
    store.close().await.expect("close");

    pg.start_server().await;
    let store = Store::open(config_with_journal(&url, &journal))
        .await
        .expect("open after restart");
    assert!(!status(&store).down);
    let rows = db_keys(&url, "torn").await;
    let lost = [("1", &first), ("3", &second)]
        .iter()
        .filter(|(id, v)| rows.get(&("pre-key".to_string(), id.to_string())) != Some(&v.to_value()))
        .count();
    assert!(
        !rows.contains_key(&("pre-key".to_string(), "2".to_string())),
        "the torn call is not replayed"
    );
    eprintln!("[outage] torn journal tail: 2 acknowledged calls around a torn record, lost {lost}");
    assert_eq!(lost, 0);
    store.close().await.expect("close");
}

/// A long outage on a few hot keys (what Signal traffic looks like: the same session records
/// rewritten on every message) keeps the pending log and the journal proportional to the keys,
/// not to the number of calls; while recovery replays, writes keep arriving and the last
/// acknowledged value of every key wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_writes_coalesce_per_key_and_the_journal_stays_compact() {
    let _serial = SERIAL.lock().await;
    let pg = Pg::start().await;
    let url = pg.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let journal = dir.path().join("j");
    let store = open(config_with_journal(&url, &journal)).await;
    let a = store.session("alpha").await.expect("session");
    let b = store.session("bravo").await.expect("session");
    b.set(vec![put("pre-key", "before-clear", &val(json!(1)))])
        .await
        .expect("committed");
    pg.stop().await;
    first_read_meets_the_failure(&store, &a, "session", "unknown").await;

    let record = |n: u64| val(json!({"n": n, "blob": b64(&bytes_for(n, 1500))}));
    let calls = 1500u64;
    for n in 0..calls {
        a.set(vec![
            put("session", "peer-1", &record(n)),
            put("session", &format!("peer-{}", n % 3 + 2), &record(n)),
        ])
        .await
        .expect("kept");
        b.set(vec![put("sender-key", "group::me", &record(n))])
            .await
            .expect("kept");
        if n % 100 == 50 {
            a.save_creds(val(json!({"registrationId": n})))
                .await
                .expect("kept");
        }
        if n == 700 {
            b.clear().await.expect("kept");
        }
    }
    a.set(vec![KeyWrite::delete("session", "peer-4").expect("delete")])
        .await
        .expect("kept");
    let st = status(&store);
    eprintln!(
        "coalescing: {} calls acknowledged during the outage -> {} pending calls, {} pending bytes, journal {} bytes",
        calls * 2 + 16,
        st.pending_calls,
        st.pending_bytes,
        st.journal_bytes
    );
    assert!(st.down);
    assert!(
        st.pending_calls <= 10,
        "pending calls grow with calls, not keys: {st:?}"
    );
    assert!(st.pending_bytes < 6 * 2100, "pending bytes: {st:?}");
    assert!(
        st.journal_bytes < 4 << 20,
        "the journal was not compacted: {st:?}"
    );
    // Reads during the outage see the last writes.
    let got = a
        .get("session", &ids(&["peer-1", "peer-4"]))
        .await
        .expect("read-your-writes");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1.to_value()["n"], json!(calls - 1));

    // Recovery while writes keep coming: the last acknowledged value of each key wins.
    pg.start_server().await;
    let mut last = calls - 1;
    while status(&store).down {
        last += 1;
        a.set(vec![put("session", "peer-1", &record(last))])
            .await
            .expect("kept");
    }
    last += 1;
    a.set(vec![put("session", "peer-1", &record(last))])
        .await
        .expect("committed");
    let keys = db_keys(&url, "alpha").await;
    assert_eq!(
        keys[&("session".to_string(), "peer-1".to_string())]["n"],
        json!(last)
    );
    assert!(!keys.contains_key(&("session".to_string(), "peer-4".to_string())));
    for p in [2, 3] {
        let n = keys[&("session".to_string(), format!("peer-{p}"))]["n"]
            .as_u64()
            .expect("n");
        assert_eq!(
            n % 3 + 2,
            p,
            "peer-{p} holds a value written for another key"
        );
        assert!(n + 3 >= calls, "peer-{p} holds an old value {n}");
    }
    assert_eq!(
        db_creds(&url, "alpha").await,
        Some(json!({"registrationId": 1450}))
    );
    let b_keys = db_keys(&url, "bravo").await;
    assert_eq!(
        b_keys.len(),
        1,
        "the clear removed what came before it: {b_keys:?}"
    );
    assert_eq!(
        b_keys[&("sender-key".to_string(), "group::me".to_string())]["n"],
        json!(calls - 1)
    );
    assert_eq!(
        std::fs::metadata(&journal).expect("journal").len(),
        0,
        "journal truncated after replay"
    );
    store.close().await.expect("close");
}

/// Bytes of records in a journal file: it may also hold reserved space (zeros) after them.
fn records_len(path: &std::path::Path) -> u64 {
    let data = std::fs::read(path).expect("journal");
    data.iter().position(|&b| b == 0).unwrap_or(data.len()) as u64
}
