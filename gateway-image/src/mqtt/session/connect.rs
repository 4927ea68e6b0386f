//! CONNECT: client id and user name checks, authentication, the connection permit, the
//! session registry (client-id takeover) and the CONNACK.

use std::sync::Arc;

use super::{granted_keep_alive, max_packet_size, Session};
use crate::auth::{looks_like_jwt, AuthError, Credentials};
use crate::metrics::ProtocolLabel;
use crate::mqtt::codec::Connect;
use crate::mqtt::encode::{self, ConnectRefusal, ServerLimits};
use crate::mqtt::registry::Registration;
use crate::topics::is_safe_identity;
use tokio::io::{AsyncRead, AsyncWrite};

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Session<R, W> {
    /// Validates and authenticates a CONNECT; on success sends CONNACK and returns the
    /// connection-limit permit and the session's registration (client-id takeover), both
    /// held for the session's lifetime.
    pub(super) async fn accept(
        &mut self,
        connect: &Connect,
        certificate_device: Option<String>,
        deadline: tokio::time::Instant,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, Option<Registration>), ConnectRefusal> {
        let gateway = Arc::clone(&self.gateway);
        if connect.properties.auth_method.is_some() {
            return Err(ConnectRefusal::BadAuthMethod);
        }
        let id_ok = connect.client_id.is_empty() || is_safe_identity(&connect.client_id);
        let username_ok = connect.username.as_deref().is_none_or(is_safe_identity);
        if !id_ok
            || !username_ok
            || (connect.client_id.is_empty() && !connect.clean_start && !self.v5)
        {
            return Err(ConnectRefusal::IdentifierRejected);
        }
        let credentials = match (certificate_device, &connect.username, &connect.password) {
            (Some(device), _, _) => Credentials::Certificate(device),
            (None, _, Some(password)) if gateway.auth.jwt_enabled() && looks_like_jwt(password) => {
                Credentials::Token(String::from_utf8_lossy(password).into_owned())
            }
            (None, Some(username), password) => Credentials::Password {
                device: username.clone(),
                password: password.as_deref().unwrap_or_default().to_vec(),
            },
            (None, None, _) => Credentials::None,
        };
        let method = credentials.method();
        let authenticated = gateway
            .auth
            .authenticate_by(self.peer.ip(), credentials, deadline)
            .await;
        match authenticated {
            Ok(device) => self.device = device,
            Err(AuthError::Denied) => {
                gateway.metrics.auth_failure(ProtocolLabel::Mqtt, method);
                return Err(ConnectRefusal::BadCredentials);
            }
            // Not a verdict on the credentials: "unavailable" makes devices retry later
            // rather than give up on a password that may well be right.
            Err(AuthError::Throttled | AuthError::Busy) => {
                gateway.metrics.auth_failure(ProtocolLabel::Mqtt, method);
                return Err(ConnectRefusal::ServerUnavailable);
            }
        }
        if gateway.draining.is_cancelled() || !gateway.broker.is_connected() {
            return Err(ConnectRefusal::ServerUnavailable);
        }
        let permit = Arc::clone(&gateway.connections)
            .try_acquire_owned()
            .map_err(|_| ConnectRefusal::ServerUnavailable)?;
        let limits = ServerLimits {
            receive_maximum: gateway.limits.max_in_flight_per_connection.max(1),
            maximum_packet_size: u32::try_from(max_packet_size(&gateway)).unwrap_or(u32::MAX),
            assigned_client_id: (self.v5 && connect.client_id.is_empty())
                .then(|| ulid::Ulid::generate().to_string()),
            server_keep_alive: {
                let granted =
                    granted_keep_alive(connect.keep_alive, gateway.limits.max_keep_alive_seconds);
                (granted != connect.keep_alive).then_some(granted)
            },
        };
        // An empty client id names no session (3.1.1) or gets a fresh unique one (5).
        let registration = (!connect.client_id.is_empty()).then(|| {
            let registration = gateway.sessions.register(&self.device, &connect.client_id);
            self.taken_over = registration.taken_over.clone();
            registration
        });
        encode::connack_accepted(&mut self.out, self.v5, &limits);
        Ok((permit, registration))
    }
}
