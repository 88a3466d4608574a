use super::*;
use rand::{Rng, RngExt, SeedableRng};
use rand_chacha::ChaCha20Rng;

fn random_bytes(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    (0..len).map(|_| rng.next_u32() as u8).collect()
}

/// Two identical sources, as two peers provisioned with one bootstrap.
fn peer_sources(rng: &mut ChaCha20Rng, len: usize) -> (InMemoryAuthKeys, InMemoryAuthKeys) {
    let boot = random_bytes(rng, len);
    (
        InMemoryAuthKeys::from_bootstrap(SecretBytes::from_slice(&boot)),
        InMemoryAuthKeys::from_bootstrap(SecretBytes::from_vec(boot)),
    )
}

/// Runs the tag exchange over the two transcripts; true iff both sides
/// accept the other's tag (each side's outcome is also returned).
fn exchange(
    alice_keys: &mut InMemoryAuthKeys,
    bob_keys: &mut InMemoryAuthKeys,
    alice_view: &Transcript,
    bob_view: &Transcript,
) -> (bool, bool) {
    let (a_tag, a_check) = BlockAuthenticator::take(Role::Alice, alice_keys)
        .unwrap()
        .finish(alice_view);
    let (b_tag, b_check) = BlockAuthenticator::take(Role::Bob, bob_keys)
        .unwrap()
        .finish(bob_view);
    // Tags cross the wire.
    let a_tag = AuthTag::decode(&a_tag.encode()).unwrap();
    let b_tag = AuthTag::decode(&b_tag.encode()).unwrap();
    let bob_accepts = b_check.verify(&a_tag).is_ok();
    let alice_accepts = a_check.verify(&b_tag).is_ok();
    (alice_accepts, bob_accepts)
}

/// A block's worth of messages with random directions and sizes.
fn random_messages(
    rng: &mut ChaCha20Rng,
    count: usize,
    max_len: usize,
) -> Vec<(Direction, Vec<u8>)> {
    (0..count)
        .map(|_| {
            let dir = if rng.random_bool(0.5) {
                Direction::AliceToBob
            } else {
                Direction::BobToAlice
            };
            let len = rng.random_range(0..=max_len);
            (dir, random_bytes(rng, len))
        })
        .collect()
}

/// Both sides' view when nothing is tampered with: Alice records what she
/// sends and receives, Bob likewise.
fn honest_views(messages: &[(Direction, Vec<u8>)]) -> (Transcript, Transcript) {
    let (mut alice, mut bob) = (Transcript::new(), Transcript::new());
    for (dir, msg) in messages {
        match dir {
            Direction::AliceToBob => {
                alice.record_sent(Role::Alice, msg).unwrap();
                bob.record_received(Role::Bob, msg).unwrap();
            }
            Direction::BobToAlice => {
                bob.record_sent(Role::Bob, msg).unwrap();
                alice.record_received(Role::Alice, msg).unwrap();
            }
        }
    }
    (alice, bob)
}

#[test]
fn honest_transcripts_authenticate() {
    let mut rng = ChaCha20Rng::seed_from_u64(21);
    let (mut ka, mut kb) = peer_sources(&mut rng, 10 * AUTH_KEY_BYTES_PER_BLOCK);
    for count in [0, 1, 2, 7, 40] {
        let (a, b) = honest_views(&random_messages(&mut rng, count, 300));
        assert_eq!(a, b);
        assert_eq!(
            exchange(&mut ka, &mut kb, &a, &b),
            (true, true),
            "{count} messages"
        );
    }
    assert_eq!(ka.consumed_bytes(), 5 * AUTH_KEY_BYTES_PER_BLOCK as u64);
}

#[test]
fn every_byte_of_a_small_transcript_matters() {
    let mut rng = ChaCha20Rng::seed_from_u64(22);
    let messages = vec![
        (Direction::AliceToBob, b"sift".to_vec()),
        (Direction::BobToAlice, vec![]),
        (Direction::BobToAlice, random_bytes(&mut rng, 21)),
    ];
    let (alice, bob) = honest_views(&messages);
    let len = bob.len_bytes();
    assert_eq!(len, 3 * 9 + 25);
    let deltas = [0x01u8, 0x80, 0xFF, 0x5A];
    let (mut ka, mut kb) = peer_sources(&mut rng, len * deltas.len() * AUTH_KEY_BYTES_PER_BLOCK);
    for i in 0..len {
        for delta in deltas {
            let mut tampered = bob.clone();
            tampered.bytes[i] ^= delta;
            assert_eq!(
                exchange(&mut ka, &mut kb, &alice, &tampered),
                (false, false),
                "byte {i} ^ {delta:#x}"
            );
        }
    }
    assert_eq!(ka.available(), 0, "every trial used fresh key");
}

#[test]
fn random_tampering_of_a_large_transcript_is_detected() {
    let mut rng = ChaCha20Rng::seed_from_u64(23);
    let messages = random_messages(&mut rng, 60, 2000);
    let (alice, bob) = honest_views(&messages);
    let trials = 300;
    let (mut ka, mut kb) = peer_sources(&mut rng, trials * AUTH_KEY_BYTES_PER_BLOCK);
    for trial in 0..trials {
        let mut tampered = bob.clone();
        match trial % 5 {
            0 => {
                let i = rng.random_range(0..tampered.bytes.len());
                tampered.bytes[i] ^= rng.random_range(1..=255u8);
            }
            1 => {
                let cut = rng.random_range(0..tampered.bytes.len());
                tampered.bytes.truncate(cut);
            }
            2 => tampered.bytes.push(rng.next_u32() as u8),
            3 => {
                // A message dropped, or replaced by one of the same length
                // with one byte changed (as an active attacker would).
                let mut msgs = messages.clone();
                let k = rng.random_range(0..msgs.len());
                if msgs[k].1.is_empty() || rng.random_bool(0.5) {
                    msgs.remove(k);
                } else {
                    let j = rng.random_range(0..msgs[k].1.len());
                    msgs[k].1[j] ^= 1;
                }
                tampered = honest_views(&msgs).1;
            }
            _ => {
                // Two messages swapped, or one's direction reversed.
                let mut msgs = messages.clone();
                let k = rng.random_range(0..msgs.len() - 1);
                if rng.random_bool(0.5) && msgs[k] != msgs[k + 1] {
                    msgs.swap(k, k + 1);
                } else {
                    msgs[k].0 = match msgs[k].0 {
                        Direction::AliceToBob => Direction::BobToAlice,
                        Direction::BobToAlice => Direction::AliceToBob,
                    };
                }
                tampered = honest_views(&msgs).1;
            }
        }
        assert_ne!(tampered, bob);
        assert_eq!(
            exchange(&mut ka, &mut kb, &alice, &tampered),
            (false, false),
            "trial {trial}"
        );
    }
}

#[test]
fn tags_depend_on_role_and_agree_across_backends() {
    let mut rng = ChaCha20Rng::seed_from_u64(24);
    let (t, _) = honest_views(&random_messages(&mut rng, 10, 500));
    // Bob wrongly acting as Alice uses Alice's key for his own tag: Alice
    // must reject it (her expected peer tag uses Bob's key).
    let (mut ka, mut kb) = peer_sources(&mut rng, AUTH_KEY_BYTES_PER_BLOCK);
    let (_, a_check) = BlockAuthenticator::take(Role::Alice, &mut ka)
        .unwrap()
        .finish(&t);
    let (wrong, _) = BlockAuthenticator::take(Role::Alice, &mut kb)
        .unwrap()
        .finish(&t);
    assert_eq!(a_check.verify(&wrong), Err(AuthError::TagMismatch));
    // The hash is the same on every backend, so peers on different CPUs agree.
    let point = Gf128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210);
    let hashes: Vec<Gf128> = ClmulBackend::available()
        .into_iter()
        .map(|b| t.hash(b, point))
        .collect();
    assert!(hashes.windows(2).all(|w| w[0] == w[1]));
}

/// Records the offsets every `take` reads, for the non-reuse test.
struct Recording {
    inner: InMemoryAuthKeys,
    taken: Vec<(u64, usize)>,
}

impl AuthKeySource for Recording {
    fn take(&mut self, len: usize) -> Result<SecretBytes, AuthError> {
        let offset = self.inner.consumed_bytes();
        let out = self.inner.take(len)?;
        self.taken.push((offset, len));
        Ok(out)
    }
    fn available(&self) -> usize {
        self.inner.available()
    }
}

#[test]
fn key_material_is_never_reused() {
    let mut rng = ChaCha20Rng::seed_from_u64(25);
    let boot = random_bytes(&mut rng, 3 * AUTH_KEY_BYTES_PER_BLOCK + 10);
    let mut src = Recording {
        inner: InMemoryAuthKeys::from_bootstrap(SecretBytes::from_slice(&boot)),
        taken: vec![],
    };
    let mut seen: Vec<Vec<u8>> = vec![];
    for block in 0..3 {
        let auth = BlockAuthenticator::take(
            if block % 2 == 0 {
                Role::Alice
            } else {
                Role::Bob
            },
            &mut src,
        )
        .unwrap();
        assert_eq!(auth.key_bits_consumed(), 512);
        for key in [&auth.own, &auth.peer] {
            seen.push(key.0.expose().to_vec());
        }
    }
    // Offsets: consecutive, disjoint, in lockstep order.
    let expect: Vec<(u64, usize)> = (0..6)
        .map(|i| (i * TAG_KEY_BYTES as u64, TAG_KEY_BYTES))
        .collect();
    assert_eq!(src.taken, expect);
    for (a, (o1, l1)) in src.taken.iter().enumerate() {
        for (o2, l2) in &src.taken[a + 1..] {
            assert!(o1 + *l1 as u64 <= *o2 || o2 + *l2 as u64 <= *o1, "overlap");
        }
    }
    // And the bytes are exactly the bootstrap's, each slice once: Alice's
    // tag key (own for Alice, peer for Bob) comes first in every block.
    for block in 0..3 {
        let (own, peer) = (&seen[2 * block], &seen[2 * block + 1]);
        let (alice_key, bob_key) = if block % 2 == 0 {
            (own, peer)
        } else {
            (peer, own)
        };
        let base = block * AUTH_KEY_BYTES_PER_BLOCK;
        assert_eq!(&alice_key[..], &boot[base..base + 32]);
        assert_eq!(&bob_key[..], &boot[base + 32..base + 64]);
    }
    // Exhaustion is an error and consumes nothing.
    assert_eq!(
        BlockAuthenticator::take(Role::Alice, &mut src).unwrap_err(),
        AuthError::KeyExhausted {
            needed: 64,
            available: 10
        }
    );
    assert_eq!(src.available(), 10);
    assert_eq!(
        src.inner.take(11).unwrap_err(),
        AuthError::KeyExhausted {
            needed: 11,
            available: 10
        }
    );
    // Replenishing (from a block's final key) makes it usable again.
    src.inner.replenish(SecretBytes::from_slice(&[7u8; 54]));
    assert!(BlockAuthenticator::take(Role::Alice, &mut src).is_ok());
    assert_eq!(src.available(), 0);
}

#[test]
fn takes_span_chunks_and_wipe_what_they_took() {
    let mut keys = InMemoryAuthKeys::from_bootstrap(SecretBytes::from_slice(&[1, 2, 3]));
    keys.replenish(SecretBytes::zeroed(0));
    keys.replenish(SecretBytes::from_slice(&[4, 5]));
    keys.replenish(SecretBytes::from_slice(&[6, 7, 8, 9]));
    assert_eq!(keys.take(2).unwrap().expose(), &[1, 2]);
    assert_eq!(keys.take(4).unwrap().expose(), &[3, 4, 5, 6]);
    // The partly used chunk has its taken prefix zeroised.
    assert_eq!(keys.chunks.front().unwrap().expose(), &[0, 7, 8, 9]);
    assert_eq!(keys.take(3).unwrap().expose(), &[7, 8, 9]);
    assert!(keys.chunks.is_empty());
    assert_eq!((keys.available(), keys.consumed_bytes()), (0, 9));
}

#[test]
fn transcript_limit_and_bound() {
    let mut t = Transcript::with_limit(30);
    t.record(Direction::AliceToBob, &[0; 21]).unwrap();
    assert_eq!(
        t.record(Direction::BobToAlice, &[]),
        Err(AuthError::TranscriptTooLong { limit: 30 })
    );
    assert_eq!((t.messages(), t.len_bytes(), t.hash_blocks()), (1, 30, 3));
    assert_eq!(t.forgery_bound(), 3.0 * 2f64.powi(-128));
    assert!(Transcript::new().forgery_bound() > 0.0);
}

#[test]
fn hostile_tag_messages_are_rejected() {
    let good = AuthTag([9; 16]).encode();
    assert_eq!(AuthTag::decode(&good), Ok(AuthTag([9; 16])));
    for cut in 0..good.len() {
        assert!(AuthTag::decode(&good[..cut]).is_err());
    }
    let mut long = good.clone();
    long.push(0);
    assert!(AuthTag::decode(&long).is_err());
    let mut other = good;
    other[0] = 0x56;
    assert_eq!(AuthTag::decode(&other), Err(AuthError::Kind(0x56)));
}

#[test]
fn debug_of_key_holders_is_redacted() {
    let mut keys = InMemoryAuthKeys::from_bootstrap(SecretBytes::from_slice(&[0xA5; 200]));
    let auth = BlockAuthenticator::take(Role::Bob, &mut keys).unwrap();
    let mut t = Transcript::new();
    t.record(Direction::AliceToBob, &[0xA5; 40]).unwrap();
    let shown_auth = format!("{auth:?} {auth:#?}");
    let (_, check) = auth.finish(&t);
    for shown in [
        format!("{keys:?}"),
        shown_auth,
        format!("{check:?} {check:#?}"),
        format!("{t:?}"),
    ] {
        let lower = shown.to_lowercase();
        assert!(
            !lower.contains("a5") && !shown.contains("165"),
            "leaked: {shown}"
        );
    }
    assert!(format!("{keys:?}").contains("redacted"));
    assert!(format!("{check:?}").contains("redacted"));
}

/// A one-time tag over a plain message is the block tag's construction:
/// the same key over a transcript's bytes gives the same tag, every
/// flipped bit and every length change is caught, and a key of the wrong
/// size is refused.
#[test]
fn one_time_tags_cover_every_byte_and_the_length() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let key = random_bytes(&mut rng, TAG_KEY_BYTES);
    let fresh = || OneTimeTagKey::new(SecretBytes::from_slice(&key)).unwrap();
    let message = random_bytes(&mut rng, 77);
    let tag = fresh().tag(&message);
    assert!(fresh().verify(&message, &tag).is_ok());

    let mut transcript = Transcript::new();
    transcript.record(Direction::AliceToBob, &message).unwrap();
    let block_tag = TagKey(SecretBytes::from_slice(&key)).tag(ClmulBackend::detect(), &transcript);
    assert_eq!(
        fresh().tag(&transcript.bytes).0,
        *block_tag.expose(),
        "one construction for both"
    );

    for bit in 0..message.len() * 8 {
        let mut m = message.clone();
        m[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            fresh().verify(&m, &tag),
            Err(AuthError::TagMismatch),
            "bit {bit}"
        );
    }
    let mut longer = message.clone();
    longer.push(0);
    assert!(
        fresh().verify(&longer, &tag).is_err(),
        "zero padding is not free"
    );
    assert!(fresh().verify(&message[..76], &tag).is_err());
    let mut other = tag;
    other.0[0] ^= 1;
    assert!(fresh().verify(&message, &other).is_err());
    assert!(OneTimeTagKey::new(SecretBytes::from_slice(&key[..31])).is_none());
}
