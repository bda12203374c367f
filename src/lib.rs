//! `authstate`: the WhatsApp auth state of Baileys (creds and Signal keys), kept in PostgreSQL.
//!
//! One core used three ways: this Rust API, a Node addon (`node/`) and a C ABI
//! ([`ffi`], header `include/authstate.h`), plus the `authstate` CLI.
//!
//! ```no_run
//! # async fn demo() -> authstate::Result<()> {
//! use authstate::{Config, KeyWrite, Store, StoredValue};
//!
//! let store = Store::open(Config::from_env()?).await?;
//! store.migrate().await?;
//! let session = store.session("acme").await?;
//! let pre_key = StoredValue::from_json(r#"{"public":{"type":"Buffer","data":"BQ=="}}"#)?;
//! session.set(vec![KeyWrite::put("pre-key", "1", pre_key)?]).await?;
//! let found = session.get("pre-key", &["1".to_string()]).await?;
//! assert_eq!(found.len(), 1);
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod cache;
pub mod codec;
pub mod config;
pub mod error;
pub mod ffi;
pub mod metrics;
pub mod migrate;
pub mod outage;
mod session;
mod store;
pub mod tempdb;
mod tls;
pub mod validate;
mod value;
mod writer;

pub use cache::CacheStats;
pub use config::{CacheConfig, Config, OutagePolicy, SslMode, TtlPolicy};
pub use error::{Error, Result};
pub use metrics::MetricsSnapshot;
pub use migrate::MigrationReport;
pub use outage::{CloseReport, OutageStatus, Unflushed};
pub use session::Session;
pub use store::Store;
pub use value::{parse_writes, KeyWrite, StoredValue};
pub use writer::WriteTicket;
