//! `provisioner init`: the CA, the ledger and the site configuration.

use std::path::PathBuf;

use ca::{Authority, InitOptions};
use manifests::site::{EXAMPLE_SMART_HOME, MAX_SITE_LEN, Site};
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// Arguments of `init`.
#[derive(Debug, clap::Args)]
#[command(
    after_help = "Running it again on an initialised home changes nothing and prints the CA's fingerprint.\n\nThe ledger is ledger.sqlite in the home unless --ledger names a PostgreSQL database (several bench stations sharing one ledger: see the README)."
)]
pub struct Args {
    /// Site file (TOML) describing the broker, topics and device profiles. Default: the
    /// example house of manifests/examples/smart-home.toml.
    #[arg(long, value_name = "FILE")]
    site: Option<PathBuf>,
    /// Also create an issuing CA under the root; leaves are then signed by it.
    #[arg(long)]
    issuing_ca: bool,
    #[command(flatten)]
    ledger: crate::cmd::shared_ledger::LedgerArgs,
}

/// Runs `init`.
pub fn run(ctx: &Context, args: Args) -> Result<()> {
    ctx.check_home()?;
    let read_site = |p: &std::path::Path| {
        // Read once, bounded, as a regular file: what is checked is what is stored.
        manifests::error::read_text(p, MAX_SITE_LEN)
    };
    let (site, text) = match &args.site {
        Some(p) => {
            let text = read_site(p)?;
            (Site::from_toml_str(&p.display().to_string(), &text)?, text)
        }
        None => {
            if !ctx.layout.site().exists() {
                eprintln!(
                    "no --site given: using the example house (edit {} to change it)",
                    ctx.layout.site().display()
                );
            }
            let text = if ctx.layout.site().exists() {
                read_site(&ctx.layout.site())?
            } else {
                EXAMPLE_SMART_HOME.to_string()
            };
            (Site::from_toml_str("site.toml", &text)?, text)
        }
    };
    let site_path = ctx.layout.site();
    if let Ok(existing) = read_site(&site_path)
        && existing != text
    {
        return Err(CliError::new(
            Code::State,
            format!("{} already holds a different site", site_path.display()),
        )
        .with_help(format!(
            "edit {} in place, or use another --home for another site",
            site_path.display()
        )));
    }
    let joined = crate::cmd::shared_ledger::choose(ctx, &args.ledger)?;
    let pass = ctx.passphrase(true)?;
    let opts = InitOptions {
        name: format!("{} Root CA", site.site.name),
        organization: site.site.organization.clone(),
        issuing_ca: args.issuing_ca,
    };
    let report = Authority::init(&ctx.layout, &opts, &pass)?;
    ca::fsutil::write_atomic(&site_path, text.as_bytes(), 0o600)?;
    let mut authority = Authority::open(&ctx.layout, &pass)?;
    authority
        .store
        .ledger
        .set_meta("crl_days", &site.site.crl_days.to_string())?;
    let crl = authority.crl(false)?;
    let ledger = authority.store.ledger.name().display().to_string();
    let human = format!(
        "{}{} CA `{}` in {}\n  ledger            {ledger}\n  root serial       {}\n  root fingerprint  SHA256 {}\n  valid until       {}\n  CRL number        {} (next update {})\n  next: {}",
        joined.map(|j| format!("{j}\n")).unwrap_or_default(),
        if report.created {
            "created"
        } else {
            "already initialised:"
        },
        opts.name,
        ctx.layout.home.display(),
        report.root_serial,
        report.root_fingerprint,
        report.root_not_after,
        crl.number,
        crl.next_update,
        server_issue_hint(&site),
    );
    ctx.print(
        &json!({ "home": ctx.layout.home, "ledger": ledger, "ca": report, "crl": crl, "root_certificate": ctx.layout.root_cert() }),
        &human,
    );
    Ok(())
}

/// The `server issue` to run next: without flags it certifies the names of the site's
/// [broker] section, which the hint lists; a site without names needs them given.
fn server_issue_hint(site: &Site) -> String {
    let names: Vec<String> = site
        .broker
        .dns
        .iter()
        .cloned()
        .chain(site.broker.ip.iter().map(ToString::to_string))
        .collect();
    if names.is_empty() {
        "provisioner server issue --dns NAME [--ip IP]   (the site's [broker] names no host)".into()
    } else {
        format!(
            "provisioner server issue   (certifies the site's [broker] names: {})",
            names.join(", ")
        )
    }
}
