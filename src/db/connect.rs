//! Building the connection pool: libpq-style settings, TLS, and a tracker of live connection
//! tasks so that closing the store can wait until every connection has ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;

use super::prepared::{self, Policy};
use crate::config::{Config, SslMode};
use crate::error::{Error, Result};

/// The pool for `config` (no connection is made yet) and its connection tracker. Each new
/// connection is checked and prepared by `policy` before its first use.
pub(super) fn pool(config: &Config, policy: Arc<Policy>) -> Result<(Pool, Arc<ConnTracker>)> {
    let pg = pg_config(config);
    let mgr_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let conns = Arc::new(ConnTracker::default());
    let lease = config.lease;
    let manager = match super::tls::connector(config)? {
        Some(tls) => Manager::from_connect(
            pg,
            TrackedConnect {
                tls,
                conns: conns.clone(),
            },
            mgr_config,
        ),
        None => Manager::from_connect(
            pg,
            TrackedConnect {
                tls: tokio_postgres::NoTls,
                conns: conns.clone(),
            },
            mgr_config,
        ),
    };
    let pool = Pool::builder(manager)
        .max_size(config.pool_size.max(1))
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.connect_timeout))
        .create_timeout(Some(config.connect_timeout))
        .recycle_timeout(Some(config.connect_timeout))
        // The connection used last is handed out first: its prepared statements (and the
        // server's caches) are warm, so a writer lane that takes a connection per burst of
        // writes gets the one it prepared its statements on; spare ones idle out.
        .queue_mode(deadpool_postgres::QueueMode::Lifo)
        // A new connection learns whether it may use named statements and prepares the
        // statements of every call at once (one round trip, instead of one per statement on
        // first use; over a slow link that is the first `get` after a store opens).
        .post_create(deadpool_postgres::Hook::async_fn(move |client, _| {
            let policy = policy.clone();
            Box::pin(async move {
                policy.on_connect(client).await;
                if policy.named() {
                    prepared::prepare(client, &super::sql::hot(lease)).await;
                }
                Ok(())
            })
        }))
        .build()
        .map_err(|e| Error::internal(format!("pool: {e}")))?;
    Ok((pool, conns))
}

/// The tokio-postgres settings of `config`: connect timeout, TCP keepalives, the server-side
/// `statement_timeout`, and the TLS mode (verification itself is done by [`super::tls`]).
pub(crate) fn pg_config(config: &Config) -> tokio_postgres::Config {
    let mut pg = config.pg.clone();
    pg.connect_timeout(config.connect_timeout);
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(30));
    if !config.statement_timeout.is_zero() {
        pg.options(format!(
            "-c statement_timeout={}",
            config.statement_timeout.as_millis()
        ));
    }
    pg.ssl_mode(match config.ssl_mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    pg
}

/// Opens one connection outside any pool (TLS as configured) and drives it on a spawned task;
/// the task ends when the client is dropped.
pub(crate) async fn client(config: &Config) -> Result<tokio_postgres::Client> {
    let pg = pg_config(config);
    let connect = async {
        match super::tls::connector(config)? {
            Some(tls) => {
                let (client, conn) = pg.connect(tls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
            None => {
                let (client, conn) = pg.connect(tokio_postgres::NoTls).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok(client)
            }
        }
    };
    let bound = config.connect_timeout + Duration::from_secs(1);
    let result = match tokio::time::timeout(bound, connect).await {
        Ok(r) => r,
        Err(_) => Err(Error::timeout(format!(
            "no connection within {} ms",
            bound.as_millis()
        ))),
    };
    result.map_err(|e: Error| e.context(format!("connect to {}", config.describe())))
}

/// Counts live connection tasks so that `close` can wait until every connection has ended.
#[derive(Default)]
pub(super) struct ConnTracker {
    live: AtomicUsize,
    ended: tokio::sync::Notify,
}

impl ConnTracker {
    pub(super) async fn all_ended(&self) {
        loop {
            let ended = self.ended.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            ended.await;
        }
    }
}

struct ConnGuard(Arc<ConnTracker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_waiters();
        }
    }
}

/// deadpool-postgres' own connect, plus a guard in each connection task.
struct TrackedConnect<T> {
    tls: T,
    conns: Arc<ConnTracker>,
}

impl<T> deadpool_postgres::Connect for TrackedConnect<T>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket> + Clone + Sync + Send + 'static,
    T::Stream: Sync + Send,
    T::TlsConnect: Sync + Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    fn connect(
        &self,
        pg: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        std::result::Result<(tokio_postgres::Client, JoinHandle<()>), tokio_postgres::Error>,
    > {
        let tls = self.tls.clone();
        let pg = pg.clone();
        let conns = self.conns.clone();
        Box::pin(async move {
            let (client, connection) = pg.connect(tls).await?;
            conns.live.fetch_add(1, Ordering::AcqRel);
            let guard = ConnGuard(conns);
            let task = tokio::spawn(async move {
                let _guard = guard;
                let _ = connection.await;
            });
            Ok((client, task))
        })
    }
}
