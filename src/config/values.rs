//! Value types a sysadmin writes by hand: durations ("10m", "250ms"), the
//! rekey jitter (a fraction or a duration), peer addresses (`host:port`),
//! and the names of gateways, peers and tunnels.
//!
//! Each parses from the TOML value with a message that shows a correct
//! example, so the serde layer can report the field's path and line. This
//! module owns parsing only; what a value must satisfy relative to other
//! fields is checked by the sections.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// A duration written with units: `"250ms"`, `"10s"`, `"10m"`, `"1h30m"`,
/// `"2d"`. Units: `ms`, `s`, `m`, `h`, `d`; parts may be separated by
/// spaces. A bare number is refused: "10" could mean seconds or minutes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    pub const fn millis(ms: u64) -> Self {
        Self(Duration::from_millis(ms))
    }

    pub fn get(self) -> Duration {
        self.0
    }
}

/// What a duration must look like, for error messages.
const DURATION_EXAMPLE: &str =
    "a duration with a unit, e.g. \"250ms\", \"10s\", \"10m\", \"1h30m\"";

impl FromStr for HumanDuration {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("{s:?} is not a duration ({why}); write {DURATION_EXAMPLE}");
        let mut rest = s.trim();
        if rest.is_empty() {
            return Err(bad("empty"));
        }
        let mut total_ms: u64 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(bad("expected a number"));
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| bad("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(rest.len());
            let per_unit_ms: u64 = match &rest[..unit_len] {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(bad("missing unit")),
                _ => return Err(bad("unknown unit; use ms, s, m, h or d")),
            };
            rest = rest[unit_len..].trim_start();
            total_ms = n
                .checked_mul(per_unit_ms)
                .and_then(|ms| total_ms.checked_add(ms))
                .ok_or_else(|| bad("too long"))?;
        }
        Ok(Self(Duration::from_millis(total_ms)))
    }
}

impl fmt::Display for HumanDuration {
    /// The shortest form that round-trips: "1h30m", "250ms", "0s".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, size) in [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
        ] {
            if ms >= size {
                write!(f, "{}{unit}", ms / size)?;
                ms %= size;
            }
        }
        if ms > 0 {
            write!(f, "{ms}ms")?;
        }
        Ok(())
    }
}

impl<'de> serde::Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_EXAMPLE)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                Err(E::custom(format!(
                    "{n} has no unit; write a string with one, e.g. \"{n}s\" or \"{n}m\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// How much earlier than `rekey_interval` a rekey may happen, drawn afresh
/// for each rekey, so that many tunnels do not all draw on the key pool at
/// the same instant.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RekeyJitter {
    /// A fraction of the interval, 0 ≤ f ≤ 0.5 (`rekey_jitter = 0.1`).
    Fraction(f64),
    /// An absolute duration (`rekey_jitter = "30s"`).
    Duration(HumanDuration),
}

impl Default for RekeyJitter {
    fn default() -> Self {
        RekeyJitter::Fraction(0.1)
    }
}

impl RekeyJitter {
    /// The largest advance for a given interval.
    pub fn max_advance(self, interval: Duration) -> Duration {
        match self {
            RekeyJitter::Fraction(f) if f.is_finite() && f > 0.0 => interval.mul_f64(f.min(1.0)),
            RekeyJitter::Fraction(_) => Duration::ZERO,
            RekeyJitter::Duration(d) => d.get(),
        }
    }
}

impl<'de> serde::Deserialize<'de> for RekeyJitter {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RekeyJitter;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a fraction of rekey_interval like 0.1, or a duration like \"30s\"")
            }
            fn visit_f64<E: de::Error>(self, x: f64) -> Result<Self::Value, E> {
                Ok(RekeyJitter::Fraction(x))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                if n == 0 {
                    Ok(RekeyJitter::Fraction(0.0))
                } else {
                    Err(E::custom(format!(
                        "{n} is ambiguous: write a fraction of rekey_interval like 0.1, \
                         or a duration like \"{n}s\""
                    )))
                }
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                s.parse().map(RekeyJitter::Duration).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Where a peer's listener is: an IP address or a DNS name, and a port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddress {
    /// IP address literal (without brackets) or DNS name.
    pub host: String,
    pub port: u16,
}

impl PeerAddress {
    /// The address as an IP socket address, when the host is a literal.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for PeerAddress {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "{s:?} is not host:port ({why}); write e.g. \"198.51.100.2:9813\", \
                 \"[2001:db8::2]:9813\" or \"gw-b.example.net:9813\""
            )
        };
        if let Ok(sa) = s.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err(bad("port 0"));
            }
            return Ok(Self {
                host: sa.ip().to_string(),
                port: sa.port(),
            });
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
        let port: u16 = port.parse().map_err(|_| bad("bad port"))?;
        if port == 0 {
            return Err(bad("port 0"));
        }
        if !is_dns_name(host) {
            return Err(bad("neither an IP address nor a DNS name"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

/// RFC 1123 host names: dot-separated labels of 1–63 letters, digits and
/// hyphens, not starting or ending with a hyphen, 253 bytes at most.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Longest gateway, peer or tunnel name.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a gateway, peer or tunnel name. Names become file names (pools
/// are `<state_dir>/<peer>.pool`) and travel in the peer handshake, so they
/// are restricted to `A-Z a-z 0-9 . _ -`, 1–64 characters, not starting with
/// a dot.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() {
        return Err("empty; give it a name like \"gw-a\"".into());
    }
    if name.len() > MAX_NAME_LEN || name.starts_with('.') || !name.chars().all(ok_char) {
        return Err(format!(
            "{name:?} is not a valid name: use 1-{MAX_NAME_LEN} of A-Z a-z 0-9 . _ -, \
             not starting with '.'"
        ));
    }
    Ok(())
}

/// serde helper: an IP socket address with an example in the error.
pub(super) fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    s.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "{s:?} is not an IP socket address; write e.g. \"0.0.0.0:9813\" or \"[::]:9813\""
        ))
    })
}

/// serde helper: an IP address with an example in the error.
pub(super) fn ip_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    s.parse().map(Some).map_err(|_| {
        de::Error::custom(format!(
            "{s:?} is not an IP address; write e.g. \"192.0.2.1\" or \"2001:db8::1\""
        ))
    })
}

/// serde helper: a peer address.
pub(super) fn peer_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<PeerAddress>, D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    s.parse().map(Some).map_err(de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_bare_numbers() {
        let p = |s: &str| s.parse::<HumanDuration>().map(|d| d.0);
        assert_eq!(p("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(p("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(p("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(p("1h 30m 5s"), Ok(Duration::from_secs(5405)));
        assert_eq!(p("2d"), Ok(Duration::from_secs(172_800)));
        for bad in ["10", "", "m", "10x", "1.5h", "-1s", "99999999999999999999d"] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("\"10s\""), "{bad}: {e}");
        }
        assert!(p("10").unwrap_err().contains("missing unit"));
    }

    #[test]
    fn durations_display_round_trips() {
        for s in ["1h30m", "250ms", "10s", "1d2h3m4s5ms", "0s"] {
            let d: HumanDuration = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
    }

    #[test]
    fn peer_addresses_accept_ips_and_names() {
        let a: PeerAddress = "198.51.100.2:9813".parse().unwrap();
        assert_eq!(a.socket_addr(), Some("198.51.100.2:9813".parse().unwrap()));
        let a: PeerAddress = "[2001:db8::2]:9813".parse().unwrap();
        assert_eq!(a.host, "2001:db8::2");
        assert_eq!(a.to_string(), "[2001:db8::2]:9813");
        let a: PeerAddress = "gw-b.example.net:9813".parse().unwrap();
        assert_eq!(a.socket_addr(), None);
        for bad in [
            "gw-b",
            "gw_b:1",
            "1.2.3.4:0",
            "1.2.3.4:99999",
            ":80",
            "-a.b:1",
        ] {
            let e = bad.parse::<PeerAddress>().unwrap_err();
            assert!(e.contains("e.g."), "{bad}: {e}");
        }
    }

    #[test]
    fn names_are_restricted_to_file_safe_characters() {
        assert!(check_name("gw-a.site_1").is_ok());
        for bad in ["", ".hidden", "gw a", "gw/a", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn jitter_advance_is_bounded_by_the_interval() {
        let i = Duration::from_secs(600);
        assert_eq!(
            RekeyJitter::Fraction(0.1).max_advance(i),
            Duration::from_secs(60)
        );
        assert_eq!(
            RekeyJitter::Fraction(f64::NAN).max_advance(i),
            Duration::ZERO
        );
        assert_eq!(
            RekeyJitter::Duration(HumanDuration::secs(30)).max_advance(i),
            Duration::from_secs(30)
        );
    }
}
