//! Acknowledging settled deliveries in bulk: an [`AckWindow`] keeps the consuming channel's
//! delivery tags in order and finds the longest settled prefix, which one `basic.ack
//! multiple=true` of its last acknowledged tag covers; [`Acks`] is the one task that sends
//! those acks (one sender keeps them in tag order, which `multiple` needs).
//!
//! A multiple ack covers every outstanding delivery up to its tag, so it may only pass over
//! deliveries that are settled: acknowledgeable (written, filtered, dead-lettered) or already
//! settled alone on the wire (requeued or rejected, their frame sent before). A delivery still
//! pending stops the prefix; deliveries settled behind it are acknowledged one by one once
//! they have waited [`LINGER`], so one held message (a dead letter the broker refuses, a
//! message the container keeps failing) does not hold every later one.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::BasicAckOptions;
use lapin::Acker;
use thiserror::Error;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// How long a settled delivery waits for a pending one before it, then is acknowledged alone.
pub const LINGER: Duration = Duration::from_millis(500);

/// A delivery tag that is not the next one on the channel (AMQP numbers a channel's
/// deliveries 1, 2, 3, ...): the window cannot tell what a multiple ack would cover.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[error("delivery tag {got} where {expected} was expected")]
pub struct OutOfOrder {
    /// The tag the channel should have delivered next.
    pub expected: u64,
    /// The tag it delivered.
    pub got: u64,
}

#[derive(Debug)]
enum Slot<A> {
    /// Not settled yet.
    Pending,
    /// Settled; to be acknowledged (the handle of its delivery).
    Ack(A),
    /// Settled alone on the wire (nack, reject, or acked alone): nothing left to send.
    Done,
}

/// The settled acks at the front of the window, for one multiple ack.
#[derive(Debug, PartialEq, Eq)]
pub struct Prefix<A> {
    /// The handle of the last acknowledged delivery: ack it with `multiple=true`.
    pub last: A,
    /// How many deliveries that ack acknowledges.
    pub count: usize,
}

/// A channel's deliveries from the oldest unacknowledged one, in tag order.
#[derive(Debug)]
pub struct AckWindow<A> {
    /// The tag of `slots[0]`, or the next expected tag when empty.
    first: u64,
    slots: VecDeque<Slot<A>>,
}

impl<A> Default for AckWindow<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A> AckWindow<A> {
    /// An empty window for a new channel (its first delivery tag is 1).
    pub fn new() -> Self {
        Self {
            first: 1,
            slots: VecDeque::new(),
        }
    }

    /// Records a delivery; tags must come in order, without gaps.
    pub fn delivered(&mut self, tag: u64) -> Result<(), OutOfOrder> {
        let expected = self.first + self.slots.len() as u64;
        if tag != expected {
            return Err(OutOfOrder { expected, got: tag });
        }
        self.slots.push_back(Slot::Pending);
        Ok(())
    }

    /// Settles a pending delivery: `Some(handle)` to acknowledge it, `None` when it was
    /// settled alone on the wire. False when the tag is not pending here.
    pub fn settle(&mut self, tag: u64, ack: Option<A>) -> bool {
        let slot = tag
            .checked_sub(self.first)
            .and_then(|index| usize::try_from(index).ok())
            .and_then(|index| self.slots.get_mut(index));
        match slot {
            Some(slot @ Slot::Pending) => {
                *slot = ack.map_or(Slot::Done, Slot::Ack);
                true
            }
            _ => false,
        }
    }

    /// Removes the settled prefix; the multiple ack it needs, if it holds any ack.
    pub fn take_prefix(&mut self) -> Option<Prefix<A>> {
        let mut prefix: Option<Prefix<A>> = None;
        while matches!(self.slots.front(), Some(Slot::Ack(_) | Slot::Done)) {
            self.first += 1;
            if let Some(Slot::Ack(handle)) = self.slots.pop_front() {
                let count = prefix.as_ref().map_or(0, |p| p.count) + 1;
                prefix = Some(Prefix {
                    last: handle,
                    count,
                });
            }
        }
        prefix
    }

    /// Whether acks wait behind a pending delivery (after [`Self::take_prefix`]).
    pub fn has_stranded(&self) -> bool {
        self.slots.iter().any(|slot| matches!(slot, Slot::Ack(_)))
    }

    /// The acks waiting behind a pending delivery, to be sent alone (in tag order); they are
    /// marked done, so no later multiple ack counts them again.
    pub fn take_stranded(&mut self) -> Vec<A> {
        let mut stranded = Vec::new();
        for slot in self.slots.iter_mut() {
            if matches!(slot, Slot::Ack(_)) {
                if let Slot::Ack(handle) = std::mem::replace(slot, Slot::Done) {
                    stranded.push(handle);
                }
            }
        }
        stranded
    }

    /// Deliveries not yet acknowledged or settled alone.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether every delivery is settled and sent.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// One consuming channel's acknowledgements: settlers mark deliveries, one task sends.
pub struct Acks {
    window: Mutex<AckWindow<Acker>>,
    wake: Notify,
    closing: AtomicBool,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Acks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acks").finish_non_exhaustive()
    }
}

impl Acks {
    /// Acknowledgements of a new channel.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            window: Mutex::new(AckWindow::new()),
            wake: Notify::new(),
            closing: AtomicBool::new(false),
            metrics,
        }
    }

    fn window(&self) -> std::sync::MutexGuard<'_, AckWindow<Acker>> {
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a delivery, in the order the channel delivered them.
    pub fn delivered(&self, tag: u64) -> Result<(), OutOfOrder> {
        self.window().delivered(tag)
    }

    /// Marks deliveries acknowledgeable (their writes are durable); the task acks them.
    pub fn ack(&self, deliveries: impl IntoIterator<Item = (u64, Acker)>) {
        {
            let mut window = self.window();
            for (tag, acker) in deliveries {
                if !window.settle(tag, Some(acker)) {
                    tracing::warn!(tag, "ack of a delivery that is not pending; ignored");
                }
            }
        }
        self.wake.notify_one();
    }

    /// Marks a delivery settled alone: its nack or reject was sent.
    pub fn settled_alone(&self, tag: u64) {
        self.window().settle(tag, None);
        self.wake.notify_one();
    }

    /// Asks the task to send what is settled and stop.
    pub fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The task: sends one multiple ack per settled prefix, and stranded acks alone after
    /// [`LINGER`], until [`Self::close`].
    pub async fn run(self: Arc<Self>) {
        let mut stranded_since: Option<Instant> = None;
        loop {
            let closing = self.closing.load(Ordering::Acquire);
            let prefix = self.window().take_prefix();
            if let Some(prefix) = prefix {
                self.send(&prefix.last, true, prefix.count).await;
            }
            let stranded = self.window().has_stranded();
            if closing {
                if stranded {
                    self.send_stranded().await;
                }
                return;
            }
            let Some(since) = stranded.then(|| *stranded_since.get_or_insert_with(Instant::now))
            else {
                stranded_since = None;
                self.wake.notified().await;
                continue;
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep_until(since + LINGER) => {
                    self.send_stranded().await;
                    stranded_since = None;
                }
            }
        }
    }

    async fn send_stranded(&self) {
        let stranded = self.window().take_stranded();
        for acker in &stranded {
            self.send(acker, false, 1).await;
        }
    }

    async fn send(&self, acker: &Acker, multiple: bool, count: usize) {
        match acker.ack(BasicAckOptions { multiple }).await {
            Ok(true) => {
                self.metrics.acked.inc_by(count as u64);
            }
            // The channel is closed: what it held returns to the queue.
            Ok(false) => tracing::warn!(count, "channel closed; acks not sent"),
            Err(e) => tracing::warn!(count, error = %e, "ack failed"),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tags: std::ops::RangeInclusive<u64>) -> AckWindow<u64> {
        let mut window = AckWindow::new();
        for tag in tags {
            window.delivered(tag).expect("in order");
        }
        window
    }

    fn ack(window: &mut AckWindow<u64>, tags: &[u64]) {
        for &tag in tags {
            assert!(window.settle(tag, Some(tag)), "{tag} pending");
        }
    }

    #[test]
    fn a_settled_prefix_is_acknowledged_with_one_multiple_ack() {
        let mut window = window(1..=5);
        ack(&mut window, &[3, 1, 2]);
        assert_eq!(window.take_prefix(), Some(Prefix { last: 3, count: 3 }));
        assert_eq!(window.take_prefix(), None);
        assert_eq!(window.len(), 2);
        ack(&mut window, &[5, 4]);
        assert_eq!(window.take_prefix(), Some(Prefix { last: 5, count: 2 }));
        assert!(window.is_empty());
    }

    #[test]
    fn a_pending_delivery_stops_the_multiple_ack_before_it() {
        let mut window = window(1..=6);
        ack(&mut window, &[1, 2, 4, 5, 6]);
        assert_eq!(window.take_prefix(), Some(Prefix { last: 2, count: 2 }));
        // 3 is still being written: a multiple ack of 6 would cover it.
        assert_eq!(window.take_prefix(), None);
        assert!(window.has_stranded());
        ack(&mut window, &[3]);
        assert_eq!(window.take_prefix(), Some(Prefix { last: 6, count: 4 }));
    }

    #[test]
    fn a_delivery_settled_alone_is_passed_over_but_not_counted() {
        let mut window = window(1..=5);
        ack(&mut window, &[1, 2, 4]);
        // 3 was dead-lettered with a reject (or requeued with a nack), sent before.
        assert!(window.settle(3, None));
        assert_eq!(window.take_prefix(), Some(Prefix { last: 4, count: 3 }));
        // A prefix of deliveries settled alone needs no ack at all.
        assert!(window.settle(5, None));
        assert_eq!(window.take_prefix(), None);
        assert!(window.is_empty());
    }

    #[test]
    fn stranded_acks_are_sent_alone_once_and_never_counted_again() {
        let mut window = window(1..=4);
        ack(&mut window, &[2, 4]);
        assert_eq!(window.take_prefix(), None);
        assert_eq!(window.take_stranded(), vec![2, 4]);
        assert!(!window.has_stranded());
        ack(&mut window, &[1]);
        // 2 was acked alone: the multiple ack stops at 1, and 4 needs nothing more.
        assert_eq!(window.take_prefix(), Some(Prefix { last: 1, count: 1 }));
        ack(&mut window, &[3]);
        assert_eq!(window.take_prefix(), Some(Prefix { last: 3, count: 1 }));
        assert!(window.is_empty());
    }

    #[test]
    fn tags_out_of_order_or_unknown_are_refused() {
        let mut window = window(1..=2);
        assert_eq!(
            window.delivered(4),
            Err(OutOfOrder {
                expected: 3,
                got: 4
            })
        );
        assert!(window.delivered(2).is_err());
        assert!(!window.settle(9, Some(9)), "never delivered");
        assert!(window.settle(1, Some(1)));
        assert!(!window.settle(1, None), "settled once only");
        assert_eq!(window.take_prefix(), Some(Prefix { last: 1, count: 1 }));
        assert!(!window.settle(1, Some(1)), "already acknowledged");
        window.delivered(3).expect("the next tag");
    }
}
