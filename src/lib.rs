#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

// Leaves: values, validation, configuration, errors, memory.
pub mod cache;
pub mod codec;
mod company;
pub mod config;
mod directory;
pub mod error;
pub mod metrics;
pub mod validate;
mod value;

// The database layer, then the write path on top of it, then health, then the facades.
pub mod db;
pub mod health;
mod lease;
mod session;
mod store;
pub mod write;

// Operator tools on top of the store and the database layer.
pub mod ops;

#[cfg(feature = "tempdb")]
pub mod delay_proxy;
#[cfg(feature = "tempdb")]
pub mod tempdb;

pub use cache::CacheStats;
pub use config::{
    CacheConfig, Config, Durability, HealthConfig, OutagePolicy, PreparedStatements, SslMode,
    TtlPolicy,
};
pub use db::migrate::{self, MigrationReport};
pub use db::PoolStats;
pub use directory::DirectoryStats;
pub use error::{Error, ErrorKind, Result};
pub use health::{AlertEvent, HealthReport, MetricsSnapshot, Status};
pub use lease::LeaseStatus;
pub use session::{GetParts, Session};
pub use store::Store;
pub use value::{json_object, parse_writes, writes_from_texts, KeyWrite, StoredValue};
pub use write::outage::{self, CloseReport, OutageStatus, Unflushed};
pub use write::{OnWritten, WriteTicket};
