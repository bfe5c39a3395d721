//! Fuzzes key extraction and forwarded-header parsing.
//!
//! `cargo +nightly fuzz run keys --features libfuzzer` (from `tower-ratelimit/`), or on stable:
//! `cargo run --release --bin keys -- 60` feeds pseudo-random inputs for 60 seconds.
#![cfg_attr(feature = "libfuzzer", no_main)]

#[cfg(feature = "libfuzzer")]
libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_ratelimit_fuzz::keys(data));

#[cfg(not(feature = "libfuzzer"))]
fn main() {
    use std::time::{Duration, Instant};

    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut rng = XorShift(seed | 1);
    let deadline = Duration::from_secs(secs);
    let start = Instant::now();
    let mut inputs: u64 = 0;
    let mut bytes: u64 = 0;
    let mut buf = Vec::with_capacity(4096);
    while start.elapsed() < deadline {
        for _ in 0..1000 {
            rng.fill(&mut buf);
            tower_ratelimit_fuzz::keys(&buf);
            inputs += 1;
            bytes += buf.len() as u64;
        }
    }
    println!(
        "keys: {inputs} inputs, {bytes} bytes in {:.1}s (seed {seed}), no invariant broken",
        start.elapsed().as_secs_f64()
    );
}

/// A small PRNG biased towards the bytes that matter to the parsers.
#[cfg(not(feature = "libfuzzer"))]
struct XorShift(u64);

#[cfg(not(feature = "libfuzzer"))]
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn fill(&mut self, buf: &mut Vec<u8>) {
        const ALPHABET: &[u8] = b"0123456789abcdefABCDEF.:,;=[]\"\n \tforFORbyunknown_/-";
        buf.clear();
        let len = match self.next() % 8 {
            0 => self.next() % 4096,
            _ => self.next() % 160,
        };
        for i in 0..len {
            let r = self.next();
            let b = match r % 4 {
                0 => (r >> 8) as u8,
                _ => ALPHABET[((r >> 8) % ALPHABET.len() as u64) as usize],
            };
            // Keep a realistic head: a peer selector and an address.
            buf.push(if i == 0 { (r >> 16) as u8 } else { b });
        }
    }
}
