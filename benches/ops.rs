//! Cost of reading the status board: what one `qkd-ipsec status`, one
//! Prometheus scrape or one systemd STATUS refresh costs the agent, for the
//! 1,000-tunnel gateway of the load target (10 peers), and the cost
//! of the hot update (one tunnel's kernel counters). Throughput is in
//! tunnels per second, so the figure reads as "tunnels rendered per second".

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::ops::{
    PeerRole, RekeyCause, SaUsage, StatusBoard, render_metrics, render_text, summary_line,
};

const PEERS: usize = 10;
const TUNNELS: usize = 1000;

fn loaded_board() -> StatusBoard {
    let board = StatusBoard::new("gw-a");
    for p in 0..PEERS {
        board.register_peer(&format!("peer-{p}"), PeerRole::Transmitter);
    }
    for t in 0..TUNNELS {
        let r = board.register_tunnel(&format!("tunnel-{t}"), &format!("peer-{}", t % PEERS));
        r.sa_installed(
            7,
            0xc000_0000 + t as u32,
            0xd000_0000 + t as u32,
            RekeyCause::Timer,
        );
        r.set_sa_usage(SaUsage {
            bytes_in: 1 << 30,
            packets_in: 1 << 20,
            bytes_out: 1 << 29,
            packets_out: 1 << 19,
        });
        if t % 100 == 0 {
            r.rekey_failed(RekeyCause::SoftExpire, "pool exhausted");
        }
    }
    board
}

fn bench_reads(c: &mut Criterion) {
    let board = loaded_board();
    let mut g = c.benchmark_group("ops_1000_tunnels");
    g.throughput(Throughput::Elements(TUNNELS as u64));
    g.bench_function("snapshot", |b| b.iter(|| black_box(board.snapshot())));
    let snap = board.snapshot();
    g.bench_function("render_text", |b| b.iter(|| black_box(render_text(&snap))));
    g.bench_function("render_json", |b| {
        b.iter(|| black_box(serde_json::to_string_pretty(&snap).unwrap()))
    });
    g.bench_function("render_metrics", |b| {
        b.iter(|| black_box(render_metrics(&snap)))
    });
    g.bench_function("summary_line", |b| {
        b.iter(|| black_box(summary_line(&snap)))
    });
    g.finish();
    println!(
        "sizes for {TUNNELS} tunnels: text {} B, JSON {} B, metrics {} B",
        render_text(&snap).len(),
        serde_json::to_string_pretty(&snap).unwrap().len(),
        render_metrics(&snap).len()
    );
}

fn bench_update(c: &mut Criterion) {
    let board = loaded_board();
    let t = board.register_tunnel("tunnel-500", "peer-0");
    let mut g = c.benchmark_group("ops_update");
    g.throughput(Throughput::Elements(1));
    let mut n = 0u64;
    g.bench_function("set_sa_usage", |b| {
        b.iter(|| {
            n += 1;
            t.set_sa_usage(SaUsage {
                bytes_in: n,
                packets_in: n,
                bytes_out: n,
                packets_out: n,
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench_reads, bench_update);
criterion_main!(benches);
