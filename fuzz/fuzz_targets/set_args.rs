//! Baileys' `keys.set` argument parser on arbitrary text: writes or a typed INVALID error,
//! never a panic. Every write's type and id pass validation again, deletes are exactly the
//! null entries, and every value is canonical (a fixed point).
#![no_main]

use authstate::validate::MAX_KEYS_PER_SET;
use authstate::{parse_writes, ErrorKind, KeyWrite, StoredValue};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let writes = match parse_writes(text) {
        Ok(w) => w,
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{text:?}: {e}");
            return;
        }
    };
    assert!(writes.len() <= MAX_KEYS_PER_SET);
    // The argument parses as an object of objects; one write per (type, id) pair, in order.
    let Ok(Value::Object(types)) = serde_json::from_str::<Value>(text) else {
        panic!("accepted {text:?}, which is not an object");
    };
    let pairs: Vec<(&String, &String, bool)> = types
        .iter()
        .flat_map(|(t, ids)| {
            ids.as_object()
                .expect("accepted: every type maps to an object")
                .iter()
                .map(move |(id, v)| (t, id, v.is_null()))
        })
        .collect();
    assert_eq!(pairs.len(), writes.len(), "{text:?}");
    for (w, (t, id, is_delete)) in writes.iter().zip(pairs) {
        assert_eq!(w.key_type(), t);
        assert_eq!(w.key_id(), id);
        assert_eq!(w.value().is_none(), is_delete, "{text:?}");
        match w.value() {
            Some(v) => {
                let again = StoredValue::from_json(v.as_str()).expect("canonical text");
                assert_eq!(&again, v, "not a fixed point: {text:?}");
                KeyWrite::put(t, id, again).expect("validated once, valid again");
            }
            None => {
                KeyWrite::delete(t, id).expect("validated once, valid again");
            }
        }
    }
});
