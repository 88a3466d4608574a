//! Privacy amplification, verification and authentication throughput.
//! (Benchmarks only: the all-zero authentication bootstrap below is not a
//! key anyone should use.)
//!
//! Throughput is in input bits (`Throughput::Elements`), so criterion prints
//! Melem/s = Mbit/s of key (or transcript) hashed. Run with
//! `cargo bench --bench amplify`; `-- toeplitz/n=1000000` filters.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::gf2::ClmulBackend;
use qkd_ipsec::qkd::amplify::{ToeplitzSeed, toeplitz_hash_with};
use qkd_ipsec::qkd::auth::{BlockAuthenticator, Direction, InMemoryAuthKeys, Role, Transcript};
use qkd_ipsec::qkd::verify::{VerifyConfig, VerifyRequest};
use qkd_ipsec::secret::{SecretBytes, SecretWords};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn random_key(rng: &mut ChaCha20Rng, bits: usize) -> SecretWords {
    let mut k = SecretWords::zeroed(bits);
    for w in k.expose_mut() {
        *w = rng.next_u64();
    }
    if !bits.is_multiple_of(64) {
        *k.expose_mut().last_mut().unwrap() &= (1u64 << (bits % 64)) - 1;
    }
    k
}

fn toeplitz(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let mut group = c.benchmark_group("toeplitz");
    group.sample_size(10);
    // m = n/2 (the brief's case) and m = 0.3 n (a finite-size decoy-state
    // block at a few per cent QBER keeps roughly that fraction).
    for (n, m) in [
        (1_000_000, 500_000),
        (1_000_000, 300_000),
        (10_000_000, 5_000_000),
        (10_000_000, 3_000_000),
    ] {
        let key = random_key(&mut rng, n);
        let seed = ToeplitzSeed::random(n, m, &mut rng).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        for backend in ClmulBackend::available() {
            if backend == ClmulBackend::Portable && n > 1_000_000 {
                continue;
            }
            group.bench_with_input(
                BenchmarkId::new(format!("{backend:?}/n={n}"), m),
                &m,
                |b, _| {
                    b.iter(|| {
                        toeplitz_hash_with(backend, black_box(&seed), black_box(&key)).unwrap()
                    })
                },
            );
        }
    }
    group.finish();
}

/// Tagging a reconciled key (one side) and checking it (the other), per
/// key bit.
fn verification(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let cfg = VerifyConfig::new(1e-15).unwrap();
    let mut group = c.benchmark_group("verify");
    for n in [1_000_000usize, 10_000_000] {
        let key = random_key(&mut rng, n);
        let req = VerifyRequest::new(&cfg, &key, &mut rng).unwrap();
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("tag", n), |b| {
            b.iter(|| VerifyRequest::new(&cfg, black_box(&key), &mut rng).unwrap())
        });
        group.bench_function(BenchmarkId::new("check", n), |b| {
            b.iter(|| req.check(&cfg, black_box(&key)).unwrap())
        });
    }
    group.finish();
}

/// One side's end-of-block authentication (own tag + expected peer tag,
/// i.e. two passes over the transcript), per transcript bit.
fn authentication(c: &mut Criterion) {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut group = c.benchmark_group("auth");
    for bytes in [100_000usize, 1_000_000, 10_000_000] {
        let mut transcript = Transcript::new();
        let mut msg = vec![0u8; 10_000];
        for i in 0..bytes / msg.len() {
            rng.fill_bytes(&mut msg);
            let dir = if i % 2 == 0 {
                Direction::AliceToBob
            } else {
                Direction::BobToAlice
            };
            transcript.record(dir, &msg).unwrap();
        }
        group.throughput(Throughput::Elements(8 * transcript.len_bytes() as u64));
        group.bench_function(BenchmarkId::new("block", bytes), |b| {
            b.iter_batched(
                || InMemoryAuthKeys::from_bootstrap(SecretBytes::zeroed(64)),
                |mut keys| {
                    let auth = BlockAuthenticator::take(Role::Alice, &mut keys).unwrap();
                    auth.finish(black_box(&transcript))
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, toeplitz, verification, authentication);
criterion_main!(benches);
