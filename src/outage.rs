//! Outage mode: keep serving and keep every acknowledged write when PostgreSQL is away.
//!
//! Any connectivity failure (refused, lost, timed out) puts the store "down". While down:
//! reads are answered from the pending writes and the cache, and fail fast with
//! [`Error::Unavailable`] for anything else; writes are, by policy, either kept in a bounded
//! pending log (appended and fsynced to the journal first, when one is configured) and
//! acknowledged, or refused with [`Error::ReadOnly`]. A background task probes with
//! exponential backoff and jitter, replays the pending writes in order (whole calls, in
//! transactions of up to [`writer::MAX_BATCH_KEYS`] keys, one replay at a time), and only then
//! goes back "up". On start, a journal left by a crashed process is loaded as pending
//! writes and replayed before anything else.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Mutex as AsyncMutex, Notify};

use crate::cache::{self, Cached};
use crate::config::{Config, OutagePolicy};
use crate::error::{Error, Result};
use crate::store::{Company, Inner};
use crate::value::{KeyWrite, StoredValue};
use crate::writer::{self, Op, Request};

/// First reconnect delay; doubles up to [`MAX_BACKOFF`], with +-25 % jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest delay between two reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// The journal is rewritten from the live pending calls once it is this many times larger.
const JOURNAL_COMPACT_RATIO: u64 = 4;
/// ... and at least this large, so small journals are never rewritten.
const JOURNAL_COMPACT_MIN: u64 = 1 << 20;

/// The outage state as the health report and the bindings show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OutageStatus {
    /// The database is considered unreachable (or pending writes are still being replayed).
    pub down: bool,
    /// When the current outage started, milliseconds since the Unix epoch.
    pub down_since_unix_ms: Option<u64>,
    /// How long the current outage has lasted, milliseconds.
    pub down_for_ms: u64,
    /// The error that started the current (or last) outage.
    pub last_error: Option<String>,
    /// Calls kept and not yet replayed.
    pub pending_calls: usize,
    /// Bytes of value text kept and not yet replayed.
    pub pending_bytes: usize,
    /// Size of the journal file.
    pub journal_bytes: u64,
    /// Reconnect attempts in the current outage.
    pub reconnect_attempts: u64,
    /// Outages since the store opened.
    pub outages: u64,
    /// `buffer` or `read-only`.
    pub policy: &'static str,
}

/// What [`crate::Store::close`] could and could not flush.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CloseReport {
    /// Calls kept during an outage that were written at close.
    pub flushed_calls: usize,
    /// Calls that could not be written (the database was still away). They remain in the
    /// journal when one is configured.
    pub unflushed: Vec<Unflushed>,
}

/// One call that [`crate::Store::close`] could not write.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unflushed {
    /// The company.
    pub company_id: String,
    /// `keys`, `creds` or `clear`.
    pub kind: &'static str,
    /// `(type, id)` of each key of a `keys` call.
    pub keys: Vec<(String, String)>,
}

type PendingCall = Arc<(Arc<Company>, Op)>;

#[derive(Default)]
struct State {
    since: Option<(Instant, SystemTime)>,
    last_error: Option<String>,
    pending: Vec<PendingCall>,
    pending_bytes: usize,
    /// Leading pending calls a replay is writing right now: never coalesced into, because the
    /// replay drains exactly that many calls when it commits.
    replaying: usize,
    /// The last pending value of each key (read-your-writes while down).
    overlay: HashMap<String, Cached>,
    /// Companies with a pending `clear`: their keys not in `overlay` are absent.
    cleared: HashSet<Arc<str>>,
    attempts: u64,
    outages: u64,
}

pub(crate) struct Outage {
    policy: OutagePolicy,
    max_pending_bytes: usize,
    down: AtomicBool,
    has_overlay: AtomicBool,
    journal_bytes: AtomicU64,
    state: Mutex<State>,
    wake: Arc<Notify>,
    journal: Option<Mutex<Journal>>,
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
        Ok(Outage {
            policy: config.outage_policy,
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
        if let Some(v) = st.overlay.get(key) {
            return Some(v.clone());
        }
        if st.cleared.contains(company) {
            return Some(None);
        }
        None
    }

    /// Keeps (or refuses, by policy) a batch of writes while down. Returns the batch back when
    /// the outage ended in the meantime, so the caller commits it normally.
    pub(crate) fn divert(
        &self,
        batch: Vec<Request>,
        cause: Option<&Error>,
    ) -> Option<Vec<Request>> {
        let mut st = self.lock();
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
                let _ = r.reply.send(Err(err.clone()));
            }
            return None;
        }
        // The bound is decided per call (a group-commit batch merges several callers): a call
        // is kept whole or refused whole.
        let mut room = self.max_pending_bytes.saturating_sub(st.pending_bytes);
        let mut batch_kept = Vec::with_capacity(batch.len());
        for r in batch {
            let bytes = r.op.bytes();
            if bytes <= room {
                room -= bytes;
                batch_kept.push(r);
            } else {
                let _ = r.reply.send(Err(Error::backlog(format!(
                    "{} bytes of writes are pending during the outage, the bound is {}; \
                     this call needs {bytes} more",
                    self.max_pending_bytes - room,
                    self.max_pending_bytes
                ))));
            }
        }
        let batch = batch_kept;
        if batch.is_empty() {
            return None;
        }
        if let Some(j) = &self.journal {
            let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
            let ops: Vec<(&str, &Op)> = batch.iter().map(|r| (&*r.company.id, &r.op)).collect();
            if let Err(e) = j.append(&ops) {
                let err = Error::internal(format!(
                    "could not write the outage journal {}: {e}",
                    j.path.display()
                ));
                for r in batch {
                    let _ = r.reply.send(Err(err.clone()));
                }
                return None;
            }
            self.journal_bytes.store(j.bytes, Ordering::Relaxed);
        }
        for r in batch {
            coalesce(&mut st, &r.company, &r.op);
            st.pending_bytes += r.op.bytes();
            overlay_apply(&mut st, &r.company, &r.op);
            st.pending.push(Arc::new((r.company, r.op)));
            let _ = r.reply.send(Ok(()));
        }
        if let Some(j) = &self.journal {
            let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
            let live = st.pending_bytes as u64;
            if j.bytes > JOURNAL_COMPACT_MIN && j.bytes > live.saturating_mul(JOURNAL_COMPACT_RATIO)
            {
                let ops: Vec<(&str, &Op)> = st.pending.iter().map(|p| (&*p.0.id, &p.1)).collect();
                // On failure the long journal stays valid (it replays to the same state).
                if let Err(e) = j.rewrite(&ops) {
                    tracing::warn!(error = %e, "could not compact the outage journal");
                }
                self.journal_bytes.store(j.bytes, Ordering::Relaxed);
            }
        }
        self.has_overlay.store(true, Ordering::Release);
        None
    }

    /// Loads a journal left by a previous process as pending writes. True when it held any.
    pub(crate) fn load_journal(&self, inner: &Inner) -> Result<bool> {
        let Some(j) = &self.journal else {
            return Ok(false);
        };
        let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
        let records = j.load()?;
        if records.is_empty() {
            return Ok(false);
        }
        let mut st = self.lock();
        for (company, op) in records {
            let company = inner.company(&company);
            coalesce(&mut st, &company, &op);
            st.pending_bytes += op.bytes();
            overlay_apply(&mut st, &company, &op);
            st.pending.push(Arc::new((company, op)));
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
            pending_bytes: st.pending_bytes,
            journal_bytes: self.journal_bytes.load(Ordering::Relaxed),
            reconnect_attempts: st.attempts,
            outages: st.outages,
            policy: match self.policy {
                OutagePolicy::Buffer => "buffer",
                OutagePolicy::ReadOnly => "read-only",
            },
        }
    }

    /// At close: one attempt to write what is pending; reports what stays unwritten.
    pub(crate) async fn flush_on_close(&self, inner: &Arc<Inner>) -> CloseReport {
        let before = self.lock().pending.len();
        if before == 0 && !self.is_down() {
            return CloseReport::default();
        }
        let _ = try_recover(inner).await;
        let st = self.lock();
        let unflushed: Vec<Unflushed> = st
            .pending
            .iter()
            .map(|p| {
                let (company, op) = &**p;
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
}

/// Drops from the pending calls (behind any being replayed) what `op` of `company` supersedes:
/// the earlier writes of the same keys, earlier creds, or everything earlier of the company for
/// a `clear`. Calls left empty go. The order of what remains is kept, so replaying it gives the
/// same final state as replaying every call, and the pending log grows with the number of
/// distinct keys written during an outage, not with its length.
fn coalesce(st: &mut State, company: &Arc<Company>, op: &Op) {
    let keys: HashSet<(&str, &str)> = match op {
        Op::Keys(w) => w.iter().map(|k| (&*k.key_type, &*k.key_id)).collect(),
        Op::Creds(_) | Op::Clear => HashSet::new(),
    };
    let start = st.replaying.min(st.pending.len());
    let mut removed = 0usize;
    for call in st.pending[start..].iter_mut() {
        if call.0.id != company.id {
            continue;
        }
        let before = call.1.bytes();
        // Pending calls are not shared outside the log past `start`: this does not copy.
        let old = &mut Arc::make_mut(call).1;
        match (&mut *old, op) {
            (_, Op::Clear) | (Op::Creds(_), Op::Creds(_)) => *old = Op::Keys(Vec::new()),
            (Op::Keys(w), Op::Keys(_)) => w.retain(|k| !keys.contains(&(&*k.key_type, &*k.key_id))),
            _ => {}
        }
        removed += before - old.bytes();
    }
    let mut i = 0usize;
    st.pending.retain(|call| {
        let keep = i < start || !matches!(&call.1, Op::Keys(w) if w.is_empty());
        i += 1;
        keep
    });
    st.pending_bytes = st.pending_bytes.saturating_sub(removed);
}

fn overlay_apply(st: &mut State, company: &Arc<Company>, op: &Op) {
    match op {
        Op::Keys(writes) => {
            for w in writes {
                st.overlay.insert(
                    cache::key_of(&company.id, &w.key_type, &w.key_id),
                    w.value.clone(),
                );
            }
        }
        Op::Creds(v) => {
            st.overlay
                .insert(cache::creds_key(&company.id), Some(v.clone()));
            company.set_last_creds(Some(v.clone()));
        }
        Op::Clear => {
            let prefix = format!("{}\0", company.id);
            st.overlay.retain(|k, _| !k.starts_with(&prefix));
            st.cleared.insert(company.id.clone());
            company.set_last_creds(None);
        }
    }
}

/// Replays what is pending (in order, whole calls per transaction) and, once nothing is
/// pending and the database answers, ends the outage. Replays never run concurrently.
pub(crate) async fn try_recover(inner: &Arc<Inner>) -> Result<()> {
    let outage = &inner.outage;
    let _one_at_a_time = outage.recovering.lock().await;
    if !outage.is_down() {
        // Another caller recovered while we waited for the lock.
        return Ok(());
    }
    loop {
        // Replay in bounded chunks of whole calls (each its own transaction, in order), so a
        // long outage's backlog does not turn into one statement that never finishes within
        // the statement timeout. A crash between chunks only replays the journal again from
        // its start, which rewrites the same values in the same order.
        let snapshot: Vec<PendingCall> = {
            let st = outage.lock();
            let mut keys = 0;
            st.pending
                .iter()
                .take_while(|p| {
                    let first = keys == 0;
                    keys += p.1.weight();
                    first || keys <= writer::MAX_BATCH_KEYS
                })
                .cloned()
                .collect()
        };
        if snapshot.is_empty() {
            let client = inner.client().await?;
            let probe = tokio::time::timeout(inner.call_timeout(), client.simple_query("SELECT 1"))
                .await
                .map_err(|_| Error::timeout("probe did not answer"))?;
            if let Err(e) = probe {
                let e = Error::from(e);
                crate::store::discard_if_broken(client, &e);
                return Err(e);
            }
        } else {
            let ops: Vec<(&Company, &Op)> = snapshot.iter().map(|p| (&*p.0, &p.1)).collect();
            outage.lock().replaying = snapshot.len();
            let committed = writer::commit(inner, &ops).await;
            if let Err(e) = committed {
                outage.lock().replaying = 0;
                return Err(e);
            }
            writer::apply_committed(inner, &ops);
        }
        let mut st = outage.lock();
        st.pending.drain(..snapshot.len());
        st.replaying = 0;
        st.pending_bytes = st.pending.iter().map(|p| p.1.bytes()).sum();
        st.overlay.clear();
        st.cleared.clear();
        let remaining = st.pending.clone();
        for p in &remaining {
            overlay_apply(&mut st, &p.0, &p.1);
        }
        if st.pending.is_empty() {
            if let Some(j) = &outage.journal {
                let mut j = j.lock().unwrap_or_else(|p| p.into_inner());
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
            if let Some((since, _)) = st.since.take() {
                tracing::info!(
                    replayed = snapshot.len(),
                    outage_ms = since.elapsed().as_millis() as u64,
                    "database back: outage over"
                );
            }
            outage.has_overlay.store(false, Ordering::Release);
            outage.down.store(false, Ordering::Release);
            return Ok(());
        }
    }
}

/// Background task: waits for an outage, then retries [`try_recover`] with backoff and jitter.
pub(crate) async fn reconnect_loop(inner: Weak<Inner>) {
    let wake = match inner.upgrade() {
        Some(i) => i.outage.wake.clone(),
        None => return,
    };
    let mut attempt: u32 = 0;
    loop {
        let down = match inner.upgrade() {
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
        let Some(i) = inner.upgrade() else { return };
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

/// The append-only journal: one JSON line per kept call, fsynced before the call is answered.
struct Journal {
    path: PathBuf,
    file: File,
    bytes: u64,
}

impl Journal {
    fn open(path: PathBuf) -> Result<Journal> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)
            .map_err(|e| Error::invalid(format!("cannot open journal {}: {e}", path.display())))?;
        let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Journal { path, file, bytes })
    }

    fn append(&mut self, ops: &[(&str, &Op)]) -> std::io::Result<()> {
        let buf = encode_records(ops)?;
        self.file.write_all(buf.as_bytes())?;
        self.file.sync_data()?;
        self.bytes += buf.len() as u64;
        Ok(())
    }

    /// Replaces the journal with `ops` (the live pending calls): written to a temporary file,
    /// fsynced, renamed over the journal and the directory fsynced, so a crash leaves either
    /// the old or the new journal, both of which replay to the same state.
    fn rewrite(&mut self, ops: &[(&str, &Op)]) -> std::io::Result<()> {
        let tmp = self.path.with_extension("compact");
        let buf = encode_records(ops)?;
        {
            let mut f = File::create(&tmp)?;
            f.write_all(buf.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)?;
        self.bytes = buf.len() as u64;
        Ok(())
    }

    fn truncate(&mut self) -> std::io::Result<()> {
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.bytes = 0;
        Ok(())
    }

    /// Reads every record. A torn last line (a crash mid-append, never acknowledged; it may
    /// end inside a UTF-8 character) is skipped and cut off the file, and the file is left
    /// ending with a newline, so the next append starts a line of its own instead of being
    /// glued to the fragment. A bad line elsewhere is an error, because skipping it would lose
    /// a write.
    fn load(&mut self) -> Result<Vec<(String, Op)>> {
        let read_err = |e: std::io::Error| {
            Error::internal(format!("cannot read journal {}: {e}", self.path.display()))
        };
        let data = std::fs::read(&self.path).map_err(read_err)?;
        let mut out = Vec::new();
        // End of the last line that is kept (complete or not).
        let mut good_end = 0;
        let mut pos = 0;
        let mut n = 0;
        while pos < data.len() {
            n += 1;
            let rest = &data[pos..];
            let (line, next) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], pos + i + 1),
                None => (rest, data.len()),
            };
            let parsed = std::str::from_utf8(line)
                .map_err(|e| Error::internal(format!("not UTF-8: {e}")))
                .and_then(|l| {
                    if l.trim().is_empty() {
                        Ok(None)
                    } else {
                        decode_record(l).map(Some)
                    }
                });
            match parsed {
                Ok(r) => {
                    out.extend(r);
                    good_end = next;
                }
                Err(_) if next >= data.len() => {
                    tracing::warn!("skipping a torn last journal line (never acknowledged)");
                }
                Err(e) => {
                    return Err(Error::internal(format!(
                        "journal {} line {n} is corrupt: {e}",
                        self.path.display()
                    )))
                }
            }
            pos = next;
        }
        let io_err = |e: std::io::Error| {
            Error::internal(format!(
                "cannot repair journal {}: {e}",
                self.path.display()
            ))
        };
        if good_end < data.len() {
            self.file.set_len(good_end as u64).map_err(io_err)?;
        }
        let mut len = good_end as u64;
        if good_end > 0 && data[good_end - 1] != b'\n' {
            self.file.write_all(b"\n").map_err(io_err)?;
            len += 1;
        }
        if len != data.len() as u64 {
            self.file.sync_data().map_err(io_err)?;
        }
        self.bytes = len;
        Ok(out)
    }
}

/// Journal lines for `ops`, each ended by a newline.
fn encode_records(ops: &[(&str, &Op)]) -> std::io::Result<String> {
    let mut buf = String::new();
    for (company, op) in ops {
        buf.push_str(&encode_record(company, op)?);
        buf.push('\n');
    }
    Ok(buf)
}

fn encode_record(company: &str, op: &Op) -> std::io::Result<String> {
    let c = serde_json::to_string(company)?;
    Ok(match op {
        Op::Keys(writes) => {
            let mut s = format!("{{\"c\":{c},\"op\":\"keys\",\"w\":[");
            for (n, w) in writes.iter().enumerate() {
                if n > 0 {
                    s.push(',');
                }
                s.push('[');
                s.push_str(&serde_json::to_string(&w.key_type)?);
                s.push(',');
                s.push_str(&serde_json::to_string(&w.key_id)?);
                s.push(',');
                s.push_str(w.value.as_ref().map_or("null", StoredValue::as_str));
                s.push(']');
            }
            s.push_str("]}");
            s
        }
        Op::Creds(v) => format!("{{\"c\":{c},\"op\":\"creds\",\"v\":{}}}", v.as_str()),
        Op::Clear => format!("{{\"c\":{c},\"op\":\"clear\"}}"),
    })
}

fn decode_record(line: &str) -> Result<(String, Op)> {
    let v: Value = serde_json::from_str(line)?;
    let company = v["c"]
        .as_str()
        .ok_or_else(|| Error::internal("record without company"))?
        .to_string();
    crate::validate::company_id(&company)?;
    let op = match v["op"].as_str() {
        Some("keys") => {
            let items = v["w"]
                .as_array()
                .ok_or_else(|| Error::internal("keys record without writes"))?;
            let mut writes = Vec::with_capacity(items.len());
            for item in items {
                let (Some(t), Some(i), Some(val)) =
                    (item[0].as_str(), item[1].as_str(), item.get(2))
                else {
                    return Err(Error::internal("bad key write in journal"));
                };
                writes.push(match val {
                    Value::Null => KeyWrite::delete(t, i)?,
                    val => KeyWrite::put(t, i, StoredValue::from_value(val.clone())?)?,
                });
            }
            Op::Keys(writes)
        }
        Some("creds") => Op::Creds(StoredValue::from_value(v["v"].clone())?),
        Some("clear") => Op::Clear,
        _ => return Err(Error::internal("unknown journal record")),
    };
    Ok((company, op))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_records_round_trip() {
        let w = vec![
            KeyWrite::put(
                "session",
                "1@s.whatsapp.net:2",
                StoredValue::from_json(r#"{"a":{"type":"Buffer","data":"AQI="}}"#).unwrap(),
            )
            .unwrap(),
            KeyWrite::delete("pre-key", "7").unwrap(),
        ];
        let line = encode_record("acme", &Op::Keys(w.clone())).unwrap();
        let (c, op) = decode_record(&line).unwrap();
        assert_eq!(c, "acme");
        match op {
            Op::Keys(back) => assert_eq!(back, w),
            _ => panic!("wrong op"),
        }
        let line = encode_record("acme", &Op::Clear).unwrap();
        assert!(matches!(decode_record(&line).unwrap().1, Op::Clear));
    }

    #[test]
    fn torn_last_line_is_skipped_but_corruption_elsewhere_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let good = encode_record("a", &Op::Clear).unwrap();
        std::fs::write(&path, format!("{good}\n{{\"c\":\"a\",\"op\"")).unwrap();
        let mut j = Journal::open(path.clone()).unwrap();
        assert_eq!(j.load().unwrap().len(), 1);
        std::fs::write(&path, format!("garbage\n{good}\n")).unwrap();
        assert!(j.load().is_err());
    }

    #[test]
    fn torn_tail_is_cut_so_the_next_append_is_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let good = encode_record("a", &Op::Clear).unwrap();
        // A fragment cut inside a UTF-8 character, then a record without its newline.
        let mut bytes = format!("{good}\n{{\"c\":\"a\",\"op\":\"caf").into_bytes();
        bytes.push(0xC3);
        std::fs::write(&path, &bytes).unwrap();
        let mut j = Journal::open(path.clone()).unwrap();
        assert_eq!(j.load().unwrap().len(), 1);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            format!("{good}\n").into_bytes()
        );
        j.append(&[("b", &Op::Clear)]).unwrap();
        assert_eq!(j.load().unwrap().len(), 2);

        std::fs::write(&path, &good).unwrap();
        let mut j = Journal::open(path.clone()).unwrap();
        assert_eq!(j.load().unwrap().len(), 1);
        j.append(&[("b", &Op::Clear)]).unwrap();
        assert_eq!(
            j.load().unwrap().len(),
            2,
            "a last record without newline is ended first"
        );
        assert_eq!(j.bytes, std::fs::metadata(&path).unwrap().len());
    }
}
