//! `authstate lease release --force COMPANY`.

use std::process::ExitCode;

use authstate::ops::lease;
use authstate::{Config, Error, Result};
use clap::Subcommand;

use super::print;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: LeaseCommand,
}

#[derive(Subcommand, Debug)]
enum LeaseCommand {
    /// Free a company's lease whoever holds it, also when a journal on a lost host holds
    /// writes not yet in PostgreSQL (those are given up). The holder, if still running, is
    /// fenced: its next write fails with LOCKED.
    Release {
        /// The company.
        company: String,
        /// Required: say that you accept losing the unflushed writes of the holder's journal.
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    match args.command {
        LeaseCommand::Release {
            company,
            force,
            json,
        } => {
            if !force {
                return Err(Error::invalid(
                    "lease release takes the lease from its holder and gives up the writes its \
                     journal may hold; pass --force to do it",
                ));
            }
            let r = lease::force_release(&config, &company).await?;
            print(json, &r, || match &r {
                None => format!("company {company} has no lease row; nothing to release\n"),
                Some(r) => format!(
                    "released the lease of {} (it was held by host {}, pid {}, instance {}){}\n",
                    r.company_id,
                    r.holder_host,
                    r.holder_pid,
                    r.holder_instance,
                    match &r.journal_host {
                        Some(h) => format!(
                            "; the writes of its journal on host {h} not yet in PostgreSQL are \
                             given up (a store replaying that journal puts them in its \
                             lost-writes file)"
                        ),
                        None => String::new(),
                    }
                ),
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
