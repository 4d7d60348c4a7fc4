//! The simulated boards: started blank on their pseudo-terminals, provisioned in parallel
//! over their serial links as `device provision --lock` does, rebooted into service.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use manifests::site::{KeySource, Site};
use serde_json::json;

use super::house::Sensor;
use super::procs::{Procs, interrupted, log_tail, stopping, wait_for};
use super::summary::partial;
use super::{Demo, note};
use crate::bench::kit::KitLink;
use crate::bench::provision::{self, Job, Outcome, Progress, ProvisionError, Shared};
use crate::exit::{CliError, Code, Result};

// ---------------------------------------------------------------------------------------------

struct Bars {
    bars: Vec<(String, ProgressBar)>,
}

impl Progress for Bars {
    fn step(&self, port: &str, message: &str) {
        if let Some((_, bar)) = self.bars.iter().find(|(p, _)| p == port) {
            bar.set_message(message.to_string());
        }
    }
}

/// How one board's provisioning ended.
pub(super) type BoardResult = std::result::Result<Outcome, ProvisionError>;

/// Each board with how its provisioning ended.
pub(super) type Outcomes = Vec<(Sensor, BoardResult)>;

/// Provisions every board in parallel, as `device provision --lock` does, with progress.
fn provision_all(
    sensors: &[Sensor],
    site: &Site,
    home: &Path,
    authority: &Mutex<ca::Authority>,
    baud: u32,
    json_mode: bool,
    (procs, boards): (&Procs, &[u32]),
) -> Result<Outcomes> {
    let tty = std::io::stderr().is_terminal() && !json_mode;
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("   {spinner} {prefix:.bold} {elapsed:>4} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let few = sensors.len() <= 12;
    let total = if tty && !few {
        let b = multi.add(ProgressBar::new(sensors.len() as u64));
        b.set_style(
            ProgressStyle::with_template("   {bar:30} {pos}/{len} boards provisioned {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let bars = Bars {
        bars: sensors
            .iter()
            .map(|s| {
                let bar = if tty && few {
                    multi.add(ProgressBar::new_spinner())
                } else {
                    ProgressBar::hidden()
                };
                bar.set_style(style.clone());
                bar.set_prefix(format!("{:<12}", s.id));
                bar.enable_steady_tick(Duration::from_millis(120));
                (s.link.to_string_lossy().into_owned(), bar)
            })
            .collect(),
    };
    let shared = Shared {
        authority,
        site,
        home: home.to_path_buf(),
        progress: &bars,
    };
    let done_lines = Mutex::new(());
    let results = std::thread::scope(|scope| {
        let handles: Vec<_> = sensors
            .iter()
            .map(|s| {
                let shared = &shared;
                let bars = &bars;
                let total = &total;
                let done_lines = &done_lines;
                scope.spawn(move || {
                    let t = Instant::now();
                    let port = s.link.to_string_lossy().into_owned();
                    let job = Job {
                        id: s.id.clone(),
                        room: s.room.clone(),
                        profile_name: s.profile.clone(),
                        key_source: KeySource::Chip,
                        lock: true,
                        dry_run: false,
                        reissue: false,
                        takeover: false,
                    };
                    let r = KitLink::connect(&port, baud)
                        .map_err(ProvisionError::from)
                        .and_then(|mut link| provision::provision(&mut link, &job, shared));
                    let line = match &r {
                        Ok(o) => format!(
                            "{:<12} {:<11} chip {} -> certificate {} ({:.1} s)",
                            s.id,
                            s.profile,
                            o.chip_serial,
                            o.certificate
                                .as_deref()
                                .map(|c| c.chars().take(16).collect::<String>())
                                .unwrap_or_default(),
                            t.elapsed().as_secs_f64()
                        ),
                        Err(e) => format!("{:<12} FAILED: {e}", s.id),
                    };
                    if let Some((_, bar)) = bars.bars.iter().find(|(p, _)| *p == port) {
                        bar.finish_with_message(match &r {
                            Ok(o) => format!("{} ({})", o.status, s.profile),
                            Err(_) => "failed".into(),
                        });
                    }
                    total.inc(1);
                    if !(tty && few) {
                        let _g = done_lines.lock();
                        if tty {
                            total.println(format!("   {line}"));
                        } else {
                            eprintln!("   {line}");
                        }
                    }
                    r
                })
            })
            .collect();
        // Stop on SIGINT: the boards are killed, the threads' links fail, they return.
        while !handles.iter().all(|h| h.is_finished()) {
            if stopping() {
                // The boards go: the threads' links fail at once and they return.
                procs.stop(boards, Duration::from_secs(2));
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(ProvisionError::Conflict(
                        "provisioning thread panicked".into(),
                    ))
                })
            })
            .collect::<Vec<_>>()
    });
    total.finish_and_clear();
    if stopping() {
        return Err(interrupted());
    }
    Ok(sensors.iter().cloned().zip(results).collect())
}

/// `fw:reboot()` over the board's serial link: the firmware restarts its application, which
/// connects at once (as a board does when powered on in its room).
pub(super) fn reboot(link: &Path, baud: u32) -> Result<()> {
    let path = link.to_string_lossy();
    let mut port = crate::bench::port::open(&path, baud)
        .map_err(|e| CliError::new(Code::Failure, format!("reboot {}: {e}", link.display())))?;
    let io = |e: std::io::Error| CliError::new(Code::Failure, format!("reboot {path}: {e}"));
    port.write_all(b"\n").map_err(io)?;
    std::thread::sleep(Duration::from_millis(20));
    port.write_all(b"fw:reboot()\n").map_err(io)?;
    // Wait for the acknowledgement so the line is not cut when the port closes.
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline && !String::from_utf8_lossy(&got).contains("00(") {
        match port.read(&mut buf) {
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(())
}

/// Step 3: one blank board (`provisioner sim-board`) per sensor on its pseudo-terminal,
/// waited for until its link exists. Returns their pids.
pub(super) fn start(d: &Demo<'_>, sensors: &[Sensor]) -> Result<Vec<u32>> {
    let log = |s: &Sensor| -> PathBuf { d.logs.join(format!("board-{}.log", s.id)) };
    let mut boards = Vec::new();
    for s in sensors {
        let mut c = Command::new(&d.exe);
        c.arg("sim-board")
            .arg("--link")
            .arg(&s.link)
            .arg("--state")
            .arg(&s.state)
            .arg("--baud")
            .arg(d.args.baud.to_string());
        let child = d
            .procs
            .spawn(&format!("board {}", s.id), c, &log(s), false)?;
        boards.push(child.pid);
    }
    for (s, pid) in sensors.iter().zip(&boards) {
        wait_for(
            &format!("board {} on {}", s.id, s.link.display()),
            Duration::from_secs(20),
            Some(&log(s)),
            || s.link.exists() || !d.procs.running(*pid),
        )?;
        if !d.procs.running(*pid) {
            return Err(CliError::new(
                Code::Failure,
                format!("board {} stopped{}", s.id, log_tail(&log(s))),
            ));
        }
    }
    note(&format!(
        "{} pseudo-terminals in {} ({} baud)",
        sensors.len(),
        d.links.display(),
        d.args.baud
    ));
    Ok(boards)
}

/// Every board provisioned, and how long it took.
pub(super) struct Provisioned {
    pub(super) outcomes: Outcomes,
    pub(super) seconds: f64,
}

/// Step 4: every board provisioned in parallel; any failure fails the demo, naming each.
pub(super) fn provision(
    d: &Demo<'_>,
    sensors: &[Sensor],
    site: &Site,
    authority: &Mutex<ca::Authority>,
    json_mode: bool,
    boards: &[u32],
) -> Result<Provisioned> {
    let n = sensors.len();
    let started = Instant::now();
    let outcomes = provision_all(
        sensors,
        site,
        &d.home,
        authority,
        d.args.baud,
        json_mode,
        (d.procs, boards),
    )?;
    let seconds = started.elapsed().as_secs_f64();
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(s, r)| r.as_ref().err().map(|e| format!("{}: {e}", s.id)))
        .collect();
    if !failed.is_empty() {
        return Err(CliError::new(
            Code::Failure,
            format!(
                "{} of {n} board(s) failed to provision:\n  {}",
                failed.len(),
                failed.join("\n  ")
            ),
        ));
    }
    note(&format!(
        "{n} device(s) provisioned in {seconds:.1} s: chip zones locked, key generated in the chip, certificate and device.toml written"
    ));
    partial(
        "devices",
        json!({ "requested": n, "provisioned": n, "provisioning_seconds": seconds,
                "list": sensors.iter().zip(&outcomes).map(|(s, (_, r))| json!({
                    "id": s.id, "profile": s.profile,
                    "certificate": r.as_ref().ok().and_then(|o| o.certificate.clone()) }))
                .collect::<Vec<_>>() }),
    );
    Ok(Provisioned { outcomes, seconds })
}
