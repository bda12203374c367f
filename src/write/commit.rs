//! Applying merged writes to PostgreSQL, and to memory once they are committed.

use crate::cache;
use crate::company::Company;
use crate::db::sql;
use crate::directory::{key_hash, Change};
use crate::error::Result;

use super::merge::{plan, Step};
use super::{Op, WritePath};

/// Applies `ops` atomically: one statement when they merge into one, else one transaction.
pub(crate) async fn commit(wp: &WritePath, ops: &[(&Company, &Op)]) -> Result<()> {
    let steps = plan(ops, wp.ttl());
    if steps.is_empty() {
        return Ok(());
    }
    wp.db
        .call("write", async |client| {
            if let [step] = steps.as_slice() {
                let plain: &tokio_postgres::Client = client;
                return run_step(plain, step).await;
            }
            let tx = client.transaction().await?;
            for step in &steps {
                run_step(&*tx, step).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
}

pub(crate) async fn run_step(
    client: &impl tokio_postgres::GenericClient,
    step: &Step<'_>,
) -> Result<()> {
    match step {
        Step::Clear(company) => sql::clear(client, company).await,
        Step::Upsert(u) => sql::upsert(client, u).await,
    }
}

/// Updates the cache and write epochs after `ops` committed, in call order.
pub(crate) fn apply_committed(wp: &WritePath, ops: &[(&Company, &Op)]) {
    for (company, op) in ops {
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
