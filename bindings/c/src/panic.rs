//! The panic boundary: every exported body runs inside one of these helpers.
//!
//! Unwinding into C is undefined behaviour, so `catch_unwind` stops every panic here. Like
//! rustls-ffi's `ffi_panic_boundary!`, functions returning a status get `AUTHSTATE_PANIC`;
//! the others get a safe default chosen by the caller.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

use authstate::Error;

use crate::last_error;
use crate::status::authstate_status;

/// Runs a status-returning body: clears the thread's last error, maps `Err` through the one
/// `Error -> authstate_status` mapping and records its text, turns a panic into
/// `AUTHSTATE_PANIC`.
pub(crate) fn status_boundary<F>(function: &str, body: F) -> authstate_status
where
    F: FnOnce() -> Result<(), Error>,
{
    last_error::clear();
    // AssertUnwindSafe: after a panic the caller is told (PANIC) to drop the handle it used;
    // no state of ours is observed half-updated by this thread afterwards.
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => authstate_status::AUTHSTATE_OK,
        Ok(Err(e)) => {
            last_error::set(&e.to_string());
            authstate_status::from(&e)
        }
        Err(payload) => {
            last_error::set(&format!("panic in {function}: {}", payload_text(&*payload)));
            authstate_status::AUTHSTATE_PANIC
        }
    }
}

/// Runs a body that returns a plain value (or nothing); a panic gives `default`.
pub(crate) fn value_boundary<T, F>(default: T, body: F) -> T
where
    F: FnOnce() -> T,
{
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(default)
}

fn payload_text(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(no message)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_becomes_status() {
        let s = status_boundary("test_fn", || panic!("boom {}", 42));
        assert_eq!(s, authstate_status::AUTHSTATE_PANIC);
        assert_eq!(last_error::get(), "panic in test_fn: boom 42");
        assert_eq!(value_boundary(7, || -> i32 { panic!("x") }), 7);
    }

    #[test]
    fn error_and_success() {
        let s = status_boundary("f", || Err(Error::locked("held by pid 1")));
        assert_eq!(s, authstate_status::AUTHSTATE_LOCKED);
        assert!(last_error::get().contains("held by pid 1"));
        assert_eq!(
            status_boundary("f", || Ok(())),
            authstate_status::AUTHSTATE_OK
        );
        assert_eq!(last_error::get(), "");
    }
}
