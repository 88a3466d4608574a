//! Keys the master SAE's KME shared, waiting for the slave SAE's
//! `dec_keys`. Bounded: when full, the peer's AppKeys are refused (and its
//! enc_keys answers 503) rather than the oldest keys dropped, so a key an
//! application was given is never silently unusable at the other end.
//! Keys are [`SecretBytes`]: zeroised when fetched, refused or dropped.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use thiserror::Error;
use uuid::Uuid;

use crate::secret::SecretBytes;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PendingError {
    #[error("the pending-key table is full ({capacity} keys); the slave SAEs must fetch theirs")]
    Full { capacity: usize },
    #[error("key_ID {0} is already pending")]
    Duplicate(Uuid),
    #[error("key_IDs unknown or already delivered")]
    Unknown,
    /// A key_ID is held, but for another pair of SAEs: the caller's
    /// certificate is not the one these keys are for (HTTP 401).
    #[error("key_IDs held for other SAEs")]
    NotYours,
}

struct PendingKey {
    master: String,
    slave: String,
    key: SecretBytes,
}

/// The table; shared (`Arc`) by the peer task that fills it and the
/// server that empties it.
pub struct PendingTable {
    capacity: usize,
    keys: Mutex<HashMap<Uuid, PendingKey>>,
}

impl std::fmt::Debug for PendingTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingTable")
            .field("capacity", &self.capacity)
            .field("len", &self.len())
            .finish()
    }
}

impl PendingTable {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Uuid, PendingKey>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Holds all `keys` for the pair, or none of them.
    pub fn insert_all(
        &self,
        master: &str,
        slave: &str,
        keys: Vec<(Uuid, SecretBytes)>,
    ) -> Result<(), PendingError> {
        let mut table = self.lock();
        let mut seen = std::collections::HashSet::with_capacity(keys.len());
        if let Some((id, _)) = keys
            .iter()
            .find(|(id, _)| table.contains_key(id) || !seen.insert(*id))
        {
            return Err(PendingError::Duplicate(*id));
        }
        if table.len() + keys.len() > self.capacity {
            return Err(PendingError::Full {
                capacity: self.capacity,
            });
        }
        for (id, key) in keys {
            let entry = PendingKey {
                master: master.to_owned(),
                slave: slave.to_owned(),
                key,
            };
            table.insert(id, entry);
        }
        Ok(())
    }

    /// Removes and returns the keys of `ids`, in that order, if every one
    /// is held for this master and slave; otherwise changes nothing. The
    /// error does not say which ID failed; it says `NotYours` when one is
    /// held for another SAE pair (the spec's 401: the caller presented the
    /// wrong SAE's certificate), which tells a caller no more than that an
    /// ID it already knows — a random 122-bit value — exists.
    pub fn take_all(
        &self,
        master: &str,
        slave: &str,
        ids: &[Uuid],
    ) -> Result<Vec<(Uuid, SecretBytes)>, PendingError> {
        let mut table = self.lock();
        if ids.iter().any(|id| {
            table
                .get(id)
                .is_some_and(|k| k.master != master || k.slave != slave)
        }) {
            return Err(PendingError::NotYours);
        }
        let mut seen = std::collections::HashSet::with_capacity(ids.len());
        if !ids
            .iter()
            .all(|id| table.contains_key(id) && seen.insert(*id))
        {
            return Err(PendingError::Unknown);
        }
        Ok(ids
            .iter()
            .map(|id| (*id, table.remove(id).expect("checked above").key))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretBytes {
        SecretBytes::from_slice(&[b; 32])
    }

    #[test]
    fn keys_are_delivered_once_to_their_pair_only() {
        let t = PendingTable::new(4);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        t.insert_all("sae-a", "sae-b", vec![(a, key(1)), (b, key(2))])
            .unwrap();
        // Another pair, or another slave, gets nothing and changes nothing.
        assert_eq!(
            t.take_all("sae-x", "sae-b", &[a]).err(),
            Some(PendingError::NotYours)
        );
        assert_eq!(
            t.take_all("sae-a", "sae-x", &[a]).err(),
            Some(PendingError::NotYours)
        );
        // All or nothing.
        let unknown = Uuid::new_v4();
        assert!(t.take_all("sae-a", "sae-b", &[a, unknown]).is_err());
        assert!(t.take_all("sae-a", "sae-b", &[a, a]).is_err());
        assert_eq!(t.len(), 2);
        let got = t.take_all("sae-a", "sae-b", &[b, a]).unwrap();
        assert_eq!(got[0].0, b);
        assert_eq!(got[0].1.expose(), &[2; 32]);
        assert_eq!(got[1].1.expose(), &[1; 32]);
        assert_eq!(
            t.take_all("sae-a", "sae-b", &[a]).err(),
            Some(PendingError::Unknown)
        );
        assert!(t.is_empty());
    }

    #[test]
    fn the_table_is_bounded_and_refuses_whole_batches() {
        let t = PendingTable::new(3);
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        t.insert_all("m", "s", vec![(ids[0], key(0)), (ids[1], key(1))])
            .unwrap();
        let e = t.insert_all("m", "s", vec![(ids[2], key(2)), (ids[3], key(3))]);
        assert_eq!(e, Err(PendingError::Full { capacity: 3 }));
        assert_eq!(t.len(), 2, "nothing of a refused batch is kept");
        let e = t.insert_all("m", "s", vec![(ids[0], key(9))]);
        assert_eq!(e, Err(PendingError::Duplicate(ids[0])));
        let e = t.insert_all("m", "s", vec![(ids[2], key(2)), (ids[2], key(2))]);
        assert_eq!(e, Err(PendingError::Duplicate(ids[2])));
        t.insert_all("m", "s", vec![(ids[2], key(2))]).unwrap();
        assert_eq!(t.len(), 3);
        assert!(!format!("{t:?}").contains("key"), "Debug shows no keys");
    }
}
