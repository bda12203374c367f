//! Bad input at the core's boundary, generated: whatever text reaches `parse_writes`,
//! `StoredValue::from_json` or the id checks, the answer is a value or `InvalidArgument`,
//! never a panic, and a refused `set` enqueues nothing.

use authstate::{parse_writes, validate, ErrorKind, StoredValue};
use proptest::prelude::*;

/// Text near valid `set` arguments: valid ones with a byte flipped, cut or duplicated, plus
/// arbitrary strings.
fn near_json() -> impl Strategy<Value = String> {
    let valid = prop_oneof![
        Just(r#"{"pre-key":{"1":{"public":{"type":"Buffer","data":"BQ=="}},"2":null}}"#.to_string()),
        Just(r#"{"session":{"1@s.whatsapp.net:2.0":{"_sessions":{"BQ==":{"n":1}}}}}"#.to_string()),
        Just(r#"{"identity-key":{"x":{"0":5,"1":6}},"tctoken":{"y":{"token":{"buffer":true,"value":[1,2]}}}}"#.to_string()),
    ];
    prop_oneof![
        (valid.clone(), any::<usize>(), any::<u8>()).prop_map(|(s, i, b)| {
            let mut bytes = s.into_bytes();
            let i = i % bytes.len();
            bytes[i] = b;
            String::from_utf8_lossy(&bytes).into_owned()
        }),
        (valid.clone(), any::<usize>()).prop_map(|(s, i)| {
            let mut end = i % s.len();
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s[..end].to_string()
        }),
        valid,
        ".{0,64}",
        "[{}\\[\\]\":,0-9a-z\\\\ -]{0,64}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn set_arguments_are_parsed_or_refused_never_panic(text in near_json()) {
        match parse_writes(&text) {
            Ok(writes) => {
                for w in &writes {
                    prop_assert!(validate::key_type(w.key_type()).is_ok());
                    prop_assert!(validate::key_id(w.key_id()).is_ok());
                    if let Some(v) = w.value() {
                        // What is accepted is canonical: a second pass changes nothing.
                        let again = StoredValue::from_json(v.as_str()).unwrap();
                        prop_assert_eq!(again.as_str(), v.as_str());
                    }
                }
            }
            Err(e) => prop_assert!((e.kind() == ErrorKind::InvalidArgument), "{e:?}"),
        }
    }

    #[test]
    fn values_are_parsed_or_refused_never_panic(text in near_json()) {
        if let Err(e) = StoredValue::from_json(&text) {
            prop_assert!((e.kind() == ErrorKind::InvalidArgument), "{e:?}");
        }
    }

    #[test]
    fn ids_are_checked_never_panic(s in "\\PC{0,80}|[\\x00-\\x7f]{0,60}") {
        let _ = validate::company_id(&s);
        let _ = validate::key_type(&s);
        let ok = validate::key_id(&s).is_ok();
        prop_assert_eq!(ok, !s.is_empty() && !s.contains('\0') && s.len() <= validate::MAX_KEY_ID_LEN);
    }
}

#[test]
fn deeply_nested_input_is_refused_not_a_stack_overflow() {
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(matches!(
        StoredValue::from_json(&deep),
        Err(ref e) if e.kind() == ErrorKind::InvalidArgument
    ));
    let set = format!(r#"{{"session":{{"a":{deep}}}}}"#);
    assert!(matches!(parse_writes(&set), Err(ref e) if e.kind() == ErrorKind::InvalidArgument));
}
