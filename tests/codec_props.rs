//! Property tests of the value codec: random JSON trees with buffers in every shape at random
//! depths revive to the exact bytes; trees without buffer nodes round-trip unchanged; and the
//! same holds through PostgreSQL's jsonb.

mod common;

use authstate::codec::{buffer_bytes, buffer_node, canonicalize, decode_base64_like_node};
use authstate::{KeyWrite, StoredValue};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Map, Value};

/// A buffer written in one of the stored shapes, with the bytes it must revive to.
fn shaped_buffer() -> impl Strategy<Value = (Value, Vec<u8>)> {
    (proptest::collection::vec(any::<u8>(), 0..64), 0..6usize).prop_map(|(bytes, shape)| {
        let v = match shape {
            0 => json!({"type": "Buffer", "data": STANDARD.encode(&bytes)}),
            1 => json!({"type": "Buffer", "data": bytes}),
            2 => json!({"buffer": true, "value": STANDARD.encode(&bytes)}),
            3 => json!({"buffer": true, "value": bytes}),
            4 if !bytes.is_empty() => {
                let m: Map<String, Value> = bytes
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i.to_string(), json!(b)))
                    .collect();
                Value::Object(m)
            }
            _ => json!({"type": "Buffer", "data": URL_SAFE_NO_PAD.encode(&bytes)}),
        };
        (v, bytes)
    })
}

/// JSON without buffer nodes: strings (including base64 text), numbers, objects whose keys are
/// not all numeric, arrays.
fn plain_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        // Integers JavaScript holds exactly; bigger ones are stored as the double JavaScript
        // reads (tests/numbers_props.rs).
        (-(1i64 << 53)..=(1i64 << 53)).prop_map(|n| json!(n)),
        "[a-zA-Z0-9+/=@:._ -]{0,24}".prop_map(Value::String),
        proptest::collection::vec(any::<u8>(), 0..24)
            .prop_map(|b| Value::String(STANDARD_NO_PAD.encode(b))),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_][a-zA-Z0-9_@.:]{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Places buffers at random spots inside a plain tree; returns the tree and its canonical form.
fn tree_with_buffers() -> impl Strategy<Value = (Value, Value)> {
    (
        plain_json(),
        proptest::collection::vec(shaped_buffer(), 1..5),
        any::<u64>(),
    )
        .prop_map(|(plain, buffers, seed)| {
            let mut shaped = json!({"root": plain.clone(), "list": []});
            let mut canon = json!({"root": plain, "list": []});
            for (i, (b, bytes)) in buffers.into_iter().enumerate() {
                let key = format!("buf{}_{}", i, seed % 97);
                if i % 2 == 0 {
                    shaped[&key] = json!({"nested": [b]});
                    canon[&key] = json!({"nested": [buffer_node(&bytes)]});
                } else {
                    shaped["list"].as_array_mut().unwrap().push(b);
                    canon["list"]
                        .as_array_mut()
                        .unwrap()
                        .push(buffer_node(&bytes));
                }
            }
            (shaped, canon)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_shape_revives_to_the_exact_bytes((shaped, bytes) in shaped_buffer()) {
        prop_assert_eq!(buffer_bytes(&shaped), Some(bytes.clone()));
        let mut v = shaped;
        canonicalize(&mut v).unwrap();
        prop_assert_eq!(v, buffer_node(&bytes));
    }

    #[test]
    fn trees_without_buffers_are_unchanged(plain in plain_json()) {
        let mut v = plain.clone();
        canonicalize(&mut v).unwrap();
        prop_assert_eq!(v, plain);
    }

    #[test]
    fn buffers_at_any_depth((shaped, canon) in tree_with_buffers()) {
        let mut v = shaped;
        canonicalize(&mut v).unwrap();
        prop_assert_eq!(&v, &canon);
        // Canonical form is a fixed point.
        let mut again = v.clone();
        canonicalize(&mut again).unwrap();
        prop_assert_eq!(again, v);
    }

    #[test]
    fn canonical_base64_decodes_like_node(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
        prop_assert_eq!(decode_base64_like_node(&STANDARD.encode(&bytes)), bytes.clone());
        prop_assert_eq!(decode_base64_like_node(&URL_SAFE_NO_PAD.encode(&bytes)), bytes);
    }
}

#[test]
fn random_trees_round_trip_through_postgres() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, _url) = common::store("codecpg").await;
        let s = store.session("props").await.unwrap();
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = tree_with_buffers();
        let mut expected = Vec::new();
        let mut writes = Vec::new();
        for i in 0..300 {
            let (shaped, canon) = strategy.new_tree(&mut runner).unwrap().current();
            writes.push(
                KeyWrite::put(
                    "session",
                    &format!("k{i}"),
                    StoredValue::from_value(shaped).unwrap(),
                )
                .unwrap(),
            );
            expected.push(canon);
        }
        s.set(writes).await.unwrap();
        // Read back through a fresh store: the value as jsonb gave it back. It is a reader
        // beside the holder of the company's lease, so it runs without one.
        let reader = authstate::Config {
            lease: false,
            ..store.config().clone()
        };
        let fresh = authstate::Store::open(reader).await.unwrap();
        let f = fresh.session("props").await.unwrap();
        let ids: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
        let got = f.get("session", &ids).await.unwrap();
        assert_eq!(got.len(), 300);
        for ((id, v), want) in got.iter().zip(&expected) {
            assert_eq!(&v.to_value(), want, "{id}");
        }
        fresh.close().await.unwrap();
        store.close().await.unwrap();
    });
}

/// Objects that look like buffers to a careless scanner: numeric keys with string values
/// (libsignal's `messageKeys`), mixed values, signed and spaced keys.
fn numeric_key_objects() -> impl Strategy<Value = Value> {
    let key = prop_oneof![
        "[0-9]{1,3}",
        "-[0-9]{1,2}",
        " [0-9]",
        "[0-9]x",
        "[a-z]{1,4}"
    ];
    let val = prop_oneof![
        any::<u8>().prop_map(|n| json!(n)),
        (-300i64..300).prop_map(|n| json!(n)),
        "[A-Za-z0-9+/=]{0,12}".prop_map(Value::String),
        Just(json!(true)),
    ];
    proptest::collection::vec((key, val), 0..6)
        .prop_map(|pairs| Value::Object(pairs.into_iter().collect()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// The read fast path: when the scanner says a text holds no buffer candidate, the full
    /// canonicalization must leave it exactly as it is, whatever the formatting.
    #[test]
    fn no_buffer_candidate_means_canonicalize_changes_nothing(
        tree in prop_oneof![plain_json(), numeric_key_objects(), tree_with_buffers().prop_map(|(shaped, _)| shaped)],
        pretty in any::<bool>(),
    ) {
        let text = if pretty { serde_json::to_string_pretty(&tree).unwrap() } else { serde_json::to_string(&tree).unwrap() };
        let parsed: Value = serde_json::from_str(&text).unwrap();
        let mut canon = parsed.clone();
        canonicalize(&mut canon).unwrap();
        if !authstate::codec::may_hold_buffer(&text) {
            prop_assert_eq!(&canon, &parsed, "scanner missed a buffer in {}", text);
            // The fast path hands out the minified text: the same tree, compact like serde's.
            let min = authstate::codec::minify_json(&text);
            prop_assert_eq!(serde_json::from_str::<Value>(&min).unwrap(), parsed.clone());
            prop_assert_eq!(min, serde_json::to_string(&parsed).unwrap());
        }
        if canon != parsed {
            prop_assert!(authstate::codec::may_hold_buffer(&text));
        }
        // A write keeps canonical text as written: exactly what the tree way makes of it.
        let fast = StoredValue::from_json(&text);
        let slow = serde_json::from_str::<Value>(&text)
            .map_err(authstate::Error::from)
            .and_then(StoredValue::from_value);
        match (fast, slow) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a.as_str(), b.as_str()),
            (Err(a), Err(b)) => prop_assert_eq!(a.kind(), b.kind()),
            (a, b) => prop_assert!(false, "{:?} vs {:?} for {}", a, b, text),
        }
        // The one-pass form used on every read answers like the three scans.
        let three = (!authstate::codec::may_hold_buffer(&text)
            && !authstate::codec::has_noncanonical_number(&text))
        .then(|| authstate::codec::minify_json(&text));
        prop_assert_eq!(authstate::codec::canonical_minified(&text), three, "{}", text);
    }
}
