//! `provisioner station add|list|revoke` on the root's home, and `init --station BUNDLE` on
//! a bench station's: each station signs with its own issuing CA against the shared ledger,
//! and the root key stays on the root's home (see `ca::station`).

use std::path::{Path, PathBuf};

use ca::station::{self, Bundle, HomeStation};
use manifests::text::escape;
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// `provisioner station ...`
#[derive(Debug, clap::Subcommand)]
pub enum StationCommand {
    /// On the root's home: certify an issuing CA for a bench station (path length 0, named
    /// after the station), record the station in the shared ledger and write its bundle.
    #[command(after_help = ADD_HELP)]
    Add(AddArgs),
    /// The stations of the ledger, with their issuing CA and state.
    List,
    /// On the root's home: revoke a station's issuing CA in the root's CRL; brokers then
    /// refuse every device it certified.
    #[command(after_help = REVOKE_HELP)]
    Revoke(RevokeArgs),
    /// On a new station's home: make its issuing CA key here (encrypted under this home's
    /// passphrase) and a CSR for `station add NAME --csr FILE` on the root's home.
    Request(RequestArgs),
}

/// Arguments of `station request`.
#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// The station's name.
    name: String,
    /// Where the CSR (PEM) goes.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

const ADD_HELP: &str = "Without --csr the station's key is made here and written to the bundle encrypted under\n\
the passphrase in --station-passphrase-file (0600), the one the station's home will use. With\n\
--csr the station made its key itself (`station request` on the station's home) and the bundle\n\
holds certificates only. Then, on the station: provisioner init --station BUNDLE --ledger URL ...";

const REVOKE_HELP: &str = "The station's CRL leaves the crl.pem brokers load and its certificate their ca.crt, so\n\
mosquitto refuses its devices once reloaded. Re-issue them from another station with\n\
`device provision --reissue`.";

/// Arguments of `station add`.
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The station's name: 1 to 32 of a-z, 0-9 and -.
    name: String,
    /// Where the bundle goes (created 0700). Default: ./station-NAME
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Certify the key of this CSR (made by `station request` on the station) instead of
    /// making one here.
    #[arg(long, value_name = "FILE", conflicts_with = "station_passphrase_file")]
    csr: Option<PathBuf>,
    /// The passphrase that encrypts the station key made here (a 0600 file; the station's
    /// home opens its key with it).
    #[arg(long, value_name = "FILE")]
    station_passphrase_file: Option<PathBuf>,
}

/// Arguments of `station revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The station.
    name: String,
    /// Revocation reason (RFC 5280 name).
    #[arg(long, default_value = "cessation-of-operation")]
    reason: String,
}

/// Runs `station ...`.
pub fn run(ctx: &Context, cmd: StationCommand) -> Result<()> {
    match cmd {
        StationCommand::Add(a) => add(ctx, a),
        StationCommand::List => list(ctx),
        StationCommand::Revoke(a) => revoke(ctx, a),
        StationCommand::Request(a) => request(ctx, a),
    }
}

/// The station's public key: from its CSR, or a key made here and written (encrypted) to
/// the bundle before anything is certified (a re-run after a crash reuses it).
fn station_key(args: &AddArgs, out: &Path) -> Result<ca::PublicKey> {
    if let Some(csr) = &args.csr {
        let bytes = safe_fs::read_limited(csr, ca::request::MAX_CSR_LEN as u64)
            .map_err(|e| crate::exit::io(csr, e))?;
        return Ok(ca::parse_csr(&bytes)?.public_key);
    }
    let file = args.station_passphrase_file.as_deref().ok_or_else(|| {
        CliError::new(
            Code::Usage,
            "the station key made here needs --station-passphrase-file FILE (0600), or give --csr FILE",
        )
    })?;
    let pass = crate::context::passphrase_from_file(file)?;
    pass.check_strength()?;
    ca::fsutil::private_dir(out)?;
    let path = out.join("issuing.key");
    let key = if path.exists() {
        ca::keys::read_encrypted(&path, &pass)?
    } else {
        let key = ca::keys::generate()?;
        let pem = ca::keys::encrypt_pem(&key, &pass)?;
        if !ca::fsutil::write_new(&path, pem.as_bytes(), 0o600)? {
            ca::keys::read_encrypted(&path, &pass)?
        } else {
            key
        }
    };
    Ok(ca::PublicKey::from_sec1(key.public_key_raw())?)
}

fn add(ctx: &Context, args: AddArgs) -> Result<()> {
    station::check_name(&args.name)?;
    let store = ctx.store()?;
    station::require_root_home(&ctx.layout, "add a station")?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("station-{}", args.name)));
    let root = station::Root::open(&store, &ctx.ca_secret()?)?;
    let key = station_key(&args, &out)?;
    let added = station::add(&store, &root, &args.name, &key)?;
    let home_station = HomeStation {
        name: added.station.name.clone(),
        serial: added.station.serial.clone(),
    };
    Bundle::write(&out, &home_station, &added.cert_der, &store.root_der()?)?;
    let brokers = super::brokers::refresh(ctx);
    let cn = ca::certdef::common_name(&added.cert_der, false)?;
    let human = format!(
        "{} station `{}`: issuing CA `{}` (serial {})\n  bundle: {}{}\n  on the station: provisioner init --station {} --ledger URL [--ledger-password-file FILE]{}\n  brokers emitted by other stations get its CA with their next `provisioner crl` there (then reload them){}",
        if added.created {
            "added"
        } else {
            "already added:"
        },
        escape(&args.name),
        escape(&cn),
        added.station.serial,
        out.display(),
        if args.csr.is_none() {
            " (issuing.key is encrypted under the station passphrase: carry it to the station, then delete it here)"
        } else {
            ""
        },
        out.display(),
        if args.csr.is_some() {
            ""
        } else {
            " (with the station passphrase)"
        },
        brokers.human(),
    );
    ctx.print(
        &json!({ "station": added.station, "created": added.created, "bundle": out, "issuing_ca": cn, "brokers": brokers.json() }),
        &human,
    );
    Ok(())
}

fn list(ctx: &Context) -> Result<()> {
    let store = ctx.store()?;
    let all = station::list(&store)?;
    let here = station::of_home(&ctx.layout)?;
    let mut rows = Vec::new();
    let mut human = String::new();
    for s in &all {
        let cn = store
            .ledger
            .by_serial(&s.serial)?
            .and_then(|c| ca::certdef::common_name(&c.der, false).ok())
            .unwrap_or_default();
        let this = here.as_ref().is_some_and(|h| h.name == s.name);
        human.push_str(&format!(
            "{:<12} {:<8} {}  {}{}\n",
            escape(&s.name),
            if s.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            },
            s.serial,
            escape(&cn),
            if this { "  (this home)" } else { "" }
        ));
        rows.push(json!({ "name": s.name, "serial": s.serial, "issuing_ca": cn, "active": s.revoked_at.is_none(), "added_at": s.added_at, "revoked_at": s.revoked_at, "this_home": this }));
    }
    if all.is_empty() {
        human.push_str("no stations: `provisioner station add NAME` on the root's home adds one\n");
    }
    ctx.print(&json!(rows), human.trim_end());
    Ok(())
}

fn revoke(ctx: &Context, args: RevokeArgs) -> Result<()> {
    station::check_name(&args.name)?;
    let store = ctx.store()?;
    station::require_root_home(&ctx.layout, "revoke a station")?;
    let root = station::Root::open(&store, &ctx.ca_secret()?)?;
    let r = station::revoke(&store, &root, &args.name, &args.reason)?;
    let brokers = super::brokers::refresh(ctx);
    let human = format!(
        "station `{}` {} (issuing CA serial {}); root CRL number {}{}{}\n  every other station: run `provisioner crl` there (rewrites the crl.pem and ca.crt of the brokers it emitted), then reload those brokers\n  its devices are refused from now on: re-issue them from another station with `provisioner device provision --port PORT --id ID --profile PROFILE --reissue`",
        escape(&args.name),
        if r.newly {
            "revoked"
        } else {
            "was already revoked"
        },
        r.station.serial,
        r.crl.number,
        crate::cmd::skipped_targets(&r.crl.skipped),
        brokers.human(),
    );
    ctx.print(
        &json!({ "station": r.station, "newly": r.newly, "crl": r.crl, "brokers": brokers.json() }),
        &human,
    );
    Ok(())
}

/// `init --station BUNDLE`: reads and checks the bundle, opens the station key with the
/// passphrase. Nothing is written.
pub fn read_bundle(ctx: &Context, dir: &Path) -> Result<(Bundle, ca::Passphrase)> {
    let bundle = Bundle::read(dir)?;
    let pass = ctx.passphrase(false)?;
    Ok((bundle, pass))
}

/// `station request`: the key stays in this home (`ca/issuing.key`); only the CSR leaves.
fn request(ctx: &Context, args: RequestArgs) -> Result<()> {
    station::check_name(&args.name)?;
    if ca::pgledger::Location::configured(&ctx.layout) {
        return Err(CliError::new(
            Code::State,
            format!(
                "{} is already initialised: `station request` prepares a new station's home",
                ctx.layout.home.display()
            ),
        ));
    }
    let pass = ctx.passphrase(true)?;
    ca::fsutil::private_dir(&ctx.layout.home)?;
    ca::fsutil::private_dir(&ctx.layout.ca_dir())?;
    let path = ctx.layout.issuing_key();
    let key = if path.exists() {
        ca::keys::read_encrypted(&path, &pass)?
    } else {
        let key = ca::keys::generate()?;
        ca::fsutil::write_new(&path, ca::keys::encrypt_pem(&key, &pass)?.as_bytes(), 0o600)?;
        ca::keys::read_encrypted(&path, &pass)?
    };
    let csr = station::request_pem(&args.name, &key)?;
    ca::fsutil::write_atomic(&args.out, csr.as_bytes(), 0o644)?;
    ctx.print(
        &json!({ "station": args.name, "csr": args.out, "key": path }),
        &format!(
            "station key made in {} (encrypted under this home's passphrase)\n  CSR: {}\n  on the root's home: provisioner station add {} --csr {} --out BUNDLE\n  then here: provisioner init --station BUNDLE --ledger URL ...",
            path.display(),
            args.out.display(),
            escape(&args.name),
            args.out.display()
        ),
    );
    Ok(())
}
