//! The numbered status enum and its messages.

use std::ffi::{c_char, CStr};

use authstate::{Error, ErrorKind};

use crate::panic::value_boundary;

/// The result of every fallible `authstate_*` function.
///
/// The numbers are part of the ABI: a code is never renumbered or reused, new codes are only
/// appended. `authstate_status_message` describes a code; `authstate_last_error` gives the
/// text of the failure itself.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::enum_variant_names)] // the C names carry the prefix, see cbindgen.toml
pub enum authstate_status {
    /// The call succeeded and wrote its outputs.
    AUTHSTATE_OK = 0,
    /// The thing asked for does not exist (for example no creds saved for the company).
    AUTHSTATE_NOT_FOUND = 1,
    /// A NULL pointer, a string that is not UTF-8, text that is not JSON, or an identifier or
    /// value the store refuses. Nothing was written.
    AUTHSTATE_INVALID = 2,
    /// PostgreSQL cannot be reached and the answer could not be served from memory.
    AUTHSTATE_UNAVAILABLE = 3,
    /// A connect or statement timeout expired.
    AUTHSTATE_TIMEOUT = 4,
    /// The store is in an outage under the read-only policy and refuses writes.
    AUTHSTATE_READ_ONLY = 5,
    /// A bug or an unexpected environment failure inside the library.
    AUTHSTATE_INTERNAL = 6,
    /// The library panicked; the panic was caught at the C boundary. The handle used may be
    /// in an inconsistent state: close it.
    AUTHSTATE_PANIC = 7,
    /// The pending-write log of an outage reached its configured bound; the write was refused.
    AUTHSTATE_BACKLOG = 8,
    /// Another holder owns the resource (a company lease, a concurrent migration).
    AUTHSTATE_LOCKED = 9,
    /// A migration is missing, was edited after it was applied, or failed.
    AUTHSTATE_MIGRATION = 10,
    /// PostgreSQL answered with an error that is not about connectivity.
    AUTHSTATE_DATABASE = 11,
    /// The store (or the session's store) was closed.
    AUTHSTATE_CLOSED = 12,
}

use authstate_status::*;

/// Every status, in numeric order (for tests and for `authstate_status_message`).
pub(crate) const ALL: [authstate_status; 13] = [
    AUTHSTATE_OK,
    AUTHSTATE_NOT_FOUND,
    AUTHSTATE_INVALID,
    AUTHSTATE_UNAVAILABLE,
    AUTHSTATE_TIMEOUT,
    AUTHSTATE_READ_ONLY,
    AUTHSTATE_INTERNAL,
    AUTHSTATE_PANIC,
    AUTHSTATE_BACKLOG,
    AUTHSTATE_LOCKED,
    AUTHSTATE_MIGRATION,
    AUTHSTATE_DATABASE,
    AUTHSTATE_CLOSED,
];

impl From<ErrorKind> for authstate_status {
    /// The one mapping from core error kinds to C codes. Exhaustive: a new kind does not
    /// compile until it has a code, and a test checks every code's name against the kind's.
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::InvalidArgument => AUTHSTATE_INVALID,
            ErrorKind::NotFound => AUTHSTATE_NOT_FOUND,
            ErrorKind::Unavailable => AUTHSTATE_UNAVAILABLE,
            ErrorKind::Timeout => AUTHSTATE_TIMEOUT,
            ErrorKind::ReadOnly => AUTHSTATE_READ_ONLY,
            ErrorKind::Backlog => AUTHSTATE_BACKLOG,
            ErrorKind::Locked => AUTHSTATE_LOCKED,
            ErrorKind::Migration => AUTHSTATE_MIGRATION,
            ErrorKind::Database => AUTHSTATE_DATABASE,
            ErrorKind::Closed => AUTHSTATE_CLOSED,
            ErrorKind::Internal => AUTHSTATE_INTERNAL,
        }
    }
}

impl From<&Error> for authstate_status {
    fn from(e: &Error) -> Self {
        e.kind().into()
    }
}

impl authstate_status {
    /// The C name, which the header spells the same (cbindgen copies the variant's name).
    #[cfg(test)]
    pub(crate) fn name(self) -> String {
        format!("{self:?}")
    }

    fn message(self) -> &'static CStr {
        match self {
            AUTHSTATE_OK => c"ok",
            AUTHSTATE_NOT_FOUND => c"not found",
            AUTHSTATE_INVALID => c"invalid argument",
            AUTHSTATE_UNAVAILABLE => c"database unavailable",
            AUTHSTATE_TIMEOUT => c"database timeout",
            AUTHSTATE_READ_ONLY => c"store is read-only during a database outage",
            AUTHSTATE_INTERNAL => c"internal error",
            AUTHSTATE_PANIC => c"panic inside the library (caught at the C boundary)",
            AUTHSTATE_BACKLOG => c"pending writes full",
            AUTHSTATE_LOCKED => c"locked by another holder",
            AUTHSTATE_MIGRATION => c"migration error",
            AUTHSTATE_DATABASE => c"database error",
            AUTHSTATE_CLOSED => c"store closed",
        }
    }
}

/// A short, static English description of a status code.
///
/// `status` is taken as a plain integer so that any value is safe to pass; numbers that are
/// not a known `authstate_status` give "unknown status".
///
/// Ownership: the returned string is static and owned by the library. Never free it; it is
/// valid for the life of the process. Never returns NULL.
#[no_mangle]
pub extern "C" fn authstate_status_message(status: u32) -> *const c_char {
    value_boundary(c"unknown status".as_ptr(), || {
        ALL.iter()
            .find(|s| **s as u32 == status)
            .map_or(c"unknown status", |s| s.message())
            .as_ptr()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_fixed() {
        // Changing a number breaks every compiled C program: append, never renumber.
        for (i, s) in ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32, "{s:?}");
        }
    }

    #[test]
    fn every_kind_maps_to_the_code_of_its_name() {
        let mut seen = std::collections::HashSet::new();
        for kind in ErrorKind::ALL {
            let status = authstate_status::from(kind);
            assert_eq!(
                status.name(),
                format!("AUTHSTATE_{}", kind.code()),
                "{kind:?}"
            );
            assert!(seen.insert(status), "{kind:?} shares a status");
            assert_eq!(authstate_status::from(&Error::new(kind, "x")), status);
        }
        // Every status but OK and PANIC (C-only) is an error kind.
        assert_eq!(seen.len(), ALL.len() - 2);
        assert_eq!(seen.len(), ErrorKind::ALL.len());
    }

    /// The checked-in header's `enum authstate_status`, as (name, number) in header order.
    fn header_statuses() -> Vec<(String, u32)> {
        let header = include_str!("../../../include/authstate.h");
        let start = header
            .find("enum authstate_status\n")
            .expect("the header declares enum authstate_status");
        let body = &header[start..];
        let body = &body[..body.find("};").expect("the enum ends")];
        body.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("AUTHSTATE_"))
            .map(|l| {
                let (name, number) = l
                    .trim_end_matches(',')
                    .split_once(" = ")
                    .unwrap_or_else(|| panic!("enum line without a number: {l}"));
                let number = number.parse().unwrap_or_else(|e| panic!("{l}: {e}"));
                (name.to_owned(), number)
            })
            .collect()
    }

    #[test]
    fn header_names_every_status_and_kind() {
        // The header is generated from this enum (scripts/test-c.sh fails on drift); this
        // checks what C programs compile against: every status, by name and number, and so
        // `AUTHSTATE_<code>` for every core error kind.
        let in_header = header_statuses();
        let in_rust: Vec<(String, u32)> = ALL.iter().map(|s| (s.name(), *s as u32)).collect();
        assert_eq!(in_header, in_rust);
        for kind in ErrorKind::ALL {
            let name = format!("AUTHSTATE_{}", kind.code());
            assert!(
                in_header.iter().any(|(n, _)| *n == name),
                "{name} ({kind:?}) is not in include/authstate.h"
            );
        }
    }

    #[test]
    fn messages() {
        for s in ALL {
            // SAFETY: the function returns a static NUL-terminated string.
            let m = unsafe { CStr::from_ptr(authstate_status_message(s as u32)) };
            assert!(!m.to_bytes().is_empty());
        }
        // SAFETY: as above.
        let m = unsafe { CStr::from_ptr(authstate_status_message(9999)) };
        assert_eq!(m, c"unknown status");
    }
}
