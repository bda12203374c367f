//! [`Store`]: what all sessions of a process share. A thin facade: it builds the database
//! layer ([`crate::db`]), the cache, the metrics and the write path ([`crate::write`]), hands
//! out [`Session`]s, and closes it all in order.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::company::{Companies, Company};
use crate::config::Config;
use crate::db::migrate::{self, MigrationReport};
use crate::db::{health_sql, sql, Db};
use crate::directory::key_hash;
use crate::error::{Error, Result};
use crate::health::alerts::Alerts;
use crate::health::checks::{self, RoundTrip};
use crate::health::process::{OutageSummary, ProcessIdentity, PUBLISHED_RECENT};
use crate::health::{
    AlertEvent, Check, HealthOptions, HealthReport, MetricsSnapshot, ProcessSnapshot, ProcessView,
    Status,
};
use crate::lease;
use crate::metrics::{Metrics, PoolSample};
use crate::session::Session;
use crate::validate;
use crate::write::outage::{self, CloseReport};
use crate::write::WritePath;

/// Rows of `authstate_processes` not updated for this long are deleted by any store.
const PROCESS_ROW_EXPIRY: Duration = Duration::from_secs(24 * 3600);

/// How long after a session opens its key directory starts loading. The reads Baileys makes
/// right after it connects (creds, then the sessions of a group it sends to: 1,000 rows at
/// once) go first: a load running beside them made such a cold `get` of 1,000 sessions
/// ~2.8 ms (a quarter) slower on this machine. Until the load ends, an outage can fail reads
/// of keys that are not in memory (README "Which reads can fail during an outage").
const DIRECTORY_LOAD_DELAY: Duration = Duration::from_millis(500);

struct Inner {
    config: Config,
    db: Arc<Db>,
    /// A one-connection pool of its own for health checks and process snapshots, so that a
    /// saturated main pool neither delays them nor is counted by them.
    health_db: Arc<Db>,
    wp: Arc<WritePath>,
    alerts: Alerts,
    identity: ProcessIdentity,
    /// The checks of the last evaluation, for the Prometheus status gauge.
    last_checks: Mutex<Vec<Check>>,
    /// Background tasks of the store itself (the idle-connection reaper, the health watch).
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Set by the first `close`; later calls return at once.
    closing: AtomicBool,
    /// Bounds the key directory loads running at once (a restart opens every company), so
    /// they never take more than a quarter of the pool from the calls of the service.
    directory_loads: Arc<tokio::sync::Semaphore>,
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

    fn metrics(&self) -> MetricsSnapshot {
        let wp = &self.wp;
        let (recent_slow, recent_errors) = wp.metrics.recent();
        MetricsSnapshot {
            ops: wp.metrics.ops(),
            pool: self.db.pool_stats(),
            pool_history: wp.metrics.pool_history(),
            cache: wp.cache.stats(),
            outage: wp.outage.status(),
            slow_in_window: wp.metrics.slow_within(self.config.health.slow_window),
            recent_slow,
            recent_errors,
            companies_open: wp.companies.open_count(),
            directory: wp.companies.directory_stats(),
            leases: wp.leases.status(&wp.companies),
        }
    }

    /// The checks judged from memory alone: slow queries, pool, outage.
    fn memory_checks(&self, m: &MetricsSnapshot) -> Vec<Check> {
        let cfg = &self.config.health;
        vec![
            checks::slow_queries(m.slow_in_window, &m.recent_slow, cfg),
            checks::pool(m.pool, &m.pool_history, cfg),
            checks::outage(&m.outage),
        ]
    }

    fn process_snapshot(&self, m: MetricsSnapshot, checks: Vec<Check>) -> ProcessSnapshot {
        let tail = |v: Vec<_>| {
            let skip = v.len().saturating_sub(PUBLISHED_RECENT);
            v.into_iter().skip(skip).collect()
        };
        ProcessSnapshot {
            id: self.identity.clone(),
            updated_at_unix_ms: crate::metrics::now_unix_ms(),
            publish_interval_ms: self
                .config
                .health
                .publish_interval
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            status: Status::worst(checks.iter().map(|c| c.status)),
            checks,
            pool_peak_in_use_1h: m
                .pool_history
                .iter()
                .map(|s| s.size.saturating_sub(s.available))
                .max()
                .unwrap_or(0),
            ops: m.ops,
            pool: m.pool,
            cache: m.cache,
            outage: OutageSummary {
                down: m.outage.down,
                down_for_ms: m.outage.down_for_ms,
                pending_calls: m.outage.pending_calls,
                pending_bytes: m.outage.pending_bytes,
                oldest_pending_ms: m.outage.oldest_pending_ms,
                journal_bytes: m.outage.journal_bytes,
                outages: m.outage.outages,
            },
            companies_open: m.companies_open,
            slow_in_window: m.slow_in_window,
            recent_slow: tail(m.recent_slow),
            recent_errors: tail(m.recent_errors),
        }
    }

    fn sample_pool(&self) {
        let p = self.db.pool_stats();
        self.wp.metrics.sample_pool(PoolSample {
            at_unix_ms: crate::metrics::now_unix_ms(),
            max_size: p.max_size,
            size: p.size,
            available: p.available,
            waiting: p.waiting,
        });
    }

    /// Feeds `checks` to the alerts (this process's own checks only) and keeps them.
    fn observe(&self, checks: &[Check]) -> Vec<AlertEvent> {
        let raised = self.alerts.observe(checks);
        let mut last = self.last_checks.lock().unwrap_or_else(|p| p.into_inner());
        for c in checks {
            match last.iter_mut().find(|l| l.name == c.name) {
                Some(l) => *l = c.clone(),
                None => last.push(c.clone()),
            }
        }
        raised
    }

    /// One `SELECT 1` on the health connection, timed.
    async fn probe(&self) -> Result<RoundTrip> {
        let started = Instant::now();
        let rtt = self
            .health_db
            .call("health probe", async |c| {
                let t = Instant::now();
                sql::probe(c).await?;
                Ok(t.elapsed())
            })
            .await?;
        Ok(RoundTrip {
            rtt,
            connect: started.elapsed().saturating_sub(rtt),
        })
    }

    async fn health(&self, opts: &HealthOptions) -> Result<HealthReport> {
        let cfg = &self.config.health;
        let company = match &opts.company {
            Some(c) => {
                validate::company_id(c)?;
                Some(c.as_str())
            }
            None => None,
        };
        let probe = self.probe().await;
        let reachable = probe.is_ok();
        let mut checks = vec![checks::database(&probe)];
        let m = opts.this_process.then(|| self.metrics());
        let mine = m
            .as_ref()
            .map(|m| self.memory_checks(m))
            .unwrap_or_default();
        let expired = if reachable {
            Some(
                self.health_db
                    .call("count expired keys", async |c| {
                        health_sql::expired_histogram(&***c, company, cfg.expired_scan_limit).await
                    })
                    .await,
            )
        } else {
            None
        };
        let (slow_pool, outage_check) = match mine.split_last() {
            Some((o, rest)) => (rest.to_vec(), Some(o.clone())),
            None => (Vec::new(), None),
        };
        checks.extend(slow_pool);
        checks.push(checks::expired_keys(expired.as_ref(), company, cfg));
        checks.extend(outage_check);
        let mut views = Vec::new();
        if opts.processes {
            let listed = if reachable {
                Some(
                    self.health_db
                        .call("list store processes", async |c| {
                            health_sql::list_processes(&***c).await
                        })
                        .await,
                )
            } else {
                None
            };
            checks.push(match listed {
                None => Check {
                    name: checks::PROCESSES.into(),
                    status: Status::Unknown,
                    summary: "not read: the database is unreachable".into(),
                    recommendation: None,
                    details: serde_json::json!({}),
                },
                Some(Err(e)) => Check {
                    name: checks::PROCESSES.into(),
                    status: Status::Warning,
                    summary: format!("process snapshots could not be read: {e}"),
                    recommendation: Some(
                        "Apply the migrations (`authstate migrate`): migration 0004 creates \
                         authstate_processes, where running stores publish their figures."
                            .into(),
                    ),
                    details: serde_json::json!({ "error": e.to_string() }),
                },
                Some(Ok(rows)) => {
                    views = rows.iter().filter_map(ProcessView::from_row).collect();
                    checks::processes(&views)
                }
            });
        }
        let mut report = HealthReport::new(self.config.describe(), checks);
        report.processes = views;
        if let Some(m) = m {
            // A report about one company is not the store's state: it raises no alert.
            if company.is_none() {
                self.observe(&report.checks);
            }
            report.process = Some(self.process_snapshot(m, mine));
        }
        Ok(report)
    }

    /// Writes this process's snapshot row (and removes rows of processes gone for a day).
    async fn publish(&self, first: bool) -> Result<()> {
        let m = self.metrics();
        let checks = self.memory_checks(&m);
        let snap = self.process_snapshot(m, checks);
        let json = serde_json::to_string(&snap)?;
        let id = &self.identity;
        self.health_db
            .call("publish process snapshot", async |c| {
                if first {
                    health_sql::remove_processes(
                        &***c,
                        None,
                        Some(PROCESS_ROW_EXPIRY.as_secs_f64()),
                    )
                    .await?;
                }
                health_sql::publish_process(
                    &***c,
                    &id.instance,
                    &id.host,
                    id.pid,
                    id.started_at_unix_ms,
                    &json,
                )
                .await
            })
            .await
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
            Arc::new(Metrics::new(config.health.slow_query)),
            Arc::new(Companies::new(lanes, config.lease)),
        )?;
        // Fail fast on a wrong address or password; an unreachable server with a journal to
        // replay starts in outage mode instead, so the journal is never ignored.
        match db.call("connect", async |_| Ok(())).await {
            Ok(()) => {}
            Err(e) if had_journal && e.is_unavailable() => wp.outage.enter(&e),
            Err(e) => return Err(e),
        }
        wp.start(lanes)?;
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
        let mut health_config = config.clone();
        health_config.pool_size = 1;
        health_config.statement_timeout = config.health.query_timeout;
        // Health queries are rare: nothing to prepare, nor to check, on their connection.
        health_config.prepared_statements = crate::config::PreparedStatements::Off;
        let health_db = Arc::new(Db::new(&health_config)?);
        let pool_size = config.pool_size;
        let inner = Arc::new(Inner {
            alerts: Alerts::new(&config.health),
            config,
            db,
            health_db,
            wp,
            identity: ProcessIdentity::new(),
            last_checks: Mutex::new(Vec::new()),
            tasks: Mutex::new(tasks),
            closing: AtomicBool::new(false),
            directory_loads: Arc::new(tokio::sync::Semaphore::new((pool_size / 4).max(1))),
        });
        let watch = tokio::spawn(watch(Arc::downgrade(&inner)));
        inner
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(watch);
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
            .record_result("migrate", started.elapsed(), &result);
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
            company.opened_without_lease();
            if company.directory().begin_load() {
                // In the background: opening a session must not wait for 10,000s of key ids.
                // After the lease is ours, so no other process writes keys it would miss.
                tokio::spawn(load_directory(
                    self.inner.db.clone(),
                    company.clone(),
                    self.inner.directory_loads.clone(),
                ));
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

    /// Keys per type, bytes, oldest/newest update and expired counts of one company, or of the
    /// whole database with `None` (the old module's statistics; Node `store.stats(id)`),
    /// through the store's pool.
    pub async fn stats(&self, company_id: Option<&str>) -> Result<crate::ops::keys::Stats> {
        crate::ops::keys::stats_in(&self.inner.db, company_id).await
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

    /// True while calls use named prepared statements, false while they use unnamed ones
    /// ([`crate::PreparedStatements`]: with `Auto`, false once a connection was found to go
    /// through a pooler; decided when the first connection opens).
    pub fn uses_named_statements(&self) -> bool {
        self.inner.db.named_statements()
    }

    /// Counts, latencies, pool (with its last hour), cache, outage state, recent slow
    /// operations and errors; no database round trip.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics()
    }

    /// The health report of this process: the database (reachable, round trip, expired keys
    /// with their age histogram, by one bounded query on a connection of its own) and this
    /// process's slow queries, pool and outage, with its metrics. Feeds the alerts. Database
    /// failures are critical checks, not errors; the error is only for a closed store.
    pub async fn health(&self) -> Result<HealthReport> {
        self.health_with(&HealthOptions {
            this_process: true,
            ..HealthOptions::default()
        })
        .await
    }

    /// A health report with the parts `opts` asks for; `authstate health` asks for every
    /// published process snapshot instead of this process.
    pub async fn health_with(&self, opts: &HealthOptions) -> Result<HealthReport> {
        if self.inner.closing.load(Ordering::Acquire) || self.inner.wp.is_closed() {
            return Err(Error::closed("the store is closed"));
        }
        self.inner.health(opts).await
    }

    /// Alerts raised from now on (a check changed state; see [`crate::health::alerts`]). The
    /// store checks itself in the background (every `health.sample_interval` from memory,
    /// every `health.db_check_interval` with the database), and on every [`Store::health`].
    pub fn subscribe_alerts(&self) -> broadcast::Receiver<AlertEvent> {
        self.inner.alerts.subscribe()
    }

    /// The oldest alert not yet polled (alerts are also kept for polling, up to
    /// [`crate::health::alerts::POLL_QUEUE`]).
    pub fn poll_alert(&self) -> Option<AlertEvent> {
        self.inner.alerts.poll()
    }

    /// The metrics in the Prometheus text format (OpenMetrics 1.0; serve it with
    /// [`crate::health::prometheus::CONTENT_TYPE`]); no database round trip.
    pub fn prometheus(&self) -> String {
        let checks = self
            .inner
            .last_checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        crate::health::prometheus::render(self.inner.metrics(), checks)
    }

    /// What this process publishes to `authstate_processes` (without writing it).
    pub fn process_snapshot(&self) -> ProcessSnapshot {
        let m = self.inner.metrics();
        let checks = self.inner.memory_checks(&m);
        self.inner.process_snapshot(m, checks)
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
        if self.inner.config.health.publish_interval.is_some() {
            // A clean close removes this process from `authstate health`; one attempt.
            let instance = self.inner.identity.instance.as_str();
            let _ = self
                .inner
                .health_db
                .call("remove process snapshot", async |c| {
                    health_sql::remove_processes(&***c, Some(instance), None).await
                })
                .await;
        }
        self.inner.health_db.close().await;
        Ok(report)
    }
}

/// Loads the key directory of `company` (see [`crate::directory`]), [`DIRECTORY_LOAD_DELAY`]
/// after the session opened and within the bound of `loads`. On failure (or a panic) the
/// directory goes back to unknown, and the next session open tries again.
async fn load_directory(db: Arc<Db>, company: Arc<Company>, loads: Arc<tokio::sync::Semaphore>) {
    struct AbortOnDrop(Arc<Company>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.directory().abort_load();
        }
    }
    let guard = AbortOnDrop(company);
    tokio::time::sleep(DIRECTORY_LOAD_DELAY).await;
    // Changes committed meanwhile are recorded by the directory and replayed on the load.
    let Ok(_permit) = loads.acquire().await else {
        return;
    };
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

/// How long after the store opens it publishes its first process snapshot.
const FIRST_PUBLISH_AFTER: Duration = Duration::from_millis(500);

/// The store's health watch: samples the pool and judges this process from memory every
/// `sample_interval` (raising alerts without anyone asking), asks the database every
/// `db_check_interval`, and publishes the process snapshot every `publish_interval`.
async fn watch(inner: Weak<Inner>) {
    let (sample, db_every, publish_every) = match inner.upgrade() {
        Some(i) => {
            let h = &i.config.health;
            (
                h.sample_interval.max(Duration::from_millis(100)),
                h.db_check_interval,
                h.publish_interval
                    .map(|p| p.max(Duration::from_millis(100))),
            )
        }
        None => return,
    };
    let start = Instant::now();
    let mut next_sample = start;
    let mut next_db = start + db_every;
    // The first snapshot soon, so the command-line tool sees a new process within a second,
    // but not at once: a service's first reads after a restart (its cold gets) would share
    // the machine with a new connection and the snapshot's statement. Like the key directory
    // loads, it waits half a second.
    let mut next_publish = publish_every.map(|_| start + FIRST_PUBLISH_AFTER);
    let mut first_publish = true;
    loop {
        {
            let Some(inner) = inner.upgrade() else { return };
            let now = Instant::now();
            if now >= next_sample {
                next_sample = now + sample;
                inner.sample_pool();
                if now >= next_db {
                    next_db = now + db_every;
                    let opts = HealthOptions {
                        this_process: true,
                        ..HealthOptions::default()
                    };
                    let _ = inner.health(&opts).await;
                } else {
                    let m = inner.metrics();
                    inner.observe(&inner.memory_checks(&m));
                }
            }
            if let (Some(due), Some(every)) = (next_publish, publish_every) {
                if Instant::now() >= due {
                    if let Err(e) = inner.publish(first_publish).await {
                        tracing::debug!(error = %e, "could not publish the process snapshot");
                    }
                    first_publish = false;
                    next_publish = Some(Instant::now() + every);
                }
            }
        }
        let wake = next_publish.map_or(next_sample, |p| p.min(next_sample));
        tokio::time::sleep_until(wake.into()).await;
    }
}
