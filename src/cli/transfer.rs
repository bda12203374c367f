//! `authstate export` and `authstate import`: Baileys' `useMultiFileAuthState` folders.

use std::path::PathBuf;
use std::process::ExitCode;

use authstate::ops::{self, ExportOptions, ImportOptions, Scope};
use authstate::{Config, Result};

use super::print;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["company", "all"])))]
pub struct ExportArgs {
    /// The company to export (its files go directly into --dir).
    #[arg(long)]
    company: Option<String>,
    /// Export every company, one sub-folder per company id in --dir.
    #[arg(long)]
    all: bool,
    /// Target folder; must be empty or missing unless --force.
    #[arg(long)]
    dir: PathBuf,
    /// Replace a non-empty --dir.
    #[arg(long)]
    force: bool,
    /// Read and count, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn export(config: Config, args: ExportArgs) -> Result<ExitCode> {
    let opts = ExportOptions {
        scope: match args.company {
            Some(c) => Scope::Company(c),
            None => Scope::All,
        },
        dir: args.dir,
        force: args.force,
        dry_run: args.dry_run,
    };
    let r = ops::export(&config, &opts).await?;
    print(args.json, &r, || {
        let verb = if r.dry_run {
            "would export"
        } else {
            "exported"
        };
        let mut out = format!("{verb} from {} to {}\n", r.database, r.dir.display());
        for c in &r.companies {
            out.push_str(&format!(
                "  {}: creds {}, {} keys, {} bytes -> {}\n",
                c.company_id,
                if c.creds { "yes" } else { "MISSING" },
                c.keys,
                c.bytes,
                c.dir.display()
            ));
            for (t, n) in &c.per_type {
                out.push_str(&format!("      {t:<24} {n}\n"));
            }
            if !c.not_reimportable.is_empty() {
                out.push_str(&format!(
                    "      note: {} ids would not import back from their file names\n",
                    c.not_reimportable.len()
                ));
            }
        }
        if r.verified {
            out.push_str("verified: every file read back equals the database snapshot\n");
        }
        out
    })?;
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// The company the folder belongs to.
    #[arg(long)]
    company: String,
    /// The folder Baileys' useMultiFileAuthState wrote (creds.json, <type>-<id>.json).
    #[arg(long)]
    dir: PathBuf,
    /// Replace the company's existing state instead of refusing.
    #[arg(long)]
    replace: bool,
    /// Parse and check, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn import(config: Config, args: ImportArgs) -> Result<ExitCode> {
    let opts = ImportOptions {
        company: args.company,
        dir: args.dir,
        replace: args.replace,
        dry_run: args.dry_run,
    };
    let r = ops::import(&config, &opts).await?;
    print(args.json, &r, || {
        let verb = if r.dry_run {
            "would import"
        } else {
            "imported"
        };
        let mut out = format!(
            "{verb} {} into {} company {}: creds and {} keys (replacing {} keys{})\n",
            r.dir.display(),
            r.database,
            r.company_id,
            r.keys,
            r.existing_keys,
            if r.existing_creds { " and creds" } else { "" }
        );
        for (t, n) in &r.per_type {
            out.push_str(&format!("    {t:<24} {n}\n"));
        }
        if !r.skipped_null.is_empty() {
            out.push_str(&format!(
                "skipped {} files holding null\n",
                r.skipped_null.len()
            ));
        }
        if r.verified {
            out.push_str("verified: every key and the creds read back equal the folder\n");
        }
        out
    })?;
    Ok(ExitCode::SUCCESS)
}
