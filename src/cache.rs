//! The bounded, write-through read cache (an LRU from the `lru` crate, bounded in entries and
//! in bytes).
//!
//! It holds keys, keys known to be absent, and creds. The store updates it only after a commit,
//! and a read fills it only when no write of that company committed while the read ran, so the
//! cache never holds something older than the database.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use lru::LruCache;

use crate::config::CacheConfig;
use crate::value::StoredValue;

/// Fixed cost counted per entry on top of the value text (key strings, LRU links).
const ENTRY_OVERHEAD: usize = 96;

/// What the cache knows of one key.
pub(crate) type Cached = Option<StoredValue>;

pub(crate) struct Cache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

struct Inner {
    lru: LruCache<String, Cached>,
    bytes: usize,
}

/// Cache key of a Signal key: company, type and id joined by NUL (none of them can hold NUL).
pub(crate) fn key_of(company: &str, key_type: &str, id: &str) -> String {
    let mut k = String::with_capacity(company.len() + key_type.len() + id.len() + 2);
    k.push_str(company);
    k.push('\0');
    k.push_str(key_type);
    k.push('\0');
    k.push_str(id);
    k
}

/// Cache key of a company's creds (an empty type cannot clash with a real key).
pub(crate) fn creds_key(company: &str) -> String {
    key_of(company, "", "")
}

fn cost(key: &str, v: &Cached) -> usize {
    key.len() + v.as_ref().map_or(0, StoredValue::len) + ENTRY_OVERHEAD
}

impl Cache {
    pub(crate) fn new(cfg: CacheConfig) -> Cache {
        let cap = NonZeroUsize::new(cfg.max_entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        Cache {
            inner: Mutex::new(Inner {
                lru: LruCache::new(cap),
                bytes: 0,
            }),
            max_bytes: cfg.max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the LRU inconsistent (every method
        // finishes its bookkeeping before it can panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Looks up one key; `None` when the cache knows nothing, `Some(None)` when it knows the
    /// key is absent.
    pub(crate) fn get(&self, key: &str) -> Option<Cached> {
        self.lookup(key, true)
    }

    /// Like [`Cache::get`]; with `count` false the lookup is not counted as a hit or miss (a
    /// fast path that may fall back to a counted lookup).
    pub(crate) fn lookup(&self, key: &str, count: bool) -> Option<Cached> {
        let found = self.lock().lru.get(key).cloned();
        if count {
            match found {
                Some(_) => self.hits.fetch_add(1, Ordering::Relaxed),
                None => self.misses.fetch_add(1, Ordering::Relaxed),
            };
        }
        found
    }

    /// Counts `n` hits served by an uncounted fast path.
    pub(crate) fn count_hits(&self, n: u64) {
        self.hits.fetch_add(n, Ordering::Relaxed);
    }

    /// Stores what the database said (or what a commit wrote) about `key`.
    pub(crate) fn put(&self, key: String, value: Cached) {
        let c = cost(&key, &value);
        if c > self.max_bytes {
            self.remove(&key);
            return;
        }
        let mut inner = self.lock();
        if let Some((old_k, old_v)) = inner.lru.push(key, value.clone()) {
            // push returns the replaced entry (same key) or the evicted LRU entry.
            inner.bytes -= cost(&old_k, &old_v).min(inner.bytes);
        }
        inner.bytes += c;
        while inner.bytes > self.max_bytes {
            match inner.lru.pop_lru() {
                Some((k, v)) => inner.bytes -= cost(&k, &v).min(inner.bytes),
                None => break,
            }
        }
    }

    /// Forgets one key.
    pub(crate) fn remove(&self, key: &str) {
        let mut inner = self.lock();
        if let Some(v) = inner.lru.pop(key) {
            inner.bytes -= cost(key, &v).min(inner.bytes);
        }
    }

    /// Forgets every entry of one company (after `clear`).
    pub(crate) fn remove_company(&self, company: &str) {
        let prefix = format!("{company}\0");
        let mut inner = self.lock();
        let keys: Vec<String> = inner
            .lru
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            if let Some(v) = inner.lru.pop(&k) {
                inner.bytes -= cost(&k, &v).min(inner.bytes);
            }
        }
    }

    /// Entries, bytes, hits and misses, for metrics.
    pub(crate) fn stats(&self) -> CacheStats {
        let inner = self.lock();
        CacheStats {
            entries: inner.lru.len(),
            bytes: inner.bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of the cache's size and effectiveness.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct CacheStats {
    /// Entries held.
    pub entries: usize,
    /// Bytes counted against the bound.
    pub bytes: usize,
    /// Lookups answered from memory.
    pub hits: u64,
    /// Lookups that had to go to the database.
    pub misses: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> StoredValue {
        StoredValue::from_json(s).unwrap()
    }

    #[test]
    fn bounded_by_bytes() {
        let c = Cache::new(CacheConfig {
            max_entries: 1000,
            max_bytes: 1000,
        });
        for i in 0..100 {
            c.put(key_of("c", "t", &i.to_string()), Some(v("\"0123456789\"")));
        }
        let s = c.stats();
        assert!(s.bytes <= 1000, "{s:?}");
        assert!(s.entries < 100);
        // The most recent entry is kept, the oldest are gone.
        assert!(c.get(&key_of("c", "t", "99")).is_some());
        assert!(c.get(&key_of("c", "t", "0")).is_none());
    }

    #[test]
    fn bounded_by_entries_and_replace_keeps_bytes_right() {
        let c = Cache::new(CacheConfig {
            max_entries: 2,
            max_bytes: 1 << 20,
        });
        c.put("a".into(), Some(v("1")));
        c.put("a".into(), Some(v("22")));
        c.put("b".into(), None);
        c.put("c".into(), None);
        let s = c.stats();
        assert_eq!(s.entries, 2);
        assert_eq!(s.bytes, 2 * (1 + ENTRY_OVERHEAD));
    }

    #[test]
    fn remove_company_only_touches_that_company() {
        let c = Cache::new(CacheConfig::default());
        c.put(key_of("a", "t", "1"), None);
        c.put(creds_key("a"), None);
        c.put(key_of("ab", "t", "1"), None);
        c.remove_company("a");
        assert!(c.get(&key_of("a", "t", "1")).is_none());
        assert!(c.get(&creds_key("a")).is_none());
        assert!(c.get(&key_of("ab", "t", "1")).is_some());
    }
}
