//! Cascade throughput and efficiency: both parties in one thread over an
//! in-memory channel, every message encoded and decoded.
//!
//! Throughput is in sifted-key bits per second (`Throughput::Elements(n)`).
//! Before measuring, the bench prints a table of the reconciliation
//! efficiency f = leaked / (n·h(Q)) (Q = the realised error fraction),
//! the rounds and the failures over a few seeds per case.
//!
//! `cargo bench --bench cascade` (all cases) or with a filter, e.g.
//! `cargo bench --bench cascade -- option8/q0.02`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::qkd::cascade::{CascadeConfig, CascadeVariant, binary_entropy, reconcile_in_memory};
use qkd_ipsec::secret::SecretWords;
use rand_chacha::ChaCha8Rng;
use rand_core::{Rng, SeedableRng};

const QBERS: [f64; 4] = [0.01, 0.02, 0.05, 0.08];
const SIZES: [usize; 3] = [10_000, 100_000, 1_000_000];

/// A random key and a copy with each bit flipped with probability `qber`.
fn key_pair(n: usize, qber: f64, seed: u64) -> (SecretWords, SecretWords, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut alice = SecretWords::zeroed(n);
    for w in alice.expose_mut() {
        *w = rng.next_u64();
    }
    if !n.is_multiple_of(64) {
        let last = alice.expose().len() - 1;
        alice.expose_mut()[last] &= (1u64 << (n % 64)) - 1;
    }
    let mut bob = alice.duplicate();
    let threshold = (qber * 2f64.powi(64)) as u64;
    let mut errors = 0;
    for i in 0..n {
        if rng.next_u64() < threshold {
            bob.flip(i);
            errors += 1;
        }
    }
    (alice, bob, errors)
}

fn seed_of(i: u64) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&i.to_le_bytes());
    s
}

fn config(variant: CascadeVariant) -> CascadeConfig {
    CascadeConfig {
        variant,
        ..Default::default()
    }
}

/// Prints f, rounds and failures per case, averaged over a few seeds.
fn print_efficiency_table() {
    println!();
    println!("variant   QBER      n  seeds  f(mean)  f(max)  rounds  failed");
    for variant in CascadeVariant::ALL {
        for &q in &QBERS {
            for &n in &SIZES {
                let seeds = if n >= 1_000_000 { 3 } else { 10 };
                let (mut fs, mut rounds, mut failed) = (Vec::new(), 0u64, 0);
                for s in 0..seeds {
                    let (alice, bob, errors) = key_pair(n, q, 1000 + s);
                    let run = reconcile_in_memory(alice, bob, q, seed_of(s), &config(variant))
                        .expect("reconciliation");
                    let realised = errors as f64 / n as f64;
                    fs.push(run.bob.leaked_bits as f64 / (n as f64 * binary_entropy(realised)));
                    rounds += u64::from(run.bob.rounds);
                    failed += u32::from(!run.bob.key.ct_eq(&run.alice_key));
                }
                let mean = fs.iter().sum::<f64>() / fs.len() as f64;
                let max = fs.iter().cloned().fold(0.0, f64::max);
                println!(
                    "{:9} {:4.2} {:>8} {:>5}  {:7.4}  {:6.4}  {:6.0}  {:>6}",
                    variant.name(),
                    q,
                    n,
                    seeds,
                    mean,
                    max,
                    rounds as f64 / seeds as f64,
                    failed
                );
            }
        }
    }
    println!();
}

fn bench_cascade(c: &mut Criterion) {
    if std::env::var_os("CASCADE_BENCH_NO_TABLE").is_none() {
        print_efficiency_table();
    }
    for variant in CascadeVariant::ALL {
        let mut group = c.benchmark_group(format!("cascade/{}", variant.name()));
        for &q in &QBERS {
            for &n in &SIZES {
                group.throughput(Throughput::Elements(n as u64));
                group.sample_size(10);
                group.warm_up_time(Duration::from_millis(if n >= 1_000_000 {
                    500
                } else {
                    300
                }));
                group.measurement_time(Duration::from_secs(if n >= 1_000_000 { 4 } else { 2 }));
                let (alice, bob, _) = key_pair(n, q, 7);
                let cfg = config(variant);
                group.bench_function(BenchmarkId::new(format!("q{q}"), n), |b| {
                    b.iter_batched(
                        || (alice.duplicate(), bob.duplicate()),
                        |(a, b)| black_box(reconcile_in_memory(a, b, q, seed_of(1), &cfg)),
                        BatchSize::PerIteration,
                    )
                });
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_cascade);
criterion_main!(benches);
