use std::collections::{HashMap, HashSet};
use std::time::Duration;

use super::*;
use crate::keys::{BlockId, KeyPool, Role};
use crate::ops::board::tests::{aborted_block, board_with_clock, good_block};
use crate::ops::snapshot::{PeerRole, RekeyCause, SaUsage};
use crate::qkd::link::AbortCause;
use crate::secret::SecretBytes;

/// One parsed sample line.
#[derive(Debug)]
pub(crate) struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("bad value {s:?}: {e}")),
    }
}

/// Parses `{k="v",…}` with the format's escapes; returns labels and the rest.
type Labels = Vec<(String, String)>;

fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    let mut rest = s.strip_prefix('{').ok_or("expected {")?;
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("raw newline in label value".into()),
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// Checks the text format 0.0.4 rules this exposition relies on and returns
/// the samples: every line is HELP, TYPE or a sample; HELP and TYPE come
/// once per family, before its samples; a family's samples are contiguous;
/// names, labels and values are well-formed; no sample repeats.
pub(crate) fn parse_exposition(text: &str) -> Result<Vec<Sample>, String> {
    if !text.ends_with('\n') {
        return Err("must end with a newline".into());
    }
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    let mut seen = HashSet::new();
    let mut samples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest
                .split_once(' ')
                .ok_or_else(|| err("HELP without text".into()))?;
            if !is_metric_name(name) || !help.insert(name.to_string()) || finished.contains(name) {
                return Err(err("bad or repeated HELP".into()));
            }
            if let Some(prev) = current.replace(name.to_string()) {
                finished.insert(prev);
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest
                .split_once(' ')
                .ok_or_else(|| err("TYPE without type".into()))?;
            if current.as_deref() != Some(name) || types.contains_key(name) {
                return Err(err("TYPE must follow its HELP, once".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty) {
                return Err(err(format!("unknown type {ty}")));
            }
            types.insert(name.to_string(), ty.to_string());
        } else if line.starts_with('#') || line.is_empty() {
            return Err(err("unexpected comment or blank line".into()));
        } else {
            let name_end = line
                .find(['{', ' '])
                .ok_or_else(|| err("no value".into()))?;
            let name = &line[..name_end];
            if current.as_deref() != Some(name) || !types.contains_key(name) {
                return Err(err("sample outside its family, or before HELP/TYPE".into()));
            }
            let rest = &line[name_end..];
            let (labels, rest) = if rest.starts_with('{') {
                parse_labels(rest).map_err(err)?
            } else {
                (Vec::new(), rest)
            };
            let value = rest
                .strip_prefix(' ')
                .ok_or_else(|| err("no space before value".into()))?;
            let value = parse_value(value.split(' ').next().unwrap_or_default()).map_err(err)?;
            if types[name] == "counter" && (value.is_nan() || value < 0.0) {
                return Err(err("negative counter".into()));
            }
            if !seen.insert(format!("{name}{labels:?}")) {
                return Err(err("repeated sample".into()));
            }
            samples.push(Sample {
                name: name.into(),
                labels,
                value,
            });
        }
    }
    Ok(samples)
}

fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    samples.iter().find(|s| {
        s.name == name
            && labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(k2, v2)| k2 == k && v2 == v))
    })
}

#[test]
fn the_parser_rejects_what_it_should() {
    let ok = "# HELP a x\n# TYPE a gauge\na{l=\"v\\\"\\\\\\n\"} 1\na 2.5\n";
    assert_eq!(parse_exposition(ok).unwrap().len(), 2);
    for bad in [
        "a 1\n",                                                         // no HELP/TYPE
        "# HELP a x\n# TYPE a gauge\na 1",                               // no final newline
        "# HELP a x\n# TYPE a gauge\na{l=\"v} 1\n",                      // unterminated
        "# HELP a x\n# TYPE a gauge\na{1l=\"v\"} 1\n",                   // label name
        "# HELP a x\n# TYPE a gauge\na one\n",                           // value
        "# HELP a x\n# TYPE a gauge\na 1\na 1\n",                        // repeat
        "# HELP a x\n# TYPE a counter\na -1\n",                          // negative counter
        "# HELP a x\n# TYPE a gauge\n# HELP b x\n# TYPE b gauge\na 1\n", // not contiguous
        "# HELP a x\n# TYPE a thing\na 1\n",                             // type
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

#[test]
fn empty_board_exposition_is_valid() {
    let (board, _) = board_with_clock();
    let text = render_metrics(&board.snapshot());
    let samples = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        find(&samples, "qkd_ipsec_info", &[("gateway", "gw-a")])
            .unwrap()
            .value,
        1.0
    );
    // Every alarm kind is exported, active or not.
    let kinds = samples
        .iter()
        .filter(|s| s.name == "qkd_ipsec_alarms_active")
        .count();
    assert_eq!(kinds, AlarmKind::ALL.len());
}

#[test]
fn full_board_exposition_is_valid_and_carries_the_figures() {
    let (board, clock) = board_with_clock();
    // A name that needs escaping must survive.
    let peer = board.register_peer("gw \"b\"\\x", PeerRole::Transmitter);
    peer.record_block(&good_block(0, 5000));
    peer.record_block(&aborted_block(1, AbortCause::TestQber, 40));
    let mut pool = KeyPool::new(Role::Transmitter);
    pool.append(BlockId(1), SecretBytes::from_slice(&[3u8; 200]))
        .unwrap();
    let _ = pool.take(crate::keys::KeyUse::SaKey, 36).unwrap();
    peer.set_pool(&pool.status());
    let t = board.register_tunnel("site-b", "gw \"b\"\\x");
    t.sa_installed(7, 0x100, 0x200, RekeyCause::Timer);
    t.rekey_failed(RekeyCause::SoftExpire, "boom");
    t.set_sa_usage(SaUsage {
        bytes_in: 11,
        packets_in: 1,
        bytes_out: 22,
        packets_out: 2,
    });
    clock.advance(Duration::from_secs(10));
    let text = render_metrics(&board.snapshot());
    let s = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let p = "gw \"b\"\\x";
    let v = |name, labels: &[(&str, &str)]| {
        find(&s, name, labels)
            .unwrap_or_else(|| panic!("{name} {labels:?} missing\n{text}"))
            .value
    };
    assert_eq!(
        v("qkd_ipsec_blocks_total", &[("peer", p), ("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        v(
            "qkd_ipsec_blocks_total",
            &[("peer", p), ("cause", "test_qber")]
        ),
        1.0
    );
    assert_eq!(v("qkd_ipsec_qber", &[("peer", p), ("basis", "test")]), 0.2);
    assert!(
        find(&s, "qkd_ipsec_qber", &[("basis", "key")]).is_none(),
        "aborted before Cascade"
    );
    assert_eq!(v("qkd_ipsec_key_bits_total", &[("peer", p)]), 5000.0);
    assert_eq!(v("qkd_ipsec_pool_available_bytes", &[("peer", p)]), 164.0);
    assert_eq!(
        v(
            "qkd_ipsec_pool_consumed_bytes_total",
            &[("peer", p), ("use", "sa_key")]
        ),
        36.0
    );
    assert_eq!(v("qkd_ipsec_link_up", &[("peer", p)]), 0.0);
    assert_eq!(v("qkd_ipsec_link_simulated", &[("peer", p)]), 1.0);
    peer.set_source(crate::ops::LinkSource::Etsi014);
    let text = render_metrics(&board.snapshot());
    let s = parse_exposition(&text).unwrap();
    let simulated = find(&s, "qkd_ipsec_link_simulated", &[("peer", p)]).unwrap();
    assert_eq!(simulated.value, 0.0, "a real QKD device is not simulated");
    // The ETSI 014 key source: counters, the alarm and its clearing.
    peer.set_key_source("https://kme-a.example:8443", "master");
    peer.key_source_failed("the KME answered 503 to enc_keys: no key");
    peer.key_source_ok(8, 256, std::time::Duration::from_millis(3));
    peer.key_source_failed("cannot connect to the KME");
    let snap = board.snapshot();
    let ks = snap.peers[0].key_source.as_ref().unwrap();
    assert_eq!((ks.keys_fetched, ks.bytes_fetched, ks.errors), (8, 256, 2));
    assert_eq!(ks.last_error.as_deref(), Some("cannot connect to the KME"));
    assert!(snap.alarms.iter().any(|a| a.active
        && a.alarm.kind() == crate::ops::AlarmKind::KeySourceFailed
        && a.severity == crate::ops::Severity::Warning));
    let text = render_metrics(&snap);
    let s = parse_exposition(&text).unwrap();
    let keys = find(&s, "qkd_ipsec_etsi014_keys_total", &[("peer", p)]).unwrap();
    let errors = find(&s, "qkd_ipsec_etsi014_errors_total", &[("peer", p)]).unwrap();
    assert_eq!((keys.value, errors.value), (8.0, 2.0));
    let shown = crate::ops::render_text(&snap);
    assert!(
        shown.contains("key source: ETSI 014 master at https://kme-a.example:8443"),
        "{shown}"
    );
    peer.key_source_ok(8, 256, std::time::Duration::from_millis(3));
    assert!(
        !board
            .snapshot()
            .alarms
            .iter()
            .any(|a| a.active && a.alarm.kind() == crate::ops::AlarmKind::KeySourceFailed)
    );
    assert_eq!(
        v("qkd_ipsec_tunnel_generation", &[("tunnel", "site-b")]),
        7.0
    );
    assert_eq!(
        v(
            "qkd_ipsec_tunnel_state",
            &[("tunnel", "site-b"), ("state", "up")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "qkd_ipsec_tunnel_state",
            &[("tunnel", "site-b"), ("state", "rekeying")]
        ),
        0.0
    );
    assert_eq!(
        v("qkd_ipsec_tunnel_sa_age_seconds", &[("tunnel", "site-b")]),
        10.0
    );
    assert_eq!(
        v(
            "qkd_ipsec_tunnel_sa_bytes",
            &[("tunnel", "site-b"), ("direction", "out")]
        ),
        22.0
    );
    assert_eq!(
        v(
            "qkd_ipsec_tunnel_sa_packets",
            &[("tunnel", "site-b"), ("direction", "in")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "qkd_ipsec_rekeys_total",
            &[("cause", "timer"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "qkd_ipsec_rekeys_total",
            &[("cause", "soft_expire"), ("result", "failed")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "qkd_ipsec_alarms_active",
            &[("kind", "qber_above_threshold")]
        ),
        1.0
    );
    assert_eq!(
        v("qkd_ipsec_alarms_active", &[("kind", "rekey_failed")]),
        1.0
    );
    assert_eq!(
        v("qkd_ipsec_alarms_active", &[("kind", "pool_exhausted")]),
        0.0
    );
    assert_eq!(
        v("qkd_ipsec_alarms_raised_total", &[("kind", "rekey_failed")]),
        1.0
    );
    // Every family is ours.
    assert!(s.iter().all(|x| x.name.starts_with("qkd_ipsec_")));
}

#[test]
fn numbers_are_formatted_for_prometheus() {
    assert_eq!(number(3.0), "3");
    assert_eq!(number(0.25), "0.25");
    assert_eq!(number(f64::NAN), "NaN");
    assert_eq!(number(f64::INFINITY), "+Inf");
    assert_eq!(number(1e20), "100000000000000000000");
    assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}
