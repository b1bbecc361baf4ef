//! The fuzz checks without libFuzzer: random and mutated inputs from the
//! seed corpus for a number of seconds per target (for stable toolchains).
//! `loop [seconds] [target...]`.

use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut targets: Vec<String> = args.collect();
    if targets.is_empty() {
        targets = vec!["config".into(), "path_router".into(), "diff".into(), "h1_answer".into(), "h1_request".into()];
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for target in targets {
        let check: fn(&[u8]) = match target.as_str() {
            "config" => strangler_fuzz::check_config,
            "path_router" => strangler_fuzz::check_path_router,
            "diff" => strangler_fuzz::check_diff,
            "h1_answer" => strangler_fuzz::check_h1_answer,
            "h1_request" => strangler_fuzz::check_h1_request,
            other => panic!("unknown target {other}"),
        };
        let corpus = strangler_fuzz::seeds(&target);
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
}
