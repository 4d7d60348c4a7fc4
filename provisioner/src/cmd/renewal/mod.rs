//! `provisioner renewal-service setup|run`: the CA side of renewal in the field.
//!
//! `setup` gives the service its own client identity (`renewal-service`, key in `keys/`,
//! certificate and CA bundle in `renewal-service/`), registers it in the ACL (it reads every
//! renewal topic and writes every certificate topic; each device gets only its own pair) and
//! writes a systemd unit that passes the CA passphrase with `LoadCredential=`. `run` is the
//! long-running MQTT client that answers requests ([`policy`] decides, [`service`] talks).

pub mod policy;
pub mod service;
mod setup;

use std::path::PathBuf;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// The service's identity: certificate CN, MQTT user and client id.
pub const SERVICE_ID: &str = "renewal-service";

const HELP: &str = "\
SIGNING WHILE THE ROOT KEY STAYS OFFLINE:
  The service signs with the home's issuing CA (`provisioner init --issuing-ca`); the root
  key (ca/root.key) is not needed to run it and belongs offline. Without an issuing CA the
  service refuses to start unless --allow-root-key is given.

BOARDS OFFLINE PAST EXPIRY:
  The broker refuses an expired client certificate before any message, so a board whose
  certificate expired cannot renew in the field: the service refuses such a request too,
  and the board is renewed at the bench by running `provisioner device provision` again.

EXAMPLES:
  provisioner renewal-service setup --credential /etc/provisioner/renewal.passphrase
  install -m 0644 HOME/renewal-service/provisioner-renewal.service /etc/systemd/system/
  systemctl daemon-reload && systemctl enable --now provisioner-renewal.service";

/// `renewal-service` subcommands.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = HELP)]
pub enum RenewalCommand {
    /// Issue the service's client certificate, register it in the ACL, write its systemd unit.
    #[command(after_help = HELP)]
    Setup(SetupArgs),
    /// Answer renewal requests from the boards until stopped (SIGINT/SIGTERM). Logs at info
    /// level by default (each certificate issued, each request refused).
    #[command(after_help = HELP)]
    Run(RunArgs),
}

/// Arguments of `renewal-service setup`.
#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// The 0600 file holding the CA passphrase that systemd hands to the service
    /// (`LoadCredential=`); it is not read now.
    #[arg(
        long,
        value_name = "FILE",
        default_value = "/etc/provisioner/renewal.passphrase"
    )]
    pub credential: PathBuf,
    /// Account the unit runs as [default: the current user].
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Accept a home without an issuing CA: the service then needs the root key online.
    #[arg(long)]
    pub allow_root_key: bool,
}

/// Arguments of `renewal-service run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Sign with the root key when the home has no issuing CA (keep the root offline instead:
    /// `init --issuing-ca`).
    #[arg(long)]
    pub allow_root_key: bool,
}

/// Runs `renewal-service`.
pub fn run(ctx: &Context, cmd: RenewalCommand) -> Result<()> {
    match cmd {
        RenewalCommand::Setup(a) => setup::run(ctx, a),
        RenewalCommand::Run(a) => service::run(ctx, a),
    }
}

/// Where the service's files live in the home.
pub fn service_dir(ctx: &Context) -> PathBuf {
    ctx.layout.home.join(SERVICE_ID)
}

/// Refuses to sign with the root key unless allowed: renewal runs unattended, so its key
/// should be an issuing CA's, whose compromise the root can revoke.
fn require_issuing_ca(ctx: &Context, allow_root_key: bool) -> Result<()> {
    let store = ctx.store()?;
    if store.issuing_serial()?.is_some() || allow_root_key {
        return Ok(());
    }
    Err(CliError::new(
        Code::State,
        "this home has no issuing CA: the renewal service would sign with the root key",
    )
    .with_help(
        "create the home with `provisioner init --issuing-ca` so the root key stays offline, or pass --allow-root-key",
    ))
}
