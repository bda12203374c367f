//! The write path: writer lanes, group commit, and the SQL that applies writes.
//!
//! Every write (`set`, `save_creds`, `clear`) is a [`Request`] sent to the lane of its company
//! (`hash(company) % lanes`), so one company's calls are applied in call order. A lane takes the
//! first waiting request plus every other one already queued (group commit), merges them (last
//! write of a key wins, deletes included) and applies them with one statement, one round trip.
//! Each caller is answered only after the commit. If a merged commit fails for a reason other
//! than connectivity, the requests are retried one by one, so each caller learns the outcome
//! of its own data. Connectivity failures hand the requests to [`crate::outage`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::Type;

use crate::cache;
use crate::error::{Error, Result};
use crate::store::{Company, Inner};
use crate::value::{KeyWrite, StoredValue};

/// Most keys merged into one group commit.
pub(crate) const MAX_BATCH_KEYS: usize = 20_000;

/// What one call asks to write.
#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// Upserts and deletes of one `set`.
    Keys(Vec<KeyWrite>),
    /// A new creds object.
    Creds(StoredValue),
    /// Delete every key and the creds of the company.
    Clear,
}

impl Op {
    pub(crate) fn weight(&self) -> usize {
        match self {
            Op::Keys(w) => w.len().max(1),
            Op::Creds(_) | Op::Clear => 1,
        }
    }

    /// Bytes of value text, for the pending-write bound.
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Op::Keys(w) => w
                .iter()
                .map(|k| {
                    k.key_id.len() + k.key_type.len() + k.value.as_ref().map_or(0, StoredValue::len)
                })
                .sum(),
            Op::Creds(v) => v.len(),
            Op::Clear => 0,
        }
    }
}

/// One call waiting for its commit.
pub(crate) struct Request {
    pub(crate) company: Arc<Company>,
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<Result<()>>,
}

/// Resolves when the write it stands for is committed (or safely kept during an outage).
#[must_use = "a write is only known to be saved once its ticket resolves"]
pub struct WriteTicket {
    rx: Option<oneshot::Receiver<Result<()>>>,
    timing: Option<(Arc<Inner>, &'static str, Instant)>,
}

impl std::fmt::Debug for WriteTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTicket").finish_non_exhaustive()
    }
}

impl WriteTicket {
    pub(crate) fn new(rx: oneshot::Receiver<Result<()>>) -> WriteTicket {
        WriteTicket {
            rx: Some(rx),
            timing: None,
        }
    }

    /// A ticket for a write that needed no database work (e.g. an empty `set`).
    pub(crate) fn done() -> WriteTicket {
        WriteTicket {
            rx: None,
            timing: None,
        }
    }

    /// Records the latency from now to the outcome under `kind` when the ticket is waited on.
    pub(crate) fn timed(mut self, inner: Arc<Inner>, kind: &'static str) -> WriteTicket {
        self.timing = Some((inner, kind, Instant::now()));
        self
    }

    /// Waits for the commit and returns its outcome.
    pub async fn wait(self) -> Result<()> {
        let result = match self.rx {
            None => Ok(()),
            Some(rx) => rx.await.unwrap_or_else(|_| {
                Err(Error::closed("the store closed before the write finished"))
            }),
        };
        if let Some((inner, kind, started)) = self.timing {
            inner
                .metrics
                .record(kind, started.elapsed(), result.is_ok());
        }
        result
    }
}

/// Runs one writer lane until its channel closes (store close), draining what is queued.
pub(crate) async fn lane(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Request>, group: bool) {
    let mut carry: Option<Request> = None;
    loop {
        let first = match carry.take() {
            Some(r) => r,
            None => match rx.recv().await {
                Some(r) => r,
                None => break,
            },
        };
        let mut batch = vec![first];
        if group && !matches!(batch[0].op, Op::Clear) {
            let mut keys = batch[0].op.weight();
            while keys < MAX_BATCH_KEYS {
                match rx.try_recv() {
                    Ok(r) if matches!(r.op, Op::Clear) => {
                        carry = Some(r);
                        break;
                    }
                    Ok(r) => {
                        keys += r.op.weight();
                        batch.push(r);
                    }
                    Err(_) => break,
                }
            }
        }
        process(&inner, batch).await;
    }
}

/// Commits a batch and answers its callers.
async fn process(inner: &Arc<Inner>, mut batch: Vec<Request>) {
    if inner.outage.is_down() {
        match inner.outage.divert(batch, None) {
            None => return,
            // The outage ended while we looked: commit normally.
            Some(b) => batch = b,
        }
    }
    let ops: Vec<(&Company, &Op)> = batch.iter().map(|r| (&*r.company, &r.op)).collect();
    let started = Instant::now();
    let result = commit(inner, &ops).await;
    inner
        .metrics
        .record("commit", started.elapsed(), result.is_ok());
    match result {
        Ok(()) => {
            apply_committed(inner, &ops);
            for r in batch {
                let _ = r.reply.send(Ok(()));
            }
        }
        Err(e) if e.is_unavailable() => {
            inner.outage.enter(&e);
            if let Some(batch) = inner.outage.divert(batch, Some(&e)) {
                // Recovered in the meantime: try again.
                Box::pin(process(inner, batch)).await;
            }
        }
        Err(_) if batch.len() > 1 => {
            // One caller's data broke the merged commit: give each its own outcome.
            for r in batch {
                Box::pin(process(inner, vec![r])).await;
            }
        }
        Err(e) => {
            for r in batch {
                let _ = r.reply.send(Err(e.clone()));
            }
        }
    }
}

/// Updates the cache and write epochs after `ops` committed, in call order.
pub(crate) fn apply_committed(inner: &Inner, ops: &[(&Company, &Op)]) {
    for (company, op) in ops {
        company.bump_epoch();
        match op {
            Op::Keys(writes) => {
                for w in writes {
                    inner.cache.put(
                        cache::key_of(&company.id, &w.key_type, &w.key_id),
                        w.value.clone(),
                    );
                }
            }
            Op::Creds(v) => {
                inner
                    .cache
                    .put(cache::creds_key(&company.id), Some(v.clone()));
                company.set_last_creds(Some(v.clone()));
            }
            Op::Clear => {
                inner.cache.remove_company(&company.id);
                inner.cache.put(cache::creds_key(&company.id), None);
                company.set_last_creds(None);
            }
        }
    }
}

/// Key writes and creds merged from consecutive calls: the last write of a key wins.
#[derive(Default)]
struct Merged<'a> {
    keys: HashMap<(&'a str, &'a str, &'a str), Option<&'a StoredValue>>,
    creds: HashMap<&'a str, &'a StoredValue>,
}

/// One statement's worth of work.
enum Step<'a> {
    Upsert(Merged<'a>),
    Clear(&'a str),
}

/// Splits `ops` into statements: runs of key/creds writes merged into one, clears alone.
fn plan<'a>(ops: &[(&'a Company, &'a Op)]) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    let mut cur = Merged::default();
    for (company, op) in ops {
        match op {
            Op::Keys(writes) => {
                for w in writes {
                    cur.keys
                        .insert((&company.id, &w.key_type, &w.key_id), w.value.as_ref());
                }
            }
            Op::Creds(v) => {
                cur.creds.insert(&company.id, v);
            }
            Op::Clear => {
                if !cur.keys.is_empty() || !cur.creds.is_empty() {
                    steps.push(Step::Upsert(std::mem::take(&mut cur)));
                }
                steps.push(Step::Clear(&company.id));
            }
        }
    }
    if !cur.keys.is_empty() || !cur.creds.is_empty() {
        steps.push(Step::Upsert(cur));
    }
    steps
}

const UPSERT_SQL: &str = "
WITH del AS (
    DELETE FROM whatsapp_keys k
    USING unnest($1::text[], $2::text[], $3::text[]) AS d(c, t, i)
    WHERE k.company_id = d.c AND k.key_type = d.t AND k.key_id = d.i
    RETURNING 1
), ups AS (
    INSERT INTO whatsapp_keys AS k (company_id, key_type, key_id, value, updated_at, expires_at)
    SELECT u.c, u.t, u.i, u.v::jsonb, now(), now() + make_interval(secs => u.ttl)
    FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::float8[]) AS u(c, t, i, v, ttl)
    ON CONFLICT (company_id, key_type, key_id) DO UPDATE
        SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
    RETURNING 1
), creds AS (
    INSERT INTO whatsapp_auth AS a (company_id, creds, updated_at)
    SELECT c.c, c.v::jsonb, now() FROM unnest($9::text[], $10::text[]) AS c(c, v)
    ON CONFLICT (company_id) DO UPDATE SET creds = EXCLUDED.creds, updated_at = EXCLUDED.updated_at
        WHERE a.creds IS DISTINCT FROM EXCLUDED.creds
    RETURNING 1
)
SELECT (SELECT count(*) FROM del), (SELECT count(*) FROM ups), (SELECT count(*) FROM creds)";

const UPSERT_TYPES: &[Type] = &[
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::FLOAT8_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
];

const CLEAR_SQL: &str = "
WITH k AS (DELETE FROM whatsapp_keys WHERE company_id = $1 RETURNING 1)
DELETE FROM whatsapp_auth WHERE company_id = $1";

/// Applies `ops` atomically: one statement when they merge into one, else one transaction.
pub(crate) async fn commit(inner: &Inner, ops: &[(&Company, &Op)]) -> Result<()> {
    let steps = plan(ops);
    if steps.is_empty() {
        return Ok(());
    }
    let bound = inner.call_timeout();
    let mut client = inner.client().await?;
    let fut = async {
        if steps.len() == 1 {
            run_step(inner, &client, &steps[0]).await
        } else {
            let tx = client.transaction().await?;
            for step in &steps {
                run_step(inner, &tx, step).await?;
            }
            tx.commit().await?;
            Ok(())
        }
    };
    let result = crate::store::bounded(bound, "write", fut).await;
    if let Err(e) = &result {
        crate::store::discard_if_broken(client, e);
    }
    result
}

async fn run_step(
    inner: &Inner,
    client: &impl deadpool_postgres::GenericClient,
    step: &Step<'_>,
) -> Result<()> {
    match step {
        Step::Clear(company) => {
            let stmt = client
                .prepare_typed_cached(CLEAR_SQL, &[Type::TEXT])
                .await?;
            client.execute(&stmt, &[company]).await?;
        }
        Step::Upsert(m) => {
            let (mut dc, mut dt, mut di) = (Vec::new(), Vec::new(), Vec::new());
            let n = m.keys.len();
            let (mut uc, mut ut, mut ui, mut uv, mut ttl) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for ((c, t, i), v) in &m.keys {
                match v {
                    None => {
                        dc.push(*c);
                        dt.push(*t);
                        di.push(*i);
                    }
                    Some(v) => {
                        uc.push(*c);
                        ut.push(*t);
                        ui.push(*i);
                        uv.push(v.as_str());
                        ttl.push(ttl_secs(inner.config.ttl.ttl(t)));
                    }
                }
            }
            let cc: Vec<&str> = m.creds.keys().copied().collect();
            let cv: Vec<&str> = m.creds.values().map(|v| v.as_str()).collect();
            let stmt = client
                .prepare_typed_cached(UPSERT_SQL, UPSERT_TYPES)
                .await?;
            client
                .query_one(&stmt, &[&dc, &dt, &di, &uc, &ut, &ui, &uv, &ttl, &cc, &cv])
                .await?;
        }
    }
    Ok(())
}

fn ttl_secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
