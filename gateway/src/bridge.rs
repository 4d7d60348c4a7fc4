//! The MQTT side of the gateway: one connection with the gateway's own certificate, the
//! manifest's subscriptions renewed on every connection, reconnection with back-off, every
//! message handed to the radio thread and acknowledged only then (manual acks: a QoS 1/2
//! message the gateway did not take is redelivered by the broker). The session is persistent
//! (clean session off, client id = gateway id): what is published at QoS 1/2 while the gateway
//! is down is delivered when it comes back. The broker (`emit broker`) takes the client id from
//! the certificate's CN (`use_username_as_clientid`), so the session is the identity's and no
//! other certified client can take it over; the manifest's `mqtt.client_id` must be that CN.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lora_link::mqtt::{Backoff, mqtt_options, qos};
use lora_link::records::Record;
use manifests::gateway::LoadedGateway;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use tls_client::{TlsFiles, check_client_id, client_config};

use crate::forward::ToRadio;
use crate::{Counters, log};

/// What the bridge needs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Connection options (TLS transport, client id, keep-alive).
    pub options: MqttOptions,
    /// Topic filters to subscribe to.
    pub filters: Vec<String>,
    /// Subscription QoS.
    pub qos: QoS,
    /// Reconnection delays.
    pub backoff: Backoff,
}

impl BridgeConfig {
    /// The bridge of a loaded gateway manifest: TLS with the gateway's own certificate and
    /// key, the broker's CA and TLS name, client id, keep-alive, filters, QoS and back-off.
    pub fn from_manifest(g: &LoadedGateway) -> Result<BridgeConfig, String> {
        let m = &g.manifest.mqtt;
        let tls = client_config(&TlsFiles {
            ca_file: g.ca_file.clone(),
            cert_file: g.cert_file.clone(),
            key_file: g.key_file.clone(),
            server_name: m.server_name.clone(),
        })
        .map_err(|e| format!("{}: {e}", g.path.display()))?;
        // The broker knows the gateway by its certificate's CN, also as client id: the
        // persistent session is the identity's, whatever a client id says.
        check_client_id(&m.client_id, &g.cert_file)
            .map_err(|e| format!("{}: field `mqtt.client_id`: {e}", g.path.display()))?;
        Ok(BridgeConfig {
            options: mqtt_options(
                &m.client_id,
                &m.host,
                m.port,
                Duration::from_secs(u64::from(m.keep_alive_s)),
                tls,
            ),
            filters: m.filters.clone(),
            qos: qos(m.qos),
            backoff: Backoff::new(
                Duration::from_millis(m.reconnect_min_ms),
                Duration::from_millis(m.reconnect_max_ms),
            ),
        })
    }
}

/// Capacity of the request queue between the bridge and rumqttc's event loop. Every message
/// received queues its acknowledgement there (`try_ack`, which must not wait: only this loop
/// drains the queue), and one network read can hand over everything the broker has in flight
/// (`max_inflight_messages` of `emit broker`). Four times that, so an ack is never refused: an
/// unacknowledged message would hold a slot of the broker's in-flight window until the next
/// connection, and a full window stalls delivery.
pub const REQUEST_CAPACITY: usize = 4 * manifests::mosquitto::MAX_INFLIGHT_MESSAGES as usize;

/// Why the bridge stopped by itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The radio thread stopped (its error is reported by whoever joins it).
    #[error("the radio thread stopped")]
    RadioGone,
}

/// Runs until `shutdown` completes (then disconnects cleanly) or the radio thread stops.
pub async fn run(
    cfg: BridgeConfig,
    to_radio: Sender<ToRadio>,
    counters: Arc<Mutex<Counters>>,
    radio_stopped: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BridgeError> {
    let mut options = cfg.options.clone();
    // A persistent session: the broker keeps the subscriptions and queues QoS 1/2 messages
    // while the gateway is away (restart, network loss), and redelivers what was not acked.
    options.set_manual_acks(true).set_clean_session(false);
    let (client, mut events) = AsyncClient::new(options, REQUEST_CAPACITY);
    let mut backoff = cfg.backoff.clone();
    let mut connected = false;
    let mut watchdog = tokio::time::interval(Duration::from_millis(500));
    let count = |f: &dyn Fn(&mut Counters)| {
        let mut c = counters.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut c);
    };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                log!("signal received: disconnecting from the broker");
                if client.try_disconnect().is_ok() {
                    // let the event loop send DISCONNECT (bounded: the broker may be gone)
                    let _ = tokio::time::timeout(Duration::from_millis(500), async {
                        while events.poll().await.is_ok() {}
                    })
                    .await;
                }
                return Ok(());
            }
            _ = watchdog.tick() => {
                if radio_stopped.load(Ordering::SeqCst) {
                    return Err(BridgeError::RadioGone);
                }
            }
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff.reset();
                    count(&|c| c.connections += 1);
                    log!("connected to the broker; subscribing to {}", cfg.filters.join(", "));
                    let filters = cfg
                        .filters
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), cfg.qos));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        log!("cannot queue the subscription: {e}");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(s))) => {
                    for (f, code) in cfg.filters.iter().zip(&s.return_codes) {
                        match code {
                            SubscribeReasonCode::Success(q) => {
                                log!("subscribed to {f} (QoS {})", *q as u8);
                            }
                            SubscribeReasonCode::Failure => log!(
                                "the broker refused the subscription to {f}: check the gateway's ACL (read) in the broker configuration (`provisioner emit broker`)"
                            ),
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    // Never waits on the radio: the channel is unbounded and the radio thread's
                    // queue decides what the air can take (and counts what it drops).
                    count(&|c| c.received += 1);
                    tracing::debug!(topic = %p.topic, bytes = p.payload.len(), "message from the broker");
                    let record = Record::new(p.topic.clone(), p.payload.to_vec());
                    if to_radio.send(ToRadio::Record(record)).is_err() {
                        return Err(BridgeError::RadioGone);
                    }
                    if let Err(e) = client.try_ack(&p) {
                        log!("cannot acknowledge a message on {}: {e}", p.topic);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    count(&|c| c.connection_errors += 1);
                    let delay = backoff.next_delay();
                    log!(
                        "broker connection {}: {e}; retrying in {} ms",
                        if connected { "lost" } else { "failed" },
                        delay.as_millis()
                    );
                    connected = false;
                    tokio::select! {
                        _ = &mut shutdown => {
                            log!("signal received while disconnected");
                            return Ok(());
                        }
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            },
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn signals() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
