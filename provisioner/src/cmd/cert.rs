//! `provisioner cert sign`: certify a key made elsewhere, from its CSR.

use std::path::PathBuf;

use ca::ledger::IdentityRecord;
use ca::{IssueRequest, Profile, Subject};
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// `cert` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum CertCommand {
    /// Sign a CSR (PEM or DER, EC P-256) with a profile. Only the CSR's key, CN and (for
    /// servers) SAN names are used; every extension comes from the profile.
    #[command(after_help = "EXAMPLES:\n  \
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout c.key -subj /CN=probe-1 -out c.csr\n  \
provisioner cert sign --csr c.csr --profile client --out c.crt\n  \
provisioner cert sign --csr c.csr --profile client --publish maison/probe/# --subscribe maison/#\n\n\
The client's MQTT username is its CN. Without --publish it may publish under <root>/<CN>/#.\n\
Signing the same CSR again prints the same certificate, unless it has expired or is past its\n\
renewal point: then a new one is issued for the CSR's key (`renewed`).")]
    Sign(SignArgs),
}

/// Arguments of `cert sign`.
#[derive(Debug, clap::Args)]
pub struct SignArgs {
    /// The certificate signing request.
    #[arg(long, value_name = "FILE")]
    csr: PathBuf,
    /// Certificate profile: server or client.
    #[arg(long, value_name = "PROFILE")]
    profile: String,
    /// Write the certificate (followed by the issuing CA, if any) to this file; without it
    /// the PEM goes to stdout.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Topic filter the client may publish to (repeatable; client profile).
    #[arg(long, value_name = "TOPIC")]
    publish: Vec<String>,
    /// Topic filter the client may subscribe to (repeatable; client profile).
    #[arg(long, value_name = "TOPIC")]
    subscribe: Vec<String>,
}

/// Runs `cert`.
pub fn run(ctx: &Context, cmd: CertCommand) -> Result<()> {
    let CertCommand::Sign(args) = cmd;
    let profile = Profile::parse(&args.profile)?;
    if !matches!(profile, Profile::Server | Profile::Client) {
        return Err(CliError::new(
            Code::Input,
            format!(
                "profile `{}` cannot be used with cert sign: use server or client",
                args.profile
            ),
        ));
    }
    let bytes = ca::fsutil::read_bounded(&args.csr, ca::request::MAX_CSR_LEN as u64)
        .map_err(|e| crate::exit::input_file("--csr", e))?;
    let csr = ca::parse_csr(&bytes)?;
    let site = ctx.site()?;
    for t in args.publish.iter().chain(&args.subscribe) {
        manifests::topic::check_topic_filter(t)
            .map_err(|e| CliError::new(Code::Input, format!("topic `{t}`: expected {e}")))?;
    }
    let (subject, identity) = match profile {
        Profile::Server => {
            let mut dns = csr.dns.clone();
            if dns.is_empty() && csr.ips.is_empty() {
                dns.push(csr.common_name.clone());
            }
            let subject = Subject {
                common_name: csr.common_name.clone(),
                organization: site.site.organization.clone(),
                dns,
                ips: csr.ips.clone(),
                serial_number: None,
            };
            (subject, None)
        }
        _ => {
            manifests::topic::check_identity(&csr.common_name).map_err(|e| {
                CliError::new(Code::Input, format!("CSR common name: expected {e}"))
            })?;
            let store = &ctx.store()?;
            if let Some(existing) = store.ledger.identity(&csr.common_name)?
                && existing.kind != "client"
            {
                return Err(CliError::new(
                    Code::State,
                    format!(
                        "`{}` already exists as a {}; a client needs its own name",
                        csr.common_name, existing.kind
                    ),
                ));
            }
            let publish = if args.publish.is_empty() {
                vec![format!("{}/{}/#", site.topics.root, csr.common_name)]
            } else {
                args.publish.clone()
            };
            let subject = Subject {
                common_name: csr.common_name.clone(),
                organization: site.site.organization.clone(),
                dns: vec![],
                ips: vec![],
                serial_number: None,
            };
            let identity = IdentityRecord {
                id: csr.common_name.clone(),
                kind: "client".into(),
                profile: "client".into(),
                acl_write: publish,
                acl_read: args.subscribe.clone(),
                attrs: Default::default(),
                status: "active".into(),
            };
            (subject, Some(identity))
        }
    };
    let mut authority = ctx.authority()?;
    let request_id = ca::authority::request_id(&[b"csr", profile.name().as_bytes(), &csr.der]);
    let issued = authority.issue(IssueRequest {
        profile,
        subject,
        public_key: csr.public_key.clone(),
        request_id,
        days: site.site.leaf_days,
        identity,
    })?;
    let chain = format!("{}{}", issued.pem, authority.store.chain_pem()?);
    if let Some(out) = &args.out {
        ca::fsutil::write_atomic(out, chain.as_bytes(), 0o644)?;
    }
    let renewed = issued.renewal_note();
    let verb = if issued.existing {
        "existing"
    } else if renewed.is_some() {
        "renewed"
    } else {
        "issued"
    };
    let summary = format!(
        "{verb} {} certificate {} for `{}`{}",
        profile.name(),
        issued.record.serial,
        csr.common_name,
        renewed
            .as_deref()
            .map(|n| format!("\n  {n}"))
            .unwrap_or_default(),
    );
    // The registered brokers learn the new identity (ACL) without re-running `emit broker`.
    let brokers = super::brokers::refresh(ctx);
    if ctx.json {
        ctx.print(
            &json!({ "brokers": brokers.json(), "serial": issued.record.serial, "existing": issued.existing, "identity": csr.common_name,
                     "renewed": issued.renewed.as_ref().map(|o| json!({ "serial": o.serial, "not_after": crate::cmd::audit::rfc3339(o.not_after) })),
                     "not_after": crate::cmd::audit::rfc3339(issued.record.not_after),
                     "profile": profile.name(), "out": args.out, "pem": chain }),
            "",
        );
    } else if let Some(out) = &args.out {
        println!(
            "{summary}\n  written to   {}{}",
            out.display(),
            brokers.human()
        );
    } else {
        // Like `openssl x509`: the certificate on stdout, the summary on stderr.
        eprintln!("{summary}{}", brokers.human());
        print!("{chain}");
    }
    Ok(())
}
