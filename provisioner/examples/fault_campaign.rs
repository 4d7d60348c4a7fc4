//! Fault campaign: many bench provisioning runs against simulated boards with a noisy serial
//! line and a provisioner killed (SIGKILL) at a random moment, each followed by a re-run; every
//! end state is classified as succeeded, stopped cleanly or inconsistent.
//!
//! * succeeded: the re-run exited 0 (`provisioned` or `verified`), the chip's configuration
//!   zone is the profile's and locked, the data zone is locked, and the ledger holds exactly one
//!   active certificate for the board, whose key is the chip's slot key;
//! * stopped cleanly: the re-run stopped with a clean error (exit code 1..=6, no panic, no
//!   signal), and what exists is consistent: the configuration zone is unlocked or the
//!   profile's, at most one active certificate, and its key (if any) is the chip's;
//! * inconsistent: anything else (a zone locked with other content, two active certificates, a
//!   certificate whose key is not the chip's, a panic, a hang, a claimed success that is not).
//!
//! One CA home serves every board (boards are cheap: `sim-board --baud 0`). Nothing is changed
//! in the provisioner: this drives the release binary from the outside, as an operator would.
//!
//! ```text
//! cargo build --release -p provisioner
//! cargo run --release -p provisioner --example fault_campaign -- \
//!     --bin target/release/provisioner --runs 200 --json target/fault-campaign.json
//! ```
//! Options: `--runs N` (200), `--jobs N` (2), `--max-fault-rate P` (0.003), `--kill-prob P`
//! (0.75), `--seed N` (random; printed, so a campaign can be replayed), `--first N` (number
//! of the first run, 0: runs `N .. N+runs` of the seed's campaign, so one campaign can be made
//! of several invocations with the same seed and consecutive ranges), `--keep` (keep the
//! work directory). Exit status 1 if any run is inconsistent.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atecc::client::Client;

const PASSPHRASE: &str = "fault campaign passphrase";
/// Key slot of the `climat` profile (the TLS device profile).
const KEY_SLOT: u8 = 0;
/// A re-run that takes longer than this is a hang (the provisioner's own timeouts are shorter).
const HANG: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    StoppedCleanly,
    Inconsistent,
}

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::StoppedCleanly => "stopped_cleanly",
            Outcome::Inconsistent => "inconsistent",
        }
    }
}

/// What one run did and how it ended.
#[derive(Debug)]
struct Run {
    n: usize,
    fault_rate: f64,
    kill_after_ms: Option<u64>,
    killed: bool,
    first_exit: String,
    rerun_exit: String,
    outcome: Outcome,
    why: String,
    config_locked: bool,
    data_locked: bool,
    active_certs: usize,
}

struct Options {
    bin: PathBuf,
    runs: usize,
    /// Number of the first run: runs `first .. first + runs` are made.
    first: usize,
    jobs: usize,
    max_fault_rate: f64,
    kill_prob: f64,
    seed: u64,
    json: Option<PathBuf>,
    keep: bool,
    /// `kit` (the provisioning firmware) or `mos` (Mongoose OS RPC), on both ends.
    transport: String,
}

fn parse_args() -> Options {
    let mut seed_bytes = [0u8; 8];
    getrandom::fill(&mut seed_bytes).expect("getrandom");
    let mut o = Options {
        bin: PathBuf::from("target/release/provisioner"),
        runs: 200,
        first: 0,
        jobs: 2,
        max_fault_rate: 0.003,
        kill_prob: 0.75,
        seed: u64::from_le_bytes(seed_bytes),
        json: None,
        keep: false,
        transport: "kit".into(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .unwrap_or_else(|| usage(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--bin" => o.bin = PathBuf::from(value()),
            "--runs" => o.runs = value().parse().unwrap_or_else(|_| usage("--runs N")),
            "--jobs" => o.jobs = value().parse().unwrap_or_else(|_| usage("--jobs N")),
            "--first" => o.first = value().parse().unwrap_or_else(|_| usage("--first N")),
            "--max-fault-rate" => {
                o.max_fault_rate = value()
                    .parse()
                    .unwrap_or_else(|_| usage("--max-fault-rate P"))
            }
            "--kill-prob" => {
                o.kill_prob = value().parse().unwrap_or_else(|_| usage("--kill-prob P"))
            }
            "--seed" => o.seed = value().parse().unwrap_or_else(|_| usage("--seed N")),
            "--json" => o.json = Some(PathBuf::from(value())),
            "--keep" => o.keep = true,
            "--transport" => {
                o.transport = value();
                if o.transport != "kit" && o.transport != "mos" {
                    usage("--transport kit|mos");
                }
            }
            _ => usage(&format!("unknown argument {a}")),
        }
    }
    o.jobs = o.jobs.max(1);
    o
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "fault_campaign: {msg}\nusage: fault_campaign --bin PROVISIONER [--runs N] [--first N] [--jobs N] [--max-fault-rate P] [--kill-prob P] [--seed N] [--json FILE] [--keep] [--transport kit|mos]"
    );
    std::process::exit(2)
}

/// splitmix64: small, seedable, good enough to pick fault rates and kill moments.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The campaign's shared CA home and the binary that drives it.
struct Bench {
    bin: PathBuf,
    work: PathBuf,
    home: PathBuf,
    transport: String,
}

impl Bench {
    fn provisioner(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.env("PROVISIONER_HOME", &self.home)
            .env("PROVISIONER_PASSPHRASE", PASSPHRASE)
            .env_remove("PROVISIONER_CRASH_AT")
            .env_remove("PROVISIONER_FAKE_NOW")
            .stdin(Stdio::null());
        c
    }

    fn provision_args(&self, port: &Path, id: &str) -> Vec<String> {
        [
            "--json",
            "device",
            "provision",
            "--transport",
            &self.transport,
            "--port",
            &port.to_string_lossy(),
            "--id",
            id,
            "--profile",
            "climat",
            "--lock",
        ]
        .map(String::from)
        .to_vec()
    }

    /// Starts a simulated board on a pty at `<work>/<name>.tty`.
    fn board(&self, name: &str, fault_rate: f64) -> (Child, PathBuf, PathBuf) {
        let link = self.work.join(format!("{name}.tty"));
        let state = self.work.join(format!("{name}.chip"));
        let log = std::fs::File::create(self.work.join(format!("{name}.board.log"))).expect("log");
        let child = Command::new(&self.bin)
            .args(["sim-board", "--link"])
            .arg(&link)
            .arg("--state")
            .arg(&state)
            .args([
                "--transport",
                &self.transport,
                "--baud",
                "0",
                "--line-fault-rate",
                &format!("{fault_rate:.6}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start sim-board");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            assert!(Instant::now() < deadline, "board {name} did not appear");
            std::thread::sleep(Duration::from_millis(10));
        }
        (child, link, state)
    }

    /// Spawns `device provision --lock` with stdout/stderr in `<work>/<name>.<tag>.{out,err}`.
    fn spawn_provision(&self, link: &Path, id: &str, name: &str, tag: &str) -> Child {
        let out = std::fs::File::create(self.work.join(format!("{name}.{tag}.out"))).expect("out");
        let err = std::fs::File::create(self.work.join(format!("{name}.{tag}.err"))).expect("err");
        self.provisioner()
            .args(self.provision_args(link, id))
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start provisioner")
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

/// Waits for `child` up to `limit`; None if it is still running.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "hang".into(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => "unknown".into(),
        },
    }
}

/// The 64-byte P-256 point (X || Y) of a certificate's subjectPublicKeyInfo: the bytes after
/// the prime256v1 OID and `BIT STRING, 66 bytes, 0 unused bits, uncompressed`.
fn cert_public_key(der: &[u8]) -> Option<[u8; 64]> {
    const MARK: [u8; 14] = [
        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    let at = der.windows(MARK.len()).position(|w| w == MARK)? + MARK.len();
    der.get(at..at + 64)?.try_into().ok()
}

/// One run: board up, first provisioning (maybe killed), re-run, board down, classify.
fn run_one(bench: &Bench, n: usize, rng: &mut Rng, o: &Options, kill_window_ms: u64) -> Run {
    let name = format!("b{n:04}");
    let id = format!("salon-{}", 1000 + n);
    let fault_rate = rng.unit() * o.max_fault_rate;
    let kill_after_ms =
        (rng.unit() < o.kill_prob).then(|| (rng.unit() * kill_window_ms as f64) as u64);
    let (mut board, link, state) = bench.board(&name, fault_rate);

    let mut first = bench.spawn_provision(&link, &id, &name, "first");
    let mut killed = false;
    let first_status = match kill_after_ms {
        Some(ms) => match wait_for(&mut first, Duration::from_millis(ms)) {
            Some(s) => Some(s),
            None => {
                signal(&first, nix::sys::signal::Signal::SIGKILL);
                killed = true;
                first.wait().ok()
            }
        },
        None => wait_for(&mut first, HANG),
    };
    if first_status.is_none() {
        let _ = first.kill();
        let _ = first.wait();
    }

    let mut rerun = bench.spawn_provision(&link, &id, &name, "rerun");
    let rerun_status = wait_for(&mut rerun, HANG);
    if rerun_status.is_none() {
        let _ = rerun.kill();
        let _ = rerun.wait();
    }
    signal(&board, nix::sys::signal::Signal::SIGTERM);
    let _ = board.wait();

    let mut run = Run {
        n,
        fault_rate,
        kill_after_ms,
        killed,
        first_exit: if killed {
            "killed".into()
        } else {
            describe(first_status)
        },
        rerun_exit: describe(rerun_status),
        outcome: Outcome::Inconsistent,
        why: String::new(),
        config_locked: false,
        data_locked: false,
        active_certs: 0,
    };
    let (outcome, why) = classify(bench, &id, &name, &state, rerun_status, &mut run);
    run.outcome = outcome;
    run.why = why;
    if run.outcome != Outcome::Inconsistent && !o.keep {
        for suffix in [
            "chip",
            "board.log",
            "first.out",
            "first.err",
            "rerun.out",
            "rerun.err",
        ] {
            let _ = std::fs::remove_file(bench.work.join(format!("{name}.{suffix}")));
        }
    }
    run
}

fn classify(
    bench: &Bench,
    id: &str,
    name: &str,
    state: &Path,
    rerun: Option<ExitStatus>,
    run: &mut Run,
) -> (Outcome, String) {
    let mut chip = match atecc::emulator::Chip::open(state) {
        Ok(c) => c,
        // The board never received a byte it acted on: a blank chip, nothing persisted.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => atecc::emulator::Chip::new_blank(),
        Err(e) => return (Outcome::Inconsistent, format!("chip state unreadable: {e}")),
    };
    let zone = chip.config_zone();
    run.config_locked = zone.is_config_locked();
    run.data_locked = zone.is_data_locked();
    let profile =
        atecc::profile::Profile::from_toml(atecc::profile::TLS_DEVICE_PROFILE).expect("profile");
    // The profile's zone; on a data-locked chip the Lockable identity slot may be locked since.
    let mut expected = profile.to_config_zone(&zone).expect("apply profile");
    expected.accept_slot_locks(&zone);
    let expected = expected.0;
    if run.config_locked && expected != zone.0 {
        return (
            Outcome::Inconsistent,
            "configuration zone locked with content other than the profile's".into(),
        );
    }
    if run.data_locked && !run.config_locked {
        return (
            Outcome::Inconsistent,
            "data zone locked, configuration zone not".into(),
        );
    }

    let store = ca::Store::open(&ca::Layout::new(&bench.home)).expect("open the ledger");
    let certs = store
        .ledger
        .certificates_of(id)
        .expect("ledger certificates");
    let active: Vec<_> = certs.iter().filter(|c| c.revoked_at.is_none()).collect();
    run.active_certs = active.len();
    if active.len() > 1 {
        return (
            Outcome::Inconsistent,
            format!("{} active certificates", active.len()),
        );
    }
    if let Some(c) = active.first() {
        let Some(cert_key) = cert_public_key(&c.der) else {
            return (
                Outcome::Inconsistent,
                "active certificate without a P-256 key".into(),
            );
        };
        let chip_key = if run.data_locked {
            Client::new(&mut chip).public_key(KEY_SLOT).ok()
        } else {
            None
        };
        if chip_key != Some(cert_key) {
            return (
                Outcome::Inconsistent,
                "an active certificate whose key is not the chip's slot key".into(),
            );
        }
    }

    let out =
        std::fs::read_to_string(bench.work.join(format!("{name}.rerun.out"))).unwrap_or_default();
    let status = serde_json::from_str::<serde_json::Value>(&out)
        .ok()
        .and_then(|v| {
            v["boards"][0]["result"]["status"]
                .as_str()
                .map(String::from)
        })
        .unwrap_or_default();
    let code = rerun.and_then(|s| s.code());
    match code {
        Some(0) => {
            if (status == "provisioned" || status == "verified")
                && run.config_locked
                && run.data_locked
                && active.len() == 1
            {
                (Outcome::Succeeded, status)
            } else {
                (
                    Outcome::Inconsistent,
                    format!(
                        "re-run claimed success (`{status}`) but config locked {} data locked {} active certificates {}",
                        run.config_locked,
                        run.data_locked,
                        active.len()
                    ),
                )
            }
        }
        Some(1..=6) => {
            let err = std::fs::read_to_string(bench.work.join(format!("{name}.rerun.err")))
                .unwrap_or_default();
            let err = strip_ansi(&err);
            // The error line, with the board's path (different in every run) left out.
            let line = err
                .lines()
                .rev()
                .find(|l| l.starts_with("error") || l.contains("stopped ("))
                .unwrap_or("")
                .replace(&format!("{}/{name}.tty", bench.work.display()), "PORT")
                .trim()
                .to_string();
            (Outcome::StoppedCleanly, line)
        }
        _ => (
            Outcome::Inconsistent,
            format!("re-run ended with {}", describe(rerun)),
        ),
    }
}

/// Log lines without their terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn main() {
    let o = parse_args();
    let bin = o
        .bin
        .canonicalize()
        .unwrap_or_else(|e| usage(&format!("{}: {e} (build it first)", o.bin.display())));
    let work = std::env::temp_dir().join(format!("fault-campaign-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let bench = Bench {
        bin,
        home: work.join("home"),
        work: work.clone(),
        transport: o.transport.clone(),
    };
    let init = bench
        .provisioner()
        .arg("init")
        .output()
        .expect("provisioner init");
    assert!(
        init.status.success(),
        "provisioner init: {}",
        String::from_utf8_lossy(&init.stderr)
    );

    // Calibration: one clean run sets the window in which kills land (0 .. 1.2 x its length),
    // so kills fall before, during and after every step, the locks included.
    let (mut board, link, _) = bench.board("calibration", 0.0);
    let t = Instant::now();
    let mut cal = bench.spawn_provision(&link, "salon-999", "calibration", "first");
    let cal_status = wait_for(&mut cal, HANG);
    let cal_ms = t.elapsed().as_millis() as u64;
    signal(&board, nix::sys::signal::Signal::SIGTERM);
    let _ = board.wait();
    assert!(
        cal_status.is_some_and(|s| s.success()),
        "calibration run failed: see {}",
        work.join("calibration.first.err").display()
    );
    let kill_window_ms = cal_ms * 6 / 5;
    eprintln!(
        "fault campaign: {} runs ({} .. {}), {} jobs, seed {}, fault rate 0..{}, kill probability {}, clean run {} ms, kills within {} ms; work {}",
        o.runs,
        o.first,
        o.first + o.runs,
        o.jobs,
        o.seed,
        o.max_fault_rate,
        o.kill_prob,
        cal_ms,
        kill_window_ms,
        work.display()
    );

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(o.first));
    let runs = Arc::new(Mutex::new(Vec::new()));
    let bench = Arc::new(bench);
    let o = Arc::new(o);
    let workers: Vec<_> = (0..o.jobs)
        .map(|_| {
            let (next, runs, bench, o) = (next.clone(), runs.clone(), bench.clone(), o.clone());
            std::thread::spawn(move || {
                loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    if n >= o.first + o.runs {
                        break;
                    }
                    // One stream per run: a run is replayed by its seed and number alone.
                    let mut rng = Rng(o.seed ^ (n as u64).wrapping_mul(0xA076_1D64_78BD_642F));
                    let r = run_one(&bench, n, &mut rng, &o, kill_window_ms);
                    if r.outcome == Outcome::Inconsistent {
                        eprintln!(
                            "run {n}: INCONSISTENT: {} (files kept in {})",
                            r.why,
                            bench.work.display()
                        );
                    }
                    let mut all = runs.lock().expect("runs");
                    all.push(r);
                    if all.len() % 10 == 0 {
                        eprintln!("  {} / {} runs", all.len(), o.runs);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut runs = std::mem::take(&mut *runs.lock().expect("runs"));
    runs.sort_by_key(|r| r.n);

    let count = |f: &dyn Fn(&Run) -> bool| runs.iter().filter(|r| f(r)).count();
    let succeeded = count(&|r| r.outcome == Outcome::Succeeded);
    let stopped = count(&|r| r.outcome == Outcome::StoppedCleanly);
    let inconsistent = count(&|r| r.outcome == Outcome::Inconsistent);
    let killed = count(&|r| r.killed);
    let killed_after_config_lock = count(&|r| r.killed && r.config_locked);
    let wrong_lock = count(&|r| r.why.contains("other than the profile"));
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for r in runs.iter().filter(|r| r.outcome != Outcome::Succeeded) {
        *reasons
            .entry(format!("{}: {}", r.outcome.name(), r.why))
            .or_default() += 1;
    }

    println!(
        "fault campaign, seed {}, runs {} .. {}",
        o.seed,
        o.first,
        o.first + o.runs
    );
    println!("  runs                    {:>5}", runs.len());
    println!("  provisioner killed      {killed:>5}");
    println!("  succeeded               {succeeded:>5}");
    println!("  stopped cleanly         {stopped:>5}");
    println!("  inconsistent            {inconsistent:>5}");
    println!("  locked with other config{wrong_lock:>5}");
    println!("  elapsed                 {elapsed:>7.1} s");
    for (why, n) in &reasons {
        println!("    {n:>4}  {why}");
    }

    let report = serde_json::json!({
        "runs": runs.len(),
        "first_run": o.first,
        "transport": o.transport,
        "succeeded": succeeded,
        "stopped_cleanly": stopped,
        "inconsistent": inconsistent,
        "locked_with_other_config": wrong_lock,
        "killed": killed,
        "killed_runs_config_locked_at_end": killed_after_config_lock,
        "seed": o.seed,
        "jobs": o.jobs,
        "max_fault_rate": o.max_fault_rate,
        "kill_probability": o.kill_prob,
        "kill_window_ms": kill_window_ms,
        "elapsed_s": elapsed,
        "reasons": reasons,
        "details": runs.iter().map(|r| serde_json::json!({
            "run": r.n,
            "fault_rate": r.fault_rate,
            "kill_after_ms": r.kill_after_ms,
            "killed": r.killed,
            "first": r.first_exit,
            "rerun": r.rerun_exit,
            "outcome": r.outcome.name(),
            "why": r.why,
            "config_locked": r.config_locked,
            "data_locked": r.data_locked,
            "active_certificates": r.active_certs,
        })).collect::<Vec<_>>(),
    });
    if let Some(path) = &o.json {
        std::fs::write(path, serde_json::to_string_pretty(&report).expect("json"))
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("report written to {}", path.display());
    }
    if inconsistent == 0 && !o.keep {
        let _ = std::fs::remove_dir_all(&work);
    }
    std::process::exit(if inconsistent == 0 { 0 } else { 1 });
}
