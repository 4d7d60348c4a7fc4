//! `provisioner site check FILE`: validate a site file without touching anything.

use std::path::PathBuf;

use manifests::site::Site;
use serde_json::json;

use crate::context::Context;
use crate::exit::Result;

/// `site` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SiteCommand {
    /// Check a site file (syntax, every field, topic templates, chip profile names, lifetimes)
    /// without a home, a passphrase or any change; errors name file:line:column and the field.
    #[command(after_help = "EXAMPLES:\n  \
provisioner site check manifests/examples/smart-home.toml\n  \
provisioner site check \"$PROVISIONER_HOME/site.toml\"   # after editing it in place\n\n\
Warnings (valid, exit 0): a certificate lifetime under a day (`lifetime = \"3m\"`), meant for\n\
demos and tests.\n\n\
Exit codes: 0 valid, 3 invalid (the first error found, at its line).")]
    Check {
        /// The site file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Runs `site`.
pub fn run(ctx: &Context, cmd: SiteCommand) -> Result<()> {
    let SiteCommand::Check { file } = cmd;
    let site = Site::load(&file)?;
    let warnings = site.warnings();
    for w in &warnings {
        tracing::warn!("{}: {w}", file.display());
    }
    let human = format!(
        "{}: valid site `{}`: broker {}:{}, {} device profile(s) ({}), {} gateway(s), {} receiver(s)",
        file.display(),
        site.site.name,
        site.broker.dns.first().map(String::as_str).unwrap_or("?"),
        site.broker.port,
        site.profiles.len(),
        site.profiles.keys().cloned().collect::<Vec<_>>().join(", "),
        site.gateways.len(),
        site.receivers.len(),
    );
    ctx.print(
        &json!({ "file": file, "valid": true, "site": site.site.name, "warnings": warnings,
                 "profiles": site.profiles.keys().collect::<Vec<_>>(),
                 "gateways": site.gateways.keys().collect::<Vec<_>>(),
                 "receivers": site.receivers.keys().collect::<Vec<_>>() }),
        &human,
    );
    Ok(())
}
