//! The write path: writer lanes with group commit, merging writes into statements, and the
//! outage mode that keeps writes while PostgreSQL is away.
//!
//! Every write (`set`, `save_creds`, `clear`) is a [`Request`] sent to the lane of its company
//! (`hash(company) % lanes`), so one company's calls are applied in call order. A lane takes the
//! first waiting request plus every other one already queued (group commit), merges them (last
//! write of a key wins, deletes included, see [`merge`]) and applies them with one statement,
//! one round trip ([`commit`]). Each caller is answered only after the commit. If a merged
//! commit fails for a reason other than connectivity, the requests are retried one by one, so
//! each caller learns the outcome of its own data. Connectivity failures hand the requests to
//! [`outage`], which keeps them and replays them when the database is back.
//!
//! In journal durability ([`crate::Durability::Journal`]) there are no lanes: every call goes
//! through [`journal_mode`]'s appender (fsynced to the journal, then acknowledged) and its
//! flusher commits the journal to PostgreSQL with the outage's replay code.

pub(crate) mod commit;
mod journal_mode;
mod lane;
pub(crate) use lane::panic_text;
pub(crate) mod merge;
pub mod outage;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::company::{Companies, Company};
use crate::config::{Config, Durability, TtlPolicy};
use crate::db::Db;
use crate::error::{Error, Result};
use crate::lease::Leases;
use crate::metrics::Metrics;
use crate::value::{KeyWrite, StoredValue};

use self::outage::{CloseReport, Outage};

/// Most keys merged into one group commit (and into one replay transaction).
pub(crate) const MAX_BATCH_KEYS: usize = 20_000;

/// What one call asks to write.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Upserts and deletes of one `set`.
    Keys(Vec<KeyWrite>),
    /// A new creds object.
    Creds(StoredValue),
    /// Delete every key and the creds of the company.
    Clear,
}

impl Op {
    pub(crate) fn weight(&self) -> usize {
        match self {
            Op::Keys(w) => w.len().max(1),
            Op::Creds(_) | Op::Clear => 1,
        }
    }

    /// Bytes of value text, for the pending-write bound.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Op::Keys(w) => w
                .iter()
                .map(|k| {
                    k.key_id.len() + k.key_type.len() + k.value.as_ref().map_or(0, StoredValue::len)
                })
                .sum(),
            Op::Creds(v) => v.len(),
            Op::Clear => 0,
        }
    }
}

/// One call waiting for its commit.
pub(crate) struct Request {
    pub(crate) company: Arc<Company>,
    pub(crate) op: Op,
    pub(crate) reply: Reply,
}

/// The answer channel of one call. A call is answered exactly once: a `Reply` dropped
/// unanswered (its lane panicked, or the runtime shut down under it) answers `INTERNAL`, so no
/// caller waits forever and none is told "closed" for a store that is open.
pub(crate) struct Reply(Option<Answer>);

/// Where a call's outcome goes: a [`WriteTicket`] waiting on a channel, or a callback run by
/// whoever learns the outcome (see [`OnWritten`]).
enum Answer {
    Channel(oneshot::Sender<Result<()>>),
    Call(OnWritten),
}

/// Receives a write's outcome on the thread that learns it (a writer lane's task or the journal
/// appender), instead of waking a task that waits on a [`WriteTicket`]: a binding gathers many
/// calls' outcomes into one hand-off to its own thread (Node resolves a batch of promises per
/// wake-up). It must be quick and must not block: a lane answers its whole batch in a row.
pub type OnWritten = Box<dyn FnOnce(Result<()>) + Send + 'static>;

impl Reply {
    fn channel(tx: oneshot::Sender<Result<()>>) -> Reply {
        Reply(Some(Answer::Channel(tx)))
    }

    pub(crate) fn send(mut self, r: Result<()>) {
        if let Some(answer) = self.0.take() {
            answer.give(r);
        }
    }
}

impl Answer {
    fn give(self, r: Result<()>) {
        match self {
            Answer::Channel(tx) => {
                let _ = tx.send(r);
            }
            // A panicking callback must not take the lane (and every later write) with it.
            Answer::Call(f) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || f(r)));
            }
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(answer) = self.0.take() {
            answer.give(Err(Error::internal(
                "the writer task stopped before answering (a panic, or its runtime shut down); \
                 the write may or may not be committed",
            )));
        }
    }
}

/// Resolves when the write it stands for is committed (or safely kept during an outage).
#[must_use = "a write is only known to be saved once its ticket resolves"]
pub struct WriteTicket {
    rx: Option<oneshot::Receiver<Result<()>>>,
    timing: Option<(Arc<Metrics>, &'static str, Instant)>,
}

impl std::fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTicket").finish_non_exhaustive()
    }
}

impl WriteTicket {
    /// A ticket for a write that needed no database work (e.g. an empty `set`).
    pub(crate) fn done() -> WriteTicket {
        WriteTicket {
            rx: None,
            timing: None,
        }
    }

    /// Records the latency from now to the outcome under `kind` when the ticket is waited on.
    pub(crate) fn timed(mut self, metrics: Arc<Metrics>, kind: &'static str) -> WriteTicket {
        self.timing = Some((metrics, kind, Instant::now()));
        self
    }

    /// Waits for the commit and returns its outcome.
    pub async fn wait(self) -> Result<()> {
        let result = match self.rx {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(Error::closed("the store closed before the write finished"))
            }),
        };
        if let Some((metrics, kind, started)) = self.timing {
            metrics.record_result(kind, started.elapsed(), &result);
        }
        result
    }
}

/// The write path of one store: what the lanes, the outage replay and the sessions share.
pub(crate) struct WritePath {
    pub(crate) db: Arc<Db>,
    pub(crate) cache: Arc<Cache>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) companies: Arc<Companies>,
    pub(crate) outage: Outage,
    pub(crate) leases: Arc<Leases>,
    durability: Durability,
    journal_flush_interval: std::time::Duration,
    /// Wakes the journal flusher when the appender made calls pending.
    flush_wake: Arc<Notify>,
    ttl: TtlPolicy,
    group_commit: bool,
    pipeline_depth: usize,
    pipeline_pacing: bool,
    lanes: RwLock<Vec<mpsc::UnboundedSender<Request>>>,
    /// The lane tasks (or, in journal durability, a task that ends with the appender thread):
    /// they end by themselves once their channel is closed and drained.
    lane_tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The reconnect task and the journal flusher: they never end by themselves, so close
    /// aborts them (an aborted flush is replayed again, which writes the same values).
    reconnect_task: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
}

impl WritePath {
    /// Builds the write path and loads a journal left by a previous process (see
    /// [`Config::journal_path`]). Returns it with whether the journal held writes; nothing runs
    /// until [`WritePath::start`].
    pub(crate) fn new(
        config: &Config,
        db: Arc<Db>,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
        companies: Arc<Companies>,
    ) -> Result<(Arc<WritePath>, bool)> {
        if config.durability == Durability::Journal && config.journal_path.is_none() {
            return Err(Error::invalid(
                "journal durability needs a journal file (Config::journal_path, Node \
                 journalPath): a write resolves once it is fsynced there",
            ));
        }
        let outage = Outage::new(config)?;
        let had_journal = outage.load_journal(&companies)?;
        let wp = Arc::new(WritePath {
            db,
            cache,
            metrics,
            companies,
            outage,
            leases: Arc::new(Leases::new(config)),
            durability: config.durability,
            journal_flush_interval: config.journal_flush_interval,
            flush_wake: Arc::new(Notify::new()),
            ttl: config.ttl.clone(),
            group_commit: config.group_commit,
            pipeline_depth: config.pipeline_depth.max(1),
            pipeline_pacing: config.pipeline_pacing,
            lanes: RwLock::new(Vec::new()),
            lane_tasks: Mutex::new(Vec::new()),
            reconnect_task: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        });
        Ok((wp, had_journal))
    }

    /// Starts `lanes` writer lanes (or, in journal durability, the journal appender thread
    /// and the flusher) and the reconnect task on the current tokio runtime.
    pub(crate) fn start(self: &Arc<Self>, lanes: usize) -> Result<()> {
        let mut senders = Vec::with_capacity(lanes);
        let mut tasks = Vec::with_capacity(lanes);
        let mut forever = vec![tokio::spawn(outage::reconnect_loop(Arc::downgrade(self)))];
        if self.durability == Durability::Journal {
            let (tx, rx) = mpsc::unbounded_channel();
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let wp = self.clone();
            std::thread::Builder::new()
                .name("authstate-journal".into())
                .spawn(move || {
                    journal_mode::run_appender(wp, rx);
                    let _ = done_tx.send(());
                })
                .map_err(|e| Error::internal(format!("cannot start the journal thread: {e}")))?;
            senders.push(tx);
            // Resolves once the appender has drained its channel and ended.
            tasks.push(tokio::spawn(async move {
                let _ = done_rx.await;
            }));
            forever.push(tokio::spawn(journal_mode::run_flusher(
                Arc::downgrade(self),
                self.journal_flush_interval,
            )));
        } else {
            for _ in 0..lanes {
                let (tx, rx) = mpsc::unbounded_channel();
                senders.push(tx);
                tasks.push(tokio::spawn(lane::run(self.clone(), rx)));
            }
        }
        *self.lanes.write().unwrap_or_else(|p| p.into_inner()) = senders;
        *self.lane_tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        *self
            .reconnect_task
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = forever;
        Ok(())
    }

    /// Journal durability ([`Durability::Journal`]) is on.
    pub(crate) fn journaled(&self) -> bool {
        self.durability == Durability::Journal
    }

    /// The time to live of a key of `key_type` (sets `expires_at`).
    pub(crate) fn ttl(&self) -> &TtlPolicy {
        &self.ttl
    }

    /// Enqueues a write on its company's lane; the ticket resolves after the commit.
    pub(crate) fn submit(&self, company: &Arc<Company>, op: Op) -> Result<WriteTicket> {
        let (tx, rx) = oneshot::channel();
        self.send(company, op, Reply::channel(tx))
            .map_err(|(e, _)| e)?;
        Ok(WriteTicket {
            rx: Some(rx),
            timing: None,
        })
    }

    /// Like [`WritePath::submit`], the outcome handed to `on_written` instead of a ticket.
    /// When the call cannot be enqueued, the error is returned and `on_written` is not run.
    pub(crate) fn submit_then(
        &self,
        company: &Arc<Company>,
        op: Op,
        on_written: OnWritten,
    ) -> Result<()> {
        let reply = Reply(Some(Answer::Call(on_written)));
        self.send(company, op, reply).map_err(|(e, mut reply)| {
            // Not enqueued: the caller learns it from the error, not from the callback too.
            reply.0 = None;
            e
        })
    }

    /// Hands a call to its lane (in journal durability, the appender's one queue). On failure
    /// the reply comes back unanswered with the error.
    fn send(
        &self,
        company: &Arc<Company>,
        op: Op,
        reply: Reply,
    ) -> std::result::Result<(), (Error, Reply)> {
        let closed = || Error::closed("the store is closed");
        let lanes = self.lanes.read().unwrap_or_else(|p| p.into_inner());
        let lane = if self.journaled() { 0 } else { company.lane };
        let Some(lane) = lanes.get(lane) else {
            return Err((closed(), reply));
        };
        lane.send(Request {
            company: company.clone(),
            op,
            reply,
        })
        .map_err(|mpsc::error::SendError(r)| (closed(), r.reply))
    }

    /// Records a failed database call; connectivity failures start outage mode.
    pub(crate) fn on_error(&self, e: &Error) {
        if e.is_unavailable() {
            self.outage.enter(e);
        }
    }

    /// True once the store began closing: new calls are refused.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes the lanes' channels (each lane drains its queue, then ends) and aborts the
    /// reconnect task. Returns the tasks, for a caller that waits.
    pub(crate) fn stop(&self) -> Vec<JoinHandle<()>> {
        self.closed.store(true, Ordering::Release);
        self.lanes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut tasks =
            std::mem::take(&mut *self.lane_tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in std::mem::take(
            &mut *self
                .reconnect_task
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        ) {
            t.abort();
            tasks.push(t);
        }
        tasks
    }

    /// Stops the lanes after their queues drained, then writes what an outage kept (one
    /// attempt) and reports what could not be written.
    pub(crate) async fn close(self: &Arc<Self>) -> CloseReport {
        for t in self.stop() {
            // An aborted task resolves once it has been dropped; a lane once its queue is done.
            let _ = t.await;
        }
        outage::flush_on_close(self).await
    }
}
