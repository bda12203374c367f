//! TLS against a real PostgreSQL with a certificate from a test CA: `verify-full` (what
//! production uses) connects only with the right root certificate and host name, `verify-ca`
//! checks the chain but not the name, `require` encrypts without verifying, and the password
//! never shows in an error. The server rejects non-TLS TCP connections, so a successful
//! connection proves TLS was used.

use std::path::Path;
use std::process::Command;

use authstate::tempdb::TempCluster;
use authstate::{Config, ErrorKind, Store};

fn run(dir: &Path, args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for `localhost` signed by it, and an unrelated second CA.
fn make_certs(dir: &Path) {
    let subj_ca = "/CN=authstate test CA";
    run(
        dir,
        &[
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.crt", "-days", "2", "-subj", subj_ca,
        ],
    );
    run(
        dir,
        &[
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "other.key",
            "-out",
            "other.crt",
            "-days",
            "2",
            "-subj",
            "/CN=some other CA",
        ],
    );
    run(
        dir,
        &[
            "openssl",
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    run(
        dir,
        &[
            "openssl",
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// Turns TLS on in the cluster and allows only TLS over TCP.
fn enable_tls(cluster: &TempCluster, certs: &Path) {
    let data = cluster.data_dir();
    for f in ["server.crt", "server.key"] {
        std::fs::copy(certs.join(f), data.join(f)).expect("copy cert");
    }
    let owner = Command::new("stat")
        .args(["-c", "%U"])
        .arg(&data)
        .output()
        .expect("stat");
    let owner = String::from_utf8_lossy(&owner.stdout).trim().to_string();
    run(
        &data,
        &["chown", &format!("{owner}:"), "server.crt", "server.key"],
    );
    run(&data, &["chmod", "600", "server.key"]);
    let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).expect("conf");
    conf.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
    std::fs::write(data.join("postgresql.conf"), conf).expect("conf");
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\nhostnossl all all 127.0.0.1/32 reject\nhostssl all all 127.0.0.1/32 trust\n",
    )
    .expect("hba");
    cluster.stop("fast").expect("stop");
    cluster.start_server().expect("start with TLS");
}

async fn open(url: &str) -> authstate::Result<Store> {
    let mut cfg = Config::from_url(url)?;
    cfg.connect_timeout = std::time::Duration::from_secs(3);
    let store = Store::open(cfg).await?;
    store.migrate().await?;
    Ok(store)
}

#[tokio::test]
async fn sslmodes_against_a_tls_server() {
    let certs = tempfile::tempdir().expect("dir");
    make_certs(certs.path());
    let cluster = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .expect("join")
        .expect("cluster");
    enable_tls(&cluster, certs.path());
    cluster.create_database("tls").expect("db");
    let port = cluster.port();
    let ca = certs.path().join("ca.crt").display().to_string();
    let other = certs.path().join("other.crt").display().to_string();
    let url = |host: &str, mode: &str, root: Option<&str>| {
        let mut u = format!("postgres://postgres:s3cret-pw@{host}:{port}/tls?sslmode={mode}");
        if let Some(r) = root {
            u.push_str(&format!("&sslrootcert={r}"));
        }
        u
    };

    // verify-full with the right root and host name: connected (over TLS, the server allows nothing else).
    let store = open(&url("localhost", "verify-full", Some(&ca)))
        .await
        .expect("verify-full");
    let s = store.session("acme").await.expect("session");
    s.set_json(r#"{"session":{"a":1}}"#)
        .await
        .expect("write over TLS");
    // The check for a pooler reads the backend id from a TLS connection's cancel token too.
    assert!(
        store.uses_named_statements(),
        "over TLS to PostgreSQL itself: named statements"
    );
    store.close().await.expect("close");

    // The wrong root certificate, or a name the certificate does not carry: refused.
    for (what, u) in [
        ("wrong CA", url("localhost", "verify-full", Some(&other))),
        (
            "wrong host name",
            url("127.0.0.1", "verify-full", Some(&ca)),
        ),
    ] {
        let e = open(&u).await.expect_err(what);
        assert!(e.is_unavailable(), "{what}: {e:?}");
        assert!(
            !e.to_string().contains("s3cret-pw"),
            "{what}: password in error: {e}"
        );
    }
    // verify-ca checks the chain but not the name.
    open(&url("127.0.0.1", "verify-ca", Some(&ca)))
        .await
        .expect("verify-ca")
        .close()
        .await
        .expect("close");
    let e = open(&url("127.0.0.1", "verify-ca", Some(&other)))
        .await
        .expect_err("verify-ca wrong CA");
    assert!(e.is_unavailable(), "{e:?}");
    // require (and prefer) encrypt without verifying; disable is rejected by this server.
    open(&url("127.0.0.1", "require", None))
        .await
        .expect("require")
        .close()
        .await
        .expect("close");
    open(&url("127.0.0.1", "prefer", None))
        .await
        .expect("prefer")
        .close()
        .await
        .expect("close");
    let e = open(&url("127.0.0.1", "disable", None))
        .await
        .expect_err("disable must not get TLS");
    assert!(
        !e.to_string().contains("s3cret-pw"),
        "password in error: {e}"
    );
    // verify-full without a root certificate is a configuration error, found before connecting.
    let e = open(&url("localhost", "verify-full", None))
        .await
        .expect_err("no root");
    assert!((e.kind() == ErrorKind::InvalidArgument), "{e:?}");
}
