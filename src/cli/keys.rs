//! `authstate keys list|show|delete|stats` and `authstate remove`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::process::ExitCode;

use authstate::ops::keys;
use authstate::{Config, Error, Result};
use clap::Subcommand;

use super::print;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// List one company's keys (type, id, size, last update, expiry).
    List {
        #[arg(long)]
        company: String,
        /// Only this key type.
        #[arg(long = "type")]
        key_type: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show one key's value (buffers in Baileys' BufferJSON form) and metadata.
    Show {
        #[arg(long)]
        company: String,
        #[arg(long = "type")]
        key_type: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete keys of one type (e.g. a stale sender-key-memory row of a group).
    Delete {
        #[arg(long)]
        company: String,
        #[arg(long = "type")]
        key_type: String,
        /// Key id; repeat to delete several.
        #[arg(long = "id", required = true)]
        ids: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Per type: keys, bytes, oldest/newest update, expired keys (one company or all).
    Stats {
        #[arg(long)]
        company: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    match args.command {
        KeysCommand::List {
            company,
            key_type,
            json,
        } => {
            let list = keys::list(&config, &company, key_type.as_deref()).await?;
            print(json, &list, || {
                let mut out = String::new();
                for k in &list {
                    out.push_str(&format!(
                        "{:<24} {:<48} {:>8} B  updated {}  expires {}{}\n",
                        k.key_type,
                        k.key_id,
                        k.bytes,
                        k.updated_at.as_deref().unwrap_or("-"),
                        k.expires_at.as_deref().unwrap_or("-"),
                        if k.expired { " (expired)" } else { "" }
                    ));
                }
                out.push_str(&format!("{} keys\n", list.len()));
                out
            })?;
        }
        KeysCommand::Show {
            company,
            key_type,
            id,
            json,
        } => {
            let k = keys::show(&config, &company, &key_type, &id).await?;
            print(json, &k, || {
                format!(
                    "{} {} {:?}: {} bytes, updated {}, expires {}{}\n{}\n",
                    k.company_id,
                    k.meta.key_type,
                    k.meta.key_id,
                    k.meta.bytes,
                    k.meta.updated_at.as_deref().unwrap_or("-"),
                    k.meta.expires_at.as_deref().unwrap_or("-"),
                    if k.meta.expired { " (expired)" } else { "" },
                    serde_json::to_string_pretty(&k.value).unwrap_or_default()
                )
            })?;
        }
        KeysCommand::Delete {
            company,
            key_type,
            ids,
            json,
        } => {
            let r = keys::delete(&config, &company, &key_type, &ids).await?;
            print(json, &r, || {
                let mut out = format!(
                    "deleted {} {} keys of {}: {:?}\n",
                    r.deleted.len(),
                    r.key_type,
                    r.company_id,
                    r.deleted
                );
                if !r.missing.is_empty() {
                    out.push_str(&format!("not found: {:?}\n", r.missing));
                }
                out.push_str("note: a service process that has this company open still caches the old value until it reopens it\n");
                out
            })?;
        }
        KeysCommand::Stats { company, json } => {
            let s = keys::stats(&config, company.as_deref()).await?;
            print(json, &s, || {
                let mut out = format!(
                    "{}: {} keys, {} bytes, {} expired{}\n",
                    s.company_id.as_deref().unwrap_or("all companies"),
                    s.keys,
                    s.bytes,
                    s.expired,
                    match s.creds {
                        Some(true) => ", creds present",
                        Some(false) => ", NO creds",
                        None => "",
                    }
                );
                for t in &s.types {
                    out.push_str(&format!(
                        "    {:<24} {:>8} keys {:>12} B  {:>6} expired  updated {} .. {}\n",
                        t.key_type,
                        t.keys,
                        t.bytes,
                        t.expired,
                        t.oldest_update.as_deref().unwrap_or("-"),
                        t.newest_update.as_deref().unwrap_or("-")
                    ));
                }
                out
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    /// The company whose creds and keys are deleted (the account must log in again).
    #[arg(long)]
    company: String,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    #[arg(long)]
    json: bool,
}

pub async fn remove(config: Config, args: RemoveArgs) -> Result<ExitCode> {
    authstate::validate::company_id(&args.company)?;
    if !args.yes {
        confirm(&args.company)?;
    }
    let r = keys::remove(&config, &args.company).await?;
    print(args.json, &r, || {
        format!(
            "removed company {}: creds {}, {} keys\n",
            r.company_id,
            if r.creds { "deleted" } else { "none" },
            r.keys
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal to type the company id; refuses without a terminal.
fn confirm(company: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        return Err(Error::invalid(
            "remove deletes all state of the company: pass --yes (no terminal to ask on)",
        ));
    }
    eprint!("This deletes the creds and every key of {company}; the account will have to log in again.\nType the company id to confirm: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(|e| Error::internal(format!("reading the confirmation: {e}")))?;
    if line.trim() != company {
        return Err(Error::invalid("not confirmed; nothing was deleted"));
    }
    Ok(())
}
