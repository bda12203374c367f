//! One writer per company, with real processes: the test binary runs itself as child store
//! processes (the ignored `lease_child` test, driven over stdin/stdout) and SIGKILLs, SIGSTOPs
//! and SIGCONTs them. Every test checks what PostgreSQL holds with plain SQL.
//!
//! Leases here expire after 2 s (heartbeat 500 ms) so takeovers happen within the test.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;

use authstate::{Config, ErrorKind, KeyWrite, Store, StoredValue};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

const EXPIRY: Duration = Duration::from_secs(2);
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Generous bound on anything that should take about one expiry, so a busy machine does not
/// fail the tests; the measured times are printed.
const PATIENCE: Duration = Duration::from_secs(30);

const CHILD_URL: &str = "AUTHSTATE_LEASE_CHILD_URL";
/// Answers of the child start with this, so libtest's own output is never taken for one.
const TAG: &str = "@@ ";

fn config(url: &str) -> Config {
    let mut cfg = Config::from_url(url).expect("config");
    cfg.lease_expiry = EXPIRY;
    cfg.lease_heartbeat = HEARTBEAT;
    cfg.pool_size = 4;
    cfg
}

fn val(s: &str) -> StoredValue {
    StoredValue::from_json(&serde_json::to_string(s).expect("json")).expect("value")
}

fn put(id: &str, v: &str) -> Vec<KeyWrite> {
    vec![KeyWrite::put("pre-key", id, val(v)).expect("key write")]
}

/// The value of pre-key `id` of `company` in PostgreSQL.
async fn db_value(url: &str, company: &str, id: &str) -> Option<String> {
    let db = common::sql(url).await;
    db.query_opt(
        "SELECT value #>> '{}' FROM whatsapp_keys WHERE company_id = $1 AND key_type = 'pre-key' AND key_id = $2",
        &[&company, &id],
    )
    .await
    .expect("query")
    .map(|r| r.get(0))
}

/// `company -> (holder pid, token)` of the live leases.
async fn holders(url: &str) -> HashMap<String, (i32, i64)> {
    let db = common::sql(url).await;
    db.query(
        "SELECT company_id, holder_pid, token FROM authstate_leases WHERE expires_at > now()",
        &[],
    )
    .await
    .expect("query")
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect()
}

// ---------------------------------------------------------------------------------------------
// The child store process
// ---------------------------------------------------------------------------------------------

/// Run only as a child of the tests below (which set the env var). Reads one command per line
/// on stdin and answers each with one `@@ ` line on stdout:
/// `open C` / `wait C` (session, session_wait 30 s), `set C id value`, `get C id`,
/// `metrics`, `close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child store process of the lease tests"]
async fn lease_child() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let store = Store::open(config(&url)).await.expect("child: open");
    let mut sessions = HashMap::new();
    println!("{TAG}READY {}", std::process::id());
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["open", c] | ["wait", c] => {
                let r = if words[0] == "open" {
                    store.session(c).await
                } else {
                    store.session_wait(c, PATIENCE).await
                };
                match r {
                    Ok(s) => {
                        sessions.insert(c.to_string(), s);
                        "OK".to_string()
                    }
                    Err(e) => format!("ERR {} {}", e.code(), e.message()),
                }
            }
            ["set", c, id, v] => match sessions.get(*c) {
                None => "ERR NO_SESSION".into(),
                Some(s) => match s.set(put(id, v)).await {
                    Ok(()) => "OK".into(),
                    Err(e) => format!("ERR {} {}", e.code(), e.message()),
                },
            },
            ["get", c, id] => match sessions.get(*c) {
                None => "ERR NO_SESSION".into(),
                Some(s) => match s.get("pre-key", &[*id]).await {
                    Ok(found) => format!("OK {}", found.len()),
                    Err(e) => format!("ERR {} {}", e.code(), e.message()),
                },
            },
            ["metrics"] => serde_json::to_string(&store.metrics().leases).expect("json"),
            ["close"] => {
                sessions.clear();
                let r = store.close().await;
                println!("{TAG}{}", if r.is_ok() { "OK" } else { "ERR close" });
                return;
            }
            _ => format!("ERR bad command {line:?}"),
        };
        println!("{TAG}{answer}");
    }
}

/// A child store process and its stdin/stdout.
struct Proc {
    child: Child,
    pid: u32,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

impl Proc {
    async fn spawn(url: &str) -> Proc {
        let mut child = tokio::process::Command::new(std::env::current_exe().expect("exe"))
            .args([
                "lease_child",
                "--exact",
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_URL, url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a child store");
        let stdin = child.stdin.take().expect("stdin");
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut p = Proc {
            child,
            pid: 0,
            stdin,
            out,
        };
        let ready = p.answer().await;
        p.pid = ready
            .strip_prefix("READY ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("child: {ready}"));
        p
    }

    /// The next answer line (libtest's own output is skipped).
    async fn answer(&mut self) -> String {
        tokio::time::timeout(Duration::from_secs(120), async {
            loop {
                let line = self
                    .out
                    .next_line()
                    .await
                    .expect("child stdout")
                    .expect("the child exited");
                if let Some(i) = line.find(TAG) {
                    return line[i + TAG.len()..].to_string();
                }
            }
        })
        .await
        .expect("the child answers")
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .expect("child stdin");
        self.stdin.flush().await.expect("flush");
        self.answer().await
    }

    async fn leases(&mut self) -> serde_json::Value {
        serde_json::from_str(&self.cmd("metrics").await).expect("metrics json")
    }

    async fn signal(&self, sig: &str) {
        let ok = tokio::process::Command::new("kill")
            .args([sig, &self.pid.to_string()])
            .status()
            .await
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {}", self.pid);
    }

    async fn sigkill(mut self) {
        self.child.kill().await.expect("SIGKILL");
    }
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_is_refused_and_told_who_holds_it_then_gets_it_after_a_clean_close() {
    let url = common::fresh_database("refused").await;
    Store::open(config(&url))
        .await
        .expect("open")
        .migrate()
        .await
        .expect("migrate");
    let mut a = Proc::spawn(&url).await;
    assert_eq!(a.cmd("open acme").await, "OK");
    assert_eq!(a.cmd("set acme 1 from-a").await, "OK");

    let store = Store::open(config(&url)).await.expect("open");
    let e = store.session("acme").await.expect_err("the lease is held");
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    let host = store.metrics().leases.host;
    for part in [
        format!("pid {}", a.pid),
        format!("host {host}"),
        "instance ".into(),
        "since 20".into(),
    ] {
        assert!(e.message().contains(&part), "{part:?} not in {e}");
    }
    assert_eq!(holders(&url).await["acme"].0, a.pid as i32);
    // Another company is free.
    let _other = store.session("other").await.expect("a free company");

    // A clean close releases at once: the next open succeeds without waiting for expiry.
    assert_eq!(a.cmd("close").await, "OK");
    let s = store.session("acme").await.expect("released at close");
    s.set(put("2", "from-parent")).await.expect("write");
    let (pid, _) = holders(&url).await["acme"];
    assert_eq!(pid, std::process::id() as i32);
    assert_eq!(db_value(&url, "acme", "1").await.as_deref(), Some("from-a"));
    let m = store.metrics().leases;
    assert!(m.enabled && m.held == 2 && m.lost == 0, "{m:?}");
    store.close().await.expect("close");
    assert!(holders(&url).await.is_empty(), "close released every lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_holder_frees_the_lease_after_the_expiry() {
    let url = common::fresh_database("sigkill").await;
    let store = Store::open(config(&url)).await.expect("open");
    store.migrate().await.expect("migrate");
    let mut a = Proc::spawn(&url).await;
    assert_eq!(a.cmd("open acme").await, "OK");
    assert_eq!(a.cmd("set acme 1 from-a").await, "OK");
    let (_, token_a) = holders(&url).await["acme"];
    a.sigkill().await;
    let killed = Instant::now();
    // Still held right after the kill: a dead holder is not told apart from a slow one.
    let e = store
        .session("acme")
        .await
        .expect_err("held until it expires");
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    let s = store
        .session_wait("acme", PATIENCE)
        .await
        .expect("taken over after the expiry");
    let took = killed.elapsed();
    let (pid, token) = holders(&url).await["acme"];
    assert_eq!(pid, std::process::id() as i32);
    assert!(token > token_a, "a takeover bumps the fencing token");
    s.set(put("1", "from-parent")).await.expect("write");
    assert_eq!(
        db_value(&url, "acme", "1").await.as_deref(),
        Some("from-parent")
    );
    eprintln!("[lease] SIGKILLed holder: taken over {took:?} after the kill (expiry {EXPIRY:?})");
    store.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_that_lost_its_lease_cannot_write_when_it_resumes() {
    let url = common::fresh_database("sigstop").await;
    let store = Store::open(config(&url)).await.expect("open");
    store.migrate().await.expect("migrate");
    let mut a = Proc::spawn(&url).await;
    assert_eq!(a.cmd("open acme").await, "OK");
    assert_eq!(a.cmd("set acme 1 a-before").await, "OK");
    assert_eq!(a.cmd("get acme 1").await, "OK 1", "cached in the child");

    a.signal("-STOP").await;
    let s = store
        .session_wait("acme", PATIENCE)
        .await
        .expect("taken over from the paused holder");
    s.set(put("1", "b")).await.expect("the new holder writes");
    a.signal("-CONT").await;

    // The resumed process must not write: either its heartbeat found the lease gone first, or
    // the write itself was fenced in SQL. Either way LOCKED, and nothing of it lands.
    let r = a.cmd("set acme 1 a-after").await;
    assert!(r.starts_with("ERR LOCKED"), "{r}");
    let r = a.cmd("set acme 2 a-after").await;
    assert!(r.starts_with("ERR LOCKED"), "{r}");
    // Its cache was dropped: reads are refused instead of serving a stale value.
    let r = a.cmd("get acme 1").await;
    assert!(r.starts_with("ERR LOCKED"), "{r}");
    let m = a.leases().await;
    assert_eq!(m["lost"], 1, "{m}");
    assert_eq!(m["held"], 0, "{m}");
    assert_eq!(db_value(&url, "acme", "1").await.as_deref(), Some("b"));
    assert_eq!(db_value(&url, "acme", "2").await, None);
    assert_eq!(holders(&url).await["acme"].0, std::process::id() as i32);
    assert_eq!(a.cmd("close").await, "OK");
    store.close().await.expect("close");
}

/// The fence in the write statement itself: a holder that never renews (heartbeat far longer
/// than the expiry, as if paused) writes after another store took the lease over.
///
/// One thread and one write lane, so the three calls below are all enqueued before the lane
/// commits any of them: one group commit. On two worker threads the lane committed the first
/// call (and so marked the company lost) before the second was enqueued, once in CI.
#[tokio::test(flavor = "current_thread")]
async fn a_write_after_a_takeover_is_fenced_by_the_statement() {
    let url = common::fresh_database("fence").await;
    let mut slow = config(&url);
    slow.lease_expiry = Duration::from_millis(500);
    slow.lease_heartbeat = Duration::from_secs(3600);
    slow.write_lanes = 1;
    let a = Store::open(slow).await.expect("open");
    a.migrate().await.expect("migrate");
    let b = Store::open(config(&url)).await.expect("open");
    let sa = a.session("acme").await.expect("a holds");
    let sa_other = a.session("other").await.expect("a holds");
    sa.set(put("1", "a")).await.expect("a writes");
    sa.save_creds(val("creds-a")).await.expect("a creds");
    let sb = b
        .session_wait("acme", PATIENCE)
        .await
        .expect("b takes over");
    sb.set(put("1", "b")).await.expect("b writes");

    // A group commit of a lost company and a company still held: only the first is fenced.
    let commits = |s: &Store| s.metrics().op("commit").map_or(0, |o| o.count);
    let commits_before = commits(&a);
    let t1 = sa.set_begin(put("1", "a-late")).expect("enqueued");
    let t2 = sa.save_creds_begin(val("creds-late")).expect("enqueued");
    let t3 = sa_other.set_begin(put("9", "a-other")).expect("enqueued");
    let (r1, r2, r3) = tokio::join!(
        t1.wait(),
        async move {
            match t2 {
                Some(t) => t.wait().await,
                None => Ok(()),
            }
        },
        t3.wait()
    );
    assert_eq!(r1.expect_err("fenced").kind(), ErrorKind::Locked);
    assert_eq!(r2.expect_err("fenced").kind(), ErrorKind::Locked);
    r3.expect("the other company is still ours (its lease expired but nobody took it)");
    assert_eq!(commits(&a), commits_before + 1, "one group commit");
    assert!(sa.lease_lost());
    assert_eq!(
        sa.clear().await.expect_err("lost").kind(),
        ErrorKind::Locked
    );
    assert_eq!(db_value(&url, "acme", "1").await.as_deref(), Some("b"));
    assert_eq!(
        db_value(&url, "other", "9").await.as_deref(),
        Some("a-other")
    );
    let db = common::sql(&url).await;
    let creds: String = db
        .query_one(
            "SELECT creds #>> '{}' FROM whatsapp_auth WHERE company_id = 'acme'",
            &[],
        )
        .await
        .expect("creds")
        .get(0);
    assert_eq!(creds, "creds-a", "the fenced creds save did not land");
    assert_eq!(a.metrics().leases.lost, 1);

    // A new session of the lost company in the same process waits for the lease again.
    let e = a.session("acme").await.expect_err("b holds it");
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    b.close().await.expect("close b");
    let again = a.session("acme").await.expect("released by b");
    assert_eq!(
        again.get("pre-key", &["1"]).await.expect("read")[0].1,
        val("b"),
        "read from the database, not the dropped cache"
    );
    assert!(sa.lease_lost(), "old handles stay lost");
    a.close().await.expect("close a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_companies_of_a_killed_process_are_taken_over_by_the_others() {
    let url = common::fresh_database("three").await;
    Store::open(config(&url))
        .await
        .expect("open")
        .migrate()
        .await
        .expect("migrate");
    let mut procs = vec![
        Proc::spawn(&url).await,
        Proc::spawn(&url).await,
        Proc::spawn(&url).await,
    ];
    let n = 30;
    for i in 0..n {
        let p = &mut procs[i % 3];
        assert_eq!(p.cmd(&format!("open co-{i}")).await, "OK");
        assert_eq!(p.cmd(&format!("set co-{i} 1 v{i}")).await, "OK");
    }
    // Nobody can open another's company.
    let r = procs[1].cmd("open co-0").await;
    assert!(r.starts_with("ERR LOCKED"), "{r}");

    let dead = procs.remove(0);
    let dead_pid = dead.pid as i32;
    dead.sigkill().await;
    // The survivors share the dead process's companies out and keep writing them.
    let orphans: Vec<usize> = (0..n).filter(|i| i % 3 == 0).collect();
    for (k, i) in orphans.iter().enumerate() {
        let p = &mut procs[k % 2];
        assert_eq!(p.cmd(&format!("wait co-{i}")).await, "OK", "co-{i}");
        assert_eq!(p.cmd(&format!("set co-{i} 2 w{i}")).await, "OK");
    }
    let live = holders(&url).await;
    for i in 0..n {
        let (pid, _) = live[&format!("co-{i}")];
        assert_ne!(pid, dead_pid, "co-{i}");
        assert!(
            procs.iter().any(|p| p.pid as i32 == pid),
            "co-{i} held by {pid}"
        );
        assert_eq!(
            db_value(&url, &format!("co-{i}"), "1").await,
            Some(format!("v{i}"))
        );
    }
    for i in &orphans {
        assert_eq!(
            db_value(&url, &format!("co-{i}"), "2").await,
            Some(format!("w{i}"))
        );
    }
    for p in procs.iter_mut() {
        let m = p.leases().await;
        assert_eq!(m["held"], 15, "{m}");
        assert_eq!(p.cmd("close").await, "OK");
    }
}

/// Heartbeats are one statement per interval for all the leases of a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_of_a_thousand_companies_are_one_statement_per_interval() {
    let url = common::fresh_database("beats").await;
    let mut cfg = config(&url);
    cfg.lease_heartbeat = Duration::from_millis(300);
    let store = Store::open(cfg).await.expect("open");
    store.migrate().await.expect("migrate");
    let mut sessions = Vec::new();
    for i in 0..1000 {
        sessions.push(store.session(&format!("c{i}")).await.expect("session"));
    }
    let beats = |s: &Store| s.metrics().op("lease_heartbeat").map_or(0, |o| o.count);
    let cpu_before = process_cpu();
    let start = beats(&store);
    let started = Instant::now();
    while beats(&store) < start + 10 {
        assert!(started.elapsed() < PATIENCE, "heartbeats stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = started.elapsed();
    let cpu = process_cpu().zip(cpu_before).map(|(a, b)| a - b);
    let m = store.metrics();
    let hb = m.op("lease_heartbeat").expect("heartbeats");
    assert_eq!(m.leases.held, 1000, "{:?}", m.leases);
    assert_eq!(m.leases.lost, 0);
    // 1,000 held leases, yet one statement per interval (not one per company).
    assert_eq!(m.op("lease_acquire").map(|o| o.count), Some(1000));
    assert_eq!(hb.count, m.leases.heartbeats);
    assert!(hb.count - start < 100, "{} statements", hb.count - start);
    let db = common::sql(&url).await;
    let fresh: i64 = db
        .query_one(
            "SELECT count(*) FROM authstate_leases WHERE heartbeat_at > acquired_at",
            &[],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(
        fresh, 1000,
        "every lease was renewed by the last heartbeats"
    );
    eprintln!(
        "[lease] 1000 leases: 10 heartbeats in {took:?} (one UPDATE each, p50 {} us, max {} us); \
         process CPU in that window {:?} (all of the process, both runtimes' threads)",
        hb.p50_us, hb.max_us, cpu
    );
    drop(sessions);
    store.close().await.expect("close");
}

/// utime + stime of this process, from /proc (Linux).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_session_releases_and_an_unmigrated_database_is_a_clear_error() {
    let url = common::fresh_database("drop").await;
    let a = Store::open(config(&url)).await.expect("open");
    let e = a.session("acme").await.expect_err("no lease table yet");
    assert_eq!(e.kind(), ErrorKind::Migration, "{e}");
    assert!(e.message().contains("authstate migrate"), "{e}");
    a.migrate().await.expect("migrate");
    let b = Store::open(config(&url)).await.expect("open");
    let s = a.session("acme").await.expect("a holds");
    let s2 = s.clone();
    drop(s);
    assert_eq!(
        b.session("acme")
            .await
            .expect_err("a clone is alive")
            .kind(),
        ErrorKind::Locked
    );
    drop(s2);
    // a's lease task releases it right away (released_at is only set by a release, never by
    // an expiry).
    let db = common::sql(&url).await;
    let started = Instant::now();
    loop {
        let released: i64 = db
            .query_one(
                "SELECT count(*) FROM authstate_leases WHERE released_at IS NOT NULL",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        if released == 1 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let s = b.session("acme").await.expect("released, not expired");
    assert_eq!(a.metrics().leases.held, 0);
    drop(s);
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// Writes kept during an outage are replayed only under the lease they were made under: after
/// another store took the company over they go to the lost-writes file, never into the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_writes_are_not_replayed_over_a_new_holder() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(authstate::tempdb::TempCluster::start)
            .await
            .expect("join")
            .expect("a throwaway PostgreSQL"),
    );
    let url = cluster.url("postgres");
    let dir = tempfile::tempdir().expect("tempdir");
    let journal: PathBuf = dir.path().join("outage.journal");
    let mut with_journal = config(&url);
    with_journal.journal_path = Some(journal.clone());
    with_journal.connect_timeout = Duration::from_secs(1);
    with_journal.statement_timeout = Duration::from_secs(2);

    let a = Store::open(with_journal.clone()).await.expect("open");
    a.migrate().await.expect("migrate");
    let kept = a.session("kept").await.expect("session");
    let taken = a.session("taken").await.expect("session");
    kept.set(put("0", "before")).await.expect("write");
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop("immediate"))
        .await
        .expect("join")
        .expect("stop");
    // Acknowledged during the outage (journaled), then the process goes away with them.
    kept.set(put("1", "a-outage")).await.expect("kept");
    taken.set(put("1", "a-outage")).await.expect("kept");
    taken.save_creds(val("creds-a")).await.expect("kept");
    let report = a.close().await.expect("close");
    assert_eq!(report.unflushed.len(), 3, "{report:?}");
    drop((kept, taken));

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server())
        .await
        .expect("join")
        .expect("restart");
    // Another store takes "taken" over once a's lease expired, and writes it.
    let b = Store::open(config(&url)).await.expect("open");
    let sb = b.session_wait("taken", PATIENCE).await.expect("takeover");
    sb.set(put("1", "b")).await.expect("b writes");

    // a's successor replays the journal: "kept" (nobody took it) lands, "taken" does not.
    let a2 = Store::open(with_journal)
        .await
        .expect("reopen with the journal");
    let m = a2.metrics();
    assert!(!m.outage.down, "{:?}", m.outage);
    assert_eq!(m.leases.lost_calls, 2, "{:?}", m.leases);
    assert_eq!(
        db_value(&url, "kept", "1").await.as_deref(),
        Some("a-outage")
    );
    assert_eq!(db_value(&url, "taken", "1").await.as_deref(), Some("b"));
    let db = common::sql(&url).await;
    let creds = db
        .query_opt(
            "SELECT 1 FROM whatsapp_auth WHERE company_id = 'taken'",
            &[],
        )
        .await
        .expect("query");
    assert!(creds.is_none(), "the lost creds save did not land");
    let lost_file = m.leases.lost_writes_file.expect("a lost-writes file");
    let lost = std::fs::read_to_string(&lost_file).expect("lost file");
    let lines: Vec<serde_json::Value> = lost
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2, "{lost}");
    assert!(lines.iter().all(|l| l["call"]["c"] == "taken"), "{lost}");
    assert_eq!(lines[0]["call"]["w"][0][2], "a-outage");
    assert_eq!(lines[1]["call"]["op"], "creds");
    assert!(
        lost_file.ends_with("outage.journal.lost"),
        "next to the journal: {lost_file}"
    );
    // The journal is done with: nothing is replayed again.
    assert_eq!(std::fs::metadata(&journal).expect("journal").len(), 0);
    // "taken" stays b's: its writes go on.
    sb.set(put("2", "b")).await.expect("b still holds it");
    assert_eq!(db_value(&url, "taken", "2").await.as_deref(), Some("b"));
    a2.close().await.expect("close");
    b.close().await.expect("close");
}

/// A session opened while the database is away opens without its lease (reads are served from
/// memory) and the lease task takes the lease once the database answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_opened_during_an_outage_gets_its_lease_when_the_database_is_back() {
    let cluster = std::sync::Arc::new(
        tokio::task::spawn_blocking(authstate::tempdb::TempCluster::start)
            .await
            .expect("join")
            .expect("a throwaway PostgreSQL"),
    );
    let url = cluster.url("postgres");
    let mut cfg = config(&url);
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.statement_timeout = Duration::from_secs(2);
    let store = Store::open(cfg).await.expect("open");
    store.migrate().await.expect("migrate");
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop("immediate"))
        .await
        .expect("join")
        .expect("stop");
    let s = store
        .session("late")
        .await
        .expect("opens during the outage");
    let e = s.get("pre-key", &["1"]).await.expect_err("not in memory");
    assert_eq!(e.kind(), ErrorKind::Unavailable, "{e}");
    let m = store.metrics().leases;
    assert_eq!((m.held, m.pending), (0, 1), "{m:?}");

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server())
        .await
        .expect("join")
        .expect("restart");
    let started = Instant::now();
    // The lease task and the outage's reconnect loop find the database back independently.
    while store.metrics().leases.held != 1 || store.metrics().outage.down {
        assert!(started.elapsed() < PATIENCE, "{:?}", store.metrics().leases);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(holders(&url).await["late"].0, std::process::id() as i32);
    let other = Store::open(config(&url)).await.expect("open");
    let e = other.session("late").await.expect_err("held");
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    s.set(put("1", "late")).await.expect("write");
    assert_eq!(db_value(&url, "late", "1").await.as_deref(), Some("late"));
    other.close().await.expect("close");
    store.close().await.expect("close");
}

/// A refused open is only that: the lease task, which takes the leases of sessions opened
/// during an outage, must leave alone a company whose opener is acquiring its lease right now.
/// (It did: it found the company "pending", was refused too, and marked a lease this store
/// never held as lost: `leases.lost` counted it and the log said "lease lost".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_refused_while_the_lease_task_runs_lose_nothing() {
    let url = common::fresh_database("refused_opens").await;
    let holder = Store::open(config(&url)).await.expect("open");
    holder.migrate().await.expect("migrate");
    let _held = holder.session("held").await.expect("session");

    let mut cfg = config(&url);
    // Many rounds of the lease task while the opens below are in flight.
    cfg.lease_heartbeat = Duration::from_millis(50);
    let other = Store::open(cfg).await.expect("open");
    let _mine = other.session("mine").await.expect("a free company");
    let beats = |s: &Store| s.metrics().leases.heartbeats;
    let first = beats(&other);
    let started = Instant::now();
    let mut refused = 0;
    while beats(&other) < first + 20 {
        assert!(started.elapsed() < PATIENCE, "{:?}", other.metrics().leases);
        let e = other
            .session("held")
            .await
            .expect_err("held by the other store");
        assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
        refused += 1;
    }
    let m = other.metrics().leases;
    assert_eq!(
        (m.held, m.pending, m.lost),
        (1, 0, 0),
        "{m:?} after {refused} refused opens"
    );
    other.close().await.expect("close");
    holder.close().await.expect("close");
}
