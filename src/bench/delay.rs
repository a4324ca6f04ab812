//! A slow link for the national-day bench: a TCP proxy on 127.0.0.1 that
//! holds every chunk of bytes, in each direction, for a delay drawn from
//! `delay ± jitter` before passing it on. This machine's kernel has no
//! `sch_netem`, so the relay nodes reach the database through this instead.
//! A TCP stream cannot be reordered from user space: a chunk never overtakes
//! the one before it (its release is at least the previous one's), so jitter
//! shows as extra delay, not as reordering. The delay can be changed while
//! the proxy runs (a slow spell in a scripted day).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::Rng;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::mpsc,
    time::Instant,
};

/// How long each chunk is held: `delay ± jitter`, changeable while the
/// proxy runs (clones share it).
#[derive(Clone, Debug, Default)]
pub struct Link(Arc<[AtomicU64; 2]>);

impl Link {
    pub fn new(delay: Duration, jitter: Duration) -> Self {
        let link = Self::default();
        link.set(delay, jitter);
        link
    }

    /// From now on, chunks are held `delay ± jitter`.
    pub fn set(&self, delay: Duration, jitter: Duration) {
        self.0[0].store(delay.as_micros() as u64, Ordering::Relaxed);
        self.0[1].store(jitter.as_micros() as u64, Ordering::Relaxed);
    }

    fn draw(&self) -> Duration {
        let (delay, jitter) = (self.0[0].load(Ordering::Relaxed) as f64, self.0[1].load(Ordering::Relaxed) as f64);
        let offset = if jitter > 0.0 { rand::rng().random_range(-jitter..=jitter) } else { 0.0 };
        Duration::from_micros((delay + offset).max(0.0) as u64)
    }
}

/// Starts a proxy to `upstream`; returns the address to connect to instead.
/// It runs until the process ends.
pub async fn start(upstream: SocketAddr, delay: Link) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let delay = delay.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(upstream).await else { return };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pipe(client_read, server_write, delay.clone()));
                tokio::spawn(pipe(server_read, client_write, delay));
            });
        }
    });
    Ok(address)
}

/// Copies one direction, each chunk released no earlier than its delay after it was read.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Link) {
    let (chunks, mut held) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = tokio::spawn(async move {
        while let Some((release, chunk)) = held.recv().await {
            tokio::time::sleep_until(release).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    });
    let mut last = Instant::now();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                last = last.max(Instant::now() + delay.draw());
                if chunks.send((last, buffer[..read].to_vec())).is_err() {
                    break;
                }
            }
        }
    }
    drop(chunks);
    let _ = writer.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_pass_through_in_order_whatever_the_jitter() {
        let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (stream, _) = echo.accept().await.unwrap();
            let (mut read, mut write) = stream.into_split();
            tokio::io::copy(&mut read, &mut write).await.unwrap();
        });
        let delay = Link::new(Duration::from_millis(2), Duration::from_millis(2));
        let proxy = start(upstream, delay).await.unwrap();
        let (mut read, mut write) = TcpStream::connect(proxy).await.unwrap().into_split();
        let sent: Vec<u8> = (0..200u32).flat_map(|i| i.to_be_bytes()).collect();
        let writing = tokio::spawn(async move {
            for chunk in sent.chunks(4) {
                write.write_all(chunk).await.unwrap();
            }
            write.shutdown().await.unwrap();
            sent
        });
        let mut received = Vec::new();
        read.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, writing.await.unwrap(), "every byte, in order");
    }
}
