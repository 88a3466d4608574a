//! What a passive recorder of the WAN learns from a simulated link: no
//! pulse record and no SA key. A keyed agent pair runs while tcpdump
//! records gw-a's WAN interface (full snaplen) from the dialer's connect
//! until after a rekey; then the agents stop and the test reads the
//! capture with the project's own frame splitter and pulse decoder.
//!
//! (a) Every fibre frame of the peer channel is found (positive control:
//! there must be some) and none decodes to pulse records. (b) No 16-byte
//! window of any SA key the kernels hold — the agents' `rfc4106` keys, read
//! from `ip xfrm state` in both gateways — occurs in any captured packet or
//! in the rebuilt TCP streams (at least two keys, so the check can fail).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use qkd_ipsec::peer::fibre::FIBRE_TAG_LEN;
use qkd_ipsec::peer::frame::{FrameLimits, FrameType, Split, split_frame};
use qkd_ipsec::qkd::optics::PulseFrame;
use qkd_ipsec::testbed::{PEER_PORT, Side, WAN_IF};
use tokio::io::{AsyncBufReadExt, BufReader};
use zeroize::Zeroizing;

use crate::agent_support::*;
use crate::pcap;
use crate::support::*;

/// Short, so that a rekey falls inside the capture soon; the bootstrap
/// block alone pays for the first generations.
const REKEY: Duration = Duration::from_secs(5);
/// Bytes of a key window looked for in the capture.
const WINDOW: usize = 16;

/// tcpdump writing gw-a's WAN traffic to a file; killed on drop.
struct Tcpdump {
    child: tokio::process::Child,
}

impl Tcpdump {
    /// Starts tcpdump in `ns` and waits until it is capturing.
    async fn start(ns: &str, file: &Path) -> Self {
        let path = file.to_str().expect("UTF-8 path");
        // -s 0: whole packets; -U: each packet written as it comes, so
        // the file is complete when tcpdump stops; -Z root: keep the
        // right to write where the test asked.
        let mut c = in_netns(
            ns,
            "tcpdump",
            &[
                "-i", WAN_IF, "-n", "-s", "0", "-U", "-Z", "root", "-w", path,
            ],
        );
        c.stderr(Stdio::piped()).stdout(Stdio::null());
        let mut child = c.spawn().expect("spawn tcpdump");
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        within(
            Duration::from_secs(30),
            "tcpdump to start listening",
            async {
                while let Some(line) = lines.next_line().await.expect("tcpdump stderr") {
                    if line.contains("listening on") {
                        return;
                    }
                }
                panic!("tcpdump exited before capturing");
            },
        )
        .await;
        // Its final statistics go to stderr; drain it so it never blocks.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                println!("tcpdump: {line}");
            }
        });
        Self { child }
    }

    /// SIGTERM (tcpdump flushes and closes the file), then waits.
    async fn stop(mut self) {
        let pid = self.child.id().expect("tcpdump running") as i32;
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
        within(
            Duration::from_secs(10),
            "tcpdump to stop",
            self.child.wait(),
        )
        .await
        .expect("wait for tcpdump");
    }
}

/// Removes the capture however the test ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Every `WINDOW`-byte window of the SA keys, sorted, with a two-byte
/// prefix table so that a scan of megabytes rejects almost every position
/// with one lookup. Zeroised on drop.
struct KeyWindows {
    prefix: Vec<bool>,
    windows: Zeroizing<Vec<[u8; WINDOW]>>,
}

impl KeyWindows {
    fn new(keys: &[qkd_ipsec::secret::SecretBytes]) -> Self {
        let mut windows = Zeroizing::new(Vec::new());
        let mut prefix = vec![false; 1 << 16];
        for k in keys {
            for w in k.expose().windows(WINDOW) {
                prefix[usize::from(u16::from_be_bytes([w[0], w[1]]))] = true;
                windows.push(w.try_into().expect("window size"));
            }
        }
        windows.sort_unstable();
        Self { prefix, windows }
    }

    fn found_in(&self, hay: &[u8]) -> bool {
        hay.windows(WINDOW).any(|h| {
            self.prefix[usize::from(u16::from_be_bytes([h[0], h[1]]))]
                && self.windows.binary_search_by(|w| w[..].cmp(h)).is_ok()
        })
    }
}

/// Frame counts of one direction of the peer channel.
#[derive(Debug, Default)]
struct Walked {
    frames: usize,
    hello: usize,
    fibre: usize,
    fibre_bytes: usize,
}

/// Walks a peer-channel byte stream frame by frame; every fibre payload
/// must fail to decode as pulse records, with or without its tag.
fn walk(bytes: &[u8], what: &str) -> Walked {
    let limits = FrameLimits::default();
    let mut w = Walked::default();
    let mut at = 0;
    while at < bytes.len() {
        let f = match split_frame(&bytes[at..], &limits) {
            Ok(Split::Frame(f)) => f,
            // The capture ended inside a frame.
            Ok(Split::Incomplete { .. }) => break,
            Err(e) => panic!(
                "{what}: frame {} at byte {at} does not parse: {e}",
                w.frames
            ),
        };
        w.frames += 1;
        match f.header.frame_type {
            FrameType::Hello => w.hello += 1,
            FrameType::Fibre => {
                w.fibre += 1;
                w.fibre_bytes += f.payload.len();
                let body = &f.payload[..f.payload.len().saturating_sub(FIBRE_TAG_LEN)];
                for candidate in [f.payload, body] {
                    assert!(
                        PulseFrame::decode(candidate).is_err(),
                        "{what}: fibre frame {} decodes to pulse records",
                        w.fibre
                    );
                }
            }
            _ => {}
        }
        at += f.total_len();
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wan_capture_shows_no_pulse_record_and_no_sa_key() {
    let t0 = Instant::now();
    let mut opts = options("sealed");
    opts.rekey_interval = REKEY;
    let pair = start_pair(opts).await;
    let pcap_path = std::env::temp_dir().join(format!("{}-wan.pcap", pair.bed().prefix));
    let _remove = RemoveOnDrop(pcap_path.clone());

    // The dialer is restarted under capture, so the capture holds its
    // connection from the SYN (frame boundaries need the stream's start).
    pair.stop_agent(Side::A);
    let dump = Tcpdump::start(pair.netns_name(Side::A), &pcap_path).await;
    pair.start_agent(Side::A).expect("restart gw-a's agent");
    let (a, _) = wait_keyed(&pair, 1, Duration::from_secs(120)).await;
    let g = tunnel(&a).generation;
    let (a, _) = wait_keyed(&pair, g + 1, REKEY * 8).await;
    println!(
        "sealed: rekeyed to generation {} {:?} after start; stopping",
        tunnel(&a).generation,
        t0.elapsed()
    );
    dump.stop().await;
    for side in Side::BOTH {
        pair.stop_agent(side);
    }

    // The agents stopped with on_stop = "keep": their SAs are still there.
    let mut keys = Vec::new();
    for side in Side::BOTH {
        for sa in kernel_sas(pair.netns_name(side)).await {
            keys.extend(sa.key);
        }
    }
    assert!(
        keys.len() >= 2,
        "only {} keyed SAs in the kernels: the key check would prove nothing",
        keys.len()
    );
    let windows = KeyWindows::new(&keys);

    let file = std::fs::read(&pcap_path).expect("read the capture");
    let cap = pcap::parse(&file);
    let streams = cap.tcp_streams();
    let mut total = Walked::default();
    for s in &streams {
        if s.flow.src.1 != PEER_PORT && s.flow.dst.1 != PEER_PORT {
            continue;
        }
        let what = format!("{:?}", s.flow);
        let w = walk(&s.bytes, &what);
        println!(
            "sealed: {what}: {} bytes{}, {w:?}",
            s.bytes.len(),
            if s.truncated {
                " (capture lost a segment)"
            } else {
                ""
            }
        );
        total.frames += w.frames;
        total.hello += w.hello;
        total.fibre += w.fibre;
        total.fibre_bytes += w.fibre_bytes;
        assert!(
            !windows.found_in(&s.bytes),
            "{what}: {WINDOW} bytes of an SA key in the peer channel's stream"
        );
    }
    assert!(
        total.hello >= 1,
        "no Hello in the capture: the dialer's connection was not rebuilt ({} streams, {} packets)",
        streams.len(),
        cap.frames.len()
    );
    assert!(
        total.fibre >= 1,
        "no fibre frame in the capture: the parser cannot have checked anything ({total:?})"
    );
    for (i, packet) in cap.frames.iter().enumerate() {
        assert!(
            !windows.found_in(packet),
            "captured packet {i} holds {WINDOW} bytes of an SA key"
        );
    }
    println!(
        "sealed: {} packets ({} bytes, {} not IPv4), {} peer-channel frames of which {} fibre \
         ({} bytes): no pulse record; {} SA keys: none in the capture; {:?} in all",
        cap.frames.len(),
        file.len(),
        cap.skipped,
        total.frames,
        total.fibre,
        total.fibre_bytes,
        keys.len(),
        t0.elapsed()
    );
    pair.teardown().expect("teardown");
}
