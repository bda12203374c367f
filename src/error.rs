//! The one error type of the core.
//!
//! Every failure of the library is an [`Error`]. The C ABI maps it once to a numbered status
//! (`authstate_status`) and the Node addon once to a stable JS `code`; both go through
//! [`Error::code`] so the two mappings cannot disagree.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in `authstate`.
///
/// The message never contains the database password: it is built from our own text and from
/// PostgreSQL's error text, neither of which carries the connection string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The caller passed something we refuse before any SQL runs (bad company id, NUL in an id,
    /// non-JSON, an oversized value, ...). Nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The thing asked for does not exist (used where "absent" is not a normal answer).
    #[error("not found: {0}")]
    NotFound(String),
    /// PostgreSQL cannot be reached (refused, connection lost, server shutting down) and the
    /// answer could not be served from memory.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A connect or statement timeout expired.
    #[error("database timeout: {0}")]
    Timeout(String),
    /// The store is in an outage under the `read-only` policy and refuses writes.
    #[error("read-only: {0}")]
    ReadOnly(String),
    /// The pending-write log of an outage reached its configured bound.
    #[error("pending writes full: {0}")]
    Backlog(String),
    /// Another holder owns the resource (a lease, a concurrent migration).
    #[error("locked: {0}")]
    Locked(String),
    /// A migration is missing, edited after it was applied, or failed.
    #[error("migration: {0}")]
    Migration(String),
    /// PostgreSQL answered with an error that is not about connectivity.
    #[error("database error: {0}")]
    Database(String),
    /// The store or session was closed.
    #[error("closed: {0}")]
    Closed(String),
    /// A bug or an environment failure we did not expect (I/O on the journal, a lost task).
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A stable, upper-case code for this kind of error, e.g. `INVALID_ARGUMENT`.
    ///
    /// Bindings derive their own names from it (`EAUTHSTATE_INVALID`, `AUTHSTATE_INVALID_ARGUMENT`).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "INVALID_ARGUMENT",
            Error::NotFound(_) => "NOT_FOUND",
            Error::Unavailable(_) => "UNAVAILABLE",
            Error::Timeout(_) => "TIMEOUT",
            Error::ReadOnly(_) => "READ_ONLY",
            Error::Backlog(_) => "BACKLOG_FULL",
            Error::Locked(_) => "LOCKED",
            Error::Migration(_) => "MIGRATION",
            Error::Database(_) => "DATABASE",
            Error::Closed(_) => "CLOSED",
            Error::Internal(_) => "INTERNAL",
        }
    }

    /// True when the database could not be reached or did not answer in time: the errors that
    /// put the store into outage mode.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Timeout(_))
    }

    pub(crate) fn invalid(msg: impl fmt::Display) -> Self {
        Error::InvalidArgument(msg.to_string())
    }

    pub(crate) fn internal(msg: impl fmt::Display) -> Self {
        Error::Internal(msg.to_string())
    }
}

/// SQLSTATE classes and codes that mean "the server is not there for us right now".
fn sqlstate_is_unavailable(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || matches!(code, "57P01" | "57P02" | "57P03" | "53300" | "53000")
}

impl From<tokio_postgres::Error> for Error {
    fn from(e: tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            let msg = format!("{} (SQLSTATE {})", db.message(), code);
            return if code == "57014" {
                Error::Timeout(msg)
            } else if sqlstate_is_unavailable(code) {
                Error::Unavailable(msg)
            } else if code == "55P03" {
                Error::Locked(msg)
            } else {
                Error::Database(msg)
            };
        }
        // No server error: the connection itself failed (refused, reset, closed, TLS).
        let text = error_chain(&e);
        if text.contains("timed out") || text.contains("timeout") {
            Error::Timeout(text)
        } else {
            Error::Unavailable(text)
        }
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(kind) => Error::Timeout(format!(
                "no database connection within the timeout ({kind:?})"
            )),
            PoolError::Closed => Error::Closed("connection pool closed".into()),
            PoolError::NoRuntimeSpecified => Error::internal("pool built without a runtime"),
            PoolError::PostCreateHook(e) => Error::Unavailable(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::InvalidArgument(format!("not valid JSON: {e}"))
    }
}

/// Joins an error with its sources: tokio-postgres puts the useful part ("Connection refused")
/// in the source, not in the top-level text.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(Error::invalid("x").code(), "INVALID_ARGUMENT");
        assert_eq!(Error::Unavailable("x".into()).code(), "UNAVAILABLE");
        assert!(Error::Timeout("x".into()).is_unavailable());
        assert!(!Error::Database("x".into()).is_unavailable());
    }

    #[test]
    fn sqlstates() {
        assert!(sqlstate_is_unavailable("08006"));
        assert!(sqlstate_is_unavailable("57P01"));
        assert!(!sqlstate_is_unavailable("23505"));
    }
}
