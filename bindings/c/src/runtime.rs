//! The one process-wide tokio runtime behind the C API (opendal's `bindings/c` does the same).
//!
//! C callers are plain threads; each call blocks its thread on this runtime. The store's
//! background tasks (writers, reconnects) live on it, so `Store::open` must run inside it. It
//! is started on first use and never shut down: its worker threads end with the process.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

use authstate::Error;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

fn runtime() -> Result<&'static Runtime, Error> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .enable_all()
                .thread_name("authstate-ffi")
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::internal(format!("cannot start the runtime: {e}")))
}

/// Runs `fut` to completion on the library's runtime, blocking the calling thread.
///
/// Refused (instead of tokio's panic) when the caller is itself running on a tokio runtime,
/// e.g. a C callback invoked from async Rust: blocking there could deadlock the runtime.
pub(crate) fn block_on<F: Future>(fut: F) -> Result<F::Output, Error> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::invalid(
            "authstate C functions block and must not be called from inside a tokio runtime",
        ));
    }
    Ok(runtime()?.block_on(fut))
}

/// Drops `value` with the runtime entered, so that anything its destructor hands to tokio
/// (closing pooled connections, stopping tasks) finds a runtime.
pub(crate) fn drop_in_runtime<T>(value: T) {
    match runtime() {
        Ok(rt) => {
            let _guard = rt.enter();
            drop(value);
        }
        Err(_) => drop(value),
    }
}
