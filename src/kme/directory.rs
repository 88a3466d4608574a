//! Who may get which keys: the local SAEs (client certificate CNs) with the
//! peers whose keys each may get, and the remote SAEs behind each peer.

use std::collections::HashMap;

use crate::etsi014::api::RequestLimits;

/// The KME's identity, limits and SAE map (from `[kme]`, `[[kme.sae]]` and
/// `[[peer]] saes`, checked by the config).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KmeSettings {
    /// This KME's ID (`source_KME_ID` in status).
    pub kme_id: String,
    /// Default key size in bits.
    pub key_size: u32,
    pub max_key_per_request: u32,
    pub min_key_size: u32,
    pub max_key_size: u32,
    /// Most keys held for local slave SAEs at once.
    pub max_pending_keys: usize,
    pub directory: SaeDirectory,
}

impl KmeSettings {
    pub fn limits(&self) -> RequestLimits {
        RequestLimits {
            default_size: self.key_size,
            max_per_request: self.max_key_per_request,
            min_size: self.min_key_size,
            max_size: self.max_key_size,
        }
    }
}

/// The SAE map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SaeDirectory {
    /// Local SAE ID → the peers whose keys it may get.
    local: HashMap<String, Vec<String>>,
    /// Remote SAE ID → the peer it sits behind.
    remote: HashMap<String, String>,
    /// Peer → its KME ID (`target_KME_ID`).
    kme_ids: HashMap<String, String>,
}

impl SaeDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    /// A local SAE (the CN of its client certificate) and its peers.
    pub fn add_local(&mut self, sae: &str, peers: &[String]) -> &mut Self {
        self.local.insert(sae.to_owned(), peers.to_vec());
        self
    }

    /// A peer, its KME ID, and the SAEs behind it.
    pub fn add_peer(&mut self, peer: &str, kme_id: &str, saes: &[String]) -> &mut Self {
        self.kme_ids.insert(peer.to_owned(), kme_id.to_owned());
        for s in saes {
            self.remote.insert(s.clone(), peer.to_owned());
        }
        self
    }

    /// Whether `sae` is a configured local SAE.
    pub fn is_local(&self, sae: &str) -> bool {
        self.local.contains_key(sae)
    }

    /// Local SAE IDs, sorted (for the board).
    pub fn local_saes(&self) -> Vec<String> {
        let mut v: Vec<String> = self.local.keys().cloned().collect();
        v.sort();
        v
    }

    /// The peer whose keys `local` shares with the remote SAE `other`:
    /// `None` unless `local` is a local SAE, `other` sits behind a peer,
    /// and `local` may get that peer's keys.
    pub fn peer_between(&self, local: &str, other: &str) -> Option<&str> {
        let peer = self.remote.get(other)?;
        self.local
            .get(local)?
            .iter()
            .any(|p| p == peer)
            .then_some(peer.as_str())
    }

    /// The KME ID of `peer`.
    pub fn kme_id_of(&self, peer: &str) -> Option<&str> {
        self.kme_ids.get(peer).map(String::as_str)
    }
}
