//! Broker users through the management API: a workload's user with its password and its
//! permissions on one vhost, created or repaired idempotently, and removed.
//!
//! Passwords are sent in request bodies only, never logged nor put into errors.

use super::management::{encode_segment, send, HttpClient, Management};
use super::BrokerError;
use crate::build::queue::access::Permissions;
use http::{Method, StatusCode};

/// A workload's user on a broker (the password inside: never log it).
#[derive(Clone)]
pub struct BrokerUser<'a> {
    /// User name.
    pub name: &'a str,
    /// Password.
    pub password: &'a str,
    /// Vhost the permissions are on.
    pub vhost: &'a str,
    /// The permissions.
    pub permissions: &'a Permissions,
}

impl std::fmt::Debug for BrokerUser<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerUser")
            .field("name", &self.name)
            .field("vhost", &self.vhost)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

/// Whether a management answer succeeded; otherwise an error naming the call (never the
/// body of the request).
fn succeeded(what: &str, status: StatusCode) -> Result<(), BrokerError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(BrokerError::Management(format!("{what}: HTTP {status}")))
    }
}

/// Creates the user, or sets its password and clears its tags (no management or
/// administrator rights), then sets its permissions on the vhost (replacing any others
/// there). Both PUTs are idempotent: the same password and permissions leave the broker
/// as it was, and repair a user deleted or changed by hand.
pub async fn ensure(
    http: &HttpClient,
    management: &Management,
    user: &BrokerUser<'_>,
) -> Result<(), BrokerError> {
    let name = encode_segment(user.name);
    let path = format!("/api/users/{name}");
    let body = serde_json::json!({ "password": user.password, "tags": "" });
    let (status, _) = send(http, management, Method::PUT, &path, Some(&body)).await?;
    succeeded(&format!("PUT /api/users/{name}"), status)?;
    let path = format!("/api/permissions/{}/{name}", encode_segment(user.vhost));
    let body = serde_json::to_value(user.permissions)
        .map_err(|error| BrokerError::Management(error.to_string()))?;
    let (status, _) = send(http, management, Method::PUT, &path, Some(&body)).await?;
    succeeded(&format!("PUT {path}"), status)
}

/// Deletes the user (and with it its permissions and connections' right to reconnect); a
/// user that does not exist counts as deleted.
pub async fn delete(
    http: &HttpClient,
    management: &Management,
    name: &str,
) -> Result<(), BrokerError> {
    let path = format!("/api/users/{}", encode_segment(name));
    let (status, _) = send(http, management, Method::DELETE, &path, None).await?;
    if status == StatusCode::NOT_FOUND {
        return Ok(());
    }
    succeeded(&format!("DELETE {path}"), status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::queue::access::gateway_permissions;

    #[test]
    fn a_broker_user_never_shows_its_password() {
        let permissions = gateway_permissions("factory", true);
        let user = BrokerUser {
            name: "gateway.factory.line-1",
            password: "s3cret",
            vhost: "/",
            permissions: &permissions,
        };
        let shown = format!("{user:?}");
        assert!(shown.contains("gateway.factory.line-1"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn a_failed_call_names_the_call_and_its_status() {
        let error = succeeded("PUT /api/users/u", StatusCode::FORBIDDEN).expect_err("fails");
        assert_eq!(
            error.to_string(),
            "management API: PUT /api/users/u: HTTP 403 Forbidden"
        );
        assert!(succeeded("x", StatusCode::NO_CONTENT).is_ok());
    }
}
