//! `provisioner deploy broker --root DIR --from OUT`: installs a broker directory and its
//! update agent (`gateway broker-agent`) into the broker machine's root filesystem.
//!
//! Layout in ROOT (PREFIX = the `--prefix` OUT was emitted with, the path on the broker):
//!
//! ```text
//! PREFIX/                                 0750 root:GROUP  mosquitto.conf acl crl.pem ca.crt
//!                                                          broker.crt broker.key (0640 root:GROUP)
//! PREFIX/run/                             0750 ACCOUNT     mosquitto's pid file
//! etc/iot-broker-agent/                   0700  agent.toml (0600), agent.key (0600), agent.crt ca.crt
//! var/lib/iot-broker-agent/               0700  state.toml: the installed update's sequence
//! etc/systemd/system/iot-broker-agent.service 0644
//! ```
//!
//! The agent's trust anchor is pinned here: the public key of the CA that signs the CRL
//! (`signer_public_key` in agent.toml). Two client identities are certified: the agent's
//! (`broker-agent-NAME`, reads its update topic only) and the bench's (`provisioner-bench`,
//! writes the update topics); both are in the ACL before the files are copied.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::agents::{self, BENCH_ID, DeployedBroker};
use super::deploy::{check_root, inside_root, mkdirs};
use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// The agent's configuration directory on the target.
pub const AGENT_DIR: &str = "/etc/iot-broker-agent";
/// The agent's state directory on the target (systemd `StateDirectory=iot-broker-agent`).
pub const AGENT_STATE_DIR: &str = "/var/lib/iot-broker-agent";
/// The agent's unit on the target.
pub const AGENT_UNIT: &str = "/etc/systemd/system/iot-broker-agent.service";

/// `deploy broker --help` epilogue.
pub const HELP: &str = "EXAMPLES:\n  \
provisioner emit broker --out ./pi1-broker --prefix /etc/mosquitto/site --run-as mosquitto\n  \
provisioner deploy broker --root /srv/nfs/pi1 --from ./pi1-broker --name pi1\n\n\
Then on the broker machine: systemctl daemon-reload && systemctl enable --now iot-broker-agent\n\
(and mosquitto -c PREFIX/mosquitto.conf, e.g. from mosquitto.service).\n\n\
From then on every ledger change (cert sign, device provision and revoke, server issue, crl)\n\
publishes a signed update (ACL, CRL, broker certificate; sequence number) to the broker, retained\n\
on provisioner/updates/broker/NAME; the agent verifies it against the CA key pinned here, refuses\n\
older or forged ones, installs it and reloads only its own mosquitto (pid file). Install the CRL\n\
timer of `emit broker` on the bench: it publishes the renewed CRL too. Bench unreachable: the\n\
update waits in the ledger; `provisioner crl` publishes it once the broker answers.\n\n\
The agent binary is `gateway` (Pi #1 runs it already); it is not copied (see --bin).";

/// Arguments of `deploy broker`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The root filesystem of the broker's machine (must exist).
    #[arg(long, value_name = "DIR")]
    root: PathBuf,
    /// The broker directory to install: registered by `emit broker --out OUT --prefix PATH`
    /// (PATH is where it goes under ROOT).
    #[arg(long, value_name = "OUT")]
    from: PathBuf,
    /// The broker's name (update topic, agent identity). Default: OUT's directory name.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Where the bench reaches the broker. Default: the site's broker (`connect`, else its
    /// first name).
    #[arg(long, value_name = "HOST")]
    broker_host: Option<String>,
    /// TLS name to check in the broker's certificate (bench and agent). Default: the site's
    /// broker name when it differs from the address connected to.
    #[arg(long, value_name = "NAME")]
    server_name: Option<String>,
    /// Path of the `gateway` binary on the target (ExecStart of the unit).
    #[arg(long, value_name = "PATH", default_value = "/usr/local/bin/gateway")]
    bin: PathBuf,
}

/// Runs `deploy broker`.
pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let root = check_root(&args.root)?;
    if !args.bin.is_absolute() {
        return Err(CliError::new(
            Code::Input,
            format!("--bin {}: expected an absolute path", args.bin.display()),
        ));
    }
    let store = ctx.store()?;
    let site = ctx.site()?;
    let reg = registered(&store, &args.from)?;
    let name = broker_name(&args, &reg.dir)?;
    let prefix = reg.prefix.clone().ok_or_else(|| {
        CliError::new(
            Code::State,
            format!("{} was emitted without --prefix", reg.dir.display()),
        )
        .with_help(format!(
            "give the path on the broker machine: provisioner emit broker --out {} --prefix /etc/mosquitto/site",
            reg.dir.display()
        ))
    })?;
    let port = reg.port.unwrap_or(site.broker.port);
    let host = super::emit::broker_host(&site, args.broker_host.as_deref())?;
    let server_name = args
        .server_name
        .clone()
        .or_else(|| site.broker.server_name())
        .filter(|n| n != &host);

    // Identities first: the ACL copied below lets the bench write and the agent read.
    let mut authority = ctx.authority()?;
    let topic = manifests::agent::update_topic(&name);
    let bench = super::emit::issue_node(
        ctx,
        &mut authority,
        &site,
        BENCH_ID,
        "bench",
        vec![],
        vec![format!("{}/+", manifests::agent::UPDATE_TOPIC_PREFIX)],
    )?;
    let (bench_crt, _) = agents::bench_files(ctx);
    ca::fsutil::write_atomic(&bench_crt, bench.chain_pem.as_bytes(), 0o644)?;
    let agent_id = agents::agent_id(&name);
    let agent = super::emit::issue_node(
        ctx,
        &mut authority,
        &site,
        &agent_id,
        "agent",
        vec![topic.clone()],
        vec![],
    )?;
    let signer = hex::encode(authority.signer_public_key());
    drop(authority);
    let deployed = DeployedBroker {
        name: name.clone(),
        dir: reg.dir.clone(),
        host,
        port,
        server_name: server_name.clone(),
    };
    agents::register(&store, &deployed)?;
    let refreshed = super::brokers::refresh(ctx);
    if let Some((_, why)) = refreshed.skipped.iter().find(|(d, _)| d == &reg.dir) {
        return Err(CliError::new(
            Code::State,
            format!("{}: not rewritten: {why}", reg.dir.display()),
        ));
    }

    let account = reg.run_as.clone().unwrap_or_else(|| "mosquitto".into());
    let owners = Owners::lookup(&root, &account)?;
    let broker_dir = install_broker_dir(&root, &reg.dir, &prefix, &owners)?;
    let config = manifests::agent::AgentConfig {
        version: manifests::agent::AGENT_CONFIG_VERSION,
        broker: name.clone(),
        topic: topic.clone(),
        signer_public_key: signer,
        state_file: Path::new(AGENT_STATE_DIR).join("state.toml"),
        mqtt: manifests::agent::AgentMqtt {
            host: reg.bind.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port,
            server_name,
            client_id: agent_id.clone(),
            ca_file: Path::new(AGENT_DIR).join("ca.crt"),
            cert_file: Path::new(AGENT_DIR).join("agent.crt"),
            key_file: Path::new(AGENT_DIR).join("agent.key"),
        },
        mosquitto: manifests::agent::AgentBroker {
            dir: prefix.clone(),
            pid_file: prefix
                .join(super::emit::RUN_DIR)
                .join(super::emit::PID_FILE),
            group: Some(account.clone()),
        },
    };
    let sequence = agents::last_sequence(&store, &name)?;
    install_agent(ctx, &root, &config, &agent, sequence, &args.bin)?;

    let human = format!(
        "broker `{name}` installed into {}: {} (from {}), agent {AGENT_DIR} (identity {agent_id}, CA key pinned), {AGENT_STATE_DIR} (sequence {sequence}), {AGENT_UNIT}\n  on the broker: systemctl daemon-reload && systemctl enable --now iot-broker-agent\n  updates: every ledger change publishes one to {}:{port} on {topic} (signed, retained); `provisioner crl` publishes one that is waiting",
        root.display(),
        prefix.display(),
        reg.dir.display(),
        deployed.host,
    ) + &agents::human(&refreshed.agents);
    ctx.print(
        &json!({ "name": name, "root": root, "broker_dir": prefix, "installed": broker_dir,
                 "agent": { "id": agent_id, "serial": agent.serial, "config": Path::new(AGENT_DIR).join("agent.toml") },
                 "bench": { "id": BENCH_ID, "serial": bench.serial },
                 "unit": AGENT_UNIT, "topic": topic, "sequence": sequence, "updates": agents::json(&refreshed.agents), "publish_to": format!("{}:{port}", deployed.host) }),
        &human,
    );
    Ok(())
}

/// The registered broker directory OUT.
fn registered(store: &ca::Store, from: &Path) -> Result<ca::authority::BrokerDir> {
    let dir = from.canonicalize().map_err(|e| {
        CliError::new(Code::Input, format!("--from {}: {e}", from.display()))
            .with_help("run `provisioner emit broker --out OUT --prefix PATH` first")
    })?;
    store
        .brokers()?
        .into_iter()
        .find(|b| b.dir == dir)
        .ok_or_else(|| {
            CliError::new(
                Code::State,
                format!("{} is not a broker directory of this home", dir.display()),
            )
            .with_help("run `provisioner emit broker --out OUT --prefix PATH` first")
        })
}

fn broker_name(args: &Args, dir: &Path) -> Result<String> {
    let name = match &args.name {
        Some(n) => n.clone(),
        None => dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    manifests::topic::check_identity(&name).map_err(|e| {
        CliError::new(Code::Input, format!("broker name `{name}`: expected {e}"))
            .with_help("give --name NAME")
    })?;
    Ok(name)
}

/// Owners of the broker's files on the target: root and the group of mosquitto's account,
/// looked up in ROOT/etc/passwd and ROOT/etc/group (the target's ids), else on this machine.
/// None when we are not root (nothing can be given away).
struct Owners {
    /// (uid, gid) of mosquitto's account.
    account: Option<(u32, u32)>,
}

impl Owners {
    fn lookup(root: &Path, account: &str) -> Result<Owners> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(Owners { account: None });
        }
        let from_root = safe_fs::read_limited_string(&root.join("etc/passwd"), 1 << 20)
            .ok()
            .and_then(|text| {
                text.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4 && f[0] == account)
                        .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
                        .flatten()
                })
            });
        let local = || {
            nix::unistd::User::from_name(account)
                .ok()
                .flatten()
                .map(|u| (u.uid.as_raw(), u.gid.as_raw()))
        };
        match from_root.or_else(local) {
            Some(ids) => Ok(Owners { account: Some(ids) }),
            None => Err(CliError::new(
                Code::Input,
                format!("no account `{account}` in {}/etc/passwd nor on this machine", root.display()),
            )
            .with_help("install mosquitto on the broker machine first (it creates the account), or emit broker with --run-as")),
        }
    }

    /// How a broker file is written: 0640 root:GROUP (0600 / 0644 ours without root).
    fn file(&self, secret: bool) -> safe_fs::Replace {
        match self.account {
            Some((_, gid)) => safe_fs::Replace::new(0o640).owner(Some((0, gid))),
            None => safe_fs::Replace::new(if secret { 0o600 } else { 0o644 }),
        }
    }
}

/// The files of a broker directory that go to the broker (the home marker stays here).
const BROKER_FILES: [&str; 6] = [
    "mosquitto.conf",
    "acl",
    "crl.pem",
    "ca.crt",
    "broker.crt",
    "broker.key",
];

/// Copies OUT's files into ROOT/PREFIX, each replaced atomically, the key last but one and
/// the configuration last (so mosquitto never reads a configuration naming missing files).
fn install_broker_dir(root: &Path, out: &Path, prefix: &Path, owners: &Owners) -> Result<PathBuf> {
    let target = inside_root(root, prefix)?;
    if let Some(parent) = target.parent() {
        mkdirs(root, parent, 0o755)?;
    }
    let (mode, owner) = match owners.account {
        Some((_, gid)) => (0o750, Some((0, gid))),
        None => (0o700, None),
    };
    safe_fs::create_dir(&target, mode, owner).map_err(|e| crate::exit::io(&target, e))?;
    for name in BROKER_FILES.iter().rev() {
        let src = out.join(name);
        let data = safe_fs::read_limited(&src, 1 << 20).map_err(|e| crate::exit::io(&src, e))?;
        let dst = target.join(name);
        safe_fs::replace(&dst, &data, &owners.file(*name == "broker.key"))
            .map_err(|e| crate::exit::io(&dst, e))?;
    }
    let run = target.join(super::emit::RUN_DIR);
    let (mode, owner) = match owners.account {
        Some(ids) => (0o750, Some(ids)),
        None => (0o700, None),
    };
    safe_fs::create_dir(&run, mode, owner).map_err(|e| crate::exit::io(&run, e))?;
    Ok(target)
}

/// Writes the agent's directory, state (never lowering an installed sequence) and unit.
fn install_agent(
    ctx: &Context,
    root: &Path,
    config: &manifests::agent::AgentConfig,
    agent: &super::emit::NodeIdentity,
    sequence: u64,
    bin: &Path,
) -> Result<()> {
    let dir = inside_root(root, Path::new(AGENT_DIR))?;
    let state_dir = inside_root(root, Path::new(AGENT_STATE_DIR))?;
    let unit = inside_root(root, Path::new(AGENT_UNIT))?;
    for d in [dir.parent(), state_dir.parent(), unit.parent()]
        .into_iter()
        .flatten()
    {
        mkdirs(root, d, 0o755)?;
    }
    for d in [&dir, &state_dir] {
        safe_fs::create_dir(d, 0o700, None).map_err(|e| crate::exit::io(d, e))?;
    }
    let bundle = safe_fs::read_limited(&ctx.layout.ca_bundle(), 1 << 20)
        .map_err(|e| crate::exit::io(&ctx.layout.ca_bundle(), e))?;
    let text = config.to_toml()?;
    for (name, data, mode) in [
        ("ca.crt", bundle.as_slice(), 0o644),
        ("agent.crt", agent.chain_pem.as_bytes(), 0o644),
        ("agent.key", agent.key_pem.as_bytes(), 0o600),
        ("agent.toml", text.as_bytes(), 0o600),
    ] {
        let p = dir.join(name);
        safe_fs::replace(&p, data, &safe_fs::Replace::new(mode))
            .map_err(|e| crate::exit::io(&p, e))?;
    }
    let state_file = state_dir.join("state.toml");
    let installed = gateway::agent::install::read_state(&state_file)
        .map_err(|e| CliError::new(Code::State, e))?;
    if installed.sequence < sequence {
        let state = gateway::agent::install::State {
            sequence,
            issued_at: ca::clock::now().unix_timestamp(),
        };
        gateway::agent::install::write_state(&state_file, &state)
            .map_err(|e| CliError::new(Code::Failure, e))?;
    }
    let unit_text = render_unit(&config.broker, bin, &config.mosquitto.dir);
    safe_fs::replace(&unit, unit_text.as_bytes(), &safe_fs::Replace::new(0o644))
        .map_err(|e| crate::exit::io(&unit, e))
}

/// The agent's systemd unit: after mosquitto, restarted on failure, confined to writing the
/// broker directory and its state directory.
pub fn render_unit(name: &str, bin: &Path, broker_dir: &Path) -> String {
    format!(
        "# Written by `provisioner deploy broker --name {name}`; re-running it replaces this file.
[Unit]
Description=Broker agent {name}: installs the bench's signed ACL/CRL/certificate updates and reloads mosquitto
Documentation=man:gateway(1)
After=network-online.target mosquitto.service
Wants=network-online.target

[Service]
Type=simple
ExecStart={bin} broker-agent --config {AGENT_DIR}/agent.toml
Restart=always
RestartSec=5
StateDirectory=iot-broker-agent
StateDirectoryMode=0700
UMask=0077
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={dir}
ProtectHome=yes
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
CapabilityBoundingSet=CAP_CHOWN CAP_FOWNER CAP_KILL CAP_DAC_OVERRIDE

[Install]
WantedBy=multi-user.target
",
        bin = bin.display(),
        dir = broker_dir.display(),
    )
}
