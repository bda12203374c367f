//! Every SQL statement of the operator tools (export, import, copy, cleanup, keys, stats).
//!
//! Functions take a `tokio_postgres::GenericClient` (a client, a transaction, or a pooled
//! connection through `&**object`). Rows are read with `try_get`: a column of an unexpected
//! type is a [`Error::database`] naming the company, key type and key id, never a panic.
//! Statements go through `query_typed` (one round trip, no named prepared statement), so they
//! also run behind pgbouncer in transaction mode.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::time::SystemTime;

use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{GenericClient, Row, Transaction};

use crate::error::{Error, Result};

type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// Reads column `idx` of `row`; a type mismatch or NULL where none is allowed names `what`.
fn col<'a, T: FromSql<'a>>(row: &'a Row, idx: usize, what: impl Display) -> Result<T> {
    row.try_get(idx)
        .map_err(|e| Error::database(format!("{what}: column {idx}: {e}")).with_source(e))
}

/// One stored key as the operator tools move it: the jsonb value as PostgreSQL prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// Key type, e.g. `session`.
    pub key_type: String,
    /// Key id, e.g. `5511988880001.0`.
    pub key_id: String,
    /// `value::text`: jsonb's own text (canonicalize it with `StoredValue::from_db` to hand
    /// it to Baileys; copy it as is between databases).
    pub value: String,
    /// Last write, when known.
    pub updated_at: Option<SystemTime>,
    /// When cleanup may delete it, when set.
    pub expires_at: Option<SystemTime>,
}

fn key_row(row: &Row, company: &str) -> Result<KeyRow> {
    let key_type: String = col(row, 0, format_args!("company {company}: key row"))?;
    let key_id: String = col(row, 1, format_args!("company {company} type {key_type}"))?;
    let what = format!("company {company} type {key_type} id {key_id:?}");
    Ok(KeyRow {
        value: col(row, 2, &what)?,
        updated_at: col(row, 3, &what)?,
        expires_at: col(row, 4, &what)?,
        key_type,
        key_id,
    })
}

/// Starts a REPEATABLE READ, READ ONLY transaction: every statement in it sees one snapshot
/// of the database, so an export or a copy is consistent while the service keeps writing.
pub async fn snapshot(client: &mut tokio_postgres::Client) -> Result<Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

/// Whether the schema exists (`whatsapp_keys` and `whatsapp_auth`): a database that was never
/// migrated holds no state, which a dry run reports instead of failing.
pub async fn schema_exists(c: &impl GenericClient) -> Result<bool> {
    let rows = c
        .query_typed(
            "SELECT to_regclass('whatsapp_keys') IS NOT NULL AND to_regclass('whatsapp_auth') IS NOT NULL",
            &[],
        )
        .await?;
    match rows.first() {
        Some(r) => col(r, 0, "schema check"),
        None => Err(Error::database("schema check returned no row")),
    }
}

/// Every company that has creds or keys, sorted by byte order. The keys table is walked with
/// a loose index scan (one index probe per company), not a scan of every row.
pub async fn company_ids(c: &impl GenericClient) -> Result<Vec<String>> {
    let rows = c
        .query_typed(
            "WITH RECURSIVE k AS (
                (SELECT company_id FROM whatsapp_keys ORDER BY company_id LIMIT 1)
                UNION ALL
                SELECT (SELECT w.company_id FROM whatsapp_keys w
                        WHERE w.company_id > k.company_id ORDER BY w.company_id LIMIT 1)
                FROM k WHERE k.company_id IS NOT NULL
            )
            SELECT company_id FROM k WHERE company_id IS NOT NULL
            UNION
            SELECT company_id FROM whatsapp_auth",
            &[],
        )
        .await?;
    let mut ids = rows
        .iter()
        .map(|r| col::<String>(r, 0, "company list"))
        .collect::<Result<Vec<_>>>()?;
    ids.sort();
    Ok(ids)
}

/// The creds of `company` as jsonb text, `None` when it has none.
pub async fn creds(c: &impl GenericClient, company: &str) -> Result<Option<String>> {
    let rows = c
        .query_typed(
            "SELECT creds::text FROM whatsapp_auth WHERE company_id = $1",
            &[(&company, Type::TEXT)],
        )
        .await?;
    match rows.first() {
        Some(r) => Ok(Some(col(r, 0, format_args!("company {company}: creds"))?)),
        None => Ok(None),
    }
}

const KEYS_OF_COMPANY: &str = "SELECT key_type, key_id, value::text, updated_at, expires_at
    FROM whatsapp_keys WHERE company_id = $1
    ORDER BY key_type COLLATE \"C\", key_id COLLATE \"C\"";

/// A server-side cursor over every key of `company` (ordered by type, then id, byte order)
/// inside a transaction: a company of any size is read in pages, never held at once.
pub struct KeyCursor<'t, 'c> {
    tx: &'t Transaction<'c>,
    portal: tokio_postgres::Portal,
    company: String,
    page: i32,
    done: bool,
}

impl<'t, 'c> KeyCursor<'t, 'c> {
    /// Opens the cursor; `page` rows per round trip.
    pub async fn open(tx: &'t Transaction<'c>, company: &str, page: usize) -> Result<Self> {
        let stmt = tx.prepare_typed(KEYS_OF_COMPANY, &[Type::TEXT]).await?;
        let portal = tx.bind(&stmt, &[&company]).await?;
        Ok(KeyCursor {
            tx,
            portal,
            company: company.to_string(),
            page: i32::try_from(page.max(1)).unwrap_or(i32::MAX),
            done: false,
        })
    }

    /// The next page, `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<KeyRow>>> {
        if self.done {
            return Ok(None);
        }
        let rows = self.tx.query_portal(&self.portal, self.page).await?;
        if rows.len() < self.page as usize {
            self.done = true;
        }
        if rows.is_empty() {
            return Ok(None);
        }
        rows.iter()
            .map(|r| key_row(r, &self.company))
            .collect::<Result<Vec<_>>>()
            .map(Some)
    }
}

/// Runs `each` on every page of a [`KeyCursor`].
pub async fn for_each_key_page<F>(
    tx: &Transaction<'_>,
    company: &str,
    page: usize,
    mut each: F,
) -> Result<()>
where
    F: FnMut(Vec<KeyRow>) -> Result<()>,
{
    let mut cursor = KeyCursor::open(tx, company, page).await?;
    while let Some(rows) = cursor.next().await? {
        each(rows)?;
    }
    Ok(())
}

/// Number of keys of `company` per type.
pub async fn key_counts(c: &impl GenericClient, company: &str) -> Result<BTreeMap<String, u64>> {
    let rows = c
        .query_typed(
            "SELECT key_type, count(*) FROM whatsapp_keys WHERE company_id = $1 GROUP BY key_type",
            &[(&company, Type::TEXT)],
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in &rows {
        let t: String = col(r, 0, format_args!("company {company}: key counts"))?;
        let n: i64 = col(r, 1, format_args!("company {company} type {t}: key count"))?;
        out.insert(t, n.max(0) as u64);
    }
    Ok(out)
}

/// Takes a transaction-scoped advisory lock on `company` (released at commit or rollback), so
/// two operator tools never import into or copy onto one company at once.
pub async fn lock_company(tx: &Transaction<'_>, company: &str) -> Result<()> {
    tx.query_typed(
        "SELECT pg_advisory_xact_lock(hashtextextended('authstate-ops:' || $1, 0))",
        &[(&company, Type::TEXT)],
    )
    .await?;
    Ok(())
}

/// Deletes every key and the creds of `company`; returns (creds rows, key rows) deleted.
pub async fn delete_company(c: &impl GenericClient, company: &str) -> Result<(u64, u64)> {
    let rows = c
        .query_typed(
            "WITH k AS (DELETE FROM whatsapp_keys WHERE company_id = $1 RETURNING 1),
                  a AS (DELETE FROM whatsapp_auth WHERE company_id = $1 RETURNING 1)
             SELECT (SELECT count(*) FROM a), (SELECT count(*) FROM k)",
            &[(&company, Type::TEXT)],
        )
        .await?;
    match rows.first() {
        Some(r) => {
            let a: i64 = col(r, 0, format_args!("company {company}: remove"))?;
            let k: i64 = col(r, 1, format_args!("company {company}: remove"))?;
            Ok((a.max(0) as u64, k.max(0) as u64))
        }
        None => Err(Error::database(format!(
            "company {company}: remove returned no row"
        ))),
    }
}

/// Deletes the creds of `company`; returns whether there were any.
pub async fn delete_creds(c: &impl GenericClient, company: &str) -> Result<bool> {
    let rows = c
        .query_typed(
            "DELETE FROM whatsapp_auth WHERE company_id = $1 RETURNING 1",
            &[(&company, Type::TEXT)],
        )
        .await?;
    Ok(!rows.is_empty())
}

/// Writes the creds of `company` (jsonb text). `updated_at` `None` means now. Returns whether
/// a row changed (an identical row is left alone, so a repeated copy writes nothing).
pub async fn put_creds(
    c: &impl GenericClient,
    company: &str,
    creds: &str,
    updated_at: Option<SystemTime>,
) -> Result<bool> {
    let n = c
        .query_typed(
            "INSERT INTO whatsapp_auth AS a (company_id, creds, updated_at)
             VALUES ($1, $2::jsonb, coalesce($3, now()))
             ON CONFLICT (company_id) DO UPDATE
                SET creds = EXCLUDED.creds, updated_at = EXCLUDED.updated_at
                WHERE a.creds IS DISTINCT FROM EXCLUDED.creds
             RETURNING 1",
            &[
                (&company, Type::TEXT),
                (&creds, Type::TEXT),
                (&updated_at, Type::TIMESTAMPTZ),
            ],
        )
        .await?;
    Ok(!n.is_empty())
}

/// How [`put_keys`] sets `updated_at` and `expires_at`.
#[derive(Debug, Clone, Copy)]
pub enum Stamps<'a> {
    /// Keep the rows' own timestamps (a copy between databases).
    Keep,
    /// `updated_at = now()`, `expires_at = now() + ttl(type)` with the TTL in seconds per row
    /// (an import, as if the service had just written the keys).
    Fresh(&'a [f64]),
}

/// Upserts `rows` of `company` in one statement. Rows equal to what is stored (value and
/// timestamps) are not rewritten, so repeating a copy is a no-op. Returns rows written.
pub async fn put_keys(
    c: &impl GenericClient,
    company: &str,
    rows: &[KeyRow],
    stamps: Stamps<'_>,
) -> Result<u64> {
    if rows.is_empty() {
        return Ok(0);
    }
    let types: Vec<&str> = rows.iter().map(|r| r.key_type.as_str()).collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.key_id.as_str()).collect();
    let values: Vec<&str> = rows.iter().map(|r| r.value.as_str()).collect();
    let (updated, expires, ttl): (Vec<Option<SystemTime>>, Vec<Option<SystemTime>>, Vec<f64>) =
        match stamps {
            Stamps::Keep => (
                rows.iter().map(|r| r.updated_at).collect(),
                rows.iter().map(|r| r.expires_at).collect(),
                Vec::new(),
            ),
            Stamps::Fresh(ttl) => {
                if ttl.len() != rows.len() {
                    return Err(Error::internal("put_keys: one TTL per row expected"));
                }
                (vec![None; rows.len()], vec![None; rows.len()], ttl.to_vec())
            }
        };
    let fresh = matches!(stamps, Stamps::Fresh(_));
    let sql = if fresh {
        "INSERT INTO whatsapp_keys AS k (company_id, key_type, key_id, value, updated_at, expires_at)
         SELECT $1, u.t, u.i, u.v::jsonb, now(), now() + make_interval(secs => u.ttl)
         FROM unnest($2::text[], $3::text[], $4::text[], $7::float8[]) AS u(t, i, v, ttl)
         ON CONFLICT (company_id, key_type, key_id) DO UPDATE
            SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
         RETURNING 1"
    } else {
        "INSERT INTO whatsapp_keys AS k (company_id, key_type, key_id, value, updated_at, expires_at)
         SELECT $1, u.t, u.i, u.v::jsonb, u.up, u.ex
         FROM unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[])
              AS u(t, i, v, up, ex)
         ON CONFLICT (company_id, key_type, key_id) DO UPDATE
            SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at, expires_at = EXCLUDED.expires_at
            WHERE (k.value, k.updated_at, k.expires_at)
                  IS DISTINCT FROM (EXCLUDED.value, EXCLUDED.updated_at, EXCLUDED.expires_at)
         RETURNING 1"
    };
    let params: [Param<'_>; 7] = [
        (&company, Type::TEXT),
        (&types, Type::TEXT_ARRAY),
        (&ids, Type::TEXT_ARRAY),
        (&values, Type::TEXT_ARRAY),
        (&updated, Type::TIMESTAMPTZ_ARRAY),
        (&expires, Type::TIMESTAMPTZ_ARRAY),
        (&ttl, Type::FLOAT8_ARRAY),
    ];
    let n = c.query_typed(sql, &params).await.map_err(|e| {
        Error::from(e).context(format!("company {company}: writing {} keys", rows.len()))
    })?;
    Ok(n.len() as u64)
}

/// Deletes the keys of `company` whose (type, id) is not in `keep` (the source of a copy), so
/// the target ends up equal to the source. Returns rows deleted.
pub async fn delete_keys_except(
    c: &impl GenericClient,
    company: &str,
    keep: &[(String, String)],
) -> Result<u64> {
    let types: Vec<&str> = keep.iter().map(|(t, _)| t.as_str()).collect();
    let ids: Vec<&str> = keep.iter().map(|(_, i)| i.as_str()).collect();
    let rows = c
        .query_typed(
            "DELETE FROM whatsapp_keys k WHERE k.company_id = $1 AND NOT EXISTS (
                SELECT 1 FROM unnest($2::text[], $3::text[]) AS s(t, i)
                WHERE s.t = k.key_type AND s.i = k.key_id)
             RETURNING 1",
            &[
                (&company, Type::TEXT),
                (&types, Type::TEXT_ARRAY),
                (&ids, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    Ok(rows.len() as u64)
}

/// Content checksum of one company, comparable across databases and PostgreSQL versions.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Checksum {
    /// MD5 of the creds' jsonb text, `None` without creds.
    pub creds_md5: Option<String>,
    /// Per key type: (keys, MD5 over the per-key MD5s of `id \x1f value::text` in byte order
    /// of the ids).
    pub per_type: BTreeMap<String, (u64, String)>,
}

impl Checksum {
    /// Total number of keys.
    pub fn keys(&self) -> u64 {
        self.per_type.values().map(|(n, _)| n).sum()
    }

    /// One hex digest over the creds and every type, for reports.
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.creds_md5.as_deref().unwrap_or("-"));
        for (t, (n, md5)) in &self.per_type {
            h.update(format!("\n{t}\t{n}\t{md5}"));
        }
        hex::encode(h.finalize())
    }
}

/// Computes the [`Checksum`] of `company` inside PostgreSQL (only digests cross the network).
/// jsonb prints one value the same way everywhere, so equal rows give equal sums on both
/// sides of a copy.
pub async fn checksum(c: &impl GenericClient, company: &str) -> Result<Checksum> {
    let creds = c
        .query_typed(
            "SELECT md5(creds::text) FROM whatsapp_auth WHERE company_id = $1",
            &[(&company, Type::TEXT)],
        )
        .await?;
    let creds_md5 = match creds.first() {
        Some(r) => Some(col(
            r,
            0,
            format_args!("company {company}: creds checksum"),
        )?),
        None => None,
    };
    let rows = c
        .query_typed(
            "SELECT key_type, count(*),
                    md5(string_agg(md5(key_id || chr(31) || value::text), '' ORDER BY key_id COLLATE \"C\"))
             FROM whatsapp_keys WHERE company_id = $1 GROUP BY key_type",
            &[(&company, Type::TEXT)],
        )
        .await?;
    let mut per_type = BTreeMap::new();
    for r in &rows {
        let t: String = col(r, 0, format_args!("company {company}: checksum"))?;
        let what = format!("company {company} type {t}: checksum");
        let n: i64 = col(r, 1, &what)?;
        let md5: String = col(r, 2, &what)?;
        per_type.insert(t, (n.max(0) as u64, md5));
    }
    Ok(Checksum {
        creds_md5,
        per_type,
    })
}

/// One key's metadata, for `keys list`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyMeta {
    /// Key type.
    pub key_type: String,
    /// Key id.
    pub key_id: String,
    /// Size of the value's jsonb text.
    pub bytes: u64,
    /// Last write (UTC, ISO 8601), when known.
    pub updated_at: Option<String>,
    /// Expiry (UTC, ISO 8601), when set.
    pub expires_at: Option<String>,
    /// Whether `expires_at` is in the past.
    pub expired: bool,
}

const ISO: &str = "YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"";

/// A page of key metadata of `company` (optionally one type), ordered by type then id (byte
/// order), starting after `after` (type, id).
pub async fn key_meta_page(
    c: &impl GenericClient,
    company: &str,
    key_type: Option<&str>,
    after: Option<(&str, &str)>,
    limit: i64,
) -> Result<Vec<KeyMeta>> {
    let (after_t, after_i) = match after {
        Some((t, i)) => (Some(t), Some(i)),
        None => (None, None),
    };
    let sql = format!(
        "SELECT key_type, key_id, octet_length(value::text)::int8,
                to_char(updated_at AT TIME ZONE 'UTC', '{ISO}'),
                to_char(expires_at AT TIME ZONE 'UTC', '{ISO}'),
                coalesce(expires_at < now(), false)
         FROM whatsapp_keys
         WHERE company_id = $1 AND ($2::text IS NULL OR key_type = $2)
           AND ($3::text IS NULL OR (key_type COLLATE \"C\", key_id COLLATE \"C\") > ($3, $4))
         ORDER BY key_type COLLATE \"C\", key_id COLLATE \"C\"
         LIMIT $5"
    );
    let rows = c
        .query_typed(
            &sql,
            &[
                (&company, Type::TEXT),
                (&key_type, Type::TEXT),
                (&after_t, Type::TEXT),
                (&after_i, Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let t: String = col(r, 0, format_args!("company {company}: key list"))?;
            let i: String = col(r, 1, format_args!("company {company} type {t}: key list"))?;
            let what = format!("company {company} type {t} id {i:?}");
            let bytes: i64 = col(r, 2, &what)?;
            Ok(KeyMeta {
                bytes: bytes.max(0) as u64,
                updated_at: col(r, 3, &what)?,
                expires_at: col(r, 4, &what)?,
                expired: col(r, 5, &what)?,
                key_type: t,
                key_id: i,
            })
        })
        .collect()
}

/// One key's value (jsonb text) with its metadata, `None` when absent.
pub async fn key_show(
    c: &impl GenericClient,
    company: &str,
    key_type: &str,
    key_id: &str,
) -> Result<Option<(KeyMeta, String)>> {
    let sql = format!(
        "SELECT value::text, octet_length(value::text)::int8,
                to_char(updated_at AT TIME ZONE 'UTC', '{ISO}'),
                to_char(expires_at AT TIME ZONE 'UTC', '{ISO}'),
                coalesce(expires_at < now(), false)
         FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = $3"
    );
    let rows = c
        .query_typed(
            &sql,
            &[
                (&company, Type::TEXT),
                (&key_type, Type::TEXT),
                (&key_id, Type::TEXT),
            ],
        )
        .await?;
    let Some(r) = rows.first() else {
        return Ok(None);
    };
    let what = format!("company {company} type {key_type} id {key_id:?}");
    let bytes: i64 = col(r, 1, &what)?;
    Ok(Some((
        KeyMeta {
            key_type: key_type.to_string(),
            key_id: key_id.to_string(),
            bytes: bytes.max(0) as u64,
            updated_at: col(r, 2, &what)?,
            expires_at: col(r, 3, &what)?,
            expired: col(r, 4, &what)?,
        },
        col(r, 0, &what)?,
    )))
}

/// Deletes keys `ids` of one type of `company`; returns the ids that existed.
pub async fn key_delete(
    c: &impl GenericClient,
    company: &str,
    key_type: &str,
    ids: &[&str],
) -> Result<Vec<String>> {
    let rows = c
        .query_typed(
            "DELETE FROM whatsapp_keys WHERE company_id = $1 AND key_type = $2 AND key_id = ANY($3)
             RETURNING key_id",
            &[
                (&company, Type::TEXT),
                (&key_type, Type::TEXT),
                (&ids, Type::TEXT_ARRAY),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            col(
                r,
                0,
                format_args!("company {company} type {key_type}: delete"),
            )
        })
        .collect()
}

/// A page of one type's keys of `company` after id `after`, in the database's order of ids
/// (the primary key's), with values when `values` is set: Baileys' `list`/`listIds`.
pub async fn list_page(
    c: &impl GenericClient,
    company: &str,
    key_type: &str,
    after: Option<&str>,
    limit: i64,
    values: bool,
) -> Result<Vec<(String, Option<String>)>> {
    let sql = if values {
        "SELECT key_id, value::text FROM whatsapp_keys
         WHERE company_id = $1 AND key_type = $2 AND ($3::text IS NULL OR key_id > $3)
         ORDER BY key_id LIMIT $4"
    } else {
        "SELECT key_id, NULL::text FROM whatsapp_keys
         WHERE company_id = $1 AND key_type = $2 AND ($3::text IS NULL OR key_id > $3)
         ORDER BY key_id LIMIT $4"
    };
    let rows = c
        .query_typed(
            sql,
            &[
                (&company, Type::TEXT),
                (&key_type, Type::TEXT),
                (&after, Type::TEXT),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let id: String = col(
                r,
                0,
                format_args!("company {company} type {key_type}: list"),
            )?;
            let v: Option<String> = col(
                r,
                1,
                format_args!("company {company} type {key_type} id {id:?}"),
            )?;
            Ok((id, v))
        })
        .collect()
}

/// Statistics of one key type, for `keys stats` and `store.stats()`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TypeStats {
    /// Key type.
    pub key_type: String,
    /// Number of keys.
    pub keys: u64,
    /// Bytes of jsonb text.
    pub bytes: u64,
    /// Oldest `updated_at` (UTC, ISO 8601).
    pub oldest_update: Option<String>,
    /// Newest `updated_at` (UTC, ISO 8601).
    pub newest_update: Option<String>,
    /// Keys whose `expires_at` is in the past.
    pub expired: u64,
}

/// Per-type statistics of `company`, or of the whole database when `None`.
pub async fn type_stats(c: &impl GenericClient, company: Option<&str>) -> Result<Vec<TypeStats>> {
    let sql = format!(
        "SELECT key_type, count(*), coalesce(sum(octet_length(value::text)), 0)::int8,
                to_char(min(updated_at) AT TIME ZONE 'UTC', '{ISO}'),
                to_char(max(updated_at) AT TIME ZONE 'UTC', '{ISO}'),
                count(*) FILTER (WHERE expires_at < now())
         FROM whatsapp_keys WHERE ($1::text IS NULL OR company_id = $1)
         GROUP BY key_type ORDER BY key_type COLLATE \"C\""
    );
    let rows = c.query_typed(&sql, &[(&company, Type::TEXT)]).await?;
    let scope = company.unwrap_or("(all)");
    rows.iter()
        .map(|r| {
            let t: String = col(r, 0, format_args!("company {scope}: stats"))?;
            let what = format!("company {scope} type {t}: stats");
            let keys: i64 = col(r, 1, &what)?;
            let bytes: i64 = col(r, 2, &what)?;
            let expired: i64 = col(r, 5, &what)?;
            Ok(TypeStats {
                keys: keys.max(0) as u64,
                bytes: bytes.max(0) as u64,
                oldest_update: col(r, 3, &what)?,
                newest_update: col(r, 4, &what)?,
                expired: expired.max(0) as u64,
                key_type: t,
            })
        })
        .collect()
}

/// The age buckets of expired keys (time since `expires_at`), as in the health report.
pub const AGE_BUCKETS: [&str; 5] = ["0-1d", "1-7d", "7-14d", "14-30d", ">30d"];

const BUCKET: &str = "CASE WHEN $1::timestamptz - expires_at < interval '1 day' THEN '0-1d'
                WHEN $1::timestamptz - expires_at < interval '7 days' THEN '1-7d'
                WHEN $1::timestamptz - expires_at < interval '14 days' THEN '7-14d'
                WHEN $1::timestamptz - expires_at < interval '30 days' THEN '14-30d'
                ELSE '>30d' END";

/// The database's clock, so that cleanup's cutoff does not depend on this host's clock.
pub async fn now(c: &impl GenericClient) -> Result<SystemTime> {
    let rows = c.query_typed("SELECT now()", &[]).await?;
    match rows.first() {
        Some(r) => col(r, 0, "now()"),
        None => Err(Error::database("SELECT now() returned no row")),
    }
}

/// Expired keys (expires_at before `cutoff`) counted per type and age bucket, all types.
pub async fn expired_counts(
    c: &impl GenericClient,
    cutoff: SystemTime,
) -> Result<Vec<(String, String, u64)>> {
    let sql = format!(
        "SELECT key_type, {BUCKET}, count(*) FROM whatsapp_keys
         WHERE expires_at < $1 GROUP BY 1, 2"
    );
    let rows = c.query_typed(&sql, &[(&cutoff, Type::TIMESTAMPTZ)]).await?;
    bucket_rows(&rows)
}

fn bucket_rows(rows: &[Row]) -> Result<Vec<(String, String, u64)>> {
    rows.iter()
        .map(|r| {
            let t: String = col(r, 0, "cleanup")?;
            let b: String = col(r, 1, format_args!("cleanup type {t}"))?;
            let n: i64 = col(r, 2, format_args!("cleanup type {t}"))?;
            Ok((t, b, n.max(0) as u64))
        })
        .collect()
}

/// Deletes at most `limit` keys of `types` that expired before `cutoff`, in one short
/// transaction of its own; rows another transaction holds are skipped, not waited for.
/// Returns what it deleted per type and age bucket.
pub async fn delete_expired_batch(
    c: &impl GenericClient,
    cutoff: SystemTime,
    types: &[String],
    limit: i64,
) -> Result<Vec<(String, String, u64)>> {
    let sql = format!(
        "WITH d AS (
            DELETE FROM whatsapp_keys k
            USING (SELECT company_id, key_type, key_id FROM whatsapp_keys
                   WHERE key_type = ANY($2) AND expires_at < $1
                   ORDER BY expires_at LIMIT $3
                   FOR UPDATE SKIP LOCKED) s
            WHERE k.company_id = s.company_id AND k.key_type = s.key_type
              AND k.key_id = s.key_id AND k.expires_at < $1
            RETURNING k.key_type, k.expires_at)
         SELECT key_type, {BUCKET}, count(*) FROM d GROUP BY 1, 2"
    );
    let rows = c
        .query_typed(
            &sql,
            &[
                (&cutoff, Type::TIMESTAMPTZ),
                (&types, Type::TEXT_ARRAY),
                (&limit, Type::INT8),
            ],
        )
        .await?;
    bucket_rows(&rows)
}
