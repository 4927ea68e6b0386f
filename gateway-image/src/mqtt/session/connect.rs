//! CONNECT: client id, user name and MQTT 5 will checks, authentication, the connection
//! permit, the session registry (client-id takeover, per-device cap) and the CONNACK.

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
    /// connection-limit permit and the session's registration (client-id takeover and the
    /// per-device cap), both held for the session's lifetime.
    pub(super) async fn accept(
        &mut self,
        connect: &Connect,
        certificate_device: Option<crate::tls::PeerCertificate>,
        deadline: tokio::time::Instant,
    ) -> Result<(tokio::sync::OwnedSemaphorePermit, Registration), ConnectRefusal> {
        let gateway = Arc::clone(&self.gateway);
        check_connect(connect)?;
        let table_before = gateway.registry.as_ref().map(|registry| registry.current());
        self.device = self
            .authenticate(connect, certificate_device, deadline)
            .await?;
        if gateway.draining.is_cancelled() || !gateway.broker.is_connected() {
            return Err(ConnectRefusal::ServerUnavailable);
        }
        let permit = Arc::clone(&gateway.connections)
            .try_acquire_owned()
            .map_err(|_| ConnectRefusal::ServerUnavailable)?;
        // An empty client id gets a fresh unique one in MQTT 5 (a reconnect with it takes
        // over) and names no session in 3.1.1; both count towards the device's cap.
        let assigned_client_id =
            (self.v5 && connect.client_id.is_empty()).then(|| ulid::Ulid::generate().to_string());
        let client_id = assigned_client_id
            .as_deref()
            .or((!connect.client_id.is_empty()).then_some(connect.client_id.as_str()));
        let registration = gateway
            .sessions
            .register(
                &self.device,
                client_id,
                gateway.limits.max_connections_per_device.max(1),
            )
            .map_err(|_| ConnectRefusal::QuotaExceeded)?;
        // A table applied during the login revoked the sessions registered by then.
        if let (Some(registry), Some(before)) = (&gateway.registry, &table_before) {
            if registry.revoked_since(before, &self.device) {
                return Err(ConnectRefusal::BadCredentials);
            }
        }
        self.taken_over = registration.taken_over.clone();
        self.revoked = registration.revoked.clone();
        let session_present = self
            .open_commands(connect, registration.predecessor.clone())
            .await;
        let limits = ServerLimits {
            receive_maximum: gateway.limits.max_in_flight_per_connection.max(1),
            maximum_packet_size: u32::try_from(max_packet_size(&gateway)).unwrap_or(u32::MAX),
            assigned_client_id,
            server_keep_alive: {
                let granted =
                    granted_keep_alive(connect.keep_alive, gateway.limits.max_keep_alive_seconds);
                (granted != connect.keep_alive).then_some(granted)
            },
            session_present,
            session_expiry_interval: self.granted_session_expiry(connect),
            wildcard_subscriptions: gateway.commands.enabled(),
        };
        encode::connack_accepted(&mut self.out, self.v5, &limits);
        Ok((permit, registration))
    }

    /// Authenticates the device by certificate, token or password; returns its id.
    async fn authenticate(
        &self,
        connect: &Connect,
        certificate_device: Option<crate::tls::PeerCertificate>,
        deadline: tokio::time::Instant,
    ) -> Result<String, ConnectRefusal> {
        let gateway = &self.gateway;
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
            Ok(device) => Ok(device),
            Err(AuthError::Denied) => {
                gateway.metrics.auth_failure(ProtocolLabel::Mqtt, method);
                Err(ConnectRefusal::BadCredentials)
            }
            // Not a verdict on the credentials: "unavailable" makes devices retry later
            // rather than give up on a password that may well be right.
            Err(AuthError::Throttled | AuthError::Busy) => {
                gateway.metrics.auth_failure(ProtocolLabel::Mqtt, method);
                Err(ConnectRefusal::ServerUnavailable)
            }
        }
    }
}

/// What can be refused before authentication: enhanced authentication, client id and user
/// name, and an MQTT 5 will the gateway cannot honour.
fn check_connect(connect: &Connect) -> Result<(), ConnectRefusal> {
    if connect.properties.auth_method.is_some() {
        return Err(ConnectRefusal::BadAuthMethod);
    }
    let id_ok = connect.client_id.is_empty() || is_safe_identity(&connect.client_id);
    let username_ok = connect.username.as_deref().is_none_or(is_safe_identity);
    if !id_ok
        || !username_ok
        || (connect.client_id.is_empty() && !connect.clean_start && !connect.v5)
    {
        return Err(ConnectRefusal::IdentifierRejected);
    }
    if let Some(will) = connect.will.as_ref().filter(|_| connect.v5) {
        // [MQTT-3.2.2-13]: the CONNACK said Retain Available 0. (3.1.1 has no such
        // refusal: its will's retain flag is ignored, as on its PUBLISH.)
        if will.retain {
            return Err(ConnectRefusal::RetainNotSupported);
        }
        if will.properties.payload_format_invalid(&will.payload) {
            return Err(ConnectRefusal::PayloadFormatInvalid);
        }
    }
    Ok(())
}
