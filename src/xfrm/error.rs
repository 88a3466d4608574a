//! Errors of the XFRM layer: one enum, one variant per thing that can go
//! wrong, each message saying what failed, with what, and what to do.
//!
//! Messages never contain key bytes: specs carry keys only inside
//! [`crate::secret::SaKey`], whose `Debug` is redacted, and no variant holds a
//! spec or a netlink buffer.

use std::io;
use std::net::IpAddr;

use nix::errno::Errno;

use crate::netns::NetnsError;

/// Kernel-side names for the pieces an SA of ours needs, so that an error can
/// say exactly which module to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingModule {
    /// The module to `modprobe`.
    pub module: &'static str,
    /// The kernel configuration option that builds it.
    pub config: &'static str,
}

impl MissingModule {
    /// ESP for IPv4 outer headers (net/ipv4/esp4.c).
    pub const ESP4: Self = Self {
        module: "esp4",
        config: "CONFIG_INET_ESP",
    };
    /// ESP for IPv6 outer headers (net/ipv6/esp6.c).
    pub const ESP6: Self = Self {
        module: "esp6",
        config: "CONFIG_INET6_ESP",
    };
    /// The `gcm` crypto module provides the `gcm` and `rfc4106` templates
    /// (crypto/gcm.c) that `rfc4106(gcm(aes))` is built from.
    pub const GCM: Self = Self {
        module: "gcm",
        config: "CONFIG_CRYPTO_GCM",
    };
    /// The XFRM netlink interface (net/xfrm/xfrm_user.c).
    pub const XFRM_USER: Self = Self {
        module: "xfrm_user",
        config: "CONFIG_XFRM_USER",
    };

    /// The ESP module for an outer address family.
    pub fn esp_for(addr: &IpAddr) -> Self {
        if addr.is_ipv4() {
            Self::ESP4
        } else {
            Self::ESP6
        }
    }
}

impl std::fmt::Display for MissingModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "load it with `modprobe {}` (kernel option {})",
            self.module, self.config
        )
    }
}

/// Everything the XFRM layer can fail with.
#[derive(Debug, thiserror::Error)]
pub enum XfrmError {
    /// The kernel has no ESP for this address family (errno
    /// `EPROTONOSUPPORT`, "Requested type not found"). When the AEAD is
    /// missing as well, both are named.
    #[error(
        "the kernel cannot carry ESP: {esp} is missing, {esp_load}{}",
        aead_missing.map(|m| format!("; the AEAD {AEAD_NAME} is missing too, {m}")).unwrap_or_default()
    )]
    EspMissing {
        esp: &'static str,
        esp_load: MissingModule,
        aead_missing: Option<MissingModule>,
    },
    /// The kernel does not know `rfc4106(gcm(aes))` (errno `ENOSYS`,
    /// "Requested AEAD algorithm not found").
    #[error("the kernel lacks the AEAD algorithm {algorithm}: {load}")]
    AeadMissing {
        algorithm: &'static str,
        load: MissingModule,
    },
    /// `socket(AF_NETLINK, NETLINK_XFRM)` failed with `EPROTONOSUPPORT`.
    #[error(
        "the kernel has no XFRM netlink interface (xfrm_user): {}",
        MissingModule::XFRM_USER
    )]
    XfrmUserMissing,
    /// `EPERM` from the kernel.
    #[error(
        "{operation} was refused by the kernel: it needs CAP_NET_ADMIN in the target network namespace (run as root or grant the capability)"
    )]
    PermissionDenied { operation: &'static str },
    /// `EEXIST` from NEWSA: (destination, SPI, ESP, mark) is taken.
    #[error("SPI {spi:#010x} towards {dst} is already in use")]
    SpiInUse { dst: IpAddr, spi: u32 },
    /// `EEXIST` from NEWPOLICY: a policy with this selector, direction and
    /// mark exists.
    #[error("a policy for {what} already exists")]
    PolicyExists { what: String },
    /// `ESRCH`/`ENOENT`: the object is not (or no longer) in the kernel.
    #[error("{operation}: {what} does not exist (already deleted or expired?)")]
    NotFound {
        operation: &'static str,
        what: String,
    },
    /// ALLOCSPI found no free SPI in the owned range.
    #[error("no free SPI towards {dst} in {min:#010x}..={max:#010x}")]
    SpiRangeExhausted { dst: IpAddr, min: u32, max: u32 },
    /// Any other kernel error, with the kernel's own explanation when it gave
    /// one (netlink extended ack).
    #[error(
        "{operation} failed: {errno}{}",
        message.as_deref().map(|m| format!(" (kernel: {m})")).unwrap_or_default()
    )]
    Kernel {
        operation: &'static str,
        errno: Errno,
        message: Option<String>,
    },
    /// A request that would touch an object outside [`super::Ownership`].
    #[error("refusing to touch {what}: it is outside this program's ownership ({ownership})")]
    NotOwned { what: String, ownership: String },
    /// A spec that cannot be turned into a valid request.
    #[error("invalid {what}: {reason}")]
    InvalidSpec { what: &'static str, reason: String },
    /// The socket itself failed.
    #[error("netlink socket I/O during {operation}: {source}")]
    Io {
        operation: &'static str,
        source: io::Error,
    },
    /// The kernel's reply could not be parsed (bounded, checked parsing).
    #[error("malformed netlink reply to {operation}: {detail}")]
    Malformed {
        operation: &'static str,
        detail: String,
    },
    /// A dump changed while it was read (`NLM_F_DUMP_INTR`) too many times.
    #[error("{operation}: the kernel's table kept changing during the dump; retry later")]
    DumpInterrupted { operation: &'static str },
    #[error(transparent)]
    Netns(#[from] NetnsError),
}

/// The only AEAD this layer installs (RFC 4106, AES-GCM in ESP).
pub const AEAD_NAME: &str = "rfc4106(gcm(aes))";

impl XfrmError {
    /// The errno behind a kernel error, if this is one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            XfrmError::Kernel { errno, .. } => Some(*errno),
            XfrmError::PermissionDenied { .. } => Some(Errno::EPERM),
            XfrmError::SpiInUse { .. } | XfrmError::PolicyExists { .. } => Some(Errno::EEXIST),
            _ => None,
        }
    }

    /// Whether the kernel lacks something needed to install our SAs (ESP, the
    /// AEAD or xfrm_user) — a configuration problem, not a transient one.
    pub fn is_missing_kernel_support(&self) -> bool {
        matches!(
            self,
            XfrmError::EspMissing { .. }
                | XfrmError::AeadMissing { .. }
                | XfrmError::XfrmUserMissing
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_esp_and_aead_names_both_modules() {
        let e = XfrmError::EspMissing {
            esp: "esp4",
            esp_load: MissingModule::ESP4,
            aead_missing: Some(MissingModule::GCM),
        };
        let s = e.to_string();
        assert!(s.contains("esp4") && s.contains("modprobe esp4"), "{s}");
        assert!(
            s.contains("rfc4106(gcm(aes))") && s.contains("modprobe gcm"),
            "{s}"
        );
        assert!(e.is_missing_kernel_support());
    }

    #[test]
    fn permission_and_xfrm_user_messages_say_what_to_do() {
        let s = XfrmError::PermissionDenied {
            operation: "add SA",
        }
        .to_string();
        assert!(s.contains("CAP_NET_ADMIN"), "{s}");
        let s = XfrmError::XfrmUserMissing.to_string();
        assert!(s.contains("modprobe xfrm_user"), "{s}");
    }

    #[test]
    fn kernel_error_carries_extack() {
        let e = XfrmError::Kernel {
            operation: "add SA",
            errno: Errno::EINVAL,
            message: Some("Invalid AEAD attribute length".into()),
        };
        assert!(e.to_string().contains("Invalid AEAD attribute length"));
        assert_eq!(e.errno(), Some(Errno::EINVAL));
    }
}
