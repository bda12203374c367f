//! One place that turns a [`Config`] into tokio-postgres connection settings, shared by the
//! pool of [`crate::Store`] and the operator tools (which open plain connections of their own).

use std::time::Duration;

use crate::config::{Config, SslMode};
use crate::error::Result;

/// The tokio-postgres settings of `config`: connect timeout, TCP keepalives, the server-side
/// `statement_timeout`, and the TLS mode (verification itself is done by [`crate::tls`]).
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
        match crate::tls::connector(config)? {
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
    crate::store::bounded(
        config.connect_timeout + Duration::from_secs(1),
        "connect",
        connect,
    )
    .await
    .map_err(|e: crate::Error| e.context(format!("connect to {}", config.describe())))
}
