//! Criterion benchmarks of the value codec on real Baileys values (the fixture corpus): what
//! a `set` costs before any SQL (parse, revive buffers, re-encode), per key type.
//!
//! Run: `cargo bench --bench codec`.

use authstate::codec::canonical_minified;
use authstate::{parse_writes, writes_from_texts};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/baileys/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(path).expect("fixture");
    let v: Value = serde_json::from_str(&text).expect("json");
    v["canonical"].clone()
}

fn benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_writes");
    for (name, ty) in [
        ("session-2.json", "session"),
        ("sender-key-1.json", "sender-key"),
        ("pre-key-0.json", "pre-key"),
        ("creds.json", "creds"),
    ] {
        let value = fixture(name);
        let text = serde_json::json!({ ty: { "5511999999999_1.0": value } }).to_string();
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(ty, |b| b.iter(|| parse_writes(&text).expect("parse")));
    }
    g.finish();
    // The Node binding's path: one text per value, as `JSON.stringify` wrote it (the fast path
    // keeps it after a validating pass and a scan).
    let mut g = c.benchmark_group("writes_from_texts");
    for (name, ty) in [
        ("session-2.json", "session"),
        ("sender-key-1.json", "sender-key"),
        ("pre-key-0.json", "pre-key"),
    ] {
        let text = fixture(name).to_string();
        let (types, ids) = (vec![ty.to_string()], vec!["5511999999999_1.0".to_string()]);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_function(ty, |b| {
            b.iter(|| writes_from_texts(&types, &ids, vec![Some(text.clone())]).expect("valid"))
        });
    }
    g.finish();
}

/// `text` as PostgreSQL's `jsonb` output writes it: a space after every `:` and `,` between
/// tokens.
fn jsonb_style(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        out.push(c);
        if in_string {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == ':' || c == ',' {
            out.push(' ');
        }
    }
    out
}

/// A read: each stored value's `jsonb` text, checked and made compact (every row of a `get`
/// that misses the cache; 1,000 of them in a cold read of a large group's sessions).
fn reads(c: &mut Criterion) {
    let mut g = c.benchmark_group("canonical_minified");
    // Values with buffer nodes take the full parse instead (tested in codec's unit tests).
    let text = jsonb_style(&fixture("session-2.json").to_string());
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("session", |b| {
        b.iter(|| canonical_minified(&text).expect("canonical"))
    });
    g.finish();
}

criterion_group!(codec, benches, reads);
criterion_main!(codec);
