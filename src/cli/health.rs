//! `authstate health`: the database's checks plus every live store process's published
//! figures, as a table or JSON, once or repeatedly; the exit status is the overall status.

use std::process::ExitCode;
use std::time::Duration;

use authstate::health::checks;
use authstate::health::{HealthOptions, HealthReport};
use authstate::{Config, Error, Result, Store};

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Exit status: 0 healthy, 1 warning, 2 critical (with --watch: of the last report), 3 the \
report could not be made (e.g. a malformed DATABASE_URL); command-line usage errors exit 64.

An unreachable database is a critical report, not a failure. Store processes publish their \
figures to the table authstate_processes (migration 0004) every 15 s; a process that stopped \
publishing is shown as gone. The password is never printed.")]
pub struct Args {
    /// Print the report as JSON (with --watch: one JSON document per line).
    #[arg(long)]
    json: bool,
    /// Repeat every SECONDS (10 when omitted) until interrupted.
    #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "10")]
    watch: Option<u64>,
    /// Also show each process's operations, recent slow operations and recent errors.
    #[arg(long)]
    verbose: bool,
    /// Count the expired keys of this company only.
    #[arg(long, value_name = "ID")]
    company: Option<String>,
}

/// The report, or a critical one when no store could be opened (the database is unreachable).
async fn report(
    store: &std::result::Result<Store, Error>,
    config: &Config,
    args: &Args,
) -> Result<HealthReport> {
    match store {
        Ok(store) => {
            store
                .health_with(&HealthOptions {
                    company: args.company.clone(),
                    this_process: false,
                    processes: true,
                })
                .await
        }
        Err(e) if e.kind() != authstate::ErrorKind::InvalidArgument => Ok(HealthReport::new(
            config.describe(),
            vec![checks::database(&Err(e.clone()))],
        )),
        Err(e) => Err(e.clone()),
    }
}

fn print(report: &HealthReport, args: &Args) {
    if args.json {
        if args.watch.is_some() {
            println!("{}", serde_json::to_string(report).unwrap_or_default());
        } else {
            println!("{}", report.to_json());
        }
    } else {
        if args.watch.is_some() {
            println!();
        }
        print!("{}", report.to_table(args.verbose));
    }
}

pub async fn run(config: Result<Config>, args: Args) -> ExitCode {
    match run_inner(config, &args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("authstate health: {e}");
            ExitCode::from(3)
        }
    }
}

async fn run_inner(config: Result<Config>, args: &Args) -> Result<ExitCode> {
    let mut config = config?;
    if let Some(c) = &args.company {
        authstate::validate::company_id(c)?;
    }
    // A small, quiet store: one connection, no snapshot of its own.
    config.pool_size = 1;
    config.health.publish_interval = None;
    config.health.db_check_interval = Duration::from_secs(24 * 3600);
    let mut store = Store::open(config.clone()).await;
    let mut status;
    loop {
        if store.is_err() {
            store = Store::open(config.clone()).await;
        }
        let r = report(&store, &config, args).await?;
        status = r.status;
        print(&r, args);
        let Some(secs) = args.watch else { break };
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(secs.max(1))) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    if let Ok(s) = store {
        let _ = s.close().await;
    }
    Ok(ExitCode::from(status.exit_code()))
}
