//! The sensor application on the host: the core's [`SensorApp`] state machine driving
//! rumqttc over rustls, with the TLS client key in the chip.

use std::sync::Arc;
use std::time::Duration;

use manifests::device::{BLOB_NAME, DeviceConfig};
use rumqttc::{
    AsyncClient, Event, EventLoop, Incoming, LastWill, MqttOptions, Outgoing, QoS,
    TlsConfiguration, Transport,
};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tls_client::{ClientAuth, ClientSetup, Trust};
use tokio::sync::watch;

use super::renewal::{Ended, Renewer};
use super::sensor::{Sensor, Value};
use super::serial::SharedStore;
use crate::app::{Action, Qos, Schedule, SensorApp, State};
use crate::signer::{ChipSigningKey, DigestSigner};

/// Blob holding the device certificate (PEM).
pub const DEVICE_CERT_BLOB: &str = "device.crt";
/// Blob holding the CA certificate (PEM).
pub const CA_CERT_BLOB: &str = "ca.crt";

/// Everything the application needs from the store.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The configuration blob, decoded.
    pub config: DeviceConfig,
    /// Device certificate chain (DER).
    pub chain: Vec<CertificateDer<'static>>,
    /// Trust anchors (DER).
    pub roots: Vec<CertificateDer<'static>>,
}

impl Provisioned {
    /// Decodes the three blobs; says which one is missing or bad.
    pub fn from_blobs(
        config: Option<&[u8]>,
        cert: Option<&[u8]>,
        ca: Option<&[u8]>,
    ) -> Result<Self, String> {
        let config = DeviceConfig::from_blob(config.ok_or(format!("no {BLOB_NAME} blob yet"))?)
            .map_err(|e| format!("{BLOB_NAME}: {e}"))?;
        let pem = |name: &str, b: Option<&[u8]>| -> Result<Vec<CertificateDer<'static>>, String> {
            let b = b.ok_or(format!("no {name} blob yet"))?;
            let certs: Vec<_> = CertificateDer::pem_slice_iter(b)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{name}: not PEM certificates: {e}"))?;
            if certs.is_empty() {
                return Err(format!("{name}: no certificate in it"));
            }
            Ok(certs)
        };
        Ok(Provisioned {
            chain: pem(DEVICE_CERT_BLOB, cert)?,
            roots: pem(CA_CERT_BLOB, ca)?,
            config,
        })
    }

    /// The core's schedule for this configuration.
    pub fn schedule(&self) -> Schedule {
        let c = &self.config;
        Schedule {
            interval_ms: u64::from(c.interval_s) * 1000,
            qos: Qos::from_u8(c.qos).unwrap_or(Qos::AtLeastOnce),
            retain: c.retain,
            keep_alive_s: c.keep_alive_s,
            clean_session: c.clean_session,
        }
    }
}

/// The rustls client configuration (the workspace's one builder, `tls-client`): the CA blob
/// as the only trust anchor, the broker checked for `tls_server_name`, the device certificate
/// with the chip as its key.
pub fn tls_config(
    p: &Provisioned,
    signer: Arc<dyn DigestSigner>,
) -> Result<Arc<ClientConfig>, String> {
    ClientSetup {
        trust: Trust::Certs {
            source: CA_CERT_BLOB.into(),
            certs: p.roots.clone(),
        },
        auth: ClientAuth::Signer {
            source: DEVICE_CERT_BLOB.into(),
            chain: p.chain.clone(),
            key: Arc::new(ChipSigningKey::new(signer)),
            what: "the chip's key".into(),
        },
        server_name: Some(p.config.tls_server_name.clone()),
    }
    .build()
    .map_err(|e| e.to_string())
}

fn qos(q: Qos) -> QoS {
    match q {
        Qos::AtMostOnce => QoS::AtMostOnce,
        Qos::AtLeastOnce => QoS::AtLeastOnce,
        Qos::ExactlyOnce => QoS::ExactlyOnce,
    }
}

/// The readings' sequence number: it restarts with the application (a reboot, new blobs),
/// not when a renewal switches certificates, so a reading lost then shows as a gap.
static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs the application for one configuration until `changed` fires or a renewal asks for
/// a new session (then returns so the caller restarts it with the blobs of the store).
/// `trial`: the certificate is a renewed one the broker has not accepted yet.
pub async fn run(
    p: Provisioned,
    signer: Arc<dyn DigestSigner>,
    changed: watch::Receiver<u64>,
    store: SharedStore,
    trial: bool,
) -> Ended {
    let end = session(p, signer, changed, store, trial).await;
    if end == Ended::Changed {
        SEQ.store(0, std::sync::atomic::Ordering::SeqCst);
        super::renewal::forget_request();
    }
    end
}

/// One MQTT session of [`run`].
async fn session(
    p: Provisioned,
    signer: Arc<dyn DigestSigner>,
    mut changed: watch::Receiver<u64>,
    store: SharedStore,
    trial: bool,
) -> Ended {
    let schedule = p.schedule();
    let c = &p.config;
    super::renewal::warn_if_expired(c, &p.chain);
    let mut renewer = Renewer::new(&p, signer.clone(), store, trial);
    let tls = match tls_config(&p, signer) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sensor-sim: not connecting: {e}");
            if let Some(end) = renewer.on_connection_failed(&e) {
                return end;
            }
            let _ = changed.changed().await;
            return Ended::Changed;
        }
    };
    // The client id is the identity (the certificate's CN): the broker replaces any other by
    // it (`use_username_as_clientid`), so a persistent session is the device's own.
    if let Err(e) = c.check_client_id() {
        eprintln!("sensor-sim: {e}; connecting as `{}`", c.device_id);
    }
    let mut opts = MqttOptions::new(c.device_id.clone(), c.broker_host.clone(), c.port);
    let ka = if c.keep_alive_s == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs(u64::from(c.keep_alive_s))
    };
    opts.set_keep_alive(ka);
    opts.set_clean_session(c.clean_session);
    opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
    if let Some(t) = &c.status_topic {
        opts.set_last_will(LastWill::new(t.clone(), "offline", QoS::AtLeastOnce, true));
    }
    let (client, mut events) = AsyncClient::new(opts, 64);
    let mut app = SensorApp::new();
    app.configure(schedule, super::now_ms());
    let mut sensor = Sensor::new(u64::from(super::now_ms() as u32) ^ c.device_id.len() as u64);
    eprintln!(
        "sensor-sim: configured: {} -> {}:{} (qos {}, retain {})",
        c.device_id, c.broker_host, c.port, c.qos, c.retain
    );
    loop {
        let now = super::now_ms();
        if let Some((topic, csr)) = renewer.request_if_due(now) {
            if let Err(e) = client.try_publish(topic, QoS::AtLeastOnce, false, csr) {
                eprintln!("sensor-sim: renewal request queue: {e}");
            }
            super::renewal::crash_point("renew-after-request");
        }
        let wait_until = match app.poll(now) {
            Action::Idle => return Ended::Changed,
            Action::Publish { qos: q, retain } => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                for r in &c.readings {
                    // Numbered before the check: a reading dropped here is a gap downstream.
                    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    if !app.can_publish(q) {
                        eprintln!(
                            "sensor-sim: dropping reading #{seq}: too many awaiting acknowledgement"
                        );
                        continue;
                    }
                    let payload = match sensor.read(r.quantity, t) {
                        Value::Number(v, unit) => {
                            serde_json::json!({"device": c.device_id, "value": v, "unit": unit, "seq": seq, "ts": t as u64})
                        }
                        Value::Door(open) => {
                            serde_json::json!({"device": c.device_id, "state": if open {"open"} else {"closed"}, "seq": seq, "ts": t as u64})
                        }
                    };
                    if let Err(e) =
                        client.try_publish(r.topic.clone(), qos(q), retain, payload.to_string())
                    {
                        eprintln!("sensor-sim: publish queue: {e}");
                    }
                }
                continue;
            }
            Action::Connect { .. } | Action::Ping => continue,
            Action::WaitUntil(t) => t,
        };
        let sleep = tokio::time::sleep(Duration::from_millis(
            wait_until.saturating_sub(now).clamp(1, 1_000),
        ));
        let connected = !matches!(app.state(), State::Disconnected { .. });
        tokio::select! {
            _ = changed.changed() => {
                let _ = client.try_disconnect();
                return Ended::Changed;
            }
            _ = sleep => {}
            ev = poll_if(&mut events, connected) => {
                if let Some(end) = handle(ev, &mut app, &mut renewer, &client, c, schedule.qos) {
                    let _ = client.try_disconnect();
                    return end;
                }
            }
        }
    }
}

async fn poll_if(events: &mut EventLoop, enabled: bool) -> Result<Event, rumqttc::ConnectionError> {
    if enabled {
        events.poll().await
    } else {
        std::future::pending().await
    }
}

fn handle(
    ev: Result<Event, rumqttc::ConnectionError>,
    app: &mut SensorApp,
    renewer: &mut Renewer,
    client: &AsyncClient,
    c: &DeviceConfig,
    q: Qos,
) -> Option<Ended> {
    let now = super::now_ms();
    match ev {
        Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
            eprintln!("sensor-sim: connected to the broker ({:?})", ack.code);
            app.on_connected(now);
            if let Err(e) = renewer.on_connected() {
                eprintln!("sensor-sim: renewal: {e}");
            }
            if let Some(t) = renewer.cert_topic() {
                let _ = client.try_subscribe(t, QoS::AtLeastOnce);
            }
            if let Some(t) = &c.status_topic {
                let _ = client.try_publish(t.clone(), QoS::AtLeastOnce, true, "online");
            }
        }
        Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
            app.on_publish(now, pkid, if pkid == 0 { Qos::AtMostOnce } else { q });
            eprintln!("sensor-sim: published (packet id {pkid})");
        }
        Ok(Event::Incoming(Incoming::PubAck(a))) => app.on_puback(a.pkid),
        Ok(Event::Incoming(Incoming::PubRec(a))) => app.on_pubrec(a.pkid),
        Ok(Event::Incoming(Incoming::PubComp(a))) => app.on_pubcomp(a.pkid),
        Ok(Event::Incoming(Incoming::Publish(m)))
            if renewer.cert_topic().as_deref() == Some(m.topic.as_ref()) =>
        {
            return renewer.on_certificate(&m.payload);
        }
        Ok(_) => {}
        Err(e) => {
            if let Some(end) = renewer.on_connection_failed(&e.to_string()) {
                return Some(end);
            }
            let delay = app.on_connection_lost(now, now as u32);
            eprintln!("sensor-sim: connection failed: {e}; retrying in {delay} ms");
        }
    }
    None
}
