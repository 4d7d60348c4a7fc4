//! The gateway on Pi #1: MQTT (mutual TLS, its own client certificate) in, secure LoRa frames
//! out.
//!
//! * [`forward`]: the radio side, a thread that owns the [`lora_link::LinkSender`] and the
//!   [`lora_link::radio::Radio`]: it queues records, transmits within the duty-cycle budget and
//!   counts everything it sends, queues and drops ([`Counters`]).
//! * [`bridge`]: the MQTT side on tokio: connect, subscribe to the manifest's filters,
//!   reconnect with back-off, hand every message to the radio thread, stop on SIGINT/SIGTERM.
//!
//! * [`agent`]: `gateway broker-agent`, which keeps this machine's mosquitto in step with the
//!   bench (signed updates of its ACL, CRL and certificate).
//!
//! The configuration is one file, [`manifests::gateway::GatewayManifest`].

pub mod agent;
pub mod bridge;
pub mod cli;
pub mod forward;

use std::time::Duration;

use lora_link::link::TxStats;
use serde::Serialize;

/// Everything the gateway counts; printed as one JSON line at shutdown and written to the
/// manifest's `counters_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// MQTT messages received from the broker.
    pub received: u64,
    /// Records accepted into the radio queue.
    pub queued: u64,
    /// Records transmitted (inside `frames_sent` frames).
    pub sent: u64,
    /// Frames transmitted.
    pub frames_sent: u64,
    /// Records dropped because the queue was full (the oldest goes).
    pub dropped_queue_full: u64,
    /// Records refused: larger than one frame at this spreading factor.
    pub rejected_too_large: u64,
    /// Records refused: not encodable (e.g. a topic over 127 bytes not in the topic table).
    pub rejected_invalid: u64,
    /// Records lost because the radio failed to transmit their frame.
    pub dropped_radio_error: u64,
    /// Records still queued when the gateway stopped (the duty-cycle budget did not allow
    /// them within the shutdown grace period).
    pub dropped_at_shutdown: u64,
    /// Records waiting in the queue now.
    pub waiting: u64,
    /// Bytes transmitted.
    pub bytes_on_air: u64,
    /// Time on air, microseconds.
    pub airtime_us: u64,
    /// Radio transmit errors.
    pub radio_errors: u64,
    /// Successful broker connections (the first one included).
    pub connections: u64,
    /// Failed or lost broker connections.
    pub connection_errors: u64,
    /// Duty-cycle budget left in the sliding hour, microseconds of airtime.
    pub duty_cycle_left_us: u64,
}

impl Counters {
    /// Copies the link sender's counters in.
    pub fn update_from(&mut self, s: &TxStats, waiting: usize) {
        self.queued = s.records_queued;
        self.sent = s.records_sent;
        self.frames_sent = s.frames_sent;
        self.dropped_queue_full = s.dropped_queue_full;
        self.rejected_too_large = s.rejected_too_large;
        self.rejected_invalid = s.rejected_invalid;
        self.bytes_on_air = s.bytes_on_air;
        self.airtime_us = u64::try_from(s.airtime.as_micros()).unwrap_or(u64::MAX);
        self.waiting = waiting as u64;
    }

    /// Every record received is accounted for: sent, dropped, refused or still waiting.
    pub fn balanced(&self) -> bool {
        self.received
            == self.sent
                + self.dropped_queue_full
                + self.rejected_too_large
                + self.rejected_invalid
                + self.dropped_radio_error
                + self.dropped_at_shutdown
                + self.waiting
    }

    /// The same figures in the Prometheus text format (`gateway --metrics ADDR`).
    pub fn exposition(&self) -> lora_link::metrics::Exposition {
        let mut e = lora_link::metrics::Exposition::new();
        e.counter(
            "gateway_mqtt_messages_received_total",
            "MQTT messages received from the broker (JSON: received).",
            self.received,
        );
        e.counter(
            "gateway_records_queued_total",
            "Records accepted into the radio queue (JSON: queued).",
            self.queued,
        );
        e.counter(
            "gateway_records_sent_total",
            "Records transmitted over LoRa (JSON: sent).",
            self.sent,
        );
        e.counter(
            "gateway_frames_sent_total",
            "LoRa frames transmitted (JSON: frames_sent).",
            self.frames_sent,
        );
        e.labeled_counter(
            "gateway_records_dropped_total",
            "Records lost after queueing, by reason: queue_full (the oldest goes), radio_error, shutdown (JSON: dropped_queue_full, dropped_radio_error, dropped_at_shutdown).",
            "reason",
            [
                ("queue_full", self.dropped_queue_full),
                ("radio_error", self.dropped_radio_error),
                ("shutdown", self.dropped_at_shutdown),
            ],
        );
        e.labeled_counter(
            "gateway_records_rejected_total",
            "Records refused, by reason: too_large (for one frame at this spreading factor), invalid (not encodable) (JSON: rejected_too_large, rejected_invalid).",
            "reason",
            [
                ("too_large", self.rejected_too_large),
                ("invalid", self.rejected_invalid),
            ],
        );
        e.gauge(
            "gateway_queue_depth",
            "Records waiting in the radio queue (JSON: waiting).",
            self.waiting as f64,
        );
        e.counter(
            "gateway_bytes_on_air_total",
            "Bytes transmitted (JSON: bytes_on_air).",
            self.bytes_on_air,
        );
        e.counter_float(
            "gateway_airtime_seconds_total",
            "Time on air of the frames transmitted, seconds (JSON: airtime_us).",
            self.airtime_us as f64 / 1e6,
        );
        e.gauge(
            "gateway_duty_cycle_budget_left_seconds",
            "Airtime the duty-cycle budget still allows in the sliding hour, seconds (JSON: duty_cycle_left_us).",
            self.duty_cycle_left_us as f64 / 1e6,
        );
        e.counter(
            "gateway_radio_errors_total",
            "Radio transmit errors (JSON: radio_errors).",
            self.radio_errors,
        );
        e.counter(
            "gateway_broker_connections_total",
            "Successful broker connections, the first one included (JSON: connections).",
            self.connections,
        );
        e.counter(
            "gateway_broker_connection_errors_total",
            "Failed or lost broker connections; each is followed by a reconnection attempt (JSON: connection_errors).",
            self.connection_errors,
        );
        e
    }

    /// One JSON line.
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

/// Writes the counters file atomically, mode 0644, through an unpredictable `O_EXCL`
/// temporary: a link planted in the state directory is replaced, never written through.
pub fn write_counters(path: &std::path::Path, c: &Counters) -> std::io::Result<()> {
    let line = format!("{}\n", c.to_json_line());
    safe_fs::replace(path, line.as_bytes(), &safe_fs::Replace::new(0o644))
}

/// How long the radio thread keeps transmitting queued records after a stop request.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Most rejected records logged one by one: 20 lines at once, then one every 5 s; the rest
/// are summarised at most once a minute (a flood of oversized messages cannot fill the
/// journal).
pub fn reject_throttle() -> lora_link::metrics::LogThrottle {
    lora_link::metrics::LogThrottle::default()
}

/// Logs one line on stderr, prefixed with `gateway:`. Topics and errors come from the broker
/// and the devices: control characters are escaped before they reach a terminal or journal.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("gateway: {}", manifests::text::escape_max(&format!($($arg)*), 4096))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_counters_file_replaces_a_planted_link_instead_of_writing_through_it() {
        let d = tempfile::tempdir().expect("dir");
        let victim = d.path().join("victim");
        std::fs::write(&victim, "untouched").expect("victim");
        let path = d.path().join("counters.json");
        for p in [path.clone(), path.with_extension("json.tmp")] {
            std::os::unix::fs::symlink(&victim, p).expect("plant");
        }
        write_counters(&path, &Counters::default()).expect("write");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "untouched"
        );
        let text = std::fs::read_to_string(&path).expect("counters");
        assert!(text.starts_with('{'), "{text}");
    }
}
