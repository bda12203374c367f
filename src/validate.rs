//! Checks applied to every identifier and value before any SQL runs.
//!
//! The limits are part of the public contract: a call that breaks one gets
//! [`Error::InvalidArgument`](crate::Error::InvalidArgument) and nothing is written.

use crate::error::{Error, Result};

/// Longest accepted company id, in bytes (`[A-Za-z0-9_-]{1,50}`).
pub const MAX_COMPANY_ID_LEN: usize = 50;
/// Longest accepted key type, in bytes.
pub const MAX_KEY_TYPE_LEN: usize = 64;
/// Longest accepted key id, in bytes. JIDs with device suffixes stay far below it.
pub const MAX_KEY_ID_LEN: usize = 1024;
/// Largest accepted value (its canonical JSON text), in bytes. A libsignal session record is
/// tens of KB; anything near this bound is a bug in the caller, not a key.
pub const MAX_VALUE_BYTES: usize = 4 * 1024 * 1024;
/// Most ids accepted in one `get`.
pub const MAX_IDS_PER_GET: usize = 100_000;
/// Most keys accepted in one `set`.
pub const MAX_KEYS_PER_SET: usize = 100_000;

/// The key types Baileys 7 writes. Other well-formed types are accepted too: Baileys adds
/// types between versions and a store must not lose them.
pub const KNOWN_KEY_TYPES: &[&str] = &[
    "pre-key",
    "session",
    "sender-key",
    "sender-key-memory",
    "app-state-sync-key",
    "app-state-sync-version",
    "lid-mapping",
    "device-list",
    "tctoken",
    "identity-key",
];

/// Checks a company id: 1 to 50 of `A-Z a-z 0-9 _ -`.
pub fn company_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_COMPANY_ID_LEN {
        return Err(Error::invalid(format!(
            "company id must be 1 to {MAX_COMPANY_ID_LEN} characters, got {}",
            id.len()
        )));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(Error::invalid(format!(
            "company id may contain only A-Z a-z 0-9 _ -, found {c:?}"
        )));
    }
    Ok(())
}

/// Checks a key type: 1 to 64 of `a-z 0-9 - _ .`, starting with a letter or digit.
pub fn key_type(t: &str) -> Result<()> {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
    let first_ok = t
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if t.len() > MAX_KEY_TYPE_LEN || !first_ok || !t.chars().all(ok_char) {
        return Err(Error::invalid(format!(
            "key type must be 1 to {MAX_KEY_TYPE_LEN} of a-z 0-9 - _ . starting with a letter or digit, got {:?}",
            truncate(t, 80)
        )));
    }
    Ok(())
}

/// Checks a key id: non-empty UTF-8 without NUL, at most [`MAX_KEY_ID_LEN`] bytes.
pub fn key_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("key id must not be empty"));
    }
    if id.len() > MAX_KEY_ID_LEN {
        return Err(Error::invalid(format!(
            "key id is {} bytes, the limit is {MAX_KEY_ID_LEN}",
            id.len()
        )));
    }
    if id.contains('\0') {
        return Err(Error::invalid("key id must not contain NUL"));
    }
    Ok(())
}

/// Shortens text for an error message without splitting a character.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn company_ids() {
        assert!(company_id("acme_01-x").is_ok());
        assert!(company_id(&"a".repeat(50)).is_ok());
        for bad in ["", "a b", "a/b", "ação", "x;drop", &"a".repeat(51), "a\0"] {
            assert!(company_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_types() {
        for t in KNOWN_KEY_TYPES {
            assert!(key_type(t).is_ok(), "{t}");
        }
        assert!(key_type("future-type_2").is_ok());
        for bad in ["", "-x", "Session", "a b", "a\0", &"a".repeat(65)] {
            assert!(key_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn key_ids() {
        for id in [
            "1",
            "123@s.whatsapp.net:2.0",
            "AAAAAJzq+/=",
            "12345.0:1_lid",
        ] {
            assert!(key_id(id).is_ok(), "{id}");
        }
        assert!(key_id("").is_err());
        assert!(key_id("a\0b").is_err());
        assert!(key_id(&"x".repeat(MAX_KEY_ID_LEN + 1)).is_err());
    }

    #[test]
    fn truncate_keeps_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
