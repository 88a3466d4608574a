//! The TOML document: parses it keeping every key's position, turns serde
//! errors into [`Finding`]s with the field's path (`tunnel[0].lifetime.hard_packets`)
//! and line/column, and recovers so that one run reports every problem.
//!
//! Recovery: serde stops at the first error. We then delete the offending
//! key from the parsed tree, remember its path, and deserialise again, until
//! the rest deserialises. Required fields are `Option`s in the file types,
//! so serde never stops on a missing field and the sections report all of
//! them. Findings from the sections about a deleted path (or below it) are
//! dropped later: that field was already reported.
//!
//! This module knows nothing of what the fields mean.

use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::Finding;

/// One step of a path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(String),
    Index(usize),
}

/// A field's path, displayed as `tunnel[0].lifetime.hard_packets`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FieldPath(pub Vec<Seg>);

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => f.write_str(k)?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// Where one key or array element sits in the text.
struct Entry {
    path: String,
    segs: Vec<Seg>,
    key_span: Option<Range<usize>>,
    value_span: Range<usize>,
}

/// The parsed document's positions, for locating any path.
pub(crate) struct Positions {
    text_lines: Vec<usize>,
    entries: Vec<Entry>,
}

impl Positions {
    fn new(text: &str, root: &DeTable<'_>) -> Self {
        let mut entries = Vec::new();
        walk_table(root, &mut Vec::new(), &mut entries);
        let text_lines = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            text_lines,
            entries,
        }
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(crate) fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let offset = offset.min(text.len());
        let line = self.text_lines.partition_point(|&start| start <= offset);
        let start = self.text_lines[line - 1];
        let col = text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, col + 1)
    }

    /// Every path with the line/column of its value.
    pub(crate) fn all_line_cols(&self, text: &str) -> Vec<(String, (usize, usize))> {
        self.entries
            .iter()
            .map(|e| (e.path.clone(), self.line_col(text, e.value_span.start)))
            .collect()
    }

    /// The innermost entry whose key or value holds `span`.
    fn innermost(&self, span: &Range<usize>) -> Option<&Entry> {
        let holds = |r: &Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
        self.entries
            .iter()
            .filter_map(|e| {
                let on_key = e.key_span.as_ref().filter(|k| holds(k));
                let on_value = Some(&e.value_span).filter(|v| holds(v));
                on_key.or(on_value).map(|r| (r.end - r.start, e))
            })
            .min_by_key(|(len, _)| *len)
            .map(|(_, e)| e)
    }
}

fn walk_table(table: &DeTable<'_>, prefix: &mut Vec<Seg>, out: &mut Vec<Entry>) {
    for (k, v) in table.iter() {
        prefix.push(Seg::Key(k.get_ref().to_string()));
        out.push(Entry {
            path: FieldPath(prefix.clone()).to_string(),
            segs: prefix.clone(),
            key_span: Some(k.span()),
            value_span: v.span(),
        });
        walk_value(v, prefix, out);
        prefix.pop();
    }
}

fn walk_value(v: &Spanned<DeValue<'_>>, prefix: &mut Vec<Seg>, out: &mut Vec<Entry>) {
    match v.get_ref() {
        DeValue::Table(t) => walk_table(t, prefix, out),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                prefix.push(Seg::Index(i));
                out.push(Entry {
                    path: FieldPath(prefix.clone()).to_string(),
                    segs: prefix.clone(),
                    key_span: None,
                    value_span: item.span(),
                });
                walk_value(item, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

/// Removes the table key at `segs` (a path ending in a key).
fn remove_key(table: &mut DeTable<'_>, segs: &[Seg]) -> bool {
    match segs {
        [Seg::Key(k)] => table.remove(k.as_str()).is_some(),
        [Seg::Key(k), rest @ ..] => table
            .get_mut(k.as_str())
            .is_some_and(|v| remove_in_value(v.get_mut(), rest)),
        _ => false,
    }
}

fn remove_in_value(v: &mut DeValue<'_>, segs: &[Seg]) -> bool {
    match (v, segs.first()) {
        (DeValue::Table(t), Some(Seg::Key(_))) => remove_key(t, segs),
        (DeValue::Array(a), Some(Seg::Index(i))) => a
            .get_mut(*i)
            .is_some_and(|item| remove_in_value(item.get_mut(), &segs[1..])),
        _ => false,
    }
}

/// The outcome of reading a document: the deserialised value, the
/// findings serde produced, and the paths deleted to get past them.
pub(crate) struct Parsed<T> {
    pub value: Option<T>,
    pub findings: Vec<Finding>,
    pub deleted: Vec<String>,
    pub positions: Positions,
}

/// Serde passes at most this many times over one document.
const MAX_RECOVERIES: usize = 200;

/// Parses `text` and deserialises `T`, collecting every serde error (see
/// the module docs). TOML syntax errors end the attempt: the tree is not
/// trustworthy after them.
pub(crate) fn parse<T: for<'de> Deserialize<'de>>(text: &str) -> Parsed<T> {
    let (root, syntax) = DeTable::parse_recoverable(text);
    let positions = Positions::new(text, root.get_ref());
    if !syntax.is_empty() {
        let findings = syntax
            .into_iter()
            .map(|e| {
                let location = e.span().map(|s| positions.line_col(text, s.start));
                Finding::new(
                    "(syntax)",
                    format!("TOML syntax error: {}", e.message().trim()),
                )
                .at(location)
            })
            .collect();
        return Parsed {
            value: None,
            findings,
            deleted: Vec::new(),
            positions,
        };
    }
    let mut tree = root;
    let mut findings = Vec::new();
    let mut deleted = Vec::new();
    for _ in 0..MAX_RECOVERIES {
        let de = toml::de::Deserializer::from(tree.clone());
        let err = match T::deserialize(de) {
            Ok(value) => {
                sort_by_location(&mut findings);
                return Parsed {
                    value: Some(value),
                    findings,
                    deleted,
                    positions,
                };
            }
            Err(e) => e,
        };
        let entry = err.span().and_then(|s| positions.innermost(&s));
        let location = err.span().map(|s| positions.line_col(text, s.start));
        let path = entry.map_or_else(|| "(top level)".to_string(), |e| e.path.clone());
        findings.push(Finding::new(path, explain_serde(err.message())).at(location));
        // Delete the innermost *key* on the path: an array element's error
        // removes the whole array, so indices of later elements stay true.
        let Some(entry) = entry else { break };
        let key_len = entry
            .segs
            .iter()
            .rposition(|s| matches!(s, Seg::Key(_)))
            .map_or(0, |i| i + 1);
        let segs = &entry.segs[..key_len];
        let removed = remove_key(tree.get_mut(), segs);
        deleted.push(FieldPath(segs.to_vec()).to_string());
        if !removed {
            break;
        }
    }
    sort_by_location(&mut findings);
    Parsed {
        value: None,
        findings,
        deleted,
        positions,
    }
}

/// File order (serde visits keys alphabetically); unlocated ones last.
pub(crate) fn sort_by_location(findings: &mut [Finding]) {
    findings.sort_by_key(|f| f.location.unwrap_or((usize::MAX, 0)));
}

/// Turns serde's wording into an operator's: unknown fields get a
/// "did you mean", Rust type names become what to write.
fn explain_serde(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let (field, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let expected: Vec<&str> = tail.split('`').skip(1).step_by(2).collect();
        return match closest(field, &expected) {
            Some(m) => format!("unknown field `{field}`; did you mean `{m}`?"),
            None if expected.is_empty() => format!("unknown field `{field}`"),
            None => format!(
                "unknown field `{field}`; expected one of: {}",
                expected.join(", ")
            ),
        };
    }
    let mut out = message.to_string();
    for (rust, human) in [
        ("expected f64", "expected a number, e.g. 25.0"),
        ("expected u64", "expected a whole number ≥ 0, e.g. 1000"),
        ("expected u32", "expected a whole number 0..=4294967295"),
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected a boolean", "expected true or false"),
        (
            "expected a sequence",
            "expected an array, e.g. [\"10.1.0.0/24\"]",
        ),
    ] {
        out = out.replace(rust, human);
    }
    out
}

/// The candidate within edit distance 2 of `word` (the first, if several).
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance (short field names only).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // read through Debug only
    struct Doc {
        #[serde(default)]
        a: Option<u64>,
        #[serde(default)]
        item: Vec<Item>,
    }

    #[derive(Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Item {
        #[serde(default)]
        length_km: Option<f64>,
        #[serde(default)]
        list: Vec<u32>,
    }

    #[test]
    fn every_serde_error_is_reported_with_path_and_line() {
        let text =
            "a = \"x\"\n\n[[item]]\nlenght_km = 3.0\n\n[[item]]\nlist = [1, -2]\nbogus = 1\n";
        let p: Parsed<Doc> = parse(text);
        assert!(p.value.is_some(), "recovered after deleting the bad keys");
        let got: Vec<(String, Option<(usize, usize)>)> = p
            .findings
            .iter()
            .map(|f| (f.path.clone(), f.location))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a".into(), Some((1, 5))),
                ("item[0].lenght_km".into(), Some((4, 1))),
                ("item[1].list[1]".into(), Some((7, 12))),
                ("item[1].bogus".into(), Some((8, 1))),
            ]
        );
        assert!(p.findings[1].message.contains("did you mean `length_km`"));
        // Serde's order (keys sorted); an array element's error deletes the array.
        assert_eq!(
            p.deleted,
            ["a", "item[0].lenght_km", "item[1].bogus", "item[1].list"]
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let p: Parsed<Doc> = parse("a = 1\nb = = 2\n");
        assert!(p.value.is_none());
        assert_eq!(p.findings[0].path, "(syntax)");
        assert_eq!(p.findings[0].location.map(|l| l.0), Some(2));
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "a = \"é\"\n[[item]]\nlength_km = 1.0\n";
        let p: Parsed<Doc> = parse(text);
        let all = p.positions.all_line_cols(text);
        assert!(
            all.contains(&("item[0].length_km".to_string(), (3, 13))),
            "{all:?}"
        );
        assert_eq!(
            p.positions.line_col(text, text.find('é').unwrap() + 2),
            (1, 7)
        );
    }

    #[test]
    fn edit_distance_is_levenshtein() {
        assert_eq!(edit_distance("lenght_km", "length_km"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("esn", "esn"), 0);
        assert_eq!(closest("rol", &["role", "name"]), Some("role"));
        assert_eq!(closest("zzzzzz", &["role", "name"]), None);
    }
}
