//! The sensor application as a state machine, free of I/O: the platform reports events
//! (configured, connected, connection lost, acknowledgements) with a monotonic time in
//! milliseconds and asks [`SensorApp::poll`] what to do next. The MQTT client and the TLS
//! stack live in the platform; this module decides when to connect, when to publish with
//! which QoS and retain flag, and how long to back off after a failure.

/// MQTT quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    /// QoS 0: fire and forget.
    AtMostOnce,
    /// QoS 1: acknowledged by PUBACK, may be duplicated.
    AtLeastOnce,
    /// QoS 2: PUBREC / PUBREL / PUBCOMP, exactly once.
    ExactlyOnce,
}

impl Qos {
    /// From the wire value 0, 1 or 2.
    pub fn from_u8(v: u8) -> Option<Qos> {
        match v {
            0 => Some(Qos::AtMostOnce),
            1 => Some(Qos::AtLeastOnce),
            2 => Some(Qos::ExactlyOnce),
            _ => None,
        }
    }
}

/// What the application needs from its configuration blob (the platform parses the blob).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Milliseconds between two rounds of readings.
    pub interval_ms: u64,
    /// QoS of the readings.
    pub qos: Qos,
    /// Retain flag of the readings.
    pub retain: bool,
    /// MQTT keep-alive, seconds (0 = off).
    pub keep_alive_s: u16,
    /// Clean session flag.
    pub clean_session: bool,
}

/// Exponential back-off between connection attempts: `initial`, doubling up to `max`, with
/// up to a quarter taken off by caller-supplied jitter so a fleet does not reconnect in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial_ms: u64,
    max_ms: u64,
    attempt: u32,
}

impl Backoff {
    /// A back-off from `initial_ms` to `max_ms`.
    pub const fn new(initial_ms: u64, max_ms: u64) -> Self {
        Backoff {
            initial_ms,
            max_ms,
            attempt: 0,
        }
    }

    /// Failures since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Delay before the next attempt; `jitter` is any random number (0 = none).
    pub fn next_delay_ms(&mut self, jitter: u32) -> u64 {
        let shift = self.attempt.min(20);
        let d = self
            .initial_ms
            .saturating_mul(1u64 << shift)
            .min(self.max_ms);
        self.attempt = self.attempt.saturating_add(1);
        d - u64::from(jitter) % (d / 4 + 1)
    }

    /// Called after a successful connection.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Where the application stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No (valid) configuration blob: nothing to do.
    Unconfigured,
    /// Waiting to (re)connect at the given time.
    Disconnected {
        /// When the next attempt may start.
        retry_at_ms: u64,
    },
    /// A connection attempt is under way.
    Connecting,
    /// Connected; the next round of readings is due at the given time.
    Connected {
        /// When to publish next.
        next_publish_ms: u64,
    },
}

/// What the platform should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the given time (or until an event arrives).
    WaitUntil(u64),
    /// Open the TLS connection and send CONNECT with the schedule's keep-alive and clean
    /// session flag.
    Connect {
        /// Keep-alive seconds.
        keep_alive_s: u16,
        /// Clean session flag.
        clean_session: bool,
    },
    /// Take one round of readings and publish each with this QoS and retain flag.
    Publish {
        /// QoS.
        qos: Qos,
        /// Retain.
        retain: bool,
    },
    /// Send PINGREQ: nothing was sent for a keep-alive period.
    Ping,
    /// Nothing ever: unconfigured.
    Idle,
}

/// Most QoS 1/2 messages awaiting acknowledgement; beyond it readings are dropped (counted).
pub const MAX_IN_FLIGHT: usize = 16;

/// Counters for diagnostics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Readings handed to the MQTT client.
    pub published: u32,
    /// QoS 1/2 messages fully acknowledged.
    pub acknowledged: u32,
    /// Readings dropped because too many were awaiting acknowledgement.
    pub dropped: u32,
    /// Connections established.
    pub connections: u32,
    /// Connection attempts that failed or connections that were lost.
    pub failures: u32,
}

/// The sensor application.
#[derive(Debug, Clone)]
pub struct SensorApp {
    schedule: Option<Schedule>,
    state: State,
    backoff: Backoff,
    last_sent_ms: u64,
    in_flight: [Option<(u16, Qos, bool)>; MAX_IN_FLIGHT],
    counters: Counters,
}

impl SensorApp {
    /// An unconfigured application that backs off from 1 s to 60 s.
    pub const fn new() -> Self {
        Self::with_backoff(Backoff::new(1_000, 60_000))
    }

    /// An unconfigured application with the given back-off.
    pub const fn with_backoff(backoff: Backoff) -> Self {
        SensorApp {
            schedule: None,
            state: State::Unconfigured,
            backoff,
            last_sent_ms: 0,
            in_flight: [None; MAX_IN_FLIGHT],
            counters: Counters {
                published: 0,
                acknowledged: 0,
                dropped: 0,
                connections: 0,
                failures: 0,
            },
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Counters.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// The schedule in force.
    pub fn schedule(&self) -> Option<Schedule> {
        self.schedule
    }

    /// A (new) configuration: connect now, with a fresh back-off. A running connection must be
    /// dropped by the platform first, since keep-alive or clean session may have changed.
    pub fn configure(&mut self, schedule: Schedule, now_ms: u64) {
        self.schedule = Some(schedule);
        self.backoff.reset();
        self.in_flight = [None; MAX_IN_FLIGHT];
        self.state = State::Disconnected {
            retry_at_ms: now_ms,
        };
    }

    /// The configuration was deleted or is invalid.
    pub fn unconfigure(&mut self) {
        self.schedule = None;
        self.state = State::Unconfigured;
    }

    /// What to do at `now_ms`.
    pub fn poll(&mut self, now_ms: u64) -> Action {
        let Some(s) = self.schedule else {
            return Action::Idle;
        };
        match self.state {
            State::Unconfigured => Action::Idle,
            State::Disconnected { retry_at_ms } if now_ms >= retry_at_ms => {
                self.state = State::Connecting;
                Action::Connect {
                    keep_alive_s: s.keep_alive_s,
                    clean_session: s.clean_session,
                }
            }
            State::Disconnected { retry_at_ms } => Action::WaitUntil(retry_at_ms),
            State::Connecting => Action::WaitUntil(u64::MAX),
            State::Connected { next_publish_ms } => {
                if now_ms >= next_publish_ms {
                    // Skip missed rounds rather than bursting to catch up.
                    let mut next = next_publish_ms.saturating_add(s.interval_ms);
                    if next <= now_ms {
                        next = now_ms.saturating_add(s.interval_ms);
                    }
                    self.state = State::Connected {
                        next_publish_ms: next,
                    };
                    return Action::Publish {
                        qos: s.qos,
                        retain: s.retain,
                    };
                }
                let ka_ms = u64::from(s.keep_alive_s) * 1000;
                if ka_ms > 0 && now_ms >= self.last_sent_ms.saturating_add(ka_ms) {
                    self.last_sent_ms = now_ms;
                    return Action::Ping;
                }
                let ping_at = if ka_ms > 0 {
                    self.last_sent_ms.saturating_add(ka_ms)
                } else {
                    u64::MAX
                };
                Action::WaitUntil(next_publish_ms.min(ping_at))
            }
        }
    }

    /// The broker accepted the connection (CONNACK success). Publishing starts at once.
    pub fn on_connected(&mut self, now_ms: u64) {
        if self.schedule.is_none() {
            return;
        }
        self.backoff.reset();
        self.counters.connections += 1;
        self.last_sent_ms = now_ms;
        if self.schedule.is_some_and(|s| s.clean_session) {
            // A clean session forgets unacknowledged messages on the broker side too.
            self.in_flight = [None; MAX_IN_FLIGHT];
        }
        self.state = State::Connected {
            next_publish_ms: now_ms,
        };
    }

    /// A connection attempt failed or the connection was lost; returns the back-off delay.
    pub fn on_connection_lost(&mut self, now_ms: u64, jitter: u32) -> u64 {
        if self.schedule.is_none() {
            return 0;
        }
        self.counters.failures += 1;
        let delay = self.backoff.next_delay_ms(jitter);
        self.state = State::Disconnected {
            retry_at_ms: now_ms.saturating_add(delay),
        };
        delay
    }

    /// A reading was handed to the client. QoS 1/2 readings are tracked by packet id until
    /// acknowledged; returns `false` (and counts a drop) when [`MAX_IN_FLIGHT`] are pending,
    /// in which case the platform should not send it.
    pub fn on_publish(&mut self, now_ms: u64, packet_id: u16, qos: Qos) -> bool {
        if qos != Qos::AtMostOnce {
            match self.in_flight.iter_mut().find(|s| s.is_none()) {
                Some(slot) => *slot = Some((packet_id, qos, false)),
                None => {
                    self.counters.dropped += 1;
                    return false;
                }
            }
        }
        self.last_sent_ms = now_ms;
        self.counters.published += 1;
        true
    }

    /// Whether a reading could be sent now without exceeding [`MAX_IN_FLIGHT`].
    pub fn can_publish(&self, qos: Qos) -> bool {
        qos == Qos::AtMostOnce || self.in_flight.iter().any(Option::is_none)
    }

    /// Number of QoS 1/2 messages awaiting acknowledgement.
    pub fn in_flight(&self) -> usize {
        self.in_flight.iter().flatten().count()
    }

    /// PUBACK (QoS 1) received.
    pub fn on_puback(&mut self, packet_id: u16) {
        self.finish(packet_id, Qos::AtLeastOnce);
    }

    /// PUBREC (QoS 2, first half) received: the broker has the message; PUBCOMP is next.
    pub fn on_pubrec(&mut self, packet_id: u16) {
        for (id, qos, rec) in self.in_flight.iter_mut().flatten() {
            if *id == packet_id && *qos == Qos::ExactlyOnce {
                *rec = true;
            }
        }
    }

    /// PUBCOMP (QoS 2 done) received.
    pub fn on_pubcomp(&mut self, packet_id: u16) {
        self.finish(packet_id, Qos::ExactlyOnce);
    }

    fn finish(&mut self, packet_id: u16, qos: Qos) {
        for slot in self.in_flight.iter_mut() {
            if matches!(slot, Some((id, q, _)) if *id == packet_id && *q == qos) {
                *slot = None;
                self.counters.acknowledged += 1;
            }
        }
    }

    /// Whether a QoS 2 message has reached PUBREC.
    pub fn is_received(&self, packet_id: u16) -> bool {
        self.in_flight
            .iter()
            .flatten()
            .any(|&(id, _, rec)| id == packet_id && rec)
    }
}

impl Default for SensorApp {
    fn default() -> Self {
        Self::new()
    }
}
