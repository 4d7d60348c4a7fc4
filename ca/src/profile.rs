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
        match self {
            Renewal::Fraction { num, den } => fraction(num, den),
            Renewal::DaysBefore(d) => {
                let window = i64::from(d) * 86_400;
                if window >= life {
                    fraction(2, 3)
                } else {
                    not_after - window
                }
            }
        }
    }
}

impl std::fmt::Display for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Renewal::Fraction { num, den } => write!(f, "at {num}/{den} of the lifetime"),
            Renewal::DaysBefore(d) => write!(f, "{d} days before expiry"),
        }
    }
}

/// Lifetime and renewal point of one kind of certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifetime {
    /// Days a new certificate is valid; `None`: what the request asks for.
    pub days: Option<u32>,
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
    }

    #[test]
    fn the_policy_picks_device_profiles_by_name_and_others_by_kind() {
        let short = Lifetime {
            days: Some(10),
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
