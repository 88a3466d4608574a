//! CPU cost of the rekey engine: one complete rekey of one tunnel (both
//! engines, every message, every kernel request, the old SAs' deletions
//! after the grace period) run in memory against in-memory pools and a
//! kernel that only records SPIs. This is the protocol's share of a rekey;
//! netlink, fsync of a persisted pool and the network are not in it.
//! Throughput is in SA key bits installed (2 × 288 per rekey), so the report
//! reads as key bits/s; rekeys/s is that divided by 576.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::keys::{BlockId, KeyPool, Role};
use qkd_ipsec::rekey::{
    KernelOutcome, KernelRequest, KeyingMode, RekeyAction, RekeyConfig, RekeyEngine, RekeyEnv,
    RekeyInput, RekeyRole, SaDirection, Spi,
};
use qkd_ipsec::secret::SecretBytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

const BLOCK_BYTES: usize = 1 << 20;
const KEY_BITS_PER_REKEY: u64 = 2 * 288;

struct Side {
    engine: RekeyEngine,
    pool: KeyPool,
    rng: ChaCha8Rng,
    sas: HashSet<(SaDirection, Spi)>,
    wake: Option<Instant>,
}

struct Pair {
    sides: [Side; 2],
    now: Instant,
    next_spi: Spi,
    block: u64,
}

impl Pair {
    fn new(mode: KeyingMode) -> Self {
        let now = Instant::now();
        let sides = [RekeyRole::Initiator, RekeyRole::Responder].map(|role| {
            let mut rng = ChaCha8Rng::seed_from_u64(role as u64);
            let cfg = RekeyConfig::new("bench", role, mode, Duration::from_secs(3600));
            Side {
                engine: RekeyEngine::new(cfg, now, &mut rng).unwrap(),
                pool: KeyPool::new(match role {
                    RekeyRole::Initiator => Role::Transmitter,
                    RekeyRole::Responder => Role::Receiver,
                }),
                rng,
                sas: HashSet::new(),
                wake: None,
            }
        });
        let mut pair = Self {
            sides,
            now,
            next_spi: 0x1000,
            block: 0,
        };
        pair.refill();
        for i in 0..2 {
            pair.input(i, RekeyInput::Start { owned: vec![] });
            pair.input(i, RekeyInput::PeerConnected);
        }
        pair.settle();
        pair
    }

    fn refill(&mut self) {
        let data: Vec<u8> = (0..BLOCK_BYTES).map(|i| (i * 31 + 7) as u8).collect();
        for s in &mut self.sides {
            s.pool
                .append(BlockId(self.block), SecretBytes::from_slice(&data))
                .unwrap();
        }
        self.block += 1;
    }

    /// Feeds an input and, depth first, everything it causes.
    fn input(&mut self, i: usize, input: RekeyInput) {
        let side = &mut self.sides[i];
        let mut env = RekeyEnv {
            pool: &mut side.pool,
            rng: &mut side.rng,
        };
        let actions = side.engine.handle(self.now, input, &mut env);
        for action in actions {
            match action {
                RekeyAction::Kernel { op, request } => {
                    let outcome = self.kernel(i, request);
                    self.input(i, RekeyInput::Kernel { op, outcome });
                }
                RekeyAction::Send(bytes) => self.input(1 - i, RekeyInput::PeerMessage(bytes)),
                RekeyAction::WakeAt(t) => self.sides[i].wake = Some(t),
                RekeyAction::Alarm { .. } | RekeyAction::Notice(_) => {}
            }
        }
    }

    fn kernel(&mut self, i: usize, request: KernelRequest) -> KernelOutcome {
        let sas = &mut self.sides[i].sas;
        match request {
            KernelRequest::AllocSpi => {
                self.next_spi = self.next_spi.wrapping_add(1).max(0x1000);
                KernelOutcome::SpiAllocated(self.next_spi)
            }
            KernelRequest::AddSa { dir, spi, .. } => {
                sas.insert((dir, spi));
                KernelOutcome::Done
            }
            KernelRequest::DeleteSa { dir, spi } => {
                sas.remove(&(dir, spi));
                KernelOutcome::Done
            }
        }
    }

    /// Runs the timers of the next 10 s (virtual): settle pause and grace
    /// period, after which the old SAs are gone. The hourly interval timer
    /// is beyond that window and is re-armed by every rekey.
    fn settle(&mut self) {
        let until = self.now + Duration::from_secs(10);
        while let Some((t, i)) = (0..2)
            .filter_map(|i| self.sides[i].wake.map(|t| (t, i)))
            .filter(|&(t, _)| t <= until)
            .min()
        {
            self.now = self.now.max(t);
            self.sides[i].wake = None;
            self.input(i, RekeyInput::Tick);
        }
    }

    fn rekey(&mut self) {
        if self.sides[0].pool.available_for(Role::Transmitter) < 4096 {
            self.refill();
        }
        self.input(0, RekeyInput::Acquire);
        self.settle();
        debug_assert_eq!(self.sides[0].sas.len(), 2);
    }
}

fn bench_rekey(c: &mut Criterion) {
    let mut group = c.benchmark_group("rekey");
    group.throughput(Throughput::Elements(KEY_BITS_PER_REKEY));
    for (name, mode) in [
        ("direct", KeyingMode::Direct),
        ("wrapped", KeyingMode::Wrapped),
    ] {
        let mut pair = Pair::new(mode);
        group.bench_function(format!("one tunnel, full exchange, {name}"), |b| {
            b.iter(|| pair.rekey())
        });
        assert_eq!(pair.sides[1].sas.len(), 2, "old SAs left behind");
    }
    group.finish();
}

criterion_group!(benches, bench_rekey);
criterion_main!(benches);
