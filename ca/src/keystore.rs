//! Where a home's CA keys live: encrypted PKCS#8 files in `ca/` (the default) or a PKCS#11
//! token, as recorded in `ca/key-store.json` ([`TokenConfig`]). [`CaKey`] signs either way.

use std::path::Path;

use rcgen::{KeyPair, PublicKeyData, SigningKey};

use crate::authority::Layout;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::keys::{self, Passphrase};
use crate::pkcs11::{KeyRef, Token, TokenConfig, TokenKey, TokenSpec};
use crate::vault::VaultSealer;

const MAX_CONFIG: u64 = 16 * 1024;

/// Where the CA keys of a home are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyStore {
    /// Encrypted files under `ca/` (passphrase).
    File,
    /// A PKCS#11 token (PIN).
    Token(Box<TokenConfig>),
}

impl KeyStore {
    /// Reads the home's key store: a token if `ca/key-store.json` exists, files otherwise.
    pub fn load(layout: &Layout) -> Result<KeyStore> {
        let path = layout.key_store();
        if std::fs::symlink_metadata(&path).is_err() {
            return Ok(KeyStore::File);
        }
        safe_fs::check_owned(&path).map_err(|e| Error::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let text = safe_fs::read_limited_string(&path, MAX_CONFIG).map_err(|e| Error::BadFile {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let config: TokenConfig = serde_json::from_str(&text).map_err(|e| Error::BadFile {
            path: path.clone(),
            reason: format!("not a key-store record: {e}"),
        })?;
        Ok(KeyStore::Token(Box::new(config)))
    }

    /// The token's label, if the keys are in a token (what the PIN prompt names).
    pub fn token_label(&self) -> Option<&str> {
        match self {
            KeyStore::File => None,
            KeyStore::Token(c) => Some(&c.token_label),
        }
    }
}

fn save(layout: &Layout, config: &TokenConfig) -> Result<bool> {
    let text = serde_json::to_string_pretty(config)
        .map_err(|e| Error::Generate(format!("encoding the key-store record: {e}")))?;
    fsutil::write_new(&layout.key_store(), format!("{text}\n").as_bytes(), 0o600)
}

/// A CA signing key: a decrypted file key or a key held by a token.
pub enum CaKey {
    /// From an encrypted PKCS#8 file.
    File(KeyPair),
    /// In a PKCS#11 token.
    Token(TokenKey),
}

impl CaKey {
    /// The uncompressed public point.
    pub fn public_key_raw(&self) -> &[u8] {
        match self {
            CaKey::File(k) => k.public_key_raw(),
            CaKey::Token(k) => k.public_key_raw(),
        }
    }
}

impl PublicKeyData for CaKey {
    fn der_bytes(&self) -> &[u8] {
        self.public_key_raw()
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            CaKey::File(k) => k.algorithm(),
            CaKey::Token(k) => k.algorithm(),
        }
    }
}

impl SigningKey for CaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        match self {
            CaKey::File(k) => k.sign(msg),
            CaKey::Token(k) => k.sign(msg),
        }
    }
}

/// The CA keys `init` certifies: the root's and, with an issuing CA, the issuing one's.
pub struct InitKeys {
    /// The root key.
    pub root: CaKey,
    /// The issuing key.
    pub issuing: Option<CaKey>,
}

/// Creates (or, after an interrupted `init`, finds again) the CA keys of a new home: in the
/// token `spec` names, or in the token an interrupted run recorded, or as encrypted files.
pub fn init_keys(
    layout: &Layout,
    spec: Option<&TokenSpec>,
    issuing: bool,
    secret: &Passphrase,
) -> Result<InitKeys> {
    let recorded = match KeyStore::load(layout)? {
        KeyStore::Token(c) => Some(*c),
        KeyStore::File => None,
    };
    if recorded.is_none() && spec.is_none() {
        secret.check_strength()?;
        let root = CaKey::File(file_key(&layout.root_key(), secret)?);
        let issuing = if issuing {
            Some(CaKey::File(file_key(&layout.issuing_key(), secret)?))
        } else {
            None
        };
        return Ok(InitKeys { root, issuing });
    }
    let (config, token) = token_config(layout, recorded, spec, issuing, secret)?;
    if let Some(v) = &config.vault
        && token.find_secret(v)?.is_none()
    {
        token.generate_secret(v)?;
    }
    let root = token_key(&token, &config.root, &config.token_label)?;
    let issuing = match &config.issuing {
        Some(k) => Some(token_key(&token, k, &config.token_label)?),
        None => None,
    };
    Ok(InitKeys { root, issuing })
}

/// Refuses `init --key-store pkcs11` on a home whose CA exists elsewhere: a CA key never
/// moves (into a token or to another one).
pub fn check_same_store(layout: &Layout, spec: Option<&TokenSpec>) -> Result<()> {
    let Some(spec) = spec else { return Ok(()) };
    let where_ = match KeyStore::load(layout)? {
        KeyStore::Token(c)
            if c.module == spec.module
                && c.token_label == spec.token
                && c.root.label == spec.key_label =>
        {
            return Ok(());
        }
        KeyStore::Token(c) => format!("in token `{}` (key `{}`)", c.token_label, c.root.label),
        KeyStore::File => format!("in {}", layout.ca_dir().display()),
    };
    Err(Error::Conflict(format!(
        "this home's CA already exists with its key {where_}; a CA key cannot be moved: create a new CA in another --home to use token `{}`",
        spec.token
    )))
}

/// The record of the token the keys go into: the one an interrupted run wrote (which must
/// agree with `spec`), or a new one with fresh key ids, written before any key is made.
fn token_config(
    layout: &Layout,
    recorded: Option<TokenConfig>,
    spec: Option<&TokenSpec>,
    issuing: bool,
    pin: &Passphrase,
) -> Result<(TokenConfig, Token)> {
    if let Some(c) = recorded {
        let agrees = spec.is_none_or(|s| {
            s.module == c.module && s.token == c.token_label && s.key_label == c.root.label
        }) && c.issuing.is_some() == issuing;
        if !agrees {
            return Err(Error::Conflict(format!(
                "an interrupted `init` recorded the CA key in token `{}` ({}, key `{}`, issuing CA: {}): run `init` again with the same options, or remove {} to start over",
                c.token_label,
                c.module.display(),
                c.root.label,
                if c.issuing.is_some() { "yes" } else { "no" },
                layout.key_store().display()
            )));
        }
        let token = Token::open(&c.module, &c.token_label, Some(&c.token_serial), pin)?;
        return Ok((c, token));
    }
    let spec = spec.ok_or_else(|| Error::Generate("no token given".into()))?;
    let token = Token::open(&spec.module, &spec.token, None, pin)?;
    let key_ref = |label: String| -> Result<KeyRef> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
        Ok(KeyRef {
            label,
            id: hex::encode(id),
        })
    };
    let config = TokenConfig {
        module: spec.module.clone(),
        token_label: spec.token.clone(),
        token_serial: token.serial().to_string(),
        root: key_ref(spec.key_label.clone())?,
        issuing: if issuing {
            Some(key_ref(format!("{}-issuing", spec.key_label))?)
        } else {
            None
        },
        vault: if token.can_seal() {
            Some(key_ref(format!("{}-vault", spec.key_label))?)
        } else {
            tracing::warn!(
                token = %spec.token,
                "the token cannot make AES-GCM keys: the vault key (ca/vault.key) is sealed under the PIN instead"
            );
            None
        },
    };
    for k in [
        Some(&config.root),
        config.issuing.as_ref(),
        config.vault.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        token.check_label_free(k, &config.token_label)?;
    }
    if !save(layout, &config)? {
        // Another `init` recorded its token first: follow that record.
        return token_config(layout, Some(load_config(layout)?), Some(spec), issuing, pin);
    }
    Ok((config, token))
}

fn load_config(layout: &Layout) -> Result<TokenConfig> {
    match KeyStore::load(layout)? {
        KeyStore::Token(c) => Ok(*c),
        KeyStore::File => Err(Error::Generate("key-store record vanished".into())),
    }
}

fn token_key(token: &Token, key: &KeyRef, token_label: &str) -> Result<CaKey> {
    // A key made by an interrupted run (same id) is reused: nothing was certified yet.
    match token.find(key)? {
        Some(k) => Ok(CaKey::Token(k)),
        None => Ok(CaKey::Token(token.generate(key).inspect_err(|_| {
            tracing::warn!(token = token_label, key = %key.label, "key generation failed");
        })?)),
    }
}

fn file_key(path: &Path, passphrase: &Passphrase) -> Result<KeyPair> {
    if path.exists() {
        return keys::read_encrypted(path, passphrase);
    }
    let key = keys::generate()?;
    let pem = keys::encrypt_pem(&key, passphrase)?;
    // Created only if absent: two `init` at once end with one key, the first one written.
    if !fsutil::write_new(path, pem.as_bytes(), 0o600)? {
        return keys::read_encrypted(path, passphrase);
    }
    Ok(key)
}

/// Loads the key that signs leaves and CRLs (the issuing key if `issuing`, else the root's),
/// with the passphrase or, in a token home, the PIN; and what seals the vault key.
pub fn signing_key(
    layout: &Layout,
    issuing: bool,
    secret: &Passphrase,
) -> Result<(CaKey, VaultSealer)> {
    match KeyStore::load(layout)? {
        KeyStore::Token(c) => {
            let token = Token::open(&c.module, &c.token_label, Some(&c.token_serial), secret)?;
            let key = CaKey::Token(token.require(c.signing_key(), &c.token_label)?);
            let sealer = match &c.vault {
                Some(v) => VaultSealer::Token(token.require_secret(v, &c.token_label)?),
                None => VaultSealer::Passphrase(secret.clone()),
            };
            Ok((key, sealer))
        }
        KeyStore::File => {
            let path = if issuing {
                layout.issuing_key()
            } else {
                layout.root_key()
            };
            if !path.exists() {
                return Err(Error::CaUnavailable(format!(
                    "CA key {} is missing: restore it from your backup (the ledger alone cannot sign)",
                    path.display()
                )));
            }
            let key = CaKey::File(keys::read_encrypted(&path, secret)?);
            Ok((key, VaultSealer::Passphrase(secret.clone())))
        }
    }
}

/// Loads the root key (file or token) with the passphrase or PIN: what certifies a
/// station's issuing CA and signs the root's CRL on the root's home.
pub fn root_key(layout: &Layout, secret: &Passphrase) -> Result<CaKey> {
    match KeyStore::load(layout)? {
        KeyStore::Token(c) => {
            let token = Token::open(&c.module, &c.token_label, Some(&c.token_serial), secret)?;
            Ok(CaKey::Token(token.require(&c.root, &c.token_label)?))
        }
        KeyStore::File => {
            let path = layout.root_key();
            if !path.exists() {
                return Err(Error::CaUnavailable(format!(
                    "the root key {} is not in this home: run this on the root's home",
                    path.display()
                )));
            }
            Ok(CaKey::File(keys::read_encrypted(&path, secret)?))
        }
    }
}
