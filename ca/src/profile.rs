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
    /// The key that signs Microchip manifests of this site's devices (`emit manifest`):
    /// digitalSignature only, no EKU (nothing defines one for manifests), never a TLS peer.
    ManifestSigner,
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
            Profile::ManifestSigner => "manifest-signer",
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
            "manifest-signer" => Ok(Profile::ManifestSigner),
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
    let validity = Duration::days(i64::from(days));
    params_valid_for(profile, subject, serial, not_before, validity, path_len)
}

/// [`params`] with a validity of any length (short lifetimes of demos and tests).
pub fn params_valid_for(
    profile: Profile,
    subject: &Subject,
    serial: &[u8],
    not_before: OffsetDateTime,
    validity: Duration,
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
    p.not_after = not_before + validity;
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
        Profile::ManifestSigner => {
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        }
    }
    Ok(p)
}

/// When a certificate is due for renewal: a point in its lifetime after which an idempotent
/// re-run treats it as missing and issues a new one (DESIGN.md section 10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// At `num/den` of the lifetime (the default is two thirds, as step-ca).
    Fraction {
        /// Numerator.
        num: u32,
        /// Denominator (greater than `num`).
        den: u32,
    },
    /// This many days before notAfter.
    DaysBefore(u32),
    /// This many seconds before notAfter (short lifetimes of demos and tests).
    SecondsBefore(u64),
}

impl Default for Renewal {
    fn default() -> Self {
        Renewal::TWO_THIRDS
    }
}

impl Renewal {
    /// Two thirds of the lifetime.
    pub const TWO_THIRDS: Renewal = Renewal::Fraction { num: 2, den: 3 };

    /// The Unix time from which a certificate valid from `not_before` to `not_after` is due.
    ///
    /// A window at least as long as the certificate (a lifetime shortened to the issuing CA's,
    /// say) falls back to two thirds: otherwise every re-run would issue again.
    pub fn renew_at(self, not_before: i64, not_after: i64) -> i64 {
        let life = (not_after - not_before).max(0);
        // Lifetimes are at most years (1e8 s) and fractions at most 1000/1000: no overflow.
        let fraction = |num: u32, den: u32| {
            let den = i64::from(den.max(1));
            not_before + life.saturating_mul(i64::from(num).min(den)) / den
        };
        let before = |window: i64| {
            if window >= life {
                fraction(2, 3)
            } else {
                not_after - window
            }
        };
        match self {
            Renewal::Fraction { num, den } => fraction(num, den),
            Renewal::DaysBefore(d) => before(i64::from(d) * 86_400),
            Renewal::SecondsBefore(s) => before(i64::try_from(s).unwrap_or(i64::MAX)),
        }
    }
}

impl std::fmt::Display for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Renewal::Fraction { num, den } => write!(f, "at {num}/{den} of the lifetime"),
            Renewal::DaysBefore(d) => write!(f, "{d} days before expiry"),
            Renewal::SecondsBefore(s) => write!(f, "{s} s before expiry"),
        }
    }
}

/// Lifetime and renewal point of one kind of certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetime {
    /// Seconds a new certificate is valid; `None`: the days the request asks for.
    pub seconds: Option<u64>,
    /// When it is due for renewal.
    pub renewal: Renewal,
}

/// Lifetimes by kind of identity, set from the site file (`[lifetimes]` and the device
/// profiles' `cert_days` / `renew_*`). What it does not name gets the request's lifetime and
/// renewal at two thirds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LifetimePolicy {
    /// By identity kind (`server`, `client`, `gateway`, `receiver`), or by certificate profile
    /// name for a certificate without an identity record (`server`, `client`).
    pub kinds: std::collections::BTreeMap<String, Lifetime>,
    /// By device profile name (the site's `[profiles.NAME]`).
    pub device_profiles: std::collections::BTreeMap<String, Lifetime>,
}

impl LifetimePolicy {
    /// The lifetime of a certificate of `cert_profile` for an identity of `kind` and
    /// (site or certificate) profile `profile`, if there is an identity record.
    pub fn lifetime(&self, cert_profile: &str, identity: Option<(&str, &str)>) -> Lifetime {
        let found = match identity {
            Some(("device", p)) => self.device_profiles.get(p),
            Some((kind, _)) => self.kinds.get(kind),
            None => self.kinds.get(cert_profile),
        };
        found.copied().unwrap_or_default()
    }
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

    const DAY: i64 = 86_400;

    #[test]
    fn the_renewal_point_is_a_fraction_of_the_lifetime_or_days_before_expiry() {
        assert_eq!(Renewal::default().renew_at(0, 30 * DAY), 20 * DAY);
        assert_eq!(
            Renewal::Fraction { num: 1, den: 2 }.renew_at(100, 100 + 10 * DAY),
            100 + 5 * DAY
        );
        assert_eq!(Renewal::DaysBefore(7).renew_at(0, 100 * DAY), 93 * DAY);
        // A window as long as the certificate (shortened to its issuer's life) falls back to
        // two thirds instead of renewing on every run.
        assert_eq!(Renewal::DaysBefore(30).renew_at(0, 30 * DAY), 20 * DAY);
        // Short lifetimes (demos, tests): seconds before expiry, the same fallback.
        assert_eq!(Renewal::SecondsBefore(150).renew_at(1000, 1180), 1030);
        assert_eq!(Renewal::SecondsBefore(180).renew_at(0, 180), 120);
    }

    #[test]
    fn the_policy_picks_device_profiles_by_name_and_others_by_kind() {
        let short = Lifetime {
            seconds: Some(10 * 86_400),
            renewal: Renewal::DaysBefore(2),
        };
        let mut p = LifetimePolicy::default();
        p.device_profiles.insert("climat".into(), short);
        p.kinds.insert("gateway".into(), short);
        assert_eq!(p.lifetime("device", Some(("device", "climat"))), short);
        assert_eq!(p.lifetime("client", Some(("gateway", "client"))), short);
        assert_eq!(
            p.lifetime("client", Some(("client", "client"))),
            Lifetime::default()
        );
        assert_eq!(
            p.lifetime("device", Some(("device", "porte"))),
            Lifetime::default()
        );
        assert_eq!(p.lifetime("server", None), Lifetime::default());
    }
}
