//! Places for MQTT connections not yet authenticated (PROXY header, TLS handshake,
//! CONNECT, password check): a cap across both MQTT listeners, and a smaller one per client
//! address, so that one address opening silent connections cannot take every place and
//! lock out the devices behind other addresses. A place is held at most until the
//! connection's deadlines pass, and given back when its CONNECT is answered.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Most MQTT connections (plain and TLS together) that may be waiting to be authenticated.
pub const MAX_UNAUTHENTICATED_CONNECTIONS: usize = 128;
/// Most of those that one client address may hold.
pub const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 16;

/// The places, shared by the MQTT listeners.
#[derive(Clone, Debug)]
pub struct Unauthenticated {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    total: Arc<Semaphore>,
    /// Places held per address; an entry exists only while it holds one, so the map never
    /// has more entries than there are places.
    by_address: Mutex<HashMap<IpAddr, usize>>,
    per_address: usize,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct Place {
    _total: OwnedSemaphorePermit,
    address: Option<IpAddr>,
    owner: Arc<Inner>,
}

impl Default for Unauthenticated {
    fn default() -> Self {
        Self::new(
            MAX_UNAUTHENTICATED_CONNECTIONS,
            MAX_UNAUTHENTICATED_PER_ADDRESS,
        )
    }
}

impl Unauthenticated {
    /// `total` places, at most `per_address` of them for one client address.
    pub fn new(total: usize, per_address: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                total: Arc::new(Semaphore::new(total)),
                by_address: Mutex::new(HashMap::new()),
                per_address,
            }),
        }
    }

    /// A place for a connection just accepted, or `None` when all are taken.
    pub fn take(&self) -> Option<Place> {
        let permit = Arc::clone(&self.inner.total).try_acquire_owned().ok()?;
        Some(Place {
            _total: permit,
            address: None,
            owner: Arc::clone(&self.inner),
        })
    }

    /// Places `address` holds now.
    pub fn held_by(&self, address: IpAddr) -> usize {
        let map = self
            .inner
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.get(&address).copied().unwrap_or(0)
    }
}

impl Place {
    /// Counts this place against the client's `address` (known once a PROXY header, if any,
    /// is read); `false` when that address already holds its share, and the connection is
    /// to be closed.
    pub fn claim_address(&mut self, address: IpAddr) -> bool {
        if self.address.is_some() {
            return true;
        }
        let mut map = self
            .owner
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let held = map.entry(address).or_insert(0);
        if *held >= self.owner.per_address {
            if *held == 0 {
                map.remove(&address);
            }
            return false;
        }
        *held += 1;
        self.address = Some(address);
        true
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let Some(address) = self.address else {
            return;
        };
        let mut map = self
            .owner
            .by_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(held) = map.get_mut(&address) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                map.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn one_address_gets_its_share_and_others_still_get_places() {
        let places = Unauthenticated::new(8, 3);
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut place = places.take().expect("a place");
            assert!(place.claim_address(ip(1)));
            held.push(place);
        }
        let mut fourth = places.take().expect("a place is free");
        assert!(!fourth.claim_address(ip(1)), "past the address's share");
        drop(fourth);
        let mut other = places.take().expect("a place");
        assert!(
            other.claim_address(ip(2)),
            "another address is not locked out"
        );
        assert_eq!(places.held_by(ip(1)), 3);
    }

    #[test]
    fn places_come_back_when_dropped_and_the_map_empties() {
        let places = Unauthenticated::new(2, 2);
        let mut a = places.take().expect("a place");
        let b = places.take().expect("a place");
        assert!(places.take().is_none(), "all taken");
        assert!(a.claim_address(ip(1)));
        drop(a);
        drop(b);
        assert_eq!(places.held_by(ip(1)), 0);
        assert!(places.inner.by_address.lock().expect("lock").is_empty());
        assert!(places.take().is_some());
    }
}
