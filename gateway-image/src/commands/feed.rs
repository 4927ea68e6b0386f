//! One consumer of a device's command queue: the deliveries it holds unacknowledged, and
//! its release when the session ends (every held command goes back to the queue, in its
//! place, for the device's next session).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicNackOptions};
use lapin::{Acker, Channel, Consumer};

use super::message::{Command, InvalidCommand};
use crate::metrics::CommandMetrics;
use crate::registry::now_ms;

/// Longest wait for the broker while releasing a consumer.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// One delivery from the device's queue.
#[derive(Debug)]
pub struct Incoming {
    /// Its delivery tag, to acknowledge it.
    pub tag: u64,
    /// The broker delivered it before (to this or an earlier session).
    pub redelivered: bool,
    /// The command, or why the message is none.
    pub command: Result<Command, InvalidCommand>,
}

/// A consumer of one device's queue.
pub struct Feed {
    consumer: Consumer,
    channel: Channel,
    tag: String,
    unacked: BTreeMap<u64, Acker>,
    metrics: CommandMetrics,
    protocol: &'static str,
    prefetch: u16,
}

impl Feed {
    /// Wraps a started consumer (counted in the consumers gauge while it lives).
    pub(super) fn new(
        consumer: Consumer,
        channel: Channel,
        tag: String,
        metrics: CommandMetrics,
        protocol: &'static str,
        prefetch: u16,
    ) -> Self {
        metrics.consumers.inc();
        Self {
            consumer,
            channel,
            tag,
            unacked: BTreeMap::new(),
            metrics,
            protocol,
            prefetch,
        }
    }

    /// The most deliveries the broker hands this consumer unacknowledged.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// The next delivery, in queue order; `None` once the consumer ended (connection or
    /// channel lost, queue deleted). Cancel-safe.
    pub async fn next(&mut self) -> Option<Incoming> {
        match self.consumer.next().await {
            Some(Ok(delivery)) => {
                self.unacked
                    .insert(delivery.delivery_tag, delivery.acker.clone());
                let command =
                    Command::parse(&delivery.properties, Bytes::from(delivery.data), now_ms());
                Some(Incoming {
                    tag: delivery.delivery_tag,
                    redelivered: delivery.redelivered,
                    command,
                })
            }
            Some(Err(error)) => {
                tracing::debug!(%error, consumer = %self.tag, "command consumer ended");
                None
            }
            None => None,
        }
    }

    /// Acknowledges a command the device took.
    pub async fn acknowledge(&mut self, tag: u64) {
        if self.settle(tag).await {
            self.metrics.acknowledged(self.protocol).inc();
        }
    }

    /// Acknowledges a command that cannot be delivered (counted by the caller), so it does
    /// not come back.
    pub async fn discard(&mut self, tag: u64) {
        self.settle(tag).await;
    }

    async fn settle(&mut self, tag: u64) -> bool {
        let Some(acker) = self.unacked.remove(&tag) else {
            return false;
        };
        match acker.ack(BasicAckOptions::default()).await {
            Ok(done) => done,
            Err(error) => {
                tracing::debug!(%error, consumer = %self.tag, "command ack failed");
                false
            }
        }
    }

    /// Stops consuming, then returns every command it holds to the queue (requeued in their
    /// places, redelivered flagged), so the device's next consumer gets them in order.
    /// Cancelling first keeps the broker from handing the returned commands straight back.
    pub async fn release(mut self) {
        let cancel = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        if tokio::time::timeout(RELEASE_TIMEOUT, cancel).await.is_ok() {
            // Deliveries that arrived before the cancel took effect.
            while let Ok(Some(Ok(delivery))) =
                tokio::time::timeout(RELEASE_TIMEOUT, self.consumer.next()).await
            {
                self.unacked.insert(delivery.delivery_tag, delivery.acker);
            }
        }
        requeue(std::mem::take(&mut self.unacked)).await;
    }
}

/// Returns held commands to their queue (a closed channel returned them already).
async fn requeue(unacked: BTreeMap<u64, Acker>) {
    let options = BasicNackOptions {
        multiple: false,
        requeue: true,
    };
    for acker in unacked.into_values() {
        let _ = acker.nack(options).await;
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.metrics.consumers.dec();
        // Dropped without `release` (a task cancelled): what it held must not stay
        // unacknowledged on the shared channel.
        let unacked = std::mem::take(&mut self.unacked);
        if unacked.is_empty() {
            return;
        }
        let (channel, tag) = (self.channel.clone(), self.tag.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let cancel =
                    channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default());
                let _ = tokio::time::timeout(RELEASE_TIMEOUT, cancel).await;
                requeue(unacked).await;
            });
        }
    }
}
