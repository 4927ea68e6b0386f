//! Each sink's task: gather items into batches (by count, bytes or age), write them (waiting
//! out outages with backoff), and settle every message's ticket with the outcome.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tributary_contract::worker_config::{BatchConfig, RetryConfig};

use crate::ack::{Delivered, Finisher, Ticket, Verdict};
use crate::metrics::Metrics;
use crate::outages::{sink_target, Outages};
use crate::sinks::{Prepared, Sink, SinkError};

/// One message on its way into one sink.
pub struct SinkItem {
    /// The encoded message.
    pub prepared: Prepared,
    /// Its settlement.
    pub ticket: Ticket<Delivered>,
}

/// A batch being gathered.
#[derive(Debug)]
pub struct BatchBuffer<T> {
    config: BatchConfig,
    items: Vec<T>,
    bytes: usize,
    started: Option<Instant>,
}

impl<T> BatchBuffer<T> {
    /// An empty buffer with a policy.
    pub fn new(config: BatchConfig) -> Self {
        Self {
            items: Vec::with_capacity(config.max_messages.min(10_000)),
            config,
            bytes: 0,
            started: None,
        }
    }

    /// Adds an item of `size` bytes; true when the batch is now due by count or bytes.
    pub fn push(&mut self, item: T, size: usize, now: Instant) -> bool {
        if self.items.is_empty() {
            self.started = Some(now);
        }
        self.items.push(item);
        self.bytes += size;
        self.is_full()
    }

    /// Whether the batch is due by count or bytes.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.config.max_messages.max(1) || self.bytes >= self.config.max_bytes
    }

    /// When the batch is due by age (None when empty).
    pub fn deadline(&self) -> Option<Instant> {
        self.started
            .map(|start| start + Duration::from_millis(self.config.max_age_ms))
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Takes the batch, leaving the buffer empty.
    pub fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.started = None;
        std::mem::take(&mut self.items)
    }
}

/// The backoff delays for a retry policy: doubling from the initial delay up to the cap.
pub fn backoff(retry: &RetryConfig, failures: u32) -> Duration {
    let factor = 2u64.saturating_pow(failures.saturating_sub(1));
    Duration::from_millis(
        retry
            .initial_backoff_ms
            .saturating_mul(factor)
            .min(retry.max_backoff_ms),
    )
}

/// Whether another attempt at a per-message failure is allowed after `attempts` (0 means
/// no limit). Outages are not limited by it.
pub fn may_retry(retry: &RetryConfig, attempts: u32) -> bool {
    retry.max_attempts == 0 || attempts < retry.max_attempts
}

/// Batches of one sink written at the same time: the next batch is gathered and written
/// while the previous one is still being written and settled.
pub const WRITES_IN_FLIGHT: usize = 2;

/// The batch policy a sink runs with under `prefetch`: at most a quarter of the prefetch per
/// batch, so that the [`WRITES_IN_FLIGHT`] batches being written hold half of it and the
/// broker keeps delivering the next ones meanwhile (a batch as large as the prefetch would
/// wait for its own acks and be flushed by age; two of half of it would stop the broker
/// during every write).
pub fn effective_batch(config: &BatchConfig, prefetch: u16) -> BatchConfig {
    let share = (usize::from(prefetch) / (2 * WRITES_IN_FLIGHT)).max(1);
    BatchConfig {
        max_messages: config.max_messages.clamp(1, share),
        ..config.clone()
    }
}

enum Outcome {
    Written,
    Rejected(String),
    Interrupted,
}

fn push(buffer: &mut BatchBuffer<SinkItem>, item: SinkItem) {
    let size = item.prepared.size();
    buffer.push(item, size, Instant::now());
}

/// Fills a started batch until it is due by count, bytes or age; false when the channel
/// closed. Items already queued are taken without waiting (one timer per batch).
async fn fill(buffer: &mut BatchBuffer<SinkItem>, rx: &mut mpsc::Receiver<SinkItem>) -> bool {
    let deadline = buffer.deadline().unwrap_or_else(Instant::now);
    let age = tokio::time::sleep_until(deadline.into());
    let mut age = std::pin::pin!(age);
    while !buffer.is_full() {
        match rx.try_recv() {
            Ok(item) => {
                push(buffer, item);
                continue;
            }
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        tokio::select! {
            item = rx.recv() => match item {
                Some(item) => push(buffer, item),
                None => return false,
            },
            _ = &mut age => break,
        }
    }
    true
}

/// Runs one sink until its channel closes (every sender dropped), flushing what is left.
pub struct SinkRunner {
    /// The sink.
    pub sink: Arc<Sink>,
    /// Retry policy.
    pub retry: RetryConfig,
    /// Settles deliveries.
    pub finisher: Arc<Finisher>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Where an outage of this sink is reported.
    pub outages: Arc<Outages>,
    /// Cancelled at shutdown: stops waiting between retries (the batch is requeued).
    pub shutdown: CancellationToken,
    /// The consuming channel's prefetch (it bounds the batch size, see [`effective_batch`]).
    pub prefetch: u16,
}

impl SinkRunner {
    /// The task's body.
    pub async fn run(self: Arc<Self>, mut rx: mpsc::Receiver<SinkItem>) {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(WRITES_IN_FLIGHT));
        let mut writes = tokio::task::JoinSet::new();
        let mut buffer = BatchBuffer::new(effective_batch(self.sink.batch_config(), self.prefetch));
        let mut open = true;
        while open {
            if buffer.is_empty() {
                match rx.recv().await {
                    Some(item) => push(&mut buffer, item),
                    None => break,
                }
            }
            open = fill(&mut buffer, &mut rx).await;
            let items = buffer.take();
            self.spawn_write(&in_flight, &mut writes, items).await;
        }
        if !buffer.is_empty() {
            let items = buffer.take();
            self.spawn_write(&in_flight, &mut writes, items).await;
        }
        while writes.join_next().await.is_some() {}
    }

    async fn spawn_write(
        self: &Arc<Self>,
        in_flight: &Arc<tokio::sync::Semaphore>,
        writes: &mut tokio::task::JoinSet<()>,
        items: Vec<SinkItem>,
    ) {
        // Reap finished writes so the set does not grow.
        while writes.try_join_next().is_some() {}
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let runner = self.clone();
        writes.spawn(async move {
            runner.write_and_settle(items).await;
            drop(permit);
        });
    }

    async fn write_and_settle(&self, items: Vec<SinkItem>) {
        let name = self.sink.name();
        let mut prepared = Vec::with_capacity(items.len());
        let mut tickets = Vec::with_capacity(items.len());
        for mut item in items {
            match item.prepared.refused.take() {
                // Refused before any write: dead-lettered alone, the rest is written without it.
                Some(reason) => {
                    self.metrics.sink_error(name, "rejected");
                    self.settle(vec![item.ticket], Outcome::Rejected(reason))
                        .await;
                }
                None => {
                    prepared.push(item.prepared);
                    tickets.push(Some(item.ticket));
                }
            }
        }
        if prepared.is_empty() {
            return;
        }
        tracing::debug!(sink = name, size = prepared.len(), "writing batch");
        // A value only the target can see is bad fails the whole batch: find it by halving,
        // so k bad messages cost about 2·k·log2(n) extra writes, not one write per message.
        let mut pending: Vec<std::ops::Range<usize>> = Vec::with_capacity(16);
        pending.push(0..prepared.len());
        while let Some(range) = pending.pop() {
            match self.write_with_retry(&prepared[range.clone()]).await {
                Outcome::Rejected(_) if range.len() > 1 => {
                    let middle = range.start + range.len() / 2;
                    pending.push(middle..range.end);
                    pending.push(range.start..middle);
                }
                outcome => {
                    let settled = tickets[range].iter_mut().filter_map(Option::take).collect();
                    self.settle(settled, outcome).await;
                }
            }
        }
    }

    async fn settle(&self, tickets: Vec<Ticket<Delivered>>, outcome: Outcome) {
        let name = self.sink.name();
        let verdict = match outcome {
            Outcome::Written => Verdict::Ack,
            Outcome::Rejected(message) => Verdict::DeadLetter {
                kind: "sink-rejected",
                reason: format!("sink {name} refused the message: {message}"),
            },
            Outcome::Interrupted => Verdict::Requeue,
        };
        let mut acked = Vec::with_capacity(tickets.len());
        let mut others = Vec::new();
        for (delivery, verdict) in tickets
            .iter()
            .filter_map(|ticket| ticket.complete(verdict.clone()))
        {
            match verdict {
                Verdict::Ack => acked.push(delivery),
                verdict => others.push((delivery, verdict)),
            }
        }
        // Acked together: one multiple ack when their tags are contiguous.
        self.finisher.ack_all(acked);
        futures::future::join_all(
            others
                .into_iter()
                .map(|(delivery, verdict)| self.finisher.finish(delivery, verdict)),
        )
        .await;
    }

    /// Writes until the sink takes the batch or refuses its data. An outage is waited out
    /// with capped backoff for as long as it lasts (the batch stays unacknowledged, and the
    /// full queues in front of this sink stop the worker taking new deliveries); only
    /// shutdown interrupts it, and then the batch returns to the queue.
    async fn write_with_retry(&self, batch: &[Prepared]) -> Outcome {
        let name = self.sink.name();
        let target = sink_target(name);
        let mut failures = 0u32;
        loop {
            let started = Instant::now();
            let error = match self.sink.write(batch).await {
                Ok(()) => {
                    self.outages.recovered(&target);
                    self.metrics
                        .sink_write(name, started.elapsed().as_secs_f64(), batch.len());
                    return Outcome::Written;
                }
                Err(SinkError::Rejected(message)) => {
                    // The sink answered: whatever it refused, it is up.
                    self.outages.recovered(&target);
                    self.metrics.sink_error(name, "rejected");
                    return Outcome::Rejected(message);
                }
                Err(SinkError::Unavailable(message)) => message,
            };
            failures = failures.saturating_add(1);
            self.metrics.sink_error(name, "unavailable");
            self.outages.failed(&target, &error);
            let delay = backoff(&self.retry, failures);
            tracing::warn!(sink = name, failures, error = %error, delay_ms = delay.as_millis() as u64, "sink unavailable; holding the batch and retrying");
            self.metrics.retried(name, batch.len() as u64);
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return Outcome::Interrupted,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max_messages: usize, max_bytes: usize) -> BatchConfig {
        BatchConfig {
            max_messages,
            max_bytes,
            max_age_ms: 100,
        }
    }

    #[test]
    fn batch_is_due_by_count() {
        let mut buffer = BatchBuffer::new(policy(3, 1 << 20));
        let now = Instant::now();
        assert!(!buffer.push(1, 10, now));
        assert!(!buffer.push(2, 10, now));
        assert!(buffer.push(3, 10, now));
        assert_eq!(buffer.take(), vec![1, 2, 3]);
        assert!(buffer.is_empty());
        assert_eq!(buffer.deadline(), None);
    }

    #[test]
    fn batch_is_due_by_bytes() {
        let mut buffer = BatchBuffer::new(policy(100, 25));
        let now = Instant::now();
        assert!(!buffer.push("a", 10, now));
        assert!(!buffer.push("b", 10, now));
        assert!(buffer.push("c", 10, now));
    }

    #[test]
    fn batch_age_counts_from_its_first_item() {
        let mut buffer = BatchBuffer::new(policy(100, 1 << 20));
        let first = Instant::now();
        buffer.push(1, 1, first);
        buffer.push(2, 1, first + Duration::from_millis(50));
        assert_eq!(buffer.deadline(), Some(first + Duration::from_millis(100)));
    }

    #[test]
    fn a_batch_is_at_most_a_quarter_of_the_prefetch_so_two_are_written_while_more_arrive() {
        let config = policy(1000, 1 << 20);
        assert_eq!(effective_batch(&config, 1000).max_messages, 250);
        assert_eq!(effective_batch(&config, 4000).max_messages, 1000);
        assert_eq!(effective_batch(&config, 2000).max_messages, 500);
        assert_eq!(effective_batch(&config, 1).max_messages, 1);
        assert_eq!(effective_batch(&policy(0, 10), 500).max_messages, 1);
        assert_eq!(effective_batch(&config, 1000).max_bytes, 1 << 20);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let retry = RetryConfig {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
        };
        let delays: Vec<u128> = (1..=4).map(|n| backoff(&retry, n).as_millis()).collect();
        assert_eq!(delays, vec![100, 200, 350, 350]);
        assert!(may_retry(&retry, 4));
        assert!(!may_retry(&retry, 5));
        let forever = RetryConfig {
            max_attempts: 0,
            ..retry
        };
        assert!(may_retry(&forever, 1_000_000));
    }
}
