//! Gateway throughput and end-to-end latency, with real parts: two mosquitto brokers from
//! `provisioner emit broker`, the gateway's own certificate and manifest from `provisioner
//! emit gateway`, the `lora-link air` hub and `lora-link rx` from `emit receiver`.
//!
//! 1. **Reference**: `mosquitto_pub -l -q 1` publishes N readings as fast as it can to the
//!    Pi #1 broker while a plain `mosquitto_sub -q 1` (same TLS, same broker) takes them:
//!    messages per second and CPU per message of the leanest possible consumer.
//! 2. **Latency**: the real daemons (`gateway`, the air, `lora-link rx`, the Pi #2 broker).
//!    M readings are published one every `--interval-ms`; each carries its send time; a
//!    `mosquitto_sub` on Pi #2 stamps its arrival (`%U`). Latency = arrival - send - time on
//!    air of the frame that carried it (computed from the frame length in the gateway's log,
//!    the same formula the emulated radio waits for). p50 / p99 / max.
//! 3. **Gateway throughput**: the gateway's own code (the MQTT bridge and the radio thread,
//!    as `gateway` wires them, same manifest and certificate) in this process, with a radio that
//!    takes frames without waiting for the air and the duty-cycle limit at 100 %, so what is
//!    measured is MQTT in -> records -> sealed frames. The same N readings as the reference:
//!    messages per second (publisher start to the last record sealed) and CPU per message
//!    (this process's user + system time, which holds nothing else during the run).
//!
//! Both throughput phases end when everything arrived or nothing moved for 3 s, and count
//! what arrived (`*_received` in the JSON). The broker's per-client queue (`max_queued_messages`
//! of `emit broker`, 100 000; mosquitto's default of 1000 dropped part of the burst when the
//! gateway fell behind) must hold the whole burst: the summary prints arrived/sent beside every
//! rate and the ratio, and when anything was lost it prints `LOST n of N`, no ratio, and the
//! benchmark exits 1.
//!
//! ```text
//! cargo build --release -p provisioner -p gateway -p lora-link
//! cargo run --release -p gateway --example bench_gateway -- --bin-dir target/release
//! ```
//! Options: `--messages N` (20000), `--latency-messages M` (300), `--interval-ms T` (100),
//! `--keep` (keep the work directory). Prints a summary on stderr and one JSON object on
//! stdout. Needs mosquitto, mosquitto-clients and openssl.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway::bridge::{self, BridgeConfig};
use gateway::forward::{self, ToRadio};
use gateway::{Counters, SHUTDOWN_GRACE};
use lora_link::LinkSender;
use lora_link::airtime::Modulation;
use lora_link::radio::{Radio, RadioError, RxPacket};
use manifests::gateway::GatewayManifest;
use nix::sys::resource::{UsageWho, getrusage};

const PASSPHRASE: &str = "bench passphrase, not a secret";
/// A reading of the example house that is in the link's topic table.
const TOPIC: &str = "maison/salon/temperature";

type Res<T> = Result<T, String>;

struct Opts {
    bin_dir: PathBuf,
    messages: usize,
    latency_messages: usize,
    interval: Duration,
    keep: bool,
}

fn parse_args() -> Res<Opts> {
    let mut o = Opts {
        bin_dir: PathBuf::from("target/release"),
        messages: 20_000,
        latency_messages: 300,
        interval: Duration::from_millis(100),
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |s: String, name: &str| -> Res<usize> {
            s.parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or(format!("{name}: expected a positive integer, found `{s}`"))
        };
        match a.as_str() {
            "--bin-dir" => o.bin_dir = PathBuf::from(value("--bin-dir")?),
            "--messages" => o.messages = number(value("--messages")?, "--messages")?,
            "--latency-messages" => {
                o.latency_messages = number(value("--latency-messages")?, "--latency-messages")?;
            }
            "--interval-ms" => {
                o.interval =
                    Duration::from_millis(number(value("--interval-ms")?, "--interval-ms")? as u64);
            }
            "--keep" => o.keep = true,
            "-h" | "--help" => {
                eprintln!(
                    "bench_gateway [--bin-dir DIR] [--messages N] [--latency-messages M] [--interval-ms T] [--keep]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}` (see --help)")),
        }
    }
    Ok(o)
}

/// A child process killed and reaped on drop, so nothing is left behind.
struct Daemon {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(name: &str, mut cmd: Command, log: PathBuf) -> Res<Daemon> {
        let f = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().map_err(|e| e.to_string())?)
            .stderr(f)
            .spawn()
            .map_err(|e| format!("start {name}: {e}"))?;
        Ok(Daemon {
            name: name.into(),
            child: Some(child),
            log,
        })
    }
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    fn wait_for(&mut self, needle: &str) -> Res<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log_text().contains(needle) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                return Err(format!("{} exited ({st}):\n{}", self.name, self.log_text()));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{}: no `{needle}`:\n{}",
                    self.name,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
    /// SIGTERM and wait (at most 10 s).
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Site {
    dir: PathBuf,
    bin_dir: PathBuf,
}

impl Site {
    fn provisioner(&self, args: &[&str]) -> Res<String> {
        let out = Command::new(self.bin_dir.join("provisioner"))
            .args(args)
            .env("PROVISIONER_HOME", self.dir.join("home"))
            .env("PROVISIONER_PASSPHRASE", PASSPHRASE)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("provisioner: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "provisioner {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
    /// An MQTT client key (openssl) certified by the site's CA with `acl` flags.
    fn client(&self, cn: &str, acl: &[&str]) -> Res<(PathBuf, PathBuf)> {
        let key = self.dir.join(format!("{cn}.key"));
        let csr = self.dir.join(format!("{cn}.csr"));
        let crt = self.dir.join(format!("{cn}.crt"));
        let out = Command::new("openssl")
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-keyout"])
            .arg(&key)
            .args(["-subj", &format!("/CN={cn}"), "-out"])
            .arg(&csr)
            .output()
            .map_err(|e| format!("openssl (is it installed?): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "openssl req: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let (csr_s, crt_s) = (csr.to_string_lossy(), crt.to_string_lossy());
        let mut args = vec!["cert", "sign", "--csr", &csr_s, "--profile", "client"];
        args.extend(["--out", &crt_s]);
        args.extend_from_slice(acl);
        self.provisioner(&args)?;
        Ok((crt, key))
    }
}

fn free_port() -> Res<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn mosquitto_bin() -> &'static str {
    if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    }
}

fn start_broker(name: &str, conf_dir: &Path, port: u16, logs: &Path) -> Res<Daemon> {
    let mut c = Command::new(mosquitto_bin());
    c.arg("-c").arg(conf_dir.join("mosquitto.conf"));
    let mut d = Daemon::start(name, c, logs.join(format!("{name}.log")))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            d.stop();
            return Err(format!(
                "{name} did not listen on {port}:\n{}",
                d.log_text()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(d)
}

/// The identity (certificate CN) of a client made by [`Site::client`]: its file stem.
fn identity(id: &(PathBuf, PathBuf)) -> String {
    id.0.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// TLS and identity arguments of the mosquitto clients; the client id is the identity, as the
/// broker (`use_username_as_clientid`) makes it anyway.
fn tls_args(c: &mut Command, port: u16, ca: &Path, id: &(PathBuf, PathBuf)) {
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-i", &identity(id)])
        .arg("--cafile")
        .arg(ca)
        .arg("--cert")
        .arg(&id.0)
        .arg("--key")
        .arg(&id.1);
}

/// Waits until `broker`'s log shows client `id` connected, then lets its SUBSCRIBE land.
fn wait_connected(broker: &Daemon, id: &str) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.log_text().contains(&format!("as {id} ")) {
        if Instant::now() > deadline {
            return Err(format!("{id} never connected:\n{}", broker.log_text()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

fn cpu_self() -> Duration {
    usage(UsageWho::RUSAGE_SELF)
}

fn cpu_children() -> Duration {
    usage(UsageWho::RUSAGE_CHILDREN)
}

fn usage(who: UsageWho) -> Duration {
    getrusage(who).map_or(Duration::ZERO, |u| {
        let t = |v: nix::sys::time::TimeVal| {
            Duration::new(v.tv_sec() as u64, (v.tv_usec() as u32) * 1000)
        };
        t(u.user_time()) + t(u.system_time())
    })
}

/// `mosquitto_pub -l` fed `lines` (as fast as the pipe takes them) on a thread.
fn publish_lines(
    port: u16,
    ca: &Path,
    id: &(PathBuf, PathBuf),
    lines: Vec<String>,
) -> Res<(Child, std::thread::JoinHandle<()>)> {
    let mut c = Command::new("mosquitto_pub");
    tls_args(&mut c, port, ca, id);
    c.args(["-t", TOPIC, "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut child = c.spawn().map_err(|e| format!("mosquitto_pub: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("mosquitto_pub without stdin")?;
    let t = std::thread::spawn(move || {
        let mut text = String::new();
        for l in lines {
            text.push_str(&l);
            text.push('\n');
        }
        let _ = stdin.write_all(text.as_bytes());
    });
    Ok((child, t))
}

fn reading(i: usize) -> String {
    format!("{{\"t\":{}.{},\"n\":{i}}}", 18 + i % 7, i % 10)
}

/// Waits until `count()` reaches `target` or stops moving for [`STALL`]; returns the count
/// and when it last moved (what a broker queue limit dropped never arrives).
fn until_done(target: u64, count: impl Fn() -> u64) -> (u64, Instant) {
    let (mut last, mut moved) = (count(), Instant::now());
    loop {
        let now = count();
        if now != last {
            (last, moved) = (now, Instant::now());
        }
        if now >= target || moved.elapsed() > STALL {
            return (now, moved);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// No progress for this long ends a throughput phase.
const STALL: Duration = Duration::from_secs(3);

/// A phase's figures: messages that arrived, per second, CPU microseconds per message.
struct Rate {
    got: u64,
    per_s: f64,
    cpu_us: f64,
}

/// Phase 1: the plain subscriber.
fn reference(
    o: &Opts,
    port: u16,
    ca: &Path,
    broker: &Daemon,
    sub_id: &(PathBuf, PathBuf),
    pub_id: &(PathBuf, PathBuf),
) -> Res<Rate> {
    let mut c = Command::new("mosquitto_sub");
    tls_args(&mut c, port, ca, sub_id);
    c.args(["-t", TOPIC])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut sub = c.spawn().map_err(|e| format!("mosquitto_sub: {e}"))?;
    let out = sub.stdout.take().ok_or("mosquitto_sub without stdout")?;
    let lines = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            for _ in BufReader::new(out).lines().map_while(Result::ok) {
                lines.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    if let Err(e) = wait_connected(broker, &identity(sub_id)) {
        // leave no subscriber behind
        let _ = sub.kill();
        let _ = sub.wait();
        return Err(e);
    }
    let cpu0 = cpu_children();
    let t0 = Instant::now();
    let (mut publ, feeder) =
        publish_lines(port, ca, pub_id, (0..o.messages).map(reading).collect())?;
    let (got, last) = until_done(o.messages as u64, || lines.load(Ordering::Relaxed));
    let _ = feeder.join();
    let _ = publ.wait();
    let cpu_pub = cpu_children().saturating_sub(cpu0);
    let _ = sub.kill();
    let _ = sub.wait();
    let cpu = cpu_children().saturating_sub(cpu0).saturating_sub(cpu_pub);
    let _ = reader.join();
    if got == 0 {
        return Err("mosquitto_sub received nothing".into());
    }
    Ok(Rate {
        got,
        per_s: got as f64 / last.duration_since(t0).as_secs_f64(),
        cpu_us: cpu.as_secs_f64() * 1e6 / got as f64,
    })
}

/// Phase 2: the real daemons; returns (latencies without air in ms, raw in ms, mean air in ms).
#[allow(clippy::too_many_arguments)]
fn latency(
    o: &Opts,
    site: &Site,
    gw_manifest: &Path,
    (near_port, near_ca): (u16, &Path),
    (far_port, far_ca): (u16, &Path),
    far: &Daemon,
    sub_id: &(PathBuf, PathBuf),
    pub_id: &(PathBuf, PathBuf),
    modulation: &Modulation,
) -> Res<(Vec<f64>, Vec<f64>, f64)> {
    let logs = site.dir.join("logs");
    let mut gw = {
        let mut c = Command::new(site.bin_dir.join("gateway"));
        c.arg("--manifest").arg(gw_manifest);
        Daemon::start("gateway", c, logs.join("gateway.log"))?
    };
    gw.wait_for("subscribed to maison/#")?;
    let mut c = Command::new("mosquitto_sub");
    tls_args(&mut c, far_port, far_ca, sub_id);
    c.args(["-t", TOPIC, "-F", "%U %p"])
        .args(["-C", &o.latency_messages.to_string(), "-W", "300"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut sub = c.spawn().map_err(|e| format!("mosquitto_sub: {e}"))?;
    let out = sub.stdout.take().ok_or("mosquitto_sub without stdout")?;
    let arrivals = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    if let Err(e) = wait_connected(far, &identity(sub_id)) {
        // leave no subscriber behind
        let _ = sub.kill();
        let _ = sub.wait();
        return Err(e);
    }
    let mut c = Command::new("mosquitto_pub");
    tls_args(&mut c, near_port, near_ca, pub_id);
    c.args(["-t", TOPIC, "-l"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut publ = c.spawn().map_err(|e| format!("mosquitto_pub: {e}"))?;
    let mut stdin = publ.stdin.take().ok_or("mosquitto_pub without stdin")?;
    std::thread::sleep(Duration::from_millis(500)); // its CONNECT
    let start = Instant::now();
    for i in 0..o.latency_messages {
        let due = start + o.interval * i as u32;
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|e| e.to_string())?
            .as_nanos();
        writeln!(stdin, "{i} {ns}").map_err(|e| format!("mosquitto_pub: {e}"))?;
        stdin.flush().map_err(|e| e.to_string())?;
    }
    drop(stdin);
    let st = sub.wait().map_err(|e| e.to_string())?;
    let _ = publ.wait();
    let lines = arrivals.join().map_err(|_| "reader thread")?;
    gw.stop();
    if !st.success() || lines.len() != o.latency_messages {
        return Err(format!(
            "the far side got {} of {} readings ({st})\ngateway:\n{}",
            lines.len(),
            o.latency_messages,
            gw.log_text()
        ));
    }
    // Frames in order, each with its record count and length.
    let frames: Vec<(usize, usize)> = gw
        .log_text()
        .lines()
        .filter_map(|l| {
            let rest = l.split("sent frame #").nth(1)?;
            let (_, rest) = rest.split_once(": ")?;
            let mut w = rest.split(' ');
            let n = w.next()?.parse().ok()?;
            let _ = w.next();
            let len = w.next()?.parse().ok()?;
            Some((n, len))
        })
        .collect();
    let mut air_of = Vec::new();
    for (n, len) in &frames {
        air_of.extend(std::iter::repeat_n(modulation.time_on_air(*len), *n));
    }
    if air_of.len() != o.latency_messages {
        return Err(format!(
            "the gateway's log shows {} records in {} frames, expected {}",
            air_of.len(),
            frames.len(),
            o.latency_messages
        ));
    }
    let (mut net, mut raw) = (Vec::new(), Vec::new());
    let mut air_sum = 0.0;
    for l in &lines {
        let mut w = l.split(' ');
        let (Some(at), Some(seq), Some(sent)) = (w.next(), w.next(), w.next()) else {
            return Err(format!("unexpected line from mosquitto_sub: {l}"));
        };
        let at: f64 = at.parse().map_err(|_| format!("bad %U in {l}"))?;
        let seq: usize = seq.parse().map_err(|_| format!("bad sequence in {l}"))?;
        let sent: u128 = sent.parse().map_err(|_| format!("bad time in {l}"))?;
        let air = air_of
            .get(seq)
            .ok_or(format!("sequence {seq} out of range"))?
            .as_secs_f64()
            * 1e3;
        let total = (at - sent as f64 / 1e9) * 1e3;
        raw.push(total);
        net.push(total - air);
        air_sum += air;
    }
    Ok((net, raw, air_sum / lines.len() as f64))
}

/// A radio that takes every frame at once: what is measured is the gateway, not the air.
struct NullRadio;

impl Radio for NullRadio {
    fn transmit(&mut self, _frame: &[u8]) -> Result<(), RadioError> {
        Ok(())
    }
    fn receive(&mut self, _timeout: Duration) -> Result<Option<RxPacket>, RadioError> {
        Ok(None)
    }
}

/// Phase 3: the gateway's code in this process.
fn gateway_throughput(
    o: &Opts,
    gw_manifest: &Path,
    port: u16,
    ca: &Path,
    pub_id: &(PathBuf, PathBuf),
) -> Res<(Rate, u64)> {
    let mut g = GatewayManifest::load(gw_manifest).map_err(|e| e.to_string())?;
    g.link.manifest.radio.duty_cycle_percent = Some(100.0);
    let cfg = BridgeConfig::from_manifest(&g)?;
    let sender = LinkSender::from_manifest(&g.link).map_err(|e| e.to_string())?;
    let counters = Arc::new(Mutex::new(Counters::default()));
    let stopped = Arc::new(AtomicBool::new(false));
    let (to_radio, from_mqtt) = std::sync::mpsc::channel();
    let radio_thread = forward::spawn(
        sender,
        Box::new(NullRadio),
        from_mqtt,
        Arc::clone(&counters),
        Arc::clone(&stopped),
        SHUTDOWN_GRACE,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bridge = {
        let (to_radio, counters, stopped) = (
            to_radio.clone(),
            Arc::clone(&counters),
            Arc::clone(&stopped),
        );
        runtime.spawn(bridge::run(cfg, to_radio, counters, stopped, async {
            let _ = stop_rx.await;
        }))
    };
    let snapshot = || counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    while snapshot().connections == 0 {
        if Instant::now() > deadline {
            return Err(format!("the gateway did not connect to 127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500)); // the session's subscription is in place
    let cpu0 = cpu_self();
    let t0 = Instant::now();
    let (mut publ, feeder) =
        publish_lines(port, ca, pub_id, (0..o.messages).map(reading).collect())?;
    let (got, last) = until_done(o.messages as u64, || snapshot().sent);
    let cpu = cpu_self().saturating_sub(cpu0);
    if stopped.load(Ordering::SeqCst) {
        return Err(format!("the radio thread stopped: {:?}", snapshot()));
    }
    let _ = feeder.join();
    let _ = publ.wait();
    let _ = stop_tx.send(());
    let _ = runtime.block_on(bridge);
    runtime.shutdown_timeout(Duration::from_millis(200));
    let _ = to_radio.send(ToRadio::Shutdown);
    drop(to_radio);
    radio_thread.join().map_err(|_| "radio thread panicked")??;
    let c = snapshot();
    if !c.balanced() || c.sent != got || c.received != got || got == 0 {
        return Err(format!("counters do not add up: {c:?}"));
    }
    Ok((
        Rate {
            got,
            per_s: got as f64 / last.duration_since(t0).as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / got as f64,
        },
        c.frames_sent,
    ))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    // nearest rank
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn run(o: &Opts) -> Res<serde_json::Value> {
    for b in ["provisioner", "gateway", "lora-link"] {
        if !o.bin_dir.join(b).is_file() {
            return Err(format!(
                "{} is missing: cargo build --release -p provisioner -p gateway -p lora-link",
                o.bin_dir.join(b).display()
            ));
        }
    }
    let tmp = tempfile::Builder::new()
        .prefix("bench-gateway-")
        .tempdir()
        .map_err(|e| e.to_string())?;
    let site = Site {
        dir: tmp.path().to_path_buf(),
        bin_dir: std::fs::canonicalize(&o.bin_dir).map_err(|e| e.to_string())?,
    };
    let logs = site.dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
    eprintln!(
        "bench_gateway: CA, certificates and configuration in {}",
        site.dir.display()
    );
    site.provisioner(&["init"])?;
    site.provisioner(&["server", "issue", "--dns", "localhost", "--ip", "127.0.0.1"])?;
    let publisher = site.client("capteur-bench", &["--publish", "maison/#"])?;
    let subscriber = site.client("moniteur-bench", &["--subscribe", "maison/#"])?;
    let (near_port, far_port) = (free_port()?, free_port()?);
    let air_port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        s.local_addr().map_err(|e| e.to_string())?.port()
    };
    let air = format!("127.0.0.1:{air_port}");
    let (gw_dir, rx_dir) = (site.dir.join("passerelle"), site.dir.join("recepteur"));
    for (what, dir, port) in [
        ("gateway", &gw_dir, near_port),
        ("receiver", &rx_dir, far_port),
    ] {
        let name = if what == "gateway" {
            "passerelle"
        } else {
            "recepteur"
        };
        site.provisioner(&[
            "emit",
            what,
            name,
            "--out",
            &dir.to_string_lossy(),
            "--broker-host",
            "127.0.0.1",
            "--broker-port",
            &port.to_string(),
            "--air",
            &air,
        ])?;
    }
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map_or_else(|| "root".to_string(), |u| u.name);
    let (near_dir, far_dir) = (site.dir.join("pi1"), site.dir.join("pi2"));
    for (dir, port) in [(&near_dir, near_port), (&far_dir, far_port)] {
        site.provisioner(&[
            "emit",
            "broker",
            "--out",
            &dir.to_string_lossy(),
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--run-as",
            &user,
        ])?;
    }
    let near = start_broker("mosquitto-pi1", &near_dir, near_port, &logs)?;
    let far = start_broker("mosquitto-pi2", &far_dir, far_port, &logs)?;
    let (near_ca, far_ca) = (near_dir.join("ca.crt"), far_dir.join("ca.crt"));
    let gw_manifest = gw_dir.join("gateway.toml");
    let modulation = {
        let g = GatewayManifest::load(&gw_manifest).map_err(|e| e.to_string())?;
        Modulation::from_params(&g.link.manifest.radio)
    };

    eprintln!(
        "bench_gateway: reference, mosquitto_sub takes {} readings",
        o.messages
    );
    let reference = reference(o, near_port, &near_ca, &near, &subscriber, &publisher)?;

    eprintln!(
        "bench_gateway: latency, {} readings one every {} ms through gateway, air, receiver",
        o.latency_messages,
        o.interval.as_millis()
    );
    let mut hub = {
        let mut c = Command::new(site.bin_dir.join("lora-link"));
        c.args(["air", "--listen", &air]);
        Daemon::start("lora-link air", c, logs.join("air.log"))?
    };
    hub.wait_for("listening on")?;
    let mut rx = {
        let mut c = Command::new(site.bin_dir.join("lora-link"));
        c.arg("rx")
            .arg("--manifest")
            .arg(rx_dir.join("receiver.toml"));
        Daemon::start("lora-link rx", c, logs.join("rx.log"))?
    };
    rx.wait_for("connected to the broker")?;
    let (mut net, mut raw, air_ms) = latency(
        o,
        &site,
        &gw_manifest,
        (near_port, &near_ca),
        (far_port, &far_ca),
        &far,
        &subscriber,
        &publisher,
        &modulation,
    )?;
    rx.stop();
    hub.stop();
    drop(far);
    net.sort_by(f64::total_cmp);
    raw.sort_by(f64::total_cmp);

    eprintln!(
        "bench_gateway: gateway throughput, {} readings into frames",
        o.messages
    );
    let (gw, frames) = gateway_throughput(o, &gw_manifest, near_port, &near_ca, &publisher)?;
    drop(near);

    let p = |v: &[f64], q: f64| (percentile(v, q) * 1000.0).round() / 1000.0;
    let sent = o.messages as u64;
    let lost = |got: u64| sent.saturating_sub(got);
    let complete = lost(gw.got) == 0 && lost(reference.got) == 0;
    let ratio = gw.per_s / reference.per_s;
    let report = serde_json::json!({
        "throughput": {
            "messages": o.messages,
            "complete": complete,
            "gateway_lost": lost(gw.got),
            "mosquitto_sub_lost": lost(reference.got),
            // Only a run where everything arrived has a meaningful ratio.
            "ratio": complete.then(|| (ratio * 100.0).round() / 100.0),
            "gateway_received": gw.got,
            "gateway_msg_per_s": gw.per_s.round(),
            "gateway_cpu_us_per_msg": (gw.cpu_us * 100.0).round() / 100.0,
            "gateway_frames": frames,
            "mosquitto_sub_received": reference.got,
            "mosquitto_sub_msg_per_s": reference.per_s.round(),
            "mosquitto_sub_cpu_us_per_msg": (reference.cpu_us * 100.0).round() / 100.0,
        },
        "latency": {
            "messages": o.latency_messages,
            "interval_ms": o.interval.as_millis() as u64,
            "p50_ms": p(&net, 50.0),
            "p99_ms": p(&net, 99.0),
            "max_ms": p(&net, 100.0),
            "with_air_p50_ms": p(&raw, 50.0),
            "with_air_p99_ms": p(&raw, 99.0),
            "air_mean_ms": (air_ms * 1000.0).round() / 1000.0,
        },
    });
    eprintln!(
        "bench_gateway: gateway {:.0} msg/s, {:.1} us CPU/msg ({}/{} arrived, in {frames} frames); mosquitto_sub {:.0} msg/s, {:.1} us CPU/msg ({}/{} arrived)",
        gw.per_s, gw.cpu_us, gw.got, sent, reference.per_s, reference.cpu_us, reference.got, sent
    );
    if complete {
        eprintln!(
            "bench_gateway: throughput ratio gateway/mosquitto_sub {ratio:.2} ({}/{sent} and {}/{sent} arrived)",
            gw.got, reference.got
        );
    } else {
        for (who, got) in [("gateway", gw.got), ("mosquitto_sub", reference.got)] {
            if lost(got) > 0 {
                eprintln!(
                    "bench_gateway: LOST {} of {sent} readings: {who} received {got}/{sent} (the broker dropped the rest: check max_queued_messages in mosquitto.conf); no throughput ratio",
                    lost(got)
                );
            }
        }
    }
    eprintln!(
        "bench_gateway: latency without air p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (air {air_ms:.1} ms per frame)",
        p(&net, 50.0),
        p(&net, 99.0),
        p(&net, 100.0)
    );
    if o.keep {
        let kept = tmp.keep();
        eprintln!("bench_gateway: kept {}", kept.display());
    }
    Ok(report)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_gateway: {e}");
            std::process::exit(2);
        }
    };
    match run(&o) {
        Ok(report) => {
            println!("{report}");
            if report["throughput"]["complete"] != serde_json::Value::Bool(true) {
                // a rate measured on what survived a loss is no success
                std::process::exit(1);
            }
        }
        Err(e) => {
            eprintln!("bench_gateway: {e}");
            std::process::exit(1);
        }
    }
}
