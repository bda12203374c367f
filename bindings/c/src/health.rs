//! `authstate_store_health_json`, `authstate_store_poll_alert`, `authstate_store_prometheus`:
//! the store's health report, its alerts and its metrics, as text.

use std::ffi::c_char;

use authstate::Error;

use crate::args::{into_c_string, out_arg, write_out};
use crate::handle::{authstate_store, BoxHandle};
use crate::panic::status_boundary;
use crate::runtime::block_on;
use crate::status::authstate_status;

/// The store's health report as JSON: `{"status": "healthy"|"warning"|"critical", "checks":
/// [{"name", "status", "summary", "recommendation"?, "details"}...], "process": {...}}`.
///
/// It asks the database (reachability, round trip, expired keys) on a connection of its own;
/// an unreachable database is a `critical` check in the report, not an error status. Making
/// a report also raises alerts (see `authstate_store_poll_alert`).
///
/// Ownership: `store` is borrowed for the call. On `AUTHSTATE_OK`, `*json_out` receives a new
/// NUL-terminated string owned by the caller, to be released with `authstate_string_free`; on
/// any other status `*json_out` is left unchanged.
///
/// # Safety
///
/// `store` is NULL or a live handle; `json_out` is NULL or points to writable storage for one
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_health_json(
    store: *const authstate_store,
    json_out: *mut *mut c_char,
) -> authstate_status {
    status_boundary("authstate_store_health_json", || {
        // SAFETY: NULL or a live handle per the contract.
        let store = unsafe { authstate_store::borrow(store) }?;
        out_arg(json_out, "json_out")?;
        let report = block_on(store.health())??;
        let text = into_c_string(report.to_json())?;
        // SAFETY: `json_out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(json_out, text) };
        Ok(())
    })
}

/// The oldest alert not yet polled, as one line of JSON: `{"kind", "status", "previous",
/// "summary", "recommendation"?, "at_unix_ms"}`. An alert is raised when a health check
/// changes state (at most one per kind per cooldown; escalations at once), by the store's
/// background checks or by `authstate_store_health_json`.
///
/// Returns `AUTHSTATE_NOT_FOUND` when no alert is pending.
///
/// Ownership: `store` is borrowed for the call. On `AUTHSTATE_OK`, `*json_out` receives a new
/// NUL-terminated string owned by the caller, to be released with `authstate_string_free`; on
/// any other status `*json_out` is left unchanged.
///
/// # Safety
///
/// `store` is NULL or a live handle; `json_out` is NULL or points to writable storage for one
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_poll_alert(
    store: *const authstate_store,
    json_out: *mut *mut c_char,
) -> authstate_status {
    status_boundary("authstate_store_poll_alert", || {
        // SAFETY: NULL or a live handle per the contract.
        let store = unsafe { authstate_store::borrow(store) }?;
        out_arg(json_out, "json_out")?;
        let alert = store
            .poll_alert()
            .ok_or_else(|| Error::not_found("no alert pending"))?;
        let text = into_c_string(alert.to_json())?;
        // SAFETY: `json_out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(json_out, text) };
        Ok(())
    })
}

/// The store's metrics in the Prometheus text format (OpenMetrics 1.0: serve it with
/// `Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8`). No database
/// round trip.
///
/// Ownership: `store` is borrowed for the call. On `AUTHSTATE_OK`, `*text_out` receives a new
/// NUL-terminated string owned by the caller, to be released with `authstate_string_free`; on
/// any other status `*text_out` is left unchanged.
///
/// # Safety
///
/// `store` is NULL or a live handle; `text_out` is NULL or points to writable storage for one
/// pointer.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_prometheus(
    store: *const authstate_store,
    text_out: *mut *mut c_char,
) -> authstate_status {
    status_boundary("authstate_store_prometheus", || {
        // SAFETY: NULL or a live handle per the contract.
        let store = unsafe { authstate_store::borrow(store) }?;
        out_arg(text_out, "text_out")?;
        let text = into_c_string(store.prometheus())?;
        // SAFETY: `text_out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(text_out, text) };
        Ok(())
    })
}
