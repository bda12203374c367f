//! `authstate cleanup`: deletes expired keys in bounded batches, by default only of the types
//! whose loss Baileys repairs by itself.
//!
//! Each batch is one short statement (at most `batch` rows, rows locked by a writer skipped),
//! so cleanup never holds long locks nor builds a giant transaction. The cutoff is fixed at the
//! start (the database's `now()`), so a run always ends. The report counts what was deleted
//! (or would be, in a dry run) per type and per age bucket (time since `expires_at`), and the
//! expired keys of the protected types that were kept.
//!
//! Why each type is or is not cleaned by default is in [`POLICY`] (and the README).

use std::collections::BTreeMap;
use std::sync::Weak;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::db::admin as sql;
use crate::error::{Error, Result};
use crate::validate;

/// Per key type: cleaned by default, and why.
pub const POLICY: &[(&str, bool, &str)] = &[
    ("sender-key-memory", true, "only records which group members already got our sender key; when it is gone Baileys sends the sender key again with the next group message"),
    ("device-list", true, "a cache of a contact's devices; Baileys asks the server again (usync) when it is missing"),
    ("session", false, "the Signal session with a contact device; losing it breaks decryption (\"Bad MAC\", \"No session\") until the contact rebuilds it"),
    ("pre-key", false, "one-time pre-keys already uploaded to the server; a contact's first message uses one, possibly months later, and fails to decrypt when it is gone"),
    ("sender-key", false, "group sender keys; without ours nobody decrypts our group messages, without a member's we cannot decrypt theirs until they redistribute"),
    ("identity-key", false, "contacts' identity keys; losing them turns the next message into an identity change and can reset sessions"),
    ("app-state-sync-key", false, "keys of the app-state (chats, contacts, labels) sync; losing one breaks app-state sync (\"Invalid patch mac\", missing keys) until a full resync"),
    ("app-state-sync-version", false, "the hashes app-state patches chain on; losing them forces a full resync or fails patch verification"),
    ("lid-mapping", false, "phone-number to LID mappings; sessions are kept under the LID, and without the mapping Baileys may start a new session under the phone number"),
    ("tctoken", false, "privacy tokens the server hands out per contact; without one some sends to that contact can be refused until a new token arrives"),
];

/// The types cleaned when the operator names none: those [`POLICY`] marks safe.
pub fn default_types() -> Vec<String> {
    POLICY
        .iter()
        .filter(|(_, clean, _)| *clean)
        .map(|(t, _, _)| (*t).to_string())
        .collect()
}

/// Whether `key_type` is protected (not cleaned unless named). Unknown types are protected:
/// nobody has checked that Baileys recovers from their loss.
pub fn is_protected(key_type: &str) -> bool {
    !POLICY.iter().any(|(t, clean, _)| *t == key_type && *clean)
}

/// Largest accepted `batch`.
pub const MAX_BATCH: usize = 100_000;

/// What to clean.
#[derive(Debug, Clone)]
pub struct CleanupOptions {
    /// Types to clean; `None` for [`default_types`]. Naming a protected type cleans it.
    pub types: Option<Vec<String>>,
    /// Most rows per delete statement (1 to [`MAX_BATCH`]).
    pub batch: usize,
    /// Count, delete nothing.
    pub dry_run: bool,
}

impl Default for CleanupOptions {
    fn default() -> Self {
        CleanupOptions {
            types: None,
            batch: 1000,
            dry_run: false,
        }
    }
}

/// Counts per type, then per age bucket.
pub type Buckets = BTreeMap<String, BTreeMap<String, u64>>;

/// What [`cleanup`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    /// Nothing was deleted.
    pub dry_run: bool,
    /// The types cleaned.
    pub types: Vec<String>,
    /// Protected types named by the operator (cleaned anyway).
    pub protected_named: Vec<String>,
    /// Deleted (or, in a dry run, to delete) per type and age bucket.
    pub deleted: Buckets,
    /// Total of `deleted`.
    pub total: u64,
    /// Expired keys of types not cleaned, per type and age bucket.
    pub kept: Buckets,
    /// Delete statements run.
    pub batches: u64,
    /// Most rows deleted by one statement (never more than the batch size).
    pub largest_batch: u64,
}

fn checked(opts: &CleanupOptions) -> Result<Vec<String>> {
    if opts.batch == 0 || opts.batch > MAX_BATCH {
        return Err(Error::invalid(format!(
            "batch must be 1 to {MAX_BATCH}, got {}",
            opts.batch
        )));
    }
    let types = match &opts.types {
        None => default_types(),
        Some(t) if t.is_empty() => return Err(Error::invalid("--types names no type")),
        Some(t) => t.clone(),
    };
    for t in &types {
        validate::key_type(t)?;
    }
    Ok(types)
}

/// Runs a cleanup on a connection of its own from `config`.
pub async fn cleanup(config: &Config, opts: &CleanupOptions) -> Result<CleanupReport> {
    let types = checked(opts)?;
    let client = crate::db::plain_client(config).await?;
    run(&client, types, opts).await
}

async fn run(
    c: &impl tokio_postgres::GenericClient,
    types: Vec<String>,
    opts: &CleanupOptions,
) -> Result<CleanupReport> {
    let cutoff = sql::now(c).await?;
    let mut report = CleanupReport {
        dry_run: opts.dry_run,
        protected_named: types.iter().filter(|t| is_protected(t)).cloned().collect(),
        ..CleanupReport::default()
    };
    for (t, bucket, n) in sql::expired_counts(c, cutoff).await? {
        let side = if types.contains(&t) {
            &mut report.deleted
        } else {
            &mut report.kept
        };
        *side.entry(t).or_default().entry(bucket).or_default() += n;
    }
    report.types = types;
    if opts.dry_run {
        report.total = report.deleted.values().flat_map(|b| b.values()).sum();
        return Ok(report);
    }
    // What is deleted is counted from the deletes themselves, not from the estimate above.
    report.deleted.clear();
    let limit = opts.batch as i64;
    loop {
        let rows = sql::delete_expired_batch(c, cutoff, &report.types, limit).await?;
        let n: u64 = rows.iter().map(|(_, _, n)| n).sum();
        if n == 0 {
            break;
        }
        report.batches += 1;
        report.largest_batch = report.largest_batch.max(n);
        report.total += n;
        for (t, bucket, k) in rows {
            *report
                .deleted
                .entry(t)
                .or_default()
                .entry(bucket)
                .or_default() += k;
        }
        if n < opts.batch as u64 {
            break;
        }
    }
    Ok(report)
}

/// The in-process periodic cleanup: every `every`, one [`cleanup`] run through the store's
/// own pool; results and failures go to `tracing`. Ends when the store is dropped or closed.
/// Started by `Store::open` when [`crate::Config::cleanup_every`] is set; the store aborts it at close.
pub(crate) async fn periodic(db: Weak<crate::db::Db>, every: Duration, opts: CleanupOptions) {
    let types = match checked(&opts) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!("periodic cleanup disabled: {e}");
            return;
        }
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(db) = db.upgrade() else { return };
        let result = db
            .call("cleanup", async |c| run(&***c, types.clone(), &opts).await)
            .await;
        match result {
            Ok(r) => tracing::info!(
                deleted = r.total,
                batches = r.batches,
                "periodic cleanup of expired keys"
            ),
            Err(e) => tracing::warn!("periodic cleanup failed: {e}"),
        }
    }
}
