//! Command-line parsing (clap) and dispatch to one module per subcommand.

mod demo;
mod health;
mod tempdb;

use std::process::ExitCode;

use authstate::{Config, Result, Store};
use clap::{Parser, Subcommand};

/// Operate the PostgreSQL store of Baileys' WhatsApp auth state.
#[derive(Parser, Debug)]
#[command(name = "authstate", version, about)]
pub struct Cli {
    /// PostgreSQL URL (`postgres://...` or `key=value ...`); without it the libpq PG* variables
    /// are used.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply pending schema migrations (adopts existing tables without touching rows).
    Migrate,
    /// Drive realistic Baileys traffic for several accounts, verify every byte, report figures.
    /// Without DATABASE_URL it starts a throwaway PostgreSQL itself.
    Demo(demo::Args),
    /// Check the database and every live store process (which publish their figures to the
    /// database); exit status 0 healthy, 1 warning, 2 critical.
    Health(health::Args),
    /// Start a throwaway PostgreSQL, print one JSON line describing it, and keep it until
    /// stdin closes or a signal arrives (for test harnesses in other languages).
    Tempdb(tempdb::Args),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| authstate::Error::internal(format!("tokio runtime: {e}")))?;
    match cli.command {
        Command::Migrate => rt.block_on(async {
            let store = Store::open(config(cli.database_url.as_deref())?).await?;
            let report = store.migrate().await?;
            println!(
                "migrated {}: applied {:?}, already applied {:?}",
                store.describe(),
                report.applied,
                report.already_applied
            );
            store.close().await?;
            Ok(ExitCode::SUCCESS)
        }),
        Command::Demo(args) => rt.block_on(demo::run(cli.database_url, args)),
        Command::Tempdb(args) => rt.block_on(tempdb::run(args)),
        Command::Health(args) => {
            Ok(rt.block_on(health::run(config(cli.database_url.as_deref()), args)))
        }
    }
}

fn config(url: Option<&str>) -> Result<Config> {
    match url {
        Some(u) if !u.trim().is_empty() => Config::from_url(u),
        _ => Config::from_env(),
    }
}
