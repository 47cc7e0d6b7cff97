//! A small seeded mutation fuzzer that runs on stable Rust (no libFuzzer,
//! no coverage feedback): inputs are made from a checked-in corpus by
//! stacked mutations (bit/byte flips, insert/delete/duplicate ranges,
//! splices of two entries, dictionary tokens, numbers near limits, line
//! edits), each run under `catch_unwind`. The same seed gives the same
//! inputs, so a failure is reproduced by its seed and iteration.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

/// xorshift64*: tiny, seedable, good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        // splitmix64 of the seed, so that nearby seeds differ everywhere.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Rng((z ^ (z >> 31)) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform-ish in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

/// Numbers where parsers overflow or switch width.
const NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "127",
    "128",
    "255",
    "256",
    "32767",
    "32768",
    "65535",
    "65536",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999",
    "-0",
    "+5",
    "1e308",
    "0x10",
    "",
];

/// Bytes that end fields, lines and strings.
const BYTES: &[u8] = &[
    0, 0xff, 0x7f, 0x80, 0xc0, 0xfe, b'\r', b'\n', b' ', b'\t', b':', b';', b',', b'=', b'"', b'<',
    b'>', b'@', b'\\', b'/', b'[', b']', b'{', b'}', b'%',
];

/// What one target gets: its name, its seeds and its dictionary.
pub struct Target {
    pub name: &'static str,
    pub corpus: Vec<Vec<u8>>,
    pub dict: Vec<Vec<u8>>,
    /// Inputs are cut to this many bytes.
    pub max_len: usize,
    pub run: fn(&[u8]),
}

/// The outcome of a run.
pub struct Report {
    pub executed: u64,
    pub panics: Vec<Crash>,
    pub elapsed: Duration,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
}

pub struct Crash {
    pub message: String,
    pub input: Vec<u8>,
    pub saved_to: Option<PathBuf>,
}

thread_local! {
    static IN_TARGET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// A panic inside a target is recorded (message and place) instead of
/// printed; every other panic (a failing assert) prints as usual.
fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if IN_TARGET.with(|f| f.get()) {
                let place = info
                    .location()
                    .map(|l| format!(" at {}:{}", l.file(), l.line()))
                    .unwrap_or_default();
                let msg = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a non-string panic".into());
                LAST_PANIC.with(|p| *p.borrow_mut() = format!("{msg}{place}"));
            } else {
                default(info);
            }
        }));
    });
}

/// Runs the target on one input; `Err(message)` if it panicked.
pub fn run_one(run: fn(&[u8]), input: &[u8]) -> Result<(), String> {
    install_hook();
    IN_TARGET.with(|f| f.set(true));
    let r = panic::catch_unwind(AssertUnwindSafe(|| run(input)));
    IN_TARGET.with(|f| f.set(false));
    r.map_err(|_| LAST_PANIC.with(|p| p.borrow().clone()))
}

/// VmRSS of this process in kB (0 where /proc is missing).
pub fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Every file of a corpus folder, in name order.
pub fn load_corpus(dir: &Path) -> Vec<Vec<u8>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    paths.retain(|p| p.is_file());
    paths.sort();
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// One mutated input made from the corpus.
pub fn mutate(rng: &mut Rng, t: &Target) -> Vec<u8> {
    let mut data = t.corpus[rng.below(t.corpus.len())].clone();
    // Mostly few mutations (stay close to valid), sometimes many.
    let rounds = if rng.chance(8) {
        1 + rng.below(32)
    } else {
        1 + rng.below(4)
    };
    for _ in 0..rounds {
        mutate_once(rng, t, &mut data);
    }
    data.truncate(t.max_len);
    data
}

fn mutate_once(rng: &mut Rng, t: &Target, d: &mut Vec<u8>) {
    let len = d.len();
    match rng.below(16) {
        // Flip one bit.
        0 if len > 0 => {
            let i = rng.below(len);
            d[i] ^= 1 << rng.below(8);
        }
        // A random or a special byte.
        1 if len > 0 => {
            let i = rng.below(len);
            d[i] = if rng.chance(2) {
                rng.next() as u8
            } else {
                BYTES[rng.below(BYTES.len())]
            };
        }
        // Insert bytes.
        2 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(8);
            let b = BYTES[rng.below(BYTES.len())];
            let fill: Vec<u8> = (0..n)
                .map(|_| if rng.chance(2) { b } else { rng.next() as u8 })
                .collect();
            d.splice(i..i, fill);
        }
        // Delete a range.
        3 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            d.drain(i..i + n);
        }
        // Duplicate a range (sometimes many times: long fields, repeats).
        4 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(256));
            let copies = if rng.chance(16) { 1 + rng.below(64) } else { 1 };
            let chunk: Vec<u8> = d[i..i + n].to_vec();
            let at = rng.below(len + 1);
            let mut all = Vec::with_capacity(n * copies);
            for _ in 0..copies {
                all.extend_from_slice(&chunk);
            }
            d.splice(at..at, all);
        }
        // Copy a range over another place.
        5 if len > 1 => {
            let from = rng.below(len);
            let to = rng.below(len);
            let n = 1 + rng.below((len - from).min(len - to).min(64));
            let chunk: Vec<u8> = d[from..from + n].to_vec();
            d[to..to + n].copy_from_slice(&chunk);
        }
        // Insert a dictionary token.
        6 | 7 if !t.dict.is_empty() => {
            let tok = &t.dict[rng.below(t.dict.len())];
            let i = rng.below(len + 1);
            d.splice(i..i, tok.iter().copied());
        }
        // Overwrite with a dictionary token.
        8 if !t.dict.is_empty() && len > 0 => {
            let tok = &t.dict[rng.below(t.dict.len())];
            let i = rng.below(len);
            let end = (i + tok.len()).min(len);
            d.splice(i..end, tok.iter().copied());
        }
        // Replace a run of ASCII digits with a number near a limit.
        9 => {
            let starts: Vec<usize> = (0..len)
                .filter(|&i| d[i].is_ascii_digit() && (i == 0 || !d[i - 1].is_ascii_digit()))
                .collect();
            if starts.is_empty() {
                return;
            }
            let s = starts[rng.below(starts.len())];
            let mut e = s;
            while e < len && d[e].is_ascii_digit() {
                e += 1;
            }
            let n = NUMBERS[rng.below(NUMBERS.len())];
            d.splice(s..e, n.bytes());
        }
        // A big-endian u16/u32 near a limit at some offset (binary formats).
        10 if len >= 4 => {
            let i = rng.below(len - 3);
            let v: u32 = match rng.below(6) {
                0 => 0,
                1 => u32::MAX,
                2 => 0x7fff_ffff,
                3 => 0x8000_0000,
                4 => 0xffff,
                _ => rng.next() as u32 & 0xff,
            };
            if rng.chance(2) {
                d[i..i + 4].copy_from_slice(&v.to_be_bytes());
            } else {
                d[i..i + 2].copy_from_slice(&(v as u16).to_be_bytes());
            }
        }
        // Splice: this entry's head with another's tail.
        11 => {
            let other = &t.corpus[rng.below(t.corpus.len())];
            let a = rng.below(len + 1);
            let b = rng.below(other.len() + 1);
            d.truncate(a);
            d.extend_from_slice(&other[b..]);
        }
        // Line edits (text protocols): drop, duplicate or swap lines.
        12 | 13 => {
            let mut lines: Vec<Vec<u8>> = d
                .split_inclusive(|&b| b == b'\n')
                .map(|l| l.to_vec())
                .collect();
            if lines.is_empty() {
                return;
            }
            let i = rng.below(lines.len());
            match rng.below(4) {
                0 => {
                    lines.remove(i);
                }
                1 => {
                    let l = lines[i].clone();
                    let copies = if rng.chance(8) { 1 + rng.below(200) } else { 1 };
                    for _ in 0..copies {
                        lines.insert(i, l.clone());
                    }
                }
                2 => {
                    let j = rng.below(lines.len());
                    lines.swap(i, j);
                }
                _ => {
                    // A line from another corpus entry.
                    let other = &t.corpus[rng.below(t.corpus.len())];
                    let ol: Vec<&[u8]> = other.split_inclusive(|&b| b == b'\n').collect();
                    if !ol.is_empty() {
                        lines.insert(i, ol[rng.below(ol.len())].to_vec());
                    }
                }
            }
            *d = lines.concat();
        }
        // Truncate.
        14 if len > 0 => {
            d.truncate(rng.below(len));
        }
        // Change the case of a byte (header names are case-insensitive).
        _ if len > 0 => {
            let i = rng.below(len);
            if d[i].is_ascii_lowercase() {
                d[i].make_ascii_uppercase();
            } else {
                d[i].make_ascii_lowercase();
            }
        }
        _ => {}
    }
}

/// Runs the seeds, then `iters` mutated inputs; RSS is read after a
/// warm-up (allocator pools, lazy statics) and at the end. Crashing inputs
/// are written to `target/fuzz-crashes/<target>/`.
pub fn run(t: &Target, iters: u64, seed: u64) -> Report {
    assert!(!t.corpus.is_empty(), "{}: empty corpus", t.name);
    let started = Instant::now();
    let mut panics = Vec::new();
    let mut record = |input: &[u8], message: String| {
        if panics.len() < 20 {
            let saved_to = save_crash(t.name, input);
            panics.push(Crash {
                message,
                input: input.to_vec(),
                saved_to,
            });
        }
    };
    for input in &t.corpus {
        if let Err(m) = run_one(t.run, input) {
            record(input, m);
        }
    }
    let mut rng = Rng::new(seed ^ fnv(t.name.as_bytes()));
    let warm = (iters / 20).min(5_000);
    let mut rss_before_kb = 0;
    for i in 0..iters {
        if i == warm {
            rss_before_kb = rss_kb();
        }
        let input = mutate(&mut rng, t);
        if let Err(m) = run_one(t.run, &input) {
            record(&input, m);
        }
    }
    if rss_before_kb == 0 {
        rss_before_kb = rss_kb();
    }
    Report {
        executed: iters + t.corpus.len() as u64,
        panics,
        elapsed: started.elapsed(),
        rss_before_kb,
        rss_after_kb: rss_kb(),
    }
}

fn fnv(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x100_0000_01b3)
    })
}

fn save_crash(target: &str, input: &[u8]) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/fuzz-crashes")
        .join(target);
    std::fs::create_dir_all(&dir).ok()?;
    let path = dir.join(format!("{:016x}", fnv(input)));
    std::fs::write(&path, input).ok()?;
    Some(path)
}

/// An input as an escaped string for a failure message.
pub fn escaped(input: &[u8]) -> String {
    let cut = &input[..input.len().min(400)];
    let mut s: String = cut
        .iter()
        .flat_map(|&b| std::ascii::escape_default(b))
        .map(char::from)
        .collect();
    if input.len() > cut.len() {
        s.push_str(&format!("... ({} bytes)", input.len()));
    }
    s
}
