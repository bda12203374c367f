#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod cache;
pub mod codec;
pub mod config;
mod connect;
pub mod error;
pub mod ffi;
pub mod metrics;
pub mod migrate;
pub mod ops;
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
pub use error::{Error, ErrorKind, Result};
pub use metrics::MetricsSnapshot;
pub use migrate::MigrationReport;
pub use outage::{CloseReport, OutageStatus, Unflushed};
pub use session::Session;
pub use store::Store;
pub use value::{parse_writes, KeyWrite, StoredValue};
pub use writer::WriteTicket;
