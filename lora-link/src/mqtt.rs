//! MQTT over mutual TLS for both ends of the link: the rustls client configuration (from
//! the workspace's one builder, `tls-client`: ring provider only, the node's own certificate)
//! re-exported for `lora-link rx` and `gateway`, and [`MqttSink`], the [`RecordSink`] with
//! which `lora-link rx` republishes verified records to the broker on its side.
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::ClientConfig;
pub use tls_client::{
    TlsFiles, TlsSetupError, certificate_identity, check_client_id, client_config,
};

use crate::records::Record;
use crate::rx::{FrameMeta, RecordSink};

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

    /// The counters, shared (for the metrics endpoint, which reads them from its thread).
    pub fn shared_counters(&self) -> Arc<SinkCounters> {
        Arc::clone(&self.counters)
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
    // Rejected frames are logged (rate-limited) by `rx::RejectLog`, not here.
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
}
