//! `provisioner demo`: the whole network on this machine, no hardware.
//!
//! In a fresh temporary home: a CA, the broker's certificate, N simulated boards (the
//! firmware's `sensor-sim`, run as `provisioner sim-board` child processes on pseudo-terminals)
//! provisioned in parallel over their serial links exactly as `device provision` does, the
//! emitted mosquitto configuration started for real on "Pi #1", the `gateway` forwarding
//! `maison/#` over the simulated LoRa air (`lora-link air`) to `lora-link rx` on "Pi #2", which
//! republishes to a second mosquitto. A live view shows readings arriving at the far side;
//! intrusions (no certificate, another CA's certificate, a certified client writing outside its
//! topics, a replayed and a forged LoRa frame) are tried and must all be refused. The summary
//! compares, per topic, what the broker on Pi #1 accepted from the devices with what reached
//! the far side: every QoS 1/2 reading must arrive.
//!
//! Every child runs in its own process group and is tracked: on the normal path, on an error
//! and on SIGINT/SIGTERM, all are stopped (SIGTERM, then SIGKILL) and reaped.
//!
//! The parts, one concern each: [`procs`] (child processes, process groups, signals and
//! cleanup), [`network`] (directory, programs, ports, the emitted configurations, brokers,
//! air, receiver and gateway), [`house`] (the site and its sensors), [`boards`] (the simulated
//! boards and their provisioning), [`chip_identity`] (the first board's identity in the chip,
//! issue 19), [`live`] (the monitors and the live view), [`scenario`] (the intrusions),
//! [`revocation`] (the live revocation), [`renewal`] (one board renews its short-lived
//! certificate in the field during the run), [`summary`] (text and JSON).

mod boards;
mod chip_identity;
mod house;
mod live;
mod network;
mod procs;
mod renewal;
mod revocation;
mod scenario;
mod summary;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::context::{Context, PASSPHRASE_ENV};
use crate::exit::{CliError, Code, Result};
use network::{Ports, Tools, Workdir, explicit_home, workdir};
use procs::{Procs, log_tail, nap, run_short, stopping, watch_signals};
use summary::{PARTIAL, interrupted_summary, partial};

/// Help text shown after the options.
pub const HELP: &str = "\
The demo needs mosquitto and mosquitto_sub/mosquitto_pub (Debian: mosquitto,
mosquitto-clients), and the `gateway` and `lora-link` binaries next to `provisioner`
(cargo build --release -p provisioner -p gateway -p lora-link).

Everything happens in a fresh temporary directory (removed at the end unless --keep) or in
--home DIR when given on the command line and empty. Network traffic stays on 127.0.0.1.
The CA passphrase is random, held in memory and passed to child processes in their
environment only; it is never printed.

EXAMPLES:
  provisioner demo
  provisioner demo --sensors 50 --duration 40
  provisioner demo --sensors 3 --duration 10 --json | jq .messages

EXIT CODES: 0 every device provisioned, every QoS 1/2 reading delivered at the far side,
every intrusion refused, the revoked board cut off within 5 s, the certificates rebuilt
from the first board's chip equal to the ledger's and the short-lived board renewed in the
field with no reading lost; 1 otherwise (or interrupted: everything is stopped either way).";

/// Arguments of `demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Number of simulated sensor boards (rooms and profiles of the example house, in turn).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=100))]
    sensors: u16,
    /// Seconds of live traffic once every board is in service.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(3..=3600))]
    duration: u64,
    /// Keep the demo directory (home, configurations, logs) for inspection.
    #[arg(long)]
    keep: bool,
    /// Baud rate of the boards' serial links.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
}

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// `text` in bold when stderr takes colour (a terminal, no `NO_COLOR`).
fn bold(text: &str) -> String {
    if cli_common::stderr_colour() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// A numbered step of the story, with the time since the start.
fn step(n: u32, text: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    partial("step", json!({ "number": n, "title": text }));
    eprintln!("\n{}  [{t:.1} s]", bold(&format!("== {n}. {text}")));
}

fn note(text: &str) {
    eprintln!("   {text}");
}

/// Runs the demo.
pub fn run(ctx: &Context, args: Args) -> Result<()> {
    watch_signals()?;
    let started = *START.get_or_init(Instant::now);
    let procs = Procs::default();
    let dir = workdir(ctx, args.keep)?;
    let result = demo(ctx, &args, &procs, &dir, started);
    // Everything stops here on every path (Procs and Workdir also clean up on unwinding).
    let pids = procs.all_pids();
    procs.stop(&pids, Duration::from_secs(3));
    if dir.keep {
        eprintln!("   demo files kept in {}", dir.root.display());
        let known = PARTIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let (Some(Value::String(home)), Some(Value::String(file))) =
            (known.get("home"), known.get("passphrase_file"))
        {
            eprintln!(
                "   its CA passphrase is in {file} (0600, never shown), e.g.\n     provisioner --home {home} --passphrase-file {file} device list"
            );
        }
    }
    drop(dir);
    if result.is_err() && stopping() && ctx.json {
        partial("kept", json!(args.keep || explicit_home()));
        println!(
            "{}",
            serde_json::to_string_pretty(&interrupted_summary(&procs, started)).unwrap_or_default()
        );
    }
    let summary = result?;
    if ctx.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    }
    if summary["ok"] == true {
        Ok(())
    } else {
        Err(CliError::new(
            Code::Failure,
            "the demo did not show everything it should (see the summary above)",
        ))
    }
}

/// Where the demo runs and how it calls `provisioner` itself.
struct Demo<'a> {
    args: &'a Args,
    procs: &'a Procs,
    exe: PathBuf,
    /// The CA's home.
    home: PathBuf,
    /// Everything else: site file, configurations, boards' chips.
    work: PathBuf,
    logs: PathBuf,
    /// The boards' pseudo-terminals.
    links: PathBuf,
    passphrase: Zeroizing<String>,
}

impl<'a> Demo<'a> {
    /// The directories inside `dir` and the random CA passphrase (in a private file when the
    /// home is kept: it is of use only with it).
    fn prepare(args: &'a Args, procs: &'a Procs, dir: &Workdir) -> Result<Demo<'a>> {
        let root = dir.root.as_path();
        let exe = std::env::current_exe()
            .map_err(|e| CliError::new(Code::Failure, format!("own executable: {e}")))?;
        let explicit = network::explicit_home();
        let (home, work) = if explicit {
            (root.to_path_buf(), root.join("demo"))
        } else {
            (root.join("home"), root.to_path_buf())
        };
        let logs = work.join("logs");
        let links = work.join("dev");
        for d in [&work, &logs, &links] {
            ca::fsutil::private_dir(d)?;
        }
        let passphrase = Zeroizing::new(format!("demo-{}", network::random_hex(24)?));
        if dir.keep {
            let file = work.join("passphrase");
            ca::fsutil::write_atomic(&file, passphrase.as_bytes(), 0o600)?;
            partial("passphrase_file", json!(file));
        }
        Ok(Demo {
            args,
            procs,
            exe,
            home,
            work,
            logs,
            links,
            passphrase,
        })
    }

    /// The log file of a child.
    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{}.log", name.replace(' ', "-")))
    }

    /// `provisioner --home HOME ARGS` with the passphrase in its environment only.
    fn me(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.exe);
        c.arg("--home").arg(&self.home).args(args);
        c.env(PASSPHRASE_ENV, self.passphrase.as_str());
        c.env_remove("PROVISIONER_HOME");
        c
    }

    /// Runs `provisioner ARGS` to completion; its failure is the demo's, with its log.
    fn run_me(&self, name: &str, a: &[&str], timeout: u64) -> Result<String> {
        let log = self.log(name);
        let (st, out) = run_short(
            self.procs,
            name,
            self.me(a),
            &log,
            Duration::from_secs(timeout),
        )?;
        if !st.success() {
            return Err(CliError::new(
                Code::Failure,
                format!("provisioner {name} failed ({st}){}", log_tail(&log)),
            ));
        }
        Ok(out)
    }

    /// The house's CA, opened directly with the site's lifetime policy (as
    /// `Context::authority` does), so the site's certificate lifetimes apply here too.
    fn authority(&self, site: &manifests::site::Site) -> Result<ca::Authority> {
        let layout = ca::Layout::new(self.home.clone());
        let pass = ca::Passphrase::new(self.passphrase.to_string());
        let mut authority = ca::Authority::open(&layout, &pass)?;
        authority.set_policy(crate::cmd::audit::policy(site));
        // Compressible profiles (issue 19): their device certificates fit the chip.
        crate::cmd::certdef::apply(site, &mut authority);
        Ok(authority)
    }

    /// Steps 1 and 2: the CA for the house and the broker's certificate.
    fn make_ca(&self, site_file: &Path) -> Result<()> {
        step(
            1,
            "A CA for the house (random demo passphrase, never shown)",
        );
        self.run_me(
            "init",
            &[
                "init",
                "--issuing-ca",
                "--site",
                &site_file.to_string_lossy(),
            ],
            60,
        )?;
        note(&format!(
            "home {}: EC P-256 root CA and issuing CA (the renewal service signs with it), ledger, site file",
            self.home.display()
        ));
        step(2, "The broker's certificate (SAN: localhost, 127.0.0.1)");
        self.run_me(
            "server issue",
            &["server", "issue", "--dns", "localhost", "--ip", "127.0.0.1"],
            60,
        )?;
        note("server profile: serverAuth, SAN DNS localhost + IP 127.0.0.1");
        Ok(())
    }
}

/// The whole story, step by step; every step's processes are in `procs`.
fn demo(
    ctx: &Context,
    args: &Args,
    procs: &Procs,
    dir: &Workdir,
    started: Instant,
) -> Result<Value> {
    let tools = Tools::find()?;
    let d = Demo::prepare(args, procs, dir)?;
    let n = usize::from(args.sensors);
    let mut sensors = house::sensors(n, &d.links, &d.work)?;
    let ports = Ports::pick()?;
    let (mut site, scale) = house::demo_site(ports.near, &sensors, args.duration)?;
    chip_identity::in_the_chip(&mut site, &mut sensors)?;
    let plan = renewal::plan(&mut site, &mut sensors, args.duration);
    partial("ports", ports.json());
    partial("home", json!(d.home));
    let site_file = d.work.join("site.toml");
    ca::fsutil::write_atomic(&site_file, site.to_toml()?.as_bytes(), 0o644)?;

    eprintln!(
        "{}: {n} sensor(s), {} s of traffic, in {}",
        bold("provisioner demo"),
        args.duration,
        dir.root.display()
    );
    d.make_ca(&site_file)?;

    step(
        3,
        &format!("{n} blank boards on their serial ports (simulated ESP8266 + ATECC508A)"),
    );
    let boards = boards::start(&d, &sensors)?;

    step(
        4,
        "Provisioning every board in parallel over its serial link (kit protocol)",
    );
    let authority = Mutex::new(d.authority(&site)?);
    let provisioned = boards::provision(&d, &sensors, &site, &authority, ctx.json, &boards)?;
    let provisioned_at = Instant::now();
    let in_chip = chip_identity::check(&d, &site, &authority, &provisioned)?;

    step(
        5,
        "Gateway, receiver and the demo's own clients; both brokers' configuration",
    );
    if plan.is_some() {
        renewal::setup(&d)?;
    }
    let configs = network::emit_configs(&d, &site, &ports, authority)?;

    step(
        6,
        "Pi #1 and Pi #2: mosquitto (mTLS + ACL + CRL), the LoRa air, lora-link rx, gateway",
    );
    let mut net = network::Network::start(&d, &tools, &ports, &configs)?;
    let mut monitors = live::Monitors::start(&d, &tools, &ports, &configs)?;
    let mut renewing = plan
        .map(|p| renewal::start(&d, p, provisioned_at))
        .transpose()?;

    step(
        7,
        &format!(
            "The boards go into service (reboot) — live view of the far side for {} s",
            args.duration
        ),
    );
    live::go_live();
    if let Some(r) = &mut renewing {
        r.went_live();
    }
    for s in &sensors {
        boards::reboot(&s.link, args.baud)?;
    }
    if scale > 1.0 {
        note(&format!(
            "intervals x{scale:.1} so {n} sensors stay inside the LoRa duty-cycle budget"
        ));
    }
    let intervals = house::intervals(&site, &sensors);
    note(&live::schedule_note(&intervals, args.duration));
    // Intrusions, a few seconds into the traffic, then the rest of the live phase.
    let live_end = Instant::now() + Duration::from_secs(args.duration);
    nap(Duration::from_secs(args.duration.min(4)))?;
    let tried = scenario::play(&d, &tools, &ports, &configs, &site, &net)?;
    let revoked = match revocation::victim(&sensors) {
        Some(v) => {
            step(8, &format!("Revoking `{}` while the house runs", v.id));
            let r = revocation::revoke_live(&d, &tools, &ports, &configs, &mut net, &monitors, v)?;
            r.wait_for_refusal()?;
            Some(r)
        }
        None => None,
    };
    monitors.watch_until(live_end, &intervals, args.duration)?;
    if let Some(r) = &mut renewing {
        r.finish(&d)?;
    }

    step(
        9,
        "Stopping: boards first, then the link drains, then the daemons",
    );
    let ended = network::stop_in_order(procs, &boards, net, &mut monitors)?;

    let (near, far) = monitors.seen();
    let intrusions = tried.outcomes(&near, &far, &ended.receiver);
    let revocation = revoked.map(|r| r.judge(&near));
    let renewal = renewing.map(|r| r.judge(&d, &near, &far)).transpose()?;
    let report = summary::Report {
        n,
        sensors: &sensors,
        site: &site,
        provisioned: &provisioned,
        near: &near,
        far: &far,
        ended: &ended,
        intrusions: &intrusions,
        revocation: revocation.as_ref(),
        chip_identity: &in_chip,
        renewal: renewal.as_ref(),
        scale,
        ports: &ports,
        procs,
        started,
    };
    let summary = report.json();
    step(10, "Summary");
    report.print();
    Ok(summary)
}
