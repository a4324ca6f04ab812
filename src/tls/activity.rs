//! Idle connections: each accepted connection counts its calls in progress
//! (the gRPC edge opens a [`CallGuard`] per call, held until the response
//! body ends, so a subscription stream counts for as long as it is open).
//! A connection with no call in progress for the idle timeout — one that
//! completed TLS but never spoke HTTP/2 included — has its reads end (EOF),
//! which closes it. HTTP/2 keepalive pings are not calls: a client that only
//! answers pings is idle.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use std::future::Future;

use tokio::time::{Instant, Sleep};

/// The calls in progress on one connection.
#[derive(Debug)]
pub struct ConnectionActivity {
    calls: AtomicUsize,
    state: Mutex<IdleState>,
}

#[derive(Debug)]
struct IdleState {
    /// When the count last reached zero (or the connection was made).
    idle_since: Instant,
    /// The connection's reader, woken when the last call ends so that it
    /// starts its idle timer.
    reader: Option<Waker>,
}

impl ConnectionActivity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: AtomicUsize::new(0),
            state: Mutex::new(IdleState { idle_since: Instant::now(), reader: None }),
        })
    }

    /// Counts a call until the guard is dropped.
    pub(crate) fn begin_call(self: &Arc<Self>) -> CallGuard {
        // Under the lock, as the idle check reads the count.
        let _state = self.state();
        self.calls.fetch_add(1, Ordering::AcqRel);
        CallGuard(Arc::clone(self))
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IdleState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A call in progress on a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<ConnectionActivity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        let mut state = self.0.state();
        if self.0.calls.fetch_sub(1, Ordering::AcqRel) == 1 {
            state.idle_since = Instant::now();
            if let Some(reader) = state.reader.take() {
                reader.wake();
            }
        }
    }
}

/// The idle timer of one connection's reads.
pub(super) struct IdleTimer {
    activity: Arc<ConnectionActivity>,
    timeout: Duration,
    sleep: std::pin::Pin<Box<Sleep>>,
    expired: bool,
}

impl IdleTimer {
    pub(super) fn new(activity: Arc<ConnectionActivity>, timeout: Duration) -> Self {
        let deadline = activity.state().idle_since + timeout;
        Self { activity, timeout, sleep: Box::pin(tokio::time::sleep_until(deadline)), expired: false }
    }

    /// Ready when the connection has been idle for the timeout (and ever after).
    pub(super) fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.expired {
            return Poll::Ready(());
        }
        let deadline = {
            let mut state = self.activity.state();
            if self.activity.calls.load(Ordering::Acquire) > 0 {
                // Woken when the last call ends.
                state.reader = Some(cx.waker().clone());
                return Poll::Pending;
            }
            state.idle_since + self.timeout
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.expired = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
