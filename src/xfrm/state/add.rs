//! Installing SAs: XFRM_MSG_NEWSA, XFRM_MSG_UPDSA (which completes the larval
//! SA that ALLOCSPI left behind), SPI-collision recovery, and the diagnosis
//! that turns "Requested AEAD algorithm not found" / "Requested type not
//! found" into an error naming the module to load.
//!
//! The key is copied exactly once, into the `alg_key` of a message wrapped in
//! [`KeyedSaMessage`], which zeroises it on drop; the serialised frame is a
//! `Zeroizing` buffer (see [`super::super::socket`]).

use netlink_packet_core::Emitable;
use netlink_packet_xfrm::state::ModifyMessage;
use netlink_packet_xfrm::{
    Address, Alg, AlgAead, IPPROTO_ESP, Id, Mark, ReplayEsn, UserSaInfo, XFRM_MSG_NEWSA,
    XFRM_MSG_UPDSA, XFRM_STATE_ESN, XfrmAttrs,
};
use nix::errno::Errno;
use zeroize::Zeroize;

use super::{
    AEAD_ICV_BITS, AEAD_KEY_BITS, LEGACY_REPLAY_WINDOW_MAX, ReplayProtection, SaId, SaSpec,
};
use crate::xfrm::error::{AEAD_NAME, MissingModule};
use crate::xfrm::selector::family_of;
use crate::xfrm::socket::Reply;
use crate::xfrm::{XfrmError, XfrmHandle};

/// A NEWSA/UPDSA payload holding a key copy; zeroises it on drop.
pub(crate) struct KeyedSaMessage(ModifyMessage);

impl Drop for KeyedSaMessage {
    fn drop(&mut self) {
        zeroise_keys(&mut self.0);
    }
}

/// Wipes every algorithm key in `message` (whole capacity, then length 0).
fn zeroise_keys(message: &mut ModifyMessage) {
    for nla in &mut message.nlas {
        match nla {
            XfrmAttrs::EncryptionAlgAead(a) => a.alg_key.zeroize(),
            XfrmAttrs::AuthenticationAlg(a) | XfrmAttrs::EncryptionAlg(a) => a.alg_key.zeroize(),
            _ => {}
        }
    }
}

impl Emitable for KeyedSaMessage {
    fn buffer_len(&self) -> usize {
        self.0.buffer_len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        self.0.emit(buffer)
    }
}

/// A fixed-size, NUL-padded algorithm name field (`char alg_name[64]`).
pub(crate) fn alg_name(name: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..name.len()].copy_from_slice(name.as_bytes());
    out
}

fn base_info(spec: &SaSpec) -> UserSaInfo {
    let mut info = UserSaInfo {
        id: Id {
            daddr: Address::from_ip(&spec.dst),
            spi: spec.spi,
            proto: IPPROTO_ESP,
        },
        saddr: Address::from_ip(&spec.src),
        lifetime_cfg: spec.lifetimes.to_kernel(),
        reqid: spec.reqid,
        family: family_of(&spec.dst),
        mode: spec.mode.to_kernel(),
        ..UserSaInfo::default()
    };
    // No selector: family 0 lets the kernel match all traffic of the SA's
    // family (copy_from_user_state).
    if let Some(sel) = spec.selector {
        info.selector = sel.to_kernel();
    }
    info
}

fn mark_and_if_id(spec: &SaSpec, nlas: &mut Vec<XfrmAttrs>) {
    if let Some(m) = spec.mark {
        nlas.push(XfrmAttrs::Mark(Mark {
            value: m.value,
            mask: m.mask,
        }));
    }
    if let Some(id) = spec.if_id {
        nlas.push(XfrmAttrs::IfId(id));
    }
}

/// Builds the NEWSA/UPDSA payload for `spec`.
pub(crate) fn sa_message(spec: &SaSpec) -> KeyedSaMessage {
    let mut info = base_info(spec);
    let mut key = Vec::with_capacity(spec.key.expose().len());
    key.extend_from_slice(spec.key.expose());
    let mut nlas = vec![XfrmAttrs::EncryptionAlgAead(AlgAead {
        alg_name: alg_name(AEAD_NAME),
        alg_key_len: AEAD_KEY_BITS,
        alg_icv_len: AEAD_ICV_BITS,
        alg_key: key,
    })];
    let esn_window = match spec.replay {
        ReplayProtection::Window(w) if w <= LEGACY_REPLAY_WINDOW_MAX => {
            info.replay_window = w as u8;
            None
        }
        ReplayProtection::Window(w) => Some(w),
        ReplayProtection::Esn { window } => {
            info.flags |= XFRM_STATE_ESN;
            Some(window)
        }
    };
    if let Some(window) = esn_window {
        // The kernel requires the legacy field to be 0 with this attribute
        // and the bitmap to cover the window (verify_replay).
        let bmp_len = window.div_ceil(32);
        nlas.push(XfrmAttrs::ReplayStateEsn(ReplayEsn {
            bmp_len,
            replay_window: window,
            bmp: vec![0; bmp_len as usize],
            ..ReplayEsn::default()
        }));
    }
    mark_and_if_id(spec, &mut nlas);
    KeyedSaMessage(ModifyMessage {
        user_sa_info: info,
        nlas,
    })
}

/// A payload that can never install an SA on a kernel with ESP: ESP with an
/// authentication algorithm but no cipher is refused by esp_init_state
/// ("AEAD or CRYPT must be provided", EINVAL) *after* the ESP type lookup,
/// which fails first with EPROTONOSUPPORT when ESP is absent.
fn esp_probe_message(spec: &SaSpec) -> KeyedSaMessage {
    let mut nlas = vec![XfrmAttrs::AuthenticationAlg(Alg {
        alg_name: alg_name("hmac(sha256)"),
        alg_key_len: 256,
        alg_key: vec![0; 32], // not a secret: the probe is never installed
    })];
    mark_and_if_id(spec, &mut nlas);
    KeyedSaMessage(ModifyMessage {
        user_sa_info: base_info(spec),
        nlas,
    })
}

/// Whether the kernel has ESP for the family of `spec`, learned without
/// installing anything (see [`esp_probe_message`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EspProbe {
    Present,
    Missing,
    Unknown,
}

impl XfrmHandle {
    /// Installs `spec` with XFRM_MSG_NEWSA. Fails with
    /// [`XfrmError::SpiInUse`] if (dst, SPI, ESP, mark) is taken — for an
    /// inbound SA use [`Self::add_inbound_sa`], which picks another SPI.
    pub async fn add_sa(&self, spec: &SaSpec) -> Result<SaId, XfrmError> {
        spec.validate()?;
        self.check_spec_owned(spec)?;
        self.send_sa(spec, XFRM_MSG_NEWSA, "add SA").await
    }

    /// Completes the larval SA created by [`Self::allocate_spi`] for the
    /// same (dst, SPI, mark) with XFRM_MSG_UPDSA.
    pub async fn complete_allocated_sa(&self, spec: &SaSpec) -> Result<SaId, XfrmError> {
        spec.validate()?;
        self.check_spec_owned(spec)?;
        self.send_sa(spec, XFRM_MSG_UPDSA, "complete allocated SA")
            .await
    }

    /// Installs an inbound SA, choosing its SPI: with `spec.spi == 0` the
    /// kernel allocates a free SPI in the owned range (ALLOCSPI + UPDSA);
    /// otherwise `spec.spi` is tried and, if taken, replaced by an allocated
    /// one. `spec.spi` is updated to the SPI in use.
    pub async fn add_inbound_sa(&self, spec: &mut SaSpec) -> Result<SaId, XfrmError> {
        if spec.spi != 0 {
            match self.add_sa(spec).await {
                Err(XfrmError::SpiInUse { .. }) => {
                    tracing::info!(dst = %spec.dst, spi = spec.spi, "SPI collision, allocating another");
                }
                other => return other,
            }
        }
        // Check everything but the SPI before asking the kernel for one.
        let requested = spec.spi;
        spec.spi = super::super::ownership::FIRST_USABLE_SPI;
        let checked = spec.validate();
        spec.spi = requested;
        checked?;
        let spi = self
            .allocate_spi(spec.src, spec.dst, spec.reqid, spec.mode, spec.mark)
            .await?;
        spec.spi = spi;
        match self.complete_allocated_sa(spec).await {
            Ok(id) => Ok(id),
            Err(e) => {
                // Do not leave the larval SA behind for xfrm_acq_expires.
                let _ = self.delete_sa(&spec.id()).await;
                Err(e)
            }
        }
    }

    fn check_spec_owned(&self, spec: &SaSpec) -> Result<(), XfrmError> {
        self.ownership
            .check_sa(spec.reqid, spec.spi, spec.mark, || spec.id().to_string())
    }

    async fn send_sa(
        &self,
        spec: &SaSpec,
        message_type: u16,
        operation: &'static str,
    ) -> Result<SaId, XfrmError> {
        let message = sa_message(spec);
        let result = self
            .socket
            .request(operation, message_type, &message, Reply::Ack, |_, _| Ok(()))
            .await;
        drop(message);
        match result {
            Ok(()) => Ok(spec.id()),
            Err(e) => Err(self.explain_sa_error(spec, e).await),
        }
    }

    /// Refines kernel errors of NEWSA/UPDSA (errnos as in
    /// net/xfrm/xfrm_user.c and xfrm_state.c).
    async fn explain_sa_error(&self, spec: &SaSpec, e: XfrmError) -> XfrmError {
        let (errno, message) = match &e {
            XfrmError::Kernel { errno, message, .. } => (*errno, message.clone()),
            _ => return e,
        };
        let esp = MissingModule::esp_for(&spec.dst);
        match errno {
            Errno::EEXIST => XfrmError::SpiInUse {
                dst: spec.dst,
                spi: spec.spi,
            },
            // attach_aead: "Requested AEAD algorithm not found".
            Errno::ENOSYS => match self.probe_esp(spec).await {
                EspProbe::Missing => XfrmError::EspMissing {
                    esp: esp.module,
                    esp_load: esp,
                    aead_missing: Some(MissingModule::GCM),
                },
                EspProbe::Present | EspProbe::Unknown => XfrmError::AeadMissing {
                    algorithm: AEAD_NAME,
                    load: MissingModule::GCM,
                },
            },
            // __xfrm_init_state: "Requested type not found" (no ESP); the
            // same errno also means "Requested mode not found".
            Errno::EPROTONOSUPPORT if !message.as_deref().unwrap_or("").contains("mode") => {
                XfrmError::EspMissing {
                    esp: esp.module,
                    esp_load: esp,
                    aead_missing: None,
                }
            }
            _ => e,
        }
    }

    async fn probe_esp(&self, spec: &SaSpec) -> EspProbe {
        let probe = esp_probe_message(spec);
        let result = self
            .socket
            .request(
                "probe for ESP",
                XFRM_MSG_NEWSA,
                &probe,
                Reply::Ack,
                |_, _| Ok(()),
            )
            .await;
        match result {
            Err(XfrmError::Kernel {
                errno: Errno::EPROTONOSUPPORT,
                ..
            }) => EspProbe::Missing,
            Err(XfrmError::Kernel {
                errno: Errno::EINVAL,
                ..
            }) => EspProbe::Present,
            Ok(()) => {
                // Some old kernel accepted an ESP SA without cipher: it has
                // ESP. Remove the probe at once (its id is ours: same reqid,
                // SPI and mark as the spec that was checked).
                let _ = self.delete_sa(&spec.id()).await;
                EspProbe::Present
            }
            Err(_) => EspProbe::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SaKey;
    use crate::xfrm::state::{Lifetimes, Limits, Mode};
    use netlink_packet_xfrm::{XFRM_INF, XFRM_MODE_TUNNEL};

    fn spec() -> SaSpec {
        let key = SaKey::from_slice(&[0x5a; 36]).unwrap();
        SaSpec::tunnel(
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            0x5144_0100,
            0x5144_0001,
            key,
        )
    }

    #[test]
    fn newsa_carries_aead_key_icv_and_lifetimes() {
        let mut s = spec();
        s.lifetimes = Lifetimes {
            soft: Limits {
                packets: Some(10),
                ..Limits::default()
            },
            hard: Limits {
                packets: Some(20),
                seconds: Some(60),
                ..Limits::default()
            },
        };
        let m = sa_message(&s);
        let info = &m.0.user_sa_info;
        assert_eq!(info.id.spi, 0x5144_0100);
        assert_eq!(info.id.proto, IPPROTO_ESP);
        assert_eq!(info.mode, XFRM_MODE_TUNNEL);
        assert_eq!(info.replay_window, 32);
        assert_eq!(info.lifetime_cfg.soft_packet_limit, 10);
        assert_eq!(info.lifetime_cfg.hard_packet_limit, 20);
        assert_eq!(info.lifetime_cfg.soft_byte_limit, XFRM_INF);
        assert_eq!(info.lifetime_cfg.hard_add_expires_seconds, 60);
        let XfrmAttrs::EncryptionAlgAead(a) = &m.0.nlas[0] else {
            panic!("first attribute is not the AEAD");
        };
        assert_eq!(&a.alg_name[..17], b"rfc4106(gcm(aes))");
        assert_eq!(a.alg_name[17], 0);
        assert_eq!((a.alg_key_len, a.alg_icv_len), (288, 128));
        assert_eq!(a.alg_key, vec![0x5a; 36]);
        // Serialised: header 224 + AEAD attribute 4 + 72 + 36.
        assert_eq!(m.buffer_len(), 224 + 4 + 72 + 36);
    }

    #[test]
    fn key_copy_is_zeroised_by_the_drop_logic() {
        let s = spec();
        let mut m = sa_message(&s);
        zeroise_keys(&mut m.0);
        let XfrmAttrs::EncryptionAlgAead(a) = &m.0.nlas[0] else {
            panic!()
        };
        assert!(a.alg_key.is_empty());
        // The allocation is still owned by the Vec and was overwritten with
        // zeros over its whole capacity by `zeroize`.
        // SAFETY: ptr..ptr+capacity is the Vec's live allocation, fully
        // initialised by zeroize's volatile writes.
        let wiped = unsafe { std::slice::from_raw_parts(a.alg_key.as_ptr(), a.alg_key.capacity()) };
        assert_eq!(wiped.len(), 36);
        assert!(wiped.iter().all(|&b| b == 0));
    }

    #[test]
    fn large_windows_and_esn_use_the_bitmap_attribute() {
        let mut s = spec();
        s.replay = ReplayProtection::Window(128);
        let m = sa_message(&s);
        assert_eq!(m.0.user_sa_info.replay_window, 0);
        assert_eq!(m.0.user_sa_info.flags & XFRM_STATE_ESN, 0);
        let esn = m.0.nlas.iter().find_map(|n| match n {
            XfrmAttrs::ReplayStateEsn(r) => Some(r.clone()),
            _ => None,
        });
        let esn = esn.expect("bitmap attribute");
        assert_eq!((esn.bmp_len, esn.replay_window, esn.bmp.len()), (4, 128, 4));

        s.replay = ReplayProtection::Esn { window: 64 };
        let m = sa_message(&s);
        assert_eq!(m.0.user_sa_info.flags & XFRM_STATE_ESN, XFRM_STATE_ESN);
        assert!(
            m.0.nlas
                .iter()
                .any(|n| matches!(n, XfrmAttrs::ReplayStateEsn(r) if r.bmp_len == 2))
        );
    }

    #[test]
    fn mark_and_if_id_are_emitted() {
        let mut s = spec();
        s.mark = Some(crate::xfrm::XfrmMark::exact(9));
        s.if_id = Some(3);
        s.mode = Mode::Transport;
        let m = sa_message(&s);
        assert!(
            m.0.nlas
                .iter()
                .any(|n| matches!(n, XfrmAttrs::Mark(k) if k.value == 9))
        );
        assert!(m.0.nlas.iter().any(|n| matches!(n, XfrmAttrs::IfId(3))));
    }

    #[test]
    fn probe_has_no_cipher_and_no_secret() {
        let m = esp_probe_message(&spec());
        assert!(m.0.nlas.iter().all(|n| !matches!(
            n,
            XfrmAttrs::EncryptionAlgAead(_) | XfrmAttrs::EncryptionAlg(_)
        )));
    }

    #[test]
    fn invalid_specs_fail_before_the_kernel() {
        let mut s = spec();
        s.spi = 255;
        assert!(s.validate().is_err());
        let mut s = spec();
        s.dst = "2001:db8::1".parse().unwrap();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.replay = ReplayProtection::Esn { window: 0 };
        assert!(s.validate().is_err());
        let mut s = spec();
        s.lifetimes.soft.packets = Some(30);
        s.lifetimes.hard.packets = Some(20);
        assert!(s.validate().is_err());
    }
}
