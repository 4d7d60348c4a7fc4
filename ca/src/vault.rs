//! Secrets the operator must keep but that never travel in clear: per-device write keys,
//! LoRa link keys. They are stored in the ledger encrypted with AES-256-GCM under a random
//! vault key; the vault key itself is stored in `ca/vault.key`, encrypted like the CA key
//! (PBES2 under the CA passphrase) or, when the CA key is in a PKCS#11 token that can, sealed
//! with AES-GCM by an AES key in that token ([`VaultSealer`]). Opening the CA opens the vault.

use aes_gcm::aead::Aead;
use aes_gcm::{Aes256Gcm, KeyInit, Nonce};
use pkcs8::der::Encode;
use pkcs8::pkcs5::pbes2;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::keys::{PBKDF2_ROUNDS, Passphrase};

const LABEL: &str = "PROVISIONER VAULT KEY";
/// PEM label of a vault key sealed by a token's AES key.
const TOKEN_LABEL: &str = "PROVISIONER VAULT KEY SEALED BY PKCS11";
/// What a token-sealed vault key is bound to.
const TOKEN_AAD: &[u8] = b"provisioner vault key v1";

/// What protects the vault key at rest.
pub enum VaultSealer {
    /// PBES2 under the CA passphrase (or a token's PIN when the token cannot seal).
    Passphrase(Passphrase),
    /// AES-GCM by an AES key that never leaves a PKCS#11 token.
    Token(crate::pkcs11::TokenSecret),
}

/// The opened vault key.
pub struct Vault {
    cipher: Aes256Gcm,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
    Ok(b)
}

/// Random bytes for a new secret.
pub fn random_secret(len: usize) -> Result<Zeroizing<Vec<u8>>> {
    let mut b = Zeroizing::new(vec![0u8; len]);
    getrandom::fill(&mut b).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
    Ok(b)
}

impl Vault {
    /// Opens the vault key file with `sealer`, creating it (0600) if it does not exist yet.
    pub fn open_or_create_with(path: &std::path::Path, sealer: &VaultSealer) -> Result<Vault> {
        match sealer {
            VaultSealer::Passphrase(p) => Vault::open_or_create(path, p),
            VaultSealer::Token(t) => Vault::open_or_create_in_token(path, t),
        }
    }

    fn open_or_create_in_token(
        path: &std::path::Path,
        token: &crate::pkcs11::TokenSecret,
    ) -> Result<Vault> {
        let bad = |reason: &str| Error::BadFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let key = if path.exists() {
            fsutil::check_private(path)?;
            let text = Zeroizing::new(fsutil::read_bounded(path, 16 * 1024)?);
            let (label, sealed) =
                pkcs8::der::pem::decode_vec(&text).map_err(|_| bad("not a PEM file"))?;
            if label != TOKEN_LABEL {
                return Err(bad("not a vault key sealed by the token"));
            }
            let k = token.open(TOKEN_AAD, &sealed)?;
            if k.len() != 32 {
                return Err(bad("vault key has the wrong length"));
            }
            k
        } else {
            let k = random_secret(32)?;
            let sealed = token.seal(TOKEN_AAD, &k)?;
            if !write_new_pem(path, TOKEN_LABEL, &sealed)? {
                // Another command created the vault meanwhile: use that one.
                return Vault::open_or_create_in_token(path, token);
            }
            k
        };
        Vault::from_key(&key)
    }

    /// Opens the vault key file, creating it (0600) if it does not exist yet.
    pub fn open_or_create(path: &std::path::Path, passphrase: &Passphrase) -> Result<Vault> {
        let bad = |reason: &str| Error::BadFile {
            path: path.to_path_buf(),
            reason: reason.into(),
        };
        let key: Zeroizing<Vec<u8>> = if path.exists() {
            fsutil::check_private(path)?;
            let text = Zeroizing::new(fsutil::read_bounded(path, 16 * 1024)?);
            let (label, der) =
                pkcs8::der::pem::decode_vec(&text).map_err(|_| bad("not a PEM file"))?;
            if label != LABEL {
                return Err(bad("not a vault key"));
            }
            let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
                .map_err(|_| bad("damaged vault key"))?;
            let k = Zeroizing::new(
                info.encryption_algorithm
                    .decrypt(passphrase_bytes(passphrase), info.encrypted_data.as_bytes())
                    .map_err(|_| Error::WrongPassphrase {
                        path: path.to_path_buf(),
                    })?,
            );
            // The plaintext is an OCTET STRING holding the 32-byte key.
            let inner = <pkcs8::der::asn1::OctetString as pkcs8::der::Decode>::from_der(&k)
                .map_err(|_| Error::WrongPassphrase {
                    path: path.to_path_buf(),
                })?;
            if inner.as_bytes().len() != 32 {
                return Err(bad("vault key has the wrong length"));
            }
            Zeroizing::new(inner.as_bytes().to_vec())
        } else {
            let k = random_secret(32)?;
            let inner = pkcs8::der::asn1::OctetString::new(k.to_vec())
                .map_err(|e| Error::Generate(e.to_string()))?;
            let plain = Zeroizing::new(inner.to_der().map_err(|e| Error::Generate(e.to_string()))?);
            let params = pbes2::Parameters::generate_pbkdf2_sha256_aes256cbc(
                PBKDF2_ROUNDS,
                &random::<16>()?,
                random::<16>()?,
            )
            .map_err(|e| Error::Generate(e.to_string()))?;
            let ct = params
                .encrypt(passphrase_bytes(passphrase), &plain)
                .map_err(|e| Error::Generate(e.to_string()))?;
            let info = pkcs8::EncryptedPrivateKeyInfoRef {
                encryption_algorithm: pkcs8::pkcs5::EncryptionScheme::Pbes2(params),
                encrypted_data: pkcs8::der::asn1::OctetStringRef::new(&ct)
                    .map_err(|e| Error::Generate(e.to_string()))?,
            };
            let der = info.to_der().map_err(|e| Error::Generate(e.to_string()))?;
            if !write_new_pem(path, LABEL, &der)? {
                // Another command created the vault meanwhile: use that one.
                return Vault::open_or_create(path, passphrase);
            }
            k
        };
        Vault::from_key(&key)
    }

    fn from_key(key: &[u8]) -> Result<Vault> {
        let cipher = Aes256Gcm::new_from_slice(key)
            .map_err(|_| Error::Generate("vault key length".into()))?;
        Ok(Vault { cipher })
    }

    /// Encrypts a secret: `nonce (12) || ciphertext+tag`, bound to `name`.
    pub fn seal(&self, name: &str, secret: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; 12] = random()?;
        let payload = aes_gcm::aead::Payload {
            msg: secret,
            aad: name.as_bytes(),
        };
        let ct = self
            .cipher
            .encrypt(&Nonce::from(nonce), payload)
            .map_err(|_| Error::Generate("vault encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts a sealed secret (fails if it was altered or sealed under another name).
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 + 16 {
            return Err(Error::Conflict(format!(
                "secret `{name}` in the ledger is damaged"
            )));
        }
        let (nonce, ct) = sealed.split_at(12);
        let mut n = [0u8; 12];
        n.copy_from_slice(nonce);
        let payload = aes_gcm::aead::Payload {
            msg: ct,
            aad: name.as_bytes(),
        };
        self.cipher
            .decrypt(&Nonce::from(n), payload)
            .map(Zeroizing::new)
            .map_err(|_| {
                Error::Conflict(format!(
                    "secret `{name}` in the ledger does not decrypt: damaged or from another vault"
                ))
            })
    }
}

/// Writes `der` as PEM `label` to `path` (0600) unless the file exists (then false).
fn write_new_pem(path: &std::path::Path, label: &str, der: &[u8]) -> Result<bool> {
    let pem = pkcs8::der::pem::encode_string(label, pkcs8::der::pem::LineEnding::LF, der)
        .map_err(|e| Error::Generate(e.to_string()))?;
    fsutil::write_new(path, pem.as_bytes(), 0o600)
}

fn passphrase_bytes(p: &Passphrase) -> &[u8] {
    p.expose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_and_are_bound_to_their_name_and_passphrase() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("vault.key");
        let pass = Passphrase::new("vault passphrase".into());
        let v = Vault::open_or_create(&path, &pass).expect("create");
        let sealed = v
            .seal("writekey:salon-1", b"0123456789abcdef0123456789abcdef")
            .expect("seal");
        assert!(
            !sealed.windows(16).any(|w| w == b"0123456789abcdef"),
            "secret stored in clear"
        );
        let again = Vault::open_or_create(&path, &pass).expect("reopen");
        assert_eq!(
            &again.open("writekey:salon-1", &sealed).expect("open")[..],
            b"0123456789abcdef0123456789abcdef"
        );
        assert!(
            again.open("writekey:other", &sealed).is_err(),
            "a secret opened under another name"
        );
        let wrong = Passphrase::new("not the passphrase".into());
        assert!(matches!(
            Vault::open_or_create(&path, &wrong),
            Err(Error::WrongPassphrase { .. })
        ));
    }
}
