//! Throughput of the simulated optics and of sifting.
//!
//! `optics/pipeline/<km>`: source (fibre included) + detector + Alice's
//! resolution of the reported slots, per simulated pulse (slot), GYS link.
//! `optics/frame_codec`: encoding and decoding a pulse frame, per pulse.
//! `sift/frame`: Bob's report, Alice's reply and both sifting sides with
//! both messages through their byte encodings, per detection.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qkd_ipsec::qkd::optics::{ChoiceRng, Detector, LinkParams, NoiseRng, PulseFrame, Source};
use qkd_ipsec::qkd::sift::{DetectionReport, SiftReply, alice_sift, bob_sift, report};

const SLOTS: u32 = 1 << 24;

fn stages(km: f64) -> (Source, Detector) {
    let p = LinkParams::gys(km);
    let src = Source::new(
        &p,
        ChoiceRng::insecure_from_fixed_seed(1),
        NoiseRng::from_seed(2),
    )
    .unwrap();
    let det = Detector::new(
        &p,
        ChoiceRng::insecure_from_fixed_seed(3),
        NoiseRng::from_seed(4),
    )
    .unwrap();
    (src, det)
}

fn pipeline(c: &mut Criterion) {
    let mut g = c.benchmark_group("optics/pipeline");
    g.throughput(Throughput::Elements(SLOTS as u64));
    g.sample_size(20);
    for km in [25.0, 100.0] {
        let (mut src, mut det) = stages(km);
        g.bench_function(format!("{km}km"), |b| {
            b.iter(|| {
                let (frame, log) = src.emit(SLOTS).unwrap();
                let d = det.detect(&frame);
                black_box(src.resolve(log, d.slots()).unwrap())
            })
        });
    }
    g.finish();
}

fn frame_codec(c: &mut Criterion) {
    let (mut src, _) = stages(25.0);
    let (frame, _) = src.emit(SLOTS).unwrap();
    let mut g = c.benchmark_group("optics/frame_codec");
    g.throughput(Throughput::Elements(SLOTS as u64));
    g.sample_size(20);
    g.bench_function("encode+decode_25km", |b| {
        b.iter(|| black_box(PulseFrame::decode(&frame.encode()).unwrap()))
    });
    g.finish();
}

fn sifting(c: &mut Criterion) {
    // 0 km: the most detections per frame.
    let (mut src, mut det) = stages(0.0);
    let (frame, log) = src.emit(SLOTS).unwrap();
    let d = det.detect(&frame);
    let alice = src.resolve(log, d.slots()).unwrap();
    let mut g = c.benchmark_group("sift");
    g.throughput(Throughput::Elements(d.len() as u64));
    g.sample_size(20);
    g.bench_function(format!("frame_{}_detections", d.len()), |b| {
        b.iter(|| {
            let rep = DetectionReport::decode(&report(&d).encode()).unwrap();
            let (reply, a) = alice_sift(&rep, &alice).unwrap();
            let reply = SiftReply::decode(&reply.encode()).unwrap();
            let k = bob_sift(&d, &reply).unwrap();
            black_box((a, k))
        })
    });
    g.finish();
}

criterion_group!(benches, pipeline, frame_codec, sifting);
criterion_main!(benches);
