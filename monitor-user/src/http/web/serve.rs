//! The serving loop, on hyper directly: `axum::serve` sets no timer (so no header-read or idle
//! timeout), caps no connections and waits for ever at shutdown, and an agent that runs as root
//! on every node must not be held open by whoever can reach its port.
//!
//! Every connection, plain or TLS, gets:
//! - a cap: [`MAX_CONNECTIONS`] in all and [`MAX_CONNECTIONS_PER_PEER`] from one address (an
//!   IPv6 /64 counts as one); a connection over either is closed as soon as it is accepted;
//! - [`HEADER_READ_TIMEOUT`] to send a request head, which is also the idle limit of a
//!   keep-alive connection: hyper 1.x starts that timer whenever it waits for a head, after a
//!   response as well as on a new connection;
//! - [`WRITE_TIMEOUT`]: a response that makes no progress for that long (a client that never
//!   reads) closes the connection;
//! - at shutdown, no new connection is accepted, requests in flight get [`SHUTDOWN_GRACE`] to
//!   finish, then every connection is dropped.
//!
//! Each request carries its peer's address as `axum::extract::ConnectInfo<SocketAddr>`.

use std::{
    collections::HashMap,
    future::Future,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::pin,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::Duration,
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use log::{debug, warn};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
    task::JoinSet,
    time::Instant,
};
use tokio_io_timeout::TimeoutStream;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use super::STATS;

/// Connections open at once. Each costs a task, a socket and hyper's buffers (tens of KiB);
/// Prometheus needs one per scraper and a person a few, so 512 is far above any real use and
/// still small next to the agent's memory.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections open at once from one address: one client cannot take the whole
/// [`MAX_CONNECTIONS`], while several scrapers behind one NAT address still fit.
pub const MAX_CONNECTIONS_PER_PEER: usize = 64;
/// Time to send a whole request head, and the longest a keep-alive connection may sit idle:
/// a scraper sends its request at once, and reconnecting costs less than holding idle
/// connections for whoever opens them.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A response that cannot be written for this long is abandoned with its connection.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Between the shutdown signal and dropping every connection: time to finish a scrape, well
/// inside Kubernetes' default 30 s before SIGKILL.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in flight (they cost CPU); accepting pauses above it.
pub const MAX_HANDSHAKES: usize = 256;
/// Largest request head: ours are a path, a query and an Authorization header. Without it
/// hyper buffers up to ~400 KiB per connection, 200 MiB at the connection cap.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// How often a refused connection is logged at warn level (the rest are counted).
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(60);

/// The limits above, as one value so tests can shrink them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub max_connections: usize,
    pub max_per_peer: usize,
    pub header_read_timeout: Duration,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    pub handshake_timeout: Duration,
    pub max_handshakes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: MAX_CONNECTIONS,
            max_per_peer: MAX_CONNECTIONS_PER_PEER,
            header_read_timeout: HEADER_READ_TIMEOUT,
            write_timeout: WRITE_TIMEOUT,
            shutdown_grace: SHUTDOWN_GRACE,
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_handshakes: MAX_HANDSHAKES,
        }
    }
}

/// What a client address is counted as: itself, or its /64 for IPv6, since one host usually
/// has a whole /64 to pick addresses from. An IPv4 client of an IPv6 listener
/// (`::ffff:a.b.c.d`) is its IPv4 address.
pub(crate) fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    }
}

/// Open connections, in all and per address.
#[derive(Debug)]
pub(crate) struct Peers {
    max_total: usize,
    max_per_peer: usize,
    open: Mutex<OpenCounts>,
}

#[derive(Debug, Default)]
struct OpenCounts {
    total: usize,
    by_peer: HashMap<IpAddr, usize>,
    warned: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Total,
    Peer,
}

/// One admitted connection; gives its place back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    peers: Arc<Peers>,
    key: IpAddr,
}

impl Peers {
    pub(crate) fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Self {
            max_total: limits.max_connections,
            max_per_peer: limits.max_per_peer,
            open: Mutex::default(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OpenCounts> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let key = peer_key(ip);
        let mut open = self.lock();
        let refusal = if open.total >= self.max_total {
            Some(Refusal::Total)
        } else if open.by_peer.get(&key).copied().unwrap_or(0) >= self.max_per_peer {
            Some(Refusal::Peer)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let now = Instant::now();
            if open
                .warned
                .is_none_or(|at| now.duration_since(at) >= REFUSAL_WARN_EVERY)
            {
                open.warned = Some(now);
                match refusal {
                    Refusal::Total => warn!(
                        "HTTP: {} connections open, refusing more (connection from {ip}); \
                         further refusals are counted, not logged, for {}s",
                        open.total,
                        REFUSAL_WARN_EVERY.as_secs()
                    ),
                    Refusal::Peer => warn!(
                        "HTTP: {} connections open from {key}, refusing more from it; further \
                         refusals are counted, not logged, for {}s",
                        self.max_per_peer,
                        REFUSAL_WARN_EVERY.as_secs()
                    ),
                }
            }
            return Err(refusal);
        }
        open.total += 1;
        *open.by_peer.entry(key).or_default() += 1;
        STATS.connections_open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            peers: self.clone(),
            key,
        })
    }

    /// Connections open from `ip` (its /64 for IPv6).
    #[cfg(test)]
    pub(crate) fn open_from(&self, ip: IpAddr) -> usize {
        self.lock().by_peer.get(&peer_key(ip)).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.peers.lock();
        open.total -= 1;
        if let Some(n) = open.by_peer.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.by_peer.remove(&self.key);
            }
        }
        STATS.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `router` on `listener` (over TLS when `tls` is set) until `shutdown` completes, then
/// closes every connection within `limits.shutdown_grace`.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
    tls: Option<TlsAcceptor>,
    limits: Limits,
    peers: Arc<Peers>,
) -> std::io::Result<()> {
    let handshakes = Arc::new(Semaphore::new(limits.max_handshakes));
    // None until shutdown, then the instant every connection must be gone by.
    let (stop, stopped) = watch::channel(None::<Instant>);
    let mut connections = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        // Finished connections leave their results here until collected.
        while connections.try_join_next().is_some() {}
        let tls = match &tls {
            None => None,
            Some(acceptor) => tokio::select! {
                biased;
                () = &mut shutdown => break,
                permit = handshakes.clone().acquire_owned() => {
                    let Ok(permit) = permit else { unreachable!("the semaphore is never closed") };
                    Some((acceptor.clone(), permit))
                }
            },
        };
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
        };
        let slot = match peers.admit(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                let counter = match refusal {
                    Refusal::Total => &STATS.refused_total_cap,
                    Refusal::Peer => &STATS.refused_peer_cap,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                debug!("connection from {peer} refused: {refusal:?} cap");
                drop(stream);
                continue;
            }
        };
        connections.spawn(connection(
            stream,
            peer,
            slot,
            tls,
            router.clone(),
            stopped.clone(),
            limits,
        ));
    }
    drop(listener);
    let deadline = Instant::now() + limits.shutdown_grace;
    let _ = stop.send(Some(deadline));
    let drained = tokio::time::timeout_at(deadline, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        // Each connection gives up by the deadline itself; what is left is stuck elsewhere
        // (a TLS handshake, a handler that ignores cancellation at an await): drop it too.
        let left = connections.len();
        STATS
            .dropped_at_shutdown
            .fetch_add(left as u64, Ordering::Relaxed);
        warn!(
            "HTTP: {left} connection(s) still open {}s after shutdown began, dropped",
            limits.shutdown_grace.as_secs()
        );
        connections.shutdown().await;
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    _slot: Slot,
    tls: Option<(TlsAcceptor, OwnedSemaphorePermit)>,
    router: Router,
    mut stopped: watch::Receiver<Option<Instant>>,
    limits: Limits,
) {
    // Under TLS too, so a stalled socket is caught below the TLS buffers.
    let mut io = TimeoutStream::new(stream);
    io.set_write_timeout(Some(limits.write_timeout));
    let io = Box::pin(io);
    let Some((acceptor, permit)) = tls else {
        return http(io, peer, router, stopped, limits).await;
    };
    let handshake = tokio::select! {
        r = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(io)) => r,
        _ = stopped.wait_for(Option::is_some) => return,
    };
    drop(permit);
    match handshake {
        Ok(Ok(tls)) => http(tls, peer, router, stopped, limits).await,
        // Scanners and plain-HTTP clients end up here: not worth more than a debug line each.
        Ok(Err(e)) => debug!("TLS handshake with {peer} failed: {e}"),
        Err(_) => debug!("TLS handshake with {peer} timed out"),
    }
}

async fn http<Io>(
    io: Io,
    peer: SocketAddr,
    router: Router,
    mut stopped: watch::Receiver<Option<Instant>>,
    limits: Limits,
) where
    Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let service = router.map_request(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), TowerToHyperService::new(service));
    let mut conn = pin!(conn);
    let deadline = tokio::select! {
        result = conn.as_mut() => return ended(peer, result),
        deadline = stopped.wait_for(Option::is_some) => deadline.ok().and_then(|d| *d),
    };
    // Finishes the request in flight, if any, then closes; an idle connection closes at once.
    conn.as_mut().graceful_shutdown();
    let deadline = deadline.unwrap_or_else(Instant::now);
    if let Ok(result) = tokio::time::timeout_at(deadline, conn).await {
        ended(peer, result);
    } else {
        STATS.dropped_at_shutdown.fetch_add(1, Ordering::Relaxed);
        debug!("connection from {peer} dropped at the shutdown deadline");
    }
}

fn ended(peer: SocketAddr, result: hyper::Result<()>) {
    let Err(e) = result else { return };
    let write_stalled = std::error::Error::source(&e)
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
    if write_stalled {
        STATS.write_timeouts.fetch_add(1, Ordering::Relaxed);
        debug!("connection from {peer}: the client stopped reading its response, closed");
    } else if e.is_timeout() {
        debug!("connection from {peer}: no request head within the timeout, closed");
    } else {
        debug!("connection from {peer}: {e}");
    }
}

/// As axum's own listener does: a reset connection is nothing; anything else (EMFILE) is
/// logged and retried after a pause rather than spinning.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    warn!("accept failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use axum::routing::get;
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpSocket,
        sync::oneshot,
        task::JoinHandle,
    };

    use super::*;

    /// Every wait in these tests is bounded by this; none expects to come near it.
    const BOUND: Duration = Duration::from_secs(10);

    struct Server {
        addr: SocketAddr,
        peers: Arc<Peers>,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<std::io::Result<()>>,
    }

    impl Server {
        async fn start(limits: Limits) -> Self {
            let router =
                Router::new()
                    .route("/healthz", get(|| async { "ok\n" }))
                    .route(
                        "/peer",
                        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move {
                            peer.to_string()
                        }),
                    )
                    .route(
                        "/slow",
                        get(|| async {
                            tokio::time::sleep(Duration::from_millis(300)).await;
                            "slow\n"
                        }),
                    )
                    .route(
                        "/stuck",
                        get(|| async {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            "never\n"
                        }),
                    )
                    .route("/big", get(|| async { vec![b'x'; 32 << 20] }));
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let peers = Peers::new(&limits);
            let (stop, stopped) = oneshot::channel::<()>();
            let task = tokio::spawn(serve(
                listener,
                router,
                async {
                    let _ = stopped.await;
                },
                None,
                limits,
                peers.clone(),
            ));
            Self {
                addr,
                peers,
                stop: Some(stop),
                task,
            }
        }

        /// Signals shutdown and waits (bounded) for the server to return.
        async fn shut_down(mut self) {
            let _ = self.stop.take().unwrap().send(());
            tokio::time::timeout(BOUND, self.task)
                .await
                .expect("the server returns within the bound")
                .unwrap()
                .unwrap();
        }

        async fn wait_open_from(&self, ip: [u8; 4], n: usize) {
            let ip = IpAddr::from(ip);
            tokio::time::timeout(BOUND, async {
                while self.peers.open_from(ip) != n {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} connections open from {ip}, expected {n}",
                    self.peers.open_from(ip)
                )
            });
        }
    }

    fn limits() -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(60),
            ..Limits::default()
        }
    }

    async fn connect_from(ip: [u8; 4], to: SocketAddr, recv_buffer: Option<u32>) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        socket
            .bind(SocketAddr::from((Ipv4Addr::from(ip), 0)))
            .unwrap();
        socket.connect(to).await.unwrap()
    }

    /// What the server sent until it closed the connection; None if it is still open after
    /// [`BOUND`].
    async fn until_closed(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let read = tokio::time::timeout(BOUND, async {
            let mut chunk = [0u8; 8192];
            loop {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await;
        read.is_ok().then_some(got)
    }

    async fn send_get(stream: &mut TcpStream, path: &str, close: bool) {
        let connection = if close { "Connection: close\r\n" } else { "" };
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{connection}\r\n").as_bytes())
            .await
            .unwrap();
    }

    /// One response on a keep-alive connection (bodies here are short: one read after the
    /// head is enough, as the server writes them in one go).
    async fn response(stream: &mut TcpStream) -> String {
        let mut got = Vec::new();
        let mut chunk = [0u8; 8192];
        tokio::time::timeout(BOUND, async {
            while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
                got.extend_from_slice(&chunk[..n]);
            }
        })
        .await
        .expect("a response");
        String::from_utf8_lossy(&got).into_owned()
    }

    #[tokio::test]
    async fn idle_connections_and_half_sent_heads_are_closed() {
        let server = Server::start(Limits {
            header_read_timeout: Duration::from_millis(200),
            ..limits()
        })
        .await;
        let mut silent = TcpStream::connect(server.addr).await.unwrap();
        let mut half = TcpStream::connect(server.addr).await.unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut kept = TcpStream::connect(server.addr).await.unwrap();
        send_get(&mut kept, "/healthz", false).await;
        assert!(response(&mut kept).await.starts_with("HTTP/1.1 200"));
        assert_eq!(until_closed(&mut silent).await, Some(Vec::new()));
        let half = until_closed(&mut half).await.expect("closed");
        assert!(!String::from_utf8_lossy(&half).contains("ok"));
        assert_eq!(until_closed(&mut kept).await, Some(Vec::new()));
        server.wait_open_from([127, 0, 0, 1], 0).await;
        server.shut_down().await;
    }

    #[tokio::test]
    async fn connections_over_a_cap_are_closed_at_once() {
        let server = Server::start(Limits {
            max_connections: 3,
            max_per_peer: 2,
            ..limits()
        })
        .await;
        let mut held = Vec::new();
        for _ in 0..2 {
            held.push(connect_from([127, 0, 0, 1], server.addr, None).await);
        }
        server.wait_open_from([127, 0, 0, 1], 2).await;
        let mut over = connect_from([127, 0, 0, 1], server.addr, None).await;
        // No request is read from it: it is closed as soon as it is accepted.
        assert_eq!(until_closed(&mut over).await, Some(Vec::new()));
        let mut other = connect_from([127, 0, 0, 2], server.addr, None).await;
        send_get(&mut other, "/healthz", true).await;
        let answer = until_closed(&mut other)
            .await
            .expect("closed after answering");
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
        // Two from 127.0.0.1 and one from 127.0.0.3 fill the total cap.
        held.push(connect_from([127, 0, 0, 3], server.addr, None).await);
        server.wait_open_from([127, 0, 0, 3], 1).await;
        let mut over = connect_from([127, 0, 0, 4], server.addr, None).await;
        assert_eq!(until_closed(&mut over).await, Some(Vec::new()));
        drop(held);
        server.wait_open_from([127, 0, 0, 1], 0).await;
        let mut again = connect_from([127, 0, 0, 1], server.addr, None).await;
        send_get(&mut again, "/healthz", true).await;
        let answer = until_closed(&mut again)
            .await
            .expect("closed after answering");
        assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
        server.shut_down().await;
    }

    #[tokio::test]
    async fn handlers_see_the_peer_address() {
        let server = Server::start(limits()).await;
        let mut c = connect_from([127, 0, 0, 2], server.addr, None).await;
        let local = c.local_addr().unwrap();
        send_get(&mut c, "/peer", true).await;
        let answer = until_closed(&mut c).await.expect("closed after answering");
        assert!(
            String::from_utf8_lossy(&answer).ends_with(&local.to_string()),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        server.shut_down().await;
    }

    #[tokio::test]
    async fn shutdown_lets_requests_in_flight_finish_and_drops_the_rest() {
        let server = Server::start(Limits {
            shutdown_grace: Duration::from_secs(2),
            ..limits()
        })
        .await;
        let mut half = TcpStream::connect(server.addr).await.unwrap();
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(server.addr).await.unwrap();
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        send_get(&mut slow, "/slow", false).await;
        let mut stuck = TcpStream::connect(server.addr).await.unwrap();
        send_get(&mut stuck, "/stuck", false).await;
        server.wait_open_from([127, 0, 0, 1], 4).await;
        // Before the slow handler's 300 ms are up.
        server.shut_down().await;
        let slow = until_closed(&mut slow)
            .await
            .expect("closed after answering");
        let slow = String::from_utf8_lossy(&slow);
        assert!(
            slow.starts_with("HTTP/1.1 200") && slow.ends_with("slow\n"),
            "{slow}"
        );
        for (what, c) in [
            ("half", &mut half),
            ("idle", &mut idle),
            ("stuck", &mut stuck),
        ] {
            let got = until_closed(c).await.expect("closed");
            assert!(!String::from_utf8_lossy(&got).contains("200"), "{what}");
        }
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_dropped() {
        let server = Server::start(Limits {
            write_timeout: Duration::from_millis(300),
            ..limits()
        })
        .await;
        let before = STATS.write_timeouts.load(Ordering::Relaxed);
        // A small receive window: the 32 MiB answer cannot fit in the socket buffers.
        let mut c = connect_from([127, 0, 0, 5], server.addr, Some(4096)).await;
        send_get(&mut c, "/big", false).await;
        server.wait_open_from([127, 0, 0, 5], 1).await;
        server.wait_open_from([127, 0, 0, 5], 0).await;
        assert!(STATS.write_timeouts.load(Ordering::Relaxed) > before);
        drop(c);
        server.shut_down().await;
    }
}
