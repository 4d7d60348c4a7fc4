//! MQTT over mutual TLS for both ends of the link: the rustls client configuration (ring
//! provider only, the node's own certificate) shared with `gateway`, and [`MqttSink`], the
//! [`RecordSink`] with which `lora-link rx` republishes verified records to the broker on its
//! side.
//!
//! ```no_run
//! use lora_link::mqtt::{TlsFiles, client_config};
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::link::FrameError;
use crate::records::Record;
use crate::rx::{FrameMeta, RecordSink};

/// Largest PEM file read (CA bundle, certificate chain, key).
const MAX_PEM: u64 = 256 * 1024;

/// The files of a node's TLS identity.
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

/// Why the TLS client configuration could not be built. Each names the file and what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// A file is missing, unreadable or too large.
    #[error("{file}: {why}")]
    File {
        /// The file.
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

fn read_pem_file(path: &Path, what: &str) -> Result<Vec<u8>, TlsSetupError> {
    let bad = |why: String| TlsSetupError::File {
        file: path.to_path_buf(),
        why,
    };
    safe_fs::read_limited(path, MAX_PEM).map_err(|e| bad(format!("cannot read the {what}: {e}")))
}

fn check_private(path: &Path) -> Result<(), TlsSetupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| TlsSetupError::File {
                file: path.to_path_buf(),
                why: format!("cannot read the private key: {e}"),
            })?
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
    let bad = |why: String| TlsSetupError::File {
        file: cert_file.to_path_buf(),
        why,
    };
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

/// Builds the rustls client configuration: the CA file as the only trust anchors, the node's
/// certificate and key for client authentication, TLS 1.2 or 1.3 on ring.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let ca_pem = read_pem_file(&files.ca_file, "CA file")?;
    let mut roots = RootCertStore::empty();
    let mut n = 0;
    for c in CertificateDer::pem_slice_iter(&ca_pem) {
        let c = c.map_err(|e| TlsSetupError::File {
            file: files.ca_file.clone(),
            why: format!("not a PEM certificate: {e}"),
        })?;
        roots.add(c).map_err(|e| TlsSetupError::File {
            file: files.ca_file.clone(),
            why: format!("unusable CA certificate: {e}"),
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(TlsSetupError::File {
            file: files.ca_file.clone(),
            why: "no CERTIFICATE block: give the site's ca.crt (from `provisioner emit`)".into(),
        });
    }
    let cert_pem = read_pem_file(&files.cert_file, "certificate")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::File {
            file: files.cert_file.clone(),
            why: format!("not a PEM certificate: {e}"),
        })?;
    if chain.is_empty() {
        return Err(TlsSetupError::File {
            file: files.cert_file.clone(),
            why: "no CERTIFICATE block".into(),
        });
    }
    check_private(&files.key_file)?;
    let key_pem = zeroize::Zeroizing::new(read_pem_file(&files.key_file, "private key")?);
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsSetupError::File {
        file: files.key_file.clone(),
        // rustls-pki-types' message would be fine, but never risk echoing key material
        why: "not a PEM private key (PKCS#8, SEC1 or PKCS#1)".into(),
    })?;
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
    let builder = match &files.server_name {
        None => builder.with_root_certificates(roots),
        Some(name) => {
            let name = ServerName::try_from(name.clone()).map_err(|e| {
                TlsSetupError::Rustls(format!("server name {name:?} is not a DNS name or IP: {e}"))
            })?;
            let inner = WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NamedServerVerifier { inner, name }))
        }
    };
    let cfg = builder.with_client_auth_cert(chain, key).map_err(|e| {
        TlsSetupError::Rustls(format!(
            "{} and {} do not make a usable client identity: {e}",
            files.cert_file.display(),
            files.key_file.display()
        ))
    })?;
    Ok(Arc::new(cfg))
}

/// Full WebPKI verification, against a configured name rather than the host connected to.
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
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// MQTT options for a TLS connection with the given client configuration.
pub fn mqtt_options(
    client_id: &str,
    host: &str,
    port: u16,
    keep_alive: Duration,
    tls: Arc<ClientConfig>,
) -> MqttOptions {
    let mut o = MqttOptions::new(client_id, host, port);
    o.set_keep_alive(keep_alive.max(Duration::from_secs(5)))
        .set_clean_session(true)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    o
}

/// QoS from its number (0, 1, 2; anything else is 1).
pub fn qos(n: u8) -> QoS {
    match n {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Exponential back-off between reconnection attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `min`, doubles up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            next: min,
        }
    }
    /// The delay to wait now; the following one doubles.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    /// After a successful connection: back to `min`.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Counters of an [`MqttSink`].
#[derive(Debug, Default)]
pub struct SinkCounters {
    /// Records handed to the MQTT client.
    pub published: AtomicU64,
    /// Records the client refused (queue full, invalid topic): logged, never silent.
    pub dropped: AtomicU64,
    /// Broker acknowledgements (PUBACK / PUBCOMP) received.
    pub acked: AtomicU64,
    /// Successful connections (the first one included).
    pub connections: AtomicU64,
    /// Connection errors.
    pub connection_errors: AtomicU64,
}

/// Republishes records to a broker with the node's own client certificate.
///
/// A background thread drives the connection (reconnecting with [`Backoff`]); records are
/// queued in the client without blocking the radio loop. A record the client cannot take is
/// dropped, logged on stderr and counted in [`SinkCounters::dropped`].
pub struct MqttSink {
    client: Client,
    qos: QoS,
    counters: Arc<SinkCounters>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MqttSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSink")
            .field("qos", &self.qos)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// Capacity of the client's request queue, in records.
pub const SINK_QUEUE: usize = 1024;

impl MqttSink {
    /// Connects (in the background) with `options` and republishes at `qos`. Connection
    /// events go to stderr prefixed with `log_prefix`.
    pub fn start(
        options: MqttOptions,
        qos: QoS,
        backoff: Backoff,
        log_prefix: &'static str,
    ) -> Self {
        let (client, mut connection) = Client::new(options, SINK_QUEUE);
        let counters = Arc::new(SinkCounters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (Arc::clone(&counters), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut backoff = backoff;
            let mut was_connected = false;
            while !s.load(Ordering::SeqCst) {
                match connection.recv_timeout(Duration::from_millis(200)) {
                    Err(rumqttc::RecvTimeoutError::Timeout) => {}
                    Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        c.connections.fetch_add(1, Ordering::SeqCst);
                        backoff.reset();
                        was_connected = true;
                        eprintln!("{log_prefix}: connected to the broker");
                    }
                    Ok(Ok(Event::Incoming(Packet::PubAck(_) | Packet::PubComp(_)))) => {
                        c.acked.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        if s.load(Ordering::SeqCst) {
                            break;
                        }
                        c.connection_errors.fetch_add(1, Ordering::SeqCst);
                        let d = backoff.next_delay();
                        // The error may carry what the broker sent: shown escaped.
                        eprintln!(
                            "{log_prefix}: broker connection {}: {}; retrying in {} ms",
                            if was_connected { "lost" } else { "failed" },
                            manifests::text::escape(&e.to_string()),
                            d.as_millis()
                        );
                        was_connected = false;
                        sleep_unless(&s, d);
                    }
                }
            }
        });
        Self {
            client,
            qos,
            counters,
            stop,
            thread: Some(thread),
        }
    }

    /// The counters so far.
    pub fn counters(&self) -> &SinkCounters {
        &self.counters
    }

    /// Waits up to `grace` for the broker to acknowledge what was published (QoS 1/2), then
    /// disconnects and stops the connection thread.
    pub fn shutdown(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        if self.qos != QoS::AtMostOnce {
            while self.counters.acked.load(Ordering::SeqCst)
                < self.counters.published.load(Ordering::SeqCst)
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.client.try_disconnect();
        std::thread::sleep(Duration::from_millis(50));
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown(Duration::ZERO);
        }
    }
}

fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

impl RecordSink for MqttSink {
    fn deliver(&mut self, meta: &FrameMeta, record: &Record) -> Result<(), String> {
        match self.client.try_publish(
            record.topic.as_str(),
            self.qos,
            false,
            record.payload.clone(),
        ) {
            Ok(()) => {
                self.counters.published.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                self.counters.dropped.fetch_add(1, Ordering::SeqCst);
                eprintln!(
                    "{}",
                    serde_json::json!({"dropped": "republish", "topic": record.topic,
                        "from": meta.from, "counter": meta.counter, "error": e.to_string()})
                );
            }
        }
        Ok(())
    }
    fn rejected(&mut self, error: &FrameError) {
        eprintln!(
            "{}",
            serde_json::json!({"rejected": error.reason(), "error": error.to_string()})
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_maximum_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let v: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(v, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[cfg(unix)]
    #[test]
    fn missing_files_and_readable_keys_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("tempdir");
        let files = TlsFiles {
            ca_file: d.path().join("ca.crt"),
            cert_file: d.path().join("n.crt"),
            key_file: d.path().join("n.key"),
            server_name: None,
        };
        let e = client_config(&files).expect_err("no ca").to_string();
        assert!(e.contains("ca.crt") && e.contains("CA file"), "{e}");
        std::fs::write(&files.ca_file, "garbage").expect("write");
        let e = client_config(&files).expect_err("no block").to_string();
        assert!(e.contains("no CERTIFICATE"), "{e}");
        std::fs::write(d.path().join("k"), "x").expect("write");
        std::fs::set_permissions(d.path().join("k"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        let e = check_private(&d.path().join("k"))
            .expect_err("insecure")
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    /// A self-signed certificate made by the openssl CLI with subject `subj`.
    fn openssl_cert(dir: &Path, name: &str, subj: &str) -> PathBuf {
        let crt = dir.join(format!("{name}.crt"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
            .arg("-keyout")
            .arg(dir.join(format!("{name}.key")))
            .args(["-subj", subj, "-out"])
            .arg(&crt)
            .output()
            .expect("openssl (install it: the tests use the real CLI)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        crt
    }

    #[test]
    fn the_client_id_must_be_the_certificates_cn() {
        let d = tempfile::tempdir().expect("tempdir");
        let crt = openssl_cert(d.path(), "gw", "/O=Maison/CN=passerelle");
        assert_eq!(certificate_identity(&crt).expect("cn"), "passerelle");
        check_client_id("passerelle", &crt).expect("same id");
        let e = check_client_id("garage-1", &crt)
            .expect_err("another id")
            .to_string();
        assert!(
            e.contains("`garage-1`")
                && e.contains("CN `passerelle`")
                && e.contains("use_username_as_clientid")
                && e.contains("client_id = \"passerelle\""),
            "{e}"
        );
        let none = openssl_cert(d.path(), "anon", "/O=Maison");
        let e = certificate_identity(&none).expect_err("no cn").to_string();
        assert!(e.contains("no subject CN"), "{e}");
        std::fs::write(
            d.path().join("junk.crt"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let e = certificate_identity(&d.path().join("junk.crt"))
            .expect_err("junk")
            .to_string();
        assert!(e.contains("junk.crt"), "{e}");
    }
}
