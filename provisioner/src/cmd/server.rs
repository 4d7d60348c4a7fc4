//! `provisioner server issue`: the broker's certificate and key.

use std::net::IpAddr;

use ca::ledger::IdentityRecord;
use ca::{IssueRequest, Profile, PublicKey, Subject};
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// `server` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ServerCommand {
    /// Issue the broker's certificate (key generated here, written 0600 under keys/).
    #[command(
        after_help = "EXAMPLES:\n  provisioner server issue --dns broker.maison.lan --dns raspberrypi.local --ip 192.168.1.10\n\n\
Running it again with the same names prints the existing certificate, unless it has expired or\n\
is past its renewal point: then it issues a new one for the same key and says `renewed`. Other\n\
names give a new certificate for the same key."
    )]
    Issue(IssueArgs),
}

/// Arguments of `server issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// DNS name in the SAN (repeatable). Default: the site's broker names.
    #[arg(long, value_name = "NAME")]
    dns: Vec<String>,
    /// IP address in the SAN (repeatable). Default: the site's broker addresses.
    #[arg(long, value_name = "IP")]
    ip: Vec<IpAddr>,
    /// Identity of this broker in the ledger.
    #[arg(long, default_value = "broker")]
    id: String,
}

/// Runs `server`.
pub fn run(ctx: &Context, cmd: ServerCommand) -> Result<()> {
    let ServerCommand::Issue(args) = cmd;
    manifests::topic::check_identity(&args.id)
        .map_err(|e| CliError::new(Code::Input, format!("--id: expected {e}")))?;
    let site = ctx.site()?;
    let (mut dns, mut ips) = (args.dns, args.ip);
    if dns.is_empty() && ips.is_empty() {
        dns = site.broker.dns.clone();
        ips = site.broker.ip.clone();
    }
    let mut authority = ctx.authority()?;
    let ServerIssued {
        issued,
        names,
        cert_path,
        key_path,
    } = issue_server(ctx, &mut authority, &args.id, dns, ips)?;
    let renewed = issued.renewal_note();
    let human = format!(
        "{} broker certificate {} for {}{}\n  certificate  {}\n  key          {} (0600)\n  next: provisioner emit broker --out DIR{}",
        if issued.existing {
            "existing"
        } else if renewed.is_some() {
            "renewed"
        } else {
            "issued"
        },
        issued.record.serial,
        names.join(", "),
        renewed
            .as_deref()
            .map(|n| format!("\n  {n}"))
            .unwrap_or_default(),
        cert_path.display(),
        key_path.display(),
        if renewed.is_some() {
            " again to install the new certificate, then reload mosquitto (kill -HUP)"
        } else {
            ""
        },
    );
    // A renewed broker certificate reaches the registered directories at once.
    let brokers = super::brokers::refresh(ctx);
    let human = format!("{human}{}", brokers.human());
    ctx.print(
        &json!({ "brokers": brokers.json(), "serial": issued.record.serial, "existing": issued.existing,
                 "renewed": issued.renewed.as_ref().map(|o| json!({ "serial": o.serial, "not_after": crate::cmd::audit::rfc3339(o.not_after) })),
                 "not_after": crate::cmd::audit::rfc3339(issued.record.not_after),
                 "certificate": cert_path, "key": key_path, "names": names }),
        &human,
    );
    Ok(())
}

/// The broker certificate `issue_server` issued (or found), and where its files are.
pub(crate) struct ServerIssued {
    /// What the CA issued, or the existing certificate.
    pub issued: ca::authority::Issued,
    /// The names in its SAN, sorted.
    pub names: Vec<String>,
    /// keys/ID.crt (certificate and chain).
    pub cert_path: std::path::PathBuf,
    /// keys/ID.key (0600).
    pub key_path: std::path::PathBuf,
}

/// Issues the broker certificate `id` for `dns` and `ips` with the key kept under keys/
/// (made once), records it as the ledger's `server:ID` and writes keys/ID.crt: a new one
/// when none exists for these names or the existing one is due (same key). Used by `server
/// issue` and `renew`.
pub(crate) fn issue_server(
    ctx: &Context,
    authority: &mut ca::Authority,
    id: &str,
    dns: Vec<String>,
    ips: Vec<IpAddr>,
) -> Result<ServerIssued> {
    let site = ctx.site()?;
    let key_path = ctx.layout.keys_dir().join(format!("{id}.key"));
    // A key from an earlier (possibly interrupted) run is reused: same key, same request.
    // Created only if absent, atomically: two `server issue` at once agree on one key.
    let key = if key_path.exists() {
        ca::keys::read_plain(&key_path)?
    } else {
        let k = ca::keys::generate()?;
        let pem = zeroize::Zeroizing::new(k.serialize_pem());
        if ca::fsutil::write_new(&key_path, pem.as_bytes(), 0o600)? {
            k
        } else {
            ca::keys::read_plain(&key_path)?
        }
    };
    let public_key = PublicKey::from_sec1(key.public_key_raw())?;
    let mut names: Vec<String> = dns
        .iter()
        .cloned()
        .chain(ips.iter().map(ToString::to_string))
        .collect();
    names.sort();
    let request_id = ca::authority::request_id(&[
        b"server",
        id.as_bytes(),
        &public_key.0,
        names.join(",").as_bytes(),
    ]);
    let subject = Subject {
        common_name: dns
            .first()
            .cloned()
            .or_else(|| ips.first().map(ToString::to_string))
            .unwrap_or_default(),
        organization: site.site.organization.clone(),
        dns: dns.clone(),
        ips: ips.clone(),
        serial_number: None,
    };
    let identity = IdentityRecord {
        id: id.to_string(),
        kind: "server".into(),
        profile: "server".into(),
        acl_write: vec![],
        acl_read: vec![],
        attrs: Default::default(),
        status: "active".into(),
    };
    let issued = authority.issue(IssueRequest {
        profile: Profile::Server,
        subject,
        public_key,
        request_id,
        days: site.site.leaf_days,
        identity: Some(identity),
    })?;
    authority
        .store
        .ledger
        .set_meta(&format!("server:{id}"), &issued.record.serial)?;
    // The certificate (and chain) beside its key, for operators who run the broker by hand.
    let cert_path = ctx.layout.keys_dir().join(format!("{id}.crt"));
    let chain = format!("{}{}", issued.pem, authority.store.chain_pem()?);
    ca::fsutil::write_atomic(&cert_path, chain.as_bytes(), 0o644)?;
    Ok(ServerIssued {
        issued,
        names,
        cert_path,
        key_path,
    })
}
