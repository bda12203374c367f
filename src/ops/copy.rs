//! `authstate copy`: accounts from one database to another (moving between hosted
//! databases), verified by per-company counts and checksums on both sides, safe to re-run.
//!
//! The source is read in one REPEATABLE READ snapshot; the target is written in batches, each
//! its own short transaction, with the rows exactly as stored (jsonb text and timestamps), so
//! the checksums of both sides must be equal. Rows already equal are not rewritten and target
//! keys the source does not have are deleted: the target company ends up equal to the source,
//! and a second run writes nothing. The target is migrated first. Accounts being copied must
//! not be served from the target while the copy runs.

use std::collections::BTreeMap;

use serde::Serialize;

use super::Scope;
use crate::config::Config;
use crate::db::admin::{self as sql, Checksum, KeyCursor, Stamps};
use crate::error::{Error, Result};

/// What to copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// The database read.
    pub from: Config,
    /// The database written.
    pub to: Config,
    /// One company or all.
    pub scope: Scope,
    /// Rows per batch (1 to 100,000).
    pub batch: usize,
    /// Compare, write nothing.
    pub dry_run: bool,
}

/// What [`copy`] did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    /// The source, without its password.
    pub from: String,
    /// The target, without its password.
    pub to: String,
    /// Nothing was written.
    pub dry_run: bool,
    /// Every company's checksums are equal on both sides.
    pub verified: bool,
    /// Per company.
    pub companies: Vec<CompanyCopy>,
}

/// One company's part of a copy.
#[derive(Debug, Clone, Serialize)]
pub struct CompanyCopy {
    /// The company.
    pub company_id: String,
    /// Keys in the source, per type.
    pub per_type: BTreeMap<String, u64>,
    /// Keys in the source.
    pub keys: u64,
    /// Key rows written to the target (0 when it already had them).
    pub written: u64,
    /// Whether the creds were written (false when the target had them).
    pub creds_written: bool,
    /// Target keys the source does not have, deleted.
    pub removed: u64,
    /// Checksum of the source snapshot.
    pub source_checksum: String,
    /// Checksum of the target after the copy (before it, in a dry run).
    pub target_checksum: String,
    /// The two checksums and the per-type counts are equal.
    pub equal: bool,
}

/// Copies per `opts`. Returns the report also when a checksum differs (`verified` false), so
/// the caller sees which company.
pub async fn copy(opts: &CopyOptions) -> Result<CopyReport> {
    opts.scope.validate()?;
    if opts.batch == 0 || opts.batch > 100_000 {
        return Err(Error::invalid(format!(
            "batch must be 1 to 100000, got {}",
            opts.batch
        )));
    }
    if opts.from.describe() == opts.to.describe() {
        return Err(Error::invalid(format!(
            "--from and --to are the same database ({})",
            opts.from.describe()
        )));
    }
    let mut src = crate::db::plain_client(&opts.from).await?;
    let mut dst = crate::db::plain_client(&opts.to).await?;
    let snap = sql::snapshot(&mut src).await?;
    if !sql::schema_exists(&snap).await? {
        return Err(Error::not_found(format!(
            "{} has no authstate tables",
            opts.from.describe()
        )));
    }
    let companies = opts.scope.companies(&snap).await?;
    let target_ready = if opts.dry_run {
        sql::schema_exists(&dst).await?
    } else {
        crate::db::migrate::run(&mut dst).await?;
        true
    };
    let mut report = CopyReport {
        from: opts.from.describe(),
        to: opts.to.describe(),
        dry_run: opts.dry_run,
        verified: false,
        companies: Vec::with_capacity(companies.len()),
    };
    for company in &companies {
        let source = sql::checksum(&snap, company).await?;
        let mut c = CompanyCopy {
            company_id: company.clone(),
            per_type: source
                .per_type
                .iter()
                .map(|(t, (n, _))| (t.clone(), *n))
                .collect(),
            keys: source.keys(),
            written: 0,
            creds_written: false,
            removed: 0,
            source_checksum: source.digest(),
            target_checksum: String::new(),
            equal: false,
        };
        if !opts.dry_run {
            copy_company(&snap, &dst, company, opts.batch, &mut c).await?;
        }
        let target = if target_ready {
            sql::checksum(&dst, company).await?
        } else {
            Checksum::default()
        };
        c.target_checksum = target.digest();
        c.equal = target == source;
        report.companies.push(c);
    }
    snap.commit().await?;
    report.verified = !opts.dry_run && report.companies.iter().all(|c| c.equal);
    Ok(report)
}

async fn copy_company(
    snap: &tokio_postgres::Transaction<'_>,
    dst: &tokio_postgres::Client,
    company: &str,
    batch: usize,
    c: &mut CompanyCopy,
) -> Result<()> {
    c.creds_written = match sql::creds(snap, company).await? {
        Some(text) => sql::put_creds(dst, company, &text, None).await?,
        None => sql::delete_creds(dst, company).await?,
    };
    let mut keep: Vec<(String, String)> = Vec::with_capacity(c.keys as usize);
    let mut cursor = KeyCursor::open(snap, company, batch).await?;
    while let Some(rows) = cursor.next().await? {
        // One statement per batch: its own short transaction on the target.
        c.written += sql::put_keys(dst, company, &rows, Stamps::Keep).await?;
        keep.extend(rows.into_iter().map(|r| (r.key_type, r.key_id)));
    }
    c.removed = sql::delete_keys_except(dst, company, &keep).await?;
    Ok(())
}
