//! What may be certified: CSRs and bare public keys, checked before anything is signed.

use std::net::IpAddr;

use p256::elliptic_curve::sec1::ToSec1Point;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;

use crate::error::{Error, Result};

/// Largest CSR accepted (a P-256 CSR is under 1 KiB).
pub const MAX_CSR_LEN: usize = 16 * 1024;
const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";

/// A verified P-256 public key, as the 65-byte uncompressed SEC1 point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 65]);

impl PublicKey {
    /// Validates a SEC1 point (65 bytes uncompressed, or 33 compressed) on P-256.
    pub fn from_sec1(bytes: &[u8]) -> Result<Self> {
        let pk = p256::PublicKey::from_sec1_bytes(bytes).map_err(|_| {
            Error::BadRequest("not a valid P-256 public key (point not on the curve)".into())
        })?;
        let point = pk.to_sec1_point(false);
        let mut out = [0u8; 65];
        out.copy_from_slice(point.as_bytes());
        Ok(PublicKey(out))
    }

    /// The key as `X || Y` (64 bytes, as an ATECC508A returns it).
    pub fn from_xy(xy: &[u8]) -> Result<Self> {
        if xy.len() != 64 {
            return Err(Error::BadRequest(format!(
                "a raw P-256 public key is 64 bytes, got {}",
                xy.len()
            )));
        }
        let mut sec1 = [0u8; 65];
        sec1[0] = 4;
        sec1[1..].copy_from_slice(xy);
        Self::from_sec1(&sec1)
    }
}

impl rcgen::PublicKeyData for PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// A CSR whose signature verified and whose key is P-256.
#[derive(Debug, Clone)]
pub struct Csr {
    /// The subject's CN.
    pub common_name: String,
    /// DNS names requested in a SAN extension (used for server certificates only).
    pub dns: Vec<String>,
    /// IP addresses requested in a SAN extension.
    pub ips: Vec<IpAddr>,
    /// The key.
    pub public_key: PublicKey,
    /// The DER bytes (for the request identity).
    pub der: Vec<u8>,
}

/// Parses a CSR in PEM or DER and checks its self-signature and key type.
pub fn parse_csr(input: &[u8]) -> Result<Csr> {
    if input.len() > MAX_CSR_LEN {
        return Err(Error::BadRequest(format!(
            "CSR is {} bytes; a P-256 CSR is under 1 KiB",
            input.len()
        )));
    }
    let der = if input.starts_with(b"-----") {
        let (label, der) = pkcs8::der::pem::decode_vec(input)
            .map_err(|_| Error::BadRequest("CSR: not a valid PEM file".into()))?;
        if label != "CERTIFICATE REQUEST" && label != "NEW CERTIFICATE REQUEST" {
            return Err(Error::BadRequest(format!(
                "expected a CERTIFICATE REQUEST, found {label}"
            )));
        }
        der
    } else {
        input.to_vec()
    };
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|_| Error::BadRequest("CSR: not a PKCS#10 certification request".into()))?;
    let info = &csr.certification_request_info;
    let spki = &info.subject_pki;
    let alg = spki.algorithm.algorithm.to_id_string();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|o| o.to_id_string());
    if alg != OID_EC_PUBLIC_KEY || curve.as_deref() != Some(OID_P256) {
        return Err(Error::BadRequest(format!(
            "CSR key is not EC P-256 (algorithm {alg}, parameters {}); make one with: openssl ecparam -name prime256v1 -genkey",
            curve.unwrap_or_else(|| "none".into())
        )));
    }
    csr.verify_signature().map_err(|_| {
        Error::BadRequest(
            "CSR signature does not verify: the request was altered or is not signed by its key"
                .into(),
        )
    })?;
    let public_key = PublicKey::from_sec1(&spki.subject_public_key.data)?;
    let common_name = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
        .ok_or_else(|| Error::BadRequest("CSR subject has no common name (CN)".into()))?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Some(exts) = csr.requested_extensions() {
        for ext in exts {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    match name {
                        GeneralName::DNSName(d) => dns.push(d.to_string()),
                        GeneralName::IPAddress(b) => match b.len() {
                            4 => {
                                ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()))
                            }
                            16 => {
                                ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()))
                            }
                            _ => {
                                return Err(Error::BadRequest(
                                    "CSR has a malformed IP address SAN".into(),
                                ));
                            }
                        },
                        _ => {}
                    }
                }
            }
        }
    }
    Ok(Csr {
        common_name,
        dns,
        ips,
        public_key,
        der,
    })
}
