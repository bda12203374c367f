//! One writer lane: takes queued calls in order, groups them into one statement, pipelines
//! statements on one connection, answers each caller with its own outcome, and survives a
//! panic of its own code.
//!
//! Pipelining: a batch is sent as soon as it is taken, while the lane's earlier batches are
//! still in flight (up to [`crate::Config::pipeline_depth`]), on one connection held while anything is in
//! flight. PostgreSQL runs the statements in the order sent, each in its own implicit
//! transaction, and answers in that order; the lane answers callers in that order too. Over a
//! slow link a `set` then costs one round trip instead of waiting for the commit before it.
//!
//! When an in-flight batch fails:
//! - for connectivity (or a timeout): the outage mode takes it and every batch sent after it,
//!   in order, and replays them in that order when the database is back (the ones that did
//!   commit are committed again, which leaves the same state);
//! - otherwise, with one caller: only that caller gets the error; the batches after it stand
//!   (the failed statement changed nothing);
//! - otherwise (a merged batch, e.g. one caller's value refused): the lane waits for the
//!   batches sent after it, retries the failed batch's callers one by one so each gets its own
//!   outcome, then commits the later batches again, in order, before answering them, so that
//!   no retried write lands after a later write of the same key.
//!
//! A batch whose plan needs a transaction, or one taken while the database is down, waits
//! until nothing is in flight and goes the sequential way ([`process`]).
//!
//! How far ahead to send ([`Pacer`]): a statement sent while the server is still busy with
//! the lane's earlier ones gains nothing (it queues there) and costs a commit that group commit
//! would have saved (PostgreSQL's cost is per statement and per commit more than per row). So
//! once statements queue at the server (the usual time to an answer well above the least), the
//! lane sends ahead only as many as the server can run while one crosses the link: the least
//! time to an answer (link + server) over the time between two answers (server), up to
//! `pipeline_depth` (see [`Pacer`]). Over a 20 ms link with a fast server nothing queues and
//! the full depth is used; on loopback it stays shallow (1 to 3), so group commit still
//! merges: `examples/pipeline_bench.rs` shows the trade-off (on loopback, paced depth 8 made
//! 3.5 sets per statement instead of 12 at depth 1, ~35 % more sets/s and ~3x PostgreSQL CPU;
//! `pipeline_depth = 1` is the choice for the least database CPU on a fast link).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use futures_util::stream::{FuturesOrdered, StreamExt};
use futures_util::FutureExt;
use tokio::sync::mpsc;

use super::{commit, Op, Request, WritePath, MAX_BATCH_KEYS};
use crate::db::PipeConn;
use crate::error::{Error, Result};

/// Runs one writer lane until its channel closes (store close), draining what is queued.
pub(super) async fn run(wp: Arc<WritePath>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut carry: Option<Request> = None;
    // A panic must not end the lane: every later write of the companies mapped to it would
    // fail while the store looks open. The unanswered callers of the batches it held get
    // INTERNAL from their dropped `Reply`; the lane goes on with the next batch.
    while let Err(panic) = AssertUnwindSafe(pipeline(&wp, &mut rx, &mut carry))
        .catch_unwind()
        .await
    {
        tracing::error!(
            panic = %panic_text(panic.as_ref()),
            "a writer lane panicked; its batches failed with INTERNAL, the lane goes on"
        );
    }
}

pub(crate) fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// A batch's requests, its commit outcome, when it was sent and whether it was sent alone
/// (nothing else of the lane in flight).
type Done = (Vec<Request>, Result<commit::Fenced>, Instant, bool);
type Flight<'a> = Pin<Box<dyn Future<Output = Done> + Send + 'a>>;

async fn next_request(
    rx: &mut mpsc::UnboundedReceiver<Request>,
    carry: &mut Option<Request>,
) -> Option<Request> {
    match carry.take() {
        Some(r) => Some(r),
        None => rx.recv().await,
    }
}

/// `first` plus what is already queued (group commit), up to a `clear` (kept for the next
/// batch: it must be a statement of its own) or [`MAX_BATCH_KEYS`].
fn gather(
    wp: &WritePath,
    first: Request,
    rx: &mut mpsc::UnboundedReceiver<Request>,
    carry: &mut Option<Request>,
) -> Vec<Request> {
    let mut batch = vec![first];
    if wp.group_commit && !matches!(batch[0].op, Op::Clear) {
        let mut keys = batch[0].op.weight();
        while keys < MAX_BATCH_KEYS {
            match rx.try_recv() {
                Ok(r) if matches!(r.op, Op::Clear) => {
                    *carry = Some(r);
                    break;
                }
                Ok(r) => {
                    keys += r.op.weight();
                    batch.push(r);
                }
                Err(_) => break,
            }
        }
    }
    batch
}

/// The lane's loop: take batches and send them while fewer than `pipeline_depth` are in
/// flight, settle answers in order. Returns once the channel closed and all is answered.
async fn pipeline(
    wp: &Arc<WritePath>,
    rx: &mut mpsc::UnboundedReceiver<Request>,
    carry: &mut Option<Request>,
) {
    // Invariant: `conn` is `None` only when nothing is in flight.
    let mut conn: Option<PipeConn> = None;
    let mut flying: FuturesOrdered<Flight<'_>> = FuturesOrdered::new();
    let mut open = true;
    let mut pacer = Pacer::new(wp.pipeline_depth, wp.pipeline_pacing);
    loop {
        if !open && flying.is_empty() {
            return;
        }
        tokio::select! {
            biased;
            Some(done) = flying.next(), if !flying.is_empty() => {
                pacer.observe(done.2, done.3, done.1.is_ok());
                settle(wp, done, &mut flying).await;
                if flying.is_empty() {
                    // Between bursts the connection goes back to the pool, for reads.
                    conn = None;
                }
            }
            next = next_request(rx, carry), if open && flying.len() < pacer.depth() => {
                let Some(first) = next else {
                    open = false;
                    continue;
                };
                let batch = gather(wp, first, rx, carry);
                #[cfg(all(test, feature = "tempdb"))]
                tests::maybe_panic(&batch);
                let needs_tx = batch.len() > 1 && batch.iter().any(|r| matches!(r.op, Op::Clear));
                // A company whose lease is still to be taken needs a round trip first.
                let sequential = needs_tx || wp.outage.is_down() || !leases_ready(&batch);
                if sequential || conn.as_ref().is_some_and(PipeConn::is_broken) {
                    // In order after everything in flight, without the pipeline.
                    drain(wp, &mut flying).await;
                    conn = None;
                    if sequential {
                        Box::pin(process(wp, batch)).await;
                        continue;
                    }
                }
                let c = match &conn {
                    Some(c) => c.clone(),
                    None => match open_conn(wp).await {
                        Ok(c) => {
                            conn = Some(c.clone());
                            c
                        }
                        // The sequential way makes its own attempt and, if the database is
                        // away, hands the batch to the outage mode.
                        Err(_) => {
                            Box::pin(process(wp, batch)).await;
                            continue;
                        }
                    },
                };
                let alone = flying.is_empty();
                let mut fut: Flight<'_> = Box::pin(send(wp, c, batch, alone));
                // Poll once now: that sends the statement, so statements leave in the order
                // the batches were taken whatever order the pipeline polls them in later.
                let first_poll =
                    std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
                match first_poll {
                    Poll::Ready(done) => flying.push_back(Box::pin(std::future::ready(done))),
                    Poll::Pending => flying.push_back(fut),
                }
            }
        }
    }
}

/// Chooses how many statements a lane may have in flight (see the module doc). It measures
/// the link's time (the least time from send to answer over the last one or two windows of
/// [`PACE_WINDOW`] answers: a statement that queued nowhere), the usual time from send to answer
/// (a moving average), and the server's time per statement when statements queue there (a
/// moving average of the time between consecutive answers of statements that were in flight
/// together). While the usual time stays within [`QUEUEING`] times the link's time, statements
/// do not queue at the server: the full depth costs nothing and saves waiting. Once they queue,
/// the lane sends ahead only as many as the server runs while one crosses the link. Until all
/// is known the full depth is allowed.
///
/// The first version took the link's time from statements sent alone and always applied the
/// fit. Under steady load a lane hardly ever sends a statement alone, so the fit was never
/// known (on loopback with 50 writers, a depth of 32 made ~40 % fewer messages/s than 8); and
/// over a slow link the time between answers is the pace at which the depth itself lets
/// statements go (fewer in flight, more calls merged into each, answers further apart, a
/// smaller fit again: through a 20 ms link the depth shrank until writes waited for a slot).
struct Pacer {
    max: usize,
    pacing: bool,
    link: MinWindow,
    usual_secs: Option<f64>,
    gap_secs: Option<f64>,
    last_answer: Option<Instant>,
}

/// Answers per window of the link's least time: a slower link is taken within two windows.
const PACE_WINDOW: u32 = 64;

/// Statements queue at the server when the usual time from send to answer exceeds the link's
/// least time by this factor.
const QUEUEING: f64 = 1.5;

/// The least of the samples of the current and the previous window.
#[derive(Default)]
struct MinWindow {
    current: Option<f64>,
    previous: Option<f64>,
    count: u32,
}

impl MinWindow {
    fn add(&mut self, x: f64) {
        self.current = Some(self.current.map_or(x, |c| c.min(x)));
        self.count += 1;
        if self.count >= PACE_WINDOW {
            self.previous = self.current.take();
            self.count = 0;
        }
    }

    fn get(&self) -> Option<f64> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

fn ewma(avg: &mut Option<f64>, x: f64) {
    *avg = Some(avg.map_or(x, |a| a + (x - a) / 8.0));
}

impl Pacer {
    fn new(max: usize, pacing: bool) -> Pacer {
        Pacer {
            max: max.max(1),
            pacing,
            link: MinWindow::default(),
            usual_secs: None,
            gap_secs: None,
            last_answer: None,
        }
    }

    fn depth(&self) -> usize {
        match (self.pacing, self.link.get(), self.usual_secs, self.gap_secs) {
            (true, Some(link), Some(usual), Some(gap)) if gap > 0.0 && usual > link * QUEUEING => {
                let fit = (link / gap + 0.5).floor();
                if fit >= self.max as f64 {
                    self.max
                } else if fit >= 1.0 {
                    fit as usize
                } else {
                    1
                }
            }
            _ => self.max,
        }
    }

    /// Records the answer of a batch sent at `sent`, `alone` or behind others.
    fn observe(&mut self, sent: Instant, alone: bool, ok: bool) {
        self.observe_at(sent, alone, ok, Instant::now());
    }

    fn observe_at(&mut self, sent: Instant, alone: bool, ok: bool, now: Instant) {
        let prev = self.last_answer.replace(now);
        if !ok {
            // A failure's timing says nothing about the link or the server's pace.
            return;
        }
        let took = now.duration_since(sent).as_secs_f64();
        self.link.add(took);
        ewma(&mut self.usual_secs, took);
        if let Some(prev) = prev.filter(|_| !alone) {
            ewma(&mut self.gap_secs, now.duration_since(prev).as_secs_f64());
        }
    }
}

/// A connection for the pipeline. A statement must leave in one message on the first poll,
/// never after a round trip: bind and execute of a write statement prepared on the connection,
/// or parse, bind and execute of an unnamed one while it is not (see `Db::pipe_conn`).
async fn open_conn(wp: &WritePath) -> Result<PipeConn> {
    wp.db.pipe_conn().await
}

fn leases_ready(batch: &[Request]) -> bool {
    let ops: Vec<(&crate::company::Company, &Op)> =
        batch.iter().map(|r| (&*r.company, &r.op)).collect();
    commit::leases_ready(&ops)
}

/// Sends one batch's statement on `conn` (fenced by its companies' leases, whose tokens are
/// known without a round trip: see `leases_ready`) and waits for its outcome.
async fn send(wp: &WritePath, conn: PipeConn, batch: Vec<Request>, alone: bool) -> Done {
    let started = Instant::now();
    let result = {
        let ops: Vec<(&crate::company::Company, &Op)> =
            batch.iter().map(|r| (&*r.company, &r.op)).collect();
        let mut fenced = commit::Fenced::new();
        let (steps, tokens) = commit::fenced_steps(wp, &ops, &mut fenced);
        let tokens_ref = &tokens;
        let sent = match steps.as_slice() {
            [] => Ok(Vec::new()),
            [step] => {
                conn.call("write", async |client| {
                    commit::run_step(&***client, conn.stmts(), step, tokens_ref).await
                })
                .await
            }
            _ => Err(Error::internal(
                "a batch of several statements reached the pipeline",
            )),
        };
        sent.map(|newly| {
            commit::record_fenced(wp, newly, &tokens, &mut fenced);
            fenced
        })
    };
    (batch, result, started, alone)
}

/// Settles everything in flight, in order.
async fn drain(wp: &Arc<WritePath>, flying: &mut FuturesOrdered<Flight<'_>>) {
    while let Some(done) = flying.next().await {
        settle(wp, done, flying).await;
    }
}

/// Answers the callers of the oldest batch in flight (see the module doc for failures).
async fn settle(wp: &Arc<WritePath>, done: Done, flying: &mut FuturesOrdered<Flight<'_>>) {
    let (batch, result, started, _) = done;
    wp.metrics
        .record("commit", started.elapsed(), result.is_ok());
    match result {
        Ok(fenced) => answer_committed(wp, batch, &fenced),
        Err(e) if !e.is_unavailable() && batch.len() == 1 => {
            for r in batch {
                r.reply.send(Err(e.clone()));
            }
        }
        Err(e) => {
            // Stop the pipeline here: take the batches sent after this one (their outcome no
            // longer matters), then go on one by one in the order sent.
            let mut later = Vec::new();
            while let Some((b, r, s, _)) = flying.next().await {
                wp.metrics.record("commit", s.elapsed(), r.is_ok());
                later.push(b);
            }
            if e.is_unavailable() {
                wp.outage.enter(&e);
                for b in std::iter::once(batch).chain(later) {
                    if let Some(b) = wp.outage.divert(b, Some(&e)) {
                        Box::pin(process(wp, b)).await;
                    }
                }
            } else {
                for r in batch {
                    Box::pin(process(wp, vec![r])).await;
                }
                for b in later {
                    Box::pin(process(wp, b)).await;
                }
            }
        }
    }
}

/// Updates memory after a commit and answers each caller: LOCKED for a fenced company.
fn answer_committed(wp: &WritePath, batch: Vec<Request>, fenced: &commit::Fenced) {
    let ops: Vec<(&crate::company::Company, &Op)> =
        batch.iter().map(|r| (&*r.company, &r.op)).collect();
    commit::apply_committed(wp, &ops, fenced);
    drop(ops);
    for r in batch {
        let outcome = commit::outcome(&r.company, fenced);
        r.reply.send(outcome);
    }
}

/// Commits a batch and answers its callers, without the pipeline (nothing else of the lane
/// is in flight).
async fn process(wp: &Arc<WritePath>, mut batch: Vec<Request>) {
    #[cfg(all(test, feature = "tempdb"))]
    tests::maybe_panic(&batch);
    if wp.outage.is_down() {
        match wp.outage.divert(batch, None) {
            None => return,
            // The outage ended while we looked: commit normally.
            Some(b) => batch = b,
        }
    }
    let ops: Vec<(&crate::company::Company, &Op)> =
        batch.iter().map(|r| (&*r.company, &r.op)).collect();
    let started = Instant::now();
    let result = commit::commit(wp, &ops).await;
    wp.metrics
        .record_result("commit", started.elapsed(), &result);
    match result {
        Ok(fenced) => {
            drop(ops);
            answer_committed(wp, batch, &fenced);
        }
        Err(e) if e.is_unavailable() => {
            wp.outage.enter(&e);
            if let Some(batch) = wp.outage.divert(batch, Some(&e)) {
                // Recovered in the meantime: try again.
                Box::pin(process(wp, batch)).await;
            }
        }
        Err(_) if batch.len() > 1 => {
            // One caller's data broke the merged commit: give each its own outcome.
            for r in batch {
                Box::pin(process(wp, vec![r])).await;
            }
        }
        Err(e) => {
            for r in batch {
                r.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(all(test, feature = "tempdb"))]
pub(crate) mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::error::ErrorKind;
    use crate::tempdb::TempCluster;
    use crate::{Config, KeyWrite, Store, StoredValue};

    #[test]
    fn the_pacer_sends_ahead_as_far_as_the_link_is_slower_than_the_server() {
        use std::time::Duration;
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let t0 = Instant::now();
        assert_eq!(Pacer::new(8, true).depth(), 8, "unknown link: full depth");
        // A lane sending `depth` statements ahead to a server that runs one in `server` over a
        // link of `link` (round trip), with writes always waiting: what depth it settles on.
        let settle = |max: usize, link: Duration, server: Duration| {
            let mut p = Pacer::new(max, true);
            let mut free_at = t0; // when the server is done with what it was sent
            let mut in_flight: std::collections::VecDeque<(Instant, Instant)> = Default::default();
            let mut now = t0;
            for _ in 0..400 {
                while in_flight.len() < p.depth() {
                    let start = (now + link / 2).max(free_at);
                    free_at = start + server;
                    in_flight.push_back((now, free_at + link / 2));
                }
                let (sent, answered) = in_flight.pop_front().unwrap();
                now = answered;
                p.observe_at(sent, in_flight.is_empty(), true, answered);
            }
            p.depth()
        };
        // Loopback (0.1 ms link), 1 ms per statement: one at a time.
        assert_eq!(settle(32, us(100), ms(1)), 1);
        // 12 ms link, 4 ms per statement: one at the server and three on the link keep it busy.
        assert_eq!(settle(32, ms(12), ms(4)), 4);
        // 20 ms link, 0.3 ms per statement: nothing queues at the server, the full depth.
        assert_eq!(settle(32, ms(20), us(300)), 32);
        assert_eq!(settle(8, ms(20), us(300)), 8);
        // Failures teach nothing; pacing off is always the full depth.
        let mut failing = Pacer::new(8, true);
        failing.observe_at(t0, true, false, t0 + ms(1));
        assert_eq!(failing.depth(), 8);
        let mut off = Pacer::new(8, false);
        for i in 0..100 {
            off.observe_at(t0, i == 0, true, t0 + ms(4 * (i + 1)));
        }
        assert_eq!(off.depth(), 8);
    }

    /// Company whose next batch panics inside the lane (fault injection for the test below).
    static PANIC_FOR: Mutex<Option<String>> = Mutex::new(None);

    pub(super) fn maybe_panic(batch: &[Request]) {
        let mut target = PANIC_FOR.lock().unwrap_or_else(|p| p.into_inner());
        let hit = target
            .as_deref()
            .is_some_and(|c| batch.iter().any(|r| &*r.company.id == c));
        if hit {
            let c = target.take();
            drop(target);
            panic!("injected panic for {c:?}");
        }
    }

    #[test]
    fn a_lane_survives_a_panic() {
        let cluster = TempCluster::start().unwrap();
        cluster.create_database("lanepanic").unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut config = Config::from_url(&cluster.url("lanepanic")).unwrap();
            // One lane: every company shares the lane that panics.
            config.write_lanes = 1;
            let fresh_config = Config {
                lease: false,
                ..config.clone()
            };
            let store = Store::open(config).await.unwrap();
            store.migrate().await.unwrap();
            let boom = store.session("boom").await.unwrap();
            let other = store.session("other").await.unwrap();
            let v = StoredValue::from_json(r#"{"a":1}"#).unwrap();
            let put = |id: &str| vec![KeyWrite::put("session", id, v.clone()).unwrap()];

            *PANIC_FOR.lock().unwrap() = Some("boom".into());
            let e = boom.set(put("1")).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Internal, "{e}");

            // The lane goes on: later writes of both companies commit and read back.
            boom.set(put("2")).await.unwrap();
            other.set(put("3")).await.unwrap();
            assert_eq!(boom.get("session", &["2"]).await.unwrap().len(), 1);
            assert_eq!(other.get("session", &["3"]).await.unwrap().len(), 1);
            // The panicked batch wrote nothing.
            // A reader beside the holder of the lease: without a lease of its own.
            let fresh = Store::open(fresh_config).await.unwrap();
            let s = fresh.session("boom").await.unwrap();
            assert!(s.get("session", &["1"]).await.unwrap().is_empty());
            fresh.close().await.unwrap();
            store.close().await.unwrap();
        });
    }
}
