//! Password checks with bounded memory and a bounded wait.
//!
//! argon2 needs its memory cost (19 MiB at the recommended parameters) for every check.
//! Allocating it per check let glibc keep each freed block in a per-thread arena: a
//! gateway grew by hundreds of MiB after a few dozen logins. Here a fixed number of slots
//! each own one memory block, allocated on first use and reused for every check after.
//! Logins beyond the slots wait in a bounded queue, and never past their deadline.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// A parsed `$argon2...$` PHC hash: everything a check needs, without parsing per login.
#[derive(Clone)]
pub(crate) struct StoredHash {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl StoredHash {
    /// Parses a PHC string; `None` when it is not a complete argon2 hash.
    pub(crate) fn parse(phc: &str) -> Option<Self> {
        let parsed = argon2::PasswordHash::new(phc).ok()?;
        let algorithm = Algorithm::try_from(parsed.algorithm.as_str()).ok()?;
        let version = match parsed.version {
            Some(version) => Version::try_from(version).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(&parsed).ok()?;
        let salt = parsed.salt.as_ref()?.as_ref().to_vec();
        let hash = parsed.hash.as_ref()?.as_bytes().to_vec();
        Some(Self {
            algorithm,
            version,
            params,
            salt,
            hash,
        })
    }

    /// An argon2 context with this hash's algorithm, version and cost.
    pub(crate) fn argon2(&self) -> Argon2<'static> {
        Argon2::new(self.algorithm, self.version, self.params.clone())
    }

    /// argon2 memory blocks (1 KiB each) a check against this hash needs.
    pub(crate) fn blocks(&self) -> usize {
        self.params.block_count()
    }

    /// Whether `password` matches, computed in `memory` (at least `blocks()` long).
    fn matches(&self, password: &[u8], memory: &mut [Block]) -> bool {
        let argon2 = self.argon2();
        let mut out = [0u8; 64];
        let Some(out) = out.get_mut(..self.hash.len()) else {
            return false;
        };
        if argon2
            .hash_password_into_with_memory(password, &self.salt, out, memory)
            .is_err()
        {
            return false;
        }
        // Constant time: how much of the hash matched must not show in the time taken.
        out.iter()
            .zip(&self.hash)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

/// Why a check did not run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Busy;

/// A fixed number of hashing slots, each with a reusable argon2 memory block, and a
/// bounded queue in front of them.
pub(crate) struct HashingPool {
    slots: Arc<Semaphore>,
    /// Memory blocks of idle slots; a slot takes one on entry and puts it back on exit,
    /// so there are never more than `slot_count` of them.
    memory: Arc<Mutex<Vec<Vec<Block>>>>,
    /// Blocks each slot's memory holds: the largest any hash checked so far needs (a
    /// device table may bring costlier hashes than the password file; it bounds them).
    blocks: AtomicUsize,
    waiting: AtomicUsize,
    max_waiting: usize,
    running: Arc<AtomicUsize>,
    started: AtomicU64,
}

impl HashingPool {
    /// `slots` checks at once (at least one), `max_waiting` more waiting; each slot's
    /// memory holds `blocks` argon2 blocks.
    pub(crate) fn new(slots: usize, max_waiting: usize, blocks: usize) -> Self {
        let slots = slots.max(1);
        Self {
            slots: Arc::new(Semaphore::new(slots)),
            memory: Arc::new(Mutex::new(Vec::with_capacity(slots))),
            blocks: AtomicUsize::new(blocks),
            waiting: AtomicUsize::new(0),
            max_waiting,
            running: Arc::new(AtomicUsize::new(0)),
            started: AtomicU64::new(0),
        }
    }

    /// Checks `password` against `hash` on the blocking pool once a slot is free. `Busy`
    /// when the queue is full or no slot frees up before `deadline`. Once started, a check
    /// completes (and frees its slot) even if the caller stops waiting.
    pub(crate) async fn check(
        &self,
        hash: StoredHash,
        password: Vec<u8>,
        deadline: Instant,
    ) -> Result<bool, Busy> {
        let permit = match Arc::clone(&self.slots).try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let _queued = Queued::enter(&self.waiting, self.max_waiting).ok_or(Busy)?;
                match tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned())
                    .await
                {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_)) | Err(_) => return Err(Busy),
                }
            }
        };
        let blocks = self
            .blocks
            .fetch_max(hash.blocks(), Ordering::Relaxed)
            .max(hash.blocks());
        self.started.fetch_add(1, Ordering::Relaxed);
        let pool = Arc::clone(&self.memory);
        let running = Arc::clone(&self.running);
        let task = tokio::task::spawn_blocking(move || {
            running.fetch_add(1, Ordering::Relaxed);
            let mut memory = pool
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop()
                .unwrap_or_default();
            if memory.len() < blocks {
                memory.resize(blocks, Block::new());
            }
            let matched = hash.matches(&password, &mut memory);
            pool.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(memory);
            running.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
            matched
        });
        Ok(task.await.unwrap_or(false))
    }

    /// Checks started since the gateway started.
    pub(crate) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Checks running now.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Logins waiting for a slot now.
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// A place in the queue, given back on drop (also when the waiting login is abandoned).
struct Queued<'a>(&'a AtomicUsize);

impl<'a> Queued<'a> {
    fn enter(waiting: &'a AtomicUsize, max: usize) -> Option<Self> {
        waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()
            .map(|_| Self(waiting))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
