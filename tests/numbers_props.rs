//! Numbers are stored as JavaScript reads them: generated number texts (random digit strings
//! with exponents, integers of many digits, doubles of every magnitude written several ways,
//! and hand-picked edge cases) are canonicalized by the store and checked against Node's own
//! `JSON.parse`/`JSON.stringify`, in one `node` process per test fed over stdin. The canonical
//! text must be exactly `JSON.stringify(JSON.parse(input))`, read back to the same double
//! (`Object.is`; `-0` is the one documented exception: stored as `0`), be a fixed point, and
//! come back the same from PostgreSQL's `jsonb`.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};

use authstate::codec::{canonical_text, has_noncanonical_number, js_number};
use authstate::{KeyWrite, StoredValue};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::Value;

/// For each input line (a JSON string holding `[input, ours]`, `ours` null when we refused):
/// `ERR` when JSON.parse refuses the input, else `JSON.stringify(JSON.parse(input))`, a tab,
/// whether the input parses to a finite number, a tab, and whether `ours` parses to the very
/// same double (`Object.is`).
const NODE_SCRIPT: &str = r#"
const lines = require('fs').readFileSync(0, 'utf8').split('\n').filter(l => l.length > 0);
const out = [];
for (const line of lines) {
  const [input, ours] = JSON.parse(line);
  let x;
  try { x = JSON.parse(input); } catch (e) { out.push('ERR'); continue; }
  const same = ours === null ? '-' : String(Object.is(x, JSON.parse(ours)));
  out.push(JSON.stringify(x) + '\t' + Number.isFinite(x) + '\t' + same);
}
process.stdout.write(out.join('\n') + '\n');
"#;

/// Runs Node once over all `(input, ours)` pairs and returns its answer per pair.
fn node_answers(pairs: &[(String, Option<String>)]) -> Vec<String> {
    let mut child = Command::new("node")
        .arg("-e")
        .arg(NODE_SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node must be installed to check numbers against JSON.parse");
    let mut input = String::new();
    for (text, ours) in pairs {
        input.push_str(&serde_json::to_string(&(text, ours)).expect("encode"));
        input.push('\n');
    }
    let mut stdin = child.stdin.take().expect("stdin");
    // Node reads all of stdin before writing, so writing first cannot deadlock.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("node output");
    writer.join().expect("writer").expect("write to node");
    assert!(out.status.success(), "node failed: {:?}", out.status);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let answers: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(answers.len(), pairs.len(), "one answer per input");
    answers
}

/// Number texts that are hard or deliberate cases.
const EDGE_CASES: &[&str] = &[
    // Findings of the codec fuzz target before parsing was correctly rounded.
    "4049e39",
    "5e32",
    "44444444444444444444444444444444444444444444444444444444444444444444444444444444444440",
    "0",
    "-0",
    "-0.0",
    "0e0",
    "-0e-5",
    "1",
    "-1",
    "0.1",
    "100.0",
    "1E5",
    "1e21",
    "1e20",
    "123456789012345678901",
    "999999999999999999999",
    "1e-6",
    "1e-7",
    "0.000001",
    "0.0000001",
    "1.5e-7",
    // Around 2^53 and 2^64: exact integers on the Rust side, doubles in JavaScript.
    "9007199254740991",
    "9007199254740992",
    "9007199254740993",
    "9007199254740995",
    "-9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "12345678901234567890",
    // Largest double, and just below / above the point where JavaScript reads Infinity.
    "1.7976931348623157e308",
    "1.7976931348623158e308",
    "1.7976931348623158079e308",
    "1.797693134862315807937289714053e308",
    "1.7976931348623159e308",
    "1e308",
    "1e309",
    "1e400",
    "-1e400",
    "1e100000",
    // Smallest normal and subnormals, and underflow to zero.
    "2.2250738585072011e-308",
    "2.2250738585072012e-308",
    "2.2250738585072014e-308",
    "4.9406564584124654e-324",
    "5e-324",
    "-5e-324",
    "3e-324",
    "2.4703282292062327e-324",
    "2.4703282292062328e-324",
    "2e-324",
    "1e-400",
    "-1e-400",
    "1e-100000",
    // Classic hard roundings.
    "1e23",
    "8.98846567431158e307",
    "2.2250738585072011360574097967091319759348195463516456480234261098e-308",
    "0.30000000000000004",
    "7.038531e-26",
    "9.109383e-31",
    "1448997445238699",
    "4.35679e-10",
    "6.2208e-5",
    "1.3e-322",
    // Not JSON numbers: both sides must refuse.
    "01",
    "-",
    "1.",
    ".5",
    "+1",
    "1e",
    "1e+",
    "0x10",
    "NaN",
    "Infinity",
    "-Infinity",
];

/// Random digit strings: optional sign, integer part (sometimes with a leading zero, which
/// JSON forbids), optional fraction, optional exponent.
fn digit_strings() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just(""), Just("-")],
        "[0-9]{1,30}",
        proptest::option::of("[0-9]{1,30}"),
        proptest::option::of((
            "[eE]",
            prop_oneof![Just(""), Just("+"), Just("-")],
            0..400u32,
        )),
    )
        .prop_map(|(sign, int, frac, exp)| {
            let mut s = format!("{sign}{int}");
            if let Some(f) = frac {
                s.push('.');
                s.push_str(&f);
            }
            if let Some((e, es, n)) = exp {
                s.push_str(&format!("{e}{es}{n}"));
            }
            s
        })
}

/// Integers of many digits, far beyond 2^64.
fn long_integers() -> impl Strategy<Value = String> {
    (prop_oneof![Just(""), Just("-")], "[1-9][0-9]{15,330}")
        .prop_map(|(sign, digits)| format!("{sign}{digits}"))
}

/// Doubles of every magnitude (random bit patterns), written in several ways: shortest,
/// with too many digits, with a few digits changed at the end (to land between doubles).
fn written_doubles() -> impl Strategy<Value = String> {
    (any::<u64>(), 0..5usize, 17..30usize).prop_filter_map("finite", |(bits, style, prec)| {
        let x = f64::from_bits(bits);
        if !x.is_finite() {
            return None;
        }
        Some(match style {
            0 => format!("{x:e}"),
            1 => format!("{x:.prec$e}"),
            2 => {
                let s = format!("{x:.prec$e}");
                let (m, e) = s.split_once('e')?;
                format!("{}5e{e}", &m[..m.len() - 1])
            }
            3 => js_number(x),
            _ => format!("{x}"),
        })
    })
}

fn sample<S: Strategy>(s: S, n: usize, runner: &mut TestRunner) -> Vec<S::Value> {
    (0..n)
        .map(|_| s.new_tree(runner).expect("generate").current())
        .collect()
}

fn generated_inputs() -> Vec<String> {
    let mut runner = TestRunner::new(proptest::test_runner::Config::default());
    let mut inputs: Vec<String> = EDGE_CASES.iter().map(|s| s.to_string()).collect();
    inputs.extend(sample(digit_strings(), 3000, &mut runner));
    inputs.extend(sample(long_integers(), 1000, &mut runner));
    inputs.extend(sample(written_doubles(), 3000, &mut runner));
    inputs
}

#[test]
fn numbers_are_stored_as_javascript_reads_and_writes_them() {
    let inputs = generated_inputs();
    let ours: Vec<Option<String>> = inputs
        .iter()
        .map(|i| {
            StoredValue::from_json(i)
                .ok()
                .map(|v| v.as_str().to_string())
        })
        .collect();
    let pairs: Vec<(String, Option<String>)> = inputs.iter().cloned().zip(ours).collect();
    let answers = node_answers(&pairs);
    let mut failures = Vec::new();
    for ((input, ours), node) in pairs.iter().zip(&answers) {
        let problem = match (ours, node.split('\t').collect::<Vec<_>>().as_slice()) {
            // Not JSON for Node: we must refuse too.
            (None, ["ERR"]) => None,
            (Some(o), ["ERR"]) => Some(format!("we accept {o}, JSON.parse refuses")),
            // Beyond a double: JavaScript reads Infinity; we refuse (deliberately).
            (None, [_, "false", _]) => None,
            (Some(o), [_, "false", _]) => Some(format!("stored {o}, JS reads Infinity")),
            (None, [js, "true", _]) => Some(format!("refused, JS reads {js}")),
            (Some(o), [js, "true", same]) => {
                let negative_zero = *js == "0" && input.starts_with('-');
                if o != js {
                    Some(format!("stored {o}, JSON.stringify gives {js}"))
                } else if *same != "true" && !negative_zero {
                    Some(format!("stored {o} reads back as another double in JS"))
                } else {
                    None
                }
            }
            (_, other) => Some(format!("unexpected node answer {other:?}")),
        };
        if let Some(p) = problem {
            failures.push(format!("{input}: {p}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} numbers differ from JavaScript:\n{}",
        failures.len(),
        pairs.len(),
        failures.join("\n")
    );
}

#[test]
fn canonical_numbers_are_a_fixed_point_and_need_no_rewrite() {
    for input in generated_inputs() {
        let Ok(canon) = canonical_text(&input) else {
            continue;
        };
        assert_eq!(
            canonical_text(&canon).expect("canonical text parses"),
            canon,
            "{input}"
        );
        assert!(!has_noncanonical_number(&canon), "{input} -> {canon}");
        // Inside a tree too: numbers are found and written the same at any depth.
        let tree = format!(r#"{{"a":[{canon},{{"b":{canon}}}],"s":"{canon}"}}"#);
        assert_eq!(canonical_text(&tree).expect("tree"), tree, "{input}");
        assert!(!has_noncanonical_number(&tree), "{tree}");
    }
}

#[test]
fn numbers_beyond_a_double_are_refused_as_invalid() {
    for bad in ["1e400", "-1e309", r#"{"a":[1,2,1.7976931348623159e308]}"#] {
        let e = StoredValue::from_json(bad).unwrap_err();
        assert_eq!(e.code(), "INVALID", "{bad}");
        assert!(
            e.message().contains("out of range"),
            "{bad}: {}",
            e.message()
        );
    }
}

#[test]
fn deliberate_number_decisions() {
    let canon = |s: &str| StoredValue::from_json(s).unwrap().as_str().to_string();
    assert_eq!(canon("-0"), "0");
    assert_eq!(canon("1e-400"), "0");
    assert_eq!(canon("-1e-400"), "0");
    assert_eq!(canon("5e-324"), "5e-324");
    assert_eq!(canon("9007199254740993"), "9007199254740992");
    assert_eq!(canon("4049e39"), "4.049e+42");
    assert_eq!(canon("[1.0, 1e2, 1E21, 1e-7]"), "[1,100,1e+21,1e-7]");
}

/// What jsonb gives back (plain decimal, all digits) reads as the same canonical text.
#[test]
fn numbers_come_back_from_postgres_as_stored() {
    let mut runner = TestRunner::deterministic();
    let mut inputs: Vec<String> = EDGE_CASES.iter().map(|s| s.to_string()).collect();
    inputs.extend(sample(written_doubles(), 300, &mut runner));
    inputs.extend(sample(long_integers(), 50, &mut runner));
    let values: Vec<StoredValue> = inputs
        .iter()
        .filter_map(|i| StoredValue::from_json(&format!(r#"{{"n":[{i}]}}"#)).ok())
        .collect();
    // With a buffer too, so both read paths (plain text and revived tree) are taken. Under
    // key "z": jsonb sorts keys (by length, then bytes), so "n" stays first.
    let with_buffer: Vec<StoredValue> = values
        .iter()
        .map(|v| {
            let mut t: Value = v.to_value();
            t["z"] = serde_json::json!({"data": "AQI=", "type": "Buffer"});
            StoredValue::from_value(t).unwrap()
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (store, _url) = common::store("numbers").await;
        let s = store.session("numbers").await.unwrap();
        let all: Vec<&StoredValue> = values.iter().chain(&with_buffer).collect();
        let writes = all
            .iter()
            .enumerate()
            .map(|(i, v)| KeyWrite::put("session", &format!("n{i}"), (*v).clone()).unwrap())
            .collect();
        s.set(writes).await.unwrap();
        // A reader beside the holder of the company's lease: without a lease of its own.
        let mut reader = store.config().clone();
        reader.lease = false;
        let fresh = authstate::Store::open(reader).await.unwrap();
        let f = fresh.session("numbers").await.unwrap();
        let ids: Vec<String> = (0..all.len()).map(|i| format!("n{i}")).collect();
        let got = f.get("session", &ids).await.unwrap();
        assert_eq!(got.len(), all.len());
        for (i, want) in all.iter().enumerate() {
            let id = format!("n{i}");
            let (_, v) = got.iter().find(|(k, _)| *k == id).expect("read back");
            assert_eq!(v.as_str(), want.as_str(), "{id}");
        }
        fresh.close().await.unwrap();
        store.close().await.unwrap();
    });
}
