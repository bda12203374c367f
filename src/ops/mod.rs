//! Operator tools: the emergency export to Baileys' own folder format and the import back,
//! copying accounts between databases, type-aware cleanup of expired keys, single-key
//! inspection, per-company statistics, Baileys' `list`/`listIds` enumeration, and the forced
//! release of a lease.
//!
//! Each tool opens its own connection from a [`Config`](crate::Config) (TLS as configured),
//! so it runs next to live services without touching their pools. Every SQL statement is in
//! [`sql`].

pub mod cleanup;
pub mod copy;
pub mod export;
pub mod files;
pub mod import;
pub mod keys;
pub mod lease;

use std::path::Path;

use crate::error::{Error, Result};
use crate::validate;

pub use cleanup::{cleanup, CleanupOptions, CleanupReport};
pub use copy::{copy, CopyOptions, CopyReport};
pub use export::{export, ExportOptions, ExportReport};
pub use import::{import, ImportOptions, ImportReport};

/// Which companies a command works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One company.
    Company(String),
    /// Every company that has state.
    All,
}

impl Scope {
    fn validate(&self) -> Result<()> {
        match self {
            Scope::Company(c) => validate::company_id(c),
            Scope::All => Ok(()),
        }
    }

    /// The companies of this scope in the database; none at all is an error, so an
    /// emergency export never silently writes nothing.
    async fn companies(&self, c: &impl tokio_postgres::GenericClient) -> Result<Vec<String>> {
        match self {
            Scope::Company(id) => Ok(vec![id.clone()]),
            Scope::All => {
                let ids = crate::db::admin::company_ids(c).await?;
                if ids.is_empty() {
                    return Err(Error::not_found("the database holds no company's state"));
                }
                Ok(ids)
            }
        }
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::internal(format!("cannot {what} {}: {e}", path.display())).with_source(e)
}

/// fsync of a folder, so the names of the files in it survive a crash too.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("fsync", dir, e))
}
