//! The fixture corpus: real values produced by the real `baileys` npm package
//! (`node/scripts/gen-fixtures.js` writes `tests/fixtures/baileys/`), each in the shape Baileys
//! writes (`canonical`) and in the older stored shapes (`variants`). Every variant must revive
//! to exactly the canonical value, directly and through PostgreSQL.

mod common;

use std::collections::BTreeSet;

use authstate::codec::canonicalize;
use authstate::validate::KNOWN_KEY_TYPES;
use serde_json::Value;

struct Fixture {
    file: String,
    key_type: String,
    id: String,
    canonical: Value,
    variants: Vec<(String, Value)>,
}

fn load() -> Vec<Fixture> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/baileys");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("fixture dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
        let variants = v["variants"]
            .as_object()
            .expect("variants")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        out.push(Fixture {
            file: path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned(),
            key_type: v["type"].as_str().expect("type").to_string(),
            id: v["id"].as_str().expect("id").to_string(),
            canonical: v["canonical"].clone(),
            variants,
        });
    }
    out.sort_by(|a, b| a.file.cmp(&b.file));
    out
}

#[test]
fn corpus_covers_every_key_type_and_creds() {
    let types: BTreeSet<String> = load().into_iter().map(|f| f.key_type).collect();
    for t in KNOWN_KEY_TYPES {
        assert!(types.contains(*t), "no fixture for {t}");
    }
    assert!(types.contains("creds"));
}

#[test]
fn every_variant_revives_to_the_canonical_value() {
    for f in load() {
        let mut canon = f.canonical.clone();
        canonicalize(&mut canon).expect("canonicalize");
        assert_eq!(
            canon, f.canonical,
            "{}: what Baileys writes is already canonical",
            f.file
        );
        for (name, variant) in &f.variants {
            let mut v = variant.clone();
            canonicalize(&mut v).expect("canonicalize");
            assert_eq!(v, f.canonical, "{} variant {name}", f.file);
        }
    }
}

#[tokio::test]
async fn variants_stored_by_sql_read_back_as_canonical() {
    let (store, url) = common::store("fixtures").await;
    let db = common::sql(&url).await;
    let fixtures = load();
    for f in &fixtures {
        for (n, (name, variant)) in f.variants.iter().enumerate() {
            let company = format!("fx-{name}");
            if f.key_type == "creds" {
                db.execute(
                    "INSERT INTO whatsapp_auth (company_id, creds) VALUES ($1, $2::text::jsonb)",
                    &[&company, &variant.to_string()],
                )
                .await
                .expect("insert creds");
            } else {
                db.execute(
                    "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES ($1, $2, $3, $4::text::jsonb)",
                    &[&company, &f.key_type, &format!("{}#{}#{n}", f.id, f.file), &variant.to_string()],
                )
                .await
                .expect("insert key");
            }
        }
    }
    for f in &fixtures {
        for (n, (name, _)) in f.variants.iter().enumerate() {
            let s = store.session(&format!("fx-{name}")).await.expect("session");
            let got = if f.key_type == "creds" {
                s.load_creds()
                    .await
                    .expect("load")
                    .expect("present")
                    .to_value()
            } else {
                let id = format!("{}#{}#{n}", f.id, f.file);
                let found = s.get(&f.key_type, &[id]).await.expect("get");
                assert_eq!(found.len(), 1, "{} {name}", f.file);
                found[0].1.to_value()
            };
            assert_eq!(
                got, f.canonical,
                "{} variant {name} through PostgreSQL",
                f.file
            );
        }
    }
    store.close().await.expect("close");
}
