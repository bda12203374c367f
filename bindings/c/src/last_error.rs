//! The per-thread text of the last failed call.

use std::cell::RefCell;
use std::ffi::c_char;

use crate::panic::value_boundary;

thread_local! {
    // Freed by the thread-local destructor when a C thread exits.
    static LAST_ERROR: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Records `text` as this thread's last error. NUL cannot cross as C text, so it is escaped.
pub(crate) fn set(text: &str) {
    let text = text.replace('\0', "\\u0000");
    // `try_with`: during thread teardown the slot may be gone; the text is then dropped.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = text);
}

/// Forgets this thread's last error (every status-returning call starts with it).
pub(crate) fn clear() {
    let _ = LAST_ERROR.try_with(|e| e.borrow_mut().clear());
}

#[cfg(test)]
pub(crate) fn get() -> String {
    LAST_ERROR.with(|e| e.borrow().clone())
}

/// Copies the text of the last failed call made on the calling thread into `buf`.
///
/// Every function that returns an `authstate_status` replaces this text: with the failure's
/// description when it fails, with the empty string when it returns `AUTHSTATE_OK`.
/// `authstate_last_error`, `authstate_status_message`, `authstate_string_free` and the
/// `_close` functions with a NULL argument leave it alone.
///
/// Returns the length of the whole text in bytes, without the terminating NUL (0 when the last
/// call succeeded), like `snprintf`: the text was truncated when the result is `>= len`. When
/// `buf` is not NULL and `len > 0`, writes at most `len - 1` bytes of the text, cut at a UTF-8
/// character boundary, followed by a NUL. `buf` may be NULL (with any `len`) to ask for the
/// length only.
///
/// Ownership: `buf` is owned by the caller and only written during the call.
///
/// # Safety
///
/// `buf` is NULL or points to at least `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn authstate_last_error(buf: *mut c_char, len: usize) -> usize {
    value_boundary(0, || {
        LAST_ERROR
            .try_with(|e| {
                let text = e.borrow();
                if !buf.is_null() && len > 0 {
                    let mut n = text.len().min(len - 1);
                    while !text.is_char_boundary(n) {
                        n -= 1;
                    }
                    // SAFETY: the caller guarantees `len` writable bytes at `buf`; we write
                    // `n + 1 <= len` bytes, and `text` (Rust heap) cannot overlap the
                    // caller's buffer.
                    unsafe {
                        std::ptr::copy_nonoverlapping(text.as_ptr(), buf.cast::<u8>(), n);
                        *buf.add(n) = 0;
                    }
                }
                text.len()
            })
            .unwrap_or(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(len: usize) -> (usize, Vec<u8>) {
        let mut buf = vec![0x55u8; len + 4];
        // SAFETY: `buf` has more than `len` bytes.
        let n = unsafe { authstate_last_error(buf.as_mut_ptr().cast(), len) };
        (n, buf)
    }

    #[test]
    fn truncates_at_char_boundary_and_terminates() {
        set("héllo");
        let (n, buf) = read(3); // room for 2 bytes: "h" + half of "é" -> only "h"
        assert_eq!(n, 6);
        assert_eq!(&buf[..2], b"h\0");
        let (n, buf) = read(7);
        assert_eq!(n, 6);
        assert_eq!(&buf[..7], "héllo\0".as_bytes());
        // SAFETY: a NULL buffer is allowed (length query).
        let needed = unsafe { authstate_last_error(std::ptr::null_mut(), 100) };
        assert_eq!(needed, 6);
        let (n, buf) = read(0);
        assert_eq!((n, buf[0]), (6, 0x55));
        clear();
        let (n, buf) = read(4);
        assert_eq!((n, buf[0]), (0, 0));
    }

    #[test]
    fn nul_is_escaped() {
        set("a\0b");
        assert_eq!(get(), "a\\u0000b");
    }
}
