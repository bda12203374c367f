//! A TCP proxy to PostgreSQL that adds a fixed delay each way (see `authstate::delay_proxy`),
//! for running the store and the benchmarks as if the database were on another network.
//!
//! ```text
//! cargo run --release --example delay_proxy -- --upstream 127.0.0.1:5432 --delay-ms 10
//! ```
//!
//! Prints one JSON line (`{"listen":"127.0.0.1:PORT",...}`) once it listens, then runs until
//! its standard input closes (so a parent process that dies takes it along) and prints its
//! counters as one JSON line on standard error.

use std::net::SocketAddr;
use std::time::Duration;

use authstate::delay_proxy::DelayProxy;
use tokio::io::AsyncReadExt;

const USAGE: &str = "usage: delay_proxy --upstream HOST:PORT [--listen ADDR:PORT] [--delay-ms MS]
  --upstream   PostgreSQL's TCP address
  --listen     where to listen (default 127.0.0.1:0, a free port)
  --delay-ms   delay added in each direction (default 10: a 20 ms round trip)";

fn main() {
    if let Err(e) = run() {
        eprintln!("delay_proxy: {e}\n{USAGE}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut upstream = None;
    let mut listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut delay_ms: u64 = 10;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--upstream" => upstream = Some(value()?),
            "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
            "--delay-ms" => delay_ms = value()?.parse().map_err(|e| format!("--delay-ms: {e}"))?,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let upstream = upstream.ok_or("--upstream is required")?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let delay = Duration::from_millis(delay_ms);
        let proxy = DelayProxy::start(listen, upstream.clone(), delay)
            .await
            .map_err(|e| format!("listen on {listen}: {e}"))?;
        println!(
            "{{\"listen\":\"{}\",\"upstream\":{:?},\"delay_ms\":{delay_ms}}}",
            proxy.local_addr(),
            upstream
        );
        // Until stdin closes (EOF or error).
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 256];
        while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
        let s = proxy.stats();
        eprintln!(
            "{{\"connections\":{},\"requests\":{},\"answers\":{},\"max_in_flight\":{},\"bytes_up\":{},\"bytes_down\":{}}}",
            s.connections, s.requests, s.answers, s.max_in_flight, s.bytes_up, s.bytes_down
        );
        Ok(())
    })
}
