//! A long PostgreSQL outage under realistic load (issue 9, part 4). Not a test: run by
//! `scripts/outage-5min.sh`, which prints its figures.
//!
//! A throwaway cluster of its own (it stops the server). `--accounts` accounts (default 50) run
//! WhatsApp-like traffic through one store with a journal: every ~2 s each account sends or
//! receives a message, which rewrites the Signal session with that contact (~2.5 KB), and
//! sometimes its group sender key and sender-key-memory (a group message), consumes one of its
//! pre-keys (a new contact: the session is new, the pre-key is deleted), reads a key that was
//! never stored (a first contact, answered "absent" from the key directory) and saves its creds
//! (~2 KB). In the middle of the outage one more account logs in: its creds and the login burst
//! of 812 pre-keys in one `set`.
//!
//! Timeline: `--warmup-secs` with the server up, then `pg_ctl stop -m immediate`,
//! `--outage-secs` of traffic (default 300), `pg_ctl start`, traffic until the store has
//! recovered plus `--after-secs`; then the store is closed and every acknowledged write is
//! compared with what PostgreSQL holds (plain SQL). Prints the figures as `name: value` lines
//! and one JSON line, and exits non-zero when an acknowledged write is missing or a write was
//! refused for any reason other than the pending-bytes bound (BACKLOG).
//!
//!   cargo run --example outage_load -- --outage-secs 30

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use authstate::tempdb::TempCluster;
use authstate::{Config, ErrorKind, KeyWrite, Session, Store, StoredValue};
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const DB: &str = "outage_load";
const CONTACTS: u64 = 20;
const GROUPS: u64 = 3;
const LOGIN_PRE_KEYS: u64 = 812;

struct Args {
    accounts: u64,
    warmup: Duration,
    outage: Duration,
    after: Duration,
    max_pending_bytes: Option<usize>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        accounts: 50,
        warmup: Duration::from_secs(20),
        outage: Duration::from_secs(300),
        after: Duration::from_secs(10),
        max_pending_bytes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value"))?
            .parse::<u64>()
            .map_err(|e| format!("{flag}: {e}"))?;
        match flag.as_str() {
            "--accounts" => a.accounts = value.max(2),
            "--warmup-secs" => a.warmup = Duration::from_secs(value),
            "--outage-secs" => a.outage = Duration::from_secs(value),
            "--after-secs" => a.after = Duration::from_secs(value),
            "--max-pending-bytes" => a.max_pending_bytes = Some(value as usize),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(a)
}

fn buffer(rng: &mut StdRng, len: usize) -> Value {
    let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    json!({"type": "Buffer", "data": base64::engine::general_purpose::STANDARD.encode(bytes)})
}

fn b64(rng: &mut StdRng, len: usize) -> String {
    let bytes: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A libsignal session record as Baileys stores it: ~2.5 KB of JSON.
fn session_value(rng: &mut StdRng) -> Value {
    json!({"_sessions": {b64(rng, 33): {
        "registrationId": rng.gen_range(1..16380),
        "currentRatchet": {"ephemeralKeyPair": {"pubKey": b64(rng, 33), "privKey": b64(rng, 32)},
            "lastRemoteEphemeralKey": b64(rng, 33), "previousCounter": rng.gen_range(0..50), "rootKey": b64(rng, 32)},
        "indexInfo": {"baseKey": b64(rng, 33), "baseKeyType": 1, "closed": -1, "used": 1_700_000_000_000u64, "created": 1_700_000_000_000u64, "remoteIdentityKey": b64(rng, 33)},
        "_chains": {b64(rng, 33): {"chainKey": {"counter": rng.gen_range(0..100), "key": b64(rng, 32)}, "chainType": 1, "messageKeys": {}},
                    b64(rng, 33): {"chainKey": {"counter": rng.gen_range(0..100), "key": b64(rng, 32)}, "chainType": 2, "messageKeys": {"1": b64(rng, 32), "2": b64(rng, 32)}}},
        "pendingPreKey": null,
        "oldRatchets": b64(rng, 1200)
    }}, "version": "v1"})
}

fn creds_value(rng: &mut StdRng, n: u64) -> Value {
    json!({"noiseKey": {"private": buffer(rng, 32), "public": buffer(rng, 32)},
        "pairingEphemeralKeyPair": {"private": buffer(rng, 32), "public": buffer(rng, 32)},
        "signedIdentityKey": {"private": buffer(rng, 32), "public": buffer(rng, 32)},
        "signedPreKey": {"keyPair": {"private": buffer(rng, 32), "public": buffer(rng, 32)}, "signature": buffer(rng, 64), "keyId": 1},
        "registrationId": 4711, "advSecretKey": b64(rng, 32), "nextPreKeyId": 813 + n, "firstUnuploadedPreKeyId": 813 + n,
        "accountSyncCounter": n, "accountSettings": {"unarchiveChats": false},
        "account": {"details": b64(rng, 300), "accountSignatureKey": buffer(rng, 32), "accountSignature": buffer(rng, 64), "deviceSignature": buffer(rng, 64)},
        "me": {"id": "5511900000000:1@s.whatsapp.net", "lid": "200000000000000:1@lid", "name": "load"},
        "signalIdentities": [{"identifier": {"name": "200000000000000:1@lid", "deviceId": 0}, "identifierKey": buffer(rng, 33)}],
        "platform": "android", "processedHistoryMessages": [], "lastAccountSyncTimestamp": 1_700_000_000u64, "myAppStateKeyId": b64(rng, 6)})
}

fn pre_key(rng: &mut StdRng) -> Value {
    json!({"private": buffer(rng, 32), "public": buffer(rng, 32)})
}

/// The acknowledged state of one account: last value of each key (`None`: deleted) and creds.
#[derive(Default)]
struct Acked {
    keys: BTreeMap<(String, String), Option<Value>>,
    creds: Option<Value>,
}

/// Shared counters of the run.
#[derive(Default)]
struct Tally {
    calls: AtomicU64,
    calls_in_outage: AtomicU64,
    refused_backlog: AtomicU64,
    refused_other: Mutex<Vec<String>>,
    reads: AtomicU64,
    absent_answers: AtomicU64,
    read_errors: Mutex<Vec<String>>,
}

fn v(value: &Value) -> Result<StoredValue, String> {
    StoredValue::from_value(value.clone()).map_err(|e| format!("value: {e}"))
}

/// One `set` (or creds save) whose outcome is recorded: acknowledged writes go into `acked`,
/// a BACKLOG refusal is counted, any other error is kept for the report.
async fn write(
    s: &Session,
    acked: &mut Acked,
    tally: &Tally,
    down: &AtomicBool,
    writes: Vec<(&str, String, Option<Value>)>,
    creds: Option<Value>,
) -> Result<(), String> {
    let in_outage = down.load(Ordering::Relaxed);
    let result = match &creds {
        Some(c) => s.save_creds(v(c)?).await.map(|_| ()),
        None => {
            let mut call = Vec::with_capacity(writes.len());
            for (t, id, value) in &writes {
                call.push(
                    match value {
                        Some(x) => KeyWrite::put(t, id, v(x)?),
                        None => KeyWrite::delete(t, id),
                    }
                    .map_err(|e| format!("key write: {e}"))?,
                );
            }
            s.set(call).await
        }
    };
    tally.calls.fetch_add(1, Ordering::Relaxed);
    if in_outage || down.load(Ordering::Relaxed) {
        tally.calls_in_outage.fetch_add(1, Ordering::Relaxed);
    }
    match result {
        Ok(()) => {
            for (t, id, value) in writes {
                acked.keys.insert((t.to_string(), id), value);
            }
            if creds.is_some() {
                acked.creds = creds;
            }
        }
        Err(e) if e.kind() == ErrorKind::Backlog => {
            tally.refused_backlog.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tally
            .refused_other
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!("{}: {} {}", s.company_id(), e.code(), e)),
    }
    Ok(())
}

async fn read(s: &Session, tally: &Tally, key_type: &str, id: &str, expect_absent: bool) {
    tally.reads.fetch_add(1, Ordering::Relaxed);
    match s.get(key_type, &[id]).await {
        Ok(found) => {
            if found.is_empty() {
                tally.absent_answers.fetch_add(1, Ordering::Relaxed);
            } else if expect_absent {
                tally
                    .read_errors
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(format!(
                        "{}: {key_type} {id} should not exist",
                        s.company_id()
                    ));
            }
        }
        Err(e) => tally
            .read_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(format!(
                "{}: get {key_type} {id}: {} {e}",
                s.company_id(),
                e.code()
            )),
    }
}

/// One account's traffic until `stop`.
async fn account(
    s: Session,
    seed: u64,
    tally: Arc<Tally>,
    down: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<Acked, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut acked = Acked::default();
    // Logged in before the run: creds and 30 pre-keys still unused on the server.
    let creds = creds_value(&mut rng, 0);
    write(&s, &mut acked, &tally, &down, Vec::new(), Some(creds)).await?;
    let pre_keys: Vec<_> = (1..=30)
        .map(|i| ("pre-key", i.to_string(), Some(pre_key(&mut rng))))
        .collect();
    write(&s, &mut acked, &tally, &down, pre_keys, None).await?;
    let mut next_pre_key = 1u64;
    let mut new_contacts = 0u64;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(1000..3000))).await;
        n += 1;
        let contact = rng.gen_range(0..CONTACTS);
        let jid = format!("20300000000{contact:04}_1.0");
        // The session with the contact is read (cached), then rewritten.
        read(&s, &tally, "session", &jid, false).await;
        let mut writes = vec![("session", jid, Some(session_value(&mut rng)))];
        if rng.gen_bool(0.25) {
            // A group message: our sender key moves on; a member who has not got it yet.
            let group = format!("1203630000000{}@g.us", rng.gen_range(0..GROUPS));
            let me = "200000000000000_1::0";
            writes.push((
                "sender-key",
                format!("{group}::{me}"),
                Some(json!([{"senderKeyId": rng.gen::<u32>(), "senderChainKey": {"iteration": n, "seed": b64(&mut rng, 32)},
                    "senderSigningKey": {"public": b64(&mut rng, 33), "private": b64(&mut rng, 32)}, "senderMessageKeys": []}])),
            ));
            writes.push((
                "sender-key-memory",
                group,
                Some(json!({ format!("20300000000{contact:04}@lid"): true })),
            ));
        }
        if rng.gen_bool(0.05) {
            // A first contact: nothing stored for it (answered absent from the key
            // directory), a new session from one of our pre-keys, which is used up.
            new_contacts += 1;
            let jid = format!("20400000{seed:03}{new_contacts:04}_1.0");
            read(&s, &tally, "session", &jid, true).await;
            read(&s, &tally, "identity-key", &jid, true).await;
            writes.push(("session", jid.clone(), Some(session_value(&mut rng))));
            writes.push(("identity-key", jid, Some(buffer(&mut rng, 33))));
            if next_pre_key <= 30 {
                writes.push(("pre-key", next_pre_key.to_string(), None));
                next_pre_key += 1;
            }
        }
        write(&s, &mut acked, &tally, &down, writes, None).await?;
        if n % 10 == 0 {
            let creds = creds_value(&mut rng, n);
            write(&s, &mut acked, &tally, &down, Vec::new(), Some(creds)).await?;
        }
    }
    Ok(acked)
}

/// The login of a new account during the outage: creds, then 812 pre-keys in one call.
async fn login_burst(
    s: Session,
    tally: Arc<Tally>,
    down: Arc<AtomicBool>,
) -> Result<Acked, String> {
    let mut rng = StdRng::seed_from_u64(9_999);
    let mut acked = Acked::default();
    let creds = creds_value(&mut rng, 0);
    write(&s, &mut acked, &tally, &down, Vec::new(), Some(creds)).await?;
    let pre_keys: Vec<_> = (1..=LOGIN_PRE_KEYS)
        .map(|i| ("pre-key", i.to_string(), Some(pre_key(&mut rng))))
        .collect();
    write(&s, &mut acked, &tally, &down, pre_keys, None).await?;
    Ok(acked)
}

/// What PostgreSQL holds for `company`, compared with what was acknowledged.
async fn lost_writes(
    client: &tokio_postgres::Client,
    company: &str,
    acked: &Acked,
) -> Result<Vec<String>, String> {
    let rows = client
        .query(
            "SELECT key_type, key_id, value::text FROM whatsapp_keys WHERE company_id = $1",
            &[&company],
        )
        .await
        .map_err(|e| format!("select keys: {e}"))?;
    let mut in_db: HashMap<(String, String), Value> = HashMap::new();
    for r in &rows {
        let t: String = r.try_get(0).map_err(|e| e.to_string())?;
        let i: String = r.try_get(1).map_err(|e| e.to_string())?;
        let text: String = r.try_get(2).map_err(|e| e.to_string())?;
        in_db.insert(
            (t, i),
            serde_json::from_str(&text).map_err(|e| e.to_string())?,
        );
    }
    let mut lost = Vec::new();
    for (k, value) in &acked.keys {
        let ok = match value {
            Some(x) => in_db.get(k) == Some(x),
            None => !in_db.contains_key(k),
        };
        if !ok {
            lost.push(format!("{company} {}/{}", k.0, k.1));
        }
    }
    let creds = client
        .query_opt(
            "SELECT creds::text FROM whatsapp_auth WHERE company_id = $1",
            &[&company],
        )
        .await
        .map_err(|e| format!("select creds: {e}"))?
        .map(|r| r.try_get::<_, String>(0))
        .transpose()
        .map_err(|e| e.to_string())?
        .map(|t| serde_json::from_str::<Value>(&t))
        .transpose()
        .map_err(|e| e.to_string())?;
    if creds != acked.creds {
        lost.push(format!("{company} creds"));
    }
    Ok(lost)
}

#[derive(Default, Clone, Copy)]
struct Peak {
    pending_calls: usize,
    pending_bytes: usize,
    journal_bytes: u64,
}

async fn run(args: Args) -> Result<bool, String> {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(TempCluster::start)
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?,
    );
    cluster.create_database(DB).map_err(|e| e.to_string())?;
    let url = cluster.url(DB);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cfg = Config::from_url(&url).map_err(|e| e.to_string())?;
    cfg.connect_timeout = Duration::from_secs(1);
    cfg.statement_timeout = Duration::from_secs(2);
    cfg.journal_path = Some(dir.path().join("outage.journal"));
    if let Some(b) = args.max_pending_bytes {
        cfg.max_pending_bytes = b;
    }
    let bound = cfg.max_pending_bytes;
    let store = Store::open(cfg).await.map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;

    let tally = Arc::new(Tally::default());
    let down = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for a in 0..args.accounts {
        let s = store
            .session(&format!("load_{a:03}"))
            .await
            .map_err(|e| e.to_string())?;
        tasks.push((
            s.company_id().to_string(),
            tokio::spawn(account(s, a, tally.clone(), down.clone(), stop.clone())),
        ));
    }
    // The login account's session opens now too: its (empty) key directory is known before
    // the outage, as for any account whose session was open.
    let login = store
        .session("load_login")
        .await
        .map_err(|e| e.to_string())?;
    let t = Instant::now();
    while store.metrics().directory.companies < args.accounts as usize + 1 {
        if t.elapsed() > Duration::from_secs(60) {
            return Err("key directories did not load in 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Sample the outage state every 50 ms.
    let peak = Arc::new(Mutex::new(Peak::default()));
    let sampler = {
        let (store, peak, stop) = (store.clone(), peak.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let o = store.metrics().outage;
                {
                    let mut p = peak.lock().unwrap_or_else(|p| p.into_inner());
                    p.pending_calls = p.pending_calls.max(o.pending_calls);
                    p.pending_bytes = p.pending_bytes.max(o.pending_bytes);
                    p.journal_bytes = p.journal_bytes.max(o.journal_bytes);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    eprintln!("warm-up: {} accounts for {:?}", args.accounts, args.warmup);
    tokio::time::sleep(args.warmup).await;
    let calls_before = tally.calls.load(Ordering::Relaxed);

    eprintln!("stopping PostgreSQL for {:?}", args.outage);
    down.store(true, Ordering::Relaxed);
    let c = cluster.clone();
    let stopped = Instant::now();
    let stopping = tokio::task::spawn_blocking(move || c.stop("immediate"));
    // Detection: from the stop command to the store in outage mode (traffic runs meanwhile).
    let mut detect = None;
    while detect.is_none() && stopped.elapsed() < args.outage {
        if store.metrics().outage.down {
            detect = Some(stopped.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    stopping
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let stop_took = stopped.elapsed();
    let mut login_task = None;
    while stopped.elapsed() < args.outage {
        if login_task.is_none() && stopped.elapsed() >= args.outage / 2 {
            eprintln!("login burst: {LOGIN_PRE_KEYS} pre-keys");
            login_task = Some(tokio::spawn(login_burst(
                login.clone(),
                tally.clone(),
                down.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = store.metrics().outage;

    eprintln!("starting PostgreSQL");
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server())
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    while store.metrics().outage.down {
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the store did not recover within 300 s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recover = started.elapsed();
    down.store(false, Ordering::Relaxed);
    eprintln!(
        "recovered after {recover:?}; traffic for {:?} more",
        args.after
    );
    tokio::time::sleep(args.after).await;
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.await;

    let mut acked = Vec::new();
    for (company, t) in tasks {
        acked.push((company, t.await.map_err(|e| e.to_string())??));
    }
    if let Some(t) = login_task {
        acked.push((
            "load_login".to_string(),
            t.await.map_err(|e| e.to_string())??,
        ));
    }
    let report = store.close().await.map_err(|e| e.to_string())?;

    let client = {
        let cfg = Config::from_url(&url).map_err(|e| e.to_string())?;
        let (client, conn) = cfg
            .pg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        client
    };
    let mut lost = Vec::new();
    let mut keys_checked = 0usize;
    for (company, a) in &acked {
        keys_checked += a.keys.len();
        lost.extend(lost_writes(&client, company, a).await?);
    }
    let (rows, bytes): (i64, i64) = {
        let r = client
            .query_one(
                "SELECT count(*), coalesce(sum(octet_length(value::text)), 0)::bigint FROM whatsapp_keys",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        (
            r.try_get(0).map_err(|e| e.to_string())?,
            r.try_get(1).map_err(|e| e.to_string())?,
        )
    };

    let p = *peak.lock().unwrap_or_else(|p| p.into_inner());
    let refused_other = tally
        .refused_other
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let read_errors = tally
        .read_errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let summary = json!({
        "accounts": args.accounts,
        "outage_secs": args.outage.as_secs(),
        "detect_ms": detect.map(|d| d.as_millis() as u64),
        "stop_returned_by_ms": stop_took.as_millis() as u64,
        "recover_ms": recover.as_millis() as u64,
        "calls_total": tally.calls.load(Ordering::Relaxed),
        "calls_before_outage": calls_before,
        "calls_in_outage": tally.calls_in_outage.load(Ordering::Relaxed),
        "peak_pending_calls": p.pending_calls,
        "peak_pending_bytes": p.pending_bytes,
        "pending_bytes_bound": bound,
        "pending_at_outage_end": {"calls": during.pending_calls, "bytes": during.pending_bytes, "journal_bytes": during.journal_bytes},
        "peak_journal_bytes": p.journal_bytes,
        "refused_backlog": tally.refused_backlog.load(Ordering::Relaxed),
        "refused_other": refused_other.len(),
        "reads": tally.reads.load(Ordering::Relaxed),
        "absent_answers": tally.absent_answers.load(Ordering::Relaxed),
        "read_errors": read_errors.len(),
        "keys_checked": keys_checked,
        "rows_in_db": rows,
        "value_bytes_in_db": bytes,
        "close_unflushed": report.unflushed.len(),
        "lost": lost.len(),
    });
    for (k, val) in summary.as_object().into_iter().flatten() {
        println!("{k}: {val}");
    }
    println!("{summary}");
    for e in refused_other.iter().take(10) {
        eprintln!("refused (not BACKLOG): {e}");
    }
    for e in read_errors.iter().take(10) {
        eprintln!("read error: {e}");
    }
    for l in lost.iter().take(20) {
        eprintln!("lost: {l}");
    }
    Ok(lost.is_empty() && refused_other.is_empty() && report.unflushed.is_empty())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}\nusage: outage_load [--accounts N] [--warmup-secs N] [--outage-secs N] [--after-secs N] [--max-pending-bytes N]");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("outage_load: {e}");
            std::process::exit(1);
        }
    }
}
