//! Operator tools against a real PostgreSQL: export/import of Baileys folders, copy between
//! two clusters, cleanup, single keys, and the CLI's answers to bad input. The README's
//! runbook "PostgreSQL is lost: go to files in minutes" is executed step by step.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};

use authstate::ops::cleanup::CleanupOptions;
use authstate::ops::files::key_file_name;
use authstate::ops::{self, keys, CopyOptions, ExportOptions, ImportOptions, Scope};
use authstate::tempdb::TempCluster;
use authstate::{codec, Config, ErrorKind, KeyWrite, Store, StoredValue};
use serde_json::{json, Value};

fn v(j: Value) -> StoredValue {
    StoredValue::from_value(j).expect("value")
}

fn cfg(url: &str) -> Config {
    Config::from_url(url).expect("config")
}

const GROUP_SK: &str = "120363041111111111@g.us::5511988880001::0";
const OLD_GROUP_SK: &str = "5511999-1600000000@g.us::201000000000001_1::3";
const SYNC_KEY: &str = "AAAAAJzq+/8=";

/// A company with creds holding nested buffers and one key of every shape Baileys 7 writes,
/// ids with `: / @ . _` included.
async fn seed(store: &Store, company: &str) -> BTreeMap<(String, String), Value> {
    let s = store.session(company).await.expect("session");
    let creds = json!({
        "noiseKey": {"private": codec::buffer_node(&[1; 32]), "public": codec::buffer_node(&[2; 32])},
        "signedPreKey": {"keyPair": {"private": codec::buffer_node(&[3; 32]), "public": codec::buffer_node(&[4; 33])},
                         "signature": codec::buffer_node(&[5; 64]), "keyId": 1},
        "registrationId": 4242, "advSecretKey": "c2VjcmV0", "nextPreKeyId": 813,
        "me": {"id": "5511988880001:7@s.whatsapp.net", "lid": "201000000000001:7@lid"},
        "registered": true
    });
    assert!(s.save_creds(v(creds)).await.expect("creds"));
    let keys: Vec<(&str, &str, Value)> = vec![
        (
            "pre-key",
            "1",
            json!({"private": codec::buffer_node(&[7; 32]), "public": codec::buffer_node(&[8; 32])}),
        ),
        (
            "pre-key",
            "812",
            json!({"private": codec::buffer_node(&[9; 32]), "public": codec::buffer_node(&[10; 32])}),
        ),
        (
            "session",
            "5511988880002.0",
            json!({"_sessions": {"BQ==": {"registrationId": 5, "currentRatchet": {"rootKey": "q83v"}}}, "version": "v1"}),
        ),
        (
            "session",
            "201000000000002_1.3",
            json!({"_sessions": {}, "version": "v1"}),
        ),
        (
            "sender-key",
            GROUP_SK,
            codec::buffer_node(br#"[{"senderKeyId":1}]"#),
        ),
        ("sender-key", OLD_GROUP_SK, codec::buffer_node(b"[]")),
        (
            "sender-key-memory",
            "120363041111111111@g.us",
            json!({"5511988880002@s.whatsapp.net": true}),
        ),
        (
            "app-state-sync-key",
            SYNC_KEY,
            json!({"keyData": codec::buffer_node(&[11; 32]), "fingerprint": {"rawId": 1, "currentIndex": 2, "deviceIndexes": [0, 1]}, "timestamp": "1700000000000"}),
        ),
        (
            "app-state-sync-version",
            "critical_block",
            json!({"version": 3, "hash": codec::buffer_node(&[12; 128]), "indexValueMap": {}}),
        ),
        ("lid-mapping", "5511988880002", json!("201000000000002")),
        (
            "lid-mapping",
            "201000000000002_reverse",
            json!("5511988880002"),
        ),
        ("device-list", "5511988880002", json!(["0", "3"])),
        (
            "tctoken",
            "__index",
            json!({"5511988880002@s.whatsapp.net": 1}),
        ),
        (
            "identity-key",
            "5511988880002.0",
            codec::buffer_node(&[5; 33]),
        ),
    ];
    let mut want = BTreeMap::new();
    let mut writes = Vec::new();
    for (t, i, value) in keys {
        writes.push(KeyWrite::put(t, i, v(value.clone())).expect("write"));
        want.insert((t.to_string(), i.to_string()), v(value).to_value());
    }
    s.set(writes).await.expect("set");
    want
}

/// Every key of `company` read through a store session: (type, id) -> value tree.
async fn read_back(
    url: &str,
    company: &str,
    types: &[String],
) -> BTreeMap<(String, String), Value> {
    let listed = keys::list(&cfg(url), company, None).await.expect("list");
    let store = Store::open(cfg(url)).await.expect("open");
    let s = store.session(company).await.expect("session");
    let mut out = BTreeMap::new();
    for k in &listed {
        assert!(types.contains(&k.key_type));
        let got = s
            .get(&k.key_type, std::slice::from_ref(&k.key_id))
            .await
            .expect("get");
        out.insert((k.key_type.clone(), k.key_id.clone()), got[0].1.to_value());
    }
    store.close().await.expect("close");
    out
}

fn types_of(m: &BTreeMap<(String, String), Value>) -> Vec<String> {
    m.keys().map(|(t, _)| t.clone()).collect()
}

#[tokio::test]
async fn export_writes_baileys_files_and_import_brings_them_back() {
    let (store, url) = common::store("exp").await;
    let want = seed(&store, "acme").await;
    // A row written by older code, buffers as Node's Buffer.toJSON arrays.
    let db = common::sql(&url).await;
    db.execute(
        "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES ('acme', 'pre-key', '2', $1::text::jsonb)",
        &[&r#"{"private":{"type":"Buffer","data":[1,2,3]},"public":{"type":"Buffer","data":[4,5]}}"#],
    )
    .await
    .unwrap();
    store.close().await.unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("acme");
    let opts = ExportOptions {
        scope: Scope::Company("acme".into()),
        dir: dir.clone(),
        force: false,
        dry_run: true,
    };
    let dry = ops::export(&cfg(&url), &opts).await.unwrap();
    assert!(!dir.exists(), "a dry run writes nothing");
    assert_eq!(dry.companies[0].keys, want.len() as u64 + 1);

    let r = ops::export(
        &cfg(&url),
        &ExportOptions {
            dry_run: false,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert!(r.verified);
    let c = &r.companies[0];
    assert!(c.creds);
    assert_eq!(c.keys, want.len() as u64 + 1);
    assert_eq!(c.per_type["pre-key"], 3);
    assert_eq!(c.per_type["sender-key"], 2);
    assert!(c.not_reimportable.is_empty(), "{:?}", c.not_reimportable);

    // Baileys' names and BufferJSON content.
    for name in [
        "creds.json",
        "sender-key-120363041111111111@g.us--5511988880001--0.json",
        "app-state-sync-key-AAAAAJzq+__8=.json",
        "tctoken-__index.json",
        "session-201000000000002_1.3.json",
    ] {
        assert!(dir.join(name).is_file(), "{name}");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), want.len() + 2);
    let legacy = std::fs::read_to_string(dir.join("pre-key-2.json")).unwrap();
    let legacy: Value = serde_json::from_str(&legacy).unwrap();
    assert_eq!(legacy["private"], json!({"type": "Buffer", "data": "AQID"}));
    let creds: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("creds.json")).unwrap()).unwrap();
    assert_eq!(
        codec::buffer_bytes(&creds["signedPreKey"]["signature"]),
        Some(vec![5; 64])
    );
    assert_eq!(creds["me"]["id"], "5511988880001:7@s.whatsapp.net");
    // Private keys: owner-only files.
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.join("creds.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{mode:o}");
    }
    // No temporary folder is left next to the target.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);

    // A non-empty target is refused unless forced.
    let e = ops::export(
        &cfg(&url),
        &ExportOptions {
            dry_run: false,
            ..opts.clone()
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(e.to_string().contains("--force"), "{e}");
    std::fs::write(dir.join("stale.json"), "{}").unwrap();
    let r = ops::export(
        &cfg(&url),
        &ExportOptions {
            dry_run: false,
            force: true,
            ..opts.clone()
        },
    )
    .await
    .unwrap();
    assert!(r.verified);
    assert!(
        !dir.join("stale.json").exists(),
        "--force replaces the folder"
    );

    // Import into a fresh database, under another company id, and read it back.
    let url2 = common::fresh_database("imp").await;
    let iopts = ImportOptions {
        company: "acme-restored".into(),
        dir: dir.clone(),
        replace: false,
        dry_run: true,
    };
    let d = ops::import(&cfg(&url2), &iopts).await.unwrap();
    assert_eq!(d.keys, want.len() as u64 + 1);
    assert!(!d.verified);
    let r = ops::import(
        &cfg(&url2),
        &ImportOptions {
            dry_run: false,
            ..iopts.clone()
        },
    )
    .await
    .unwrap();
    assert!(r.verified);
    let mut want_all = want.clone();
    want_all.insert(
        ("pre-key".into(), "2".into()),
        json!({"private": codec::buffer_node(&[1, 2, 3]), "public": codec::buffer_node(&[4, 5])}),
    );
    let got = read_back(&url2, "acme-restored", &types_of(&want_all)).await;
    assert_eq!(got, want_all);
    // expires_at follows the TTL policy, as if the service had written the keys.
    let db2 = common::sql(&url2).await;
    let row = db2
        .query_one("SELECT count(*) FROM whatsapp_keys WHERE company_id = 'acme-restored' AND expires_at > now() + interval '6 days'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), want_all.len() as i64);

    // A company that has state is refused unless --replace.
    let e = ops::import(
        &cfg(&url2),
        &ImportOptions {
            dry_run: false,
            ..iopts.clone()
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("--replace"), "{e}");
    let r = ops::import(
        &cfg(&url2),
        &ImportOptions {
            dry_run: false,
            replace: true,
            ..iopts.clone()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.existing_keys, want_all.len() as u64);
    assert!(r.verified);
}

#[tokio::test]
async fn export_all_writes_one_folder_per_company() {
    let (store, url) = common::store("expall").await;
    seed(&store, "a1").await;
    seed(&store, "b2").await;
    store.close().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("all");
    std::fs::create_dir(&dir).unwrap(); // an empty folder is fine
    let r = ops::export(
        &cfg(&url),
        &ExportOptions {
            scope: Scope::All,
            dir: dir.clone(),
            force: false,
            dry_run: false,
        },
    )
    .await
    .unwrap();
    assert!(r.verified);
    assert_eq!(
        r.companies
            .iter()
            .map(|c| c.company_id.as_str())
            .collect::<Vec<_>>(),
        ["a1", "b2"]
    );
    for c in ["a1", "b2"] {
        assert!(dir.join(c).join("creds.json").is_file());
        assert!(dir
            .join(c)
            .join(key_file_name("sender-key", GROUP_SK))
            .is_file());
    }
}

#[tokio::test]
async fn import_revives_every_legacy_file_shape() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("creds.json"), r#"{"noiseKey":{"private":{"buffer":true,"value":"AQID"},"public":{"0":4,"1":5}},"registrationId":7}"#).unwrap();
    std::fs::write(
        dir.join("pre-key-5.json"),
        r#"{"private":{"type":"Buffer","data":[1,2,3]},"public":{"type":"Buffer","data":"BAU="}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("identity-key-5511.0.json"),
        r#"{"0":5,"1":6,"2":7}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join(key_file_name("sender-key", GROUP_SK)),
        r#"{"type":"Buffer","data":"W10="}"#,
    )
    .unwrap();
    std::fs::write(dir.join("session-1.0.json"), "null").unwrap();
    std::fs::write(dir.join(".DS_Store"), "junk").unwrap();
    let url = common::fresh_database("legacy").await;
    let r = ops::import(
        &cfg(&url),
        &ImportOptions {
            company: "old".into(),
            dir: dir.to_path_buf(),
            replace: false,
            dry_run: false,
        },
    )
    .await
    .unwrap();
    assert!(r.verified);
    assert_eq!(r.keys, 3);
    assert_eq!(r.skipped_null, ["session-1.0.json"]);
    let got = read_back(
        &url,
        "old",
        &["pre-key".into(), "identity-key".into(), "sender-key".into()],
    )
    .await;
    assert_eq!(
        got[&("pre-key".into(), "5".into())],
        json!({"private": codec::buffer_node(&[1, 2, 3]), "public": codec::buffer_node(&[4, 5])})
    );
    assert_eq!(
        got[&("identity-key".into(), "5511.0".into())],
        codec::buffer_node(&[5, 6, 7])
    );
    assert_eq!(
        got[&("sender-key".into(), GROUP_SK.into())],
        codec::buffer_node(b"[]")
    );
    let db = common::sql(&url).await;
    let row = db.query_one("SELECT creds->'noiseKey'->'private'->>'data', creds->'noiseKey'->'public'->>'data' FROM whatsapp_auth WHERE company_id = 'old'", &[]).await.unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("AQID".to_string(), "BAU=".to_string())
    );

    // Folders that are not Baileys folders are refused before anything is written.
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("pre-key-1.json"), "{}").unwrap();
    let e = ops::import(
        &cfg(&url),
        &ImportOptions {
            company: "x".into(),
            dir: bad.path().to_path_buf(),
            replace: false,
            dry_run: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("creds.json"), "{e}");
    std::fs::write(bad.path().join("creds.json"), "{}").unwrap();
    std::fs::write(bad.path().join("mystery-1.json"), "{}").unwrap();
    let e = ops::import(
        &cfg(&url),
        &ImportOptions {
            company: "x".into(),
            dir: bad.path().to_path_buf(),
            replace: false,
            dry_run: false,
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("mystery-1.json"), "{e}");
    let n = db
        .query_one(
            "SELECT count(*) FROM whatsapp_auth WHERE company_id = 'x'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(n.get::<_, i64>(0), 0);
}

#[tokio::test]
async fn copy_between_two_clusters_is_verified_and_rerun_is_a_no_op() {
    let (store, from) = common::store("copysrc").await;
    let want = seed(&store, "c1").await;
    seed(&store, "c2").await;
    // A legacy row must be copied as stored, so both checksums agree.
    let db = common::sql(&from).await;
    db.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, expires_at) VALUES ('c1', 'pre-key', '3', '{\"a\":{\"buffer\":true,\"value\":\"AQ==\"}}', now() - interval '2 days')", &[]).await.unwrap();
    store.close().await.unwrap();

    let other = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .unwrap()
        .unwrap();
    other.create_database("target").unwrap();
    let to = other.url("target");
    let opts = CopyOptions {
        from: cfg(&from),
        to: cfg(&to),
        scope: Scope::All,
        batch: 4,
        dry_run: true,
    };
    let dry = ops::copy(&opts).await.unwrap();
    assert!(dry.companies.iter().all(|c| !c.equal && c.written == 0));

    let r = ops::copy(&CopyOptions {
        dry_run: false,
        ..opts.clone()
    })
    .await
    .unwrap();
    assert!(r.verified, "{r:?}");
    let c1 = &r.companies[0];
    assert_eq!(
        (c1.company_id.as_str(), c1.keys, c1.written),
        ("c1", want.len() as u64 + 1, want.len() as u64 + 1)
    );
    assert!(c1.creds_written);
    assert_eq!(c1.source_checksum, c1.target_checksum);

    // Same rows, timestamps included.
    let dst = common::sql(&to).await;
    let q = "SELECT count(*), md5(string_agg(company_id || key_type || key_id || value::text || coalesce(updated_at::text, '') || coalesce(expires_at::text, ''), ',' ORDER BY company_id, key_type, key_id)) FROM whatsapp_keys";
    let (a, b) = (
        db.query_one(q, &[]).await.unwrap(),
        dst.query_one(q, &[]).await.unwrap(),
    );
    assert_eq!(a.get::<_, i64>(0), b.get::<_, i64>(0));
    assert_eq!(a.get::<_, String>(1), b.get::<_, String>(1));

    // Re-run: nothing written.
    let again = ops::copy(&CopyOptions {
        dry_run: false,
        ..opts.clone()
    })
    .await
    .unwrap();
    assert!(again.verified);
    assert!(
        again
            .companies
            .iter()
            .all(|c| c.written == 0 && c.removed == 0 && !c.creds_written),
        "{again:?}"
    );

    // A key only the target has is removed, a changed one rewritten: the target equals the source.
    dst.execute("INSERT INTO whatsapp_keys (company_id, key_type, key_id, value) VALUES ('c2', 'session', 'stray.0', '{}')", &[]).await.unwrap();
    dst.execute("UPDATE whatsapp_keys SET value = '\"changed\"' WHERE company_id = 'c2' AND key_type = 'lid-mapping' AND key_id = '5511988880002'", &[]).await.unwrap();
    let only = ops::copy(&CopyOptions {
        dry_run: false,
        scope: Scope::Company("c2".into()),
        ..opts.clone()
    })
    .await
    .unwrap();
    assert!(only.verified);
    assert_eq!(
        (only.companies[0].written, only.companies[0].removed),
        (1, 1)
    );

    // The CLI does the same and says so.
    let out = cli(
        &[
            "copy",
            "--from",
            &from,
            "--to",
            &to,
            "--company",
            "c1",
            "--json",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verified"], true);
    assert_eq!(report["companies"][0]["written"], 0);
}

#[tokio::test]
async fn cleanup_deletes_only_expired_unprotected_keys_in_bounded_batches() {
    let url = common::fresh_database("clean").await;
    let store = Store::open(cfg(&url)).await.unwrap();
    store.migrate().await.unwrap();
    store.close().await.unwrap();
    let db = common::sql(&url).await;
    // (type, rows, expired how long ago; NULL = not expired)
    for (t, n, ago) in [
        ("sender-key-memory", 10, Some("2 hours")),
        ("sender-key-memory", 5, Some("3 days")),
        ("sender-key-memory", 4, Some("40 days")),
        ("sender-key-memory", 3, None),
        ("device-list", 6, Some("10 days")),
        ("session", 8, Some("20 days")),
        ("pre-key", 7, Some("40 days")),
    ] {
        let expires = match ago {
            Some(a) => format!("now() - interval '{a}'"),
            None => "now() + interval '5 days'".to_string(),
        };
        db.batch_execute(&format!(
            "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, expires_at)
             SELECT 'co' || (g % 3), '{t}', '{t}-{}-' || g, '{{}}', {expires} FROM generate_series(1, {n}) g",
            ago.unwrap_or("live").replace(' ', "")
        ))
        .await
        .unwrap();
    }
    let count = |t: &'static str| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT count(*) FROM whatsapp_keys WHERE key_type = $1",
                &[&t],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };

    let dry = ops::cleanup(
        &cfg(&url),
        &CleanupOptions {
            dry_run: true,
            batch: 4,
            types: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.total, 25);
    assert_eq!(
        dry.deleted["sender-key-memory"],
        BTreeMap::from([("0-1d".into(), 10), ("1-7d".into(), 5), (">30d".into(), 4)])
    );
    assert_eq!(
        dry.deleted["device-list"],
        BTreeMap::from([("7-14d".into(), 6)])
    );
    assert_eq!(dry.kept["session"], BTreeMap::from([("14-30d".into(), 8)]));
    assert_eq!(dry.kept["pre-key"], BTreeMap::from([(">30d".into(), 7)]));
    assert_eq!(
        count("sender-key-memory").await,
        22,
        "a dry run deletes nothing"
    );

    let r = ops::cleanup(
        &cfg(&url),
        &CleanupOptions {
            dry_run: false,
            batch: 4,
            types: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(r.total, 25);
    assert_eq!(r.deleted, dry.deleted);
    assert!(r.largest_batch <= 4, "{r:?}");
    assert!(r.batches >= 7, "25 rows in batches of at most 4: {r:?}");
    assert_eq!(count("sender-key-memory").await, 3, "unexpired keys stay");
    assert_eq!(count("device-list").await, 0);
    assert_eq!(count("session").await, 8, "protected types stay");
    assert_eq!(count("pre-key").await, 7);

    // Naming a protected type cleans it, and says so.
    let r = ops::cleanup(
        &cfg(&url),
        &CleanupOptions {
            dry_run: false,
            batch: 100,
            types: Some(vec!["session".into()]),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (r.total, r.protected_named.clone()),
        (8, vec!["session".to_string()])
    );
    assert_eq!(count("pre-key").await, 7);

    // Bad options are refused.
    for bad in [
        CleanupOptions {
            batch: 0,
            ..Default::default()
        },
        CleanupOptions {
            types: Some(vec!["Bad Type".into()]),
            ..Default::default()
        },
    ] {
        assert_eq!(
            ops::cleanup(&cfg(&url), &bad).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
    }
}

#[tokio::test]
async fn keys_list_show_delete_stats_and_remove() {
    let (store, url) = common::store("keys").await;
    let want = seed(&store, "k1").await;
    seed(&store, "k2").await;
    let c = cfg(&url);

    let list = keys::list(&c, "k1", None).await.unwrap();
    assert_eq!(list.len(), want.len());
    assert!(list
        .iter()
        .all(|k| k.bytes > 0 && k.updated_at.is_some() && !k.expired));
    assert_eq!(
        keys::list(&c, "k1", Some("pre-key")).await.unwrap().len(),
        2
    );

    let shown = keys::show(&c, "k1", "sender-key", GROUP_SK).await.unwrap();
    assert_eq!(
        shown.value,
        want[&("sender-key".to_string(), GROUP_SK.to_string())]
    );
    let e = keys::show(&c, "k1", "session", "nope.0").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    // A mistyped company is not an empty one.
    assert_eq!(
        keys::list(&c, "k9", None).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        keys::stats(&c, Some("k9")).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(keys::list(&c, "k1", Some("future-type"))
        .await
        .unwrap()
        .is_empty());

    let d = keys::delete(
        &c,
        "k1",
        "sender-key-memory",
        &["120363041111111111@g.us".into(), "other@g.us".into()],
    )
    .await
    .unwrap();
    assert_eq!(
        (d.deleted.len(), d.missing.clone()),
        (1, vec!["other@g.us".to_string()])
    );
    assert_eq!(
        keys::delete(
            &c,
            "k1",
            "sender-key-memory",
            &["120363041111111111@g.us".into()]
        )
        .await
        .unwrap_err()
        .kind(),
        ErrorKind::NotFound
    );

    let s = keys::stats(&c, Some("k1")).await.unwrap();
    assert_eq!(
        (s.keys, s.creds, s.expired),
        (want.len() as u64 - 1, Some(true), 0)
    );
    assert_eq!(
        s.types
            .iter()
            .find(|t| t.key_type == "pre-key")
            .map(|t| t.keys),
        Some(2)
    );
    let all = keys::stats(&c, None).await.unwrap();
    assert_eq!(all.keys, 2 * want.len() as u64 - 1);
    let through_store = store.stats(Some("k2")).await.unwrap();
    assert_eq!(through_store.keys, want.len() as u64);

    // Baileys' list/listIds, paged.
    let (page, next) = store.list_ids_page("k2", "pre-key", None, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    let (rest, end) = store
        .list_ids_page("k2", "pre-key", next.as_deref(), 5)
        .await
        .unwrap();
    assert_eq!((rest.len(), end), (1, None));
    let (entries, _) = store
        .list_page("k2", "identity-key", None, 10)
        .await
        .unwrap();
    assert_eq!(entries[0].1.to_value(), codec::buffer_node(&[5; 33]));
    assert!(store.list_page("k2", "pre-key", None, 0).await.is_err());
    store.close().await.unwrap();

    let r = keys::remove(&c, "k1").await.unwrap();
    assert_eq!((r.creds, r.keys), (true, want.len() as u64 - 1));
    assert_eq!(
        keys::remove(&c, "k1").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        keys::stats(&c, Some("k2")).await.unwrap().keys,
        want.len() as u64
    );
}

#[tokio::test]
async fn the_store_runs_cleanup_periodically_when_configured() {
    let url = common::fresh_database("periodic").await;
    let setup = Store::open(cfg(&url)).await.unwrap();
    setup.migrate().await.unwrap();
    setup.close().await.unwrap();
    let db = common::sql(&url).await;
    db.batch_execute(
        "INSERT INTO whatsapp_keys (company_id, key_type, key_id, value, expires_at)
         SELECT 'p', t, 'id' || g, '{}', now() - interval '1 day'
         FROM generate_series(1, 5) g, unnest(ARRAY['sender-key-memory', 'session']) t",
    )
    .await
    .unwrap();
    let mut c = cfg(&url);
    c.cleanup_every = Some(std::time::Duration::from_millis(100));
    let store = Store::open(c).await.unwrap();
    let left = |t: &'static str| {
        let db = &db;
        async move {
            db.query_one(
                "SELECT count(*) FROM whatsapp_keys WHERE key_type = $1",
                &[&t],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
        }
    };
    // Wait (bounded) for the background task; no assertion on how long it took.
    for _ in 0..300 {
        if left("sender-key-memory").await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        left("sender-key-memory").await,
        0,
        "the periodic cleanup ran"
    );
    assert_eq!(left("session").await, 5, "protected types stay");
    store.close().await.unwrap();
}

fn cli(args: &[&str], database_url: Option<&str>) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_authstate"));
    cmd.args(args).stdin(Stdio::null()).env_remove("PGPASSWORD");
    match database_url {
        Some(u) => cmd.env("DATABASE_URL", u),
        None => cmd.env_remove("DATABASE_URL"),
    };
    cmd.output().expect("run authstate")
}

#[tokio::test]
async fn cli_refuses_bad_input_with_a_message_and_never_prints_the_password() {
    let (store, url) = common::store("cli").await;
    seed(&store, "good").await;
    store.close().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let full = tmp.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), "").unwrap();
    let missing = tmp.path().join("missing");
    let (f, m) = (full.to_str().unwrap(), missing.to_str().unwrap());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["export", "--dir", m], "--company"),
        (vec!["export", "--company", "a b", "--dir", m], "company id"),
        (
            vec!["export", "--company", "nobody", "--dir", m],
            "no state",
        ),
        (vec!["export", "--company", "good", "--dir", f], "--force"),
        (
            vec!["import", "--company", "good", "--dir", m],
            "does not exist",
        ),
        (
            vec!["import", "--company", "new", "--dir", f],
            "not a Baileys auth file",
        ),
        (
            vec!["copy", "--from", &url, "--to", &url, "--all"],
            "same database",
        ),
        (
            vec![
                "copy",
                "--from",
                "postgres://x/y?sslmode=maybe",
                "--to",
                &url,
                "--all",
            ],
            "sslmode",
        ),
        (vec!["cleanup", "--batch", "0"], "batch"),
        (vec!["cleanup", "--types", "Session"], "key type"),
        (
            vec![
                "keys",
                "show",
                "--company",
                "good",
                "--type",
                "session",
                "--id",
                "nope",
            ],
            "not found",
        ),
        (
            vec![
                "keys",
                "delete",
                "--company",
                "good",
                "--type",
                "session",
                "--id",
                "nope",
            ],
            "not found",
        ),
        (vec!["keys", "list", "--company", "x/y"], "company id"),
        (vec!["remove", "--company", "good"], "--yes"),
    ];
    for (args, msg) in cases {
        let out = cli(&args, Some(&url));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(msg), "{args:?}: expected {msg:?} in {err}");
        assert!(
            out.stdout.is_empty() || !args.contains(&"--json"),
            "{args:?}"
        );
    }
    assert!(
        !full.join("creds.json").exists(),
        "nothing written into a refused folder"
    );
    // remove without --yes left the company alone
    assert_eq!(
        keys::stats(&cfg(&url), Some("good")).await.unwrap().creds,
        Some(true)
    );

    // A wrong server: a clear error, without the password.
    let secret = "pw-S3cr3t-never-shown";
    let bad = format!("postgres://postgres:{secret}@127.0.0.1:1/x?connect_timeout=2");
    for args in [
        vec!["keys", "stats"],
        vec!["cleanup", "--dry-run"],
        vec!["export", "--all", "--dir", m],
    ] {
        let out = cli(&args, Some(&bad));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{args:?}");
        assert!(all.contains("127.0.0.1"), "{all}");
        assert!(!all.contains(secret), "password printed: {all}");
    }
    let out = cli(&["copy", "--from", &bad, "--to", &url, "--all"], None);
    let all = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && !all.contains(secret), "{all}");
}

/// The shell blocks of the README section "PostgreSQL is lost: go to files in minutes".
fn runbook() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme
        .find("### PostgreSQL is lost: go to files in minutes")
        .expect("runbook heading");
    let section = &readme[start..];
    let end = section[4..]
        .find("\n### ")
        .map(|i| i + 4)
        .unwrap_or(section.len());
    let mut blocks = Vec::new();
    let mut rest = &section[..end];
    while let Some(i) = rest.find("```sh\n") {
        let body = &rest[i + 6..];
        let j = body.find("```").expect("closed block");
        blocks.push(body[..j].to_string());
        rest = &body[j + 3..];
    }
    blocks
}

#[tokio::test]
async fn readme_runbook_postgres_lost_go_to_files_runs_step_by_step() {
    let steps = runbook();
    assert!(steps.len() >= 4, "{steps:?}");
    // The state as it was: a live database and its last dump.
    let (store, live) = common::store("runbook").await;
    let want = seed(&store, "acme").await;
    seed(&store, "globex").await;
    store.close().await.unwrap();
    let bin_dir = common::cluster()
        .pg_ctl_command()
        .iter()
        .find(|a| a.ends_with("/pg_ctl"))
        .map(|p| Path::new(p).parent().unwrap().to_path_buf())
        .expect("pg bin dir");
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("authstate.dump");
    let st = Command::new(bin_dir.join("pg_dump"))
        .args(["-Fc", "-f"])
        .arg(&backup)
        .arg(&live)
        .status()
        .unwrap();
    assert!(st.success());
    // The runbook's fake process manager and the scratch server it restores into.
    let fakebin = tmp.path().join("bin");
    std::fs::create_dir(&fakebin).unwrap();
    let pm2_log = tmp.path().join("pm2.log");
    std::fs::write(
        fakebin.join("pm2"),
        format!("#!/bin/sh\necho \"$@\" >> {}\n", pm2_log.display()),
    )
    .unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_authstate"), fakebin.join("authstate")).unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(fakebin.join("pm2"))
        .status()
        .unwrap();
    let scratch = common::fresh_database("scratch").await;
    let auth_dir = tmp.path().join("wa-auth");
    let path = format!(
        "{}:{}:{}",
        fakebin.display(),
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (n, step) in steps.iter().enumerate() {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", step])
            .current_dir(tmp.path())
            .env("PATH", &path)
            .env("DATABASE_URL", &scratch)
            .env("BACKUP", &backup)
            .env("AUTH_DIR", &auth_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "runbook step {}:\n{step}\nstdout: {}\nstderr: {}",
            n + 1,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every company's folder is there and holds exactly what the database held.
    for company in ["acme", "globex"] {
        let d = auth_dir.join(company);
        assert!(d.join("creds.json").is_file(), "{company}");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), want.len() + 1);
    }
    let url2 = common::fresh_database("runbook_back").await;
    let r = ops::import(
        &cfg(&url2),
        &ImportOptions {
            company: "acme".into(),
            dir: auth_dir.join("acme"),
            replace: false,
            dry_run: false,
        },
    )
    .await
    .unwrap();
    assert!(r.verified);
    assert_eq!(read_back(&url2, "acme", &types_of(&want)).await, want);
    let pm2 = std::fs::read_to_string(&pm2_log).unwrap();
    assert!(pm2.contains("stop") && pm2.contains("start"), "{pm2}");
}
