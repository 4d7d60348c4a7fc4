//! Certificate definitions (`atcacert_def_t`): the template of a compressible certificate and
//! where its variable parts live, in the certificate and in the chip. One definition serves
//! every device of a profile: the template is built from a prototype certificate (a fixed
//! placeholder key, dates and names of the profile's lengths), so it depends only on the
//! profile and the issuing CA.
//!
//! [`CertDef::rebuild`] is atcacert's rebuild (`atcacert_cert_build_*`) for X.509
//! certificates: template, authority key id from the CA's public key, subject public key and
//! its key id, the compressed certificate (signature, dates, signer id), the extra elements
//! read from the chip (with their transforms) and the serial number recomputed from its
//! source.

use rcgen::{CertificateParams, Issuer, KeyPair};
use serde::Serialize;
use x509_parser::prelude::FromDer;

use crate::compressed::{self, CompCert, HourDate, SNSRC_PUB_KEY_HASH, TemplateIds};
use crate::error::{Error, Result};
use crate::profile::{self, Profile, Subject};
use crate::request::PublicKey;

/// `atcacert_device_zone_t`.
pub mod zone {
    /// `DEVZONE_CONFIG`.
    pub const CONFIG: u8 = 0;
    /// `DEVZONE_DATA`.
    pub const DATA: u8 = 2;
    /// `DEVZONE_NONE`.
    pub const NONE: u8 = 7;
}
/// `CERTTYPE_X509`.
pub const CERTTYPE_X509: u8 = 0;
/// `DATEFMT_RFC5280_UTC`.
pub const DATEFMT_RFC5280_UTC: u8 = 1;
/// `TF_NONE`.
pub const TF_NONE: u8 = 0;
/// `TF_BIN2HEX_LC`.
pub const TF_BIN2HEX_LC: u8 = 3;
/// `std_cert_elements` in the order of `atcacert_std_cert_element_t`.
pub const STD_ELEMENTS: [&str; 8] = [
    "STDCERT_PUBLIC_KEY",
    "STDCERT_SIGNATURE",
    "STDCERT_ISSUE_DATE",
    "STDCERT_EXPIRE_DATE",
    "STDCERT_SIGNER_ID",
    "STDCERT_CERT_SN",
    "STDCERT_AUTH_KEY_ID",
    "STDCERT_SUBJ_KEY_ID",
];
const PUBLIC_KEY: usize = 0;
const SIGNATURE: usize = 1;
const ISSUE_DATE: usize = 2;
const EXPIRE_DATE: usize = 3;
const SIGNER_ID: usize = 4;
const CERT_SN: usize = 5;
const AUTH_KEY_ID: usize = 6;
const SUBJ_KEY_ID: usize = 7;

/// `atcacert_device_loc_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct DeviceLoc {
    /// Zone (`atcacert_device_zone_t`).
    pub zone: u8,
    /// Slot (data zone).
    pub slot: u16,
    /// 1: the public key is computed by GenKey from the private key in `slot`.
    pub is_genkey: u8,
    /// Byte offset in the zone or slot.
    pub offset: u16,
    /// Byte count.
    pub count: u16,
}

impl DeviceLoc {
    /// `count` bytes from `offset` of data slot `slot`.
    pub fn data(slot: u8, offset: u16, count: u16) -> DeviceLoc {
        DeviceLoc {
            zone: zone::DATA,
            slot: u16::from(slot),
            is_genkey: 0,
            offset,
            count,
        }
    }
    /// No location.
    pub fn none() -> DeviceLoc {
        DeviceLoc {
            zone: zone::NONE,
            ..DeviceLoc::default()
        }
    }
}

/// `atcacert_cert_loc_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct CertLoc {
    /// Byte offset in the template.
    pub offset: u16,
    /// Byte count (0: absent).
    pub count: u16,
}

/// `atcacert_cert_element_t`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertElement {
    /// Name (at most 24 characters).
    pub id: String,
    /// Where the data is in the chip.
    pub device_loc: DeviceLoc,
    /// Where it goes in the certificate.
    pub cert_loc: CertLoc,
    /// Transforms from chip to certificate (`atcacert_transform_t`).
    pub transforms: [u8; 2],
}

/// `atcacert_def_t`, with its field names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CertDef {
    /// `atcacert_cert_type_t`.
    #[serde(rename = "type")]
    pub cert_type: u8,
    /// Where the compressed certificate is.
    pub comp_cert_dev_loc: DeviceLoc,
    /// Slot of the device's private key (device certificates).
    pub private_key_slot: u16,
    /// Template id.
    pub template_id: u8,
    /// Chain id.
    pub chain_id: u8,
    /// Signature size (64 for P-256).
    pub std_sig_size: u16,
    /// `atcacert_cert_sn_src_t`.
    pub sn_source: u8,
    /// Where a stored serial is (none here).
    pub cert_sn_dev_loc: DeviceLoc,
    /// `atcacert_date_format_t` of notBefore.
    pub issue_date_format: u8,
    /// `atcacert_date_format_t` of notAfter.
    pub expire_date_format: u8,
    /// The to-be-signed part of the template.
    pub tbs_cert_loc: CertLoc,
    /// Lifetime in years.
    pub expire_years: u8,
    /// Where the subject's public key is.
    pub public_key_dev_loc: DeviceLoc,
    /// The standard elements, in the enum's order.
    pub std_cert_elements: [CertLoc; 8],
    /// Further elements read from the chip.
    pub cert_elements: Vec<CertElement>,
    /// The template, hex.
    #[serde(serialize_with = "hex_bytes")]
    pub cert_template: Vec<u8>,
    /// The definition of the issuer's certificate, if it is compressed too.
    pub ca_cert_def: Option<Box<CertDef>>,
}

fn hex_bytes<S: serde::Serializer>(v: &[u8], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(v))
}

/// Chip slots of a compressible device profile (Trust&GO's layout by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChipSlots {
    /// P-256 private key (its public key by GenKey).
    pub key: u8,
    /// Compressed device certificate.
    pub device_cert: u8,
    /// Signer public key (72 bytes, padded X and Y).
    pub signer_key: u8,
    /// Compressed signer certificate.
    pub signer_cert: u8,
    /// Device id (the subject CN), `id_len` bytes from offset 0.
    pub device_id: u8,
}

/// What a compressible device profile fixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceForm {
    /// Subject organisation (the site's).
    pub organization: Option<String>,
    /// Length of every device id of the profile (the subject CN).
    pub id_len: usize,
    /// Lifetime in whole years.
    pub years: u8,
    /// Template and chain ids of the device certificate (the signer's template id is
    /// `template_id + 1`, modulo 16).
    pub ids: TemplateIds,
    /// Slots.
    pub slots: ChipSlots,
}

/// The P-256 generator as a placeholder subject key: fixed, valid, nobody's.
const PLACEHOLDER_XY: &str = "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";
/// Placeholder chip serial: 9 bytes.
const PLACEHOLDER_SN: [u8; 9] = [0x01, 0x23, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0x5e, 0xee];
const PLACEHOLDER_DATE: HourDate = HourDate {
    year: 2000,
    month: 1,
    day: 1,
    hour: 0,
};

fn placeholder_xy() -> [u8; 64] {
    let mut xy = [0u8; 64];
    if let Ok(v) = hex::decode(PLACEHOLDER_XY) {
        xy.copy_from_slice(&v);
    }
    xy
}

fn xy_of(p: &PublicKey) -> [u8; 64] {
    let mut xy = [0u8; 64];
    xy.copy_from_slice(&p.0[1..]);
    xy
}

/// Lower-case hex of the 9-byte chip serial, as the subject's serialNumber carries it.
pub fn chip_sn_hex(sn: &[u8; 9]) -> String {
    hex::encode(sn)
}

/// The parameters of a compressible device certificate.
pub fn device_params(
    form: &DeviceForm,
    id: &str,
    chip_sn: &str,
    key: &PublicKey,
    issue: HourDate,
) -> Result<CertificateParams> {
    if id.len() != form.id_len {
        return Err(Error::BadRequest(format!(
            "device id `{id}` has {} characters; this compressible profile's ids have exactly {}",
            id.len(),
            form.id_len
        )));
    }
    let mut subject = Subject::named(id, form.organization.clone());
    subject.serial_number = Some(chip_sn.to_string());
    let p = profile::params(Profile::Device, &subject, &[1], issue.at(0)?, 1, 0)?;
    compressed::make_compressible(p, &xy_of(key), issue, form.years)
}

/// The parameters of the compressible certificate a device request asks for, issued at `t`.
pub fn device_request_params(
    req: &crate::authority::IssueRequest,
    form: &DeviceForm,
    t: time::OffsetDateTime,
) -> Result<CertificateParams> {
    let sn = req.subject.serial_number.as_deref().ok_or_else(|| {
        Error::BadRequest("a device certificate needs the chip serial number".into())
    })?;
    if sn.len() != 18
        || !sn
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return Err(Error::BadRequest(format!(
            "a compressible device certificate carries the 9-byte chip serial as 18 lower-case hex digits (got `{sn}`)"
        )));
    }
    device_params(
        form,
        &req.subject.common_name,
        sn,
        &req.public_key,
        compressed::issue_hour(t)?,
    )
}

/// The parameters of a compressible issuing CA certificate.
pub fn signer_params(
    name: &str,
    organization: Option<String>,
    key: &PublicKey,
    issue: HourDate,
    years: u8,
) -> Result<CertificateParams> {
    if compressed::signer_id_of(name).is_none() {
        return Err(Error::BadRequest(format!(
            "a compressible issuing CA's name ends with its signer id, 4 upper-case hex digits (got `{name}`)"
        )));
    }
    let subject = Subject::named(name, organization);
    let p = profile::params(Profile::IssuingCa, &subject, &[1], issue.at(0)?, 1, 0)?;
    compressed::make_compressible(p, &xy_of(key), issue, years)
}

struct Cert<'a> {
    der: &'a [u8],
}

/// (header length, content length) of the DER element at `at`.
fn der_header(der: &[u8], at: usize) -> Result<(usize, usize)> {
    let bad = || Error::BadRequest("malformed DER certificate".into());
    let first = *der.get(at + 1).ok_or_else(bad)?;
    if first < 0x80 {
        return Ok((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 2 {
        return Err(bad());
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | usize::from(*der.get(at + 2 + i).ok_or_else(bad)?);
    }
    Ok((2 + n, len))
}

impl Cert<'_> {
    /// (tbs location, offset of the signature BIT STRING).
    fn layout(&self) -> Result<(CertLoc, usize)> {
        let (h, _) = der_header(self.der, 0)?;
        let (th, tl) = der_header(self.der, h)?;
        let alg = h + th + tl;
        let (ah, al) = der_header(self.der, alg)?;
        let sig = alg + ah + al;
        if self.der.get(sig) != Some(&0x03) {
            return Err(Error::BadRequest("no signature BIT STRING".into()));
        }
        Ok((
            CertLoc {
                offset: h as u16,
                count: (th + tl) as u16,
            },
            sig,
        ))
    }

    fn find(&self, what: &str, needle: &[u8]) -> Result<CertLoc> {
        let hits: Vec<usize> = self
            .der
            .windows(needle.len())
            .enumerate()
            .filter(|(_, w)| *w == needle)
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [one] => Ok(CertLoc {
                offset: *one as u16,
                count: needle.len() as u16,
            }),
            _ => Err(Error::BadRequest(format!(
                "the prototype certificate has {} copies of its {what}: not a usable template",
                hits.len()
            ))),
        }
    }
}

/// DER of an ECDSA signature as the certificate's BIT STRING (`03 len 00 30 ...`).
pub fn signature_bit_string(rs: &[u8; 64]) -> Vec<u8> {
    let int = |v: &[u8]| {
        let mut v = v;
        while v.len() > 1 && v[0] == 0 && v[1] & 0x80 == 0 {
            v = &v[1..];
        }
        let mut out = vec![0x02];
        if v[0] & 0x80 != 0 {
            out.push((v.len() + 1) as u8);
            out.push(0);
        } else {
            out.push(v.len() as u8);
        }
        out.extend_from_slice(v);
        out
    };
    let (r, s) = (int(&rs[..32]), int(&rs[32..]));
    let seq_len = r.len() + s.len();
    let mut out = vec![0x03, (seq_len + 3) as u8, 0x00, 0x30, seq_len as u8];
    out.extend(r);
    out.extend(s);
    out
}

/// Replaces everything from `sig_at` with `sig` and fixes the outer length (2-byte form).
fn put_signature(cert: &mut Vec<u8>, sig_at: usize, sig: &[u8]) -> Result<()> {
    cert.truncate(sig_at);
    cert.extend_from_slice(sig);
    let len = cert.len() - 4;
    if cert.get(1) != Some(&0x82) || !(0x100..=0xffff).contains(&len) {
        return Err(Error::BadRequest(
            "template length outside the 2-byte DER form".into(),
        ));
    }
    cert[2] = (len >> 8) as u8;
    cert[3] = len as u8;
    Ok(())
}

/// The R || S of a certificate's signature.
fn signature_of(der: &[u8]) -> Result<[u8; 64]> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| Error::BadRequest("not a DER certificate".into()))?;
    let sig = p256::ecdsa::Signature::from_der(c.signature_value.data.as_ref())
        .map_err(|_| Error::BadRequest("not a P-256 ECDSA signature".into()))?;
    let mut rs = [0u8; 64];
    rs.copy_from_slice(&sig.to_bytes());
    Ok(rs)
}

/// The subject's (or the issuer's) common name of a certificate.
pub fn common_name(der: &[u8], issuer: bool) -> Result<String> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| Error::BadRequest("not a DER certificate".into()))?;
    let name = if issuer { c.issuer() } else { c.subject() };
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .ok_or_else(|| Error::BadRequest("certificate without a common name".into()))
}

/// The public key (X || Y) of a certificate.
pub fn public_key_of(der: &[u8]) -> Result<[u8; 64]> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| Error::BadRequest("not a DER certificate".into()))?;
    let raw = c.public_key().subject_public_key.data.as_ref();
    if raw.len() != 65 || raw[0] != 4 {
        return Err(Error::BadRequest("not a P-256 public key".into()));
    }
    let mut xy = [0u8; 64];
    xy.copy_from_slice(&raw[1..]);
    Ok(xy)
}

/// What every template shares: locations of the standard elements in the prototype.
fn standard_def(
    proto: &[u8],
    xy: &[u8; 64],
    issue: HourDate,
    years: u8,
    signer_cn: &str,
    ca_xy: Option<&[u8; 64]>,
) -> Result<(CertDef, Vec<u8>)> {
    let cert = Cert { der: proto };
    let (tbs, sig_at) = cert.layout()?;
    let mut template = proto.to_vec();
    put_signature(&mut template, sig_at, &signature_bit_string(&[0x11; 64]))?;
    let cert = Cert { der: &template };
    let mut std = [CertLoc::default(); 8];
    std[PUBLIC_KEY] = cert.find("public key", xy)?;
    std[SIGNATURE] = CertLoc {
        offset: sig_at as u16,
        count: (template.len() - sig_at) as u16,
    };
    std[ISSUE_DATE] = cert.find("issue date", &issue.utc_time(0))?;
    std[EXPIRE_DATE] = cert.find("expiry date", &issue.utc_time(years))?;
    let cn = cert.find("signer name", signer_cn.as_bytes())?;
    std[SIGNER_ID] = CertLoc {
        offset: cn.offset + cn.count - 4,
        count: 4,
    };
    std[CERT_SN] = cert.find(
        "serial number",
        &compressed::pub_key_hash_serial(xy, issue.encode(years)),
    )?;
    if let Some(ca) = ca_xy {
        std[AUTH_KEY_ID] = cert.find("authority key id", &compressed::key_id(ca))?;
    }
    std[SUBJ_KEY_ID] = cert.find("subject key id", &compressed::key_id(xy))?;
    let def = CertDef {
        cert_type: CERTTYPE_X509,
        comp_cert_dev_loc: DeviceLoc::none(),
        private_key_slot: 0,
        template_id: 0,
        chain_id: 0,
        std_sig_size: 64,
        sn_source: SNSRC_PUB_KEY_HASH,
        cert_sn_dev_loc: DeviceLoc::none(),
        issue_date_format: DATEFMT_RFC5280_UTC,
        expire_date_format: DATEFMT_RFC5280_UTC,
        tbs_cert_loc: tbs,
        expire_years: years,
        public_key_dev_loc: DeviceLoc::none(),
        std_cert_elements: std,
        cert_elements: vec![],
        cert_template: vec![],
        ca_cert_def: None,
    };
    Ok((def, template))
}

fn throwaway_issuer(ca_der: &[u8]) -> Result<Issuer<'static, KeyPair>> {
    Ok(Issuer::from_ca_cert_der(
        &ca_der.to_vec().into(),
        crate::keys::generate()?,
    )?)
}

/// The definition of a compressible issuing CA's certificate (`signer_der`), issued by the
/// root `root_der`, stored in `slots`.
pub fn signer_def(
    signer_der: &[u8],
    root_der: &[u8],
    ids: TemplateIds,
    slots: ChipSlots,
) -> Result<CertDef> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(signer_der)
        .map_err(|_| Error::BadRequest("the issuing CA certificate is damaged".into()))?;
    let cn = common_name(signer_der, false)?;
    let org = c
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string);
    let nb = c.validity().not_before.to_datetime();
    let na = c.validity().not_after.to_datetime();
    let issue = HourDate::floor(nb)?;
    let years = u8::try_from(na.year() - nb.year()).unwrap_or(0);
    let real = public_key_of(signer_der)?;
    if issue.at(0)? != nb || issue.at(years).ok() != Some(na) {
        return Err(Error::BadRequest(format!(
            "the issuing CA `{cn}` is not compressible: its validity ({nb} to {na}) is not on the hour with a whole-year lifetime; a compressible issuing CA is made by `provisioner init --site FILE` when FILE has a compressed profile (use a new home)"
        )));
    }
    let xy = placeholder_xy();
    let key = PublicKey::from_xy(&xy)?;
    let p = signer_params(&cn, org, &key, PLACEHOLDER_DATE, years)?;
    let proto = p.signed_by(&key, &throwaway_issuer(root_der)?)?;
    let (mut def, template) = standard_def(proto.der(), &xy, PLACEHOLDER_DATE, years, &cn, None)?;
    def.comp_cert_dev_loc = DeviceLoc::data(slots.signer_cert, 0, 72);
    def.public_key_dev_loc = DeviceLoc::data(slots.signer_key, 0, 72);
    def.template_id = (ids.template_id + 1) & 0x0f;
    def.chain_id = ids.chain_id;
    def.cert_template = template;
    // The real certificate must come out of the template: checked by compressing and
    // rebuilding it.
    let comp = compress(
        &def,
        signer_der,
        compressed::signer_id_of(&cn).unwrap_or([0; 2]),
    )?;
    let rebuilt = def.rebuild(&comp, &real, None, &|_| None)?;
    if rebuilt != signer_der {
        return Err(Error::BadRequest(format!(
            "the issuing CA certificate `{cn}` does not rebuild from its template: {}",
            first_difference(&rebuilt, signer_der)
        )));
    }
    Ok(def)
}

/// The definition of the device certificates of `form`, issued by `signer_der` (whose own
/// definition is `signer`).
pub fn device_def(form: &DeviceForm, signer_der: &[u8], signer: CertDef) -> Result<CertDef> {
    let signer_cn = common_name(signer_der, false)?;
    let signer_xy = public_key_of(signer_der)?;
    let xy = placeholder_xy();
    let key = PublicKey::from_xy(&xy)?;
    let id: String = "~".repeat(form.id_len);
    let sn = chip_sn_hex(&PLACEHOLDER_SN);
    let p = device_params(form, &id, &sn, &key, PLACEHOLDER_DATE)?;
    let proto = p.signed_by(&key, &throwaway_issuer(signer_der)?)?;
    let (mut def, template) = standard_def(
        proto.der(),
        &xy,
        PLACEHOLDER_DATE,
        form.years,
        &signer_cn,
        Some(&signer_xy),
    )?;
    let cert = Cert { der: &template };
    let id_loc = cert.find("device id", id.as_bytes())?;
    let sn_loc = cert.find("chip serial", sn.as_bytes())?;
    def.cert_elements = vec![
        CertElement {
            id: "device_id".into(),
            device_loc: DeviceLoc::data(form.slots.device_id, 0, form.id_len as u16),
            cert_loc: id_loc,
            transforms: [TF_NONE, TF_NONE],
        },
        CertElement {
            id: "chip_sn_0_3".into(),
            device_loc: DeviceLoc {
                zone: zone::CONFIG,
                offset: 0,
                count: 4,
                ..DeviceLoc::default()
            },
            cert_loc: CertLoc {
                offset: sn_loc.offset,
                count: 8,
            },
            transforms: [TF_BIN2HEX_LC, TF_NONE],
        },
        CertElement {
            id: "chip_sn_4_8".into(),
            device_loc: DeviceLoc {
                zone: zone::CONFIG,
                offset: 8,
                count: 5,
                ..DeviceLoc::default()
            },
            cert_loc: CertLoc {
                offset: sn_loc.offset + 8,
                count: 10,
            },
            transforms: [TF_BIN2HEX_LC, TF_NONE],
        },
    ];
    def.comp_cert_dev_loc = DeviceLoc::data(form.slots.device_cert, 0, 72);
    def.public_key_dev_loc = DeviceLoc {
        is_genkey: 1,
        ..DeviceLoc::data(form.slots.key, 0, 64)
    };
    def.private_key_slot = u16::from(form.slots.key);
    def.template_id = form.ids.template_id;
    def.chain_id = form.ids.chain_id;
    def.cert_template = template;
    def.ca_cert_def = Some(Box::new(signer));
    Ok(def)
}

/// The compressed form of `der` under `def`.
pub fn compress(def: &CertDef, der: &[u8], signer_id: [u8; 2]) -> Result<[u8; 72]> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|_| Error::BadRequest("not a DER certificate".into()))?;
    let nb = c.validity().not_before.to_datetime();
    Ok(CompCert {
        signature: signature_of(der)?,
        issue: HourDate::floor(nb)?,
        expire_years: def.expire_years,
        signer_id,
        template_id: def.template_id,
        chain_id: def.chain_id,
        sn_source: def.sn_source,
    }
    .to_bytes())
}

/// Where two DER certificates first differ, for people.
pub fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!(
            "first difference at byte {i} of {} (rebuilt {:02x}, issued {:02x})",
            b.len(),
            a[i],
            b[i]
        ),
        None => format!("rebuilt {} bytes, issued {}", a.len(), b.len()),
    }
}

impl CertDef {
    /// Rebuilds as [`CertDef::rebuild`] and compares with the certificate `issued`: the
    /// error says why it does not rebuild, or where the two first differ.
    pub fn check_rebuild(
        &self,
        comp: &[u8],
        xy: &[u8; 64],
        ca_xy: Option<&[u8; 64]>,
        read: &dyn Fn(&DeviceLoc) -> Option<Vec<u8>>,
        issued: &[u8],
    ) -> std::result::Result<(), String> {
        let rebuilt = self
            .rebuild(comp, xy, ca_xy, read)
            .map_err(|e| format!("it does not rebuild ({e})"))?;
        if rebuilt != issued {
            return Err(format!(
                "the rebuilt one differs from the issued one: {}",
                first_difference(&rebuilt, issued)
            ));
        }
        Ok(())
    }

    /// Rebuilds the certificate from the compressed certificate `comp`, the subject public
    /// key `xy`, the issuer's public key `ca_xy` (for the authority key id) and the chip data
    /// of each extra element (`read` returns the bytes of a device location).
    pub fn rebuild(
        &self,
        comp: &[u8],
        xy: &[u8; 64],
        ca_xy: Option<&[u8; 64]>,
        read: &dyn Fn(&DeviceLoc) -> Option<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let c = CompCert::parse(comp)?;
        if (c.template_id, c.chain_id, c.sn_source)
            != (self.template_id, self.chain_id, self.sn_source)
        {
            return Err(Error::BadRequest(format!(
                "compressed certificate of template {} chain {} (sn source {}), but the definition is template {} chain {} (sn source {})",
                c.template_id,
                c.chain_id,
                c.sn_source,
                self.template_id,
                self.chain_id,
                self.sn_source
            )));
        }
        let mut cert = self.cert_template.clone();
        let std = &self.std_cert_elements;
        if let Some(ca) = ca_xy {
            put(&mut cert, std[AUTH_KEY_ID], &compressed::key_id(ca))?;
        }
        put(&mut cert, std[PUBLIC_KEY], xy)?;
        put(&mut cert, std[SUBJ_KEY_ID], &compressed::key_id(xy))?;
        put(&mut cert, std[ISSUE_DATE], &c.issue.utc_time(0))?;
        put(
            &mut cert,
            std[EXPIRE_DATE],
            &c.issue.utc_time(c.expire_years),
        )?;
        let sid = hex::encode_upper(c.signer_id);
        put(&mut cert, std[SIGNER_ID], sid.as_bytes())?;
        for e in &self.cert_elements {
            let data = read(&e.device_loc)
                .ok_or_else(|| Error::BadRequest(format!("no chip data for element `{}`", e.id)))?;
            let data = match e.transforms[0] {
                TF_NONE => data,
                TF_BIN2HEX_LC => hex::encode(&data).into_bytes(),
                other => {
                    return Err(Error::BadRequest(format!(
                        "transform {other} is not supported"
                    )));
                }
            };
            put(&mut cert, e.cert_loc, &data)?;
        }
        let sn_loc = std[CERT_SN];
        let sn = compressed::pub_key_hash_serial(xy, c.issue.encode(c.expire_years));
        put(
            &mut cert,
            sn_loc,
            &sn[..usize::from(sn_loc.count).min(sn.len())],
        )?;
        put_signature(
            &mut cert,
            usize::from(std[SIGNATURE].offset),
            &signature_bit_string(&c.signature),
        )?;
        Ok(cert)
    }
}

fn put(cert: &mut [u8], loc: CertLoc, data: &[u8]) -> Result<()> {
    if loc.count == 0 {
        return Ok(());
    }
    let (o, n) = (usize::from(loc.offset), usize::from(loc.count));
    if data.len() != n || o + n > cert.len() {
        return Err(Error::BadRequest(format!(
            "element of {} bytes does not fit {n} bytes at {o}",
            data.len()
        )));
    }
    cert[o..o + n].copy_from_slice(data);
    Ok(())
}
