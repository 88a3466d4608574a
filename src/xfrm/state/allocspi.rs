//! XFRM_MSG_ALLOCSPI: the kernel picks a free SPI in a range and reserves it
//! with a larval SA (state ACQ, no key) that XFRM_MSG_UPDSA later completes
//! (strongSwan does the same). An uncompleted larval SA expires after
//! `net.core.xfrm_acq_expires` seconds (30 by default).

use std::net::IpAddr;

use netlink_packet_xfrm::state::AllocSpiMessage;
use netlink_packet_xfrm::{
    Address, IPPROTO_ESP, Id, Mark, UserSaInfo, UserSpiInfo, XFRM_MSG_ALLOCSPI, XFRM_MSG_NEWSA,
    XfrmAttrs,
};
use nix::errno::Errno;

use super::Mode;
use crate::xfrm::ownership::FIRST_USABLE_SPI;
use crate::xfrm::selector::family_of;
use crate::xfrm::socket::Reply;
use crate::xfrm::{XfrmError, XfrmHandle, XfrmMark};

impl XfrmHandle {
    /// Reserves a free SPI for an inbound SA `src → dst` in the owned SPI
    /// range and returns it; complete it with
    /// [`Self::complete_allocated_sa`] using the same reqid, mode and mark.
    pub async fn allocate_spi(
        &self,
        src: IpAddr,
        dst: IpAddr,
        reqid: u32,
        mode: Mode,
        mark: Option<XfrmMark>,
    ) -> Result<u32, XfrmError> {
        let (min, max) = self
            .ownership
            .spis
            .as_ref()
            .map_or((FIRST_USABLE_SPI, u32::MAX), |r| (*r.start(), *r.end()));
        // Any SPI in range will do for the ownership check.
        self.ownership.check_sa(reqid, min, mark, || {
            format!("SPI allocation {src} -> {dst} reqid {reqid:#x}")
        })?;
        let request = AllocSpiMessage {
            spi_info: UserSpiInfo {
                info: UserSaInfo {
                    id: Id {
                        daddr: Address::from_ip(&dst),
                        spi: 0,
                        proto: IPPROTO_ESP,
                    },
                    saddr: Address::from_ip(&src),
                    reqid,
                    family: family_of(&dst),
                    mode: mode.to_kernel(),
                    ..UserSaInfo::default()
                },
                min,
                max,
            },
            nlas: mark
                .map(|m| {
                    vec![XfrmAttrs::Mark(Mark {
                        value: m.value,
                        mask: m.mask,
                    })]
                })
                .unwrap_or_default(),
        };
        let mut spi = None;
        let result = self
            .socket
            .request(
                "allocate SPI",
                XFRM_MSG_ALLOCSPI,
                &request,
                Reply::Ack,
                |kind, body| {
                    if kind == XFRM_MSG_NEWSA {
                        // The larval SA has no algorithms, so no key: reading
                        // the fixed header is all we need.
                        let info = UserSaInfo::parse(body).map_err(|e| XfrmError::Malformed {
                            operation: "allocate SPI",
                            detail: e.to_string(),
                        })?;
                        spi = Some(info.id.spi);
                    }
                    Ok(())
                },
            )
            .await;
        match result {
            Err(XfrmError::Kernel {
                errno: Errno::ENOENT,
                ..
            }) => Err(XfrmError::SpiRangeExhausted { dst, min, max }),
            Err(e) => Err(e),
            Ok(()) => {
                let spi = spi.ok_or_else(|| XfrmError::Malformed {
                    operation: "allocate SPI",
                    detail: "no SA in the reply".into(),
                })?;
                if !(min..=max).contains(&spi) {
                    return Err(XfrmError::Malformed {
                        operation: "allocate SPI",
                        detail: format!("kernel returned SPI {spi:#x} outside {min:#x}..={max:#x}"),
                    });
                }
                Ok(spi)
            }
        }
    }
}
