//! Outage mode: keep serving and keep every acknowledged write when PostgreSQL is away.
//!
//! Any connectivity failure (refused, lost, timed out) puts the store "down". While down:
//! reads are answered from the pending writes and the cache, and fail fast with
//! [`crate::ErrorKind::Unavailable`] for anything else; writes are, by policy, either kept in a
//! bounded pending log (appended and fsynced to the journal first, when one is configured) and
//! acknowledged, or refused with [`crate::ErrorKind::ReadOnly`]. A background task probes with
//! exponential backoff and jitter, replays the pending writes in order (whole calls, in
//! transactions of up to [`crate::write::MAX_BATCH_KEYS`] keys, one replay at a time), and only
//! then goes back "up". On start, a journal left by a crashed process is loaded as pending
//! writes and replayed before anything else.
//!
//! Journal durability ([`crate::Durability::Journal`]) uses the same pieces all the time: every
//! call is kept here through the journal ([`Outage::keep`]) and flushed by the same replay.
//!
//! Split by concern: [`pending`] (the log and its read overlay), [`journal`] (the file),
//! [`recovery`] (reconnect and replay), [`report`] (what it shows).

mod journal;
mod pending;
mod recovery;
mod report;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{Mutex as AsyncMutex, Notify};

use crate::cache::Cached;
use crate::company::Companies;
use crate::config::{Config, Durability, OutagePolicy};
use crate::error::{Error, Result};
use crate::write::Request;

use self::journal::Journal;
use self::pending::{pend, State};
pub(crate) use self::recovery::{flush_chunk, flush_on_close, reconnect_loop, try_recover};
pub use self::report::{CloseReport, OutageStatus, Unflushed};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`], with +-25 % jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The journal is rewritten from the live pending calls once it is this many times larger.
const JOURNAL_COMPACT_RATIO: u64 = 4;
/// ... and at least this large, so small journals are never rewritten.
const JOURNAL_COMPACT_MIN: u64 = 1 << 20;

pub(crate) struct Outage {
    policy: OutagePolicy,
    durability: Durability,
    max_pending_bytes: usize,
    down: AtomicBool,
    has_overlay: AtomicBool,
    journal_bytes: AtomicU64,
    state: Mutex<State>,
    wake: Arc<Notify>,
    journal: Option<Mutex<Journal>>,
    /// Where acknowledged writes that lost their lease are written for the operator.
    lost_path: PathBuf,
    /// Held by [`try_recover`]: two replays at once (the reconnect loop and `Store::open` or
    /// `close`) would commit the same calls twice, the second one over newer writes made after
    /// the first finished, and drain the pending log twice.
    recovering: AsyncMutex<()>,
}

impl Outage {
    pub(crate) fn new(config: &Config) -> Result<Outage> {
        let journal = match &config.journal_path {
            Some(p) => Some(Mutex::new(Journal::open(p.clone())?)),
            None => None,
        };
        let lost_path = match (&config.lost_writes_path, &config.journal_path) {
            (Some(p), _) => p.clone(),
            (None, Some(j)) => {
                let mut p = j.clone().into_os_string();
                p.push(".lost");
                PathBuf::from(p)
            }
            (None, None) => {
                std::env::temp_dir().join(format!("authstate-lost-{}.jsonl", std::process::id()))
            }
        };
        Ok(Outage {
            lost_path,
            policy: config.outage_policy,
            durability: config.durability,
            max_pending_bytes: config.max_pending_bytes,
            down: AtomicBool::new(false),
            has_overlay: AtomicBool::new(false),
            journal_bytes: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            wake: Arc::new(Notify::new()),
            journal,
            recovering: AsyncMutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while writes are pending (not yet in PostgreSQL).
    pub(crate) fn has_pending(&self) -> bool {
        !self.lock().pending.is_empty()
    }

    /// True while the database is considered unreachable.
    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Starts an outage (no-op when already in one) and wakes the reconnect task.
    pub(crate) fn enter(&self, e: &Error) {
        let mut st = self.lock();
        if st.since.is_none() {
            st.since = Some((Instant::now(), SystemTime::now()));
            st.outages += 1;
            st.attempts = 0;
            tracing::warn!(error = %e, "database unavailable: entering outage mode");
        }
        st.last_error = Some(e.to_string());
        self.down.store(true, Ordering::Release);
        drop(st);
        self.wake.notify_one();
    }

    /// Fails fast when a read needs the database and the database is away.
    pub(crate) fn check_reads(&self) -> Result<()> {
        if !self.is_down() {
            return Ok(());
        }
        let st = self.lock();
        let secs = st.since.map_or(0, |(i, _)| i.elapsed().as_secs());
        Err(Error::unavailable(format!(
            "database unavailable for {secs} s ({}); the value is not in memory",
            st.last_error.as_deref().unwrap_or("unknown error")
        )))
    }

    /// A pending value for `key` of `company`, if a write kept during the outage decides it.
    pub(crate) fn overlay_get(&self, company: &str, key: &str) -> Option<Cached> {
        if !self.has_overlay.load(Ordering::Acquire) {
            return None;
        }
        let st = self.lock();
        if let Some((v, _)) = st.overlay.get(key) {
            return Some(v.clone());
        }
        if st.cleared.contains(company) {
            return Some(None);
        }
        None
    }

    /// The journal file, under its lock. Lock order: the journal before the state, everywhere
    /// (an append holds the journal from its write until its calls are in the pending log, so
    /// a truncation or rewrite, which holds it too, never drops a record not yet pending).
    fn journal_lock(&self) -> Option<std::sync::MutexGuard<'_, Journal>> {
        self.journal
            .as_ref()
            .map(|j| j.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Keeps (or refuses, by policy) a batch of writes while down. Returns the batch back when
    /// the outage ended in the meantime, so the caller commits it normally.
    pub(crate) fn divert(
        &self,
        batch: Vec<Request>,
        cause: Option<&Error>,
    ) -> Option<Vec<Request>> {
        let mut j = self.journal_lock();
        let st = self.lock();
        if !self.is_down() {
            return Some(batch);
        }
        if self.policy == OutagePolicy::ReadOnly {
            let err = match cause {
                // The batch that met the failure may or may not have committed: say so.
                Some(e) => e.clone(),
                None => Error::read_only(format!(
                    "database unavailable ({}); writes are refused until it is back",
                    st.last_error.as_deref().unwrap_or("unknown error")
                )),
            };
            for r in batch {
                r.reply.send(Err(err.clone()));
            }
            return None;
        }
        // The state stays locked from the check above until the calls are pending: the
        // outage cannot end in between and leave them pending with nobody to replay them.
        let batch = self.admit(&st, batch);
        if batch.is_empty() {
            return None;
        }
        let batch = match j.as_deref_mut() {
            // `None`: the append failed and answered every call, nothing to give back.
            Some(j) => self.append(j, batch)?,
            None => batch,
        };
        self.make_pending(st, batch);
        if let Some(j) = j.as_deref_mut() {
            self.compact_if_large(j);
        }
        None
    }

    /// Journal durability: appends a batch of calls (many callers) to the journal with one
    /// fsync, then makes them pending (reads see them) and answers them. The state is not
    /// locked during the fsync, so reads go on meanwhile.
    pub(crate) fn keep(&self, batch: Vec<Request>) {
        let Some(mut j) = self.journal_lock() else {
            for r in batch {
                r.reply.send(Err(Error::internal(
                    "journal durability without a journal (Config::journal_path)",
                )));
            }
            return;
        };
        let batch = {
            let st = self.lock();
            self.admit(&st, batch)
        };
        if batch.is_empty() {
            return;
        }
        let Some(batch) = self.append(&mut j, batch) else {
            return;
        };
        self.make_pending(self.lock(), batch);
        self.compact_if_large(&mut j);
    }

    /// The calls of `batch` that may be kept: not of a company whose lease was lost (LOCKED),
    /// and within `max_pending_bytes` (BACKLOG); the others are answered here. The bound is
    /// decided per call (a batch merges several callers): a call is kept whole or refused
    /// whole.
    fn admit(&self, st: &State, batch: Vec<Request>) -> Vec<Request> {
        let mut room = self.max_pending_bytes.saturating_sub(st.pending_bytes);
        let mut kept = Vec::with_capacity(batch.len());
        for r in batch {
            // A company whose lease was lost is not written, now or at the replay.
            if let Err(why) = r.company.lease_token() {
                r.reply.send(Err(Error::locked(why)));
                continue;
            }
            let bytes = r.op.bytes();
            if bytes <= room {
                room -= bytes;
                kept.push(r);
            } else {
                r.reply.send(Err(Error::backlog(format!(
                    "{} bytes of writes are pending (not yet in PostgreSQL), the bound is {}; \
                     this call needs {bytes} more",
                    self.max_pending_bytes - room,
                    self.max_pending_bytes
                ))));
            }
        }
        kept
    }

    /// Appends `batch` to the journal and fsyncs it (one write, one fsync). On failure every
    /// call is answered with the error and `None` is returned.
    fn append(&self, j: &mut Journal, batch: Vec<Request>) -> Option<Vec<Request>> {
        let ops: Vec<journal::Record> = batch
            .iter()
            .map(|r| (&*r.company.id, &r.op, r.company.journal_token()))
            .collect();
        let result = j.append(&ops);
        drop(ops);
        self.journal_bytes.store(j.bytes, Ordering::Relaxed);
        match result {
            Ok(()) => Some(batch),
            Err(e) => {
                let err = Error::internal(format!(
                    "could not write the journal {}: {e}",
                    j.path.display()
                ));
                for r in batch {
                    r.reply.send(Err(err.clone()));
                }
                None
            }
        }
    }

    /// Makes kept calls pending (coalesced, visible to reads), then answers them.
    fn make_pending(&self, mut st: std::sync::MutexGuard<'_, State>, batch: Vec<Request>) {
        let now = Instant::now();
        let mut replies = Vec::with_capacity(batch.len());
        for r in batch {
            pend(&mut st, r.company, r.op, now);
            replies.push(r.reply);
        }
        self.has_overlay.store(true, Ordering::Release);
        drop(st);
        for reply in replies {
            reply.send(Ok(()));
        }
    }

    /// Rewrites the journal from the live pending calls once it is much larger than them.
    /// The caller holds the journal, so no append comes in between.
    fn compact_if_large(&self, j: &mut Journal) {
        let live = self.lock().pending_bytes as u64;
        if j.bytes <= JOURNAL_COMPACT_MIN || j.bytes <= live.saturating_mul(JOURNAL_COMPACT_RATIO) {
            return;
        }
        let buf = {
            let st = self.lock();
            let ops: Vec<journal::Record> = st
                .pending
                .iter()
                .map(|p| (&*p.0.id, &p.1, p.0.journal_token()))
                .collect();
            journal::encode_records(&ops)
        };
        // On failure the long journal stays valid (it replays to the same state).
        if let Err(e) = buf.and_then(|b| j.rewrite_with(&b)) {
            tracing::warn!(error = %e, "could not compact the journal");
        }
        self.journal_bytes.store(j.bytes, Ordering::Relaxed);
    }

    /// Loads a journal left by a previous process as pending writes. True when it held any.
    pub(crate) fn load_journal(&self, companies: &Companies) -> Result<bool> {
        let Some(j) = &self.journal else {
            return Ok(false);
        };
        let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
        let records = j.load()?;
        if records.is_empty() {
            return Ok(false);
        }
        let mut st = self.lock();
        for (company, op, token) in records {
            let company = companies.get(&company);
            match (company.lease(), token) {
                // The replay acquires the lease before it writes; with a token, it takes the
                // lease over only if it still carries that token.
                (crate::company::LeaseState::Opening, _) => {
                    company.set_lease(crate::company::LeaseState::Pending { inherited: token });
                }
                (crate::company::LeaseState::Pending { inherited }, Some(t)) => {
                    let newest = inherited.map_or(t, |i| i.max(t));
                    company.set_lease(crate::company::LeaseState::Pending {
                        inherited: Some(newest),
                    });
                }
                _ => {}
            }
            pend(&mut st, company, op, Instant::now());
        }
        st.since = Some((Instant::now(), SystemTime::now()));
        st.last_error = Some(format!(
            "replaying {} calls from the journal {}",
            st.pending.len(),
            j.path.display()
        ));
        tracing::info!(calls = st.pending.len(), "replaying the outage journal");
        self.journal_bytes.store(j.bytes, Ordering::Relaxed);
        self.has_overlay.store(true, Ordering::Release);
        self.down.store(true, Ordering::Release);
        Ok(true)
    }

    /// Appends `calls` (acknowledged during an outage, never applied because the lease was
    /// lost) to the lost-writes file for the operator, one JSON line each, fsynced. Returns
    /// the file's path, or the error text when it could not be written.
    pub(super) fn write_lost(
        &self,
        calls: &[pending::PendingCall],
        why: &str,
    ) -> std::result::Result<String, String> {
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut buf = String::new();
        for p in calls {
            let call = journal::encode_record(&p.0.id, &p.1, p.0.journal_token())
                .map_err(|e| e.to_string())?;
            let reason = serde_json::to_string(why).map_err(|e| e.to_string())?;
            buf.push_str(&format!(
                "{{\"lost_at_unix_ms\":{at},\"reason\":{reason},\"call\":{call}}}\n"
            ));
        }
        let path = self.lost_path.display().to_string();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.lost_path)
            .map_err(|e| format!("{path}: {e}"))?;
        f.write_all(buf.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(|e| format!("{path}: {e}"))?;
        Ok(path)
    }

    /// The state for metrics and health.
    pub(crate) fn status(&self) -> OutageStatus {
        let st = self.lock();
        OutageStatus {
            down: self.is_down(),
            down_since_unix_ms: st.since.map(|(_, t)| {
                t.duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }),
            down_for_ms: st.since.map_or(0, |(i, _)| {
                u64::try_from(i.elapsed().as_millis()).unwrap_or(u64::MAX)
            }),
            last_error: st.last_error.clone(),
            pending_calls: st.pending.len(),
            oldest_pending_ms: st.pending.first().map_or(0, |p| {
                u64::try_from(p.2.elapsed().as_millis()).unwrap_or(u64::MAX)
            }),
            pending_bytes: st.pending_bytes,
            journal_bytes: self.journal_bytes.load(Ordering::Relaxed),
            reconnect_attempts: st.attempts,
            outages: st.outages,
            durability: match self.durability {
                Durability::Commit => "commit",
                Durability::Journal => "journal",
            },
            policy: match self.policy {
                OutagePolicy::Buffer => "buffer",
                OutagePolicy::ReadOnly => "read-only",
            },
        }
    }
}
