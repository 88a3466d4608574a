//! A simulated gateway pair for the engine tests: two engines, two pools
//! filled with identical blocks, a fake kernel per side that executes the
//! engines' requests and models SA lifetimes, a lossy, duplicating,
//! reordering link, and a virtual clock. Invariants are checked after every
//! input either engine handles.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rand::{Rng as _, RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use crate::keys::{BlockId, KeyPool, Role};
use crate::rekey::{
    Alarm, EngineState, ExchangeId, KernelOutcome, KernelRequest, KeyingMode, OpId, RekeyAction,
    RekeyConfig, RekeyEngine, RekeyEnv, RekeyInput, RekeyNotice, RekeyRole, SaDirection, Spi,
};
use crate::secret::{SaKey, SecretBytes};

pub use super::fake_kernel::FakeKernel;

pub const INIT: usize = 0;
pub const RESP: usize = 1;

pub struct Side {
    pub engine: RekeyEngine,
    pub pool: KeyPool,
    pub rng: ChaCha8Rng,
    pub kernel: FakeKernel,
    pub wake: Option<Instant>,
    pub alarms: BTreeSet<Alarm>,
    pub notices: Vec<RekeyNotice>,
    pub restarts: u32,
}

/// Link behaviour; defaults are a perfect 5 ms link.
#[derive(Clone, Copy, Debug)]
pub struct LinkModel {
    pub loss: f64,
    pub duplicate: f64,
    pub delay_min: Duration,
    pub delay_max: Duration,
}

impl Default for LinkModel {
    fn default() -> Self {
        Self {
            loss: 0.0,
            duplicate: 0.0,
            delay_min: Duration::from_millis(5),
            delay_max: Duration::from_millis(5),
        }
    }
}

/// Changes a message in flight (tamper tests); returns true if it did.
pub type Tamper = Box<dyn FnMut(usize, &mut Vec<u8>) -> bool>;

pub struct Sim {
    pub start: Instant,
    pub now: Instant,
    pub sides: [Side; 2],
    pub cfg: [RekeyConfig; 2],
    pub link: LinkModel,
    pub connected: bool,
    events: BTreeMap<(Instant, u64), Event>,
    event_seq: u64,
    rng: ChaCha8Rng,
    seed: u64,
    /// SA lifetimes applied by the fake kernels.
    pub soft_lifetime: Option<Duration>,
    pub hard_lifetime: Option<Duration>,
    /// Require every established direction to keep an SA at all times.
    pub check_continuity: bool,
    established: [bool; 2],
    /// Fingerprint of every SA key seen → (sending side, SPI, exchange).
    keys_seen: HashMap<[u8; 32], (usize, Spi, ExchangeId)>,
    pub tamper: Option<Tamper>,
    pub inputs: u64,
    pub hard_expiries: u64,
    same_instant: u64,
}

pub const BLOCK_BYTES: usize = 4096;
/// Time the fake kernel takes per request.
pub const KERNEL_LATENCY: Duration = Duration::from_micros(200);

enum Event {
    Deliver {
        to: usize,
        bytes: Vec<u8>,
    },
    Kernel {
        side: usize,
        op: OpId,
        request: KernelRequest,
    },
}

impl Sim {
    pub fn new(seed: u64, mode: KeyingMode, interval: Duration, blocks: u64) -> Self {
        let start = Instant::now();
        let cfg = [RekeyRole::Initiator, RekeyRole::Responder]
            .map(|role| RekeyConfig::new("site-a-b", role, mode, interval));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pools = [
            KeyPool::new(Role::Transmitter),
            KeyPool::new(Role::Receiver),
        ];
        fill(&mut pools, &mut rng, blocks);
        let [p0, p1] = pools;
        let sides = [(0, p0), (1, p1)].map(|(i, pool)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (0x5eed_0000 + i));
            Side {
                engine: RekeyEngine::new(cfg[i as usize].clone(), start, &mut rng).unwrap(),
                pool,
                rng,
                kernel: FakeKernel::default(),
                wake: None,
                alarms: BTreeSet::new(),
                notices: Vec::new(),
                restarts: 0,
            }
        });
        Self {
            start,
            now: start,
            sides,
            cfg,
            link: LinkModel::default(),
            connected: false,
            events: BTreeMap::new(),
            event_seq: 0,
            rng,
            seed,
            soft_lifetime: None,
            hard_lifetime: None,
            check_continuity: true,
            established: [false; 2],
            keys_seen: HashMap::new(),
            tamper: None,
            inputs: 0,
            hard_expiries: 0,
            same_instant: 0,
        }
    }

    /// Reconfigures side `i`'s engine before it starts (a fresh instance).
    pub fn configure_side(&mut self, i: usize, f: impl Fn(&mut RekeyConfig)) {
        f(&mut self.cfg[i]);
        let side = &mut self.sides[i];
        side.engine = RekeyEngine::new(self.cfg[i].clone(), self.now, &mut side.rng).unwrap();
    }

    /// Starts both engines and connects them.
    pub fn boot(&mut self) {
        for i in 0..2 {
            let owned = self.sides[i].kernel.owned();
            self.input(i, RekeyInput::Start { owned });
        }
        self.connect();
    }

    pub fn connect(&mut self) {
        self.connected = true;
        for i in 0..2 {
            self.input(i, RekeyInput::PeerConnected);
        }
    }

    /// Drops the session: messages in flight are lost (as with TCP).
    pub fn disconnect(&mut self) {
        self.connected = false;
        self.events.retain(|_, e| matches!(e, Event::Kernel { .. }));
        for i in 0..2 {
            self.input(i, RekeyInput::PeerDisconnected);
        }
    }

    /// Kills side `i`'s engine (state lost, kernel and pool kept) and starts
    /// a new one with the SAs found in its kernel; the session restarts.
    pub fn restart(&mut self, i: usize) {
        // The session dies with the agent, and so do its unexecuted
        // kernel requests.
        self.events
            .retain(|_, e| matches!(e, Event::Kernel { side, .. } if *side != i));
        self.connected = false;
        self.input(1 - i, RekeyInput::PeerDisconnected);
        let side = &mut self.sides[i];
        side.restarts += 1;
        let mut rng = ChaCha8Rng::seed_from_u64(
            self.seed ^ (0xdead_0000 + u64::from(side.restarts) * 2 + i as u64),
        );
        side.engine = RekeyEngine::new(self.cfg[i].clone(), self.now, &mut rng).unwrap();
        side.rng = rng;
        side.wake = None;
        side.alarms.clear();
        let owned = side.kernel.owned();
        self.input(i, RekeyInput::Start { owned });
        self.connect();
    }

    /// Appends `blocks` more identical blocks to both pools and tells both
    /// engines.
    pub fn refill(&mut self, blocks: u64) {
        let [a, b] = &mut self.sides;
        let mut pools = [
            std::mem::replace(&mut a.pool, KeyPool::new(Role::Transmitter)),
            std::mem::replace(&mut b.pool, KeyPool::new(Role::Receiver)),
        ];
        fill(&mut pools, &mut self.rng, blocks);
        let [p0, p1] = pools;
        a.pool = p0;
        b.pool = p1;
        for i in 0..2 {
            self.input(i, RekeyInput::PoolRefilled);
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn schedule(&mut self, at: Instant, event: Event) {
        self.event_seq += 1;
        self.events.insert((at, self.event_seq), event);
    }

    /// Feeds one input to side `i`, queues what it asks for and checks the
    /// invariants.
    pub fn input(&mut self, i: usize, input: RekeyInput) {
        self.inputs += 1;
        let side = &mut self.sides[i];
        let actions = {
            let mut env = RekeyEnv {
                pool: &mut side.pool,
                rng: &mut side.rng,
            };
            side.engine.handle(self.now, input, &mut env)
        };
        for action in actions {
            match action {
                RekeyAction::Kernel { op, request } => {
                    // Requests run in order, one kernel latency apart.
                    let last = self
                        .events
                        .iter()
                        .filter(|(_, e)| matches!(e, Event::Kernel { side, .. } if *side == i))
                        .map(|(k, _)| k.0)
                        .max()
                        .unwrap_or(self.now);
                    let at = last.max(self.now) + KERNEL_LATENCY;
                    self.schedule(
                        at,
                        Event::Kernel {
                            side: i,
                            op,
                            request,
                        },
                    );
                }
                RekeyAction::Send(bytes) => self.transmit(1 - i, bytes),
                RekeyAction::WakeAt(t) => {
                    assert!(t >= self.now, "wake in the past");
                    self.sides[i].wake = Some(t);
                }
                RekeyAction::Alarm { alarm, raised } => {
                    let set = &mut self.sides[i].alarms;
                    let changed = if raised {
                        set.insert(alarm)
                    } else {
                        set.remove(&alarm)
                    };
                    assert!(changed, "alarm {alarm:?} raised={raised} twice");
                }
                RekeyAction::Notice(n) => self.sides[i].notices.push(n),
            }
        }
        self.check();
    }

    fn run_kernel(&mut self, i: usize, op: OpId, request: KernelRequest) {
        let outcome = self.sides[i]
            .kernel
            .execute(&request, &mut self.rng, self.now);
        if let (KernelRequest::AddSa { dir, spi, key, id }, KernelOutcome::Done) =
            (&request, outcome)
        {
            self.note_key(i, *dir, *spi, key, *id);
        }
        drop(request);
        self.check();
        self.input(i, RekeyInput::Kernel { op, outcome });
    }

    fn note_key(&mut self, i: usize, dir: SaDirection, spi: Spi, key: &SaKey, id: ExchangeId) {
        let sender = if dir == SaDirection::Outbound {
            i
        } else {
            1 - i
        };
        let fp: [u8; 32] = Sha256::digest(key.expose()).into();
        let who = (sender, spi, id);
        let seen = *self.keys_seen.entry(fp).or_insert(who);
        assert_eq!(seen, who, "SA key reused: first {seen:?}, now {who:?}");
    }

    fn transmit(&mut self, to: usize, mut bytes: Vec<u8>) {
        if !self.connected || self.rng.random_bool(self.link.loss) {
            return;
        }
        if let Some(t) = self.tamper.as_mut() {
            t(to, &mut bytes);
        }
        let copies = if self.rng.random_bool(self.link.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let span = self
                .link
                .delay_max
                .saturating_sub(self.link.delay_min)
                .as_micros() as u64;
            let delay =
                self.link.delay_min + Duration::from_micros(self.rng.random_range(0..=span));
            self.schedule(
                self.now + delay,
                Event::Deliver {
                    to,
                    bytes: bytes.clone(),
                },
            );
        }
    }

    /// Every outbound SA has the peer's inbound SA of the same SPI and key;
    /// an established direction never loses its last SA (when checked).
    pub fn check(&mut self) {
        for sender in 0..2 {
            let (s, r) = (&self.sides[sender].kernel, &self.sides[1 - sender].kernel);
            let mut outbound = 0;
            for ((dir, spi), sa) in &s.sas {
                if *dir != SaDirection::Outbound {
                    continue;
                }
                outbound += 1;
                let Some(peer) = r.sas.get(&(SaDirection::Inbound, *spi)) else {
                    panic!(
                        "t={:?}: side {sender} sends on SPI {spi} ({}) but the peer has no inbound SA for it",
                        self.elapsed(),
                        sa.id
                    );
                };
                assert!(peer.key.ct_eq(&sa.key), "SPI {spi}: keys differ");
                assert_eq!(peer.id, sa.id, "SPI {spi}: exchanges differ");
            }
            if outbound > 0 {
                self.established[sender] = true;
            } else if self.check_continuity && self.established[sender] {
                panic!(
                    "t={:?}: side {sender} lost its last outbound SA",
                    self.elapsed()
                );
            }
        }
    }

    fn next_lifetime_event(&self) -> Option<(Instant, usize, SaDirection, Spi, bool)> {
        let mut best: Option<(Instant, usize, SaDirection, Spi, bool)> = None;
        for i in 0..2 {
            for (&(dir, spi), sa) in &self.sides[i].kernel.sas {
                let soft = self.soft_lifetime.filter(|_| !sa.soft_sent);
                for (life, hard) in [(soft, false), (self.hard_lifetime, true)] {
                    if let Some(l) = life {
                        let t = sa.installed_at + l;
                        if best.is_none_or(|b| t < b.0) {
                            best = Some((t, i, dir, spi, hard));
                        }
                    }
                }
            }
        }
        best
    }

    /// Hard expiry of the SA pair carrying SPI `spi` from `sender`: both
    /// kernels drop it at once (the sim's simplification: real kernels
    /// time each side's copy separately).
    pub fn hard_expire_pair(&mut self, sender: usize, spi: Spi) {
        let receiver = 1 - sender;
        let a = self.sides[sender]
            .kernel
            .sas
            .remove(&(SaDirection::Outbound, spi));
        let b = self.sides[receiver]
            .kernel
            .sas
            .remove(&(SaDirection::Inbound, spi));
        if a.is_some() {
            self.input(
                sender,
                RekeyInput::HardExpire {
                    dir: SaDirection::Outbound,
                    spi,
                },
            );
        }
        if b.is_some() {
            self.input(
                receiver,
                RekeyInput::HardExpire {
                    dir: SaDirection::Inbound,
                    spi,
                },
            );
        }
    }

    /// Runs the next event if it is due by `until`; false if none is.
    pub fn step(&mut self, until: Instant) -> bool {
        let queued = self.events.keys().next().map(|k| k.0);
        let wakes = [self.sides[0].wake, self.sides[1].wake];
        let life = self.next_lifetime_event();
        let next = [queued, wakes[0], wakes[1], life.map(|l| l.0)]
            .into_iter()
            .flatten()
            .min();
        let Some(t) = next.filter(|&t| t <= until) else {
            return false;
        };
        if t == self.now {
            self.same_instant += 1;
            assert!(
                self.same_instant < 10_000,
                "busy loop at {:?}",
                self.elapsed()
            );
        } else {
            self.same_instant = 0;
        }
        self.now = t;
        if queued == Some(t) {
            let key = *self.events.keys().next().unwrap();
            match self.events.remove(&key).unwrap() {
                Event::Deliver { to, bytes } => self.input(to, RekeyInput::PeerMessage(bytes)),
                Event::Kernel { side, op, request } => self.run_kernel(side, op, request),
            }
        } else if let Some(i) = (0..2).find(|&i| wakes[i] == Some(t)) {
            self.sides[i].wake = None;
            self.input(i, RekeyInput::Tick);
        } else if let Some((_, i, dir, spi, hard)) = life {
            if hard {
                let sender = if dir == SaDirection::Outbound {
                    i
                } else {
                    1 - i
                };
                self.hard_expiries += 1;
                self.hard_expire_pair(sender, spi);
            } else {
                self.sides[i]
                    .kernel
                    .sas
                    .get_mut(&(dir, spi))
                    .unwrap()
                    .soft_sent = true;
                self.input(i, RekeyInput::SoftExpire { dir, spi });
            }
        }
        true
    }

    /// Runs every event up to `until`.
    pub fn run_until(&mut self, until: Instant) {
        while self.step(until) {}
        self.now = self.now.max(until);
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Runs in small steps until `done` holds; panics after `limit`.
    pub fn run_until_cond(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) {
        let deadline = self.now + limit;
        while !done(self) {
            assert!(
                self.now < deadline,
                "condition not reached within {limit:?}"
            );
            self.run_for(Duration::from_millis(50));
        }
    }

    pub fn rekeys_done(&self, i: usize) -> u64 {
        self.sides[i].engine.counters().rekeys_done
    }

    pub fn state(&self, i: usize) -> EngineState {
        self.sides[i].engine.status(self.now).state
    }

    /// Both sides idle with exactly one SA per direction, all of the same,
    /// current exchange, nothing larval or retiring, and keys matching.
    pub fn settled(&self) -> bool {
        let mut ids = BTreeSet::new();
        for i in 0..2 {
            let s = &self.sides[i];
            let st = s.engine.status(self.now);
            if st.state != EngineState::Idle
                || st.sas.len() != 2
                || st.sas.iter().any(|x| x.retiring)
                || !s.kernel.larval.is_empty()
                || s.kernel.sas.len() != 2
                || s.kernel.count(SaDirection::Inbound) != 1
            {
                return false;
            }
            ids.extend(s.kernel.sas.values().map(|sa| sa.id));
        }
        ids.len() == 1
    }

    /// The exchange all four SAs belong to once settled.
    pub fn current_exchange(&self) -> ExchangeId {
        self.sides[0].kernel.sas.values().next().expect("an SA").id
    }
}

fn fill(pools: &mut [KeyPool; 2], rng: &mut ChaCha8Rng, blocks: u64) {
    for _ in 0..blocks {
        let id = pools[0].next_block_id().max(pools[1].next_block_id());
        let mut bytes = vec![0u8; BLOCK_BYTES];
        rng.fill_bytes(&mut bytes);
        for p in pools.iter_mut() {
            p.append(BlockId(id.0), SecretBytes::from_slice(&bytes))
                .unwrap();
        }
    }
}
