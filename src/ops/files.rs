//! The folder Baileys' `useMultiFileAuthState(folder)` reads: file names and file contents.
//!
//! Baileys 7 (`lib/Utils/use-multi-file-auth-state.js`) keeps `creds.json` and one
//! `<type>-<id>.json` per key, each name passed through `fixFileName` (`/` becomes `__`, `:`
//! becomes `-`), each file `JSON.stringify(value, BufferJSON.replacer)`: buffers as
//! `{"type":"Buffer","data":"<base64>"}`, which is exactly the canonical text of a
//! [`StoredValue`]. Reading goes through the core codec, so files written by older Baileys
//! versions or other tools (buffers as arrays, `{"buffer":true,...}`, `{"0":n,...}`) come back
//! as the same bytes.
//!
//! `fixFileName` loses information (`:` and `-` give the same name), so the way back from a
//! name to an id is per type: `sender-key` ids are `<group>::<sender>::<device>` (the last two
//! `--` were `::`), `app-state-sync-key` ids are base64 (`__` was `/`), and the ids of every
//! other type Baileys 7 writes contain neither `:` nor `/`.

use crate::error::{Error, Result};
use crate::validate;
use crate::value::StoredValue;

/// The creds file.
pub const CREDS_FILE: &str = "creds.json";

/// Baileys' `fixFileName`: `/` becomes `__`, `:` becomes `-`.
pub fn fix_file_name(name: &str) -> String {
    name.replace('/', "__").replace(':', "-")
}

/// The file Baileys reads key `(key_type, key_id)` from.
pub fn key_file_name(key_type: &str, key_id: &str) -> String {
    fix_file_name(&format!("{key_type}-{key_id}.json"))
}

/// The key a file name stands for: `Ok(None)` for `creds.json`, an error for a name that is
/// not `<known type>-<id>.json`. Inverse of [`key_file_name`] for the ids Baileys 7 writes.
pub fn parse_file_name(name: &str) -> Result<Option<(String, String)>> {
    if name == CREDS_FILE {
        return Ok(None);
    }
    let stem = name.strip_suffix(".json").ok_or_else(|| {
        Error::invalid(format!(
            "{name:?} is not a Baileys auth file (creds.json or <type>-<id>.json)"
        ))
    })?;
    // Longest type first: `sender-key-memory-<id>` is not a `sender-key`.
    let mut types: Vec<&str> = validate::KNOWN_KEY_TYPES.to_vec();
    types.sort_by_key(|t| std::cmp::Reverse(t.len()));
    let (key_type, escaped) = types
        .iter()
        .find_map(|t| {
            stem.strip_prefix(t)
                .and_then(|rest| rest.strip_prefix('-'))
                .filter(|id| !id.is_empty())
                .map(|id| (*t, id))
        })
        .ok_or_else(|| {
            Error::invalid(format!(
                "cannot tell the key type of file {name:?}: expected <type>-<id>.json with one of {}",
                validate::KNOWN_KEY_TYPES.join(", ")
            ))
        })?;
    let key_id = unescape_id(key_type, escaped);
    validate::key_id(&key_id).map_err(|e| e.context(format!("file {name:?}")))?;
    if key_file_name(key_type, &key_id) != name {
        return Err(Error::invalid(format!(
            "file {name:?}: id {key_id:?} would not be read back from this name"
        )));
    }
    Ok(Some((key_type.to_string(), key_id)))
}

fn unescape_id(key_type: &str, escaped: &str) -> String {
    match key_type {
        "app-state-sync-key" => escaped.replace("__", "/"),
        "sender-key" => {
            // <group>::<sender>::<device>; only the group part may hold a '-'.
            let mut parts = escaped.rsplitn(3, "--");
            match (parts.next(), parts.next(), parts.next()) {
                (Some(device), Some(sender), Some(group)) => {
                    format!("{group}::{sender}::{device}")
                }
                _ => escaped.to_string(),
            }
        }
        _ => escaped.to_string(),
    }
}

/// Whether [`parse_file_name`] of [`key_file_name`] gives this key back, i.e. an import of an
/// export restores the same id. False for ids outside the shapes Baileys 7 writes.
pub fn round_trips(key_type: &str, key_id: &str) -> bool {
    matches!(
        parse_file_name(&key_file_name(key_type, key_id)),
        Ok(Some((t, i))) if t == key_type && i == key_id
    )
}

/// Parses a file's text the way Baileys' `BufferJSON.reviver` would see it, reviving every
/// buffer shape through the core codec.
pub fn read_value(name: &str, text: &str) -> Result<StoredValue> {
    StoredValue::from_json(text).map_err(|e| e.context(format!("file {name:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_fix_file_name() {
        assert_eq!(
            key_file_name("sender-key", "120363@g.us::5511988880001::0"),
            "sender-key-120363@g.us--5511988880001--0.json"
        );
        assert_eq!(
            key_file_name("app-state-sync-key", "AAAAAJzq+/8="),
            "app-state-sync-key-AAAAAJzq+__8=.json"
        );
        assert_eq!(
            key_file_name("session", "201000000000001_1.0"),
            "session-201000000000001_1.0.json"
        );
    }

    #[test]
    fn names_parse_back() {
        for (t, i) in [
            ("sender-key", "120363@g.us::5511988880001::0"),
            ("sender-key", "5511999-1600000000@g.us::201_1::3"),
            ("sender-key-memory", "120363041111111111@g.us"),
            ("app-state-sync-key", "AAAAAJzq+/8="),
            ("app-state-sync-version", "critical_block"),
            ("pre-key", "812"),
            ("session", "5511988880001.0"),
            ("identity-key", "201000000000001_1.0"),
            ("lid-mapping", "201000000000001_reverse"),
            ("tctoken", "__index"),
            ("device-list", "5511988880001"),
        ] {
            assert!(round_trips(t, i), "{t} {i}");
        }
        assert_eq!(parse_file_name("creds.json").unwrap(), None);
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "notes.txt",
            "pre-key-.json",
            "unknown-type-1.json",
            "session.json",
        ] {
            assert_eq!(parse_file_name(bad).unwrap_err().code(), "INVALID", "{bad}");
        }
    }
}
