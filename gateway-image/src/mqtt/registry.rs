//! Live MQTT sessions by device and client id, so that a new connection with the same client
//! id takes over [MQTT-3.1.4-3], and so that one device holds at most
//! `limits.maxConnectionsPerDevice` connections. Entries exist only while a session holds a
//! connection permit, so the map never outgrows `limits.maxConnections`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio_util::sync::CancellationToken;

/// A session's client: named by its client id (which a newer connection can take over),
/// or anonymous (an empty MQTT 3.1.1 client id: nobody can take it over).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Client {
    Named(String),
    Anonymous(u64),
}

/// One live session: its registration id, takeover, revocation and release tokens.
#[derive(Debug)]
struct Entry {
    id: u64,
    taken_over: CancellationToken,
    revoked: CancellationToken,
    released: CancellationToken,
}

/// Device → its sessions (client → entry).
type Live = HashMap<String, HashMap<Client, Entry>>;

/// The registry of live sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<Live>,
}

/// The device already holds as many connections as it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the device holds its maximum of connections")]
pub struct QuotaExceeded;

/// A session's place in the registry; leaving it (drop) removes the entry unless a newer
/// session has taken it over already.
#[derive(Debug)]
pub struct Registration {
    sessions: Arc<Sessions>,
    device: String,
    client: Client,
    id: u64,
    /// Cancelled when a newer connection with the same device and client id arrives.
    pub taken_over: CancellationToken,
    /// Cancelled when the device may no longer connect (disabled or removed from the
    /// device table).
    pub revoked: CancellationToken,
    /// Cancelled by this session once it let go of its device's commands (at the latest
    /// when the registration is dropped): a session taking it over waits for it.
    pub released: CancellationToken,
    /// The `released` token of the session this one took over, if any.
    pub predecessor: Option<CancellationToken>,
}

impl Sessions {
    /// Registers a session of `device` with `client_id` (`None`: an anonymous client). An
    /// older session with the same device and client id is told to close (its token is
    /// cancelled) and the new one takes its place, even when the device is at
    /// `max_per_device`; otherwise a device at `max_per_device` sessions is refused. Keyed
    /// by device too, so one device can never close another's session by reusing its
    /// client id.
    pub fn register(
        self: &Arc<Self>,
        device: &str,
        client_id: Option<&str>,
        max_per_device: usize,
    ) -> Result<Registration, QuotaExceeded> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let client = match client_id {
            Some(client_id) => Client::Named(client_id.to_owned()),
            None => Client::Anonymous(id),
        };
        let taken_over = CancellationToken::new();
        let revoked = CancellationToken::new();
        let released = CancellationToken::new();
        let mut live = self.lock();
        let sessions = live.entry(device.to_owned()).or_default();
        if !sessions.contains_key(&client) && sessions.len() >= max_per_device {
            if sessions.is_empty() {
                live.remove(device);
            }
            return Err(QuotaExceeded);
        }
        let entry = Entry {
            id,
            taken_over: taken_over.clone(),
            revoked: revoked.clone(),
            released: released.clone(),
        };
        let predecessor = sessions.insert(client.clone(), entry).map(|older| {
            older.taken_over.cancel();
            older.released
        });
        drop(live);
        Ok(Registration {
            sessions: Arc::clone(self),
            device: device.to_owned(),
            client,
            id,
            taken_over,
            revoked,
            released,
            predecessor,
        })
    }

    /// Tells every live session of `device` to close (its revocation token); returns how
    /// many there were. Other devices' sessions are not touched.
    pub fn revoke(&self, device: &str) -> usize {
        let live = self.lock();
        let Some(sessions) = live.get(device) else {
            return 0;
        };
        for entry in sessions.values() {
            entry.revoked.cancel();
        }
        sessions.len()
    }

    /// Live sessions of `device`.
    pub fn count(&self, device: &str) -> usize {
        self.lock().get(device).map_or(0, HashMap::len)
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.lock().values().map(HashMap::len).sum()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.released.cancel();
        let mut live = self.sessions.lock();
        let Some(sessions) = live.get_mut(&self.device) else {
            return;
        };
        if sessions
            .get(&self.client)
            .is_some_and(|entry| entry.id == self.id)
        {
            sessions.remove(&self.client);
        }
        if sessions.is_empty() {
            live.remove(&self.device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_registration_takes_over_and_first_leaving_keeps_it() {
        let sessions = Arc::new(Sessions::default());
        let first = sessions.register("press-1", Some("c1"), 4).expect("room");
        let other_device = sessions.register("press-2", Some("c1"), 4).expect("room");
        assert!(!first.taken_over.is_cancelled());
        let second = sessions.register("press-1", Some("c1"), 4).expect("room");
        assert!(first.taken_over.is_cancelled());
        assert!(!other_device.taken_over.is_cancelled());
        let waits_for = second.predecessor.clone().expect("took over");
        assert!(!waits_for.is_cancelled());
        first.released.cancel();
        assert!(
            waits_for.is_cancelled(),
            "the newer session learns of the release"
        );
        assert!(other_device.predecessor.is_none());
        drop(first);
        assert_eq!(sessions.len(), 2, "the newer session stays registered");
        drop(second);
        drop(other_device);
        assert!(sessions.is_empty());
    }

    #[test]
    fn a_device_at_its_cap_is_refused_but_can_still_take_over_its_own_session() {
        let sessions = Arc::new(Sessions::default());
        let first = sessions.register("press-1", Some("c1"), 2).expect("room");
        let anonymous = sessions.register("press-1", None, 2).expect("room");
        assert_eq!(
            sessions.register("press-1", Some("c2"), 2).err(),
            Some(QuotaExceeded)
        );
        assert_eq!(
            sessions.register("press-1", None, 2).err(),
            Some(QuotaExceeded)
        );
        let other_device = sessions.register("press-2", Some("c2"), 2);
        assert!(other_device.is_ok(), "the cap is per device");
        let takeover = sessions
            .register("press-1", Some("c1"), 2)
            .expect("takeover");
        assert!(first.taken_over.is_cancelled());
        assert!(!anonymous.taken_over.is_cancelled());
        drop(first);
        assert_eq!(
            sessions.register("press-1", Some("c3"), 2).err(),
            Some(QuotaExceeded)
        );
        drop(anonymous);
        let third = sessions.register("press-1", Some("c3"), 2);
        assert!(
            third.is_ok(),
            "a slot freed by a closed session is free again"
        );
        drop((takeover, third, other_device));
        assert!(sessions.is_empty());
    }

    #[test]
    fn revoking_a_device_cancels_all_its_sessions_and_nobody_elses() {
        let sessions = Arc::new(Sessions::default());
        let first = sessions.register("press-1", Some("c1"), 4).expect("room");
        let second = sessions.register("press-1", None, 4).expect("room");
        let other = sessions.register("press-2", Some("c1"), 4).expect("room");
        assert_eq!(sessions.count("press-1"), 2);
        assert_eq!(sessions.revoke("press-1"), 2);
        assert!(first.revoked.is_cancelled() && second.revoked.is_cancelled());
        assert!(!first.taken_over.is_cancelled());
        assert!(!other.revoked.is_cancelled());
        assert_eq!(sessions.revoke("nobody"), 0);
        drop((first, second));
        assert_eq!(sessions.count("press-1"), 0);
        assert_eq!(sessions.count("press-2"), 1);
    }
}
