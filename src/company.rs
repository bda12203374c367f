//! Per-company state shared by every session of one company in this process: its write lane,
//! its write epoch, the creds it last loaded or committed, and its key directory.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use crate::directory::{Change, DirectoryStats, KeyDirectory};
use crate::value::StoredValue;

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
}

impl Companies {
    pub(crate) fn new(lanes: usize) -> Companies {
        Companies {
            map: Mutex::new(HashMap::new()),
            lanes: lanes.max(1),
        }
    }

    /// Companies with a live session (or pending writes) in this process.
    pub(crate) fn open_count(&self) -> usize {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }

    /// The shared state of `id` (already validated), created on first use.
    pub(crate) fn get(&self, id: &str) -> Arc<Company> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
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
            lane: (h.finish() % self.lanes as u64) as usize,
            directory: Mutex::new(KeyDirectory::default()),
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
        let c = Companies::new(2);
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
