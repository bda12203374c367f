//! `authstate copy`: accounts from one database to another.

use std::process::ExitCode;

use authstate::ops::{self, CopyOptions, Scope};
use authstate::{Config, Result};

use super::print;

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["company", "all"])))]
pub struct Args {
    /// Source database URL (read in one snapshot).
    #[arg(long, hide_env_values = true)]
    from: String,
    /// Target database URL (migrated, then written in batches).
    #[arg(long, hide_env_values = true)]
    to: String,
    /// Copy one company.
    #[arg(long)]
    company: Option<String>,
    /// Copy every company of the source.
    #[arg(long)]
    all: bool,
    /// Rows per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Compare counts and checksums, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> Result<ExitCode> {
    let opts = CopyOptions {
        from: Config::from_url(&args.from).map_err(|e| e.context("--from"))?,
        to: Config::from_url(&args.to).map_err(|e| e.context("--to"))?,
        scope: match args.company {
            Some(c) => Scope::Company(c),
            None => Scope::All,
        },
        batch: args.batch,
        dry_run: args.dry_run,
    };
    let r = ops::copy(&opts).await?;
    print(args.json, &r, || {
        let mut out = format!(
            "{} {} -> {}\n",
            if r.dry_run { "would copy" } else { "copied" },
            r.from,
            r.to
        );
        for c in &r.companies {
            out.push_str(&format!(
                "  {}: {} keys, written {}, creds written {}, removed {}, checksums {} ({} / {})\n",
                c.company_id,
                c.keys,
                c.written,
                c.creds_written,
                c.removed,
                if c.equal { "equal" } else { "DIFFER" },
                c.source_checksum.get(..12).unwrap_or(&c.source_checksum),
                c.target_checksum.get(..12).unwrap_or(&c.target_checksum)
            ));
        }
        if !r.dry_run {
            out.push_str(if r.verified {
                "verified: counts and checksums are equal on both sides\n"
            } else {
                "NOT verified: some checksums differ\n"
            });
        }
        out
    })?;
    Ok(if r.dry_run || r.verified {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
