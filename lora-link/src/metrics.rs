//! Watching the link while it runs: the Prometheus text exposition (format 0.0.4), a tiny
//! loopback HTTP/1.1 responder for `GET /metrics`, and [`LogThrottle`], which keeps a flood of
//! forged frames from filling the journal. Used by `lora-link rx` and `gateway`.
//!
//! ```
//! use lora_link::metrics::Exposition;
//! let mut e = Exposition::new();
//! e.counter("lora_link_rx_frames_accepted_total", "Frames accepted.", 3);
//! e.labeled_counter("lora_link_rx_frames_rejected_total", "Frames rejected.", "reason",
//!     [("bad_mic", 2)]);
//! e.gauge("gateway_queue_depth", "Records waiting.", 0.0);
//! let text = e.render();
//! assert!(text.contains("# TYPE lora_link_rx_frames_accepted_total counter\n"));
//! assert!(text.contains("lora_link_rx_frames_rejected_total{reason=\"bad_mic\"} 2\n"));
//! ```
//!
//! The responder serves one connection at a time on its own thread: a request must arrive
//! whole (at most [`MAX_REQUEST`] bytes) within [`READ_DEADLINE`], so a client that never
//! finishes its request delays the next scrape by at most that long.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Largest request accepted (request line and headers).
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its whole request.
pub const READ_DEADLINE: Duration = Duration::from_secs(1);
/// Time a client has to take the answer.
pub const WRITE_DEADLINE: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

#[derive(Debug, Clone)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: Vec<(String, String)>,
}

/// Metrics being rendered in the text exposition format, version 0.0.4: every family with
/// its `# HELP` and `# TYPE` lines, counters named `..._total`.
#[derive(Debug, Clone, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

/// A label value escaped as the format wants (`\\`, `\"`, `\n`).
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text escaped (`\\`, `\n`).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

impl Exposition {
    /// Nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn family(&mut self, name: &str, help: &str, kind: Kind) -> &mut Family {
        debug_assert!(
            kind != Kind::Counter || name.ends_with("_total"),
            "counter {name} must end in _total"
        );
        self.families.push(Family {
            name: name.to_owned(),
            help: escape_help(help),
            kind,
            samples: Vec::new(),
        });
        let last = self.families.len() - 1;
        &mut self.families[last]
    }

    /// A counter (monotonic; `name` ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        let f = self.family(name, help, Kind::Counter);
        f.samples.push((String::new(), value.to_string()));
    }

    /// A counter with a fractional value (seconds; `name` ends in `_total`).
    pub fn counter_float(&mut self, name: &str, help: &str, value: f64) {
        let f = self.family(name, help, Kind::Counter);
        f.samples
            .push((String::new(), format!("{}", value.max(0.0))));
    }

    /// A counter with one label, one sample per value (none: the family is still declared).
    pub fn labeled_counter<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl IntoIterator<Item = (&'a str, u64)>,
    ) {
        let f = self.family(name, help, Kind::Counter);
        for (v, n) in values {
            f.samples.push((
                format!("{{{label}=\"{}\"}}", escape_label(v)),
                n.to_string(),
            ));
        }
    }

    /// A gauge (a value that goes up and down).
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let f = self.family(name, help, Kind::Gauge);
        let v = if value.is_finite() {
            format!("{value}")
        } else if value.is_nan() {
            "NaN".to_owned()
        } else if value > 0.0 {
            "+Inf".to_owned()
        } else {
            "-Inf".to_owned()
        };
        f.samples.push((String::new(), v));
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let kind = match f.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
            let _ = writeln!(out, "# TYPE {} {kind}", f.name);
            for (labels, v) in &f.samples {
                let _ = writeln!(out, "{}{labels} {v}", f.name);
            }
        }
        out
    }
}

/// The counters of `lora-link rx`: the receiver's, and the republisher's when there is one.
/// The same figures as its final JSON counters line.
pub fn rx_exposition(
    stats: &crate::link::RxStats,
    republisher: Option<&crate::mqtt::SinkCounters>,
) -> Exposition {
    let mut e = Exposition::new();
    e.counter(
        "lora_link_rx_frames_accepted_total",
        "Frames that verified (MIC, sender, counter) and were delivered (JSON: accepted).",
        stats.frames_accepted,
    );
    e.counter(
        "lora_link_rx_records_total",
        "Records delivered from accepted frames (JSON: records).",
        stats.records,
    );
    e.counter(
        "lora_link_rx_phy_crc_errors_total",
        "Packets the radio received with a PHY CRC error (JSON: phy_crc_errors).",
        stats.phy_crc_errors,
    );
    e.labeled_counter(
        "lora_link_rx_frames_rejected_total",
        "Frames rejected, by reason: bad_mic, replay, duplicate, unknown_sender, unknown_key, retired_key, topic_table_mismatch, not_for_us, out_of_window, truncated, ... (JSON: rejected).",
        "reason",
        stats.rejected.iter().map(|(r, n)| (*r, *n)),
    );
    if let Some(c) = republisher {
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
        e.counter(
            "lora_link_rx_republished_total",
            "Records handed to the broker connection (JSON: republished).",
            get(&c.published),
        );
        e.counter(
            "lora_link_rx_republish_acked_total",
            "Republished records the broker acknowledged (JSON: acked).",
            get(&c.acked),
        );
        e.counter(
            "lora_link_rx_republish_dropped_total",
            "Records the broker connection could not take (JSON: republish_dropped).",
            get(&c.dropped),
        );
        e.counter(
            "lora_link_rx_broker_connections_total",
            "Successful broker connections, the first one included (JSON: connections).",
            get(&c.connections),
        );
        e.counter(
            "lora_link_rx_broker_connection_errors_total",
            "Failed or lost broker connections (JSON: connection_errors).",
            get(&c.connection_errors),
        );
    }
    e
}

/// Why a metrics address is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Not a loopback address and remote access was not allowed.
    #[error(
        "--metrics {0}: not a loopback address; the counters endpoint has no authentication, so it listens on 127.0.0.1 or ::1 only (give 127.0.0.1:PORT, or add --metrics-allow-remote if a firewall protects this port)"
    )]
    NotLoopback(SocketAddr),
    /// The listener could not be opened.
    #[error("--metrics {addr}: cannot listen: {error} (is the port in use?)")]
    Bind {
        /// Address asked for.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
}

/// Refuses a non-loopback address unless `allow_remote`.
pub fn check_address(addr: SocketAddr, allow_remote: bool) -> Result<(), MetricsError> {
    if addr.ip().is_loopback() || allow_remote {
        Ok(())
    } else {
        Err(MetricsError::NotLoopback(addr))
    }
}

/// A running metrics endpoint; stops when dropped.
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Listens on `addr` (checked with [`check_address`]) and answers `GET /metrics` with
    /// what `render` returns, one connection at a time, on one thread.
    pub fn start(
        addr: SocketAddr,
        allow_remote: bool,
        render: impl Fn() -> String + Send + 'static,
    ) -> Result<Self, MetricsError> {
        check_address(addr, allow_remote)?;
        let bind = |error| MetricsError::Bind { addr, error };
        let listener = TcpListener::bind(addr).map_err(bind)?;
        listener.set_nonblocking(true).map_err(bind)?;
        let local = listener.local_addr().map_err(bind)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => serve_one(stream, &render),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "metrics: accept failed");
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
        });
        Ok(Self {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    /// The address it listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and joins the thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a request asked for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head: bool },
    NotFound,
    BadMethod,
    Bad,
}

fn parse_request(head: &[u8]) -> Request {
    let Some(line) = head.split(|&b| b == b'\n').next() else {
        return Request::Bad;
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Request::Bad;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let head = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::BadMethod,
    };
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Request::Metrics { head }
    } else {
        Request::NotFound
    }
}

/// Reads one request within [`READ_DEADLINE`] (in total, whatever the client's pace) and
/// answers it; every failure just closes the connection.
fn serve_one(mut stream: TcpStream, render: &dyn Fn() -> String) {
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let deadline = Instant::now() + READ_DEADLINE;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let request = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break parse_request(&buf[..end]);
        }
        if buf.len() > MAX_REQUEST {
            break Request::Bad;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            let _ = respond(&mut stream, "408 Request Timeout", "text/plain", b"", false);
            return;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                let _ = respond(&mut stream, "408 Request Timeout", "text/plain", b"", false);
                return;
            }
        }
    };
    let _ = stream.set_write_timeout(Some(WRITE_DEADLINE));
    let _ = match request {
        Request::Metrics { head } => respond(
            &mut stream,
            "200 OK",
            CONTENT_TYPE,
            render().as_bytes(),
            head,
        ),
        Request::NotFound => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            b"only GET /metrics is served here\n",
            false,
        ),
        Request::BadMethod => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET /metrics is served here\n",
            false,
        ),
        Request::Bad => respond(
            &mut stream,
            "400 Bad Request",
            "text/plain",
            b"bad request\n",
            false,
        ),
    };
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &[u8],
    head_only: bool,
) -> std::io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n",
        body.len(),
        if status.starts_with("405") {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

/// What [`LogThrottle::admit`] decided for one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Log it.
    Log,
    /// Do not log it: counted, reported later by [`LogThrottle::summary`].
    Suppress,
}

/// Rate limit for per-event log lines: a burst of `burst` lines, then one more line every
/// `refill`; what is suppressed is counted and reported at most once every `summary_every`
/// (and at the end), so a flood costs a bounded number of lines.
#[derive(Debug, Clone)]
pub struct LogThrottle {
    burst: u32,
    refill: Duration,
    summary_every: Duration,
    tokens: u32,
    last_refill: Instant,
    last_summary: Instant,
    suppressed: std::collections::BTreeMap<String, u64>,
}

impl Default for LogThrottle {
    /// 20 lines at once, then one every 5 s; a summary at most once a minute.
    fn default() -> Self {
        Self::new(20, Duration::from_secs(5), Duration::from_secs(60))
    }
}

impl LogThrottle {
    /// A burst of `burst` lines, one more per `refill`, summaries at most every `summary_every`.
    pub fn new(burst: u32, refill: Duration, summary_every: Duration) -> Self {
        let now = Instant::now();
        Self {
            burst: burst.max(1),
            refill: refill.max(Duration::from_millis(1)),
            summary_every,
            tokens: burst.max(1),
            last_refill: now,
            last_summary: now,
            suppressed: Default::default(),
        }
    }

    /// One event of kind `key` at `now`: log it or count it as suppressed.
    pub fn admit(&mut self, key: &str, now: Instant) -> Admit {
        let elapsed = now.saturating_duration_since(self.last_refill);
        let add = elapsed.as_nanos() / self.refill.as_nanos();
        if add > 0 {
            self.tokens = u32::try_from(u128::from(self.tokens) + add)
                .unwrap_or(u32::MAX)
                .min(self.burst);
            self.last_refill = if self.tokens == self.burst {
                now
            } else {
                self.last_refill + self.refill * u32::try_from(add).unwrap_or(u32::MAX)
            };
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            Admit::Log
        } else {
            *self.suppressed.entry(key.to_owned()).or_default() += 1;
            Admit::Suppress
        }
    }

    /// Events suppressed since the last summary, by key, if there are any and a summary is
    /// due at `now` (or `force`, at the end); the count restarts.
    pub fn summary(
        &mut self,
        now: Instant,
        force: bool,
    ) -> Option<std::collections::BTreeMap<String, u64>> {
        if self.suppressed.is_empty()
            || (!force && now.saturating_duration_since(self.last_summary) < self.summary_every)
        {
            return None;
        }
        self.last_summary = now;
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_and_help_are_escaped() {
        let mut e = Exposition::new();
        e.labeled_counter("x_total", "a\\b\nc", "r", [("q\"\\\n", 1)]);
        let t = e.render();
        assert_eq!(
            t,
            "# HELP x_total a\\\\b\\nc\n# TYPE x_total counter\nx_total{r=\"q\\\"\\\\\\n\"} 1\n"
        );
    }

    #[test]
    fn requests_are_parsed_strictly() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Request::Metrics { head: false }
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0"),
            Request::Metrics { head: false }
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1"), Request::NotFound);
        assert_eq!(parse_request(b"POST /metrics HTTP/1.1"), Request::BadMethod);
        assert_eq!(parse_request(b"GET /metrics"), Request::Bad);
        assert_eq!(parse_request(b"\xff\xfe"), Request::Bad);
    }

    #[test]
    fn the_throttle_allows_a_burst_then_one_per_refill_and_counts_the_rest() {
        let mut t = LogThrottle::new(3, Duration::from_secs(1), Duration::from_secs(10));
        let t0 = Instant::now();
        let logged = (0..100)
            .filter(|_| t.admit("bad_mic", t0) == Admit::Log)
            .count();
        assert_eq!(logged, 3);
        assert_eq!(t.summary(t0, false), None, "not due yet");
        assert_eq!(
            t.admit("replay", t0 + Duration::from_millis(1500)),
            Admit::Log
        );
        assert_eq!(
            t.admit("replay", t0 + Duration::from_millis(1600)),
            Admit::Suppress
        );
        let s = t.summary(t0 + Duration::from_secs(11), false).expect("due");
        assert_eq!((s["bad_mic"], s["replay"]), (97, 1));
        assert_eq!(t.summary(t0 + Duration::from_secs(30), true), None);
    }

    #[test]
    fn non_loopback_addresses_are_refused_unless_allowed() {
        let remote: SocketAddr = "0.0.0.0:9100".parse().expect("addr");
        assert!(check_address(remote, false).is_err());
        assert!(check_address(remote, true).is_ok());
        assert!(check_address("[::1]:9100".parse().expect("addr"), false).is_ok());
    }
}
