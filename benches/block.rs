//! One whole block end to end: Alice and Bob in one thread over the
//! in-process driver — optics, sifting, Cascade (option 8), verification,
//! finite-key estimate, privacy amplification, Wegman–Carter tags — on a
//! 25 km GYS link with the `simulate` default decoy settings (μ = 0.6,
//! ν = 0.2, vacuum; probabilities 0.4, 0.4, 0.2).
//!
//! Throughput is in sifted-key bits per second (`Throughput::Elements` =
//! the block's target sifted bits). Before measuring, the bench runs a few
//! blocks through its own copy of the driver loop with a clock around each
//! handler call and prints the share of time per stage; that loop is not
//! what criterion measures.
//!
//! `cargo bench --bench block` (add `-- --warm-up-time 1 --measurement-time 3`
//! for a quick run).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::qkd::auth::{AUTH_KEY_BYTES_PER_BLOCK, AuthKeySource, InMemoryAuthKeys};
use qkd_ipsec::qkd::link::{
    AliceLink, AuthKeys, BlockConfig, BobLink, InProcessLink, LinkError, LinkOutput, LinkRng,
    MessageKind,
};
use qkd_ipsec::qkd::optics::LinkParams;
use qkd_ipsec::secret::SecretBytes;

const KM: f64 = 25.0;
const SIZES: [usize; 2] = [200_000, 1_000_000];

fn config(target: usize) -> BlockConfig {
    let mut p = LinkParams::gys(KM);
    p.source.intensities = [0.6, 0.2, 0.0];
    p.source.probabilities = [0.4, 0.4, 0.2];
    BlockConfig::new(p, target)
}

fn link(target: usize) -> InProcessLink {
    InProcessLink::new(
        config(target),
        LinkRng::insecure_from_fixed_seed(1),
        LinkRng::insecure_from_fixed_seed(2),
        None,
        &SecretBytes::from_slice(&[7u8; 128]),
    )
    .expect("valid config")
}

fn whole_block(c: &mut Criterion) {
    for n in SIZES {
        stage_shares(n);
    }
    let mut g = c.benchmark_group("block");
    g.sample_size(10);
    for n in SIZES {
        let mut l = link(n);
        let mut aborted = 0u32;
        g.throughput(Throughput::Elements(n as u64));
        g.measurement_time(Duration::from_secs(3 + n as u64 / 100_000));
        g.bench_with_input(BenchmarkId::new("25km", n), &n, |b, _| {
            b.iter(|| {
                let block = l.run_block().expect("block runs");
                if block.keys.is_none() {
                    aborted += 1;
                }
                black_box(block.alice.final_bits)
            })
        });
        if aborted > 0 {
            println!("block/25km/{n}: {aborted} measured blocks aborted (no key)");
        }
    }
    g.finish();
}

/// [`AuthKeys`] over an in-memory store, as the driver's: the reference is
/// the byte offset. Big enough for the profiled blocks without replenishing.
struct BenchAuth(InMemoryAuthKeys);

impl AuthKeys for BenchAuth {
    fn take(&mut self, len: usize) -> Result<(Vec<u8>, SecretBytes), LinkError> {
        let offset = self.0.consumed_bytes();
        Ok((offset.to_le_bytes().to_vec(), self.0.take(len)?))
    }

    fn take_at(&mut self, reference: &[u8], len: usize) -> Result<SecretBytes, LinkError> {
        if reference != self.0.consumed_bytes().to_le_bytes() {
            return Err(LinkError::AuthKeys("offsets out of step".into()));
        }
        Ok(self.0.take(len)?)
    }
}

/// Where the time goes, by handler. Frames hold at most 2^26 pulses, so a
/// block spans several; Alice emits each next frame inside her Detections
/// handler, which is why that bucket includes the emission of every frame
/// but the first.
const STAGES: [&str; 7] = [
    "A first emit",
    "B detect (all frames)",
    "A resolve+sift+next emits",
    "B sift+Cascade setup",
    "Cascade rounds",
    "verify+estimate+amplify+auth",
    "driver",
];

fn stage_of(kind: u8) -> usize {
    use MessageKind::*;
    match kind {
        k if k == Detections as u8 => 2,
        k if k == Sift as u8 => 3,
        k if k == CascadeStart as u8 || k == Parities as u8 || k == ParityReply as u8 => 4,
        _ => 5,
    }
}

/// Runs a few blocks with a clock around every handler and prints the share
/// of time per stage.
fn stage_shares(target: usize) {
    let blocks = 3;
    let mut alice = AliceLink::new(config(target), LinkRng::insecure_from_fixed_seed(3), 0)
        .expect("valid config");
    let mut bob =
        BobLink::new(config(target), LinkRng::insecure_from_fixed_seed(4)).expect("valid config");
    let boot = SecretBytes::from_slice(&vec![9u8; AUTH_KEY_BYTES_PER_BLOCK * (blocks + 1)]);
    let mut a_auth = BenchAuth(InMemoryAuthKeys::from_bootstrap(boot.duplicate()));
    let mut b_auth = BenchAuth(InMemoryAuthKeys::from_bootstrap(boot));
    let mut spent = [Duration::ZERO; 7];
    let total = Instant::now();
    let mut keys = 0;
    for _ in 0..blocks {
        let t = Instant::now();
        let mut to_bob: VecDeque<LinkOutput> = alice.start_block().expect("start").into();
        spent[0] += t.elapsed();
        let mut to_alice: VecDeque<Vec<u8>> = VecDeque::new();
        let (mut a_done, mut b_done) = (false, false);
        while !(a_done && b_done) {
            if let Some(out) = to_bob.pop_front() {
                let (outs, stage) = match out {
                    LinkOutput::Fibre(frame) => {
                        let t = Instant::now();
                        let outs = bob.handle_fibre(&frame).expect("frames fit the link");
                        (outs, (1, t.elapsed()))
                    }
                    LinkOutput::Send(msg) => {
                        let t = Instant::now();
                        let outs = bob.handle(&msg, &mut b_auth).expect("bob");
                        (outs, (stage_of(msg[0]), t.elapsed()))
                    }
                    LinkOutput::Key(_) => {
                        (a_done, keys) = (true, keys + 1);
                        continue;
                    }
                    LinkOutput::Aborted(_) => {
                        a_done = true;
                        continue;
                    }
                };
                spent[stage.0] += stage.1;
                for o in outs {
                    match o {
                        LinkOutput::Send(m) => to_alice.push_back(m),
                        LinkOutput::Fibre(_) => {}
                        _ => b_done = true,
                    }
                }
            } else if let Some(msg) = to_alice.pop_front() {
                let t = Instant::now();
                let outs = alice.handle(&msg, &mut a_auth).expect("alice");
                spent[stage_of(msg[0])] += t.elapsed();
                to_bob.extend(outs);
            } else {
                panic!("the block stalled");
            }
        }
    }
    let total = total.elapsed();
    let handled: Duration = spent.iter().sum();
    spent[6] += total.saturating_sub(handled);
    let shares: Vec<String> = STAGES
        .iter()
        .zip(spent)
        .map(|(name, d)| {
            format!(
                "{name} {:.0}%",
                100.0 * d.as_secs_f64() / total.as_secs_f64()
            )
        })
        .collect();
    println!(
        "block/25km/{target}: {blocks} blocks ({keys} with key) in {:.2} s; {}",
        total.as_secs_f64(),
        shares.join(", ")
    );
}

criterion_group!(benches, whole_block);
criterion_main!(benches);
