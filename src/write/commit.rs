//! Applying merged writes to PostgreSQL, and to memory once they are committed.

use std::collections::{HashMap, HashSet};

use crate::cache;
use crate::company::Company;
use crate::db::prepared::Stmts;
use crate::db::sql;
use crate::directory::{key_hash, Change};
use crate::error::{Error, Result};
use crate::lease;

use super::merge::{plan, Step};
use super::{Op, WritePath};

/// Companies of a commit of which nothing was written because their lease is not ours
/// (another holder took it, or refused it to a pending company). They are marked lost.
pub(crate) type Fenced = HashSet<String>;

/// Takes the lease of every company of `ops` that is still pending (opened during an outage,
/// or replaying a journal) and returns the companies not to write: those whose lease is lost.
pub(crate) async fn take_pending_leases(wp: &WritePath, ops: &[(&Company, &Op)]) -> Result<Fenced> {
    let mut fenced = Fenced::new();
    if !wp.leases.enabled() {
        return Ok(fenced);
    }
    let mut seen = HashSet::new();
    for (company, _) in ops {
        if !seen.insert(&*company.id) {
            continue;
        }
        if company.lease_unacquired() {
            match wp.leases.acquire(&wp.db, &wp.metrics, company).await {
                Ok(()) => {}
                Err(e) if lease::is_locked(&e) => {
                    wp.leases
                        .mark_lost(&wp.cache, company, None, e.message().to_string());
                }
                Err(e) => return Err(e),
            }
        }
        if company.lease_token().is_err() {
            fenced.insert(company.id.to_string());
        }
    }
    Ok(fenced)
}

/// True when every company of `ops` can be written without an await first (its lease is held
/// or off): what a pipelined write needs, since its statement must leave on the first poll.
pub(crate) fn leases_ready(ops: &[(&Company, &Op)]) -> bool {
    ops.iter().all(|(c, _)| !c.lease_unacquired())
}

/// The lease token of each leased company of `ops` that is not in `fenced`.
pub(crate) type Tokens<'a> = HashMap<&'a str, (i64, &'a Company)>;

/// The statements for `ops` without the `fenced` companies, each upsert fenced by the lease
/// tokens of its companies (pure; no I/O). Companies found lost here join `fenced`.
pub(crate) fn fenced_steps<'a>(
    wp: &WritePath,
    ops: &[(&'a Company, &'a Op)],
    fenced: &mut Fenced,
) -> (Vec<Step<'a>>, Tokens<'a>) {
    let mut tokens = Tokens::new();
    for (company, _) in ops {
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
    (steps, tokens)
}

/// Marks the companies a statement fenced as lost and adds them to `fenced`.
pub(crate) fn record_fenced(
    wp: &WritePath,
    newly: Vec<String>,
    tokens: &Tokens<'_>,
    fenced: &mut Fenced,
) {
    for id in newly {
        if let Some((t, company)) = tokens.get(&*id) {
            wp.leases
                .mark_lost(&wp.cache, company, Some(*t), wp.leases.taken_over(&id));
        }
        fenced.insert(id);
    }
}

/// Applies `ops` atomically: one statement when they merge into one, else one transaction.
/// Leased companies are fenced: a company whose lease is no longer ours is not written and is
/// returned in [`Fenced`] (and marked lost); the other companies' writes commit.
pub(crate) async fn commit(wp: &WritePath, ops: &[(&Company, &Op)]) -> Result<Fenced> {
    let mut fenced = take_pending_leases(wp, ops).await?;
    let (steps, tokens) = fenced_steps(wp, ops, &mut fenced);
    if steps.is_empty() {
        return Ok(fenced);
    }
    let tokens_ref = &tokens;
    let newly = wp
        .db
        .call("write", async |client| {
            // Its own handle on the connection's cache: the transaction borrows the client.
            let cache = client.statement_cache.clone();
            let how = wp.db.stmts(&cache);
            if let [step] = steps.as_slice() {
                return run_step(&***client, how, step, tokens_ref).await;
            }
            let tx = client.transaction().await?;
            let mut out = Vec::new();
            for step in &steps {
                out.extend(run_step(&*tx, how, step, tokens_ref).await?);
            }
            tx.commit().await?;
            Ok(out)
        })
        .await?;
    record_fenced(wp, newly, &tokens, &mut fenced);
    Ok(fenced)
}

/// Runs one step; returns the companies it fenced.
pub(crate) async fn run_step(
    client: &impl tokio_postgres::GenericClient,
    how: Stmts<'_>,
    step: &Step<'_>,
    tokens: &Tokens<'_>,
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
        Step::Upsert(u) => sql::upsert(client, how, u).await,
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
                company.directory_apply(writes.iter().map(|w| {
                    let h = key_hash(&w.key_type, &w.key_id);
                    if w.value.is_some() {
                        Change::Put(h)
                    } else {
                        Change::Delete(h)
                    }
                }));
            }
            Op::Creds(v) => {
                wp.cache.put(cache::creds_key(&company.id), Some(v.clone()));
                company.set_last_creds(Some(v.clone()));
            }
            Op::Clear => {
                company.directory_apply([Change::Clear]);
                wp.cache.remove_company(&company.id);
                wp.cache.put(cache::creds_key(&company.id), None);
                company.set_last_creds(None);
            }
        }
    }
}
