//! Strings the library hands to C.

use std::ffi::{c_char, CString};

use crate::panic::value_boundary;

/// Frees a string returned by this library (`authstate_creds_load`, `authstate_keys_get`).
///
/// NULL is fine and does nothing.
///
/// Ownership: takes ownership of `s`; it must not be used afterwards.
///
/// # Safety
///
/// `s` is NULL or a string returned by an `authstate_*` function that was not freed yet.
/// Never pass memory from `malloc` or from another library, nor the static strings of
/// `authstate_status_message`.
#[no_mangle]
pub unsafe extern "C" fn authstate_string_free(s: *mut c_char) {
    value_boundary((), || {
        if !s.is_null() {
            // SAFETY: per the contract, `s` came from `CString::into_raw` in this library and
            // is freed exactly once.
            drop(unsafe { CString::from_raw(s) });
        }
    })
}
