//! Benchmark: certificate issuance from bare P-256 public keys, with ledger commits, against
//! `openssl speed -seconds 3 ecdsap256` measured in the same run.
//!
//! `cargo run --release -p ca --example bench_issue -- [N]` (default 2000)

use std::process::Command;
use std::time::Instant;

use ca::{Authority, InitOptions, Layout, Passphrase, PublicKey};

mod common;

fn openssl_sign_rate() -> Option<f64> {
    let out = Command::new("openssl")
        .args(["speed", "-seconds", "3", "ecdsap256"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "256 bits ecdsa (nistp256)   0.0000s   0.0001s  40000.0   12000.0"
    let line = text.lines().find(|l| l.contains("ecdsa (nistp256)"))?;
    let nums: Vec<f64> = line
        .split_whitespace()
        .filter_map(|w| w.parse::<f64>().ok())
        .collect();
    nums.get(nums.len().checked_sub(2)?).copied()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let durable_n = (n / 10).clamp(10, 200);
    let dir = tempfile::tempdir()?;
    let layout = Layout::new(dir.path().join("home"));
    let pass = Passphrase::new("benchmark passphrase".into());
    Authority::init(
        &layout,
        &InitOptions {
            name: "Bench Root CA".into(),
            organization: None,
            issuing_ca: false,
            compressed_signer: None,
        },
        &pass,
    )?;
    let mut ca = Authority::open(&layout, &pass)?;

    eprintln!("generating {} public keys (not timed)...", n + durable_n);
    let keys: Vec<PublicKey> = common::public_keys(n + durable_n);
    let request = |i: usize, key: &PublicKey| common::device_request(b"bench", i, key);

    eprintln!("batched issuance of {n} certificates...");
    let t = Instant::now();
    for chunk in keys[..n].chunks(500).enumerate() {
        let (c, ks) = chunk;
        let reqs = ks
            .iter()
            .enumerate()
            .map(|(j, k)| request(c * 500 + j, k))
            .collect();
        ca.issue_batch(reqs)?;
    }
    let batched = n as f64 / t.elapsed().as_secs_f64();

    eprintln!("durable issuance of {durable_n} certificates, one commit each...");
    let t = Instant::now();
    for (i, k) in keys[n..].iter().enumerate() {
        ca.issue(request(n + i, k))?;
    }
    let durable = durable_n as f64 / t.elapsed().as_secs_f64();

    eprintln!("openssl speed -seconds 3 ecdsap256...");
    let openssl = openssl_sign_rate();
    println!("{:<52} {:>12}", "measure", "per second");
    println!(
        "{:<52} {:>12.0}",
        format!("certificates, batched (500 per commit), N={n}"),
        batched
    );
    println!(
        "{:<52} {:>12.0}",
        format!("certificates, durable (one commit each), N={durable_n}"),
        durable
    );
    match openssl {
        Some(o) => {
            println!(
                "{:<52} {:>12.0}",
                "openssl ecdsap256 signatures (same run)", o
            );
            println!(
                "{:<52} {:>12.3}",
                "ratio batched / openssl sign  (target >= 0.25)",
                batched / o
            );
            println!(
                "{:<52} {:>12.3}",
                "ratio durable / openssl sign",
                durable / o
            );
        }
        None => println!("openssl speed unavailable: no ratio"),
    }
    Ok(())
}
