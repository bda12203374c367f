//! The operator's escape hatch for a company lease: release it by force.
//!
//! In journal durability a lease whose holder did not release it cleanly stays refused to
//! other hosts (its journal may hold writes not yet in PostgreSQL, see
//! `migrations/0006_lease_journal_host.sql`). When that host is lost for good, the operator
//! frees the lease here, giving those writes up.

use crate::config::Config;
use crate::error::Result;
use crate::validate;

pub use crate::db::lease_sql::ForcedRelease;

/// Frees the lease of `company` whoever holds it and drops its journal mark. The lease token
/// moves on: a holder still running is fenced (its next write fails with `LOCKED`), and a
/// journal replayed later on the marked host goes to its lost-writes file, not to the
/// database. `None` when the company never had a lease.
pub async fn force_release(config: &Config, company: &str) -> Result<Option<ForcedRelease>> {
    validate::company_id(company)?;
    let client = crate::db::plain_client(config).await?;
    crate::db::lease_sql::force_release(&client, company).await
}
