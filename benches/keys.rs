//! Cost of keeping a key pool durable: what the agent pays per change.
//!
//! Every take (36 bytes, one SA key) and every append (a 10^6-bit QKD block)
//! is one encrypted journal record plus `fdatasync`; the whole pool is
//! rewritten only on compaction, benched separately. Pools of 1 MB and 16 MB
//! show that the per-change cost does not grow with the pool. Throughput is
//! in bits of key material handled. Files go to `$TMPDIR` (or `/tmp`); the
//! figures are those of that file system's fsync.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::keys::{BlockId, KeyRef, KeyUse, PersistedPool, PoolKey, Role};
use qkd_ipsec::qkd::wire::{WireReader, WireWriter};
use qkd_ipsec::secret::{Secret, SecretBytes};

/// 10^6 bits, the largest QKD block the link stack produces.
const BLOCK_BYTES: usize = 125_000;
const SA_KEY_BYTES: u32 = 36;

struct BenchPool {
    dir: PathBuf,
    pool: PersistedPool,
}

impl Drop for BenchPool {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn filled_pool(tag: &str, pool_bytes: usize) -> BenchPool {
    let dir = std::env::temp_dir().join(format!("qkd-ipsec-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = PoolKey::from_secret(Secret::<32>::random().unwrap());
    let mut pool = PersistedPool::open(&dir, "peer", Role::Transmitter, &key).unwrap();
    for _ in 0..pool_bytes.div_ceil(BLOCK_BYTES) {
        append_block(&mut pool);
    }
    pool.compact().unwrap();
    BenchPool { dir, pool }
}

fn append_block(pool: &mut PersistedPool) {
    let id = pool.pool().next_block_id();
    pool.append(id, SecretBytes::random(BLOCK_BYTES).unwrap())
        .unwrap();
}

/// Consumes the oldest block entirely (both halves), so that appends keep
/// the pool at its size.
fn retire_oldest(pool: &mut PersistedPool) {
    let summary = pool.summary();
    let Some(oldest) = summary.blocks.first() else {
        return;
    };
    let half = oldest.len / 2;
    let mut w = WireWriter::new();
    w.u32(1).u64(oldest.id.0).u32(half).u32(oldest.len - half);
    let peer_half = KeyRef::decode(&mut WireReader::new(&w.finish())).unwrap();
    pool.take_at(&peer_half, KeyUse::Application).unwrap();
    let mut own_left: u32 = oldest
        .consumed
        .gaps(0, half)
        .iter()
        .map(|(s, e)| e - s)
        .sum();
    while own_left > 0 {
        let n = own_left.min(1 << 16);
        pool.take(KeyUse::Application, n).unwrap();
        own_left -= n;
    }
}

fn bench_persistence(c: &mut Criterion) {
    for (label, size) in [("1MB", 1 << 20), ("16MB", 16 << 20)] {
        let mut bp = filled_pool(label, size);
        let mut g = c.benchmark_group(format!("pool_{label}"));
        g.sample_size(10);
        g.measurement_time(Duration::from_secs(5));

        g.throughput(Throughput::Elements(u64::from(SA_KEY_BYTES) * 8));
        g.bench_function("take_sa_key_durable", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if bp.pool.pool().available_for(Role::Transmitter) < u64::from(SA_KEY_BYTES) {
                        append_block(&mut bp.pool);
                    }
                    let t = Instant::now();
                    let key = bp.pool.take(KeyUse::SaKey, SA_KEY_BYTES).unwrap();
                    spent += t.elapsed();
                    std::hint::black_box(key);
                }
                spent
            })
        });

        g.throughput(Throughput::Elements(BLOCK_BYTES as u64 * 8));
        g.bench_function("append_block_durable", |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let block = SecretBytes::random(BLOCK_BYTES).unwrap();
                    let id: BlockId = bp.pool.pool().next_block_id();
                    let t = Instant::now();
                    bp.pool.append(id, block).unwrap();
                    spent += t.elapsed();
                    retire_oldest(&mut bp.pool);
                }
                spent
            })
        });

        g.throughput(Throughput::Elements(bp.pool.pool().available() * 8));
        g.bench_function("compact_snapshot", |b| {
            b.iter(|| bp.pool.compact().unwrap())
        });
        g.finish();
    }
}

criterion_group!(benches, bench_persistence);
criterion_main!(benches);
