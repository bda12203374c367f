//! Building the connection pool: libpq-style settings, TLS, and a tracker of live connection
//! tasks so that closing the store can wait until every connection has ended.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::task::JoinHandle;

use crate::config::{Config, SslMode};
use crate::error::{Error, Result};

/// The pool for `config` (no connection is made yet) and its connection tracker.
pub(super) fn pool(config: &Config) -> Result<(Pool, Arc<ConnTracker>)> {
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
    let mgr_config = ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let conns = Arc::new(ConnTracker::default());
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
        // A new connection prepares every statement of the store at once (one round trip
        // instead of one per statement on first use: over a slow link that is the first `get`
        // after a store opens, and every new connection of the pool).
        .post_create(deadpool_postgres::Hook::async_fn(|client, _| {
            Box::pin(async move {
                super::sql::prepare_all(client).await;
                Ok(())
            })
        }))
        .build()
        .map_err(|e| Error::internal(format!("pool: {e}")))?;
    Ok((pool, conns))
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
