//! Shared set-up of the integration tests: a real PostgreSQL and a fresh database per test.
//!
//! `DATABASE_URL` when set (each test gets its own database created on that server), otherwise
//! one throwaway cluster per test binary, started on first use and removed when the binary
//! exits (see `authstate::tempdb`).
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use authstate::tempdb::TempCluster;
use authstate::{Config, Store};

static CLUSTER: OnceLock<TempCluster> = OnceLock::new();
static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

/// The shared throwaway cluster of this test binary.
pub fn cluster() -> &'static TempCluster {
    CLUSTER.get_or_init(|| TempCluster::start().expect("start a throwaway PostgreSQL"))
}

fn unique_db_name(prefix: &str) -> String {
    format!(
        "t_{prefix}_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::Relaxed)
    )
}

/// A URL of a new, empty database.
pub async fn fresh_database(prefix: &str) -> String {
    let name = unique_db_name(prefix);
    match std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            let cfg = Config::from_url(&url).expect("DATABASE_URL");
            sql(&url)
                .await
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await
                .expect("create database");
            let mut pg = cfg.pg.clone();
            pg.dbname(&name);
            let mut out = Config::new(pg);
            out.ssl_mode = cfg.ssl_mode;
            out.ssl_root_cert = cfg.ssl_root_cert;
            // Config carries no URL form; rebuild one from parts for callers that need text.
            url_of(&out)
        }
        None => {
            let c = cluster();
            let n = name.clone();
            tokio::task::spawn_blocking(move || cluster().create_database(&n))
                .await
                .expect("join")
                .expect("create database");
            c.url(&name)
        }
    }
}

fn url_of(cfg: &Config) -> String {
    let host = match cfg.pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let mut s = format!(
        "host={host} port={} dbname={} user={}",
        cfg.pg.get_ports().first().copied().unwrap_or(5432),
        cfg.pg.get_dbname().unwrap_or("postgres"),
        cfg.pg.get_user().unwrap_or("postgres")
    );
    if let Some(pw) = cfg.pg.get_password() {
        s.push_str(&format!(
            " password='{}'",
            String::from_utf8_lossy(pw).replace('\'', "\\'")
        ));
    }
    s
}

/// A migrated store on a fresh database, with `tweak` applied to its config.
pub async fn store_with(prefix: &str, tweak: impl FnOnce(&mut Config)) -> (Store, String) {
    let url = fresh_database(prefix).await;
    let mut cfg = Config::from_url(&url).expect("config");
    tweak(&mut cfg);
    let store = Store::open(cfg).await.expect("open store");
    store.migrate().await.expect("migrate");
    (store, url)
}

/// A migrated store on a fresh database with default settings.
pub async fn store(prefix: &str) -> (Store, String) {
    store_with(prefix, |_| {}).await
}

/// A plain SQL client on `url`, for checking what the store really wrote.
///
/// When the store under test goes through a pooler (`scripts/test-via-pgbouncer.sh`),
/// `AUTHSTATE_TEST_DIRECT=<pooler port>:<PostgreSQL port>` says where PostgreSQL itself
/// listens: the test's checks of a database behind that pooler then read it directly, as an
/// operator would, instead of through the pooler (whose transaction mode cannot carry this
/// client's named statements). Databases elsewhere (a test's own cluster) are used as given.
pub async fn sql(url: &str) -> tokio_postgres::Client {
    let cfg = Config::from_url(url).expect("config");
    let mut pg = cfg.pg.clone();
    let direct = std::env::var("AUTHSTATE_TEST_DIRECT").ok().and_then(|v| {
        let (pooler, postgres) = v.split_once(':')?;
        Some((pooler.parse::<u16>().ok()?, postgres.parse::<u16>().ok()?))
    });
    if let Some((pooler, postgres)) = direct {
        if pg.get_ports().first() == Some(&pooler) {
            let mut d = tokio_postgres::Config::new();
            d.host("127.0.0.1").port(postgres);
            if let Some(db) = pg.get_dbname() {
                d.dbname(db);
            }
            d.user(pg.get_user().unwrap_or("postgres"));
            pg = d;
        }
    }
    let (client, conn) = pg.connect(tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(conn);
    client
}
