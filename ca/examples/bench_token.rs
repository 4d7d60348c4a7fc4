//! Benchmark: batched certificate issuance with the CA key in a PKCS#11 token (SoftHSM2, in a
//! temporary directory) next to the same issuance with the file key, measured in the same run.
//!
//! `cargo run --release -p ca --example bench_token -- [N]` (default 1000; needs softhsm2)

use std::process::Command;
use std::time::Instant;

use ca::pkcs11::TokenSpec;
use ca::{Authority, InitOptions, Layout, Passphrase, PublicKey};
use test_softhsm::MODULE;

mod common;

const PIN: &str = "24681012";
/// Set in the child run: SoftHSM2 reads its configuration from the environment when the
/// module is initialised, so the token's directory is given to a fresh process.
const CHILD: &str = "BENCH_TOKEN_CHILD";

/// Certificates per second for `keys`, issued 500 per commit by a CA made in `home`.
fn batched_rate(
    home: &std::path::Path,
    token: Option<&TokenSpec>,
    secret: &Passphrase,
    keys: &[PublicKey],
) -> Result<f64, Box<dyn std::error::Error>> {
    let layout = Layout::new(home);
    let opts = InitOptions {
        name: "Bench Root CA".into(),
        organization: None,
        issuing_ca: false,
        compressed_signer: None,
    };
    Authority::init_with_key_store(&layout, &opts, secret, token)?;
    let mut ca = Authority::open(&layout, secret)?;
    let t = Instant::now();
    for (c, ks) in keys.chunks(500).enumerate() {
        let reqs = ks
            .iter()
            .enumerate()
            .map(|(j, k)| common::device_request(b"bench-token", c * 500 + j, k))
            .collect();
        let issued = ca.issue_batch(reqs)?;
        assert!(issued.iter().all(|i| !i.existing));
    }
    Ok(keys.len() as f64 / t.elapsed().as_secs_f64())
}

fn child(n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    eprintln!("generating {} public keys (not timed)...", 2 * n);
    let keys = common::public_keys(2 * n);
    eprintln!("batched issuance of {n} certificates with the file key...");
    let pass = Passphrase::new("benchmark passphrase".into());
    let file = batched_rate(&dir.path().join("file"), None, &pass, &keys[..n])?;
    eprintln!("batched issuance of {n} certificates with the key in SoftHSM2...");
    let spec = TokenSpec {
        module: MODULE.into(),
        token: "bench".into(),
        key_label: "bench-ca".into(),
    };
    let pin = Passphrase::new(PIN.into());
    let token = batched_rate(&dir.path().join("token"), Some(&spec), &pin, &keys[n..])?;
    println!("{:<56} {:>12}", "measure", "per second");
    println!(
        "{:<56} {:>12.0}",
        format!("certificates, batched, CA key in a file, N={n}"),
        file
    );
    println!(
        "{:<56} {:>12.0}",
        format!("certificates, batched, CA key in SoftHSM2, N={n}"),
        token
    );
    println!(
        "{:<56} {:>12.3}",
        "ratio token / file (same run)",
        token / file
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    if std::env::var_os(CHILD).is_some() {
        return child(n);
    }
    let hsm = test_softhsm::SoftHsm::new("bench", PIN, "13572468")?;
    let status = Command::new(std::env::current_exe()?)
        .arg(n.to_string())
        .env("SOFTHSM2_CONF", hsm.conf())
        .env(CHILD, "1")
        .status()?;
    if !status.success() {
        return Err(format!("benchmark run failed: {status}").into());
    }
    Ok(())
}
