//! `provisioner crl`: keep the CRL fresh (mosquitto refuses every client once it is stale).

use serde_json::json;

use crate::context::Context;
use crate::exit::Result;

/// Arguments of `crl`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Without --renew a new CRL is signed only when it is due: a revocation is newer than the\n\
current CRL, or a third or less of its lifetime remains. Run it daily (systemd timer or cron)\n\
and reload mosquitto (SIGHUP) when it prints `renewed`. Every broker directory written by\n\
`emit broker` receives the new crl.pem too."
)]
pub struct Args {
    /// Sign a new CRL now, even if the current one is fresh.
    #[arg(long)]
    renew: bool,
}

/// Runs `crl`.
pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let mut authority = ctx.authority()?;
    let r = authority.crl(args.renew)?;
    let brokers = super::brokers::refresh(ctx);
    let files: Vec<String> = r.written.iter().map(|p| p.display().to_string()).collect();
    let human = format!(
        "CRL number {} {}: {} revoked, next update {}\n  written: {}{}{}",
        r.number,
        if r.renewed {
            "renewed"
        } else {
            "is up to date"
        },
        r.revoked,
        r.next_update,
        files.join(", "),
        crate::cmd::skipped_targets(&r.skipped),
        brokers.human(),
    );
    let mut v = json!(r);
    v["brokers"] = brokers.json();
    ctx.print(&v, &human);
    Ok(())
}
