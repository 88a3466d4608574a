//! Reading SAs back: one SA by id (XFRM_MSG_GETSA) and every SA of ours (a
//! GETSA dump filtered by [`crate::xfrm::Ownership`]).
//!
//! The kernel includes each SA's key in these replies (copy_to_user_aead).
//! So replies are not parsed with netlink-packet-xfrm's attribute parser,
//! which would copy the key into a `Vec`: [`parse_sa`] reads the fixed
//! header and only the attributes it needs, takes the AEAD *name* and never
//! its key bytes, and the socket wipes the receive buffer after each
//! datagram.

use netlink_packet_core::{NLA_TYPE_MASK, NlasIterator, parse_u32};
use netlink_packet_xfrm::state::DelGetMessage;
use netlink_packet_xfrm::{
    IPPROTO_ESP, Mark, UserSaId, UserSaInfo, XFRM_MSG_GETSA, XFRM_MSG_NEWSA, XFRM_STATE_ESN,
    XFRM_USER_SA_INFO_LEN, XFRMA_ALG_AEAD, XFRMA_IF_ID, XFRMA_MARK, XfrmAttrs,
};
use nix::errno::Errno;

use super::{Lifetimes, Mode, SaCounters, SaId, SaInfo};
use crate::xfrm::selector::{address_of, family_of};
use crate::xfrm::socket::Reply;
use crate::xfrm::{XfrmError, XfrmHandle, XfrmMark};

/// Parses one XFRM_MSG_NEWSA body (GETSA reply or dump part) into an
/// [`SaInfo`], without touching key bytes. `None` for SAs we cannot describe
/// (unknown family).
pub(crate) fn parse_sa(operation: &'static str, body: &[u8]) -> Result<Option<SaInfo>, XfrmError> {
    let malformed = |detail: String| XfrmError::Malformed { operation, detail };
    if body.len() < XFRM_USER_SA_INFO_LEN {
        return Err(malformed(format!("SA message of {} bytes", body.len())));
    }
    let info =
        UserSaInfo::parse(&body[..XFRM_USER_SA_INFO_LEN]).map_err(|e| malformed(e.to_string()))?;
    let mut mark = None;
    let mut if_id = None;
    let mut aead = None;
    for nla in NlasIterator::new(&body[XFRM_USER_SA_INFO_LEN..]) {
        let nla = nla.map_err(|e| malformed(e.to_string()))?;
        let value = nla.value();
        match nla.kind() & NLA_TYPE_MASK {
            XFRMA_MARK => {
                let m = Mark::parse(value).map_err(|e| malformed(e.to_string()))?;
                mark = Some(XfrmMark {
                    value: m.value,
                    mask: m.mask,
                })
                .filter(|m| m.value != 0 || m.mask != 0);
            }
            XFRMA_IF_ID => if_id = Some(parse_u32(value).map_err(|e| malformed(e.to_string()))?),
            XFRMA_ALG_AEAD => {
                // struct xfrm_algo_aead: char alg_name[64], then lengths,
                // then the key — which we leave alone.
                let name = value
                    .get(..64)
                    .ok_or_else(|| malformed("short AEAD attribute".into()))?;
                let end = name.iter().position(|&b| b == 0).unwrap_or(64);
                aead = Some(String::from_utf8_lossy(&name[..end]).into_owned());
            }
            _ => {}
        }
    }
    let (Some(src), Some(dst)) = (
        address_of(info.family, &info.saddr),
        address_of(info.family, &info.id.daddr),
    ) else {
        return Ok(None);
    };
    if info.id.proto != IPPROTO_ESP {
        return Ok(None);
    }
    Ok(Some(SaInfo {
        id: SaId::new(src, dst, info.id.spi, info.reqid, mark),
        mode: Mode::from_kernel(info.mode),
        lifetimes: Lifetimes::from_kernel(&info.lifetime_cfg),
        counters: SaCounters {
            bytes: info.lifetime_cur.bytes,
            packets: info.lifetime_cur.packets,
            add_time: info.lifetime_cur.add_time,
            use_time: info.lifetime_cur.use_time,
            replay_dropped: info.stats.replay,
            integrity_failed: info.stats.integrity_failed,
        },
        esn: info.flags & XFRM_STATE_ESN != 0,
        if_id,
        aead,
    }))
}

/// The DELSA/GETSA payload naming `id`.
pub(crate) fn sa_id_message(id: &SaId) -> DelGetMessage {
    DelGetMessage {
        user_sa_id: UserSaId {
            daddr: netlink_packet_xfrm::Address::from_ip(&id.dst()),
            spi: id.spi(),
            family: family_of(&id.dst()),
            proto: IPPROTO_ESP,
        },
        nlas: id
            .mark()
            .map(|m| {
                vec![XfrmAttrs::Mark(Mark {
                    value: m.value,
                    mask: m.mask,
                })]
            })
            .unwrap_or_default(),
    }
}

impl XfrmHandle {
    /// The current state of one SA of ours (counters, lifetimes; no key).
    pub async fn get_sa(&self, id: &SaId) -> Result<SaInfo, XfrmError> {
        const OP: &str = "get SA";
        let mut found = None;
        let result = self
            .socket
            .request(
                OP,
                XFRM_MSG_GETSA,
                &sa_id_message(id),
                Reply::Ack,
                |kind, body| {
                    if kind == XFRM_MSG_NEWSA {
                        found = parse_sa(OP, body)?;
                    }
                    Ok(())
                },
            )
            .await;
        match result {
            Err(XfrmError::Kernel {
                errno: Errno::ESRCH | Errno::ENOENT,
                ..
            }) => Err(XfrmError::NotFound {
                operation: OP,
                what: id.to_string(),
            }),
            Err(e) => Err(e),
            Ok(()) => found.ok_or_else(|| XfrmError::Malformed {
                operation: OP,
                detail: "no SA in the reply".into(),
            }),
        }
    }

    /// Every SA in the namespace that [`crate::xfrm::Ownership`] says is
    /// ours. Others' SAs are skipped without being parsed past the header.
    pub async fn list_owned_sas(&self) -> Result<Vec<SaInfo>, XfrmError> {
        const OP: &str = "dump SAs";
        let mut attempts = 0;
        loop {
            let mut owned = Vec::new();
            let result = self
                .socket
                .request(
                    OP,
                    XFRM_MSG_GETSA,
                    &crate::xfrm::EmptyPayload,
                    Reply::Dump,
                    |kind, body| {
                        if kind == XFRM_MSG_NEWSA
                            && let Some(sa) = parse_sa(OP, body)?
                            && self
                                .ownership
                                .owns_sa(sa.id.reqid(), sa.id.spi(), sa.id.mark())
                        {
                            owned.push(sa);
                        }
                        Ok(())
                    },
                )
                .await;
            match result {
                Err(XfrmError::DumpInterrupted { .. }) if attempts < 5 => attempts += 1,
                Err(e) => return Err(e),
                Ok(()) => return Ok(owned),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::SaKey;
    use crate::xfrm::state::SaSpec;
    use crate::xfrm::state::add::sa_message;
    use netlink_packet_core::Emitable;

    /// A kernel-style NEWSA body: our own NEWSA payload has the same layout
    /// as a GETSA reply (xfrm_usersa_info + attributes, key included).
    fn reply_body(mark: Option<XfrmMark>) -> Vec<u8> {
        let mut spec = SaSpec::tunnel(
            "192.0.2.1".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            0x5144_0abc,
            0x5144_0001,
            SaKey::from_slice(&[0x77; 36]).unwrap(),
        );
        spec.mark = mark;
        let m = sa_message(&spec);
        let mut buf = vec![0u8; m.buffer_len()];
        m.emit(&mut buf);
        buf
    }

    #[test]
    fn parses_header_name_and_mark_without_the_key() {
        let body = reply_body(Some(XfrmMark::exact(5)));
        let sa = parse_sa("t", &body).unwrap().unwrap();
        assert_eq!(sa.id.spi(), 0x5144_0abc);
        assert_eq!(sa.id.reqid(), 0x5144_0001);
        assert_eq!(sa.id.mark(), Some(XfrmMark::exact(5)));
        assert_eq!(sa.aead.as_deref(), Some("rfc4106(gcm(aes))"));
        assert_eq!(sa.mode, Some(Mode::Tunnel));
        // Nothing derived from the reply shows the key pattern.
        let shown = format!("{sa:?}");
        assert!(
            !shown.contains("119") && !shown.to_lowercase().contains("77, 77"),
            "{shown}"
        );
    }

    #[test]
    fn truncated_replies_are_errors_not_panics() {
        let body = reply_body(None);
        for cut in 0..body.len() {
            let _ = parse_sa("t", &body[..cut]);
        }
        assert!(parse_sa("t", &body[..100]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(data: Vec<u8>) {
            let _ = parse_sa("t", &data);
        }
    }
}
