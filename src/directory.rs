//! The key directory of a company: which `(type, id)` pairs exist in the database, kept in
//! memory so that during an outage a read of a key that was never stored is answered "absent"
//! instead of failing (Baileys reads absent keys constantly: new groups, new contacts).
//!
//! Compact: each key is a 128-bit keyed hash (SipHash with two random per-process keys), about
//! 20 bytes per key in the table instead of the id strings. A hash present for a key that does
//! not exist (a collision) can only turn an "absent" into an UNAVAILABLE during an outage; an
//! existing key is absent from the directory only if a delete of another key had the same 128-bit
//! hash, a chance of about n/2^128 per delete, which we accept as never.
//!
//! Exact only while this process is the company's only writer (the lease makes it so): every
//! committed write updates it, in commit order; a load that races with commits replays the
//! commits made since it started.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::OnceLock;

/// The two hash keys of this process.
fn hashers() -> &'static (RandomState, RandomState) {
    static H: OnceLock<(RandomState, RandomState)> = OnceLock::new();
    H.get_or_init(|| (RandomState::new(), RandomState::new()))
}

/// The 128-bit hash of one key.
pub(crate) fn key_hash(key_type: &str, id: &str) -> u128 {
    let (a, b) = hashers();
    let one = |s: &RandomState| {
        let mut h = s.build_hasher();
        h.write(key_type.as_bytes());
        h.write_u8(0);
        h.write(id.as_bytes());
        h.finish()
    };
    (u128::from(one(a)) << 64) | u128::from(one(b))
}

/// Size of the in-memory key directories of a store (see the README's outage section).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DirectoryStats {
    /// Open companies whose directory is loaded.
    pub companies: usize,
    /// Keys known across them.
    pub keys: usize,
    /// Estimated bytes the directories take.
    pub bytes: usize,
}

/// A change to the directory, recorded while a load is running.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change {
    /// The key now exists.
    Put(u128),
    /// The key was deleted.
    Delete(u128),
    /// Every key of the company was deleted.
    Clear,
}

/// What the directory knows.
#[derive(Debug, Default)]
pub(crate) enum KeyDirectory {
    /// Not loaded: it cannot tell absence.
    #[default]
    Unknown,
    /// A load is running; changes committed meanwhile are replayed on top of its result.
    Loading(Vec<Change>),
    /// Exact.
    Loaded(HashSet<u128>),
}

impl KeyDirectory {
    /// `Some(true/false)` when loaded, `None` when it cannot tell.
    pub(crate) fn contains(&self, key_type: &str, id: &str) -> Option<bool> {
        match self {
            KeyDirectory::Loaded(set) => Some(set.contains(&key_hash(key_type, id))),
            _ => None,
        }
    }

    /// Applies a committed change.
    pub(crate) fn apply(&mut self, change: Change) {
        match self {
            KeyDirectory::Unknown => {}
            KeyDirectory::Loading(log) => log.push(change),
            KeyDirectory::Loaded(set) => match change {
                Change::Put(h) => {
                    set.insert(h);
                }
                Change::Delete(h) => {
                    set.remove(&h);
                }
                Change::Clear => set.clear(),
            },
        }
    }

    /// Starts a load; false when one is running or done already.
    pub(crate) fn begin_load(&mut self) -> bool {
        if matches!(self, KeyDirectory::Unknown) {
            *self = KeyDirectory::Loading(Vec::new());
            true
        } else {
            false
        }
    }

    /// Finishes a load with the keys the database held when it started, then the changes
    /// committed since, in order.
    pub(crate) fn finish_load(&mut self, keys: HashSet<u128>) {
        if let KeyDirectory::Loading(log) = std::mem::take(self) {
            let mut dir = KeyDirectory::Loaded(keys);
            for c in log {
                dir.apply(c);
            }
            *self = dir;
        }
    }

    /// A failed load: back to unknown, a later session open tries again.
    pub(crate) fn abort_load(&mut self) {
        if matches!(self, KeyDirectory::Loading(_)) {
            *self = KeyDirectory::Unknown;
        }
    }

    /// True when it can tell absence.
    pub(crate) fn is_loaded(&self) -> bool {
        matches!(self, KeyDirectory::Loaded(_))
    }

    /// Keys known and an estimate of the memory they take (table slots of 16-byte hashes plus
    /// one control byte each).
    pub(crate) fn size(&self) -> (usize, usize) {
        match self {
            KeyDirectory::Loaded(set) => (set.len(), set.capacity() * 17),
            KeyDirectory::Loading(log) => (0, log.capacity() * std::mem::size_of::<Change>()),
            KeyDirectory::Unknown => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_during_a_load_are_replayed_in_order() {
        let mut d = KeyDirectory::default();
        assert_eq!(d.contains("session", "a"), None);
        assert!(d.begin_load());
        assert!(!d.begin_load());
        d.apply(Change::Put(key_hash("session", "new")));
        d.apply(Change::Delete(key_hash("session", "old")));
        let snapshot: HashSet<u128> = [key_hash("session", "old"), key_hash("pre-key", "1")]
            .into_iter()
            .collect();
        d.finish_load(snapshot);
        assert_eq!(d.contains("session", "new"), Some(true));
        assert_eq!(d.contains("session", "old"), Some(false));
        assert_eq!(d.contains("pre-key", "1"), Some(true));
        assert_eq!(d.contains("pre-key", "2"), Some(false));
        d.apply(Change::Clear);
        assert_eq!(d.contains("pre-key", "1"), Some(false));
    }

    #[test]
    fn type_and_id_are_separated() {
        assert_ne!(key_hash("ab", "c"), key_hash("a", "bc"));
    }
}
