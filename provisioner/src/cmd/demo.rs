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

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use manifests::site::{KeySource, Site};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::bench::kit::KitLink;
use crate::bench::provision::{self, Job, Outcome, Progress, ProvisionError, Shared};
use crate::context::{Context, PASSPHRASE_ENV};
use crate::exit::{CliError, Code, Result};

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

EXIT CODES: 0 every device provisioned, every QoS 1/2 reading delivered at the far side and
every intrusion refused; 1 otherwise (or interrupted: everything is stopped either way).";

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

// ---------------------------------------------------------------------------------------------
// Signals: SIGINT/SIGTERM are blocked in every thread and taken by one watcher thread, which
// raises a flag every wait of the demo checks. Children start with an empty signal mask.

static STOP: AtomicBool = AtomicBool::new(false);
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The live view prints once the boards are in service.
static LIVE: AtomicBool = AtomicBool::new(false);

fn watch_signals() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| CliError::new(Code::Failure, format!("blocking signals: {e}")))?;
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            STOP_SIGNAL.store(sig as i32, Ordering::SeqCst);
            STOP.store(true, Ordering::SeqCst);
        }
    });
    Ok(())
}

fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

fn interrupted() -> CliError {
    let sig = Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst))
        .map(|s| s.as_str())
        .unwrap_or("a signal");
    CliError::new(
        Code::Failure,
        format!("interrupted by {sig}: every process of the demo was stopped"),
    )
}

/// Sleeps up to `d`, waking early when asked to stop.
fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stopping() {
            return Err(interrupted());
        }
        std::thread::sleep(Duration::from_millis(25).min(end - Instant::now()));
    }
    if stopping() {
        return Err(interrupted());
    }
    Ok(())
}

/// Polls `ready` until it holds; fails with `what` (and `log`) after `timeout`.
fn wait_for(
    what: &str,
    timeout: Duration,
    log: Option<&Path>,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            let tail = log.map(log_tail).unwrap_or_default();
            return Err(CliError::new(
                Code::Failure,
                format!("{what}: not ready within {} s{tail}", timeout.as_secs()),
            ));
        }
        nap(Duration::from_millis(50))?;
    }
    Ok(())
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(12);
    format!(
        "\n  last lines of {}:\n    {}",
        path.display(),
        lines[from..].join("\n    ")
    )
}

// ---------------------------------------------------------------------------------------------
// Child processes. They are started with posix_spawn so that each gets its own process group
// and an empty signal mask with default dispositions (this process blocks SIGINT/SIGTERM).

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by {}", s.as_str()),
        }
    }
}

struct Proc {
    name: String,
    pid: u32,
    alive: bool,
}

/// Every child of the demo, each the leader of its own process group. Dropping it stops and
/// reaps them all, so no process is left behind on any path out of the demo.
#[derive(Default)]
struct Procs(Mutex<Vec<Proc>>);

fn cstring(s: &std::ffi::OsStr) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(s.as_bytes())
        .map_err(|_| CliError::new(Code::Failure, format!("NUL byte in {s:?}")))
}

/// posix_spawn of `cmd` (program, arguments, environment changes) with stdin from /dev/null,
/// stdout and stderr on the given descriptors, in a new process group, signals unblocked.
fn spawn_raw(cmd: &Command, stdout: RawFd, stderr: RawFd) -> Result<u32> {
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
    let fail = |what: &str, e: nix::Error| {
        CliError::new(
            Code::Failure,
            format!("cannot start {:?}: {what}: {e}", cmd.get_program()),
        )
    };
    let path = cstring(cmd.get_program())?;
    let mut argv = vec![path.clone()];
    for a in cmd.get_args() {
        argv.push(cstring(a)?);
    }
    let mut env: BTreeMap<std::ffi::OsString, std::ffi::OsString> = std::env::vars_os().collect();
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => env.insert(k.to_os_string(), v.to_os_string()),
            None => env.remove(k),
        };
    }
    let envp = env
        .into_iter()
        .map(|(mut k, v)| {
            k.push("=");
            k.push(v);
            cstring(&k)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut attr = PosixSpawnAttr::init().map_err(|e| fail("spawn attributes", e))?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(|e| fail("spawn flags", e))?;
    attr.set_pgroup(Pid::from_raw(0))
        .map_err(|e| fail("process group", e))?;
    attr.set_sigmask(&SigSet::empty())
        .map_err(|e| fail("signal mask", e))?;
    let mut defaults = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGPIPE,
        Signal::SIGHUP,
    ] {
        defaults.add(s);
    }
    attr.set_sigdefault(&defaults)
        .map_err(|e| fail("signal dispositions", e))?;
    let mut actions = PosixSpawnFileActions::init().map_err(|e| fail("file actions", e))?;
    actions
        .add_open(
            0,
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| fail("stdin", e))?;
    actions.add_dup2(stdout, 1).map_err(|e| fail("stdout", e))?;
    actions.add_dup2(stderr, 2).map_err(|e| fail("stderr", e))?;
    let pid = posix_spawn(path.as_c_str(), &actions, &attr, &argv, &envp)
        .map_err(|e| fail("posix_spawn", e))?;
    Ok(pid.as_raw() as u32)
}

impl Procs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `cmd` in its own process group with stderr (and stdout unless piped) to `log`.
    fn spawn(&self, name: &str, cmd: Command, log: &Path, pipe_stdout: bool) -> Result<Child0> {
        if stopping() {
            return Err(interrupted());
        }
        let f = std::fs::File::create(log).map_err(|e| crate::exit::io(log, e))?;
        let (pid, stdout) = if pipe_stdout {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| CliError::new(Code::Failure, format!("pipe: {e}")))?;
            let pid = spawn_raw(&cmd, w.as_raw_fd(), f.as_raw_fd())?;
            drop(w);
            (pid, Some(std::fs::File::from(r)))
        } else {
            (spawn_raw(&cmd, f.as_raw_fd(), f.as_raw_fd())?, None)
        };
        self.lock().push(Proc {
            name: name.to_string(),
            pid,
            alive: true,
        });
        Ok(Child0 { pid, stdout })
    }

    /// Reaps the child if it ended: its exit, or None while it runs.
    fn try_reap(list: &mut [Proc], pid: u32) -> Option<Exit> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let p = list.iter_mut().find(|p| p.pid == pid && p.alive)?;
        let exit = match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig),
            Ok(_) => return None,
            // Already reaped (ECHILD): it is gone.
            Err(_) => Exit::Code(-1),
        };
        p.alive = false;
        Some(exit)
    }

    /// Whether the child is still running (reaps it if it ended).
    fn running(&self, pid: u32) -> bool {
        let mut list = self.lock();
        list.iter().any(|p| p.pid == pid && p.alive) && Self::try_reap(&mut list, pid).is_none()
    }

    /// Waits for a child to end by itself, up to `timeout`; then stops it.
    fn wait(&self, pid: u32, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !stopping() {
            if let Some(st) = Self::try_reap(&mut self.lock(), pid) {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop(&[pid], Duration::from_millis(500));
        None
    }

    /// SIGTERM to each child's process group, up to `grace` for them to exit, then SIGKILL;
    /// all reaped. Returns how those that were running ended.
    fn stop(&self, pids: &[u32], grace: Duration) -> Vec<(u32, Option<Exit>)> {
        let mut list = self.lock();
        let mut left: Vec<u32> = list
            .iter()
            .filter(|p| p.alive && pids.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        for pid in &left {
            let _ = kill(Pid::from_raw(-(*pid as i32)), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let mut done = Vec::new();
        loop {
            left.retain(|&pid| match Self::try_reap(&mut list, pid) {
                Some(st) => {
                    // Whatever it left in its group goes too.
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                    done.push((pid, Some(st)));
                    false
                }
                None => true,
            });
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for &pid in &left {
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
                    if let Some(p) = list.iter_mut().find(|p| p.pid == pid) {
                        p.alive = false;
                    }
                    done.push((pid, None));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        done
    }

    fn all_pids(&self) -> Vec<u32> {
        self.lock().iter().map(|p| p.pid).collect()
    }

    fn listing(&self) -> Vec<Value> {
        self.lock()
            .iter()
            .map(|p| json!({ "name": p.name, "pid": p.pid }))
            .collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let pids = self.all_pids();
        self.stop(&pids, Duration::from_secs(3));
    }
}

/// A started child: its pid (= process group) and its stdout when piped.
struct Child0 {
    pid: u32,
    stdout: Option<std::fs::File>,
}

/// Runs a short command to completion (tracked, in its own group), with a timeout.
fn run_short(
    procs: &Procs,
    name: &str,
    cmd: Command,
    log: &Path,
    timeout: Duration,
) -> Result<(Exit, String)> {
    let mut c = procs.spawn(name, cmd, log, true)?;
    let mut out = String::new();
    let reader = c.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut t = String::new();
            let _ = s.read_to_string(&mut t);
            t
        })
    });
    let st = procs.wait(c.pid, timeout);
    if let Some(r) = reader
        && let Ok(t) = r.join()
    {
        out = t;
    }
    if stopping() {
        return Err(interrupted());
    }
    let st = st.ok_or_else(|| {
        CliError::new(
            Code::Failure,
            format!("{name}: no result within {} s", timeout.as_secs()),
        )
    })?;
    Ok((st, out))
}

// ---------------------------------------------------------------------------------------------
// The demo directory.

/// The demo's directory: removed on drop unless kept.
struct Workdir {
    root: PathBuf,
    keep: bool,
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)
        .map_err(|e| CliError::new(Code::Failure, format!("system RNG: {e}")))?;
    Ok(hex::encode(b))
}

/// `--home` when it was given on the command line (not the default, not the environment).
fn explicit_home() -> bool {
    std::env::args_os().any(|a| a == "--home" || a.to_string_lossy().starts_with("--home="))
}

fn workdir(ctx: &Context, keep: bool) -> Result<Workdir> {
    if explicit_home() {
        let home = ctx.layout.home.clone();
        let empty = match std::fs::read_dir(&home) {
            Ok(mut d) => d.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(crate::exit::io(&home, e)),
        };
        if !empty {
            return Err(CliError::new(
                Code::State,
                format!("{} is not empty: the demo needs a fresh home", home.display()),
            )
            .with_help("give an empty or new directory to --home, or leave --home out to use a temporary one"));
        }
        ca::fsutil::private_dir(&home)?;
        let root = home.canonicalize().map_err(|e| crate::exit::io(&home, e))?;
        return Ok(Workdir { root, keep: true });
    }
    let root = std::env::temp_dir().join(format!(
        "provisioner-demo-{}-{}",
        std::process::id(),
        random_hex(4)?
    ));
    ca::fsutil::private_dir(&root)?;
    Ok(Workdir { root, keep })
}

fn find_program(name: &str, extra_dirs: &[PathBuf], help: &str) -> Result<PathBuf> {
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    extra_dirs
        .iter()
        .cloned()
        .chain(path_dirs)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CliError::new(Code::State, format!("`{name}` is not installed")).with_help(help)
        })
}

fn free_tcp_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::new(Code::Failure, format!("no free TCP port: {e}")))
}

fn free_udp_port() -> Result<u16> {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| CliError::new(Code::Failure, format!("no free UDP port: {e}")))
}

fn listening(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

// ---------------------------------------------------------------------------------------------
// The house.

/// One simulated sensor of the demo.
#[derive(Debug, Clone)]
struct Sensor {
    id: String,
    room: String,
    profile: String,
    link: PathBuf,
    state: PathBuf,
}

/// Rooms and profiles in turn: the first six cover QoS 0, 1 and 2, a retained status topic
/// with a last will, a short keep-alive, clean and persistent sessions.
const HOUSE: [(&str, &str); 6] = [
    ("chambre_1", "climat"),
    ("salon", "luminosite"),
    ("cuisine", "thermometre"),
    ("garage", "porte"),
    ("chambre_2", "climat"),
    ("bureau", "thermometre"),
];

/// Base intervals (s) of the demo's profiles: faster than a real house, so a short demo shows
/// traffic. Scaled up with the number of sensors to stay inside the LoRa duty-cycle budget.
fn base_interval(profile: &str) -> u32 {
    match profile {
        "climat" => 6,
        "luminosite" => 5,
        "thermometre" => 3,
        "porte" => 2,
        _ => 10,
    }
}

/// Records the demo lets through the link during the live phase: at about 0.2 s of airtime
/// each (SF7, 125 kHz, one or two readings per frame), half of the 36 s an hour that the
/// 1 % sub-band allows.
const RECORD_BUDGET: f64 = 90.0;

/// The demo's site: the example house with the broker on 127.0.0.1 and paced profiles.
fn demo_site(near_port: u16, sensors: &[Sensor], duration_s: u64) -> Result<(Site, f64)> {
    let mut site = Site::from_toml_str("smart-home.toml", manifests::site::EXAMPLE_SMART_HOME)?;
    site.broker.dns = vec!["localhost".into()];
    site.broker.ip = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    site.broker.port = near_port;
    site.broker.connect = Some("127.0.0.1".into());
    // Records per second at the base intervals, plus each reading's first one.
    let mut rate = 0.0;
    let mut first = 0.0;
    for s in sensors {
        let p = site
            .profile(&s.profile)
            .map_err(|e| CliError::new(Code::Input, e))?;
        let n = p.readings.len() as f64;
        rate += n / f64::from(base_interval(&s.profile));
        first += n + f64::from(u8::from(p.status_topic.is_some()));
    }
    let wanted = rate * duration_s as f64;
    let room = (RECORD_BUDGET - first).max(RECORD_BUDGET / 4.0);
    let scale = (wanted / room).max(1.0);
    for (name, p) in site.profiles.iter_mut() {
        p.interval_s = (f64::from(base_interval(name)) * scale).ceil() as u32;
        if name == "climat" {
            // Idle longer than the keep-alive between readings: PINGREQ/PINGRESP show.
            p.keep_alive_s = 5;
            p.interval_s = p.interval_s.max(6);
        }
    }
    Ok((site, scale))
}

fn features(site: &Site, profile: &str) -> Vec<String> {
    let Ok(p) = site.profile(profile) else {
        return vec![];
    };
    let mut f = vec![format!("QoS {}", p.qos)];
    if p.retain {
        f.push("retained readings".into());
    }
    if p.status_topic.is_some() {
        f.push("retained status topic + last will".into());
    }
    f.push(format!("keep-alive {} s", p.keep_alive_s));
    f.push(if p.clean_session {
        "clean session".into()
    } else {
        "persistent session".into()
    });
    f
}

// ---------------------------------------------------------------------------------------------
// Watching the brokers.

/// What a monitor saw on one topic.
#[derive(Debug, Default, Clone)]
struct TopicSeen {
    qos: u8,
    /// (device, payload) of the JSON readings, de-duplicated (a QoS 1 message may arrive
    /// twice; a board's sequence number restarts when it reboots, its timestamp does not).
    readings: BTreeSet<(String, String)>,
    /// Other payloads (the status topic's online/offline), counted.
    other: u64,
    /// Readings seen again (QoS 1 redelivery): counted here, never as delivered.
    dupes: u64,
    last: String,
}

#[derive(Debug, Default)]
struct Seen {
    topics: BTreeMap<String, TopicSeen>,
    messages: u64,
    intrusions: Vec<String>,
    subscribed: bool,
}

type Shared2 = Arc<Mutex<Seen>>;

/// Published on Pi #1 vs delivered on Pi #2, topic by topic: delivered counts only messages
/// published in service that arrived (once each), so it never exceeds published.
#[derive(Debug, Default)]
struct Counts {
    published: u64,
    delivered: u64,
    /// QoS 1/2 messages published and not delivered.
    missing: u64,
    /// Distinct messages on Pi #2 that Pi #1 saw before the service window (the boards'
    /// first readings after provisioning, still crossing the link) or never.
    earlier: u64,
    /// Readings Pi #2 delivered more than once.
    dupes: u64,
    by_qos: BTreeMap<u8, (u64, u64)>,
    per_topic: Vec<Value>,
}

impl Counts {
    fn of(near: &Seen, far: &Seen) -> Counts {
        let mut c = Counts::default();
        for (topic, t) in &near.topics {
            let f = far.topics.get(topic).cloned().unwrap_or_default();
            let published = t.readings.len() as u64 + t.other;
            let delivered =
                t.readings.intersection(&f.readings).count() as u64 + f.other.min(t.other);
            let e = c.by_qos.entry(t.qos).or_default();
            e.0 += published;
            e.1 += delivered;
            if t.qos >= 1 {
                c.missing += published - delivered;
            }
            c.published += published;
            c.delivered += delivered;
            c.per_topic.push(
                json!({ "topic": topic, "qos": t.qos, "published": published,
                "delivered": delivered, "duplicates": f.dupes, "last": t.last }),
            );
        }
        for (topic, f) in &far.topics {
            c.dupes += f.dupes;
            let t = near.topics.get(topic).cloned().unwrap_or_default();
            c.earlier +=
                f.readings.difference(&t.readings).count() as u64 + f.other.saturating_sub(t.other);
        }
        c
    }
}

fn lock(s: &Shared2) -> std::sync::MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A parsed `M qos retain topic payload` line of mosquitto_sub.
struct Line<'a> {
    qos: u8,
    topic: &'a str,
    payload: &'a str,
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let rest = line.strip_prefix("M ")?;
    let mut it = rest.splitn(4, ' ');
    let qos = it.next()?.parse().ok()?;
    let _retain = it.next()?;
    let topic = it.next()?;
    let payload = it.next().unwrap_or("");
    Some(Line {
        qos,
        topic,
        payload,
    })
}

/// Human form of a reading: `21.4 °C  (salon-1 #3)`.
fn describe(payload: &str) -> String {
    match serde_json::from_str::<Value>(payload) {
        Ok(v) if v.get("device").is_some() => {
            let what = match (v.get("value"), v.get("state")) {
                (Some(val), _) => format!(
                    "{val} {}",
                    v.get("unit").and_then(Value::as_str).unwrap_or("")
                ),
                (None, Some(s)) => s.as_str().unwrap_or("?").to_string(),
                _ => payload.to_string(),
            };
            format!(
                "{what:<10} ({} #{})",
                v["device"].as_str().unwrap_or("?"),
                v.get("seq").and_then(Value::as_u64).unwrap_or(0)
            )
        }
        _ => payload.chars().take(40).collect(),
    }
}

/// Reads a monitor's output into `seen`; `live` prints the far side's readings on stderr.
fn monitor_thread(
    stdout: std::fs::File,
    seen: Shared2,
    live: Option<(Instant, usize)>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut printed_this_second = 0usize;
        let mut second = 0u64;
        let mut skipped = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("received SUBACK") {
                lock(&seen).subscribed = true;
                continue;
            }
            let Some(m) = parse_line(&line) else {
                continue;
            };
            {
                let mut s = lock(&seen);
                s.messages += 1;
                if m.payload.contains("intrusion") {
                    s.intrusions.push(format!("{} {}", m.topic, m.payload));
                }
                // A board starts its application as soon as it is provisioned and may publish
                // while the monitors are still subscribing: such a message reaches one side
                // live and the other as a retained copy, or not at all. Published / delivered
                // are counted from the reboot into service on, when both monitors listen.
                if !LIVE.load(Ordering::SeqCst) {
                    continue;
                }
                let t = s.topics.entry(m.topic.to_string()).or_default();
                t.qos = t.qos.max(m.qos);
                t.last = m.payload.to_string();
                match serde_json::from_str::<Value>(m.payload) {
                    Ok(v) if v.get("seq").is_some() => {
                        let fresh = t.readings.insert((
                            v["device"].as_str().unwrap_or("").to_string(),
                            m.payload.to_string(),
                        ));
                        if !fresh {
                            t.dupes += 1;
                        }
                    }
                    _ => t.other += 1,
                }
            }
            if let Some((start, per_second)) = live.filter(|_| LIVE.load(Ordering::SeqCst)) {
                let now = start.elapsed().as_secs();
                if now != second {
                    if skipped > 0 {
                        eprintln!("           … and {skipped} more");
                    }
                    second = now;
                    printed_this_second = 0;
                    skipped = 0;
                }
                if printed_this_second < per_second {
                    printed_this_second += 1;
                    eprintln!(
                        "  {:>6.1}s  far side  {:<30} {}",
                        start.elapsed().as_secs_f64(),
                        m.topic,
                        describe(m.payload)
                    );
                } else {
                    skipped += 1;
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Progress of the provisioning.

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

// ---------------------------------------------------------------------------------------------

static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

/// What is known so far, for the summary printed when the demo is interrupted.
static PARTIAL: Mutex<BTreeMap<String, Value>> = Mutex::new(BTreeMap::new());
/// Both monitors' observations, once they run.
static MONITORS: std::sync::OnceLock<(Shared2, Shared2)> = std::sync::OnceLock::new();

fn partial(key: &str, v: Value) {
    PARTIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.to_string(), v);
}

/// The summary of an interrupted demo: the steps reached, the devices, the messages counted
/// so far (same rules as the full summary), every process (all stopped by now).
fn interrupted_summary(procs: &Procs, started: Instant) -> Value {
    let mut m: serde_json::Map<String, Value> = PARTIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .into_iter()
        .collect();
    let sig = Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst))
        .map(|s| s.as_str())
        .unwrap_or("a signal");
    m.insert("ok".into(), json!(false));
    m.insert("interrupted".into(), json!(true));
    m.insert("signal".into(), json!(sig));
    if let Some((near, far)) = MONITORS.get() {
        let c = Counts::of(&lock(near), &lock(far));
        m.insert(
            "messages".into(),
            json!({ "published": c.published, "delivered": c.delivered,
                    "qos12_missing": c.missing, "arrived_from_before_service": c.earlier,
                    "duplicates": c.dupes, "per_topic": c.per_topic }),
        );
    }
    m.insert("processes".into(), json!(procs.listing()));
    m.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
    Value::Object(m)
}

fn step(n: u32, text: &str) {
    let t = START.get_or_init(Instant::now).elapsed().as_secs_f64();
    partial("step", json!({ "number": n, "title": text }));
    eprintln!("\n\x1b[1m== {n}. {text}\x1b[0m  [{t:.1} s]");
}

fn note(text: &str) {
    eprintln!("   {text}");
}

/// The identity running the demo (mosquitto's `user`).
fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into())
}

/// A client certificate and key issued by `authority` for the demo's own tools.
fn issue_client(
    authority: &mut ca::Authority,
    site: &Site,
    id: &str,
    read: Vec<String>,
    write: Vec<String>,
    dir: &Path,
) -> Result<(PathBuf, PathBuf)> {
    let key = ca::keys::generate()?;
    let public_key = ca::PublicKey::from_sec1(key.public_key_raw())?;
    let identity = ca::ledger::IdentityRecord {
        id: id.to_string(),
        kind: "client".into(),
        profile: "client".into(),
        acl_write: write,
        acl_read: read,
        attrs: Default::default(),
        status: "active".into(),
    };
    let request_id = ca::authority::request_id(&[b"demo", id.as_bytes(), public_key.0.as_slice()]);
    let issued = authority.issue(ca::IssueRequest {
        profile: ca::Profile::Client,
        subject: ca::Subject {
            common_name: id.to_string(),
            organization: site.site.organization.clone(),
            dns: vec![],
            ips: vec![],
            serial_number: None,
        },
        public_key,
        request_id,
        days: 2,
        identity: Some(identity),
    })?;
    let crt = dir.join(format!("{id}.crt"));
    let keyf = dir.join(format!("{id}.key"));
    ca::fsutil::write_atomic(
        &crt,
        format!("{}{}", issued.pem, authority.store.chain_pem()?).as_bytes(),
        0o644,
    )?;
    ca::fsutil::write_atomic(&keyf, Zeroizing::new(key.serialize_pem()).as_bytes(), 0o600)?;
    Ok((crt, keyf))
}

/// One intrusion attempt and what became of it.
#[derive(Debug, Clone)]
struct Intrusion {
    who: String,
    attempt: String,
    refused: bool,
    evidence: String,
}

fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .take(120)
        .collect()
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

#[allow(clippy::too_many_lines)]
fn demo(
    ctx: &Context,
    args: &Args,
    procs: &Procs,
    dir: &Workdir,
    started: Instant,
) -> Result<Value> {
    let root = dir.root.as_path();
    let exe = std::env::current_exe()
        .map_err(|e| CliError::new(Code::Failure, format!("own executable: {e}")))?;
    let bin_dir = exe
        .parent()
        .map(Path::to_path_buf)
        .into_iter()
        .collect::<Vec<_>>();
    let build_help = "build them next to provisioner: cargo build --release -p provisioner -p gateway -p lora-link";
    let gateway_bin = find_program("gateway", &bin_dir, build_help)?;
    let lora_bin = find_program("lora-link", &bin_dir, build_help)?;
    let apt = "install it: apt-get install mosquitto mosquitto-clients (./scripts/main.sh does)";
    let mosquitto_bin = find_program("mosquitto", &[], apt)?;
    let sub_bin = find_program("mosquitto_sub", &[], apt)?;
    let pub_bin = find_program("mosquitto_pub", &[], apt)?;

    let explicit = explicit_home();
    let home = if explicit {
        root.to_path_buf()
    } else {
        root.join("home")
    };
    let work = if explicit {
        root.join("demo")
    } else {
        root.to_path_buf()
    };
    let logs = work.join("logs");
    let links = work.join("dev");
    for d in [&work, &logs, &links] {
        ca::fsutil::private_dir(d)?;
    }
    let passphrase = Zeroizing::new(format!("demo-{}", random_hex(24)?));
    if dir.keep {
        // A kept home is of use only with its passphrase: in a private file, never shown.
        let file = work.join("passphrase");
        ca::fsutil::write_atomic(&file, passphrase.as_bytes(), 0o600)?;
        partial("passphrase_file", json!(file));
    }
    let me = |args: &[&str]| {
        let mut c = Command::new(&exe);
        c.arg("--home").arg(&home).args(args);
        c.env(PASSPHRASE_ENV, passphrase.as_str());
        c.env_remove("PROVISIONER_HOME");
        c
    };
    let run_me = |name: &str, a: &[&str], timeout: u64| -> Result<String> {
        let log = logs.join(format!("{}.log", name.replace(' ', "-")));
        let (st, out) = run_short(procs, name, me(a), &log, Duration::from_secs(timeout))?;
        if !st.success() {
            return Err(CliError::new(
                Code::Failure,
                format!("provisioner {name} failed ({st}){}", log_tail(&log)),
            ));
        }
        Ok(out)
    };

    let n = usize::from(args.sensors);
    let sensors: Vec<Sensor> = (0..n)
        .map(|i| {
            let (room, profile) = HOUSE[i % HOUSE.len()];
            let id = format!("{room}-{}", i / HOUSE.len() + 1);
            Sensor {
                link: links.join(format!("ttyUSB{i}")),
                state: work.join("boards").join(format!("{id}.chip")),
                id,
                room: room.into(),
                profile: profile.into(),
            }
        })
        .collect();
    ca::fsutil::private_dir(&work.join("boards"))?;
    let (near_port, far_port, air_port) = (free_tcp_port()?, free_tcp_port()?, free_udp_port()?);
    let (site, scale) = demo_site(near_port, &sensors, args.duration)?;
    partial(
        "ports",
        json!({ "broker_pi1_tcp": near_port, "broker_pi2_tcp": far_port, "air_udp": air_port }),
    );
    partial("home", json!(home));
    let site_file = work.join("site.toml");
    ca::fsutil::write_atomic(&site_file, site.to_toml()?.as_bytes(), 0o644)?;

    eprintln!(
        "\x1b[1mprovisioner demo\x1b[0m: {n} sensor(s), {} s of traffic, in {}",
        args.duration,
        root.display()
    );
    step(
        1,
        "A CA for the house (random demo passphrase, never shown)",
    );
    run_me(
        "init",
        &["init", "--site", &site_file.to_string_lossy()],
        60,
    )?;
    note(&format!(
        "home {}: EC P-256 root CA, ledger, site file",
        home.display()
    ));
    step(2, "The broker's certificate (SAN: localhost, 127.0.0.1)");
    run_me(
        "server issue",
        &["server", "issue", "--dns", "localhost", "--ip", "127.0.0.1"],
        60,
    )?;
    note("server profile: serverAuth, SAN DNS localhost + IP 127.0.0.1");

    step(
        3,
        &format!("{n} blank boards on their serial ports (simulated ESP8266 + ATECC508A)"),
    );
    let mut boards = Vec::new();
    for s in &sensors {
        let mut c = Command::new(&exe);
        c.arg("sim-board")
            .arg("--link")
            .arg(&s.link)
            .arg("--state")
            .arg(&s.state)
            .arg("--baud")
            .arg(args.baud.to_string());
        let log = logs.join(format!("board-{}.log", s.id));
        let child = procs.spawn(&format!("board {}", s.id), c, &log, false)?;
        boards.push(child.pid);
    }
    for (s, pid) in sensors.iter().zip(&boards) {
        let log = logs.join(format!("board-{}.log", s.id));
        wait_for(
            &format!("board {} on {}", s.id, s.link.display()),
            Duration::from_secs(20),
            Some(&log),
            || s.link.exists() || !procs.running(*pid),
        )?;
        if !procs.running(*pid) {
            return Err(CliError::new(
                Code::Failure,
                format!("board {} stopped{}", s.id, log_tail(&log)),
            ));
        }
    }
    note(&format!(
        "{n} pseudo-terminals in {} ({} baud)",
        links.display(),
        args.baud
    ));

    step(
        4,
        "Provisioning every board in parallel over its serial link (kit protocol)",
    );
    let layout = ca::Layout::new(home.clone());
    let authority = {
        let pass = ca::Passphrase::new(passphrase.to_string());
        Mutex::new(ca::Authority::open(&layout, &pass)?)
    };
    let prov_started = Instant::now();
    let outcomes = provision_all(
        &sensors,
        &site,
        &home,
        &authority,
        args.baud,
        ctx.json,
        (procs, &boards),
    )?;
    let prov_s = prov_started.elapsed().as_secs_f64();
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
        "{n} device(s) provisioned in {prov_s:.1} s: chip zones locked, key generated in the chip, certificate and device.toml written"
    ));
    partial(
        "devices",
        json!({ "requested": n, "provisioned": n, "provisioning_seconds": prov_s,
                "list": sensors.iter().zip(&outcomes).map(|(s, (_, r))| json!({
                    "id": s.id, "profile": s.profile,
                    "certificate": r.as_ref().ok().and_then(|o| o.certificate.clone()) }))
                .collect::<Vec<_>>() }),
    );

    step(
        5,
        "Gateway, receiver and the demo's own clients; both brokers' configuration",
    );
    let gw_dir = work.join("pi1-passerelle");
    let rx_dir = work.join("pi2-recepteur");
    let air = format!("127.0.0.1:{air_port}");
    run_me(
        "emit gateway",
        &[
            "emit",
            "gateway",
            "passerelle",
            "--out",
            &gw_dir.to_string_lossy(),
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            &near_port.to_string(),
            "--air",
            &air,
        ],
        60,
    )?;
    run_me(
        "emit receiver",
        &[
            "emit",
            "receiver",
            "recepteur",
            "--out",
            &rx_dir.to_string_lossy(),
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            &far_port.to_string(),
            "--air",
            &air,
        ],
        60,
    )?;
    let clients = work.join("clients");
    ca::fsutil::private_dir(&clients)?;
    let (monitor_crt, monitor_key, intruder_crt, intruder_key) = {
        let mut a = authority
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (mc, mk) = issue_client(
            &mut a,
            &site,
            "moniteur",
            vec!["maison/#".into()],
            vec![],
            &clients,
        )?;
        let (ic, ik) = issue_client(
            &mut a,
            &site,
            "intrus-salon",
            vec![],
            vec!["maison/salon/temperature".into()],
            &clients,
        )?;
        (mc, mk, ic, ik)
    };
    drop(authority);
    let user = current_user();
    let near_dir = work.join("pi1-mosquitto");
    let far_dir = work.join("pi2-mosquitto");
    for (name, d, port) in [
        ("emit broker pi1", &near_dir, near_port),
        ("emit broker pi2", &far_dir, far_port),
    ] {
        run_me(
            name,
            &[
                "emit",
                "broker",
                "--out",
                &d.to_string_lossy(),
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--run-as",
                &user,
            ],
            60,
        )?;
    }
    note("gateway `passerelle` reads maison/#; receiver `recepteur` republishes it on Pi #2");
    note("ACL: each device may write only its own topics; `moniteur` reads maison/#");

    step(
        6,
        "Pi #1 and Pi #2: mosquitto (mTLS + ACL + CRL), the LoRa air, lora-link rx, gateway",
    );
    let start_broker = |name: &str, d: &Path, port: u16| -> Result<u32> {
        let log = logs.join(format!("{name}.log"));
        let mut c = Command::new(&mosquitto_bin);
        c.arg("-c").arg(d.join("mosquitto.conf"));
        let p = procs.spawn(name, c, &log, false)?;
        wait_for(
            &format!("{name} on 127.0.0.1:{port}"),
            Duration::from_secs(10),
            Some(&log),
            || listening(port) || !procs.running(p.pid),
        )?;
        if !procs.running(p.pid) {
            return Err(CliError::new(
                Code::Failure,
                format!("{name} stopped{}", log_tail(&log)),
            ));
        }
        Ok(p.pid)
    };
    let near_pid = start_broker("mosquitto-pi1", &near_dir, near_port)?;
    let far_pid = start_broker("mosquitto-pi2", &far_dir, far_port)?;
    note(&format!(
        "mosquitto Pi #1 on 127.0.0.1:{near_port}, Pi #2 on 127.0.0.1:{far_port}"
    ));
    let air_log = logs.join("air.log");
    let air_record = work.join("air.jsonl");
    let mut c = Command::new(&lora_bin);
    c.args(["air", "--listen", &air, "--record"])
        .arg(&air_record);
    let air_pid = procs.spawn("lora-link air", c, &air_log, false)?.pid;
    wait_for(
        "lora-link air",
        Duration::from_secs(10),
        Some(&air_log),
        || std::fs::read_to_string(&air_log).is_ok_and(|t| t.contains("listening on")),
    )?;
    let rx_log = logs.join("lora-link-rx.log");
    let mut c = Command::new(&lora_bin);
    c.arg("rx")
        .arg("--manifest")
        .arg(rx_dir.join("receiver.toml"));
    let rx_pid = procs.spawn("lora-link rx", c, &rx_log, true)?.pid;
    wait_for(
        "lora-link rx connected to Pi #2's broker",
        Duration::from_secs(15),
        Some(&rx_log),
        || std::fs::read_to_string(&rx_log).is_ok_and(|t| t.contains("connected to the broker")),
    )?;
    let gw_log = logs.join("gateway.log");
    let mut c = Command::new(&gateway_bin);
    c.arg("--manifest").arg(gw_dir.join("gateway.toml"));
    let mut gw = procs.spawn("gateway", c, &gw_log, true)?;
    let gw_pid = gw.pid;
    let gw_stdout = gw.stdout.take();
    wait_for(
        "gateway subscribed on Pi #1",
        Duration::from_secs(15),
        Some(&gw_log),
        || std::fs::read_to_string(&gw_log).is_ok_and(|t| t.contains("subscribed to maison/#")),
    )?;
    note(&format!(
        "LoRa air on udp {air} (868.0 MHz, SF7, 125 kHz); gateway -> node recepteur"
    ));

    // Monitors: `moniteur` on both brokers, QoS 2, so nothing the brokers accept is missed.
    let near_seen: Shared2 = Arc::default();
    let far_seen: Shared2 = Arc::default();
    let _ = MONITORS.set((near_seen.clone(), far_seen.clone()));
    let live_start = Instant::now();
    let per_second = if n <= 8 { 6 } else { 3 };
    let monitor = |name: &str,
                   port: u16,
                   cafile: PathBuf,
                   seen: &Shared2,
                   live: Option<(Instant, usize)>|
     -> Result<(u32, std::thread::JoinHandle<()>)> {
        let mut c = Command::new(&sub_bin);
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "2", "-d"])
            .args(["-i", name, "-t", "maison/#", "-F", "M %q %r %t %p"])
            .arg("--cafile")
            .arg(cafile)
            .arg("--cert")
            .arg(&monitor_crt)
            .arg("--key")
            .arg(&monitor_key);
        let log = logs.join(format!("{name}.log"));
        let mut ch = procs.spawn(name, c, &log, true)?;
        let out = ch
            .stdout
            .take()
            .ok_or_else(|| CliError::new(Code::Failure, "monitor without stdout"))?;
        let t = monitor_thread(out, seen.clone(), live);
        let s = seen.clone();
        wait_for(name, Duration::from_secs(10), Some(&log), || {
            lock(&s).subscribed
        })?;
        Ok((ch.pid, t))
    };
    let (near_mon, near_thread) = monitor(
        "moniteur-pi1",
        near_port,
        near_dir.join("ca.crt"),
        &near_seen,
        None,
    )?;
    let (far_mon, far_thread) = monitor(
        "moniteur-pi2",
        far_port,
        far_dir.join("ca.crt"),
        &far_seen,
        Some((live_start, per_second)),
    )?;

    step(
        7,
        &format!(
            "The boards go into service (reboot) — live view of the far side for {} s",
            args.duration
        ),
    );
    LIVE.store(true, Ordering::SeqCst);
    for s in &sensors {
        reboot(&s.link, args.baud)?;
    }
    if scale > 1.0 {
        note(&format!(
            "intervals x{scale:.1} so {n} sensors stay inside the LoRa duty-cycle budget"
        ));
    }
    let intervals: Vec<u32> = sensors
        .iter()
        .filter_map(|s| site.profile(&s.profile).ok().map(|p| p.interval_s.max(1)))
        .collect();
    note(&schedule_note(&intervals, args.duration));

    // Intrusions, a few seconds into the traffic.
    let live_end = Instant::now() + Duration::from_secs(args.duration);
    nap(Duration::from_secs(args.duration.min(4)))?;
    let near_ca = near_dir.join("ca.crt");
    let mut intrusions = Vec::new();
    let tls_pub =
        |extra: &[&str], cert: Option<(&Path, &Path)>, name: &str| -> Result<(bool, String)> {
            let mut c = Command::new(&pub_bin);
            c.args(["-h", "127.0.0.1", "-p", &near_port.to_string()])
                .arg("--cafile")
                .arg(&near_ca)
                .args(extra);
            if let Some((crt, key)) = cert {
                c.arg("--cert").arg(crt).arg("--key").arg(key);
            }
            let log = logs.join(format!("{name}.log"));
            let (st, _) = run_short(procs, name, c, &log, Duration::from_secs(15))?;
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok((st.success(), text))
        };
    // 1. No certificate at all.
    let (ok, text) = tls_pub(
        &[
            "-i",
            "intrus-sans-certificat",
            "-q",
            "1",
            "-t",
            "maison/garage/porte",
            "-m",
            "{\"state\":\"open\",\"intrusion\":\"no certificate\"}",
        ],
        None,
        "intrusion-no-cert",
    )?;
    intrusions.push(Intrusion {
        who: "a client without a certificate".into(),
        attempt: "connect to Pi #1 and open the garage door (maison/garage/porte)".into(),
        refused: !ok,
        evidence: if ok {
            "accepted".into()
        } else {
            format!("TLS handshake refused: {}", first_line(&text))
        },
    });
    // 2. A certificate from another CA, with a real device's name.
    let rogue = work.join("rogue-ca");
    let (rogue_crt, rogue_key) = {
        let layout = ca::Layout::new(rogue.clone());
        let pass = ca::Passphrase::new(format!("rogue-{}", random_hex(16)?));
        ca::Authority::init(
            &layout,
            &ca::InitOptions {
                name: "Rogue Root CA".into(),
                organization: None,
                issuing_ca: false,
            },
            &pass,
        )?;
        let mut a = ca::Authority::open(&layout, &pass)?;
        issue_client(
            &mut a,
            &site,
            "garage-1",
            vec![],
            vec!["maison/#".into()],
            &rogue,
        )?
    };
    let (ok, text) = tls_pub(
        &[
            "-i",
            "garage-1-rogue",
            "-q",
            "1",
            "-t",
            "maison/garage/porte",
            "-m",
            "{\"state\":\"open\",\"intrusion\":\"rogue CA\"}",
        ],
        Some((&rogue_crt, &rogue_key)),
        "intrusion-rogue-ca",
    )?;
    intrusions.push(Intrusion {
        who: "`garage-1` with a certificate from another CA".into(),
        attempt: "impersonate the door sensor".into(),
        refused: !ok,
        evidence: if ok {
            "accepted".into()
        } else {
            format!("TLS handshake refused: {}", first_line(&text))
        },
    });
    // 3. A certified client writing outside its topics (MQTT 5 so the broker says why).
    let (_, text) = tls_pub(
        &[
            "-V",
            "mqttv5",
            "-i",
            "intrus-salon",
            "-q",
            "1",
            "-t",
            "maison/garage/porte",
            "-m",
            "{\"device\":\"intrus-salon\",\"state\":\"open\",\"seq\":1,\"intrusion\":\"outside its topic\"}",
        ],
        Some((&intruder_crt, &intruder_key)),
        "intrusion-outside-topic",
    )?;
    let outside_text = first_line(&text);
    // 4 and 5. A replayed and a forged LoRa frame, recorded on the air.
    wait_for(
        "a first LoRa frame on the air",
        Duration::from_secs(20),
        Some(&gw_log),
        || std::fs::read_to_string(&air_record).is_ok_and(|t| t.contains("\"hex\"")),
    )?;
    let frames = std::fs::read_to_string(&air_record).unwrap_or_default();
    let recorded: Vec<&str> = frames.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut lora_attempts = Vec::new();
    if let Some(first) = recorded.first() {
        let replay = work.join("replay.jsonl");
        std::fs::write(&replay, format!("{first}\n")).map_err(|e| crate::exit::io(&replay, e))?;
        let mut forged: Value = serde_json::from_str(first).unwrap_or(Value::Null);
        if let Some(h) = forged.get("hex").and_then(Value::as_str) {
            let mut bytes = hex::decode(h).unwrap_or_default();
            if bytes.len() > 9 {
                // Open the door: flip ciphertext bits; the MIC no longer matches.
                bytes[9] ^= 0x5a;
            }
            forged["hex"] = Value::String(hex::encode(bytes));
        }
        let forged_file = work.join("forged.jsonl");
        std::fs::write(&forged_file, format!("{forged}\n"))
            .map_err(|e| crate::exit::io(&forged_file, e))?;
        // The gateway may be on the air at that moment: a frame that collides with one of its
        // frames is lost before the receiver can check it (as on real radios). Each intrusion
        // is sent again, up to three times, until the receiver has logged its rejection.
        let rejections = |reasons: &[&str]| {
            let text = std::fs::read_to_string(&rx_log).unwrap_or_default();
            reasons
                .iter()
                .map(|r| text.matches(&format!("\"rejected\":\"{r}\"")).count())
                .sum::<usize>()
        };
        for (name, file, reason) in [
            ("replay", replay, &["replay", "duplicate"][..]),
            ("forged", forged_file, &["bad_mic"][..]),
        ] {
            let before = rejections(reason);
            let mut injected = false;
            for attempt in 1..=3 {
                let mut c = Command::new(&lora_bin);
                c.args(["inject", "--hub", &air, "--file"]).arg(&file);
                let log = logs.join(format!("intrusion-lora-{name}-{attempt}.log"));
                let (st, _) =
                    run_short(procs, "lora-link inject", c, &log, Duration::from_secs(10))?;
                injected |= st.success();
                let deadline = Instant::now() + Duration::from_secs(2);
                while rejections(reason) == before && Instant::now() < deadline {
                    nap(Duration::from_millis(50))?;
                }
                if rejections(reason) > before {
                    break;
                }
            }
            lora_attempts.push((name, injected));
        }
    }

    // The rest of the live phase; a quiet stretch says when the next reading is due.
    let mut last_seen = (lock(&far_seen).messages, Instant::now());
    let mut told = false;
    while Instant::now() < live_end {
        nap(Duration::from_millis(200).min(live_end.saturating_duration_since(Instant::now())))?;
        let now_seen = lock(&far_seen).messages;
        if now_seen != last_seen.0 {
            last_seen = (now_seen, Instant::now());
            told = false;
        } else if !told && last_seen.1.elapsed() >= QUIET {
            told = true;
            let t = live_start.elapsed().as_secs_f64();
            eprintln!(
                "  {t:>6.1}s  quiet     {}",
                quiet_line(&intervals, t, args.duration)
            );
        }
    }

    step(
        8,
        "Stopping: boards first, then the link drains, then the daemons",
    );
    procs.stop(&boards, Duration::from_secs(5));
    // The brokers publish the door sensors' last will (status offline).
    nap(Duration::from_millis(500))?;
    let drained = |near: &Seen, far: &Seen| -> bool {
        near.topics
            .iter()
            .filter(|(_, t)| t.qos >= 1)
            .all(|(topic, t)| {
                far.topics
                    .get(topic)
                    .is_some_and(|f| t.readings.is_subset(&f.readings) && f.other >= t.other)
            })
    };
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs(30);
    loop {
        let done = {
            let (a, b) = (lock(&near_seen), lock(&far_seen));
            drained(&a, &b)
        };
        if done || Instant::now() > drain_deadline || !procs.running(gw_pid) {
            break;
        }
        nap(Duration::from_millis(100))?;
    }
    note(&format!(
        "link drained in {:.1} s",
        drain_started.elapsed().as_secs_f64()
    ));
    procs.stop(&[gw_pid], Duration::from_secs(15));
    let mut gw_out = String::new();
    if let Some(mut s) = gw_stdout {
        let _ = s.read_to_string(&mut gw_out);
    }
    let gateway: Value = gw_out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    procs.stop(&[rx_pid], Duration::from_secs(10));
    let receiver: Value = std::fs::read_to_string(&rx_log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("records").is_some())
        })
        .unwrap_or(Value::Null);
    procs.stop(&[near_mon, far_mon], Duration::from_secs(3));
    let _ = near_thread.join();
    let _ = far_thread.join();
    procs.stop(&[near_pid, far_pid, air_pid], Duration::from_secs(5));

    // -----------------------------------------------------------------------------------------
    // The summary.
    let near = lock(&near_seen);
    let far = lock(&far_seen);
    let outside_delivered = near
        .intrusions
        .iter()
        .chain(&far.intrusions)
        .any(|m| m.contains("outside its topic"));
    intrusions.push(Intrusion {
        who: "`intrus-salon`, certified to write maison/salon/temperature only".into(),
        attempt: "open the garage door (maison/garage/porte)".into(),
        refused: !outside_delivered,
        evidence: if outside_delivered {
            "delivered".into()
        } else if outside_text.is_empty() {
            "the ACL dropped it: no subscriber on Pi #1 or Pi #2 ever saw it".into()
        } else {
            format!("{outside_text}; no subscriber on Pi #1 or Pi #2 ever saw it")
        },
    });
    let rejected = |reason: &str| receiver["rejected"][reason].as_u64().unwrap_or(0);
    for (name, injected) in &lora_attempts {
        let (reason, who, attempt) = if *name == "replay" {
            (
                "replay",
                "a radio in range",
                "replay a recorded LoRa frame to Pi #2",
            )
        } else {
            (
                "bad_mic",
                "a radio in range",
                "inject a tampered LoRa frame (ciphertext bits flipped)",
            )
        };
        let count = rejected(reason)
            + if reason == "replay" {
                rejected("duplicate")
            } else {
                0
            };
        intrusions.push(Intrusion {
            who: who.into(),
            attempt: attempt.into(),
            refused: *injected && count > 0,
            evidence: if *injected {
                format!("lora-link rx rejected it ({reason}: {count})")
            } else {
                "could not inject".into()
            },
        });
    }
    if recorded.is_empty() {
        intrusions.push(Intrusion {
            who: "a radio in range".into(),
            attempt: "replay a recorded LoRa frame".into(),
            refused: false,
            evidence: "no frame was on the air to record".into(),
        });
    }

    // Per topic: accepted by Pi #1 (the devices' side) vs delivered on Pi #2.
    let counts = Counts::of(&near, &far);
    let (published, delivered, missing) = (counts.published, counts.delivered, counts.missing);
    let by_qos = counts.by_qos.clone();
    let qos_json: BTreeMap<String, Value> = by_qos
        .iter()
        .map(|(q, (p, d))| (format!("qos{q}"), json!({ "published": p, "delivered": d })))
        .collect();
    let airtime_us = gateway["airtime_us"].as_u64().unwrap_or(0);
    let budget_ms = 36_000.0;
    let hour = hour_projection(
        airtime_us,
        gateway["sent"].as_u64().unwrap_or(0),
        &sensors
            .iter()
            .filter_map(|s| {
                site.profile(&s.profile)
                    .ok()
                    .map(|p| (p.readings.len() as u32, p.interval_s.max(1)))
            })
            .collect::<Vec<_>>(),
        budget_ms,
    );
    let devices: Vec<Value> = sensors
        .iter()
        .zip(&outcomes)
        .map(|(s, (_, r))| {
            let o = r.as_ref().ok();
            let p = site.profile(&s.profile).ok();
            let topics = o.map(|o| o.topics.clone()).unwrap_or_default();
            let sent = near
                .topics
                .values()
                .map(|t| t.readings.iter().filter(|(d, _)| d == &s.id).count())
                .sum::<usize>();
            // Delivered: what this device published in service that reached the far side.
            let got = near
                .topics
                .iter()
                .map(|(topic, t)| {
                    far.topics.get(topic).map_or(0, |f| {
                        t.readings
                            .intersection(&f.readings)
                            .filter(|(d, _)| d == &s.id)
                            .count()
                    })
                })
                .sum::<usize>();
            json!({
                "id": s.id, "room": s.room, "profile": s.profile,
                "port": s.link, "chip_serial": o.map(|o| o.chip_serial.clone()),
                "certificate": o.and_then(|o| o.certificate.clone()),
                "topics": topics,
                "qos": p.map(|p| p.qos), "retain": p.map(|p| p.retain),
                "status_topic": p.and_then(|p| p.status_topic.as_ref()).map(|t| t.replace("{root}", "maison").replace("{room}", &s.room)),
                "keep_alive_s": p.map(|p| p.keep_alive_s),
                "clean_session": p.map(|p| p.clean_session),
                "interval_s": p.map(|p| p.interval_s),
                "features": features(&site, &s.profile),
                "readings_published": sent, "readings_delivered": got,
            })
        })
        .collect();
    let mut feature_map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in &sensors {
        for f in features(&site, &s.profile) {
            let key = if f.starts_with("keep-alive") {
                "keep-alive".to_string()
            } else {
                f
            };
            feature_map.entry(key).or_default().push(s.id.clone());
        }
    }
    let refused = intrusions.iter().filter(|i| i.refused).count();
    let all_delivered = missing == 0;
    let ok =
        all_delivered && refused == intrusions.len() && outcomes.iter().all(|(_, r)| r.is_ok());
    let summary = json!({
        "ok": ok,
        "devices": { "requested": n, "provisioned": outcomes.iter().filter(|(_, r)| r.is_ok()).count(),
                     "provisioning_seconds": prov_s, "list": devices },
        "messages": {
            "published": published, "forwarded": gateway["sent"], "delivered": delivered,
            "by_qos": qos_json, "qos12_missing": missing, "qos12_all_delivered": all_delivered,
            "per_topic": counts.per_topic,
            "arrived_from_before_service": counts.earlier, "duplicates": counts.dupes,
            "note": "published = accepted by the broker on Pi #1 from the devices once in service (after their reboot); forwarded = every record the gateway sent over LoRa, the boards' first messages after provisioning included; delivered = those published messages a subscriber saw on the broker on Pi #2 (the sum of per_topic, never more than published); arrived_from_before_service = messages the boards sent before their reboot that reached Pi #2 during the run; duplicates = readings Pi #2 delivered more than once (QoS 1), not counted as delivered",
        },
        "airtime": { "used_ms": airtime_us as f64 / 1000.0, "budget_ms_per_hour": budget_ms,
                     "share_of_budget": airtime_us as f64 / 1000.0 / budget_ms,
                     "hour_at_this_rate": hour.as_ref().map(|h| json!({
                         "records": h.records, "airtime_ms": h.airtime_ms,
                         "share_of_budget": h.share, "fits": h.share <= 1.0 })),
                     "duty_cycle_percent": 1.0, "sub_band": "g1 868.0-868.6 MHz",
                     "frames": gateway["frames_sent"], "bytes": gateway["bytes_on_air"] },
        "gateway": gateway, "receiver": receiver,
        "intrusions": intrusions.iter().map(|i| json!({ "who": i.who, "attempt": i.attempt,
            "refused": i.refused, "evidence": i.evidence })).collect::<Vec<_>>(),
        "intrusions_refused": refused, "intrusions_tried": intrusions.len(),
        "features": feature_map,
        "interval_scale": scale,
        "processes": procs.listing(),
        "ports": { "broker_pi1_tcp": near_port, "broker_pi2_tcp": far_port, "air_udp": air_port },
        "seconds": started.elapsed().as_secs_f64(),
    });

    step(9, "Summary");
    eprintln!(
        "   devices provisioned   {} of {n} in {prov_s:.1} s",
        outcomes.iter().filter(|(_, r)| r.is_ok()).count()
    );
    eprintln!(
        "   messages              {published} published on Pi #1, {} forwarded over LoRa in {} frame(s), {delivered} of them delivered on Pi #2",
        gateway["sent"], gateway["frames_sent"]
    );
    if counts.earlier > 0 || counts.dupes > 0 {
        eprintln!(
            "                         (also {} sent before the reboot arrived, {} duplicate(s) not counted)",
            counts.earlier, counts.dupes
        );
    }
    eprintln!(
        "                         (published and delivered count from the reboot into service; forwarded also\n                          holds what the boards sent right after provisioning)"
    );
    for (q, (p, d)) in &by_qos {
        eprintln!("     QoS {q}               {p} published, {d} delivered");
    }
    eprintln!(
        "   QoS 1/2               {}",
        if all_delivered {
            "every message delivered at the far side".to_string()
        } else {
            format!("{missing} MISSING at the far side")
        }
    );
    eprintln!(
        "   airtime               {:.1} ms of the {:.0} s an hour the 1 % duty cycle allows ({:.2} %)",
        airtime_us as f64 / 1000.0,
        budget_ms / 1000.0,
        airtime_us as f64 / 10.0 / budget_ms
    );
    if let Some(h) = &hour {
        eprintln!(
            "                         at this rate an hour uses {:.0} % of the 1 % duty-cycle budget: {}\n                          ({} readings an hour at these intervals, {:.1} ms of air each as measured)",
            h.share * 100.0,
            if h.share <= 1.0 {
                "fits"
            } else {
                "does not fit"
            },
            h.records,
            h.per_record_ms,
        );
    }
    eprintln!(
        "   intrusions            {refused} of {} refused",
        intrusions.len()
    );
    for i in &intrusions {
        eprintln!(
            "     {} {}: {} — {}",
            if i.refused { "REFUSED " } else { "ACCEPTED" },
            i.who,
            i.attempt,
            i.evidence
        );
    }
    eprintln!("   MQTT features");
    for (f, ids) in &feature_map {
        let shown: Vec<&str> = ids.iter().take(6).map(String::as_str).collect();
        let more = if ids.len() > 6 {
            format!(" and {} more", ids.len() - 6)
        } else {
            String::new()
        };
        eprintln!("     {f:<34} {}{more}", shown.join(", "));
    }
    eprintln!(
        "   {} in {:.1} s; every process stopped",
        if ok { "done" } else { "FAILED" },
        started.elapsed().as_secs_f64()
    );
    Ok(summary)
}

/// How long the far side may stay silent before the live view says why.
const QUIET: Duration = Duration::from_secs(5);

/// When readings come: each board publishes on connecting, then every interval.
fn schedule_note(intervals: &[u32], duration_s: u64) -> String {
    let (Some(lo), Some(hi)) = (intervals.iter().min(), intervals.iter().max()) else {
        return "no sensor publishes".into();
    };
    let every = if lo == hi {
        format!("every {lo} s")
    } else {
        format!("every {lo} to {hi} s")
    };
    if u64::from(*lo) >= duration_s {
        format!(
            "each sensor publishes once on connecting, then {every}: after the first readings have crossed the link nothing is due before the end of this {duration_s} s run"
        )
    } else {
        format!("each sensor publishes once on connecting, then {every}")
    }
}

/// The next reading due after `t` seconds of service (boards publish at 0, i, 2i, ...).
fn next_due(intervals: &[u32], t: f64) -> Option<f64> {
    intervals
        .iter()
        .map(|&i| {
            let i = f64::from(i);
            ((t / i).floor() + 1.0) * i
        })
        .min_by(f64::total_cmp)
}

/// What a quiet stretch of the live view says.
fn quiet_line(intervals: &[u32], t: f64, duration_s: u64) -> String {
    match next_due(intervals, t) {
        Some(due) if due <= duration_s as f64 => format!(
            "nothing new on Pi #2 for {} s; the next reading is due at about {due:.0} s",
            QUIET.as_secs()
        ),
        Some(due) => format!(
            "nothing new on Pi #2 for {} s; no reading is due before the end ({duration_s} s, next at about {due:.0} s)",
            QUIET.as_secs()
        ),
        None => "nothing new on Pi #2".into(),
    }
}

/// An hour of this house at these intervals, with the airtime per record measured.
#[derive(Debug, Clone, PartialEq)]
struct HourProjection {
    records: u64,
    per_record_ms: f64,
    airtime_ms: f64,
    share: f64,
}

/// `sensors`: (readings per round, interval in s) of each; None before any record was sent.
fn hour_projection(
    airtime_us: u64,
    records_sent: u64,
    sensors: &[(u32, u32)],
    budget_ms: f64,
) -> Option<HourProjection> {
    if records_sent == 0 || airtime_us == 0 {
        return None;
    }
    let per_record_ms = airtime_us as f64 / 1000.0 / records_sent as f64;
    let records: u64 = sensors
        .iter()
        .map(|&(n, i)| u64::from(n) * 3600 / u64::from(i.max(1)))
        .sum();
    let airtime_ms = per_record_ms * records as f64;
    Some(HourProjection {
        records,
        per_record_ms,
        airtime_ms,
        share: airtime_ms / budget_ms,
    })
}

type Outcomes = Vec<(Sensor, std::result::Result<Outcome, ProvisionError>)>;

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
fn reboot(link: &Path, baud: u32) -> Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_live_view_says_when_the_next_reading_is_due() {
        // Intervals longer than the run: the note and the quiet line both say so.
        let long = [100, 200];
        assert!(schedule_note(&long, 40).contains("nothing is due before the end"));
        let q = quiet_line(&long, 18.0, 40);
        assert!(
            q.contains("no reading is due before the end") && q.contains("100 s"),
            "{q}"
        );
        // Short ones: the next one is named.
        assert_eq!(next_due(&[6, 5], 11.0), Some(12.0));
        let q = quiet_line(&[6, 5], 11.0, 40);
        assert!(q.contains("due at about 12 s"), "{q}");
    }

    #[test]
    fn the_hour_projection_says_whether_an_hour_fits_the_budget() {
        // 100 records sent with 10 s of air: 100 ms each.
        let fits = hour_projection(10_000_000, 100, &[(1, 60)], 36_000.0).expect("projection");
        assert_eq!(fits.records, 60);
        assert!(
            (fits.airtime_ms - 6_000.0).abs() < 1e-6 && fits.share < 1.0,
            "{fits:?}"
        );
        let over = hour_projection(10_000_000, 100, &[(2, 5); 10], 36_000.0).expect("projection");
        assert_eq!(over.records, 14_400);
        assert!(over.share > 1.0, "{over:?}");
        assert_eq!(hour_projection(0, 0, &[(1, 1)], 36_000.0), None);
    }

    #[test]
    fn delivered_counts_only_published_messages_once_and_never_exceeds_published() {
        let mut near = Seen::default();
        let mut far = Seen::default();
        let r = |d: &str, p: &str| (d.to_string(), p.to_string());
        let t = near
            .topics
            .entry("maison/salon/temperature".into())
            .or_default();
        t.qos = 1;
        t.readings.insert(r("salon-1", "a"));
        t.readings.insert(r("salon-1", "b"));
        let f = far
            .topics
            .entry("maison/salon/temperature".into())
            .or_default();
        f.qos = 1;
        // "a" delivered (twice: one duplicate), "b" missing, "z" from before the service.
        f.readings.insert(r("salon-1", "a"));
        f.dupes = 1;
        f.readings.insert(r("salon-1", "z"));
        far.topics
            .entry("maison/garage/status".into())
            .or_default()
            .other = 2;
        let c = Counts::of(&near, &far);
        assert_eq!((c.published, c.delivered, c.missing), (2, 1, 1));
        assert_eq!((c.earlier, c.dupes), (3, 1));
        let sum: u64 = c
            .per_topic
            .iter()
            .filter_map(|t| t["delivered"].as_u64())
            .sum();
        assert_eq!(sum, c.delivered);
    }
}
