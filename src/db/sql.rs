//! Every SQL statement of the store, each behind a typed function. Rows are read with
//! `try_get`: tables adopted from production were created by hand and may hold NULLs or odd
//! types, and a bad row must be a typed error that names it, never a panic.
//!
//! The statements of every call (`get`, creds, the write) go through [`prepared::query`]:
//! named and cached per connection when the store may (a direct connection), else unnamed
//! (`query_typed`: parse, bind and execute in one round trip). Rare statements (clear, the key
//! directory) are always unnamed. Behind pgbouncer in transaction mode without
//! prepared-statement support (Debian 12 ships 1.18) a named statement prepared in one
//! transaction is bound in another on a different server connection, which fails ("prepared
//! statement does not exist") or, when another process used the same name there, runs that
//! process's statement: see [`crate::PreparedStatements`].

use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, Row};

use super::prepared::{self, Sql, Stmts};
use crate::error::{Error, Result};
use crate::value::StoredValue;

// `::jsonb` is free on a jsonb column; on a hand-made text column it makes PostgreSQL refuse
// text that is not JSON instead of handing it to the caller as a value.
//
// Several ids are always read with an unnamed statement: the generic plan PostgreSQL keeps for
// a named one (chosen after five executions) does not know the array, and once the table's
// statistics show many companies it scans every key of the company and type and filters the
// ids (measured: 1,000 rows read for one id, 0.75 ms instead of 0.05 ms). One id is a named
// statement of its own: equality on the whole primary key is one index probe in any plan.
const GET_KEY: Sql = Sql {
    text: "SELECT key_id, value::jsonb::text FROM whatsapp_keys
    WHERE company_id = $1 AND key_type = $2 AND key_id = $3",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT],
};

const GET_KEYS: Sql = Sql {
    text: "SELECT key_id, value::jsonb::text FROM whatsapp_keys
    WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3::text[])",
    types: &[Type::TEXT, Type::TEXT, Type::TEXT_ARRAY],
};

const GET_CREDS: Sql = Sql {
    text: "SELECT creds::jsonb::text FROM whatsapp_auth WHERE company_id = $1",
    types: &[Type::TEXT],
};

/// The statements worth preparing on every new connection: those of every call. The fenced
/// write only with the lease on (without it the lease table may not exist).
pub(crate) fn hot(lease: bool) -> Vec<&'static Sql> {
    let mut all = vec![&GET_KEY, &GET_CREDS, &UPSERT];
    if lease {
        all.push(&UPSERT_FENCED);
    }
    all
}

/// The statements a write sends (see `Db::pipe_conn`).
pub(crate) fn writes(lease: bool) -> Vec<&'static Sql> {
    let mut all = vec![&UPSERT];
    if lease {
        all.push(&UPSERT_FENCED);
    }
    all
}

/// Reads the values of `ids` of one type with one query; ids that do not exist are absent.
/// The rows go to `part` in groups of `part_rows` as they arrive (the last group smaller), so
/// a caller can use the first while PostgreSQL still sends the rest (`usize::MAX`: one group).
/// A row that cannot be read (NULL, not JSON) fails the whole call with an error naming each
/// bad row, after the groups before it were handed over: the caller must then drop them all
/// (answering without the row would tell the caller the key does not exist).
pub(crate) async fn get_keys(
    client: &impl GenericClient,
    how: Stmts<'_>,
    company: &str,
    key_type: &str,
    ids: &[&str],
    part_rows: usize,
    mut part: impl FnMut(Vec<(String, StoredValue)>) -> Result<()>,
) -> Result<()> {
    use futures_util::{StreamExt, TryStreamExt};
    let named = |e: tokio_postgres::Error| name_rows(e.into(), company, key_type, ids);
    let mut rows = if let [id] = ids {
        let rows = prepared::query(client, how, &GET_KEY, &[&company, &key_type, id])
            .await
            .map_err(named)?;
        futures_util::stream::iter(rows.into_iter().map(Ok)).boxed()
    } else {
        let params: [(&(dyn tokio_postgres::types::ToSql + Sync), Type); 3] = [
            (&company, Type::TEXT),
            (&key_type, Type::TEXT),
            (&ids, Type::TEXT_ARRAY),
        ];
        client
            .query_typed_raw(GET_KEYS.text, params)
            .await
            .map_err(named)?
            .boxed()
    };
    let part_rows = part_rows.max(1);
    let new_group = || Vec::with_capacity(part_rows.min(ids.len()));
    let mut group = new_group();
    let mut bad = Vec::new();
    while let Some(row) = rows.try_next().await.map_err(named)? {
        match key_row(&row) {
            Ok(kv) => group.push(kv),
            Err((id, e)) => bad.push(format!("{key_type} {id}: {}", e.message())),
        }
        if group.len() == part_rows && bad.is_empty() {
            part(std::mem::replace(&mut group, new_group()))?;
        }
    }
    if !bad.is_empty() {
        return Err(Error::database(format!(
            "company {company}: {} stored key(s) cannot be read ({}); the other keys are intact",
            bad.len(),
            bad.join("; ")
        )));
    }
    if !group.is_empty() {
        part(group)?;
    }
    Ok(())
}

/// Names what was read when the server refused a row (e.g. a text column holding non-JSON).
fn name_rows(e: Error, company: &str, key_type: &str, ids: &[&str]) -> Error {
    if e.is_unavailable() {
        return e;
    }
    let shown: Vec<&str> = ids.iter().take(5).copied().collect();
    let more = if ids.len() > shown.len() { ", ..." } else { "" };
    e.context(format!(
        "company {company}: reading {key_type} {}{more}",
        shown.join(", ")
    ))
}

/// One `(key_id, value)` row; on failure the id (or `?`) and why.
fn key_row(row: &Row) -> std::result::Result<(String, StoredValue), (String, Error)> {
    let id = match row.try_get::<_, Option<&str>>(0) {
        Ok(Some(id)) => id,
        Ok(None) => return Err(("?".into(), Error::database("key_id is NULL"))),
        Err(e) => return Err(("?".into(), Error::database(format!("key_id: {e}")))),
    };
    let text = match row.try_get::<_, Option<&str>>(1) {
        Ok(Some(t)) => t,
        Ok(None) => return Err((id.into(), Error::database("value is NULL"))),
        Err(e) => return Err((id.into(), Error::database(format!("value: {e}")))),
    };
    match StoredValue::from_db(text) {
        Ok(v) => Ok((id.to_string(), v)),
        Err(e) => Err((id.into(), e)),
    }
}

/// The creds of `company`, `None` when it has none.
pub(crate) async fn get_creds(
    client: &impl GenericClient,
    how: Stmts<'_>,
    company: &str,
) -> Result<Option<StoredValue>> {
    let context = |e: Error| e.context(format!("creds of company {company}"));
    let rows = prepared::query(client, how, &GET_CREDS, &[&company])
        .await
        .map_err(|e| match Error::from(e) {
            e if e.is_unavailable() => e,
            e => context(e),
        })?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    match row.try_get::<_, Option<&str>>(0) {
        Ok(Some(text)) => StoredValue::from_db(text).map(Some).map_err(context),
        Ok(None) => Err(context(Error::database("creds are NULL"))),
        Err(e) => Err(context(Error::database(e.to_string()))),
    }
}

/// The part of the upsert after its fencing CTEs (`fenced`: companies not to write).
///
/// `expires_at` is rounded up to whole steps of 1/128 of the TTL, at most an hour: a key
/// rewritten within the step keeps the same `expires_at`, so the update changes no indexed
/// column and PostgreSQL can make it a HOT update (see migrations/0005_storage.sql).
macro_rules! upsert_tail {
    () => {
        "del AS (
    DELETE FROM whatsapp_keys k
    USING unnest($1::text[], $2::text[], $3::text[]) AS d(c, t, i)
    WHERE k.company_id = d.c AND k.key_type = d.t AND k.key_id = d.i
      AND NOT EXISTS (SELECT 1 FROM fenced WHERE fenced.c = d.c)
    RETURNING 1
), ups AS (
    INSERT INTO whatsapp_keys AS k (company_id, key_type, key_id, value, updated_at, expires_at)
    SELECT u.c, u.t, u.i, u.v::jsonb, now(),
        CASE WHEN g.s >= 1
            THEN to_timestamp(ceil(extract(epoch FROM now() + make_interval(secs => u.ttl)) / g.s) * g.s)
            ELSE now() + make_interval(secs => u.ttl) END
    FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::float8[]) AS u(c, t, i, v, ttl)
    CROSS JOIN LATERAL (SELECT floor(least(3600, u.ttl / 128)) AS s) AS g
    WHERE NOT EXISTS (SELECT 1 FROM fenced WHERE fenced.c = u.c)
    ON CONFLICT (company_id, key_type, key_id) DO UPDATE
        SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
    RETURNING 1
), creds AS (
    INSERT INTO whatsapp_auth AS a (company_id, creds, updated_at)
    SELECT c.c, c.v::jsonb, now() FROM unnest($9::text[], $10::text[]) AS c(c, v)
    WHERE NOT EXISTS (SELECT 1 FROM fenced WHERE fenced.c = c.c)
    ON CONFLICT (company_id) DO UPDATE SET creds = EXCLUDED.creds, updated_at = EXCLUDED.updated_at
        WHERE a.creds IS DISTINCT FROM EXCLUDED.creds
    RETURNING 1
)
SELECT (SELECT count(*) FROM del), (SELECT count(*) FROM ups), (SELECT count(*) FROM creds),
       ARRAY(SELECT c FROM fenced)"
    };
}

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
    Type::TEXT_ARRAY,
    Type::INT8_ARRAY,
];

// Without leased companies (lease off) `fenced` is empty and the lease table is not touched.
const UPSERT: Sql = Sql {
    text: concat!(
        "WITH fenced AS (SELECT NULL::text AS c WHERE $11::text[] IS NULL AND $12::int8[] IS NULL), ",
        upsert_tail!()
    ),
    types: UPSERT_TYPES,
};

// Fencing: `$11`/`$12` are the leased companies of the statement with the token each write was
// made under. `held` locks their lease rows (FOR SHARE) when they still carry that token, so a
// takeover (an UPDATE of the row) waits for this write to commit, and a takeover that committed
// first is seen (READ COMMITTED re-checks a locked row's newest version). Writes of a company
// not in `held` are skipped and the company is returned as fenced: nothing of it lands.
const UPSERT_FENCED: Sql = Sql {
    text: concat!(
        "
WITH held AS (
    SELECT l.company_id FROM authstate_leases l
    JOIN unnest($11::text[], $12::int8[]) AS f(c, t) ON l.company_id = f.c AND l.token = f.t
    FOR SHARE OF l
), fenced AS (
    SELECT DISTINCT f.c FROM unnest($11::text[]) AS f(c)
    WHERE NOT EXISTS (SELECT 1 FROM held WHERE held.company_id = f.c)
), ",
        upsert_tail!()
    ),
    types: UPSERT_TYPES,
};

/// Deletes, upserts and creds of any number of companies, as parallel arrays: one statement,
/// one round trip, whatever the number of keys.
#[derive(Debug, Default)]
pub(crate) struct Upsert<'a> {
    /// Keys to delete: company, type, id (parallel arrays).
    pub(crate) del_company: Vec<&'a str>,
    pub(crate) del_type: Vec<&'a str>,
    pub(crate) del_id: Vec<&'a str>,
    /// Keys to write: company, type, id, canonical JSON text, time to live in seconds.
    pub(crate) put_company: Vec<&'a str>,
    pub(crate) put_type: Vec<&'a str>,
    pub(crate) put_id: Vec<&'a str>,
    pub(crate) put_value: Vec<&'a str>,
    pub(crate) put_ttl_secs: Vec<f64>,
    /// Creds to write: company, canonical JSON text.
    pub(crate) creds_company: Vec<&'a str>,
    pub(crate) creds_value: Vec<&'a str>,
    /// Leased companies and the lease token their writes were made under (see `UPSERT`).
    pub(crate) fence_company: Vec<&'a str>,
    pub(crate) fence_token: Vec<i64>,
}

impl<'a> Upsert<'a> {
    /// Every company the statement writes, once each.
    pub(crate) fn companies(&self) -> Vec<&'a str> {
        let mut all: Vec<&'a str> = self
            .del_company
            .iter()
            .chain(&self.put_company)
            .chain(&self.creds_company)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// Applies `u` with one statement. Returns the fenced companies: leased companies whose lease
/// no longer carries the given token, of which nothing was written.
pub(crate) async fn upsert(
    client: &impl GenericClient,
    how: Stmts<'_>,
    u: &Upsert<'_>,
) -> Result<Vec<String>> {
    // Without leased companies the statement does not touch the lease table, so a store with
    // the lease off works on a database that has none.
    let sql = if u.fence_company.is_empty() {
        &UPSERT
    } else {
        &UPSERT_FENCED
    };
    let rows = prepared::query(
        client,
        how,
        sql,
        &[
            &u.del_company,
            &u.del_type,
            &u.del_id,
            &u.put_company,
            &u.put_type,
            &u.put_id,
            &u.put_value,
            &u.put_ttl_secs,
            &u.creds_company,
            &u.creds_value,
            &u.fence_company,
            &u.fence_token,
        ],
    )
    .await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::database("a write returned no row"))?;
    row.try_get::<_, Vec<String>>(3)
        .map_err(|e| Error::database(format!("fenced companies of a write: {e}")))
}

const CLEAR: &str = "
WITH k AS (DELETE FROM whatsapp_keys WHERE company_id = $1 RETURNING 1)
DELETE FROM whatsapp_auth WHERE company_id = $1";

const CLEAR_FENCED: &str = "
WITH held AS (
    SELECT 1 FROM authstate_leases WHERE company_id = $1 AND token = $2 FOR SHARE
), ok AS (
    SELECT EXISTS (SELECT 1 FROM held) AS ok
), k AS (
    DELETE FROM whatsapp_keys WHERE company_id = $1 AND (SELECT ok FROM ok) RETURNING 1
), a AS (
    DELETE FROM whatsapp_auth WHERE company_id = $1 AND (SELECT ok FROM ok) RETURNING 1
)
SELECT (SELECT ok FROM ok), (SELECT count(*) FROM k), (SELECT count(*) FROM a)";

/// Deletes every key and the creds of `company`; with a lease `token`, only while the lease
/// still carries it. Returns false when fenced (nothing deleted).
pub(crate) async fn clear(
    client: &impl GenericClient,
    company: &str,
    token: Option<i64>,
) -> Result<bool> {
    let Some(token) = token else {
        client.query_typed(CLEAR, &[(&company, Type::TEXT)]).await?;
        return Ok(true);
    };
    let rows = client
        .query_typed(
            CLEAR_FENCED,
            &[(&company, Type::TEXT), (&token, Type::INT8)],
        )
        .await?;
    let row = rows
        .first()
        .ok_or_else(|| Error::database(format!("clear of {company} returned no row")))?;
    row.try_get::<_, bool>(0)
        .map_err(|e| Error::database(format!("clear of {company}: {e}")))
}

const KEY_IDS: &str = "SELECT key_type, key_id FROM whatsapp_keys WHERE company_id = $1";

/// Calls `each(type, id)` for every key of `company`, streaming the rows (10,000s of keys are
/// never held as rows at once).
pub(crate) async fn for_each_key_id(
    client: &impl GenericClient,
    company: &str,
    mut each: impl FnMut(&str, &str),
) -> Result<()> {
    use futures_util::TryStreamExt;
    let rows = client
        .query_typed_raw(KEY_IDS, [(company, Type::TEXT)])
        .await?;
    let mut rows = std::pin::pin!(rows);
    while let Some(row) = rows.try_next().await? {
        // A row without a type or id can never be read by a `get`: nothing to know of it.
        if let (Ok(Some(t)), Ok(Some(i))) = (
            row.try_get::<_, Option<&str>>(0),
            row.try_get::<_, Option<&str>>(1),
        ) {
            each(t, i);
        }
    }
    Ok(())
}

/// One round trip that proves the database answers.
pub(crate) async fn probe(client: &tokio_postgres::Client) -> Result<()> {
    client.simple_query("SELECT 1").await?;
    Ok(())
}
