//! Named or unnamed statements ([`crate::PreparedStatements`]): the per-store choice, the check
//! that a connection reaches PostgreSQL itself (not a pooler), and the one helper that sends
//! a statement either way.
//!
//! A named statement is parsed and planned once per connection (deadpool's per-connection
//! `StatementCache`) and then only bound and executed; an unnamed one (`query_typed`) is
//! parsed and planned by the server at every call. Both cost one round trip per call. Behind a
//! pooler in transaction mode a named statement may be bound on another server connection than
//! the one it was prepared on, so there the store sends unnamed statements only.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use deadpool_postgres::{ClientWrapper, StatementCache};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio_postgres::error::SqlState;
use tokio_postgres::tls::{ChannelBinding, TlsConnect, TlsStream};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row, Statement};

use crate::config::PreparedStatements;

/// How one call sends its statement.
#[derive(Clone, Copy)]
pub(crate) enum Stmts<'a> {
    /// Unnamed: parse, bind and execute in one message.
    Unnamed,
    /// Named, from the connection's cache; prepared first (one more round trip, once per
    /// connection) when missing.
    Named(&'a StatementCache),
    /// Named when among these prepared statements of the connection (whose cache is given),
    /// else unnamed: the statement leaves on the first poll either way, which the pipeline
    /// needs (see `Db::pipe_conn`).
    Ready(&'a Ready, &'a StatementCache),
}

/// Statements prepared on one connection, by their text.
pub(crate) struct Ready(Vec<(&'static str, Statement)>);

impl Ready {
    fn get(&self, sql: &Sql) -> Option<&Statement> {
        self.0.iter().find(|(t, _)| *t == sql.text).map(|(_, s)| s)
    }
}

/// A statement of the store: its text and the types of its parameters (together the key of
/// the per-connection cache).
pub(crate) struct Sql {
    pub(crate) text: &'static str,
    pub(crate) types: &'static [Type],
}

/// Runs `sql` with `values` (in the order of `sql.types`) as `how` says.
pub(crate) async fn query<C: GenericClient>(
    client: &C,
    how: Stmts<'_>,
    sql: &Sql,
    values: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    match how {
        Stmts::Unnamed => unnamed(client, sql, values).await,
        Stmts::Named(cache) => {
            // A cached statement is ready on the first poll; a missing one is a round trip.
            let stmt = cache
                .prepare_typed(client.client(), sql.text, sql.types)
                .await?;
            forget_if_broken(cache, sql, client.query(&stmt, values).await)
        }
        Stmts::Ready(ready, cache) => match ready.get(sql) {
            Some(stmt) => forget_if_broken(cache, sql, client.query(stmt, values).await),
            None => unnamed(client, sql, values).await,
        },
    }
}

/// Drops `sql` from the connection's cache when the server refused it with "cached plan must
/// not change result type" (a column's type changed under a live connection): that prepared
/// statement stays broken, so the next call prepares it anew.
fn forget_if_broken(
    cache: &StatementCache,
    sql: &Sql,
    result: Result<Vec<Row>, tokio_postgres::Error>,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    if let Err(e) = &result {
        if e.code() == Some(&SqlState::FEATURE_NOT_SUPPORTED) {
            drop(cache.remove(sql.text, sql.types));
        }
    }
    result
}

async fn unnamed<C: GenericClient>(
    client: &C,
    sql: &Sql,
    values: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let typed: Vec<(&(dyn ToSql + Sync), Type)> = values
        .iter()
        .zip(sql.types)
        .map(|(v, t)| (*v, t.clone()))
        .collect();
    client.query_typed(sql.text, &typed).await
}

/// Prepares `sqls` on the connection at once (one round trip; none when its cache holds
/// them already), or `None` when one of them fails. A failure is left for the statement's
/// first use to report: before the first migration the tables do not exist yet.
pub(crate) async fn prepare(client: &ClientWrapper, sqls: &[&'static Sql]) -> Option<Ready> {
    let all = sqls.iter().map(|s| {
        client
            .statement_cache
            .prepare_typed(client, s.text, s.types)
    });
    let prepared = futures_util::future::join_all(all).await;
    let mut ready = Vec::with_capacity(sqls.len());
    for (sql, r) in sqls.iter().zip(prepared) {
        match r {
            Ok(stmt) => ready.push((sql.text, stmt)),
            Err(e) => {
                tracing::debug!(error = %e, "a statement was not prepared ahead");
                return None;
            }
        }
    }
    Some(Ready(ready))
}

/// The store's choice of statements, shared by its pool's connection hook and its calls.
pub(crate) struct Policy {
    mode: PreparedStatements,
    /// A connection was found behind a pooler (`Auto`): unnamed from then on.
    pooled: AtomicBool,
}

impl Policy {
    pub(crate) fn new(mode: PreparedStatements) -> Policy {
        Policy {
            mode,
            pooled: AtomicBool::new(false),
        }
    }

    /// True while calls use named statements.
    pub(crate) fn named(&self) -> bool {
        match self.mode {
            PreparedStatements::On => true,
            PreparedStatements::Off => false,
            PreparedStatements::Auto => !self.pooled.load(Ordering::Acquire),
        }
    }

    /// How a call on the connection with `cache` sends its statements.
    pub(crate) fn stmts<'a>(&self, cache: &'a StatementCache) -> Stmts<'a> {
        if self.named() {
            Stmts::Named(cache)
        } else {
            Stmts::Unnamed
        }
    }

    /// Runs on every new connection before it is used: with `Auto`, checks that it reaches
    /// PostgreSQL itself (else the store goes unnamed for good).
    pub(crate) async fn on_connect(&self, client: &ClientWrapper) {
        if self.mode != PreparedStatements::Auto || self.pooled.load(Ordering::Acquire) {
            return;
        }
        if !reaches_postgres(client).await {
            tracing::info!(
                "the database connection goes through a pooler: unnamed statements only \
                 (set prepared_statements=on if it supports named ones)"
            );
            self.pooled.store(true, Ordering::Release);
        }
    }
}

/// True when the backend that runs this connection's statements is the one the server
/// announced at login. A pooler announces a process id of its own (pgbouncer a random one)
/// and runs statements on server connections of its choice. Any doubt answers false.
async fn reaches_postgres(client: &tokio_postgres::Client) -> bool {
    let Some(announced) = announced_pid(client).await else {
        return false;
    };
    match client.query_typed("SELECT pg_backend_pid()", &[]).await {
        Ok(rows) => rows
            .first()
            .and_then(|r| r.try_get::<_, i32>(0).ok())
            .is_some_and(|pid| pid == announced),
        Err(_) => false,
    }
}

/// The backend process id the server sent at login (BackendKeyData). tokio-postgres keeps it
/// in the connection's cancel token and writes it only into a cancel request, so the request is
/// written here into memory (never to the server) and the id read back from it.
async fn announced_pid(client: &tokio_postgres::Client) -> Option<i32> {
    const SSL_REQUEST: u32 = 80_877_103;
    const CANCEL_REQUEST: u32 = 80_877_102;
    let (mut ours, theirs) = tokio::io::duplex(64);
    let token = client.cancel_token();
    let write = token.cancel_query_raw(theirs, InMemory);
    let read = async move {
        let mut head = [0u8; 8];
        loop {
            ours.read_exact(&mut head).await.ok()?;
            let code = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
            match code {
                // With sslmode prefer/require the token asks for TLS first: accept, the
                // in-memory "TLS" passes bytes through.
                SSL_REQUEST => ours.write_all(b"S").await.ok()?,
                CANCEL_REQUEST => {
                    let mut body = [0u8; 8];
                    ours.read_exact(&mut body).await.ok()?;
                    return Some(i32::from_be_bytes([body[0], body[1], body[2], body[3]]));
                }
                _ => return None,
            }
        }
    };
    let (_, pid) = tokio::join!(write, read);
    pid
}

/// A "TLS" for [`announced_pid`]'s in-memory stream: none, bytes pass as they are.
struct InMemory;

impl TlsConnect<DuplexStream> for InMemory {
    type Stream = Plain;
    type Error = io::Error;
    type Future = std::future::Ready<io::Result<Plain>>;

    fn connect(self, stream: DuplexStream) -> Self::Future {
        std::future::ready(Ok(Plain(stream)))
    }
}

struct Plain(DuplexStream);

impl TlsStream for Plain {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for Plain {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
