//! Journal durability ([`crate::Durability::Journal`]): a write resolves once it is fsynced to
//! the local journal, and a background flusher commits the journal to PostgreSQL.
//!
//! It is the outage mode's machinery used all the time: every call goes to the pending log
//! (with its read overlay, so reads see every acknowledged write) through the journal, and
//! the flusher replays the pending log continuously with the outage's replay code (in order,
//! whole calls per transaction, fenced by the lease, repeated writes of a key coalesced: last
//! value wins), then truncates the journal once nothing is pending.
//!
//! - The appender ([`run_appender`]) is one OS thread: it takes every call queued (many
//!   callers), writes them with one `write` and one fsync, then makes them pending and
//!   answers them. Calls that arrive during an fsync form the next group, so the cost of an
//!   fsync is shared by everyone waiting for it, and nothing on the async runtime blocks.
//! - The flusher ([`run_flusher`]) waits until something is pending, lets writes gather for
//!   [`crate::Config::journal_flush_interval`] (more rewrites of a key coalesce), commits one
//!   chunk, and goes on. When the database is away it enters outage mode and leaves the
//!   replay to the reconnect loop; the appender goes on journaling up to `max_pending_bytes`
//!   (then `BACKLOG`).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::mpsc;

use super::{Request, WritePath, MAX_BATCH_KEYS};
use crate::write::outage;

/// How long the flusher sleeps after a failure that is not a lost connection (the log says
/// what), before it tries again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);
/// The flusher looks at the pending log at least this often, even without a wake-up.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// The appender thread: groups queued calls, one fsync per group (see the module doc). Ends
/// once the channel is closed (store close) and drained. A panic fails the group it held
/// (its callers get `INTERNAL` from their dropped replies) and the thread goes on.
pub(super) fn run_appender(wp: Arc<WritePath>, mut rx: mpsc::UnboundedReceiver<Request>) {
    loop {
        let run = std::panic::catch_unwind(AssertUnwindSafe(|| {
            while let Some(first) = rx.blocking_recv() {
                let mut keys = first.op.weight();
                let mut batch = vec![first];
                while keys < MAX_BATCH_KEYS {
                    match rx.try_recv() {
                        Ok(r) => {
                            keys += r.op.weight();
                            batch.push(r);
                        }
                        Err(_) => break,
                    }
                }
                // One `journal_append` per group (one fsync): `set` count over this count is
                // the number of calls each fsync served.
                let started = std::time::Instant::now();
                wp.outage.keep(batch);
                wp.metrics.record("journal_append", started.elapsed(), true);
                wp.flush_wake.notify_one();
            }
        }));
        match run {
            Ok(()) => return,
            Err(panic) => tracing::error!(
                panic = %super::lane::panic_text(panic.as_ref()),
                "the journal appender panicked; its group failed with INTERNAL, it goes on"
            ),
        }
    }
}

/// The flusher task: commits what the journal holds, continuously (see the module doc).
/// Never ends by itself; close aborts it and flushes what is left.
pub(super) async fn run_flusher(wp: Weak<WritePath>, interval: Duration) {
    let wake = match wp.upgrade() {
        Some(w) => w.flush_wake.clone(),
        None => return,
    };
    loop {
        let idle = match wp.upgrade() {
            Some(w) => !w.outage.has_pending() || w.outage.is_down(),
            None => return,
        };
        if idle {
            // Woken by the appender; the timeout also notices the end of an outage that left
            // calls pending.
            let _ = tokio::time::timeout(IDLE_CHECK, wake.notified()).await;
            continue;
        }
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let Some(w) = wp.upgrade() else { return };
        match AssertUnwindSafe(outage::flush_chunk(&w))
            .catch_unwind()
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.is_unavailable() => {
                // Outage mode: reads of what is not in memory fail fast, the reconnect loop
                // replays the journal when the database is back.
                if !w.outage.is_down() {
                    w.on_error(&e);
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "flushing the journal failed; trying again");
                drop(w);
                tokio::time::sleep(RETRY_AFTER_ERROR).await;
            }
            Err(panic) => {
                tracing::error!(
                    panic = %super::lane::panic_text(panic.as_ref()),
                    "the journal flusher panicked; it goes on"
                );
                drop(w);
                tokio::time::sleep(RETRY_AFTER_ERROR).await;
            }
        }
    }
}
