//! One hop of a relayed key, as the agent does it: the sender takes
//! `len + 32` pad bytes from the hop's pool and seals the share (one-time
//! pad + Wegman–Carter tag), the message is encoded and decoded, the
//! receiver takes the same bytes and opens it.
//!
//! Two pool kinds: in memory (the relay's own cost), and durable pools
//! ([`PersistedPool`]: one encrypted journal record + `fdatasync` per take
//! on each end, which is what an agent pays per hop). Throughput is in
//! bytes of relayed key; pool bytes consumed per relayed byte per hop are
//! `(len + 32) / len` (1.125 at the default 256 bytes), on each end.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::keys::{BlockId, KeyPool, KeyUse, PersistedPool, PoolKey, Role};
use qkd_ipsec::qkd::wire::{WireReader, WireWriter};
use qkd_ipsec::relay::{RelayHeader, RelayHop, pad_len};
use qkd_ipsec::secret::{Secret, SecretBytes};
use uuid::Uuid;

const BLOCK: usize = 1 << 20;

fn header(len: u32) -> RelayHeader {
    RelayHeader {
        key_id: Uuid::new_v4(),
        share: 0,
        shares: 1,
        path: vec!["gw-a".into(), "gw-b".into(), "gw-c".into()],
        hop: 0,
        len,
    }
}

/// Seal, encode, decode, open: one hop between `tx` and `rx`.
fn hop(
    take: &mut impl FnMut(u32) -> (qkd_ipsec::keys::KeyRef, SecretBytes),
    take_at: &mut impl FnMut(&qkd_ipsec::keys::KeyRef) -> SecretBytes,
    share: &SecretBytes,
    len: u32,
) {
    let (pad_ref, pad) = take(pad_len(len));
    let sealed = RelayHop::seal(header(len), share, pad_ref, pad).unwrap();
    let mut w = WireWriter::new();
    sealed.encode(&mut w);
    let bytes = w.finish();
    let got = RelayHop::decode(&mut WireReader::new(&bytes)).unwrap();
    let pad = take_at(&got.pad);
    let opened = got.open(pad).unwrap();
    assert_eq!(opened.len(), share.len());
}

fn memory_pools(id: u64, tx: &mut KeyPool, rx: &mut KeyPool) {
    let block = SecretBytes::random(BLOCK).unwrap();
    tx.append(BlockId(id), SecretBytes::from_slice(block.expose()))
        .unwrap();
    rx.append(BlockId(id), block).unwrap();
}

fn in_memory(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay_hop_in_memory");
    for len in [32u32, 256, 4096] {
        g.throughput(Throughput::Bytes(u64::from(len)));
        g.bench_with_input(BenchmarkId::from_parameter(len), &len, |b, &len| {
            let share = SecretBytes::random(len as usize).unwrap();
            b.iter_custom(|iters| {
                let mut tx = KeyPool::new(Role::Transmitter);
                let mut rx = KeyPool::new(Role::Receiver);
                let mut next = 1;
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    if tx.available_for(Role::Transmitter) < u64::from(pad_len(len)) {
                        memory_pools(next, &mut tx, &mut rx);
                        next += 1;
                    }
                    let t = Instant::now();
                    hop(
                        &mut |n| tx.take(KeyUse::Relay, n).unwrap(),
                        &mut |r| rx.take_at(r, KeyUse::Relay).unwrap(),
                        &share,
                        len,
                    );
                    spent += t.elapsed();
                }
                spent
            });
        });
    }
    g.finish();
}

struct Durable {
    dir: PathBuf,
    tx: PersistedPool,
    rx: PersistedPool,
}

impl Drop for Durable {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn durable_pools() -> Durable {
    // A directory per pair: the pair it replaces removes its own on drop.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("qkd-ipsec-bench-relay-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let key = PoolKey::from_secret(Secret::<32>::random().unwrap());
    let mut tx = PersistedPool::open(&dir.join("tx"), "gw-b", Role::Transmitter, &key).unwrap();
    let mut rx = PersistedPool::open(&dir.join("rx"), "gw-a", Role::Receiver, &key).unwrap();
    let block = SecretBytes::random(BLOCK).unwrap();
    tx.append(BlockId(1), SecretBytes::from_slice(block.expose()))
        .unwrap();
    rx.append(BlockId(1), block).unwrap();
    Durable { dir, tx, rx }
}

fn durable(c: &mut Criterion) {
    let mut g = c.benchmark_group("relay_hop_durable_pools");
    g.sample_size(20);
    let len = 256u32;
    g.throughput(Throughput::Bytes(u64::from(len)));
    g.bench_function(BenchmarkId::from_parameter(len), |b| {
        let share = SecretBytes::random(len as usize).unwrap();
        let mut p = durable_pools();
        b.iter(|| {
            if p.tx.pool().available_for(Role::Transmitter) < u64::from(pad_len(len)) {
                p = durable_pools();
            }
            let Durable { tx, rx, .. } = &mut p;
            hop(
                &mut |n| tx.take(KeyUse::Relay, n).unwrap(),
                &mut |r| rx.take_at(r, KeyUse::Relay).unwrap(),
                &share,
                len,
            );
        });
    });
    g.finish();
}

criterion_group!(benches, in_memory, durable);
criterion_main!(benches);
