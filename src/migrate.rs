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
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "expiry_index",
        sql: include_str!("../migrations/0002_expiry_index.sql"),
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

/// Applies every pending migration on `client`, in order.
pub async fn run(client: &mut tokio_postgres::Client) -> Result<MigrationReport> {
    let mut report = MigrationReport::default();
    for m in MIGRATIONS {
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
        let row = tx
            .query_typed(
                "SELECT checksum FROM schema_migrations WHERE version = $1",
                &[(&m.version, Type::INT8)],
            )
            .await?;
        let checksum = m.checksum();
        if let Some(row) = row.first() {
            let recorded: String = row.get(0);
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
