//! [`Store`]: the connection pool, the writer lanes, the cache, metrics and outage state that
//! all sessions of a process share.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::metrics::{Metrics, MetricsSnapshot, PoolStats};
use crate::migrate::{self, MigrationReport};
use crate::outage::{CloseReport, Outage};
use crate::session::Session;
use crate::validate;
use crate::value::StoredValue;
use crate::writer::{self, Op, Request, WriteTicket};

/// The shared state of one company: its write order epoch and last known creds.
pub(crate) struct Company {
    pub(crate) id: Arc<str>,
    /// Bumped on every commit of this company; a read fills the cache only when the epoch did
    /// not move while it ran, so a slow read never overwrites a newer write.
    epoch: AtomicU64,
    last_creds: Mutex<Option<StoredValue>>,
    /// The lane this company's writes go through.
    lane: usize,
}

impl Company {
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }
    pub(crate) fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }
    pub(crate) fn last_creds(&self) -> Option<StoredValue> {
        self.last_creds
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    pub(crate) fn set_last_creds(&self, v: Option<StoredValue>) {
        *self.last_creds.lock().unwrap_or_else(|p| p.into_inner()) = v;
    }
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    pool: Pool,
    pub(crate) cache: Cache,
    pub(crate) metrics: Metrics,
    pub(crate) outage: Outage,
    companies: Mutex<HashMap<Arc<str>, Weak<Company>>>,
    lanes: RwLock<Vec<mpsc::UnboundedSender<Request>>>,
    lane_count: usize,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    conns: Arc<ConnTracker>,
    closed: AtomicBool,
}

impl Inner {
    /// A pooled connection, or `Unavailable`/`Timeout` within the connect timeout.
    pub(crate) async fn client(&self) -> Result<deadpool_postgres::Object> {
        match tokio::time::timeout(self.config.connect_timeout, self.pool.get()).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::timeout(format!(
                "no database connection within {} ms",
                self.config.connect_timeout.as_millis()
            ))),
        }
    }

    /// Client-side bound on one database call: a hung network fails within it.
    pub(crate) fn call_timeout(&self) -> Duration {
        self.config.statement_timeout + self.config.connect_timeout
    }

    /// The shared state of `id`, created on first use.
    pub(crate) fn company(&self, id: &str) -> Arc<Company> {
        let mut map = self.companies.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(id).and_then(Weak::upgrade) {
            return c;
        }
        map.retain(|_, w| w.strong_count() > 0);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let company = Arc::new(Company {
            id: Arc::from(id),
            epoch: AtomicU64::new(0),
            last_creds: Mutex::new(None),
            lane: (h.finish() % self.lane_count as u64) as usize,
        });
        map.insert(company.id.clone(), Arc::downgrade(&company));
        company
    }

    /// Enqueues a write on its company's lane; returns the ticket that resolves after commit.
    pub(crate) fn submit(&self, company: &Arc<Company>, op: Op) -> Result<WriteTicket> {
        let (tx, rx) = oneshot::channel();
        let lanes = self.lanes.read().unwrap_or_else(|p| p.into_inner());
        let lane = lanes
            .get(company.lane)
            .ok_or_else(|| Error::closed("the store is closed"))?;
        lane.send(Request {
            company: company.clone(),
            op,
            reply: tx,
        })
        .map_err(|_| Error::closed("the store is closed"))?;
        Ok(WriteTicket::new(rx))
    }

    /// Records a failed database call; connectivity failures start outage mode.
    pub(crate) fn on_error(self: &Arc<Self>, e: &Error) {
        if e.is_unavailable() {
            self.outage.enter(e);
        }
    }

    /// Closes the lanes' channels (each lane drains its queue, then ends) and aborts the
    /// background tasks. Returns the lane tasks and the aborted ones, for a caller that waits.
    fn stop_tasks(&self) -> (Vec<JoinHandle<()>>, Vec<JoinHandle<()>>) {
        self.lanes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let mut lanes = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        let background = lanes.split_off(self.lane_count.min(lanes.len()));
        for t in &background {
            t.abort();
        }
        (lanes, background)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Runs a database call, failing with [`Error::Timeout`] when it takes longer than `bound`
/// (a hung network must not hang the caller).
pub(crate) async fn bounded<T>(
    bound: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(bound, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!(
            "{what} did not finish within {} ms",
            bound.as_millis()
        ))),
    }
}

/// Drops a connection that failed in a way that may leave it unusable, instead of returning
/// it to the pool (a timed-out query may still be running on it).
pub(crate) fn discard_if_broken(client: deadpool_postgres::Object, e: &Error) {
    if e.is_unavailable() {
        drop(deadpool_postgres::Object::take(client));
    }
}

/// The store: open once per process, then open a [`Session`] per company.
///
/// Cheap to clone; all clones share the pool, cache and writers.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
    guard: Arc<ShutdownOnDrop>,
}

/// Held by every [`Store`] and [`Session`] clone. When the last one is dropped without
/// [`Store::close`], the writer lanes' channels are closed (queued writes still drain) and the
/// background tasks stop, so the lanes, the pool and the cache are freed instead of keeping
/// each other alive.
pub(crate) struct ShutdownOnDrop(Arc<Inner>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        // The lanes drain on their own; nothing waits for them here.
        drop(self.0.stop_tasks());
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.inner.config.describe())
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the pool and starts the writer lanes on the current tokio runtime.
    ///
    /// It connects once to fail fast on a wrong URL or password. A journal left by a crashed
    /// process (see [`Config::journal_path`]) is replayed before anything else; if the
    /// database is down then, the store starts in outage mode with those writes pending.
    pub async fn open(config: Config) -> Result<Store> {
        let pg = crate::connect::pg_config(&config);
        let mgr_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let conns = Arc::new(ConnTracker::default());
        let manager = match crate::tls::connector(&config)? {
            Some(tls) => Manager::from_connect(
                pg,
                TrackedConnect {
                    tls,
                    conns: conns.clone(),
                },
                mgr_config,
            ),
            None => Manager::from_connect(
                pg,
                TrackedConnect {
                    tls: tokio_postgres::NoTls,
                    conns: conns.clone(),
                },
                mgr_config,
            ),
        };
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| Error::internal(format!("pool: {e}")))?;
        let lane_count = if config.group_commit {
            config.write_lanes.max(1)
        } else {
            config.pool_size.max(1)
        };
        let outage = Outage::new(&config)?;
        let inner = Arc::new(Inner {
            cache: Cache::new(config.cache),
            metrics: Metrics::default(),
            outage,
            companies: Mutex::new(HashMap::new()),
            lanes: RwLock::new(Vec::new()),
            lane_count,
            tasks: Mutex::new(Vec::new()),
            conns,
            closed: AtomicBool::new(false),
            pool,
            config,
        });
        let had_journal = inner.outage.load_journal(&inner)?;
        // Fail fast on a wrong address or password; an unreachable server with a journal to
        // replay starts in outage mode instead, so the journal is never ignored.
        match inner.client().await {
            Ok(_) => {}
            Err(e) if had_journal && e.is_unavailable() => inner.outage.enter(&e),
            Err(e) => return Err(e),
        }
        let mut senders = Vec::with_capacity(lane_count);
        let mut tasks = Vec::with_capacity(lane_count + 2);
        for _ in 0..lane_count {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            tasks.push(tokio::spawn(writer::lane(
                inner.clone(),
                rx,
                inner.config.group_commit,
            )));
        }
        *inner.lanes.write().unwrap_or_else(|p| p.into_inner()) = senders;
        tasks.push(tokio::spawn(crate::outage::reconnect_loop(Arc::downgrade(
            &inner,
        ))));
        if let Some(idle) = inner.config.idle_timeout {
            tasks.push(tokio::spawn(reap_idle(Arc::downgrade(&inner), idle)));
        }
        if let Some(every) = inner.config.cleanup_every {
            let opts = crate::ops::CleanupOptions::default();
            let weak = Arc::downgrade(&inner);
            tasks.push(tokio::spawn(crate::ops::cleanup::periodic(
                weak, every, opts,
            )));
        }
        *inner.tasks.lock().unwrap_or_else(|p| p.into_inner()) = tasks;
        if had_journal {
            // Replay before anything else; if it fails the reconnect loop keeps trying.
            let _ = crate::outage::try_recover(&inner).await;
        }
        let guard = Arc::new(ShutdownOnDrop(inner.clone()));
        Ok(Store { inner, guard })
    }

    /// Applies pending migrations (see [`crate::migrate`]).
    pub async fn migrate(&self) -> Result<MigrationReport> {
        let started = Instant::now();
        let mut client = self.inner.client().await?;
        let result = migrate::run(&mut client).await;
        self.inner
            .metrics
            .record("migrate", started.elapsed(), result.is_ok());
        result
    }

    /// Opens the state of one company. The id is validated (`[A-Za-z0-9_-]{1,50}`).
    pub async fn session(&self, company_id: &str) -> Result<Session> {
        validate::company_id(company_id)?;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::closed("the store is closed"));
        }
        Ok(Session::new(
            self.inner.clone(),
            self.inner.company(company_id),
            self.guard.clone(),
        ))
    }

    /// A weak handle on the shared state, so tests can check that dropping every handle
    /// frees the store. Not part of the API.
    #[doc(hidden)]
    pub fn downgrade_for_tests(&self) -> Weak<impl Sized> {
        Arc::downgrade(&self.inner)
    }

    /// The connection described without its password.
    pub fn describe(&self) -> String {
        self.inner.config.describe()
    }

    /// The configuration the store runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Counts, latencies, pool, cache and outage state; no database round trip.
    pub fn metrics(&self) -> MetricsSnapshot {
        let status = self.inner.pool.status();
        MetricsSnapshot {
            ops: self.inner.metrics.ops(),
            pool: PoolStats {
                max_size: status.max_size,
                size: status.size,
                available: status.available,
                waiting: status.waiting,
            },
            cache: self.inner.cache.stats(),
            outage: self.inner.outage.status(),
        }
    }

    /// Finishes queued writes, flushes writes kept during an outage (one attempt), closes the
    /// pool. The report lists exactly what could not be flushed; those writes stay in the
    /// journal, when one is configured, for the next start.
    pub async fn close(&self) -> Result<CloseReport> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(CloseReport::default());
        }
        let (lanes, background) = self.inner.stop_tasks();
        for t in background.into_iter().chain(lanes) {
            // An aborted task resolves once it has been dropped; a lane once its queue is done.
            let _ = t.await;
        }
        let report = self.inner.outage.flush_on_close(&self.inner).await;
        self.inner.pool.close();
        // Closing the pool aborts each connection task; wait until they have ended, so that
        // nothing of this store is alive when close returns.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.conns.all_ended()).await;
        Ok(report)
    }
}

/// Closes connections idle for longer than `idle`, every `idle / 2`.
async fn reap_idle(inner: Weak<Inner>, idle: Duration) {
    let period = (idle / 2).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = inner.upgrade() else { return };
        inner.pool.retain(|_, m| m.last_used() < idle);
    }
}

/// Counts live connection tasks so that `close` can wait until every connection has ended.
#[derive(Default)]
pub(crate) struct ConnTracker {
    live: std::sync::atomic::AtomicUsize,
    ended: tokio::sync::Notify,
}

impl ConnTracker {
    async fn all_ended(&self) {
        loop {
            let ended = self.ended.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

struct ConnGuard(Arc<ConnTracker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

/// deadpool-postgres' own connect, plus a guard in each connection task.
struct TrackedConnect<T> {
    tls: T,
    conns: Arc<ConnTracker>,
}

impl<T> deadpool_postgres::Connect for TrackedConnect<T>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        std::result::Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>,
    > {
        let tls = self.tls.clone();
        let pg = pg.clone();
        let conns = self.conns.clone();
        Box::pin(async move {
            let (client, connection) = pg.connect(tls).await?;
            conns.live.fetch_add(1, Ordering::AcqRel);
            let guard = ConnGuard(conns);
            let task = tokio::spawn(async move {
                let _guard = guard;
                let _ = connection.await;
            });
            Ok((client, task))
        })
    }
}
