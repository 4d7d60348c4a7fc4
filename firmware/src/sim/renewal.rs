//! Renewal in the field, board side. Once connected, the application checks its
//! certificate's age; from the renewal point of its configuration on it publishes a CSR
//! signed by the chip on its own renewal topic (again every retry period until answered) and
//! listens on its own certificate topic. A certificate received there is checked (chain to the
//! board's CA for client authentication, and its key is the chip's), stored as
//! [`NEW_CERT_BLOB`] and tried: the application reconnects with it. Accepted by the broker, it
//! replaces [`DEVICE_CERT_BLOB`] (the old one kept as [`PREV_CERT_BLOB`]); refused, it is
//! deleted and the board goes back to the old one, saying so.
//!
//! Every store write is one atomic blob replacement, and the order keeps a working
//! certificate in `device.crt` at every instant: a board killed anywhere restarts with it (a
//! leftover `device.crt.new` is tried again, since it was checked before it was stored).
//!
//! Test hooks (environment, debug builds only): `SENSOR_SIM_RENEW_RETRY_MS` (default 60000),
//! `SENSOR_SIM_CRASH_AT=renew-after-request|renew-after-stage|renew-after-commit` (abort
//! there, like a power cut), `SENSOR_SIM_RENEW_EXTRA_ANCHOR=FILE` (a PEM CA the check also
//! accepts, so a test can make the broker refuse a certificate the board took),
//! `SENSOR_SIM_RENEW_CSR_FILE=FILE` (send this request instead of the chip-signed one).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use manifests::device::{DeviceConfig, FieldRenewal};
use rustls::pki_types::{CertificateDer, UnixTime, pem::PemObject};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use super::mqtt::{DEVICE_CERT_BLOB, Provisioned};
use super::serial::SharedStore;
use crate::signer::{DigestSigner, p256_spki_der};

/// A renewed certificate being tried (checked, not yet accepted by the broker).
pub const NEW_CERT_BLOB: &str = "device.crt.new";
/// The certificate a renewal replaced.
pub const PREV_CERT_BLOB: &str = "device.crt.prev";
/// The last renewed certificate the broker refused: not tried again if sent again (it may be
/// a retained message).
pub const REFUSED_CERT_BLOB: &str = "device.crt.refused";

/// When the next request may go (the board's monotonic clock, ms): shared by the sessions of
/// this boot, so a rollback or a reconnection does not resend at once.
static NEXT_REQUEST_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn next_request_ms() -> u64 {
    NEXT_REQUEST_MS.load(std::sync::atomic::Ordering::SeqCst)
}

fn set_next_request_ms(t: u64) {
    NEXT_REQUEST_MS.store(t, std::sync::atomic::Ordering::SeqCst);
}

/// The application restarted (a reboot clears the board's RAM): a request that was due is
/// sent again at once instead of after the retry period.
pub fn forget_request() {
    set_next_request_ms(0);
}

/// Aborts the board at a named step when `SENSOR_SIM_CRASH_AT` asks (debug builds).
pub fn crash_point(step: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("SENSOR_SIM_CRASH_AT").is_ok_and(|s| s == step) {
        eprintln!("sensor-sim: crash injected at `{step}`");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = step;
}

fn hook(name: &str) -> Option<String> {
    if cfg!(debug_assertions) {
        std::env::var(name).ok()
    } else {
        None
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Validity (notBefore, notAfter) of a certificate, Unix seconds.
pub fn validity(der: &[u8]) -> Result<(i64, i64), String> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| format!("not a certificate: {e}"))?;
    Ok((
        c.validity().not_before.timestamp(),
        c.validity().not_after.timestamp(),
    ))
}

/// Writes one blob atomically (the store's staged upload, then commit).
pub fn put_blob(store: &SharedStore, name: &str, data: &[u8]) -> Result<(), String> {
    let mut s = store
        .lock()
        .map_err(|_| "store lock poisoned".to_string())?;
    s.put_chunk(name.as_bytes(), 0, data)
        .and_then(|_| s.commit(name.as_bytes(), data.len(), crate::crc::crc32(data)))
        .map_err(|e| format!("store {name}: {e:?}"))
}

fn delete_blob(store: &SharedStore, name: &str) -> Result<(), String> {
    let mut s = store
        .lock()
        .map_err(|_| "store lock poisoned".to_string())?;
    match s.delete(name.as_bytes()) {
        Ok(()) | Err(crate::store::StoreError::NotFound) => Ok(()),
        Err(e) => Err(format!("store {name}: {e:?}")),
    }
}

fn blob(store: &SharedStore, name: &str) -> Option<Vec<u8>> {
    store.lock().ok()?.blob(name.as_bytes()).map(<[u8]>::to_vec)
}

/// The certificate blob the application should connect with: a staged renewal being tried,
/// or the stored certificate. Returns the bytes and whether it is a trial.
pub fn cert_to_use(store: &SharedStore) -> (Option<Vec<u8>>, bool) {
    match blob(store, NEW_CERT_BLOB) {
        Some(new) => (Some(new), true),
        None => (blob(store, DEVICE_CERT_BLOB), false),
    }
}

/// How a session ended, for the board's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A blob changed over the serial port (or the board rebooted): re-read everything.
    Changed,
    /// A renewed certificate was stored: reconnect and try it.
    Staged,
    /// The broker refused the renewed certificate: it was deleted; reconnect with the old.
    RolledBack,
}

/// The renewal side of one MQTT session.
pub struct Renewer {
    cfg: Option<FieldRenewal>,
    id: String,
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    signer: Arc<dyn DigestSigner>,
    store: SharedStore,
    trial: bool,
    accepted: bool,
    retry_ms: u64,
}

impl Renewer {
    /// The renewal logic for a session of `p` (a `trial` if its certificate is a staged one).
    pub fn new(
        p: &Provisioned,
        signer: Arc<dyn DigestSigner>,
        store: SharedStore,
        trial: bool,
    ) -> Self {
        let retry_ms = hook("SENSOR_SIM_RENEW_RETRY_MS")
            .and_then(|v| v.parse().ok())
            .unwrap_or(60_000);
        Renewer {
            cfg: p.config.renewal.clone(),
            id: p.config.device_id.clone(),
            chain: p.chain.clone(),
            roots: p.roots.clone(),
            signer,
            store,
            trial,
            accepted: false,
            retry_ms,
        }
    }

    /// The topic the answer comes on, if the board renews in the field.
    pub fn cert_topic(&self) -> Option<String> {
        let c = self.cfg.as_ref()?;
        Some(FieldRenewal::cert_topic(&c.topic_prefix, &self.id))
    }

    /// The broker accepted the connection: a certificate on trial is now the device's.
    pub fn on_connected(&mut self) -> Result<(), String> {
        self.accepted = true;
        if !self.trial {
            return Ok(());
        }
        let new_pem = blob(&self.store, NEW_CERT_BLOB).ok_or("the staged certificate vanished")?;
        if let Some(old) = blob(&self.store, DEVICE_CERT_BLOB)
            && old != new_pem
        {
            put_blob(&self.store, PREV_CERT_BLOB, &old)?;
        }
        put_blob(&self.store, DEVICE_CERT_BLOB, &new_pem)?;
        crash_point("renew-after-commit");
        delete_blob(&self.store, NEW_CERT_BLOB)?;
        self.trial = false;
        let serial = leaf_serial(&self.chain).unwrap_or_default();
        eprintln!(
            "sensor-sim: renewal: the broker accepted the new certificate (serial {serial}); it is now {DEVICE_CERT_BLOB}, the old one {PREV_CERT_BLOB}"
        );
        Ok(())
    }

    /// A connection attempt failed. Before the first acceptance of a certificate on trial,
    /// that is the broker refusing it: delete it and go back to the old one.
    pub fn on_connection_failed(&mut self, why: &str) -> Option<Ended> {
        if !self.trial || self.accepted {
            return None;
        }
        let refused = blob(&self.store, NEW_CERT_BLOB).unwrap_or_default();
        if let Err(e) = put_blob(&self.store, REFUSED_CERT_BLOB, &refused)
            .and_then(|()| delete_blob(&self.store, NEW_CERT_BLOB))
        {
            eprintln!("sensor-sim: renewal: {e}");
        }
        set_next_request_ms(super::now_ms() + self.retry_ms);
        eprintln!(
            "sensor-sim: renewal FAILED: the broker refused the new certificate ({why}); back to the previous certificate"
        );
        Some(Ended::RolledBack)
    }

    /// The CSR to publish now, with its topic, if the certificate is due and the last
    /// request has had its retry period.
    pub fn request_if_due(&mut self, now_ms: u64) -> Option<(String, Vec<u8>)> {
        let c = self.cfg.clone()?;
        if self.trial || !self.accepted || now_ms < next_request_ms() {
            return None;
        }
        let (nb, na) = validity(self.chain.first()?).ok()?;
        let at = c.renew_at(nb, na);
        let now = unix_now();
        if now < at {
            // Check again when it falls due (at most hourly, the clock may jump).
            set_next_request_ms(now_ms + ((at - now) as u64 * 1000).min(3_600_000));
            return None;
        }
        set_next_request_ms(now_ms + self.retry_ms);
        match self.csr() {
            Ok(der) => {
                eprintln!(
                    "sensor-sim: renewal: certificate due since {at} (valid until {na}); CSR signed by the chip sent"
                );
                Some((FieldRenewal::renew_topic(&c.topic_prefix, &self.id), der))
            }
            Err(e) => {
                eprintln!("sensor-sim: renewal: no CSR: {e}");
                None
            }
        }
    }

    /// Builds the request for the chip's key, signed by the chip (a test may substitute a
    /// request of its own with `SENSOR_SIM_RENEW_CSR_FILE`, sent over this same session).
    fn csr(&self) -> Result<Vec<u8>, String> {
        if let Some(f) = hook("SENSOR_SIM_RENEW_CSR_FILE") {
            return std::fs::read(&f).map_err(|e| format!("{f}: {e}"));
        }
        let xy = self
            .signer
            .public_key()
            .ok_or("the chip did not give its public key")?;
        let mut out = [0u8; crate::csr::MAX_CSR_LEN];
        let n = crate::csr::build(
            &self.id,
            &xy,
            |info| Sha256::digest(info).into(),
            |digest| self.signer.sign_digest(digest),
            &mut out,
        )
        .map_err(|e| format!("{e:?}"))?;
        Ok(out[..n].to_vec())
    }

    /// A message on the certificate topic: checks and stages it. `Some(Staged)` when the
    /// session should end so the new certificate is tried.
    pub fn on_certificate(&mut self, payload: &[u8]) -> Option<Ended> {
        match self.check(payload) {
            Ok(None) => None,
            Ok(Some(chain)) => {
                if let Err(e) = put_blob(&self.store, NEW_CERT_BLOB, payload) {
                    eprintln!("sensor-sim: renewal: cannot store the new certificate: {e}");
                    return None;
                }
                crash_point("renew-after-stage");
                let serial = leaf_serial(&chain).unwrap_or_default();
                eprintln!(
                    "sensor-sim: renewal: new certificate (serial {serial}) checked and stored; reconnecting with it"
                );
                Some(Ended::Staged)
            }
            Err(why) => {
                eprintln!(
                    "sensor-sim: renewal: certificate refused: {}",
                    manifests::text::escape(&why)
                );
                None
            }
        }
    }

    /// `Ok(None)`: the certificate in use (a retained answer already applied).
    fn check(&self, payload: &[u8]) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(payload)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not PEM certificates: {e}"))?;
        let leaf = chain.first().ok_or("no certificate in the message")?;
        let refused = blob(&self.store, REFUSED_CERT_BLOB)
            .and_then(|b| CertificateDer::pem_slice_iter(&b).next()?.ok());
        if self.chain.first() == Some(leaf) || refused.as_ref() == Some(leaf) {
            return Ok(None);
        }
        let xy = self
            .signer
            .public_key()
            .ok_or("the chip did not give its public key")?;
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(leaf)
            .map_err(|e| format!("not a certificate: {e}"))?;
        if cert.public_key().raw != p256_spki_der(&xy).as_slice() {
            return Err("its key is not the chip's".into());
        }
        if cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok())
            != Some(self.id.as_str())
        {
            return Err(format!("it is not for `{}`", self.id));
        }
        let mut roots = self.roots.clone();
        if let Some(f) = hook("SENSOR_SIM_RENEW_EXTRA_ANCHOR") {
            let pem = std::fs::read(&f).map_err(|e| format!("{f}: {e}"))?;
            roots.extend(CertificateDer::pem_slice_iter(&pem).flatten());
        }
        let now = UnixTime::since_unix_epoch(Duration::from_secs(unix_now().max(0) as u64));
        tls_client::verify_client_chain(&roots, &chain, now)
            .map_err(|e| format!("chain check: {e}"))?;
        Ok(Some(chain))
    }
}

fn leaf_serial(chain: &[CertificateDer<'static>]) -> Option<String> {
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(chain.first()?).ok()?;
    Some(hex_lower(c.raw_serial()))
}

fn hex_lower(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Says at start-up what a board whose certificate expired must do: it cannot renew in the
/// field (the broker refuses an expired certificate before any message).
pub fn warn_if_expired(cfg: &DeviceConfig, chain: &[CertificateDer<'static>]) {
    if let Some((_, na)) = chain.first().and_then(|c| validity(c).ok())
        && na <= unix_now()
    {
        eprintln!(
            "sensor-sim: the certificate of `{}` expired (notAfter {na}): the broker will refuse it; renew it at the bench with `provisioner device provision` again",
            cfg.device_id
        );
    }
}
