//! The TLS client key that never leaves the chip: a rustls [`SigningKey`] whose every
//! signature is made by the ATECC508A (Nonce in pass-through mode loads SHA-256 of the
//! handshake message into TempKey, then Sign in external mode signs it).
//!
//! ```no_run
//! # use std::sync::{Arc, Mutex};
//! # fn demo<B: firmware::chip::I2cBus + Send + 'static>(chip: firmware::chip::Atecc<B>) {
//! use firmware::signer::{AteccSigner, ChipSigningKey};
//! let key = ChipSigningKey::new(Arc::new(AteccSigner::new(Arc::new(Mutex::new(chip)), 0)));
//! // CertifiedKey::new(chain, Arc::new(key)) and a client-cert resolver, see sim::mqtt
//! # }
//! ```

use std::boxed::Box;
use std::fmt;
use std::string::{String, ToString};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use rustls::sign::{Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};
use rustls_pki_types::SubjectPublicKeyInfoDer;
use sha2::{Digest, Sha256};

use crate::chip::{Atecc, I2cBus};

/// Something that signs a SHA-256 digest with a P-256 key it keeps to itself.
pub trait DigestSigner: Send + Sync {
    /// Returns the raw signature R ‖ S.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String>;
    /// The public key as X ‖ Y, if known.
    fn public_key(&self) -> Option<[u8; 64]>;
}

/// The chip on a shared bus, signing with the key in one slot.
pub struct AteccSigner<B> {
    chip: Arc<Mutex<Atecc<B>>>,
    slot: u8,
}

impl<B: I2cBus> AteccSigner<B> {
    /// Signs with the private key in `slot`.
    pub fn new(chip: Arc<Mutex<Atecc<B>>>, slot: u8) -> Self {
        AteccSigner { chip, slot }
    }
}

impl<B: I2cBus + Send> DigestSigner for AteccSigner<B> {
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<[u8; 64], String> {
        let mut chip = self
            .chip
            .lock()
            .map_err(|_| "chip lock poisoned".to_string())?;
        chip.sign_digest(self.slot, digest)
            .map_err(|e| std::format!("chip Sign failed: {e:?}"))
    }

    fn public_key(&self) -> Option<[u8; 64]> {
        self.chip.lock().ok()?.public_key(self.slot).ok()
    }
}

/// A rustls client signing key backed by a [`DigestSigner`] (ECDSA P-256 with SHA-256 only,
/// the one scheme the ATECC508A can do).
pub struct ChipSigningKey {
    signer: Arc<dyn DigestSigner>,
    spki: Option<Vec<u8>>,
}

impl ChipSigningKey {
    /// Wraps a signer; asks it once for its public key so rustls can check that the
    /// certificate matches (`CertifiedKey::keys_match`).
    pub fn new(signer: Arc<dyn DigestSigner>) -> Self {
        let spki = signer.public_key().map(|xy| p256_spki_der(&xy));
        ChipSigningKey { signer, spki }
    }
}

impl fmt::Debug for ChipSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChipSigningKey(ECDSA P-256, in the secure element)")
    }
}

impl SigningKey for ChipSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| {
                Box::new(ChipSigner {
                    signer: self.signer.clone(),
                }) as Box<dyn Signer>
            })
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        self.spki.as_deref().map(SubjectPublicKeyInfoDer::from)
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

struct ChipSigner {
    signer: Arc<dyn DigestSigner>,
}

impl fmt::Debug for ChipSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChipSigner(ECDSA_NISTP256_SHA256)")
    }
}

impl Signer for ChipSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let mut digest = [0u8; 32];
        digest.copy_from_slice(&Sha256::digest(message));
        let rs = self
            .signer
            .sign_digest(&digest)
            .map_err(rustls::Error::General)?;
        Ok(ecdsa_der(&rs))
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` from the chip's raw R ‖ S.
pub fn ecdsa_der(rs: &[u8; 64]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let v = match v.iter().position(|&b| b != 0) {
            Some(i) => &v[i..],
            None => &[0u8][..],
        };
        out.push(0x02);
        if v[0] & 0x80 != 0 {
            out.push(v.len() as u8 + 1);
            out.push(0);
        } else {
            out.push(v.len() as u8);
        }
        out.extend_from_slice(v);
    }
    let mut body = Vec::with_capacity(72);
    integer(&mut body, &rs[..32]);
    integer(&mut body, &rs[32..]);
    let mut der = Vec::with_capacity(body.len() + 2);
    der.push(0x30);
    der.push(body.len() as u8);
    der.extend_from_slice(&body);
    der
}

/// SubjectPublicKeyInfo DER of a P-256 public key X ‖ Y (id-ecPublicKey, prime256v1).
pub fn p256_spki_der(xy: &[u8; 64]) -> Vec<u8> {
    const PREFIX: [u8; 27] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01, 0x06, 0x08,
        0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(xy);
    der
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_integers_are_minimal_and_positive() {
        let mut rs = [0u8; 64];
        rs[0] = 0x80; // r needs a leading zero
        rs[31] = 1;
        rs[63] = 5; // s = 5: leading zeros stripped
        let der = ecdsa_der(&rs);
        assert_eq!(der[..5], [0x30, 38, 0x02, 33, 0x00]);
        assert_eq!(der[der.len() - 3..], [0x02, 1, 5]);
        assert_eq!(p256_spki_der(&[0; 64]).len(), 91);
    }
}
