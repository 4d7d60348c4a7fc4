//! `provisioner emit broker`: a complete mosquitto 2.0 configuration from the ledger.

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
Re-running it rewrites every file atomically (new devices join the ACL, revoked ones leave it);\n\
reload mosquitto with SIGHUP afterwards. `provisioner crl` keeps OUT/crl.pem fresh.")]
    Broker(BrokerArgs),
}

/// Arguments of `emit broker`.
#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Output directory (created 0700).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// TLS listener port. Default: the site's broker port.
    #[arg(long)]
    port: Option<u16>,
    /// Bind the listener to this address only (e.g. 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Account mosquitto runs as (`user` directive). When run as root, the files are also
    /// given to that account. Started as root without it, mosquitto switches to `mosquitto`.
    #[arg(long, value_name = "USER")]
    run_as: Option<String>,
    /// Directory where the files will be on the broker machine, if not OUT itself.
    #[arg(long, value_name = "PATH")]
    prefix: Option<PathBuf>,
    /// Ledger id of the broker certificate to use.
    #[arg(long, default_value = "broker")]
    server: String,
}

/// Runs `emit`.
pub fn run(ctx: &Context, cmd: EmitCommand) -> Result<()> {
    let EmitCommand::Broker(args) = cmd;
    let site = ctx.site()?;
    let store = ctx.store()?;
    let serial = store
        .ledger
        .meta(&format!("server:{}", args.server))?
        .ok_or_else(|| {
            CliError::new(
                Code::State,
                format!("no broker certificate `{}` yet", args.server),
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
    let key = ca::keys::read_plain(&ctx.layout.keys_dir().join(format!("{}.key", args.server)))?;
    let crl = store.ledger.latest_crl()?.ok_or_else(|| {
        CliError::new(Code::State, "no CRL yet").with_help("run `provisioner crl`")
    })?;

    ca::fsutil::private_dir(&args.out)?;
    let out = args
        .out
        .canonicalize()
        .map_err(|e| crate::exit::io(&args.out, e))?;
    let prefix = args.prefix.clone().unwrap_or_else(|| out.clone());
    let files = BrokerFiles {
        cafile: prefix.join("ca.crt"),
        certfile: prefix.join("broker.crt"),
        keyfile: prefix.join("broker.key"),
        crlfile: prefix.join("crl.pem"),
        aclfile: prefix.join("acl"),
    };
    let listener = Listener {
        port: args.port.unwrap_or(site.broker.port),
        bind: args.bind.clone(),
        run_as: args.run_as.clone(),
        pid_file: None,
    };
    let mut entries = Vec::new();
    let mut devices = 0;
    for i in store.ledger.identities()? {
        if i.status != "active" || i.kind == "server" {
            continue;
        }
        devices += 1;
        entries.push(AclEntry {
            comment: format!("{} `{}` (profile {})", i.kind, i.id, i.profile),
            user: i.id,
            write: i.acl_write,
            read: i.acl_read,
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
    let acl = render_acl(&entries)?;
    let conf = render_conf(&listener, &files)?;

    let bundle = std::fs::read(ctx.layout.ca_bundle())
        .map_err(|e| crate::exit::io(&ctx.layout.ca_bundle(), e))?;
    let chain = format!(
        "{}{}",
        ca::authority::cert_pem(&cert.der),
        store.chain_pem()?
    );
    let written = [
        ("ca.crt", bundle, 0o644),
        ("broker.crt", chain.into_bytes(), 0o644),
        (
            "broker.key",
            zeroize::Zeroizing::new(key.serialize_pem())
                .as_bytes()
                .to_vec(),
            0o600,
        ),
        (
            "crl.pem",
            ca::authority::crl_pem(&crl.der).into_bytes(),
            0o644,
        ),
        ("acl", acl.into_bytes(), 0o644),
        ("mosquitto.conf", conf.into_bytes(), 0o644),
    ];
    let mut paths = Vec::new();
    for (name, data, mode) in &written {
        let p = out.join(name);
        ca::fsutil::write_atomic(&p, data, *mode)?;
        paths.push(p);
    }
    if let Some(user) = &args.run_as {
        give_to(user, &out, &paths)?;
    }
    store.add_crl_target(&out.join("crl.pem"))?;
    let human = format!(
        "broker configuration in {}: listener {} (TLS, client certificates required), {} identities in the ACL, CRL number {}\n  run:    mosquitto -c {}\n  reload: kill -HUP $(pidof mosquitto)",
        out.display(),
        listener.port,
        devices,
        crl.number,
        files.aclfile.with_file_name("mosquitto.conf").display(),
    );
    ctx.print(&json!({ "out": out, "files": paths, "port": listener.port, "identities": devices, "crl_number": crl.number }), &human);
    Ok(())
}

/// Gives the directory and files to `user` when running as root (mosquitto must read them).
fn give_to(user: &str, dir: &Path, files: &[PathBuf]) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let u = nix::unistd::User::from_name(user)
        .map_err(|e| CliError::new(Code::Failure, format!("looking up user `{user}`: {e}")))?
        .ok_or_else(|| {
            CliError::new(
                Code::Input,
                format!("--run-as: no user `{user}` on this machine"),
            )
        })?;
    for p in std::iter::once(&dir.to_path_buf()).chain(files) {
        std::os::unix::fs::chown(p, Some(u.uid.as_raw()), Some(u.gid.as_raw()))
            .map_err(|e| crate::exit::io(p, e))?;
    }
    Ok(())
}
