//! `provisioner emit broker|gateway|receiver`: the configuration other programs consume
//! (`emit certdef` and `emit manifest` live in `cmd::certdef` and `cmd::manifest`).
//!
//! * `broker`: a complete mosquitto 2.0 configuration from the ledger.
//! * `gateway ID`: the gateway's manifest (`gateway.toml`), its link manifest (`link.toml`),
//!   its client certificate and key, the CA and the link key, loadable by `gateway` as is.
//! * `receiver ID`: the receiver's link manifest (`receiver.toml`, with an `[mqtt]` section to
//!   republish), its certificate and key, the CA and the link key, for `lora-link rx`.

use std::path::{Path, PathBuf};

use manifests::mosquitto::{AclEntry, BrokerFiles, Listener, render_acl, render_conf};
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// `emit` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum EmitCommand {
    /// mosquitto.conf, ACL, CA bundle, broker certificate and key, CRL: ready to run.
    #[command(after_help = "EXAMPLES:\n  \
provisioner emit broker --out ./broker --run-as root && mosquitto -c ./broker/mosquitto.conf\n  \
provisioner emit broker --out ./pi-etc --prefix /etc/mosquitto/site --run-as mosquitto\n\n\
OUT is registered with its options: `emit broker --out OUT` alone keeps them (flags given\n\
replace them), and every later ledger change (cert sign, server issue, device provision and\n\
revoke, crl, emit gateway|receiver) rewrites OUT's ACL and CRL and prints its reload:\n\
kill -HUP $(cat PREFIX/run/mosquitto.pid) (the conf's pid_file; run/ is the one directory\n\
mosquitto's account may write). `emit broker --forget OUT` stops that. OUT's .provisioner-home\n\
names this home: a copy of the home never writes there.\n\n\
COPYING TO THE BROKER MACHINE (sets the owner and modes mosquitto needs; printed with --prefix):\n  \
tar -C OUT --exclude=./run --owner=root --group=mosquitto --mode=u=rwX,g=rX,o= -cf - . |\n    \
ssh pi@HOST 'sudo mkdir -p PREFIX && sudo tar -C PREFIX -xpf - --same-owner &&\n    \
sudo install -d -o mosquitto -g mosquitto -m 0750 PREFIX/run'\n\n\
CRL FRESHNESS:\n  \
mosquitto refuses every client once the CRL's nextUpdate has passed. --units-out (default\n  \
OUT-bench, beside OUT and not copied with it) receives provisioner-crl.service (runs\n  \
`provisioner --home HOME --passphrase-file FILE crl`, then reloads mosquitto through its pid\n  \
file) and provisioner-crl.timer (daily, Persistent=true). On the machine holding the CA home:\n    \
install -m 0644 UNITS/provisioner-crl.service UNITS/provisioner-crl.timer /etc/systemd/system/\n    \
systemctl daemon-reload && systemctl enable --now provisioner-crl.timer\n  \
A directory deployed with `deploy broker` gets units that only run `crl`: it publishes the\n  \
CRL to that broker's agent, which installs it and reloads its mosquitto.")]
    Broker(BrokerArgs),
    /// Gateway (Pi #1): gateway.toml, link.toml, client certificate and key, CA, link key.
    #[command(
        long_about = "Writes everything `gateway` needs on Pi #1: gateway.toml (broker, TLS files, \
topic filters), link.toml (LoRa node, peer, topic table), the gateway's client certificate \
(CN = ID, ACL read = the site's subscribe filters) and key, the CA bundle and the link key \
shared with the receiver. To install into a Pi's root filesystem with a systemd unit, use \
`provisioner deploy gateway` instead.",
        after_help = "EXAMPLES:\n  \
provisioner emit gateway passerelle --out ./passerelle && gateway --manifest ./passerelle/gateway.toml --check\n  \
provisioner emit gateway passerelle --out ./gw --broker-host 127.0.0.1 --broker-port 18883 --air 127.0.0.1:7700\n  \
provisioner emit gateway passerelle --out ./gw --broker-host 192.168.1.10 --server-name broker.maison.lan\n\n\
The gateway's P-256 key (generated here, kept 0600 under the home's keys/) and certificate are\n\
reused on every run, and so is the link key shared with the receiver (kept encrypted in the\n\
ledger). Secrets are written 0600. Without --air the manifest asks for the real SX127x radio:\n\
only a gateway built with `--features rpi` (lora-link/cross-check.sh) drives it.\n\n\
OUT is registered with these options (and gets a .provisioner-home marker): `provisioner\n\
renew` writes it again when the certificate is due; `emit gateway --forget OUT` stops that.\n\
A directory another home (or the original of this copy) registered is refused."
    )]
    Gateway(GatewayArgs),
    /// Receiver (Pi #2): receiver.toml for `lora-link rx`, client certificate and key, CA, link key.
    #[command(
        long_about = "Writes everything `lora-link rx` needs on Pi #2: receiver.toml (LoRa node, \
every gateway of the site that sends to this receiver with its own link key, topic table and \
an [mqtt] section to republish on the broker on Pi #2), the receiver's client certificate \
(CN = ID, ACL write = the site's publish filters) and key, the CA bundle and one key file per \
gateway key (link-GATEWAY-N.key; two for a gateway in a rotation window). OUT is registered: \
a later `emit gateway` (a new gateway), `link rotate` or `link retire` writes it again.",
        after_help = "EXAMPLES:\n  \
provisioner emit receiver recepteur --out ./recepteur && lora-link rx --manifest ./recepteur/receiver.toml\n  \
provisioner emit receiver recepteur --out ./rx --broker-host 127.0.0.1 --broker-port 18884 --air 127.0.0.1:7700\n  \
provisioner emit receiver recepteur --out ./rx --no-mqtt     # print JSON lines instead of republishing\n\n\
The receiver republishes on the broker on its side (default localhost); run `provisioner emit\n\
broker` for that broker afterwards so its ACL knows the receiver.\n\n\
OUT is registered with these options (and gets a .provisioner-home marker): `provisioner\n\
renew` writes it again when the certificate is due; `emit receiver --forget OUT` stops that."
    )]
    Receiver(ReceiverArgs),
    /// Certificate definitions (atcacert_def_t) of a compressible device profile: C and JSON.
    #[command(
        long_about = "Writes the certificate definitions of a compressible device profile \
([profiles.NAME.compressed]) for firmware built on Microchip's cryptoauthlib: \
cert_def_NAME.c and .h (the signer's and the device's atcacert_def_t with their templates, \
ready to compile against cryptoauthlib's headers) and cert_def_NAME.json (the same \
definitions, keys and nesting as atcacert_def_t's fields, enum values as numbers). One \
definition serves every device of the profile: atcacert_read_cert rebuilds each device's \
certificate from its chip alone.",
        after_help = "EXAMPLES:\n  \
provisioner emit certdef --profile coffre --out ./certdef\n  \
gcc -c -I BUILD -I CRYPTOAUTHLIB/lib ./certdef/cert_def_coffre.c   # BUILD: its atca_config.h"
    )]
    Certdef(super::certdef::CertdefArgs),
    /// Microchip's signed manifest of the devices, for cloud registration (AWS IoT).
    #[command(
        long_about = "Writes Microchip's manifest of the site's devices (all active ones, or \
those given with --device): a JSON array of SignedSecureElement objects, one per chip, each \
a JWS (ES256) whose payload names the chip serial (uniqueId), its public key and its \
certificate chain (x5c), as the bench recorded them in the ledger. A manifest signer key \
(made once, 0600 in the home's keys/) signs every entry; the CA certifies it (profile \
manifest-signer: digitalSignature only). Beside FILE: FILE's name with .signer.crt (the \
signer's certificate, which the importer asks for) and .ca.crt (the CA certificates). All \
three are public and written 0644.",
        after_help = "EXAMPLES:\n  \
provisioner emit manifest --out ./manifest.json     # also manifest.signer.crt, manifest.ca.crt\n  \
provisioner emit manifest --out ./lot-1.json --device salon-01 --device cuisine-02\n\n\
An unknown or inactive --device is refused and nothing is written. See the README section\n\
\"Registering the devices with AWS IoT (Microchip manifest)\" for loading it."
    )]
    Manifest(super::manifest::ManifestArgs),
}

/// Which node directory `emit gateway|receiver` writes (ID and OUT), or forgets.
#[derive(Debug, Clone, clap::Args)]
pub struct NodeTarget {
    /// The gateway's or receiver's id in the site file (`[gateways.ID]`, `[receivers.ID]`).
    #[arg(value_name = "ID", required_unless_present = "forget")]
    pub id: Option<String>,
    /// Output directory (created 0700). It is registered: `provisioner renew` writes it
    /// again when the certificate is due.
    #[arg(long, value_name = "DIR", required_unless_present = "forget")]
    pub out: Option<PathBuf>,
    /// Forget a registered directory: `renew` no longer writes there (its files stay).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["id", "out"])]
    pub forget: Option<PathBuf>,
}

/// Arguments of `emit gateway`.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub target: NodeTarget,
    #[command(flatten)]
    pub gateway: GatewayOptions,
    #[command(flatten)]
    pub place: Placement,
}

/// Arguments of `emit receiver`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiverArgs {
    #[command(flatten)]
    pub target: NodeTarget,
    /// Broker on the receiver's side to republish on. Default: localhost (the broker on Pi #2).
    #[arg(long, value_name = "HOST")]
    pub broker_host: Option<String>,
    /// Port of that broker. Default: the site's broker port.
    #[arg(long, value_name = "PORT")]
    pub broker_port: Option<u16>,
    /// MQTT QoS for republishing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    #[command(flatten)]
    pub radio: RadioOptions,
    #[command(flatten)]
    pub place: Placement,
    /// No [mqtt] section; `lora-link rx` prints JSON lines instead.
    #[arg(long)]
    pub no_mqtt: bool,
}

/// Options of the gateway, shared by `emit gateway` and `deploy gateway`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct GatewayOptions {
    /// Broker to subscribe to. Default: the site's broker (`connect`, else its first name).
    #[arg(long, value_name = "HOST")]
    pub broker_host: Option<String>,
    /// Broker port. Default: the site's broker port.
    #[arg(long, value_name = "PORT")]
    pub broker_port: Option<u16>,
    /// Name to check in the broker's certificate when it differs from --broker-host.
    #[arg(long, value_name = "NAME")]
    pub server_name: Option<String>,
    /// MQTT QoS for subscribing.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    #[command(flatten)]
    pub radio: RadioOptions,
}

/// Radio options, both ends.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct RadioOptions {
    /// Use the emulated radio on this `lora-link air` hub (loopback), e.g. 127.0.0.1:7700.
    /// Without it the manifest asks for the real SX127x.
    #[arg(long, value_name = "ADDR")]
    pub air: Option<std::net::SocketAddr>,
    /// Spreading factor 7..=12 (both ends must agree). Default: the link schema's (SF7).
    #[arg(long, value_name = "SF", value_parser = clap::value_parser!(u8).range(7..=12))]
    pub sf: Option<u8>,
}

/// Where the emitted files live on the target (`emit` only; `deploy` fixes both).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Placement {
    /// Directory for the counter lease / replay state. Default: OUT/state (or PREFIX/state).
    #[arg(long, value_name = "PATH")]
    pub state_dir: Option<PathBuf>,
    /// Directory where the files will be on the target machine, if not OUT itself: the
    /// manifests then name absolute paths under it, and OUT must be copied there.
    #[arg(long, value_name = "PATH")]
    pub prefix: Option<PathBuf>,
}

/// Everything `write_gateway` / `write_receiver` need, whichever command asked (kept in the
/// node registry, `cmd::nodes`, so `renew`, `link rotate` and a new gateway write the
/// directory again as it was emitted).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeOptions {
    /// Broker host (gateway: to subscribe to; receiver: to republish on).
    pub broker_host: Option<String>,
    /// Broker port.
    pub broker_port: Option<u16>,
    /// TLS name of the broker (gateway only).
    pub server_name: Option<String>,
    /// MQTT QoS.
    pub qos: u8,
    /// Emulated air hub.
    pub air: Option<std::net::SocketAddr>,
    /// Spreading factor.
    pub sf: Option<u8>,
    /// State directory on the target.
    pub state_dir: Option<PathBuf>,
    /// Where the files will be on the target.
    pub prefix: Option<PathBuf>,
    /// Receiver only: no [mqtt] section.
    pub no_mqtt: bool,
}

impl GatewayOptions {
    /// The options of a gateway placed by `place`.
    pub fn node(&self, place: &Placement) -> NodeOptions {
        NodeOptions {
            broker_host: self.broker_host.clone(),
            broker_port: self.broker_port,
            server_name: self.server_name.clone(),
            qos: self.qos,
            air: self.radio.air,
            sf: self.radio.sf,
            state_dir: place.state_dir.clone(),
            prefix: place.prefix.clone(),
            no_mqtt: false,
        }
    }
}

impl ReceiverArgs {
    fn node(&self) -> NodeOptions {
        NodeOptions {
            broker_host: self.broker_host.clone(),
            broker_port: self.broker_port,
            server_name: None,
            qos: self.qos,
            air: self.radio.air,
            sf: self.radio.sf,
            state_dir: self.place.state_dir.clone(),
            prefix: self.place.prefix.clone(),
            no_mqtt: self.no_mqtt,
        }
    }
}

/// Arguments of `emit broker`.
///
/// The directory is registered in the ledger with these options: a re-run without flags
/// keeps them (flags given replace them), and every later change of the ledger that affects
/// the broker rewrites its ACL and CRL (see `cmd::brokers`).
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Output directory (created 0700; 0750 root:GROUP when run as root, see --run-as).
    #[arg(long, value_name = "DIR", required_unless_present = "forget")]
    out: Option<PathBuf>,
    /// Forget a registered broker directory: nothing is written there any more (its files
    /// stay). Other options are not allowed with it.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["out", "port", "bind", "run_as", "prefix", "server", "crl_passphrase_file", "units_out"])]
    forget: Option<PathBuf>,
    /// TLS listener port (TCP; --port is an old alias). Default: the stored one, else the
    /// site's broker port.
    #[arg(long = "listen-port", alias = "port", value_name = "PORT")]
    port: Option<u16>,
    /// Bind the listener to this address only (e.g. 127.0.0.1). Default: the stored one.
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Account mosquitto runs as (`user` directive). Started as root without it, mosquitto
    /// switches to `mosquitto`. When run as root, OUT becomes 0750 root:GROUP and the key 0640
    /// root:GROUP, GROUP being that account's (default `mosquitto`): it reads them, it cannot
    /// change them. Default: the stored one.
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Directory where the files will be on the broker machine, if not OUT itself. Default:
    /// the stored one.
    #[arg(long, value_name = "PATH")]
    prefix: Option<PathBuf>,
    /// Ledger id of the broker certificate to use. Default: the stored one, else `broker`.
    #[arg(long)]
    server: Option<String>,
    /// Passphrase file (mode 0600) the CRL renewal service reads on the CA machine.
    /// Default: the stored one, else /etc/provisioner/ca-passphrase.
    #[arg(long, value_name = "FILE")]
    crl_passphrase_file: Option<PathBuf>,
    /// Directory for the CRL renewal units, which belong on the machine holding the CA home,
    /// not on the broker. Default: the stored one, else OUT-bench, beside OUT (created 0700).
    #[arg(long, value_name = "DIR")]
    units_out: Option<PathBuf>,
}

/// Runs `emit`.
pub fn run(ctx: &Context, cmd: EmitCommand) -> Result<()> {
    match cmd {
        EmitCommand::Broker(args) => broker(ctx, args),
        EmitCommand::Certdef(args) => super::certdef::run(ctx, args),
        EmitCommand::Manifest(args) => super::manifest::run(ctx, args),
        EmitCommand::Gateway(args) => {
            let opts = args.gateway.node(&args.place);
            emit_node(ctx, "gateway", &args.target, &opts)
        }
        EmitCommand::Receiver(args) => {
            let opts = args.node();
            emit_node(ctx, "receiver", &args.target, &opts)
        }
    }
}

/// Writes a gateway's or receiver's directory and registers it (or forgets one).
fn emit_node(ctx: &Context, kind: &str, target: &NodeTarget, opts: &NodeOptions) -> Result<()> {
    let store = ctx.store()?;
    let (Some(id), Some(out)) = (&target.id, &target.out) else {
        let dir = target.forget.as_deref().unwrap_or(Path::new(""));
        return forget_node(ctx, &store, kind, dir);
    };
    let home = store.home_binding()?;
    let out = prepare_out(out)?;
    super::nodes::claim(&home, &out)?;
    let e = if kind == "gateway" {
        write_gateway(ctx, id, opts, &out)?
    } else {
        write_receiver(ctx, id, opts, &out)?
    };
    super::nodes::write_marker(&home, &out)?;
    super::nodes::register(
        &store,
        &super::nodes::NodeDir {
            kind: kind.into(),
            id: id.clone(),
            dir: out.clone(),
            options: opts.clone(),
            deploy_bin: None,
        },
    )?;
    let receivers = if kind == "gateway" {
        super::link::after_gateway(ctx, id)?
    } else {
        (json!([]), String::new())
    };
    print_node(ctx, kind, id, &out, &e, opts, receivers);
    super::brokers::refresh_and_print(ctx);
    Ok(())
}

fn forget_node(ctx: &Context, store: &ca::Store, kind: &str, dir: &Path) -> Result<()> {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let done = super::nodes::forget(store, &canonical)? || super::nodes::forget(store, dir)?;
    let known = super::nodes::all(store)?
        .iter()
        .map(|n| n.describe())
        .collect();
    let what = format!("{kind} directory");
    forgotten(
        ctx,
        &what,
        dir,
        &canonical,
        done,
        known,
        "`renew` no longer writes there",
    )
}

/// The answer to `--forget DIR`: what was forgotten, or, when DIR is not registered, an
/// error listing what is.
fn forgotten(
    ctx: &Context,
    what: &str,
    dir: &Path,
    canonical: &Path,
    done: bool,
    known: Vec<String>,
    effect: &str,
) -> Result<()> {
    if !done {
        return Err(CliError::new(
            Code::State,
            format!("{} is not a registered {what}", dir.display()),
        )
        .with_help(if known.is_empty() {
            format!("no {what} is registered")
        } else {
            format!("registered: {}", known.join("; "))
        }));
    }
    ctx.print(
        &json!({ "forgotten": canonical }),
        &format!(
            "forgot the {what} {}: {effect} (its files stay as they are)",
            canonical.display()
        ),
    );
    Ok(())
}

fn broker(ctx: &Context, args: BrokerArgs) -> Result<()> {
    let store = ctx.store()?;
    let home = store.home_binding()?;
    if let Some(dir) = &args.forget {
        return forget(ctx, &store, dir);
    }
    let Some(out_arg) = args.out.clone() else {
        return Err(CliError::new(
            Code::Usage,
            "give --out DIR (or --forget DIR)",
        ));
    };
    // The stored options of this directory, if it is registered already.
    let existing = out_arg.canonicalize().ok();
    let stored = match &existing {
        Some(dir) => store.brokers()?.into_iter().find(|b| &b.dir == dir),
        None => None,
    };
    if let Some(dir) = &existing
        && let Err(why) = home.check_marker(dir)
    {
        return Err(CliError::new(Code::State, format!("--out {}: {why}", out_arg.display()))
            .with_help(format!(
                "forget it in the home that owns it (`provisioner emit broker --forget {}`), or, if that home no longer exists, remove {} and run this again",
                dir.display(),
                dir.join(ca::authority::HOME_MARKER).display()
            )));
    }
    let kept = stored.is_some();
    let base = stored.unwrap_or_default();
    let mut reg = ca::authority::BrokerDir {
        dir: out_arg.clone(),
        port: args.port.or(base.port),
        bind: args.bind.clone().or(base.bind),
        run_as: args.run_as.clone().or(base.run_as),
        prefix: args.prefix.clone().or(base.prefix),
        server: args
            .server
            .clone()
            .or(Some(base.server).filter(|s| !s.is_empty()))
            .unwrap_or_else(|| "broker".into()),
        crl_passphrase_file: args
            .crl_passphrase_file
            .clone()
            .or(Some(base.crl_passphrase_file).filter(|p| !p.as_os_str().is_empty()))
            .unwrap_or_else(|| PathBuf::from("/etc/provisioner/ca-passphrase")),
        units_out: args.units_out.clone().or(base.units_out),
    };
    let w = write_broker_dir(ctx, &store, &home, &mut reg, true)?;
    store.register_broker(&reg)?;
    let mut human = w.human.clone();
    if kept {
        human.push_str("\n  options: the stored ones of this directory (flags given replace them)");
    }
    human.push_str("\n  registered: later ledger changes (provision, cert sign, revoke, renewal, CRL) rewrite this directory's ACL and CRL; `emit broker --forget DIR` stops that");
    ctx.print(
        &json!({ "out": w.out, "files": w.files, "units": w.units, "pid_file": w.pid_file,
                 "port": w.port, "identities": w.identities, "crl_number": w.crl_number,
                 "warnings": w.warnings, "reload": w.reload, "registered": reg }),
        &human,
    );
    Ok(())
}

fn forget(ctx: &Context, store: &ca::Store, dir: &Path) -> Result<()> {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let done = store.forget_broker(&canonical)? || store.forget_broker(dir)?;
    let known = store
        .brokers()?
        .iter()
        .map(|b| b.dir.display().to_string())
        .collect();
    forgotten(
        ctx,
        "broker directory",
        dir,
        &canonical,
        done,
        known,
        "no later change writes there",
    )
}

/// What [`write_broker_dir`] wrote.
#[derive(Debug, Clone)]
pub struct BrokerWritten {
    /// The directory (canonical).
    pub out: PathBuf,
    /// Every file written in it.
    pub files: Vec<PathBuf>,
    /// The CRL units written.
    pub units: Vec<PathBuf>,
    /// mosquitto's pid file, as the broker sees it.
    pub pid_file: PathBuf,
    /// Listener port.
    pub port: u16,
    /// Identities in the ACL.
    pub identities: usize,
    /// Number of the CRL written.
    pub crl_number: i64,
    /// The reload that applies: a command to run on the broker's machine.
    pub reload: String,
    /// True when the files live elsewhere (--prefix): the directory must be copied first.
    pub remote: bool,
    /// Warnings (also in `human`).
    pub warnings: Vec<String>,
    /// The human report of `emit broker`.
    pub human: String,
}

/// Writes every file of the broker directory `reg` describes: mosquitto.conf, the ACL from
/// the ledger, the CA bundle, the broker's certificate and key, the newest CRL, the home
/// marker and the CRL units. The one rendering used by `emit broker` and by the refresh
/// after every ledger change ([`super::brokers::refresh`]). `create`: the directory may be
/// made (emit); without it, a directory that is gone is an error (the refresh checks first).
/// `reg.dir` becomes canonical.
pub fn write_broker_dir(
    ctx: &Context,
    store: &ca::Store,
    home: &ca::authority::HomeBinding,
    reg: &mut ca::authority::BrokerDir,
    create: bool,
) -> Result<BrokerWritten> {
    let site = ctx.site()?;
    let serial = store
        .ledger
        .meta(&format!("server:{}", reg.server))?
        .ok_or_else(|| {
            CliError::new(
                Code::State,
                format!("no broker certificate `{}` yet", reg.server),
            )
            .with_help("run `provisioner server issue --dns NAME [--ip IP]` first")
        })?;
    let cert = store
        .ledger
        .by_serial(&serial)?
        .ok_or_else(|| CliError::new(Code::State, format!("ledger lost certificate {serial}")))?;
    if cert.revoked_at.is_some() {
        return Err(CliError::new(
            Code::State,
            format!("the broker certificate {serial} is revoked"),
        )
        .with_help("issue a new one with `provisioner server issue`"));
    }
    let key = ca::keys::read_plain(&ctx.layout.keys_dir().join(format!("{}.key", reg.server)))?;
    // The CRL of every CA in service (one, unless the fleet has bench stations), and the
    // number of this home's own newest.
    let no_crl = || CliError::new(Code::State, "no CRL yet").with_help("run `provisioner crl`");
    let crl_text = store.crl_bundle()?.ok_or_else(no_crl)?;
    let crl = store.own_latest_crl()?.ok_or_else(no_crl)?;

    let access = BrokerAccess::for_account(reg.run_as.as_deref())?;
    if !create && std::fs::symlink_metadata(&reg.dir).is_err() {
        return Err(CliError::new(
            Code::State,
            format!("{} is gone", reg.dir.display()),
        ));
    }
    let out = access.create_dir(&reg.dir)?;
    // Never into a directory another home (or the original of this copy) registered.
    home.check_marker(&out)
        .map_err(|why| CliError::new(Code::State, why))?;
    reg.dir = out.clone();
    let prefix = reg.prefix.clone().unwrap_or_else(|| out.clone());
    let units = match &reg.units_out {
        Some(u) => u.clone(),
        None => default_units_dir(&out)?,
    };
    let files = BrokerFiles {
        cafile: prefix.join("ca.crt"),
        certfile: prefix.join("broker.crt"),
        keyfile: prefix.join("broker.key"),
        crlfile: prefix.join("crl.pem"),
        aclfile: prefix.join("acl"),
    };
    let listener = Listener {
        port: reg.port.unwrap_or(site.broker.port),
        bind: reg.bind.clone(),
        run_as: reg.run_as.clone(),
        // A pid file beside the configuration: a reload signals this broker, not every
        // mosquitto of the machine.
        pid_file: Some(prefix.join(RUN_DIR).join(PID_FILE)),
        // Sessions and queued QoS 1/2 messages survive a restart (the run directory is the
        // one mosquitto's account may write).
        persistence_dir: Some(prefix.join(RUN_DIR)),
    };
    let (entries, devices) = acl_entries(store, &site)?;
    let acl = render_acl(&entries)?;
    let conf = render_conf(&listener, &files)?;

    // The root and every issuing CA in service: a device presents its certificate alone.
    let bundle = ca::station::broker_cafile(store)?.into_bytes();
    let chain = format!(
        "{}{}",
        ca::authority::cert_pem(&cert.der),
        store.chain_pem()?
    );
    let written = [
        (
            ca::authority::HOME_MARKER,
            home.marker_text().into_bytes(),
            0o644,
        ),
        ("ca.crt", bundle, 0o644),
        ("broker.crt", chain.into_bytes(), 0o644),
        (
            "broker.key",
            zeroize::Zeroizing::new(key.serialize_pem())
                .as_bytes()
                .to_vec(),
            0o600,
        ),
        ("crl.pem", crl_text.into_bytes(), 0o644),
        ("acl", acl.into_bytes(), 0o644),
        ("mosquitto.conf", conf.into_bytes(), 0o644),
    ];
    let mut paths = Vec::new();
    for (name, data, mode) in &written {
        let p = out.join(name);
        access.write(&p, data, *mode)?;
        paths.push(p);
    }
    access.create_run_dir(&out.join(RUN_DIR))?;
    ca::fsutil::private_dir(&units)?;
    let units = units
        .canonicalize()
        .map_err(|e| crate::exit::io(&units, e))?;
    let pid_file = prefix.join(RUN_DIR).join(PID_FILE);
    // A broker deployed with its agent (`deploy broker`) gets the CRL as a signed update that
    // `crl` publishes, and its agent reloads it: no copy, no reload from here.
    let deployed = super::agents::deployed(store)?.iter().any(|d| d.dir == out);
    let (service, timer) =
        render_crl_units(ctx, &out, &prefix, &reg.crl_passphrase_file, deployed)?;
    let mut unit_paths = Vec::new();
    for (name, text) in [
        ("provisioner-crl.service", service),
        ("provisioner-crl.timer", timer),
    ] {
        let p = units.join(name);
        ca::fsutil::write_atomic(&p, text.as_bytes(), 0o644)?;
        unit_paths.push(p);
    }
    let account = access.account_name(reg.run_as.as_deref());
    let mut human = format!(
        "broker configuration in {}: listener {} (TLS, client certificates required), {} identities in the ACL, CRL number {}",
        out.display(),
        listener.port,
        devices,
        crl.number,
    );
    let conf_path = prefix.join("mosquitto.conf");
    let reload = format!("kill -HUP $(cat {})", sh_path(&pid_file));
    let mut warnings = Vec::new();
    let remote = reg.prefix.is_some() && prefix != out;
    if remote {
        let user = reg.run_as.as_deref().unwrap_or("mosquitto");
        human.push_str(&format!(
            "\n  copy:   {}\n          (HOST = the broker machine; root:{user}, directory 0750, files 0640: mosquitto reads them, cannot change them; {RUN_DIR}/ is {user}'s, for its pid file)\n  after copying to {} on the broker, run there: mosquitto -c {}\n  reload: {reload}   (on the broker)",
            broker_copy_command(&out, &prefix, &sh_word(user)),
            prefix.display(),
            conf_path.display(),
        ));
    } else {
        if let Some(w) = access.unreachable(&out, account.as_deref()) {
            human.push_str(&format!("\n  warning: {w}"));
            warnings.push(w);
        }
        human.push_str(&format!(
            "\n  run:    mosquitto -c {}\n  reload: {reload}",
            conf_path.display(),
        ));
    }
    human.push_str(&format!(
        "\n  CRL:    on the machine holding the CA home (not the broker): install -m 0644 {} {} /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now provisioner-crl.timer",
        unit_paths[0].display(),
        unit_paths[1].display(),
    ));
    Ok(BrokerWritten {
        out,
        files: paths,
        units: unit_paths,
        pid_file,
        port: listener.port,
        identities: devices,
        crl_number: crl.number,
        reload,
        remote,
        warnings,
        human,
    })
}

/// The ACL entries from the ledger: every active identity but servers, and the site's
/// gateways even before they are certified. Also returns how many came from the ledger.
fn acl_entries(store: &ca::Store, site: &manifests::site::Site) -> Result<(Vec<AclEntry>, usize)> {
    let mut entries = Vec::new();
    let mut devices = 0;
    for i in store.ledger.identities()? {
        if i.status != "active" || i.kind == "server" {
            continue;
        }
        devices += 1;
        let (mut write, mut read) = (i.acl_write, i.acl_read);
        if i.kind == "device" {
            // Renewal in the field: its own request topic and its own answer topic only.
            let prefix = manifests::device::FieldRenewal::prefix_for(&site.topics.root);
            write.push(manifests::device::FieldRenewal::renew_topic(&prefix, &i.id));
            read.push(manifests::device::FieldRenewal::cert_topic(&prefix, &i.id));
        }
        entries.push(AclEntry {
            comment: format!("{} `{}` (profile {})", i.kind, i.id, i.profile),
            user: i.id,
            write,
            read,
        });
    }
    // Gateways of the site read what they forward, even before their certificate exists,
    // so the ACL is right the moment they are certified.
    for (id, g) in &site.gateways {
        if !entries.iter().any(|e| &e.user == id) {
            entries.push(AclEntry {
                comment: format!("gateway `{id}` (site file)"),
                user: id.clone(),
                write: vec![],
                read: g.subscribe.clone(),
            });
        }
    }
    Ok((entries, devices))
}

/// mosquitto's pid file (`pid_file` in mosquitto.conf), in [`RUN_DIR`].
pub const PID_FILE: &str = "mosquitto.pid";

/// The one directory of a broker directory that mosquitto's account may write: mosquitto
/// writes its pid file after switching accounts, and nothing else of OUT is its own.
pub const RUN_DIR: &str = "run";

/// Where the CRL units go by default: `OUT-bench`, beside OUT, so copying OUT to the broker
/// does not carry them.
fn default_units_dir(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().ok_or_else(|| {
        CliError::new(
            Code::Input,
            format!("--out {}: give a directory with a name", out.display()),
        )
    })?;
    let mut n = name.to_os_string();
    n.push("-bench");
    Ok(out.with_file_name(n))
}

/// A shell word: single-quoted unless it is plainly safe.
pub(crate) fn sh_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

pub(crate) fn sh_path(p: &Path) -> String {
    sh_word(&p.to_string_lossy())
}

/// `tar` of OUT on this machine, with `create` options, piped to an extraction as root into
/// PREFIX on HOST: what the archive says about owners and modes is what the target gets.
fn copy_command(out: &Path, prefix: &Path, create: &str) -> String {
    let p = sh_path(prefix);
    let remote = format!("sudo mkdir -p {p} && sudo tar -C {p} -xpf - --same-owner");
    format!(
        "tar -C {} {create} -cf - . | ssh HOST {}",
        sh_path(out),
        sh_word(&remote)
    )
}

/// The copy of a broker directory: owner root, group `user`'s (mosquitto's account, its
/// group named after it as Debian does), directory 0750 and files 0640, whoever owns them
/// here (GNU tar on this machine); then the run directory, the account's own.
fn broker_copy_command(out: &Path, prefix: &Path, user: &str) -> String {
    let p = sh_path(prefix);
    let run = sh_path(&prefix.join(RUN_DIR));
    let remote = format!(
        "sudo mkdir -p {p} && sudo tar -C {p} -xpf - --same-owner && sudo install -d -o {user} -g {user} -m 0750 {run}"
    );
    format!(
        "tar -C {} --exclude=./{RUN_DIR} --owner=root --group={user} --mode=u=rwX,g=rX,o= -cf - . | ssh HOST {}",
        sh_path(out),
        sh_word(&remote)
    )
}

/// The copy of a gateway's or receiver's files: root's, the keys staying 0600.
pub(crate) fn node_copy_command(out: &Path, prefix: &Path) -> String {
    copy_command(out, prefix, "--owner=root --group=root")
}

/// `provisioner-crl.service` and `provisioner-crl.timer`: renew the CRL before its nextUpdate
/// (`crl` signs only when a third or less of the lifetime is left, so daily is enough for any
/// lifetime of three days or more) and reload mosquitto so it reads the new file.
fn render_crl_units(
    ctx: &Context,
    out: &Path,
    prefix: &Path,
    passphrase_file: &Path,
    deployed: bool,
) -> Result<(String, String)> {
    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(
            Code::Failure,
            format!("cannot locate the provisioner binary: {e}"),
        )
    })?;
    let home = ctx
        .layout
        .home
        .canonicalize()
        .map_err(|e| crate::exit::io(&ctx.layout.home, e))?;
    let mut service = format!(
        "# Written by `provisioner emit broker`: renews the site CRL when it is due and reloads\n\
         # mosquitto, which refuses every client once the CRL's nextUpdate has passed.\n\
         # Install on the machine holding the CA home, with the timer:\n\
         #   install -m 0644 provisioner-crl.service provisioner-crl.timer /etc/systemd/system/\n\
         #   systemctl daemon-reload && systemctl enable --now provisioner-crl.timer\n\
         # The passphrase file must exist, mode 0600, owned by the account running the service.\n\
         [Unit]\n\
         Description=Renew the site CRL before its nextUpdate and reload mosquitto\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         UMask=0077\n\
         ExecStart={} --home {} --passphrase-file {} crl\n",
        unit_arg(&exe),
        unit_arg(&home),
        unit_arg(passphrase_file),
    );
    if deployed {
        service.push_str(
            "# The broker is deployed with its agent: `crl` publishes the new CRL to it as a signed\n\
             # update, and the agent installs it and reloads its own mosquitto.\n",
        );
    } else if prefix != out {
        // The files live elsewhere on the broker machine. When that is this machine, copy the
        // new CRL there; when it is another one, replace this line by a copy to it (scp) and the
        // reload below by `ssh HOST 'sudo kill -HUP $(cat PREFIX/mosquitto.pid)'`.
        service.push_str(&format!(
            "ExecStartPost=/usr/bin/install -m 0644 {} {}\n",
            unit_arg(&out.join("crl.pem")),
            unit_arg(&prefix.join("crl.pem")),
        ));
    }
    // SIGHUP makes mosquitto re-read its CRL. Only the broker using this configuration is
    // signalled, through its pid file (`pid_file` in mosquitto.conf); `$$` is a literal `$`
    // in a unit file, and the path reaches sh as its argument $1, unquoted nowhere.
    // mosquitto's account writes that file: only digits are used, nothing of it is echoed.
    if !deployed {
        service.push_str(&format!(
            "ExecStartPost=/bin/sh -c 'pid=$$(head -c 20 \"$$1\") && case $$pid in \"\"|*[!0-9]*) echo \"no mosquitto pid in $$1\" >&2; exit 1;; esac && kill -HUP \"$$pid\"' sh {}\n",
            unit_arg(&prefix.join(RUN_DIR).join(PID_FILE)),
        ));
    }
    let timer =
        "# Written by `provisioner emit broker`: runs provisioner-crl.service daily; a run\n\
                 # missed while the machine was off happens at the next boot (Persistent=true).\n\
                 [Unit]\n\
                 Description=Renew the site CRL daily\n\
                 \n\
                 [Timer]\n\
                 OnCalendar=daily\n\
                 RandomizedDelaySec=1h\n\
                 Persistent=true\n\
                 Unit=provisioner-crl.service\n\
                 \n\
                 [Install]\n\
                 WantedBy=timers.target\n"
            .to_string();
    Ok((service, timer))
}

/// A path as one systemd command-line word: quoted, `%` and `$` escaped.
fn unit_arg(p: &Path) -> String {
    let s = p
        .to_string_lossy()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{s}\"")
}

/// Who may read a broker directory, and how its files are written.
///
/// Run as root, mosquitto starts as root and then switches to its account (`--run-as`, or
/// `mosquitto`, its default), so that account must read the files, but it must never be able
/// to change them: the directory and every file stay root's, the directory is `0750
/// root:GROUP` and the key `0640 root:GROUP`, both set through the open descriptor. A process
/// running as mosquitto can then neither plant a link in the directory nor have a root-only
/// file handed to it. Not run as root, everything is ours and private (mosquitto started by
/// us does not switch accounts).
struct BrokerAccess {
    group: Option<u32>,
    /// The account mosquitto switches to, when we run as root and it exists here.
    account: Option<nix::unistd::User>,
}

impl BrokerAccess {
    fn for_account(run_as: Option<&str>) -> Result<Self> {
        if !nix::unistd::geteuid().is_root() {
            return Ok(BrokerAccess {
                group: None,
                account: None,
            });
        }
        let name = run_as.unwrap_or("mosquitto");
        let user = nix::unistd::User::from_name(name)
            .map_err(|e| CliError::new(Code::Failure, format!("looking up user `{name}`: {e}")))?;
        match (user, run_as) {
            (Some(u), _) => Ok(BrokerAccess {
                group: Some(u.gid.as_raw()),
                account: Some(u),
            }),
            (None, Some(_)) => Err(CliError::new(
                Code::Input,
                format!("--run-as: no user `{name}` on this machine"),
            )
            .with_help("give the account mosquitto runs as (Debian: mosquitto)")),
            // No mosquitto account here: mosquitto cannot switch to it either.
            (None, None) => Ok(BrokerAccess {
                group: None,
                account: None,
            }),
        }
    }

    /// The account mosquitto runs as once started, when it differs from ours.
    fn account_name(&self, run_as: Option<&str>) -> Option<String> {
        self.account
            .as_ref()
            .map(|u| u.name.clone())
            .or_else(|| run_as.map(str::to_string))
    }

    /// Why the account mosquitto switches to cannot reach `out`, if it cannot: a directory
    /// on the way it may not enter (group membership beyond its own group is not checked).
    fn unreachable(&self, out: &Path, name: Option<&str>) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let u = self.account.as_ref()?;
        if u.uid.is_root() {
            return None;
        }
        let (uid, gid) = (u.uid.as_raw(), u.gid.as_raw());
        for dir in out.ancestors().skip(1) {
            let Ok(m) = std::fs::metadata(dir) else {
                continue;
            };
            let mode = m.mode();
            let bit = if m.uid() == uid {
                0o100
            } else if m.gid() == gid {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                return Some(format!(
                    "mosquitto switches to the account `{}` once started, which cannot enter {} (mode {:o}): started as printed it fails with \"Unable to open\"; use --run-as root, or --out a directory it can reach (e.g. under /etc/mosquitto)",
                    name.unwrap_or(&u.name),
                    dir.display(),
                    mode & 0o7777,
                ));
            }
        }
        None
    }

    /// Creates OUT with its owner and mode and returns its canonical path.
    fn create_dir(&self, out: &Path) -> Result<PathBuf> {
        let (mode, owner) = match self.group {
            Some(g) => (0o750, Some((0, g))),
            None => (0o700, None),
        };
        safe_fs::create_dir(out, mode, owner).map_err(|e| crate::exit::io(out, e))?;
        out.canonicalize().map_err(|e| crate::exit::io(out, e))
    }

    /// Creates OUT/run, where mosquitto writes its pid file once it runs as its account:
    /// that account's, 0750 (ours and 0700 when we are not root).
    fn create_run_dir(&self, dir: &Path) -> Result<()> {
        let (mode, owner) = match (&self.account, self.group) {
            (Some(u), Some(g)) => (0o750, Some((u.uid.as_raw(), g))),
            _ => (0o700, None),
        };
        safe_fs::create_dir(dir, mode, owner).map_err(|e| crate::exit::io(dir, e))
    }

    /// Writes one file: secrets (`mode` 0600) become 0640 root:GROUP when mosquitto reads them.
    fn write(&self, path: &Path, data: &[u8], mode: u32) -> Result<()> {
        let how = match self.group {
            Some(g) if mode & 0o077 == 0 => safe_fs::Replace::new(0o640).owner(Some((0, g))),
            _ => safe_fs::Replace::new(mode),
        };
        safe_fs::replace(path, data, &how).map_err(|e| crate::exit::io(path, e))
    }
}

/// Creates OUT (0700) and returns its canonical path.
/// Creates an output directory (0700) if absent, as every `emit` does.
pub(crate) fn prepare_out_dir(out: &Path) -> Result<PathBuf> {
    prepare_out(out)
}

fn prepare_out(out: &Path) -> Result<PathBuf> {
    BrokerAccess {
        group: None,
        account: None,
    }
    .create_dir(out)
}

/// What `write_gateway` / `write_receiver` wrote.
#[derive(Debug, Clone)]
pub struct NodeEmitted {
    /// The manifest to give the daemon (`gateway.toml` or `receiver.toml`), in OUT.
    pub manifest: PathBuf,
    /// Every file written, in OUT.
    pub files: Vec<PathBuf>,
    /// Serial of the node's certificate.
    pub serial: String,
    /// True when the certificate existed already.
    pub existing: bool,
    /// "renewed: the previous certificate ..." when an expired or due one was replaced.
    pub renewed: Option<String>,
    /// This node's and the (first) peer's RadioHead addresses.
    pub addresses: (u8, u8),
    /// Receiver: every gateway it accepts, with its address and key ids.
    pub gateways: Vec<serde_json::Value>,
}

fn print_node(
    ctx: &Context,
    kind: &str,
    id: &str,
    out: &Path,
    e: &NodeEmitted,
    opts: &NodeOptions,
    (receivers, receivers_human): (serde_json::Value, String),
) {
    let (program, machine) = if kind == "gateway" {
        ("gateway", "the gateway (Pi #1)")
    } else {
        ("lora-link rx", "the receiver (Pi #2)")
    };
    let manifest_name = e
        .manifest
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_default();
    let mut human = format!(
        "{kind} `{id}` in {}: certificate {} ({}), LoRa address {} <-> {}{}",
        out.display(),
        e.serial,
        if e.existing {
            "existing"
        } else if e.renewed.is_some() {
            "renewed"
        } else {
            "issued"
        },
        e.addresses.0,
        if e.gateways.is_empty() {
            e.addresses.1.to_string()
        } else {
            e.gateways
                .iter()
                .map(|g| {
                    format!(
                        "{} {} (keys {})",
                        g["name"].as_str().unwrap_or("?"),
                        g["address"],
                        g["keys"]
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        },
        e.renewed
            .as_deref()
            .map(|n| format!("\n  {n}; restart or reload the {kind} to use the new one"))
            .unwrap_or_default(),
    );
    let run = match &opts.prefix {
        // The manifest names files under PREFIX: it is valid there only, after the copy.
        Some(prefix) => {
            let run = format!(
                "sudo {program} --manifest {}",
                sh_path(&prefix.join(&manifest_name))
            );
            human.push_str(&format!(
                "\n  copy:   {}\n          (HOST = {machine}; root's files, keys 0600)\n  after copying to {} on {machine}, run there: {run}",
                node_copy_command(out, prefix),
                prefix.display(),
            ));
            run
        }
        None => {
            let run = format!("{program} --manifest {}", sh_path(&e.manifest));
            human.push_str(&format!("\n  run:    {run}"));
            run
        }
    };
    if opts.air.is_none() {
        human.push_str(&format!(
            "\n          (no --air: the manifest drives the real SX127x, which needs a {} built with `--features rpi`, see lora-link/cross-check.sh)",
            if kind == "gateway" { "gateway" } else { "lora-link" },
        ));
    }
    human.push_str(&receivers_human);
    ctx.print(
        &json!({ "id": id, "kind": kind, "out": out, "manifest": e.manifest, "files": e.files,
                 "serial": e.serial, "existing": e.existing, "renewed": e.renewed, "prefix": opts.prefix, "run": run,
                 "address": e.addresses.0, "peer_address": e.addresses.1, "gateways": e.gateways,
                 "receivers": receivers }),
        &human,
    );
}

/// A node's certificate and key (PEM): the key generated here once and kept under keys/.
pub(crate) struct NodeIdentity {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: zeroize::Zeroizing<String>,
    pub(crate) serial: String,
    pub(crate) existing: bool,
    pub(crate) renewed: Option<String>,
}

/// The P-256 key at `path` (plain PKCS#8, 0600), made there if absent. A key from an earlier
/// (possibly interrupted) run is reused: same key, same request, same certificate.
pub(crate) fn host_key(path: &Path) -> Result<rcgen::KeyPair> {
    if path.exists() {
        return Ok(ca::keys::read_plain(path)?);
    }
    let k = ca::keys::generate()?;
    ca::keys::write_plain(path, &k)?;
    Ok(k)
}

/// Refuses a certificate the ledger reissued although it is revoked (a re-run finds the
/// revoked one for the same key): the way out is a new key at `key_path`.
pub(crate) fn refuse_revoked(issued: &ca::Issued, whose: &str, key_path: &Path) -> Result<()> {
    if issued.record.revoked_at.is_none() {
        return Ok(());
    }
    Err(CliError::new(
        Code::State,
        format!(
            "the certificate {} of {whose} is revoked",
            issued.record.serial
        ),
    )
    .with_help(format!(
        "remove {} to get a new key and certificate, then emit again",
        key_path.display()
    )))
}

/// Issues (or reuses) the client certificate of a node the site does not list as a device:
/// key generated here once (keys/ID.key), identity `kind` with these ACL lines.
pub(crate) fn issue_node(
    ctx: &Context,
    authority: &mut ca::Authority,
    site: &manifests::site::Site,
    id: &str,
    kind: &str,
    acl_read: Vec<String>,
    acl_write: Vec<String>,
) -> Result<NodeIdentity> {
    use ca::ledger::IdentityRecord;
    if let Some(existing) = authority.store.ledger.identity(id)?
        && existing.kind != kind
    {
        return Err(CliError::new(
            Code::State,
            format!(
                "`{id}` already exists in the ledger as a {}; a {kind} needs its own name",
                existing.kind
            ),
        )
        .with_help("rename the gateway or receiver in the site file"));
    }
    let key_path = ctx.layout.keys_dir().join(format!("{id}.key"));
    let key = host_key(&key_path)?;
    let public_key = ca::PublicKey::from_sec1(key.public_key_raw())?;
    let request_id =
        ca::authority::request_id(&[b"node", kind.as_bytes(), id.as_bytes(), &public_key.0]);
    let identity = IdentityRecord {
        id: id.to_string(),
        kind: kind.into(),
        profile: "client".into(),
        acl_write,
        acl_read,
        attrs: Default::default(),
        status: "active".into(),
    };
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
        days: site.site.leaf_days,
        identity: Some(identity.clone()),
    })?;
    refuse_revoked(&issued, &format!("`{id}`"), &key_path)?;
    // The ACL follows the site file even when the certificate existed already.
    authority.upsert_identity(&identity)?;
    let chain_pem = format!("{}{}", issued.pem, authority.store.chain_pem()?);
    Ok(NodeIdentity {
        chain_pem,
        key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        renewed: issued.renewal_note(),
        serial: issued.record.serial,
        existing: issued.existing,
    })
}

/// RadioHead addresses handed out once and kept in the ledger: receivers from 1, gateways
/// from 10.
fn lora_address(authority: &ca::Authority, id: &str, kind: &str) -> Result<u8> {
    const KEY: &str = "lora-addresses";
    let ledger = &authority.store.ledger;
    let mut map: std::collections::BTreeMap<String, u8> = match ledger.meta(KEY)? {
        Some(s) => serde_json::from_str(&s).map_err(|e| {
            CliError::new(Code::State, format!("ledger meta `{KEY}` is damaged: {e}"))
        })?,
        None => Default::default(),
    };
    if let Some(a) = map.get(id) {
        return Ok(*a);
    }
    let start = if kind == "receiver" { 1 } else { 10 };
    let a = (start..=254u8)
        .find(|a| !map.values().any(|v| v == a))
        .ok_or_else(|| CliError::new(Code::State, "no free LoRa address left (1..=254)"))?;
    map.insert(id.to_string(), a);
    let text = serde_json::to_string(&map)
        .map_err(|e| CliError::new(Code::Failure, format!("encoding addresses: {e}")))?;
    ledger.set_meta(KEY, &text)?;
    Ok(a)
}

/// The link's topic table: every room of the site with every reading (and status) template
/// of every profile, where a filter matches; at most 128, sorted. Others travel inline. The
/// gateways and receivers use the site-wide table (filter `#`): one table for every gateway
/// of a receiver, unchanged when a gateway is added; a site change that alters it changes
/// its fingerprint, which both ends check (lora_link::frame).
fn topic_table(
    site: &manifests::site::Site,
    filters: &[String],
) -> Vec<manifests::link::TopicEntry> {
    use manifests::site::{TopicVars, expand_topic};
    let mut topics = std::collections::BTreeSet::new();
    for room in &site.topics.rooms {
        for p in site.profiles.values() {
            let templates = p
                .readings
                .iter()
                .map(|r| r.topic.as_str())
                .chain(p.status_topic.as_deref());
            for t in templates.filter(|t| !t.contains("{id}")) {
                let vars = TopicVars {
                    root: &site.topics.root,
                    room,
                    id: "",
                };
                let topic = expand_topic(t, &vars);
                if manifests::link::check_topic(&topic).is_ok()
                    && filters
                        .iter()
                        .any(|f| manifests::topic::filter_matches(f, &topic))
                {
                    topics.insert(topic);
                }
            }
        }
    }
    topics
        .into_iter()
        .take(usize::from(manifests::link::MAX_TOPIC_INDEX) + 1)
        .enumerate()
        .map(|(i, topic)| manifests::link::TopicEntry {
            index: i as u8,
            topic,
        })
        .collect()
}

/// The site-wide topic table of every link (see [`topic_table`]).
fn site_topic_table(site: &manifests::site::Site) -> Vec<manifests::link::TopicEntry> {
    topic_table(site, &["#".to_string()])
}

/// The link settings both ends share.
fn link_manifest(
    role: manifests::link::LinkRole,
    node: manifests::link::Node,
    peers: Vec<manifests::link::Peer>,
    topics: Vec<manifests::link::TopicEntry>,
    opts: &NodeOptions,
    state_dir: PathBuf,
) -> Result<manifests::link::LinkManifest> {
    use manifests::link::{AirParams, KeySource, LinkManifest, RadioBackend, SpreadingFactor};
    let mut m = LinkManifest::new(role, node, peers, KeySource::default());
    m.topics = topics;
    m.state_dir = state_dir;
    if let Some(sf) = opts.sf {
        m.radio.spreading_factor = SpreadingFactor::try_from(sf)
            .map_err(|e| CliError::new(Code::Input, format!("--sf: {e}")))?;
    }
    if let Some(hub) = opts.air {
        if !hub.ip().is_loopback() {
            return Err(CliError::new(
                Code::Input,
                format!("--air {hub}: the simulated air is loopback only"),
            )
            .with_help("use 127.0.0.1:PORT (the address `lora-link air --listen` prints)"));
        }
        m.radio.backend = RadioBackend::Emulated;
        m.air = Some(AirParams { hub });
    }
    Ok(m)
}

/// A file's path as the manifests name it: relative (to the manifest's directory) without
/// --prefix, absolute under the prefix with it.
fn target_path(_out: &Path, opts: &NodeOptions, name: &str) -> PathBuf {
    match &opts.prefix {
        Some(p) => p.join(name),
        None => PathBuf::from(name),
    }
}

fn write_files(out: &Path, files: &[(String, &[u8], u32)]) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for (name, data, mode) in files {
        let p = out.join(name);
        ca::fsutil::write_atomic(&p, data, *mode)?;
        paths.push(p);
    }
    Ok(paths)
}

fn default_state_dir(out: &Path, opts: &NodeOptions) -> PathBuf {
    opts.state_dir
        .clone()
        .unwrap_or_else(|| match &opts.prefix {
            Some(p) => p.join("state"),
            None => out.join("state"),
        })
}

/// The broker address a client on the site connects to: `given`, else the site's (`connect`,
/// else its first name).
pub(crate) fn broker_host(site: &manifests::site::Site, given: Option<&str>) -> Result<String> {
    given
        .map(str::to_string)
        .or_else(|| site.broker.connect_host())
        .ok_or_else(|| {
            CliError::new(Code::Input, "the site file names no broker address")
                .with_help("give --broker-host HOST")
        })
}

/// Issues (or reuses) the gateway's certificate and link key and writes its files into
/// `out` (an existing directory): `gateway.toml`, `link.toml`, `link.key`, `ca.crt`,
/// `ID.crt`, `ID.key`. Used by `emit gateway` and `deploy gateway`.
pub fn write_gateway(
    ctx: &Context,
    id: &str,
    opts: &NodeOptions,
    out: &Path,
) -> Result<NodeEmitted> {
    use manifests::gateway::{GATEWAY_MANIFEST_VERSION, GatewayManifest, GatewayMqtt, LinkRef};
    use manifests::link::{KeySource, LinkRole, Node, Peer};
    let site = ctx.site()?;
    let g = site.gateways.get(id).ok_or_else(|| {
        let known: Vec<&str> = site.gateways.keys().map(String::as_str).collect();
        CliError::new(
            Code::Input,
            format!(
                "no gateway `{id}` in the site file (known: {})",
                known.join(", ")
            ),
        )
        .with_help(format!(
            "add [gateways.{id}] with subscribe = [...] and receiver = \"...\" to {}",
            ctx.layout.site().display()
        ))
    })?;
    let mut authority = ctx.authority()?;
    let ident = issue_node(
        ctx,
        &mut authority,
        &site,
        id,
        "gateway",
        g.subscribe.clone(),
        vec![],
    )?;
    let me = lora_address(&authority, id, "gateway")?;
    let peer = lora_address(&authority, &g.receiver, "receiver")?;
    let key_id = super::link::ring(&authority, id)?.current;
    let key_hex = super::link::key_text(&mut authority, id, key_id, true)?;
    let mut link = link_manifest(
        LinkRole::Gateway,
        Node {
            name: id.to_string(),
            address: me,
        },
        vec![Peer::new(g.receiver.clone(), peer)],
        site_topic_table(&site),
        opts,
        default_state_dir(out, opts),
    )?;
    link.key = KeySource {
        hex: None,
        file: Some(target_path(out, opts, "link.key")),
    };
    link.key_id = key_id;
    let host = broker_host(&site, opts.broker_host.as_deref())?;
    let server_name = opts.server_name.clone().or_else(|| {
        if opts.broker_host.is_some() {
            None
        } else {
            site.broker.server_name().filter(|n| n != &host)
        }
    });
    let state_dir = link.state_dir.clone();
    let manifest = GatewayManifest {
        version: GATEWAY_MANIFEST_VERSION,
        counters_file: Some(state_dir.join("counters.json")),
        mqtt: GatewayMqtt {
            host,
            port: opts.broker_port.unwrap_or(site.broker.port),
            server_name,
            // The certificate's CN is `id` too (issue_node): the broker takes the CN as client
            // id (use_username_as_clientid) and `gateway` refuses any other value.
            client_id: id.to_string(),
            ca_file: target_path(out, opts, "ca.crt"),
            cert_file: target_path(out, opts, &format!("{id}.crt")),
            key_file: target_path(out, opts, &format!("{id}.key")),
            filters: g.subscribe.clone(),
            qos: opts.qos,
            keep_alive_s: 30,
            reconnect_min_ms: 500,
            reconnect_max_ms: 30_000,
        },
        link: LinkRef {
            manifest: Some(target_path(out, opts, "link.toml")),
            embedded: None,
        },
    };
    let link_text = link
        .to_toml()
        .map_err(|e| CliError::new(Code::Failure, format!("encoding link.toml: {e}")))?;
    let gw_text = manifest.to_toml()?;
    let bundle = std::fs::read(ctx.layout.ca_bundle())
        .map_err(|e| crate::exit::io(&ctx.layout.ca_bundle(), e))?;
    let files = write_files(
        out,
        &[
            ("ca.crt".into(), &bundle, 0o644),
            (format!("{id}.crt"), ident.chain_pem.as_bytes(), 0o644),
            (format!("{id}.key"), ident.key_pem.as_bytes(), 0o600),
            ("link.key".into(), key_hex.as_bytes(), 0o600),
            ("link.toml".into(), link_text.as_bytes(), 0o600),
            ("gateway.toml".into(), gw_text.as_bytes(), 0o600),
        ],
    )?;
    if opts.prefix.is_none() {
        ca::fsutil::private_dir(&state_dir)?;
    }
    Ok(NodeEmitted {
        manifest: out.join("gateway.toml"),
        files,
        serial: ident.serial,
        existing: ident.existing,
        renewed: ident.renewed,
        addresses: (me, peer),
        gateways: Vec::new(),
    })
}

/// Issues (or reuses) the receiver's certificate and writes `receiver.toml`, one
/// `link-GATEWAY-N.key` per key of every gateway of the site that sends to it (two during a
/// rotation window, see `cmd::link`), `ca.crt`, `ID.crt`, `ID.key` into `out`.
pub fn write_receiver(
    ctx: &Context,
    id: &str,
    opts: &NodeOptions,
    out: &Path,
) -> Result<NodeEmitted> {
    use manifests::link::{LinkRole, MqttParams, Node};
    let site = ctx.site()?;
    let r = site.receivers.get(id).ok_or_else(|| {
        let known: Vec<&str> = site.receivers.keys().map(String::as_str).collect();
        CliError::new(
            Code::Input,
            format!(
                "no receiver `{id}` in the site file (known: {})",
                known.join(", ")
            ),
        )
        .with_help(format!(
            "add [receivers.{id}] with publish = [...] to {}",
            ctx.layout.site().display()
        ))
    })?;
    let gateways: Vec<&String> = site
        .gateways
        .iter()
        .filter(|(_, g)| g.receiver == id)
        .map(|(name, _)| name)
        .collect();
    if gateways.is_empty() {
        return Err(CliError::new(
            Code::Input,
            format!("no gateway of the site sends to receiver `{id}`"),
        )
        .with_help(format!(
            "set receiver = \"{id}\" in a [gateways.ID] table of the site file"
        )));
    }
    let mut authority = ctx.authority()?;
    let ident = issue_node(
        ctx,
        &mut authority,
        &site,
        id,
        "receiver",
        vec![],
        r.publish.clone(),
    )?;
    let me = lora_address(&authority, id, "receiver")?;
    let mut addressed = Vec::new();
    for gw in &gateways {
        addressed.push(((*gw).clone(), lora_address(&authority, gw, "gateway")?));
    }
    let (peers, key_files) = super::link::receiver_peers(&mut authority, &addressed, &|name| {
        target_path(out, opts, name)
    })?;
    let link = link_manifest(
        LinkRole::Receiver,
        Node {
            name: id.to_string(),
            address: me,
        },
        peers,
        site_topic_table(&site),
        opts,
        default_state_dir(out, opts),
    )?;
    let peer = addressed[0].1;
    let accepted = link
        .peers
        .iter()
        .map(|p| {
            json!({ "name": p.name, "address": p.address,
                         "keys": p.keys.iter().map(|k| k.id).collect::<Vec<_>>() })
        })
        .collect();
    let mut link = link;
    if !opts.no_mqtt {
        link.mqtt = Some(MqttParams {
            host: opts
                .broker_host
                .clone()
                .unwrap_or_else(|| "localhost".into()),
            port: opts.broker_port.unwrap_or(site.broker.port),
            // = the certificate's CN, as the broker and `lora-link rx` require.
            client_id: id.to_string(),
            ca_file: target_path(out, opts, "ca.crt"),
            cert_file: target_path(out, opts, &format!("{id}.crt")),
            key_file: target_path(out, opts, &format!("{id}.key")),
            filters: vec![],
            qos: opts.qos,
        });
    }
    let state_dir = link.state_dir.clone();
    let text = link
        .to_toml()
        .map_err(|e| CliError::new(Code::Failure, format!("encoding receiver.toml: {e}")))?;
    let bundle = std::fs::read(ctx.layout.ca_bundle())
        .map_err(|e| crate::exit::io(&ctx.layout.ca_bundle(), e))?;
    let mut list: Vec<(String, &[u8], u32)> = vec![
        ("ca.crt".into(), &bundle, 0o644),
        (format!("{id}.crt"), ident.chain_pem.as_bytes(), 0o644),
        (format!("{id}.key"), ident.key_pem.as_bytes(), 0o600),
    ];
    for (name, text) in &key_files {
        list.push((name.clone(), text.as_bytes(), 0o600));
    }
    // The manifest last: it names only files already in place.
    list.push(("receiver.toml".into(), text.as_bytes(), 0o600));
    let files = write_files(out, &list)?;
    if opts.prefix.is_none() {
        ca::fsutil::private_dir(&state_dir)?;
    }
    Ok(NodeEmitted {
        manifest: out.join("receiver.toml"),
        files,
        serial: ident.serial,
        existing: ident.existing,
        renewed: ident.renewed,
        addresses: (me, peer),
        gateways: accepted,
    })
}
