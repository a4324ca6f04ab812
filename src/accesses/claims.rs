//! Searches in flight, claimed by their request: when a search is a
//! client's retry of an earlier one (the same organisation, user, person,
//! care setting and `request_id` within [`REQUEST_ID_WINDOW`](super::REQUEST_ID_WINDOW):
//! a [`RequestKey`]), it must not notify again. A copy of the request that
//! arrives while the first is still committing waits for that commit to end,
//! then looks again: it is answered as a retry once the first is durable, and
//! takes over if the first failed. No copy is ever answered ahead of the
//! durability of the notification it relies on.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::model::RequestKey;

/// Requests being searched right now.
#[derive(Default)]
pub struct Claims {
    in_flight: Arc<DashMap<RequestKey, watch::Receiver<bool>>>,
    /// Copies waiting for their first copy's commit.
    waiting: watch::Sender<usize>,
}

/// A request claimed while its search and its commit run; released on drop,
/// which wakes the copies waiting for it.
pub struct Claim {
    in_flight: Arc<DashMap<RequestKey, watch::Receiver<bool>>>,
    key: RequestKey,
    done: watch::Sender<bool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.in_flight.remove(&self.key);
        self.done.send_replace(true);
    }
}

impl Claims {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims a request until the claim is dropped. While another search
    /// holds it (a retry racing its original), waits for that search to end
    /// and tries again: the caller then sees the original's access, if it
    /// was stored, and can tell that it is a retry.
    pub async fn claim(&self, key: &RequestKey) -> Claim {
        loop {
            let mut ended = match self.in_flight.entry(key.clone()) {
                dashmap::Entry::Vacant(vacant) => {
                    let (done, receiver) = watch::channel(false);
                    vacant.insert(receiver);
                    return Claim { in_flight: Arc::clone(&self.in_flight), key: key.clone(), done };
                }
                dashmap::Entry::Occupied(taken) => taken.get().clone(),
            };
            let _waiting = Waiting::new(&self.waiting);
            // Closed or true: the first copy's search has ended either way.
            let _ = ended.wait_for(|done| *done).await;
        }
    }

    /// Copies of requests waiting for their first copy's commit, as it changes.
    pub fn waiting(&self) -> watch::Receiver<usize> {
        self.waiting.subscribe()
    }
}

/// Counts a copy waiting for its original, in `cpis_search_retries_waiting`.
struct Waiting<'a>(&'a watch::Sender<usize>);

impl<'a> Waiting<'a> {
    fn new(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|waiting| *waiting += 1);
        metrics::gauge!("cpis_search_retries_waiting").set(*count.borrow() as f64);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|waiting| *waiting -= 1);
        metrics::gauge!("cpis_search_retries_waiting").set(*self.0.borrow() as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{accesses::test_access as access, nhs::NhsNumber};

    #[tokio::test]
    async fn a_racing_copy_waits_for_the_first_claim_to_end() {
        let history = Arc::new(Claims::new());
        let key = access(0, "RR8", "a").request_key();
        let for_another_person = RequestKey { nhs_number: NhsNumber::parse("9990000034").unwrap(), ..key.clone() };
        let first = history.claim(&key).await;
        drop(history.claim(&for_another_person).await); // the same id for another person is another search
        let racing = tokio::spawn({
            let (history, key) = (Arc::clone(&history), key.clone());
            async move {
                let _claim = history.claim(&key).await;
            }
        });
        history.waiting().wait_for(|waiting| *waiting == 1).await.unwrap();
        assert!(!racing.is_finished(), "the copy waits while the first holds the claim");
        drop(first);
        racing.await.unwrap();
        assert_eq!(*history.waiting().borrow(), 0);
        drop(history.claim(&key).await);
    }
}
