//! The SQL of the health checks and of the process snapshots (`authstate_processes`,
//! migration 0004). Rows are read with `try_get`.

use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;
use tokio_postgres::Row;

use crate::error::{Error, Result};

/// The histogram's columns over `age` (the same buckets as `admin::AGE_BUCKETS`).
macro_rules! histogram_of_age {
    () => {
        "SELECT count(*)::int8,
       count(*) FILTER (WHERE age < interval '1 day')::int8,
       count(*) FILTER (WHERE age >= interval '1 day' AND age < interval '7 days')::int8,
       count(*) FILTER (WHERE age >= interval '7 days' AND age < interval '14 days')::int8,
       count(*) FILTER (WHERE age >= interval '14 days' AND age < interval '30 days')::int8,
       count(*) FILTER (WHERE age >= interval '30 days')::int8
"
    };
}

/// Expired keys by how long ago they expired. One query, bounded by `LIMIT $1`: it walks the
/// partial index `whatsapp_keys_expires_at_idx` (migration 0002, `expires_at IS NOT NULL`) from
/// the oldest expiry up to `now()` and stops after `$1` rows, so its cost is proportional to
/// the number of expired keys (at most the limit), never to the size of the table. The
/// `ORDER BY expires_at` is what makes that range scan the natural plan (an index scan in index
/// order satisfies both the range condition and the order without a sort).
const EXPIRED_HISTOGRAM: &str = concat!(
    histogram_of_age!(),
    "FROM (SELECT now() - expires_at AS age
      FROM whatsapp_keys
      WHERE expires_at IS NOT NULL AND expires_at <= now()
      ORDER BY expires_at
      LIMIT $1) AS expired"
);

/// The same for one company: the primary key `(company_id, ...)` finds its rows.
const EXPIRED_HISTOGRAM_COMPANY: &str = concat!(
    histogram_of_age!(),
    "FROM (SELECT now() - expires_at AS age
      FROM whatsapp_keys
      WHERE company_id = $2 AND expires_at IS NOT NULL AND expires_at <= now()
      LIMIT $1) AS expired"
);

/// The text of the histogram query, for `EXPLAIN` in tests and the report.
pub fn expired_histogram_sql() -> &'static str {
    EXPIRED_HISTOGRAM
}

/// Expired keys counted by age since expiry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiredCounts {
    /// Expired rows read (at most the limit).
    pub total: u64,
    /// 0-1 d, 1-7 d, 7-14 d, 14-30 d, > 30 d since expiry.
    pub buckets: [u64; 5],
    /// The limit was reached: the counts are lower bounds.
    pub truncated: bool,
}

fn int8(row: &Row, i: usize) -> Result<u64> {
    let v: i64 = row
        .try_get(i)
        .map_err(|e| Error::database(format!("health query column {i}: {e}")))?;
    Ok(u64::try_from(v).unwrap_or(0))
}

/// Counts expired keys (of `company`, or of everyone), reading at most `limit` rows.
pub(crate) async fn expired_histogram(
    client: &impl GenericClient,
    company: Option<&str>,
    limit: u64,
) -> Result<ExpiredCounts> {
    let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
    let rows = match company {
        None => {
            client
                .query_typed(EXPIRED_HISTOGRAM, &[(&limit, Type::INT8)])
                .await?
        }
        Some(c) => {
            client
                .query_typed(
                    EXPIRED_HISTOGRAM_COMPANY,
                    &[(&limit, Type::INT8), (&c, Type::TEXT)],
                )
                .await?
        }
    };
    let row = rows
        .first()
        .ok_or_else(|| Error::database("the expired-keys count returned no row"))?;
    let total = int8(row, 0)?;
    let mut buckets = [0u64; 5];
    for (i, b) in buckets.iter_mut().enumerate() {
        *b = int8(row, i + 1)?;
    }
    Ok(ExpiredCounts {
        total,
        buckets,
        truncated: total >= u64::try_from(limit).unwrap_or(u64::MAX),
    })
}

/// Writes (or rewrites) the snapshot row of one process.
pub(crate) async fn publish_process(
    client: &impl GenericClient,
    instance: &str,
    host: &str,
    pid: u32,
    started_at_unix_ms: u64,
    snapshot_json: &str,
) -> Result<()> {
    const SQL: &str = "
        INSERT INTO authstate_processes (instance, host, pid, started_at, updated_at, snapshot)
        VALUES ($1, $2, $3, to_timestamp($4::float8 / 1000), now(), $5::text::jsonb)
        ON CONFLICT (instance) DO UPDATE
            SET updated_at = now(), snapshot = EXCLUDED.snapshot";
    let pid = i32::try_from(pid).unwrap_or(i32::MAX);
    client
        .query_typed(
            SQL,
            &[
                (&instance, Type::TEXT),
                (&host, Type::TEXT),
                (&pid, Type::INT4),
                (&(started_at_unix_ms as f64), Type::FLOAT8),
                (&snapshot_json, Type::TEXT),
            ],
        )
        .await?;
    Ok(())
}

/// Deletes the row of one process (at clean close) and/or rows not updated for `gone_secs`.
pub(crate) async fn remove_processes(
    client: &impl GenericClient,
    instance: Option<&str>,
    gone_secs: Option<f64>,
) -> Result<u64> {
    const SQL: &str = "DELETE FROM authstate_processes
        WHERE instance = $1 OR updated_at < now() - make_interval(secs => $2) RETURNING 1";
    let rows = client
        .query_typed(SQL, &[(&instance, Type::TEXT), (&gone_secs, Type::FLOAT8)])
        .await?;
    Ok(rows.len() as u64)
}

/// One row of `authstate_processes`, with its age measured by the server's clock.
#[derive(Debug, Clone)]
pub(crate) struct ProcessRow {
    pub(crate) instance: String,
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) started_at_unix_ms: u64,
    pub(crate) updated_at_unix_ms: u64,
    /// Milliseconds since the last update, by the database's clock (hosts' clocks may differ).
    pub(crate) age_ms: u64,
    pub(crate) snapshot_json: String,
}

/// Every process row, most recently updated first.
pub(crate) async fn list_processes(client: &impl GenericClient) -> Result<Vec<ProcessRow>> {
    const SQL: &str = "SELECT instance, host, pid,
            (extract(epoch FROM started_at) * 1000)::int8,
            (extract(epoch FROM updated_at) * 1000)::int8,
            greatest(0, (extract(epoch FROM now() - updated_at) * 1000))::int8,
            snapshot::text
        FROM authstate_processes ORDER BY updated_at DESC, instance LIMIT 1000";
    let rows = client.query(SQL, &[]).await?;
    rows.iter()
        .map(|r| {
            let get =
                |e: tokio_postgres::Error| Error::database(format!("authstate_processes row: {e}"));
            Ok(ProcessRow {
                instance: r.try_get(0).map_err(get)?,
                host: r.try_get(1).map_err(get)?,
                pid: u32::try_from(r.try_get::<_, i32>(2).map_err(get)?).unwrap_or(0),
                started_at_unix_ms: int8(r, 3)?,
                updated_at_unix_ms: int8(r, 4)?,
                age_ms: int8(r, 5)?,
                snapshot_json: r.try_get(6).map_err(get)?,
            })
        })
        .collect()
}
