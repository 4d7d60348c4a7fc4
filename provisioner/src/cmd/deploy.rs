//! `provisioner deploy gateway|receiver ID --root DIR`: installs a node's configuration and
//! its systemd unit into a root filesystem (a Pi's NFS root, an SD card's mounted root, a
//! staging tree), atomically and with the right modes.
//!
//! Layout in ROOT (paths inside the manifests are the paths as seen on the Pi):
//!
//! ```text
//! gateway (Pi #1):
//! etc/iot-gateway/                     0700  gateway.toml link.toml (0600), ID.key link.key (0600),
//!                                            ID.crt ca.crt (0644)
//! etc/systemd/system/iot-gateway.service 0644
//! usr/local/share/man/man1/gateway.1   0644  the unit's Documentation=man:gateway(1)
//! var/lib/iot-gateway/                 0700  counter lease, counters.json (StateDirectory)
//!
//! receiver (Pi #2):
//! etc/lora-link/                       0700  receiver.toml (0600), ID.key and one
//!                                            link-GATEWAY-N.key per gateway key (0600),
//!                                            ID.crt ca.crt (0644)
//! etc/systemd/system/lora-link-rx.service 0644  ExecReload = SIGHUP: keys reloaded in place
//! var/lib/lora-link/                   0700  replay state (StateDirectory)
//! ```
//!
//! The configuration directory is staged next to its final place (`etc/.NAME.new`) and
//! renamed over it, so the Pi sees either the old or the new configuration, never a mix. The
//! root is registered (`cmd::link`): a key rotation or a new gateway installs it again.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cmd::emit::{GatewayOptions, NodeOptions, Placement, RadioOptions};
use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// Configuration directory on the target.
pub const ETC_DIR: &str = "/etc/iot-gateway";
/// State directory on the target (systemd `StateDirectory=iot-gateway`).
pub const STATE_DIR: &str = "/var/lib/iot-gateway";
/// The unit file on the target.
pub const UNIT_PATH: &str = "/etc/systemd/system/iot-gateway.service";
/// The gateway's manual page on the target (the unit's `Documentation=man:gateway(1)`).
pub const MAN_PATH: &str = "/usr/local/share/man/man1/gateway.1";
/// The receiver's configuration directory on the target.
pub const RX_ETC_DIR: &str = "/etc/lora-link";
/// The receiver's state directory on the target (`StateDirectory=lora-link`).
pub const RX_STATE_DIR: &str = "/var/lib/lora-link";
/// The receiver's unit file on the target.
pub const RX_UNIT_PATH: &str = "/etc/systemd/system/lora-link-rx.service";

/// Where a node kind lives on its Pi.
struct Target {
    etc: &'static str,
    state: &'static str,
    unit: &'static str,
    man: Option<&'static str>,
    enable: &'static str,
}

const GATEWAY: Target = Target {
    etc: ETC_DIR,
    state: STATE_DIR,
    unit: UNIT_PATH,
    man: Some(MAN_PATH),
    enable: "systemctl daemon-reload && systemctl enable --now iot-gateway",
};

const RECEIVER: Target = Target {
    etc: RX_ETC_DIR,
    state: RX_STATE_DIR,
    unit: RX_UNIT_PATH,
    man: None,
    enable: "systemctl daemon-reload && systemctl enable --now lora-link-rx (already running: systemctl reload lora-link-rx)",
};

fn target(kind: &str) -> &'static Target {
    if kind == "gateway" {
        &GATEWAY
    } else {
        &RECEIVER
    }
}

/// `deploy` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeployCommand {
    /// Install the gateway's manifests, certificates, keys and systemd unit into a root
    /// filesystem.
    #[command(after_help = "EXAMPLES:\n  \
provisioner deploy gateway passerelle --root /srv/nfs/pi1\n  \
provisioner deploy gateway passerelle --root /mnt/sdcard --broker-host localhost\n\n\
Then on the Pi: systemctl daemon-reload && systemctl enable --now iot-gateway\n\n\
Files: /etc/iot-gateway/ (0700; keys and manifests 0600), /etc/systemd/system/iot-gateway.service,\n\
/usr/local/share/man/man1/gateway.1, /var/lib/iot-gateway/ (0700). Re-running it replaces /etc/iot-gateway atomically with the same\n\
certificate, key and link key. The gateway binary itself is not copied (see --bin).\n\
Links inside ROOT are followed as the Pi sees them (an absolute link from ROOT, never from this\n\
machine's /); a link that leaves ROOT is refused before anything is written.\n\
ROOT is registered with these options: `link rotate` installs the gateway's new key there and\n\
`provisioner renew` a new certificate when it is due (then on the Pi: systemctl restart\n\
iot-gateway); `emit gateway --forget ROOT` stops that. A root another home (or the original of\n\
this copy) installed is refused. The gateway's receiver, if registered (emit/deploy receiver),\n\
is written again so it accepts this gateway.")]
    Gateway(GatewayArgs),
    /// Install the receiver's manifest (every gateway's key), certificate, keys and systemd
    /// unit into a root filesystem.
    #[command(after_help = "EXAMPLES:\n  \
provisioner deploy receiver recepteur --root /srv/nfs/pi2\n  \
provisioner deploy receiver recepteur --root /mnt/sdcard --no-mqtt\n\n\
Then on the Pi: systemctl daemon-reload && systemctl enable --now lora-link-rx\n\
(a later install, e.g. after `link rotate` or a new gateway: systemctl reload lora-link-rx,\n\
which sends SIGHUP: `lora-link rx` takes the new keys without stopping its radio).\n\n\
Files: /etc/lora-link/ (0700; keys and manifest 0600), /etc/systemd/system/lora-link-rx.service,\n\
/var/lib/lora-link/ (0700, replay state). Replaced atomically; the binary is not copied (see\n\
--bin). Links inside ROOT are resolved as the Pi sees them; one that leaves ROOT is refused.\n\
ROOT is registered: `emit gateway` for a new gateway, `link rotate` and `link retire` install\n\
the receiver again, `provisioner renew` its new certificate (then: systemctl restart\n\
lora-link-rx); `emit receiver --forget ROOT` stops that. A root another home installed is refused.")]
    Receiver(ReceiverArgs),
    /// Install a broker directory (`emit broker --prefix`) and its update agent, with its
    /// systemd unit, into the broker machine's root filesystem.
    #[command(after_help = super::deploy_broker::HELP)]
    Broker(super::deploy_broker::Args),
}

/// Arguments of `deploy gateway`.
#[derive(Debug, clap::Args)]
pub struct GatewayArgs {
    /// Gateway id from the site file.
    #[arg(value_name = "ID")]
    id: String,
    /// The root filesystem to install into (must exist).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Path of the gateway binary on the target (ExecStart of the unit).
    #[arg(long, value_name = "PATH", default_value = "/usr/local/bin/gateway")]
    bin: PathBuf,
    /// The gateway's own options (the paths on the Pi are fixed: /etc/iot-gateway and
    /// /var/lib/iot-gateway; receiver options do not apply here).
    #[command(flatten)]
    node: GatewayOptions,
}

/// Arguments of `deploy receiver`.
#[derive(Debug, clap::Args)]
pub struct ReceiverArgs {
    /// Receiver id from the site file.
    #[arg(value_name = "ID")]
    id: String,
    /// The root filesystem to install into (must exist).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// Path of the lora-link binary on the target (ExecStart of the unit).
    #[arg(long, value_name = "PATH", default_value = "/usr/local/bin/lora-link")]
    bin: PathBuf,
    /// Broker on the receiver's side to republish on. Default: localhost (the broker on Pi #2).
    #[arg(long, value_name = "HOST")]
    broker_host: Option<String>,
    /// Port of that broker. Default: the site's broker port.
    #[arg(long, value_name = "PORT")]
    broker_port: Option<u16>,
    /// MQTT QoS for republishing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    #[command(flatten)]
    radio: RadioOptions,
    /// No [mqtt] section; `lora-link rx` prints JSON lines instead.
    #[arg(long)]
    no_mqtt: bool,
}

/// Runs `deploy`.
pub fn run(ctx: &Context, cmd: DeployCommand) -> Result<()> {
    let (kind, id, root, bin, opts) = match cmd {
        DeployCommand::Gateway(a) => {
            let opts = a.node.node(&Placement::default());
            ("gateway", a.id, a.root, a.bin, opts)
        }
        DeployCommand::Receiver(a) => {
            let opts = NodeOptions {
                broker_host: a.broker_host,
                broker_port: a.broker_port,
                server_name: None,
                qos: a.qos,
                air: a.radio.air,
                sf: a.radio.sf,
                state_dir: None,
                prefix: None,
                no_mqtt: a.no_mqtt,
            };
            ("receiver", a.id, a.root, a.bin, opts)
        }
        DeployCommand::Broker(args) => return super::deploy_broker::run(ctx, args),
    };
    manifests::topic::check_identity(&id)
        .map_err(|e| CliError::new(Code::Input, format!("{kind} id: expected {e}")))?;
    if !bin.is_absolute() {
        return Err(CliError::new(
            Code::Input,
            format!("--bin {}: expected an absolute path", bin.display()),
        ));
    }
    let root = check_root(&root)?;
    let installed = install(ctx, kind, &id, &root, &bin, &opts)?;
    super::nodes::register(
        &ctx.store()?,
        &super::nodes::NodeDir {
            kind: kind.into(),
            id: id.clone(),
            dir: root.clone(),
            options: opts,
            deploy_bin: Some(bin),
        },
    )?;
    let (receivers, receivers_human) = if kind == "gateway" {
        super::link::after_gateway(ctx, &id)?
    } else {
        (json!([]), String::new())
    };
    let t = target(kind);
    let mut placed = vec![t.etc.to_string(), t.unit.to_string()];
    placed.extend(t.man.map(String::from));
    placed.push(t.state.to_string());
    let human = format!(
        "{kind} `{id}` installed into {}: {} ({} files), {}\n  on the Pi: {}{receivers_human}",
        root.display(),
        t.etc,
        installed.files.len(),
        placed[1..].join(", "),
        t.enable,
    );
    ctx.print(
        &json!({ "id": id, "kind": kind, "root": root, "etc": t.etc, "unit": t.unit, "man": t.man, "state": t.state,
                 "files": installed.files, "serial": installed.serial, "existing": installed.existing,
                 "receivers": receivers }),
        &human,
    );
    Ok(())
}

/// The canonical root, refused when it is not a directory or is this machine's `/`.
pub(crate) fn check_root(root: &Path) -> Result<PathBuf> {
    let root = root.canonicalize().map_err(|e| {
        CliError::new(Code::Input, format!("--root {}: {e}", root.display()))
            .with_help("give the mounted root filesystem of the Pi (it must exist)")
    })?;
    if !root.is_dir() {
        return Err(CliError::new(
            Code::Input,
            format!("--root {}: not a directory", root.display()),
        ));
    }
    if root == Path::new("/") {
        return Err(CliError::new(
            Code::Input,
            "--root /: refusing to install into this machine's own root",
        )
        .with_help("give the Pi's root filesystem, e.g. /srv/nfs/pi1"));
    }
    Ok(root)
}

/// A path as the Pi sees it, inside `root`: links planted in ROOT are resolved inside it,
/// and one that leaves it is refused before anything is written.
pub(crate) fn inside_root(root: &Path, p: &Path) -> Result<PathBuf> {
    safe_fs::resolve_in_root(root, p).map_err(|e| {
        CliError::new(Code::Input, format!("--root {}: {e}", root.display()))
            .with_help("remove the link, or give the Pi's own root filesystem")
    })
}

fn inside(root: &Path, p: &str) -> Result<PathBuf> {
    inside_root(root, Path::new(p))
}

/// The configuration directory of a `kind` node installed in `root` (for the registry).
pub fn config_dir_in(root: &Path, kind: &str) -> Result<PathBuf> {
    inside(root, target(kind).etc)
}

/// What [`install`] put in place.
#[derive(Debug)]
pub struct Installed {
    /// The files, as the Pi names them.
    pub files: Vec<PathBuf>,
    /// The node's certificate serial.
    pub serial: String,
    /// Whether the certificate existed already.
    pub existing: bool,
}

/// Installs node `kind`/`id` into `root` (canonical, checked): configuration staged and
/// swapped in, unit, manual page (gateway), state directory. Also what a refresh after a key
/// change runs.
pub fn install(
    ctx: &Context,
    kind: &str,
    id: &str,
    root: &Path,
    bin: &Path,
    opts: &NodeOptions,
) -> Result<Installed> {
    let t = target(kind);
    let etc = inside(root, t.etc)?;
    // A root another home (or the original of this copy) installed is not ours to replace.
    let home = ctx.store()?.home_binding()?;
    if etc.is_dir() {
        super::nodes::claim(&home, &etc)?;
    }
    let etc_parent = etc.parent().map(Path::to_path_buf).unwrap_or(root.into());
    let state = inside(root, t.state)?;
    let unit = inside(root, t.unit)?;
    let man = t.man.map(|m| inside(root, m)).transpose()?;
    let mut dirs = vec![
        etc_parent.clone(),
        state.clone(),
        unit.parent().unwrap_or(root).to_path_buf(),
    ];
    dirs.extend(man.iter().map(|m| m.parent().unwrap_or(root).to_path_buf()));
    for d in &dirs {
        mkdirs(root, d, if *d == state { 0o700 } else { 0o755 })?;
    }
    safe_fs::create_dir(&state, 0o700, None).map_err(|e| crate::exit::io(&state, e))?;

    // Stage the configuration next to its final place, then swap it in.
    let name = etc
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = etc_parent.join(format!(".{name}.new"));
    let old = etc_parent.join(format!(".{name}.old"));
    for leftover in [&staging, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(|e| crate::exit::io(leftover, e))?;
        }
    }
    safe_fs::create_dir(&staging, 0o700, None).map_err(|e| crate::exit::io(&staging, e))?;
    let mut opts = opts.clone();
    opts.prefix = Some(PathBuf::from(t.etc));
    opts.state_dir = Some(PathBuf::from(t.state));
    let written = if kind == "gateway" {
        super::emit::write_gateway(ctx, id, &opts, &staging)
    } else {
        super::emit::write_receiver(ctx, id, &opts, &staging)
    };
    let marker = super::nodes::write_marker(&home, &staging);
    let emitted = match written.and_then(|e| marker.map(|_| e)) {
        Ok(e) => e,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let unit_text = if kind == "gateway" {
        render_unit(id, bin)
    } else {
        render_receiver_unit(id, bin)
    };
    ca::fsutil::write_atomic(&unit, unit_text.as_bytes(), 0o644)?;
    if let Some(man) = &man {
        let page = cli_common::man_page(gateway::cli::command())
            .map_err(|e| CliError::new(Code::Failure, format!("rendering gateway.1: {e}")))?;
        ca::fsutil::write_atomic(man, &page, 0o644)?;
    }
    if etc.exists() {
        std::fs::rename(&etc, &old).map_err(|e| crate::exit::io(&etc, e))?;
    }
    std::fs::rename(&staging, &etc).map_err(|e| crate::exit::io(&etc, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| crate::exit::io(&old, e))?;
    }
    if let Ok(d) = std::fs::File::open(&etc_parent) {
        let _ = d.sync_all();
    }
    let files = emitted
        .files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|n| Path::new(t.etc).join(n))
        .collect();
    Ok(Installed {
        files,
        serial: emitted.serial,
        existing: emitted.existing,
    })
}

/// Creates `dir` (resolved inside `root`) and checks that nothing swapped a link into its
/// path meanwhile: the directory must still be where the resolution put it.
pub(crate) fn mkdirs(root: &Path, dir: &Path, mode: u32) -> Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(|e| crate::exit::io(dir, e))?;
    let real = dir.canonicalize().map_err(|e| crate::exit::io(dir, e))?;
    if real != dir || !real.starts_with(root) {
        return Err(CliError::new(
            Code::Input,
            format!(
                "{} moved to {} while it was created: a link was planted under --root {}",
                dir.display(),
                real.display(),
                root.display()
            ),
        ));
    }
    Ok(())
}

/// The systemd unit: restarts on failure, stops with SIGTERM (the gateway then flushes
/// within the duty-cycle budget and prints its counters), and is confined: read-only system,
/// writable state directory only, no privilege escalation. It runs as root because the keys
/// are root's and SPI/GPIO need it on a stock Raspberry Pi OS.
pub fn render_unit(id: &str, bin: &Path) -> String {
    format!(
        "# Written by `provisioner deploy gateway {id}`; re-running it replaces this file.
[Unit]
Description=IoT gateway {id}: MQTT (mutual TLS) to the secure LoRa link
Documentation=man:gateway(1)
After=network-online.target mosquitto.service
Wants=network-online.target

[Service]
Type=simple
ExecStart={bin} --manifest {ETC_DIR}/gateway.toml
Restart=on-failure
RestartSec=5
KillSignal=SIGTERM
TimeoutStopSec=15
StateDirectory=iot-gateway
StateDirectoryMode=0700
ConfigurationDirectory=iot-gateway
ConfigurationDirectoryMode=0700
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
CapabilityBoundingSet=
# SPI and GPIO of the LoRa HAT (Dragino: CS GPIO25, RESET GPIO17, DIO0 GPIO4)
DevicePolicy=closed
DeviceAllow=/dev/spidev0.0 rw
DeviceAllow=/dev/spidev0.1 rw
DeviceAllow=/dev/gpiomem rw
DeviceAllow=char-gpiochip rw

[Install]
WantedBy=multi-user.target
",
        bin = bin.display(),
    )
}

/// The receiver's unit: like the gateway's, and `systemctl reload` sends SIGHUP, on which
/// `lora-link rx` reads its manifest's keys and topic table again without stopping.
pub fn render_receiver_unit(id: &str, bin: &Path) -> String {
    let gw = render_unit(id, bin);
    let service = gw
        .split_once("[Service]\n")
        .and_then(|(_, rest)| rest.split_once("\n[Install]"))
        .map(|(s, _)| s)
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            !["ExecStart=", "StateDirectory=", "ConfigurationDirectory="]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "# Written by `provisioner deploy receiver {id}`; re-running it replaces this file.
[Unit]
Description=IoT LoRa receiver {id}: secure LoRa link to MQTT (mutual TLS)
After=network-online.target mosquitto.service
Wants=network-online.target

[Service]
ExecStart={bin} rx --manifest {RX_ETC_DIR}/receiver.toml
ExecReload=/bin/kill -HUP $MAINPID
StateDirectory=lora-link
ConfigurationDirectory=lora-link
{service}

[Install]
WantedBy=multi-user.target
",
        bin = bin.display(),
    )
}
