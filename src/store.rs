//! [`Store`]: what all sessions of a process share. A thin facade: it builds the database
//! layer ([`crate::db`]), the cache, the metrics and the write path ([`crate::write`]), hands
//! out [`Session`]s, and closes it all in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::cache::{Cache, CacheStats};
use crate::company::Companies;
use crate::config::Config;
use crate::db::migrate::{self, MigrationReport};
use crate::db::{Db, PoolStats};
use crate::error::{Error, Result};
use crate::lease::{self, LeaseStatus};
use crate::metrics::{Metrics, OpSnapshot};
use crate::session::Session;
use crate::validate;
use crate::write::outage::{self, CloseReport, OutageStatus};
use crate::write::WritePath;

struct Inner {
    config: Config,
    db: Arc<Db>,
    wp: Arc<WritePath>,
    /// Background tasks of the store itself (the idle-connection reaper).
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set by the first `close`; later calls return at once.
    closing: AtomicBool,
}

impl Inner {
    /// Stops the write path's lanes (queued writes still drain) and the background tasks.
    fn stop(&self) -> Vec<JoinHandle<()>> {
        let mut tasks = self.wp.stop();
        for t in std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner())) {
            t.abort();
            tasks.push(t);
        }
        tasks
    }
}

/// The store: open once per process, then open a [`Session`] per company.
///
/// Cheap to clone; all clones share the pool, cache and writers.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    guard: Arc<ShutdownOnDrop>,
}

/// Held by every [`Store`] and [`Session`] clone. When the last one is dropped without
/// [`Store::close`], the writer lanes' channels are closed (queued writes still drain) and the
/// background tasks stop, so the lanes, the pool and the cache are freed instead of keeping
/// each other alive.
struct ShutdownOnDrop(Arc<Inner>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        // The lanes drain on their own; nothing waits for them here.
        drop(self.0.stop());
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("database", &self.inner.config.describe())
            .finish_non_exhaustive()
    }
}

/// Everything the store measured, for health reports and benchmarks. No database round trip.
#[derive(Debug, Clone, Serialize)]
pub struct MetricsSnapshot {
    /// Per operation kind.
    pub ops: Vec<OpSnapshot>,
    /// Connection pool.
    pub pool: PoolStats,
    /// Read cache.
    pub cache: CacheStats,
    /// Outage state and pending writes.
    pub outage: OutageStatus,
    /// Company leases: held, pending, lost.
    pub leases: LeaseStatus,
}

impl MetricsSnapshot {
    /// The snapshot of one operation kind, if any was recorded.
    pub fn op(&self, kind: &str) -> Option<&OpSnapshot> {
        self.ops.iter().find(|o| o.kind == kind)
    }
}

impl Store {
    /// Opens the pool and starts the writer lanes on the current tokio runtime.
    ///
    /// It connects once to fail fast on a wrong URL or password. A journal left by a crashed
    /// process (see [`Config::journal_path`]) is replayed before anything else; if the
    /// database is down then, the store starts in outage mode with those writes pending.
    pub async fn open(config: Config) -> Result<Store> {
        let db = Arc::new(Db::new(&config)?);
        let lanes = if config.group_commit {
            config.write_lanes.max(1)
        } else {
            config.pool_size.max(1)
        };
        let (wp, had_journal) = WritePath::new(
            &config,
            db.clone(),
            Arc::new(Cache::new(config.cache)),
            Arc::new(Metrics::default()),
            Arc::new(Companies::new(lanes, config.lease)),
        )?;
        // Fail fast on a wrong address or password; an unreachable server with a journal to
        // replay starts in outage mode instead, so the journal is never ignored.
        match db.call("connect", async |_| Ok(())).await {
            Ok(()) => {}
            Err(e) if had_journal && e.is_unavailable() => wp.outage.enter(&e),
            Err(e) => return Err(e),
        }
        wp.start(lanes);
        let mut tasks = Vec::new();
        if let Some(idle) = config.idle_timeout {
            tasks.push(tokio::spawn(reap_idle(Arc::downgrade(&db), idle)));
        }
        if config.lease {
            tasks.push(tokio::spawn(lease::run(
                Arc::downgrade(&wp.leases),
                Arc::downgrade(&db),
                Arc::downgrade(&wp.cache),
                Arc::downgrade(&wp.metrics),
                Arc::downgrade(&wp.companies),
            )));
        }
        if had_journal {
            // Replay before anything else; if it fails the reconnect loop keeps trying.
            let _ = outage::try_recover(&wp).await;
        }
        let inner = Arc::new(Inner {
            config,
            db,
            wp,
            tasks: Mutex::new(tasks),
            closing: AtomicBool::new(false),
        });
        let guard = Arc::new(ShutdownOnDrop(inner.clone()));
        Ok(Store { inner, guard })
    }

    /// Applies pending migrations (see [`crate::migrate`]).
    pub async fn migrate(&self) -> Result<MigrationReport> {
        let started = Instant::now();
        let result = self
            .inner
            .db
            .call("migrate", async |client| migrate::run(client).await)
            .await;
        self.inner
            .wp
            .metrics
            .record("migrate", started.elapsed(), result.is_ok());
        result
    }

    /// Opens the state of one company. The id is validated (`[A-Za-z0-9_-]{1,50}`).
    ///
    /// With the lease on ([`Config::lease`], the default) it acquires the company's lease
    /// first: when another store holds it, the call fails with [`crate::ErrorKind::Locked`]
    /// naming the holder (host, pid, instance, since when). During an outage the session opens
    /// without the lease; it is acquired before the first write reaches the database.
    pub async fn session(&self, company_id: &str) -> Result<Session> {
        self.open_session(company_id, None).await
    }

    /// [`Store::session`], but while another store holds the lease it tries again until it
    /// gets it or `timeout` has passed (then `Locked`). A holder that died loses the lease
    /// after [`Config::lease_expiry`]; one that closed releases it at once.
    pub async fn session_wait(&self, company_id: &str, timeout: Duration) -> Result<Session> {
        self.open_session(company_id, Some(timeout)).await
    }

    async fn open_session(&self, company_id: &str, wait: Option<Duration>) -> Result<Session> {
        validate::company_id(company_id)?;
        let wp = &self.inner.wp;
        let deadline = wait.map(|w| Instant::now() + w);
        loop {
            if wp.is_closed() {
                return Err(Error::closed("the store is closed"));
            }
            let company = wp.companies.get(company_id);
            if wp.leases.enabled() && !wp.outage.is_down() {
                match wp.leases.acquire(&wp.db, &wp.metrics, &company).await {
                    Ok(()) => {}
                    // Keep serving: the lease is taken before the first write lands.
                    Err(e) if e.is_unavailable() => wp.on_error(&e),
                    Err(e) if lease::is_locked(&e) => {
                        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                        match left {
                            Some(left) if !left.is_zero() => {
                                drop(company);
                                tokio::time::sleep(wp.leases.poll_interval().min(left)).await;
                                continue;
                            }
                            _ => return Err(e),
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(Session::new(wp.clone(), company, self.guard.clone()));
        }
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
        let wp = &self.inner.wp;
        MetricsSnapshot {
            ops: wp.metrics.ops(),
            pool: self.inner.db.pool_stats(),
            cache: wp.cache.stats(),
            outage: wp.outage.status(),
            leases: wp.leases.status(&wp.companies),
        }
    }

    /// Finishes queued writes, flushes writes kept during an outage (one attempt), closes the
    /// pool. The report lists exactly what could not be flushed; those writes stay in the
    /// journal, when one is configured, for the next start.
    pub async fn close(&self) -> Result<CloseReport> {
        if self.inner.closing.swap(true, Ordering::AcqRel) {
            return Ok(CloseReport::default());
        }
        let tasks =
            std::mem::take(&mut *self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        for t in tasks {
            t.abort();
            let _ = t.await;
        }
        let wp = &self.inner.wp;
        let report = wp.close().await;
        // Hand the leases back at once so another process takes the accounts over now. Not
        // when writes stay unflushed: the next start replays them under these leases.
        if wp.leases.enabled() && report.unflushed.is_empty() && !wp.outage.is_down() {
            if let Err(e) = wp.leases.release_all(&self.inner.db, &wp.companies).await {
                tracing::warn!(error = %e, "releasing the leases at close failed; they expire");
            }
        }
        self.inner.db.close().await;
        Ok(report)
    }
}

/// Closes connections idle for longer than `idle`, every `idle / 2`.
async fn reap_idle(db: Weak<Db>, idle: Duration) {
    let period = (idle / 2).max(Duration::from_secs(1));
    loop {
        tokio::time::sleep(period).await;
        let Some(db) = db.upgrade() else { return };
        db.close_idle(idle);
    }
}
