//! The only part of the store that talks to PostgreSQL.
//!
//! [`Db`] owns the pool (deadpool-postgres over tokio-postgres, TLS by rustls) and runs every
//! database call through one helper, [`Db::call`], which bounds the call in time, classifies
//! its error ([`crate::Error`]) and discards a connection that failed in a way that may leave it
//! unusable instead of returning it to the pool. Every SQL statement of the store is in
//! [`sql`], sent as named or unnamed statements as [`prepared`] decides; schema migrations in
//! [`migrate`].

pub mod admin;
mod connect;
pub mod health_sql;
pub(crate) mod lease_sql;
pub mod migrate;
pub(crate) mod prepared;
pub(crate) mod sql;
mod tls;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use deadpool_postgres::{Pool, StatementCache};
use futures_util::FutureExt;

use crate::config::Config;
use crate::error::{Error, Result};
use prepared::{Policy, Stmts};

pub(crate) use self::connect::client as plain_client;
pub use deadpool_postgres::Client;

/// The connection pool and the rules every database call follows.
pub(crate) struct Db {
    pool: Pool,
    conns: Arc<connect::ConnTracker>,
    connect_timeout: Duration,
    call_bound: Duration,
    policy: Arc<Policy>,
    lease: bool,
}

/// Pool occupancy, as deadpool reports it.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PoolStats {
    /// Configured maximum.
    pub max_size: usize,
    /// Connections open.
    pub size: usize,
    /// Open and idle.
    pub available: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

impl Db {
    /// Builds the pool for `config`; no connection is made yet.
    pub(crate) fn new(config: &Config) -> Result<Db> {
        let policy = Arc::new(Policy::new(config.prepared_statements));
        let (pool, conns) = connect::pool(config, policy.clone())?;
        Ok(Db {
            pool,
            conns,
            connect_timeout: config.connect_timeout,
            // A hung network fails within one statement timeout plus one connect timeout.
            call_bound: config.statement_timeout + config.connect_timeout,
            policy,
            lease: config.lease,
        })
    }

    /// True while calls use named statements ([`crate::PreparedStatements`]).
    pub(crate) fn named_statements(&self) -> bool {
        self.policy.named()
    }

    /// How a call on the connection with `cache` sends the statements of [`sql`].
    pub(crate) fn stmts<'a>(&self, cache: &'a StatementCache) -> Stmts<'a> {
        self.policy.stmts(cache)
    }

    /// A pooled connection, or `Unavailable`/`Timeout` within the connect timeout. Prefer
    /// [`Db::call`], which also bounds what runs on the connection.
    async fn client(&self) -> Result<Client> {
        match tokio::time::timeout(self.connect_timeout, self.pool.get()).await {
            Ok(r) => r.map_err(Error::from),
            Err(_) => Err(Error::timeout(format!(
                "no database connection within {} ms",
                self.connect_timeout.as_millis()
            ))),
        }
    }

    /// Runs `f` on a pooled connection, failing with [`crate::ErrorKind::Timeout`] when the
    /// whole call (connection included) takes longer than the statement plus connect timeout.
    /// A connection whose call failed for connectivity or timed out is discarded: a timed-out
    /// query may still be running on it, and the next caller must not wait behind it.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&mut Client) -> Result<T>,
    ) -> Result<T> {
        let bound = self.call_bound;
        let run = async {
            let mut conn = Discard(Some(self.client().await?));
            let Some(client) = conn.0.as_mut() else {
                return Err(Error::internal("connection vanished"));
            };
            let result = f(client).await;
            if !matches!(&result, Err(e) if e.is_unavailable()) {
                // Finished cleanly (or with an answer from the server): back to the pool.
                drop(conn.0.take());
            }
            result
        };
        match tokio::time::timeout(bound, run).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "{what} did not finish within {} ms",
                bound.as_millis()
            ))),
        }
    }

    /// Checks out one connection to send several statements on before their answers arrive
    /// (pipelining), within the connect timeout. Every statement on it still goes through the
    /// rules of [`Db::call`]: see [`PipeConn::call`].
    ///
    /// With named statements the writes are taken from the connection's prepared statements
    /// (a new connection prepares them). A pipelined statement must leave on the first poll, so
    /// when they are not prepared yet (a connection opened before the tables existed) they are
    /// prepared in the background and the writes sent meanwhile are unnamed.
    pub(crate) async fn pipe_conn(&self) -> Result<PipeConn> {
        let client = self.client().await?;
        let held = Arc::new(Held {
            client: Some(client),
            broken: AtomicBool::new(false),
            ready: OnceLock::new(),
        });
        if self.policy.named() {
            let writes = sql::writes(self.lease);
            let bound = self.connect_timeout;
            let h = held.clone();
            let mut prepare = Box::pin(async move {
                let Some(client) = h.client.as_ref() else {
                    return;
                };
                let prepare = prepared::prepare(client, &writes);
                if let Ok(Some(ready)) = tokio::time::timeout(bound, prepare).await {
                    let _ = h.ready.set(ready);
                }
            });
            // Cached on this connection (the usual case): ready at once, without a round trip.
            if (&mut prepare).now_or_never().is_none() {
                tokio::spawn(prepare);
            }
        }
        Ok(PipeConn {
            held,
            call_bound: self.call_bound,
        })
    }

    /// Occupancy of the pool, for metrics and health.
    pub(crate) fn pool_stats(&self) -> PoolStats {
        let s = self.pool.status();
        PoolStats {
            max_size: s.max_size,
            size: s.size,
            available: s.available,
            waiting: s.waiting,
        }
    }

    /// Closes connections idle for longer than `idle`.
    pub(crate) fn close_idle(&self, idle: Duration) {
        self.pool.retain(|_, m| m.last_used() < idle);
    }

    /// Closes the pool and waits (up to 5 s) until every connection task has ended, so that
    /// nothing of the store is alive when close returns.
    pub(crate) async fn close(&self) {
        self.pool.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conns.all_ended()).await;
    }
}

/// One pooled connection shared by concurrent calls, so that tokio-postgres pipelines their
/// statements: each is sent at once, PostgreSQL runs them one after the other in the order
/// sent, and the answers come back in that order. Cloning shares the connection.
///
/// The guarantees of [`Db::call`] hold per call: each is bounded by the statement plus connect
/// timeout, and a call that failed for connectivity, timed out or was dropped before it
/// finished marks the connection broken. A broken connection takes no new calls
/// ([`PipeConn::is_broken`]) and is closed, not returned to the pool, once its last user is
/// gone; a healthy one goes back to the pool then.
#[derive(Clone)]
pub(crate) struct PipeConn {
    held: Arc<Held>,
    call_bound: Duration,
}

struct Held {
    client: Option<Client>,
    broken: AtomicBool,
    /// The write statements prepared on this connection, once they are.
    ready: OnceLock<prepared::Ready>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            if self.broken.load(Ordering::Acquire) {
                drop(deadpool_postgres::Object::take(c));
            }
        }
    }
}

/// Marks the connection broken when a call is dropped before it finished (it may have left
/// a statement running, or half a message written).
struct BreakUnlessDone<'a>(&'a AtomicBool, bool);

impl Drop for BreakUnlessDone<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::Release);
        }
    }
}

impl PipeConn {
    /// True once a call on this connection failed for connectivity or was cut short: the
    /// caller must take a new connection (after the calls still in flight on this one ended).
    pub(crate) fn is_broken(&self) -> bool {
        self.held.broken.load(Ordering::Acquire)
            || self.held.client.as_ref().is_none_or(|c| c.is_closed())
    }

    /// How a pipelined call on this connection sends the statements of [`sql`]: named only
    /// when already prepared, so that it leaves on the first poll.
    pub(crate) fn stmts(&self) -> Stmts<'_> {
        match (self.held.ready.get(), &self.held.client) {
            (Some(ready), Some(client)) => Stmts::Ready(ready, &client.statement_cache),
            _ => Stmts::Unnamed,
        }
    }

    /// Runs `f` on the shared connection with the guarantees of [`Db::call`]. The statement
    /// `f` sends is sent on the first poll of the returned future when `f` does not wait
    /// before sending (an unnamed statement, see [`sql`]): the caller that polls calls in
    /// order gets them run in that order.
    pub(crate) async fn call<T>(
        &self,
        what: &str,
        f: impl AsyncFnOnce(&Client) -> Result<T>,
    ) -> Result<T> {
        let held = &*self.held;
        let mut guard = BreakUnlessDone(&held.broken, false);
        let Some(client) = held.client.as_ref() else {
            return Err(Error::internal("connection vanished"));
        };
        let result = match tokio::time::timeout(self.call_bound, f(client)).await {
            Ok(r) => r,
            Err(_) => Err(Error::timeout(format!(
                "{what} did not finish within {} ms",
                self.call_bound.as_millis()
            ))),
        };
        guard.1 = !matches!(&result, Err(e) if e.is_unavailable());
        result
    }
}

/// Holds a connection during a call. Unless the call finished and took it back out, dropping
/// this (a failed call, or a timed-out call whose future was dropped mid-query) closes the
/// connection instead of returning it to the pool.
struct Discard(Option<Client>);

impl Drop for Discard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            drop(deadpool_postgres::Object::take(c));
        }
    }
}

#[cfg(all(test, feature = "tempdb"))]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::tempdb::TempCluster;

    /// A call that times out on the client side must not hand its connection (with the query
    /// still running on it) back to the pool; a call that finished must.
    #[test]
    fn a_timed_out_call_discards_its_connection() {
        let cluster = TempCluster::start().unwrap();
        cluster.create_database("dbcall").unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut config = Config::from_url(&cluster.url("dbcall")).unwrap();
            config.statement_timeout = Duration::ZERO; // only the client-side bound applies
            config.connect_timeout = Duration::from_millis(700);
            let db = Db::new(&config).unwrap();

            db.call("ok", async |c| crate::db::sql::probe(c).await)
                .await
                .unwrap();
            assert_eq!(
                db.pool_stats().size,
                1,
                "a finished call keeps its connection"
            );

            let e = db
                .call("sleep", async |c| {
                    c.simple_query("SELECT pg_sleep(5)").await?;
                    Ok(())
                })
                .await
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
            assert_eq!(
                db.pool_stats().size,
                0,
                "the timed-out connection was discarded"
            );

            // The pool still works: a new connection is made.
            db.call("ok", async |c| crate::db::sql::probe(c).await)
                .await
                .unwrap();
            db.close().await;
        });
    }
}
