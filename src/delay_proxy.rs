//! A TCP proxy that delays every byte by a fixed time in each direction, to run the store and
//! the benchmarks against a "far away" PostgreSQL without root (no `tc netem`).
//!
//! Each connection is forwarded in order: a chunk read at time `t` is written on at `t + delay`,
//! so 10 ms each way is a 20 ms round trip while several requests can be in flight at once
//! (what a real network does). The proxy also reads the PostgreSQL wire protocol as it passes,
//! to count statement round trips: each `Sync` or simple `Query` the client sends is one
//! request the server answers with one `ReadyForQuery`. The counts let tests observe
//! pipelining without timing anything. For fault injection it can hold the server's answers
//! ([`DelayProxy::hold`]), cut every connection ([`DelayProxy::cut`]) and refuse new ones.
//!
//! Part of the `tempdb` feature: a tool for tests and benchmarks (`examples/delay_proxy.rs`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Counters of everything that went through the proxy since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Connections accepted (refused ones included).
    pub connections: u64,
    /// Requests the clients sent that the server answers with one `ReadyForQuery`: extended
    /// query `Sync`s, simple `Query` messages and connection startups.
    pub requests: u64,
    /// `ReadyForQuery` messages delivered to the clients.
    pub answers: u64,
    /// Most requests sent on one connection but not yet answered, as seen by the proxy: 1
    /// without pipelining, more when a client sends before the previous answer arrived.
    pub max_in_flight: u64,
    /// Bytes client to server and server to client.
    pub bytes_up: u64,
    /// See `bytes_up`.
    pub bytes_down: u64,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    answers: AtomicU64,
    max_in_flight: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
}

/// What the operator asks of every connection (changes are seen at once).
#[derive(Debug, Clone, Copy, Default)]
struct Control {
    /// Server-to-client chunks wait while this is set.
    hold: bool,
    /// New connections are closed as soon as they are accepted.
    refuse: bool,
    /// Bumped by `cut`: every connection open before the bump is closed.
    cuts: u64,
}

/// A running proxy; dropping it closes the listener and every connection.
pub struct DelayProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    control: watch::Sender<Control>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for DelayProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DelayProxy")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl DelayProxy {
    /// Listens on `listen` (port 0 picks a free one) and forwards each connection to
    /// `upstream`, delaying each direction by `delay`. Must run inside a tokio runtime.
    pub async fn start(
        listen: SocketAddr,
        upstream: String,
        delay: Duration,
    ) -> std::io::Result<DelayProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(Counters::default());
        let (control, control_rx) = watch::channel(Control::default());
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            delay,
            counters.clone(),
            control_rx,
        ));
        Ok(DelayProxy {
            addr,
            counters,
            control,
            task,
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters so far.
    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            answers: c.answers.load(Ordering::Relaxed),
            max_in_flight: c.max_in_flight.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
        }
    }

    /// Resets `max_in_flight` (the other counters only grow; compare them before and after).
    pub fn reset_max_in_flight(&self) {
        self.counters.max_in_flight.store(0, Ordering::Relaxed);
    }

    /// While `on`, the server's answers are kept in the proxy (requests still go through):
    /// the client sees a server that takes forever.
    pub fn hold(&self, on: bool) {
        self.control.send_modify(|c| c.hold = on);
    }

    /// Closes every open connection, as a network failure or a server crash would.
    pub fn cut(&self) {
        self.control.send_modify(|c| c.cuts += 1);
    }

    /// While `on`, new connections are accepted and closed at once (a refused connection).
    pub fn refuse(&self, on: bool) {
        self.control.send_modify(|c| c.refuse = on);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        // The accept task owns the connections' JoinSet: aborting it ends them all.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    delay: Duration,
    counters: Arc<Counters>,
    control: watch::Receiver<Control>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counters.connections.fetch_add(1, Ordering::Relaxed);
                if control.borrow().refuse {
                    drop(client);
                    continue;
                }
                conns.spawn(connection(
                    client,
                    upstream.clone(),
                    delay,
                    counters.clone(),
                    control.clone(),
                ));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Forwards one connection until either side closes it or it is cut.
async fn connection(
    client: TcpStream,
    upstream: String,
    delay: Duration,
    counters: Arc<Counters>,
    mut control: watch::Receiver<Control>,
) {
    let cuts = control.borrow().cuts;
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_r, client_w) = client.into_split();
    let (server_r, server_w) = server.into_split();
    let conn = Arc::new(ConnState::default());
    let mut tasks = JoinSet::new();
    let (up_tx, up_rx) = mpsc::channel(1024);
    let (down_tx, down_rx) = mpsc::channel(1024);
    tasks.spawn(read_side(
        client_r,
        up_tx,
        delay,
        Side::Client,
        conn.clone(),
    ));
    tasks.spawn(write_side(
        server_w,
        up_rx,
        None,
        counters.clone(),
        conn.clone(),
    ));
    tasks.spawn(read_side(
        server_r,
        down_tx,
        delay,
        Side::Server,
        conn.clone(),
    ));
    tasks.spawn(write_side(
        client_w,
        down_rx,
        Some(control.clone()),
        counters.clone(),
        conn.clone(),
    ));
    loop {
        tokio::select! {
            // The first direction that ends (EOF or error) ends the connection.
            _ = tasks.join_next() => break,
            changed = control.changed() => {
                if changed.is_err() || control.borrow().cuts != cuts {
                    break;
                }
            }
        }
    }
    // Dropping the JoinSet aborts the other directions and closes both sockets.
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

/// One connection's request/answer counts, shared by its two directions.
#[derive(Default)]
struct ConnState {
    requests: AtomicU64,
    answers: AtomicU64,
    /// The session went encrypted (TLS or GSS): stop reading the protocol.
    opaque: AtomicBool,
}

/// A chunk in flight through the proxy, with what it means for the counters.
struct Chunk {
    due: Instant,
    bytes: Vec<u8>,
    /// `Sync`/`Query` messages (client side) or `ReadyForQuery` messages (server side) in it.
    marks: u64,
}

async fn read_side(
    mut r: tokio::net::tcp::OwnedReadHalf,
    tx: mpsc::Sender<Chunk>,
    delay: Duration,
    side: Side,
    conn: Arc<ConnState>,
) {
    let mut framer = Framer::new(side);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let due = Instant::now() + delay;
        let bytes = buf[..n].to_vec();
        let marks = if conn.opaque.load(Ordering::Relaxed) {
            0
        } else {
            framer.feed(&bytes, &conn)
        };
        if tx.send(Chunk { due, bytes, marks }).await.is_err() {
            return;
        }
    }
}

/// Sleeps until `due`, to within tens of microseconds. tokio's timer works in whole
/// milliseconds and rounds up: with it alone a 10 ms delay each way made a 23.3 ms round trip
/// (p50 of `SELECT 1`), so a "20 ms link" was a 23 ms one and every per-round-trip figure
/// measured through it was off by that much. The last two milliseconds are slept on a blocking
/// thread (nanosleep), which keeps the runtime free.
async fn wait_until(due: Instant) {
    const COARSE: Duration = Duration::from_millis(2);
    if let Some(coarse) = due.checked_sub(COARSE) {
        if coarse > Instant::now() {
            tokio::time::sleep_until(coarse).await;
        }
    }
    let rest = due.saturating_duration_since(Instant::now());
    if !rest.is_zero() {
        // A failed join (the runtime shutting down) only ends the wait early.
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
}

async fn write_side(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut rx: mpsc::Receiver<Chunk>,
    mut hold: Option<watch::Receiver<Control>>,
    counters: Arc<Counters>,
    conn: Arc<ConnState>,
) {
    let to_server = hold.is_none();
    while let Some(chunk) = rx.recv().await {
        wait_until(chunk.due).await;
        if let Some(h) = hold.as_mut() {
            if h.wait_for(|c| !c.hold).await.is_err() {
                return;
            }
        }
        if w.write_all(&chunk.bytes).await.is_err() {
            return;
        }
        let n = chunk.bytes.len() as u64;
        if to_server {
            counters.bytes_up.fetch_add(n, Ordering::Relaxed);
            // Counted when the proxy received them (in `read_side`'s marks), published here
            // together with the in-flight maximum.
            let sent = conn.requests.fetch_add(chunk.marks, Ordering::AcqRel) + chunk.marks;
            counters.requests.fetch_add(chunk.marks, Ordering::Relaxed);
            let in_flight = sent.saturating_sub(conn.answers.load(Ordering::Acquire));
            counters
                .max_in_flight
                .fetch_max(in_flight, Ordering::Relaxed);
        } else {
            counters.bytes_down.fetch_add(n, Ordering::Relaxed);
            conn.answers.fetch_add(chunk.marks, Ordering::AcqRel);
            counters.answers.fetch_add(chunk.marks, Ordering::Relaxed);
        }
    }
}

/// Splits a PostgreSQL byte stream into messages, across chunk boundaries, and counts the ones
/// that matter: `S`/`Q` from the client, `Z` from the server.
struct Framer {
    side: Side,
    /// Before the startup message (client) or before the first typed message (server).
    preamble: bool,
    header: [u8; 5],
    have: usize,
    /// Body bytes of the current message still to skip.
    skip: usize,
}

/// `SSLRequest` and `GSSENCRequest` codes (the server answers each with one byte).
const SSL_REQUEST: u32 = 80_877_103;
const GSS_REQUEST: u32 = 80_877_104;

impl Framer {
    fn new(side: Side) -> Framer {
        Framer {
            side,
            preamble: true,
            header: [0; 5],
            have: 0,
            skip: 0,
        }
    }

    fn feed(&mut self, mut data: &[u8], conn: &ConnState) -> u64 {
        let mut marks = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            if self.preamble && self.side == Side::Server {
                // One-byte answers to SSL/GSS requests precede the typed messages.
                match data[0] {
                    b'N' => {
                        data = &data[1..];
                        continue;
                    }
                    b'S' | b'G' => {
                        conn.opaque.store(true, Ordering::Relaxed);
                        return marks;
                    }
                    _ => self.preamble = false,
                }
            }
            // Untyped startup-phase messages have a 4-byte header, typed ones 5.
            let header_len = if self.preamble { 4 } else { 5 };
            let n = (header_len - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have < header_len {
                break;
            }
            self.have = 0;
            let len_at = header_len - 4;
            let len = u32::from_be_bytes([
                self.header[len_at],
                self.header[len_at + 1],
                self.header[len_at + 2],
                self.header[len_at + 3],
            ]) as usize;
            let body = len.saturating_sub(4);
            if self.preamble {
                // The client's startup-phase message: peek at its code.
                let code_needed = 4.min(body);
                if data.len() < code_needed {
                    // A split startup packet: rare enough to just stop counting.
                    conn.opaque.store(true, Ordering::Relaxed);
                    return marks;
                }
                let code = u32::from_be_bytes([
                    data.first().copied().unwrap_or(0),
                    data.get(1).copied().unwrap_or(0),
                    data.get(2).copied().unwrap_or(0),
                    data.get(3).copied().unwrap_or(0),
                ]);
                if code != SSL_REQUEST && code != GSS_REQUEST {
                    // The startup message: the server ends its answer with a ReadyForQuery.
                    self.preamble = false;
                    marks += 1;
                }
            } else {
                match (self.side, self.header[0]) {
                    (Side::Client, b'S' | b'Q') | (Side::Server, b'Z') => marks += 1,
                    _ => {}
                }
            }
            self.skip = body;
        }
        marks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![kind];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn the_framer_counts_requests_across_chunk_boundaries() {
        let conn = ConnState::default();
        let mut stream = Vec::new();
        // SSLRequest, then the startup message, then Parse, Sync, Query, Bind/Execute/Sync.
        stream.extend_from_slice(&8u32.to_be_bytes());
        stream.extend_from_slice(&SSL_REQUEST.to_be_bytes());
        stream.extend_from_slice(&12u32.to_be_bytes());
        stream.extend_from_slice(&196_608u32.to_be_bytes());
        stream.extend_from_slice(b"u\0\0\0");
        stream.extend(typed(b'P', b"\0SELECT 1\0\0\0"));
        stream.extend(typed(b'S', b""));
        stream.extend(typed(b'Q', b"SELECT 1\0"));
        stream.extend(typed(b'B', b"\0\0\0\0\0\0\0"));
        stream.extend(typed(b'E', b"\0\0\0\0\0"));
        stream.extend(typed(b'S', b""));
        // Fed whole, and fed byte by byte after the startup packet.
        let mut whole = Framer::new(Side::Client);
        assert_eq!(whole.feed(&stream, &conn), 4);
        let mut bytes = Framer::new(Side::Client);
        let (head, tail) = stream.split_at(20);
        let mut n = bytes.feed(head, &conn);
        for b in tail {
            n += bytes.feed(std::slice::from_ref(b), &conn);
        }
        assert_eq!(n, 4);

        let mut server = Vec::new();
        server.push(b'N');
        server.extend(typed(b'R', &[0, 0, 0, 0]));
        server.extend(typed(b'Z', b"I"));
        server.extend(typed(b'N', b"notice"));
        server.extend(typed(b'Z', b"I"));
        assert_eq!(Framer::new(Side::Server).feed(&server, &conn), 2);
        assert!(!conn.opaque.load(Ordering::Relaxed));
    }
}
