//! Privacy amplification, verification and authentication throughput.
//!
//! Throughput is in input bits (`Throughput::Elements`), so criterion prints
//! Melem/s = Mbit/s of key (or transcript) hashed. Run with
//! `cargo bench --bench amplify`; `-- toeplitz/n=1000000` filters.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::gf2::ClmulBackend;
use qkd_ipsec::qkd::amplify::{ToeplitzSeed, toeplitz_hash_with};
use qkd_ipsec::secret::SecretWords;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn random_key(rng: &mut ChaCha20Rng, bits: usize) -> SecretWords {
    let mut k = SecretWords::zeroed(bits);
    for w in k.expose_mut() {
        *w = rng.next_u64();
    }
    if bits % 64 != 0 {
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

criterion_group!(benches, toeplitz);
criterion_main!(benches);
