//! Microchip's kit protocol (plus the firmware's `fw` store target) over a serial port.
//!
//! Lines go out as `command\n`; each gets one reply line `SS(hex)` where `SS` is a status
//! byte in hex. The board relays `E:t(packet)` to the chip and answers with the chip's
//! response frame; the host checks that frame's CRC and status itself.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serialport::SerialPort;

use atecc::client::{Client, ClientError};
use atecc::config::{ConfigZone, OTP_SIZE};
use atecc::opcode::{LockTarget, Zone};
use atecc::packet::Command;
use manifests::device::DeviceConfig;

use super::{Board, Caps, LinkError, Op};

/// Longest reply line accepted (a 4 KiB blob chunk is far shorter).
pub const MAX_LINE: usize = 8192;
/// Largest blob chunk the firmware accepts per `fw:put` / `fw:get`.
const CHUNK: usize = 256;
/// The chip falls asleep 1.3 s after a wake; re-wake well before.
const REWAKE_AFTER: Duration = Duration::from_millis(900);
/// Wait for one reply line: the longest reply (a 256-byte chunk, ~45 ms at 115200 baud) plus
/// the slowest chip command (GenKey, 115 ms maximum) with a wide margin.
const LINE_TIMEOUT: Duration = Duration::from_millis(700);
/// Sends of one line before giving up (a noisy line garbles a command or its reply).
const ATTEMPTS: u32 = 6;
/// Wakes tried when the chip is reported silent (see [`KitLink::wake`]).
const WAKE_ATTEMPTS: u32 = 3;
/// All the attempts at one command, resynchronisations included, end within this.
const COMMAND_LIMIT: Duration = Duration::from_secs(6);
/// Draining what the board sends ends when it has been quiet for one read timeout (50 ms);
/// a board still sending after this never waits for a command: an error.
const DRAIN_LIMIT: Duration = Duration::from_millis(400);
/// Largest blob read back (the firmware keeps blobs of at most 4 KiB).
const MAX_BLOB_READ: usize = 64 * 1024;
/// Bytes kept of what the board sent while connecting, to tell which firmware it runs.
const SEEN_LIMIT: usize = 4096;
/// How long a board that does not speak the kit protocol is given to answer Mongoose OS's
/// ready question (it answers at once; its log chatter comes every second or so).
const PROBE_WAIT: Duration = Duration::from_millis(600);

/// One board's whole provisioning (every run and retry) at 115200 baud or faster: a run
/// takes a few seconds, so this only ends a line too noisy to get through.
pub const BOARD_LIMIT: Duration = Duration::from_secs(60);

/// [`BOARD_LIMIT`] scaled to `baud`: slower lines get proportionally longer.
pub fn board_limit(baud: u32) -> Duration {
    let factor = (115_200 / baud.max(1)).max(1);
    BOARD_LIMIT * factor.min(100)
}

/// A board reached through the kit protocol.
pub struct KitLink {
    port: Box<dyn SerialPort>,
    path: String,
    timeout: Duration,
    last_wake: Option<Instant>,
    pending: LineReader,
    /// Nothing is read after this: every retry of every command of this link ends by then.
    deadline: Instant,
    /// Lines sent and bytes moved, for the report.
    pub stats: LinkStats,
    /// The first bytes the board sent (bounded), kept until the link is up: they tell
    /// another firmware (Mongoose OS logs `mgos_...` lines) from a kit board.
    seen: Option<Vec<u8>>,
}

/// Traffic counters.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct LinkStats {
    /// Command lines sent.
    pub lines: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Lines sent again after a lost or garbled exchange.
    pub retries: u64,
    /// Of those, sent again at once because the board said it dropped the request (Mongoose
    /// OS logs `Corrupted frame` or `Incoming frame is too big`), not after a silence.
    pub resent_on_report: u64,
    /// Chip commands sent.
    pub chip_commands: u64,
    /// Sum of the datasheet's typical execution times of those commands, in microseconds (on
    /// Mongoose OS, as its cryptoauthlib polls for them: [`super::mos::polled_us`]).
    pub chip_typical_us: u64,
}

impl LinkStats {
    /// Adds another run's counters.
    pub fn add(&mut self, o: &LinkStats) {
        self.lines += o.lines;
        self.bytes_out += o.bytes_out;
        self.bytes_in += o.bytes_in;
        self.retries += o.retries;
        self.resent_on_report += o.resent_on_report;
        self.chip_commands += o.chip_commands;
        self.chip_typical_us += o.chip_typical_us;
    }

    /// The physical floor of this traffic at `baud`: every byte's 10 bit times, both
    /// directions one after the other (request, then reply), plus the chip's typical
    /// execution times, in seconds.
    pub fn floor_s(&self, baud: u32) -> f64 {
        (self.bytes_out + self.bytes_in) as f64 * 10.0 / f64::from(baud.max(1))
            + self.chip_typical_us as f64 / 1e6
    }
}

/// Printable, bounded text of an untrusted reply (for messages): at most 120 characters of
/// it, control characters escaped ([`super::text::escape`]), `...` when cut.
pub fn sanitize(s: &str) -> String {
    super::text::escape_max(s, 120)
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    hex::decode(s).ok()
}

/// CRC-32 (zlib), as the firmware checks on `fw:commit`.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// One reply line, split: the head before the parenthesis and the payload inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// `SS` (a status byte in hex) or a text head (`fw:info` answers `version=...`).
    pub head: String,
    /// Hex-decoded payload when the head is a status byte, the raw text otherwise.
    pub data: Vec<u8>,
}

/// Parses one reply line `head(payload)`. `None` when the line is not of that shape or a
/// status reply's payload is not hex.
pub fn parse_reply(line: &str) -> Option<Reply> {
    let open = line.find('(')?;
    let body = line[open + 1..].strip_suffix(')')?;
    let head = line[..open].to_string();
    let data = if head.len() == 2 && u8::from_str_radix(&head, 16).is_ok() {
        from_hex(body)?
    } else {
        body.as_bytes().to_vec()
    };
    Some(Reply { head, data })
}

/// A status reply's outcome: the payload when the status is 0, otherwise the refusal's reason
/// (the firmware's code in words, with its detail text if any). `None` if the head is not a
/// status byte.
pub fn parse_status(reply: Reply) -> Option<Result<Vec<u8>, String>> {
    let code = u8::from_str_radix(&reply.head, 16)
        .ok()
        .filter(|_| reply.head.len() == 2)?;
    if code == 0 {
        return Some(Ok(reply.data));
    }
    let detail = String::from_utf8(reply.data)
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| format!(" ({})", sanitize(&t)))
        .unwrap_or_default();
    Some(Err(format!("{}{detail}", fw_reason(code))))
}

/// Splits the bytes read from the port into reply lines: `\n`-terminated, trimmed of CR and
/// NUL, empty lines skipped, lossy UTF-8. A line longer than [`MAX_LINE`] without its end is
/// an error and the buffer starts over.
#[derive(Debug, Default)]
pub struct LineReader {
    pending: Vec<u8>,
}

impl LineReader {
    /// Appends bytes read from the port.
    pub fn push(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    /// The next complete line, `Ok(None)` if none yet, `Err(())` when the buffer holds more
    /// than [`MAX_LINE`] bytes without a line end (it is cleared).
    #[allow(clippy::result_unit_err)]
    pub fn next_line(&mut self) -> Result<Option<String>, ()> {
        while let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=pos).collect();
            let text = String::from_utf8_lossy(&line)
                .trim_matches(|c| c == '\r' || c == '\n' || c == '\0')
                .to_string();
            if !text.is_empty() {
                return Ok(Some(text));
            }
        }
        if self.pending.len() > MAX_LINE {
            self.pending.clear();
            return Err(());
        }
        Ok(None)
    }

    /// Forgets what was received.
    pub fn clear(&mut self) {
        self.pending.clear();
    }
}

fn fw_reason(code: u8) -> &'static str {
    match code {
        0xE1 => "the chip did not answer",
        0xE2 => "malformed command",
        0xE3 => "unknown command (is this the provisioning firmware?)",
        0xE4 => "line too long",
        0xE5 => "no chip selected",
        0xF0 => "invalid blob name",
        0xF1 => "no such blob",
        0xF2 => "blob too large for the device",
        0xF3 => "device store full",
        0xF4 => "wrong upload offset",
        0xF5 => "length or CRC mismatch: the upload was damaged on the wire",
        0xF6 => "read past the end",
        0xF7 => "device storage failure",
        _ => "error",
    }
}

impl KitLink {
    /// Opens the port and checks a kit-protocol board with an ATECC508A answers; the link
    /// gives up [`board_limit`] from now.
    pub fn connect(path: &str, baud: u32) -> Result<KitLink, LinkError> {
        Self::connect_until(path, baud, Instant::now() + board_limit(baud))
    }

    /// As [`KitLink::connect`]; nothing is read after `deadline` (every command fails with
    /// [`LinkError::Deadline`] then).
    pub fn connect_until(path: &str, baud: u32, deadline: Instant) -> Result<KitLink, LinkError> {
        if Instant::now() >= deadline {
            return Err(LinkError::Deadline {
                port: path.to_string(),
                command: "connect".into(),
            });
        }
        let port = super::port::open(path, baud)?;
        let mut link = KitLink {
            port,
            path: path.to_string(),
            timeout: Duration::from_secs(2),
            last_wake: None,
            pending: LineReader::default(),
            deadline,
            stats: LinkStats::default(),
            seen: Some(Vec::new()),
        };
        // A partial line left by an earlier session ends here; its error reply is skipped.
        link.send_raw(b"\n")?;
        std::thread::sleep(Duration::from_millis(5));
        link.drain()?;
        let name = match link.exchange("board:device(00)") {
            Ok(reply) => reply.head,
            // Silence or text that is not the kit protocol: another firmware? Saying which
            // (and the option that speaks it) beats four runs into the same wall.
            Err(e @ (LinkError::Timeout { .. } | LinkError::Protocol { .. })) => {
                return Err(link.other_firmware().unwrap_or(e));
            }
            Err(e) => return Err(e),
        };
        link.seen = None;
        if !name.contains("508") {
            return Err(LinkError::Protocol {
                port: link.path.clone(),
                command: "board:device(00)".into(),
                answer: format!("{} (this tool supports the ATECC508A)", sanitize(&name)),
            });
        }
        link.expect_ok("E:physical:select(C0)")?;
        link.timeout = LINE_TIMEOUT;
        link.wake()?;
        Ok(link)
    }

    /// Keeps the start of what the board sent while connecting (bounded).
    fn keep_seen(&mut self, data: &[u8]) {
        if let Some(seen) = &mut self.seen {
            let room = SEEN_LIMIT.saturating_sub(seen.len());
            seen.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// A board that does not answer the kit protocol: is it running Mongoose OS? Its log lines
    /// (`mgos_...`, `Mongoose OS`) or its RPC framing (`"""` delimiters, JSON frames) in what
    /// it sent, or an answer to the ready question of its RPC-over-UART channel (a frame of
    /// 0x04, which `mos` sends before every request; harmless to any other firmware).
    fn other_firmware(&mut self) -> Option<LinkError> {
        if self.send_raw(b"\n\"\"\"\x04\"\"\"\n").is_ok() {
            let until = (Instant::now() + PROBE_WAIT).min(self.deadline);
            let mut decoder = super::mos::Decoder::new(SEEN_LIMIT);
            let mut tokens = Vec::new();
            let mut buf = [0u8; 512];
            decoder.push(self.seen.as_deref().unwrap_or_default(), &mut tokens);
            while Instant::now() < until && !tokens.iter().any(mos_token) {
                match self.port.read(&mut buf) {
                    Ok(n) => {
                        self.stats.bytes_in += n as u64;
                        self.keep_seen(&buf[..n]);
                        decoder.push(&buf[..n], &mut tokens);
                    }
                    Err(e)
                        if e.kind() == std::io::ErrorKind::TimedOut
                            || e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            if tokens.iter().any(mos_token) {
                let how = match tokens.iter().find_map(log_of_mongoose) {
                    Some(line) => format!(
                        "it answered the ready question of Mongoose OS's RPC over UART; it logs `{line}`"
                    ),
                    None => "it answered the ready question of Mongoose OS's RPC over UART".into(),
                };
                return Some(self.runs_mongoose(&how));
            }
            if let Some(line) = tokens.iter().find_map(log_of_mongoose) {
                return Some(self.runs_mongoose(&format!("it logs `{line}`")));
            }
        }
        None
    }

    fn runs_mongoose(&self, how: &str) -> LinkError {
        LinkError::OtherFirmware {
            port: self.path.clone(),
            found: format!(
                "this board runs Mongoose OS ({how}), not the provisioning firmware's kit protocol"
            ),
            fix: "--transport mos",
        }
    }

    /// Throws away what the board sends until it is quiet for one read timeout. A board that
    /// is never quiet (an endless stream) is an error after [`DRAIN_LIMIT`].
    fn drain(&mut self) -> Result<(), LinkError> {
        let start = Instant::now();
        let mut buf = [0u8; 512];
        let mut bytes = 0u64;
        loop {
            match self.port.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    bytes += n as u64;
                    self.stats.bytes_in += n as u64;
                    self.keep_seen(&buf[..n]);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(LinkError::Io {
                        port: self.path.clone(),
                        source,
                    });
                }
            }
            if start.elapsed() > DRAIN_LIMIT {
                self.pending.clear();
                return Err(LinkError::Flood {
                    port: self.path.clone(),
                    bytes,
                    ms: start.elapsed().as_millis() as u64,
                });
            }
        }
        self.pending.clear();
        Ok(())
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Result<(), LinkError> {
        self.port.write_all(bytes).map_err(|source| LinkError::Io {
            port: self.path.clone(),
            source,
        })?;
        self.stats.bytes_out += bytes.len() as u64;
        Ok(())
    }

    fn read_line(&mut self, command: &str) -> Result<String, LinkError> {
        let deadline = (Instant::now() + self.timeout).min(self.deadline);
        let mut buf = [0u8; 512];
        loop {
            match self.pending.next_line() {
                Ok(Some(line)) => return Ok(line),
                Ok(None) => {}
                Err(()) => {
                    return Err(LinkError::Protocol {
                        port: self.path.clone(),
                        command: command.into(),
                        answer: format!("a line longer than {MAX_LINE} bytes"),
                    });
                }
            }
            if Instant::now() > deadline {
                if deadline == self.deadline {
                    return Err(LinkError::Deadline {
                        port: self.path.clone(),
                        command: command.into(),
                    });
                }
                return Err(LinkError::Timeout {
                    port: self.path.clone(),
                    command: command.into(),
                    ms: self.timeout.as_millis() as u64,
                });
            }
            match self.port.read(&mut buf) {
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    self.keep_seen(&buf[..n]);
                    self.pending.push(&buf[..n]);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(source) => {
                    return Err(LinkError::Io {
                        port: self.path.clone(),
                        source,
                    });
                }
            }
        }
    }

    /// Sends one line; returns the reply's head (before the parenthesis) and its payload.
    fn exchange(&mut self, command: &str) -> Result<Reply, LinkError> {
        let short: String = command.chars().take(40).collect();
        self.send_raw(format!("{command}\n").as_bytes())?;
        self.stats.lines += 1;
        let line = self.read_line(&short)?;
        parse_reply(&line).ok_or_else(|| LinkError::Protocol {
            port: self.path.clone(),
            command: short,
            answer: sanitize(&line),
        })
    }

    /// Sends a line whose reply must be `SS(...)`; a non-zero status is a refusal. A reply
    /// that is lost or garbled, or a refusal saying the line arrived garbled, sends it again.
    /// At most [`ATTEMPTS`] sends within [`COMMAND_LIMIT`].
    fn status_exchange(&mut self, command: &str) -> Result<Vec<u8>, LinkError> {
        self.status_exchange_until(command, Instant::now() + COMMAND_LIMIT)
    }

    /// At most [`ATTEMPTS`] sends, none started after `until`.
    fn status_exchange_until(
        &mut self,
        command: &str,
        until: Instant,
    ) -> Result<Vec<u8>, LinkError> {
        let mut attempt = 1;
        loop {
            let again = attempt < ATTEMPTS && Instant::now() < until;
            match self.status_exchange_once(command) {
                Err(LinkError::Timeout { .. } | LinkError::Protocol { .. }) if again => {}
                Err(LinkError::Refused { ref reason, .. })
                    if again
                        && (reason.starts_with(fw_reason(0xE2))
                            || reason.starts_with(fw_reason(0xE3))
                            || reason.starts_with(fw_reason(0xE4))) => {}
                other => return other,
            }
            attempt += 1;
            self.stats.retries += 1;
            self.resync()?;
        }
    }

    /// Lets a half-received line finish and discards it, so the next reply starts clean.
    fn resync(&mut self) -> Result<(), LinkError> {
        std::thread::sleep(Duration::from_millis(20));
        let _ = self.send_raw(b"\n");
        std::thread::sleep(Duration::from_millis(20));
        self.drain()
    }

    fn status_exchange_once(&mut self, command: &str) -> Result<Vec<u8>, LinkError> {
        let reply = self.exchange(command)?;
        let short: String = command.chars().take(40).collect();
        let head = reply.head.clone();
        match parse_status(reply) {
            Some(Ok(data)) => Ok(data),
            Some(Err(reason)) => Err(LinkError::Refused {
                port: self.path.clone(),
                command: short,
                reason,
            }),
            None => Err(LinkError::Protocol {
                port: self.path.clone(),
                command: short,
                answer: sanitize(&head),
            }),
        }
    }

    fn expect_ok(&mut self, command: &str) -> Result<(), LinkError> {
        self.status_exchange(command).map(|_| ())
    }

    /// Wakes the chip (checks the 04 11 33 43 wake token). A wake is idempotent, so one
    /// answered "the chip did not answer" is asked again (a few times): that answer may be a
    /// late reply to the line before (an idle sent to a chip already asleep answers so), which
    /// a loaded host reads after its own timeout; a chip that is really missing still fails.
    pub fn wake(&mut self) -> Result<(), LinkError> {
        let mut attempt = 1;
        let token = loop {
            match self.status_exchange("E:w()") {
                Err(LinkError::Refused { ref reason, .. })
                    if attempt < WAKE_ATTEMPTS && reason.starts_with(fw_reason(0xE1)) =>
                {
                    attempt += 1;
                    self.stats.retries += 1;
                    self.resync()?;
                }
                other => break other?,
            }
        };
        if token != [0x04, 0x11, 0x33, 0x43] {
            return Err(LinkError::Protocol {
                port: self.path.clone(),
                command: "E:w()".into(),
                answer: format!(
                    "wake token {} instead of 04113343: is the chip connected?",
                    hex::encode(token)
                ),
            });
        }
        self.last_wake = Some(Instant::now());
        Ok(())
    }

    /// Puts the chip in idle (keeps TempKey) and wakes it again, restarting its watchdog.
    fn rewake_if_due(&mut self) -> Result<(), LinkError> {
        if self.last_wake.is_some_and(|t| t.elapsed() < REWAKE_AFTER) {
            return Ok(());
        }
        if self.last_wake.is_some() {
            // Idle fails harmlessly if the chip already fell asleep.
            let _ = self.status_exchange("E:i()");
        }
        self.wake()
    }

    fn text(&mut self, command: &str) -> Result<String, LinkError> {
        // The firmware may use the chip for `fw` commands and leave it idle or asleep.
        self.last_wake = None;
        let data = self.status_exchange(command)?;
        // Board text: shown to the operator and kept in reports, so escaped here, once.
        Ok(super::text::escape_bytes_max(&data, 512))
    }
}

/// A token only Mongoose OS's RPC-over-UART channel sends: the ready answer or a JSON frame.
fn mos_token(t: &super::mos::Token) -> bool {
    matches!(t, super::mos::Token::Ready | super::mos::Token::Frame(_))
}

/// A log line of Mongoose OS (its modules are `mgos_*`; its banner says `Mongoose OS`), cut
/// to 100 characters (already escaped by the decoder).
fn log_of_mongoose(t: &super::mos::Token) -> Option<String> {
    match t {
        super::mos::Token::Log(line) if line.contains("mgos_") || line.contains("Mongoose OS") => {
            Some(line.chars().take(100).collect())
        }
        _ => None,
    }
}

impl atecc::client::Transport for KitLink {
    type Error = LinkError;

    fn transact(&mut self, packet: &[u8], response: &mut [u8]) -> Result<usize, LinkError> {
        // Opcode and parameters only: the data bytes (a write key, an encrypted key) never.
        tracing::debug!(port = %self.path, opcode = %packet.get(1).map_or_else(String::new, |&op| atecc::opcode::Opcode::from_u8(op).map_or_else(|| format!("0x{op:02X}"), |o| format!("{o:?}"))), param1 = packet.get(2).copied().unwrap_or(0), param2 = u16::from_le_bytes([packet.get(3).copied().unwrap_or(0), packet.get(4).copied().unwrap_or(0)]), data_bytes = packet.len().saturating_sub(7), "chip command");
        let line = format!("E:t({})", hex::encode_upper(packet));
        let typical = packet
            .get(1)
            .and_then(|&op| atecc::opcode::Opcode::from_u8(op))
            .map_or(0, |op| u64::from(op.typical_us()));
        let mut attempt = 1;
        // Every resend of this chip command, wakes included, within one command's limit.
        let until = Instant::now() + COMMAND_LIMIT;
        loop {
            self.rewake_if_due()?;
            self.stats.chip_commands += 1;
            self.stats.chip_typical_us += typical;
            let again = attempt < ATTEMPTS && Instant::now() < until;
            let frame = match self.status_exchange_until(&line, until) {
                // The chip fell asleep (a wake line was lost): wake it and send again.
                Err(LinkError::Refused { reason, .. })
                    if again && reason.starts_with(fw_reason(0xE1)) =>
                {
                    attempt += 1;
                    self.stats.retries += 1;
                    self.last_wake = None;
                    continue;
                }
                other => other?,
            };
            let intact = frame.len() >= 4
                && frame[0] as usize == frame.len()
                && atecc::crc16(&frame[..frame.len() - 2]).to_le_bytes()
                    == frame[frame.len() - 2..];
            // 0xFF: the chip received a damaged packet and did not execute it.
            let resend = !intact || (frame.len() == 4 && frame[1] == 0xFF);
            if resend && again {
                attempt += 1;
                self.stats.retries += 1;
                continue;
            }
            if frame.len() > response.len() {
                return Err(LinkError::Protocol {
                    port: self.path.clone(),
                    command: "E:t".into(),
                    answer: format!("{}-byte frame", frame.len()),
                });
            }
            response[..frame.len()].copy_from_slice(&frame);
            return Ok(frame.len());
        }
    }
}

/// The kit transport's words and capabilities: chip packets relayed as they are, so every
/// lock carries its CRC summary and a host key crosses only encrypted.
const KIT_CAPS: Caps = Caps {
    write_config: "Write",
    lock_config: "Lock with CRC summary",
    lock_data: "Lock with CRC summary",
    gen_key: "GenKey",
    sign: "Sign",
    put: "fw:put",
    files: "write device.crt, ca.crt and device.toml",
    inject: ("with an encrypted PrivWrite", "with an encrypted PrivWrite"),
    lock_summary: true,
    zone_writes: true,
    keys_in_clear: None,
    no_slot_lock: None,
};

impl KitLink {
    fn chip(&mut self) -> Client<&mut KitLink> {
        Client::new(self)
    }
}

impl Board for KitLink {
    fn port(&self) -> &str {
        &self.path
    }

    fn caps(&self) -> Caps {
        KIT_CAPS
    }

    fn describe(&mut self) -> Result<String, LinkError> {
        self.text("fw:info()")
    }

    fn stats(&self) -> LinkStats {
        self.stats
    }

    fn read_config(&mut self) -> Op<ConfigZone> {
        self.chip().read_config_zone()
    }

    fn write_config(&mut self, zone: &ConfigZone) -> Op<()> {
        self.chip().write_config_zone(zone)
    }

    fn lock_config(&mut self, expected: Option<&ConfigZone>) -> Op<()> {
        match expected {
            Some(zone) => self.chip().lock_config(zone),
            None => self
                .chip()
                .execute_status(&Command::lock_unchecked(LockTarget::Config)),
        }
    }

    fn write_slot(&mut self, slot: u8, data: &[u8]) -> Op<()> {
        self.chip().write_slot(slot, data)
    }

    fn write_public_slot(&mut self, slot: u8, data: &[u8]) -> Op<()> {
        self.chip().write_public_slot(slot, data)
    }

    fn write_otp(&mut self, otp: &[u8; OTP_SIZE]) -> Op<()> {
        for (block, data) in otp.chunks(32).enumerate() {
            let addr = atecc::config::address::block_word(block as u8, 0);
            self.chip()
                .execute_status(&Command::write(Zone::Otp, addr, data))?;
        }
        Ok(())
    }

    fn lock_data(&mut self, summary: Option<u16>) -> Op<()> {
        match summary {
            Some(crc) => self.chip().lock_data(crc),
            None => self.chip().lock_data_unchecked(),
        }
    }

    fn lock_slot(&mut self, slot: u8) -> Op<()> {
        self.chip().lock_slot(slot)
    }

    fn read_slot(&mut self, slot: u8) -> Op<Vec<u8>> {
        // Whole 32-byte blocks, then 4-byte words for the tail of a 36- or 72-byte slot.
        let size = atecc::config::slot_size(slot as usize);
        let mut out = Vec::with_capacity(size);
        for block in 0..size / 32 {
            out.extend(self.chip().read_slot_block(slot, block as u8)?);
        }
        for word in 0..(size % 32) / 4 {
            let addr = atecc::config::address::data(slot, (size / 32) as u8, word as u8);
            let w: [u8; 4] = self
                .chip()
                .execute_exact(&Command::read(Zone::Data, addr, false))?;
            out.extend(w);
        }
        Ok(out)
    }

    fn gen_key(&mut self, slot: u8) -> Op<[u8; 64]> {
        self.chip().gen_key(slot)
    }

    fn priv_write(&mut self, slot: u8, key: &[u8; 32], (wk_slot, wk): (u8, &[u8; 32])) -> Op<()> {
        let mut nonce = [0u8; 20];
        getrandom::fill(&mut nonce).map_err(|e| {
            ClientError::Transport(LinkError::Io {
                port: self.path.clone(),
                source: std::io::Error::other(e.to_string()),
            })
        })?;
        self.chip()
            .priv_write_encrypted(slot, key, wk_slot, wk, &nonce)
    }

    fn public_key(&mut self, slot: u8) -> Op<[u8; 64]> {
        self.chip().public_key(slot)
    }

    fn sign(&mut self, slot: u8, digest: &[u8; 32]) -> Op<[u8; 64]> {
        self.chip().sign_digest(slot, digest)
    }

    fn config_file(&self, _: &DeviceConfig) -> Option<&'static str> {
        Some(manifests::device::BLOB_NAME)
    }

    fn set_configuration(&mut self, _: &DeviceConfig) -> Result<Option<(bool, String)>, LinkError> {
        Ok(None)
    }

    fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, LinkError> {
        tracing::debug!(port = %self.path, blob = %sanitize(name), "reading a file from the board's store");
        self.last_wake = None;
        let mut out = Vec::new();
        loop {
            match self.status_exchange(&format!("fw:get({name},{},{CHUNK})", out.len())) {
                Ok(chunk) => {
                    let done = chunk.len() < CHUNK;
                    out.extend_from_slice(&chunk);
                    if done {
                        return Ok(Some(out));
                    }
                    if out.len() > MAX_BLOB_READ {
                        return Err(LinkError::Protocol {
                            port: self.path.clone(),
                            command: format!("fw:get({name})"),
                            answer: format!("a blob larger than {MAX_BLOB_READ} bytes"),
                        });
                    }
                }
                Err(LinkError::Refused { reason, .. }) if reason.starts_with(fw_reason(0xF1)) => {
                    return Ok(None);
                }
                Err(LinkError::Refused { reason, .. }) if reason.starts_with(fw_reason(0xF6)) => {
                    return Ok(Some(out));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn put(&mut self, name: &str, data: &[u8]) -> Result<(), LinkError> {
        tracing::debug!(port = %self.path, blob = %sanitize(name), bytes = data.len(), "writing a file to the board's store");
        self.last_wake = None;
        let mut attempt = 1;
        loop {
            match self.put_once(name, data) {
                // A chunk whose reply was lost is resent and refused (wrong offset); the
                // whole upload starts again: the old blob stays until a commit succeeds.
                Err(LinkError::Refused { .. }) if attempt < 3 => {
                    attempt += 1;
                    self.stats.retries += 1;
                    self.resync()?;
                }
                other => return other,
            }
        }
    }
}

impl KitLink {
    fn put_once(&mut self, name: &str, data: &[u8]) -> Result<(), LinkError> {
        if data.is_empty() {
            self.expect_ok(&format!("fw:put({name},0,)"))?;
        }
        for (i, chunk) in data.chunks(CHUNK).enumerate() {
            self.expect_ok(&format!(
                "fw:put({name},{},{})",
                i * CHUNK,
                hex::encode_upper(chunk)
            ))?;
        }
        self.expect_ok(&format!(
            "fw:commit({name},{},{:08X})",
            data.len(),
            crc32(data)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn lines_are_split_trimmed_and_bounded() {
        let mut r = LineReader::default();
        r.push(b"\r\n\0\nATECC508A(00)\r\n00(04");
        assert_eq!(r.next_line(), Ok(Some("ATECC508A(00)".to_string())));
        assert_eq!(r.next_line(), Ok(None));
        r.push(b"113343)\n");
        assert_eq!(r.next_line(), Ok(Some("00(04113343)".to_string())));
        r.push(&vec![b'A'; MAX_LINE + 1]);
        assert_eq!(r.next_line(), Err(()));
        r.push(b"00()\n");
        assert_eq!(
            r.next_line(),
            Ok(Some("00()".to_string())),
            "recovers after the error"
        );
    }

    /// A scripted kit board on a pty: `reply` answers each line the host sends (None: says
    /// nothing; `flood`: then streams it without end). Returns the port path.
    fn scripted(reply: fn(&str) -> Option<&'static [u8]>, flood: &'static [u8]) -> String {
        use std::os::fd::AsFd;
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let mut t = nix::sys::termios::tcgetattr(pty.slave.as_fd()).expect("tcgetattr");
        nix::sys::termios::cfmakeraw(&mut t);
        nix::sys::termios::tcsetattr(pty.slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t)
            .expect("raw");
        let path = nix::unistd::ttyname(&pty.slave)
            .expect("ttyname")
            .to_string_lossy()
            .into_owned();
        let mut master = std::fs::File::from(pty.master);
        std::thread::spawn(move || {
            let _slave = pty.slave;
            let mut lines = LineReader::default();
            let mut buf = [0u8; 512];
            let mut flooding = false;
            loop {
                if flooding {
                    if master.write_all(flood).is_err() {
                        return;
                    }
                    continue;
                }
                let n = match master.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                lines.push(&buf[..n]);
                while let Ok(Some(line)) = lines.next_line() {
                    match reply(&line) {
                        Some(b"FLOOD") => flooding = true,
                        Some(r) if master.write_all(r).is_err() => return,
                        _ => {}
                    }
                }
            }
        });
        path
    }

    fn connect_err(path: &str, deadline: Duration) -> (String, Duration) {
        let t = Instant::now();
        match KitLink::connect_until(path, 115_200, Instant::now() + deadline) {
            Ok(_) => panic!("{path}: connected to a hostile board"),
            Err(e) => (e.to_string(), t.elapsed()),
        }
    }

    #[test]
    fn a_reply_that_never_makes_sense_is_resent_a_bounded_number_of_times() {
        let path = scripted(
            |line| match line {
                "board:device(00)" => Some(b"ATECC508A(00)\n"),
                _ => Some(b"00(zz)\n"),
            },
            b"",
        );
        let (e, took) = connect_err(&path, Duration::from_secs(60));
        assert!(
            e.starts_with(&path) && e.contains("unexpected answer"),
            "{e}"
        );
        assert!(e.contains("E:physical:select(C0)"), "{e}");
        assert!(took < COMMAND_LIMIT + Duration::from_secs(1), "{took:?}");
    }

    #[test]
    fn a_board_that_starts_streaming_mid_run_is_stopped_by_the_drain_limit() {
        let path = scripted(
            |line| match line {
                "board:device(00)" => Some(b"ATECC508A(00)\n"),
                _ => Some(b"FLOOD"),
            },
            b"00(04113343)\n\x1b[2J",
        );
        let (e, took) = connect_err(&path, Duration::from_secs(60));
        assert!(
            e.starts_with(&path) && e.contains("sends without pause"),
            "{e}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn nothing_is_read_after_the_links_deadline() {
        // A board that answers nothing: the link's deadline comes before the line timeout.
        let path = scripted(|_| None, b"");
        let (e, took) = connect_err(&path, Duration::from_millis(500));
        assert!(
            e.starts_with(&path) && e.contains("time allowed for one board"),
            "{e}"
        );
        assert!(took < Duration::from_millis(1500), "{took:?}");
        let (e, _) = connect_err(&path, Duration::ZERO);
        assert!(e.contains("gave up at `connect`"), "{e}");
    }

    #[test]
    fn board_text_in_a_refusal_is_escaped() {
        let refused =
            parse_reply(&format!("E3({})", hex::encode(b"\x1b]0;pwned\x07"))).expect("reply");
        assert_eq!(
            parse_status(refused),
            Some(Err(format!("{} (\\x1b]0;pwned\\x07)", fw_reason(0xE3))))
        );
        assert_eq!(sanitize("a\x1b[2Jb"), "a\\x1b[2Jb");
    }

    #[test]
    fn replies_are_split_and_statuses_read() {
        let ok = parse_reply("00(04113343)").expect("reply");
        assert_eq!(parse_status(ok), Some(Ok(vec![0x04, 0x11, 0x33, 0x43])));
        // a refusal's payload is hex like any status reply: free text makes it malformed
        assert_eq!(parse_reply("F1(zz)"), None);
        let refused = parse_reply("F1()").expect("reply");
        assert_eq!(parse_status(refused), Some(Err("no such blob".to_string())));
        let detailed = parse_reply("E3(41)").expect("reply");
        assert_eq!(
            parse_status(detailed),
            Some(Err(format!("{} (A)", fw_reason(0xE3))))
        );
        for bad in ["", "00", "00(0", "(00)x", "00(123)", "00(GG)"] {
            assert_eq!(parse_reply(bad), None, "{bad}");
        }
        let text = parse_reply("ATECC508A(00)").expect("a text head");
        assert_eq!(
            (text.head.as_str(), text.data.as_slice()),
            ("ATECC508A", &b"00"[..])
        );
        assert_eq!(parse_status(text), None, "not a status byte");
    }
}
