//! The C ABI of authstate: this crate (`authstate-c`) builds `libauthstate.so` and
//! `libauthstate.a`, and cbindgen generates `include/authstate.h` from it.
//!
//! It is a crate of its own so that Rust users and the Node addon do not compile it. It uses
//! only the core's public API (`Store`, `Session`, `Config`, `Error`, `ErrorKind`,
//! `StoredValue`), converts arguments and errors and keeps no storage logic.
//! It follows rustls-ffi's conventions, which the header repeats for C programmers:
//!
//! - **Status codes.** Every fallible function returns an [`authstate_status`]. The numbers
//!   are part of the ABI: a code is never renumbered or reused, new codes are appended.
//! - **Panics never cross the boundary.** Every exported body runs inside
//!   [`panic::status_boundary`] (or [`panic::value_boundary`]), which turns a Rust panic into
//!   `AUTHSTATE_PANIC` (or a safe default for functions that return no status).
//! - **Inputs are checked.** NULL pointers, strings that are not UTF-8, text that is not JSON
//!   and identifiers the core refuses get `AUTHSTATE_INVALID`, never a crash.
//! - **Outputs are written only on success.** On any other status an out-parameter keeps the
//!   value the caller put there.
//! - **Ownership.** Inputs are borrowed for the duration of the call. Every object the library
//!   allocates has exactly one function that releases it (`authstate_store_close`,
//!   `authstate_session_close`, `authstate_string_free`), and that function accepts NULL.
//! - **Threads.** Handles may be used from any thread, also concurrently. Calls block the
//!   calling thread on one lazily started, process-wide multi-thread tokio runtime
//!   ([`runtime`]); they must not be made from inside a tokio runtime.
//! - **Errors as text.** `authstate_last_error` gives the text of the last failed call on the
//!   calling thread.

// Every unsafe operation sits in its own block with a `// SAFETY:` comment, also inside
// `unsafe fn`s.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
// The exported names are C names (`authstate_store`, `AUTHSTATE_OK`), fixed by the ABI.
#![allow(non_camel_case_types)]

mod args;
mod handle;
mod panic;
mod runtime;

// The exported API, in the order the header lists it: cbindgen keeps source order, and the
// blank lines keep rustfmt from sorting these.
mod store;

mod health;

mod session;

mod string;

mod status;

mod last_error;

pub use handle::{authstate_session, authstate_store};
pub use health::{
    authstate_store_health_json, authstate_store_poll_alert, authstate_store_prometheus,
};
pub use last_error::authstate_last_error;
pub use session::{
    authstate_creds_load, authstate_creds_save, authstate_keys_get, authstate_keys_set,
    authstate_session_clear, authstate_session_close, authstate_session_open,
};
pub use status::{authstate_status, authstate_status_message};
pub use store::{authstate_store_close, authstate_store_migrate, authstate_store_open};
pub use string::authstate_string_free;
