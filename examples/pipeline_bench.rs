//! How pipelining behaves on a fast and a slow link: 50 companies each making 40 sequential
//! one-key `set`s, through the delay proxy, for several pipeline settings side by side.
//! Prints per setting: statements sent (counted by the proxy), sets per statement (what group
//! commit merged), sets/s, and PostgreSQL's CPU (postmaster and children, from `/proc`).
//!
//! ```text
//! cargo run --release --example pipeline_bench                  # loopback (no delay)
//! cargo run --release --example pipeline_bench -- --delay-ms 10 # 20 ms round trip
//! cargo run --release --example pipeline_bench -- --journal      # plus journal durability
//! ```
//!
//! With `--journal` a last row runs the same load in journal durability (a `set` resolves
//! once fsynced to a journal in a temp dir; the flusher commits in the background): its sets/s
//! are acknowledgements, its statements and PostgreSQL CPU are counted after `close()` has
//! flushed everything.
//!
//! Starts a throwaway cluster (`authstate::tempdb`). Figures on a busy machine are noisy:
//! compare the rows of one run.

use std::time::{Duration, Instant};

use authstate::delay_proxy::DelayProxy;
use authstate::tempdb::TempCluster;
use authstate::{Config, Durability, KeyWrite, Store, StoredValue};

const COMPANIES: usize = 50;
const SETS_EACH: usize = 40;
/// (pipeline_depth, pipeline_pacing)
const SETTINGS: [(usize, bool); 4] = [(1, false), (2, false), (8, false), (8, true)];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut delay_ms = 0u64;
    let mut rounds = 2usize;
    let mut journal = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--delay-ms" => delay_ms = args.next().ok_or("--delay-ms N")?.parse()?,
            "--rounds" => rounds = args.next().ok_or("--rounds N")?.parse()?,
            "--journal" => journal = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let cluster = TempCluster::start()?;
    cluster.create_database("pipebench")?;
    let pm = cluster.postmaster_pid().ok_or("no postmaster pid")?;
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let proxy = DelayProxy::start(
            ([127, 0, 0, 1], 0).into(),
            format!("127.0.0.1:{}", cluster.port()),
            Duration::from_millis(delay_ms),
        )
        .await?;
        let url = format!(
            "host=127.0.0.1 port={} user=postgres dbname=pipebench sslmode=disable",
            proxy.local_addr().port()
        );
        let value = StoredValue::from_json(&session_fixture()?)?;
        println!(
            "{COMPANIES} companies x {SETS_EACH} sequential sets, {} ms round trip",
            2 * delay_ms
        );
        println!(
            "| durability | depth | pacing | statements | sets/statement | sets/s | PG CPU ms |"
        );
        println!("|---|---|---|---|---|---|---|");
        let mut settings: Vec<(usize, bool, Durability)> = SETTINGS
            .iter()
            .map(|&(d, p)| (d, p, Durability::Commit))
            .collect();
        if journal {
            settings.push((8, true, Durability::Journal));
        }
        for round in 0..rounds {
            for &(depth, pacing, durability) in &settings {
                let mut cfg = Config::from_url(&url)?;
                cfg.pipeline_depth = depth;
                cfg.pipeline_pacing = pacing;
                cfg.durability = durability;
                cfg.journal_path = Some(dir.path().join(format!("bench-{round}.journal")));
                let store = Store::open(cfg).await?;
                store.migrate().await?;
                let mut sessions = Vec::new();
                for c in 0..COMPANIES {
                    sessions.push(
                        store
                            .session(&format!("c{c}_{depth}_{pacing}_{round}"))
                            .await?,
                    );
                }
                let before = proxy.stats().requests;
                let cpu0 = pg_cpu_ticks(pm);
                let started = Instant::now();
                let mut tasks = Vec::new();
                for s in sessions {
                    let value = value.clone();
                    tasks.push(tokio::spawn(async move {
                        for k in 0..SETS_EACH {
                            let w = KeyWrite::put("session", &format!("peer{k}"), value.clone())?;
                            s.set(vec![w]).await?;
                        }
                        Ok::<(), authstate::Error>(())
                    }));
                }
                for t in tasks {
                    t.await??;
                }
                let secs = started.elapsed().as_secs_f64();
                if durability == Durability::Journal {
                    // Count the flush too: it is the work PostgreSQL does for these sets.
                    store.close().await?;
                }
                let cpu = pg_cpu_ticks(pm).saturating_sub(cpu0);
                let statements = proxy.stats().requests - before;
                let sets = (COMPANIES * SETS_EACH) as f64;
                println!(
                    "| {durability:?} | {depth} | {pacing} | {statements} | {:.1} | {:.0} | {} |",
                    sets / statements.max(1) as f64,
                    sets / secs,
                    cpu * 1000 / clock_ticks()
                );
                store.close().await?;
            }
        }
        Ok(())
    })
}

fn session_fixture() -> Result<String, Box<dyn std::error::Error>> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/baileys/session-2.json"
    );
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    Ok(doc["canonical"].to_string())
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// (ppid, own utime+stime, waited-for children's cutime+cstime) of `pid`.
fn stat(pid: &str) -> Option<(u32, u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f: Vec<&str> = s.get(s.rfind(')')? + 2..)?.split(' ').collect();
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok());
    Some((f.get(1)?.parse().ok()?, n(11)? + n(12)?, n(13)? + n(14)?))
}

/// CPU ticks of the postmaster, its ended children and its live children.
fn pg_cpu_ticks(pm: u32) -> u64 {
    let mut ticks = stat(&pm.to_string()).map_or(0, |(_, own, ended)| own + ended);
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((ppid, own, _)) = stat(&name) {
                if ppid == pm {
                    ticks += own;
                }
            }
        }
    }
    ticks
}
