//! `authstate demo`: the main job. Several simulated WhatsApp accounts drive Baileys-shaped
//! traffic through one store (login burst of 812 pre-keys, per-message session get/set, group
//! sender keys, creds updates), then a fresh store reads everything back and checks every value
//! byte for byte. Prints throughput and latency percentiles.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use authstate::codec::buffer_node;
use authstate::tempdb::TempCluster;
use authstate::{Config, Error, KeyWrite, Result, Session, Store, StoredValue};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use serde_json::{json, Value};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated accounts (companies), running concurrently.
    #[arg(long, default_value_t = 8)]
    accounts: usize,
    /// Messages each account sends.
    #[arg(long, default_value_t = 300)]
    messages: usize,
    /// Pre-keys uploaded at login (Baileys uploads 812 on first connect).
    #[arg(long, default_value_t = 812)]
    pre_keys: usize,
    /// Seed of the traffic generator, for repeatable runs.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// What an account expects the database to hold at the end: (type, id) -> value or deleted.
type Expected = HashMap<(String, String), Option<StoredValue>>;

pub async fn run(url: Option<String>, args: Args) -> Result<ExitCode> {
    let (_cluster, config) = match url.filter(|u| !u.trim().is_empty()) {
        Some(u) => (None, Config::from_url(&u)?),
        None => {
            println!("no DATABASE_URL: starting a throwaway PostgreSQL ...");
            let cluster = tokio::task::spawn_blocking(TempCluster::start)
                .await
                .map_err(|e| Error::internal(e.to_string()))??;
            cluster.create_database("authstate_demo")?;
            let cfg = Config::from_url(&cluster.url("authstate_demo"))?;
            (Some(cluster), cfg)
        }
    };
    let store = Store::open(config.clone()).await?;
    let report = store.migrate().await?;
    println!(
        "database {}: migrations applied {:?}, already applied {:?}",
        store.describe(),
        report.applied,
        report.already_applied
    );

    let run_id = format!("demo{}", std::process::id());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for a in 0..args.accounts {
        let session = store.session(&format!("{run_id}-{a}")).await?;
        let (accounts, messages, pre_keys, seed) =
            (args.accounts, args.messages, args.pre_keys, args.seed);
        tasks.push(tokio::spawn(async move {
            account(session, a, accounts, messages, pre_keys, seed).await
        }));
    }
    let mut expected = Vec::new();
    let mut totals = Totals::default();
    for t in tasks {
        let (exp, t) = t.await.map_err(|e| Error::internal(e.to_string()))??;
        expected.push(exp);
        totals.add(&t);
    }
    let elapsed = started.elapsed();
    let metrics = store.metrics();
    // The operators' view of this run, shown last: checks plus this process's figures.
    let health = store.health().await?;
    store.close().await?;

    // Read everything back through a fresh store (empty cache): what PostgreSQL really holds.
    let verify_started = Instant::now();
    let fresh = Store::open(config).await?;
    let mut checked = 0usize;
    let mut wrong = Vec::new();
    for (a, exp) in expected.iter().enumerate() {
        let session = fresh.session(&format!("{run_id}-{a}")).await?;
        checked += verify(&session, exp, &mut wrong).await?;
        session.clear().await?;
    }
    fresh.close().await?;

    println!();
    println!(
        "{} accounts, {} messages each: {} key writes in {} set calls, {} key reads in {} get calls, {} creds saves",
        args.accounts, args.messages, totals.keys_written, totals.sets, totals.keys_read, totals.gets, totals.creds
    );
    println!(
        "traffic took {:.2} s: {:.0} messages/s, {:.0} store calls/s",
        elapsed.as_secs_f64(),
        (args.accounts * args.messages) as f64 / elapsed.as_secs_f64(),
        (totals.sets + totals.gets + totals.creds) as f64 / elapsed.as_secs_f64()
    );
    println!();
    println!(
        "{:<11} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9}",
        "operation", "count", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for op in &metrics.ops {
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{:<11} {:>8} {:>7} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            op.kind,
            op.count,
            op.errors,
            ms(op.p50_us),
            ms(op.p95_us),
            ms(op.p99_us),
            ms(op.max_us)
        );
    }
    println!(
        "cache: {} hits, {} misses; group commit: {} commits for {} writes",
        metrics.cache.hits,
        metrics.cache.misses,
        metrics.op("commit").map_or(0, |o| o.count),
        totals.sets + totals.creds
    );
    println!();
    println!(
        "verified {checked} keys and creds byte for byte from a fresh store in {:.2} s: {} wrong",
        verify_started.elapsed().as_secs_f64(),
        wrong.len()
    );
    for w in wrong.iter().take(10) {
        println!("  WRONG: {w}");
    }
    println!();
    print!("{}", health.to_table(false));
    Ok(if wrong.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

#[derive(Default)]
struct Totals {
    sets: usize,
    gets: usize,
    creds: usize,
    keys_written: usize,
    keys_read: usize,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.sets += o.sets;
        self.gets += o.gets;
        self.creds += o.creds;
        self.keys_written += o.keys_written;
        self.keys_read += o.keys_read;
    }
}

fn bytes(rng: &mut StdRng, n: usize) -> Vec<u8> {
    let mut b = vec![0u8; n];
    rng.fill_bytes(&mut b);
    b
}

fn b64(rng: &mut StdRng, n: usize) -> String {
    STANDARD.encode(bytes(rng, n))
}

fn key_pair(rng: &mut StdRng) -> Value {
    let mut public = bytes(rng, 33);
    public[0] = 5;
    json!({"private": buffer_node(&bytes(rng, 32)), "public": buffer_node(&public)})
}

fn creds(rng: &mut StdRng, me: &str, counter: u64) -> Value {
    json!({
        "noiseKey": key_pair(rng),
        "pairingEphemeralKeyPair": key_pair(rng),
        "signedIdentityKey": key_pair(rng),
        "signedPreKey": {"keyPair": key_pair(rng), "signature": buffer_node(&bytes(rng, 64)), "keyId": 1},
        "registrationId": rng.gen_range(1..16380),
        "advSecretKey": b64(rng, 32),
        "processedHistoryMessages": [],
        "nextPreKeyId": 813,
        "firstUnuploadedPreKeyId": 813,
        "accountSyncCounter": counter,
        "accountSettings": {"unarchiveChats": false},
        "registered": true,
        "me": {"id": format!("{me}:12@s.whatsapp.net"), "lid": format!("{me}:12@lid"), "name": "Demo"},
        "routingInfo": buffer_node(&bytes(rng, 24)),
        "lastPropHash": "2V77qU",
    })
}

/// A libsignal session record as Baileys 7 stores it: base64 strings, several KB.
fn session_record(rng: &mut StdRng, chains: usize) -> Value {
    let mut sessions = serde_json::Map::new();
    let base_key = b64(rng, 33);
    let mut chain_map = serde_json::Map::new();
    for _ in 0..chains {
        let mut keys = serde_json::Map::new();
        for k in 0..rng.gen_range(0..20) {
            keys.insert(k.to_string(), Value::String(b64(rng, 32)));
        }
        chain_map.insert(
            b64(rng, 33),
            json!({"chainKey": {"counter": rng.gen_range(0..500), "key": b64(rng, 32)}, "chainType": 1, "messageKeys": keys}),
        );
    }
    sessions.insert(
        base_key,
        json!({
            "registrationId": rng.gen_range(1..16380),
            "currentRatchet": {"ephemeralKeyPair": {"pubKey": b64(rng, 33), "privKey": b64(rng, 32)},
                                "lastRemoteEphemeralKey": b64(rng, 33), "previousCounter": 3, "rootKey": b64(rng, 32)},
            "indexInfo": {"baseKey": b64(rng, 33), "baseKeyType": 1, "closed": -1, "used": 1_700_000_000_000u64, "created": 1_700_000_000_000u64, "remoteIdentityKey": b64(rng, 33)},
            "_chains": chain_map
        }),
    );
    json!({"_sessions": sessions, "version": "v1"})
}

async fn account(
    session: Session,
    me: usize,
    accounts: usize,
    messages: usize,
    pre_keys: usize,
    seed: u64,
) -> Result<(Expected, Totals)> {
    let mut rng = StdRng::seed_from_u64(seed ^ (me as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut exp = Expected::new();
    let mut t = Totals::default();
    let jid = format!("5511{:08}", me);
    let put = |exp: &mut Expected,
               writes: &mut Vec<KeyWrite>,
               ty: &str,
               id: &str,
               v: Option<Value>|
     -> Result<()> {
        let v = v.map(StoredValue::from_value).transpose()?;
        writes.push(match &v {
            Some(v) => KeyWrite::put(ty, id, v.clone())?,
            None => KeyWrite::delete(ty, id)?,
        });
        exp.insert((ty.to_string(), id.to_string()), v);
        Ok(())
    };

    // Login: creds, 812 pre-keys in one set, app-state keys.
    let mut counter = 0u64;
    let c = StoredValue::from_value(creds(&mut rng, &jid, counter))?;
    session.save_creds(c.clone()).await?;
    exp.insert(("".into(), "creds".into()), Some(c));
    t.creds += 1;
    let mut writes = Vec::with_capacity(pre_keys + 4);
    for id in 1..=pre_keys {
        let kp = key_pair(&mut rng);
        put(&mut exp, &mut writes, "pre-key", &id.to_string(), Some(kp))?;
    }
    for _ in 0..3 {
        let id = b64(&mut rng, 6);
        let v = json!({"keyData": b64(&mut rng, 32), "fingerprint": {"rawId": rng.gen_range(1..1_000_000), "currentIndex": 1, "deviceIndexes": [0, 1]}, "timestamp": "1700000000000"});
        put(&mut exp, &mut writes, "app-state-sync-key", &id, Some(v))?;
    }
    put(
        &mut exp,
        &mut writes,
        "app-state-sync-version",
        "regular_high",
        Some(
            json!({"version": 5, "hash": buffer_node(&bytes(&mut rng, 128)), "indexValueMap": {b64(&mut rng, 32): {"valueMac": buffer_node(&bytes(&mut rng, 32))}}}),
        ),
    )?;
    t.keys_written += writes.len();
    session.set(writes).await?;
    t.sets += 1;

    let group = format!("1203630{:05}@g.us", me % 3);
    let mut sessions: HashMap<String, Value> = HashMap::new();
    for m in 0..messages {
        let peer = (me + 1 + m % accounts.max(2).saturating_sub(1)) % accounts.max(1);
        let peer_jid = format!("5511{peer:08}.0:{}", m % 3);
        // Encrypt: read the session, write the ratcheted one (and consume a pre-key sometimes).
        let found = session.get("session", &[&peer_jid]).await?;
        t.gets += 1;
        t.keys_read += 1;
        if let Some(prev) = sessions.get(&peer_jid) {
            let got = found.first().map(|(_, v)| v.to_value());
            if got.as_ref() != Some(prev) {
                return Err(Error::internal(format!(
                    "session {peer_jid} read back wrong"
                )));
            }
        }
        let record = session_record(&mut rng, 1 + m % 4);
        sessions.insert(
            peer_jid.clone(),
            StoredValue::from_value(record.clone())?.to_value(),
        );
        let mut writes = Vec::new();
        put(&mut exp, &mut writes, "session", &peer_jid, Some(record))?;
        if m % 10 == 0 {
            put(
                &mut exp,
                &mut writes,
                "pre-key",
                &(1 + m % pre_keys.max(1)).to_string(),
                None,
            )?;
        }
        if m % 7 == 3 {
            put(
                &mut exp,
                &mut writes,
                "lid-mapping",
                &format!("5511{peer:08}"),
                Some(json!(format!("{peer}12345@lid"))),
            )?;
            put(
                &mut exp,
                &mut writes,
                "device-list",
                &format!("5511{peer:08}"),
                Some(json!(["0", "12", "23"])),
            )?;
        }
        t.keys_written += writes.len();
        session.set(writes).await?;
        t.sets += 1;
        // Group message: sender key read and rotated, memory of who has it.
        if m % 5 == 0 {
            let sk_id = format!("{group}::{jid}::0");
            session.get("sender-key", &[&sk_id]).await?;
            t.gets += 1;
            t.keys_read += 1;
            let state = json!([{"senderKeyId": rng.gen_range(0..1_000_000), "senderChainKey": {"iteration": m, "seed": b64(&mut rng, 32)}, "senderSigningKey": {"public": b64(&mut rng, 33)}, "senderMessageKeys": []}]);
            let sk = buffer_node(state.to_string().as_bytes());
            let mut memory = serde_json::Map::new();
            for p in 0..accounts.min(20) {
                memory.insert(format!("5511{p:08}:0@s.whatsapp.net"), Value::Bool(true));
            }
            let mut writes = Vec::new();
            put(&mut exp, &mut writes, "sender-key", &sk_id, Some(sk))?;
            put(
                &mut exp,
                &mut writes,
                "sender-key-memory",
                &group,
                Some(Value::Object(memory)),
            )?;
            put(
                &mut exp,
                &mut writes,
                "tctoken",
                &format!("5511{peer:08}@s.whatsapp.net"),
                Some(
                    json!({"token": buffer_node(&bytes(&mut rng, 20)), "timestamp": "1700000000"}),
                ),
            )?;
            t.keys_written += writes.len();
            session.set(writes).await?;
            t.sets += 1;
        }
        if m % 25 == 24 {
            counter += 1;
            let c = StoredValue::from_value(creds(&mut rng, &jid, counter))?;
            session.save_creds(c.clone()).await?;
            exp.insert(("".into(), "creds".into()), Some(c));
            t.creds += 1;
        }
        if m % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    Ok((exp, t))
}

/// Checks every expected key (present with the same value, or absent) and the creds.
async fn verify(session: &Session, exp: &Expected, wrong: &mut Vec<String>) -> Result<usize> {
    let mut by_type: HashMap<&str, Vec<(&str, &Option<StoredValue>)>> = HashMap::new();
    for ((ty, id), v) in exp {
        if ty.is_empty() {
            let got = session.load_creds().await?;
            if got.as_ref().map(StoredValue::to_value) != v.as_ref().map(StoredValue::to_value) {
                wrong.push(format!("{}: creds differ", session.company_id()));
            }
            continue;
        }
        by_type.entry(ty).or_default().push((id, v));
    }
    let mut n = 1;
    for (ty, items) in by_type {
        let ids: Vec<String> = items.iter().map(|(i, _)| i.to_string()).collect();
        let got: HashMap<String, Value> = session
            .get(ty, &ids)
            .await?
            .into_iter()
            .map(|(id, v)| (id, v.to_value()))
            .collect();
        for (id, want) in items {
            n += 1;
            let want = want.as_ref().map(StoredValue::to_value);
            if got.get(id) != want.as_ref() {
                wrong.push(format!("{} {ty} {id}", session.company_id()));
            }
        }
    }
    Ok(n)
}
