//! Requests delivered to devices and awaiting their response, gateway-wide: by device and
//! command id, the sender's reply-to. Bounded: an entry goes when its command's
//! time-to-live has passed, and past the maximum the oldest go first. Pure (the caller
//! passes the time).

use std::collections::{BTreeMap, HashMap};

/// One awaited response.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    reply_to: String,
    expires_at_ms: u64,
    sequence: u64,
}

/// The pending requests.
#[derive(Debug)]
pub struct PendingResponses {
    max: usize,
    entries: HashMap<(String, String), Entry>,
    /// Insertion order: sequence → key, oldest first.
    order: BTreeMap<u64, (String, String)>,
    next: u64,
}

impl PendingResponses {
    /// At most `max` requests (at least one).
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next: 0,
        }
    }

    /// Remembers that `device` got request `id`, answered to `reply_to`, until
    /// `expires_at_ms`. The same request delivered again replaces its entry. Returns how
    /// many older entries were dropped to stay within the maximum.
    pub fn insert(
        &mut self,
        device: &str,
        id: &str,
        reply_to: &str,
        expires_at_ms: u64,
        now_ms: u64,
    ) -> usize {
        let key = (device.to_owned(), id.to_owned());
        if let Some(old) = self.entries.remove(&key) {
            self.order.remove(&old.sequence);
        }
        self.expire(now_ms);
        let mut dropped = 0;
        while self.entries.len() >= self.max {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.entries.remove(&oldest);
            dropped += 1;
        }
        let sequence = self.next;
        self.next += 1;
        self.order.insert(sequence, key.clone());
        self.entries.insert(
            key,
            Entry {
                reply_to: reply_to.to_owned(),
                expires_at_ms,
                sequence,
            },
        );
        dropped
    }

    /// The reply-to of `device`'s request `id`, if it is still awaited.
    pub fn get(&self, device: &str, id: &str, now_ms: u64) -> Option<String> {
        self.entries
            .get(&(device.to_owned(), id.to_owned()))
            .filter(|entry| entry.expires_at_ms > now_ms)
            .map(|entry| entry.reply_to.clone())
    }

    /// Forgets `device`'s request `id` (answered, or its sender is gone).
    pub fn remove(&mut self, device: &str, id: &str) {
        if let Some(entry) = self.entries.remove(&(device.to_owned(), id.to_owned())) {
            self.order.remove(&entry.sequence);
        }
    }

    /// Requests awaited now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is awaited.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Drops the expired entries among the oldest (those reached first in insertion
    /// order); later ones are dropped when reached or looked up.
    fn expire(&mut self, now_ms: u64) {
        while let Some((&sequence, key)) = self.order.first_key_value() {
            let expired = self
                .entries
                .get(key)
                .is_none_or(|entry| entry.expires_at_ms <= now_ms);
            if !expired {
                break;
            }
            let key = key.clone();
            self.order.remove(&sequence);
            self.entries.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_found_for_its_device_only_until_it_expires() {
        let mut pending = PendingResponses::new(10);
        pending.insert("d1", "c1", "reply-1", 1_000, 0);
        assert_eq!(pending.get("d1", "c1", 999).as_deref(), Some("reply-1"));
        assert_eq!(pending.get("d2", "c1", 10), None, "another device's id");
        assert_eq!(pending.get("d1", "c1", 1_000), None, "expired");
        pending.remove("d1", "c1");
        assert!(pending.is_empty());
    }

    #[test]
    fn past_the_maximum_the_oldest_requests_are_forgotten_first() {
        let mut pending = PendingResponses::new(3);
        for (index, id) in ["a", "b", "c"].iter().enumerate() {
            assert_eq!(pending.insert("d", id, "r", 10_000, index as u64), 0);
        }
        assert_eq!(pending.insert("d", "d", "r", 10_000, 5), 1);
        assert_eq!(pending.len(), 3);
        assert_eq!(pending.get("d", "a", 6), None);
        assert!(pending.get("d", "b", 6).is_some());
        assert!(pending.get("d", "d", 6).is_some());
    }

    #[test]
    fn expired_requests_make_room_before_live_ones_are_dropped() {
        let mut pending = PendingResponses::new(2);
        pending.insert("d", "old", "r", 100, 0);
        pending.insert("d", "live", "r", 10_000, 0);
        assert_eq!(pending.insert("d", "new", "r", 10_000, 200), 0);
        assert!(pending.get("d", "live", 300).is_some());
        assert!(pending.get("d", "new", 300).is_some());
    }

    #[test]
    fn a_request_delivered_again_keeps_one_entry() {
        let mut pending = PendingResponses::new(2);
        pending.insert("d", "c1", "r1", 1_000, 0);
        pending.insert("d", "c1", "r2", 2_000, 1);
        assert_eq!(pending.len(), 1);
        assert_eq!(pending.get("d", "c1", 1_500).as_deref(), Some("r2"));
        pending.insert("d", "c2", "r", 2_000, 1);
        assert_eq!(pending.len(), 2);
    }
}
