//! One device's bookkeeping of QoS 1 messages: what to send next, which packet id carries
//! which `seq`, and what to send again after a lost connection.
//!
//! The MQTT client assigns packet ids itself and reports them (`Outgoing::Publish(pkid)`)
//! in the order the publishes were handed to it; the ledger pairs them up in that order.
//! Every connection uses a fresh client, so nothing the ledger resends is also replayed by
//! the client.

use std::collections::{HashMap, VecDeque};

use thiserror::Error;

/// A message not yet acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pending {
    seq: u64,
    /// It went out on an earlier connection, so sending it again may duplicate it.
    on_wire_before: bool,
}

/// What the ledger wants sent next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// A message not sent before; due by the pacing schedule.
    New { seq: u64 },
    /// A message whose connection was lost before its PUBACK; sent at once.
    Resend { seq: u64 },
}

impl Next {
    /// The message's sequence number.
    pub fn seq(self) -> u64 {
        match self {
            Next::New { seq } | Next::Resend { seq } => seq,
        }
    }
}

/// A publish that reached the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The message's sequence number.
    pub seq: u64,
    /// It had gone out before (on a lost connection): a possible duplicate downstream.
    pub duplicate: bool,
}

/// The client reported something the ledger cannot pair up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LedgerError {
    /// A packet id with no publish waiting for one.
    #[error("packet id {0} reported for no pending publish")]
    UnexpectedPacketId(u16),
    /// A packet id still carrying an unacknowledged message.
    #[error("packet id {0} reused while still unacknowledged")]
    PacketIdInUse(u16),
}

/// The bookkeeping of one device.
#[derive(Debug, Clone)]
pub struct Ledger {
    total: Option<u64>,
    next_seq: u64,
    stopped: bool,
    resend: VecDeque<Pending>,
    handed: VecDeque<Pending>,
    inflight: HashMap<u16, Pending>,
    acknowledged: u64,
}

impl Ledger {
    /// A device that sends `total` messages (`None`: until [`Ledger::stop_new`]).
    pub fn new(total: Option<u64>) -> Self {
        Self {
            total,
            next_seq: 1,
            stopped: false,
            resend: VecDeque::new(),
            handed: VecDeque::new(),
            inflight: HashMap::new(),
            acknowledged: 0,
        }
    }

    /// What to send next, without taking it: resends first, then the next new message.
    pub fn peek(&self) -> Option<Next> {
        if let Some(pending) = self.resend.front() {
            return Some(Next::Resend { seq: pending.seq });
        }
        let more = !self.stopped && self.total.is_none_or(|total| self.next_seq <= total);
        more.then_some(Next::New { seq: self.next_seq })
    }

    /// Takes the message [`Ledger::peek`] returned: it is now handed to the client.
    pub fn take(&mut self) -> Option<Next> {
        let next = self.peek()?;
        let pending = match next {
            Next::Resend { .. } => self.resend.pop_front()?,
            Next::New { seq } => {
                self.next_seq += 1;
                Pending {
                    seq,
                    on_wire_before: false,
                }
            }
        };
        self.handed.push_back(pending);
        Some(next)
    }

    /// The client sent the oldest handed publish with packet id `pkid`.
    pub fn on_outgoing(&mut self, pkid: u16) -> Result<Sent, LedgerError> {
        if self.inflight.contains_key(&pkid) {
            return Err(LedgerError::PacketIdInUse(pkid));
        }
        let pending = self
            .handed
            .pop_front()
            .ok_or(LedgerError::UnexpectedPacketId(pkid))?;
        self.inflight.insert(
            pkid,
            Pending {
                seq: pending.seq,
                on_wire_before: true,
            },
        );
        Ok(Sent {
            seq: pending.seq,
            duplicate: pending.on_wire_before,
        })
    }

    /// A PUBACK for `pkid`: returns the acknowledged `seq` (`None` for an unknown id).
    pub fn on_puback(&mut self, pkid: u16) -> Option<u64> {
        let pending = self.inflight.remove(&pkid)?;
        self.acknowledged += 1;
        Some(pending.seq)
    }

    /// The connection is gone: everything unacknowledged is sent again, oldest first, on
    /// the next one. Returns how many messages that is.
    pub fn connection_lost(&mut self) -> usize {
        let mut all: Vec<Pending> = self
            .resend
            .drain(..)
            .chain(self.handed.drain(..))
            .chain(self.inflight.drain().map(|(_, pending)| pending))
            .collect();
        all.sort_by_key(|pending| pending.seq);
        self.resend.extend(all);
        self.resend.len()
    }

    /// No new messages from now on (the run's duration is over); pending ones still count.
    pub fn stop_new(&mut self) {
        self.stopped = true;
    }

    /// Messages handed to the client and not yet acknowledged.
    pub fn outstanding(&self) -> usize {
        self.handed.len() + self.inflight.len()
    }

    /// Nothing left to send and nothing waiting for a PUBACK.
    pub fn finished(&self) -> bool {
        self.peek().is_none() && self.outstanding() == 0
    }

    /// Messages acknowledged so far.
    pub fn acknowledged(&self) -> u64 {
        self.acknowledged
    }

    /// Messages that should have been acknowledged but were not (yet): the rest of the
    /// planned total, or in a timed run every message started.
    pub fn unacknowledged(&self) -> u64 {
        let planned = match self.total {
            Some(total) if !self.stopped => total,
            _ => self.next_seq - 1,
        };
        planned.saturating_sub(self.acknowledged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_start_at_one_and_stop_at_the_total() {
        let mut ledger = Ledger::new(Some(3));
        let seqs: Vec<u64> = std::iter::from_fn(|| ledger.take().map(Next::seq)).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(ledger.outstanding(), 3);
        assert!(!ledger.finished());
    }

    #[test]
    fn pubacks_are_paired_with_seqs_by_packet_id_in_any_order() {
        let mut ledger = Ledger::new(Some(3));
        for pkid in [7, 8, 9] {
            ledger.take();
            ledger.on_outgoing(pkid).expect("pair");
        }
        assert_eq!(ledger.on_puback(9), Some(3));
        assert_eq!(ledger.on_puback(7), Some(1));
        assert_eq!(ledger.on_puback(7), None);
        assert_eq!(ledger.on_puback(8), Some(2));
        assert!(ledger.finished());
        assert_eq!(ledger.acknowledged(), 3);
        assert_eq!(ledger.unacknowledged(), 0);
    }

    #[test]
    fn lost_connection_resends_unacknowledged_and_counts_only_wire_copies_as_duplicates() {
        let mut ledger = Ledger::new(Some(4));
        for _ in 0..3 {
            ledger.take();
        }
        ledger.on_outgoing(1).expect("seq 1 on the wire");
        ledger.on_outgoing(2).expect("seq 2 on the wire");
        assert_eq!(ledger.on_puback(1), Some(1));
        // seq 2 is on the wire unacknowledged, seq 3 was handed over but never sent.
        assert_eq!(ledger.connection_lost(), 2);
        assert_eq!(ledger.outstanding(), 0);
        assert_eq!(ledger.take(), Some(Next::Resend { seq: 2 }));
        assert_eq!(ledger.take(), Some(Next::Resend { seq: 3 }));
        assert_eq!(ledger.take(), Some(Next::New { seq: 4 }));
        let sent: Vec<Sent> = (1..=3)
            .map(|pkid| ledger.on_outgoing(pkid).expect("pair"))
            .collect();
        assert_eq!(
            sent,
            vec![
                Sent {
                    seq: 2,
                    duplicate: true
                },
                Sent {
                    seq: 3,
                    duplicate: false
                },
                Sent {
                    seq: 4,
                    duplicate: false
                },
            ]
        );
    }

    #[test]
    fn unknown_or_reused_packet_ids_are_errors() {
        let mut ledger = Ledger::new(Some(2));
        assert_eq!(
            ledger.on_outgoing(1),
            Err(LedgerError::UnexpectedPacketId(1))
        );
        ledger.take();
        ledger.take();
        ledger.on_outgoing(1).expect("first");
        assert_eq!(ledger.on_outgoing(1), Err(LedgerError::PacketIdInUse(1)));
    }

    #[test]
    fn timed_run_stops_new_messages_but_waits_for_pending_ones() {
        let mut ledger = Ledger::new(None);
        ledger.take();
        ledger.take();
        ledger.on_outgoing(1).expect("pair");
        ledger.stop_new();
        assert_eq!(ledger.peek(), None);
        assert!(!ledger.finished());
        assert_eq!(ledger.unacknowledged(), 2);
        ledger.on_outgoing(2).expect("pair");
        ledger.on_puback(1);
        ledger.on_puback(2);
        assert!(ledger.finished());
        assert_eq!(ledger.unacknowledged(), 0);
    }

    #[test]
    fn unacknowledged_counts_the_unsent_rest_of_the_plan() {
        let mut ledger = Ledger::new(Some(10));
        ledger.take();
        ledger.on_outgoing(1).expect("pair");
        ledger.on_puback(1);
        assert_eq!(ledger.unacknowledged(), 9);
    }
}
