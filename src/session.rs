//! [`Session`]: one company's auth state, the object Baileys' `keys.get`/`keys.set` and
//! `saveCreds` map onto.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use crate::cache;
use crate::company::Company;
use crate::db::sql;
use crate::error::{Error, Result};
use crate::validate;
use crate::value::{json_object, json_pairs, parse_writes, KeyWrite, StoredValue};
use crate::write::{OnWritten, Op, WritePath, WriteTicket};

/// One company's state: creds and Signal keys. Cheap to clone; clones share the company's
/// write order and cache.
#[derive(Clone)]
pub struct Session {
    wp: Arc<WritePath>,
    company: Arc<Company>,
    /// Keeps the store running while a session is alive, even if every `Store` was dropped.
    _guard: Arc<dyn Send + Sync>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("company_id", &&*self.company.id)
            .finish_non_exhaustive()
    }
}

/// What memory knows of one key: `None` nothing (ask the database), `Some(None)` that it is
/// absent, `Some(Some(v))` its value.
type Known = Option<cache::Cached>;

impl Session {
    pub(crate) fn new(
        wp: Arc<WritePath>,
        company: Arc<Company>,
        guard: Arc<dyn Send + Sync>,
    ) -> Session {
        Session {
            wp,
            company,
            _guard: guard,
        }
    }

    /// The validated company id.
    pub fn company_id(&self) -> &str {
        &self.company.id
    }

    /// Refuses calls once the store is closed, and once this company's lease was lost
    /// (another store took it over: serving this process's memory could be stale).
    fn check_open(&self) -> Result<()> {
        if self.wp.is_closed() {
            return Err(Error::closed("the store is closed"));
        }
        self.company.lease_token().map_err(Error::locked)?;
        Ok(())
    }

    /// True once another store took this company's lease over: every call fails with
    /// `LOCKED`; open a session again (or [`crate::Store::session_wait`]) to get it back.
    pub fn lease_lost(&self) -> bool {
        matches!(
            self.company.lease(),
            crate::company::LeaseState::Lost { .. }
        )
    }

    /// Loads the creds object, `None` when the company has none yet. Served from memory when
    /// cached (also during an outage).
    pub async fn load_creds(&self) -> Result<Option<StoredValue>> {
        self.check_open()?;
        let started = Instant::now();
        let result = self.load_creds_inner().await;
        self.wp
            .metrics
            .record_result("creds_load", started.elapsed(), &result);
        result
    }

    /// What memory knows of the creds: pending outage writes, then the cache, then what this
    /// process last loaded or committed (kept while a session of the company is open even if
    /// the LRU evicted it, so an account opened before an outage keeps its creds). `None`: ask
    /// the database.
    fn creds_in_memory(&self) -> Known {
        let key = cache::creds_key(&self.company.id);
        self.wp
            .outage
            .overlay_get(&self.company.id, &key)
            .or_else(|| self.wp.cache.get(&key))
            .or_else(|| self.company.last_creds().map(Some))
    }

    async fn load_creds_inner(&self) -> Result<Option<StoredValue>> {
        if let Some(v) = self.creds_in_memory() {
            return Ok(v);
        }
        self.wp.outage.check_reads()?;
        let epoch = self.company.epoch();
        let company = &*self.company.id;
        // `&***c`: pooled object -> deadpool's wrapper -> the tokio-postgres client that
        // `sql` takes (its `query_typed` is not on deadpool's own GenericClient).
        let db = &self.wp.db;
        let value = self
            .read("read creds", async |c| {
                sql::get_creds(&***c, db.stmts(&c.statement_cache), company).await
            })
            .await?;
        if self.company.epoch() == epoch {
            self.wp
                .cache
                .put(cache::creds_key(&self.company.id), value.clone());
            self.company.set_last_creds(value.clone());
        }
        Ok(value)
    }

    /// Saves the creds object; returns `false` without touching the database when it equals
    /// what was last loaded or saved.
    pub async fn save_creds(&self, creds: StoredValue) -> Result<bool> {
        match self.save_creds_begin(creds)? {
            None => Ok(false),
            Some(t) => t.wait().await.map(|()| true),
        }
    }

    /// Enqueues a creds save (call order is commit order); `None` when unchanged.
    pub fn save_creds_begin(&self, creds: StoredValue) -> Result<Option<WriteTicket>> {
        self.creds_op(creds)?
            .map(|op| self.timed("creds_save", op))
            .transpose()
    }

    /// Like [`Session::save_creds_begin`], the outcome handed to `on_written` (see
    /// [`OnWritten`]). Returns `false`, and does not run `on_written`, when the creds are
    /// unchanged; an error, and `on_written` is not run, when nothing was enqueued.
    pub fn save_creds_then(&self, creds: StoredValue, on_written: OnWritten) -> Result<bool> {
        match self.creds_op(creds)? {
            None => Ok(false),
            Some(op) => self.timed_then("creds_save", op, on_written).map(|()| true),
        }
    }

    /// The write of a creds save, or `None` when the creds equal what was last loaded or saved.
    fn creds_op(&self, creds: StoredValue) -> Result<Option<Op>> {
        self.check_open()?;
        if let Some(Some(last)) = self.creds_in_memory() {
            // jsonb gives keys back in its own order, so equal text is the fast path and
            // equal trees (order-insensitive maps) the real test.
            if last == creds || last.to_value() == creds.to_value() {
                return Ok(None);
            }
        }
        Ok(Some(Op::Creds(creds)))
    }

    /// Reads the values of `ids` of one key type with one query for whatever the cache does not
    /// hold. Ids that do not exist are absent from the answer; a database failure is an error,
    /// never an empty answer. The answer follows the order of `ids`, without duplicates.
    pub async fn get<S: AsRef<str> + Sync>(
        &self,
        key_type: &str,
        ids: &[S],
    ) -> Result<Vec<(String, StoredValue)>> {
        self.check_open()?;
        let started = Instant::now();
        let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
        let result = self.get_inner(key_type, &ids).await;
        self.wp
            .metrics
            .record_result("get", started.elapsed(), &result);
        result
    }

    /// Validates a `get` and de-duplicates its ids (first occurrence wins), each with what
    /// memory knows of it (see [`Session::in_memory`]; `None`: ask the database).
    fn look_up_in_memory<'a>(
        &self,
        key_type: &str,
        ids: &[&'a str],
        count: bool,
    ) -> Result<Vec<(&'a str, Known)>> {
        validate_get(key_type, ids)?;
        let mut seen = HashSet::with_capacity(ids.len());
        // The key directory proves which ids were never stored: those are absent without
        // asking the database. Always during an outage (only a key that exists but is not in
        // memory fails), and while this process holds the company's lease: it is then the only
        // writer, and every commit (its own) keeps the directory exact. Baileys reads absent
        // keys all the time (the session of every new contact, sender keys of new groups):
        // over a 20-50 ms link each of those was a round trip.
        let directory_knows = self.wp.outage.is_down() || self.company.holds_lease();
        Ok(ids
            .iter()
            .filter(|id| seen.insert(**id))
            .map(|&id| {
                let known = self.in_memory(key_type, id, count).or_else(|| {
                    (directory_knows
                        && self.company.directory().contains(key_type, id) == Some(false))
                    .then_some(None)
                });
                (id, known)
            })
            .collect())
    }

    async fn get_inner(&self, key_type: &str, ids: &[&str]) -> Result<Vec<(String, StoredValue)>> {
        let looked_up = self.look_up_in_memory(key_type, ids, true)?;
        let missing: Vec<&str> = looked_up
            .iter()
            .filter(|(_, m)| m.is_none())
            .map(|(id, _)| *id)
            .collect();
        let mut known: Vec<(&str, Option<StoredValue>)> = looked_up
            .into_iter()
            .map(|(id, m)| (id, m.flatten()))
            .collect();
        if !missing.is_empty() {
            if let Some(fill) = self
                .read_missing(key_type, &missing, usize::MAX, |_| Ok(()))
                .await?
            {
                let found: std::collections::HashMap<&str, &StoredValue> =
                    fill.found.iter().map(|(id, v)| (id.as_str(), v)).collect();
                for slot in known.iter_mut() {
                    if slot.1.is_none() {
                        slot.1 = found.get(slot.0).map(|v| (*v).clone());
                    }
                }
                drop(found);
                self.fill_cache(key_type, fill);
            }
        }
        Ok(known
            .into_iter()
            .filter_map(|(id, v)| v.map(|v| (id.to_string(), v)))
            .collect())
    }

    /// What memory (pending outage writes, then the cache) knows of one key: `None` when it
    /// knows nothing, `Some(None)` when the key is known to be absent.
    fn in_memory(&self, key_type: &str, id: &str, count: bool) -> Known {
        let key = cache::key_of(&self.company.id, key_type, id);
        self.wp
            .outage
            .overlay_get(&self.company.id, &key)
            .or_else(|| self.wp.cache.lookup(&key, count))
    }

    /// [`Session::get`] as one JSON object text, `{"id": value, ...}`, for the bindings.
    pub async fn get_json<S: AsRef<str> + Sync>(
        &self,
        key_type: &str,
        ids: &[S],
    ) -> Result<String> {
        json_object(&self.get(key_type, ids).await?)
    }

    /// [`Session::get_json`] answered from memory alone, without waiting: `Ok(None)` when any id
    /// is not in memory (then call `get_json`). The hot path of a Signal session needs no
    /// database round trip, and a binding can skip its async hop for it.
    pub fn get_json_cached<S: AsRef<str>>(
        &self,
        key_type: &str,
        ids: &[S],
    ) -> Result<Option<String>> {
        self.check_open()?;
        let started = Instant::now();
        let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
        let looked_up = self.look_up_in_memory(key_type, &ids, false)?;
        let mut found = Vec::with_capacity(looked_up.len());
        for (id, known) in &looked_up {
            match known {
                None => return Ok(None),
                Some(None) => {}
                Some(Some(v)) => found.push((id.to_string(), v.clone())),
            }
        }
        self.wp.cache.count_hits(looked_up.len() as u64);
        let out = json_object(&found)?;
        self.wp.metrics.record("get", started.elapsed(), true);
        Ok(Some(out))
    }

    /// [`Session::get_json`] in parts, for a binding that revives values on another thread
    /// (Node's JSON.parse runs on its one JS thread): each part is `["id", value, ...]` text (a
    /// flat array of id, value pairs, `value::json_pairs`), what memory knows first, then the
    /// database's rows in groups of `part_rows` as they arrive, so the first parts are revived
    /// while PostgreSQL still sends the rest. A `get` of 1,000 session records spent as long in
    /// JSON.parse after the query as in the query.
    ///
    /// Bad input fails here, before anything runs. The answer is the same as `get_json`'s
    /// (ids in another order); a failure arrives as the last part, after which the parts
    /// before it must be dropped. It spawns the read on the current tokio runtime; outside one it
    /// fails with `INTERNAL`.
    pub fn get_json_parts(
        &self,
        key_type: &str,
        ids: Vec<String>,
        part_rows: usize,
    ) -> Result<GetParts> {
        self.check_open()?;
        validate_get(key_type, &ids)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::internal("Session::get_json_parts must be called within a tokio runtime")
        })?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let session = self.clone();
        let key_type = key_type.to_string();
        runtime.spawn(async move {
            use futures_util::FutureExt;
            let started = Instant::now();
            let read = session.get_parts_inner(&key_type, &ids, part_rows, &tx);
            // The receiver must hear of a panic: it would wait forever for the last part.
            let result = std::panic::AssertUnwindSafe(read)
                .catch_unwind()
                .await
                .unwrap_or_else(|p| {
                    Err(Error::internal(format!(
                        "panic in a get: {}",
                        crate::write::panic_text(p.as_ref())
                    )))
                });
            session
                .wp
                .metrics
                .record_result("get", started.elapsed(), &result);
            match result {
                Ok(fill) => {
                    // The caller has it all: end the answer before filling the cache (1,000
                    // entries took ~2 ms between the last part and the end).
                    drop(tx);
                    if let Some(fill) = fill {
                        session.fill_cache(&key_type, fill);
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                }
            }
        });
        Ok(GetParts(rx))
    }

    async fn get_parts_inner(
        &self,
        key_type: &str,
        ids: &[String],
        part_rows: usize,
        tx: &tokio::sync::mpsc::UnboundedSender<Result<String>>,
    ) -> Result<Option<CacheFill>> {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut missing = Vec::new();
        let mut known = Vec::new();
        for (id, k) in self.look_up_in_memory(key_type, &ids, true)? {
            match k {
                None => missing.push(id),
                Some(Some(v)) => known.push((id.to_string(), v)),
                Some(None) => {}
            }
        }
        // A closed receiver (the caller went away) only means nobody reads the answer.
        let send = |part: &[(String, StoredValue)]| -> Result<()> {
            let _ = tx.send(Ok(json_pairs(part)?));
            Ok(())
        };
        if !known.is_empty() {
            send(&known)?;
        }
        if missing.is_empty() {
            return Ok(None);
        }
        self.read_missing(key_type, &missing, part_rows, send).await
    }

    /// Reads `missing` ids from the database (see `sql::get_keys`), handing each group of rows
    /// to `on_part` as it arrives; returns what to cache. `Ok(None)`: the read met a failure
    /// before it handed anything out and the key directory proves none of these keys was ever
    /// stored, so they are absent (the read that starts an outage is answered like every read
    /// after it); a stored key that is not in memory still fails.
    async fn read_missing(
        &self,
        key_type: &str,
        missing: &[&str],
        part_rows: usize,
        mut on_part: impl FnMut(&[(String, StoredValue)]) -> Result<()>,
    ) -> Result<Option<CacheFill>> {
        self.wp.outage.check_reads()?;
        let epoch = self.company.epoch();
        let company = &*self.company.id;
        let db = &self.wp.db;
        let mut found = Vec::new();
        let read = self
            .read("read keys", async |c| {
                let how = db.stmts(&c.statement_cache);
                sql::get_keys(&***c, how, company, key_type, missing, part_rows, |part| {
                    on_part(&part)?;
                    found.extend(part);
                    Ok(())
                })
                .await
            })
            .await;
        match read {
            Ok(()) => {}
            Err(e) if e.is_unavailable() && found.is_empty() => {
                let dir = self.company.directory();
                if missing
                    .iter()
                    .all(|id| dir.contains(key_type, id) == Some(false))
                {
                    return Ok(None);
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        Ok(Some(CacheFill {
            epoch,
            missing: missing.iter().map(|id| id.to_string()).collect(),
            found,
        }))
    }

    /// Caches what a read found (and which ids it proved absent), unless a write of the
    /// company happened meanwhile: the values read may be older than it.
    fn fill_cache(&self, key_type: &str, fill: CacheFill) {
        if self.company.epoch() != fill.epoch {
            return;
        }
        let mut found: std::collections::HashMap<String, StoredValue> =
            fill.found.into_iter().collect();
        for id in &fill.missing {
            self.wp.cache.put(
                cache::key_of(&self.company.id, key_type, id),
                found.remove(id),
            );
        }
    }

    /// Applies upserts and deletes atomically; returns after the commit.
    pub async fn set(&self, writes: Vec<KeyWrite>) -> Result<()> {
        self.set_begin(writes)?.wait().await
    }

    /// Enqueues a `set` (validated already by [`KeyWrite`]); call order is commit order.
    pub fn set_begin(&self, writes: Vec<KeyWrite>) -> Result<WriteTicket> {
        match self.set_op(writes)? {
            None => Ok(WriteTicket::done()),
            Some(op) => self.timed("set", op),
        }
    }

    /// Like [`Session::set_begin`], the outcome handed to `on_written` (see [`OnWritten`]):
    /// an error, and `on_written` is not run, when nothing was enqueued; else `on_written` runs
    /// once with the outcome (at once for an empty `set`).
    pub fn set_then(&self, writes: Vec<KeyWrite>, on_written: OnWritten) -> Result<()> {
        match self.set_op(writes)? {
            None => {
                on_written(Ok(()));
                Ok(())
            }
            Some(op) => self.timed_then("set", op, on_written),
        }
    }

    /// The write of a `set`, or `None` when it writes nothing.
    fn set_op(&self, writes: Vec<KeyWrite>) -> Result<Option<Op>> {
        self.check_open()?;
        if writes.len() > validate::MAX_KEYS_PER_SET {
            return Err(Error::invalid(format!(
                "set: more than {} keys in one call",
                validate::MAX_KEYS_PER_SET
            )));
        }
        Ok((!writes.is_empty()).then_some(Op::Keys(writes)))
    }

    /// Parses Baileys' `{"type": {"id": value | null}}` and applies it like [`Session::set`].
    pub async fn set_json(&self, json: &str) -> Result<()> {
        self.set_json_begin(json)?.wait().await
    }

    /// Parses and enqueues a JSON `set`; nothing is enqueued if any part is invalid.
    pub fn set_json_begin(&self, json: &str) -> Result<WriteTicket> {
        self.set_begin(parse_writes(json)?)
    }

    /// Deletes every key and the creds of this company.
    pub async fn clear(&self) -> Result<()> {
        self.clear_begin()?.wait().await
    }

    /// Enqueues a `clear`; call order is commit order.
    pub fn clear_begin(&self) -> Result<WriteTicket> {
        self.check_open()?;
        self.timed("clear", Op::Clear)
    }

    /// Like [`Session::clear_begin`], the outcome handed to `on_written` (see [`OnWritten`]);
    /// an error, and `on_written` is not run, when nothing was enqueued.
    pub fn clear_then(&self, on_written: OnWritten) -> Result<()> {
        self.check_open()?;
        self.timed_then("clear", Op::Clear, on_written)
    }

    /// Submits `op` and records its latency (enqueue to commit) under `kind`.
    fn timed(&self, kind: &'static str, op: Op) -> Result<WriteTicket> {
        let ticket = self.wp.submit(&self.company, op)?;
        Ok(ticket.timed(self.wp.metrics.clone(), kind))
    }

    /// [`Session::timed`] with the outcome handed to `on_written`.
    fn timed_then(&self, kind: &'static str, op: Op, on_written: OnWritten) -> Result<()> {
        let metrics = self.wp.metrics.clone();
        let started = Instant::now();
        let on_written: OnWritten = Box::new(move |r| {
            metrics.record_result(kind, started.elapsed(), &r);
            on_written(r);
        });
        self.wp.submit_then(&self.company, op, on_written)
    }

    /// A read through the one database call helper; a connectivity failure starts outage mode.
    async fn read<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&mut crate::db::Client) -> Result<T>,
    ) -> Result<T> {
        let result = self.wp.db.call(what, f).await;
        if let Err(e) = &result {
            self.wp.on_error(e);
        }
        result
    }
}

/// Checks a `get`'s type and ids before anything runs.
fn validate_get<S: AsRef<str>>(key_type: &str, ids: &[S]) -> Result<()> {
    validate::key_type(key_type)?;
    if ids.len() > validate::MAX_IDS_PER_GET {
        return Err(Error::invalid(format!(
            "get: more than {} ids in one call",
            validate::MAX_IDS_PER_GET
        )));
    }
    for id in ids {
        validate::key_id(id.as_ref())?;
    }
    Ok(())
}

/// What a read from the database leaves for the cache.
struct CacheFill {
    /// The company's write epoch before the read.
    epoch: u64,
    missing: Vec<String>,
    found: Vec<(String, StoredValue)>,
}

/// The answer of [`Session::get_json_parts`], part by part.
#[derive(Debug)]
pub struct GetParts(tokio::sync::mpsc::UnboundedReceiver<Result<String>>);

impl GetParts {
    /// The next part (`["id", value, ...]` JSON text), or `None` after the last one. After an
    /// `Err` nothing follows: the whole `get` failed.
    pub async fn next(&mut self) -> Option<Result<String>> {
        self.0.recv().await
    }
}
