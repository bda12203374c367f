//! The one error type of the core, and the one list of error kinds.
//!
//! Every failure of the library is an [`Error`] of one [`ErrorKind`]. [`ErrorKind::ALL`] is the
//! list every boundary derives its names from: the C ABI's `AUTHSTATE_<CODE>` statuses, the
//! Node addon's `EAUTHSTATE_<CODE>` error codes and the TypeScript union in `index.d.ts`; the
//! tests of both bindings check their lists against it.

use std::fmt;
use std::sync::Arc;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an [`Error`] is. `Copy`, and stable: bindings map it once. Not
/// `non_exhaustive` on purpose: a new kind must fail to compile in every binding until mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// The caller passed something we refuse before any SQL runs (bad company id, NUL in an id,
    /// non-JSON, an oversized value, ...). Nothing was written.
    InvalidArgument,
    /// The thing asked for does not exist (used where "absent" is not a normal answer).
    NotFound,
    /// PostgreSQL cannot be reached (refused, connection lost, server shutting down) and the
    /// answer could not be served from memory.
    Unavailable,
    /// A connect or statement timeout expired.
    Timeout,
    /// The store is in an outage under the `read-only` policy and refuses writes.
    ReadOnly,
    /// The writes not yet in PostgreSQL (kept during an outage, or journal durability's lag)
    /// reached their configured bound (`max_pending_bytes`).
    Backlog,
    /// Another holder owns the resource (a company lease, a concurrent migration).
    Locked,
    /// A migration is missing, edited after it was applied, unknown to this binary, or failed.
    Migration,
    /// PostgreSQL answered with an error that is not about connectivity, or a stored row does
    /// not have the shape the store expects.
    Database,
    /// The store or session was closed.
    Closed,
    /// A bug or an environment failure we did not expect (I/O on the journal, a lost task, a
    /// caught panic).
    Internal,
}

impl ErrorKind {
    /// Every kind, in the order of their C status numbers (`AUTHSTATE_OK` and `AUTHSTATE_PANIC`
    /// are C-only statuses, not error kinds).
    pub const ALL: [ErrorKind; 11] = [
        ErrorKind::NotFound,
        ErrorKind::InvalidArgument,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::ReadOnly,
        ErrorKind::Internal,
        ErrorKind::Backlog,
        ErrorKind::Locked,
        ErrorKind::Migration,
        ErrorKind::Database,
        ErrorKind::Closed,
    ];

    /// The stable upper-case code: `INVALID`, `NOT_FOUND`, `UNAVAILABLE`, ... Bindings prefix
    /// it (`EAUTHSTATE_INVALID` in Node, `AUTHSTATE_INVALID` in C) and never rename it.
    pub const fn code(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "INVALID",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::Unavailable => "UNAVAILABLE",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::ReadOnly => "READ_ONLY",
            ErrorKind::Backlog => "BACKLOG",
            ErrorKind::Locked => "LOCKED",
            ErrorKind::Migration => "MIGRATION",
            ErrorKind::Database => "DATABASE",
            ErrorKind::Closed => "CLOSED",
            ErrorKind::Internal => "INTERNAL",
        }
    }

    /// The words that start an error message of this kind.
    const fn prefix(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::NotFound => "not found",
            ErrorKind::Unavailable => "database unavailable",
            ErrorKind::Timeout => "database timeout",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::Backlog => "pending writes full",
            ErrorKind::Locked => "locked",
            ErrorKind::Migration => "migration",
            ErrorKind::Database => "database error",
            ErrorKind::Closed => "closed",
            ErrorKind::Internal => "internal error",
        }
    }

    /// True for the kinds that mean "the database could not be reached or did not answer in
    /// time": the errors that put the store into outage mode.
    pub const fn is_unavailable(self) -> bool {
        matches!(self, ErrorKind::Unavailable | ErrorKind::Timeout)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Everything that can go wrong in `authstate`: a [`ErrorKind`], a message, and where there is
/// one the underlying cause ([`Error::sqlstate`], [`std::error::Error::source`]).
///
/// Cheap to clone (a batch's failure is handed to each of its callers). The message never
/// contains the database password: it is built from our own text and from PostgreSQL's error
/// text, neither of which carries the connection string.
#[derive(Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    sqlstate: Option<String>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl fmt::Display) -> Error {
        Error {
            kind,
            message: message.to_string(),
            sqlstate: None,
            source: None,
        }
    }

    /// Attaches the underlying cause, reachable through [`std::error::Error::source`].
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Error {
        self.source = Some(Arc::new(source));
        self
    }

    /// Prefixes the message with context (which company, key or migration it is about).
    pub fn context(mut self, what: impl fmt::Display) -> Error {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// The kind, for matching and for the bindings' codes.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The stable code of the kind, e.g. `INVALID` (see [`ErrorKind::code`]).
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The message without the kind's prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// PostgreSQL's SQLSTATE when the server answered with an error (e.g. `23505`).
    pub fn sqlstate(&self) -> Option<&str> {
        self.sqlstate.as_deref()
    }

    /// True when the database could not be reached or did not answer in time.
    pub fn is_unavailable(&self) -> bool {
        self.kind.is_unavailable()
    }

    /// [`ErrorKind::InvalidArgument`].
    pub fn invalid(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::InvalidArgument, msg)
    }
    /// [`ErrorKind::NotFound`].
    pub fn not_found(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::NotFound, msg)
    }
    /// [`ErrorKind::Unavailable`].
    pub fn unavailable(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Unavailable, msg)
    }
    /// [`ErrorKind::Timeout`].
    pub fn timeout(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Timeout, msg)
    }
    /// [`ErrorKind::ReadOnly`].
    pub fn read_only(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::ReadOnly, msg)
    }
    /// [`ErrorKind::Backlog`].
    pub fn backlog(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Backlog, msg)
    }
    /// [`ErrorKind::Locked`].
    pub fn locked(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Locked, msg)
    }
    /// [`ErrorKind::Migration`].
    pub fn migration(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Migration, msg)
    }
    /// [`ErrorKind::Database`].
    pub fn database(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Database, msg)
    }
    /// [`ErrorKind::Closed`].
    pub fn closed(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Closed, msg)
    }
    /// [`ErrorKind::Internal`].
    pub fn internal(msg: impl fmt::Display) -> Self {
        Error::new(ErrorKind::Internal, msg)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.prefix(), self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(s) = &self.sqlstate {
            d.field("sqlstate", s);
        }
        if let Some(s) = &self.source {
            d.field("source", &s.to_string());
        }
        d.finish()
    }
}

impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        self.kind == other.kind && self.message == other.message && self.sqlstate == other.sqlstate
    }
}

impl Eq for Error {}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
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
            let kind = if code == "57014" {
                ErrorKind::Timeout
            } else if sqlstate_is_unavailable(code) {
                ErrorKind::Unavailable
            } else if code == "55P03" {
                ErrorKind::Locked
            } else {
                ErrorKind::Database
            };
            let mut err = Error::new(kind, format!("{} (SQLSTATE {})", db.message(), code));
            err.sqlstate = Some(code.to_string());
            return err.with_source(e);
        }
        // No server error: the connection itself failed (refused, reset, closed, TLS).
        let text = error_chain(&e);
        let kind = if text.contains("timed out") || text.contains("timeout") {
            ErrorKind::Timeout
        } else {
            ErrorKind::Unavailable
        };
        Error::new(kind, text).with_source(e)
    }
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        match e {
            PoolError::Backend(e) => e.into(),
            PoolError::Timeout(kind) => Error::timeout(format!(
                "no database connection within the timeout ({kind:?})"
            )),
            PoolError::Closed => Error::closed("connection pool closed"),
            PoolError::NoRuntimeSpecified => Error::internal("pool built without a runtime"),
            PoolError::PostCreateHook(e) => Error::unavailable(e.to_string()),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::invalid(format!("not valid JSON: {e}")).with_source(e)
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
    fn codes_are_stable_and_distinct() {
        assert_eq!(Error::invalid("x").code(), "INVALID");
        assert_eq!(Error::unavailable("x").code(), "UNAVAILABLE");
        assert!(Error::timeout("x").is_unavailable());
        assert!(!Error::database("x").is_unavailable());
        let codes: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.code()).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn display_keeps_the_kind_prefix() {
        assert_eq!(
            Error::unavailable("refused").to_string(),
            "database unavailable: refused"
        );
        assert_eq!(
            Error::database("bad").context("company acme").message(),
            "company acme: bad"
        );
    }

    #[test]
    fn io_cause_is_reachable() {
        use std::error::Error as _;
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "denied");
        let e = Error::internal("journal").with_source(io);
        let src = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            src.map(|s| s.kind()),
            Some(std::io::ErrorKind::PermissionDenied)
        );
    }

    #[test]
    fn sqlstates() {
        assert!(sqlstate_is_unavailable("08006"));
        assert!(sqlstate_is_unavailable("57P01"));
        assert!(!sqlstate_is_unavailable("23505"));
    }
}
