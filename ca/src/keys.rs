//! Private keys at rest: the CA key as encrypted PKCS#8 (PBES2: PBKDF2-HMAC-SHA256,
//! 600 000 rounds, AES-256-CBC; what `openssl pkcs8` reads), other keys as plain PKCS#8 PEM for
//! programs that cannot prompt (mosquitto). Both are written 0600 and refused when others
//! can read them.

use std::path::Path;

use pkcs8::der::pem::{self, LineEnding};
use pkcs8::pkcs5::pbes2;
use pkcs8::{EncryptedPrivateKeyInfoRef, PrivateKeyInfoRef};
use rcgen::KeyPair;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::fsutil;

/// Shortest passphrase accepted for a new CA key.
pub const MIN_PASSPHRASE_LEN: usize = 8;
/// PBKDF2 rounds (OWASP 2023 recommendation for PBKDF2-HMAC-SHA256).
pub const PBKDF2_ROUNDS: u32 = 600_000;
const MAX_KEY_FILE: u64 = 64 * 1024;

/// A passphrase, wiped from memory when dropped. Never printed: `Debug` shows a placeholder.
#[derive(Clone)]
pub struct Passphrase(Zeroizing<String>);

impl Passphrase {
    /// Wraps a passphrase; a trailing newline (from a file or a pipe) is removed.
    pub fn new(mut s: String) -> Self {
        while s.ends_with(['\n', '\r']) {
            s.pop();
        }
        Passphrase(Zeroizing::new(s))
    }

    /// Checks it is strong enough to protect a new key.
    pub fn check_strength(&self) -> Result<()> {
        if self.0.chars().count() < MIN_PASSPHRASE_LEN {
            return Err(Error::WeakPassphrase {
                min: MIN_PASSPHRASE_LEN,
            });
        }
        Ok(())
    }

    /// True if both passphrases are equal (compared without early exit).
    pub fn matches(&self, other: &Passphrase) -> bool {
        let (a, b) = (self.bytes(), other.bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    fn bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The passphrase bytes, for key derivation inside this crate only.
    pub(crate) fn expose(&self) -> &[u8] {
        self.bytes()
    }
}

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Generates a new P-256 key.
pub fn generate() -> Result<KeyPair> {
    Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?)
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
    Ok(b)
}

/// Encrypts a key as PKCS#8 `ENCRYPTED PRIVATE KEY` PEM.
pub fn encrypt_pem(key: &KeyPair, passphrase: &Passphrase) -> Result<Zeroizing<String>> {
    let der = Zeroizing::new(key.serialize_der());
    let info = PrivateKeyInfoRef::try_from(der.as_slice())
        .map_err(|e| Error::Generate(format!("PKCS#8: {e}")))?;
    let salt: [u8; 16] = random()?;
    let iv: [u8; 16] = random()?;
    let params = pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(PBKDF2_ROUNDS, &salt, iv)
        .map_err(|e| Error::Generate(format!("PBES2: {e}")))?;
    let doc = info
        .encrypt_with_params(params, passphrase.bytes())
        .map_err(|e| Error::Generate(format!("PBES2: {e}")))?;
    let pem = pem::encode_string("ENCRYPTED PRIVATE KEY", LineEnding::LF, doc.as_bytes())
        .map_err(|e| Error::Generate(format!("PEM: {e}")))?;
    Ok(Zeroizing::new(pem))
}

/// Writes a key encrypted under `passphrase` to `path` (0600, atomic).
pub fn write_encrypted(path: &Path, key: &KeyPair, passphrase: &Passphrase) -> Result<()> {
    let pem = encrypt_pem(key, passphrase)?;
    fsutil::write_atomic(path, pem.as_bytes(), 0o600)
}

/// Reads an encrypted PKCS#8 key, refusing a file others can read.
pub fn read_encrypted(path: &Path, passphrase: &Passphrase) -> Result<KeyPair> {
    fsutil::check_private(path)?;
    let text = Zeroizing::new(fsutil::read_bounded(path, MAX_KEY_FILE)?);
    let bad = |reason: &str| Error::BadFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    };
    let (label, der) = pem::decode_vec(&text).map_err(|_| bad("not a PEM file"))?;
    if label != "ENCRYPTED PRIVATE KEY" {
        return Err(bad(&format!(
            "expected an ENCRYPTED PRIVATE KEY, found {label}"
        )));
    }
    let info = EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
        .map_err(|_| bad("damaged encrypted PKCS#8"))?;
    let plain = info
        .decrypt(passphrase.bytes())
        .map_err(|_| Error::WrongPassphrase {
            path: path.to_path_buf(),
        })?;
    let key = KeyPair::try_from(plain.as_bytes()).map_err(|_| Error::WrongPassphrase {
        path: path.to_path_buf(),
    })?;
    if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
        return Err(bad("not a P-256 key"));
    }
    Ok(key)
}

/// Writes a key as plain PKCS#8 PEM (0600, atomic), for daemons that cannot prompt.
pub fn write_plain(path: &Path, key: &KeyPair) -> Result<()> {
    let pem = Zeroizing::new(key.serialize_pem());
    fsutil::write_atomic(path, pem.as_bytes(), 0o600)
}

/// Reads a plain PKCS#8 PEM key, refusing a file others can read.
pub fn read_plain(path: &Path) -> Result<KeyPair> {
    fsutil::check_private(path)?;
    let text = Zeroizing::new(fsutil::read_bounded(path, MAX_KEY_FILE)?);
    let s = std::str::from_utf8(&text).map_err(|_| Error::BadFile {
        path: path.to_path_buf(),
        reason: "not text".into(),
    })?;
    KeyPair::from_pem(s).map_err(|e| Error::BadFile {
        path: path.to_path_buf(),
        reason: format!("not a PKCS#8 key: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_key_round_trips_and_refuses_a_wrong_passphrase() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("ca.key");
        let key = generate().expect("key");
        let pw = Passphrase::new("correct horse battery".into());
        write_encrypted(&path, &key, &pw).expect("write");
        let back = read_encrypted(&path, &pw).expect("read");
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        let wrong = Passphrase::new("wrong passphrase".into());
        assert!(matches!(
            read_encrypted(&path, &wrong),
            Err(Error::WrongPassphrase { .. })
        ));
        assert_eq!(format!("{pw:?}"), "Passphrase(<redacted>)");
    }

    #[test]
    fn a_key_readable_by_others_is_refused_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("k.pem");
        write_plain(&path, &generate().expect("key")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = read_plain(&path).expect_err("must refuse").to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }
}
