//! Certificate profiles: what each kind of certificate contains. The CA decides every
//! extension; nothing a CSR asks for is copied except its key and (for servers) its names.
//!
//! # Identity rules
//!
//! - A device's or client's identity is its subject **CN**: the device id, or the name of the
//!   gateway, receiver or client. It is unique within the CA's ledger and is the MQTT username
//!   (mosquitto's `use_identity_as_username`). The ACL grants topics to that name.
//! - A device certificate also carries the chip's serial number (the ATECC508A's 9-byte
//!   serial, 18 lowercase hex digits) in the subject's **serialNumber** attribute (X.520
//!   2.5.4.5, PrintableString), as IEEE 802.1AR does for device identities. The provisioner
//!   binds it: a certificate names the chip its key lives in.
//! - The site is the issuing CA itself (one CA per site home); the kind of holder (device,
//!   gateway, receiver, client) is recorded in the ledger and shown by the EKU.
//! - No certificate carries a SAN URI. Earlier versions wrote
//!   `urn:iot-provisioner:SITE:KIND:ID` and `urn:atecc508a:sn:SN`; nothing ever read them,
//!   and no URI form is accepted by every common validator: pkilint (RFC 5280 linter) accepts
//!   only network URLs (`http`, `https`, `ftp`, ...) with a host name, and RFC 5280 4.2.1.6
//!   requires any URI with an authority to name a fully qualified domain as its host, which a
//!   site name is not. An `https://` URL would claim a resource on a domain the site may not
//!   own. The subject DN is understood by every validator.
//! - Servers are named by their SAN DNS names and IP addresses (rustls ignores the CN).
//!
//! Every end-entity certificate has a Subject Key Identifier (RFC 5280 4.2.1.2, SHA-256 of
//! the public key truncated to 160 bits, RFC 7093 method 1), an Authority Key Identifier
//! equal to its issuer's Subject Key Identifier, and basicConstraints `cA: FALSE`. The CA
//! certificates have a Subject Key Identifier too, and the issuing CA an Authority Key
//! Identifier. All of them are clean under pkilint's `lint_pkix_cert` at WARNING
//! (`ca/tests/pkilint/run.sh` checks one of each profile).

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyUsagePurpose, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::error::{Error, Result};

/// Kinds of certificate this CA issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Profile {
    /// Self-signed root (10 years).
    RootCa,
    /// Issuing CA under the root.
    IssuingCa,
    /// The broker: SAN DNS and IP, EKU serverAuth.
    Server,
    /// A sensor: CN = device id, subject serialNumber = chip serial number, EKU clientAuth.
    Device,
    /// A gateway, receiver or other client: CN = its name, EKU clientAuth.
    Client,
}

impl Profile {
    /// Stable name stored in the ledger and accepted on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::RootCa => "root-ca",
            Profile::IssuingCa => "issuing-ca",
            Profile::Server => "server",
            Profile::Device => "device",
            Profile::Client => "client",
        }
    }

    /// Parses a profile name; the error lists the valid ones.
    pub fn parse(s: &str) -> Result<Profile> {
        match s {
            "root-ca" => Ok(Profile::RootCa),
            "issuing-ca" => Ok(Profile::IssuingCa),
            "server" => Ok(Profile::Server),
            "device" => Ok(Profile::Device),
            "client" => Ok(Profile::Client),
            other => Err(Error::BadRequest(format!(
                "unknown profile `{other}`: expected one of server, client, device"
            ))),
        }
    }

    /// True for the two CA profiles.
    pub fn is_ca(self) -> bool {
        matches!(self, Profile::RootCa | Profile::IssuingCa)
    }
}

/// X.520 serialNumber attribute type.
const OID_SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// Upper bound of serialNumber (X.520 ub-serial-number).
const MAX_SERIAL_NUMBER_LEN: usize = 64;

/// A serialNumber value: a PrintableString of 1 to 64 characters.
fn serial_value(sn: &str) -> Result<DnValue> {
    if sn.is_empty() || sn.len() > MAX_SERIAL_NUMBER_LEN {
        return Err(Error::BadRequest(format!(
            "serial number `{sn}` must have 1 to {MAX_SERIAL_NUMBER_LEN} characters"
        )));
    }
    let v = sn.try_into().map_err(|_| {
        Error::BadRequest(format!(
            "serial number `{sn}` may hold only letters, digits, space and '()+,-./:=?"
        ))
    })?;
    Ok(DnValue::PrintableString(v))
}

/// What goes into a certificate besides its key.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Common name (device id, broker name, CA name).
    pub common_name: String,
    /// Organisation, if the site has one.
    pub organization: Option<String>,
    /// DNS names (server profile).
    pub dns: Vec<String>,
    /// IP addresses (server profile).
    pub ips: Vec<IpAddr>,
    /// The device's hardware serial number (device profile only, required there): written as
    /// the subject's serialNumber attribute.
    pub serial_number: Option<String>,
}

impl Subject {
    /// A subject with only a CN.
    pub fn named(cn: &str, organization: Option<String>) -> Self {
        Subject {
            common_name: cn.to_string(),
            organization,
            dns: vec![],
            ips: vec![],
            serial_number: None,
        }
    }
}

/// Builds the parameters of a certificate of `profile`.
pub fn params(
    profile: Profile,
    subject: &Subject,
    serial: &[u8],
    not_before: OffsetDateTime,
    days: u32,
    path_len: u8,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(o) = &subject.organization {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, subject.common_name.as_str());
    match (&subject.serial_number, profile) {
        (Some(sn), Profile::Device) => {
            dn.push(
                DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()),
                serial_value(sn)?,
            );
        }
        (None, Profile::Device) => {
            return Err(Error::BadRequest(
                "a device certificate needs the chip serial number".into(),
            ));
        }
        (Some(_), _) => {
            return Err(Error::BadRequest(format!(
                "only device certificates carry a serial number, not {}",
                profile.name()
            )));
        }
        (None, _) => {}
    }
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from_slice(serial));
    p.not_before = not_before;
    p.not_after = not_before + Duration::days(i64::from(days));
    p.use_authority_key_identifier_extension = profile != Profile::RootCa;
    // rcgen writes a Subject Key Identifier for CA certificates and, with `ExplicitNoCa`, for
    // end-entity certificates too (with basicConstraints cA FALSE): RFC 5280 4.2.1.2 says
    // they SHOULD have one, and pkilint warns without it.
    p.key_identifier_method = KeyIdMethod::Sha256;
    p.is_ca = IsCa::ExplicitNoCa;
    for name in &subject.dns {
        let ia5 = name
            .as_str()
            .try_into()
            .map_err(|_| Error::BadRequest(format!("`{name}` is not a DNS name")))?;
        p.subject_alt_names.push(SanType::DnsName(ia5));
    }
    for ip in &subject.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    match profile {
        Profile::RootCa | Profile::IssuingCa => {
            p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
            ];
        }
        Profile::Server => {
            if subject.dns.is_empty() && subject.ips.is_empty() {
                return Err(Error::BadRequest(
                    "a server certificate needs at least one DNS name or IP address: rustls ignores the CN".into(),
                ));
            }
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        }
        Profile::Device | Profile::Client => {
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(sn: Option<&str>, profile: Profile) -> Result<CertificateParams> {
        let mut s = Subject::named("salon-1", None);
        s.serial_number = sn.map(str::to_string);
        params(profile, &s, &[1; 16], OffsetDateTime::now_utc(), 30, 0)
    }

    #[test]
    fn a_device_certificate_names_its_chip_in_the_subject_and_nothing_else_does() {
        let p = device(Some("0123c0ffee0000a1ee"), Profile::Device).expect("device");
        let sn = p
            .distinguished_name
            .get(&DnType::CustomDnType(OID_SERIAL_NUMBER.to_vec()))
            .expect("serialNumber");
        assert_eq!(
            sn,
            &DnValue::PrintableString("0123c0ffee0000a1ee".try_into().expect("printable"))
        );
        assert!(p.subject_alt_names.is_empty());
        assert_eq!(p.is_ca, IsCa::ExplicitNoCa);
        let e = device(None, Profile::Device).expect_err("no serial");
        assert!(e.to_string().contains("chip serial number"), "{e}");
        let e = device(Some("0123"), Profile::Client).expect_err("client with serial");
        assert!(e.to_string().contains("only device"), "{e}");
        for bad in ["", "a@b", &"0".repeat(65)] {
            let e = device(Some(bad), Profile::Device).expect_err("bad serial");
            assert!(e.to_string().contains("serial number"), "{bad}: {e}");
        }
    }
}
