//! A TCP proxy between one relay node and PostgreSQL that cuts the node off
//! at a chosen statement: once [`CutProxy::arm`]ed with a piece of SQL, the
//! first connection that sends it has the server's answer to that statement
//! (its CommandComplete) withheld, and from then on no byte passes in either
//! direction on any of the node's connections, old or new. Nothing is reset:
//! the node waits on its connections as it would behind a partition, while
//! the server has run the statement and waits for the node's next one.
//! [`CutProxy::heal`] then closes the cut connections (the node sees them
//! fail) and lets new ones through.
//!
//! It reads the server's messages (type byte, length, body) to find the
//! CommandComplete; it expects `sslmode=disable` (no SSL negotiation byte).
//! It also counts, on every connection, the statements the server completed,
//! the rows it sent and the round trips (its ReadyForQuery messages, one per
//! Sync or simple query): how much work a request of the node's took.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{Mutex, watch},
};

/// Where the proxy is in its cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Open,
    Cut,
    /// Connections cut before now are closed; new ones pass.
    Healed(u64),
}

pub struct CutProxy {
    pub address: SocketAddr,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    phase: watch::Sender<Phase>,
    counts: Arc<Counts>,
}

/// What the server sent the node's connections.
#[derive(Default)]
struct Counts {
    statements: AtomicU64,
    rows: AtomicU64,
    round_trips: AtomicU64,
}

/// The statements completed, rows sent and round trips so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    pub statements: u64,
    pub rows: u64,
    pub round_trips: u64,
}

impl std::ops::Sub for Work {
    type Output = Work;

    fn sub(self, earlier: Work) -> Work {
        Work {
            statements: self.statements - earlier.statements,
            rows: self.rows - earlier.rows,
            round_trips: self.round_trips - earlier.round_trips,
        }
    }
}

impl CutProxy {
    /// Starts a proxy to `upstream`, passing everything until armed.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let marker: Arc<Mutex<Option<Vec<u8>>>> = Arc::default();
        let phase = watch::Sender::new(Phase::Open);
        let counts: Arc<Counts> = Arc::default();
        let (accept_marker, accept_phase, accept_counts) = (Arc::clone(&marker), phase.clone(), Arc::clone(&counts));
        tokio::spawn(async move {
            while let Ok((node, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else { continue };
                // As the node's client and the server set it: without, Nagle's
                // algorithm meeting delayed acknowledgements adds 40 ms to
                // some answers of several packets, which the node never sees
                // without the proxy.
                let (Ok(()), Ok(())) = (node.set_nodelay(true), server.set_nodelay(true)) else { continue };
                let heals = match *accept_phase.borrow() {
                    Phase::Healed(heals) => heals,
                    _ => 0,
                };
                let counts = Arc::clone(&accept_counts);
                tokio::spawn(connection(node, server, Arc::clone(&accept_marker), accept_phase.clone(), counts, heals));
            }
        });
        Self { address, marker, phase, counts }
    }

    /// The statements the server completed for the node, the rows it sent and the round trips, so far.
    pub fn work(&self) -> Work {
        Work {
            statements: self.counts.statements.load(Ordering::SeqCst),
            rows: self.counts.rows.load(Ordering::SeqCst),
            round_trips: self.counts.round_trips.load(Ordering::SeqCst),
        }
    }

    /// `url` (a test cluster's) with this proxy in place of the server.
    pub fn url_for(&self, url: &str) -> String {
        let (before, after) = url.split_once("127.0.0.1:").expect("a local cluster's url");
        let rest = &after[after.find('/').unwrap()..];
        format!("{before}127.0.0.1:{}{rest}", self.address.port())
    }

    /// Cuts the node off once a connection sends `sql` and the server answers it.
    pub async fn arm(&self, sql: &str) {
        *self.marker.lock().await = Some(sql.as_bytes().to_vec());
    }

    /// Waits until the cut happened.
    pub async fn cut(&self) {
        let mut phase = self.phase.subscribe();
        let cut =
            tokio::time::timeout(std::time::Duration::from_secs(60), phase.wait_for(|phase| *phase == Phase::Cut));
        cut.await.expect("the armed statement ran within 60 s").unwrap();
    }

    /// Whether the node is still cut off.
    pub fn is_cut(&self) -> bool {
        *self.phase.borrow() == Phase::Cut
    }

    /// Closes the cut connections; new ones pass again.
    pub fn heal(&self) {
        self.phase.send_modify(|phase| {
            *phase = Phase::Healed(match phase {
                Phase::Healed(heals) => *heals + 1,
                _ => 1,
            })
        });
    }
}

/// Whether a connection opened after `heals` heals must stop now.
fn stopped(phase: Phase, heals: u64) -> bool {
    match phase {
        Phase::Open => false,
        Phase::Cut => true,
        Phase::Healed(now) => now > heals,
    }
}

/// Keeps a cut connection open and silent until the proxy heals.
async fn hold(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|now| matches!(now, Phase::Healed(_))).await;
}

async fn connection(
    node: TcpStream,
    server: TcpStream,
    marker: Arc<Mutex<Option<Vec<u8>>>>,
    phase: watch::Sender<Phase>,
    counts: Arc<Counts>,
    heals: u64,
) {
    let (mut node_read, mut node_write) = node.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    // Set once this connection has sent the armed statement.
    let (sent_tx, sent_rx) = watch::channel(false);
    let upstream_phase = phase.subscribe();
    let upward = async move {
        let mut phase = upstream_phase;
        let mut seen: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let read = tokio::select! {
                read = node_read.read(&mut chunk) => Some(read),
                _ = phase.wait_for(|now| stopped(*now, heals)) => None,
            };
            let Some(read) = read else { return hold(&mut phase).await };
            let Ok(read @ 1..) = read else { return };
            if stopped(*phase.borrow(), heals) {
                return hold(&mut phase).await;
            }
            if let Some(marker) = marker.lock().await.as_ref() {
                seen.extend_from_slice(&chunk[..read]);
                if seen.windows(marker.len()).any(|window| window == marker.as_slice()) {
                    sent_tx.send_replace(true);
                }
                let keep = seen.len().saturating_sub(marker.len());
                seen.drain(..keep);
            }
            if server_write.write_all(&chunk[..read]).await.is_err() {
                return;
            }
        }
    };
    let downward = async move {
        let mut watching = phase.subscribe();
        let mut buffer: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let read = tokio::select! {
                read = server_read.read(&mut chunk) => Some(read),
                _ = watching.wait_for(|now| stopped(*now, heals)) => None,
            };
            let Some(read) = read else { return hold(&mut watching).await };
            let Ok(read @ 1..) = read else { return };
            buffer.extend_from_slice(&chunk[..read]);
            // Pass whole messages, up to the armed statement's CommandComplete.
            let mut passed = 0;
            while buffer.len() - passed >= 5 {
                let length = u32::from_be_bytes(buffer[passed + 1..passed + 5].try_into().unwrap()) as usize;
                if buffer.len() - passed < 1 + length {
                    break;
                }
                if buffer[passed] == b'C' && *sent_rx.borrow() {
                    phase.send_if_modified(|now| {
                        let cut = *now == Phase::Open;
                        if cut {
                            *now = Phase::Cut;
                        }
                        cut
                    });
                    break;
                }
                match buffer[passed] {
                    b'C' => counts.statements.fetch_add(1, Ordering::SeqCst),
                    b'D' => counts.rows.fetch_add(1, Ordering::SeqCst),
                    b'Z' => counts.round_trips.fetch_add(1, Ordering::SeqCst),
                    _ => 0,
                };
                passed += 1 + length;
            }
            if stopped(*watching.borrow(), heals) {
                return hold(&mut watching).await;
            }
            if node_write.write_all(&buffer[..passed]).await.is_err() {
                return;
            }
            buffer.drain(..passed);
        }
    };
    // Either direction ending ends the connection; both halves drop together.
    tokio::select! {
        () = upward => {}
        () = downward => {}
    }
}
