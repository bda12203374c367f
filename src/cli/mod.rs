//! Command-line parsing (clap) and dispatch to one module per subcommand.

mod cleanup;
mod copy;
mod demo;
mod health;
mod keys;
mod lease;
mod tempdb;
mod transfer;

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
    /// Write a company's state (or every company's, --all) as the folder Baileys'
    /// useMultiFileAuthState reads: one snapshot, atomic, verified byte for byte.
    Export(transfer::ExportArgs),
    /// Load a folder written by Baileys' useMultiFileAuthState into one company, in one
    /// transaction, verified after.
    Import(transfer::ImportArgs),
    /// Copy accounts between databases in batches, verified by counts and checksums; safe to
    /// re-run.
    Copy(copy::Args),
    /// Delete expired keys of the types Baileys recovers from, in bounded batches.
    Cleanup(cleanup::Args),
    /// List, show or delete single keys of one company; per-type statistics.
    Keys(keys::Args),
    /// Delete all state (creds and keys) of one company.
    Remove(keys::RemoveArgs),
    /// Operator actions on company leases (`lease release --force COMPANY`).
    Lease(lease::Args),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| authstate::Error::internal(format!("tokio runtime: {e}")))?;
    let url = cli.database_url.as_deref();
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
        Command::Export(args) => rt.block_on(transfer::export(config(url)?, args)),
        Command::Import(args) => rt.block_on(transfer::import(config(url)?, args)),
        Command::Copy(args) => rt.block_on(copy::run(args)),
        Command::Cleanup(args) => rt.block_on(cleanup::run(config(url)?, args)),
        Command::Keys(args) => rt.block_on(keys::run(config(url)?, args)),
        Command::Remove(args) => rt.block_on(keys::remove(config(url)?, args)),
        Command::Lease(args) => rt.block_on(lease::run(config(url)?, args)),
        Command::Health(args) => {
            Ok(rt.block_on(health::run(config(cli.database_url.as_deref()), args)))
        }
    }
}

/// Prints `value` as JSON, or the text `human` makes.
fn print<T: serde::Serialize>(json: bool, value: &T, human: impl FnOnce() -> String) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        print!("{}", human());
    }
    Ok(())
}

fn config(url: Option<&str>) -> Result<Config> {
    match url {
        Some(u) if !u.trim().is_empty() => Config::from_url(u),
        _ => Config::from_env(),
    }
}
