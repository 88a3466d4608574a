//! End to end: the QKD link state machines ([`AliceLink`], [`BobLink`])
//! over two real peer links on 127.0.0.1 with Eve's proxy in the fibre
//! path, handed the transmitter's lab export of fibre keys (the fibre is
//! sealed). With Eve idle the block yields the same key on both sides (every
//! classical frame crossed her untouched); with Eve attacking a fraction f
//! of the pulses the test-basis QBER rises by f·(¼ − e_d/2) over the
//! baseline and the block aborts with a security alarm.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::*;
use crate::keys::Role;
use crate::peer::test_rig::*;
use crate::peer::{Endpoint, Inbound, PeerHandle, Stream};
use crate::qkd::auth::{AuthKeySource, InMemoryAuthKeys};
use crate::qkd::link::{
    AbortCause, AliceLink, AuthKeys, BlockConfig, BlockReport, BobLink, LinkError, LinkOutput,
    LinkRng,
};
use crate::qkd::optics::{LinkParams, PulseFrame};
use crate::secret::SecretBytes;

/// [`AuthKeys`] over an in-memory store, the reference being the offset
/// (as the in-process driver does it).
struct OffsetAuth(InMemoryAuthKeys);

impl AuthKeys for OffsetAuth {
    fn take(&mut self, len: usize) -> Result<(Vec<u8>, SecretBytes), LinkError> {
        let offset = self.0.consumed_bytes();
        Ok((offset.to_le_bytes().to_vec(), self.0.take(len)?))
    }

    fn take_at(&mut self, reference: &[u8], len: usize) -> Result<SecretBytes, LinkError> {
        let ours = self.0.consumed_bytes().to_le_bytes();
        if reference != ours {
            return Err(LinkError::AuthKeys("offsets out of step".into()));
        }
        Ok(self.0.take(len)?)
    }
}

/// The 25 km link of the link tests (decoy settings that give key from
/// 2·10^5 sifted bits), with frames of 2^24 slots (≈ 1.6 M pulse records)
/// so every frame stays under the decoder's record limit.
fn config() -> BlockConfig {
    let mut p = LinkParams::gys(25.0);
    p.source.intensities = [0.6, 0.2, 0.0];
    p.source.probabilities = [0.4, 0.4, 0.2];
    let mut c = BlockConfig::new(p, 200_000);
    c.max_frame_slots = 1 << 24;
    c
}

/// How a block ended on one side: its report and, on success, its key.
type Ended = (BlockReport, Option<crate::secret::SecretWords>);

fn ended(out: LinkOutput) -> Option<Ended> {
    match out {
        LinkOutput::Key(k) => Some((k.report, Some(k.key))),
        LinkOutput::Aborted(r) => Some((r, None)),
        _ => None,
    }
}

const DEADLINE: Duration = Duration::from_secs(60);

async fn next(rx: &mut Receiver<Inbound>) -> Bytes {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("a message before the deadline")
        .expect("link alive")
        .payload
}

/// Sends Alice's or Bob's outputs; returns the block's end if among them.
async fn send_all(h: &PeerHandle, outs: Vec<LinkOutput>) -> Option<Ended> {
    let mut done = None;
    for out in outs {
        match out {
            LinkOutput::Fibre(f) => h.send(Stream::Fibre, f.encode().into()).await.unwrap(),
            LinkOutput::Send(m) => h.send(Stream::Qkd, m.into()).await.unwrap(),
            other => done = ended(other),
        }
    }
    done
}

async fn alice_block(
    alice: &mut AliceLink,
    auth: &mut OffsetAuth,
    h: &PeerHandle,
    qkd: &mut Receiver<Inbound>,
) -> Ended {
    let mut outs = alice.start_block().unwrap();
    loop {
        if let Some(done) = send_all(h, outs).await {
            return done;
        }
        outs = alice.handle(&next(qkd).await, auth).unwrap();
    }
}

async fn bob_block(
    bob: &mut BobLink,
    auth: &mut OffsetAuth,
    h: &PeerHandle,
    fibre: &mut Receiver<Inbound>,
    qkd: &mut Receiver<Inbound>,
) -> Ended {
    loop {
        let outs = tokio::select! {
            f = next(fibre) => {
                // Whatever Eve sends must still be a valid pulse frame.
                let frame = PulseFrame::decode(&f).expect("Eve's frames decode");
                bob.handle_fibre(&frame).expect("Eve's frames fit the link")
            }
            m = next(qkd) => bob.handle(&m, auth).unwrap(),
        };
        if let Some(done) = send_all(h, outs).await {
            return done;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eve_raises_the_test_qber_by_a_quarter_of_her_fraction_and_aborts_the_block() {
    let g = Gateways::new();
    let (l, tracker, cancel) = listener("127.0.0.1:0".parse().unwrap()).await;
    let mut pc = ProxyConfig::new("127.0.0.1:0".parse().unwrap(), l.local_addr());
    pc.seed = Some(7);
    let export = g.dir.path().join("fibre.keys");
    pc.fibre_keys = Some(export.clone());
    let proxy = EveProxy::bind(pc).await.unwrap();
    let (via_eve, eve, dial) = (proxy.local_addr(), proxy.counters(), proxy.dial());
    proxy.spawn(&tracker, cancel.clone());
    let mut rx = spawn_side(
        fast_cfg(Role::Receiver),
        Endpoint::Accept(l),
        g.store(Role::Receiver),
        g.pool(Role::Receiver),
        tracker,
        cancel,
    );
    let mut tx_cfg = fast_cfg(Role::Transmitter);
    tx_cfg.lab_export_fibre_keys = Some(export);
    let mut tx = spawn_side(
        tx_cfg,
        Endpoint::Dial(via_eve),
        g.store(Role::Transmitter),
        g.pool(Role::Transmitter),
        TaskTracker::new(),
        CancellationToken::new(),
    );
    tx.handle.wait_connected().await.unwrap();
    rx.handle.wait_connected().await.unwrap();

    let bootstrap = SecretBytes::from_slice(&[7u8; 256]);
    let mut alice = AliceLink::new(config(), LinkRng::insecure_from_fixed_seed(11), 0).unwrap();
    let mut bob = BobLink::new(config(), LinkRng::insecure_from_fixed_seed(12)).unwrap();
    let mut alice_auth = OffsetAuth(InMemoryAuthKeys::from_bootstrap(bootstrap.duplicate()));
    let mut bob_auth = OffsetAuth(InMemoryAuthKeys::from_bootstrap(bootstrap));
    let e_d = config().link.detector.misalignment;

    let mut baseline: Option<(f64, f64)> = None;
    for fraction in [0.0, 0.5, 1.0] {
        dial.set(fraction).unwrap();
        let (pulses0, hit0) = (
            eve.pulses.load(std::sync::atomic::Ordering::Relaxed),
            eve.intercepted.load(std::sync::atomic::Ordering::Relaxed),
        );
        let ((a, a_key), (b, b_key)) = tokio::join!(
            alice_block(&mut alice, &mut alice_auth, &tx.handle, &mut tx.rx.qkd),
            bob_block(
                &mut bob,
                &mut bob_auth,
                &rx.handle,
                &mut rx.rx.fibre,
                &mut rx.rx.qkd
            ),
        );
        let pulses = eve.pulses.load(std::sync::atomic::Ordering::Relaxed) - pulses0;
        let hit = eve.intercepted.load(std::sync::atomic::Ordering::Relaxed) - hit0;
        let n = pulses as f64;
        assert!(
            (hit as f64 - n * fraction).abs() <= 5.0 * (n * fraction * (1.0 - fraction)).sqrt(),
            "Eve attacked {hit} of {pulses} pulses at f = {fraction}"
        );
        // Both sides saw the same public counts.
        assert_eq!(a.stats, b.stats);
        let q = a.qber_test();
        let sd = (q * (1.0 - q) / a.test_bits() as f64).sqrt();
        eprintln!(
            "f = {fraction}: Eve attacked {hit} of {pulses} pulses; test QBER {q:.4} ± {sd:.4} \
             over {} test bits; {} frames; aborted {:?}",
            a.test_bits(),
            a.frames,
            a.aborted
        );
        match baseline {
            None => {
                // Eve idle: a whole block (sift, Cascade, verification,
                // amplification, Wegman–Carter tags) crossed her proxy.
                assert_eq!((a.aborted, b.aborted), (None, None), "{a:?}");
                let (ak, bk) = (a_key.unwrap(), b_key.unwrap());
                assert!(ak.ct_eq(&bk), "both sides hold the same key");
                assert!(ak.bits() > 0);
                assert!(
                    (q - e_d).abs() < 0.01,
                    "baseline QBER {q} near misalignment {e_d}"
                );
                baseline = Some((q, sd));
            }
            Some((q0, sd0)) => {
                let expected = q0 + fraction * (0.25 - e_d / 2.0);
                assert!(
                    (q - expected).abs() < 5.0 * (sd * sd + sd0 * sd0).sqrt() + 0.002,
                    "test QBER {q} at f = {fraction}, expected {expected}"
                );
                assert_eq!(a.aborted, Some(AbortCause::TestQber));
                assert_eq!(b.aborted, Some(AbortCause::TestQber));
                assert!(a.aborted.unwrap().is_alarm());
                assert!(a_key.is_none() && b_key.is_none());
                assert_eq!(a.auth_key_bits, 0, "an aborted block spends no key");
            }
        }
    }
    assert_eq!(
        eve.fibre_unopened
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "Eve opened every fibre frame"
    );
    // Classical frames were never touched: no MAC or sequence failure.
    for side in [&tx, &rx] {
        let k = side.handle.counters();
        assert_eq!((k.auth_failures, k.replays, k.sessions), (0, 0, 1));
    }
    tx.stop().await;
    rx.stop().await;
}
