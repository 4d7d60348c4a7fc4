//! `provisioner device list|show|revoke`.

use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// `device` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum DeviceCommand {
    /// Provision a board plugged in at the bench: configure and lock its ATECC508A, create
    /// its key, prove possession, issue its certificate, write its configuration.
    #[command(after_help = super::provision::HELP)]
    Provision(super::provision::Args),
    /// List devices and clients with their certificate status.
    List,
    /// Show one device or client: identity, ACL, certificates.
    Show {
        /// Device or client id (its certificate CN).
        id: String,
    },
    /// Revoke every certificate of a device or client and publish a new CRL.
    #[command(
        after_help = "Then reload the broker so it reads the new CRL: kill -HUP $(cat DIR/run/mosquitto.pid)\n(DIR: the broker directory `emit broker` wrote; its mosquitto.conf names the pid_file)"
    )]
    Revoke {
        /// Device or client id.
        id: String,
        /// Reason recorded in the CRL.
        #[arg(long, default_value = "cessation-of-operation", value_parser = [
            "unspecified", "key-compromise", "ca-compromise", "affiliation-changed", "superseded", "cessation-of-operation"])]
        reason: String,
    },
}

fn ts(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// Runs `device`.
pub fn run(ctx: &Context, cmd: DeviceCommand) -> Result<()> {
    match cmd {
        DeviceCommand::Provision(args) => return super::provision::run(ctx, args),
        DeviceCommand::List => {
            let store = ctx.store()?;
            let mut rows = Vec::new();
            let mut human = format!(
                "{:<24} {:<9} {:<12} {:<8} {:<34} {}",
                "ID", "KIND", "PROFILE", "STATUS", "SERIAL", "EXPIRES"
            );
            for i in store.ledger.identities()? {
                let certs = store.ledger.certificates_of(&i.id)?;
                let current = certs
                    .iter()
                    .rev()
                    .find(|c| c.revoked_at.is_none())
                    .or(certs.last());
                human.push_str(&format!(
                    "\n{:<24} {:<9} {:<12} {:<8} {:<34} {}",
                    i.id,
                    i.kind,
                    i.profile,
                    i.status,
                    current.map(|c| c.serial.as_str()).unwrap_or("-"),
                    current.map(|c| ts(c.not_after)).unwrap_or_default()
                ));
                rows.push(json!({ "id": i.id, "kind": i.kind, "profile": i.profile, "status": i.status,
                    "serial": current.map(|c| &c.serial), "not_after": current.map(|c| ts(c.not_after)) }));
            }
            ctx.print(&json!(rows), &human);
        }
        DeviceCommand::Show { id } => {
            let store = ctx.store()?;
            let Some(i) = store.ledger.identity(&id)? else {
                return Err(
                    CliError::new(Code::State, format!("no device or client `{id}`"))
                        .with_help("see `provisioner device list`"),
                );
            };
            let certs = store.ledger.certificates_of(&id)?;
            let mut human = format!(
                "{}  ({} {}, {})\n  may publish    {}\n  may subscribe  {}",
                i.id,
                i.kind,
                i.profile,
                i.status,
                i.acl_write.join(" "),
                i.acl_read.join(" ")
            );
            for (k, v) in &i.attrs {
                human.push_str(&format!("\n  {k:<14} {v}"));
            }
            for c in &certs {
                human.push_str(&format!(
                    "\n  certificate {} {} .. {}{}",
                    c.serial,
                    ts(c.not_before),
                    ts(c.not_after),
                    c.revoked_at
                        .map(|r| format!(
                            "  REVOKED {} ({})",
                            ts(r),
                            c.reason.clone().unwrap_or_default()
                        ))
                        .unwrap_or_default()
                ));
            }
            let certs_json: Vec<serde_json::Value> = certs
                .iter()
                .map(|c| {
                    let mut v = json!(c);
                    v["pem"] = json!(ca::authority::cert_pem(&c.der));
                    v
                })
                .collect();
            ctx.print(
                &json!({ "identity": i, "certificates": certs_json }),
                &human,
            );
        }
        DeviceCommand::Revoke { id, reason } => {
            let mut authority = ctx.authority()?;
            let (serials, crl) = authority.revoke_identity(&id, &reason)?;
            // Revoking again is safe and changes nothing but the CRL's number: say so.
            let already = serials.is_empty();
            let what = if already {
                format!("`{id}` was already revoked: no certificate left to revoke")
            } else {
                format!(
                    "revoked `{id}`: {} certificate(s) {}",
                    serials.len(),
                    serials.join(", ")
                )
            };
            let human = format!(
                "{what}\nCRL number {} written to {}{}\n  next: reload each broker (kill -HUP $(cat DIR/run/mosquitto.pid), the pid_file of its mosquitto.conf); `emit broker` also drops it from the ACL",
                crl.number,
                crl.written
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::cmd::skipped_targets(&crl.skipped),
            );
            ctx.print(
                &json!({ "id": id, "revoked": serials, "already_revoked": already, "crl": crl }),
                &human,
            );
        }
    }
    Ok(())
}
