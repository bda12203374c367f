//! `authstate cleanup`: expired keys of the types Baileys recovers from, in bounded batches.

use std::process::ExitCode;

use authstate::ops::{self, cleanup::CleanupOptions};
use authstate::{Config, Result};

use super::print;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Count what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Key types to clean (comma-separated). Default: sender-key-memory,device-list. Naming a
    /// protected type (session, pre-key, ...) cleans it too: see README, Operations.
    #[arg(long, value_delimiter = ',')]
    types: Option<Vec<String>>,
    /// Most rows per delete statement.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub async fn run(config: Config, args: Args) -> Result<ExitCode> {
    let opts = CleanupOptions {
        types: args.types,
        batch: args.batch,
        dry_run: args.dry_run,
    };
    let r = ops::cleanup(&config, &opts).await?;
    for t in &r.protected_named {
        eprintln!("warning: cleaning protected type {t} because it was named in --types");
    }
    print(args.json, &r, || {
        let mut out = if r.dry_run {
            format!(
                "would delete {} expired keys of {}\n",
                r.total,
                r.types.join(", ")
            )
        } else {
            format!(
                "deleted {} expired keys of {} in {} batches (largest {})\n",
                r.total,
                r.types.join(", "),
                r.batches,
                r.largest_batch
            )
        };
        let line = |out: &mut String, t: &str, b: &std::collections::BTreeMap<String, u64>| {
            let buckets: Vec<String> = authstate::db::admin::AGE_BUCKETS
                .iter()
                .map(|k| format!("{k}: {}", b.get(*k).copied().unwrap_or(0)))
                .collect();
            out.push_str(&format!("    {t:<24} {}\n", buckets.join(", ")));
        };
        for (t, b) in &r.deleted {
            line(&mut out, t, b);
        }
        if !r.kept.is_empty() {
            out.push_str("kept (protected, expired):\n");
            for (t, b) in &r.kept {
                line(&mut out, t, b);
            }
        }
        out
    })?;
    Ok(ExitCode::SUCCESS)
}
