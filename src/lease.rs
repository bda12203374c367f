//! One writer per company: the lease a store process holds for each company it serves.
//!
//! A lease is a row of `authstate_leases` (migration 0003) with the holder's identity, a
//! heartbeat and an expiry, so it works behind pgbouncer in transaction mode (no session-level
//! advisory lock). Opening a session acquires it; a second process gets
//! [`crate::ErrorKind::Locked`] naming the holder, or waits. One task renews every lease the
//! process holds with ONE statement per interval, however many companies it holds. A holder
//! that dies loses its leases after the expiry; a clean close (or dropping the last session of
//! a company) releases them at once.
//!
//! Every takeover increments the row's token, and every write carries the token it was made
//! under (see `UPSERT` in [`crate::db::sql`]): a holder that lost its lease while paused or cut
//! off cannot overwrite the new holder. A fenced company is marked lost here: its cache is
//! dropped and every later call fails with LOCKED.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime};

use rand::Rng;
use serde::Serialize;

use crate::cache::Cache;
use crate::company::{Companies, Company, LeaseState};
use crate::config::Config;
use crate::db::lease_sql::{self, Holder, Identity};
use crate::db::Db;
use crate::error::{Error, ErrorKind, Result};
use crate::metrics::Metrics;

/// The lease side of a store: who we are, the timings, and what happened.
pub(crate) struct Leases {
    enabled: bool,
    /// Journal durability: our leases carry our host as the one whose journal may hold
    /// unflushed writes (see migration 0006).
    journaled: bool,
    me: Identity,
    expiry: Duration,
    heartbeat: Duration,
    lost: AtomicU64,
    lost_calls: AtomicU64,
    heartbeats: AtomicU64,
    heartbeat_errors: AtomicU64,
    last_error: Mutex<Option<String>>,
    lost_file: Mutex<Option<String>>,
}

/// The lease state of a store, in [`crate::MetricsSnapshot`].
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LeaseStatus {
    /// Leases are in use (`Config::lease`).
    pub enabled: bool,
    /// This store as written into its lease rows: host, pid and random instance id.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Random id of this store instance.
    pub instance: String,
    /// Lease expiry, milliseconds.
    pub expiry_ms: u64,
    /// Heartbeat interval, milliseconds.
    pub heartbeat_ms: u64,
    /// Companies whose lease this store holds.
    pub held: usize,
    /// Companies opened during an outage (or replayed from a journal) whose lease is not
    /// acquired yet.
    pub pending: usize,
    /// Companies whose lease this store lost since it opened (taken over by another holder).
    pub lost: u64,
    /// Acknowledged writes (kept during an outage, or in journal durability) that were not
    /// applied because the lease was lost meanwhile, or because PostgreSQL refused them for
    /// their data at the replay; they are in `lost_writes_file`.
    pub lost_calls: u64,
    /// Where such writes were written for the operator.
    pub lost_writes_file: Option<String>,
    /// Heartbeat statements run (one per interval for all held leases).
    pub heartbeats: u64,
    /// Heartbeats that failed (the database was away).
    pub heartbeat_errors: u64,
    /// The last heartbeat error.
    pub last_error: Option<String>,
}

impl Leases {
    pub(crate) fn new(config: &Config) -> Leases {
        let host = match &config.lease_host {
            Some(h) if !h.trim().is_empty() => h.clone(),
            _ => gethostname::gethostname().to_string_lossy().into_owned(),
        };
        let instance: String = {
            let mut rng = rand::thread_rng();
            (0..12)
                .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
                .collect()
        };
        Leases {
            enabled: config.lease,
            journaled: config.durability == crate::config::Durability::Journal,
            me: Identity {
                host: if host.is_empty() {
                    "unknown".into()
                } else {
                    host
                },
                pid: i32::try_from(std::process::id()).unwrap_or(i32::MAX),
                instance,
                started_at: SystemTime::now(),
            },
            expiry: config.lease_expiry.max(Duration::from_millis(100)),
            heartbeat: config.lease_heartbeat.max(Duration::from_millis(50)),
            lost: AtomicU64::new(0),
            lost_calls: AtomicU64::new(0),
            heartbeats: AtomicU64::new(0),
            heartbeat_errors: AtomicU64::new(0),
            last_error: Mutex::new(None),
            lost_file: Mutex::new(None),
        }
    }

    /// Leases are in use.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// How often a waiting opener tries again: often enough to take a released lease soon,
    /// rarely enough to cost nothing (a fifth of the expiry, at most 1 s).
    pub(crate) fn poll_interval(&self) -> Duration {
        (self.expiry / 5).min(Duration::from_secs(1))
    }

    /// Acquires the lease of `company` unless it is held already. `Locked` names the holder;
    /// the company's state is left as it was (a refused write marks it lost, see
    /// [`Leases::mark_lost`]).
    pub(crate) async fn acquire(
        &self,
        db: &Db,
        metrics: &Metrics,
        company: &Company,
    ) -> Result<()> {
        let _one = company.acquiring.lock().await;
        let inherited = match company.lease() {
            LeaseState::Off | LeaseState::Held { .. } => return Ok(()),
            LeaseState::Lost { why } => return Err(Error::locked(why)),
            LeaseState::Released => return Err(Error::closed("the store is closed")),
            LeaseState::Opening => None,
            LeaseState::Pending { inherited } => inherited,
        };
        let started = Instant::now();
        let id = &*company.id;
        let expiry = self.expiry.as_secs_f64();
        let journal_host = self.journaled.then_some(self.me.host.as_str());
        let result = db
            .call("acquire lease", async |c| {
                lease_sql::acquire(&***c, &self.me, id, expiry, inherited, journal_host).await
            })
            .await;
        metrics.record("lease_acquire", started.elapsed(), result.is_ok());
        let got = result?;
        match (got.token, inherited) {
            (Some(token), _) => {
                company.set_lease(LeaseState::Held { token });
                tracing::debug!(company = id, token, "lease acquired");
                Ok(())
            }
            (None, Some(t)) => Err(Error::locked(format!(
                "company {id}: the lease moved on while this process was away (its journal's \
                 writes were made under token {t}){}",
                got.previous
                    .as_ref()
                    .map(|h| format!("; it is held by {}", describe(h)))
                    .unwrap_or_default()
            ))),
            (None, None) => Err(Error::locked(match &got.previous {
                Some(h) => match &h.journal_host {
                    Some(jh) if *jh != self.me.host => format!(
                        "company {id} is held by another store: {}; its journal on host {jh} \
                         may hold writes not yet in PostgreSQL (journal durability), so only a \
                         store on host {jh} may take it over, even after the lease expired (it \
                         replays the journal first). If host {jh} is lost for good, release it \
                         by force, giving those writes up: `authstate lease release --force \
                         {id}`",
                        describe(h)
                    ),
                    _ => format!("company {id} is held by another store: {}", describe(h)),
                },
                None => format!("company {id} is held by another store; try again"),
            })),
        }
    }

    /// Marks `company` lost (if it still holds `token`, or is pending when `token` is None):
    /// drops its cache so nothing stale is served, and counts it. True when it changed.
    pub(crate) fn mark_lost(
        &self,
        cache: &Cache,
        company: &Company,
        token: Option<i64>,
        why: String,
    ) -> bool {
        if !company.lose_lease(token, why.clone(), &self.lost) {
            return false;
        }
        tracing::error!(company = &*company.id, reason = %why, "lease lost");
        company.bump_epoch();
        company.set_last_creds(None);
        cache.remove_company(&company.id);
        true
    }

    /// Counts acknowledged outage writes that could not be applied, and where they went.
    pub(crate) fn count_lost_calls(&self, n: usize, file: Option<String>) {
        self.lost_calls.fetch_add(n as u64, Ordering::Relaxed);
        if file.is_some() {
            *self.lost_file.lock().unwrap_or_else(|p| p.into_inner()) = file;
        }
    }

    /// The message of a company whose lease a write found gone.
    pub(crate) fn taken_over(&self, company: &str) -> String {
        format!(
            "company {company}: the lease was taken over by another store (this process did not \
             renew it within the {} ms expiry: paused, or cut off from the database); its cache \
             was dropped and its calls are refused; open a session again to wait for the lease",
            self.expiry.as_millis()
        )
    }

    /// Renews every held lease with one statement; marks the ones another holder took lost.
    pub(crate) async fn heartbeat(
        &self,
        db: &Db,
        cache: &Cache,
        metrics: &Metrics,
        companies: &Companies,
    ) {
        let held: Vec<(Arc<Company>, i64)> = companies
            .live()
            .into_iter()
            .filter_map(|c| match c.lease() {
                LeaseState::Held { token } => Some((c, token)),
                _ => None,
            })
            .collect();
        if held.is_empty() {
            return;
        }
        let ids: Vec<&str> = held.iter().map(|(c, _)| &*c.id).collect();
        let tokens: Vec<i64> = held.iter().map(|(_, t)| *t).collect();
        let expiry = self.expiry.as_secs_f64();
        let started = Instant::now();
        let result = db
            .call("renew leases", async |c| {
                lease_sql::renew(&***c, &ids, &tokens, expiry).await
            })
            .await;
        metrics.record("lease_heartbeat", started.elapsed(), result.is_ok());
        self.heartbeats.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(kept) => {
                let kept: std::collections::HashSet<&str> = kept.iter().map(|s| &**s).collect();
                for (c, token) in &held {
                    if !kept.contains(&*c.id) {
                        self.mark_lost(cache, c, Some(*token), self.taken_over(&c.id));
                    }
                }
            }
            Err(e) => {
                // The leases may expire meanwhile; fencing keeps that safe, and the next
                // heartbeat (or write) finds out whether another holder took them.
                self.heartbeat_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "lease heartbeat failed");
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            }
        }
    }

    /// Takes the leases of companies opened during an outage once the database answers, so a
    /// session that only reads does not go on without its lease. One that another store holds
    /// meanwhile is marked lost (what this process remembers of it may be stale), and so are
    /// its outage writes when they are replayed. A company inherited from a journal is taken
    /// over only under the journal's token (the same rule as its replay).
    pub(crate) async fn acquire_pending(
        &self,
        db: &Db,
        cache: &Cache,
        metrics: &Metrics,
        companies: &Companies,
    ) {
        for c in companies.live() {
            if !matches!(c.lease(), LeaseState::Pending { .. }) {
                continue;
            }
            match self.acquire(db, metrics, &c).await {
                Ok(()) => {}
                Err(e) if is_locked(&e) => {
                    self.mark_lost(cache, &c, None, e.message().to_string());
                }
                // Still away: try again at the next heartbeat.
                Err(_) => return,
            }
        }
    }

    /// Releases `(company, token)` pairs with one statement.
    pub(crate) async fn release(&self, db: &Db, pairs: &[(Arc<str>, i64)]) -> Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = pairs.iter().map(|(c, _)| &**c).collect();
        let tokens: Vec<i64> = pairs.iter().map(|(_, t)| *t).collect();
        db.call("release leases", async |c| {
            lease_sql::release(&***c, &ids, &tokens).await
        })
        .await
        .map(|_| ())
    }

    /// At close: releases every lease this store holds (one statement, by instance id, so a
    /// release the lease task had begun when it was stopped is not missed) and marks them
    /// released.
    pub(crate) async fn release_all(&self, db: &Db, companies: &Companies) -> Result<()> {
        for c in companies.live() {
            c.set_lease(LeaseState::Released);
        }
        companies
            .releases
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        let me = &self.me.instance;
        db.call("release leases", async |c| {
            lease_sql::release_instance(&***c, me).await
        })
        .await
        .map(|_| ())
    }

    /// The state for metrics.
    pub(crate) fn status(&self, companies: &Companies) -> LeaseStatus {
        let (mut held, mut pending) = (0, 0);
        if self.enabled {
            for c in companies.live() {
                match c.lease() {
                    LeaseState::Held { .. } => held += 1,
                    LeaseState::Pending { .. } => pending += 1,
                    _ => {}
                }
            }
        }
        LeaseStatus {
            enabled: self.enabled,
            host: self.me.host.clone(),
            pid: std::process::id(),
            instance: self.me.instance.clone(),
            expiry_ms: u64::try_from(self.expiry.as_millis()).unwrap_or(u64::MAX),
            heartbeat_ms: u64::try_from(self.heartbeat.as_millis()).unwrap_or(u64::MAX),
            held,
            pending,
            lost: self.lost.load(Ordering::Relaxed),
            lost_calls: self.lost_calls.load(Ordering::Relaxed),
            lost_writes_file: self
                .lost_file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            heartbeats: self.heartbeats.load(Ordering::Relaxed),
            heartbeat_errors: self.heartbeat_errors.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// `host h, pid p, instance i, since t (expires in n s unless renewed)`.
fn describe(h: &Holder) -> String {
    let expiry = if h.expires_in_secs > 0.0 {
        format!(
            "its lease expires in {:.0} s unless renewed",
            h.expires_in_secs.ceil()
        )
    } else {
        "its lease has just expired".to_string()
    };
    format!(
        "host {}, pid {}, instance {}, holding it since {} ({expiry})",
        h.host, h.pid, h.instance, h.since
    )
}

/// Whether `e` is the refusal of a lease (as opposed to a database failure).
pub(crate) fn is_locked(e: &Error) -> bool {
    e.kind() == ErrorKind::Locked
}

/// The lease task of a store: renews held leases every heartbeat interval and hands back the
/// leases of dropped companies as soon as they are dropped (both batched). Ends when the store
/// is gone.
pub(crate) async fn run(
    leases: Weak<Leases>,
    db: Weak<Db>,
    cache: Weak<Cache>,
    metrics: Weak<Metrics>,
    companies: Weak<Companies>,
) {
    let (period, wake) = match (leases.upgrade(), companies.upgrade()) {
        (Some(l), Some(c)) => (l.heartbeat, c.releases.clone()),
        _ => return,
    };
    let mut next_beat = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next_beat) => {}
            _ = wake.wake.notified() => {}
        }
        let (Some(l), Some(db), Some(cache), Some(m), Some(cs)) = (
            leases.upgrade(),
            db.upgrade(),
            cache.upgrade(),
            metrics.upgrade(),
            companies.upgrade(),
        ) else {
            return;
        };
        let dropped = std::mem::take(&mut *wake.queue.lock().unwrap_or_else(|p| p.into_inner()));
        if let Err(e) = l.release(&db, &dropped).await {
            // They expire by themselves.
            tracing::debug!(error = %e, "releasing the leases of dropped companies failed");
        }
        if tokio::time::Instant::now() >= next_beat {
            next_beat = tokio::time::Instant::now() + period;
            l.heartbeat(&db, &cache, &m, &cs).await;
            l.acquire_pending(&db, &cache, &m, &cs).await;
        }
    }
}
