//! Node addon over the `authstate` core (napi-rs).
//!
//! Thin by design: it converts arguments and errors and calls the core; no storage logic lives
//! here. Values cross as JSON text in both directions (`index.js` stringifies with a buffer
//! replacer and revives buffer nodes into `Buffer`s). Every error reaches JS as an `Error` whose
//! message starts with `[EAUTHSTATE_*] `; `index.js` moves that prefix into `err.code`.
//! Writes use the core's `*_begin` forms synchronously inside the napi call, so two un-awaited
//! JS calls commit in call order; the returned Promise resolves after the commit.

#![deny(clippy::unwrap_used)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::Duration;

use authstate::{Config, OutagePolicy, Session, Store, StoredValue};
use futures_util::FutureExt;
use napi::bindgen_prelude::within_runtime_if_available;
use napi::{Env, JsObject, Status};
use napi_derive::napi;
use serde_json::{Map, Value};

/// The JS `code` for a core error kind: `EAUTHSTATE_` + [`authstate::ErrorKind::code`].
fn js_code(core_code: &str) -> String {
    format!("EAUTHSTATE_{core_code}")
}

fn coded(code: &str, message: impl std::fmt::Display) -> napi::Error {
    napi::Error::new(Status::GenericFailure, format!("[{code}] {message}"))
}

fn to_js(e: authstate::Error) -> napi::Error {
    coded(&js_code(e.code()), e)
}

fn invalid(message: impl std::fmt::Display) -> napi::Error {
    coded("EAUTHSTATE_INVALID", message)
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs `fut` on napi's tokio runtime and returns a Promise; a panic becomes a rejected
/// Promise with code `EAUTHSTATE_INTERNAL`.
fn promise<T, F>(env: &Env, fut: F) -> napi::Result<JsObject>
where
    T: 'static + Send + napi::bindgen_prelude::ToNapiValue,
    F: 'static + Send + Future<Output = napi::Result<T>>,
{
    env.spawn_future(async move {
        match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(p) => Err(coded(
                "EAUTHSTATE_INTERNAL",
                format!("panic in the addon: {}", panic_message(p.as_ref())),
            )),
        }
    })
}

// ---------------------------------------------------------------------------------------------
// options -> Config

fn opt_u64(v: &Value, name: &str) -> napi::Result<u64> {
    match v.as_f64() {
        Some(n) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9.0e15 => Ok(n as u64),
        _ => Err(invalid(format!(
            "option {name} must be a non-negative integer, got {v}"
        ))),
    }
}

fn opt_usize(v: &Value, name: &str) -> napi::Result<usize> {
    usize::try_from(opt_u64(v, name)?).map_err(|_| invalid(format!("option {name} is too large")))
}

fn opt_ms(v: &Value, name: &str) -> napi::Result<Duration> {
    Ok(Duration::from_millis(opt_u64(v, name)?))
}

fn opt_str<'a>(v: &'a Value, name: &str) -> napi::Result<&'a str> {
    v.as_str()
        .ok_or_else(|| invalid(format!("option {name} must be a string, got {v}")))
}

fn opt_bool(v: &Value, name: &str) -> napi::Result<bool> {
    v.as_bool()
        .ok_or_else(|| invalid(format!("option {name} must be a boolean, got {v}")))
}

/// Builds the core [`Config`] from `openStore`'s options (a JSON object). Unknown options are
/// refused so a typo does not silently fall back to a default.
fn config_from_options(options: &Map<String, Value>) -> napi::Result<Config> {
    let mut cfg = match options.get("url") {
        Some(Value::Null) | None => Config::from_env().map_err(to_js)?,
        Some(v) => Config::from_url(opt_str(v, "url")?).map_err(to_js)?,
    };
    for (name, v) in options {
        if v.is_null() {
            continue;
        }
        match name.as_str() {
            "url" => {}
            "poolSize" => cfg.pool_size = opt_usize(v, name)?.max(1),
            "connectTimeoutMs" => cfg.connect_timeout = opt_ms(v, name)?,
            "statementTimeoutMs" => cfg.statement_timeout = opt_ms(v, name)?,
            "idleTimeoutMs" => {
                let d = opt_ms(v, name)?;
                cfg.idle_timeout = (!d.is_zero()).then_some(d);
            }
            "groupCommit" => cfg.group_commit = opt_bool(v, name)?,
            "writeLanes" => cfg.write_lanes = opt_usize(v, name)?.max(1),
            "cacheMaxEntries" => cfg.cache.max_entries = opt_usize(v, name)?,
            "cacheMaxBytes" => cfg.cache.max_bytes = opt_usize(v, name)?,
            "outagePolicy" => {
                cfg.outage_policy = opt_str(v, name)?.parse::<OutagePolicy>().map_err(to_js)?
            }
            "journalPath" => cfg.journal_path = Some(PathBuf::from(opt_str(v, name)?)),
            "maxPendingBytes" => cfg.max_pending_bytes = opt_usize(v, name)?,
            "sslMode" => cfg.ssl_mode = opt_str(v, name)?.parse().map_err(to_js)?,
            "sslRootCert" => cfg.ssl_root_cert = Some(PathBuf::from(opt_str(v, name)?)),
            "ttlMs" => {
                let Value::Object(per) = v else {
                    return Err(invalid(
                        "option ttlMs must be an object {default?, [keyType]: ms}",
                    ));
                };
                for (key_type, ms) in per {
                    let d = opt_ms(ms, &format!("ttlMs.{key_type}"))?;
                    if key_type == "default" {
                        cfg.ttl.default = d;
                    } else {
                        authstate::validate::key_type(key_type).map_err(to_js)?;
                        cfg.ttl.per_type.insert(key_type.clone(), d);
                    }
                }
            }
            // One writer per company (issue 11): the lease is on by default.
            "lease" => cfg.lease = opt_bool(v, name)?,
            "leaseExpiryMs" => cfg.lease_expiry = opt_ms(v, name)?,
            "leaseHeartbeatMs" => cfg.lease_heartbeat = opt_ms(v, name)?,
            "lostWritesPath" => cfg.lost_writes_path = Some(PathBuf::from(opt_str(v, name)?)),
            other => return Err(invalid(format!("unknown option {other:?}"))),
        }
    }
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// exports

/// Opens a store. `options_json`: the JSON text of `openStore`'s options object.
#[napi(catch_unwind)]
pub fn open_store(env: Env, options_json: String) -> napi::Result<JsObject> {
    let options: Value = serde_json::from_str(&options_json)
        .map_err(|e| invalid(format!("options are not JSON: {e}")))?;
    let Value::Object(options) = options else {
        return Err(invalid("options must be an object"));
    };
    let config = config_from_options(&options)?;
    promise(&env, async move {
        let store = Store::open(config).await.map_err(to_js)?;
        Ok(NativeStore { store })
    })
}

/// Maps a core error code to the JS code (exported so tests can check the mapping).
#[napi(catch_unwind)]
pub fn error_code(core_code: String) -> String {
    js_code(&core_code)
}

/// Panics on purpose: tests use it to prove a panic becomes a JS error and never kills Node.
#[napi(catch_unwind)]
pub fn test_panic(env: Env, in_promise: bool) -> napi::Result<Option<JsObject>> {
    if in_promise {
        return promise::<(), _>(&env, async { panic!("test panic (async)") }).map(Some);
    }
    panic!("test panic (sync)")
}

#[napi]
pub struct NativeStore {
    store: Store,
}

#[napi]
impl NativeStore {
    /// Applies pending migrations; resolves to the report as JSON text.
    #[napi(catch_unwind)]
    pub fn migrate(&self, env: Env) -> napi::Result<JsObject> {
        let store = self.store.clone();
        promise(&env, async move {
            let r = store.migrate().await.map_err(to_js)?;
            Ok(serde_json::json!({
                "applied": r.applied,
                "alreadyApplied": r.already_applied,
            })
            .to_string())
        })
    }

    /// Opens one company's session (the id is validated by the core).
    #[napi(catch_unwind)]
    pub fn session(&self, env: Env, company_id: String) -> napi::Result<JsObject> {
        let store = self.store.clone();
        promise(&env, async move {
            let session = store.session(&company_id).await.map_err(to_js)?;
            Ok(NativeSession { session })
        })
    }

    /// The in-memory metrics snapshot as JSON text (no database work).
    #[napi(catch_unwind)]
    pub fn metrics(&self) -> napi::Result<String> {
        serde_json::to_string(&self.store.metrics())
            .map_err(|e| coded("EAUTHSTATE_INTERNAL", format!("metrics: {e}")))
    }

    /// Flushes what is pending and closes the pool; resolves to the close report as JSON text.
    #[napi(catch_unwind)]
    pub fn close(&self, env: Env) -> napi::Result<JsObject> {
        let store = self.store.clone();
        promise(&env, async move {
            let report = store.close().await.map_err(to_js)?;
            Ok(close_report_json(&report))
        })
    }
}

fn close_report_json(report: &authstate::CloseReport) -> String {
    serde_json::to_string(report).unwrap_or_else(|_| "{}".to_string())
}

#[napi]
pub struct NativeSession {
    session: Session,
}

#[napi]
impl NativeSession {
    #[napi(getter, catch_unwind)]
    pub fn company_id(&self) -> String {
        self.session.company_id().to_string()
    }

    /// Resolves to the creds as canonical JSON text, or null.
    #[napi(catch_unwind)]
    pub fn load_creds(&self, env: Env) -> napi::Result<JsObject> {
        let session = self.session.clone();
        promise(&env, async move {
            let creds = session.load_creds().await.map_err(to_js)?;
            Ok(creds.map(|c| c.as_str().to_string()))
        })
    }

    /// Validates and enqueues synchronously; resolves to true when written, false when the
    /// creds were unchanged.
    #[napi(catch_unwind)]
    pub fn save_creds(&self, env: Env, creds_json: String) -> napi::Result<JsObject> {
        let creds = StoredValue::from_json(&creds_json).map_err(to_js)?;
        let ticket =
            within_runtime_if_available(|| self.session.save_creds_begin(creds)).map_err(to_js)?;
        promise(&env, async move {
            match ticket {
                None => Ok(false),
                Some(t) => t.wait().await.map(|()| true).map_err(to_js),
            }
        })
    }

    /// `{"id": value, ...}` as JSON text when every id is answered from memory, else null
    /// (then call `get`). Synchronous: the hot path skips the async hop.
    #[napi(catch_unwind)]
    pub fn get_cached(&self, key_type: String, ids: Vec<String>) -> napi::Result<Option<String>> {
        self.session.get_json_cached(&key_type, &ids).map_err(to_js)
    }

    /// Resolves to `{"id": value, ...}` as JSON text; missing ids are absent.
    #[napi(catch_unwind)]
    pub fn get(&self, env: Env, key_type: String, ids: Vec<String>) -> napi::Result<JsObject> {
        let session = self.session.clone();
        promise(&env, async move {
            session.get_json(&key_type, &ids).await.map_err(to_js)
        })
    }

    /// `{"type": {"id": value | null}}` as JSON text. Validated and enqueued synchronously
    /// (nothing is enqueued when any part is invalid); resolves after the commit.
    #[napi(catch_unwind)]
    pub fn set(&self, env: Env, writes_json: String) -> napi::Result<JsObject> {
        let ticket = within_runtime_if_available(|| self.session.set_json_begin(&writes_json))
            .map_err(to_js)?;
        promise(&env, async move { ticket.wait().await.map_err(to_js) })
    }

    /// Deletes every key and the creds of the company; ordered like `set`.
    #[napi(catch_unwind)]
    pub fn clear(&self, env: Env) -> napi::Result<JsObject> {
        let ticket = within_runtime_if_available(|| self.session.clear_begin()).map_err(to_js)?;
        promise(&env, async move { ticket.wait().await.map_err(to_js) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(js_code("INVALID"), "EAUTHSTATE_INVALID");
        assert_eq!(js_code("BACKLOG"), "EAUTHSTATE_BACKLOG");
        assert_eq!(js_code("UNAVAILABLE"), "EAUTHSTATE_UNAVAILABLE");
        assert_eq!(js_code("READ_ONLY"), "EAUTHSTATE_READ_ONLY");
        assert_eq!(
            js_code(authstate::Error::closed("x").code()),
            "EAUTHSTATE_CLOSED"
        );
    }

    #[test]
    fn options() {
        let opts = |s: &str| -> Map<String, Value> {
            match serde_json::from_str(s) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            }
        };
        let c = config_from_options(&opts(
            r#"{"url":"postgres://u@localhost/db","poolSize":3,"statementTimeoutMs":1500,
                "ttlMs":{"default":1000,"session":2000},"outagePolicy":"read-only"}"#,
        ));
        let c = match c {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.pool_size, 3);
        assert_eq!(c.statement_timeout, Duration::from_millis(1500));
        assert_eq!(c.ttl.ttl("session"), Duration::from_millis(2000));
        assert_eq!(c.ttl.ttl("pre-key"), Duration::from_secs(7 * 86400));
        assert_eq!(c.ttl.ttl("device-list"), Duration::from_millis(1000));
        assert_eq!(c.outage_policy, OutagePolicy::ReadOnly);
        assert!(config_from_options(&opts(r#"{"url":"postgres://x/y","pol":1}"#)).is_err());
        assert!(config_from_options(&opts(r#"{"url":"postgres://x/y","poolSize":-1}"#)).is_err());
    }
}
