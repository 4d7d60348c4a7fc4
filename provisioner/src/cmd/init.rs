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
    /// Also create an issuing CA under the root; leaves are then signed by it. Implied by a
    /// site with a compressed profile (the issuing CA is then compressible too).
    #[arg(long)]
    issuing_ca: bool,
    /// Make this home a bench station from the bundle `station add` wrote on the root's
    /// home: it signs with the station's own issuing CA against the shared --ledger (the
    /// passphrase is the station's, the one its key was encrypted with).
    #[arg(
        long,
        value_name = "BUNDLE",
        requires = "ledger",
        conflicts_with = "issuing_ca"
    )]
    station: Option<PathBuf>,
    #[command(flatten)]
    ledger: crate::cmd::shared_ledger::LedgerArgs,
    /// Where the CA key is made and kept: `file` (encrypted under the passphrase, in the
    /// home) or `pkcs11` (generated inside a PKCS#11 token and never extractable; the token's
    /// user PIN is then asked for instead of the passphrase, from --passphrase-file,
    /// PROVISIONER_PKCS11_PIN, PROVISIONER_PASSPHRASE or a prompt). With --issuing-ca both CA
    /// keys go into the token.
    #[arg(long, value_enum, default_value_t = KeyStoreKind::File)]
    key_store: KeyStoreKind,
    /// The token's PKCS#11 module (absolute path), e.g. /usr/lib/softhsm/libsofthsm2.so.
    #[arg(long, value_name = "PATH", required_if_eq("key_store", "pkcs11"))]
    pkcs11_module: Option<PathBuf>,
    /// Label of the token that holds the CA key.
    #[arg(long, value_name = "LABEL", required_if_eq("key_store", "pkcs11"))]
    pkcs11_token: Option<String>,
    /// Label of the CA key object in the token (the issuing key gets LABEL-issuing).
    #[arg(long, value_name = "LABEL", default_value = "provisioner-ca")]
    pkcs11_key_label: String,
}

/// Where `init` makes the CA key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyStoreKind {
    /// An encrypted PKCS#8 file in the home.
    File,
    /// A PKCS#11 token.
    Pkcs11,
}

impl Args {
    /// The token the CA key goes into, if any.
    fn token(&self) -> Result<Option<ca::pkcs11::TokenSpec>> {
        if self.key_store == KeyStoreKind::File {
            if self.pkcs11_module.is_some() || self.pkcs11_token.is_some() {
                return Err(CliError::new(
                    Code::Usage,
                    "--pkcs11-module and --pkcs11-token need --key-store pkcs11",
                ));
            }
            return Ok(None);
        }
        let (Some(module), Some(token)) = (self.pkcs11_module.clone(), self.pkcs11_token.clone())
        else {
            return Err(CliError::new(
                Code::Usage,
                "--key-store pkcs11 needs --pkcs11-module PATH and --pkcs11-token LABEL",
            ));
        };
        Ok(Some(ca::pkcs11::TokenSpec {
            module,
            token,
            key_label: self.pkcs11_key_label.clone(),
        }))
    }
}

/// The secret that opens (or will protect) the CA key: the token's PIN when the key is, or
/// is to be, in a token; else the passphrase (asked twice for a new one).
fn init_secret(ctx: &Context, token: Option<&ca::pkcs11::TokenSpec>) -> Result<ca::Passphrase> {
    if let Some(t) = token {
        return ctx.pin(&t.token);
    }
    match ca::keystore::KeyStore::load(&ctx.layout)?.token_label() {
        Some(label) => ctx.pin(label),
        None => ctx.passphrase(true),
    }
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
    let (joined, pass, report, name) = match &args.station {
        Some(dir) => join_station(ctx, &args, &site, dir)?,
        None => create_or_check(ctx, &args, &site)?,
    };
    ca::fsutil::write_atomic(&site_path, text.as_bytes(), 0o600)?;
    let mut authority = Authority::open(&ctx.layout, &pass)?;
    authority
        .store
        .ledger
        .set_meta("crl_days", &site.site.crl_days.to_string())?;
    let crl = authority.crl(false)?;
    let key_store = match ca::keystore::KeyStore::load(&ctx.layout)? {
        ca::keystore::KeyStore::Token(c) => Some(c),
        ca::keystore::KeyStore::File => None,
    };
    let key_line = key_store.as_ref().map_or_else(String::new, |c| {
        format!(
            "\n  CA key            in token `{}` (serial {}), object `{}`",
            manifests::text::escape(&c.token_label),
            manifests::text::escape(&c.token_serial),
            manifests::text::escape(&c.signing_key().label)
        )
    });
    let ledger = authority.store.ledger.name().display().to_string();
    let human = format!(
        "{}{} CA `{}` in {}\n  ledger            {ledger}\n  root serial       {}\n  root fingerprint  SHA256 {}\n  valid until       {}{key_line}\n  CRL number        {} (next update {})\n  next: {}",
        joined.map(|j| format!("{j}\n")).unwrap_or_default(),
        if report.created {
            "created"
        } else {
            "already initialised:"
        },
        name,
        ctx.layout.home.display(),
        report.root_serial,
        report.root_fingerprint,
        report.root_not_after,
        crl.number,
        crl.next_update,
        server_issue_hint(&site),
    );
    ctx.print(
        &json!({ "home": ctx.layout.home, "ledger": ledger, "ca": report, "station": ca::station::of_home(&ctx.layout)?, "crl": crl, "root_certificate": ctx.layout.root_cert(), "key_store": key_store }),
        &human,
    );
    Ok(())
}

/// What the CA part of `init` did: the note on the shared ledger, the secret that opens the
/// CA key, the report and the CA's name.
type Done = (
    Option<String>,
    ca::Passphrase,
    ca::authority::InitReport,
    String,
);

/// `init` of the root's home (or of a single bench): creates the CA, or checks the one there.
fn create_or_check(ctx: &Context, args: &Args, site: &Site) -> Result<Done> {
    let joined = crate::cmd::shared_ledger::choose(ctx, &args.ledger, None)?;
    let token = args.token()?;
    let pass = init_secret(ctx, token.as_ref())?;
    let opts = InitOptions {
        name: format!("{} Root CA", site.site.name),
        organization: site.site.organization.clone(),
        // A compressible device profile needs a compressible issuing CA (its signer).
        issuing_ca: args.issuing_ca || manifests::site_compressed::any(site),
        compressed_signer: manifests::site_compressed::any(site)
            .then(|| manifests::site_compressed::parse_signer_id(site.site.signer_id.as_deref()))
            .flatten(),
    };
    let report = Authority::init_with_key_store(&ctx.layout, &opts, &pass, token.as_ref())?;
    Ok((joined, pass, report, opts.name))
}

/// `init --station BUNDLE`: a bench station's home on the shared ledger, signing with the
/// station's issuing CA; no root key here. Checked (bundle, key, ledger) before anything is
/// written.
fn join_station(ctx: &Context, args: &Args, site: &Site, dir: &std::path::Path) -> Result<Done> {
    if args.key_store != KeyStoreKind::File || manifests::site_compressed::any(site) {
        return Err(CliError::new(
            Code::Usage,
            "--station takes the station key from its bundle (a file key); a site with compressed profiles needs the root home's issuing CA",
        ));
    }
    let (bundle, pass) = crate::cmd::station::read_bundle(ctx, dir)?;
    let joined = crate::cmd::shared_ledger::choose(ctx, &args.ledger, Some(&bundle))?;
    let created = ca::station::of_home(&ctx.layout)?.is_none();
    bundle.install(&ctx.layout, &pass)?;
    let store = ca::Store::open(&ctx.layout)?;
    let report = ca::authority::report(&store, created)?;
    let name = ca::certdef::common_name(&bundle.issuing_der, false)?;
    Ok((joined, pass, report, name))
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
