//! Hostile peer input: every kind of `qkd-ipsec eve hostile` attack —
//! garbage, a truncated Hello, an oversized length, a replay of the real
//! transmitter's recorded handshake and frames, a forged handshake and
//! frame — is sent to the receiver's peer port while the real link runs.
//! Each time the agent must drop the connection (the tool's exit status),
//! keep running, keep the real session, and keep rekeying; and no key may
//! be accepted from the attacker: throughout, every SA in gw-b's kernel
//! had its twin with the same key in gw-a's (the initiator, through which
//! every legitimate key passes), and in the end the pools of both sides
//! hold the same blocks.

use std::time::Duration;

use qkd_ipsec::ops::ChannelState;
use qkd_ipsec::testbed::{EveOptions, PEER_PORT, Side};

use crate::agent_support::*;
use crate::support::*;

const ATTACKS: [&str; 5] = ["garbage", "truncated", "oversized", "replay", "forged"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_dropped_and_the_agent_keeps_serving() {
    let mut opts = options("hostile");
    opts.rekey_interval = Duration::from_secs(3);
    // A transparent Eve records the real transmitter's first connection,
    // the material of the replay attack.
    opts.eve = Some(EveOptions {
        side: Side::A,
        fraction: 0.0,
        record: true,
    });
    let pair = start_pair(opts).await;
    let (a0, b0) = wait_keyed(&pair, 1, Duration::from_secs(120)).await;
    let session = link(&b0).channel.session;
    let recording = pair.eve_recording();
    assert!(
        std::fs::metadata(&recording).is_ok_and(|m| m.len() > 0),
        "Eve recorded nothing at {}",
        recording.display()
    );
    let target = format!("{}:{PEER_PORT}", pair.bed().gw_b.wan);
    let mut g = tunnel(&a0).generation;
    let twins = SaTwinWatch::start(&pair);

    for attack in ATTACKS {
        let recording = recording.to_string_lossy().into_owned();
        let mut args = vec![
            "eve",
            "hostile",
            "--target",
            &target,
            "--attack",
            attack,
            "--dialer",
            "gw-a",
            "--acceptor",
            "gw-b",
            "--wait",
            "20",
        ];
        // The replay needs the recording; the forged handshake must claim
        // the channel's current key epoch to reach the key check (the
        // recording's Hello is from epoch 0).
        let epoch = pair
            .status(Side::B)
            .map(|s| link(&s).channel.epoch.to_string())
            .unwrap_or_else(|e| panic!("{e}"));
        match attack {
            "forged" => args.extend(["--epoch", epoch.as_str()]),
            _ => args.extend(["--recording", recording.as_str()]),
        }
        let out = in_netns(pair.netns_name(Side::A), BIN, &args)
            .output()
            .await
            .expect("run eve hostile");
        let report = String::from_utf8_lossy(&out.stdout);
        println!("hostile {attack}: {}", report.trim());
        assert!(
            out.status.success(),
            "{attack}: the agent did not drop the connection: {report} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(pair.agent_running(Side::B), "gw-b's agent died on {attack}");
        // It keeps serving: the real session stays and a rekey completes.
        let (a, b) = wait_keyed(&pair, g + 1, Duration::from_secs(30)).await;
        g = tunnel(&a).generation;
        assert_eq!(link(&b).channel.state, ChannelState::Connected);
        assert_eq!(
            link(&b).channel.session,
            session,
            "{attack}: the real session was replaced"
        );
        if twins.failed() {
            panic!("after {attack}: {:?}", twins.finish().await);
        }
    }

    let checked = twins
        .finish()
        .await
        .unwrap_or_else(|e| panic!("key accepted from an attacker? {e}"));
    assert!(
        checked >= 2 * ATTACKS.len(),
        "only {checked} SAs checked against gw-a"
    );

    // The pools hold the same blocks (let an in-flight block land first).
    let mut last = String::new();
    let agreed = within(Duration::from_secs(30), "pools to agree", async {
        loop {
            let a = pair.status(Side::A).unwrap_or_else(|e| panic!("{e}"));
            let b = pair.status(Side::B).unwrap_or_else(|e| panic!("{e}"));
            let (pa, pb) = (link(&a).pool.clone(), link(&b).pool.clone());
            if let (Some(pa), Some(pb)) = (&pa, &pb)
                && pa.blocks == pb.blocks
                && pa.appended_bytes == pb.appended_bytes
            {
                return b;
            }
            last = format!("{pa:?} / {pb:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let _ = last;
    let c = &link(&agreed).channel;
    // The forged key confirmation is an authentication failure: counted
    // and alarmed.
    assert!(
        c.auth_failures >= 1,
        "the forged handshake was not counted: {c:?}"
    );
    assert!(
        alarms_raised(&agreed, "authentication_failed") >= 1,
        "no authentication alarm for the forged handshake"
    );
    println!(
        "hostile: gw-b channel counters after {} attacks: auth failures {}, replays {}, \
         protocol errors {}",
        ATTACKS.len(),
        c.auth_failures,
        c.replays,
        c.protocol_errors
    );
    pair.teardown().expect("teardown");
}
