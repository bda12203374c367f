//! Leaving an outage: reconnect with backoff, replay what is pending in order, and the last
//! flush at close. Journal durability's flusher commits the pending log with the same replay
//! ([`flush_chunk`]).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use rand::Rng;

use crate::company::Company;
use crate::db::sql;
use crate::error::{Error, Result};
use crate::write::{commit, Op, WritePath, MAX_BATCH_KEYS};

use super::pending::{reindex, PendingCall};
use super::{CloseReport, Unflushed, FIRST_BACKOFF, MAX_BACKOFF};

/// Replays what is pending (in order, whole calls per transaction) and, once nothing is
/// pending and the database answers, ends the outage. Replays never run concurrently.
pub(crate) async fn try_recover(wp: &Arc<WritePath>) -> Result<()> {
    let outage = &wp.outage;
    let _one_at_a_time = outage.recovering.lock().await;
    if !outage.is_down() {
        // Another caller recovered while we waited for the lock.
        return Ok(());
    }
    while !replay_chunk(wp, true).await? {}
    Ok(())
}

/// Journal durability: commits the oldest pending calls (one chunk, coalesced). True when
/// nothing is pending any more. While the database is away it leaves the replay to the
/// reconnect loop and says so (`Unavailable`).
pub(crate) async fn flush_chunk(wp: &Arc<WritePath>) -> Result<bool> {
    let outage = &wp.outage;
    let _one_at_a_time = outage.recovering.lock().await;
    if outage.is_down() {
        return Err(Error::unavailable(
            "the database is away; the reconnect loop replays the journal",
        ));
    }
    replay_chunk(wp, false).await
}

/// Replays one chunk of the pending calls (whole calls, in order, one transaction; the
/// caller holds `recovering`). True when nothing is pending after it; then the journal is
/// truncated and, with `end_outage`, the outage ends. With nothing pending and `end_outage`
/// it probes the database first.
async fn replay_chunk(wp: &Arc<WritePath>, end_outage: bool) -> Result<bool> {
    let outage = &wp.outage;
    // Bounded chunks of whole calls (each its own transaction, in order), so a long
    // outage's backlog does not turn into one statement that never finishes within the
    // statement timeout. A crash between chunks only replays the journal again from its
    // start, which rewrites the same values in the same order.
    let snapshot: Vec<PendingCall> = {
        let mut st = outage.lock();
        let mut keys = 0;
        let one_by_one = st.isolate > 0;
        let snapshot: Vec<PendingCall> = st
            .pending
            .iter()
            .take_while(|p| {
                let first = keys == 0;
                keys += p.1.weight();
                first || (!one_by_one && keys <= MAX_BATCH_KEYS)
            })
            .cloned()
            .collect();
        // Under the same lock: a call diverted between taking the snapshot and marking it
        // as replaying could coalesce into (and empty, and remove) a snapshot call, so the
        // drain below would drop a newer call that was never replayed.
        st.replaying = snapshot.len();
        snapshot
    };
    let mut fenced = commit::Fenced::new();
    if snapshot.is_empty() {
        if end_outage {
            // The one call helper bounds the probe and discards a connection that timed out.
            wp.db
                .call("probe", async |client| sql::probe(client).await)
                .await?;
        }
    } else {
        let ops: Vec<(&Company, &Op)> = snapshot.iter().map(|p| (&*p.0, &p.1)).collect();
        let started = std::time::Instant::now();
        let result = commit::commit(wp, &ops).await;
        wp.metrics
            .record_result("flush", started.elapsed(), &result);
        match result {
            Ok(f) => {
                fenced = f;
                commit::apply_committed(wp, &ops, &fenced);
            }
            Err(e) if refused_for_its_data(&e) && snapshot.len() > 1 => {
                // One of these acknowledged calls is refused by PostgreSQL (it cannot be
                // retried into success): replay them one by one to find it.
                tracing::warn!(error = %e, calls = snapshot.len(),
                    "a replayed chunk was refused for its data; replaying its calls one by one");
                let mut st = outage.lock();
                st.replaying = 0;
                st.isolate = snapshot.len();
                return Ok(false);
            }
            Err(e) if refused_for_its_data(&e) => {
                // This call alone is refused: it never will be applied. It goes to the
                // lost-writes file for the operator instead of blocking every later write.
                report_lost(
                    wp,
                    &snapshot,
                    &format!("PostgreSQL refused this acknowledged call: {e}"),
                );
            }
            Err(e) => {
                outage.lock().replaying = 0;
                return Err(e);
            }
        }
    }
    // The journal before the state (see `Outage::journal_lock`): no append comes in while the
    // journal is truncated or rewritten below.
    let mut j = outage.journal_lock();
    let mut st = outage.lock();
    st.pending.drain(..snapshot.len());
    st.replaying = 0;
    st.isolate = st.isolate.saturating_sub(snapshot.len());
    if !fenced.is_empty() {
        // Another holder has the lease of these companies: what they kept (in this chunk or
        // later) is never applied over it. It goes to the lost-writes file for the operator.
        let mut lost: Vec<PendingCall> = snapshot
            .iter()
            .filter(|p| fenced.contains(&*p.0.id))
            .cloned()
            .collect();
        st.pending.retain(|p| {
            let gone = fenced.contains(&*p.0.id);
            if gone {
                lost.push(p.clone());
            }
            !gone
        });
        let mut companies: Vec<&str> = lost.iter().map(|p| &*p.0.id).collect();
        companies.sort_unstable();
        companies.dedup();
        let why = format!(
            "the lease of {} was taken by another holder before these writes reached the \
             database",
            companies.join(", ")
        );
        report_lost(wp, &lost, &why);
        if let (false, Some(j)) = (st.pending.is_empty(), j.as_deref_mut()) {
            let ops: Vec<super::journal::Record> = st
                .pending
                .iter()
                .map(|p| (&*p.0.id, &p.1, p.0.journal_token()))
                .collect();
            // On failure the next start replays them again and the lease refuses them
            // again: nothing is applied, the lost file gets them twice.
            if let Err(e) = j.rewrite(&ops) {
                tracing::warn!(error = %e, "could not drop lost calls from the journal");
            }
            outage.journal_bytes.store(j.bytes, Ordering::Relaxed);
        }
    }
    reindex(&mut st);
    if !st.pending.is_empty() {
        return Ok(false);
    }
    // Nothing pending, and nothing can become pending while the journal is held: truncate
    // it without blocking reads on the state.
    drop(st);
    if let Some(j) = j.as_deref_mut() {
        if let Err(e) = j.truncate() {
            // Keep the outage open: the replayed calls are in PostgreSQL, and a stale
            // journal would be replayed again at the next start.
            return Err(Error::internal(format!(
                "could not truncate the journal {}: {e}",
                j.path.display()
            )));
        }
        outage.journal_bytes.store(0, Ordering::Relaxed);
    }
    let mut st = outage.lock();
    if !st.pending.is_empty() {
        // Kept meanwhile by an outage without a journal: replay those too.
        return Ok(false);
    }
    outage.has_overlay.store(false, Ordering::Release);
    if end_outage {
        if let Some((since, _)) = st.since.take() {
            tracing::info!(
                replayed = snapshot.len(),
                outage_ms = since.elapsed().as_millis() as u64,
                "database back: outage over"
            );
        }
        outage.down.store(false, Ordering::Release);
    }
    Ok(true)
}

/// Background task: waits for an outage, then retries [`try_recover`] with backoff and jitter.
pub(crate) async fn reconnect_loop(wp: Weak<WritePath>) {
    let wake = match wp.upgrade() {
        Some(i) => i.outage.wake.clone(),
        None => return,
    };
    let mut attempt: u32 = 0;
    loop {
        let down = match wp.upgrade() {
            Some(i) => i.outage.is_down(),
            None => return,
        };
        if !down {
            attempt = 0;
            wake.notified().await;
            continue;
        }
        let base = FIRST_BACKOFF
            .saturating_mul(1u32 << attempt.min(10))
            .min(MAX_BACKOFF);
        let jitter = rand::thread_rng().gen_range(0.75..1.25);
        tokio::time::sleep(base.mul_f64(jitter)).await;
        let Some(i) = wp.upgrade() else { return };
        i.outage.lock().attempts += 1;
        match try_recover(&i).await {
            Ok(()) => attempt = 0,
            Err(e) => {
                if e.is_unavailable() {
                    tracing::debug!(error = %e, "reconnect attempt failed");
                } else {
                    // Not a connectivity problem (e.g. the replay itself is refused): say so,
                    // the outage will not end by waiting.
                    tracing::warn!(error = %e, "replaying the writes kept during the outage failed");
                }
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// At close: one attempt to write what is pending (the outage's replay, or the journal
/// flush); reports what stays unwritten.
pub(crate) async fn flush_on_close(wp: &Arc<WritePath>) -> CloseReport {
    let before = wp.outage.lock().pending.len();
    if before == 0 && !wp.outage.is_down() {
        return CloseReport::default();
    }
    if wp.outage.is_down() {
        let _ = try_recover(wp).await;
    } else {
        loop {
            match flush_chunk(wp).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(e) => {
                    wp.on_error(&e);
                    tracing::warn!(error = %e, "flushing the journal at close failed");
                    break;
                }
            }
        }
    }
    let st = wp.outage.lock();
    let unflushed: Vec<Unflushed> = st
        .pending
        .iter()
        .map(|p| {
            let (company, op, _, _) = &**p;
            let (kind, keys) = match op {
                Op::Keys(w) => (
                    "keys",
                    w.iter()
                        .map(|k| (k.key_type.clone(), k.key_id.clone()))
                        .collect(),
                ),
                Op::Creds(_) => ("creds", Vec::new()),
                Op::Clear => ("clear", Vec::new()),
            };
            Unflushed {
                company_id: company.id.to_string(),
                kind,
                keys,
            }
        })
        .collect();
    CloseReport {
        flushed_calls: before.saturating_sub(unflushed.len()),
        unflushed,
    }
}

/// Whether PostgreSQL refused `e`'s statement for the data in it (data exception, integrity
/// constraint, program limit such as a row too large): trying it again cannot succeed.
/// Anything else (connectivity, timeouts, resources, serialization) may succeed later.
fn refused_for_its_data(e: &Error) -> bool {
    matches!(
        e.sqlstate().and_then(|s| s.get(..2)),
        Some("22" | "23" | "54")
    )
}

/// Writes acknowledged calls that will never be applied (their lease was lost, or PostgreSQL
/// refused them) to the lost-writes file, and counts them.
fn report_lost(wp: &WritePath, lost: &[PendingCall], why: &str) {
    if lost.is_empty() {
        return;
    }
    match wp.outage.write_lost(lost, why) {
        Ok(path) => {
            tracing::error!(calls = lost.len(), file = %path, reason = %why,
                "acknowledged writes were NOT applied; they are in the lost-writes file");
            wp.leases.count_lost_calls(lost.len(), Some(path));
        }
        Err(e) => {
            tracing::error!(calls = lost.len(), error = %e, reason = %why,
                "acknowledged writes were NOT applied and could not be written to the lost-writes file");
            wp.leases.count_lost_calls(lost.len(), None);
        }
    }
}
