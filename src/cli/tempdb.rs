//! `authstate tempdb`: a throwaway PostgreSQL for test harnesses written in other languages.

use std::process::ExitCode;

use authstate::tempdb::TempCluster;
use authstate::Result;
use tokio::io::AsyncReadExt;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Database to create in the cluster.
    #[arg(long, default_value = "authstate")]
    db: String,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let cluster = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .map_err(|e| authstate::Error::internal(e.to_string()))??;
    cluster.create_database(&args.db)?;
    let info = serde_json::json!({
        "url": cluster.url(&args.db),
        "tcp_url": cluster.tcp_url(&args.db),
        "host": cluster.socket_dir(),
        "port": cluster.port(),
        "data_dir": cluster.data_dir(),
        "pg_ctl": cluster.pg_ctl_command(),
    });
    println!("{info}");
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| authstate::Error::internal(e.to_string()))?;
    loop {
        tokio::select! {
            n = stdin.read(&mut buf) => if matches!(n, Ok(0) | Err(_)) { break },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        }
    }
    drop(cluster);
    Ok(ExitCode::SUCCESS)
}
