//! Opaque handles and the one way each is created, borrowed and freed.
//!
//! As in rustls-ffi's `Castable`, each C handle type is tied to the Rust type it stands for,
//! so a `authstate_store *` can only be turned back into a `Store` and freed as one.

use authstate::{Error, Session, Store};

/// A connection pool and everything shared by the sessions of one database.
///
/// Created by `authstate_store_open`, released by `authstate_store_close`. Thread-safe.
pub struct authstate_store {
    _private: [u8; 0],
}

/// The auth state of one company (one WhatsApp account).
///
/// Created by `authstate_session_open`, released by `authstate_session_close`. Thread-safe.
pub struct authstate_session {
    _private: [u8; 0],
}

/// A C handle owned through a `Box` of its Rust value.
pub(crate) trait BoxHandle: Sized {
    /// The Rust value behind the handle.
    type Inner;
    /// What the handle is called in error messages.
    const NAME: &'static str;

    /// Moves `inner` to the heap and hands ownership to C.
    fn into_raw(inner: Self::Inner) -> *mut Self {
        Box::into_raw(Box::new(inner)).cast()
    }

    /// Borrows the value behind a handle for the duration of a call; NULL is an error.
    ///
    /// # Safety
    /// `ptr` is NULL or was returned by [`BoxHandle::into_raw`] for this type and not freed,
    /// and is not freed while the borrow lives (the C contract: no `_close` during a call).
    unsafe fn borrow<'a>(ptr: *const Self) -> Result<&'a Self::Inner, Error> {
        // SAFETY: per this function's contract, a non-NULL `ptr` is a live `Box<Inner>`.
        unsafe { ptr.cast::<Self::Inner>().as_ref() }
            .ok_or_else(|| Error::invalid(format!("{} is NULL", Self::NAME)))
    }

    /// Takes ownership back from C; NULL gives `None`.
    ///
    /// # Safety
    /// `ptr` is NULL or was returned by [`BoxHandle::into_raw`] for this type and not freed;
    /// it must not be used again.
    unsafe fn take(ptr: *mut Self) -> Option<Box<Self::Inner>> {
        if ptr.is_null() {
            return None;
        }
        // SAFETY: per this function's contract, `ptr` came from `Box::into_raw` of an `Inner`.
        Some(unsafe { Box::from_raw(ptr.cast::<Self::Inner>()) })
    }
}

impl BoxHandle for authstate_store {
    type Inner = Store;
    const NAME: &'static str = "store";
}

impl BoxHandle for authstate_session {
    type Inner = Session;
    const NAME: &'static str = "session";
}

// The header promises thread-safe handles: C threads share them without locks.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Store>();
    send_sync::<Session>();
};
