//! The destination's side of relayed keys: shares filed as they arrive,
//! joined when all are in, handed out once to the key source that the
//! source's offer names them to, and dropped when too old.
//!
//! Bounded: at most `max_keys` keys are held (a further key is refused, and
//! its pad is already consumed, so nothing is reused), and each waits at
//! most `ttl` for its other shares and its offer.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::hop::{HopError, RelayHeader};
use super::shares;
use crate::secret::SecretBytes;

struct Arrival {
    shares: Vec<Option<SecretBytes>>,
    len: u32,
    first: Instant,
}

impl Arrival {
    fn complete(&self) -> bool {
        self.shares.iter().all(Option::is_some)
    }
}

/// Relayed keys for this node, by source and key ID.
pub struct Inbox {
    max_keys: usize,
    ttl: Duration,
    keys: HashMap<(String, Uuid), Arrival>,
}

impl std::fmt::Debug for Inbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inbox({} keys)", self.keys.len())
    }
}

/// What filing a share did.
#[derive(Debug, PartialEq, Eq)]
pub enum Filed {
    /// More shares of this key are to come.
    Waiting,
    /// The key is whole.
    Complete,
}

impl Inbox {
    pub fn new(max_keys: usize, ttl: Duration) -> Self {
        Self {
            max_keys,
            ttl,
            keys: HashMap::new(),
        }
    }

    /// Files the share `header` describes (this node is its destination).
    pub fn file(
        &mut self,
        now: Instant,
        header: &RelayHeader,
        share: SecretBytes,
    ) -> Result<Filed, HopError> {
        self.expire(now);
        let key = (header.source().to_string(), header.key_id);
        if !self.keys.contains_key(&key) && self.keys.len() >= self.max_keys {
            return Err(HopError::Invalid(format!(
                "{} relayed keys already wait for their offers here; this one is dropped",
                self.max_keys
            )));
        }
        let arrival = self.keys.entry(key).or_insert_with(|| Arrival {
            shares: (0..header.shares).map(|_| None).collect(),
            len: header.len,
            first: now,
        });
        if arrival.shares.len() != usize::from(header.shares) || arrival.len != header.len {
            return Err(HopError::Invalid(format!(
                "share {} of key {} disagrees with its other shares on their count or length",
                header.share, header.key_id
            )));
        }
        let slot = &mut arrival.shares[usize::from(header.share)];
        if slot.is_some() {
            return Err(HopError::Invalid(format!(
                "share {} of key {} arrived twice",
                header.share, header.key_id
            )));
        }
        *slot = Some(share);
        Ok(if arrival.complete() {
            Filed::Complete
        } else {
            Filed::Waiting
        })
    }

    /// The keys `ids` from `source`, if every one is whole; they leave the
    /// inbox. `None` (nothing removed) if any is missing or incomplete.
    pub fn take(&mut self, source: &str, ids: &[Uuid]) -> Option<Vec<(Uuid, SecretBytes)>> {
        let all = ids.iter().all(|id| {
            self.keys
                .get(&(source.to_string(), *id))
                .is_some_and(Arrival::complete)
        });
        if !all {
            return None;
        }
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let arrival = self.keys.remove(&(source.to_string(), *id))?;
            let parts: Vec<SecretBytes> = arrival.shares.into_iter().flatten().collect();
            out.push((*id, shares::join(&parts)?));
        }
        Some(out)
    }

    /// Drops keys older than the TTL (zeroised as they go).
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.keys.len();
        let ttl = self.ttl;
        self.keys
            .retain(|_, a| now.saturating_duration_since(a.first) < ttl);
        before - self.keys.len()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(id: u128, share: u8, shares: u8, len: u32) -> RelayHeader {
        RelayHeader {
            key_id: Uuid::from_u128(id),
            share,
            shares,
            path: vec!["gw-a".into(), "gw-b".into(), "gw-d".into()],
            hop: 1,
            len,
        }
    }

    #[test]
    fn shares_join_once_complete_and_leave_once() {
        let now = Instant::now();
        let mut inbox = Inbox::new(4, Duration::from_secs(10));
        let key = SecretBytes::from_slice(&[7; 8]);
        let parts = shares::split(&key, 2).unwrap();
        let mut parts = parts.into_iter();
        assert_eq!(
            inbox.file(now, &header(1, 1, 2, 8), parts.next().unwrap()),
            Ok(Filed::Waiting)
        );
        assert!(inbox.take("gw-a", &[Uuid::from_u128(1)]).is_none());
        let dup = inbox.file(now, &header(1, 1, 2, 8), SecretBytes::zeroed(8));
        assert!(dup.is_err(), "a share twice");
        assert!(
            inbox
                .file(now, &header(1, 0, 3, 8), SecretBytes::zeroed(8))
                .is_err()
        );
        assert!(
            inbox
                .file(now, &header(1, 0, 2, 9), SecretBytes::zeroed(9))
                .is_err()
        );
        assert_eq!(
            inbox.file(now, &header(1, 0, 2, 8), parts.next().unwrap()),
            Ok(Filed::Complete)
        );
        assert!(
            inbox.take("gw-x", &[Uuid::from_u128(1)]).is_none(),
            "another source's"
        );
        let got = inbox.take("gw-a", &[Uuid::from_u128(1)]).unwrap();
        assert!(got[0].1.ct_eq(&key));
        assert!(
            inbox.take("gw-a", &[Uuid::from_u128(1)]).is_none(),
            "only once"
        );
        assert!(inbox.is_empty());
    }

    #[test]
    fn bounded_and_expiring() {
        let now = Instant::now();
        let mut inbox = Inbox::new(2, Duration::from_secs(10));
        for id in 0..2 {
            inbox
                .file(now, &header(id, 0, 2, 4), SecretBytes::zeroed(4))
                .unwrap();
        }
        assert!(
            inbox
                .file(now, &header(9, 0, 2, 4), SecretBytes::zeroed(4))
                .is_err()
        );
        // A share of a key already held is still filed.
        assert!(
            inbox
                .file(now, &header(0, 1, 2, 4), SecretBytes::zeroed(4))
                .is_ok()
        );
        assert_eq!(inbox.expire(now + Duration::from_secs(11)), 2);
        assert!(
            inbox
                .file(
                    now + Duration::from_secs(11),
                    &header(9, 0, 1, 4),
                    SecretBytes::zeroed(4)
                )
                .is_ok()
        );
    }
}
