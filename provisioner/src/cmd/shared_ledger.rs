//! `init --ledger postgres://...`: a home whose ledger is a PostgreSQL database, new or
//! shared with other bench stations (see `ca::pgledger`).

use std::path::{Path, PathBuf};

use ca::pgledger::PgLedger;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// The ledger flags of `init`.
#[derive(Debug, Clone, clap::Args)]
pub struct LedgerArgs {
    /// Keep the ledger in this PostgreSQL database instead of `ledger.sqlite` in the home:
    /// postgres://USER@HOST[:PORT]/DATABASE, without password. A database that already holds
    /// a CA is joined by a bench station with --station BUNDLE (from `station add` on the
    /// root's home).
    #[arg(long, value_name = "URL")]
    pub ledger: Option<String>,
    /// The database password, in a 0600 file (otherwise PROVISIONER_LEDGER_PASSWORD or
    /// PGPASSWORD; never on the command line).
    #[arg(long, value_name = "FILE", requires = "ledger")]
    pub ledger_password_file: Option<PathBuf>,
    /// CA certificates (PEM) that signed the database server's certificate: the connection is
    /// TLS and the server is verified.
    #[arg(long, value_name = "FILE", requires = "ledger")]
    pub ledger_ca_file: Option<PathBuf>,
    /// Reach a database on another machine without TLS (only on a network you trust).
    #[arg(long, requires = "ledger")]
    pub ledger_allow_plaintext: bool,
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(|e| crate::exit::io(p, e))
}

/// Records the PostgreSQL ledger in the home when `--ledger` is given, after proving it can
/// be reached (and, when it already holds a CA, that this home has that CA's key or is the
/// station `station` names). Returns the note to print, if any. Nothing is written if a
/// check fails.
pub fn choose(
    ctx: &Context,
    args: &LedgerArgs,
    station: Option<&ca::station::Bundle>,
) -> Result<Option<String>> {
    let Some(url) = &args.ledger else {
        return Ok(None);
    };
    let layout = &ctx.layout;
    if layout.ledger().exists() {
        return Err(CliError::new(
            Code::State,
            format!(
                "{} already keeps its ledger in {}",
                layout.home.display(),
                layout.ledger().display()
            ),
        )
        .with_help("a home keeps the ledger it was created with: give another --home for the shared ledger"));
    }
    let pg = PgLedger::new(
        url,
        args.ledger_password_file
            .as_deref()
            .map(absolute)
            .transpose()?,
        args.ledger_ca_file.as_deref().map(absolute).transpose()?,
        args.ledger_allow_plaintext,
    )?;
    if let Some(existing) = PgLedger::load(&layout.ledger_config())?
        && existing != pg
    {
        return Err(CliError::new(
            Code::State,
            format!(
                "{} already names the ledger {}",
                layout.ledger_config().display(),
                existing.url
            ),
        )
        .with_help(
            "a home keeps the ledger it was created with: give another --home for another ledger",
        ));
    }
    let ledger = pg.open()?;
    let note = match (ledger.meta("root_serial")?, station) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(CliError::new(
                Code::State,
                format!("the ledger {} holds no CA yet", ledger.name().display()),
            )
            .with_help("a station joins the ledger of the root's home: run `init --issuing-ca --ledger URL` and `station add NAME` there first"));
        }
        (Some(_), Some(b)) => {
            b.check_against(&ledger)?;
            Some(format!(
                "joined the shared ledger {} as station `{}`",
                ledger.name().display(),
                manifests::text::escape(&b.station.name)
            ))
        }
        (Some(serial), None) => Some(join_existing(ctx, &ledger, &serial)?),
    };
    drop(ledger);
    ca::fsutil::private_dir(&layout.home)?;
    pg.save(&layout.ledger_config())?;
    Ok(note)
}

/// The database holds a CA made by another station: this home signs with the same key, which
/// must have been copied here.
fn join_existing(ctx: &Context, ledger: &ca::ledger::Ledger, serial: &str) -> Result<String> {
    let layout = &ctx.layout;
    let key = if ledger.meta("issuing_serial")?.is_some() {
        layout.issuing_key()
    } else {
        layout.root_key()
    };
    let name = ledger.meta("ca_name")?.unwrap_or_default();
    let name = manifests::text::escape(&name);
    if !key.exists() {
        let file = key
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        return Err(CliError::new(
            Code::State,
            format!(
                "the ledger {} already holds the CA `{name}` (root serial {serial}), and this home has not its key {}",
                ledger.name().display(),
                key.display()
            ),
        )
        .with_help(format!(
            "to join it as another bench station, get a station bundle from the root's home (the root key stays there):\n  provisioner station add NAME --out BUNDLE --station-passphrase-file FILE   (on the root's home)\n  provisioner init --station BUNDLE --ledger URL ...   (here, with that passphrase)\n(the same CA's own home restored from a backup holds {file} in {})",
            layout.ca_dir().display()
        )));
    }
    Ok(format!(
        "joined the shared ledger {} of CA `{name}`",
        ledger.name().display()
    ))
}
