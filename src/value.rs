//! The value types that cross the API: a canonical stored value and one key write.

use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::codec;
use crate::error::{Error, Result};
use crate::validate;

/// A value (or creds) in canonical form, kept as its JSON text: buffers are
/// `{"type":"Buffer","data":"<base64>"}`, numbers as JavaScript reads and writes them (the
/// double `JSON.parse` gives, written as `JSON.stringify` writes it; see [`codec`]), everything
/// else as given.
///
/// Cheap to clone (an `Arc<str>`). The text is what PostgreSQL stores, what the cache holds and
/// what the C and Node bindings hand out, so a read served from memory costs no re-encoding.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoredValue(Arc<str>);

impl StoredValue {
    /// Parses JSON text, revives every buffer shape into the canonical one and checks the size
    /// bound ([`validate::MAX_VALUE_BYTES`]).
    pub fn from_json(text: &str) -> Result<StoredValue> {
        if text.len() > validate::MAX_VALUE_BYTES * 4 {
            return Err(too_big(text.len()));
        }
        if let Some(v) = StoredValue::canonical_as_given(text) {
            return Ok(v);
        }
        let value: Value = serde_json::from_str(text)?;
        StoredValue::from_value(value)
    }

    /// The fast path of [`StoredValue::from_json`]: text that is canonical as written (what
    /// the Node binding sends for Baileys' values: compact, buffers canonical, numbers as
    /// JavaScript writes them, no escapes) is kept as it is after one validating pass and one
    /// scan, instead of being parsed into a tree, canonicalized and written out again (most of
    /// the addon's own CPU per `set`). Escapes go the slow way: the tree's writer may spell
    /// them otherwise, and a value's text must not depend on the way it took.
    fn canonical_as_given(text: &str) -> Option<StoredValue> {
        if text.len() > validate::MAX_VALUE_BYTES
            || memchr::memchr(b'\\', text.as_bytes()).is_some()
        {
            return None;
        }
        serde_json::from_str::<codec::UniqueKeys>(text).ok()?;
        codec::canonical_as_written(text).map(|t| StoredValue(t.into()))
    }

    /// Canonicalizes a JSON tree and checks the size bound.
    pub fn from_value(mut value: Value) -> Result<StoredValue> {
        codec::canonicalize(&mut value)?;
        let text = codec::to_text(&value)?;
        if text.len() > validate::MAX_VALUE_BYTES {
            return Err(too_big(text.len()));
        }
        Ok(StoredValue(text.into()))
    }

    /// Wraps text read back from PostgreSQL, reviving any legacy buffer shape in it. Rows too
    /// big for a write are still returned: refusing to read stored data would lose it.
    pub(crate) fn from_db(text: &str) -> Result<StoredValue> {
        // jsonb output is valid JSON: without a buffer candidate, and with numbers as
        // JavaScript writes them (jsonb writes big and tiny ones in plain decimal), it is
        // already canonical.
        if let Some(text) = codec::canonical_minified(text) {
            return Ok(StoredValue(text.into()));
        }
        let mut value: Value = serde_json::from_str(text)
            .map_err(|e| Error::database(format!("stored value is not JSON: {e}")))?;
        codec::canonicalize(&mut value)
            .map_err(|e| Error::database(format!("stored value cannot be revived: {e}")))?;
        Ok(StoredValue(codec::to_text(&value)?.into()))
    }

    /// The canonical JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The JSON tree (buffers as canonical buffer nodes; see [`codec::buffer_bytes`]).
    pub fn to_value(&self) -> Value {
        // The text was produced by serde_json from a Value, so it always parses.
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }

    /// Size of the text in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for a value that came through [`StoredValue::from_json`]; present for clippy.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredValue({})", validate::truncate(&self.0, 120))
    }
}

impl fmt::Display for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn too_big(len: usize) -> Error {
    Error::invalid(format!(
        "value is {len} bytes of JSON, the limit is {}",
        validate::MAX_VALUE_BYTES
    ))
}

/// One key write of a `set`: a new value, or `None` to delete the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWrite {
    pub(crate) key_type: String,
    pub(crate) key_id: String,
    pub(crate) value: Option<StoredValue>,
}

impl KeyWrite {
    /// Upsert `value` under `(key_type, key_id)`; both are validated here.
    pub fn put(key_type: &str, key_id: &str, value: StoredValue) -> Result<KeyWrite> {
        KeyWrite::new(key_type, key_id, Some(value))
    }

    /// Delete `(key_type, key_id)`; deleting a missing key is not an error.
    pub fn delete(key_type: &str, key_id: &str) -> Result<KeyWrite> {
        KeyWrite::new(key_type, key_id, None)
    }

    fn new(key_type: &str, key_id: &str, value: Option<StoredValue>) -> Result<KeyWrite> {
        validate::key_type(key_type)?;
        validate::key_id(key_id)?;
        Ok(KeyWrite {
            key_type: key_type.to_string(),
            key_id: key_id.to_string(),
            value,
        })
    }

    /// The key type.
    pub fn key_type(&self) -> &str {
        &self.key_type
    }
    /// The key id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    /// The new value, or `None` for a delete.
    pub fn value(&self) -> Option<&StoredValue> {
        self.value.as_ref()
    }
}

/// Parses Baileys' `keys.set` argument, `{"type": {"id": value | null}}`, into writes.
///
/// Everything is validated before anything is written: one bad id refuses the whole call.
pub fn parse_writes(json: &str) -> Result<Vec<KeyWrite>> {
    let root: Value = serde_json::from_str(json)?;
    let Value::Object(types) = root else {
        return Err(Error::invalid(
            "set expects an object {type: {id: value | null}}",
        ));
    };
    let mut writes = Vec::new();
    for (key_type, ids) in types {
        let Value::Object(ids) = ids else {
            return Err(Error::invalid(format!(
                "set: the entry for type {:?} must be an object {{id: value | null}}",
                validate::truncate(&key_type, 80)
            )));
        };
        for (key_id, value) in ids {
            let value = match value {
                Value::Null => None,
                v => Some(StoredValue::from_value(v)?),
            };
            writes.push(KeyWrite::new(&key_type, &key_id, value)?);
            if writes.len() > validate::MAX_KEYS_PER_SET {
                return Err(Error::invalid(format!(
                    "set: more than {} keys in one call",
                    validate::MAX_KEYS_PER_SET
                )));
            }
        }
    }
    Ok(writes)
}

/// Writes from parallel lists (type, id, value as JSON text or `None` to delete), as a binding
/// passes Baileys' `keys.set` without wrapping it in one JSON document: each value's text then
/// takes [`StoredValue::from_json`]'s fast path on its own. An error names the key.
pub fn writes_from_texts(
    types: &[String],
    ids: &[String],
    values: Vec<Option<String>>,
) -> Result<Vec<KeyWrite>> {
    if types.len() != ids.len() || ids.len() != values.len() {
        return Err(Error::invalid(format!(
            "set: {} types, {} ids and {} values do not pair up",
            types.len(),
            ids.len(),
            values.len()
        )));
    }
    if ids.len() > validate::MAX_KEYS_PER_SET {
        return Err(Error::invalid(format!(
            "set: more than {} keys in one call",
            validate::MAX_KEYS_PER_SET
        )));
    }
    types
        .iter()
        .zip(ids)
        .zip(values)
        .map(|((key_type, key_id), value)| {
            let value = match value {
                None => None,
                Some(text) => Some(StoredValue::from_json(&text).map_err(|e| {
                    e.context(format!(
                        "set: value of {}/{}",
                        validate::truncate(key_type, 80),
                        validate::truncate(key_id, 80)
                    ))
                })?),
            };
            KeyWrite::new(key_type, key_id, value)
        })
        .collect()
}

/// `{"id": value, ...}` text from `(id, value)` pairs, in their order, without re-encoding the
/// values (they are JSON text already): what a `get` hands to the bindings.
pub fn json_object(found: &[(String, StoredValue)]) -> Result<String> {
    json_joined(found, ('{', '}'), ':')
}

/// `["id", value, "id", value, ...]` text: the same pairs as [`json_object`], as one flat
/// array. A part of a `get` in parts ([`crate::Session::get_json_parts`]) has this shape
/// because V8's `JSON.parse` makes a hidden class for every new property name of an object,
/// and a part's ids are new names each time: parsing 1,000 session records as ten arrays and
/// assigning them to one answer took ~15% less of Node's thread than as ten objects merged.
pub(crate) fn json_pairs(found: &[(String, StoredValue)]) -> Result<String> {
    json_joined(found, ('[', ']'), ',')
}

fn json_joined(
    found: &[(String, StoredValue)],
    (open, close): (char, char),
    between: char,
) -> Result<String> {
    let mut out = String::with_capacity(
        2 + found
            .iter()
            .map(|(i, v)| i.len() + v.len() + 4)
            .sum::<usize>(),
    );
    out.push(open);
    for (n, (id, v)) in found.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(id)?);
        out.push(between);
        out.push_str(v.as_str());
    }
    out.push(close);
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn text_kept_as_written_equals_what_the_tree_makes_of_it() {
        for text in [
            r#"{"private":{"type":"Buffer","data":"AQID"},"public":{"type":"Buffer","data":""}}"#,
            r#"{"_sessions":{"BQ==":{"n":5,"x":[1,2.5,-3]}},"version":"v1"}"#,
            r#"{"a":1,"a":2}"#,
            r#"{"s":"\u0041\n"}"#,
            r#"{"type":"Buffer","data":"AR=="}"#,
            r#"{"type":"Buffer","data":[1,2]}"#,
            r#"{"type":"Buffer","data":"AQID","x":1}"#,
            r#"{"0":1,"1":2}"#,
            r#"{"n":1.0,"m":-0}"#,
            r#" [ 1 , "x" ] "#,
            r#""Buffer""#,
            "[1,",
        ] {
            let fast = StoredValue::from_json(text);
            let slow = serde_json::from_str::<Value>(text)
                .map_err(Error::from)
                .and_then(StoredValue::from_value);
            match (fast, slow) {
                (Ok(a), Ok(b)) => assert_eq!(a.as_str(), b.as_str(), "{text}"),
                (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind(), "{text}"),
                (a, b) => panic!("{a:?} vs {b:?} for {text}"),
            }
        }
    }

    use super::*;

    #[test]
    fn parse_writes_puts_and_deletes() {
        let w = parse_writes(
            r#"{"pre-key":{"1":{"public":{"type":"Buffer","data":[1,2]}},"2":null},"session":{}}"#,
        )
        .unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(
            w[0].value().unwrap().as_str(),
            r#"{"public":{"type":"Buffer","data":"AQI="}}"#
        );
        assert!(w[1].value().is_none());
    }

    #[test]
    fn parse_writes_refuses_bad_input() {
        for bad in [
            "[]",
            "nope",
            r#"{"Pre Key":{"1":1}}"#,
            r#"{"pre-key":{"":1}}"#,
            r#"{"pre-key":[1]}"#,
            r#"{"pre-key":{"a\u0000b":1}}"#,
            r#"{"pre-key":{"1":"x\u0000"}}"#,
        ] {
            let e = parse_writes(bad).unwrap_err();
            assert_eq!(e.code(), "INVALID", "{bad}");
        }
    }

    #[test]
    fn pairs_and_objects_hold_the_same_entries() {
        let found = vec![
            (
                "a\"b".to_string(),
                StoredValue::from_json(r#"{"x":[1]}"#).unwrap(),
            ),
            ("7".to_string(), StoredValue::from_json("null").unwrap()),
        ];
        assert_eq!(
            json_pairs(&found).unwrap(),
            r#"["a\"b",{"x":[1]},"7",null]"#
        );
        assert_eq!(
            json_object(&found).unwrap(),
            r#"{"a\"b":{"x":[1]},"7":null}"#
        );
        assert_eq!(json_pairs(&[]).unwrap(), "[]");
    }

    #[test]
    fn oversized_values_are_refused() {
        let big = format!("\"{}\"", "a".repeat(validate::MAX_VALUE_BYTES));
        assert_eq!(StoredValue::from_json(&big).unwrap_err().code(), "INVALID");
    }
}
