//! `authstate_session_*`, `authstate_creds_*`, `authstate_keys_*`: one company's auth state.
//!
//! Values cross as UTF-8 JSON text. Binary data inside values is a buffer node; every shape
//! ever stored comes out as `{"type":"Buffer","data":"<standard padded base64>"}` with the
//! exact bytes, and input in any supported shape is stored in that shape.

use std::ffi::c_char;

use authstate::{Error, StoredValue};

use crate::args::{into_c_string, out_arg, str_arg, write_out};
use crate::handle::{authstate_session, authstate_store, BoxHandle};
use crate::panic::{status_boundary, value_boundary};
use crate::runtime::{block_on, drop_in_runtime};
use crate::status::authstate_status;

/// Opens the session of one company (one WhatsApp account).
///
/// `company_id` must be 1 to 50 characters of `A-Z a-z 0-9 _ -`; anything else gives
/// `AUTHSTATE_INVALID`.
///
/// Ownership: `store` and `company_id` are borrowed for the call. On `AUTHSTATE_OK`, `*out`
/// receives a new handle owned by the caller, to be released with `authstate_session_close`;
/// on any other status `*out` is left unchanged. The session does not borrow `store`: it may
/// be closed before or after it.
///
/// # Safety
///
/// `store` is NULL or a live handle; `company_id` is NULL or a NUL-terminated string; `out`
/// is NULL or points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn authstate_session_open(
    store: *const authstate_store,
    company_id: *const c_char,
    out: *mut *mut authstate_session,
) -> authstate_status {
    status_boundary("authstate_session_open", || {
        // SAFETY: NULL or a live handle per the contract.
        let store = unsafe { authstate_store::borrow(store) }?;
        // SAFETY: NULL or NUL-terminated, borrowed for this call.
        let company_id = unsafe { str_arg(company_id, "company_id") }?;
        out_arg(out, "out")?;
        let session = block_on(store.session(company_id))??;
        // SAFETY: `out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(out, authstate_session::into_raw(session)) };
        Ok(())
    })
}

/// Frees a session handle. NULL is fine. Writes the session made were already committed when
/// their calls returned; nothing is lost by closing.
///
/// Ownership: takes ownership of `session`; it must not be used afterwards.
///
/// # Safety
///
/// `session` is NULL or a live handle from `authstate_session_open`, not in use by another
/// thread and not closed before.
#[no_mangle]
pub unsafe extern "C" fn authstate_session_close(session: *mut authstate_session) {
    value_boundary((), || {
        // SAFETY: NULL or a live handle, given up by the caller, per the contract.
        if let Some(session) = unsafe { authstate_session::take(session) } {
            drop_in_runtime(session);
        }
    })
}

/// Loads the company's creds as JSON text (buffers in the base64 shape).
///
/// Returns `AUTHSTATE_NOT_FOUND` when no creds were saved for the company.
///
/// Ownership: `session` is borrowed for the call. On `AUTHSTATE_OK`, `*json_out` receives a
/// new NUL-terminated string owned by the caller, to be released with `authstate_string_free`;
/// on any other status `*json_out` is left unchanged.
///
/// # Safety
///
/// `session` is NULL or a live handle; `json_out` is NULL or points to writable storage for
/// one pointer.
#[no_mangle]
pub unsafe extern "C" fn authstate_creds_load(
    session: *const authstate_session,
    json_out: *mut *mut c_char,
) -> authstate_status {
    status_boundary("authstate_creds_load", || {
        // SAFETY: NULL or a live handle per the contract.
        let session = unsafe { authstate_session::borrow(session) }?;
        out_arg(json_out, "json_out")?;
        let creds = block_on(session.load_creds())??.ok_or_else(|| {
            Error::not_found(format!(
                "no creds saved for company {}",
                session.company_id()
            ))
        })?;
        let text = into_c_string(creds.as_str().to_owned())?;
        // SAFETY: `json_out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(json_out, text) };
        Ok(())
    })
}

/// Saves the company's creds (the whole object, JSON text). Returns once it is committed.
/// Saving creds equal to the stored ones writes nothing and succeeds.
///
/// `json` must be a UTF-8 JSON value; buffers may be in any supported shape.
///
/// Ownership: `session` and `json` are borrowed for the call.
///
/// # Safety
///
/// `session` is NULL or a live handle; `json` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn authstate_creds_save(
    session: *const authstate_session,
    json: *const c_char,
) -> authstate_status {
    status_boundary("authstate_creds_save", || {
        // SAFETY: NULL or a live handle per the contract.
        let session = unsafe { authstate_session::borrow(session) }?;
        // SAFETY: NULL or NUL-terminated, borrowed for this call.
        let json = unsafe { str_arg(json, "json") }?;
        let creds = StoredValue::from_json(json)?;
        block_on(session.save_creds(creds))??;
        Ok(())
    })
}

/// Reads keys of one type: `*json_object_out` receives a JSON object `{"<id>": value, ...}`
/// holding the ids that exist; ids that do not exist are absent (this is not an error, and
/// `AUTHSTATE_NOT_FOUND` is never returned). `n == 0` gives `{}`. One database round trip for
/// all ids. A database failure is an error, never an empty object.
///
/// `type` is a key type such as `pre-key` or `session`; `ids` is an array of `n` UTF-8 key
/// ids (`ids` may be NULL only when `n` is 0).
///
/// Ownership: `session`, `type`, `ids` and the strings it points to are borrowed for the
/// call. On `AUTHSTATE_OK`, `*json_object_out` receives a new NUL-terminated string owned by
/// the caller, to be released with `authstate_string_free`; on any other status it is left
/// unchanged.
///
/// # Safety
///
/// `session` is NULL or a live handle; `type` is NULL or a NUL-terminated string; `ids` is
/// NULL or points to `n` pointers, each NULL or a NUL-terminated string; `json_object_out` is
/// NULL or points to writable storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn authstate_keys_get(
    session: *const authstate_session,
    r#type: *const c_char,
    ids: *const *const c_char,
    n: usize,
    json_object_out: *mut *mut c_char,
) -> authstate_status {
    status_boundary("authstate_keys_get", || {
        // SAFETY: NULL or a live handle per the contract.
        let session = unsafe { authstate_session::borrow(session) }?;
        // SAFETY: NULL or NUL-terminated, borrowed for this call.
        let key_type = unsafe { str_arg(r#type, "type") }?;
        out_arg(json_object_out, "json_object_out")?;
        let ids = if n == 0 {
            Vec::new()
        } else {
            if ids.is_null() {
                return Err(Error::invalid(format!("ids is NULL but n is {n}")));
            }
            if n > authstate::validate::MAX_IDS_PER_GET {
                return Err(Error::invalid(format!(
                    "{n} ids in one get, the limit is {}",
                    authstate::validate::MAX_IDS_PER_GET
                )));
            }
            // SAFETY: `ids` is non-NULL and points to `n` pointers per the contract; `n` is
            // bounded above, so the slice size cannot overflow `isize`.
            let ptrs = unsafe { std::slice::from_raw_parts(ids, n) };
            ptrs.iter()
                .enumerate()
                // SAFETY: each entry is NULL or NUL-terminated, borrowed for this call.
                .map(|(i, p)| unsafe { str_arg(*p, &format!("ids[{i}]")) }.map(str::to_owned))
                .collect::<Result<Vec<String>, Error>>()?
        };
        let json = block_on(session.get_json(key_type, &ids))??;
        let text = into_c_string(json)?;
        // SAFETY: `json_object_out` was checked non-NULL and is writable per the contract.
        unsafe { write_out(json_object_out, text) };
        Ok(())
    })
}

/// Writes keys: `json_data` is `{"<type>": {"<id>": value | null, ...}, ...}`; `null` deletes
/// the key (deleting a key that does not exist is fine). All writes of one call are applied
/// atomically, and the call returns once they are committed. Calls on one company take effect
/// in the order they were made.
///
/// Ownership: `session` and `json_data` are borrowed for the call.
///
/// # Safety
///
/// `session` is NULL or a live handle; `json_data` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn authstate_keys_set(
    session: *const authstate_session,
    json_data: *const c_char,
) -> authstate_status {
    status_boundary("authstate_keys_set", || {
        // SAFETY: NULL or a live handle per the contract.
        let session = unsafe { authstate_session::borrow(session) }?;
        // SAFETY: NULL or NUL-terminated, borrowed for this call.
        let json = unsafe { str_arg(json_data, "json_data") }?;
        block_on(session.set_json(json))??;
        Ok(())
    })
}

/// Deletes the company's creds and all its keys. Returns once committed.
///
/// Ownership: `session` is borrowed for the call; it stays open and usable.
///
/// # Safety
///
/// `session` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn authstate_session_clear(
    session: *const authstate_session,
) -> authstate_status {
    status_boundary("authstate_session_clear", || {
        // SAFETY: NULL or a live handle per the contract.
        let session = unsafe { authstate_session::borrow(session) }?;
        block_on(session.clear())??;
        Ok(())
    })
}
