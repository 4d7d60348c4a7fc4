//! `gateway broker-agent`: keeps the mosquitto of this machine in step with the bench.
//!
//! It runs on the broker's machine (Pi #1 already runs `gateway`, built for it, with the MQTT
//! and TLS stack this needs; the provisioner, with the CA and the ledger, stays on the bench).
//! It connects to its own broker with its own client certificate, subscribes to its update
//! topic (retained: the newest update arrives on every connection), and for each message:
//! verifies the signature with the pinned site CA key, refuses an update for another broker
//! or with a sequence below the installed one (a replay), installs the ACL, the CRL and the
//! broker's chain atomically ([`install`]), records the sequence, and reloads the one
//! mosquitto of its configuration through that configuration's pid file ([`reload`]).
//! Every refusal is logged, escaped, with its reason.

pub mod install;
pub mod reload;

use std::path::{Path, PathBuf};
use std::time::Duration;

use lora_link::mqtt::{Backoff, mqtt_options};
use manifests::agent::AgentConfig;
use rumqttc::{Client, Event, Packet, QoS};
use tls_client::{TlsFiles, check_client_id, client_config};

use crate::log;

/// Default configuration path (written by `provisioner deploy broker`).
pub const DEFAULT_CONFIG: &str = "/etc/iot-broker-agent/agent.toml";

/// Arguments of `gateway broker-agent`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "EXAMPLES:\n  \
gateway broker-agent                       # /etc/iot-broker-agent/agent.toml (the systemd unit)\n  \
gateway broker-agent --config agent.toml --check\n\n\
Installed by `provisioner deploy broker --root DIR` with its unit iot-broker-agent.service.\n\
Updates are signed by the site CA (key pinned in agent.toml at deploy) and numbered: a forged\n\
update, one for another broker, or one older than the installed sequence is refused and logged.")]
pub struct Args {
    /// The agent's configuration.
    #[arg(long, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Treat DIR as this machine's root: every path of the configuration (and the
    /// configuration itself) is resolved inside it, as `deploy broker --root` wrote them.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Load and check the configuration, certificates and installed state; then exit.
    #[arg(long)]
    pub check: bool,
}

/// The configuration with its paths as this process reaches them.
#[derive(Debug, Clone)]
pub struct Agent {
    /// As written.
    pub config: AgentConfig,
    /// `state_file`, resolved.
    pub state_file: PathBuf,
    /// `mosquitto.dir`, resolved.
    pub broker_dir: PathBuf,
    /// `mosquitto.pid_file`, resolved.
    pub pid_file: PathBuf,
    /// Gid owning the broker's files, when a group is configured and we are root.
    pub group: Option<u32>,
}

impl Agent {
    /// Loads `args.config` under `args.root`.
    pub fn load(args: &Args) -> Result<(Agent, TlsFiles), String> {
        let root = args
            .root
            .canonicalize()
            .map_err(|e| format!("--root {}: {e}", args.root.display()))?;
        let inside = |p: &Path| {
            if root == Path::new("/") {
                return Ok(p.to_path_buf());
            }
            safe_fs::resolve_in_root(&root, p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let path = inside(&args.config)?;
        let config = AgentConfig::load(&path).map_err(|e| e.to_string())?;
        let tls = TlsFiles {
            ca_file: inside(&config.mqtt.ca_file)?,
            cert_file: inside(&config.mqtt.cert_file)?,
            key_file: inside(&config.mqtt.key_file)?,
            server_name: config.mqtt.server_name.clone(),
        };
        let group = match &config.mosquitto.group {
            Some(g) if nix::unistd::geteuid().is_root() => Some(
                nix::unistd::Group::from_name(g)
                    .map_err(|e| format!("group `{g}`: {e}"))?
                    .ok_or_else(|| format!("{}: no group `{g}` on this machine", path.display()))?
                    .gid
                    .as_raw(),
            ),
            _ => None,
        };
        let agent = Agent {
            state_file: inside(&config.state_file)?,
            broker_dir: if root == Path::new("/") {
                config.mosquitto.dir.clone()
            } else {
                safe_fs::root::resolve_dir(&root, &config.mosquitto.dir)
                    .map_err(|e| format!("{}: {e}", config.mosquitto.dir.display()))?
            },
            pid_file: inside(&config.mosquitto.pid_file)?,
            group,
            config,
        };
        Ok((agent, tls))
    }
}

/// Runs `gateway broker-agent` until killed (SIGTERM: nothing is half-written, every file is
/// replaced by a rename).
pub fn run(args: &Args) -> Result<(), (u8, String)> {
    let (agent, files) = Agent::load(args).map_err(|e| (2, e))?;
    let c = &agent.config;
    let tls = client_config(&files).map_err(|e| (2, e.to_string()))?;
    check_client_id(&c.mqtt.client_id, &files.cert_file)
        .map_err(|e| (2, format!("field `mqtt.client_id`: {e}")))?;
    let installed = install::read_state(&agent.state_file).map_err(|e| (1, e))?;
    if args.check {
        log!(
            "broker-agent: {} is valid: broker `{}` at {}:{}, topic {}, installed sequence {}",
            args.config.display(),
            c.broker,
            c.mqtt.host,
            c.mqtt.port,
            c.topic,
            installed.sequence
        );
        return Ok(());
    }
    let mut options = mqtt_options(
        &c.mqtt.client_id,
        &c.mqtt.host,
        c.mqtt.port,
        Duration::from_secs(30),
        tls,
    );
    let limit = manifests::update::MAX_UPDATE_BYTES + 4096;
    options.set_max_packet_size(limit, 16 * 1024);
    let (client, mut connection) = Client::new(options, 10);
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    log!(
        "broker-agent: broker `{}`, installed sequence {}, connecting to {}:{} for {}",
        c.broker,
        installed.sequence,
        c.mqtt.host,
        c.mqtt.port,
        c.topic
    );
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                if let Err(e) = client.try_subscribe(c.topic.clone(), QoS::AtLeastOnce) {
                    log!("broker-agent: cannot queue the subscription: {e}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == c.topic => {
                report(&install::apply(&agent, &p.payload));
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                log!("broker-agent: ignored a message on {}", p.topic);
            }
            Ok(_) => {}
            Err(e) => {
                let wait = backoff.next_delay();
                log!("broker-agent: broker connection: {e}; retrying in {wait:?}");
                std::thread::sleep(wait);
            }
        }
    }
    Ok(())
}

fn report(outcome: &install::Outcome) {
    match outcome {
        install::Outcome::Installed {
            sequence,
            files,
            reload,
        } => log!(
            "broker-agent: installed update {sequence} ({}); {reload}",
            files.join(", ")
        ),
        install::Outcome::Current(seq) => {
            log!("broker-agent: update {seq} is the one installed")
        }
        install::Outcome::Refused(why) => log!("broker-agent: REFUSED update: {why}"),
    }
}
