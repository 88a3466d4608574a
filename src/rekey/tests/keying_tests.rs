//! Keying: both modes give both sides the same keys, wrapped keys are bound
//! to tunnel, exchange and SPI, tampering is refused, pool errors are
//! classified, and nothing prints a key.

use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::keys::{BlockId, KeyPool, KeyRef, KeyUse, Role};
use crate::qkd::wire::{WireReader, WireWriter};
use crate::rekey::keying::{self, DrawnKeys, WrapContext};
use crate::rekey::messages::KeyMaterial;
use crate::rekey::{
    ExchangeId, KernelRequest, KeyingError, KeyingMode, MIN_SPI, RekeyAction, SaDirection,
    TakeError,
};
use crate::secret::{SaKey, SecretBytes};

const ID: ExchangeId = ExchangeId {
    epoch: 42,
    generation: 7,
};

fn pools() -> (KeyPool, KeyPool) {
    let mut a = KeyPool::new(Role::Transmitter);
    let mut b = KeyPool::new(Role::Receiver);
    for id in 0..2 {
        let block: Vec<u8> = (0..1024u32).map(|i| (i * 7 + id * 13) as u8).collect();
        a.append(BlockId(id.into()), SecretBytes::from_slice(&block))
            .unwrap();
        b.append(BlockId(id.into()), SecretBytes::from_slice(&block))
            .unwrap();
    }
    (a, b)
}

fn ctx(tunnel: &str, id: ExchangeId, spi: u32) -> WrapContext<'_> {
    WrapContext {
        tunnel,
        id,
        initiator_spi: spi,
    }
}

#[test]
fn both_modes_give_both_sides_the_same_keys() {
    for mode in [KeyingMode::Direct, KeyingMode::Wrapped] {
        let (mut a, mut b) = pools();
        let drawn = DrawnKeys::draw(mode, &mut a).unwrap();
        let c = ctx("t", ID, MIN_SPI);
        let material = drawn.material(&c);
        let got = keying::accept(mode, &material, &c, &mut b).unwrap();
        let mine = drawn.keys();
        assert!(
            mine.initiator_to_responder
                .ct_eq(&got.initiator_to_responder)
        );
        assert!(
            mine.responder_to_initiator
                .ct_eq(&got.responder_to_initiator)
        );
        assert!(
            !mine
                .initiator_to_responder
                .ct_eq(&mine.responder_to_initiator)
        );
        // Initiator's inbound is the responder's outbound, and so on.
        assert!(mine.inbound(true).ct_eq(got.outbound(false)));
        assert!(mine.outbound(true).ct_eq(got.inbound(false)));
        let (use_, len) = match mode {
            KeyingMode::Direct => (KeyUse::SaKey, 72),
            KeyingMode::Wrapped => (KeyUse::Wrap, 32),
        };
        assert_eq!(a.counters().for_use(use_).initiated_bytes, len);
        assert_eq!(b.counters().for_use(use_).accepted_bytes, len);
        assert_eq!(drawn.pool_bytes(), len);
        // The same reference cannot be accepted twice.
        assert!(matches!(
            keying::accept(mode, &material, &c, &mut b),
            Err(KeyingError::Take(TakeError::Refused(_)))
        ));
    }
}

#[test]
fn wrapped_keys_are_bound_and_tamper_evident() {
    let (mut a, _) = pools();
    let drawn = DrawnKeys::draw(KeyingMode::Wrapped, &mut a).unwrap();
    let good = ctx("site-a-b", ID, 0x1000);
    let KeyMaterial::Wrapped { wrap_ref, sealed } = drawn.material(&good) else {
        panic!("wrapped mode gave direct material");
    };
    let other_gen = ExchangeId {
        generation: 8,
        ..ID
    };
    let other_epoch = ExchangeId { epoch: 43, ..ID };
    let wrong_contexts = [
        ctx("site-a-c", ID, 0x1000),
        ctx("site-a-b", other_gen, 0x1000),
        ctx("site-a-b", other_epoch, 0x1000),
        ctx("site-a-b", ID, 0x1001),
    ];
    let fresh = || pools().1;
    for c in &wrong_contexts {
        let m = KeyMaterial::Wrapped {
            wrap_ref: wrap_ref.clone(),
            sealed: sealed.clone(),
        };
        assert_eq!(
            keying::accept(KeyingMode::Wrapped, &m, c, &mut fresh()).unwrap_err(),
            KeyingError::Unwrap
        );
    }
    for i in 0..sealed.len() {
        let mut bad = sealed.clone();
        bad[i] ^= 1;
        let m = KeyMaterial::Wrapped {
            wrap_ref: wrap_ref.clone(),
            sealed: bad,
        };
        assert_eq!(
            keying::accept(KeyingMode::Wrapped, &m, &good, &mut fresh()).unwrap_err(),
            KeyingError::Unwrap,
            "flipped byte {i} accepted"
        );
    }
    // The ciphertext is not the plaintext.
    let plain = drawn.keys().initiator_to_responder.expose();
    assert!(!sealed.windows(8).any(|w| plain.windows(8).any(|p| p == w)));
    let m = KeyMaterial::Wrapped { wrap_ref, sealed };
    assert!(keying::accept(KeyingMode::Wrapped, &m, &good, &mut fresh()).is_ok());
}

#[test]
fn mode_mismatch_consumes_nothing() {
    let (mut a, mut b) = pools();
    let drawn = DrawnKeys::draw(KeyingMode::Direct, &mut a).unwrap();
    let c = ctx("t", ID, MIN_SPI);
    let m = drawn.material(&c);
    assert_eq!(
        keying::accept(KeyingMode::Wrapped, &m, &c, &mut b).unwrap_err(),
        KeyingError::ModeMismatch {
            want: KeyingMode::Wrapped,
            got: KeyingMode::Direct
        }
    );
    assert!(keying::accept(KeyingMode::Direct, &m, &c, &mut b).is_ok());
}

fn reference(block: u64, offset: u32, len: u32) -> KeyRef {
    let mut w = WireWriter::new();
    w.u32(1).u64(block).u32(offset).u32(len);
    let bytes = w.finish();
    KeyRef::decode(&mut WireReader::new(&bytes)).unwrap()
}

#[test]
fn pool_errors_are_classified() {
    let (mut a, mut b) = pools();
    let c = ctx("t", ID, MIN_SPI);
    // A block above the highest seen has simply not arrived yet.
    let later = KeyMaterial::Direct {
        key_ref: reference(5, 0, 72),
    };
    assert_eq!(
        keying::accept(KeyingMode::Direct, &later, &c, &mut b).unwrap_err(),
        KeyingError::Take(TakeError::NotYetHeld)
    );
    // The receiver's own half is not the transmitter's to hand out.
    let wrong_half = KeyMaterial::Direct {
        key_ref: reference(0, 600, 72),
    };
    assert!(matches!(
        keying::accept(KeyingMode::Direct, &wrong_half, &c, &mut b).unwrap_err(),
        KeyingError::Take(TakeError::Refused(_))
    ));
    // Two blocks of 512 bytes per side: 14 generations, then exhaustion.
    for _ in 0..14 {
        DrawnKeys::draw(KeyingMode::Direct, &mut a).unwrap();
    }
    assert!(matches!(
        DrawnKeys::draw(KeyingMode::Direct, &mut a),
        Err(KeyingError::Take(TakeError::Exhausted { .. }))
    ));
}

#[test]
fn nothing_prints_a_key() {
    let (mut a, _) = pools();
    let drawn = DrawnKeys::draw(KeyingMode::Direct, &mut a).unwrap();
    let pattern = SaKey::from_slice(&[0xA5; 36]).unwrap();
    let action = RekeyAction::Kernel {
        op: crate::rekey::OpId(1),
        request: KernelRequest::AddSa {
            dir: SaDirection::Inbound,
            spi: MIN_SPI,
            key: pattern,
            id: ID,
        },
    };
    for shown in [format!("{action:?}"), format!("{:?}", drawn.keys())] {
        let lower = shown.to_lowercase();
        assert!(lower.contains("redacted"), "{shown}");
        assert!(!lower.contains("a5") && !shown.contains("165"), "{shown}");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let cfg = crate::rekey::RekeyConfig::new(
        "t",
        crate::rekey::RekeyRole::Initiator,
        KeyingMode::Direct,
        std::time::Duration::from_secs(60),
    );
    let engine = crate::rekey::RekeyEngine::new(cfg, Instant::now(), &mut rng).unwrap();
    assert!(!format!("{engine:?}").is_empty());
}

#[test]
fn config_is_validated() {
    use crate::rekey::{RekeyConfig, RekeyRole};
    use std::time::Duration;
    let ok = RekeyConfig::new(
        "t",
        RekeyRole::Initiator,
        KeyingMode::Direct,
        Duration::from_secs(60),
    );
    assert!(ok.validate().is_ok());
    let mut bad = ok.clone();
    bad.jitter = bad.interval;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("jitter"), "{e}");
    let mut bad = ok.clone();
    bad.tunnel = "x".repeat(65);
    assert!(bad.validate().is_err());
    let mut bad = ok;
    bad.retry = bad.retry_max * 2;
    assert!(bad.validate().is_err());
}
