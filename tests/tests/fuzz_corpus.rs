//! The committed fuzz corpus (`fuzz/corpus/<target>/`) replayed through the fuzz targets' own
//! functions (the fuzz crate's modules, included here), then mutated at random for a few
//! seconds per target (`ENFORCER_FUZZ_SECONDS`, default 5; `ENFORCER_FUZZ_SEED` varies the
//! mutations, which are otherwise the same every run), so that a plain `cargo test` checks
//! every input the fuzzer kept and a little around them without building the instrumented
//! targets: that build takes longer than the whole test command may grow (see
//! `xtask/src/fuzz.rs`); `cargo xtask fuzz` runs the real, coverage-guided fuzzer. A failing
//! mutated input is written to `target/fuzz-artifacts/<target>/`. The packet target loads the
//! real program: it needs root.

#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code, reason = "the targets' helpers for the fuzzer alone")]
mod fuzz;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use enforcer_tests::privileged;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: an empty corpus", dir.display());
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// xorshift64*: the mutations need no quality beyond "varied", and no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One of libFuzzer's simpler mutations: a byte changed, inserted or removed, a range
/// duplicated or dropped, a splice with another input, a truncation.
fn mutate(input: &mut Vec<u8>, rng: &mut Rng, others: &[(PathBuf, Vec<u8>)]) {
    let len = input.len();
    match rng.below(7) {
        0 if len > 0 => input[rng.below(len)] ^= 1 << rng.below(8),
        1 if len > 0 => input[rng.below(len)] = rng.next() as u8,
        2 => input.insert(rng.below(len + 1), rng.next() as u8),
        3 if len > 0 => {
            input.remove(rng.below(len));
        }
        4 if len > 1 => {
            let (a, b) = (rng.below(len), rng.below(len));
            let (a, b) = (a.min(b), a.max(b));
            let part = input[a..b].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, part);
        }
        5 => {
            let other = &others[rng.below(others.len())].1;
            let from = rng.below(other.len() + 1);
            input.truncate(rng.below(len + 1));
            input.extend_from_slice(&other[from..]);
        }
        _ => input.truncate(rng.below(len + 1)),
    }
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Mutated corpus inputs through `run` for a few seconds; the first failing input is kept.
fn mutate_for_a_while(target: &str, run: fn(&[u8])) {
    let corpus = corpus(target);
    let seconds: u64 = std::env::var("ENFORCER_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed: u64 = std::env::var("ENFORCER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let mut rng = Rng(seed | 1);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut n = 0u64;
    while Instant::now() < deadline {
        let mut input = corpus[rng.below(corpus.len())].1.clone();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut input, &mut rng, &corpus);
        }
        input.truncate(64 * 1024);
        if let Err(e) = std::panic::catch_unwind(|| run(&input)) {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/fuzz-artifacts")
                .join(target);
            std::fs::create_dir_all(&dir).expect("creating the artifacts folder");
            let path = dir.join(format!("mutation-{seed}-{n}"));
            std::fs::write(&path, &input).expect("writing the failing input");
            panic!(
                "{target}: mutated input {n} (seed {seed}) failed, kept as {}: {}",
                path.display(),
                panic_text(&*e)
            );
        }
        n += 1;
    }
    println!("{target}: {n} mutated inputs in {seconds} s (seed {seed})");
}

/// Runs every input, naming the one that fails.
fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        if let Err(e) = std::panic::catch_unwind(|| run(&bytes)) {
            panic!("{}: {}", path.display(), panic_text(&*e));
        }
    }
    mutate_for_a_while(target, run);
}

#[test]
fn manifests() {
    replay("manifests", fuzz::manifests::run);
}

#[test]
fn manifests_json() {
    replay("manifests_json", fuzz::manifests_json::run);
}

#[test]
fn flow_decode() {
    replay("flow_decode", fuzz::flow_decode::run);
}

#[test]
fn packet() {
    if !privileged() {
        return;
    }
    replay("packet", fuzz::packet::run);
    // What the corpus covers (shown with --nocapture).
    println!(
        "packets of the corpus by outcome:\n{}",
        fuzz::packet::summary()
    );
}
