//! What the outage mode shows: its status, and what `close` could not flush.

use serde::Serialize;

/// The outage state as the health report and the bindings show it.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct OutageStatus {
    /// The database is considered unreachable (or pending writes are still being replayed).
    pub down: bool,
    /// When the current outage started, milliseconds since the Unix epoch.
    pub down_since_unix_ms: Option<u64>,
    /// How long the current outage has lasted, milliseconds.
    pub down_for_ms: u64,
    /// The error that started the current (or last) outage.
    pub last_error: Option<String>,
    /// Calls acknowledged and not yet in PostgreSQL (kept during an outage, or the journal
    /// lag in journal durability).
    pub pending_calls: usize,
    /// Bytes of value text of those calls.
    pub pending_bytes: usize,
    /// Age of the oldest of those calls, milliseconds (0 when none).
    pub oldest_pending_ms: u64,
    /// Size of the journal file.
    pub journal_bytes: u64,
    /// Reconnect attempts in the current outage.
    pub reconnect_attempts: u64,
    /// Outages since the store opened.
    pub outages: u64,
    /// `buffer` or `read-only` (what commit durability does during an outage; journal
    /// durability always keeps journaling, up to `max_pending_bytes`).
    pub policy: &'static str,
    /// `commit` or `journal` ([`crate::Durability`]).
    pub durability: &'static str,
}

/// What [`crate::Store::close`] could and could not flush.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct CloseReport {
    /// Calls kept during an outage that were written at close.
    pub flushed_calls: usize,
    /// Calls that could not be written (the database was still away). They remain in the
    /// journal when one is configured.
    pub unflushed: Vec<Unflushed>,
}

/// One call that [`crate::Store::close`] could not write.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Unflushed {
    /// The company.
    pub company_id: String,
    /// `keys`, `creds` or `clear`.
    pub kind: &'static str,
    /// `(type, id)` of each key of a `keys` call.
    pub keys: Vec<(String, String)>,
}
