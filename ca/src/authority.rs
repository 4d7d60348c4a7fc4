//! The certificate authority: creation, loading, idempotent issuance, revocation and CRLs.
//!
//! Crash safety rests on one rule: the ledger commit is the only point where an operation
//! takes effect. Keys are written (atomically) before it and reused if a run was cut short;
//! certificate and CRL files are materialised after it and rewritten from the ledger by the
//! next run. So a run killed at any instant, followed by the same command, ends in exactly
//! one certificate per request, no duplicate serial and no orphan file.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, RevocationReason, RevokedCertParams,
    SerialNumber,
};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

use crate::error::{Error, Result};
use crate::fault;
use crate::fsutil;
use crate::keys::Passphrase;
use crate::keystore::{self, CaKey};
use crate::ledger::{CertRecord, CrlRecord, IdentityRecord, Ledger};
use crate::pgledger::Location;
use crate::pkcs11::TokenSpec;
use crate::profile::{self, Lifetime, LifetimePolicy, Profile, Subject};
use crate::request::PublicKey;

/// Root CA lifetime.
pub const ROOT_DAYS: u32 = 3650;
/// Issuing CA lifetime.
pub const ISSUING_DAYS: u32 = 1825;
/// Backdating of notBefore, for devices whose clock is a little behind.
const BACKDATE: Duration = Duration::minutes(5);

/// Where everything lives under a provisioner home.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The home directory (0700).
    pub home: PathBuf,
}

impl Layout {
    /// A layout rooted at `home`.
    pub fn new(home: impl Into<PathBuf>) -> Self {
        Layout { home: home.into() }
    }
    /// `ca/`: CA certificates and encrypted keys.
    pub fn ca_dir(&self) -> PathBuf {
        self.home.join("ca")
    }
    /// The root certificate (PEM).
    pub fn root_cert(&self) -> PathBuf {
        self.ca_dir().join("root.crt")
    }
    /// The root key (encrypted PKCS#8).
    pub fn root_key(&self) -> PathBuf {
        self.ca_dir().join("root.key")
    }
    /// The issuing CA certificate (PEM), when there is one.
    pub fn issuing_cert(&self) -> PathBuf {
        self.ca_dir().join("issuing.crt")
    }
    /// The issuing CA key (encrypted PKCS#8).
    pub fn issuing_key(&self) -> PathBuf {
        self.ca_dir().join("issuing.key")
    }
    /// Where the CA keys live when they are in a PKCS#11 token (absent: key files).
    pub fn key_store(&self) -> PathBuf {
        self.ca_dir().join("key-store.json")
    }
    /// Trust bundle: every CA certificate, issuing first.
    pub fn ca_bundle(&self) -> PathBuf {
        self.ca_dir().join("ca-bundle.crt")
    }
    /// The SQLite ledger.
    pub fn ledger(&self) -> PathBuf {
        self.home.join("ledger.sqlite")
    }
    /// Where a home whose ledger is on PostgreSQL says so (see [`crate::pgledger`]).
    pub fn ledger_config(&self) -> PathBuf {
        self.home.join(crate::pgledger::CONFIG_FILE)
    }
    /// Host-generated leaf keys (0600).
    pub fn keys_dir(&self) -> PathBuf {
        self.home.join("keys")
    }
    /// The current CRL (PEM).
    pub fn crl(&self) -> PathBuf {
        self.home.join("crl.pem")
    }
    /// The site file.
    pub fn site(&self) -> PathBuf {
        self.home.join("site.toml")
    }
}

/// Settings for `init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// CA common name, e.g. "maison Root CA".
    pub name: String,
    /// Organisation.
    pub organization: Option<String>,
    /// Also create an issuing CA under the root, and issue leaves from it.
    pub issuing_ca: bool,
    /// Make the issuing CA compressible (Microchip compressed certificates) with this signer
    /// id, which ends its name (see [`crate::certdef::signer_params`]).
    pub compressed_signer: Option<[u8; 2]>,
}

/// What `init` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitReport {
    /// False if the CA already existed (nothing was changed).
    pub created: bool,
    /// Root serial (hex).
    pub root_serial: String,
    /// SHA-256 fingerprint of the root certificate (hex, colon-separated).
    pub root_fingerprint: String,
    /// Issuing CA serial, if any.
    pub issuing_serial: Option<String>,
    /// Root expiry (RFC 3339).
    pub root_not_after: String,
}

/// A request for a certificate.
#[derive(Debug, Clone)]
pub struct IssueRequest {
    /// Profile.
    pub profile: Profile,
    /// Subject and SANs.
    pub subject: Subject,
    /// The key to certify.
    pub public_key: PublicKey,
    /// Idempotence key: the same request twice yields the same certificate.
    pub request_id: String,
    /// Validity in days (clamped to the issuing CA's lifetime), unless the authority's
    /// [`LifetimePolicy`] sets one for this kind of identity.
    pub days: u32,
    /// Identity to create or update in the same transaction.
    pub identity: Option<IdentityRecord>,
}

/// An issued (or previously issued) certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The ledger record.
    pub record: CertRecord,
    /// PEM text.
    pub pem: String,
    /// True if this request had been issued before and nothing new was signed.
    pub existing: bool,
    /// The certificate this one renews: the same request had been issued before, but that
    /// certificate was expired or past its renewal point (it is now superseded).
    pub renewed: Option<CertRecord>,
}

impl Issued {
    /// "renewed: the previous certificate SERIAL expired on DATE" (or "expires"), if this
    /// issuance renewed one.
    pub fn renewal_note(&self) -> Option<String> {
        let old = self.renewed.as_ref()?;
        let verb = if old.not_after <= self.record.issued_at {
            "expired"
        } else {
            "expires"
        };
        Some(format!(
            "renewed: the previous certificate {} {verb} on {}",
            old.serial,
            rfc3339(old.not_after)
        ))
    }
}

/// Outcome of a CRL run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CrlReport {
    /// CRL number.
    pub number: i64,
    /// thisUpdate (RFC 3339).
    pub this_update: String,
    /// nextUpdate (RFC 3339).
    pub next_update: String,
    /// Entries.
    pub revoked: i64,
    /// True if a new CRL was signed by this run.
    pub renewed: bool,
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Broker directories from the ledger that were not written, and why (a path read back
    /// from the ledger is checked before anything is written there).
    pub skipped: Vec<SkippedTarget>,
}

/// A CRL target from the ledger that was refused.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SkippedTarget {
    /// The target as the ledger holds it.
    pub path: PathBuf,
    /// Why nothing was written there.
    pub reason: String,
}

/// Checks a CRL target read back from the ledger before writing there: an absolute
/// `.../crl.pem` in a real directory (not a link) that holds a broker configuration
/// (`mosquitto.conf`) and that is ours alone. `Ok(false)`: the directory is gone (skipped
/// quietly, never recreated).
pub fn check_crl_target(t: &Path) -> std::result::Result<bool, String> {
    if !t.is_absolute() || t.file_name() != Some(std::ffi::OsStr::new("crl.pem")) {
        return Err("not an absolute path to a crl.pem".into());
    }
    let dir = t.parent().ok_or("no directory")?;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.to_string()),
    };
    if !meta.is_dir() {
        return Err(format!(
            "{} is {}, not a directory",
            dir.display(),
            safe_fs::kind_name(meta.file_type())
        ));
    }
    safe_fs::check_owned_dir(dir).map_err(|e| e.to_string())?;
    if !std::fs::symlink_metadata(dir.join("mosquitto.conf")).is_ok_and(|m| m.is_file()) {
        return Err(format!(
            "{} holds no mosquitto.conf: not a broker directory written by `emit broker`",
            dir.display()
        ));
    }
    Ok(true)
}

/// The marker file `emit broker` writes in every broker directory it registers: the home
/// that owns the directory (its id and its canonical path). Checked before every write there,
/// so a copy of the home (same ledger, same id, another path) never writes into the
/// original's directories, and a directory registered by one home is refused by another.
pub const HOME_MARKER: &str = ".provisioner-home";

/// Which home this is: a random id made once (ledger meta `home_id`) and the home's
/// canonical path. A copy (`cp -a`) has the same id but another path.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HomeBinding {
    /// Random id, hex, created the first time a broker directory is registered.
    pub home_id: String,
    /// Canonical path of the home.
    pub home: PathBuf,
}

impl HomeBinding {
    /// The marker file's text.
    pub fn marker_text(&self) -> String {
        format!(
            "{}\n",
            serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
        )
    }

    /// Checks the marker of `dir` (a directory already checked to be ours): `Ok(true)` if it
    /// names this home, `Ok(false)` if there is none, `Err` naming the other home otherwise.
    pub fn check_marker(&self, dir: &Path) -> std::result::Result<bool, String> {
        let path = dir.join(HOME_MARKER);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(format!("{}: {e}", path.display())),
            Ok(_) => {}
        }
        let text = safe_fs::read_limited_string(&path, 4096)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let other: HomeBinding = serde_json::from_str(text.trim())
            .map_err(|e| format!("{} is damaged ({e})", path.display()))?;
        if other.home_id != self.home_id {
            return Err(format!(
                "{} belongs to another CA home ({}, id {})",
                dir.display(),
                other.home.display(),
                other.home_id
            ));
        }
        if other.home != self.home {
            return Err(format!(
                "{} was registered by the home at {}; this home ({}) is a copy or was moved, and never writes there",
                dir.display(),
                other.home.display(),
                self.home.display()
            ));
        }
        Ok(true)
    }
}

/// A broker directory registered by `emit broker`, with the options it was written with: a
/// re-run without flags and every refresh after a ledger change use them.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct BrokerDir {
    /// The directory (canonical) on this machine.
    pub dir: PathBuf,
    /// Listener port (None: the site's broker port at the time of writing).
    pub port: Option<u16>,
    /// Listener address (None: all interfaces).
    pub bind: Option<String>,
    /// `user` directive.
    pub run_as: Option<String>,
    /// Where the files live on the broker machine (None: `dir` itself).
    pub prefix: Option<PathBuf>,
    /// Ledger id of the broker certificate.
    pub server: String,
    /// Passphrase file the CRL units name.
    pub crl_passphrase_file: PathBuf,
    /// Where the CRL units go (None: `dir`-bench).
    pub units_out: Option<PathBuf>,
}

/// Checks a registered broker directory before writing there: a real directory of ours
/// holding a `mosquitto.conf` and a marker naming this home. `Ok(false)`: it is gone.
pub fn check_broker_dir(dir: &Path, home: &HomeBinding) -> std::result::Result<bool, String> {
    if !check_crl_target(&dir.join("crl.pem"))? {
        return Ok(false);
    }
    if !home.check_marker(dir)? {
        return Err(format!(
            "{} has no {HOME_MARKER}: not registered by this home (re-run `emit broker --out {}` to register it)",
            dir.display(),
            dir.display()
        ));
    }
    Ok(true)
}

/// Computes a request identity from its parts.
pub fn request_id(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    hex::encode(h.finalize())
}

use crate::clock::now;

fn rfc3339(t: i64) -> String {
    OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// SHA-256 fingerprint, colon-separated upper-case hex (as `openssl x509 -fingerprint -sha256`).
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// PEM-encodes a certificate.
pub fn cert_pem(der: &[u8]) -> String {
    pkcs8::der::pem::encode_string("CERTIFICATE", pkcs8::der::pem::LineEnding::LF, der)
        .unwrap_or_default()
}

/// A random positive serial: 16 bytes, top bit clear and second bit set (so it is always
/// 16 bytes long and positive: 126 random bits).
fn random_serial() -> Result<[u8; 16]> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
    s[0] = (s[0] & 0x7f) | 0x40;
    Ok(s)
}

fn validity(der: &[u8]) -> Result<(i64, i64)> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| Error::Generate("cannot parse a certificate just made".into()))?;
    Ok((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// The ledger and files of a home, without the CA key (enough to list, show and emit).
pub struct Store {
    /// The layout.
    pub layout: Layout,
    /// The ledger.
    pub ledger: Ledger,
}

impl Store {
    /// Opens an initialised home.
    pub fn open(layout: &Layout) -> Result<Store> {
        if !Location::configured(layout) {
            return Err(Error::CaUnavailable(format!(
                "no CA in {}: run `provisioner init` first (or set --home / PROVISIONER_HOME)",
                layout.home.display()
            )));
        }
        let ledger = Location::of_home(layout)?.open()?;
        if ledger.meta("root_serial")?.is_none() {
            return Err(Error::CaUnavailable(format!(
                "the CA in {} was never completed: run `provisioner init` again",
                layout.home.display()
            )));
        }
        let store = Store {
            layout: layout.clone(),
            ledger,
        };
        store.materialise()?;
        Ok(store)
    }

    /// Rewrites from the ledger any file a cut-short run did not write, and removes temporaries.
    pub fn materialise(&self) -> Result<()> {
        for dir in [
            self.layout.ca_dir(),
            self.layout.keys_dir(),
            self.layout.home.clone(),
        ] {
            fsutil::remove_stale_temps(&dir)?;
        }
        let root = self.ca_cert_der("root_serial")?;
        write_if_differs(&self.layout.root_cert(), cert_pem(&root).as_bytes(), 0o644)?;
        let mut bundle = String::new();
        if let Some(serial) = self.issuing_serial()? {
            let issuing = self.cert_der(&serial)?;
            write_if_differs(
                &self.layout.issuing_cert(),
                cert_pem(&issuing).as_bytes(),
                0o644,
            )?;
            bundle.push_str(&cert_pem(&issuing));
        }
        bundle.push_str(&cert_pem(&root));
        write_if_differs(&self.layout.ca_bundle(), bundle.as_bytes(), 0o644)?;
        if let Some(crl) = self.crl_bundle()?
            && std::fs::read(self.layout.crl()).ok() != Some(crl.into_bytes())
        {
            // Under the ledger's write lock: a newer CRL committed meanwhile by another
            // command must not be overwritten by this older one.
            self.ledger.transaction(|tx| {
                if let Some(latest) = crate::station::crl_bundle(tx)? {
                    write_if_differs(&self.layout.crl(), latest.as_bytes(), 0o644)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    /// The `crl.pem` brokers load (see [`crate::station::crl_bundle`]).
    pub fn crl_bundle(&self) -> Result<Option<String>> {
        self.ledger.transaction(crate::station::crl_bundle)
    }

    /// The serial of the issuing CA that signs here: this station's (a station's home), or
    /// the root home's issuing CA, if any.
    pub fn issuing_serial(&self) -> Result<Option<String>> {
        match crate::station::of_home(&self.layout)? {
            Some(s) => Ok(Some(s.serial)),
            None => self.ledger.meta("issuing_serial"),
        }
    }

    /// The serial of the CA that signs leaves and CRLs here.
    pub fn signer_serial(&self) -> Result<String> {
        match self.issuing_serial()? {
            Some(s) => Ok(s),
            None => self
                .ledger
                .meta("root_serial")?
                .ok_or_else(|| Error::CaUnavailable("ledger has no root_serial".into())),
        }
    }

    /// The newest CRL signed by this home's signer.
    pub fn own_latest_crl(&self) -> Result<Option<CrlRecord>> {
        let signer = self.signer_serial()?;
        match self.ledger.meta(&crate::station::crl_meta(&signer))? {
            Some(n) => {
                let n = n.parse().map_err(|_| {
                    Error::Conflict(format!("ledger meta crl_of:{signer} is damaged"))
                })?;
                self.ledger.transaction(|tx| tx.crl_by_number(n))
            }
            // Before any station: one CA signs every CRL of this ledger.
            None if crate::station::of_home(&self.layout)?.is_none() => self.ledger.latest_crl(),
            None => Ok(None),
        }
    }

    fn ca_cert_der(&self, key: &str) -> Result<Vec<u8>> {
        let serial = self
            .ledger
            .meta(key)?
            .ok_or_else(|| Error::CaUnavailable(format!("ledger has no {key}")))?;
        self.cert_der(&serial)
    }

    fn cert_der(&self, serial: &str) -> Result<Vec<u8>> {
        let rec = self
            .ledger
            .by_serial(serial)?
            .ok_or_else(|| Error::CaUnavailable(format!("ledger lost CA certificate {serial}")))?;
        Ok(rec.der)
    }

    /// DER of the root certificate.
    pub fn root_der(&self) -> Result<Vec<u8>> {
        self.ca_cert_der("root_serial")
    }

    /// DER of the certificate that signs leaves (issuing CA if any, else the root).
    pub fn issuer_der(&self) -> Result<Vec<u8>> {
        if let Some(serial) = self.issuing_serial()? {
            self.cert_der(&serial)
        } else {
            self.root_der()
        }
    }

    /// PEM chain a leaf presents after its own certificate (the issuing CA, if any).
    pub fn chain_pem(&self) -> Result<String> {
        if let Some(serial) = self.issuing_serial()? {
            Ok(cert_pem(&self.cert_der(&serial)?))
        } else {
            Ok(String::new())
        }
    }

    /// This home's binding (id and canonical path); the id is made (and committed) the
    /// first time it is asked for.
    pub fn home_binding(&self) -> Result<HomeBinding> {
        let home = self.layout.home.canonicalize().map_err(|e| Error::Io {
            path: self.layout.home.clone(),
            source: e,
        })?;
        let id = match self.ledger.meta("home_id")? {
            Some(id) => id,
            None => {
                let mut b = [0u8; 16];
                getrandom::fill(&mut b).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
                let fresh = hex::encode(b);
                // Another command may have made one first: keep it.
                self.ledger.transaction(|tx| match tx.meta("home_id")? {
                    Some(id) => Ok(id),
                    None => {
                        tx.set_meta("home_id", &fresh)?;
                        Ok(fresh.clone())
                    }
                })?
            }
        };
        Ok(HomeBinding { home_id: id, home })
    }

    /// The broker directories registered by `emit broker`.
    pub fn brokers(&self) -> Result<Vec<BrokerDir>> {
        parse_brokers(self.ledger.meta("brokers")?)
    }

    /// Registers (or updates the options of) a broker directory.
    pub fn register_broker(&self, b: &BrokerDir) -> Result<()> {
        self.ledger.transaction(|tx| {
            let mut all = parse_brokers(tx.meta("brokers")?)?;
            match all.iter_mut().find(|x| x.dir == b.dir) {
                Some(x) => *x = b.clone(),
                None => all.push(b.clone()),
            }
            tx.set_meta("brokers", &encode_brokers(&all)?)
        })
    }

    /// Forgets a broker directory (and its CRL target): nothing is written there any more.
    /// Returns false if it was not registered.
    pub fn forget_broker(&self, dir: &Path) -> Result<bool> {
        self.ledger.transaction(|tx| {
            let mut all = parse_brokers(tx.meta("brokers")?)?;
            let before = all.len();
            all.retain(|x| x.dir != dir);
            let mut targets = tx
                .meta("crl_targets")?
                .and_then(|s| serde_json::from_str::<Vec<PathBuf>>(&s).ok())
                .unwrap_or_default();
            let crl = dir.join("crl.pem");
            let before_t = targets.len();
            targets.retain(|t| t != &crl);
            tx.set_meta("brokers", &encode_brokers(&all)?)?;
            tx.set_meta(
                "crl_targets",
                &serde_json::to_string(&targets).unwrap_or_else(|_| "[]".into()),
            )?;
            Ok(all.len() != before || targets.len() != before_t)
        })
    }

    /// Directories that receive a copy of every new CRL (broker configurations).
    pub fn crl_targets(&self) -> Result<Vec<PathBuf>> {
        Ok(self
            .ledger
            .meta("crl_targets")?
            .and_then(|s| serde_json::from_str::<Vec<PathBuf>>(&s).ok())
            .unwrap_or_default())
    }

    /// Adds a file that receives a copy of every new CRL.
    pub fn add_crl_target(&self, file: &Path) -> Result<()> {
        // Read and written in one transaction: two commands adding targets at once both land.
        self.ledger.transaction(|tx| {
            let mut t = tx
                .meta("crl_targets")?
                .and_then(|s| serde_json::from_str::<Vec<PathBuf>>(&s).ok())
                .unwrap_or_default();
            if !t.iter().any(|p| p == file) {
                t.push(file.to_path_buf());
                tx.set_meta(
                    "crl_targets",
                    &serde_json::to_string(&t).unwrap_or_else(|_| "[]".into()),
                )?;
            }
            Ok(())
        })
    }
}

fn parse_brokers(text: Option<String>) -> Result<Vec<BrokerDir>> {
    match text {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(&s).map_err(|e| {
            Error::Conflict(format!(
                "the ledger's broker registry (meta `brokers`) is damaged: {e}"
            ))
        }),
    }
}

fn encode_brokers(all: &[BrokerDir]) -> Result<String> {
    serde_json::to_string(all)
        .map_err(|e| Error::Generate(format!("encoding the broker registry: {e}")))
}

fn write_if_differs(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    // Bounded, regular files only: a FIFO planted in a broker directory must not hang us.
    if safe_fs::read_limited(path, 2 * data.len() as u64 + 4096)
        .ok()
        .as_deref()
        == Some(data)
    {
        return Ok(());
    }
    fsutil::write_atomic(path, data, mode)
}

/// PEM-encodes a CRL.
pub fn crl_pem(der: &[u8]) -> String {
    pkcs8::der::pem::encode_string("X509 CRL", pkcs8::der::pem::LineEnding::LF, der)
        .unwrap_or_default()
}

/// A store with the CA's signing key loaded.
pub struct Authority {
    /// Ledger and files.
    pub store: Store,
    sealer: crate::vault::VaultSealer,
    vault: Option<crate::vault::Vault>,
    issuer: Issuer<'static, CaKey>,
    issuer_not_after: OffsetDateTime,
    /// The signing CA's subject key identifier as its certificate states it (a compressible
    /// issuing CA's is atcacert's SHA-1 of the key, not rcgen's own): the CRL's authority
    /// key identifier must equal it, or OpenSSL finds no CRL for the CA's certificates.
    issuer_key_id: Option<Vec<u8>>,
    signer_serial: String,
    policy: LifetimePolicy,
    compressed: std::collections::BTreeMap<String, crate::certdef::DeviceForm>,
}

/// The subject key identifier a certificate states, if any.
pub(crate) fn subject_key_id(
    cert: &x509_parser::certificate::X509Certificate<'_>,
) -> Option<Vec<u8>> {
    cert.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

/// True if both certificates certify the same public key (false if either cannot be read).
fn same_key(a: &[u8], b: &[u8]) -> bool {
    matches!(
        (crate::certdef::public_key_of(a), crate::certdef::public_key_of(b)),
        (Ok(x), Ok(y)) if x == y
    )
}

/// The lifetime `policy` gives the certificate `req` asks for.
fn lifetime_of(policy: &LifetimePolicy, req: &IssueRequest) -> Lifetime {
    policy.lifetime(
        req.profile.name(),
        req.identity
            .as_ref()
            .map(|i| (i.kind.as_str(), i.profile.as_str())),
    )
}

/// True if `rec` must not be handed back for a re-run: it is unrevoked and past its renewal
/// point (or expired). A revoked certificate is returned as it is, never renewed: renewing
/// it would undo the revocation.
fn due(rec: &CertRecord, life: &Lifetime, now: i64) -> bool {
    rec.revoked_at.is_none() && now >= life.renewal.renew_at(rec.not_before, rec.not_after)
}

impl Authority {
    /// Creates the CA in a new home, or completes one a crash interrupted. Running it on a
    /// finished home changes nothing and reports the existing CA.
    pub fn init(
        layout: &Layout,
        opts: &InitOptions,
        passphrase: &Passphrase,
    ) -> Result<InitReport> {
        Authority::init_with_key_store(layout, opts, passphrase, None)
    }

    /// [`Authority::init`] with the CA keys generated in the PKCS#11 token `token` (then
    /// `passphrase` is its user PIN), or as encrypted files when `None`. A run that was cut
    /// short is completed with the key store it recorded.
    pub fn init_with_key_store(
        layout: &Layout,
        opts: &InitOptions,
        passphrase: &Passphrase,
        token: Option<&TokenSpec>,
    ) -> Result<InitReport> {
        fsutil::private_dir(&layout.home)?;
        fsutil::private_dir(&layout.ca_dir())?;
        fsutil::private_dir(&layout.keys_dir())?;
        fsutil::remove_stale_temps(&layout.ca_dir())?;
        let ledger = Location::of_home(layout)?.open()?;
        if ledger.meta("root_serial")?.is_some() {
            drop(ledger);
            keystore::check_same_store(layout, token)?;
            let store = Store::open(layout)?;
            // Prove the passphrase opens the existing key before saying all is well.
            Authority::open(layout, passphrase)?;
            return report(&store, false);
        }
        // A key left by an interrupted init is reused: the ledger commit has not happened yet,
        // so nothing was ever certified with another key.
        let keys = keystore::init_keys(layout, token, opts.issuing_ca, passphrase)?;
        let root_key = keys.root;
        fault::point("init-after-key");
        let t = now() - BACKDATE;
        let subject = Subject::named(&opts.name, opts.organization.clone());
        let serial = random_serial()?;
        let path_len = if opts.issuing_ca { 1 } else { 0 };
        let root_params =
            profile::params(Profile::RootCa, &subject, &serial, t, ROOT_DAYS, path_len)?;
        let root_cert = root_params.self_signed(&root_key)?;
        let root_der = root_cert.der().to_vec();
        let mut records = vec![ca_record(&root_der, Profile::RootCa, &opts.name)?];
        if let Some(issuing_key) = &keys.issuing {
            let root_issuer = Issuer::new(root_params, &root_key);
            let name = opts.name.replace("Root", "Issuing");
            let name = if name == opts.name {
                format!("{} Issuing CA", opts.name)
            } else {
                name
            };
            let subj = Subject::named(&name, opts.organization.clone());
            let p = match opts.compressed_signer {
                Some(id) => crate::certdef::signer_params(
                    &format!("{name} {}", hex::encode_upper(id)),
                    opts.organization.clone(),
                    &PublicKey::from_sec1(issuing_key.public_key_raw())?,
                    crate::compressed::issue_hour(now())?,
                    (ISSUING_DAYS / 365) as u8,
                )?,
                None => profile::params(
                    Profile::IssuingCa,
                    &subj,
                    &random_serial()?,
                    t,
                    ISSUING_DAYS,
                    0,
                )?,
            };
            let cert = p.signed_by(issuing_key, &root_issuer)?;
            let name = crate::certdef::common_name(cert.der(), false)?;
            records.push(ca_record(cert.der(), Profile::IssuingCa, &name)?);
        }
        let created = ledger.transaction(|tx| {
            // Another `init` finished first: keep its CA (it certified the same key).
            if tx.meta("root_serial")?.is_some() {
                return Ok(false);
            }
            for r in &records {
                tx.insert_cert(r)?;
            }
            tx.set_meta("root_serial", &records[0].serial)?;
            if let Some(i) = records.get(1) {
                tx.set_meta("issuing_serial", &i.serial)?;
            }
            tx.set_meta("ca_name", &opts.name)?;
            Ok(true)
        })?;
        fault::point("init-after-ledger");
        drop(ledger);
        let store = Store::open(layout)?;
        report(&store, created)
    }

    /// Loads the CA: ledger, certificates and the signing key (decrypted with `passphrase`).
    pub fn open(layout: &Layout, passphrase: &Passphrase) -> Result<Authority> {
        let store = Store::open(layout)?;
        crate::station::check_in_service(&store)?;
        let issuing = store.issuing_serial()?.is_some();
        let signer_serial = store.signer_serial()?;
        let der = store.issuer_der()?;
        let (key, sealer) = keystore::signing_key(layout, issuing, passphrase)?;
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(&der).map_err(|_| {
                Error::CaUnavailable("the CA certificate in the ledger is damaged".into())
            })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::CaUnavailable(
                match keystore::KeyStore::load(layout)? {
                    keystore::KeyStore::Token(c) => format!(
                        "the key `{}` in token `{}` does not match the CA certificate in the ledger",
                        c.signing_key().label,
                        c.token_label
                    ),
                    keystore::KeyStore::File => format!(
                        "{} does not match the CA certificate in the ledger",
                        if issuing {
                            layout.issuing_key()
                        } else {
                            layout.root_key()
                        }
                        .display()
                    ),
                },
            ));
        }
        let not_after = cert.validity().not_after.to_datetime();
        if not_after <= now() {
            return Err(Error::CaUnavailable(format!(
                "the CA certificate expired on {}: create a new CA in a new home and re-provision",
                rfc3339(not_after.unix_timestamp())
            )));
        }
        let issuer_key_id = subject_key_id(&cert);
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)?;
        Ok(Authority {
            store,
            sealer,
            vault: None,
            issuer,
            issuer_not_after: not_after,
            issuer_key_id,
            signer_serial,
            policy: LifetimePolicy::default(),
            compressed: Default::default(),
        })
    }

    /// The public key of the CA that signs here (the issuing CA if there is one, else the
    /// root): SEC1 uncompressed. It also signs the CRL, so a broker's machine that pins it
    /// trusts nothing the CRL's signer could not already decide.
    pub fn signer_public_key(&self) -> Vec<u8> {
        self.issuer.key().public_key_raw().to_vec()
    }

    /// Signs `message` (ECDSA P-256 with SHA-256, DER) with the CA key: the signed update
    /// bundles for brokers on other machines. The caller adds its own domain separation.
    pub fn sign_message(&self, message: &[u8]) -> Result<Vec<u8>> {
        rcgen::SigningKey::sign(self.issuer.key(), message).map_err(Error::from)
    }

    /// Sets the lifetimes and renewal points by kind of identity (from the site file).
    pub fn set_policy(&mut self, policy: LifetimePolicy) {
        self.policy = policy;
    }

    /// Issues the device certificates of site profile `profile` in compressible form.
    pub fn set_compressed(&mut self, profile: &str, form: crate::certdef::DeviceForm) {
        self.compressed.insert(profile.to_string(), form);
    }

    /// The lifetimes and renewal points in force.
    pub fn policy(&self) -> &LifetimePolicy {
        &self.policy
    }

    /// Issues one certificate (idempotent by `request_id`).
    pub fn issue(&mut self, req: IssueRequest) -> Result<Issued> {
        let mut out = self.issue_batch(vec![req])?;
        out.pop()
            .ok_or_else(|| Error::Generate("empty batch".into()))
    }

    /// Issues many certificates in one ledger transaction (one fsync for the batch).
    ///
    /// Safe against other commands issuing at the same time: the look-up of each request and
    /// the insertion of its certificate happen under the ledger's write lock, so two
    /// identical requests racing each other end in one certificate, which the second one
    /// returns as `existing`.
    pub fn issue_batch(&mut self, reqs: Vec<IssueRequest>) -> Result<Vec<Issued>> {
        let t = now();
        let ts = t.unix_timestamp();
        // Fast path, without the write lock: everything was issued before and none of it is
        // due for renewal.
        let mut known = Vec::with_capacity(reqs.len());
        for req in &reqs {
            match self.store.ledger.by_request(&req.request_id)? {
                Some(rec) if !due(&rec, &lifetime_of(&self.policy, req), ts) => known.push(rec),
                _ => break,
            }
        }
        if known.len() == reqs.len() {
            return known
                .into_iter()
                .map(|r| self.finish(r, true, None))
                .collect();
        }
        let issuer = &self.issuer;
        let issuer_not_after = self.issuer_not_after;
        let policy = &self.policy;
        let compressed = &self.compressed;
        let records = self.store.ledger.transaction(|tx| {
            let mut out = Vec::with_capacity(reqs.len());
            for req in &reqs {
                let life = lifetime_of(policy, req);
                // Seen under the lock, including earlier requests of this same batch. A
                // certificate past its renewal point counts as missing (DESIGN.md 10).
                let previous = match tx.by_request(&req.request_id)? {
                    Some(rec) if !due(&rec, &life, ts) => {
                        out.push((rec, true, None));
                        continue;
                    }
                    other => other,
                };
                let serial = loop {
                    let s = random_serial()?;
                    if !tx.serial_exists(&hex::encode(s))? {
                        break s;
                    }
                };
                let validity = life
                    .seconds
                    .and_then(|s| i64::try_from(s).ok())
                    .map_or(Duration::days(i64::from(req.days)), Duration::seconds);
                let record = match compressed_form(compressed, req) {
                    Some(form) => {
                        let p = crate::certdef::device_request_params(req, form, t)?;
                        if p.not_after > issuer_not_after {
                            return Err(Error::BadRequest(format!(
                                "a compressible certificate of {} years would outlive the issuing CA (until {}); it cannot be shortened",
                                form.years,
                                rfc3339(issuer_not_after.unix_timestamp())
                            )));
                        }
                        let rec = record(req, p, t, issuer)?;
                        if tx.serial_exists(&rec.serial)? {
                            return Err(Error::Conflict(format!(
                                "serial {} (from the key and the hour) is already in the ledger: issue again next hour",
                                rec.serial
                            )));
                        }
                        rec
                    }
                    None => sign(req, &serial, validity, t, issuer, issuer_not_after)?,
                };
                // The identity has one active certificate: the one just signed. The one it
                // renews and any other live one are superseded (still valid until they
                // expire: a board keeps its old certificate until it has the new one).
                if let Some(old) = &previous {
                    tx.supersede(old, &record.serial, "renewed", ts)?;
                }
                for other in tx.live_of(&record.identity)? {
                    // The same key certified again (a chip's key renewed in the field, or
                    // at the bench under another request) is a renewal; another key, a
                    // replacement.
                    let why = if same_key(&other.der, &record.der) {
                        "renewed"
                    } else {
                        "replaced"
                    };
                    tx.supersede(&other, &record.serial, why, ts)?;
                }
                tx.insert_cert(&record)?;
                if let Some(i) = &req.identity {
                    tx.upsert_identity(i, ts)?;
                }
                out.push((record, false, previous));
            }
            // Signed, not committed: a crash here leaves nothing behind.
            fault::point("issue-after-sign");
            Ok(out)
        })?;
        fault::point("issue-after-ledger");
        records
            .into_iter()
            .map(|(rec, existing, renewed)| self.finish(rec, existing, renewed))
            .collect()
    }

    fn finish(
        &self,
        record: CertRecord,
        existing: bool,
        renewed: Option<CertRecord>,
    ) -> Result<Issued> {
        // Certificates live in the ledger; files are written only where someone asks for
        // one (a file per certificate costs an inode allocation, the bulk of issuance time).
        let pem = cert_pem(&record.der);
        Ok(Issued {
            record,
            pem,
            existing,
            renewed,
        })
    }

    fn vault(&mut self) -> Result<&crate::vault::Vault> {
        if self.vault.is_none() {
            let path = self.store.layout.ca_dir().join("vault.key");
            self.vault = Some(crate::vault::Vault::open_or_create_with(
                &path,
                &self.sealer,
            )?);
        }
        self.vault
            .as_ref()
            .ok_or_else(|| Error::Generate("vault".into()))
    }

    /// Opens the vault now (one key derivation) so later secret operations are fast.
    pub fn open_vault(&mut self) -> Result<()> {
        self.vault().map(|_| ())
    }

    /// A secret kept in the ledger (encrypted at rest), if it exists.
    pub fn secret(&mut self, name: &str) -> Result<Option<zeroize::Zeroizing<Vec<u8>>>> {
        let Some(sealed) = self.store.ledger.sealed_secret(name)? else {
            return Ok(None);
        };
        Ok(Some(self.vault()?.open(name, &sealed)?))
    }

    /// The secret `name`, created with `len` random bytes (and committed) if it does not exist.
    pub fn secret_or_create(
        &mut self,
        name: &str,
        len: usize,
    ) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        if let Some(s) = self.secret(name)? {
            return Ok(s);
        }
        let secret = crate::vault::random_secret(len)?;
        self.put_secret(name, &secret)?;
        Ok(secret)
    }

    /// Stores (or replaces) a secret, encrypted at rest.
    pub fn put_secret(&mut self, name: &str, secret: &[u8]) -> Result<()> {
        let sealed = self.vault()?.seal(name, secret)?;
        let t = now().unix_timestamp();
        self.store
            .ledger
            .transaction(|tx| tx.put_secret(name, &sealed, t))
    }

    /// Records an identity without issuing (e.g. to change its ACL).
    pub fn upsert_identity(&mut self, ident: &IdentityRecord) -> Result<()> {
        let t = now().unix_timestamp();
        self.store
            .ledger
            .transaction(|tx| tx.upsert_identity(ident, t))
    }

    /// Revokes every certificate of `identity` and publishes a new CRL.
    pub fn revoke_identity(
        &mut self,
        identity: &str,
        reason: &str,
    ) -> Result<(Vec<String>, CrlReport)> {
        reason_code(reason)?;
        if self.store.ledger.identity(identity)?.is_none()
            && self.store.ledger.certificates_of(identity)?.is_empty()
        {
            return Err(Error::Conflict(format!(
                "no device or client `{identity}` in the ledger: see `provisioner device list`"
            )));
        }
        let t = now().unix_timestamp();
        let serials = self
            .store
            .ledger
            .transaction(|tx| tx.revoke_identity(identity, reason, t))?;
        let crl = self.crl(true)?;
        Ok((serials, crl))
    }

    /// Revokes one certificate by serial and publishes a new CRL.
    pub fn revoke_serial(&mut self, serial: &str, reason: &str) -> Result<CrlReport> {
        reason_code(reason)?;
        let t = now().unix_timestamp();
        let done = self
            .store
            .ledger
            .transaction(|tx| tx.revoke_serial(serial, reason, t))?;
        if !done {
            return Err(Error::Conflict(format!(
                "no unrevoked certificate with serial {serial}"
            )));
        }
        self.crl(true)
    }

    /// Signs a new CRL if `force`, if none exists, if a revocation is newer than the current
    /// one, or if a third or less of its lifetime is left; otherwise re-materialises it.
    pub fn crl(&mut self, force: bool) -> Result<CrlReport> {
        let ts = now().unix_timestamp();
        let latest = self.store.own_latest_crl()?;
        let newest_revocation = self
            .store
            .ledger
            .certificates()?
            .iter()
            .filter_map(|c| c.revoked_at)
            .max();
        let due = match &latest {
            None => true,
            Some(c) => {
                force
                    || ts >= c.next_update - (c.next_update - c.this_update) / 3
                    || newest_revocation.is_some_and(|r| r >= c.this_update)
            }
        };
        if !due {
            let c = latest.ok_or_else(|| Error::Generate("no CRL".into()))?;
            let (written, skipped) = self.store.write_crl()?;
            return Ok(CrlReport {
                number: c.number,
                this_update: rfc3339(c.this_update),
                next_update: rfc3339(c.next_update),
                revoked: c.revoked,
                renewed: false,
                written,
                skipped,
            });
        }
        sign_crl(
            &self.store,
            &self.issuer,
            self.issuer_not_after,
            &self.signer_serial,
            self.issuer_key_id.as_deref(),
        )
    }
}

fn crl_days(store: &Store) -> Result<i64> {
    Ok(store
        .ledger
        .meta("crl_days")?
        .and_then(|d| d.parse::<i64>().ok())
        .unwrap_or(30))
}

/// Signs a new CRL with `issuer` (the CA `signer_serial`, whose certificate states the
/// subject key id `key_id`: the CRL's authority key id, so OpenSSL finds the CRL), records it
/// as that CA's newest, and publishes the fleet's CRLs to the home and its brokers.
pub(crate) fn sign_crl(
    store: &Store,
    issuer: &Issuer<'static, CaKey>,
    issuer_not_after: OffsetDateTime,
    signer_serial: &str,
    key_id: Option<&[u8]>,
) -> Result<CrlReport> {
    let days = crl_days(store)?;
    let rec = store.ledger.transaction(|tx| {
        // Read the time under the lock: a CRL with a higher number never has an earlier
        // thisUpdate, even when this command waited for another one.
        let t = now();
        let ts = t.unix_timestamp();
        let next = (t + Duration::days(days)).min(issuer_not_after);
        let number = tx.next_crl_number()?;
        let revoked = tx.revoked_unexpired(ts)?;
        let mut entries = Vec::new();
        for c in &revoked {
            let when = OffsetDateTime::from_unix_timestamp(c.revoked_at.unwrap_or(ts)).unwrap_or(t);
            let serial = hex::decode(&c.serial)
                .map_err(|_| Error::Generate(format!("bad serial {}", c.serial)))?;
            entries.push(RevokedCertParams {
                serial_number: SerialNumber::from_slice(&serial),
                revocation_time: when,
                reason_code: c.reason.as_deref().map(reason_code).transpose()?,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update: t,
            next_update: next,
            crl_number: SerialNumber::from(number as u64),
            issuing_distribution_point: None,
            revoked_certs: entries,
            key_identifier_method: match key_id {
                Some(id) => KeyIdMethod::PreSpecified(id.to_vec()),
                None => KeyIdMethod::Sha256,
            },
        };
        let crl = params.signed_by(issuer)?;
        let rec = CrlRecord {
            number,
            this_update: ts,
            next_update: next.unix_timestamp(),
            revoked: revoked.len() as i64,
            der: crl.der().to_vec(),
        };
        tx.insert_crl(&rec)?;
        tx.set_meta(
            &crate::station::crl_meta(signer_serial),
            &number.to_string(),
        )?;
        Ok(rec)
    })?;
    fault::point("crl-after-ledger");
    let (written, skipped) = store.write_crl()?;
    Ok(CrlReport {
        number: rec.number,
        this_update: rfc3339(rec.this_update),
        next_update: rfc3339(rec.next_update),
        revoked: rec.revoked,
        renewed: true,
        written,
        skipped,
    })
}

impl Store {
    /// Writes the fleet's CRLs as of the ledger ([`crate::station::crl_bundle`]) to the home
    /// and to every broker directory.
    ///
    /// Done under the ledger's write lock, reading the newest CRLs there: two commands that
    /// each signed a CRL cannot leave the older one in place, whatever order they finish in.
    pub fn write_crl(&self) -> Result<(Vec<PathBuf>, Vec<SkippedTarget>)> {
        let home_crl = self.layout.crl();
        self.ledger.transaction(|tx| {
            let pem = crate::station::crl_bundle(tx)?
                .ok_or_else(|| Error::Generate("no CRL in the ledger".into()))?;
            let mut targets = tx
                .meta("crl_targets")?
                .and_then(|s| serde_json::from_str::<Vec<PathBuf>>(&s).ok())
                .unwrap_or_default();
            for b in parse_brokers(tx.meta("brokers")?)? {
                let t = b.dir.join("crl.pem");
                if !targets.contains(&t) {
                    targets.push(t);
                }
            }
            // Only directories whose marker names this home (id and path): a copy of the
            // home never writes its CRL into the original's broker directories.
            let binding = tx.meta("home_id")?.map(|id| HomeBinding {
                home_id: id,
                home: self
                    .layout
                    .home
                    .canonicalize()
                    .unwrap_or_else(|_| self.layout.home.clone()),
            });
            let mut written = vec![home_crl.clone()];
            let mut skipped = Vec::new();
            write_if_differs(&home_crl, pem.as_bytes(), 0o644)?;
            for t in &targets {
                let checked =
                    check_crl_target(t).and_then(|present| match (&binding, t.parent()) {
                        (_, _) if !present => Ok(false),
                        (Some(b), Some(dir)) => check_broker_dir(dir, b),
                        _ => Err(format!(
                            "no {HOME_MARKER} of this home there: re-run `emit broker --out` for it"
                        )),
                    });
                match checked {
                    Ok(true) => {
                        write_if_differs(t, pem.as_bytes(), 0o644)?;
                        written.push(t.clone());
                    }
                    // A broker directory that was removed is skipped, not recreated.
                    Ok(false) => {}
                    Err(reason) => {
                        tracing::warn!(target = %t.display(), %reason, "CRL target skipped");
                        skipped.push(SkippedTarget {
                            path: t.clone(),
                            reason,
                        });
                    }
                }
            }
            Ok((written, skipped))
        })
    }
}

/// How far before its issue a certificate valid for `validity` starts, for clocks that lag:
/// [`BACKDATE`], or a tenth of a shorter lifetime's (a certificate of 3 minutes starts 18 s
/// early), so a short-lived certificate is not expired or due the moment it is issued.
fn backdate(validity: Duration) -> Duration {
    BACKDATE.min(validity / 10)
}

/// Signs the certificate `req` asks for, valid for `validity` (counted from its notBefore,
/// [`backdate`] before `t`; clamped to the issuer's notAfter), with `serial`, issued at `t`.
fn sign(
    req: &IssueRequest,
    serial: &[u8; 16],
    validity: Duration,
    t: OffsetDateTime,
    issuer: &Issuer<'static, CaKey>,
    issuer_not_after: OffsetDateTime,
) -> Result<CertRecord> {
    let not_before = t - backdate(validity);
    let longest = Duration::days((issuer_not_after - not_before).whole_days().max(1));
    let params = profile::params_valid_for(
        req.profile,
        &req.subject,
        serial,
        not_before,
        validity.min(longest),
        0,
    )?;
    record(req, params, t, issuer)
}

/// The compressible form for `req`, if it is a device of a compressible profile.
fn compressed_form<'a>(
    forms: &'a std::collections::BTreeMap<String, crate::certdef::DeviceForm>,
    req: &IssueRequest,
) -> Option<&'a crate::certdef::DeviceForm> {
    let i = req.identity.as_ref()?;
    (req.profile == Profile::Device && i.kind == "device")
        .then(|| forms.get(&i.profile))
        .flatten()
}

/// Signs `params` for `req` and makes its ledger record.
fn record(
    req: &IssueRequest,
    params: rcgen::CertificateParams,
    t: OffsetDateTime,
    issuer: &Issuer<'static, CaKey>,
) -> Result<CertRecord> {
    let serial = params
        .serial_number
        .as_ref()
        .map(|s| s.to_bytes())
        .unwrap_or_default();
    let (nb, na) = (
        params.not_before.unix_timestamp(),
        params.not_after.unix_timestamp(),
    );
    let cert = params.signed_by(&req.public_key, issuer)?;
    Ok(CertRecord {
        serial: hex::encode(&serial),
        request_id: req.request_id.clone(),
        identity: req
            .identity
            .as_ref()
            .map_or_else(|| req.subject.common_name.clone(), |i| i.id.clone()),
        profile: req.profile.name().into(),
        not_before: nb,
        not_after: na,
        der: cert.der().to_vec(),
        issued_at: t.unix_timestamp(),
        revoked_at: None,
        reason: None,
    })
}

fn reason_code(reason: &str) -> Result<RevocationReason> {
    Ok(match reason {
        "unspecified" => RevocationReason::Unspecified,
        "key-compromise" => RevocationReason::KeyCompromise,
        "ca-compromise" => RevocationReason::CaCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        other => {
            return Err(Error::BadRequest(format!(
                "unknown revocation reason `{other}`: use unspecified, key-compromise, ca-compromise, affiliation-changed, superseded or cessation-of-operation"
            )));
        }
    })
}

pub(crate) fn ca_record(der: &[u8], profile: Profile, name: &str) -> Result<CertRecord> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| Error::Generate("cannot parse the new CA certificate".into()))?;
    let serial = hex::encode(c.raw_serial());
    Ok(CertRecord {
        request_id: format!("{}:{serial}", profile.name()),
        serial,
        identity: name.to_string(),
        profile: profile.name().into(),
        not_before: c.validity().not_before.timestamp(),
        not_after: c.validity().not_after.timestamp(),
        der: der.to_vec(),
        issued_at: now().unix_timestamp(),
        revoked_at: None,
        reason: None,
    })
}

/// What `init` reports of the CA of `store`.
pub fn report(store: &Store, created: bool) -> Result<InitReport> {
    let root_serial = store.ledger.meta("root_serial")?.unwrap_or_default();
    let root = store.root_der()?;
    let (_, na) = validity(&root)?;
    Ok(InitReport {
        created,
        root_fingerprint: fingerprint(&root),
        root_serial,
        issuing_serial: store.ledger.meta("issuing_serial")?,
        root_not_after: rfc3339(na),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_lifetime_is_backdated_by_a_tenth_of_it_and_a_long_one_by_five_minutes() {
        assert_eq!(backdate(Duration::minutes(3)), Duration::seconds(18));
        assert_eq!(backdate(Duration::seconds(90)), Duration::seconds(9));
        assert_eq!(backdate(Duration::hours(1)), Duration::minutes(5));
        assert_eq!(backdate(Duration::days(825)), BACKDATE);
    }

    fn key() -> PublicKey {
        use p256::elliptic_curve::Generate;
        let sk = p256::ecdsa::SigningKey::generate();
        PublicKey::from_sec1(sk.verifying_key().to_sec1_point(false).as_bytes()).expect("key")
    }

    fn request(tag: &[u8], key: &PublicKey) -> IssueRequest {
        IssueRequest {
            profile: Profile::Device,
            subject: Subject {
                common_name: "salon-1".into(),
                organization: None,
                dns: vec![],
                ips: vec![],
                serial_number: Some("0123456789abcdefee".into()),
            },
            public_key: key.clone(),
            request_id: request_id(&[tag, &key.0]),
            days: 825,
            identity: Some(crate::ledger::IdentityRecord {
                id: "salon-1".into(),
                kind: "device".into(),
                profile: "p".into(),
                acl_write: vec!["maison/salon/#".into()],
                acl_read: vec![],
                attrs: Default::default(),
                status: "active".into(),
            }),
        }
    }

    #[test]
    fn the_same_key_certified_again_is_a_renewal_and_another_key_a_replacement() {
        let dir = tempfile::tempdir().expect("dir");
        let layout = Layout::new(dir.path().join("home"));
        let pass = Passphrase::new("a test passphrase".into());
        let opts = InitOptions {
            name: "Test Root CA".into(),
            organization: None,
            issuing_ca: false,
            compressed_signer: None,
        };
        Authority::init(&layout, &opts, &pass).expect("init");
        let mut ca = Authority::open(&layout, &pass).expect("open");
        let chip = key();
        let first = ca.issue(request(b"bench", &chip)).expect("first").record;
        // Same key under another request (what the renewal service asks for).
        let second = ca.issue(request(b"field", &chip)).expect("second").record;
        let third = ca.issue(request(b"bench", &key())).expect("third").record;
        let why = |serial: &str| {
            let s = ca
                .store
                .ledger
                .supersession(serial)
                .expect("q")
                .expect("superseded");
            (s.by_serial, s.why)
        };
        assert_eq!(
            why(&first.serial),
            (second.serial.clone(), "renewed".into())
        );
        assert_eq!(why(&second.serial), (third.serial, "replaced".into()));
    }
}
