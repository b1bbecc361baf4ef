//! The fuzz checks without libFuzzer: random and mutated inputs from the
//! seed inputs for a number of seconds (for stable toolchains).
//! `loop <seconds> <target> <seed file or directory>...`: scripts/fuzz.sh
//! passes the same seeds it gives libFuzzer, so they are listed in one place.

use std::path::Path;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: loop <seconds> <target> <seed file or directory>...";

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).expect(USAGE);
    let target = args.next().expect(USAGE);
    let corpus = read_seeds(args);
    assert!(!corpus.is_empty(), "no seed inputs for {target}; {USAGE}");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let check: fn(&[u8]) = match target.as_str() {
        "config" => strangler_fuzz::check_config,
        "path_router" => strangler_fuzz::check_path_router,
        "diff" => strangler_fuzz::check_diff,
        "h1_answer" => strangler_fuzz::check_h1_answer,
        "h1_request" => strangler_fuzz::check_h1_request,
        other => panic!("unknown target {other}"),
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let mut input = corpus[(next() as usize) % corpus.len()].clone();
        for _ in 0..(next() % 8) {
            let alphabet = b"/.%2eEfF0aA*:{}[]\n -#;\\@\"'\x00\xc0\xff";
            match next() % 4 {
                0 if !input.is_empty() => {
                    let i = (next() as usize) % input.len();
                    input[i] = alphabet[(next() as usize) % alphabet.len()];
                }
                1 => {
                    let i = (next() as usize) % (input.len() + 1);
                    input.insert(i, alphabet[(next() as usize) % alphabet.len()]);
                }
                2 if !input.is_empty() => {
                    let i = (next() as usize) % input.len();
                    input.remove(i);
                }
                _ => {
                    let other = &corpus[(next() as usize) % corpus.len()];
                    let i = (next() as usize) % (input.len() + 1);
                    let j = (next() as usize) % (other.len() + 1);
                    input.splice(i..i, other[..j].iter().copied());
                }
            }
        }
        check(&input);
        runs += 1;
    }
    eprintln!("{target}: {runs} inputs in {seconds} s, no failure");
}

/// Every file named, and every file in every directory named (in name order,
/// so that a run is repeatable: the mutations come from a fixed seed).
fn read_seeds(paths: impl Iterator<Item = String>) -> Vec<Vec<u8>> {
    let read = |path: &Path| std::fs::read(path).unwrap_or_else(|e| panic!("seed {}: {e}", path.display()));
    let mut seeds = Vec::new();
    for path in paths {
        let path = Path::new(&path);
        if path.is_dir() {
            let entries = std::fs::read_dir(path).unwrap_or_else(|e| panic!("seeds {}: {e}", path.display()));
            let mut files: Vec<_> = entries.map(|entry| entry.unwrap().path()).collect();
            files.sort();
            seeds.extend(files.iter().map(|file| read(file)));
        } else {
            seeds.push(read(path));
        }
    }
    seeds
}
