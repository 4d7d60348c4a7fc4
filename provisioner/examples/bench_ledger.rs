//! Benchmark: bench provisioning throughput with the ledger on SQLite and on PostgreSQL,
//! and with `--token` also with the CA key in a PKCS#11 token (SoftHSM2, in a temporary
//! directory) next to the key file, measured in the same run.
//!
//! `cargo build --release -p provisioner && cargo run --release -p provisioner --example
//! bench_ledger -- [--boards N] [--bin-dir target/release] [--token]` (default 8 boards)
//!
//! For each engine: a new home (`init`, or `init --ledger postgres://...` on a durable
//! PostgreSQL server this benchmark starts on loopback, fsync and synchronous commit on), N
//! blank emulated boards at 115200 baud with the chip's typical timings, and one `device
//! provision` of all of them at once. Prints boards per minute for each, provisioned/asked,
//! and the ratio PostgreSQL / SQLite. With `--token`: a home whose CA key is generated in a
//! SoftHSM2 token (`init --key-store pkcs11`, SQLite ledger), the same provisioning, and the
//! ratio token / file against the SQLite run (whose CA key is a file).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use test_softhsm::MODULE;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Boards(Vec<Child>);

impl Drop for Boards {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_boards(bin: &Path, work: &Path, n: usize) -> Res<(Boards, Vec<String>)> {
    let mut boards = Boards(Vec::new());
    let mut links = Vec::new();
    for i in 0..n {
        let link = work.join(format!("tty{i}"));
        boards.0.push(
            Command::new(bin)
                .arg("sim-board")
                .arg("--link")
                .arg(&link)
                .arg("--state")
                .arg(work.join(format!("chip{i}")))
                .args(["--baud", "115200", "--timing", "typ"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            if Instant::now() > deadline {
                return Err(format!("board {i} did not appear").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        links.push(link.to_string_lossy().into_owned());
    }
    Ok((boards, links))
}

fn provisioner(bin: &Path, home: &Path, env: &[(String, String)]) -> Command {
    let mut c = Command::new(bin);
    c.env("PROVISIONER_HOME", home)
        .env("PROVISIONER_PASSPHRASE", "bench passphrase, long enough")
        .envs(env.iter().cloned())
        .stdin(Stdio::null());
    c
}

const PIN: &str = "24681012";

/// Provisions `n` boards in one run on a new home made by `init_args` (with `env`); returns
/// (boards per minute, provisioned).
fn run(bin: &Path, init_args: &[String], env: &[(String, String)], n: usize) -> Res<(f64, usize)> {
    let work = tempfile::tempdir()?;
    let home = work.path().join("home");
    let init = provisioner(bin, &home, env).args(init_args).output()?;
    if !init.status.success() {
        return Err(format!("init: {}", String::from_utf8_lossy(&init.stderr)).into());
    }
    let (_boards, links) = start_boards(bin, work.path(), n)?;
    let mut cmd = provisioner(bin, &home, env);
    cmd.args(["--json", "device", "provision"]);
    for l in &links {
        cmd.args(["--port", l]);
    }
    cmd.args(["--id", "salon-{n}", "--profile", "climat", "--lock"]);
    let t = Instant::now();
    let out = cmd.output()?;
    let elapsed = t.elapsed().as_secs_f64();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let boards = v["boards"].as_array().cloned().unwrap_or_default();
    // A board whose run was cut short (line noise) is run again by the provisioner, and that
    // last run finds it done: "verified". Both count as provisioned.
    let ok = |b: &serde_json::Value| b["ok"] == true && b["status"] == "done";
    let done = boards.iter().filter(|b| ok(b)).count();
    if done < n {
        // What went wrong, for the LOST line below.
        for b in boards
            .iter()
            .filter(|b| b["result"]["status"] != "provisioned")
        {
            eprintln!("not provisioned: {b}");
        }
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((done as f64 * 60.0 / elapsed, done))
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let n: usize = value("--boards").and_then(|s| s.parse().ok()).unwrap_or(8);
    let bin = PathBuf::from(value("--bin-dir").unwrap_or_else(|| "target/release".into()))
        .join("provisioner");
    if !bin.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p provisioner",
            bin.display()
        )
        .into());
    }
    eprintln!("SQLite ledger: {n} boards in one run...");
    let (sqlite, sqlite_done) = run(&bin, &["init".into()], &[], n)?;
    eprintln!("PostgreSQL ledger (durable server on loopback): {n} boards in one run...");
    let pg = test_postgres::PgServer::start_with(&test_postgres::Options {
        durable: true,
        tls: None,
    });
    pg.create_database("bench");
    let pg_args = [
        "init".to_string(),
        "--ledger".into(),
        pg.url("bench"),
        "--ledger-password-file".into(),
        pg.password_file().to_string_lossy().into_owned(),
    ];
    let (postgres, pg_done) = run(&bin, &pg_args, &[], n)?;
    let token = if args.iter().any(|a| a == "--token") {
        eprintln!("CA key in SoftHSM2 (SQLite ledger): {n} boards in one run...");
        let hsm = test_softhsm::SoftHsm::new("bench", PIN, "13572468")?;
        let env = hsm.env(PIN);
        let init = [
            "init",
            "--key-store",
            "pkcs11",
            "--pkcs11-module",
            MODULE,
            "--pkcs11-token",
            "bench",
        ]
        .map(String::from);
        Some(run(&bin, &init, &env, n)?)
    } else {
        None
    };
    println!("{:<56} {:>12}", "measure", "value");
    println!(
        "{:<56} {:>12.1}",
        "boards per minute, SQLite ledger", sqlite
    );
    println!(
        "{:<56} {:>12}",
        "provisioned / asked, SQLite",
        format!("{sqlite_done}/{n}")
    );
    println!(
        "{:<56} {:>12.1}",
        "boards per minute, PostgreSQL ledger", postgres
    );
    println!(
        "{:<56} {:>12}",
        "provisioned / asked, PostgreSQL",
        format!("{pg_done}/{n}")
    );
    if let Some((rate, done)) = token {
        println!(
            "{:<56} {:>12.1}",
            "boards per minute, CA key in SoftHSM2 (SQLite)", rate
        );
        println!(
            "{:<56} {:>12}",
            "provisioned / asked, SoftHSM2",
            format!("{done}/{n}")
        );
    }
    let token_done = token.map_or(0, |t| t.1);
    let asked = if token.is_some() { 3 * n } else { 2 * n };
    let done = sqlite_done + pg_done + token_done;
    if done < asked {
        println!("LOST {} of {asked}: no ratio", asked - done);
        std::process::exit(1);
    }
    println!(
        "{:<56} {:>12.3}",
        "ratio PostgreSQL / SQLite (same run)",
        postgres / sqlite
    );
    if let Some((rate, _)) = token {
        println!(
            "{:<56} {:>12.3}",
            "ratio SoftHSM2 key / file key, SQLite (same run)",
            rate / sqlite
        );
    }
    Ok(())
}
