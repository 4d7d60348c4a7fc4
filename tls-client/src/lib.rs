//! The one rustls client configuration of the workspace: the broker's CA as the only trust
//! anchors, TLS 1.2 or 1.3 on ring (the only provider compiled in, no aws-lc-rs), and client
//! authentication by the node's certificate with either a private-key file or a custom
//! [`SigningKey`] (the simulated board's key stays in its secure element).
//!
//! `gateway`, `lora-link rx` and `sensor-sim` all connect through [`ClientSetup::build`]; the
//! node identity checks ([`certificate_identity`], [`check_client_id`]) live here too, since
//! the broker takes the certificate's CN as username and client id.
//!
//! ```no_run
//! use tls_client::{TlsFiles, client_config};
//! let cfg = client_config(&TlsFiles {
//!     ca_file: "ca.crt".into(),
//!     cert_file: "recepteur.crt".into(),
//!     key_file: "recepteur.key".into(),
//!     server_name: None,
//! })
//! .expect("TLS configuration");
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::sign::{CertifiedKey, SigningKey, SingleCertAndKey};
use rustls::{ClientConfig, DigitallySignedStruct, Error, InconsistentKeys, RootCertStore};
use rustls::{SignatureScheme, WantsVerifier};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Largest PEM file read (CA bundle, certificate chain, key).
const MAX_PEM: u64 = 256 * 1024;

/// The files of a node's TLS identity (client authentication by a key file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificates (PEM) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// The node's certificate (PEM), optionally followed by its chain.
    pub cert_file: PathBuf,
    /// The node's private key (PEM, mode 0600).
    pub key_file: PathBuf,
    /// Name to check in the broker's certificate instead of the host connected to.
    pub server_name: Option<String>,
}

/// Where the trust anchors come from.
#[derive(Debug, Clone)]
pub enum Trust {
    /// A PEM file of CA certificates (read bounded, through `safe-fs`).
    CaFile(PathBuf),
    /// CA certificates already decoded, with the name of where they came from (for errors).
    Certs {
        /// Where they came from, e.g. a board's `ca.crt` blob.
        source: String,
        /// The certificates.
        certs: Vec<CertificateDer<'static>>,
    },
}

/// How the client proves its identity.
#[derive(Clone)]
pub enum ClientAuth {
    /// Certificate and private key in PEM files; the key file must be 0600.
    KeyFile {
        /// The node's certificate (PEM), optionally followed by its chain.
        cert_file: PathBuf,
        /// The node's private key (PEM).
        key_file: PathBuf,
    },
    /// A certificate chain and a key that signs without showing itself (e.g. a secure
    /// element). Its public key must be known and match the certificate.
    Signer {
        /// Where the chain came from, e.g. a board's `device.crt` blob (for errors).
        source: String,
        /// The certificate chain, leaf first.
        chain: Vec<CertificateDer<'static>>,
        /// The key.
        key: Arc<dyn SigningKey>,
        /// What the key is, for errors (e.g. "the chip's key").
        what: String,
    },
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::KeyFile {
                cert_file,
                key_file,
            } => f
                .debug_struct("KeyFile")
                .field("cert_file", cert_file)
                .field("key_file", key_file)
                .finish(),
            ClientAuth::Signer { source, what, .. } => f
                .debug_struct("Signer")
                .field("source", source)
                .field("what", what)
                .finish_non_exhaustive(),
        }
    }
}

/// Everything a client configuration is made of.
#[derive(Debug, Clone)]
pub struct ClientSetup {
    /// The trust anchors.
    pub trust: Trust,
    /// The client's identity.
    pub auth: ClientAuth,
    /// Name to check in the server's certificate instead of the host connected to.
    pub server_name: Option<String>,
}

impl From<&TlsFiles> for ClientSetup {
    fn from(f: &TlsFiles) -> Self {
        ClientSetup {
            trust: Trust::CaFile(f.ca_file.clone()),
            auth: ClientAuth::KeyFile {
                cert_file: f.cert_file.clone(),
                key_file: f.key_file.clone(),
            },
            server_name: f.server_name.clone(),
        }
    }
}

/// Why the TLS client configuration could not be built. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A file is missing, unreadable or too large, or its content is not what it should be.
    #[error("{file}: {why}")]
    File {
        /// The file (or blob).
        file: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The private key is readable by group or others.
    #[error(
        "{file}: private key readable by group or others (mode {mode:o}): run `chmod 600 {file}`"
    )]
    InsecureKey {
        /// The key file.
        file: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// rustls refused the material (e.g. the key does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(String),
    /// The configured MQTT client id is not the certificate's identity.
    #[error(
        "client id `{client_id}` is not the identity of {cert_file} (CN `{identity}`): the broker `provisioner emit broker` configures replaces every client id by the certificate's CN (`use_username_as_clientid`), so the session would not be the one this manifest names; set client_id = \"{identity}\" or re-run `provisioner emit` for this node"
    )]
    ClientIdNotIdentity {
        /// The certificate file.
        cert_file: PathBuf,
        /// The client id configured.
        client_id: String,
        /// The certificate's CN.
        identity: String,
    },
}

fn file_error(file: &Path, why: impl Into<String>) -> TlsSetupError {
    TlsSetupError::File {
        file: file.to_path_buf(),
        why: why.into(),
    }
}

fn read_pem_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsSetupError> {
    safe_fs::read_limited(path, MAX_PEM)
        .map_err(|e| file_error(path, format!("cannot read the {what}: {e}")))
}

/// Every certificate of a PEM file; at least one.
fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read_pem_file(path, what)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| file_error(path, format!("not a PEM certificate: {e}")))?;
    Ok(certs)
}

fn check_private(path: &Path) -> Result<(), TlsSetupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| file_error(path, format!("cannot read the private key: {e}")))?
            .permissions()
            .mode()
            & 0o777;
        if mode & 0o077 != 0 {
            return Err(TlsSetupError::InsecureKey {
                file: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

/// The identity the broker knows this node by: the subject CN of the first certificate in
/// `cert_file` (the broker takes it as username and as client id).
pub fn certificate_identity(cert_file: &Path) -> Result<String, TlsSetupError> {
    let bad = |why: String| file_error(cert_file, why);
    let pem = read_pem_file(cert_file, "certificate")?;
    let leaf = CertificateDer::pem_slice_iter(&pem)
        .next()
        .ok_or_else(|| bad("no CERTIFICATE block".into()))?
        .map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf)
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let mut cns = cert.subject().iter_common_name();
    let cn = cns
        .next()
        .ok_or_else(|| bad("the certificate has no subject CN, the broker would refuse it".into()))?
        .as_str()
        .map_err(|e| bad(format!("the subject CN is not a string: {e}")))?
        .to_string();
    if cns.next().is_some() {
        return Err(bad("the certificate has more than one subject CN".into()));
    }
    Ok(cn)
}

/// Refuses a client id other than the certificate's identity (see [`certificate_identity`]):
/// the broker would replace it anyway, so a different value can only mislead.
pub fn check_client_id(client_id: &str, cert_file: &Path) -> Result<(), TlsSetupError> {
    let identity = certificate_identity(cert_file)?;
    if identity == client_id {
        Ok(())
    } else {
        Err(TlsSetupError::ClientIdNotIdentity {
            cert_file: cert_file.to_path_buf(),
            client_id: client_id.to_string(),
            identity,
        })
    }
}

/// The ring provider: the only one this workspace compiles in.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the client configuration of key-file authentication: the CA file as the only
/// trust anchors, the node's certificate and key, TLS 1.2 or 1.3 on ring.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsSetupError> {
    ClientSetup::from(files).build()
}

impl ClientSetup {
    /// Builds the rustls client configuration; every error names the file or blob at fault.
    pub fn build(&self) -> Result<Arc<ClientConfig>, TlsSetupError> {
        let roots = Arc::new(self.trust.root_store()?);
        let key = self.auth.certified_key()?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
        let cfg = verified_by(builder, roots, self.server_name.as_deref())?
            .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(key)));
        Ok(Arc::new(cfg))
    }
}

/// A configuration without client certificate, for a server that authenticates its clients
/// otherwise (the shared PostgreSQL ledger, by password): the server is verified against
/// `trust` as everywhere else (for the host connected to, or `server_name`), TLS 1.2 or 1.3 on
/// ring.
pub fn server_verified_config(
    trust: &Trust,
    server_name: Option<&str>,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let roots = Arc::new(trust.root_store()?);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    Ok(Arc::new(
        verified_by(builder, roots, server_name)?.with_no_client_auth(),
    ))
}

/// The server verifier: full WebPKI against `roots`, for the host connected to or, when
/// `server_name` is given, for that name.
fn verified_by(
    builder: rustls::ConfigBuilder<ClientConfig, WantsVerifier>,
    roots: Arc<RootCertStore>,
    server_name: Option<&str>,
) -> Result<rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>, TlsSetupError> {
    let Some(name) = server_name else {
        return Ok(builder.with_root_certificates(roots));
    };
    let name = ServerName::try_from(name.to_string()).map_err(|e| {
        TlsSetupError::Rustls(format!("server name {name:?} is not a DNS name or IP: {e}"))
    })?;
    let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedServerVerifier { inner, name })))
}

impl Trust {
    fn root_store(&self) -> Result<RootCertStore, TlsSetupError> {
        let (source, certs) = match self {
            Trust::CaFile(path) => (path.clone(), read_certs(path, "CA file")?),
            Trust::Certs { source, certs } => (PathBuf::from(source), certs.clone()),
        };
        if certs.is_empty() {
            return Err(file_error(
                &source,
                "no CERTIFICATE block: give the site's ca.crt (from `provisioner emit`)",
            ));
        }
        let mut roots = RootCertStore::empty();
        for c in certs {
            roots
                .add(c)
                .map_err(|e| file_error(&source, format!("unusable CA certificate: {e}")))?;
        }
        Ok(roots)
    }
}

impl ClientAuth {
    /// The chain with its key, checked to belong together.
    fn certified_key(&self) -> Result<CertifiedKey, TlsSetupError> {
        match self {
            ClientAuth::KeyFile {
                cert_file,
                key_file,
            } => {
                let chain = read_certs(cert_file, "certificate")?;
                if chain.is_empty() {
                    return Err(file_error(cert_file, "no CERTIFICATE block"));
                }
                check_private(key_file)?;
                let key_pem = zeroize::Zeroizing::new(read_pem_file(key_file, "private key")?);
                // rustls-pki-types' message would be fine, but never risk echoing key material
                let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
                    file_error(key_file, "not a PEM private key (PKCS#8, SEC1 or PKCS#1)")
                })?;
                let unusable = |e: Error| {
                    TlsSetupError::Rustls(format!(
                        "{} and {} do not make a usable client identity: {e}",
                        cert_file.display(),
                        key_file.display()
                    ))
                };
                let key = provider()
                    .key_provider
                    .load_private_key(der)
                    .map_err(unusable)?;
                let certified = CertifiedKey::new(chain, key);
                match certified.keys_match() {
                    // as rustls' own `with_client_auth_cert`: a key whose public half it
                    // cannot tell is left to the handshake
                    Ok(()) | Err(Error::InconsistentKeys(InconsistentKeys::Unknown)) => {
                        Ok(certified)
                    }
                    Err(e) => Err(unusable(e)),
                }
            }
            ClientAuth::Signer {
                source,
                chain,
                key,
                what,
            } => {
                if chain.is_empty() {
                    return Err(file_error(Path::new(source), "no CERTIFICATE block"));
                }
                let certified = CertifiedKey::new(chain.clone(), key.clone());
                certified.keys_match().map_err(|e| {
                    TlsSetupError::Rustls(format!("{source} does not match {what}: {e}"))
                })?;
                Ok(certified)
            }
        }
    }
}

/// Full WebPKI verification, against a configured name rather than the host connected to
/// (rumqttc uses the host for both).
#[derive(Debug)]
struct NamedServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;

/// Checks that `chain` (leaf first, then intermediates) is a client certificate chain the
/// broker would accept under `roots` at `now`: WebPKI path building, signatures, validity and
/// the clientAuth purpose, with the same provider as every connection. A board checks a
/// renewed certificate this way before it stores it.
pub fn verify_client_chain(
    roots: &[CertificateDer<'static>],
    chain: &[CertificateDer<'static>],
    now: rustls::pki_types::UnixTime,
) -> Result<(), String> {
    let mut store = RootCertStore::empty();
    for r in roots {
        store
            .add(r.clone())
            .map_err(|e| format!("trust anchor: {e}"))?;
    }
    let (leaf, intermediates) = chain.split_first().ok_or("no certificate")?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
            .build()
            .map_err(|e| e.to_string())?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| ())
        .map_err(|e| e.to_string())
}
