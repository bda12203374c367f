//! The SQL of the company lease (table `authstate_leases`, migration 0003): acquire, renew
//! in one batched statement, release. Times are the server's (`now()`), so the clocks of the
//! store processes do not matter.

use std::time::SystemTime;

use tokio_postgres::types::Type;
use tokio_postgres::GenericClient;

use crate::error::{Error, Result};

/// Who a store process is, as written into the lease rows it holds.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) host: String,
    pub(crate) pid: i32,
    /// Random per store: two stores in one process (or a pid reused after a restart) differ.
    pub(crate) instance: String,
    pub(crate) started_at: SystemTime,
}

/// The holder of a lease as the database showed it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Holder {
    pub(crate) host: String,
    pub(crate) pid: i32,
    pub(crate) instance: String,
    /// When it acquired the lease, UTC, ISO 8601.
    pub(crate) since: String,
    /// Seconds until the lease expires unless renewed (0 when expired).
    pub(crate) expires_in_secs: f64,
    pub(crate) token: i64,
    /// The host whose journal may hold unflushed writes of the company (journal durability).
    pub(crate) journal_host: Option<String>,
}

/// What an acquisition did: `token` is ours when we got the lease; `previous` is the row as it
/// was before (the holder that refused us, or the one we took over from).
#[derive(Debug, Clone)]
pub(crate) struct Acquired {
    pub(crate) token: Option<i64>,
    pub(crate) previous: Option<Holder>,
}

// The takeover rule: a free (expired or released) lease, or one this very store instance holds;
// with `$7` (the token a journal's writes were made under) only the lease that still carries
// that token, whoever holds it: the journal continues that holder's writes, and a lease that
// moved on means another holder wrote in between. A lease whose `journal_host` is set (its
// holder ran in journal durability and did not release it cleanly) is free only for a store on
// that host, which replays the journal: another host would write over acknowledged writes that
// are still only in that journal. `$8` is our host when we run in journal durability.
const ACQUIRE: &str = "
WITH prev AS (
    SELECT token, holder_host, holder_pid, holder_instance, acquired_at, expires_at, journal_host
    FROM authstate_leases WHERE company_id = $1
), took AS (
    INSERT INTO authstate_leases AS l (company_id, holder_host, holder_pid, holder_instance,
        holder_started_at, token, acquired_at, heartbeat_at, expires_at, released_at,
        journal_host)
    VALUES ($1, $2, $3, $4, $5, 1, now(), now(), now() + make_interval(secs => $6), NULL, $8)
    ON CONFLICT (company_id) DO UPDATE SET
        holder_host = EXCLUDED.holder_host, holder_pid = EXCLUDED.holder_pid,
        holder_instance = EXCLUDED.holder_instance,
        holder_started_at = EXCLUDED.holder_started_at, token = l.token + 1,
        acquired_at = now(), heartbeat_at = now(), expires_at = EXCLUDED.expires_at,
        released_at = NULL, journal_host = EXCLUDED.journal_host
    WHERE CASE WHEN $7::int8 IS NULL
               THEN (l.expires_at <= now()
                     AND (l.journal_host IS NULL OR l.journal_host = EXCLUDED.holder_host))
                    OR l.holder_instance = EXCLUDED.holder_instance
               ELSE l.token = $7::int8 END
    RETURNING l.token
)
SELECT (SELECT token FROM took), p.holder_host, p.holder_pid, p.holder_instance,
       to_char(p.acquired_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
       GREATEST(0, extract(epoch FROM p.expires_at - now()))::float8, p.token, p.journal_host
FROM (SELECT 1) AS one LEFT JOIN prev p ON true";

/// Takes the lease of `company` if it is free, ours, or (with `inherited`) still carries the
/// token a journal was written under. One statement.
pub(crate) async fn acquire(
    client: &impl GenericClient,
    me: &Identity,
    company: &str,
    expiry_secs: f64,
    inherited: Option<i64>,
    journal_host: Option<&str>,
) -> Result<Acquired> {
    let rows = client
        .query_typed(
            ACQUIRE,
            &[
                (&company, Type::TEXT),
                (&me.host, Type::TEXT),
                (&me.pid, Type::INT4),
                (&me.instance, Type::TEXT),
                (&me.started_at, Type::TIMESTAMPTZ),
                (&expiry_secs, Type::FLOAT8),
                (&inherited, Type::INT8),
                (&journal_host, Type::TEXT),
            ],
        )
        .await
        .map_err(missing_table)?;
    let row = rows
        .first()
        .ok_or_else(|| Error::database(format!("taking the lease of {company} returned no row")))?;
    let bad = |e: tokio_postgres::Error| Error::database(format!("lease row of {company}: {e}"));
    let token: Option<i64> = row.try_get(0).map_err(bad)?;
    let host: Option<String> = row.try_get(1).map_err(bad)?;
    let previous = match host {
        None => None,
        Some(host) => Some(Holder {
            host,
            pid: row.try_get(2).map_err(bad)?,
            instance: row.try_get(3).map_err(bad)?,
            since: row.try_get(4).map_err(bad)?,
            expires_in_secs: row.try_get(5).map_err(bad)?,
            token: row.try_get(6).map_err(bad)?,
            journal_host: row.try_get(7).map_err(bad)?,
        }),
    };
    Ok(Acquired { token, previous })
}

/// A lease table that does not exist means the database was not migrated: say how to fix it.
fn missing_table(e: tokio_postgres::Error) -> Error {
    let e = Error::from(e);
    if e.sqlstate() == Some("42703") {
        return Error::migration(
            "the lease table authstate_leases lacks a column of a newer migration: run \
             `authstate migrate` (or Store::migrate)",
        )
        .with_source(e);
    }
    if e.sqlstate() == Some("42P01") {
        return Error::migration(
            "the lease table authstate_leases does not exist: run `authstate migrate` (or \
             Store::migrate), or turn the lease off (Config::lease = false)",
        )
        .with_source(e);
    }
    e
}

const RENEW: &str = "
UPDATE authstate_leases l
SET heartbeat_at = now(), expires_at = now() + make_interval(secs => $3)
FROM unnest($1::text[], $2::int8[]) AS h(c, t)
WHERE l.company_id = h.c AND l.token = h.t
RETURNING l.company_id";

/// Renews every lease in `(companies, tokens)` with one statement; returns the companies still
/// ours. A company missing from the answer was taken over by another holder.
pub(crate) async fn renew(
    client: &impl GenericClient,
    companies: &[&str],
    tokens: &[i64],
    expiry_secs: f64,
) -> Result<Vec<String>> {
    let rows = client
        .query_typed(
            RENEW,
            &[
                (&companies, Type::TEXT_ARRAY),
                (&tokens, Type::INT8_ARRAY),
                (&expiry_secs, Type::FLOAT8),
            ],
        )
        .await
        .map_err(missing_table)?;
    rows.iter()
        .map(|r| {
            r.try_get::<_, String>(0)
                .map_err(|e| Error::database(format!("renewed lease: {e}")))
        })
        .collect()
}

const RELEASE: &str = "
UPDATE authstate_leases l SET expires_at = now(), heartbeat_at = now(), released_at = now(),
    journal_host = NULL
FROM unnest($1::text[], $2::int8[]) AS h(c, t)
WHERE l.company_id = h.c AND l.token = h.t
RETURNING 1";

/// Gives up the leases in `(companies, tokens)` at once (their writes are all in PostgreSQL:
/// a released company has nothing pending, so its journal mark goes too) (a waiting process takes them on its
/// next try). The rows stay, so tokens keep counting up.
pub(crate) async fn release(
    client: &impl GenericClient,
    companies: &[&str],
    tokens: &[i64],
) -> Result<u64> {
    let rows = client
        .query_typed(
            RELEASE,
            &[(&companies, Type::TEXT_ARRAY), (&tokens, Type::INT8_ARRAY)],
        )
        .await
        .map_err(missing_table)?;
    Ok(rows.len() as u64)
}

const RELEASE_INSTANCE: &str = "
UPDATE authstate_leases SET expires_at = now(), heartbeat_at = now(), released_at = now(),
    journal_host = NULL
WHERE holder_instance = $1 AND released_at IS NULL AND expires_at > now()
RETURNING 1";

/// Gives up every lease the store instance `instance` holds (at close). A lease another
/// holder took over carries that holder's instance, so it is not touched.
pub(crate) async fn release_instance(client: &impl GenericClient, instance: &str) -> Result<u64> {
    let rows = client
        .query_typed(RELEASE_INSTANCE, &[(&instance, Type::TEXT)])
        .await
        .map_err(missing_table)?;
    Ok(rows.len() as u64)
}

const FORCE_RELEASE: &str = "
UPDATE authstate_leases l SET token = l.token + 1, expires_at = now(), heartbeat_at = now(),
    released_at = now(), journal_host = NULL
FROM (SELECT company_id, holder_host, holder_pid, holder_instance, journal_host
      FROM authstate_leases WHERE company_id = $1 FOR UPDATE) AS p
WHERE l.company_id = p.company_id
RETURNING p.holder_host, p.holder_pid, p.holder_instance, p.journal_host";

/// What a forced release took away: the holder as it was, and the host whose journal was
/// marked as holding unflushed writes (now given up).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ForcedRelease {
    /// The company.
    pub company_id: String,
    /// Host of the holder it was taken from.
    pub holder_host: String,
    /// Its process id.
    pub holder_pid: i32,
    /// Its store instance.
    pub holder_instance: String,
    /// The host whose journal may have held unflushed writes (those are given up).
    pub journal_host: Option<String>,
}

/// The operator's escape hatch: frees the lease of `company` whoever holds it, and drops its
/// journal mark. The token moves on, so a holder still alive is fenced (its next write and
/// heartbeat fail) and a journal replayed later on the marked host goes to its lost-writes
/// file instead of being applied. `None` when the company never had a lease.
pub(crate) async fn force_release(
    client: &impl GenericClient,
    company: &str,
) -> Result<Option<ForcedRelease>> {
    let rows = client
        .query_typed(FORCE_RELEASE, &[(&company, Type::TEXT)])
        .await
        .map_err(missing_table)?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let bad = |e: tokio_postgres::Error| Error::database(format!("lease row of {company}: {e}"));
    Ok(Some(ForcedRelease {
        company_id: company.to_string(),
        holder_host: row.try_get(0).map_err(bad)?,
        holder_pid: row.try_get(1).map_err(bad)?,
        holder_instance: row.try_get(2).map_err(bad)?,
        journal_host: row.try_get(3).map_err(bad)?,
    }))
}
