//! The connection string parsers on arbitrary text: a `postgres://` URL or a libpq
//! `key=value` string (`Config::from_url`), and the libpq `PG*` variables
//! (`Config::from_env`). A config or a typed INVALID error, never a panic, and the password
//! never shows in `describe()` or `Debug`.
//!
//! Input: first byte even -> the rest is a connection string; odd -> the rest is up to nine
//! newline-separated values for PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGAPPNAME,
//! PGCONNECT_TIMEOUT, PGSSLMODE, PGSSLROOTCERT.
#![no_main]

use authstate::{Config, ErrorKind};
use libfuzzer_sys::fuzz_target;

const VARS: [&str; 9] = [
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
    "PGSSLMODE",
    "PGSSLROOTCERT",
];

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // libFuzzer runs the target on one thread: changing the environment is safe here.
    std::env::remove_var("DATABASE_URL");
    for v in VARS {
        std::env::remove_var(v);
    }
    let result = if mode % 2 == 0 {
        Config::from_url(text)
    } else {
        for (var, value) in VARS.iter().zip(text.split('\n')) {
            // The environment cannot hold NUL.
            if !value.contains('\0') {
                std::env::set_var(var, value);
            }
        }
        Config::from_env()
    };
    match result {
        Ok(cfg) => password_is_hidden(&cfg),
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{text:?}: {e}"),
    }
});

/// Whatever the password, `describe()` and `Debug` read the same: they cannot show it.
fn password_is_hidden(cfg: &Config) {
    let mut other = cfg.clone();
    other.pg.password("a different password");
    assert_eq!(cfg.describe(), other.describe());
    assert_eq!(format!("{cfg:?}"), format!("{other:?}"));
}
