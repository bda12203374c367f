//! The value codec on arbitrary bytes taken as JSON text: canonical text or a typed INVALID
//! error, never a panic. Canonical text is a fixed point, holds numbers as JavaScript writes
//! them, keeps every buffer's bytes and every other leaf's value, and the read path's buffer
//! scanner never misses a buffer.
#![no_main]

use authstate::codec::{
    buffer_bytes, canonicalize, has_noncanonical_number, is_canonical_buffer, may_hold_buffer,
};
use authstate::{ErrorKind, StoredValue};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let stored = match StoredValue::from_json(text) {
        Ok(v) => v,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{text:?}: {e}");
            return;
        }
    };
    let canon = stored.as_str();
    // Fixed point, and nothing for the read path to re-write.
    let again = StoredValue::from_json(canon).expect("canonical text is accepted");
    assert_eq!(again.as_str(), canon, "not a fixed point: {text:?}");
    assert!(!has_noncanonical_number(canon), "{canon}");

    let input: Value = serde_json::from_str(text).expect("accepted text parses");
    let output: Value = serde_json::from_str(canon).expect("canonical text parses");
    same_content(&input, &output, text);

    // The read fast path skips canonicalization when the scanner finds no buffer candidate.
    if !may_hold_buffer(text) {
        let mut c = input.clone();
        canonicalize(&mut c).expect("accepted above");
        assert!(c == input, "scanner missed a buffer in {text:?}");
    }
});

/// `output` is `input` with every buffer node in canonical shape holding the same bytes, and
/// every other leaf the same value (numbers: the same double).
fn same_content(input: &Value, output: &Value, text: &str) {
    if let Some(bytes) = buffer_bytes(input) {
        assert!(is_canonical_buffer(output), "{text:?}: {output}");
        assert_eq!(buffer_bytes(output), Some(bytes), "{text:?}");
        return;
    }
    match (input, output) {
        (Value::Object(a), Value::Object(b)) => {
            assert!(a.keys().eq(b.keys()), "{text:?}: keys changed");
            for (x, y) in a.values().zip(b.values()) {
                same_content(x, y, text);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{text:?}");
            for (x, y) in a.iter().zip(b) {
                same_content(x, y, text);
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            // u64/i64 compare as the double JavaScript reads (`as` rounds like JSON.parse).
            assert_eq!(a.as_f64(), b.as_f64(), "{text:?}: number {a} became {b}");
        }
        (a, b) => assert_eq!(a, b, "{text:?}"),
    }
}
