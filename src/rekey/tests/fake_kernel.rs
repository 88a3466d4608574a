//! The fake kernel of the simulated pair: one side's SAD as a map by
//! (direction, SPI), larval SAs from ALLOCSPI, UPDSA/NEWSA/DELSA semantics
//! as DESIGN.md describes them (EEXIST, ENOENT), and injectable faults.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use crate::rekey::{
    ExchangeId, KernelFailure, KernelOutcome, KernelRequest, MIN_SPI, OwnedSa, SaDirection, Spi,
};
use crate::secret::SaKey;

/// An SA in a fake kernel.
pub struct FakeSa {
    pub key: SaKey,
    pub id: ExchangeId,
    pub installed_at: Instant,
    pub soft_sent: bool,
}

/// Picks the kernel requests a fault applies to.
pub type RequestFilter = fn(&KernelRequest) -> bool;

/// One side's SAD: SAs by (direction, SPI), larval SAs from ALLOCSPI.
#[derive(Default)]
pub struct FakeKernel {
    pub sas: BTreeMap<(SaDirection, Spi), FakeSa>,
    pub larval: BTreeSet<Spi>,
    /// Fail the next requests matching `fail_filter` with this error.
    pub fail_next: Vec<(RequestFilter, KernelFailure)>,
}

impl FakeKernel {
    pub(super) fn execute(
        &mut self,
        request: &KernelRequest,
        rng: &mut ChaCha8Rng,
        now: Instant,
    ) -> KernelOutcome {
        if let Some(i) = self.fail_next.iter().position(|(f, _)| f(request)) {
            return KernelOutcome::Failed(self.fail_next.remove(i).1);
        }
        match request {
            KernelRequest::AllocSpi => loop {
                // A small SPI space makes reuse of deleted SPIs likely.
                let spi = rng.random_range(MIN_SPI..MIN_SPI + 64);
                if !self.larval.contains(&spi)
                    && !self.sas.contains_key(&(SaDirection::Inbound, spi))
                {
                    self.larval.insert(spi);
                    return KernelOutcome::SpiAllocated(spi);
                }
            },
            KernelRequest::AddSa { dir, spi, key, id } => {
                if self.sas.contains_key(&(*dir, *spi)) {
                    return KernelOutcome::Failed(KernelFailure::Exists);
                }
                // UPDSA completes a larval SA; without one it fails.
                if *dir == SaDirection::Inbound && !self.larval.remove(spi) {
                    return KernelOutcome::Failed(KernelFailure::NotFound);
                }
                self.sas.insert(
                    (*dir, *spi),
                    FakeSa {
                        key: key.duplicate(),
                        id: *id,
                        installed_at: now,
                        soft_sent: false,
                    },
                );
                KernelOutcome::Done
            }
            KernelRequest::DeleteSa { dir, spi } => {
                let larval = *dir == SaDirection::Inbound && self.larval.remove(spi);
                if self.sas.remove(&(*dir, *spi)).is_some() || larval {
                    KernelOutcome::Done
                } else {
                    KernelOutcome::Failed(KernelFailure::NotFound)
                }
            }
        }
    }

    pub fn owned(&self) -> Vec<OwnedSa> {
        let mut v: Vec<OwnedSa> = self
            .sas
            .keys()
            .map(|&(dir, spi)| OwnedSa { dir, spi })
            .collect();
        v.extend(self.larval.iter().map(|&spi| OwnedSa {
            dir: SaDirection::Inbound,
            spi,
        }));
        v
    }

    pub fn count(&self, dir: SaDirection) -> usize {
        self.sas.keys().filter(|(d, _)| *d == dir).count()
    }
}
