//! `provisioner deploy gateway ID --root DIR`: installs the gateway's configuration and its
//! systemd unit into a root filesystem (a Pi's NFS root, an SD card's mounted root, a
//! staging tree), atomically and with the right modes.
//!
//! Layout in ROOT (paths inside the manifests are the paths as seen on the Pi):
//!
//! ```text
//! etc/iot-gateway/                     0700  gateway.toml link.toml (0600), ID.key link.key (0600),
//!                                            ID.crt ca.crt (0644)
//! etc/systemd/system/iot-gateway.service 0644
//! usr/local/share/man/man1/gateway.1   0644  the unit's Documentation=man:gateway(1)
//! var/lib/iot-gateway/                 0700  counter lease, counters.json (StateDirectory)
//! ```
//!
//! The configuration directory is staged next to its final place (`etc/.iot-gateway.new`) and
//! renamed over it, so the Pi sees either the old or the new configuration, never a mix.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::cmd::emit::{GatewayOptions, Placement, write_gateway};
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
ROOT is registered with these options: `provisioner renew` installs a new certificate there\n\
when it is due (then on the Pi: systemctl restart iot-gateway); `emit gateway --forget ROOT`\n\
stops that. A root another home (or the original of this copy) installed is refused.\n\
Links inside ROOT are followed as the Pi sees them (an absolute link from ROOT, never from this\n\
machine's /); a link that leaves ROOT is refused before anything is written.")]
    Gateway(GatewayArgs),
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

/// Runs `deploy`.
pub fn run(ctx: &Context, cmd: DeployCommand) -> Result<()> {
    let DeployCommand::Gateway(args) = cmd;
    manifests::topic::check_identity(&args.id)
        .map_err(|e| CliError::new(Code::Input, format!("gateway id: expected {e}")))?;
    if !args.bin.is_absolute() {
        return Err(CliError::new(
            Code::Input,
            format!("--bin {}: expected an absolute path", args.bin.display()),
        ));
    }
    let root = args.root.canonicalize().map_err(|e| {
        CliError::new(Code::Input, format!("--root {}: {e}", args.root.display()))
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
    let opts = args.node.node(&Placement {
        prefix: Some(PathBuf::from(ETC_DIR)),
        state_dir: Some(PathBuf::from(STATE_DIR)),
    });
    let (emitted, files) = install(ctx, &args.id, &root, &args.bin, &opts)?;
    let human = format!(
        "gateway `{}` installed into {}: {ETC_DIR} ({} files), {UNIT_PATH}, {MAN_PATH}, {STATE_DIR}\n  on the Pi: systemctl daemon-reload && systemctl enable --now iot-gateway\n  registered: `provisioner renew` installs a new certificate here when it is due",
        args.id,
        root.display(),
        files.len(),
    );
    ctx.print(
        &json!({ "id": args.id, "root": root, "etc": ETC_DIR, "unit": UNIT_PATH, "man": MAN_PATH, "state": STATE_DIR,
                 "files": files, "serial": emitted.serial, "existing": emitted.existing }),
        &human,
    );
    Ok(())
}

/// Installs gateway `id` into the root filesystem `root` (canonical, checked) and registers
/// it (`cmd::nodes`): used by `deploy gateway` and by `renew`. Returns what was written and
/// the configuration files as the Pi sees them.
pub(crate) fn install(
    ctx: &Context,
    id: &str,
    root: &Path,
    bin: &Path,
    opts: &crate::cmd::emit::NodeOptions,
) -> Result<(crate::cmd::emit::NodeEmitted, Vec<PathBuf>)> {
    let root = root.to_path_buf();
    // Every path as the Pi sees it: links planted in ROOT are resolved inside it, and one
    // that leaves it is refused before anything is written.
    let inside = |p: &str| {
        safe_fs::resolve_in_root(&root, Path::new(p)).map_err(|e| {
            CliError::new(Code::Input, format!("--root {}: {e}", root.display()))
                .with_help("remove the link, or give the Pi's own root filesystem")
        })
    };
    let etc = inside(ETC_DIR)?;
    // A root another home (or the original of this copy) installed is not ours to replace.
    let store = ctx.store()?;
    let home = store.home_binding()?;
    if etc.is_dir() {
        crate::cmd::nodes::claim(&home, &etc)?;
    }
    let etc_parent = etc.parent().map(Path::to_path_buf).unwrap_or(root.clone());
    let state = inside(STATE_DIR)?;
    let unit = inside(UNIT_PATH)?;
    let man = inside(MAN_PATH)?;
    for d in [
        &etc_parent,
        &state,
        unit.parent().unwrap_or(&root),
        man.parent().unwrap_or(&root),
    ] {
        mkdirs(&root, d, if *d == state { 0o700 } else { 0o755 })?;
    }
    safe_fs::create_dir(&state, 0o700, None).map_err(|e| crate::exit::io(&state, e))?;

    // Stage the configuration next to its final place, then swap it in.
    let staging = etc_parent.join(".iot-gateway.new");
    let old = etc_parent.join(".iot-gateway.old");
    for leftover in [&staging, &old] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(|e| crate::exit::io(leftover, e))?;
        }
    }
    safe_fs::create_dir(&staging, 0o700, None).map_err(|e| crate::exit::io(&staging, e))?;
    let emitted = match write_gateway(ctx, id, opts, &staging)
        .and_then(|e| crate::cmd::nodes::write_marker(&home, &staging).map(|()| e))
    {
        Ok(e) => e,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    let unit_text = render_unit(id, bin);
    ca::fsutil::write_atomic(&unit, unit_text.as_bytes(), 0o644)?;
    let page = cli_common::man_page(gateway::cli::command())
        .map_err(|e| CliError::new(Code::Failure, format!("rendering gateway.1: {e}")))?;
    ca::fsutil::write_atomic(&man, &page, 0o644)?;
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
    let files: Vec<PathBuf> = emitted
        .files
        .iter()
        .filter_map(|f| f.file_name())
        .map(|n| Path::new(ETC_DIR).join(n))
        .collect();
    crate::cmd::nodes::register(
        &store,
        &crate::cmd::nodes::NodeDir {
            kind: "gateway".into(),
            id: id.to_string(),
            dir: root,
            options: opts.clone(),
            deploy_bin: Some(bin.to_path_buf()),
        },
    )?;
    Ok((emitted, files))
}

/// Creates `dir` (resolved inside `root`) and checks that nothing swapped a link into its
/// path meanwhile: the directory must still be where the resolution put it.
fn mkdirs(root: &Path, dir: &Path, mode: u32) -> Result<()> {
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
