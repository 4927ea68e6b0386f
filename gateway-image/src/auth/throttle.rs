//! Failed-login throttling that slows attackers without refusing the innocent.
//!
//! Failures are counted per source address and per device id. An address over its
//! allowance only makes its checks wait a little (devices behind one NAT share it, and a
//! correct password from there must still get in). A device id over its allowance gets its
//! password checks spaced out with growing gaps, which bounds how fast anyone can guess
//! that device's password however many connections they open.
//!
//! Every attempt counts as a failure the moment it is admitted, before the slow check runs,
//! and a success takes its own count back: parallel bad logins cannot all slip through
//! before the first failure is recorded. Both maps are bounded (oldest entry evicted), and
//! device ids are kept as keyed hashes, so neither many ids nor long ids grow memory.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Most addresses and most device ids tracked at once.
pub(crate) const MAX_TRACKED: usize = 10_000;
/// Longest wait an address's failures add to a check.
pub(crate) const ADDRESS_MAX_DELAY: Duration = Duration::from_millis(500);
/// Wait added per failure over the address's allowance.
const ADDRESS_STEP: Duration = Duration::from_millis(20);
const ADDRESS_WINDOW: Duration = Duration::from_secs(60);
/// Failures per device id (in `IDENTITY_WINDOW`) checked without spacing.
pub(crate) const IDENTITY_FREE_FAILURES: u32 = 5;
const IDENTITY_WINDOW: Duration = Duration::from_secs(600);
/// The first gap between checks of a device id over its allowance; it doubles with each
/// further failure up to `IDENTITY_MAX_GAP`.
const IDENTITY_FIRST_GAP: Duration = Duration::from_millis(100);
pub(crate) const IDENTITY_MAX_GAP: Duration = Duration::from_secs(2);

/// A device id's checks are booked out past the caller's deadline.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Throttled;

/// An admitted attempt: how long to wait before checking, and what to take back on success.
#[derive(Debug)]
pub(crate) struct Admission {
    /// Wait this long before running the check.
    pub(crate) wait: Duration,
    source: IpAddr,
    identity: Option<u64>,
}

#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

impl Window {
    fn current(&mut self, now: Instant, length: Duration) -> &mut u32 {
        if now.duration_since(self.start) >= length {
            *self = Window {
                start: now,
                failures: 0,
            };
        }
        &mut self.failures
    }
}

struct Identity {
    window: Window,
    /// The earliest a further check of this id may start.
    next_check: Instant,
}

/// Failure counts per address and per device id.
pub(crate) struct Throttle {
    address_allowance: u32,
    addresses: Mutex<Bounded<IpAddr, Window>>,
    identities: Mutex<Bounded<u64, Identity>>,
    keys: RandomState,
}

impl Throttle {
    /// `address_allowance` failures per address per minute before its checks wait.
    pub(crate) fn new(address_allowance: u32) -> Self {
        Self {
            address_allowance,
            addresses: Mutex::new(Bounded::new(MAX_TRACKED)),
            identities: Mutex::new(Bounded::new(MAX_TRACKED)),
            keys: RandomState::new(),
        }
    }

    /// Admits an attempt from `source` (for device `identity`, when the method names one
    /// before checking), counting it as a failure now. `Throttled` when the id's next free
    /// check would start at or after `deadline`; that refusal counts as a failure too.
    pub(crate) fn admit(
        &self,
        source: IpAddr,
        identity: Option<&str>,
        deadline: Instant,
    ) -> Result<Admission, Throttled> {
        let now = Instant::now();
        let address_wait = {
            let mut addresses = self
                .addresses
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let window = addresses.entry(source, || Window {
                start: now,
                failures: 0,
            });
            let failures = window.current(now, ADDRESS_WINDOW);
            let over = failures.saturating_sub(self.address_allowance);
            *failures = failures.saturating_add(1);
            ADDRESS_STEP.saturating_mul(over).min(ADDRESS_MAX_DELAY)
        };
        let key = identity.map(|id| self.keys.hash_one(id));
        let mut wait = address_wait;
        if let Some(key) = key {
            let mut identities = self
                .identities
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let entry = identities.entry(key, || Identity {
                window: Window {
                    start: now,
                    failures: 0,
                },
                next_check: now,
            });
            let failures = entry.window.current(now, IDENTITY_WINDOW);
            let over = failures.checked_sub(IDENTITY_FREE_FAILURES);
            *failures = failures.saturating_add(1);
            if let Some(over) = over {
                let start = entry.next_check.max(now);
                if start >= deadline {
                    return Err(Throttled);
                }
                let gap = IDENTITY_FIRST_GAP
                    .saturating_mul(1 << over.min(16))
                    .min(IDENTITY_MAX_GAP);
                entry.next_check = start + gap;
                wait = wait.max(start - now);
            }
        }
        Ok(Admission {
            wait,
            source,
            identity: key,
        })
    }

    /// Takes back the failure `admission` counted: the credentials were good.
    pub(crate) fn succeeded(&self, admission: &Admission) {
        let now = Instant::now();
        {
            let mut addresses = self
                .addresses
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(window) = addresses.get_mut(&admission.source) {
                let failures = window.current(now, ADDRESS_WINDOW);
                *failures = failures.saturating_sub(1);
            }
        }
        if let Some(key) = admission.identity {
            let mut identities = self
                .identities
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(entry) = identities.get_mut(&key) {
                let failures = entry.window.current(now, IDENTITY_WINDOW);
                *failures = failures.saturating_sub(1);
            }
        }
    }

    /// Failures counted for `identity` in its current window.
    pub(crate) fn identity_failures(&self, identity: &str) -> u32 {
        let key = self.keys.hash_one(identity);
        let identities = self
            .identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        identities.get(&key).map_or(0, |entry| {
            if entry.window.start.elapsed() < IDENTITY_WINDOW {
                entry.window.failures
            } else {
                0
            }
        })
    }

    /// Failures counted for the address `source` in its current window.
    pub(crate) fn address_failures(&self, source: IpAddr) -> u32 {
        let addresses = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        addresses.get(&source).map_or(0, |window| {
            if window.start.elapsed() < ADDRESS_WINDOW {
                window.failures
            } else {
                0
            }
        })
    }

    /// (addresses, device ids) tracked now.
    pub(crate) fn tracked(&self) -> (usize, usize) {
        let addresses = self
            .addresses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let identities = self
            .identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (addresses.len(), identities.len())
    }
}

/// A map holding at most `capacity` entries; inserting beyond evicts the oldest insert.
struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Hash + Eq + Copy, V> Bounded<K, V> {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn entry(&mut self, key: K, fresh: impl FnOnce() -> V) -> &mut V {
        if !self.map.contains_key(&key) {
            while self.map.len() >= self.capacity {
                match self.order.pop_front() {
                    Some(oldest) => self.map.remove(&oldest),
                    None => break,
                };
            }
            self.order.push_back(key);
        }
        self.map.entry(key).or_insert_with(fresh)
    }

    fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key)
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}
