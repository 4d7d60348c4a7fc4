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
    /// List devices and clients with their active certificate and the days it has left.
    #[command(
        after_help = "EXAMPLES:\n  provisioner device list\n  provisioner device list --expiring 30d   # expired, or expiring within 30 days\n\n\
LEFT is whole days until the active certificate expires (negative: expired). RENEW says\n\
`due` once it is past its renewal point; `provisioner audit` checks the whole site."
    )]
    List {
        /// Only identities whose active certificate expires within DURATION (30d, 12h, 90m,
        /// 2w) or has expired.
        #[arg(long, value_name = "DURATION", value_parser = super::audit::parse_duration)]
        expiring: Option<i64>,
    },
    /// Show one device or client: identity, ACL, certificates.
    Show {
        /// Device or client id (its certificate CN).
        id: String,
    },
    /// Revoke every certificate of a device or client, publish a new CRL and rewrite the ACL
    /// and CRL of every registered broker directory.
    #[command(
        after_help = "Every broker directory `emit broker` registered gets the new CRL and an ACL without the\n\
identity. Then, on the broker (or with --reload here, for a broker on this machine):\n  \
kill -HUP $(cat DIR/run/mosquitto.pid)\n\
After that reload (mosquitto 2.0) the identity's new connections are refused and its open\n\
session may neither publish nor receive anything; to end that open session too, restart the\n\
broker: `systemctl restart mosquitto` (persistence keeps every other session and its queued\n\
QoS 1/2 messages). See the README, \"Revocation\"."
    )]
    Revoke {
        /// Device or client id.
        id: String,
        /// Reason recorded in the CRL.
        #[arg(long, default_value = "cessation-of-operation", value_parser = [
            "unspecified", "key-compromise", "ca-compromise", "affiliation-changed", "superseded", "cessation-of-operation"])]
        reason: String,
        /// Send SIGHUP to the mosquitto of every registered directory on this machine, through
        /// its pid file (checked to be a mosquitto running that directory's configuration).
        #[arg(long)]
        reload: bool,
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
        DeviceCommand::Provision(args) => {
            let r = super::provision::run(ctx, args);
            // Boards committed before a failure count too: the registered brokers learn them.
            super::brokers::refresh_and_print(ctx);
            return r;
        }
        DeviceCommand::List { expiring } => {
            use super::audit::{State, days_left, renew_at};
            let store = ctx.store()?;
            let policy = super::audit::home_policy(ctx);
            let now = ca::clock::now().unix_timestamp();
            let mut rows = Vec::new();
            let mut human = format!(
                "{:<24} {:<9} {:<12} {:<8} {:<34} {:<21} {:>6} {}",
                "ID", "KIND", "PROFILE", "STATUS", "SERIAL", "EXPIRES", "LEFT", "RENEW"
            );
            for i in store.ledger.identities()? {
                // The active certificate; for a revoked identity, its last one.
                let active = store.ledger.active_of(&i.id)?;
                let current = match &active {
                    Some(c) => Some(c.clone()),
                    None => store.ledger.certificates_of(&i.id)?.pop(),
                };
                let left = active.as_ref().map(|c| days_left(c.not_after, now));
                let state = active
                    .as_ref()
                    .map(|c| State::of(renew_at(&policy, c, Some(&i)), c.not_after, now));
                if let Some(window) = expiring
                    && active.as_ref().is_none_or(|c| c.not_after - now > window)
                {
                    continue;
                }
                human.push_str(&format!(
                    "\n{:<24} {:<9} {:<12} {:<8} {:<34} {:<21} {:>6} {}",
                    i.id,
                    i.kind,
                    i.profile,
                    i.status,
                    current.as_ref().map_or("-", |c| c.serial.as_str()),
                    current
                        .as_ref()
                        .map(|c| ts(c.not_after))
                        .unwrap_or_default(),
                    left.map(|d| format!("{d}d")).unwrap_or_else(|| "-".into()),
                    match state {
                        Some(State::Ok) => "-",
                        Some(State::Renew) => "due",
                        Some(State::Expired) => "expired",
                        None => "",
                    }
                ));
                rows.push(json!({ "id": i.id, "kind": i.kind, "profile": i.profile, "status": i.status,
                    "serial": current.as_ref().map(|c| &c.serial), "not_after": current.as_ref().map(|c| ts(c.not_after)),
                    "active": active.is_some(), "days_left": left, "state": state }));
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
        DeviceCommand::Revoke { id, reason, reload } => {
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
            let mut brokers = super::brokers::refresh(ctx);
            if reload {
                super::brokers::reload(&mut brokers);
            }
            let next = if brokers.updated.is_empty() && brokers.skipped.is_empty() {
                "\n  next: no broker directory is registered: run `emit broker --out DIR` for each broker, then reload it (kill -HUP $(cat DIR/run/mosquitto.pid))".to_string()
            } else {
                format!(
                    "{}\n  to end `{id}`'s open session now: restart each broker (systemctl restart mosquitto); persistent sessions and queued messages survive",
                    brokers.human()
                )
            };
            let human = format!(
                "{what}\nCRL number {} written to {}{}{next}",
                crl.number,
                crl.written
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::cmd::skipped_targets(&crl.skipped),
            );
            ctx.print(
                &json!({ "id": id, "revoked": serials, "already_revoked": already, "crl": crl,
                         "brokers": brokers.json() }),
                &human,
            );
        }
    }
    Ok(())
}
