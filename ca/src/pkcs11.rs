//! The CA key in a PKCS#11 token (SoftHSM2, YubiHSM 2, Nitrokey HSM, SmartCard-HSM...).
//!
//! The key pair is generated inside the token (`CKA_TOKEN`, `CKA_SENSITIVE`, not
//! `CKA_EXTRACTABLE`) and never leaves it: certificates and CRLs are signed there with
//! `CKM_ECDSA` over a SHA-256 digest computed here, and the raw `r || s` the token returns is
//! DER-encoded for X.509. The home records the module path, the token's label and serial and
//! each key's label and `CKA_ID` ([`TokenConfig`]); the user PIN is asked for like the CA
//! passphrase and never stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use rcgen::{PublicKeyData, SigningKey};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::keys::Passphrase;

/// DER of the named curve prime256v1 (OID 1.2.840.10045.3.1.7), for `CKA_EC_PARAMS`.
const P256_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What `init --key-store pkcs11` is given: which module, which token, which key label.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token: String,
    /// Label of the root key; an issuing key is labelled `LABEL-issuing`.
    pub key_label: String,
}

/// One CA key in the token, as the home records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KeyRef {
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, hex (random, chosen before the key is generated).
    pub id: String,
}

/// The home's record of where its CA keys live (`ca/key-store.json`). Never holds the PIN.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenConfig {
    /// The PKCS#11 module.
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// The token's serial number, so another token with the same label is refused.
    pub token_serial: String,
    /// The root key.
    pub root: KeyRef,
    /// The issuing key, when the home has an issuing CA.
    pub issuing: Option<KeyRef>,
    /// The AES key that seals `ca/vault.key` (None: the token cannot, the PIN seals it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<KeyRef>,
}

impl TokenConfig {
    /// The key that signs leaves and CRLs.
    pub fn signing_key(&self) -> &KeyRef {
        self.issuing.as_ref().unwrap_or(&self.root)
    }
}

fn token_error(e: impl std::fmt::Display, what: &str) -> Error {
    Error::Token(format!("{what}: {e}"))
}

/// Loaded modules, one per path: PKCS#11 allows one `C_Initialize` per process, so a
/// module stays loaded (and initialised) until the process ends.
fn module(path: &Path) -> Result<Pkcs11> {
    static LOADED: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| Error::Token("PKCS#11 module table poisoned".into()))?;
    if let Some(ctx) = loaded.get(path) {
        return Ok(ctx.clone());
    }
    if !path.is_absolute() {
        return Err(Error::Token(format!(
            "PKCS#11 module {}: give an absolute path (a relative one would be looked up in the library search path)",
            path.display()
        )));
    }
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::Token(format!(
            "PKCS#11 module {} cannot be loaded: {e} (install the token's module, e.g. Debian's softhsm2 for /usr/lib/softhsm/libsofthsm2.so, or fix --pkcs11-module)",
            path.display()
        ))
    })?;
    if !meta.is_file() {
        return Err(Error::Token(format!(
            "PKCS#11 module {} is not a regular file",
            path.display()
        )));
    }
    {
        use std::os::unix::fs::MetadataExt;
        // Loading it runs its code with the CA's rights: whoever may rewrite it must not.
        if meta.mode() & 0o022 != 0 {
            return Err(Error::Token(format!(
                "PKCS#11 module {} is writable by group or others (mode {:04o}): refusing to load it\n  fix: chmod go-w {}",
                path.display(),
                meta.mode() & 0o7777,
                path.display()
            )));
        }
    }
    let ctx = Pkcs11::new(path).map_err(|e| {
        Error::Token(format!(
            "PKCS#11 module {} cannot be loaded: {e}",
            path.display()
        ))
    })?;
    match ctx.initialize(CInitializeArgs::OsThreads) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(Error::Token(format!(
                "PKCS#11 module {} failed to initialise: {e}",
                path.display()
            )));
        }
    }
    loaded.insert(path.to_path_buf(), ctx.clone());
    Ok(ctx)
}

/// A logged-in session with one token.
pub struct Token {
    ctx: Pkcs11,
    slot: Slot,
    session: Arc<Mutex<Session>>,
    serial: String,
}

impl Token {
    /// Loads `module`, finds the token labelled `label` (with serial `serial`, if given) and
    /// logs in as the user with `pin`.
    pub fn open(
        module_path: &Path,
        label: &str,
        serial: Option<&str>,
        pin: &Passphrase,
    ) -> Result<Token> {
        let ctx = module(module_path)?;
        let (slot, found_serial) = find_slot(&ctx, label, serial)?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| token_error(e, &format!("opening a session with token `{label}`")))?;
        let pin_text = String::from_utf8(pin.expose().to_vec())
            .map_err(|_| Error::Token("the PIN is not UTF-8".into()))?;
        match session.login(UserType::User, Some(&AuthPin::new(pin_text))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLenRange, _)) => {
                return Err(Error::WrongPin {
                    token: label.to_string(),
                });
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(Error::Token(format!(
                    "the user PIN of token `{label}` is locked (too many wrong PINs): the token's security officer must unlock it"
                )));
            }
            Err(e) => return Err(token_error(e, &format!("logging in to token `{label}`"))),
        }
        Ok(Token {
            ctx,
            slot,
            session: Arc::new(Mutex::new(session)),
            serial: found_serial,
        })
    }

    /// The token's serial number.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    fn with_session<T>(&self, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        let s = lock(&self.session)?;
        f(&s)
    }

    /// The key `key`, if the token holds both halves of it.
    pub fn find(&self, key: &KeyRef) -> Result<Option<TokenKey>> {
        let id = key_id(key)?;
        let (private, public) = self.with_session(|s| {
            let find = |class| {
                s.find_objects(&[Attribute::Class(class), Attribute::Id(id.clone())])
                    .map_err(|e| token_error(e, "searching the token"))
            };
            Ok((
                find(ObjectClass::PRIVATE_KEY)?,
                find(ObjectClass::PUBLIC_KEY)?,
            ))
        })?;
        match (private.first(), public.first()) {
            (Some(&p), Some(&q)) => Ok(Some(self.key(p, q)?)),
            _ => Ok(None),
        }
    }

    /// The key `key`, or an error naming it and the token.
    pub fn require(&self, key: &KeyRef, token_label: &str) -> Result<TokenKey> {
        self.find(key)?.ok_or_else(|| {
            Error::Token(format!(
                "token `{token_label}` holds no key pair labelled `{}` with id {}: the CA key is gone (wrong token, or the object was deleted); restore the token from its backup",
                key.label, key.id
            ))
        })
    }

    /// Refuses a label already used by another object: a second CA must not adopt it.
    pub fn check_label_free(&self, key: &KeyRef, token_label: &str) -> Result<()> {
        let others = self.with_session(|s| {
            s.find_objects(&[Attribute::Label(key.label.as_bytes().to_vec())])
                .map_err(|e| token_error(e, "searching the token"))
        })?;
        if others.is_empty() {
            return Ok(());
        }
        Err(Error::Conflict(format!(
            "token `{token_label}` already holds a key labelled `{}` (another CA?): choose another --pkcs11-key-label",
            key.label
        )))
    }

    /// Generates a P-256 key pair inside the token: permanent, sensitive, never extractable.
    pub fn generate(&self, key: &KeyRef) -> Result<TokenKey> {
        let id = key_id(key)?;
        let label = key.label.as_bytes().to_vec();
        let public_template = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Verify(true),
            Attribute::KeyType(KeyType::EC),
            Attribute::EcParams(P256_PARAMS.to_vec()),
            Attribute::Label(label.clone()),
            Attribute::Id(id.clone()),
        ];
        let private_template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
            Attribute::KeyType(KeyType::EC),
            Attribute::Label(label),
            Attribute::Id(id),
        ];
        let (public, private) = self.with_session(|s| {
            s.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_template,
                &private_template,
            )
            .map_err(|e| token_error(e, "generating the CA key in the token"))
        })?;
        self.key(private, public)
    }

    /// True if the token can make AES keys and seal with AES-GCM (for the vault key).
    pub fn can_seal(&self) -> bool {
        use cryptoki::mechanism::MechanismType;
        self.ctx.get_mechanism_list(self.slot).is_ok_and(|m| {
            m.contains(&MechanismType::AES_KEY_GEN) && m.contains(&MechanismType::AES_GCM)
        })
    }

    /// The AES key `key`, if the token holds it.
    pub fn find_secret(&self, key: &KeyRef) -> Result<Option<TokenSecret>> {
        let id = key_id(key)?;
        let found = self.with_session(|s| {
            s.find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY), Attribute::Id(id)])
                .map_err(|e| token_error(e, "searching the token"))
        })?;
        Ok(found.first().map(|&key| TokenSecret {
            session: self.session.clone(),
            key,
        }))
    }

    /// The AES key `key`, or an error naming it and the token.
    pub fn require_secret(&self, key: &KeyRef, token_label: &str) -> Result<TokenSecret> {
        self.find_secret(key)?.ok_or_else(|| {
            Error::Token(format!(
                "token `{token_label}` holds no secret key labelled `{}` with id {}: the vault key (ca/vault.key) cannot be opened; restore the token from its backup",
                key.label, key.id
            ))
        })
    }

    /// Generates an AES-256 key inside the token (permanent, sensitive, never extractable)
    /// that only encrypts and decrypts.
    pub fn generate_secret(&self, key: &KeyRef) -> Result<TokenSecret> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Encrypt(true),
            Attribute::Decrypt(true),
            Attribute::Wrap(false),
            Attribute::Unwrap(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::Label(key.label.as_bytes().to_vec()),
            Attribute::Id(key_id(key)?),
        ];
        let handle = self.with_session(|s| {
            s.generate_key(&Mechanism::AesKeyGen, &template)
                .map_err(|e| token_error(e, "generating the vault key in the token"))
        })?;
        Ok(TokenSecret {
            session: self.session.clone(),
            key: handle,
        })
    }

    fn key(&self, private: ObjectHandle, public: ObjectHandle) -> Result<TokenKey> {
        let attrs = self.with_session(|s| {
            s.get_attributes(public, &[AttributeType::EcPoint])
                .map_err(|e| token_error(e, "reading the CA public key"))
        })?;
        let point = attrs
            .into_iter()
            .find_map(|a| match a {
                Attribute::EcPoint(p) => Some(p),
                _ => None,
            })
            .ok_or_else(|| Error::Token("the public key object has no CKA_EC_POINT".into()))?;
        let public = uncompressed_point(&point)?;
        let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&public)
            .map_err(|_| Error::Token("the token's public key is not a P-256 point".into()))?;
        Ok(TokenKey {
            session: self.session.clone(),
            private,
            public,
            verifying,
        })
    }
}

/// Finds the slot of the token labelled `label` (and with `serial`, if given).
fn find_slot(ctx: &Pkcs11, label: &str, serial: Option<&str>) -> Result<(Slot, String)> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| token_error(e, "listing the module's slots"))?;
    let mut seen = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        let (l, s) = (
            info.label().trim().to_string(),
            info.serial_number().trim().to_string(),
        );
        if l == label {
            if let Some(want) = serial
                && want != s
            {
                return Err(Error::Token(format!(
                    "token `{label}` has serial {}, but this home's CA key is in the token with serial {want}: insert the right token",
                    shown(&s)
                )));
            }
            return Ok((slot, s));
        }
        // What a token says of itself is untrusted text: escaped before it is shown.
        seen.push(shown(&l));
    }
    Err(Error::Token(format!(
        "no token labelled `{label}` in this module (tokens present: {}); insert it, or initialise it (SoftHSM2: softhsm2-util --init-token --free --label {label})",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    )))
}

/// Text from a token made printable (controls and quotes shown escaped).
fn shown(s: &str) -> String {
    s.chars().flat_map(char::escape_debug).collect()
}

/// `CKA_EC_POINT` holds the DER OCTET STRING of the uncompressed point (some modules give
/// the bare point): returns the 65 bytes `04 || X || Y`.
fn uncompressed_point(v: &[u8]) -> Result<Vec<u8>> {
    let bare = match v {
        [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
        [0x04, ..] if v.len() == 65 => v,
        _ => {
            return Err(Error::Token(
                "CKA_EC_POINT is not an uncompressed P-256 point".into(),
            ));
        }
    };
    Ok(bare.to_vec())
}

/// The session, for one operation at a time (a PKCS#11 session is not shared between threads).
fn lock(session: &Mutex<Session>) -> Result<std::sync::MutexGuard<'_, Session>> {
    session
        .lock()
        .map_err(|_| Error::Token("token session poisoned".into()))
}

fn key_id(key: &KeyRef) -> Result<Vec<u8>> {
    hex::decode(&key.id).map_err(|_| Error::Token(format!("key id `{}` is not hex", key.id)))
}

/// An AES-256 key held by a token, sealing small secrets with AES-GCM there.
pub struct TokenSecret {
    session: Arc<Mutex<Session>>,
    key: ObjectHandle,
}

impl TokenSecret {
    /// Encrypts `plain` bound to `aad`: `iv (12) || ciphertext || tag (16)`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>> {
        let mut iv = [0u8; 12];
        getrandom::fill(&mut iv).map_err(|e| Error::Generate(format!("system RNG: {e}")))?;
        let mut iv_param = iv;
        let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv_param, aad, 128.into())
            .map_err(|e| token_error(e, "AES-GCM parameters"))?;
        let session = lock(&self.session)?;
        let ct = session
            .encrypt(&Mechanism::AesGcm(params), self.key, plain)
            .map_err(|e| token_error(e, "sealing in the token"))?;
        let mut out = iv.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts what [`TokenSecret::seal`] made with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<zeroize::Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 + 16 {
            return Err(Error::Token("sealed data too short".into()));
        }
        let mut iv = [0u8; 12];
        iv.copy_from_slice(&sealed[..12]);
        let params = cryptoki::mechanism::aead::GcmParams::new(&mut iv, aad, 128.into())
            .map_err(|e| token_error(e, "AES-GCM parameters"))?;
        let session = lock(&self.session)?;
        session
            .decrypt(&Mechanism::AesGcm(params), self.key, &sealed[12..])
            .map(zeroize::Zeroizing::new)
            .map_err(|e| {
                token_error(
                    e,
                    "opening in the token (damaged, or sealed by another key)",
                )
            })
    }
}

/// A CA key held by a token: rcgen signs certificates and CRLs through it.
pub struct TokenKey {
    session: Arc<Mutex<Session>>,
    private: ObjectHandle,
    public: Vec<u8>,
    verifying: p256::ecdsa::VerifyingKey,
}

impl TokenKey {
    /// The uncompressed public point (`04 || X || Y`).
    pub fn public_key_raw(&self) -> &[u8] {
        &self.public
    }

    /// Signs a SHA-256 digest in the token; returns the DER ECDSA signature, checked against
    /// the public key (a token that signs wrongly is caught here, not by a device).
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let session = lock(&self.session)?;
        let rs = session
            .sign(&Mechanism::Ecdsa, self.private, digest)
            .map_err(|e| token_error(e, "signing in the token"))?;
        drop(session);
        let sig = p256::ecdsa::Signature::from_slice(&rs)
            .map_err(|_| Error::Token("the token returned a malformed signature".into()))?;
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        self.verifying
            .verify_prehash(digest, &sig)
            .map_err(|_| Error::Token("the token's signature does not verify".into()))?;
        Ok(sig.to_der().as_bytes().to_vec())
    }
}

impl PublicKeyData for TokenKey {
    fn der_bytes(&self) -> &[u8] {
        &self.public
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for TokenKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        let digest: [u8; 32] = Sha256::digest(msg).into();
        self.sign_digest(&digest).map_err(|e| {
            tracing::error!(error = %e, "token signature failed");
            rcgen::Error::RemoteKeyError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_point_is_unwrapped_from_its_octet_string() {
        let mut point = vec![0x04];
        point.extend([7u8; 64]);
        let mut wrapped = vec![0x04, 0x41];
        wrapped.extend(&point);
        assert_eq!(uncompressed_point(&wrapped).expect("wrapped"), point);
        assert_eq!(uncompressed_point(&point).expect("bare"), point);
        assert!(uncompressed_point(&[0x04, 0x20, 1, 2]).is_err());
    }

    #[test]
    fn a_missing_module_is_a_clear_error() {
        let err = Token::open(
            Path::new("/nonexistent/libnothing.so"),
            "t",
            None,
            &Passphrase::new("1234".into()),
        )
        .err()
        .expect("must fail")
        .to_string();
        assert!(err.contains("cannot be loaded"), "{err}");
    }
}
