//! Schema migrations: numbered SQL files embedded in the binary and applied in order.
//!
//! Each migration runs with its bookkeeping row in one transaction that first takes a
//! transaction-scoped advisory lock, so two processes starting at once apply each migration
//! exactly once and the lock never outlives the transaction (safe behind pgbouncer in
//! transaction mode). A migration already applied whose file changed is an error. Databases
//! that already hold the tables but no `schema_migrations` are adopted: the first migration
//! only creates what is missing.

use sha2::{Digest, Sha256};
use tokio_postgres::types::Type;

use crate::error::{Error, Result};

/// One embedded migration file, `migrations/NNNN_name.sql`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// The number in the file name; migrations apply in this order.
    pub version: i64,
    /// The part of the file name after the number.
    pub name: &'static str,
    /// The SQL text.
    pub sql: &'static str,
}

impl Migration {
    /// SHA-256 of the SQL text, hex: what `schema_migrations.checksum` records.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

/// Every migration, in order. `tests/migrations.rs` checks this list against the folder.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "expiry_index",
        sql: include_str!("../../migrations/0002_expiry_index.sql"),
    },
    Migration {
        version: 3,
        name: "leases",
        sql: include_str!("../../migrations/0003_leases.sql"),
    },
    Migration {
        version: 4,
        name: "process_snapshots",
        sql: include_str!("../../migrations/0004_process_snapshots.sql"),
    },
    Migration {
        version: 5,
        name: "storage",
        sql: include_str!("../../migrations/0005_storage.sql"),
    },
    Migration {
        version: 6,
        name: "lease_journal_host",
        sql: include_str!("../../migrations/0006_lease_journal_host.sql"),
    },
];

/// Advisory lock key: "authstate" as a number, so other tools' locks do not collide.
const LOCK_KEY: i64 = 0x6175_7468_7374_6174;

/// What [`run`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    /// Versions applied by this call.
    pub applied: Vec<i64>,
    /// Versions that were already applied.
    pub already_applied: Vec<i64>,
}

/// Refuses a database that a newer binary migrated: its schema may differ in ways this
/// binary would silently get wrong (as sqlx does).
async fn refuse_newer_schema(tx: &tokio_postgres::Transaction<'_>, known: i64) -> Result<()> {
    let rows = tx
        .query_typed(
            "SELECT version, name FROM schema_migrations WHERE version > $1 ORDER BY version",
            &[(&known, Type::INT8)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let unknown: Vec<String> = rows
        .iter()
        .map(|r| {
            let v = r
                .try_get::<_, i64>(0)
                .map_or("?".into(), |v| format!("{v:04}"));
            let name = r
                .try_get::<_, Option<String>>(1)
                .ok()
                .flatten()
                .unwrap_or_default();
            format!("{v}_{name}")
        })
        .collect();
    Err(Error::migration(format!(
        "the database was migrated by a newer authstate (applied migrations unknown to this \
         binary: {}; this binary knows up to {known:04}); upgrade this binary",
        unknown.join(", ")
    )))
}

/// Applies every pending migration on `client`, in order.
pub async fn run(client: &mut tokio_postgres::Client) -> Result<MigrationReport> {
    let mut report = MigrationReport::default();
    let known = MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0);
    for (n, m) in MIGRATIONS.iter().enumerate() {
        let tx = client.transaction().await?;
        tx.query_typed(
            "SELECT pg_advisory_xact_lock($1)",
            &[(&LOCK_KEY, Type::INT8)],
        )
        .await?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    bigint PRIMARY KEY,
                name       text NOT NULL,
                checksum   text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await?;
        if n == 0 {
            refuse_newer_schema(&tx, known).await?;
        }
        let row = tx
            .query_typed(
                "SELECT checksum FROM schema_migrations WHERE version = $1",
                &[(&m.version, Type::INT8)],
            )
            .await?;
        let checksum = m.checksum();
        if let Some(row) = row.first() {
            let recorded: String = row
                .try_get::<_, Option<String>>(0)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    Error::migration(format!(
                        "schema_migrations row {} has no readable checksum",
                        m.version
                    ))
                })?;
            if recorded != checksum {
                return Err(Error::migration(format!(
                    "migration {:04}_{} was edited after it was applied (recorded checksum {}, file has {})",
                    m.version, m.name, recorded, checksum
                )));
            }
            report.already_applied.push(m.version);
            tx.commit().await?;
            continue;
        }
        tx.batch_execute(m.sql).await.map_err(|e| {
            let e = Error::from(e);
            if e.is_unavailable() {
                e
            } else {
                Error::migration(format!("{:04}_{} failed: {e}", m.version, m.name))
            }
        })?;
        tx.query_typed(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[
                (&m.version, Type::INT8),
                (&m.name, Type::TEXT),
                (&checksum, Type::TEXT),
            ],
        )
        .await?;
        tx.commit().await?;
        report.applied.push(m.version);
    }
    Ok(report)
}
