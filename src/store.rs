//! [`Store`]: what all sessions of a process share. A thin facade: it builds the database
//! layer ([`crate::db`]), the cache, the metrics and the write path ([`crate::write`]), hands
//! out [`Session`]s, and closes it all in order.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::task::JoinHandle;

use crate::cache::{Cache, CacheStats};
use crate::company::{Companies, Company};
use crate::config::Config;
use crate::db::migrate::{self, MigrationReport};
use crate::db::sql;
use crate::db::{Db, PoolStats};
use crate::directory::key_hash;
use crate::error::{Error, Result};
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
    /// The key directories that answer "absent" during an outage.
    pub directory: DirectoryStats,
}

/// Size of the in-memory key directories (see the README's outage section).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct DirectoryStats {
    /// Open companies whose directory is loaded.
    pub companies: usize,
    /// Keys known across them.
    pub keys: usize,
    /// Estimated bytes the directories take.
    pub bytes: usize,
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
            Arc::new(Companies::new(lanes)),
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
        if let Some(every) = config.cleanup_every {
            tasks.push(tokio::spawn(crate::ops::cleanup::periodic(
                Arc::downgrade(&db),
                every,
                crate::ops::cleanup::CleanupOptions::default(),
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
    pub async fn session(&self, company_id: &str) -> Result<Session> {
        validate::company_id(company_id)?;
        if self.inner.wp.is_closed() {
            return Err(Error::closed("the store is closed"));
        }
        let company = self.inner.wp.companies.get(company_id);
        if company.directory().begin_load() {
            // In the background: opening a session must not wait for 10,000s of key ids.
            tokio::spawn(load_directory(self.inner.db.clone(), company.clone()));
        }
        Ok(Session::new(
            self.inner.wp.clone(),
            company,
            self.guard.clone(),
        ))
    }

    /// A weak handle on the shared state, so tests can check that dropping every handle
    /// frees the store. Not part of the API.
    #[doc(hidden)]
    pub fn downgrade_for_tests(&self) -> Weak<impl Sized> {
        Arc::downgrade(&self.inner)
    }

    /// Keys per type, bytes, oldest/newest update and expired counts of one company (the
    /// old module's statistics; Node `store.stats(id)`), through the store's pool.
    pub async fn company_stats(&self, company_id: &str) -> Result<crate::ops::keys::Stats> {
        crate::ops::keys::company_stats(&self.inner.db, company_id).await
    }

    /// A page of one type's keys of a company with their values, after id `after` (ordered by
    /// id), and the `after` of the next page (`None` at the end): Baileys' `keys.list(type)`
    /// streams a type of any size this way.
    pub async fn list_page(
        &self,
        company_id: &str,
        key_type: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<crate::ops::keys::ListPage> {
        crate::ops::keys::list_page(&self.inner.db, company_id, key_type, after, limit).await
    }

    /// Like [`Store::list_page`] with ids only: Baileys' `keys.listIds(type)`.
    pub async fn list_ids_page(
        &self,
        company_id: &str,
        key_type: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<String>, Option<String>)> {
        crate::ops::keys::list_ids_page(&self.inner.db, company_id, key_type, after, limit).await
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
            directory: {
                let (companies, keys, bytes) = wp.companies.directory_stats();
                DirectoryStats {
                    companies,
                    keys,
                    bytes,
                }
            },
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
        let report = self.inner.wp.close().await;
        self.inner.db.close().await;
        Ok(report)
    }
}

/// Loads the key directory of `company` (see [`crate::directory`]). On failure (or a panic)
/// the directory goes back to unknown, and the next session open tries again.
async fn load_directory(db: Arc<Db>, company: Arc<Company>) {
    struct AbortOnDrop(Arc<Company>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.directory().abort_load();
        }
    }
    let guard = AbortOnDrop(company);
    let id = guard.0.id.clone();
    let mut keys = HashSet::new();
    let loaded = db
        .call("load key directory", async |c| {
            sql::for_each_key_id(&***c, &id, |t, i| {
                keys.insert(key_hash(t, i));
            })
            .await
        })
        .await;
    match loaded {
        Ok(()) => guard.0.directory().finish_load(keys),
        Err(e) => tracing::debug!(company = %id, error = %e, "key directory not loaded"),
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
