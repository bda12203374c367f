//! `authstate_store_*`: opening, migrating and closing a store.

use std::ffi::c_char;

use authstate::{Config, Store};

use crate::args::{into_c_string, out_arg, str_arg, write_out};
use crate::handle::{authstate_store, BoxHandle};
use crate::last_error;
use crate::panic::{status_boundary, value_boundary};
use crate::runtime::{block_on, drop_in_runtime};
use crate::status::authstate_status;

/// Opens a store: a connection pool to PostgreSQL, its cache and its writer tasks.
///
/// `url_or_null` is a `postgres://` URL or a libpq `key=value` string; when NULL the
/// configuration comes from `DATABASE_URL`, or from the libpq `PG*` variables when that is
/// unset. Opening does not create tables: call `authstate_store_migrate` once per database.
///
/// Returns `AUTHSTATE_INVALID` for a NULL `out`, a URL that is not UTF-8 or that does
/// not parse; connection failures give `AUTHSTATE_UNAVAILABLE` or `AUTHSTATE_TIMEOUT`.
///
/// Ownership: `url_or_null` is borrowed for the call. On `AUTHSTATE_OK`, `*out` receives a new
/// handle owned by the caller, to be released with `authstate_store_close`; on any other
/// status `*out` is left unchanged.
///
/// # Safety
///
/// `url_or_null` is NULL or a NUL-terminated string; `out` is NULL or points to writable
/// storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_open(
    url_or_null: *const c_char,
    out: *mut *mut authstate_store,
) -> authstate_status {
    status_boundary("authstate_store_open", || {
        out_arg(out, "out")?;
        let config = if url_or_null.is_null() {
            Config::from_env()?
        } else {
            // SAFETY: non-NULL, NUL-terminated and borrowed for this call per the contract.
            Config::from_url(unsafe { str_arg(url_or_null, "url") }?)?
        };
        // Store::open spawns its tasks on the current runtime: it must run inside ours.
        let store = block_on(Store::open(config))??;
        // SAFETY: `out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(out, authstate_store::into_raw(store)) };
        Ok(())
    })
}

/// `flags` bit of `authstate_store_open_ex`: run without company leases (see the README's
/// "Several service processes over one database"): sessions do not take the company's lease
/// and writes are not fenced. For a single process, or a read-only tool beside the service.
pub const AUTHSTATE_OPEN_NO_LEASE: u32 = 1;

/// `authstate_store_open` with options: `flags` is 0 (the defaults: one writer per company,
/// so a session of a company another process holds fails with `AUTHSTATE_LOCKED`) or
/// `AUTHSTATE_OPEN_NO_LEASE`. Unknown flag bits give `AUTHSTATE_INVALID`.
///
/// Ownership and errors as `authstate_store_open`.
///
/// # Safety
///
/// As `authstate_store_open`.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_open_ex(
    url_or_null: *const c_char,
    flags: u32,
    out: *mut *mut authstate_store,
) -> authstate_status {
    // SAFETY: the caller's contract is this function's.
    unsafe {
        open_with("authstate_store_open_ex", url_or_null, flags, out, |_| {
            Ok(())
        })
    }
}

/// The body of the `authstate_store_open*` functions: checks `out` and `flags`, reads the
/// configuration from `url_or_null` (or the environment), lets `tweak` set the rest, opens.
///
/// # Safety
///
/// As `authstate_store_open_ex`.
unsafe fn open_with(
    what: &str,
    url_or_null: *const c_char,
    flags: u32,
    out: *mut *mut authstate_store,
    tweak: impl FnOnce(&mut Config) -> authstate::Result<()>,
) -> authstate_status {
    status_boundary(what, || {
        out_arg(out, "out")?;
        if flags & !AUTHSTATE_OPEN_NO_LEASE != 0 {
            return Err(authstate::Error::invalid(format!(
                "unknown flags {flags:#x} (known: AUTHSTATE_OPEN_NO_LEASE)"
            )));
        }
        let mut config = if url_or_null.is_null() {
            Config::from_env()?
        } else {
            // SAFETY: non-NULL, NUL-terminated and borrowed for this call per the contract.
            Config::from_url(unsafe { str_arg(url_or_null, "url") }?)?
        };
        config.lease = flags & AUTHSTATE_OPEN_NO_LEASE == 0;
        tweak(&mut config)?;
        let store = block_on(Store::open(config))??;
        // SAFETY: `out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(out, authstate_store::into_raw(store)) };
        Ok(())
    })
}

/// `authstate_store_open_ex` in journal durability (see the README's "Durability modes"): a
/// write returns once it is fsynced to the journal file `journal_path`, and a background
/// flusher commits the journal to PostgreSQL in order, coalescing rewrites of a key. The
/// journal is replayed at the next open, so a process killed at any point loses no write that
/// returned `AUTHSTATE_OK`; writes not yet flushed are lost if the host (its disk) is lost.
/// `authstate_store_close` flushes. `flags` as `authstate_store_open_ex`.
///
/// Returns `AUTHSTATE_INVALID` for a NULL or non-UTF-8 `journal_path`, else as
/// `authstate_store_open_ex`.
///
/// Ownership: `url_or_null` and `journal_path` are borrowed for the call; `*out` as
/// `authstate_store_open`.
///
/// # Safety
///
/// As `authstate_store_open`; `journal_path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_open_journal(
    url_or_null: *const c_char,
    flags: u32,
    journal_path: *const c_char,
    out: *mut *mut authstate_store,
) -> authstate_status {
    let tweak = |config: &mut Config| {
        // SAFETY: NULL is refused by str_arg; else NUL-terminated and borrowed per the contract.
        let journal = unsafe { str_arg(journal_path, "journal_path") }?;
        config.durability = authstate::Durability::Journal;
        config.journal_path = Some(std::path::PathBuf::from(journal));
        Ok(())
    };
    // SAFETY: the caller's contract is this function's.
    unsafe {
        open_with(
            "authstate_store_open_journal",
            url_or_null,
            flags,
            out,
            tweak,
        )
    }
}

/// Brings the database schema up to date (applies pending migrations in order, under an
/// advisory lock, so concurrent callers are safe). Adopts existing tables.
///
/// Returns `AUTHSTATE_MIGRATION` when an applied migration was edited or one fails.
///
/// Ownership: `store` is borrowed for the call.
///
/// # Safety
///
/// `store` is NULL or a live handle from `authstate_store_open`.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_migrate(
    store: *const authstate_store,
) -> authstate_status {
    status_boundary("authstate_store_migrate", || {
        // SAFETY: NULL or a live handle per the contract.
        let store = unsafe { authstate_store::borrow(store) }?;
        block_on(store.migrate())??;
        Ok(())
    })
}

/// Statistics of one company, or of the whole database when `company_id_or_null` is NULL, as
/// UTF-8 JSON text: `{"company_id", "creds", "keys", "bytes", "expired", "types": [{"key_type",
/// "keys", "bytes", "oldest_update", "newest_update", "expired"}]}`.
///
/// Returns `AUTHSTATE_INVALID` for a NULL `out`, a company id that is not UTF-8 or not valid.
///
/// Ownership: `store` and `company_id_or_null` are borrowed for the call. On `AUTHSTATE_OK`,
/// `*out` receives a new string owned by the caller, to be released with
/// `authstate_string_free`; on any other status `*out` is left unchanged.
///
/// # Safety
///
/// `store` is NULL or a live handle; `company_id_or_null` is NULL or a NUL-terminated string;
/// `out` is NULL or points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_stats(
    store: *const authstate_store,
    company_id_or_null: *const c_char,
    out: *mut *mut c_char,
) -> authstate_status {
    status_boundary("authstate_store_stats", || {
        out_arg(out, "out")?;
        // SAFETY: NULL or a live handle per the contract.
        let store = unsafe { authstate_store::borrow(store) }?;
        let company = if company_id_or_null.is_null() {
            None
        } else {
            // SAFETY: non-NULL, NUL-terminated and borrowed for this call per the contract.
            Some(unsafe { str_arg(company_id_or_null, "company_id") }?)
        };
        let stats = block_on(store.stats(company))??;
        let json = serde_json::to_string(&stats)
            .map_err(|e| authstate::Error::internal(format!("stats: {e}")))?;
        let text = into_c_string(json)?;
        // SAFETY: `out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(out, text) };
        Ok(())
    })
}

/// Flushes pending writes, closes the store and frees the handle. NULL is fine.
///
/// Sessions opened from this store may still be closed afterwards; other calls on them fail
/// with `AUTHSTATE_CLOSED`. When pending writes could not be flushed, the function still frees
/// the handle and leaves the reason in `authstate_last_error` (it returns no status).
///
/// Ownership: takes ownership of `store`; it must not be used afterwards.
///
/// # Safety
///
/// `store` is NULL or a live handle from `authstate_store_open`, not in use by another thread
/// and not closed before.
#[no_mangle]
pub unsafe extern "C" fn authstate_store_close(store: *mut authstate_store) {
    value_boundary((), || {
        // SAFETY: NULL or a live handle, given up by the caller, per the contract.
        let Some(store) = (unsafe { authstate_store::take(store) }) else {
            return;
        };
        last_error::clear();
        match block_on(store.close()) {
            Ok(Ok(_report)) => {}
            Ok(Err(e)) | Err(e) => last_error::set(&e.to_string()),
        }
        drop_in_runtime(store);
    })
}
