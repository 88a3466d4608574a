//! Known-bad configurations and the finding each must produce: one per
//! class of mistake. Shared by the unit tests, the `check-config`
//! integration test and the netns "config errors" test, so all three hold
//! the same promise about messages.
//!
//! Each case is [`VALID_BASE`] with one text substitution.

/// A small valid file (secrets from the default credentials).
pub const VALID_BASE: &str = r#"[gateway]
name = "gw-a"

[[peer]]
name = "gw-b"
role = "transmitter"
address = "198.51.100.2:9813"

[peer.link]
kind = "simulated"
length_km = 25.0

[peer.postprocessing]
cascade = "option8"

[peer.channel]
idle_timeout = "30s"

[[tunnel]]
name = "a-b"
peer = "gw-b"
local_subnets = ["10.1.0.0/24"]
remote_subnets = ["10.2.0.0/24"]
local_endpoint = "192.0.2.1"
remote_endpoint = "198.51.100.2"
rekey_interval = "10m"

[tunnel.lifetime]
hard_seconds = 1800
"#;

/// One mistake and what `check-config` must say about it.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCase {
    /// What kind of mistake.
    pub name: &'static str,
    /// Text of [`VALID_BASE`] to replace (first occurrence)...
    pub find: &'static str,
    /// ...and its replacement.
    pub replace: &'static str,
    /// The exact path the finding must carry.
    pub path: &'static str,
    /// A fragment its message must contain.
    pub fragment: &'static str,
}

impl ErrorCase {
    /// The bad file's text.
    pub fn text(&self) -> String {
        assert!(
            VALID_BASE.contains(self.find),
            "case {}: {:?} not in the base",
            self.name,
            self.find
        );
        VALID_BASE.replacen(self.find, self.replace, 1)
    }
}

const fn case(
    name: &'static str,
    find: &'static str,
    replace: &'static str,
    path: &'static str,
    fragment: &'static str,
) -> ErrorCase {
    ErrorCase {
        name,
        find,
        replace,
        path,
        fragment,
    }
}

const TUNNEL_END: &str = "hard_seconds = 1800\n";

/// Every class of mistake, with its path and message.
pub const ERROR_CASES: &[ErrorCase] = &[
    case(
        "TOML syntax",
        "name = \"gw-a\"",
        "name = \"gw-a",
        "(syntax)",
        "TOML syntax error",
    ),
    case(
        "unknown section",
        "[gateway]",
        "[gatway]",
        "gatway",
        "unknown field `gatway`; did you mean `gateway`?",
    ),
    case(
        "unknown field",
        "length_km = 25.0",
        "lenght_km = 25.0",
        "peer[0].link.lenght_km",
        "did you mean `length_km`?",
    ),
    case(
        "wrong type",
        "length_km = 25.0",
        "length_km = \"25\"",
        "peer[0].link.length_km",
        "expected a number",
    ),
    case(
        "negative count",
        "rekey_interval = \"10m\"",
        "replay_window = -1",
        "tunnel[0].replay_window",
        "invalid value: integer `-1`",
    ),
    case(
        "missing gateway name",
        "name = \"gw-a\"\n",
        "",
        "gateway.name",
        "missing",
    ),
    case(
        "missing link kind",
        "kind = \"simulated\"\n",
        "",
        "peer[0].link.kind",
        "missing; say where this link's keys come from: kind = \"simulated\"",
    ),
    case(
        "etsi014 link without its section",
        "kind = \"simulated\"",
        "kind = \"etsi014\"",
        "peer[0].link.kind",
        "kind = \"etsi014\" needs the [peer.etsi014] section",
    ),
    case(
        "lab fibre-key export on a real device",
        "kind = \"simulated\"",
        "kind = \"etsi014\"\nlab_export_fibre_keys = \"/run/fibre.keys\"",
        "peer[0].link.lab_export_fibre_keys",
        "only a simulated link",
    ),
    case(
        "lab pool seed on a real device",
        "kind = \"simulated\"",
        "kind = \"etsi014\"\nlab_seed_pool = \"/run/seed\"",
        "peer[0].link.lab_seed_pool",
        "only a simulated link's pool may be seeded",
    ),
    case(
        "missing role",
        "role = \"transmitter\"\n",
        "",
        "peer[0].role",
        "missing; set this gateway's QKD role",
    ),
    case(
        "unknown role",
        "role = \"transmitter\"",
        "role = \"alice\"",
        "peer[0].role",
        "unknown variant `alice`",
    ),
    case(
        "bad name",
        "name = \"gw-a\"",
        "name = \"gw a\"",
        "gateway.name",
        "is not a valid name",
    ),
    case(
        "bad listen address",
        "name = \"gw-a\"",
        "name = \"gw-a\"\nlisten = \"0.0.0.0\"",
        "gateway.listen",
        "is not an IP socket address",
    ),
    case(
        "bad peer address",
        "address = \"198.51.100.2:9813\"",
        "address = \"gw-b\"",
        "peer[0].address",
        "is not host:port",
    ),
    case(
        "transmitter without address",
        "address = \"198.51.100.2:9813\"\n",
        "",
        "peer[0].address",
        "this gateway is the transmitter and dials",
    ),
    case(
        "receiver without listener",
        "role = \"transmitter\"",
        "role = \"receiver\"",
        "gateway.listen",
        "QKD receiver for peer \"gw-b\"",
    ),
    case(
        "bad netns name",
        "name = \"gw-a\"",
        "name = \"gw-a\"\nnetns = \"a/b\"",
        "gateway.netns",
        "invalid namespace name",
    ),
    case(
        "mark mask without mark",
        "name = \"gw-a\"",
        "name = \"gw-a\"\n[gateway.ownership]\nmark_mask = 255",
        "gateway.ownership.mark_mask",
        "a mask without a mark",
    ),
    case(
        "reqid 0 owned",
        "name = \"gw-a\"",
        "name = \"gw-a\"\n[gateway.ownership]\nreqids = [0, 100]",
        "gateway.ownership.reqids",
        "reqid 0",
    ),
    case(
        "optics out of range",
        "length_km = 25.0",
        "detector_efficiency = 1.5",
        "peer[0].link.detector_efficiency",
        "1.5 must lie in (0, 1]",
    ),
    case(
        "decoy intensities",
        "length_km = 25.0",
        "intensities = [0.1, 0.2, 0.0]",
        "peer[0].link.intensities",
        "signal > decoy + vacuum",
    ),
    case(
        "probabilities sum",
        "length_km = 25.0",
        "probabilities = [0.5, 0.4, 0.2]",
        "peer[0].link.probabilities",
        "sums to",
    ),
    case(
        "frame too large",
        "length_km = 25.0",
        "length_km = 25.0\nframe_slots = 1073741824",
        "peer[0].link.frame_slots",
        "over the frame limit",
    ),
    case(
        "unknown Cascade variant",
        "cascade = \"option8\"",
        "cascade = \"option9\"",
        "peer[0].postprocessing.cascade",
        "unknown Cascade variant \"option9\"",
    ),
    case(
        "eps_cor out of range",
        "cascade = \"option8\"",
        "eps_cor = 0.9",
        "peer[0].postprocessing.eps_cor",
        "e.g. 1e-15",
    ),
    case(
        "block too small",
        "cascade = \"option8\"",
        "block_sifted_bits = 100",
        "peer[0].postprocessing.block_sifted_bits",
        "must lie in 1024..=",
    ),
    case(
        "idle timeout below keepalive",
        "idle_timeout = \"30s\"",
        "idle_timeout = \"5s\"",
        "peer[0].channel.idle_timeout",
        "must exceed keepalive_interval",
    ),
    case(
        "duration without unit",
        "idle_timeout = \"30s\"",
        "idle_timeout = 30",
        "peer[0].channel.idle_timeout",
        "has no unit",
    ),
    case(
        "duration with unknown unit",
        "rekey_interval = \"10m\"",
        "rekey_interval = \"10min\"",
        "tunnel[0].rekey_interval",
        "unknown unit",
    ),
    case(
        "subnet with host bits",
        "[\"10.1.0.0/24\"]",
        "[\"10.1.0.5/24\"]",
        "tunnel[0].local_subnets[0]",
        "did you mean \"10.1.0.0/24\"?",
    ),
    case(
        "subnet prefix too long",
        "[\"10.1.0.0/24\"]",
        "[\"10.1.0.0/33\"]",
        "tunnel[0].local_subnets[0]",
        "length exceeds 32",
    ),
    case(
        "subnet families unpaired",
        "[\"10.1.0.0/24\"]",
        "[\"2001:db8:1::/64\"]",
        "tunnel[0].local_subnets[0]",
        "no subnet of the same address family",
    ),
    case(
        "endpoint families mixed",
        "remote_endpoint = \"198.51.100.2\"",
        "remote_endpoint = \"2001:db8::2\"",
        "tunnel[0].remote_endpoint",
        "different address families",
    ),
    case(
        "tunnel of unknown peer",
        "peer = \"gw-b\"",
        "peer = \"gw-c\"",
        "tunnel[0].peer",
        "no [[peer]] is named \"gw-c\"",
    ),
    case(
        "packets beyond 2^32 without ESN",
        TUNNEL_END,
        "hard_seconds = 1800\nhard_packets = 5000000000\n",
        "tunnel[0].lifetime.hard_packets",
        "5000000000 exceeds 2^32-1 (no ESN: the 32-bit sequence number must not wrap); lower it or set esn = true",
    ),
    case(
        "soft not below hard",
        TUNNEL_END,
        "hard_seconds = 1800\nsoft_seconds = 1800\n",
        "tunnel[0].lifetime.soft_seconds",
        "must be below the hard limit 1800",
    ),
    case(
        "hard lifetime within the rekey interval",
        TUNNEL_END,
        "hard_seconds = 300\n",
        "tunnel[0].lifetime.hard_seconds",
        "not longer than rekey_interval",
    ),
    case(
        "zero lifetime",
        TUNNEL_END,
        "hard_seconds = 1800\nhard_bytes = 0\n",
        "tunnel[0].lifetime.hard_bytes",
        "0 would expire the SA at once",
    ),
    case(
        "jitter too large",
        "rekey_interval = \"10m\"",
        "rekey_interval = \"10m\"\nrekey_jitter = 0.9",
        "tunnel[0].rekey_jitter",
        "must lie in [0, 0.5]",
    ),
    case(
        "replay window too large",
        "rekey_interval = \"10m\"",
        "rekey_interval = \"10m\"\nreplay_window = 5000",
        "tunnel[0].replay_window",
        "outside 0..=4096",
    ),
    case(
        "reqid outside ownership",
        "rekey_interval = \"10m\"",
        "rekey_interval = \"10m\"\nreqid = 7",
        "tunnel[0].reqid",
        "outside gateway.ownership.reqids",
    ),
    case(
        "transport mode with subnets",
        "rekey_interval = \"10m\"",
        "rekey_interval = \"10m\"\nmode = \"transport\"",
        "tunnel[0].local_subnets[0]",
        "transport mode protects only the gateways' own traffic",
    ),
    case(
        "duplicate tunnel",
        "[tunnel.lifetime]",
        "[[tunnel]]\nname = \"a-b\"\npeer = \"gw-b\"\nlocal_subnets = [\"10.3.0.0/24\"]\nremote_subnets = [\"10.4.0.0/24\"]\nlocal_endpoint = \"192.0.2.1\"\nremote_endpoint = \"198.51.100.2\"\n\n[tunnel.lifetime]",
        "tunnel[1].name",
        "is also tunnel[0]'s name",
    ),
    case(
        "duplicate peer",
        "[[tunnel]]",
        "[[peer]]\nname = \"gw-b\"\nrole = \"receiver\"\n\n[[tunnel]]",
        "peer[1].name",
        "is also the name of peer[0]",
    ),
];
