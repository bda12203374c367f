#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// Leaves: values, validation, configuration, errors, memory.
pub mod cache;
pub mod codec;
mod company;
pub mod config;
pub mod error;
pub mod metrics;
pub mod validate;
mod value;

// The database layer, then the write path on top of it, then the facades.
pub mod db;
mod lease;
mod session;
mod store;
pub mod write;

#[cfg(feature = "tempdb")]
pub mod tempdb;

pub use cache::CacheStats;
pub use config::{CacheConfig, Config, OutagePolicy, SslMode, TtlPolicy};
pub use db::migrate::{self, MigrationReport};
pub use db::PoolStats;
pub use error::{Error, ErrorKind, Result};
pub use lease::LeaseStatus;
pub use session::Session;
pub use store::{MetricsSnapshot, Store};
pub use value::{parse_writes, KeyWrite, StoredValue};
pub use write::outage::{self, CloseReport, OutageStatus, Unflushed};
pub use write::WriteTicket;
