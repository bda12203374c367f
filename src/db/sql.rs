//! Every SQL statement of the store, each behind a typed function. Rows are read with
//! `try_get`: tables adopted from production were created by hand and may hold NULLs or odd
//! types, and a bad row must be a typed error that names it, never a panic.

use deadpool_postgres::GenericClient;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use crate::error::{Error, Result};
use crate::value::StoredValue;

// `::jsonb` is free on a jsonb column; on a hand-made text column it makes PostgreSQL refuse
// text that is not JSON instead of handing it to the caller as a value.
const GET_KEYS: &str = "SELECT key_id, value::jsonb::text FROM whatsapp_keys
    WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3::text[])";

const GET_CREDS: &str = "SELECT creds::jsonb::text FROM whatsapp_auth WHERE company_id = $1";

/// Reads the values of `ids` of one type with one query; ids that do not exist are absent.
/// A row that cannot be read (NULL, not JSON) fails the whole call with an error naming each
/// bad row: answering without it would tell the caller the key does not exist.
pub(crate) async fn get_keys(
    client: &impl GenericClient,
    company: &str,
    key_type: &str,
    ids: &[&str],
) -> Result<Vec<(String, StoredValue)>> {
    let stmt = client
        .prepare_typed_cached(GET_KEYS, &[Type::TEXT, Type::TEXT, Type::TEXT_ARRAY])
        .await?;
    let rows = client
        .query(&stmt, &[&company, &key_type, &ids])
        .await
        .map_err(|e| name_rows(e.into(), company, key_type, ids))?;
    let mut found = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in &rows {
        match key_row(row) {
            Ok(kv) => found.push(kv),
            Err((id, e)) => bad.push(format!("{key_type} {id}: {}", e.message())),
        }
    }
    if !bad.is_empty() {
        return Err(Error::database(format!(
            "company {company}: {} stored key(s) cannot be read ({}); the other keys are intact",
            bad.len(),
            bad.join("; ")
        )));
    }
    Ok(found)
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
    company: &str,
) -> Result<Option<StoredValue>> {
    let stmt = client
        .prepare_typed_cached(GET_CREDS, &[Type::TEXT])
        .await?;
    let context = |e: Error| e.context(format!("creds of company {company}"));
    let rows = client
        .query(&stmt, &[&company])
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

// `expires_at` is rounded up to whole steps of 1/128 of the TTL, at most an hour: a key
// rewritten within the step keeps the same `expires_at`, so the update changes no indexed
// column and PostgreSQL can make it a HOT update (see migrations/0005_storage.sql).
const UPSERT: &str = "
WITH del AS (
    DELETE FROM whatsapp_keys k
    USING unnest($1::text[], $2::text[], $3::text[]) AS d(c, t, i)
    WHERE k.company_id = d.c AND k.key_type = d.t AND k.key_id = d.i
    RETURNING 1
), ups AS (
    INSERT INTO whatsapp_keys AS k (company_id, key_type, key_id, value, updated_at, expires_at)
    SELECT u.c, u.t, u.i, u.v::jsonb, now(),
        CASE WHEN g.s >= 1
            THEN to_timestamp(ceil(extract(epoch FROM now() + make_interval(secs => u.ttl)) / g.s) * g.s)
            ELSE now() + make_interval(secs => u.ttl) END
    FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::float8[]) AS u(c, t, i, v, ttl)
    CROSS JOIN LATERAL (SELECT floor(least(3600, u.ttl / 128)) AS s) AS g
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
}

/// Applies `u` with one statement.
pub(crate) async fn upsert(client: &impl GenericClient, u: &Upsert<'_>) -> Result<()> {
    let stmt = client.prepare_typed_cached(UPSERT, UPSERT_TYPES).await?;
    client
        .query_one(
            &stmt,
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
            ],
        )
        .await?;
    Ok(())
}

const CLEAR: &str = "
WITH k AS (DELETE FROM whatsapp_keys WHERE company_id = $1 RETURNING 1)
DELETE FROM whatsapp_auth WHERE company_id = $1";

/// Deletes every key and the creds of `company`.
pub(crate) async fn clear(client: &impl GenericClient, company: &str) -> Result<()> {
    let stmt = client.prepare_typed_cached(CLEAR, &[Type::TEXT]).await?;
    client.execute(&stmt, &[&company]).await?;
    Ok(())
}

/// Prepares the write statements on `client` (a no-op when its statement cache has them), so
/// that later writes send at once instead of waiting for a prepare: what keeps pipelined
/// writes in the order they were issued.
pub(crate) async fn prepare_writes(client: &impl GenericClient) -> Result<()> {
    client.prepare_typed_cached(UPSERT, UPSERT_TYPES).await?;
    client.prepare_typed_cached(CLEAR, &[Type::TEXT]).await?;
    Ok(())
}

/// Prepares every statement above on a new connection, concurrently so that they travel in
/// one round trip. Failures are left for the statement's first use to report (before the
/// first migration the tables do not exist yet, and the migration needs this connection).
pub(crate) async fn prepare_all(client: &deadpool_postgres::ClientWrapper) {
    let (keys, creds, upsert, clear) = tokio::join!(
        client.prepare_typed_cached(GET_KEYS, &[Type::TEXT, Type::TEXT, Type::TEXT_ARRAY]),
        client.prepare_typed_cached(GET_CREDS, &[Type::TEXT]),
        client.prepare_typed_cached(UPSERT, UPSERT_TYPES),
        client.prepare_typed_cached(CLEAR, &[Type::TEXT]),
    );
    if let Err(e) = keys.and(creds).and(upsert).and(clear) {
        tracing::debug!(error = %e, "statements not prepared ahead; they will be on first use");
    }
}

/// One round trip that proves the database answers.
pub(crate) async fn probe(client: &tokio_postgres::Client) -> Result<()> {
    client.simple_query("SELECT 1").await?;
    Ok(())
}
