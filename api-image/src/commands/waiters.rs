//! Requests waiting for a device's answer: a bounded map from command id to the sender
//! half of a one-shot channel. A [`Waiter`] leaves the map when it is dropped — answered,
//! timed out, or its client gone — so the map never holds more than its bound.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use crate::commands::message::Answer;

/// The waiting requests.
#[derive(Debug)]
pub struct Waiters {
    map: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    max: usize,
    gauge: Gauge,
}

/// One waiting request; dropping it stops the wait.
#[derive(Debug)]
pub struct Waiter {
    id: String,
    waiters: Arc<Waiters>,
    /// Gets the answer; fails when the wait was abandoned (the connection was lost).
    pub receiver: oneshot::Receiver<Answer>,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut map = self.waiters.lock();
        map.remove(&self.id);
        self.waiters.gauge.set(map.len() as i64);
    }
}

impl Waiters {
    /// No waiting request yet; at most `max` at once; `gauge` shows how many.
    pub fn new(max: usize, gauge: Gauge) -> Self {
        gauge.set(0);
        Self {
            map: Mutex::new(HashMap::new()),
            max,
            gauge,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<Answer>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the answer to `id`; `None` when `max` requests already wait.
    pub fn register(self: &Arc<Self>, id: &str) -> Option<Waiter> {
        let (sender, receiver) = oneshot::channel();
        let mut map = self.lock();
        if map.len() >= self.max {
            return None;
        }
        map.insert(id.to_owned(), sender);
        self.gauge.set(map.len() as i64);
        Some(Waiter {
            id: id.to_owned(),
            waiters: self.clone(),
            receiver,
        })
    }

    /// Hands an answer to the request waiting for `id`; false when none waits.
    pub fn answer(&self, id: &str, answer: Answer) -> bool {
        let sender = {
            let mut map = self.lock();
            let sender = map.remove(id);
            self.gauge.set(map.len() as i64);
            sender
        };
        sender.is_some_and(|sender| sender.send(answer).is_ok())
    }

    /// Ends every wait without an answer (the channel their answers would come on is gone).
    pub fn abandon_all(&self) {
        let mut map = self.lock();
        map.clear();
        self.gauge.set(0);
    }

    /// Requests waiting now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Answer {
        Answer {
            status,
            content_type: None,
            body: Vec::new(),
        }
    }

    #[tokio::test]
    async fn an_answer_reaches_its_waiter_only() {
        let waiters = Arc::new(Waiters::new(10, Gauge::default()));
        let mut first = waiters.register("c1").expect("room");
        let mut second = waiters.register("c2").expect("room");
        assert!(waiters.answer("c2", answer(201)));
        assert_eq!((&mut second.receiver).await.expect("answered").status, 201);
        assert!(first.receiver.try_recv().is_err(), "c1 has no answer");
        assert!(!waiters.answer("c3", answer(200)), "nobody waits for c3");
        assert!(!waiters.answer("c2", answer(200)), "c2 was answered once");
    }

    #[test]
    fn the_bound_refuses_more_and_a_dropped_waiter_frees_its_place() {
        let gauge = Gauge::default();
        let waiters = Arc::new(Waiters::new(2, gauge.clone()));
        let first = waiters.register("c1").expect("room");
        let _second = waiters.register("c2").expect("room");
        assert!(waiters.register("c3").is_none(), "past the bound");
        assert_eq!(gauge.get(), 2);
        drop(first);
        assert_eq!((waiters.len(), gauge.get()), (1, 1));
        assert!(
            !waiters.answer("c1", answer(200)),
            "a timed-out wait is gone"
        );
        assert!(waiters.register("c3").is_some());
    }

    #[tokio::test]
    async fn abandoning_ends_every_wait() {
        let gauge = Gauge::default();
        let waiters = Arc::new(Waiters::new(2, gauge.clone()));
        let mut waiter = waiters.register("c1").expect("room");
        waiters.abandon_all();
        assert!((&mut waiter.receiver).await.is_err());
        assert!(waiters.is_empty());
        assert_eq!(gauge.get(), 0);
    }
}
