//! Bad input never panics and always gets one sentence: a deterministic
//! mutation test of the four readers that take bytes, the stable-toolchain
//! companion of the cargo-fuzz targets in fuzz/ (see fuzz/README.md).
//!
//! Each reader gets its seed corpus (fuzz/corpus/TARGET/) as is, cut at
//! every length, and then CASES mutants of it: bit flips, inserted, deleted
//! and repeated bytes, splices of two seeds, hostile numbers (`1e999`, `-1`,
//! `NaN`, 2^64) in place of numbers, quotes, commas and line breaks in text,
//! edited JSON values, and hostile words in ELF headers. The seed is fixed:
//! every run tries the same inputs. VMWATCH_FUZZ_SEED and VMWATCH_FUZZ_CASES
//! (mutants per reader) change that, e.g. to search longer by hand.
//!
//! A failing input is written under the target dir, named in the message.

use std::io::{Read, Write};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::Instant;

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use flate2::Compression;
use ndarray::Array2;
use serde_json::Value;
use vmwatch::discover::stapsdt::UsdtBinary;
use vmwatch_core::dataset::Table;
use vmwatch_core::model::Model;

const SEED: u64 = 0x766d_7761_7463_6821;
const CASES: usize = 3000;

/// SplitMix64: a few lines, and the same stream everywhere and forever
/// (a crate's generator may change its stream between versions).
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut r = Rng(seed);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// 0..=n.
    fn upto(&mut self, n: usize) -> usize {
        self.below(n + 1)
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Numbers a reader must refuse or bound, in place of a number.
const NUMBERS: &[&str] = &[
    "1e999",
    "-1e999",
    "1e-400",
    "-1",
    "-0",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "Infinity",
    "1.5",
    "0.0",
    "+1",
    "0x10",
    "1_000",
    " 7",
    "",
    "4294967295",
    "4294967296",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999",
    "1.7976931348623157e308",
    "5e-324",
    "\u{663}",
];

/// Text to put anywhere: CSV syntax, line breaks, comments, odd bytes.
const SNIPPETS: &[&[u8]] = &[
    b"\"",
    b"\"\"",
    b",",
    b",,",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b"\"a\nb\"",
    b"\"x,\ny\"",
    b"#",
    b" ",
    b"\t",
    b"\0",
    b"\xff",
    b"\xc3",
    "\u{e9}".as_bytes(),
    "\u{2028}".as_bytes(),
    "\u{85}".as_bytes(),
    b"\x1b[2J",
    b":",
    b"qemu:",
    b"sys:",
    b"kvm:",
    b"vm,pid,label,window,start_unix_ms,duration_ms",
];

/// JSON values to put in place of any value of a model file.
fn hostile_value(rng: &mut Rng) -> Value {
    let numbers = [
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        -1.0,
        0.0,
        -0.0,
        0.5,
        1.0,
        1.5,
        1e300,
    ];
    match rng.below(12) {
        0 => Value::Null,
        1 => Value::Bool(rng.one_in(2)),
        2 => (*rng.pick(&numbers)).into(),
        3 => (*rng.pick(&[0u64, 1, 2, 3, 5, u64::from(u32::MAX) + 1, u64::MAX])).into(),
        4 => (*rng.pick(&[-1i64, i64::MIN])).into(),
        5 => (*rng.pick(&["", "a\nb", "\r", "\u{1b}[31m", "rbf", "log1p-standardize"])).into(),
        6 => Value::Array(Vec::new()),
        7 => Value::Object(Default::default()),
        8 => Value::Array(vec![(*rng.pick(&numbers)).into(); rng.upto(3)]),
        9 => Value::Array(vec![
            Value::Array(vec![0.0.into(); rng.upto(8)]);
            rng.upto(3)
        ]),
        10 => Value::Array(vec!["qemu:a".into(), "qemu:a\n".into()]),
        _ => (*rng.pick(&["vmwatch-model", "qemu:translate_block"])).into(),
    }
}

/// Generic byte-level mutations; `others` are the seeds to splice from.
fn mutate_bytes(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    let words: [u64; 10] = [
        0,
        1,
        0x7f,
        0xff,
        0xffff,
        0x8000_0000,
        u64::from(u32::MAX),
        1 << 63,
        u64::MAX - 1,
        u64::MAX,
    ];
    let len = data.len();
    match rng.below(9) {
        0 if len > 0 => {
            let at = rng.below(len);
            data[at] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let at = rng.below(len);
            data[at] = *rng.pick(&[0, 0xff, 0x7f, 0x80, b'\n', b'\r', b',', b'"', b'0', b'9']);
        }
        2 => {
            let at = rng.upto(len);
            let n = 1 + rng.below(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
            data.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let most = if rng.one_in(4) { len } else { 16 };
            let n = 1 + rng.below(most);
            data.drain(at..(at + n).min(len));
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let n = 1 + rng.below(64.min(len - at));
            let copy = data[at..at + n].to_vec();
            let to = rng.upto(len);
            data.splice(to..to, copy);
        }
        5 => data.truncate(rng.upto(len)),
        6 => {
            // Head of this input, tail of another.
            let other = rng.pick(others);
            let from = rng.upto(other.len());
            data.truncate(rng.upto(len));
            data.extend_from_slice(&other[from..]);
        }
        7 if len >= 2 => {
            // A hostile word over a header field (any width, often aligned).
            let width = *rng.pick(&[2usize, 4, 8]);
            let region = if rng.one_in(2) { len.min(512) } else { len };
            let mut at = rng.below(region);
            if rng.one_in(2) {
                at -= at % width;
            }
            let word = rng.pick(&words).to_le_bytes();
            let end = (at + width).min(len);
            data[at..end].copy_from_slice(&word[..end - at]);
        }
        _ => {
            let at = rng.upto(len);
            data.splice(at..at, rng.pick(SNIPPETS).iter().copied());
        }
    }
}

/// Text mutations: numbers, CSV syntax, line breaks, whole lines.
fn mutate_text(rng: &mut Rng, data: &mut Vec<u8>, others: &[Vec<u8>]) {
    match rng.below(4) {
        0 => {
            let numbers = number_spans(data);
            if numbers.is_empty() {
                return mutate_bytes(rng, data, others);
            }
            let (start, end) = *rng.pick(&numbers);
            data.splice(start..end, rng.pick(NUMBERS).bytes());
        }
        1 => {
            let at = rng.upto(data.len());
            data.splice(at..at, rng.pick(SNIPPETS).iter().copied());
        }
        2 => {
            let mut lines: Vec<Vec<u8>> = data
                .split_inclusive(|&b| b == b'\n')
                .map(<[u8]>::to_vec)
                .collect();
            if lines.is_empty() {
                return mutate_bytes(rng, data, others);
            }
            let i = rng.below(lines.len());
            match rng.below(3) {
                0 => {
                    let copy = lines[i].clone();
                    lines.insert(rng.upto(lines.len()), copy);
                }
                1 => {
                    lines.remove(i);
                }
                _ => {
                    let j = rng.below(lines.len());
                    lines.swap(i, j);
                }
            }
            *data = lines.concat();
        }
        _ => mutate_bytes(rng, data, others),
    }
}

/// (start, end) of each run of number characters that holds a digit.
fn number_spans(data: &[u8]) -> Vec<(usize, usize)> {
    let is_num = |b: u8| b.is_ascii_digit() || b"+-.eE".contains(&b);
    let mut spans = Vec::new();
    let mut i = 0;
    while i < data.len() {
        if is_num(data[i]) {
            let start = i;
            while i < data.len() && is_num(data[i]) {
                i += 1;
            }
            if data[start..i].iter().any(u8::is_ascii_digit) {
                spans.push((start, i));
            }
        } else {
            i += 1;
        }
    }
    spans
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    // A damaged or cut seed: what decoded before the error.
    let _ = MultiGzDecoder::new(data).read_to_end(&mut out);
    out
}

fn gzip(rng: &mut Rng, text: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(text).unwrap();
    match rng.below(4) {
        // As a SIGKILLed writer leaves it: flushed, no trailer.
        0 => {
            gz.flush().unwrap();
            gz.get_ref().clone()
        }
        // A power loss: zeros after the last write.
        1 => {
            gz.flush().unwrap();
            let mut out = gz.get_ref().clone();
            out.resize(out.len() + rng.upto(100), 0);
            out
        }
        _ => gz.finish().unwrap(),
    }
}

fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

fn mutate_dataset(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.pick(seeds);
    if is_gzip(seed) && rng.one_in(4) {
        let mut data = seed.clone();
        mutate_bytes(rng, &mut data, seeds);
        return data;
    }
    // Text mutations reach the CSV parser through gzip too.
    let texts: Vec<Vec<u8>> = seeds
        .iter()
        .map(|s| if is_gzip(s) { gunzip(s) } else { s.clone() })
        .collect();
    let mut text = if is_gzip(seed) {
        gunzip(seed)
    } else {
        seed.clone()
    };
    for _ in 0..1 + rng.below(3) {
        mutate_text(rng, &mut text, &texts);
    }
    if is_gzip(seed) != rng.one_in(5) {
        gzip(rng, &text)
    } else {
        text
    }
}

/// Every value of `v`, as JSON pointers.
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    match v {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                pointers(item, format!("{at}/{i}"), out);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                pointers(item, format!("{at}/{k}"), out);
            }
        }
        _ => {}
    }
    out.push(at);
}

fn mutate_model(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let seed = rng.pick(seeds);
    if rng.one_in(3) {
        let mut data = seed.clone();
        for _ in 0..1 + rng.below(3) {
            mutate_text(rng, &mut data, seeds);
        }
        return data;
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(seed) else {
        return seed.clone();
    };
    for _ in 0..1 + rng.below(3) {
        let mut all = Vec::new();
        pointers(&v, String::new(), &mut all);
        let at = rng.pick(&all).clone();
        let node = v.pointer_mut(&at).expect("a pointer just listed");
        match (node, rng.below(3)) {
            (Value::Object(map), 0) if !map.is_empty() => {
                let key = map.keys().nth(rng.below(map.len())).unwrap().clone();
                map.remove(&key);
            }
            (Value::Array(items), 0) if !items.is_empty() => {
                let i = rng.below(items.len());
                if rng.one_in(2) {
                    items.remove(i);
                } else {
                    let copy = items[i].clone();
                    items.push(copy);
                }
            }
            (node, _) => *node = hostile_value(rng),
        }
    }
    if rng.one_in(2) {
        serde_json::to_vec_pretty(&v).unwrap()
    } else {
        serde_json::to_vec(&v).unwrap()
    }
}

fn mutate_features(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = rng.pick(seeds).clone();
    for _ in 0..1 + rng.below(4) {
        mutate_text(rng, &mut data, seeds);
    }
    data
}

/// (offset, width) of the fields of a little-endian ELF64 file that
/// vmwatch reads: the file header's table positions and sizes, every
/// program and section header field, and the SDT notes' sizes, type and
/// addresses.
fn elf_fields(data: &[u8]) -> Vec<(usize, usize)> {
    let get = |at: usize, width: usize| -> Option<usize> {
        let mut b = [0u8; 8];
        b[..width].copy_from_slice(data.get(at..at + width)?);
        usize::try_from(u64::from_le_bytes(b)).ok()
    };
    let mut fields = vec![(0x10, 2), (0x12, 2), (0x20, 8), (0x28, 8)];
    fields.extend((0x34..0x40).step_by(2).map(|at| (at, 2)));
    // The entries of a table that lie in the file.
    let table = |off: Option<usize>, num: Option<usize>, size: usize| {
        let off = off.filter(|&o| o <= data.len()).unwrap_or(data.len());
        let num = num.unwrap_or(0).min((data.len() - off) / size);
        (0..num).map(move |i| off + i * size)
    };
    for ph in table(get(0x20, 8), get(0x38, 2), 56) {
        fields.extend([(ph, 4), (ph + 4, 4)]);
        fields.extend((8..56).step_by(8).map(|f| (ph + f, 8)));
    }
    for sh in table(get(0x28, 8), get(0x3c, 2), 64) {
        fields.extend([(sh, 4), (sh + 4, 4), (sh + 40, 4), (sh + 44, 4)]);
        fields.extend([8, 16, 24, 32, 48, 56].map(|f| (sh + f, 8)));
        // SHT_NOTE: each note's header, then the stapsdt descriptor words.
        if get(sh + 4, 4) == Some(7) {
            let (Some(mut at), Some(size)) = (get(sh + 24, 8), get(sh + 32, 8)) else {
                continue;
            };
            let end = at.saturating_add(size).min(data.len());
            while at.checked_add(12).is_some_and(|e| e <= end) {
                let (Some(namesz), Some(descsz)) = (get(at, 4), get(at + 4, 4)) else {
                    break;
                };
                fields.extend([(at, 4), (at + 4, 4), (at + 8, 4)]);
                let desc = at + 12 + namesz.next_multiple_of(4);
                fields.extend([0, 8, 16].map(|f| (desc + f, 8)));
                at = desc.saturating_add(descsz.next_multiple_of(4));
            }
        }
    }
    fields.retain(|&(at, width)| at + width <= data.len());
    fields
}

fn mutate_elf(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut data = rng.pick(seeds).clone();
    for _ in 0..1 + rng.below(4) {
        // Again after each edit: lengths and positions change.
        let fields = elf_fields(&data);
        if fields.is_empty() || rng.one_in(3) {
            mutate_bytes(rng, &mut data, seeds);
            continue;
        }
        // A hostile value in a field, or a nearby one (off by a little).
        let (at, width) = *rng.pick(&fields);
        let old = {
            let mut b = [0u8; 8];
            b[..width].copy_from_slice(&data[at..at + width]);
            u64::from_le_bytes(b)
        };
        let new = match rng.below(4) {
            0 => old.wrapping_add(rng.below(17) as u64).wrapping_sub(8),
            1 => old ^ (1 << rng.below(width * 8)),
            2 => rng.next(),
            _ => *rng.pick(&[0, 1, u64::MAX, u64::MAX - 1, 1 << 63, data.len() as u64]),
        };
        data[at..at + width].copy_from_slice(&new.to_le_bytes()[..width]);
    }
    data
}

type Parse = fn(&[u8]) -> vmwatch::Result<()>;
type Mutate = fn(&mut Rng, &[Vec<u8>]) -> Vec<u8>;

/// What each fuzz target does with its input (fuzz/fuzz_targets/).
fn parse_dataset(data: &[u8]) -> vmwatch::Result<()> {
    let t = Table::from_reader("input.csv", data)?;
    let _ = t.mean_rates(&t.features);
    let _ = Table::nonzero_features(&[&t], &[]);
    Ok(())
}

fn parse_model(data: &[u8]) -> vmwatch::Result<()> {
    let m = Model::from_json("model.json", data)?;
    let _ = m.decisions(Array2::zeros((1, m.features.len())).view());
    Ok(())
}

fn parse_features(data: &[u8]) -> vmwatch::Result<()> {
    vmwatch_core::features::parse_feature_list("features.txt", &String::from_utf8_lossy(data))?;
    Ok(())
}

fn parse_elf(data: &[u8]) -> vmwatch::Result<()> {
    let b = UsdtBinary::parse(Path::new("qemu-system-x86_64"), data)?;
    let _ = (b.probes(), b.nop5_sites());
    Ok(())
}

/// The failure of `parse` on `input`, if any: a panic, or an error that
/// is not one non-empty line.
fn check(parse: Parse, input: &[u8]) -> Option<String> {
    let err = match panic::catch_unwind(AssertUnwindSafe(|| parse(input))) {
        Ok(Ok(())) => return None,
        // What the binary prints: the error and its causes.
        Ok(Err(e)) => vmwatch_core::error::chain(&e),
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            return Some(format!("panicked: {msg}"));
        }
    };
    if err.trim().is_empty() {
        return Some("the error message is empty".into());
    }
    // Unicode's mandatory line breaks.
    let breaks = [
        '\n', '\r', '\u{b}', '\u{c}', '\u{85}', '\u{2028}', '\u{2029}',
    ];
    if err.contains(breaks) {
        return Some(format!("the error message spans lines: {err:?}"));
    }
    None
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
        Err(_) => default,
    }
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} holds no seed", dir.display());
    paths.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn run(target: &str, parse: Parse, mutate: Mutate) {
    let start = Instant::now();
    let seeds = seeds(target);
    let seed = env_or("VMWATCH_FUZZ_SEED", SEED);
    let cases = env_or("VMWATCH_FUZZ_CASES", CASES);
    let fail = |what: String, input: &[u8], why: String| -> ! {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fuzz_inputs-{target}"));
        std::fs::write(&path, input).unwrap();
        panic!(
            "{target}: {what}: {why}\n  input ({} bytes) written to {}\n  \
             reproduce: cargo +nightly fuzz run -a {target} {}",
            input.len(),
            path.display(),
            path.display()
        );
    };
    let mut runs = 0;
    // The seeds as they are (regression inputs among them), and cut at
    // every length: what a crash or a full disk leaves.
    for (i, s) in seeds.iter().enumerate() {
        for len in (0..=s.len()).rev() {
            runs += 1;
            if let Some(why) = check(parse, &s[..len]) {
                fail(format!("seed {i} cut at {len}"), &s[..len], why);
            }
        }
    }
    // Each case has its own generator: a case replays alone.
    let salt = target
        .bytes()
        .fold(0u64, |h, b| h.rotate_left(8) ^ u64::from(b));
    for case in 0..cases {
        let mut rng = Rng::new(seed ^ salt ^ (case as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let input = mutate(&mut rng, &seeds);
        runs += 1;
        if let Some(why) = check(parse, &input) {
            fail(format!("case {case} (seed {seed})"), &input, why);
        }
    }
    eprintln!(
        "{target}: {runs} inputs ({} seeds, {cases} mutants) in {:.2?}",
        seeds.len(),
        start.elapsed()
    );
}

#[test]
fn dataset_inputs() {
    run("dataset", parse_dataset, mutate_dataset);
}

#[test]
fn model_inputs() {
    run("model", parse_model, mutate_model);
}

#[test]
fn feature_list_inputs() {
    run("features", parse_features, mutate_features);
}

#[test]
fn stapsdt_inputs() {
    run("stapsdt", parse_elf, mutate_elf);
}
