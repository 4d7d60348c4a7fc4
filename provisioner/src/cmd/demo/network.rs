//! The network the demo starts: its directory, the programs it needs, free ports on
//! 127.0.0.1, the configurations it emits, and the brokers, the LoRa air, the receiver and
//! the gateway, started and stopped in order.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use manifests::site::Site;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::live::{Monitors, Seen};
use super::procs::{Procs, log_tail, nap, wait_for};
use super::{Demo, note};
use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// The demo's directory: removed on drop unless kept.
pub(super) struct Workdir {
    pub(super) root: PathBuf,
    pub(super) keep: bool,
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

pub(super) fn random_hex(n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b)
        .map_err(|e| CliError::new(Code::Failure, format!("system RNG: {e}")))?;
    Ok(hex::encode(b))
}

/// `--home` when it was given on the command line (not the default, not the environment).
pub(super) fn explicit_home() -> bool {
    std::env::args_os().any(|a| a == "--home" || a.to_string_lossy().starts_with("--home="))
}

pub(super) fn workdir(ctx: &Context, keep: bool) -> Result<Workdir> {
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

/// The programs the demo runs besides itself.
pub(super) struct Tools {
    pub(super) gateway: PathBuf,
    pub(super) lora_link: PathBuf,
    pub(super) mosquitto: PathBuf,
    pub(super) mosquitto_sub: PathBuf,
    pub(super) mosquitto_pub: PathBuf,
}

impl Tools {
    /// `gateway` and `lora-link` next to this executable (or on PATH), mosquitto's on PATH.
    pub(super) fn find() -> Result<Tools> {
        let exe = std::env::current_exe()
            .map_err(|e| CliError::new(Code::Failure, format!("own executable: {e}")))?;
        let bin_dir = exe
            .parent()
            .map(Path::to_path_buf)
            .into_iter()
            .collect::<Vec<_>>();
        let build_help = "build them next to provisioner: cargo build --release -p provisioner -p gateway -p lora-link";
        let apt =
            "install it: apt-get install mosquitto mosquitto-clients (./scripts/main.sh does)";
        Ok(Tools {
            gateway: find_program("gateway", &bin_dir, build_help)?,
            lora_link: find_program("lora-link", &bin_dir, build_help)?,
            mosquitto: find_program("mosquitto", &[], apt)?,
            mosquitto_sub: find_program("mosquitto_sub", &[], apt)?,
            mosquitto_pub: find_program("mosquitto_pub", &[], apt)?,
        })
    }
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

/// The ports of the demo, all on 127.0.0.1.
pub(super) struct Ports {
    /// The broker on Pi #1 (TCP).
    pub(super) near: u16,
    /// The broker on Pi #2 (TCP).
    pub(super) far: u16,
    /// The simulated LoRa air (UDP).
    pub(super) air: u16,
}

impl Ports {
    pub(super) fn pick() -> Result<Ports> {
        Ok(Ports {
            near: free_tcp_port()?,
            far: free_tcp_port()?,
            air: free_udp_port()?,
        })
    }

    /// The air's address.
    pub(super) fn air_addr(&self) -> String {
        format!("127.0.0.1:{}", self.air)
    }

    pub(super) fn json(&self) -> Value {
        json!({ "broker_pi1_tcp": self.near, "broker_pi2_tcp": self.far, "air_udp": self.air })
    }
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
pub(super) fn issue_client(
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

/// What `provisioner emit` wrote for each node, and the demo's own clients' credentials.
pub(super) struct Configs {
    pub(super) gateway: PathBuf,
    pub(super) receiver: PathBuf,
    pub(super) near_broker: PathBuf,
    pub(super) far_broker: PathBuf,
    /// `moniteur`: reads maison/# on both brokers.
    pub(super) monitor: (PathBuf, PathBuf),
    /// `intrus-salon`: certified to write maison/salon/temperature only.
    pub(super) intruder: (PathBuf, PathBuf),
}

/// Step 5: the gateway's and the receiver's manifests, both brokers' configurations and the
/// demo's own client certificates (the last use of the CA, closed on return).
pub(super) fn emit_configs(
    d: &Demo<'_>,
    site: &Site,
    ports: &Ports,
    authority: Mutex<ca::Authority>,
) -> Result<Configs> {
    let gateway = d.work.join("pi1-passerelle");
    let receiver = d.work.join("pi2-recepteur");
    let air = ports.air_addr();
    for (name, kind, node, out, port) in [
        (
            "emit gateway",
            "gateway",
            "passerelle",
            &gateway,
            ports.near,
        ),
        (
            "emit receiver",
            "receiver",
            "recepteur",
            &receiver,
            ports.far,
        ),
    ] {
        d.run_me(
            name,
            &[
                "emit",
                kind,
                node,
                "--out",
                &out.to_string_lossy(),
                "--broker-host",
                "127.0.0.1",
                "--broker-port",
                &port.to_string(),
                "--air",
                &air,
            ],
            60,
        )?;
    }
    let clients = d.work.join("clients");
    ca::fsutil::private_dir(&clients)?;
    let (monitor, intruder) = {
        let mut a = authority
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let monitor = issue_client(
            &mut a,
            site,
            "moniteur",
            vec!["maison/#".into()],
            vec![],
            &clients,
        )?;
        let intruder = issue_client(
            &mut a,
            site,
            "intrus-salon",
            vec![],
            vec!["maison/salon/temperature".into()],
            &clients,
        )?;
        (monitor, intruder)
    };
    let user = current_user();
    let near_broker = d.work.join("pi1-mosquitto");
    let far_broker = d.work.join("pi2-mosquitto");
    for (name, dir, port) in [
        ("emit broker pi1", &near_broker, ports.near),
        ("emit broker pi2", &far_broker, ports.far),
    ] {
        d.run_me(
            name,
            &[
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
            ],
            60,
        )?;
    }
    note("gateway `passerelle` reads maison/#; receiver `recepteur` republishes it on Pi #2");
    note("ACL: each device may write only its own topics; `moniteur` reads maison/#");
    Ok(Configs {
        gateway,
        receiver,
        near_broker,
        far_broker,
        monitor,
        intruder,
    })
}

/// The daemons of both Pis, running.
pub(super) struct Network {
    near_broker: u32,
    far_broker: u32,
    air: u32,
    receiver: u32,
    gateway: u32,
    gateway_stdout: Option<std::fs::File>,
    /// Where `lora-link rx` logs (its rejections and its final counters).
    pub(super) receiver_log: PathBuf,
    /// Where `lora-link air` records every frame.
    pub(super) air_record: PathBuf,
    /// Where the gateway logs.
    pub(super) gateway_log: PathBuf,
}

impl Network {
    /// Step 6: both brokers, the LoRa air, `lora-link rx` (Pi #2), the gateway (Pi #1); each
    /// waited for until it is ready.
    pub(super) fn start(
        d: &Demo<'_>,
        tools: &Tools,
        ports: &Ports,
        configs: &Configs,
    ) -> Result<Network> {
        let near_broker =
            start_broker(d, tools, "mosquitto-pi1", &configs.near_broker, ports.near)?;
        let far_broker = start_broker(d, tools, "mosquitto-pi2", &configs.far_broker, ports.far)?;
        note(&format!(
            "mosquitto Pi #1 on 127.0.0.1:{}, Pi #2 on 127.0.0.1:{}",
            ports.near, ports.far
        ));
        let air = ports.air_addr();
        let air_log = d.logs.join("air.log");
        let air_record = d.work.join("air.jsonl");
        let mut c = Command::new(&tools.lora_link);
        c.args(["air", "--listen", &air, "--record"])
            .arg(&air_record);
        let air_pid = d.procs.spawn("lora-link air", c, &air_log, false)?.pid;
        wait_until_logged(&air_log, "lora-link air", 10, "listening on")?;
        let receiver_log = d.logs.join("lora-link-rx.log");
        let mut c = Command::new(&tools.lora_link);
        c.arg("rx")
            .arg("--manifest")
            .arg(configs.receiver.join("receiver.toml"));
        let receiver = d.procs.spawn("lora-link rx", c, &receiver_log, true)?.pid;
        wait_until_logged(
            &receiver_log,
            "lora-link rx connected to Pi #2's broker",
            15,
            "connected to the broker",
        )?;
        let gateway_log = d.logs.join("gateway.log");
        let mut c = Command::new(&tools.gateway);
        c.arg("--manifest")
            .arg(configs.gateway.join("gateway.toml"));
        let mut gw = d.procs.spawn("gateway", c, &gateway_log, true)?;
        wait_until_logged(
            &gateway_log,
            "gateway subscribed on Pi #1",
            15,
            "subscribed to maison/#",
        )?;
        note(&format!(
            "LoRa air on udp {air} (868.0 MHz, SF7, 125 kHz); gateway -> node recepteur"
        ));
        Ok(Network {
            near_broker,
            far_broker,
            air: air_pid,
            receiver,
            gateway: gw.pid,
            gateway_stdout: gw.stdout.take(),
            receiver_log,
            air_record,
            gateway_log,
        })
    }
}

impl Network {
    /// Restarts Pi #1's mosquitto from the same configuration, as `systemctl restart
    /// mosquitto` does on a Pi: SIGTERM (mosquitto saves its persistence file), then the same
    /// `mosquitto -c`, waited for until it listens.
    pub(super) fn restart_near_broker(
        &mut self,
        d: &Demo<'_>,
        tools: &Tools,
        ports: &Ports,
        configs: &Configs,
    ) -> Result<()> {
        d.procs.stop(&[self.near_broker], Duration::from_secs(5));
        self.near_broker = start_broker(
            d,
            tools,
            "mosquitto-pi1-restarted",
            &configs.near_broker,
            ports.near,
        )?;
        Ok(())
    }
}

/// A broker from its emitted `mosquitto.conf`, once it listens.
fn start_broker(d: &Demo<'_>, tools: &Tools, name: &str, dir: &Path, port: u16) -> Result<u32> {
    let log = d.log(name);
    let mut c = Command::new(&tools.mosquitto);
    c.arg("-c").arg(dir.join("mosquitto.conf"));
    let p = d.procs.spawn(name, c, &log, false)?;
    wait_for(
        &format!("{name} on 127.0.0.1:{port}"),
        Duration::from_secs(10),
        Some(&log),
        || listening(port) || !d.procs.running(p.pid),
    )?;
    if !d.procs.running(p.pid) {
        return Err(CliError::new(
            Code::Failure,
            format!("{name} stopped{}", log_tail(&log)),
        ));
    }
    Ok(p.pid)
}

/// Waits up to `secs` for `log` to contain `marker`.
fn wait_until_logged(log: &Path, what: &str, secs: u64, marker: &str) -> Result<()> {
    wait_for(what, Duration::from_secs(secs), Some(log), || {
        std::fs::read_to_string(log).is_ok_and(|t| t.contains(marker))
    })
}

/// What the daemons said when they stopped: their final counters (JSON), Null if none.
pub(super) struct Ended {
    pub(super) gateway: Value,
    pub(super) receiver: Value,
}

/// Whether every QoS 1/2 message Pi #1 accepted has reached Pi #2.
fn drained(near: &Seen, far: &Seen) -> bool {
    near.topics
        .iter()
        .filter(|(_, t)| t.qos >= 1)
        .all(|(topic, t)| {
            far.topics
                .get(topic)
                .is_some_and(|f| t.readings.is_subset(&f.readings) && f.other >= t.other)
        })
}

/// Step 8: the boards first (the brokers publish the door sensors' last will), then the link
/// drains (up to 30 s), then the gateway, the receiver, the monitors, brokers and air.
pub(super) fn stop_in_order(
    procs: &Procs,
    boards: &[u32],
    net: Network,
    monitors: &mut Monitors,
) -> Result<Ended> {
    procs.stop(boards, Duration::from_secs(5));
    nap(Duration::from_millis(500))?;
    let drain_started = Instant::now();
    let drain_deadline = drain_started + Duration::from_secs(30);
    loop {
        let done = {
            let (a, b) = monitors.seen();
            drained(&a, &b)
        };
        if done || Instant::now() > drain_deadline || !procs.running(net.gateway) {
            break;
        }
        nap(Duration::from_millis(100))?;
    }
    note(&format!(
        "link drained in {:.1} s",
        drain_started.elapsed().as_secs_f64()
    ));
    procs.stop(&[net.gateway], Duration::from_secs(15));
    let mut gw_out = String::new();
    if let Some(mut s) = net.gateway_stdout {
        let _ = s.read_to_string(&mut gw_out);
    }
    let gateway: Value = gw_out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    procs.stop(&[net.receiver], Duration::from_secs(10));
    let receiver: Value = std::fs::read_to_string(&net.receiver_log)
        .unwrap_or_default()
        .lines()
        .rev()
        .find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v.get("records").is_some())
        })
        .unwrap_or(Value::Null);
    monitors.stop(procs);
    procs.stop(
        &[net.near_broker, net.far_broker, net.air],
        Duration::from_secs(5),
    );
    Ok(Ended { gateway, receiver })
}
