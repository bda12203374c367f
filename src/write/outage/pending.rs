//! The pending log of an outage and its read overlay: the writes kept while the database is
//! away, coalesced per key, and what they make reads answer (read-your-writes while down).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cache::{self, Cached};
use crate::company::Company;
use crate::write::Op;

/// One kept call, when it was acknowledged, and its sequence number (increasing along the
/// log: the log is sorted by it). Shared with a replay in progress, copied on write otherwise.
pub(super) type PendingCall = Arc<(Arc<Company>, Op, Instant, u64)>;

#[derive(Default)]
/// Everything the outage mode keeps, under one lock.
pub(super) struct State {
    pub(super) since: Option<(Instant, SystemTime)>,
    pub(super) last_error: Option<String>,
    pub(super) pending: Vec<PendingCall>,
    pub(super) pending_bytes: usize,
    /// Leading pending calls a replay is writing right now: never coalesced into, because the
    /// replay drains exactly that many calls when it commits.
    pub(super) replaying: usize,
    /// Leading pending calls to replay one per transaction: a chunk of them was refused by
    /// PostgreSQL for its data, so each is tried alone to find the one refused.
    pub(super) isolate: usize,
    /// The last pending value of each key (read-your-writes while down), and the sequence
    /// number of the pending call holding it: a rewrite finds the write it supersedes without
    /// walking the log, which holds thousands of calls in journal durability or a long outage.
    pub(super) overlay: HashMap<String, (Cached, u64)>,
    /// Companies with a pending `clear`: their keys not in `overlay` are absent.
    pub(super) cleared: HashSet<Arc<str>>,
    /// The sequence number of the next pending call.
    pub(super) next_seq: u64,
    pub(super) attempts: u64,
    pub(super) outages: u64,
}

/// Adds `op` of `company`, acknowledged at `at`, to the pending log: drops what it supersedes
/// and makes reads see it. A write of a key drops the pending write of that key (found
/// through `overlay`), from behind any call being replayed; a call left empty goes. A `clear` drops
/// every earlier pending call of the company (a walk over the log; clears are rare). The
/// order of what remains is kept, so replaying it gives the same final state as replaying
/// every call, and the pending log grows with the number of distinct keys written, not with
/// the number of calls.
pub(super) fn pend(st: &mut State, company: Arc<Company>, op: Op, at: Instant) {
    let keys = overlay_keys(&company, &op);
    if matches!(op, Op::Clear) {
        clear_company(st, &company);
    } else {
        let mut seqs: Vec<u64> = keys
            .iter()
            .filter_map(|k| st.overlay.get(k).map(|(_, seq)| *seq))
            .collect();
        if !seqs.is_empty() {
            seqs.sort_unstable();
            seqs.dedup();
            let written: HashSet<(&str, &str)> = match &op {
                Op::Keys(w) => w.iter().map(|k| (&*k.key_type, &*k.key_id)).collect(),
                Op::Creds(_) | Op::Clear => HashSet::new(),
            };
            for seq in seqs {
                supersede(st, seq, &company, &op, &written);
            }
        }
    }
    let seq = st.next_seq;
    st.next_seq += 1;
    st.pending_bytes += op.bytes();
    apply_overlay(st, &company, &op, keys, seq);
    st.pending.push(Arc::new((company, op, at, seq)));
}

/// Drops from pending call `seq` the writes `op` of `company` supersedes (the keys in
/// `written`, or the creds), unless that call is being replayed (it stays whole: the replay
/// drains exactly the calls it took). The call goes when nothing is left of it.
fn supersede(
    st: &mut State,
    seq: u64,
    company: &Company,
    op: &Op,
    written: &HashSet<(&str, &str)>,
) {
    let Ok(i) = st.pending.binary_search_by_key(&seq, |c| c.3) else {
        return;
    };
    if i < st.replaying || *st.pending[i].0.id != *company.id {
        return;
    }
    // Pending calls are not shared outside the log past `replaying`: this does not copy.
    let old = &mut Arc::make_mut(&mut st.pending[i]).1;
    let before = old.bytes();
    match (&mut *old, op) {
        (Op::Creds(_), Op::Creds(_)) => *old = Op::Keys(Vec::new()),
        (Op::Keys(w), Op::Keys(_)) => w.retain(|k| !written.contains(&(&*k.key_type, &*k.key_id))),
        _ => {}
    }
    let removed = before - old.bytes();
    let empty = matches!(&*old, Op::Keys(w) if w.is_empty());
    st.pending_bytes = st.pending_bytes.saturating_sub(removed);
    if empty {
        st.pending.remove(i);
    }
}

/// Drops every pending call of `company` (behind any being replayed): a `clear` supersedes
/// them all.
fn clear_company(st: &mut State, company: &Company) {
    let start = st.replaying.min(st.pending.len());
    let mut i = 0usize;
    let mut removed = 0usize;
    st.pending.retain(|call| {
        let drop = i >= start && call.0.id == company.id;
        i += 1;
        if drop {
            removed += call.1.bytes();
        }
        !drop
    });
    st.pending_bytes = st.pending_bytes.saturating_sub(removed);
}

/// Makes the overlay (and the pending bytes) again from the pending log, after calls left it.
pub(super) fn reindex(st: &mut State) {
    st.pending_bytes = st.pending.iter().map(|p| p.1.bytes()).sum();
    st.overlay.clear();
    st.cleared.clear();
    let pending = std::mem::take(&mut st.pending);
    for p in &pending {
        apply_overlay(st, &p.0, &p.1, overlay_keys(&p.0, &p.1), p.3);
    }
    st.pending = pending;
}

/// The overlay keys `op` of `company` writes: one per key write, the creds' for new creds.
fn overlay_keys(company: &Company, op: &Op) -> Vec<String> {
    match op {
        Op::Keys(writes) => writes
            .iter()
            .map(|w| cache::key_of(&company.id, &w.key_type, &w.key_id))
            .collect(),
        Op::Creds(_) => vec![cache::creds_key(&company.id)],
        Op::Clear => Vec::new(),
    }
}

/// Makes reads see `op` of `company` (pending call `seq`) while it is pending; `keys` =
/// [`overlay_keys`] of `op`.
fn apply_overlay(st: &mut State, company: &Arc<Company>, op: &Op, keys: Vec<String>, seq: u64) {
    match op {
        Op::Keys(writes) => {
            for (key, w) in keys.into_iter().zip(writes) {
                st.overlay.insert(key, (w.value.clone(), seq));
            }
        }
        Op::Creds(v) => {
            for key in keys {
                st.overlay.insert(key, (Some(v.clone()), seq));
            }
            company.set_last_creds(Some(v.clone()));
        }
        Op::Clear => {
            let prefix = format!("{}\0", company.id);
            st.overlay.retain(|k, _| !k.starts_with(&prefix));
            st.cleared.insert(company.id.clone());
            company.set_last_creds(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::company::Companies;
    use crate::value::{KeyWrite, StoredValue};
    use crate::write::outage::journal::encode_record;
    use proptest::prelude::*;

    /// The coalescing this index replaced: a walk over the whole log per rewrite. The
    /// reference the index must agree with.
    fn pend_by_walk(st: &mut State, company: Arc<Company>, op: Op) {
        let keys = overlay_keys(&company, &op);
        if matches!(op, Op::Clear) || keys.iter().any(|k| st.overlay.contains_key(k)) {
            let written: HashSet<(&str, &str)> = match &op {
                Op::Keys(w) => w.iter().map(|k| (&*k.key_type, &*k.key_id)).collect(),
                Op::Creds(_) | Op::Clear => HashSet::new(),
            };
            let start = st.replaying.min(st.pending.len());
            for call in st.pending[start..].iter_mut() {
                if call.0.id != company.id {
                    continue;
                }
                let old = &mut Arc::make_mut(call).1;
                match (&mut *old, &op) {
                    (_, Op::Clear) | (Op::Creds(_), Op::Creds(_)) => *old = Op::Keys(Vec::new()),
                    (Op::Keys(w), Op::Keys(_)) => {
                        w.retain(|k| !written.contains(&(&*k.key_type, &*k.key_id)))
                    }
                    _ => {}
                }
            }
            let mut i = 0usize;
            st.pending.retain(|call| {
                let keep = i < start || !matches!(&call.1, Op::Keys(w) if w.is_empty());
                i += 1;
                keep
            });
        }
        apply_overlay(st, &company, &op, keys, 0);
        st.pending.push(Arc::new((company, op, Instant::now(), 0)));
        st.pending_bytes = st.pending.iter().map(|p| p.1.bytes()).sum();
    }

    fn log(st: &State) -> Vec<String> {
        st.pending
            .iter()
            .map(|p| encode_record(&p.0.id, &p.1, None).unwrap())
            .collect()
    }

    /// Key -> value after replaying `calls` in order (what PostgreSQL ends up holding).
    fn replayed<'a>(calls: impl Iterator<Item = (&'a str, &'a Op)>) -> Vec<(String, String)> {
        let mut state = std::collections::BTreeMap::new();
        for (company, op) in calls {
            match op {
                Op::Keys(w) => {
                    for k in w {
                        let v = k
                            .value
                            .as_ref()
                            .map_or("-".into(), |v| v.as_str().to_string());
                        state.insert(cache::key_of(company, &k.key_type, &k.key_id), v);
                    }
                }
                Op::Creds(v) => {
                    state.insert(cache::creds_key(company), v.as_str().to_string());
                }
                Op::Clear => state.retain(|k: &String, _| !k.starts_with(&format!("{company}\0"))),
            }
        }
        state.into_iter().collect()
    }

    /// (company, kind, writes): kind 0-7 keys, 8 creds, 9 clear; writes (type, id, value).
    fn call() -> impl Strategy<Value = (usize, u8, Vec<(u8, u8, u8)>)> {
        (
            0usize..3,
            0u8..10,
            proptest::collection::vec((0u8..2, 0u8..4, 0u8..4), 1..4),
        )
    }

    fn op_of((_, kind, writes): &(usize, u8, Vec<(u8, u8, u8)>)) -> Op {
        match kind {
            8 => Op::Creds(StoredValue::from_json(&format!("{{\"c\":{}}}", writes[0].2)).unwrap()),
            9 => Op::Clear,
            _ => Op::Keys(
                writes
                    .iter()
                    .map(|&(t, id, v)| {
                        let t = ["session", "pre-key"][usize::from(t)];
                        if v == 0 {
                            KeyWrite::delete(t, &id.to_string()).unwrap()
                        } else {
                            KeyWrite::put(
                                t,
                                &id.to_string(),
                                StoredValue::from_json(&format!("[{v}]")).unwrap(),
                            )
                            .unwrap()
                        }
                    })
                    .collect(),
            ),
        }
    }

    proptest! {
        #[test]
        fn indexed_coalescing_keeps_what_the_walk_kept(
            calls in proptest::collection::vec(call(), 1..80),
            replay_from in 0usize..80,
            replay_len in 0usize..6,
        ) {
            let companies = Companies::new(1, false);
            let ids = ["a", "b", "a\u{1}"].map(|c| companies.get(c));
            let (mut indexed, mut walked) = (State::default(), State::default());
            for (n, c) in calls.iter().enumerate() {
                if n == replay_from {
                    // A replay takes the first calls: they are no longer coalesced into.
                    indexed.replaying = replay_len.min(indexed.pending.len());
                    walked.replaying = replay_len.min(walked.pending.len());
                    prop_assert_eq!(indexed.replaying, walked.replaying);
                }
                pend(&mut indexed, ids[c.0].clone(), op_of(c), Instant::now());
                pend_by_walk(&mut walked, ids[c.0].clone(), op_of(c));
                prop_assert_eq!(log(&indexed), log(&walked));
                prop_assert_eq!(indexed.pending_bytes, walked.pending_bytes);
                prop_assert_eq!(&indexed.cleared, &walked.cleared);
                let overlay = |st: &State| {
                    let mut o: Vec<(String, Option<String>)> = st
                        .overlay
                        .iter()
                        .map(|(k, (v, _))| (k.clone(), v.as_ref().map(|v| v.as_str().to_string())))
                        .collect();
                    o.sort();
                    o
                };
                prop_assert_eq!(overlay(&indexed), overlay(&walked));
                prop_assert!(indexed.pending.windows(2).all(|w| w[0].3 < w[1].3));
            }
            // Replaying the coalesced log ends where replaying every call does.
            let all: Vec<(&str, Op)> = calls.iter().map(|c| (&*ids[c.0].id, op_of(c))).collect();
            prop_assert_eq!(
                replayed(indexed.pending.iter().map(|p| (&*p.0.id, &p.1))),
                replayed(all.iter().map(|(c, op)| (*c, op)))
            );
            // The index made again from the log is the one kept along the way.
            let index = |st: &State| {
                let mut i: Vec<(String, u64)> =
                    st.overlay.iter().map(|(k, (_, seq))| (k.clone(), *seq)).collect();
                i.sort();
                i
            };
            let kept = index(&indexed);
            reindex(&mut indexed);
            prop_assert_eq!(kept, index(&indexed));
        }
    }
}
