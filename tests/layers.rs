//! The import graph between the crate's top-level modules is one-way.
//!
//! Layers, lowest first (`DESIGN.md`, issue 10): `media` (codecs, jitter,
//! session) <- `sdp` <- `config` <- `agent` <- `sip`, `calls`, `tls` (the
//! signalling layer: call tasks, the call registry, and the TLS material its
//! transports load) <- `control` (HTTP API, webhooks) <- `server`, `main`,
//! `lib`. A module may use its own layer's siblings and anything below, never
//! a layer above, and the top-level modules form no cycle.
//!
//! Every `src/**/*.rs` file is read and its references to other top-level
//! modules are collected: `crate::x`, `use crate::{x, y::z}` groups (also over
//! several lines), `super::` paths that climb out of the top-level module,
//! and `agentline::x` in the binary's `main.rs`. Comments, strings and char
//! literals are blanked first, so a path in a doc comment does not count.
//! Test code counts too (it is marked in the report): nothing is exempt.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

/// Layer of each top-level module; a reference may only go to an equal or
/// lower number.
const LAYERS: &[(&str, u8)] = &[
    // Wall-clock helpers for records and webhooks; uses nothing of ours.
    ("clock", 0),
    ("media", 0),
    ("sdp", 1),
    ("config", 2),
    ("agent", 3),
    // Call records (SQLite/PostgreSQL); knows nothing of SIP or calls.
    ("store", 3),
    ("sip", 4),
    ("calls", 4),
    // Certificate generation and rustls configs; used by sip's transports
    // (and `gen-cert` in main), uses nothing of ours.
    ("tls", 4),
    ("control", 5),
    ("server", 6),
    // sd_notify messages for systemd; started by `server`.
    ("systemd", 6),
    // malloc_trim on a timer; started by `server`.
    ("memory", 6),
    // The process's log writer (stderr, never blocking or panicking); set up by main.
    ("logging", 6),
    ("main", 6),
    ("lib", 6),
];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

/// One reference from a file to another top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
    /// Inside a `#[cfg(test)]` module.
    in_test: bool,
    source_line: String,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layer = |m: &str| layer(m).map_or("?".to_string(), |l| l.to_string());
        write!(
            f,
            "{}:{}: {} ({}) -> {} ({}){}: {}",
            self.file,
            self.line,
            self.from,
            layer(&self.from),
            self.to,
            layer(&self.to),
            if self.in_test { " [test code]" } else { "" },
            self.source_line.trim()
        )
    }
}

/// The module path of a file under `src/` (`sip/server.rs` -> `[sip,
/// server]`, `sip/mod.rs` -> `[sip]`, `lib.rs` and `main.rs` -> `[]`) and
/// its top-level module's name (`lib` and `main` for the two roots).
fn module_of(rel: &Path) -> (Vec<String>, String) {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.last_mut() {
        if let Some(stem) = last.strip_suffix(".rs") {
            *last = stem.to_string();
        }
    }
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        let top = parts[0].clone();
        return (Vec::new(), top);
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    let top = parts[0].clone();
    (parts, top)
}

/// `text` with comments, string and char literals replaced by spaces
/// (newlines kept, so line numbers stay right).
fn blank_non_code(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.extend([' ', ' ']);
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.extend([' ', ' ']);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !prev_is_ident(&b, i)
            && raw_string_hashes(&b, if c == 'b' { i + 2 } else { i + 1 }).is_some()
        {
            let start = if c == 'b' { i + 2 } else { i + 1 };
            let hashes = raw_string_hashes(&b, start).unwrap_or(0);
            // r, #..., "
            let mut j = start + hashes + 1;
            while j < b.len() {
                if b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.extend(b[i..j.min(b.len())].iter().map(|&c| blank(c)));
            i = j;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    out.push(blank(b[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                out.extend(b[i..(j + 1).min(b.len())].iter().map(|&c| blank(c)));
                i = j + 1;
            } else if b.get(i + 2) == Some(&'\'') {
                out.extend([' ', ' ', ' ']);
                i += 3;
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out.into_iter().collect()
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// At `start` (just after `r`): the number of `#` before an opening `"`.
fn raw_string_hashes(b: &[char], start: usize) -> Option<usize> {
    let mut n = 0;
    while b.get(start + n) == Some(&'#') {
        n += 1;
    }
    (b.get(start + n) == Some(&'"')).then_some(n)
}

#[derive(Debug, Clone, PartialEq)]
struct Token {
    text: String,
    line: usize,
}

fn tokenize(code: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut line = 1;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            out.push(Token {
                text: chars[start..i].iter().collect(),
                line,
            });
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            out.push(Token {
                text: "::".into(),
                line,
            });
            i += 2;
        } else {
            out.push(Token {
                text: c.to_string(),
                line,
            });
            i += 1;
        }
    }
    out
}

fn is_ident(t: &str) -> bool {
    t.chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The top-level modules named right after a crate-root path prefix whose
/// last `::` is at `toks[i]`: one ident, or the first ident of every item
/// of a `{...}` group.
fn names_after(toks: &[Token], i: usize) -> Vec<(String, usize)> {
    let Some(next) = toks.get(i + 1) else {
        return Vec::new();
    };
    if next.text != "{" {
        return if is_ident(&next.text) {
            vec![(next.text.clone(), next.line)]
        } else {
            Vec::new()
        };
    }
    let mut out = Vec::new();
    let mut depth = 0;
    let mut item_start = true;
    for t in &toks[i + 1..] {
        match t.text.as_str() {
            "{" => {
                depth += 1;
                if depth == 1 {
                    item_start = true;
                    continue;
                }
            }
            "}" => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            "," if depth == 1 => {
                item_start = true;
                continue;
            }
            _ => {}
        }
        if item_start && depth == 1 && is_ident(&t.text) && t.text != "self" {
            out.push((t.text.clone(), t.line));
        }
        item_start = false;
    }
    out
}

/// Every reference in `text` (the file `rel` under `src/`) to a top-level
/// module other than its own.
fn edges_of(rel: &Path, text: &str) -> Vec<Edge> {
    let (file_path, top) = module_of(rel);
    let code = blank_non_code(text);
    let lines: Vec<&str> = text.lines().collect();
    let toks = tokenize(&code);
    let is_main = top == "main";

    // Inline `mod name { ... }` blocks: (name, brace depth inside, cfg(test)).
    let mut inline: Vec<(String, usize, bool)> = Vec::new();
    let mut depth = 0usize;
    let mut pending_cfg_test = false;
    let mut targets: Vec<(String, usize, bool)> = Vec::new();
    let mut i = 0;
    while i < toks.len() {
        let t = toks[i].text.as_str();
        let prev = if i > 0 { toks[i - 1].text.as_str() } else { "" };
        let next = toks.get(i + 1).map(|t| t.text.as_str()).unwrap_or("");
        let in_test = inline.iter().any(|m| m.2);
        match t {
            "{" => depth += 1,
            "}" => {
                if inline.last().is_some_and(|m| m.1 == depth) {
                    inline.pop();
                }
                depth = depth.saturating_sub(1);
            }
            ";" => pending_cfg_test = false,
            "cfg" if next == "(" && toks.get(i + 2).is_some_and(|t| t.text == "test") => {
                pending_cfg_test = true;
            }
            "mod" if toks.get(i + 2).is_some_and(|t| t.text == "{") && is_ident(next) => {
                inline.push((next.to_string(), depth + 1, pending_cfg_test));
                pending_cfg_test = false;
            }
            // `crate::x`, and `agentline::x` from the binary.
            "crate" | "agentline"
                if next == "::" && prev != "::" && prev != "$" && (t == "crate" || is_main) =>
            {
                for (name, line) in names_after(&toks, i + 1) {
                    targets.push((name, line, in_test));
                }
            }
            "super" if next == "::" && prev != "::" => {
                let mut ups = 0;
                let mut j = i;
                while toks.get(j).is_some_and(|t| t.text == "super")
                    && toks.get(j + 1).is_some_and(|t| t.text == "::")
                {
                    ups += 1;
                    j += 2;
                }
                let here = file_path.len() + inline.len();
                if ups >= here {
                    // Climbed to the crate root: the next name is a top-level module.
                    for (name, line) in names_after(&toks, j - 1) {
                        targets.push((name, line, in_test));
                    }
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    targets
        .into_iter()
        .filter(|(to, _, _)| *to != top && !(is_main && *to == "crate"))
        .map(|(to, line, in_test)| Edge {
            from: top.clone(),
            to,
            file: Path::new("src").join(rel).display().to_string(),
            line,
            in_test,
            source_line: lines.get(line - 1).copied().unwrap_or("").to_string(),
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn crate_edges() -> Vec<Edge> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 10, "found only {} files in src/", files.len());
    let mut edges = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        let rel = f.strip_prefix(&src).expect("under src/");
        edges.extend(edges_of(rel, &text));
    }
    edges
}

/// Edges to a module above the source's layer, and references to modules
/// missing from the layer table.
fn upward(edges: &[Edge]) -> Vec<String> {
    let mut out = Vec::new();
    for e in edges {
        match (layer(&e.from), layer(&e.to)) {
            (Some(from), Some(to)) if to > from => out.push(format!("upward: {e}")),
            (Some(_), Some(_)) => {}
            _ => out.push(format!("module without a layer (add it to LAYERS): {e}")),
        }
    }
    out
}

/// Cycles between top-level modules: for each strongly connected group of
/// two or more modules, every edge inside it.
fn cycles(edges: &[Edge]) -> Vec<String> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().insert(&e.to);
        graph.entry(&e.to).or_default();
    }
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from];
        while let Some(m) = todo.pop() {
            for n in &graph[m] {
                if seen.insert(*n) {
                    todo.push(n);
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&str, BTreeSet<&str>> = graph.keys().map(|m| (*m, reach(m))).collect();
    let same_cycle = |a: &str, b: &str| reachable[a].contains(b) && reachable[b].contains(a);
    let mut out = Vec::new();
    let mut groups: BTreeSet<Vec<&str>> = BTreeSet::new();
    for m in graph.keys() {
        let group: Vec<&str> = graph.keys().copied().filter(|n| same_cycle(m, n)).collect();
        if group.len() > 1 {
            groups.insert(group);
        }
    }
    for group in groups {
        out.push(format!("cycle between {}:", group.join(", ")));
        let mut pairs: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for e in edges {
            if group.contains(&e.from.as_str()) && group.contains(&e.to.as_str()) {
                pairs
                    .entry((&e.from, &e.to))
                    .or_default()
                    .push(format!("{}:{}", e.file, e.line));
            }
        }
        for ((from, to), places) in pairs {
            out.push(format!(
                "  {from} -> {to}: {} reference(s): {}",
                places.len(),
                places.join(", ")
            ));
        }
    }
    out
}

#[test]
fn no_module_imports_a_layer_above_it_and_the_modules_form_no_cycle() {
    let edges = crate_edges();
    assert!(
        edges.iter().any(|e| e.from == "sip" && e.to == "media"),
        "the scanner found no sip -> media reference; it is broken"
    );
    let mut problems = upward(&edges);
    problems.extend(cycles(&edges));
    assert!(
        problems.is_empty(),
        "{} import-graph problem line(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

#[test]
fn a_synthetic_upward_edge_is_caught_in_every_spelling() {
    let text = r#"//! media things; crate::server in a comment does not count
use crate::{
    config::PortRange,
    sdp::{self, Offer},
};
use super::session;
fn f() -> &'static str {
    let _ = crate::control::webhooks::send;
    let _c = 'x';
    "crate::agent in a string does not count"
}
#[cfg(test)]
mod tests {
    use super::super::super::calls::Registry;
    use super::*;
}
"#;
    let edges = edges_of(Path::new("media/ports.rs"), text);
    let found: Vec<(&str, usize, bool)> = edges
        .iter()
        .map(|e| (e.to.as_str(), e.line, e.in_test))
        .collect();
    assert_eq!(
        found,
        [
            ("config", 3, false),
            ("sdp", 4, false),
            ("control", 8, false),
            ("calls", 14, true)
        ],
        "{edges:#?}"
    );
    let problems = upward(&edges);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(
        problems[0].starts_with("upward: src/media/ports.rs:3: media (0) -> config (2)"),
        "{}",
        problems[0]
    );

    // A file in a nested module climbing to the root with super::super.
    let nested = edges_of(
        Path::new("sip/server.rs"),
        "use super::super::control::webhooks;\nuse super::call::CallTask;\n",
    );
    assert_eq!(nested.len(), 1, "{nested:#?}");
    assert_eq!((nested[0].to.as_str(), nested[0].line), ("control", 1));
    assert_eq!(upward(&nested).len(), 1);

    // The binary names the library by its crate name.
    let main = edges_of(
        Path::new("main.rs"),
        "use agentline::config::Config;\nfn m() { agentline::server::run(); }\n",
    );
    let to: Vec<&str> = main.iter().map(|e| e.to.as_str()).collect();
    assert_eq!(to, ["config", "server"]);
    assert!(upward(&main).is_empty());
}

#[test]
fn a_cycle_is_reported_with_its_edges() {
    let mut edges = edges_of(Path::new("sdp.rs"), "use crate::media::Codec;\n");
    edges.extend(edges_of(
        Path::new("media/session.rs"),
        "use crate::sdp::Offer;\n",
    ));
    edges.extend(edges_of(
        Path::new("agent/mod.rs"),
        "use crate::media::Frame;\n",
    ));
    let report = cycles(&edges);
    assert_eq!(
        report,
        [
            "cycle between media, sdp:",
            "  media -> sdp: 1 reference(s): src/media/session.rs:1",
            "  sdp -> media: 1 reference(s): src/sdp.rs:1",
        ],
        "{report:#?}"
    );
}
