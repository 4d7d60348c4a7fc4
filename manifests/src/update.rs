//! Signed, versioned update bundles for a broker on another machine (`deploy broker`).
//!
//! The bench signs, the broker's agent verifies. An update carries what every ledger change
//! can alter on a broker: its ACL, the CRL and the broker's certificate chain, with the name
//! of the broker it is for, a sequence number (strictly increasing per broker) and the time
//! it was issued. It never carries a private key.
//!
//! Wire form (UTF-8 text, at most [`MAX_UPDATE_BYTES`]):
//!
//! ```text
//! iot-broker-update 1
//! signature <hex of the DER ECDSA P-256 / SHA-256 signature>
//!
//! <body: TOML of UpdateBody>
//! ```
//!
//! The signature covers [`SIGNING_CONTEXT`] followed by the body bytes exactly as they
//! travel: the receiver checks the signature over those bytes before it parses anything, so
//! the encoding is canonical by construction (no re-serialisation on either side). The key
//! is the site CA's (the one that signs the CRL), pinned on the broker's machine at deploy.
//!
//! ```
//! use manifests::update::{UpdateBody, Envelope};
//! let body = UpdateBody::new("pi1", 7, 1_700_000_000, "user a\n", "CRL", "CHAIN");
//! let text = body.to_toml().expect("body");
//! let env = Envelope { signature: vec![0x30, 0x00], body: text.clone() };
//! let back = Envelope::parse(env.encode().as_bytes()).expect("parse");
//! assert_eq!(back.body, text);
//! ```

use p256::ecdsa::signature::Verifier;
use serde::{Deserialize, Serialize};

/// First line of every update.
pub const MAGIC: &str = "iot-broker-update 1";

/// Version of [`UpdateBody`].
pub const UPDATE_FORMAT: u32 = 1;

/// Domain separation: a signature over an update can never be taken for one over anything
/// else the CA signs (certificates and CRLs are DER, never start with this).
pub const SIGNING_CONTEXT: &[u8] = b"iot-provisioner broker update v1\0";

/// Largest update accepted (the broker's MQTT packet limit is larger).
pub const MAX_UPDATE_BYTES: usize = 1 << 20;

/// The content of an update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateBody {
    /// [`UPDATE_FORMAT`].
    pub format: u32,
    /// The deployed broker this update is for (`deploy broker --name`).
    pub broker: String,
    /// Strictly increasing per broker: an agent installs only a sequence above its own.
    pub sequence: u64,
    /// When the bench signed it (Unix seconds).
    pub issued_at: i64,
    /// The mosquitto ACL file.
    pub acl: String,
    /// The CRL, PEM.
    pub crl_pem: String,
    /// The broker's certificate followed by its CA chain, PEM.
    pub broker_chain_pem: String,
}

/// Why an update was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// Not in the wire form.
    #[error("malformed update: {0}")]
    Malformed(String),
    /// The signature does not verify with the pinned key.
    #[error("bad signature: not signed by the pinned site CA key")]
    BadSignature,
    /// The pinned key itself is unusable.
    #[error("the pinned key is not a P-256 public key")]
    BadKey,
}

impl UpdateBody {
    /// An update of format [`UPDATE_FORMAT`].
    pub fn new(
        broker: &str,
        sequence: u64,
        issued_at: i64,
        acl: &str,
        crl_pem: &str,
        broker_chain_pem: &str,
    ) -> Self {
        UpdateBody {
            format: UPDATE_FORMAT,
            broker: broker.to_string(),
            sequence,
            issued_at,
            acl: acl.to_string(),
            crl_pem: crl_pem.to_string(),
            broker_chain_pem: broker_chain_pem.to_string(),
        }
    }

    /// The body as it travels (and is signed).
    pub fn to_toml(&self) -> Result<String, UpdateError> {
        toml::to_string(self).map_err(|e| UpdateError::Malformed(e.to_string()))
    }

    /// Parses a body whose signature was checked.
    pub fn parse(text: &str) -> Result<Self, UpdateError> {
        let b: UpdateBody =
            toml::from_str(text).map_err(|e| UpdateError::Malformed(format!("body: {e}")))?;
        if b.format != UPDATE_FORMAT {
            return Err(UpdateError::Malformed(format!(
                "format {} (this agent reads format {UPDATE_FORMAT})",
                b.format
            )));
        }
        Ok(b)
    }

    /// What changes between two updates for the same broker (sequence and time excluded).
    pub fn same_content(&self, other: &UpdateBody) -> bool {
        self.broker == other.broker
            && self.acl == other.acl
            && self.crl_pem == other.crl_pem
            && self.broker_chain_pem == other.broker_chain_pem
    }
}

/// The message a signature covers: [`SIGNING_CONTEXT`] then the body.
pub fn signed_message(body: &str) -> Vec<u8> {
    let mut m = SIGNING_CONTEXT.to_vec();
    m.extend_from_slice(body.as_bytes());
    m
}

/// A signed update on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// DER ECDSA signature over [`signed_message`] of `body`.
    pub signature: Vec<u8>,
    /// The body text (TOML of [`UpdateBody`]).
    pub body: String,
}

impl Envelope {
    /// The wire form.
    pub fn encode(&self) -> String {
        format!(
            "{MAGIC}\nsignature {}\n\n{}",
            hex::encode(&self.signature),
            self.body
        )
    }

    /// Splits the wire form; checks nothing but its shape and size.
    pub fn parse(bytes: &[u8]) -> Result<Self, UpdateError> {
        let bad = |s: &str| UpdateError::Malformed(s.to_string());
        if bytes.len() > MAX_UPDATE_BYTES {
            return Err(UpdateError::Malformed(format!(
                "{} bytes (at most {MAX_UPDATE_BYTES})",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
        let (head, body) = text
            .split_once("\n\n")
            .ok_or_else(|| bad("no blank line after the header"))?;
        let mut lines = head.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad("first line is not `iot-broker-update 1`"));
        }
        let sig = lines
            .next()
            .and_then(|l| l.strip_prefix("signature "))
            .ok_or_else(|| bad("no `signature` line"))?;
        if lines.next().is_some() {
            return Err(bad("unexpected header line"));
        }
        let signature = hex::decode(sig).map_err(|_| bad("signature is not hex"))?;
        Ok(Envelope {
            signature,
            body: body.to_string(),
        })
    }

    /// Checks the signature with `signer` (SEC1 P-256 public key), then parses the body.
    pub fn verify(&self, signer: &[u8]) -> Result<UpdateBody, UpdateError> {
        let key =
            p256::ecdsa::VerifyingKey::from_sec1_bytes(signer).map_err(|_| UpdateError::BadKey)?;
        let sig = p256::ecdsa::Signature::from_der(&self.signature)
            .map_err(|_| UpdateError::BadSignature)?;
        key.verify(&signed_message(&self.body), &sig)
            .map_err(|_| UpdateError::BadSignature)?;
        UpdateBody::parse(&self.body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_or_foreign_message_is_malformed() {
        assert!(matches!(
            Envelope::parse(b"hello"),
            Err(UpdateError::Malformed(_))
        ));
        assert!(matches!(
            Envelope::parse(b"iot-broker-update 1\nsignature zz\n\nx"),
            Err(UpdateError::Malformed(_))
        ));
        let big = vec![b'a'; MAX_UPDATE_BYTES + 1];
        assert!(Envelope::parse(&big).is_err());
    }

    #[test]
    fn a_garbage_signature_is_refused_before_the_body_is_read() {
        let body = UpdateBody::new("pi1", 1, 0, "", "", "")
            .to_toml()
            .expect("body");
        let env = Envelope {
            signature: vec![0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01],
            body,
        };
        // The generator of P-256 as a key: valid, but it signed nothing here.
        let g = hex::decode("046b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c2964fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5").expect("hex");
        assert_eq!(env.verify(&g), Err(UpdateError::BadSignature));
    }
}
