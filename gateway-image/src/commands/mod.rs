//! Commands to devices: from the tenant's command exchange through each device's queue to
//! its MQTT session or HTTP long poll, and the device's responses back to the sender.
//!
//! [`Commands`] is the gateway-wide part: the connection for commands ([`link`]), the
//! topology it declares ([`topology`]), consumers of device queues ([`feed`]), the
//! requests awaiting responses ([`pending`], [`response`]), expired commands
//! ([`expired`]) and the HTTP endpoints ([`http`]). What a session subscribes to is
//! [`filter`]; what a device receives of a command is [`message`]. The MQTT side lives in
//! `mqtt/session/commands.rs` and `mqtt/session/deliver.rs`.

pub mod expired;
pub mod feed;
pub mod filter;
pub mod http;
pub mod link;
pub mod message;
pub mod pending;
pub mod response;
pub mod topology;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use lapin::Channel;
use tokio_util::sync::CancellationToken;
use tributary_contract::command::{device_queue, CommandsConfig};
use tributary_contract::gateway_config::GatewayConfig;

use self::feed::Feed;
use self::filter::{Refusal, Templates};
use self::link::{Link, Linked, OPERATION_TIMEOUT};
use self::message::Command;
use self::pending::PendingResponses;
use self::topology::{BrokerError, NOT_FOUND, PRECONDITION_FAILED};
use crate::metrics::Metrics;
use crate::registry::{now_ms, Registry};
use crate::topics::TopicError;

/// The gateway's command service; one per process.
pub struct Commands {
    config: CommandsConfig,
    tenant: String,
    templates: Templates,
    /// `None` when commands are disabled: nothing is declared or consumed.
    link: Option<Link>,
    pending: Mutex<PendingResponses>,
    metrics: Arc<Metrics>,
    polls: http::Polls,
    /// A device queue declared elsewhere with other limits was reported once.
    mismatch_reported: AtomicBool,
}

impl Commands {
    /// Checks the subscribe templates and, when commands are enabled, starts the commands
    /// connection (closed when `close` is cancelled; its task is returned).
    pub fn start(
        config: &GatewayConfig,
        metrics: Arc<Metrics>,
        registry: Option<Arc<Registry>>,
        close: CancellationToken,
    ) -> Result<(Arc<Self>, Option<tokio::task::JoinHandle<()>>), TopicError> {
        let commands = &config.commands;
        let templates = Templates::new(commands.subscribe.clone())?;
        let (link, task) = if commands.enabled {
            let on_connect =
                expired::on_connect(config.tenant.clone(), Arc::clone(&metrics), registry);
            let (link, task) = Link::start(
                config.broker.clone(),
                format!(
                    "tributary-gateway {}/{} commands",
                    config.tenant, config.gateway
                ),
                on_connect,
                close,
            );
            (Some(link), Some(task))
        } else {
            (None, None)
        };
        let service = Self {
            config: commands.clone(),
            tenant: config.tenant.clone(),
            templates,
            link,
            pending: Mutex::new(PendingResponses::new(commands.max_pending_responses)),
            metrics,
            polls: http::Polls::new(commands.max_long_polls),
            mismatch_reported: AtomicBool::new(false),
        };
        Ok((Arc::new(service), task))
    }

    /// Whether devices may receive commands.
    pub fn enabled(&self) -> bool {
        self.link.is_some()
    }

    /// The `commands` section.
    pub fn config(&self) -> &CommandsConfig {
        &self.config
    }

    /// Whether the commands connection is up.
    pub fn is_connected(&self) -> bool {
        self.link
            .as_ref()
            .is_some_and(|link| link.current().is_some())
    }

    /// Waits until the commands connection is up (false when disabled or past `deadline`).
    pub async fn wait_connected(&self, deadline: std::time::Duration) -> bool {
        match &self.link {
            Some(link) => link.wait_connected(deadline).await,
            None => false,
        }
    }

    /// The checks of one SUBSCRIBE filter that need no broker.
    pub fn check_filter(
        &self,
        device: &str,
        filter: &str,
        subscription_identifier: bool,
    ) -> Result<(), Refusal> {
        filter::check_filter(
            self.enabled(),
            &self.templates,
            device,
            filter,
            subscription_identifier,
        )
    }

    /// Declares `device`'s queue with the contract's arguments and binds it. A queue
    /// another gateway declared with other limits (406) is used as it is, reported once.
    pub async fn ensure_queue(&self, device: &str) -> Result<(), BrokerError> {
        let linked = self.linked()?;
        let limits = self.config.queue_limits();
        let tenant = self.tenant.clone();
        let (owned_tenant, owned_device) = (tenant.clone(), device.to_owned());
        let declared = self
            .on_declarer(&linked, device, move |channel| async move {
                topology::declare_device_queue(
                    &channel,
                    &owned_tenant,
                    &owned_device,
                    &limits,
                    false,
                )
                .await
            })
            .await;
        match declared {
            Err(BrokerError::Refused { code, message }) if code == PRECONDITION_FAILED => {
                if !self.mismatch_reported.swap(true, Ordering::Relaxed) {
                    tracing::warn!(queue = %device_queue(&tenant, device), %message, "a device command queue exists with other arguments (another gateway's limits); using it as it is");
                }
                let (owned_tenant, owned_device) = (tenant.clone(), device.to_owned());
                self.on_declarer(&linked, device, move |channel| async move {
                    let limits = Default::default();
                    topology::declare_device_queue(
                        &channel,
                        &owned_tenant,
                        &owned_device,
                        &limits,
                        true,
                    )
                    .await
                })
                .await?;
            }
            other => other?,
        }
        let owned_device = device.to_owned();
        self.on_declarer(&linked, device, move |channel| async move {
            topology::bind_device_queue(&channel, &tenant, &owned_device).await
        })
        .await
    }

    /// Whether `device`'s queue exists (a persistent session to resume).
    pub async fn queue_exists(&self, device: &str) -> Result<bool, BrokerError> {
        let linked = self.linked()?;
        let (tenant, owned) = (self.tenant.clone(), device.to_owned());
        let checked = self
            .on_declarer(&linked, device, move |channel| async move {
                let limits = Default::default();
                topology::declare_device_queue(&channel, &tenant, &owned, &limits, true).await
            })
            .await;
        match checked {
            Ok(()) => Ok(true),
            Err(error) if error.code() == Some(NOT_FOUND) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Deletes `device`'s queue (its session state) unless a consumer still uses it.
    pub async fn delete_queue(&self, device: &str) -> Result<(), BrokerError> {
        let linked = self.linked()?;
        let (tenant, owned) = (self.tenant.clone(), device.to_owned());
        let deleted = self
            .on_declarer(&linked, device, move |channel| async move {
                topology::delete_device_queue(&channel, &tenant, &owned).await
            })
            .await;
        match deleted {
            Err(error) if error.code() == Some(PRECONDITION_FAILED) => {
                tracing::debug!(device, "command queue in use elsewhere; kept");
                Ok(())
            }
            other => other,
        }
    }

    /// Starts consuming `device`'s queue with at most `prefetch` commands unacknowledged.
    pub async fn consume(
        &self,
        device: &str,
        prefetch: u16,
        protocol: &'static str,
    ) -> Result<Feed, BrokerError> {
        let linked = self.linked()?;
        let tag = format!("{device}.{}", ulid::Ulid::generate());
        let started = linked
            .consume(&device_queue(&self.tenant, device), &tag, prefetch)
            .await;
        let (channel, consumer) = started.inspect_err(|error| self.count_error(error))?;
        Ok(Feed::new(
            consumer,
            channel,
            tag,
            self.metrics.commands.clone(),
            protocol,
            prefetch,
        ))
    }

    /// Remembers a request delivered to `device`, so its response finds the sender.
    pub fn remember_request(&self, device: &str, command: &Command) {
        let Some(reply_to) = &command.reply_to else {
            return;
        };
        let now = now_ms();
        let expires = now.saturating_add(command.response_window_ms());
        let dropped = self
            .lock_pending()
            .insert(device, &command.id, reply_to, expires, now);
        if dropped > 0 {
            tracing::info!(
                dropped,
                max = self.config.max_pending_responses,
                "oldest pending command responses forgotten (maxPendingResponses)"
            );
        }
    }

    /// The prefetch of a consumer for a client taking `receive_maximum` unacknowledged
    /// messages: at most `maxInFlightPerDevice`, at least 1.
    pub fn prefetch(&self, receive_maximum: Option<u16>) -> u16 {
        self.config
            .max_in_flight_per_device
            .min(receive_maximum.unwrap_or(u16::MAX))
            .max(1)
    }

    fn linked(&self) -> Result<Arc<Linked>, BrokerError> {
        let linked = self
            .link
            .as_ref()
            .ok_or(BrokerError::Unavailable)
            .and_then(Link::linked);
        linked.inspect_err(|error| self.count_error(error))
    }

    /// Runs `op` on `device`'s declaration channel (serialized), within the operation
    /// timeout once its turn came.
    async fn on_declarer<F, Fut>(
        &self,
        linked: &Linked,
        device: &str,
        op: F,
    ) -> Result<(), BrokerError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: Future<Output = Result<(), lapin::Error>>,
    {
        let result = match linked.declarer(device).await {
            Ok((_guard, channel)) => tokio::time::timeout(OPERATION_TIMEOUT, op(channel))
                .await
                .map_or(Err(BrokerError::Unavailable), |done| {
                    done.map_err(BrokerError::from)
                }),
            Err(error) => Err(error),
        };
        result.inspect_err(|error| {
            if error.code() != Some(NOT_FOUND) && error.code() != Some(PRECONDITION_FAILED) {
                self.count_error(error);
            }
        })
    }

    fn count_error(&self, error: &BrokerError) {
        self.metrics
            .commands
            .broker_error(matches!(error, BrokerError::Refused { .. }));
    }

    fn lock_pending(&self) -> MutexGuard<'_, PendingResponses> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
