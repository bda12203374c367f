//! Per-company state shared by every session of one company in this process: its write lane,
//! its write epoch, the creds it last loaded or committed, its key directory and its lease.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::directory::{Change, DirectoryStats, KeyDirectory};
use crate::value::StoredValue;

/// Where this process stands with the lease of one company (the `lease` module acts on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// The store runs without leases: writes are not fenced.
    Off,
    /// New: its first opener is acquiring the lease now. The lease task leaves it alone (a
    /// refused open is only that, not a lost lease); an opener that cannot reach the database
    /// makes it `Pending`.
    Opening,
    /// Not acquired yet: the session was opened during an outage, or the company's writes came
    /// from a journal. `inherited` is the token the journal's writes were made under. The
    /// first write (or the replay) acquires it before anything is written.
    Pending { inherited: Option<i64> },
    /// Ours: every write is fenced with this token.
    Held { token: i64 },
    /// Another holder took it over (or refused it to a replay). Final for this `Company`:
    /// every call fails with LOCKED; opening a session again starts a fresh one.
    Lost { why: String },
    /// Given up at close.
    Released,
}

/// The shared state of one company.
pub(crate) struct Company {
    pub(crate) id: Arc<str>,
    /// Bumped on every commit of this company; a read fills the cache only when the epoch did
    /// not move while it ran, so a slow read never overwrites a newer write.
    epoch: AtomicU64,
    last_creds: Mutex<Option<StoredValue>>,
    /// The lane this company's writes go through (call order is commit order within a lane).
    pub(crate) lane: usize,
    /// Which keys exist, to answer "absent" during an outage (see [`crate::directory`]).
    directory: Mutex<KeyDirectory>,
    lease: Mutex<LeaseState>,
    /// Held while the lease is acquired, so two sessions opened at once take it once.
    pub(crate) acquiring: tokio::sync::Mutex<()>,
    /// Where a held lease is handed back when the last user of the company drops it.
    releases: Weak<Releases>,
}

/// Leases whose company was dropped while held: the lease task releases them in one batch.
#[derive(Default)]
pub(crate) struct Releases {
    pub(crate) queue: Mutex<Vec<(Arc<str>, i64)>>,
    pub(crate) wake: tokio::sync::Notify,
}

impl Drop for Company {
    fn drop(&mut self) {
        // The last session of the company is gone: hand the lease back now rather than letting
        // it expire, so another process can take the account over at once.
        let state = self.lease.get_mut().unwrap_or_else(|p| p.into_inner());
        if let (LeaseState::Held { token }, Some(r)) = (&*state, self.releases.upgrade()) {
            r.queue
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((self.id.clone(), *token));
            r.wake.notify_one();
        }
    }
}

impl Company {
    pub(crate) fn lease(&self) -> LeaseState {
        self.lease.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    /// An opener that could not acquire the lease (the database is away) keeps serving: the
    /// company becomes `Pending`, for the lease task or the first write to acquire.
    pub(crate) fn opened_without_lease(&self) {
        let mut st = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if *st == LeaseState::Opening {
            *st = LeaseState::Pending { inherited: None };
        }
    }
    /// The lease still has to be acquired before anything is written (`Opening`, `Pending`).
    pub(crate) fn lease_unacquired(&self) -> bool {
        matches!(
            *self.lease.lock().unwrap_or_else(|p| p.into_inner()),
            LeaseState::Opening | LeaseState::Pending { .. }
        )
    }
    /// Sets the lease state; a `Lost` or `Released` company stays so.
    pub(crate) fn set_lease(&self, next: LeaseState) {
        let mut st = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        if !matches!(*st, LeaseState::Lost { .. } | LeaseState::Released) {
            *st = next;
        }
    }
    /// Marks the lease lost if it is still held with `token` (a heartbeat racing a takeover
    /// of our own must not mark the newer lease lost). True when it changed; then `count` is
    /// incremented under the same lock, so whoever sees the company lost sees it counted.
    pub(crate) fn lose_lease(&self, token: Option<i64>, why: String, count: &AtomicU64) -> bool {
        let mut st = self.lease.lock().unwrap_or_else(|p| p.into_inner());
        let matches = match (&*st, token) {
            (LeaseState::Held { token: t }, Some(want)) => *t == want,
            (LeaseState::Held { .. } | LeaseState::Pending { .. } | LeaseState::Opening, None) => {
                true
            }
            _ => false,
        };
        if matches {
            *st = LeaseState::Lost { why };
            count.fetch_add(1, Ordering::Relaxed);
        }
        matches
    }
    /// The token a call kept during an outage is journaled under: the held token, or the one
    /// inherited from a journal.
    pub(crate) fn journal_token(&self) -> Option<i64> {
        match &*self.lease.lock().unwrap_or_else(|p| p.into_inner()) {
            LeaseState::Held { token } => Some(*token),
            LeaseState::Pending { inherited } => *inherited,
            _ => None,
        }
    }
    /// True while this process holds the company's lease (so it is its only writer).
    pub(crate) fn holds_lease(&self) -> bool {
        matches!(
            &*self.lease.lock().unwrap_or_else(|p| p.into_inner()),
            LeaseState::Held { .. }
        )
    }
    /// The token writes are fenced with now: `Ok(None)` without lease, `Err` when lost.
    pub(crate) fn lease_token(&self) -> std::result::Result<Option<i64>, String> {
        match &*self.lease.lock().unwrap_or_else(|p| p.into_inner()) {
            LeaseState::Off | LeaseState::Opening | LeaseState::Pending { .. } => Ok(None),
            LeaseState::Held { token } => Ok(Some(*token)),
            LeaseState::Lost { why } => Err(why.clone()),
            LeaseState::Released => Err("the lease was released at close".into()),
        }
    }
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
    /// The key directory, under its lock.
    pub(crate) fn directory(&self) -> std::sync::MutexGuard<'_, KeyDirectory> {
        self.directory.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// Records committed changes in the key directory, in commit order.
    pub(crate) fn directory_apply(&self, changes: impl IntoIterator<Item = Change>) {
        let mut d = self.directory();
        for c in changes {
            d.apply(c);
        }
    }
}

/// The companies with a live session (or pending writes) in this process. An entry lives as
/// long as something holds its [`Company`]; the map keeps only weak references.
pub(crate) struct Companies {
    map: Mutex<HashMap<Arc<str>, Weak<Company>>>,
    lanes: usize,
    leased: bool,
    pub(crate) releases: Arc<Releases>,
}

impl Companies {
    /// `leased`: new companies start `Opening` (their opener acquires the lease) instead of
    /// `Off`.
    pub(crate) fn new(lanes: usize, leased: bool) -> Companies {
        Companies {
            map: Mutex::new(HashMap::new()),
            lanes: lanes.max(1),
            leased,
            releases: Arc::new(Releases::default()),
        }
    }

    /// Companies with a live session (or pending writes) in this process.
    pub(crate) fn open_count(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    /// Every company alive in this process.
    pub(crate) fn live(&self) -> Vec<Arc<Company>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter_map(Weak::upgrade).collect()
    }

    /// The shared state of `id` (already validated), created on first use. A company whose
    /// lease was lost is replaced by a fresh one (its old sessions keep failing with LOCKED).
    pub(crate) fn get(&self, id: &str) -> Arc<Company> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(id).and_then(Weak::upgrade) {
            if !matches!(c.lease(), LeaseState::Lost { .. } | LeaseState::Released) {
                return c;
            }
        }
        map.retain(|_, w| w.strong_count() > 0);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        let company = Arc::new(Company {
            id: Arc::from(id),
            epoch: AtomicU64::new(0),
            last_creds: Mutex::new(None),
            lane: (h.finish() % self.lanes as u64) as usize,
            directory: Mutex::new(KeyDirectory::default()),
            lease: Mutex::new(if self.leased {
                LeaseState::Opening
            } else {
                LeaseState::Off
            }),
            acquiring: tokio::sync::Mutex::new(()),
            releases: Arc::downgrade(&self.releases),
        });
        map.insert(company.id.clone(), Arc::downgrade(&company));
        company
    }
}

impl Companies {
    /// Companies with a loaded key directory, their keys, and the bytes the directories take.
    pub(crate) fn directory_stats(&self) -> DirectoryStats {
        let live: Vec<Arc<Company>> = {
            let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            map.values().filter_map(Weak::upgrade).collect()
        };
        let mut stats = DirectoryStats::default();
        for co in &live {
            let d = co.directory();
            let (keys, bytes) = d.size();
            stats.companies += usize::from(d.is_loaded());
            stats.keys += keys;
            stats.bytes += bytes;
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_state_per_company_while_held() {
        let c = Companies::new(2, false);
        let a = c.get("a");
        assert!(Arc::ptr_eq(&a, &c.get("a")));
        assert!(a.lane < 2);
        a.bump_epoch();
        let weak = Arc::downgrade(&a);
        drop(a);
        assert!(weak.upgrade().is_none());
        assert_eq!(c.get("a").epoch(), 0, "a dropped company starts afresh");
    }
}
