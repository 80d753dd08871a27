//! A TCP proxy inside the test, to play a network that drops, stalls or moves.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::time::timeout;

use super::WAIT;

/// A TCP proxy in front of a server that the test can cut, to play a flaky network:
/// [`Proxy::sever`] closes every connection through it, [`Proxy::set_down`] makes
/// it close new ones at once, and [`Proxy::hold_downstream`] and
/// [`Proxy::hold_upstream`] stop passing on what the server or the client sends (it
/// stays with the proxy until released, or is lost in a cut).
pub struct Proxy {
    pub port: u16,
    state: Arc<ProxyState>,
    task: tokio::task::JoinHandle<()>,
}

struct ProxyState {
    /// Where new connections go.
    target: Mutex<SocketAddr>,
    /// Bumped by every cut; each connection ends when it changes.
    cuts: watch::Sender<u64>,
    /// Server-to-client traffic.
    downstream: Direction,
    /// Client-to-server traffic.
    upstream: Direction,
    down: std::sync::atomic::AtomicBool,
}

/// One direction of the traffic through the proxy.
struct Direction {
    /// Whether its traffic is held back.
    hold: watch::Sender<bool>,
    /// How many bytes are held back now, over all connections.
    held: watch::Sender<usize>,
}

impl Direction {
    fn new() -> Self {
        Direction {
            hold: watch::channel(false).0,
            held: watch::channel(0).0,
        }
    }

    /// Passes what `from` sends on to `to`, holding it back while held.
    async fn pass(&self, mut from: OwnedReadHalf, mut to: OwnedWriteHalf) {
        let mut hold = self.hold.subscribe();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            // Held: keep what was read until released (or the cut ends it all).
            let counted = Counted::new(&self.held, n);
            let released = hold.wait_for(|held| !*held).await.is_ok();
            drop(counted);
            if !released || to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }
}

/// Bytes counted in a [`Direction`]'s `held` while they wait, until dropped (also
/// when a cut drops the wait).
struct Counted<'a>(&'a watch::Sender<usize>, usize);

impl<'a> Counted<'a> {
    fn new(held: &'a watch::Sender<usize>, bytes: usize) -> Self {
        held.send_modify(|held| *held += bytes);
        Counted(held, bytes)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let bytes = self.1;
        self.0.send_modify(|held| *held -= bytes);
    }
}

impl Proxy {
    /// A proxy on a free port that forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let state = Arc::new(ProxyState {
            target: Mutex::new(target),
            cuts: watch::channel(0).0,
            downstream: Direction::new(),
            upstream: Direction::new(),
            down: std::sync::atomic::AtomicBool::new(false),
        });
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if shared.down.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let target = *shared.target.lock().expect("target lock");
                tokio::spawn(Self::forward(client, target, Arc::clone(&shared)));
            }
        });
        Proxy { port, state, task }
    }

    async fn forward(client: TcpStream, target: SocketAddr, state: Arc<ProxyState>) {
        let mut cuts = state.cuts.subscribe();
        let Ok(server) = TcpStream::connect(target).await else {
            return;
        };
        let _ = (client.set_nodelay(true), server.set_nodelay(true));
        let (client_read, client_write) = client.into_split();
        let (server_read, server_write) = server.into_split();
        // A cut comes first: what was held when it came is lost, as in a real cut.
        tokio::select! {
            biased;
            _ = cuts.changed() => {}
            () = state.upstream.pass(client_read, server_write) => {}
            () = state.downstream.pass(server_read, client_write) => {}
        }
    }

    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Closes every connection through the proxy, as a network that drops.
    pub fn sever(&self) {
        self.state.cuts.send_modify(|n| *n += 1);
    }

    /// Sends new connections to `target` from now on, as a load balancer whose
    /// first server went away.
    pub fn retarget(&self, target: SocketAddr) {
        *self.state.target.lock().expect("target lock") = target;
    }

    /// While down, new connections are closed as soon as they arrive.
    pub fn set_down(&self, down: bool) {
        self.state
            .down
            .store(down, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds back (or releases) what the servers send through the proxy.
    pub fn hold_downstream(&self, hold: bool) {
        self.state.downstream.hold.send_replace(hold);
    }

    /// Holds back (or releases) what the clients send through the proxy.
    pub fn hold_upstream(&self, hold: bool) {
        self.state.upstream.hold.send_replace(hold);
    }

    /// Waits until at least `bytes` of what the clients sent are held back.
    pub async fn wait_holding_upstream(&self, bytes: usize) {
        let mut held = self.state.upstream.held.subscribe();
        timeout(WAIT, held.wait_for(|held| *held >= bytes))
            .await
            .expect("the client's bytes reached the proxy in time")
            .expect("proxy alive");
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.sever();
    }
}
