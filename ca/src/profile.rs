//! Certificate profiles: what each kind of certificate contains. The CA decides every
//! extension; nothing a CSR asks for is copied except its key and (for servers) its names.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyUsagePurpose, SanType, SerialNumber,
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
    /// A sensor: CN = device id, SAN URI with the chip serial number, EKU clientAuth.
    Device,
    /// A gateway, receiver or other client: EKU clientAuth.
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
    /// URIs (device and client identities).
    pub uris: Vec<String>,
}

impl Subject {
    /// A subject with only a CN.
    pub fn named(cn: &str, organization: Option<String>) -> Self {
        Subject {
            common_name: cn.to_string(),
            organization,
            dns: vec![],
            ips: vec![],
            uris: vec![],
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
    p.distinguished_name = dn;
    p.serial_number = Some(SerialNumber::from_slice(serial));
    p.not_before = not_before;
    p.not_after = not_before + Duration::days(i64::from(days));
    p.use_authority_key_identifier_extension = profile != Profile::RootCa;
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
    for uri in &subject.uris {
        let ia5 = uri
            .as_str()
            .try_into()
            .map_err(|_| Error::BadRequest(format!("`{uri}` is not an ASCII URI")))?;
        p.subject_alt_names.push(SanType::URI(ia5));
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
