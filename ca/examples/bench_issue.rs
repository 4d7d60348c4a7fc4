//! Benchmark: certificate issuance from bare P-256 public keys, with ledger commits, against
//! `openssl speed -seconds 3 ecdsap256` measured in the same run.
//!
//! `cargo run --release -p ca --example bench_issue -- [N] [--postgres]` (default 2000)
//!
//! With `--postgres` the same issuance also runs on a PostgreSQL ledger (a durable server,
//! fsync and synchronous commit on, started by the benchmark on loopback, as `test-postgres`
//! does for the tests), and each PostgreSQL figure is printed next to the SQLite one measured
//! in the same run, with their ratio.

use std::process::Command;
use std::time::Instant;

mod common;

use ca::{Authority, InitOptions, IssueRequest, Layout, Passphrase, PublicKey};

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

/// Which ledger a home is created on.
enum Engine<'a> {
    Sqlite,
    Postgres(&'a test_postgres::PgServer),
}

/// A new CA home on `engine`.
fn home(
    dir: &std::path::Path,
    engine: &Engine<'_>,
    pass: &Passphrase,
) -> Result<Authority, Box<dyn std::error::Error>> {
    let layout = Layout::new(dir.join("home"));
    if let Engine::Postgres(pg) = engine {
        pg.create_database("bench");
        ca::fsutil::private_dir(&layout.home)?;
        ca::pgledger::PgLedger::new(&pg.url("bench"), Some(pg.password_file()), None, false)?
            .save(&layout.ledger_config())?;
    }
    Authority::init(
        &layout,
        &InitOptions {
            name: "Bench Root CA".into(),
            organization: None,
            issuing_ca: false,
            compressed_signer: None,
        },
        pass,
    )?;
    Ok(Authority::open(&layout, pass)?)
}

fn request(i: usize, key: &PublicKey) -> IssueRequest {
    common::device_request(b"bench", i, key)
}

/// Certificates per second: batched (500 per commit) over `keys[..n]`, then one commit each
/// over the rest. Returns (batched, durable, issued).
fn measure(
    ca: &mut Authority,
    keys: &[PublicKey],
    n: usize,
) -> Result<(f64, f64, usize), Box<dyn std::error::Error>> {
    let t = Instant::now();
    let mut issued = 0;
    for (c, ks) in keys[..n].chunks(500).enumerate() {
        let reqs = ks
            .iter()
            .enumerate()
            .map(|(j, k)| request(c * 500 + j, k))
            .collect();
        issued += ca.issue_batch(reqs)?.iter().filter(|i| !i.existing).count();
    }
    let batched = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for (i, k) in keys[n..].iter().enumerate() {
        issued += usize::from(!ca.issue(request(n + i, k))?.existing);
    }
    let durable = (keys.len() - n) as f64 / t.elapsed().as_secs_f64();
    Ok((batched, durable, issued))
}

fn row(label: String, v: f64) {
    println!("{label:<60} {v:>12.0}");
}

fn ratio(label: &str, v: f64) {
    println!("{label:<60} {v:>12.3}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args.iter().find_map(|s| s.parse().ok()).unwrap_or(2000);
    let postgres = args.iter().any(|a| a == "--postgres");
    let durable_n = (n / 10).clamp(10, 200);
    let pass = Passphrase::new("benchmark passphrase".into());

    eprintln!("generating {} public keys (not timed)...", n + durable_n);
    let keys: Vec<PublicKey> = common::public_keys(n + durable_n);

    eprintln!(
        "SQLite ledger: batched issuance of {n} certificates, then {durable_n} one commit each..."
    );
    let dir = tempfile::tempdir()?;
    let (batched, durable, issued) =
        measure(&mut home(dir.path(), &Engine::Sqlite, &pass)?, &keys, n)?;
    let pg = if postgres {
        eprintln!("PostgreSQL ledger (durable server on loopback): the same...");
        let server = test_postgres::PgServer::start_with(&test_postgres::Options {
            durable: true,
            tls: None,
        });
        let dir = tempfile::tempdir()?;
        let m = measure(
            &mut home(dir.path(), &Engine::Postgres(&server), &pass)?,
            &keys,
            n,
        )?;
        Some(m)
    } else {
        None
    };

    eprintln!("openssl speed -seconds 3 ecdsap256...");
    let openssl = openssl_sign_rate();
    println!("{:<60} {:>12}", "measure", "per second");
    row(
        format!("certificates, batched (500 per commit), N={n}"),
        batched,
    );
    row(
        format!("certificates, durable (one commit each), N={durable_n}"),
        durable,
    );
    println!(
        "{:<60} {:>12}",
        "issued / asked (SQLite)",
        format!("{issued}/{}", n + durable_n)
    );
    if let Some((pb, pd, pi)) = pg {
        row(
            format!("PostgreSQL ledger: batched (500 per commit), N={n}"),
            pb,
        );
        row(
            format!("PostgreSQL ledger: durable (one commit each), N={durable_n}"),
            pd,
        );
        println!(
            "{:<60} {:>12}",
            "issued / asked (PostgreSQL)",
            format!("{pi}/{}", n + durable_n)
        );
        ratio(
            "ratio PostgreSQL / SQLite, batched (same run)",
            pb / batched,
        );
        ratio(
            "ratio PostgreSQL / SQLite, durable (same run)",
            pd / durable,
        );
    }
    match openssl {
        Some(o) => {
            row("openssl ecdsap256 signatures (same run)".into(), o);
            ratio(
                "ratio batched / openssl sign  (target >= 0.25)",
                batched / o,
            );
            ratio("ratio durable / openssl sign", durable / o);
        }
        None => println!("openssl speed unavailable: no ratio"),
    }
    Ok(())
}
