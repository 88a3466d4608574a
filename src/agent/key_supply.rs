//! Where an offered-keys link gets its keys: a QKD device's KME over ETSI
//! GS QKD 014, or the relay. Both run the same offer protocol
//! ([`crate::etsi014::source`]): the link's transmitter obtains keys with
//! IDs and offers the IDs to the receiver over the peer channel; the
//! receiver obtains the same keys by ID and acknowledges; both append.
//!
//! - **KME**: the transmitter calls `status` + `enc_keys` on its KME, the
//!   receiver `dec_keys` on its own.
//! - **Relay**: the transmitter draws a key from the OS RNG, splits it over
//!   the configured paths and sends the shares hop by hop
//!   ([`super::relay_task`]); the receiver waits (at most `wait`) for all
//!   shares of the offered key to arrive in its relay inbox.

use std::sync::Arc;

use uuid::Uuid;

use crate::config::{Etsi014, Relay, RelayMode};
use crate::etsi014::api::KeyItem;
use crate::etsi014::client::{KmeClient, KmeError, plan_request};
use crate::etsi014::source::{KeyOffer, RETRY_MIN, SourceConfig, SourceError};
use crate::ops::{Alarm, AlarmKind, StatusBoard};
use crate::relay::{RelayHeader, shares};
use crate::secret::SecretBytes;

use super::relay_task::{RelayRouter, SendFailure};

/// dec_keys attempts the slave makes for one offer (the peer KME may not
/// have the keys yet right after the master's enc_keys).
const SLAVE_ATTEMPTS: u32 = 3;

// One per offered-keys link, for the agent's lifetime: the KME client's
// size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum Supply {
    Kme {
        client: KmeClient,
        settings: Etsi014,
    },
    Relay(RelaySupply),
}

/// A relayed link's supply: `peer` is the other end.
pub struct RelaySupply {
    pub peer: String,
    pub me: String,
    pub settings: Relay,
    pub router: Arc<RelayRouter>,
    pub board: StatusBoard,
}

impl Supply {
    /// What the status shows as the key source.
    pub fn describe(&self) -> String {
        match self {
            Supply::Kme { settings, .. } => settings.kme_url.clone(),
            Supply::Relay(r) => format!(
                "relay ({}): {}",
                r.settings.mode.name(),
                r.settings
                    .paths
                    .iter()
                    .map(|p| p.join("–"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            ),
        }
    }

    /// "ETSI 014" or "relayed", for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Supply::Kme { .. } => "ETSI 014",
            Supply::Relay(_) => "relayed",
        }
    }

    /// The offer protocol's settings.
    pub fn config(&self) -> SourceConfig {
        match self {
            Supply::Kme { settings: s, .. } => {
                let per_call = s.connect_timeout + s.request_timeout;
                let retries: std::time::Duration =
                    (0..SLAVE_ATTEMPTS - 1).map(|i| RETRY_MIN * (1 << i)).sum();
                SourceConfig {
                    key_size_bits: s.key_size_bits,
                    batch: s.batch,
                    pool_target_bytes: s.pool_target_bytes,
                    retry_max: s.retry_max,
                    ack_timeout: per_call * SLAVE_ATTEMPTS
                        + retries
                        + std::time::Duration::from_secs(10),
                }
            }
            // One relayed key per offer (one pool block).
            Supply::Relay(r) => SourceConfig {
                key_size_bits: r.settings.key_bytes * 8,
                batch: 1,
                pool_target_bytes: r.settings.pool_target_bytes,
                retry_max: r.settings.retry_max,
                ack_timeout: r.settings.wait + std::time::Duration::from_secs(10),
            },
        }
    }

    /// Transmitter: `number` new keys with their IDs.
    pub async fn fetch(&self, number: u32) -> Result<Vec<KeyItem>, SourceError> {
        match self {
            Supply::Kme { client, settings } => {
                let slave = &settings.peer_sae_id;
                let status = client.status(slave).await?;
                let plan = plan_request(&status, number, settings.key_size_bits)?;
                Ok(client.enc_keys(slave, plan.number, plan.size_bits).await?)
            }
            Supply::Relay(r) => r.send_key().await.map(|k| vec![k]),
        }
    }

    /// Receiver: the keys `offer` names.
    pub async fn fetch_offered(&self, offer: &KeyOffer) -> Result<Vec<KeyItem>, SourceError> {
        match self {
            Supply::Kme { client, settings } => {
                let master = &settings.peer_sae_id;
                let mut attempt = 1;
                loop {
                    match client
                        .dec_keys(master, &offer.key_ids, offer.size_bits)
                        .await
                    {
                        Err(e) if attempt < SLAVE_ATTEMPTS && retryable(&e) => {
                            tracing::debug!(attempt, error = %e, "dec_keys failed; retrying");
                            tokio::time::sleep(RETRY_MIN * (1 << (attempt - 1))).await;
                            attempt += 1;
                        }
                        other => return Ok(other?),
                    }
                }
            }
            Supply::Relay(r) => r
                .router
                .wait_for(&r.peer, &offer.key_ids, r.settings.wait)
                .await
                .ok_or_else(|| {
                    SourceError::Relay(format!(
                        "the shares of the offered key did not all arrive within {:?} \
                         (a relay refused or lost them; see the source's status)",
                        r.settings.wait
                    ))
                }),
        }
    }
}

impl RelaySupply {
    /// Draws a key, splits it over the paths that are up (all of them, or
    /// fewer only with `fallback`), and sends the shares.
    async fn send_key(&self) -> Result<KeyItem, SourceError> {
        let paths = &self.settings.paths;
        // One look at each first hop, so a path counts as up or down, not
        // both.
        let (up, down): (Vec<&Vec<String>>, Vec<&Vec<String>>) =
            paths.iter().partition(|p| self.router.link_up(&p[1]));
        let down: Vec<String> = down.iter().map(|p| p.join("–")).collect();
        if up.is_empty() {
            return Err(SourceError::Relay(format!(
                "no path to {} is up: the first hop of {} is down",
                self.peer,
                down.join(" and ")
            )));
        }
        if self.settings.mode == RelayMode::Multipath {
            if down.is_empty() {
                self.board.clear(AlarmKind::RelayDegraded, &self.peer);
            } else {
                let what = format!(
                    "multipath to {}: {} of {} node-disjoint paths up ({} down)",
                    self.peer,
                    up.len(),
                    paths.len(),
                    down.join(", ")
                );
                self.board.raise(Alarm::RelayDegraded {
                    peer: self.peer.clone(),
                    detail: what.clone(),
                });
                if !self.settings.fallback {
                    return Err(SourceError::Relay(format!(
                        "{what}; not relaying over fewer paths ([peer.relay] fallback = false)"
                    )));
                }
                tracing::warn!(peer = %self.peer, "{what}; relaying over the paths that are up (fallback = true): a relay on them may learn the key");
            }
        }
        let mut key = SecretBytes::zeroed(self.settings.key_bytes as usize);
        getrandom::fill(key.expose_mut())
            .map_err(|e| SourceError::Relay(format!("OS random generator: {e}")))?;
        let key_id = Uuid::new_v4();
        let parts = shares::split(&key, up.len())
            .map_err(|e| SourceError::Relay(format!("OS random generator: {e}")))?;
        for (i, (path, share)) in up.iter().zip(&parts).enumerate() {
            let header = RelayHeader {
                key_id,
                share: i as u8,
                shares: up.len() as u8,
                path: path.to_vec(),
                hop: 0,
                len: self.settings.key_bytes,
            };
            self.router
                .originate(header, share)
                .await
                .map_err(|f| match f {
                    // The first hop's QKD link has not made enough key
                    // yet: a wait, not a fault.
                    SendFailure::NoKey(why) => SourceError::Waiting(why),
                    SendFailure::Other(why) => SourceError::Relay(why),
                })?;
        }
        debug_assert_eq!(self.me, paths[0][0]);
        Ok(KeyItem {
            key_id,
            key_id_extension: None,
            key,
            key_extension: None,
        })
    }
}

/// Failures worth another dec_keys: the KME not (yet) able to serve, or
/// the network. A 400/401 or a malformed answer will not improve.
fn retryable(e: &KmeError) -> bool {
    match e {
        KmeError::Status { code, .. } => *code >= 500,
        KmeError::Connect { .. } | KmeError::Timeout { .. } | KmeError::Http { .. } => true,
        _ => false,
    }
}
