//! Bench stations: one issuing CA per station, certified by the root on the root's home and
//! recorded in the shared ledger (meta `stations`), so the root key never leaves that home
//! (or its token). A station's home holds its own issuing CA key only (`ca/issuing.key`) and
//! says which station it is in `ca/station.json`.
//!
//! Revocation is per issuer: every CA of the fleet signs its own CRL, the ledger remembers
//! the newest one of each (meta `crl_of:SERIAL`, the CRL numbers staying one strictly
//! increasing sequence), and the `crl.pem` a broker loads is the concatenation of the CRLs of
//! every CA still in service ([`crl_bundle`]). mosquitto checks the CRL of a client's issuer
//! only (`X509_V_FLAG_CRL_CHECK`): a device whose issuing CA has no CRL in the file is
//! refused, so revoking a station (its CA revoked in the root's CRL, its CRL dropped from the
//! bundle, its certificate dropped from the brokers' `cafile`) refuses every device it issued.

use std::path::PathBuf;

use rcgen::Issuer;
use serde::{Deserialize, Serialize};
use x509_parser::prelude::FromDer;

use crate::authority::{self, Layout, Store};
use crate::clock::now;
use crate::error::{Error, Result};
use crate::keys::Passphrase;
use crate::keystore::{self, CaKey};
use crate::ledger::Tx;
use crate::profile::{self, Profile, Subject};
use crate::request::PublicKey;

/// Ledger meta key of the station registry (JSON list of [`Station`]).
pub const STATIONS_META: &str = "stations";
/// Longest station name.
pub const MAX_NAME: usize = 32;
const MAX_STATION_FILE: u64 = 4096;

/// A bench station as the shared ledger records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Station {
    /// Its name (`station add NAME`).
    pub name: String,
    /// Serial of its issuing CA certificate (hex).
    pub serial: String,
    /// When it was added, Unix seconds.
    pub added_at: i64,
    /// When it was revoked, if it was.
    pub revoked_at: Option<i64>,
}

/// What `ca/station.json` of a station's home says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeStation {
    /// The station's name.
    pub name: String,
    /// Serial of its issuing CA certificate (hex).
    pub serial: String,
}

impl Layout {
    /// `ca/station.json`: present in a station's home only.
    pub fn station(&self) -> PathBuf {
        self.ca_dir().join("station.json")
    }
}

/// A station name: 1 to 32 of `a-z 0-9 -`, not starting with `-`.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::BadRequest(format!(
            "station name `{}`: use 1 to {MAX_NAME} of a-z, 0-9 and -, not starting with -",
            name.escape_debug()
        )))
    }
}

/// The station this home is, if it is one.
pub fn of_home(layout: &Layout) -> Result<Option<HomeStation>> {
    let path = layout.station();
    if std::fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let bad = |reason: String| Error::BadFile {
        path: path.clone(),
        reason,
    };
    let text =
        safe_fs::read_limited_string(&path, MAX_STATION_FILE).map_err(|e| bad(e.to_string()))?;
    let s: HomeStation =
        serde_json::from_str(&text).map_err(|e| bad(format!("not a station record: {e}")))?;
    check_name(&s.name)?;
    Ok(Some(s))
}

/// Writes `ca/station.json` (0600).
pub fn save_home(layout: &Layout, s: &HomeStation) -> Result<()> {
    let text = serde_json::to_string_pretty(s)
        .map_err(|e| Error::Generate(format!("encoding the station record: {e}")))?;
    crate::fsutil::write_atomic(&layout.station(), format!("{text}\n").as_bytes(), 0o600)
}

/// Refuses what only the root's home may do, on a station's home.
pub fn require_root_home(layout: &Layout, what: &str) -> Result<()> {
    match of_home(layout)? {
        None => Ok(()),
        Some(s) => Err(Error::Conflict(format!(
            "this home is bench station `{}`: it holds its own issuing CA, not the root, and cannot {what}; run it on the root's home",
            s.name
        ))),
    }
}

pub(crate) fn parse(text: Option<String>) -> Result<Vec<Station>> {
    match text {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(&s).map_err(|e| {
            Error::Conflict(format!(
                "the ledger's station registry (meta `{STATIONS_META}`) is damaged: {e}"
            ))
        }),
    }
}

fn encode(all: &[Station]) -> Result<String> {
    serde_json::to_string(all)
        .map_err(|e| Error::Generate(format!("encoding the station registry: {e}")))
}

/// Every station of the ledger, in the order they were added.
pub fn list(store: &Store) -> Result<Vec<Station>> {
    parse(store.ledger.meta(STATIONS_META)?)
}

/// Ledger meta key holding the number of the newest CRL signed by the CA `serial`.
pub fn crl_meta(serial: &str) -> String {
    format!("crl_of:{serial}")
}

/// The CAs whose CRLs brokers load: the root, the root home's issuing CA if any, and every
/// station not revoked.
fn issuers_in_service(tx: &Tx<'_>, stations: &[Station]) -> Result<Vec<String>> {
    let mut serials: Vec<String> = ["root_serial", "issuing_serial"]
        .into_iter()
        .map(|k| tx.meta(k))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    serials.extend(
        stations
            .iter()
            .filter(|s| s.revoked_at.is_none())
            .map(|s| s.serial.clone()),
    );
    Ok(serials)
}

/// The `crl.pem` brokers load, as of `tx`: the newest CRL when the fleet has no station
/// (one CA signs them all); otherwise the newest CRL of each CA in service, concatenated.
pub fn crl_bundle(tx: &Tx<'_>) -> Result<Option<String>> {
    let stations = parse(tx.meta(STATIONS_META)?)?;
    if stations.is_empty() {
        return Ok(tx.latest_crl()?.map(|c| authority::crl_pem(&c.der)));
    }
    let mut pem = String::new();
    for serial in issuers_in_service(tx, &stations)? {
        if let Some(n) = tx.meta(&crl_meta(&serial))?.and_then(|n| n.parse().ok())
            && let Some(c) = tx.crl_by_number(n)?
        {
            pem.push_str(&authority::crl_pem(&c.der));
        }
    }
    Ok((!pem.is_empty()).then_some(pem))
}

/// The `cafile` brokers load: the issuing CAs in service (the root home's and every station
/// not revoked), then the root. A device presents its certificate alone, so the broker needs
/// its issuer here; a revoked station's CA is left out.
pub fn broker_cafile(store: &Store) -> Result<String> {
    let l = &store.ledger;
    let mut pem = String::new();
    let mut serials: Vec<String> = l.meta("issuing_serial")?.into_iter().collect();
    serials.extend(
        list(store)?
            .into_iter()
            .filter(|s| s.revoked_at.is_none())
            .map(|s| s.serial),
    );
    if let Some(own) = of_home(&store.layout)?
        && !serials.contains(&own.serial)
    {
        serials.push(own.serial);
    }
    serials.extend(l.meta("root_serial")?);
    for s in serials {
        let c = l
            .by_serial(&s)?
            .ok_or_else(|| Error::CaUnavailable(format!("ledger lost CA certificate {s}")))?;
        pem.push_str(&authority::cert_pem(&c.der));
    }
    Ok(pem)
}

/// The root's key and certificate, loaded on the root's home for `station add|revoke`.
pub struct Root {
    issuer: Issuer<'static, CaKey>,
    not_after: time::OffsetDateTime,
    serial: String,
    key_id: Option<Vec<u8>>,
    subject: Subject,
    path_len_zero: bool,
}

impl Root {
    /// Opens the root key of this home (file or token) with `secret`.
    pub fn open(store: &Store, secret: &Passphrase) -> Result<Root> {
        require_root_home(&store.layout, "use the root key")?;
        let der = store.root_der()?;
        let key = keystore::root_key(&store.layout, secret)?;
        let (_, cert) =
            x509_parser::certificate::X509Certificate::from_der(&der).map_err(|_| {
                Error::CaUnavailable("the root certificate in the ledger is damaged".into())
            })?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::CaUnavailable(
                "the root key of this home does not match the root certificate in the ledger"
                    .into(),
            ));
        }
        let organization = cert
            .subject()
            .iter_organization()
            .next()
            .and_then(|o| o.as_str().ok())
            .map(String::from);
        let cn = crate::certdef::common_name(&der, false)?;
        let path_len_zero = matches!(
            cert.basic_constraints(),
            Ok(Some(bc)) if bc.value.path_len_constraint == Some(0)
        );
        let serial = hex::encode(cert.raw_serial());
        let not_after = cert.validity().not_after.to_datetime();
        let key_id = authority::subject_key_id(&cert);
        Ok(Root {
            issuer: Issuer::from_ca_cert_der(&der.into(), key)?,
            not_after,
            serial,
            key_id,
            subject: Subject::named(&cn, organization),
            path_len_zero,
        })
    }

    /// The name of station `name`'s issuing CA: the root's with `Root CA` replaced.
    fn station_subject(&self, name: &str) -> Subject {
        let base = self.subject.common_name.trim_end_matches(" Root CA");
        Subject::named(
            &format!("{base} Station {name} Issuing CA"),
            self.subject.organization.clone(),
        )
    }
}

/// What `station add` did.
#[derive(Debug, Clone)]
pub struct Added {
    /// The station record.
    pub station: Station,
    /// Its issuing CA certificate (DER).
    pub cert_der: Vec<u8>,
    /// False if the station existed already with this key (nothing was signed).
    pub created: bool,
}

/// Certifies `key` as the issuing CA of station `name` (path length 0) and records the
/// station; signs the root's CRL so brokers have one for it. Run again with the same key it
/// returns the existing station; another key under an existing name is refused.
pub fn add(store: &Store, root: &Root, name: &str, key: &PublicKey) -> Result<Added> {
    check_name(name)?;
    if root.path_len_zero {
        return Err(Error::Conflict(
            "this root was made with path length 0 (`init` without --issuing-ca) and cannot certify an issuing CA for a station: make the fleet's CA with `init --issuing-ca`".into(),
        ));
    }
    if let Some(found) = existing(store, name, key)? {
        return Ok(found);
    }
    let t = now() - time::Duration::minutes(5);
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
    serial[0] = (serial[0] & 0x7f) | 0x40;
    let subject = root.station_subject(name);
    let days = authority::ISSUING_DAYS.min(((root.not_after - t).whole_days()).max(1) as u32);
    let params = profile::params(Profile::IssuingCa, &subject, &serial, t, days, 0)?;
    let cert = params.signed_by(key, &root.issuer)?;
    let rec = authority::ca_record(cert.der(), Profile::IssuingCa, &subject.common_name)?;
    let station = Station {
        name: name.to_string(),
        serial: rec.serial.clone(),
        added_at: now().unix_timestamp(),
        revoked_at: None,
    };
    let created = store.ledger.transaction(|tx| {
        let mut all = parse(tx.meta(STATIONS_META)?)?;
        if all.iter().any(|s| s.name == name) {
            return Ok(false);
        }
        pin_legacy_crl(tx)?;
        tx.insert_cert(&rec)?;
        all.push(station.clone());
        tx.set_meta(STATIONS_META, &encode(&all)?)?;
        Ok(true)
    })?;
    if !created {
        // Another `station add NAME` committed first.
        return existing(store, name, key)?.ok_or_else(|| {
            Error::Conflict(format!(
                "station `{name}` was added meanwhile with another key"
            ))
        });
    }
    sign_root_crl(store, root)?;
    Ok(Added {
        station,
        cert_der: cert.der().to_vec(),
        created: true,
    })
}

/// The station `name` if it exists with `key`; an error if it exists with another key.
fn existing(store: &Store, name: &str, key: &PublicKey) -> Result<Option<Added>> {
    let Some(station) = list(store)?.into_iter().find(|s| s.name == name) else {
        return Ok(None);
    };
    let cert = store.ledger.by_serial(&station.serial)?.ok_or_else(|| {
        Error::CaUnavailable(format!("ledger lost CA certificate {}", station.serial))
    })?;
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&cert.der).map_err(|_| {
        Error::CaUnavailable("a station certificate in the ledger is damaged".into())
    })?;
    if c.public_key().subject_public_key.data.as_ref() != &key.0[..] {
        return Err(Error::Conflict(format!(
            "station `{name}` exists already (issuing CA serial {}) with another key: choose another name, or `station revoke {name}` first",
            station.serial
        )));
    }
    Ok(Some(Added {
        station,
        cert_der: cert.der,
        created: false,
    }))
}

/// Before the first station: the home's own CRLs were found as "the newest CRL"; from now on
/// each CA's newest is looked up by its own meta key.
fn pin_legacy_crl(tx: &Tx<'_>) -> Result<()> {
    let signer = match tx.meta("issuing_serial")? {
        Some(s) => s,
        None => tx
            .meta("root_serial")?
            .ok_or_else(|| Error::CaUnavailable("ledger has no root_serial".into()))?,
    };
    if tx.meta(&crl_meta(&signer))?.is_none()
        && let Some(c) = tx.latest_crl()?
    {
        tx.set_meta(&crl_meta(&signer), &c.number.to_string())?;
    }
    Ok(())
}

/// What `station revoke` did.
#[derive(Debug, Clone)]
pub struct Revoked {
    /// The station record (now revoked).
    pub station: Station,
    /// False if it was revoked before.
    pub newly: bool,
    /// The root CRL signed.
    pub crl: authority::CrlReport,
}

/// Revokes station `name`'s issuing CA (in the ledger and the root's CRL) and takes it out
/// of service: its CRL leaves the brokers' `crl.pem`, its certificate their `cafile`.
pub fn revoke(store: &Store, root: &Root, name: &str, reason: &str) -> Result<Revoked> {
    let t = now().unix_timestamp();
    let (station, newly) = store.ledger.transaction(|tx| {
        let mut all = parse(tx.meta(STATIONS_META)?)?;
        let s = all.iter_mut().find(|s| s.name == name).ok_or_else(|| {
            Error::Conflict(format!(
                "no station `{name}` in the ledger (see `station list`)"
            ))
        })?;
        if s.revoked_at.is_some() {
            return Ok((s.clone(), false));
        }
        tx.revoke_serial(&s.serial, reason, t)?;
        s.revoked_at = Some(t);
        let s = s.clone();
        tx.set_meta(STATIONS_META, &encode(&all)?)?;
        Ok((s, true))
    })?;
    let crl = sign_root_crl(store, root)?;
    Ok(Revoked {
        station,
        newly,
        crl,
    })
}

/// Signs a new CRL with the root key and publishes the fleet's CRLs to this home's brokers.
fn sign_root_crl(store: &Store, root: &Root) -> Result<authority::CrlReport> {
    authority::sign_crl(
        store,
        &root.issuer,
        root.not_after,
        &root.serial,
        root.key_id.as_deref(),
    )
}

/// The files `station add --out DIR` writes for the station's home: `station.json`,
/// `issuing.crt`, `root.crt` and, when the key was made on the root's home, `issuing.key`
/// (encrypted under the station's passphrase, 0600).
pub struct Bundle {
    /// The directory.
    pub dir: PathBuf,
    /// Which station.
    pub station: HomeStation,
    /// Its issuing CA certificate (DER).
    pub issuing_der: Vec<u8>,
    /// The root certificate (DER).
    pub root_der: Vec<u8>,
}

const MAX_CERT_FILE: u64 = 64 * 1024;

fn cert_der_of(path: &std::path::Path) -> Result<Vec<u8>> {
    let bad = |reason: String| Error::BadFile {
        path: path.to_path_buf(),
        reason,
    };
    let pem = safe_fs::read_limited(path, MAX_CERT_FILE).map_err(|e| bad(e.to_string()))?;
    let (label, der) =
        pkcs8::der::pem::decode_vec(&pem).map_err(|_| bad("not a PEM file".into()))?;
    if label != "CERTIFICATE" {
        return Err(bad(format!("expected a CERTIFICATE, found {label}")));
    }
    x509_parser::certificate::X509Certificate::from_der(&der)
        .map_err(|_| bad("not an X.509 certificate".into()))?;
    Ok(der)
}

impl Bundle {
    /// The key file of the bundle, when the root's home made the key.
    pub fn key(&self) -> PathBuf {
        self.dir.join("issuing.key")
    }

    /// Writes the bundle's certificates and record into `dir` (0700; the key is written by
    /// the caller, before the ledger commit).
    pub fn write(
        dir: &std::path::Path,
        station: &HomeStation,
        issuing_der: &[u8],
        root_der: &[u8],
    ) -> Result<()> {
        crate::fsutil::private_dir(dir)?;
        crate::fsutil::write_atomic(
            &dir.join("issuing.crt"),
            authority::cert_pem(issuing_der).as_bytes(),
            0o644,
        )?;
        crate::fsutil::write_atomic(
            &dir.join("root.crt"),
            authority::cert_pem(root_der).as_bytes(),
            0o644,
        )?;
        let text = serde_json::to_string_pretty(station)
            .map_err(|e| Error::Generate(format!("encoding the station record: {e}")))?;
        crate::fsutil::write_atomic(
            &dir.join("station.json"),
            format!("{text}\n").as_bytes(),
            0o644,
        )
    }

    /// Reads and checks a bundle: the record names the certificate in it, which the root in
    /// it signed.
    pub fn read(dir: &std::path::Path) -> Result<Bundle> {
        let path = dir.join("station.json");
        let bad = |p: &std::path::Path, reason: String| Error::BadFile {
            path: p.to_path_buf(),
            reason,
        };
        let text = safe_fs::read_limited_string(&path, MAX_STATION_FILE)
            .map_err(|e| bad(&path, e.to_string()))?;
        let station: HomeStation = serde_json::from_str(&text)
            .map_err(|e| bad(&path, format!("not a station record: {e}")))?;
        check_name(&station.name)?;
        let issuing_der = cert_der_of(&dir.join("issuing.crt"))?;
        let root_der = cert_der_of(&dir.join("root.crt"))?;
        let (_, issuing) = x509_parser::certificate::X509Certificate::from_der(&issuing_der)
            .map_err(|_| bad(&dir.join("issuing.crt"), "damaged".into()))?;
        let (_, root) = x509_parser::certificate::X509Certificate::from_der(&root_der)
            .map_err(|_| bad(&dir.join("root.crt"), "damaged".into()))?;
        if hex::encode(issuing.raw_serial()) != station.serial {
            return Err(bad(
                &path,
                format!(
                    "names serial {} but issuing.crt has another",
                    station.serial
                ),
            ));
        }
        if issuing.verify_signature(Some(root.public_key())).is_err() {
            return Err(bad(
                &dir.join("issuing.crt"),
                "not signed by the root in root.crt".into(),
            ));
        }
        Ok(Bundle {
            dir: dir.to_path_buf(),
            station,
            issuing_der,
            root_der,
        })
    }

    /// Checks the bundle against the shared ledger: same root, station recorded with this
    /// certificate and not revoked.
    pub fn check_against(&self, ledger: &crate::ledger::Ledger) -> Result<()> {
        let root_serial = ledger.meta("root_serial")?.unwrap_or_default();
        let root = ledger.by_serial(&root_serial)?;
        if root.map(|r| r.der) != Some(self.root_der.clone()) {
            return Err(Error::Conflict(format!(
                "the station bundle {} is of another CA than the ledger {} (root serial {root_serial})",
                self.dir.display(),
                ledger.name().display()
            )));
        }
        let all = parse(ledger.meta(STATIONS_META)?)?;
        match all.iter().find(|s| s.name == self.station.name) {
            Some(s) if s.serial == self.station.serial && s.revoked_at.is_none() => Ok(()),
            Some(s) if s.serial == self.station.serial => Err(Error::Conflict(format!(
                "station `{}` was revoked: ask the root's home for a new station (`station add` with another name)",
                s.name
            ))),
            _ => Err(Error::Conflict(format!(
                "the ledger {} records no station `{}` with issuing CA serial {}: run `station add {}` on the root's home",
                ledger.name().display(),
                self.station.name,
                self.station.serial,
                self.station.name
            ))),
        }
    }

    /// Installs the station into a new home: its key (from the bundle, or already in the
    /// home when the station made its own key and a CSR), checked against the certificate,
    /// then `ca/station.json`. The files under `ca/` are materialised from the ledger later.
    pub fn install(&self, layout: &Layout, passphrase: &Passphrase) -> Result<()> {
        crate::fsutil::private_dir(&layout.home)?;
        crate::fsutil::private_dir(&layout.ca_dir())?;
        crate::fsutil::private_dir(&layout.keys_dir())?;
        let home_key = layout.issuing_key();
        let source = if self.key().exists() {
            self.key()
        } else if home_key.exists() {
            home_key.clone()
        } else {
            return Err(Error::CaUnavailable(format!(
                "no station key: neither {} nor {} exists (a bundle made with --csr needs the key made with that CSR in this home)",
                self.key().display(),
                home_key.display()
            )));
        };
        let key = crate::keys::read_encrypted(&source, passphrase)?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&self.issuing_der)
            .map_err(|_| Error::Generate("station certificate damaged".into()))?;
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(Error::BadFile {
                path: source,
                reason: "this key is not the one the station's certificate certifies".into(),
            });
        }
        if source != home_key {
            crate::fsutil::check_private(&source)?;
            let pem = zeroize::Zeroizing::new(crate::fsutil::read_bounded(&source, 64 * 1024)?);
            if !crate::fsutil::write_new(&home_key, &pem, 0o600)? {
                let there = crate::keys::read_encrypted(&home_key, passphrase)?;
                if there.public_key_raw() != key.public_key_raw() {
                    return Err(Error::Conflict(format!(
                        "{} holds another key: this home belongs to another station",
                        home_key.display()
                    )));
                }
            }
        }
        save_home(layout, &self.station)
    }
}

/// Refuses to sign on the home of a station that was revoked.
pub fn check_in_service(store: &Store) -> Result<()> {
    let Some(here) = of_home(&store.layout)? else {
        return Ok(());
    };
    match list(store)?.into_iter().find(|s| s.name == here.name) {
        Some(s) if s.serial == here.serial && s.revoked_at.is_none() => Ok(()),
        Some(s) if s.serial == here.serial => Err(Error::CaUnavailable(format!(
            "station `{}` was revoked on the root's home: its issuing CA signs nothing more (brokers refuse what it signed); ask the root's home for a new station",
            s.name
        ))),
        _ => Err(Error::CaUnavailable(format!(
            "the ledger records no station `{}` with issuing CA serial {}",
            here.name, here.serial
        ))),
    }
}

/// Every CA certificate of the fleet (DER): the root, the root home's issuing CA and every
/// station's, revoked or not. A board certified by any of them is one of this fleet's.
pub fn fleet_ca_ders(store: &Store) -> Result<Vec<Vec<u8>>> {
    let mut serials: Vec<String> = ["root_serial", "issuing_serial"]
        .into_iter()
        .map(|k| store.ledger.meta(k))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    serials.extend(list(store)?.into_iter().map(|s| s.serial));
    let mut ders = Vec::new();
    for s in serials {
        if let Some(c) = store.ledger.by_serial(&s)? {
            ders.push(c.der);
        }
    }
    Ok(ders)
}

/// A CSR (PEM) for station `name`'s issuing CA key.
pub fn request_pem(name: &str, key: &rcgen::KeyPair) -> Result<String> {
    check_name(name)?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("station {name}"));
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.pem()?)
}
