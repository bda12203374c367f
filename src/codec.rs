//! Exact buffer revival: the JSON value codec.
//!
//! Values and creds are JSON trees in which binary data appears as a *buffer node*. Every shape
//! that Baileys versions and older stores wrote is revived to the exact bytes and re-written in
//! one canonical shape, `{"type":"Buffer","data":"<standard padded base64>"}`:
//!
//! 1. `{"type":"Buffer","data":"<base64>"}`: Baileys' `BufferJSON.replacer` (decoded the way
//!    Node's `Buffer.from(s, 'base64')` does, so url-safe or unpadded text gives the same bytes);
//! 2. `{"type":"Buffer","data":[0-255, ...]}`: Node's `Buffer.toJSON`;
//! 3. `{"buffer":true,"value":"<base64>" | [...]}`: Baileys 6 and older;
//! 4. `{"0":n,"1":n,...}`: `JSON.stringify` of a `Uint8Array`, revived exactly as Baileys'
//!    reviver does (every key passes `parseInt`, every value is a number; bytes in JavaScript's
//!    property order; `{}` stays `{}`).
//!
//! Nothing else is touched: base64 *strings* (libsignal session records, protobuf JSON) stay
//! strings. Strings containing NUL are refused, because PostgreSQL's `jsonb` cannot hold them.
//!
//! Numbers are what JavaScript reads: every number is the IEEE double that `JSON.parse` gives
//! (parsing is correctly rounded: serde_json's `float_roundtrip` feature), written the way
//! `JSON.stringify` writes it (ECMAScript `Number::toString`: shortest digits that read back to
//! the same double, `1e+21`, `1e-7`, `0.000001`). So the canonical text of a value is the text
//! Baileys itself would write, two inputs JavaScript cannot tell apart store the same text, and
//! canonical text is a fixed point. Deliberate consequences, each tested against Node:
//! - integers beyond 2^53 are rounded to the nearest double, as JavaScript does
//!   (`9007199254740993` is stored as `9007199254740992`); callers that need exact big
//!   integers store them as strings, as protobuf JSON does;
//! - `-0` is stored as `0`, as `JSON.stringify(-0)` writes it (and `jsonb` cannot keep it);
//! - numbers too small for a double become `0` (`1e-400`), as `JSON.parse` makes them;
//!   subnormals (`5e-324`) are kept;
//! - numbers too big for a double (`1e400`, which `JSON.parse` turns into `Infinity` and
//!   `JSON.stringify` then into `null`) are refused with an INVALID error rather than
//!   silently changed.

use std::borrow::Cow;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::ser::{CompactFormatter, Formatter};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Builds the canonical buffer node for `bytes`.
pub fn buffer_node(bytes: &[u8]) -> Value {
    let mut m = Map::with_capacity(2);
    m.insert("type".into(), Value::String("Buffer".into()));
    m.insert("data".into(), Value::String(STANDARD.encode(bytes)));
    Value::Object(m)
}

/// The exact bytes of `value` if it is a buffer node of any supported shape, else `None`.
pub fn buffer_bytes(value: &Value) -> Option<Vec<u8>> {
    match value {
        Value::Object(m) => object_bytes(m),
        _ => None,
    }
}

/// True when `value` is a buffer node already in the canonical shape.
pub fn is_canonical_buffer(value: &Value) -> bool {
    match value {
        Value::Object(m) => is_canonical_buffer_map(m),
        _ => false,
    }
}

/// Rewrites every buffer node in `value`, at any depth, into the canonical shape, and refuses
/// strings (or object keys) that contain NUL.
pub fn canonicalize(value: &mut Value) -> Result<()> {
    match value {
        Value::String(s) => check_no_nul(s),
        Value::Array(items) => items.iter_mut().try_for_each(canonicalize),
        Value::Object(m) => {
            if let Some(bytes) = object_bytes(m) {
                if !is_canonical_buffer_map(m) {
                    *value = buffer_node(&bytes);
                }
                return Ok(());
            }
            for (k, v) in m.iter_mut() {
                check_no_nul(k)?;
                canonicalize(v)?;
            }
            Ok(())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(()),
    }
}

/// Parses JSON text and canonicalizes it; the text form of what is stored.
pub fn canonical_text(json: &str) -> Result<String> {
    let mut v: Value = serde_json::from_str(json)?;
    canonicalize(&mut v)?;
    to_text(&v)
}

/// Compact JSON text of `value` with numbers written as JavaScript writes them (see the module
/// documentation); the text form of a canonicalized tree.
pub fn to_text(value: &Value) -> Result<String> {
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, JsNumbers);
    serde::Serialize::serialize(value, &mut ser)?;
    // serde_json writes only UTF-8.
    String::from_utf8(out).map_err(|e| Error::internal(format!("JSON text is not UTF-8: {e}")))
}

/// serde_json's compact output, except that every number is written like JavaScript's
/// `Number::toString` writes the double JavaScript would read.
struct JsNumbers;

impl Formatter for JsNumbers {
    fn write_i64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, n: i64) -> std::io::Result<()> {
        if n.unsigned_abs() <= MAX_SAFE_INTEGER {
            CompactFormatter.write_i64(w, n)
        } else {
            // `as` rounds to nearest, ties to even: what JSON.parse does with the digits.
            write_js_number(w, n as f64)
        }
    }

    fn write_u64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, n: u64) -> std::io::Result<()> {
        if n <= MAX_SAFE_INTEGER {
            CompactFormatter.write_u64(w, n)
        } else {
            write_js_number(w, n as f64)
        }
    }

    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, n: f64) -> std::io::Result<()> {
        write_js_number(w, n)
    }

    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, n: f32) -> std::io::Result<()> {
        write_js_number(w, f64::from(n))
    }
}

/// 2^53: every integer up to it is a double, written with all its digits by JavaScript too.
const MAX_SAFE_INTEGER: u64 = 1 << 53;

/// ECMAScript `Number::toString(x)`, as `JSON.stringify` writes a number: `-0` gives `"0"`,
/// and a non-finite input, which JSON cannot hold, gives `"null"`.
pub fn js_number(x: f64) -> String {
    let mut out = Vec::with_capacity(24);
    // Writing to a Vec cannot fail.
    let _ = write_js_number(&mut out, x);
    String::from_utf8_lossy(&out).into_owned()
}

fn write_js_number<W: ?Sized + std::io::Write>(w: &mut W, x: f64) -> std::io::Result<()> {
    if !x.is_finite() {
        return w.write_all(b"null");
    }
    if x == 0.0 {
        return w.write_all(b"0");
    }
    // ryu-js implements Number::toString: the shortest digits that read back to `x`, the
    // closest (then the even) ones when several are as short, in ECMAScript's layout. std's
    // `{:e}` is shortest too but rounds ties up (2018670712153354.25 gives ...54.3, JavaScript
    // writes ...54.2).
    w.write_all(ryu_js::Buffer::new().format_finite(x).as_bytes())
}

/// True when some number in valid JSON text `json` is not written as [`to_text`] writes it, so
/// the text needs a parse and re-write to be canonical. PostgreSQL's `jsonb` gives numbers back
/// in plain decimal (`4.049e+42` comes back with all 43 digits, `1e-7` as `0.0000001`).
pub fn has_noncanonical_number(json: &str) -> bool {
    scan(json, Scan::NUMBERS).is_none()
}

/// Whether a JSON number token is already written as JavaScript writes its double.
fn is_canonical_number(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token);
    // The common case, cheaply: an integer below 10^15 (so below 2^53) without a leading zero.
    if !digits.is_empty()
        && digits.len() <= 15
        && digits.bytes().all(|c| c.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'))
    {
        return token != "-0";
    }
    match token.parse::<f64>() {
        // std's parsing is correctly rounded, like JSON.parse.
        Ok(x) if x.is_finite() => js_number(x) == token,
        // Out of range of a double: the full parse refuses it.
        _ => false,
    }
}

/// True when valid JSON text `json` may hold a buffer node, so [`canonicalize`] could change
/// it. False is a proof: no `"Buffer"`/`"buffer"` string anywhere, and no object whose first
/// key (in text order) passes `parseInt` while its first value is a number; a numeric-key
/// buffer needs every key and every value to pass, so the first pair decides. Conservative:
/// anything unusual in a first key (escape, white space, non-ASCII) answers true.
///
/// Lets reads of stored values without buffers (libsignal session records) skip a parse and a
/// re-encode. Only for text known to be valid JSON, such as PostgreSQL's `jsonb` output.
pub fn may_hold_buffer(json: &str) -> bool {
    scan(json, Scan::BUFFERS).is_none()
}

/// Valid JSON text without the white space between tokens, as `serde_json` writes it; what a
/// value read from `jsonb` (which writes `", "` and `": "`) looks like when handed out, so the
/// text of a value does not depend on whether it came from the cache or the database.
pub fn minify_json(json: &str) -> String {
    // Without checks the scan always answers.
    scan(json, Scan::MINIFY).unwrap_or_default()
}

/// The text a value read from `jsonb` is handed out as, in one pass, when it is canonical
/// already: `Some(minify_json(json))` exactly when neither [`may_hold_buffer`] nor
/// [`has_noncanonical_number`] holds, else `None` (then the full parse and canonicalization
/// are needed). Every read of a stored value goes through it: three passes over the text were
/// a visible part of a 1,000-key read.
pub fn canonical_minified(json: &str) -> Option<String> {
    scan(json, Scan::READ)
}

/// Like [`canonical_minified`], but canonical buffer nodes written exactly as
/// `{"type":"Buffer","data":"<standard base64>"}` (what the Node binding and Baileys'
/// `BufferJSON.replacer` write) pass as they are: the fast path of a write, for valid JSON
/// text (see `StoredValue::from_json`).
pub fn canonical_as_written(json: &str) -> Option<String> {
    scan(json, Scan::WRITE)
}

const CANONICAL_BUFFER_HEAD: &[u8] = br#"{"type":"Buffer","data":""#;

/// What one [`scan`] of JSON text checks and makes.
#[derive(Clone, Copy)]
struct Scan {
    /// Fail on a buffer candidate (see [`may_hold_buffer`]).
    buffers: bool,
    /// ... except canonical buffer nodes written exactly as `{"type":"Buffer","data":"…"}`.
    buffers_as_written: bool,
    /// Fail on a number not written as JavaScript writes it.
    numbers: bool,
    /// Make the text without white space between tokens.
    minify: bool,
}

impl Scan {
    const NOTHING: Scan = Scan {
        buffers: false,
        buffers_as_written: false,
        numbers: false,
        minify: false,
    };
    const BUFFERS: Scan = Scan {
        buffers: true,
        ..Scan::NOTHING
    };
    const NUMBERS: Scan = Scan {
        numbers: true,
        ..Scan::NOTHING
    };
    const MINIFY: Scan = Scan {
        minify: true,
        ..Scan::NOTHING
    };
    const READ: Scan = Scan {
        buffers: true,
        numbers: true,
        minify: true,
        ..Scan::NOTHING
    };
    const WRITE: Scan = Scan {
        buffers_as_written: true,
        ..Scan::READ
    };
}

/// The one pass over JSON text behind [`may_hold_buffer`], [`has_noncanonical_number`],
/// [`minify_json`], [`canonical_minified`] and [`canonical_as_written`]: `None` as soon as a
/// check of `how` fails, else the text (made compact when `how.minify`, else empty).
#[inline(always)]
fn scan(json: &str, how: Scan) -> Option<String> {
    let b = json.as_bytes();
    let mut out = String::with_capacity(if how.minify { json.len() } else { 0 });
    let mut i = 0;
    let mut start = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = string_end(b, i + 1);
                if how.buffers && is_buffer_word(&b[i + 1..end]) {
                    return None;
                }
                i = end + 1;
            }
            b'{' if how.buffers_as_written && b[i..].starts_with(CANONICAL_BUFFER_HEAD) => {
                let data = i + CANONICAL_BUFFER_HEAD.len();
                let end = string_end(b, data);
                if b.get(end + 1) != Some(&b'}') || STANDARD.decode(&b[data..end]).is_err() {
                    return None;
                }
                i = end + 2;
            }
            b'{' if how.buffers => {
                // The first pair decides whether an object may be a numeric-key buffer (see
                // `may_hold_buffer`); its key is then scanned like any string.
                let k = skip_ws(b, i + 1);
                if k < b.len() && b[k] == b'"' {
                    let end = string_end(b, k + 1);
                    if key_may_parse_int(&b[k + 1..end]) {
                        let colon = skip_ws(b, end + 1);
                        let v = skip_ws(b, colon + 1);
                        if v < b.len() && (b[v] == b'-' || b[v].is_ascii_digit()) {
                            return None;
                        }
                    }
                }
                i += 1;
            }
            b'-' | b'0'..=b'9' if how.numbers => {
                let token = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                if !is_canonical_number(&json[token..i]) {
                    return None;
                }
            }
            b' ' | b'\t' | b'\n' | b'\r' if how.minify => {
                out.push_str(&json[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if how.minify {
        out.push_str(&json[start.min(json.len())..]);
    }
    Some(out)
}

/// Valid JSON without a repeated key in any object: what a write's fast path needs to know
/// before it keeps a value's text as it is (a repeated key would be kept in the text while
/// PostgreSQL keeps only the last). Deserializing it checks exactly that. Keys are borrowed from
/// the text (copied only when they hold an escape) and kept on one stack for the whole value:
/// allocating every key and a list per object was most of a `set`'s time on the JS thread.
pub struct UniqueKeys;

impl<'de> serde::Deserialize<'de> for UniqueKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let mut keys = Vec::new();
        d.deserialize_any(UniqueKeysVisitor { keys: &mut keys })
    }
}

/// Checks one JSON value; `keys` holds the keys of the objects being read, innermost last.
struct UniqueKeysVisitor<'a, 'de> {
    keys: &'a mut Vec<Cow<'de, str>>,
}

impl<'de> serde::de::DeserializeSeed<'de> for UniqueKeysVisitor<'_, 'de> {
    type Value = UniqueKeys;

    fn deserialize<D: serde::Deserializer<'de>>(
        self,
        d: D,
    ) -> std::result::Result<UniqueKeys, D::Error> {
        d.deserialize_any(self)
    }
}

/// An object key, borrowed from the text when it holds no escape.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> serde::de::Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> std::result::Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

/// Past this many keys an object's keys are checked with a hash set instead of the stack.
const LINEAR_KEYS: usize = 16;

impl<'de> serde::de::Visitor<'de> for UniqueKeysVisitor<'_, 'de> {
    type Value = UniqueKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_i64<E>(self, _: i64) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_u64<E>(self, _: u64) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_f64<E>(self, _: f64) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_str<E>(self, _: &str) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_unit<E>(self) -> std::result::Result<UniqueKeys, E> {
        Ok(UniqueKeys)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        self,
        mut seq: A,
    ) -> std::result::Result<UniqueKeys, A::Error> {
        while seq
            .next_element_seed(UniqueKeysVisitor {
                keys: &mut *self.keys,
            })?
            .is_some()
        {}
        Ok(UniqueKeys)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(
        self,
        mut map: A,
    ) -> std::result::Result<UniqueKeys, A::Error> {
        // This object's keys are `keys[base..]`: a nested value pushes its own above them and
        // takes them off again before the next key of this one is pushed.
        let base = self.keys.len();
        let mut set: Option<std::collections::HashSet<Cow<'de, str>>> = None;
        while let Some(Key(k)) = map.next_key::<Key<'de>>()? {
            map.next_value_seed(UniqueKeysVisitor {
                keys: &mut *self.keys,
            })?;
            let repeated = match &mut set {
                Some(set) => !set.insert(k),
                None if self.keys.len() - base < LINEAR_KEYS => {
                    let r = self.keys[base..].contains(&k);
                    self.keys.push(k);
                    r
                }
                None => {
                    let mut all: std::collections::HashSet<_> = self.keys.drain(base..).collect();
                    let r = !all.insert(k);
                    set = Some(all);
                    r
                }
            };
            if repeated {
                return Err(serde::de::Error::custom("a key is repeated in an object"));
            }
        }
        self.keys.truncate(base);
        Ok(UniqueKeys)
    }
}

fn is_buffer_word(s: &[u8]) -> bool {
    s == b"Buffer" || s == b"buffer"
}

/// Index of the closing quote of the string whose text starts at `start` (or the end).
/// `memchr2` skips the long base64 strings of session records many bytes at a time.
fn string_end(b: &[u8], start: usize) -> usize {
    let mut j = start;
    while j < b.len() {
        match memchr::memchr2(b'"', b'\\', &b[j..]) {
            None => return b.len(),
            Some(k) if b[j + k] == b'"' => return j + k,
            Some(k) => j += k + 2,
        }
    }
    b.len()
}

fn skip_ws(b: &[u8], mut j: usize) -> usize {
    while j < b.len() && matches!(b[j], b' ' | b'\t' | b'\n' | b'\r') {
        j += 1;
    }
    j
}

/// Whether `parseInt(key, 10)` might not be NaN: a digit, a sign, white space, an escape or a
/// non-ASCII character (JavaScript white space) first. Empty keys cannot parse.
fn key_may_parse_int(key: &[u8]) -> bool {
    match key.first() {
        None => false,
        Some(&c) => {
            c.is_ascii_digit()
                || c >= 0x80
                || matches!(
                    c,
                    b'+' | b'-' | b'\\' | b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c
                )
        }
    }
}

fn check_no_nul(s: &str) -> Result<()> {
    if s.contains('\0') {
        return Err(Error::invalid(
            "strings must not contain NUL (\\u0000): PostgreSQL jsonb cannot store it",
        ));
    }
    Ok(())
}

fn is_canonical_buffer_map(m: &Map<String, Value>) -> bool {
    // Key order too: jsonb gives {"data":..,"type":..} back, which must be rebuilt.
    m.keys().map(String::as_str).eq(["type", "data"])
        && m.get("type").and_then(Value::as_str) == Some("Buffer")
        && m.get("data")
            .and_then(Value::as_str)
            .is_some_and(|s| STANDARD.decode(s).is_ok())
}

fn object_bytes(m: &Map<String, Value>) -> Option<Vec<u8>> {
    // Shapes 1 and 2: {"type":"Buffer","data": "<base64>" | [n, ...]}.
    if m.get("type").and_then(Value::as_str) == Some("Buffer") {
        if let Some(data) = m.get("data") {
            return data_bytes(data);
        }
    }
    // Shape 3: {"buffer":true,"value": "<base64>" | [n, ...]}.
    if m.get("buffer") == Some(&Value::Bool(true)) {
        if let Some(data) = m.get("value") {
            return data_bytes(data);
        }
    }
    // Shape 4: {"0":n,"1":n,...}.
    numeric_key_bytes(m)
}

fn data_bytes(data: &Value) -> Option<Vec<u8>> {
    match data {
        Value::String(s) => Some(decode_base64_like_node(s)),
        Value::Array(items) => items.iter().map(|v| v.as_f64().map(to_uint8)).collect(),
        _ => None,
    }
}

/// Baileys' reviver: a non-empty object whose every key passes `!isNaN(parseInt(k, 10))` and
/// whose every value is a number becomes `Buffer.from(Object.values(obj))`.
fn numeric_key_bytes(m: &Map<String, Value>) -> Option<Vec<u8>> {
    if m.is_empty() || !m.keys().all(|k| parse_int_is_number(k)) {
        return None;
    }
    if !m.values().all(Value::is_number) {
        return None;
    }
    // JavaScript property order: array-index keys ascending, then the rest in insertion order.
    let mut indexed: Vec<(u32, f64)> = Vec::new();
    let mut rest: Vec<f64> = Vec::new();
    for (k, v) in m {
        let n = v.as_f64().unwrap_or(f64::NAN);
        match array_index(k) {
            Some(i) => indexed.push((i, n)),
            None => rest.push(n),
        }
    }
    indexed.sort_by_key(|(i, _)| *i);
    Some(
        indexed
            .into_iter()
            .map(|(_, n)| n)
            .chain(rest)
            .map(to_uint8)
            .collect(),
    )
}

/// `!isNaN(parseInt(k, 10))`: after JavaScript white space, an optional sign, then a digit.
fn parse_int_is_number(k: &str) -> bool {
    let t = k.trim_start_matches(is_js_whitespace);
    let t = t.strip_prefix(['+', '-']).unwrap_or(t);
    t.starts_with(|c: char| c.is_ascii_digit())
}

fn is_js_whitespace(c: char) -> bool {
    matches!(
        c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202f}'
                | '\u{205f}'
                | '\u{3000}'
                | '\u{feff}'
    )
}

/// A JavaScript array index: the canonical decimal form of an integer in `0..=2^32-2`.
fn array_index(k: &str) -> Option<u32> {
    if k.is_empty() || (k.len() > 1 && k.starts_with('0')) || !k.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    k.parse::<u32>().ok().filter(|&i| i != u32::MAX)
}

/// ECMAScript ToUint8, as `Buffer.from(array)` applies to each element.
fn to_uint8(n: f64) -> u8 {
    if !n.is_finite() {
        return 0;
    }
    n.trunc().rem_euclid(256.0) as u8
}

/// Decodes base64 the way Node's `Buffer.from(s, 'base64')` does: both alphabets, characters
/// outside them skipped, decoding stops at the first `=`, a trailing partial group gives the
/// bytes it fully covers. Standard padded text (what we write) takes the fast path.
pub fn decode_base64_like_node(s: &str) -> Vec<u8> {
    if let Ok(bytes) = STANDARD.decode(s) {
        return bytes;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    for b in s.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => continue,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn canon(v: Value) -> Value {
        let mut v = v;
        canonicalize(&mut v).expect("canonicalize");
        v
    }

    #[test]
    fn unique_keys_finds_a_repeat_at_any_depth_and_only_within_one_object() {
        let ok = |t: &str| serde_json::from_str::<UniqueKeys>(t).is_ok();
        // the same key in nested and sibling objects is no repeat
        assert!(ok(
            r#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}],"c":{"b":{"c":0}}}"#
        ));
        // a repeat after a nested object whose keys went on the same stack
        assert!(!ok(r#"{"a":{"x":1,"y":2},"b":1,"a":3}"#));
        assert!(!ok(r#"{"a":{"b":1,"c":{"d":1,"d":2}}}"#));
        assert!(!ok(r#"[1,{"k":1},{"k":1,"k":2}]"#));
        // escaped keys (copied, not borrowed) compare by their text
        assert!(!ok(r#"{"\u0061":1,"a":2}"#));
        // past the linear check: a hash set, with keys that came before and after it
        let many: Vec<String> = (0..40)
            .map(|i| format!("\"k{i}\":{{\"k{i}\":1}}"))
            .collect();
        let object = format!("{{{}}}", many.join(","));
        assert!(ok(&object));
        assert!(!ok(&format!("{{{},\"k3\":0}}", many.join(","))));
        assert!(!ok(&format!("{{{},\"k39\":0}}", many.join(","))));
        assert!(!ok(&format!(
            "{{\"k0\":0,{}}}",
            many[1..].join(",") + ",\"k0\":1"
        )));
        assert!(!ok("{\"a\":1"), "not JSON");
    }

    #[test]
    fn all_shapes_give_the_same_bytes() {
        let want = vec![0u8, 1, 2, 254, 255];
        let shapes = [
            json!({"type":"Buffer","data":"AAEC/v8="}),
            json!({"type":"Buffer","data":[0,1,2,254,255]}),
            json!({"buffer":true,"value":"AAEC/v8="}),
            json!({"buffer":true,"value":[0,1,2,254,255]}),
            json!({"0":0,"1":1,"2":2,"3":254,"4":255}),
            json!({"type":"Buffer","data":"AAEC_v8"}),
        ];
        for s in shapes {
            assert_eq!(buffer_bytes(&s), Some(want.clone()), "{s}");
            assert_eq!(canon(s), buffer_node(&want));
        }
    }

    #[test]
    fn nested_buffers_revive_at_any_depth() {
        let v =
            json!({"a":[{"b":{"type":"Buffer","data":[7]}}],"c":{"buffer":true,"value":"CA=="}});
        assert_eq!(
            canon(v),
            json!({"a":[{"b":{"type":"Buffer","data":"Bw=="}}],"c":{"type":"Buffer","data":"CA=="}})
        );
    }

    #[test]
    fn base64_strings_and_ordinary_objects_stay() {
        let v = json!({
            "keyData": "AAEC/v8=",
            "_sessions": {"BQ==": {"registrationId": 5, "currentRatchet": {"rootKey": "q83v"}}},
            "empty": {},
            "memory": {"123@s.whatsapp.net": true},
            "mixed": {"1": 1, "x": 2},
            "typ": {"type": "Buffer"},
            "arr": [1, 2, 3]
        });
        assert_eq!(canon(v.clone()), v);
    }

    #[test]
    fn numeric_keys_follow_javascript_property_order() {
        // Index keys ascending first, then other parseInt-able keys in insertion order.
        let v: Value = serde_json::from_str(r#"{"10":3,"-1":9,"2":1,"01":8,"0":0}"#).unwrap();
        assert_eq!(buffer_bytes(&v), Some(vec![0, 1, 3, 9, 8]));
        // Values are converted like Buffer.from does: truncation and modulo 256.
        let v = json!({"0": 256, "1": -1, "2": 1.9, "3": 300});
        assert_eq!(buffer_bytes(&v), Some(vec![0, 255, 1, 44]));
    }

    #[test]
    fn node_base64_leniency() {
        assert_eq!(decode_base64_like_node("AQID"), vec![1, 2, 3]);
        assert_eq!(decode_base64_like_node("AQI"), vec![1, 2]);
        assert_eq!(decode_base64_like_node("AQ"), vec![1]);
        assert_eq!(decode_base64_like_node("A"), Vec::<u8>::new());
        assert_eq!(decode_base64_like_node("AQ ID\n"), vec![1, 2, 3]);
        assert_eq!(decode_base64_like_node("-_-_"), vec![0xfb, 0xff, 0xbf]);
        assert_eq!(decode_base64_like_node("AQ==AQID"), vec![1]);
    }

    #[test]
    fn nul_in_strings_is_refused() {
        let mut v = json!({"a": "x\u{0}y"});
        assert!(canonicalize(&mut v).is_err());
        let mut v = json!({"a\u{0}": 1});
        assert!(canonicalize(&mut v).is_err());
    }

    #[test]
    fn may_hold_buffer_finds_every_shape_and_passes_plain_records() {
        for yes in [
            r#"{"a": {"data": "AQI=", "type": "Buffer"}}"#,
            r#"{"buffer": true, "value": "AQ=="}"#,
            r#"[{"x": 1}, {"0": 5, "1": 6}]"#,
            r#"{"k": {" 1": 5}}"#,
            r#"{"k": {"-1": -5}}"#,
            r#"{"k": {"\u00a01": 5}}"#,
        ] {
            assert!(may_hold_buffer(yes), "{yes}");
        }
        for no in [
            r#"{"_sessions": {"BQ==": {"messageKeys": {"0": "AAEC", "1": "AQID"}, "n": 5}}, "version": "v1"}"#,
            r#"{"123@s.whatsapp.net": true}"#,
            r#"["0", "12"]"#,
            r#""Buffer is a word here only as \"text\" of a longer string""#,
            r#"{"": 1}"#,
            r#"{}"#,
        ] {
            assert!(!may_hold_buffer(no), "{no}");
        }
    }

    #[test]
    fn minify_keeps_strings_and_drops_token_space() {
        assert_eq!(
            minify_json(r#"{"a": [1, "x y ", {"b": true}], "c\" d": "e\\ "}"#),
            r#"{"a":[1,"x y ",{"b":true}],"c\" d":"e\\ "}"#
        );
        assert_eq!(minify_json("  [ ]\n"), "[]");
    }

    #[test]
    fn jsonb_key_order_is_rebuilt() {
        // jsonb sorts keys: what PostgreSQL gives back must come out in Baileys' order.
        let mut v: Value = serde_json::from_str(r#"{"data":"AQI=","type":"Buffer"}"#).unwrap();
        assert!(!is_canonical_buffer(&v));
        canonicalize(&mut v).unwrap();
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"type":"Buffer","data":"AQI="}"#
        );
    }

    #[test]
    fn canonical_buffers_are_left_as_they_are() {
        let v = buffer_node(&[1, 2, 3]);
        assert!(is_canonical_buffer(&v));
        assert_eq!(canon(v.clone()), v);
    }

    #[test]
    fn numbers_are_written_as_javascript_writes_them() {
        for (x, js) in [
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (100.0, "100"),
            (0.1, "0.1"),
            (1e21, "1e+21"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (4.049e42, "4.049e+42"),
            (-5e-324, "-5e-324"),
            // Exactly halfway between two 17-digit texts: the even one, as JavaScript.
            (2018670712153354.0 + 0.25, "2018670712153354.2"),
        ] {
            assert_eq!(js_number(x), js, "{x:e}");
        }
        assert_eq!(
            canonical_text(r#"[9007199254740993,-9223372036854775808,18446744073709551615,1.50]"#)
                .unwrap(),
            "[9007199254740992,-9223372036854776000,18446744073709552000,1.5]"
        );
    }

    #[test]
    fn jsonb_number_text_is_recognized_for_a_rewrite() {
        // What jsonb gives back for 4.049e+42, 1e-7, and an integer beyond 2^53.
        for text in [
            r#"{"a": 4049000000000000000000000000000000000000000}"#,
            r#"[0.0000001]"#,
            r#"[9007199254740993]"#,
            r#"[1.50]"#,
            r#"[-0]"#,
            r#"[1e400]"#,
        ] {
            assert!(has_noncanonical_number(text), "{text}");
        }
        for text in [
            r#"{"a": [1, -2, 0.5, 123456789012345, 1e+21, "1.50", "-0"], "b": 5e-324}"#,
            r#"{"x1.0": 0}"#,
            "[]",
        ] {
            assert!(!has_noncanonical_number(text), "{text}");
        }
    }

    #[test]
    fn one_pass_answers_like_the_three_scans() {
        for text in [
            r#"{"a": {"data": "AQI=", "type": "Buffer"}}"#,
            r#"{"buffer": true, "value": "AQ=="}"#,
            r#"[{"x": 1}, {"0": 5, "1": 6}]"#,
            r#"{"k": {" 1": 5}}"#,
            r#"{"k": {"-1": -5}}"#,
            r#"{"_sessions": {"BQ==": {"messageKeys": {"0": "AAEC", "1": "AQID"}, "n": 5}}, "version": "v1"}"#,
            r#"{"123@s.whatsapp.net": true}"#,
            r#"["0", "12"]"#,
            r#""Buffer is a word here only as \"text\" of a longer string""#,
            r#"{"": 1}"#,
            r#"{}"#,
            r#"{"a": 4049000000000000000000000000000000000000000}"#,
            r#"[0.0000001]"#,
            r#"[1.50]"#,
            r#"[-0]"#,
            r#"{"a": [1, -2, 0.5, 123456789012345, 1e+21, "1.50", "-0"], "b": 5e-324}"#,
            r#"{"x\" y": "a\\", "z": [ 1 , 2 ]}"#,
            "  [ ]\n",
            r#""unterminated \"#,
        ] {
            let three = (!may_hold_buffer(text) && !has_noncanonical_number(text))
                .then(|| minify_json(text));
            assert_eq!(canonical_minified(text), three, "{text}");
        }
    }

    #[test]
    fn fuzz_findings_are_fixed_points() {
        // Inputs the codec fuzz target failed on before parsing was correctly rounded: each
        // was stored as text that read back as another double.
        for (input, stored) in [
            ("4049e39", "4.049e+42"),
            ("5e32", "5e+32"),
            (
                "44444444444444444444444444444444444444444444444444444444444444444444444444444444444440",
                "4.444444444444445e+85",
            ),
        ] {
            let canon = canonical_text(input).unwrap();
            assert_eq!(canon, stored, "{input}");
            assert_eq!(canonical_text(&canon).unwrap(), canon, "{input}");
        }
    }
}
