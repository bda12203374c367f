//! Node addon over the `authstate` core (napi-rs).
//!
//! Thin by design: it converts arguments and errors and calls the core; no storage logic lives
//! here. Values cross as JSON text in both directions (`index.js` stringifies with a buffer
//! replacer and revives buffer nodes into `Buffer`s). Every error reaches JS as an `Error` built
//! here with `code` = `EAUTHSTATE_<kind>` (from [`authstate::ErrorKind::code`]), `sqlstate` when
//! PostgreSQL answered with one, and `cause` for the underlying error chain.
//! Writes use the core's `*_then` forms synchronously inside the napi call, so two un-awaited
//! JS calls commit in call order; their outcomes come back to `index.js` in batches (see
//! [`Outcomes`]), where each call's Promise waits under a ticket number.

#![deny(clippy::unwrap_used)]

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use authstate::{Config, ErrorKind, OutagePolicy, Session, Store, StoredValue};
use futures_util::FutureExt;
use napi::bindgen_prelude::{within_runtime_if_available, ToNapiValue};
use napi::threadsafe_function::{ErrorStrategy, ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi::{Env, JsFunction, JsObject, JsUnknown, Status};
use napi_derive::napi;
use serde_json::{Map, Value};

/// The JS `code` for a core error kind: `EAUTHSTATE_` + [`authstate::ErrorKind::code`].
fn js_code(kind: ErrorKind) -> String {
    format!("EAUTHSTATE_{}", kind.code())
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

/// Builds the JS `Error` for a core error on the JS thread: `message`, `code`, `sqlstate` when
/// the database gave one, `cause` (`Error`s with the texts of the underlying error chain) when
/// there is one.
fn js_error(env: &Env, e: &authstate::Error) -> napi::Result<JsObject> {
    let mut obj = env.create_error(napi::Error::new(Status::GenericFailure, e.to_string()))?;
    obj.set_named_property("code", js_code(e.kind()))?;
    if let Some(state) = e.sqlstate() {
        obj.set_named_property("sqlstate", state.to_string())?;
    }
    // The source chain as nested `cause`s (tokio-postgres: "db error" -> the server's text).
    let mut chain = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source.filter(|_| chain.len() < 8) {
        chain.push(s.to_string());
        source = s.source();
    }
    let mut cause: Option<JsObject> = None;
    for text in chain.iter().rev() {
        let mut c = env.create_error(napi::Error::new(Status::GenericFailure, text.clone()))?;
        if let Some(inner) = cause.take() {
            c.set_named_property("cause", inner)?;
        }
        cause = Some(c);
    }
    if let Some(c) = cause {
        obj.set_named_property("cause", c)?;
    }
    Ok(obj)
}

/// [`js_error`] as a napi error that refers to that object, so napi throws or rejects with it
/// unchanged.
fn to_js(env: &Env, e: &authstate::Error) -> napi::Error {
    match js_error(env, e) {
        Ok(obj) => napi::Error::from(obj.into_unknown()),
        // Creating the object failed (the engine is out of memory or shutting down): napi's own
        // error, which index.js reports as EAUTHSTATE_INTERNAL.
        Err(napi_err) => napi_err,
    }
}

/// Runs `fut` on napi's tokio runtime and returns a Promise that resolves with its value or
/// rejects with the coded JS error (built on the JS thread, see [`to_js`]). A panic rejects
/// with `EAUTHSTATE_INTERNAL`.
fn promise<T, F>(env: &Env, fut: F) -> napi::Result<JsObject>
where
    T: 'static + Send + ToNapiValue,
    F: 'static + Send + Future<Output = authstate::Result<T>>,
{
    let guarded = async move {
        Ok(match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(r) => r,
            Err(p) => Err(authstate::Error::internal(format!(
                "panic in the addon: {}",
                panic_message(p.as_ref())
            ))),
        })
    };
    env.execute_tokio_future(guarded, |env, r| r.map_err(|e| to_js(env, &e)))
}

// ---------------------------------------------------------------------------------------------
// write outcomes -> JS, in batches

/// The outcomes of one store's writes on their way to the JS thread. A write is enqueued by a
/// synchronous call that carries a ticket number from `index.js`; whoever learns its outcome (a
/// writer lane, the journal appender) pushes `(ticket, outcome)` here, and only the push into
/// an empty queue wakes the JS thread. So every outcome learnt before JS runs arrives in one
/// threadsafe-function call, where a promise per call would cost a threadsafe function, two
/// tokio tasks and a wake-up of the JS thread each.
struct Outcomes {
    queue: Queue,
    /// Calls `index.js`'s `onWritten(tickets, errors)`. Unref'd: `index.js` keeps Node alive
    /// while a write is pending.
    wake: ThreadsafeFunction<(), ErrorStrategy::Fatal>,
}

type Queue = Arc<Mutex<Vec<(u32, authstate::Result<()>)>>>;

impl Outcomes {
    /// On the JS thread: the wake-up handle around `on_written`.
    fn new(env: &Env, on_written: &JsFunction) -> napi::Result<Arc<Outcomes>> {
        let queue: Queue = Arc::default();
        let drain = queue.clone();
        let mut wake = on_written.create_threadsafe_function(0, move |ctx| {
            let batch = std::mem::take(&mut *drain.lock().unwrap_or_else(|p| p.into_inner()));
            outcome_args(&ctx.env, batch)
        })?;
        wake.unref(env)?;
        Ok(Arc::new(Outcomes { queue, wake }))
    }

    /// The callback that reports ticket `ticket`'s outcome.
    fn then(self: &Arc<Self>, ticket: u32) -> authstate::OnWritten {
        let me = self.clone();
        Box::new(move |r| me.push(ticket, r))
    }

    fn push(&self, ticket: u32, r: authstate::Result<()>) {
        let first = {
            let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            q.push((ticket, r));
            q.len() == 1
        };
        if first {
            // Fails only while Node shuts down, when no promise can be settled anyway.
            let _ = self.wake.call((), ThreadsafeFunctionCallMode::NonBlocking);
        }
    }
}

/// `onWritten`'s arguments: the tickets in the order their outcomes were learnt, and an array
/// with the coded `Error` at the index of each failed one (a hole where it succeeded).
fn outcome_args(
    env: &Env,
    batch: Vec<(u32, authstate::Result<()>)>,
) -> napi::Result<Vec<JsUnknown>> {
    let len = u32::try_from(batch.len()).unwrap_or(u32::MAX);
    let mut tickets = env.create_array_with_length(batch.len())?;
    let mut errors = env.create_array_with_length(0)?;
    for (i, (ticket, r)) in (0..len).zip(batch) {
        tickets.set_element(i, env.create_uint32(ticket)?)?;
        if let Err(e) = r {
            errors.set_element(i, js_error(env, &e)?)?;
        }
    }
    Ok(vec![tickets.into_unknown(), errors.into_unknown()])
}

// ---------------------------------------------------------------------------------------------
// options -> Config

fn opt_u64(v: &Value, name: &str) -> authstate::Result<u64> {
    match v.as_f64() {
        Some(n) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9.0e15 => Ok(n as u64),
        _ => Err(authstate::Error::invalid(format!(
            "option {name} must be a non-negative integer, got {v}"
        ))),
    }
}

fn opt_usize(v: &Value, name: &str) -> authstate::Result<usize> {
    usize::try_from(opt_u64(v, name)?)
        .map_err(|_| authstate::Error::invalid(format!("option {name} is too large")))
}

fn opt_ms(v: &Value, name: &str) -> authstate::Result<Duration> {
    Ok(Duration::from_millis(opt_u64(v, name)?))
}

fn opt_str<'a>(v: &'a Value, name: &str) -> authstate::Result<&'a str> {
    v.as_str().ok_or_else(|| {
        authstate::Error::invalid(format!("option {name} must be a string, got {v}"))
    })
}

fn opt_bool(v: &Value, name: &str) -> authstate::Result<bool> {
    v.as_bool().ok_or_else(|| {
        authstate::Error::invalid(format!("option {name} must be a boolean, got {v}"))
    })
}

/// Builds the core [`Config`] from `openStore`'s options (a JSON object). Unknown options are
/// refused so a typo does not silently fall back to a default.
fn config_from_options(options: &Map<String, Value>) -> authstate::Result<Config> {
    let mut cfg = match options.get("url") {
        Some(Value::Null) | None => Config::from_env()?,
        Some(v) => Config::from_url(opt_str(v, "url")?)?,
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
            "outagePolicy" => cfg.outage_policy = opt_str(v, name)?.parse::<OutagePolicy>()?,
            "journalPath" => cfg.journal_path = Some(PathBuf::from(opt_str(v, name)?)),
            "durability" => cfg.durability = opt_str(v, name)?.parse()?,
            "journalFlushIntervalMs" => cfg.journal_flush_interval = opt_ms(v, name)?,
            "maxPendingBytes" => cfg.max_pending_bytes = opt_usize(v, name)?,
            "sslMode" => cfg.ssl_mode = opt_str(v, name)?.parse()?,
            "sslRootCert" => cfg.ssl_root_cert = Some(PathBuf::from(opt_str(v, name)?)),
            "ttlMs" => {
                let Value::Object(per) = v else {
                    return Err(authstate::Error::invalid(
                        "option ttlMs must be an object {default?, [keyType]: ms}",
                    ));
                };
                for (key_type, ms) in per {
                    let d = opt_ms(ms, &format!("ttlMs.{key_type}"))?;
                    if key_type == "default" {
                        cfg.ttl.default = d;
                    } else {
                        authstate::validate::key_type(key_type)?;
                        cfg.ttl.per_type.insert(key_type.clone(), d);
                    }
                }
            }
            // One writer per company (issue 11): the lease is on by default.
            "lease" => cfg.lease = opt_bool(v, name)?,
            "leaseExpiryMs" => cfg.lease_expiry = opt_ms(v, name)?,
            "leaseHeartbeatMs" => cfg.lease_heartbeat = opt_ms(v, name)?,
            "lostWritesPath" => cfg.lost_writes_path = Some(PathBuf::from(opt_str(v, name)?)),
            "leaseHost" => cfg.lease_host = Some(opt_str(v, name)?.to_string()),
            "pipelineDepth" => cfg.pipeline_depth = opt_usize(v, name)?.max(1),
            "pipelinePacing" => cfg.pipeline_pacing = opt_bool(v, name)?,
            "preparedStatements" => cfg.prepared_statements = opt_str(v, name)?.parse()?,
            "health" => health_options(&mut cfg, v)?,
            other => {
                return Err(authstate::Error::invalid(format!(
                    "unknown option {other:?}"
                )))
            }
        }
    }
    Ok(cfg)
}

// ---------------------------------------------------------------------------------------------
// exports

/// Turns a core result into a napi result for a synchronous throw (see [`to_js`]).
fn sync<T>(env: &Env, r: authstate::Result<T>) -> napi::Result<T> {
    r.map_err(|e| to_js(env, &e))
}

fn options_config(options_json: &str) -> authstate::Result<Config> {
    let options: Value = serde_json::from_str(options_json)
        .map_err(|e| authstate::Error::invalid(format!("options are not JSON: {e}")))?;
    let Value::Object(options) = options else {
        return Err(authstate::Error::invalid("options must be an object"));
    };
    config_from_options(&options)
}

/// Opens a store. `options_json`: the JSON text of `openStore`'s options object;
/// `on_written(tickets, errors)` receives the outcomes of its writes (see [`Outcomes`]).
#[napi(
    catch_unwind,
    ts_args_type = "optionsJson: string, onWritten: (tickets: number[], errors: Array<Error | undefined>) => void",
    ts_return_type = "Promise<NativeStore>"
)]
pub fn open_store(
    env: Env,
    options_json: String,
    on_written: JsFunction,
) -> napi::Result<JsObject> {
    let config = sync(&env, options_config(&options_json))?;
    let outcomes = Outcomes::new(&env, &on_written)?;
    promise(&env, async move {
        let store = Store::open(config).await?;
        Ok(NativeStore { store, outcomes })
    })
}

/// Every JS error code, from the core's one list [`ErrorKind::ALL`]: `index.js` exports it as
/// `ERROR_CODES`, and the tests check `index.d.ts` and the documentation against it.
#[napi(catch_unwind)]
pub fn error_codes() -> Vec<String> {
    ErrorKind::ALL.iter().map(|k| js_code(*k)).collect()
}

/// Fails on purpose with a core error of the kind whose code is `core_code`: tests use it to
/// check that every kind reaches JS with its code, thrown or as a rejected Promise.
#[napi(catch_unwind, ts_return_type = "Promise<void> | null")]
pub fn test_error(env: Env, core_code: String, in_promise: bool) -> napi::Result<Option<JsObject>> {
    let err = match ErrorKind::ALL.into_iter().find(|k| k.code() == core_code) {
        Some(kind) => authstate::Error::new(kind, "test error"),
        None => authstate::Error::invalid(format!("no error kind {core_code:?}")),
    };
    if in_promise {
        return promise::<(), _>(&env, async move { Err(err) }).map(Some);
    }
    sync(&env, Err(err))
}

/// Panics on purpose: tests use it to prove a panic becomes a JS error and never kills Node.
#[napi(catch_unwind, ts_return_type = "Promise<void> | null")]
pub fn test_panic(env: Env, in_promise: bool) -> napi::Result<Option<JsObject>> {
    if in_promise {
        return promise::<(), _>(&env, async { panic!("test panic (async)") }).map(Some);
    }
    panic!("test panic (sync)")
}

/// A store: the pool, writer lanes, cache and metrics of the core's [`Store`].
#[napi]
pub struct NativeStore {
    store: Store,
    outcomes: Arc<Outcomes>,
}

#[napi]
impl NativeStore {
    /// Applies pending migrations; resolves to the report as JSON text.
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn migrate(&self, env: Env) -> napi::Result<JsObject> {
        let store = self.store.clone();
        promise(&env, async move {
            let r = store.migrate().await?;
            Ok(serde_json::json!({
                "applied": r.applied,
                "alreadyApplied": r.already_applied,
            })
            .to_string())
        })
    }

    /// Opens one company's session (the id is validated by the core).
    #[napi(catch_unwind, ts_return_type = "Promise<NativeSession>")]
    pub fn session(&self, env: Env, company_id: String) -> napi::Result<JsObject> {
        let store = self.store.clone();
        let outcomes = self.outcomes.clone();
        promise(&env, async move {
            let session = store.session(&company_id).await?;
            Ok(NativeSession { session, outcomes })
        })
    }

    /// The in-memory metrics snapshot as JSON text (no database work).
    #[napi(catch_unwind)]
    pub fn metrics(&self, env: Env) -> napi::Result<String> {
        sync(
            &env,
            serde_json::to_string(&self.store.metrics())
                .map_err(|e| authstate::Error::internal(format!("metrics: {e}"))),
        )
    }

    /// Statistics (keys per type, bytes, oldest/newest update, expired counts) of one company,
    /// or of the whole database without one, as JSON text.
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn stats(&self, env: Env, company_id: Option<String>) -> napi::Result<JsObject> {
        let store = self.store.clone();
        promise(&env, async move {
            let stats = store.stats(company_id.as_deref()).await?;
            serde_json::to_string(&stats)
                .map_err(|e| authstate::Error::internal(format!("stats: {e}")))
        })
    }

    /// A page of one type's keys after id `after` (ordered by id): `json` is `{"id": value}`
    /// text (or an array of ids when `values` is false), `next` the `after` of the next page.
    #[napi(catch_unwind, ts_return_type = "Promise<ListPage>")]
    pub fn list_page(
        &self,
        env: Env,
        company_id: String,
        key_type: String,
        after: Option<String>,
        limit: u32,
        values: bool,
    ) -> napi::Result<JsObject> {
        let store = self.store.clone();
        promise(&env, async move {
            let limit = limit as usize;
            let after = after.as_deref();
            let (json, next) = if values {
                let (entries, next) = store
                    .list_page(&company_id, &key_type, after, limit)
                    .await?;
                (authstate::json_object(&entries)?, next)
            } else {
                let (ids, next) = store
                    .list_ids_page(&company_id, &key_type, after, limit)
                    .await?;
                let json = serde_json::to_string(&ids)
                    .map_err(|e| authstate::Error::internal(format!("ids: {e}")))?;
                (json, next)
            };
            Ok(ListPage { json, next })
        })
    }

    /// Flushes what is pending and closes the pool; resolves to the close report as JSON text.
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn close(&self, env: Env) -> napi::Result<JsObject> {
        let store = self.store.clone();
        promise(&env, async move {
            let report = store.close().await?;
            serde_json::to_string(&report)
                .map_err(|e| authstate::Error::internal(format!("close report: {e}")))
        })
    }
}

/// One company's auth state: the core's [`Session`].
#[napi]
pub struct NativeSession {
    session: Session,
    outcomes: Arc<Outcomes>,
}

#[napi]
impl NativeSession {
    /// The company id this session belongs to.
    #[napi(getter, catch_unwind)]
    pub fn company_id(&self) -> String {
        self.session.company_id().to_string()
    }

    /// Resolves to the creds as canonical JSON text, or null.
    #[napi(catch_unwind, ts_return_type = "Promise<string | null>")]
    pub fn load_creds(&self, env: Env) -> napi::Result<JsObject> {
        let session = self.session.clone();
        promise(&env, async move {
            let creds = session.load_creds().await?;
            Ok(creds.map(|c| c.as_str().to_string()))
        })
    }

    /// Validates and enqueues synchronously: true when enqueued (its outcome reaches
    /// `onWritten` under `ticket`), false when the creds were unchanged (nothing to write).
    #[napi(catch_unwind)]
    pub fn save_creds(&self, env: Env, creds_json: String, ticket: u32) -> napi::Result<bool> {
        sync(
            &env,
            StoredValue::from_json(&creds_json).and_then(|creds| {
                within_runtime_if_available(|| {
                    self.session
                        .save_creds_then(creds, self.outcomes.then(ticket))
                })
            }),
        )
    }

    /// `{"id": value, ...}` as JSON text when every id is answered from memory, else null
    /// (then call `get`). Synchronous: the hot path skips the async hop.
    #[napi(catch_unwind)]
    pub fn get_cached(
        &self,
        env: Env,
        key_type: String,
        ids: Vec<String>,
    ) -> napi::Result<Option<String>> {
        sync(&env, self.session.get_json_cached(&key_type, &ids))
    }

    /// Resolves to `{"id": value, ...}` as JSON text; missing ids are absent.
    #[napi(catch_unwind, ts_return_type = "Promise<string>")]
    pub fn get(&self, env: Env, key_type: String, ids: Vec<String>) -> napi::Result<JsObject> {
        let session = self.session.clone();
        promise(&env, async move { session.get_json(&key_type, &ids).await })
    }

    /// A `get` answered in parts of up to `part_rows` values as PostgreSQL sends the rows, so
    /// the caller parses the first while the rest arrive (`Session::get_json_parts`). Bad input
    /// throws here.
    #[napi(catch_unwind)]
    pub fn get_parts(
        &self,
        env: Env,
        key_type: String,
        ids: Vec<String>,
        part_rows: u32,
    ) -> napi::Result<NativeGetParts> {
        let parts = sync(
            &env,
            within_runtime_if_available(|| {
                self.session
                    .get_json_parts(&key_type, ids, part_rows as usize)
            }),
        )?;
        Ok(NativeGetParts {
            parts: Arc::new(tokio::sync::Mutex::new(parts)),
        })
    }

    /// Baileys' `keys.set` as parallel lists: `types[i]`/`ids[i]` gets `values[i]` (JSON text)
    /// or is deleted (null). One text per value, so each takes the core's fast path for text
    /// that is canonical as written. Validated and enqueued synchronously (a throw, and nothing
    /// enqueued, when any part is invalid); the outcome reaches `onWritten` under `ticket`.
    #[napi(catch_unwind)]
    pub fn set(
        &self,
        env: Env,
        types: Vec<String>,
        ids: Vec<String>,
        values: Vec<Option<String>>,
        ticket: u32,
    ) -> napi::Result<()> {
        sync(
            &env,
            authstate::writes_from_texts(&types, &ids, values).and_then(|writes| {
                within_runtime_if_available(|| {
                    self.session.set_then(writes, self.outcomes.then(ticket))
                })
            }),
        )
    }

    /// Deletes every key and the creds of the company; ordered like `set`, its outcome reaches
    /// `onWritten` under `ticket`.
    #[napi(catch_unwind)]
    pub fn clear(&self, env: Env, ticket: u32) -> napi::Result<()> {
        sync(
            &env,
            within_runtime_if_available(|| self.session.clear_then(self.outcomes.then(ticket))),
        )
    }
}

/// The parts of one `get` (see `NativeSession::get_parts`).
#[napi]
pub struct NativeGetParts {
    parts: Arc<tokio::sync::Mutex<authstate::GetParts>>,
}

#[napi]
impl NativeGetParts {
    /// Resolves to the next part, `["id", value, ...]` (id, value pairs) as JSON text, or null
    /// after the last; rejects when the get failed (then the parts before must be dropped).
    #[napi(catch_unwind, ts_return_type = "Promise<string | null>")]
    pub fn next(&self, env: Env) -> napi::Result<JsObject> {
        let parts = self.parts.clone();
        promise(
            &env,
            async move { parts.lock().await.next().await.transpose() },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes() {
        assert_eq!(js_code(ErrorKind::InvalidArgument), "EAUTHSTATE_INVALID");
        assert_eq!(js_code(ErrorKind::Backlog), "EAUTHSTATE_BACKLOG");
        assert_eq!(js_code(ErrorKind::ReadOnly), "EAUTHSTATE_READ_ONLY");
        assert_eq!(
            js_code(authstate::Error::closed("x").kind()),
            "EAUTHSTATE_CLOSED"
        );
        let codes = error_codes();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert!(codes.iter().all(|c| c.starts_with("EAUTHSTATE_")));
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

/// One page of `NativeStore.listPage`.
#[napi(object)]
pub struct ListPage {
    /// `{"id": value}` JSON text, or a JSON array of ids.
    pub json: String,
    /// The `after` of the next page; absent at the end.
    pub next: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Health (issue 12): the report, alerts and Prometheus text. Kept together at the end of the
// file so it merges apart from the other addon work; index.js wraps these in `store.health()`,
// `store.on('alert', fn)` and `store.prometheus()`.

/// `openStore({ health: {...} })`: thresholds' companions that a service may tune (intervals
/// and cooldowns, in milliseconds; `publishIntervalMs: 0` publishes no process snapshot).
fn health_options(cfg: &mut Config, v: &Value) -> authstate::Result<()> {
    let Value::Object(h) = v else {
        return Err(authstate::Error::invalid("option health must be an object"));
    };
    let hc = &mut cfg.health;
    for (name, v) in h {
        let full = format!("health.{name}");
        match name.as_str() {
            "sampleIntervalMs" => hc.sample_interval = opt_ms(v, &full)?,
            "dbCheckIntervalMs" => hc.db_check_interval = opt_ms(v, &full)?,
            "publishIntervalMs" => {
                let d = opt_ms(v, &full)?;
                hc.publish_interval = (!d.is_zero()).then_some(d);
            }
            "queryTimeoutMs" => hc.query_timeout = opt_ms(v, &full)?,
            "cooldownQueriesMs" => hc.cooldown_queries = opt_ms(v, &full)?,
            "cooldownPoolMs" => hc.cooldown_pool = opt_ms(v, &full)?,
            "cooldownExpiredMs" => hc.cooldown_expired = opt_ms(v, &full)?,
            other => {
                return Err(authstate::Error::invalid(format!(
                    "unknown option health.{other}"
                )))
            }
        }
    }
    Ok(())
}

#[napi]
impl NativeStore {
    /// The health report (database checks and this process); resolves to JSON text.
    #[napi(catch_unwind)]
    pub fn health(&self, env: Env) -> napi::Result<JsObject> {
        let store = self.store.clone();
        promise(&env, async move { Ok(store.health().await?.to_json()) })
    }

    /// The oldest alert not yet polled, as JSON text; `null` when none is pending.
    #[napi(catch_unwind)]
    pub fn poll_alert(&self) -> Option<String> {
        self.store.poll_alert().map(|a| a.to_json())
    }

    /// The metrics in the Prometheus text format (no database work).
    #[napi(catch_unwind)]
    pub fn prometheus(&self) -> String {
        self.store.prometheus()
    }
}
