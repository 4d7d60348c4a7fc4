//! `provisioner emit manifest`: Microchip's manifest of the site's devices, for cloud
//! registration of whole batches (AWS IoT multi-account registration, Thingpress).
//!
//! The format is Microchip's "Trust Platform Manifest File Format" (onlinedocs.microchip.com,
//! GUID-C2CECEBC-9CC3-4DF3-86E5-E3A1DA2E4997, sections 2.3 to 2.7) as Microchip's own tools
//! write it (`pytrustplatform/manifest/manifest.py` in microchip-pic-avr-tools/pytrustplatform,
//! and the TPDS manifest helper): a JSON array of SignedSecureElement objects, each a JWS in
//! the flattened JSON serialization (RFC 7515 7.2.2):
//!
//! * `protected`: BASE64URL of `{"typ": "JWT", "alg": "ES256", "kid": BASE64URL(signer SKID),
//!   "x5t#S256": BASE64URL(SHA-256 of the signer certificate's DER)}`. The user guide lists
//!   only `alg`, `kid` and `x5t#S256`; Microchip's tools add `typ: "JWT"` and so do we. (No
//!   `application/vnd.microchip...` media type appears in either source.)
//! * `payload`: BASE64URL of the SecureElement object: `version` 1, `model`, `partNumber`,
//!   `manufacturer` and `provisioner` (EntityName: `organizationName`,
//!   `organizationalUnitName`), `groupId`, `provisioningTimestamp` (RFC 3339, milliseconds,
//!   UTC), `uniqueId` (the 9-byte chip serial, lowercase hex) and `publicKeySet` (a JWK set:
//!   per key slot `kid` = the slot number, `kty` EC, `crv` P-256, `x`, `y` BASE64URL, and
//!   `x5c`: the device certificate then its issuer, standard base64 DER, RFC 7517 4.7).
//!   `distributor` is left out: the bench does not know who sells the boards.
//! * `header`: `{"uniqueId": ...}` (unprotected, for plain-text search).
//! * `signature`: ES256 over `protected.payload`, raw r||s (64 bytes), BASE64URL.
//!
//! BASE64URL is without padding everywhere (RFC 7515 2).
//!
//! Everything about a device comes from the ledger, as the bench recorded it: the chip
//! serial and public key (`chip_serial`, `public_key`, `key_slot`) and its active
//! certificate, which must certify that same key. The signer is a key of its own (0600 in
//! the home's keys/) that the CA certifies with the `manifest-signer` profile
//! (digitalSignature, no EKU): a manifest never needs the CA key itself, and the signer
//! certificate AWS asks for names a key that can sign nothing but manifests.

use std::path::{Path, PathBuf};

use ca::ledger::{CertRecord, IdentityRecord};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};
use firmware::sim::mos::b64;

/// The chip model the bench provisions.
const MODEL: &str = "ATECC508A";
/// Largest manifest written: far beyond any bench's batch, a bound on a hostile ledger.
const MAX_DEVICES: usize = 100_000;
/// File name (under keys/) of the manifest signer's key.
const SIGNER_KEY: &str = "manifest-signer.key";

/// Arguments of `emit manifest`.
#[derive(Debug, clap::Args)]
pub struct ManifestArgs {
    /// The manifest (JSON, written 0644: it is public). Beside it: FILE's name with
    /// `.signer.crt` (the manifest signer's certificate) and `.ca.crt` (the CA certificates).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// A device to include (repeatable). Default: every active device of the ledger.
    #[arg(long = "device", value_name = "ID")]
    pub devices: Vec<String>,
    /// The chips' complete part number (`partNumber`), as on the reel.
    #[arg(long, value_name = "PN", default_value = MODEL)]
    pub part_number: String,
}

/// A device as the ledger knows it, checked.
struct Device {
    id: String,
    serial: String,
    public: [u8; 64],
    slot: u8,
    cert: CertRecord,
}

/// The manifest signer: its certificate and key.
struct Signer {
    der: Vec<u8>,
    serial: String,
    key: rcgen::KeyPair,
    renewed: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EntityName {
    organization_name: String,
    organizational_unit_name: String,
}

#[derive(Serialize)]
struct PublicJwk {
    kid: String,
    kty: &'static str,
    crv: &'static str,
    x: String,
    y: String,
    x5c: Vec<String>,
}

#[derive(Serialize)]
struct KeySet {
    keys: Vec<PublicJwk>,
}

/// The SecureElement object (the payload), fields in the user guide's order.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SecureElement<'a> {
    version: u32,
    model: &'static str,
    part_number: &'a str,
    manufacturer: &'a EntityName,
    provisioner: &'a EntityName,
    group_id: &'a str,
    provisioning_timestamp: String,
    unique_id: &'a str,
    public_key_set: KeySet,
}

/// The SignedSecureElementProtectedHeader object.
#[derive(Serialize)]
struct ProtectedHeader {
    typ: &'static str,
    alg: &'static str,
    kid: String,
    #[serde(rename = "x5t#S256")]
    x5t_s256: String,
}

/// Unpadded BASE64URL (RFC 7515 section 2).
pub fn b64url(data: &[u8]) -> String {
    b64::encode(data)
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect()
}

/// Runs `emit manifest`.
pub fn run(ctx: &Context, args: ManifestArgs) -> Result<()> {
    let site = ctx.site()?;
    let store = ctx.store()?;
    // Everything is read and checked before anything is created or written.
    let devices = select(&store, &args.devices)?;
    let issuer_der = store.issuer_der()?;
    let root_der = store.root_der()?;
    let paths = Outputs::of(&args.out)?;
    let mut authority = ctx.authority()?;
    let signer = signer(ctx, &mut authority, &site)?;
    let group = group_id(&root_der);
    let provisioner = EntityName {
        organization_name: site
            .site
            .organization
            .clone()
            .unwrap_or_else(|| site.site.name.clone()),
        organizational_unit_name: site.site.name.clone(),
    };
    let maker = EntityName {
        organization_name: "Microchip Technology Inc".into(),
        organizational_unit_name: "Secure Products Group".into(),
    };
    let header = protected_header(&signer.der)?;
    let mut entries = Vec::with_capacity(devices.len());
    for d in &devices {
        let element = SecureElement {
            version: 1,
            model: MODEL,
            part_number: &args.part_number,
            manufacturer: &maker,
            provisioner: &provisioner,
            group_id: &group,
            provisioning_timestamp: timestamp(d.cert.issued_at)?,
            unique_id: &d.serial,
            public_key_set: key_set(d, &issuer_der),
        };
        entries.push(signed_element(&element, &header, &signer.key)?);
    }
    let text = serde_json::to_string_pretty(&entries)
        .map_err(|e| CliError::new(Code::Failure, format!("encoding the manifest: {e}")))?;
    let bundle = safe_fs::read_limited(&ctx.layout.ca_bundle(), 1 << 20)
        .map_err(|e| crate::exit::io(&ctx.layout.ca_bundle(), e))?;
    // The manifest last: what it refers to is in place first.
    write_public(
        &paths.signer,
        ca::authority::cert_pem(&signer.der).as_bytes(),
    )?;
    write_public(&paths.ca, &bundle)?;
    write_public(&args.out, format!("{text}\n").as_bytes())?;
    report(ctx, &args.out, &paths, &devices, &signer, &group);
    Ok(())
}

/// The files beside the manifest.
struct Outputs {
    signer: PathBuf,
    ca: PathBuf,
}

impl Outputs {
    fn of(out: &Path) -> Result<Outputs> {
        if out.file_name().is_none() || out.is_dir() {
            return Err(CliError::new(
                Code::Input,
                format!("--out {}: expected a file name", out.display()),
            ));
        }
        // FILE's last extension is replaced by a longer one: never FILE itself.
        Ok(Outputs {
            signer: out.with_extension("signer.crt"),
            ca: out.with_extension("ca.crt"),
        })
    }
}

/// The devices to include: `wanted` (each must be an active device), or every active one.
fn select(store: &ca::Store, wanted: &[String]) -> Result<Vec<Device>> {
    let active: Vec<IdentityRecord> = store
        .ledger
        .identities()?
        .into_iter()
        .filter(|i| i.kind == "device" && i.status == "active")
        .collect();
    let chosen: Vec<&IdentityRecord> = if wanted.is_empty() {
        active.iter().collect()
    } else {
        let mut out = Vec::new();
        for id in wanted {
            let found = active.iter().find(|i| &i.id == id).ok_or_else(|| {
                CliError::new(
                    Code::Input,
                    format!(
                        "no active device `{}` in the ledger; nothing written",
                        manifests::text::escape(id)
                    ),
                )
                .with_help("`provisioner device list` shows the devices")
            })?;
            if !out.iter().any(|i: &&IdentityRecord| i.id == found.id) {
                out.push(found);
            }
        }
        out
    };
    if chosen.is_empty() {
        return Err(CliError::new(
            Code::State,
            "the ledger has no active device: nothing to put in a manifest",
        )
        .with_help("provision boards with `provisioner device provision` first"));
    }
    if chosen.len() > MAX_DEVICES {
        return Err(CliError::new(
            Code::Input,
            format!("more than {MAX_DEVICES} devices: give --device for a part of them"),
        ));
    }
    chosen.into_iter().map(|i| device(store, i)).collect()
}

/// One device from its ledger record, refused if what the bench recorded is missing or
/// does not agree with its certificate.
fn device(store: &ca::Store, i: &IdentityRecord) -> Result<Device> {
    let id = manifests::text::escape(&i.id);
    let bad = |what: &str| {
        CliError::new(
            Code::State,
            format!("device `{id}`: {what} in the ledger; nothing written"),
        )
        .with_help(format!(
            "provision it again (`device provision --id {id} ...`) or leave it out with --device"
        ))
    };
    let text = |k: &str| i.attrs.get(k).and_then(|v| v.as_str());
    let serial = text("chip_serial")
        .filter(|s| {
            s.len() == 18
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
        .ok_or_else(|| bad("no chip serial (9 bytes, lowercase hex)"))?
        .to_string();
    let public: [u8; 64] = text("public_key")
        .and_then(|h| hex::decode(h).ok())
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad("no public key (64 bytes, hex)"))?;
    let slot = i
        .attrs
        .get("key_slot")
        .and_then(|v| v.as_u64())
        .filter(|s| *s < 16)
        .ok_or_else(|| bad("no key slot (0 to 15)"))? as u8;
    let cert = store
        .ledger
        .active_of(&i.id)?
        .filter(|c| c.revoked_at.is_none())
        .ok_or_else(|| bad("no active certificate"))?;
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(&cert.der)
        .map_err(|_| bad("an unreadable certificate"))?;
    let spki = x509.public_key().subject_public_key.data.as_ref();
    if spki.len() != 65 || spki[0] != 4 || spki[1..] != public {
        return Err(bad(
            "a certificate for another key than the recorded public key",
        ));
    }
    Ok(Device {
        id: i.id.clone(),
        serial,
        public,
        slot,
        cert,
    })
}

/// The manifest signer's key (made once, 0600) and its certificate from the CA (reused
/// until due for renewal, like every certificate of the ledger).
fn signer(
    ctx: &Context,
    authority: &mut ca::Authority,
    site: &manifests::site::Site,
) -> Result<Signer> {
    let key_path = ctx.layout.keys_dir().join(SIGNER_KEY);
    let key = super::emit::host_key(&key_path)?;
    let public_key = ca::PublicKey::from_sec1(key.public_key_raw())?;
    let request_id = ca::authority::request_id(&[b"manifest-signer", &public_key.0]);
    let issued = authority.issue(ca::IssueRequest {
        profile: ca::Profile::ManifestSigner,
        subject: ca::Subject::named(
            &format!("{} Manifest Signer", site.site.name),
            site.site.organization.clone(),
        ),
        public_key,
        request_id,
        days: site.site.leaf_days,
        identity: None,
    })?;
    super::emit::refuse_revoked(&issued, "the manifest signer", &key_path)?;
    Ok(Signer {
        renewed: issued.renewal_note(),
        serial: issued.record.serial.clone(),
        der: issued.record.der,
        key,
    })
}

/// The protected header naming the signer by its SKID and certificate thumbprint.
fn protected_header(signer_der: &[u8]) -> Result<ProtectedHeader> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(signer_der)
        .map_err(|e| CliError::new(Code::Failure, format!("the signer certificate: {e}")))?;
    let skid = c
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0),
            _ => None,
        })
        .ok_or_else(|| {
            CliError::new(
                Code::Failure,
                "the signer certificate has no Subject Key Identifier",
            )
        })?;
    Ok(ProtectedHeader {
        typ: "JWT",
        alg: "ES256",
        kid: b64url(skid),
        x5t_s256: b64url(&Sha256::digest(signer_der)),
    })
}

/// The device's JWK: its key slot, its key, its certificate and the issuer's.
fn key_set(d: &Device, issuer_der: &[u8]) -> KeySet {
    KeySet {
        keys: vec![PublicJwk {
            kid: d.slot.to_string(),
            kty: "EC",
            crv: "P-256",
            x: b64url(&d.public[..32]),
            y: b64url(&d.public[32..]),
            x5c: vec![b64::encode(&d.cert.der), b64::encode(issuer_der)],
        }],
    }
}

/// One SignedSecureElement: the JWS of `element`, signed ES256 by `key`.
fn signed_element(
    element: &SecureElement<'_>,
    header: &ProtectedHeader,
    key: &rcgen::KeyPair,
) -> Result<serde_json::Value> {
    let protected = part(header)?;
    let payload = part(element)?;
    let der = rcgen::SigningKey::sign(key, format!("{protected}.{payload}").as_bytes())
        .map_err(|e| CliError::new(Code::Failure, format!("signing a manifest entry: {e}")))?;
    let sig = p256::ecdsa::Signature::from_der(&der)
        .map_err(|e| CliError::new(Code::Failure, format!("signing a manifest entry: {e}")))?;
    Ok(json!({
        "payload": payload,
        "protected": protected,
        "header": { "uniqueId": element.unique_id },
        "signature": b64url(&sig.to_bytes()),
    }))
}

/// A JWS part: BASE64URL of the JSON text of `v`.
fn part<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v)
        .map(|t| b64url(t.as_bytes()))
        .map_err(|e| CliError::new(Code::Failure, format!("encoding a manifest entry: {e}")))
}

/// RFC 3339 in UTC with milliseconds, as Microchip writes `provisioningTimestamp`.
fn timestamp(unix: i64) -> Result<String> {
    let t = time::OffsetDateTime::from_unix_timestamp(unix)
        .map_err(|e| CliError::new(Code::State, format!("issue time {unix}: {e}")))?;
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .map_err(|e| CliError::new(Code::Failure, format!("formatting a time: {e}")))
}

/// The group of every device under this CA: 16 upper-case hex digits of the root
/// certificate's SHA-256 (globally unique, as the user guide asks, and stable).
fn group_id(root_der: &[u8]) -> String {
    hex::encode_upper(&Sha256::digest(root_der)[..8])
}

/// Writes a public file (0644) atomically.
fn write_public(path: &Path, data: &[u8]) -> Result<()> {
    safe_fs::replace(path, data, &safe_fs::Replace::new(0o644))
        .map_err(|e| crate::exit::io(path, e))
}

fn report(
    ctx: &Context,
    out: &Path,
    paths: &Outputs,
    devices: &[Device],
    signer: &Signer,
    group: &str,
) {
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    let mut human = format!(
        "manifest of {} device(s) (group {group}) in {}\n  signer certificate (serial {}): {}\n  CA certificates: {}",
        devices.len(),
        out.display(),
        signer.serial,
        paths.signer.display(),
        paths.ca.display()
    );
    if let Some(note) = &signer.renewed {
        human.push_str(&format!("\n  {note}"));
    }
    ctx.print(
        &json!({ "out": out, "signer_certificate": paths.signer, "ca_certificates": paths.ca,
                 "signer_serial": signer.serial, "group_id": group, "devices": ids }),
        &human,
    );
}
