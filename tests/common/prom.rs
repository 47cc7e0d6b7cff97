//! Reading a Prometheus text exposition (`GET /metrics`) in tests.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

/// One sample line: name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// The parsed exposition: samples and the `# TYPE` of each metric family.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
    pub types: BTreeMap<String, String>,
}

impl Scrape {
    /// Parses the text format; panics (with the line) on a sample that does
    /// not parse, since our exposition must always be well-formed.
    pub fn parse(text: &str) -> Scrape {
        let mut s = Scrape {
            text: text.to_string(),
            ..Default::default()
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(n), Some(t)) = (it.next(), it.next()) {
                    s.types.insert(n.to_string(), t.to_string());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("sample without a value: {line}"));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in: {line}")),
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))),
                None => (series, BTreeMap::new()),
            };
            s.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        s
    }

    /// The sum of `name`'s series whose labels include all of `labels`;
    /// `None` when no series matches.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    /// Metric family names (from `# TYPE`).
    pub fn families(&self) -> BTreeSet<String> {
        self.types.keys().cloned().collect()
    }

    /// Whether `name` is a family or a histogram's `_bucket`/`_sum`/`_count`.
    pub fn has_series_name(&self, name: &str) -> bool {
        if self.types.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| self.types.get(base).is_some_and(|t| t == "histogram"))
        })
    }
}

fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}
