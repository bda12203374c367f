//! Applying merged writes to PostgreSQL, and to memory once they are committed.

use std::collections::{HashMap, HashSet};

use crate::cache;
use crate::company::{Company, LeaseState};
use crate::db::sql;
use crate::error::{Error, Result};
use crate::lease;

use super::merge::{plan, Step};
use super::{Op, WritePath};

/// Companies of a commit of which nothing was written because their lease is not ours
/// (another holder took it, or refused it to a pending company). They are marked lost.
pub(crate) type Fenced = HashSet<String>;

/// Applies `ops` atomically: one statement when they merge into one, else one transaction.
/// Leased companies are fenced: a company whose lease is no longer ours is not written and is
/// returned in [`Fenced`] (and marked lost); the other companies' writes commit.
pub(crate) async fn commit(wp: &WritePath, ops: &[(&Company, &Op)]) -> Result<Fenced> {
    let mut fenced = Fenced::new();
    let mut tokens: HashMap<&str, (i64, &Company)> = HashMap::new();
    if wp.leases.enabled() {
        let mut seen = HashSet::new();
        for (company, _) in ops {
            if !seen.insert(&*company.id) {
                continue;
            }
            if let LeaseState::Pending { .. } = company.lease() {
                // Opened during an outage, or replaying a journal: take the lease before
                // anything of the company is written.
                match wp.leases.acquire(&wp.db, &wp.metrics, company).await {
                    Ok(()) => {}
                    Err(e) if lease::is_locked(&e) => {
                        wp.leases
                            .mark_lost(&wp.cache, company, None, e.message().to_string());
                    }
                    Err(e) => return Err(e),
                }
            }
            match company.lease_token() {
                Ok(Some(t)) => {
                    tokens.insert(&company.id, (t, company));
                }
                Ok(None) => {}
                Err(_) => {
                    fenced.insert(company.id.to_string());
                }
            }
        }
    }
    let live: Vec<(&Company, &Op)> = ops
        .iter()
        .filter(|(c, _)| !fenced.contains(&*c.id))
        .copied()
        .collect();
    let mut steps = plan(&live, wp.ttl());
    for step in steps.iter_mut() {
        if let Step::Upsert(u) = step {
            for c in u.companies() {
                if let Some((t, _)) = tokens.get(c) {
                    u.fence_company.push(c);
                    u.fence_token.push(*t);
                }
            }
        }
    }
    if steps.is_empty() {
        return Ok(fenced);
    }
    let tokens_ref = &tokens;
    let newly = wp
        .db
        .call("write", async |client| {
            if let [step] = steps.as_slice() {
                return run_step(&*client, step, tokens_ref).await;
            }
            let tx = client.transaction().await?;
            let mut out = Vec::new();
            for step in &steps {
                out.extend(run_step(&tx, step, tokens_ref).await?);
            }
            tx.commit().await?;
            Ok(out)
        })
        .await?;
    for id in newly {
        if let Some((t, company)) = tokens.get(&*id) {
            wp.leases
                .mark_lost(&wp.cache, company, Some(*t), wp.leases.taken_over(&id));
        }
        fenced.insert(id);
    }
    Ok(fenced)
}

/// Runs one step; returns the companies it fenced.
async fn run_step(
    client: &impl deadpool_postgres::GenericClient,
    step: &Step<'_>,
    tokens: &HashMap<&str, (i64, &Company)>,
) -> Result<Vec<String>> {
    match step {
        Step::Clear(company) => {
            let token = tokens.get(company).map(|(t, _)| *t);
            Ok(if sql::clear(client, company, token).await? {
                Vec::new()
            } else {
                vec![company.to_string()]
            })
        }
        Step::Upsert(u) => sql::upsert(client, u).await,
    }
}

/// The answer to a caller whose call was part of a commit that fenced `fenced`.
pub(crate) fn outcome(company: &Company, fenced: &Fenced) -> Result<()> {
    if !fenced.contains(&*company.id) {
        return Ok(());
    }
    Err(Error::locked(match company.lease_token() {
        Err(why) => why,
        Ok(_) => format!("company {}: the lease is not ours", company.id),
    }))
}

/// Updates the cache and write epochs after `ops` committed, in call order (fenced companies
/// were not written: their cache was dropped when they were marked lost).
pub(crate) fn apply_committed(wp: &WritePath, ops: &[(&Company, &Op)], fenced: &Fenced) {
    for (company, op) in ops {
        if fenced.contains(&*company.id) {
            continue;
        }
        company.bump_epoch();
        match op {
            Op::Keys(writes) => {
                for w in writes {
                    wp.cache.put(
                        cache::key_of(&company.id, &w.key_type, &w.key_id),
                        w.value.clone(),
                    );
                }
            }
            Op::Creds(v) => {
                wp.cache.put(cache::creds_key(&company.id), Some(v.clone()));
                company.set_last_creds(Some(v.clone()));
            }
            Op::Clear => {
                wp.cache.remove_company(&company.id);
                wp.cache.put(cache::creds_key(&company.id), None);
                company.set_last_creds(None);
            }
        }
    }
}
