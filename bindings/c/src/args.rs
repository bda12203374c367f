//! Checked conversions of C arguments.

use std::ffi::{c_char, CStr, CString};

use authstate::Error;

/// Borrows a NUL-terminated UTF-8 string argument; NULL and invalid UTF-8 are refused.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid and unchanged for `'a`.
pub(crate) unsafe fn str_arg<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Error> {
    if ptr.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    // SAFETY: non-NULL and NUL-terminated per this function's contract.
    let c = unsafe { CStr::from_ptr(ptr) };
    c.to_str().map_err(|e| {
        Error::invalid(format!(
            "{what} is not valid UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        ))
    })
}

/// Refuses a NULL out-parameter before any work is done.
pub(crate) fn out_arg<T>(out: *mut T, what: &str) -> Result<(), Error> {
    if out.is_null() {
        return Err(Error::invalid(format!("{what} is NULL")));
    }
    Ok(())
}

/// Writes an out-parameter; called last, once the call has succeeded.
///
/// # Safety
/// `out` is non-NULL (checked by [`out_arg`]) and points to writable storage for a `T`.
pub(crate) unsafe fn write_out<T>(out: *mut T, value: T) {
    // SAFETY: per this function's contract. `write` does not drop the caller's old value,
    // which is plain C data.
    unsafe { out.write(value) }
}

/// Hands a Rust string to C; the caller frees it with `authstate_string_free`.
pub(crate) fn into_c_string(text: String) -> Result<*mut c_char, Error> {
    CString::new(text)
        .map(CString::into_raw)
        .map_err(|_| Error::internal("output text contains a NUL byte"))
}
