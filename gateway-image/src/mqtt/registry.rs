//! Live MQTT sessions by (device, client id), so that a new connection with the same client
//! id takes over [MQTT-3.1.4-3]. Entries exist only while a session holds a connection
//! permit, so the map never outgrows `limits.maxConnections`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The registry of live sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    next: std::sync::atomic::AtomicU64,
    live: Mutex<HashMap<(String, String), (u64, CancellationToken)>>,
}

/// A session's place in the registry; leaving it (drop) removes the entry unless a newer
/// session has taken it over already.
#[derive(Debug)]
pub struct Registration {
    sessions: Arc<Sessions>,
    key: (String, String),
    id: u64,
    /// Cancelled when a newer connection with the same device and client id arrives.
    pub taken_over: CancellationToken,
}

impl Sessions {
    /// Registers a session; an older one with the same device and client id is told to
    /// close (its token is cancelled). Keyed by device too, so one device can never close
    /// another's session by reusing its client id.
    pub fn register(self: &Arc<Self>, device: &str, client_id: &str) -> Registration {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = (device.to_owned(), client_id.to_owned());
        let taken_over = CancellationToken::new();
        let older = self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key.clone(), (id, taken_over.clone()));
        if let Some((_, older)) = older {
            older.cancel();
        }
        Registration {
            sessions: Arc::clone(self),
            key,
            id,
            taken_over,
        }
    }

    /// Number of registered sessions.
    pub fn len(&self) -> usize {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    /// Whether no session is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut live = self
            .sessions
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if live.get(&self.key).is_some_and(|(id, _)| *id == self.id) {
            live.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_registration_takes_over_and_first_leaving_keeps_it() {
        let sessions = Arc::new(Sessions::default());
        let first = sessions.register("press-1", "c1");
        let other_device = sessions.register("press-2", "c1");
        assert!(!first.taken_over.is_cancelled());
        let second = sessions.register("press-1", "c1");
        assert!(first.taken_over.is_cancelled());
        assert!(!other_device.taken_over.is_cancelled());
        drop(first);
        assert_eq!(sessions.len(), 2, "the newer session stays registered");
        drop(second);
        drop(other_device);
        assert!(sessions.is_empty());
    }
}
