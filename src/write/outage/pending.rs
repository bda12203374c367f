//! The pending log of an outage and its read overlay: the writes kept while the database is
//! away, coalesced per key, and what they make reads answer (read-your-writes while down).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use crate::cache::{self, Cached};
use crate::company::Company;
use crate::write::Op;

/// One kept call and when it was acknowledged. Shared with a replay in progress, copied on
/// write otherwise.
pub(super) type PendingCall = Arc<(Arc<Company>, Op, Instant)>;

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
    /// The last pending value of each key (read-your-writes while down).
    pub(super) overlay: HashMap<String, Cached>,
    /// Companies with a pending `clear`: their keys not in `overlay` are absent.
    pub(super) cleared: HashSet<Arc<str>>,
    pub(super) attempts: u64,
    pub(super) outages: u64,
}

/// Adds `op` of `company`, acknowledged at `at`, to the pending log: drops what it supersedes
/// (see [`coalesce`]) and makes reads see it. Only what a pending call writes can be
/// superseded, and the overlay holds exactly that (the keys and creds of the pending calls,
/// made again whenever calls leave the log), so a call that rewrites nothing pending (most, in
/// journal durability) skips the walk over the whole log; its overlay keys are made once, for
/// that check and for the overlay.
pub(super) fn pend(st: &mut State, company: Arc<Company>, op: Op, at: Instant) {
    let keys = overlay_keys(&company, &op);
    if matches!(op, Op::Clear) || keys.iter().any(|k| st.overlay.contains_key(k)) {
        coalesce(st, &company, &op);
    }
    st.pending_bytes += op.bytes();
    apply_overlay(st, &company, &op, keys);
    st.pending.push(Arc::new((company, op, at)));
}

/// Drops from the pending calls (behind any being replayed) what `op` of `company` supersedes:
/// the earlier writes of the same keys, earlier creds, or everything earlier of the company for
/// a `clear`. Calls left empty go. The order of what remains is kept, so replaying it gives the
/// same final state as replaying every call, and the pending log grows with the number of
/// distinct keys written during an outage, not with its length.
fn coalesce(st: &mut State, company: &Arc<Company>, op: &Op) {
    let keys: HashSet<(&str, &str)> = match op {
        Op::Keys(w) => w.iter().map(|k| (&*k.key_type, &*k.key_id)).collect(),
        Op::Creds(_) | Op::Clear => HashSet::new(),
    };
    let start = st.replaying.min(st.pending.len());
    let mut removed = 0usize;
    for call in st.pending[start..].iter_mut() {
        if call.0.id != company.id {
            continue;
        }
        let before = call.1.bytes();
        // Pending calls are not shared outside the log past `start`: this does not copy.
        let old = &mut Arc::make_mut(call).1;
        match (&mut *old, op) {
            (_, Op::Clear) | (Op::Creds(_), Op::Creds(_)) => *old = Op::Keys(Vec::new()),
            (Op::Keys(w), Op::Keys(_)) => w.retain(|k| !keys.contains(&(&*k.key_type, &*k.key_id))),
            _ => {}
        }
        removed += before - old.bytes();
    }
    let mut i = 0usize;
    st.pending.retain(|call| {
        let keep = i < start || !matches!(&call.1, Op::Keys(w) if w.is_empty());
        i += 1;
        keep
    });
    st.pending_bytes = st.pending_bytes.saturating_sub(removed);
}

/// Makes reads see `op` of `company` while it is pending.
pub(super) fn overlay_apply(st: &mut State, company: &Arc<Company>, op: &Op) {
    apply_overlay(st, company, op, overlay_keys(company, op));
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

/// [`overlay_apply`] with `keys` = [`overlay_keys`] of `op`.
fn apply_overlay(st: &mut State, company: &Arc<Company>, op: &Op, keys: Vec<String>) {
    match op {
        Op::Keys(writes) => {
            for (key, w) in keys.into_iter().zip(writes) {
                st.overlay.insert(key, w.value.clone());
            }
        }
        Op::Creds(v) => {
            for key in keys {
                st.overlay.insert(key, Some(v.clone()));
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
