//! Mongoose OS RPC over UART (the `mos` tool's serial channel), host side.
//!
//! Frames are JSON objects between delimiters: a newline (the current format) or three double
//! quotes (the legacy format, which we send, as `mos` does: `\n"""{json}crc"""\n`). After the
//! last `}` comes comma-separated metadata whose first field is the CRC-32 (zlib) of the JSON
//! bytes, 8 lowercase hex digits. Before the first frame the host asks "ready?" with a frame
//! holding only 0x04 and waits for the same frame back. Everything else on the UART is the
//! board's log: skipped.
//!
//! Writes follow the board's flow control: the firmware's RPC UART uses XON/XOFF
//! (`rpc.uart.fc_type` 2, rpc-uart `mos.yml`), sending XOFF when its receive buffer is full and
//! XON once it drained (`esp_uart.c`), so frames go out whole, in pieces of one RX FIFO
//! (128 bytes) each drained before the next, held while the board said XOFF: what
//! `mos --rpc-uart-no-delay` does (mos `common/mgrpc/codec/serial.go`: one handshake, then
//! `connWriteWithFC`). After the line lost an exchange the link falls back to mos's default for
//! the rest of its life: the ready handshake before every frame and 16-byte chunks 5 ms apart,
//! which a board that fell behind can keep up with.
//!
//! Every byte from the port is hostile: buffers are bounded, frames with a wrong CRC are
//! dropped and counted, replies to other requests are ignored, and a silent board gives a
//! timeout naming the port and the call.
//!
//! A request is sent again as soon as its loss is known, not only after a silence: when a
//! frame from the board was dropped since it went out (most likely its reply), or when the
//! board says it dropped the request. rpc-uart does (`mg_rpc_channel_uart_dispatcher`): a
//! frame whose CRC does not match is logged at LL_WARN as `Corrupted frame (len): 'frame'
//! 'meta' expected computed` and dropped without a reply, a buffer past `rpc.max_frame_size`
//! is logged at LL_ERROR as `Incoming frame is too big, dropping.`; the log shares the RPC
//! UART, which is suspended only while a reply goes out. Those log lines echo the request,
//! so they are never logged here. Resending is safe for every call but `ATCA.LockZone` (the
//! others write the same bytes again, `FS.Put` at its offset, or return a fresh key that
//! replaces the last one): before a lock is sent again, `ATCA.GetConfig` tells whether the
//! lost attempt locked the zone, and a locked zone is taken as that attempt's success.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use serialport::SerialPort;

use atecc::client::ClientError;
use atecc::config::ConfigZone;
use manifests::device::DeviceConfig;

use super::kit::{LinkStats, crc32};
use super::{Board, Caps, LinkError, Op};

/// The board's `rpc.max_frame_size`: it drops a frame longer than this.
pub const MAX_FRAME: usize = 4096;
/// Longest token accepted from the board before the buffer is thrown away.
const MAX_INCOMING: usize = 64 * 1024;
/// The "end of file" byte of the ready handshake.
const EOF: u8 = 0x04;
/// How often the ready question is repeated, as `mos` does.
const READY_EVERY: Duration = Duration::from_millis(200);
/// XON and XOFF (mos `serial.go` `xonChar`/`xoffChar`, mgos_uart.h): never in JSON text.
const XON: u8 = 0x11;
/// See [`XON`].
const XOFF: u8 = 0x13;
/// Bytes written and drained at a time while following XON/XOFF: the ESP8266's RX FIFO holds
/// 128 bytes, so a piece still on the wire when the board says XOFF fits in it.
const FC_PIECE: usize = 128;
/// mos's default pacing (`serial.go` with `SendChunkSize` 16, `SendChunkDelay` 5 ms), used
/// once the line lost an exchange.
const SLOW_CHUNK: usize = 16;
/// See [`SLOW_CHUNK`].
const SLOW_GAP: Duration = Duration::from_millis(5);
/// Raw bytes per `FS.Put` call: base64 makes 1024 of them 1368 characters, well inside a frame.
pub const PUT_CHUNK: usize = 1024;
/// Bytes asked per `FS.Get` call.
const GET_CHUNK: usize = 1024;
/// Largest file read back.
const MAX_FILE: usize = 64 * 1024;

/// Standard base64 (what Mongoose's `%V` and frozen's `%V` use): the simulated board's codec,
/// so both ends of the emulated link share one implementation.
pub use firmware::sim::mos::b64;

/// JSON text that is pure ASCII: the board throws its whole receive buffer away on any byte
/// of 0x80 or more, so non-ASCII characters (only possible inside strings) are escaped.
pub fn ascii_json(v: &Value) -> String {
    let text = v.to_string();
    if text.is_ascii() {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    out
}

/// A request as it goes on the wire: `\n"""{json}crc"""\n`.
pub fn encode_frame(json: &str) -> Vec<u8> {
    format!("\n\"\"\"{json}{:08x}\"\"\"\n", crc32(json.as_bytes())).into_bytes()
}

/// One thing read from the board's UART.
#[derive(Debug, Clone, PartialEq)]
pub enum Token {
    /// A JSON object whose CRC matched.
    Frame(Value),
    /// The ready answer (a frame holding only 0x04).
    Ready,
    /// A log line (or any other text): skipped.
    Log(String),
    /// A frame that was dropped, and why (CRC mismatch, no CRC, not JSON).
    Corrupt(String),
    /// A token longer than the limit was thrown away (its length so far).
    Oversized(usize),
}

/// Splits the byte stream into tokens at `\n` and `"""`, with a bounded buffer.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    limit: usize,
    /// Dropping the rest of an oversized token, up to the next delimiter.
    skipping: bool,
    /// The last flow-control byte from the board was XOFF: hold writes until XON.
    pub xoff: bool,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(MAX_INCOMING)
    }
}

/// Printable, bounded text of untrusted bytes (for messages and logs): control characters
/// and invalid UTF-8 escaped ([`super::text::escape_bytes`]), at most 160 of them.
pub fn sanitize(bytes: &[u8]) -> String {
    super::text::escape_bytes_max(bytes, 160)
}

impl Decoder {
    /// A decoder that throws away tokens longer than `limit` bytes.
    pub fn new(limit: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            limit,
            skipping: false,
            xoff: false,
        }
    }

    /// Feeds bytes; complete tokens are appended to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Token>) {
        for &b in data {
            // XON/XOFF flow control bytes are not data (the board's UART uses fc_type 2).
            if b == XON || b == XOFF {
                self.xoff = b == XOFF;
                continue;
            }
            self.buf.push(b);
            let end = if b == b'\n' {
                Some(1)
            } else if self.buf.ends_with(b"\"\"\"") {
                Some(3)
            } else {
                None
            };
            if let Some(d) = end {
                let len = self.buf.len() - d;
                if self.skipping {
                    self.skipping = false;
                } else if let Some(t) = token(&self.buf[..len]) {
                    out.push(t);
                }
                self.buf.clear();
            } else if self.buf.len() > self.limit {
                if !self.skipping {
                    out.push(Token::Oversized(self.buf.len()));
                }
                self.skipping = true;
                self.buf.clear();
            }
        }
    }
}

fn token(raw: &[u8]) -> Option<Token> {
    let t = raw.trim_ascii();
    if t.is_empty() {
        return None;
    }
    if t == [EOF] {
        return Some(Token::Ready);
    }
    if t[0] != b'{' {
        return Some(Token::Log(sanitize(t)));
    }
    let Some(close) = t.iter().rposition(|&b| b == b'}') else {
        return Some(Token::Corrupt("unterminated JSON".into()));
    };
    let (body, meta) = t.split_at(close + 1);
    let crc_field = meta.split(|&b| b == b',').next().unwrap_or_default();
    if crc_field.len() != 8 {
        return Some(Token::Corrupt(format!(
            "no CRC after the JSON (metadata `{}`)",
            sanitize(meta)
        )));
    }
    let crc = std::str::from_utf8(crc_field)
        .ok()
        .and_then(|s| u32::from_str_radix(s, 16).ok());
    if crc != Some(crc32(body)) {
        return Some(Token::Corrupt(format!(
            "CRC mismatch (frame says {}, data has {:08x})",
            sanitize(crc_field),
            crc32(body)
        )));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) if v.is_object() => Some(Token::Frame(v)),
        _ => Some(Token::Corrupt("not a JSON object".into())),
    }
}

/// What a reply frame says about request `id`: `None` if it answers another request (a stale
/// reply, a notification); the `result` (null if absent); or the error object's code and its
/// message, sanitised. Ids may come back as numbers or strings.
pub fn reply_for(v: &Value, id: u64) -> Option<Result<Value, (i64, String)>> {
    let same = match &v["id"] {
        Value::Number(n) => n.as_u64() == Some(id),
        Value::String(s) => s.parse::<u64>().ok() == Some(id),
        _ => false,
    };
    if !same {
        return None;
    }
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        let code = err["code"].as_i64().unwrap_or(0);
        let message = err["message"].as_str().unwrap_or("");
        return Some(Err((code, sanitize(message.as_bytes()))));
    }
    Some(Ok(v.get("result").cloned().unwrap_or(Value::Null)))
}

/// A result field holding exactly `N` bytes of base64 (a key, a signature, a zone).
pub fn b64_field<const N: usize>(result: &Value, field: &str) -> Option<[u8; N]> {
    result[field]
        .as_str()
        .and_then(b64::decode)
        .and_then(|b| <[u8; N]>::try_from(b.as_slice()).ok())
}

/// One `FS.Get` result: its bytes (at most the chunk asked for) and how many are left; an
/// empty chunk with bytes left is refused (it would never end).
pub fn fs_chunk(r: &Value) -> Result<(Vec<u8>, u64), &'static str> {
    let data = r["data"]
        .as_str()
        .and_then(b64::decode)
        .ok_or("`data` is not base64")?;
    let left = r["left"].as_u64().unwrap_or(0);
    if data.len() > GET_CHUNK {
        return Err("more bytes than asked");
    }
    if data.is_empty() && left > 0 {
        return Err("no data but bytes left");
    }
    Ok((data, left))
}

/// Traffic counters of a link.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct MosStats {
    /// Requests sent.
    pub requests: u64,
    /// Bytes written.
    pub bytes_out: u64,
    /// Bytes read.
    pub bytes_in: u64,
    /// Log lines skipped.
    pub log_lines: u64,
    /// Frames dropped for a CRC mismatch or bad JSON.
    pub corrupt: u64,
    /// Tokens thrown away for their size.
    pub oversized: u64,
    /// Times the board said XOFF while we wrote (writes held until its XON).
    pub xoff_holds: u64,
    /// Ready handshakes the board answered.
    pub handshakes: u64,
    /// Requests sent again after a lost or garbled reply.
    pub retries: u64,
    /// Of those, sent again at once because the board logged that it dropped the request.
    pub reported_drops: u64,
    /// Times a lost lock was checked (`ATCA.GetConfig`) before it was sent again.
    pub lock_checks: u64,
    /// Chip commands the calls made the board run (as its ATCA service does them).
    pub chip_commands: u64,
    /// How long the firmware waits for those commands, in microseconds: the datasheet's
    /// typical execution times, each rounded up to cryptoauthlib's next poll ([`polled_us`]).
    pub chip_typical_us: u64,
}

/// The chip commands the firmware's ATCA service runs for one call (mgos_atca_service.c on
/// cryptoauthlib 3: GetConfig reads the zone in 4 blocks; SetConfig is
/// `calib_write_config_zone`: bytes 16..127 in 13 Writes (32-byte blocks where aligned, words
/// in blocks 0 and 2, bytes 84..87 skipped) then UpdateExtra twice; Sign is Random + Nonce +
/// Sign; SetKey of a private key is Nonce + GenDig + PrivWrite), and how long the firmware
/// waits for them: what the physical floor of a run counts.
fn chip_work(method: &str, params: &Value) -> (u64, u64) {
    use atecc::opcode::Opcode::*;
    let ops: &[(atecc::opcode::Opcode, u64)] = match method {
        "ATCA.GetConfig" => &[(Read, 4)],
        "ATCA.SetConfig" => &[(Write, 13), (UpdateExtra, 2)],
        "ATCA.LockZone" => &[(Lock, 1)],
        "ATCA.GenKey" | "ATCA.GetPubKey" => &[(GenKey, 1)],
        "ATCA.Sign" => &[(Random, 1), (Nonce, 1), (Sign, 1)],
        "ATCA.SetKey" if params["ecc"] == json!(true) => {
            &[(Random, 1), (Nonce, 1), (GenDig, 1), (PrivWrite, 1)]
        }
        "ATCA.SetKey" => &[(Write, 1)],
        _ => &[],
    };
    ops.iter().fold((0, 0), |(n, us), &(op, k)| {
        (n + k, us + k * polled_us(op.typical_us()))
    })
}

/// How long the firmware takes to see a command of `typical_us` done: cryptoauthlib 3 does not
/// wait out the execution time but polls, first after `ATCA_POLLING_INIT_TIME_MSEC` (1 ms), then
/// every `ATCA_POLLING_FREQUENCY_TIME_MSEC` (2 ms) (`lib/hal/atca_hal.h`,
/// `lib/calib/calib_execution.c` `calib_execute_command`), so a command finished between two
/// polls is picked up at the next one: a wait of stock firmware that no host can shorten.
pub fn polled_us(typical_us: u32) -> u64 {
    const FIRST: u64 = 1_000;
    const EVERY: u64 = 2_000;
    let t = u64::from(typical_us);
    FIRST + t.saturating_sub(FIRST).div_ceil(EVERY) * EVERY
}

/// The arguments of `ATCA.SetKey`.
#[derive(Debug, Clone, Copy)]
pub struct SetKey<'a> {
    /// Target slot.
    pub slot: u8,
    /// Block of a non-ECC slot.
    pub block: u8,
    /// A P-256 private key (the firmware runs PrivWrite).
    pub ecc: bool,
    /// The value. SECRET: never logged.
    pub key: &'a [u8],
    /// The write key and its slot, for an encrypted write made by the board. SECRET.
    pub write_key: Option<(u8, &'a [u8; 32])>,
}

/// Whether a board log line says the board dropped a frame we sent (rpc-uart
/// `mg_rpc_channel_uart_dispatcher`: `Corrupted frame` for a CRC mismatch, `Incoming frame is
/// too big` past `rpc.max_frame_size`).
pub fn board_dropped_frame(line: &str) -> bool {
    line.contains("Corrupted frame") || line.contains("Incoming frame is too big")
}

/// How one attempt at a call ended.
enum Attempt {
    /// The reply (or the board's error object) came.
    Reply(Result<Value, LinkError>),
    /// Lost: the board said it dropped the request, a frame from the board was dropped (most
    /// likely the reply), or nothing came within the resend time.
    Lost {
        /// The board said so (a log line), rather than a silence or a garbled reply.
        reported: bool,
    },
}

/// What the board sends when it does not know a method.
const HINT_404: &str = "the firmware has no handler for it: build Mongoose OS with rpc-service-atca (and rpc-service-fs, rpc-service-config), set sys.atca.enable=true and i2c.enable=true, and check that it logs the ATECC508A at boot";

/// A board running Mongoose OS, reached over its RPC UART.
pub struct MosLink {
    port: Box<dyn SerialPort>,
    path: String,
    timeout: Duration,
    /// mos's default pacing (handshake before every frame, 16-byte chunks 5 ms apart) instead
    /// of whole frames under XON/XOFF: set once the line lost an exchange.
    slow: bool,
    /// The board answered a ready question and no exchange was lost since.
    synced: bool,
    decoder: Decoder,
    /// Tokens read while writing (watching for XOFF), for the reply loop.
    held: Vec<Token>,
    next_id: u64,
    /// Nothing is read after this: the whole link's calls end by then.
    deadline: Instant,
    /// Counters.
    pub stats: MosStats,
    /// The board answered in the kit protocol (`SS(hex)` status lines): it runs the
    /// provisioning firmware, and the ready handshake is given up early.
    kit_replies: bool,
    /// A request with no reply by then is sent again (with a new id): the line may have lost
    /// it, or its reply.
    resend_after: Duration,
    /// The operator allowed keys in clear over the line ([`super::PLAINTEXT_FLAG`]).
    plaintext_allowed: bool,
}

impl MosLink {
    /// Opens the port and checks that the board answers the ready handshake.
    pub fn connect(path: &str, baud: u32) -> Result<MosLink, LinkError> {
        Self::connect_with(path, baud, Duration::from_secs(5))
    }

    /// As [`MosLink::connect`], with a timeout per call.
    pub fn connect_with(path: &str, baud: u32, timeout: Duration) -> Result<MosLink, LinkError> {
        Self::connect_full(
            path,
            baud,
            timeout,
            Instant::now() + super::kit::board_limit(baud),
        )
    }

    /// As [`MosLink::connect`]; nothing is read after `deadline` (every call fails with
    /// [`LinkError::Deadline`] then).
    pub fn connect_until(path: &str, baud: u32, deadline: Instant) -> Result<MosLink, LinkError> {
        Self::connect_full(path, baud, Duration::from_secs(5), deadline)
    }

    fn connect_full(
        path: &str,
        baud: u32,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<MosLink, LinkError> {
        if Instant::now() >= deadline {
            return Err(LinkError::Deadline {
                port: path.to_string(),
                command: "connect".into(),
            });
        }
        let port = super::port::open(path, baud)?;
        // mos deasserts DTR and RTS: on most ESP boards they drive reset and GPIO0.
        let mut port = port;
        let _ = port.write_data_terminal_ready(false);
        let _ = port.write_request_to_send(false);
        let mut link = MosLink::with_port(port, path, timeout);
        link.deadline = deadline;
        // Twice the time of a largest frame each way, plus the slowest chip work.
        link.resend_after = Duration::from_millis(500)
            + Duration::from_micros(2 * MAX_FRAME as u64 * 10 * 1_000_000 / u64::from(baud.max(1)));
        match link.ready("ready handshake") {
            Ok(()) => Ok(link),
            // No ready answer: a board running the provisioning firmware says so when asked
            // in its own protocol (one harmless, read-only line).
            Err(e @ LinkError::RpcTimeout { .. }) => Err(link.kit_board().unwrap_or(e)),
            Err(e) => Err(e),
        }
    }

    /// Whether the board answers the kit protocol's `board:device(00)` (the provisioning
    /// firmware names the chip it bridges, `ATECC508A(00)`).
    fn kit_board(&mut self) -> Option<LinkError> {
        self.write_paced(b"\nboard:device(00)\n", false).ok()?;
        let until = (Instant::now() + Duration::from_millis(600)).min(self.deadline);
        let mut lines = super::kit::LineReader::default();
        let mut buf = [0u8; 512];
        while Instant::now() < until {
            match self.port.read(&mut buf) {
                Ok(n) => {
                    self.stats.bytes_in += n as u64;
                    lines.push(&buf[..n]);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
            while let Ok(Some(line)) = lines.next_line() {
                if let Some(reply) = super::kit::parse_reply(&line)
                    && reply.head.contains("508")
                {
                    return Some(LinkError::OtherFirmware {
                        port: self.path.clone(),
                        found: format!(
                            "this board runs the provisioning firmware (it answered the kit protocol's `board:device(00)` with `{}`), not Mongoose OS",
                            super::kit::sanitize(&line)
                        ),
                        fix: "--transport kit (the default)",
                    });
                }
            }
        }
        None
    }

    /// A link over an already open port.
    pub fn with_port(port: Box<dyn SerialPort>, path: &str, timeout: Duration) -> MosLink {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        // Request ids as mos makes them: in [2^40, 2^41).
        let next_id = (1u64 << 40) | (u64::from_le_bytes(seed) & ((1u64 << 40) - 1));
        MosLink {
            port,
            path: path.to_string(),
            timeout,
            slow: false,
            synced: false,
            decoder: Decoder::default(),
            held: Vec::new(),
            next_id,
            deadline: Instant::now() + super::kit::BOARD_LIMIT,
            stats: MosStats::default(),
            kit_replies: false,
            resend_after: Duration::from_millis(1200),
            plaintext_allowed: false,
        }
    }

    /// Lets [`MosLink::set_key`] be used by the engine: the operator gave
    /// [`super::PLAINTEXT_FLAG`].
    pub fn allow_plaintext_keys(&mut self, allowed: bool) {
        self.plaintext_allowed = allowed;
    }

    /// Writes as `mos` does by default from the start (the ready handshake before every
    /// frame, 16-byte chunks 5 ms apart), as the link does after a lost exchange.
    #[cfg(test)]
    pub fn set_slow(&mut self, slow: bool) {
        self.slow = slow;
    }

    fn io_error(&self, source: std::io::Error) -> LinkError {
        LinkError::Io {
            port: self.path.clone(),
            source,
        }
    }

    /// Writes `bytes`: under XON/XOFF in drained pieces of [`FC_PIECE`], or in mos's slow
    /// chunks once the line lost an exchange. `follow_fc` false (the ready question, which
    /// mos sends whatever the board said last) writes through an XOFF.
    fn write_paced(&mut self, bytes: &[u8], follow_fc: bool) -> Result<(), LinkError> {
        let (piece, gap) = if self.slow {
            (SLOW_CHUNK, SLOW_GAP)
        } else {
            (FC_PIECE, Duration::ZERO)
        };
        for (i, chunk) in bytes.chunks(piece).enumerate() {
            if i > 0 && !gap.is_zero() {
                std::thread::sleep(gap);
            }
            if follow_fc {
                self.wait_for_xon()?;
            }
            self.port.write_all(chunk).map_err(|e| self.io_error(e))?;
            // Drained (tcdrain): no more than one piece is on its way when XOFF comes.
            self.port.flush().map_err(|e| self.io_error(e))?;
            self.stats.bytes_out += chunk.len() as u64;
        }
        Ok(())
    }

    /// Reads what the board sent while we write (without waiting) and, after an XOFF, until
    /// its XON. An XON that does not come within the resend time (lost on the line) is taken
    /// as given: the CRC and the resend catch what the board could not take.
    fn wait_for_xon(&mut self) -> Result<(), LinkError> {
        let mut tokens = std::mem::take(&mut self.held);
        let pending = self
            .port
            .bytes_to_read()
            .map_err(|e| self.io_error(e.into()))?;
        if pending > 0 {
            self.read_tokens(&mut tokens)?;
        }
        if self.decoder.xoff {
            self.stats.xoff_holds += 1;
            let until = (Instant::now() + self.resend_after).min(self.deadline);
            while self.decoder.xoff && Instant::now() < until {
                self.read_tokens(&mut tokens)?;
            }
            self.decoder.xoff = false;
        }
        self.held = tokens;
        Ok(())
    }

    /// Reads what is there (up to the port's short read timeout) into tokens.
    fn read_tokens(&mut self, out: &mut Vec<Token>) -> Result<(), LinkError> {
        let mut buf = [0u8; 512];
        match self.port.read(&mut buf) {
            Ok(n) => {
                self.stats.bytes_in += n as u64;
                self.decoder.push(&buf[..n], out);
                Ok(())
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                Ok(())
            }
            Err(source) => Err(LinkError::Io {
                port: self.path.clone(),
                source,
            }),
        }
    }

    fn count(&mut self, t: &Token) {
        match t {
            // The firmware's line about a dropped frame quotes the frame: an ATCA.SetKey
            // request holds a key in clear.
            Token::Log(line) if board_dropped_frame(line) => {
                self.stats.log_lines += 1;
                tracing::debug!(port = %self.path, "board log: it dropped a frame from us (the line quotes it: not shown)");
            }
            Token::Log(line) => {
                self.stats.log_lines += 1;
                self.kit_replies |= super::kit::parse_reply(line)
                    .and_then(super::kit::parse_status)
                    .is_some();
                tracing::debug!(port = %self.path, "board log: {line}");
            }
            Token::Corrupt(why) => {
                self.stats.corrupt += 1;
                tracing::warn!(port = %self.path, "dropped a frame from the board: {why}");
            }
            Token::Oversized(n) => {
                self.stats.oversized += 1;
                tracing::warn!(port = %self.path, "dropped {n}+ bytes without a delimiter");
            }
            Token::Frame(_) | Token::Ready => {}
        }
    }

    fn timeout_error(&self, command: &str) -> LinkError {
        if Instant::now() >= self.deadline {
            return LinkError::Deadline {
                port: self.path.clone(),
                command: command.to_string(),
            };
        }
        let mut hint = String::from(
            "is the board running Mongoose OS with RPC over UART (rpc-uart) at this baud rate, and is no other program (mos console, a serial monitor) reading the port?",
        );
        if self.stats.corrupt > 0 || self.stats.oversized > 0 {
            hint.push_str(&format!(
                " ({} frame(s) dropped for a CRC mismatch or bad JSON, {} oversized: the line is noisy)",
                self.stats.corrupt, self.stats.oversized
            ));
        }
        LinkError::RpcTimeout {
            port: self.path.clone(),
            command: command.to_string(),
            ms: self.timeout.as_millis() as u64,
            hint,
        }
    }

    /// Asks "ready?" every 200 ms until the board answers; its writes are not held by an
    /// earlier XOFF, and after the answer none holds them (as mos `WriteWithContext`).
    fn ready(&mut self, command: &str) -> Result<(), LinkError> {
        let deadline = (Instant::now() + self.timeout).min(self.deadline);
        let mut tokens = std::mem::take(&mut self.held);
        loop {
            self.write_paced(b"\"\"\"\x04\"\"\"\n", false)?;
            let again = (Instant::now() + READY_EVERY).min(deadline);
            while Instant::now() < again {
                self.read_tokens(&mut tokens)?;
                let mut ready = false;
                for t in tokens.drain(..) {
                    self.count(&t);
                    ready |= t == Token::Ready;
                }
                if ready {
                    self.stats.handshakes += 1;
                    self.synced = true;
                    self.decoder.xoff = false;
                    return Ok(());
                }
            }
            if Instant::now() >= deadline || self.kit_replies {
                return Err(self.timeout_error(command));
            }
        }
    }

    /// One call: request, the reply with the same id. An error object becomes
    /// [`LinkError::Refused`] with its code and message. A request whose reply does not come
    /// (the board said it dropped the request, a dropped frame is seen, or a silence) is sent
    /// again with a new id, within the call's timeout, after a new ready handshake and from
    /// then on at mos's default pace; a late reply to an earlier attempt is ignored. A lock
    /// is checked before it is sent again ([`MosLink::lost_lock_done`]).
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, LinkError> {
        let until = (Instant::now() + self.timeout).min(self.deadline);
        self.call_until(method, &params, until)
    }

    /// [`MosLink::call`], every attempt done by `until`.
    fn call_until(
        &mut self,
        method: &str,
        params: &Value,
        until: Instant,
    ) -> Result<Value, LinkError> {
        // The method only: the parameters of ATCA.SetKey carry keys in clear.
        tracing::debug!(port = %self.path, method = %method.escape_debug(), "RPC call");
        let (commands, typical) = chip_work(method, params);
        loop {
            self.stats.chip_commands += commands;
            self.stats.chip_typical_us += typical;
            let reported = match self.attempt(method, params, until)? {
                Attempt::Reply(r) => return r,
                Attempt::Lost { reported } => reported,
            };
            if Instant::now() >= until {
                return Err(self.timeout_error(method));
            }
            self.stats.retries += 1;
            self.stats.reported_drops += u64::from(reported);
            self.synced = false;
            self.slow = true;
            if method == "ATCA.LockZone" && self.lost_lock_done(method, params, until)? {
                return Ok(Value::Null);
            }
            let why = if reported {
                "the board dropped the request"
            } else {
                "no reply"
            };
            tracing::debug!(port = %self.path, method = %method.escape_debug(), "{why}: sending again, at mos's default pace");
        }
    }

    /// Whether the zone of a lock whose reply was lost is locked now: the lost attempt (or one
    /// before it) locked it, and sending the lock again would only fail. The board handles
    /// frames in order, so `ATCA.GetConfig` sees what every earlier request did. The engine
    /// locks only a zone it saw unlocked and reads the zone back after the lock.
    fn lost_lock_done(
        &mut self,
        method: &str,
        params: &Value,
        until: Instant,
    ) -> Result<bool, LinkError> {
        self.stats.lock_checks += 1;
        let zone = match self.call_until("ATCA.GetConfig", &json!({}), until) {
            Ok(r) => ConfigZone(self.bytes_field("ATCA.GetConfig", &r, "config")?),
            // The lock's own time ran out while checking it.
            Err(LinkError::RpcTimeout { .. }) => return Err(self.timeout_error(method)),
            Err(e) => return Err(e),
        };
        let locked = match params["zone"].as_u64() {
            Some(0) => zone.is_config_locked(),
            Some(1) => zone.is_data_locked(),
            _ => false,
        };
        if locked {
            tracing::debug!(port = %self.path, "ATCA.LockZone: its reply was lost, and the zone is locked: taken as done");
        }
        Ok(locked)
    }

    /// One request and its reply, or why it was lost (send again).
    fn attempt(
        &mut self,
        method: &str,
        params: &Value,
        until: Instant,
    ) -> Result<Attempt, LinkError> {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "src": "provisioner", "method": method, "params": params });
        let text = ascii_json(&request);
        if text.len() > MAX_FRAME {
            return Err(LinkError::Protocol {
                port: self.path.clone(),
                command: method.into(),
                answer: format!(
                    "the request is {} bytes, more than the board's rpc.max_frame_size ({MAX_FRAME}): not sent",
                    text.len()
                ),
            });
        }
        if self.slow || !self.synced {
            self.ready(&format!("ready handshake before {method}"))?;
        }
        self.write_paced(&encode_frame(&text), true)?;
        self.stats.requests += 1;
        // What came while we wrote cannot answer this request.
        for t in std::mem::take(&mut self.held) {
            self.count(&t);
        }
        let deadline = (Instant::now() + self.resend_after).min(until);
        let dropped = self.stats.corrupt + self.stats.oversized;
        let mut tokens = Vec::new();
        while Instant::now() < deadline {
            self.read_tokens(&mut tokens)?;
            let got = std::mem::take(&mut tokens);
            let mut reported = false;
            for t in got {
                self.count(&t);
                let v = match t {
                    Token::Frame(v) => v,
                    Token::Log(line) => {
                        reported |= board_dropped_frame(&line);
                        continue;
                    }
                    _ => continue,
                };
                match reply_for(&v, id) {
                    None => continue,
                    Some(Ok(result)) => return Ok(Attempt::Reply(Ok(result))),
                    Some(Err((code, message))) => {
                        let hint = if code == 404 {
                            format!(": {HINT_404}")
                        } else {
                            String::new()
                        };
                        return Ok(Attempt::Reply(Err(LinkError::Refused {
                            port: self.path.clone(),
                            command: method.into(),
                            reason: format!("error {code}: {message}{hint}"),
                        })));
                    }
                }
            }
            if reported {
                return Ok(Attempt::Lost { reported: true });
            }
            // A frame was dropped since the request went out: most likely its reply.
            if self.stats.corrupt + self.stats.oversized > dropped {
                return Ok(Attempt::Lost { reported: false });
            }
        }
        Ok(Attempt::Lost { reported: false })
    }

    fn bytes_field<const N: usize>(
        &self,
        method: &str,
        result: &Value,
        field: &str,
    ) -> Result<[u8; N], LinkError> {
        b64_field(result, field).ok_or_else(|| LinkError::Protocol {
            port: self.path.clone(),
            command: method.into(),
            answer: format!("`{field}` is not {N} bytes of base64"),
        })
    }

    /// `Sys.GetInfo`: the firmware's description of itself.
    pub fn sys_get_info(&mut self) -> Result<Value, LinkError> {
        self.call("Sys.GetInfo", json!({}))
    }

    /// `ATCA.GetConfig`: the 128-byte config zone.
    pub fn get_config(&mut self) -> Result<[u8; 128], LinkError> {
        let r = self.call("ATCA.GetConfig", json!({}))?;
        self.bytes_field("ATCA.GetConfig", &r, "config")
    }

    /// `ATCA.SetConfig`: the board writes bytes 16..127 (not 84..87), then UserExtra and
    /// Selector with UpdateExtra.
    pub fn set_config(&mut self, zone: &[u8; 128]) -> Result<(), LinkError> {
        self.call("ATCA.SetConfig", json!({ "config": b64::encode(zone) }))
            .map(|_| ())
    }

    /// `ATCA.LockZone`: 0 config, 1 data (the board locks without a CRC summary).
    pub fn lock_zone(&mut self, zone: u8) -> Result<(), LinkError> {
        self.call("ATCA.LockZone", json!({ "zone": zone }))
            .map(|_| ())
    }

    /// `ATCA.SetKey`. The key (and write key) cross the wire in clear: callers must have the
    /// operator's permission.
    pub fn set_key(&mut self, k: SetKey<'_>) -> Result<(), LinkError> {
        let mut params = json!({ "slot": k.slot, "key": b64::encode(k.key) });
        // mos omits block, ecc and wkslot when they are 0/false.
        if k.block != 0 {
            params["block"] = json!(k.block);
        }
        if k.ecc {
            params["ecc"] = json!(true);
        }
        if let Some((slot, wkey)) = k.write_key {
            params["wkey"] = json!(b64::encode(wkey));
            if slot != 0 {
                params["wkslot"] = json!(slot);
            }
        }
        self.call("ATCA.SetKey", params).map(|_| ())
    }

    /// `ATCA.GenKey`: a new private key in the slot; its public key X‖Y.
    pub fn gen_key(&mut self, slot: u8) -> Result<[u8; 64], LinkError> {
        let r = self.call("ATCA.GenKey", json!({ "slot": slot }))?;
        self.bytes_field("ATCA.GenKey", &r, "pubkey")
    }

    /// `ATCA.GetPubKey`: the public key X‖Y of the slot's private key.
    pub fn get_pub_key(&mut self, slot: u8) -> Result<[u8; 64], LinkError> {
        let r = self.call("ATCA.GetPubKey", json!({ "slot": slot }))?;
        self.bytes_field("ATCA.GetPubKey", &r, "pubkey")
    }

    /// `ATCA.Sign`: R‖S over a 32-byte digest.
    pub fn sign(&mut self, slot: u8, digest: &[u8; 32]) -> Result<[u8; 64], LinkError> {
        let r = self.call(
            "ATCA.Sign",
            json!({ "slot": slot, "digest": b64::encode(digest) }),
        )?;
        self.bytes_field("ATCA.Sign", &r, "signature")
    }

    /// `FS.Put` in chunks, each at its `offset` (0 truncates the file, the firmware seeks to
    /// the others), so a chunk sent again after a lost reply lands where it did before.
    pub fn fs_put(&mut self, name: &str, data: &[u8]) -> Result<(), LinkError> {
        if data.is_empty() {
            return self
                .call(
                    "FS.Put",
                    json!({ "filename": name, "offset": 0, "data": "" }),
                )
                .map(|_| ());
        }
        for (i, chunk) in data.chunks(PUT_CHUNK).enumerate() {
            self.call(
                "FS.Put",
                json!({ "filename": name, "offset": i * PUT_CHUNK, "data": b64::encode(chunk) }),
            )?;
        }
        Ok(())
    }

    /// `FS.Get` until the board says nothing is left. `None` if the board cannot open it.
    pub fn fs_get(&mut self, name: &str) -> Result<Option<Vec<u8>>, LinkError> {
        let mut out = Vec::new();
        loop {
            let r = match self.call(
                "FS.Get",
                json!({ "filename": name, "offset": out.len(), "len": GET_CHUNK }),
            ) {
                Ok(r) => r,
                Err(LinkError::Refused { .. }) if out.is_empty() => return Ok(None),
                Err(e) => return Err(e),
            };
            let bad = |what: &str| LinkError::Protocol {
                port: self.path.clone(),
                command: format!("FS.Get {name}"),
                answer: what.to_string(),
            };
            let (data, left) = fs_chunk(&r).map_err(bad)?;
            out.extend_from_slice(&data);
            if out.len() > MAX_FILE {
                return Err(bad("file larger than 64 KiB"));
            }
            if left == 0 {
                return Ok(Some(out));
            }
        }
    }

    /// `Config.Set` (not saved).
    pub fn config_set(&mut self, config: Value) -> Result<(), LinkError> {
        self.call("Config.Set", json!({ "config": config }))
            .map(|_| ())
    }

    /// `Config.Get` of one key (dotted path) or everything.
    pub fn config_get(&mut self, key: Option<&str>) -> Result<Value, LinkError> {
        let params = match key {
            Some(k) => json!({ "key": k }),
            None => json!({}),
        };
        self.call("Config.Get", params)
    }

    /// `Config.Save` without reboot.
    pub fn config_save(&mut self) -> Result<(), LinkError> {
        self.call("Config.Save", json!({ "reboot": false }))
            .map(|_| ())
    }
}

/// Names of the files the certificate and CA go to, and that `mqtt.ssl_cert` /
/// `mqtt.ssl_ca_cert` name.
pub const CERT_FILE: &str = "device.crt";
/// See [`CERT_FILE`].
pub const CA_FILE: &str = "ca.crt";

/// Why this firmware cannot lock one slot.
const NO_SLOT_LOCK: &str = "Mongoose OS's ATCA.LockZone locks only the config and data zones (no single-slot Lock), so anyone with the board can still re-key it; provision it with the provisioning firmware (--transport kit) to make the key permanent";

/// The Mongoose OS configuration that makes the board's MQTT client use the chip's key, the
/// certificate and CA just written, and the site's broker; `device.id` and `sensor.*` carry
/// what the sensor application needs beyond `mqtt.*`.
pub fn mongoose_config(c: &DeviceConfig) -> Value {
    let readings: Vec<Value> = c
        .readings
        .iter()
        .map(|r| json!({ "topic": r.topic, "quantity": r.quantity }))
        .collect();
    json!({
        "device": { "id": c.device_id },
        "mqtt": {
            "enable": true,
            "server": format!("{}:{}", c.broker_host, c.port),
            "client_id": c.client_id,
            "ssl_cert": CERT_FILE,
            "ssl_key": format!("ATCA:{}", c.key_slot),
            "ssl_ca_cert": CA_FILE,
            "clean_session": c.clean_session,
            "keep_alive": c.keep_alive_s,
            "will_topic": c.status_topic.clone().unwrap_or_default(),
            "will_message": if c.status_topic.is_some() { "offline" } else { "" },
            "will_retain": c.status_topic.is_some(),
        },
        "sensor": {
            // Mongoose's configuration has no arrays: the readings travel as JSON text.
            "readings": Value::Array(readings).to_string(),
            "qos": c.qos,
            "retain": c.retain,
            "interval_s": c.interval_s,
        },
    })
}

/// True if every leaf of `want` has the same value in `have`.
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => have == want,
    }
}

impl MosLink {
    fn unsupported(&self, operation: &'static str, reason: impl Into<String>) -> LinkError {
        LinkError::Unsupported {
            port: self.path.clone(),
            operation,
            reason: reason.into(),
        }
    }

    /// `ATCA.SetKey` as the engine may use it: only with the operator's permission.
    fn set_key_allowed(&mut self, k: SetKey<'_>) -> Result<(), LinkError> {
        if !self.plaintext_allowed {
            return Err(self.unsupported(
                "ATCA.SetKey",
                format!(
                    "it sends the key in clear; re-run with {}",
                    super::PLAINTEXT_FLAG
                ),
            ));
        }
        self.set_key(k)
    }
}

/// Chip calls of this firmware fail on the link (an RPC error object included).
fn rpc<T>(r: Result<T, LinkError>) -> Op<T> {
    r.map_err(ClientError::Transport)
}

impl Board for MosLink {
    fn port(&self) -> &str {
        &self.path
    }

    fn caps(&self) -> Caps {
        Caps {
            write_config: "ATCA.SetConfig",
            lock_config: "ATCA.LockZone 0",
            lock_data: "ATCA.LockZone 1",
            gen_key: "ATCA.GenKey",
            sign: "ATCA.Sign",
            put: "FS.Put",
            files: "FS.Put device.crt and ca.crt, Config.Set mqtt.* and Config.Save",
            inject: (
                "IN CLEAR with ATCA.SetKey (the board encrypts it for the chip)",
                "with ATCA.SetKey (in clear on the serial line, as --allow-plaintext-key-over-serial allows; the board made the encrypted PrivWrite)",
            ),
            lock_summary: false,
            zone_writes: false,
            keys_in_clear: Some(self.plaintext_allowed),
            no_slot_lock: Some(NO_SLOT_LOCK),
        }
    }

    fn describe(&mut self) -> Result<String, LinkError> {
        let info = self.sys_get_info()?;
        let field = |k: &str| {
            info[k]
                .as_str()
                .map(|s| sanitize(s.as_bytes()))
                .unwrap_or_else(|| "?".into())
        };
        Ok(format!(
            "Mongoose OS app {} {} ({}), id {}",
            field("app"),
            field("fw_version"),
            field("arch"),
            field("id")
        ))
    }

    fn stats(&self) -> LinkStats {
        LinkStats {
            lines: self.stats.requests,
            bytes_out: self.stats.bytes_out,
            bytes_in: self.stats.bytes_in,
            retries: self.stats.retries,
            resent_on_report: self.stats.reported_drops,
            chip_commands: self.stats.chip_commands,
            chip_typical_us: self.stats.chip_typical_us,
        }
    }

    fn read_config(&mut self) -> Op<ConfigZone> {
        rpc(self.get_config().map(ConfigZone))
    }

    fn write_config(&mut self, zone: &ConfigZone) -> Op<()> {
        rpc(self.set_config(&zone.0))
    }

    fn lock_config(&mut self, expected: Option<&ConfigZone>) -> Op<()> {
        if expected.is_some() {
            return rpc(Err(self.unsupported(
                "a config lock with its CRC summary",
                "ATCA.LockZone sends none",
            )));
        }
        rpc(self.lock_zone(0))
    }

    fn write_slot(&mut self, slot: u8, data: &[u8]) -> Op<()> {
        if data.len() != 32 {
            return rpc(Err(self.unsupported(
                "a data slot write",
                "ATCA.SetKey writes one 32-byte block",
            )));
        }
        rpc(self.set_key_allowed(SetKey {
            slot,
            block: 0,
            ecc: false,
            key: data,
            write_key: None,
        }))
    }

    fn write_otp(&mut self, _: &[u8; atecc::config::OTP_SIZE]) -> Op<()> {
        rpc(Err(self.unsupported(
            "an OTP write",
            "the ATCA service has no call for it",
        )))
    }

    fn lock_data(&mut self, summary: Option<u16>) -> Op<()> {
        if summary.is_some() {
            return rpc(Err(self.unsupported(
                "a data lock with its CRC summary",
                "ATCA.LockZone sends none",
            )));
        }
        rpc(self.lock_zone(1))
    }

    fn lock_slot(&mut self, _: u8) -> Op<()> {
        rpc(Err(self.unsupported("Lock (one slot)", NO_SLOT_LOCK)))
    }

    fn gen_key(&mut self, slot: u8) -> Op<[u8; 64]> {
        rpc(MosLink::gen_key(self, slot))
    }

    fn priv_write(&mut self, slot: u8, key: &[u8; 32], write_key: (u8, &[u8; 32])) -> Op<()> {
        rpc(self.set_key_allowed(SetKey {
            slot,
            block: 0,
            ecc: true,
            key,
            write_key: Some(write_key),
        }))
    }

    fn public_key(&mut self, slot: u8) -> Op<[u8; 64]> {
        rpc(self.get_pub_key(slot))
    }

    fn sign(&mut self, slot: u8, digest: &[u8; 32]) -> Op<[u8; 64]> {
        rpc(MosLink::sign(self, slot, digest))
    }

    fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, LinkError> {
        self.fs_get(name)
    }

    fn put(&mut self, name: &str, data: &[u8]) -> Result<(), LinkError> {
        self.fs_put(name, data)
    }

    fn config_file(&self, _: &DeviceConfig) -> Option<&'static str> {
        None
    }

    fn set_configuration(
        &mut self,
        config: &DeviceConfig,
    ) -> Result<Option<(bool, String)>, LinkError> {
        let slot = config.key_slot;
        let mut wanted = mongoose_config(config);
        let current = self.config_get(None).unwrap_or(Value::Null);
        // Mongoose's TLS hook refuses `ATCA:N` for a slot it may use for ECDHE.
        if let Some(mask) = current["sys"]["atca"]["ecdh_slots_mask"].as_u64()
            && mask & (1 << slot) != 0
        {
            wanted["sys"] = json!({ "atca": { "ecdh_slots_mask": mask & !(1u64 << slot) } });
        }
        let note = if config.tls_server_name != config.broker_host {
            format!(
                "; note: Mongoose OS checks the broker certificate against {} (the host it connects to), not {}",
                config.broker_host, config.tls_server_name
            )
        } else {
            String::new()
        };
        let server = format!("{}:{}", config.broker_host, config.port);
        if contains(&current, &wanted) {
            return Ok(Some((
                false,
                format!("mqtt.server {server}, mqtt.ssl_key ATCA:{slot} already saved{note}"),
            )));
        }
        self.config_set(wanted)?;
        self.config_save()?;
        Ok(Some((
            true,
            format!(
                "Config.Set mqtt.* (server {server}, ssl_key ATCA:{slot}, ssl_cert {CERT_FILE}, ssl_ca_cert {CA_FILE}), device.id, sensor.*; Config.Save{note}"
            ),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(input: &[u8]) -> Vec<Token> {
        let mut d = Decoder::new(MAX_FRAME + 6);
        let mut out = Vec::new();
        // Byte by byte and all at once must agree.
        for b in input {
            d.push(std::slice::from_ref(b), &mut out);
        }
        let mut d2 = Decoder::new(MAX_FRAME + 6);
        let mut out2 = Vec::new();
        d2.push(input, &mut out2);
        assert_eq!(out, out2);
        out
    }

    fn framed(json: &str) -> Vec<u8> {
        encode_frame(json)
    }

    #[test]
    fn base64_round_trips_and_matches_the_standard() {
        assert_eq!(b64::encode(b""), "");
        assert_eq!(b64::encode(b"f"), "Zg==");
        assert_eq!(b64::encode(b"fo"), "Zm8=");
        assert_eq!(b64::encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(b64::encode(&[0xFB, 0xFF]), "+/8=");
        for n in 0..70u8 {
            let data: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(b64::decode(&b64::encode(&data)), Some(data));
        }
        assert_eq!(b64::decode("Zg=="), Some(b"f".to_vec()));
        assert_eq!(b64::decode("Z"), None);
        assert_eq!(b64::decode("Zm9v!"), None);
    }

    #[test]
    fn crc_is_zlibs_in_eight_lowercase_hex_digits() {
        let f = encode_frame("{\"id\":1}");
        let text = String::from_utf8(f).expect("ascii");
        assert_eq!(
            text,
            format!("\n\"\"\"{{\"id\":1}}{:08x}\"\"\"\n", crc32(b"{\"id\":1}"))
        );
        assert!(text.chars().all(|c| !c.is_ascii_uppercase() || c == 'I'));
    }

    #[test]
    fn frames_in_both_framings_are_read() {
        let body = r#"{"id":7,"result":null}"#;
        let line = format!("{body}{:08x}\n", crc32(body.as_bytes()));
        let t = tokens(line.as_bytes());
        assert_eq!(t, vec![Token::Frame(json!({"id":7,"result":null}))]);
        let t = tokens(&framed(body));
        assert_eq!(t, vec![Token::Frame(json!({"id":7,"result":null}))]);
        // Extra metadata fields after the CRC are allowed.
        let line = format!("{body}{:08x},1,2\n", crc32(body.as_bytes()));
        assert_eq!(tokens(line.as_bytes()).len(), 1);
    }

    #[test]
    fn a_crc_mismatch_is_dropped_not_accepted() {
        let body = r#"{"id":7,"result":{"pubkey":"AAAA"}}"#;
        let good = crc32(body.as_bytes());
        let line = format!("{body}{:08x}\n", good ^ 1);
        let t = tokens(line.as_bytes());
        assert!(matches!(&t[..], [Token::Corrupt(why)] if why.contains("CRC mismatch")));
        // A flipped byte in the JSON with the old CRC.
        let bad = body.replace("AAAA", "AAAB");
        let t = tokens(format!("{bad}{good:08x}\n").as_bytes());
        assert!(matches!(&t[..], [Token::Corrupt(_)]));
        // No CRC at all: we always send one, so the board must too.
        let t = tokens(format!("{body}\n").as_bytes());
        assert!(matches!(&t[..], [Token::Corrupt(why)] if why.contains("no CRC")));
    }

    #[test]
    fn log_lines_and_junk_between_frames_are_skipped() {
        let body = r#"{"id":9,"result":null}"#;
        let mut input = Vec::new();
        input.extend_from_slice(b"[Jan  1 00:00:01.123] mgos_init  Mongoose OS 2.20.0\r\n");
        input.extend_from_slice(b"\x00\xff\xfegarbage");
        input.extend_from_slice(&framed(body));
        input.extend_from_slice(b"ets Jan  8 2013,rst cause:2, boot mode:(3,6)\n\x11\x13");
        input.extend_from_slice(&framed(body));
        let t = tokens(&input);
        let frames = t.iter().filter(|t| matches!(t, Token::Frame(_))).count();
        let logs = t.iter().filter(|t| matches!(t, Token::Log(_))).count();
        assert_eq!(frames, 2, "{t:?}");
        assert_eq!(logs, 3, "{t:?}");
        assert!(t.iter().all(|t| !matches!(t, Token::Corrupt(_))));
    }

    #[test]
    fn the_ready_answer_is_recognised() {
        assert_eq!(tokens(b"\n\"\"\"\x04\"\"\"\n"), vec![Token::Ready]);
        assert_eq!(tokens(b"\x04\n"), vec![Token::Ready]);
    }

    #[test]
    fn oversized_tokens_are_thrown_away_and_the_stream_recovers() {
        let body = r#"{"id":1,"result":null}"#;
        let mut input = vec![b'{'; MAX_FRAME + 100];
        input.extend_from_slice(b"\n");
        input.extend_from_slice(&framed(body));
        let t = tokens(&input);
        assert!(matches!(t[0], Token::Oversized(_)), "{t:?}");
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(t[1], Token::Frame(json!({"id":1,"result":null})));
    }

    #[test]
    fn config_comparison_looks_at_wanted_leaves_only() {
        let have = json!({"mqtt": {"server": "a:1", "keep_alive": 60, "user": "x"}, "sys": {}});
        assert!(contains(&have, &json!({"mqtt": {"server": "a:1"}})));
        assert!(contains(&have, &json!({"mqtt": {"keep_alive": 60.0}})));
        assert!(!contains(&have, &json!({"mqtt": {"server": "b:1"}})));
        assert!(!contains(&have, &json!({"device": {"id": "x"}})));
        assert!(!contains(&Value::Null, &json!({"a": 1})));
    }

    #[test]
    fn requests_are_pure_ascii() {
        let v = json!({"topic": "maison/séjour/température", "emoji": "🌡"});
        let text = ascii_json(&v);
        assert!(text.is_ascii());
        assert_eq!(serde_json::from_str::<Value>(&text).expect("json"), v);
    }

    #[test]
    fn oversized_requests_are_refused_before_sending() {
        let (mut link, _master) = pty_link(Duration::from_millis(300));
        let big = "x".repeat(MAX_FRAME);
        let e = link
            .call("FS.Put", json!({ "data": big }))
            .expect_err("too big");
        assert!(e.to_string().contains("max_frame_size"), "{e}");
        assert_eq!(link.stats.bytes_out, 0);
    }

    /// A pty whose master nobody reads or answers: a board that is not there.
    fn pty_link(timeout: Duration) -> (MosLink, std::os::fd::OwnedFd) {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let path = nix::unistd::ttyname(&pty.slave).expect("ttyname");
        let path = path.to_string_lossy().into_owned();
        let port = crate::bench::port::open(&path, 115_200).expect("open pty");
        drop(pty.slave);
        (MosLink::with_port(port, &path, timeout), pty.master)
    }

    #[test]
    fn a_silent_board_times_out_naming_the_port() {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let path = nix::unistd::ttyname(&pty.slave)
            .expect("ttyname")
            .to_string_lossy()
            .into_owned();
        let t = Instant::now();
        let e = match MosLink::connect_with(&path, 115_200, Duration::from_millis(500)) {
            Ok(_) => panic!("nothing answers on {path}"),
            Err(e) => e,
        };
        let text = e.to_string();
        assert!(matches!(e, LinkError::RpcTimeout { .. }), "{text}");
        assert!(text.starts_with(&path), "{text}");
        assert!(text.contains("ready handshake"), "{text}");
        assert!(text.contains("Mongoose OS"), "{text}");
        assert!(t.elapsed() < Duration::from_secs(3));
        drop(pty);
    }

    /// A scripted board on the master side of a pty.
    fn scripted(reply: impl Fn(&Value) -> Vec<u8> + Send + 'static) -> MosLink {
        scripted_with(move |v, _| reply(v))
    }

    /// As [`scripted`]; the script also gets the master side, to write on it later.
    fn scripted_with(
        reply: impl Fn(&Value, &std::fs::File) -> Vec<u8> + Send + 'static,
    ) -> MosLink {
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
            let mut d = Decoder::default();
            let mut buf = [0u8; 256];
            loop {
                let n = match master.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let mut toks = Vec::new();
                // The host's frames carry a CRC, so the same decoder reads them.
                d.push(&buf[..n], &mut toks);
                for t in toks {
                    let out = match t {
                        Token::Ready => b"[log] rpc ready\n\n\"\"\"\x04\"\"\"\n".to_vec(),
                        Token::Frame(v) => reply(&v, &master),
                        _ => continue,
                    };
                    if master.write_all(&out).is_err() {
                        return;
                    }
                }
            }
        });
        let port = crate::bench::port::open(&path, 115_200).expect("open pty");
        MosLink::with_port(port, &path, Duration::from_millis(800))
    }

    fn reply_frame(v: &Value) -> Vec<u8> {
        let text = v.to_string();
        format!("{text}{:08x}\n", crc32(text.as_bytes())).into_bytes()
    }

    /// mos `common/mgrpc/codec/serial.go` (`connRead`, `connWriteWithFC`) against rpc-uart's
    /// XON/XOFF (`mos.yml` `rpc.uart.fc_type` 2; `esp_uart.c` sends XOFF when its receive
    /// buffer is full, XON once drained): after the board's XOFF the next request waits for
    /// its XON, and the ready handshake is made once, not before every frame.
    #[test]
    fn writes_wait_for_the_boards_xon_after_its_xoff() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let xon_sent = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(AtomicU64::new(0));
        let (sent, seen) = (xon_sent.clone(), frames.clone());
        let mut link = scripted_with(move |req, master| {
            let first = seen.fetch_add(1, Ordering::SeqCst) == 0;
            let result = json!({"after_xon": sent.load(Ordering::SeqCst)});
            let mut out = reply_frame(&json!({"id": req["id"], "result": result}));
            if first {
                // Busy: XOFF right after the reply, XON a while later.
                out.push(XOFF);
                let mut m = master.try_clone().expect("clone");
                let sent = sent.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    sent.store(true, Ordering::SeqCst);
                    let _ = m.write_all(&[XON]);
                });
            }
            out
        });
        let r = link.call("Sys.GetInfo", json!({})).expect("first call");
        assert_eq!(r["after_xon"], json!(false));
        // Let the XOFF arrive before the next request is written.
        std::thread::sleep(Duration::from_millis(50));
        let r = link.call("Sys.GetInfo", json!({})).expect("second call");
        assert_eq!(
            r["after_xon"],
            json!(true),
            "the request went out before the XON"
        );
        assert_eq!(link.stats.xoff_holds, 1);
        assert_eq!(frames.load(Ordering::SeqCst), 2);
        // No handshake before the second frame.
        assert_eq!(link.stats.handshakes, 1);
    }

    /// A scripted board that answers the first request with `first`'s bytes and the others
    /// with a reply whose result is `result`; it counts the requests.
    fn first_lost(
        first: impl Fn(&Value) -> Vec<u8> + Send + 'static,
        result: Value,
    ) -> (MosLink, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        use std::sync::atomic::{AtomicU64, Ordering};
        let frames = std::sync::Arc::new(AtomicU64::new(0));
        let seen = frames.clone();
        let link = scripted(move |req| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                return first(req);
            }
            reply_frame(&json!({"id": req["id"], "result": result}))
        });
        (link, frames)
    }

    /// mos `serial.go` with its default `SendChunkDelay`: after a lost exchange the link
    /// shakes hands before every frame again.
    #[test]
    fn a_lost_reply_brings_back_the_handshake_before_every_frame() {
        // The first request's reply is lost.
        let (mut link, _) = first_lost(|_| Vec::new(), Value::Null);
        link.resend_after = Duration::from_millis(150);
        link.call("Sys.GetInfo", json!({}))
            .expect("answered on the resend");
        link.call("Sys.GetInfo", json!({})).expect("second call");
        assert_eq!(link.stats.retries, 1);
        // The first frame, then the resend and the next call each behind a handshake.
        assert_eq!(link.stats.handshakes, 3);
    }

    /// rpc-uart `mg_rpc_channel_uart_dispatcher`: a request whose CRC does not match is
    /// logged (`Corrupted frame (len): 'frame' 'meta' expected computed`, LL_WARN, on the RPC
    /// UART) and dropped without a reply. The link sends it again on that line: with a resend
    /// time longer than the call's timeout, only the board's report can bring the reply in time.
    #[test]
    fn a_request_the_board_reports_dropped_is_sent_again_at_once() {
        let report = |req: &Value| {
            let quoted = req.to_string();
            format!(
                "[Jan  1 00:00:03.120] mgos_rpc_channel_ua:118 0x3fff1c40 Corrupted frame ({}): '{quoted}' '0badc0de' 0badc0de 1234abcd\r\n",
                quoted.len()
            )
            .into_bytes()
        };
        let (mut link, frames) = first_lost(report, json!({"pubkey": b64::encode(&[9u8; 64])}));
        link.resend_after = Duration::from_secs(30);
        let k = link.get_pub_key(0).expect("answered on the resend");
        assert_eq!(k, [9u8; 64]);
        assert_eq!(frames.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(link.stats.retries, 1);
        assert_eq!(link.stats.reported_drops, 1);
        assert_eq!(link.stats().resent_on_report, 1);
        // The firmware's other drop: a buffer past rpc.max_frame_size.
        assert!(board_dropped_frame(
            "[Jan  1 00:00:04.000] mgos_rpc_channel_ua:146 Incoming frame is too big, dropping."
        ));
        assert!(!board_dropped_frame(
            "[Jan  1 00:00:04.000] mgos_debug uptime: 4.00, RAM: 52000, 41000 free"
        ));
    }

    /// A board whose config zone locks once (a second ATCA.LockZone fails, as the chip
    /// refuses a locked zone) and whose replies to the first `lose` LockZone requests are
    /// garbled on the line, or (`drop_first`) which reports the first LockZone request
    /// corrupted and does not run it; it counts the LockZone requests it ran.
    fn locking_board(
        lose: u64,
        drop_first: bool,
    ) -> (MosLink, std::sync::Arc<std::sync::atomic::AtomicU64>) {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let locks = Arc::new(AtomicU64::new(0));
        let locked = Arc::new(AtomicBool::new(false));
        let ran = locks.clone();
        let dropped = AtomicBool::new(!drop_first);
        let link = scripted(move |req| {
            if req["method"] == "ATCA.LockZone" && !dropped.swap(true, Ordering::SeqCst) {
                return b"[Jan  1 00:00:05.000] mgos_rpc_channel_ua:118 Corrupted frame\r\n"
                    .to_vec();
            }
            let reply = match req["method"].as_str() {
                Some("ATCA.GetConfig") => {
                    let mut zone = [0x55u8; 128];
                    zone[87] = if locked.load(Ordering::SeqCst) {
                        0x00
                    } else {
                        0x55
                    };
                    json!({"id": req["id"], "result": {"config": b64::encode(&zone)}})
                }
                Some("ATCA.LockZone") => {
                    let n = ran.fetch_add(1, Ordering::SeqCst);
                    if locked.swap(true, Ordering::SeqCst) {
                        json!({"id": req["id"], "error": {"code": 500, "message": "ATCA_EXECUTION_ERROR"}})
                    } else if n < lose {
                        let mut bad = reply_frame(&json!({"id": req["id"], "result": null}));
                        bad[4] ^= 0x02;
                        return bad;
                    } else {
                        json!({"id": req["id"], "result": null})
                    }
                }
                _ => json!({"id": req["id"], "error": {"code": 404, "message": "No handler"}}),
            };
            reply_frame(&reply)
        });
        (link, locks)
    }

    /// A resent lock is not idempotent (the chip refuses a locked zone): when the reply to
    /// `ATCA.LockZone` is lost, the link asks `ATCA.GetConfig` first, finds the zone locked
    /// and takes the lost attempt as done, without a second lock.
    #[test]
    fn a_lock_whose_reply_was_lost_is_checked_not_sent_again() {
        use std::sync::atomic::Ordering;
        let (mut link, locks) = locking_board(1, false);
        link.lock_zone(0).expect("the lost attempt locked the zone");
        assert_eq!(locks.load(Ordering::SeqCst), 1, "the lock was sent again");
        assert_eq!(link.stats.lock_checks, 1);
        assert_eq!(link.stats.retries, 1);
        // A lock the board reports dropped: the check finds the zone unlocked, and the lock
        // is sent again.
        let (mut link, locks) = locking_board(0, true);
        link.lock_zone(0).expect("locked on the resend");
        assert_eq!(locks.load(Ordering::SeqCst), 1);
        assert_eq!(link.stats.lock_checks, 1);
        assert_eq!(link.stats.reported_drops, 1);
        assert_eq!(link.stats.requests, 3, "lock, GetConfig, lock");
    }

    #[test]
    fn calls_skip_logs_stale_replies_and_corrupt_frames() {
        let mut link = scripted(|req| {
            let id = req["id"].clone();
            let mut out = Vec::new();
            out.extend_from_slice(b"[Jan  1 00:00:02.000] mgos_atca_service.c:42 GenKey\n");
            // A reply to someone else, a corrupted copy of ours, then ours.
            out.extend_from_slice(&reply_frame(&json!({"id": 12345, "result": {}})));
            let good = json!({"id": id, "result": {"pubkey": b64::encode(&[7u8; 64])}});
            let mut bad = reply_frame(&good);
            bad[10] ^= 0x01;
            out.extend_from_slice(&bad);
            out.extend_from_slice(&reply_frame(&good));
            out
        });
        let k = link.gen_key(0).expect("genkey");
        assert_eq!(k, [7u8; 64]);
        assert_eq!(link.stats.corrupt, 1);
        assert!(link.stats.log_lines >= 2);
    }

    #[test]
    fn a_board_that_only_sends_corrupt_replies_times_out_and_says_so() {
        let mut link = scripted(|req| {
            let mut bad = reply_frame(&json!({"id": req["id"], "result": null}));
            bad[3] ^= 0x20;
            bad
        });
        let e = link.lock_zone(0).expect_err("never a good reply");
        let text = e.to_string();
        assert!(text.contains("ATCA.LockZone"), "{text}");
        assert!(text.contains("CRC mismatch"), "{text}");
    }

    #[test]
    fn error_objects_become_refusals_with_code_and_message() {
        let mut link = scripted(|req| {
            reply_frame(
                &json!({"id": req["id"], "error": {"code": 404, "message": "No handler for ATCA.GetConfig"}}),
            )
        });
        let e = link.get_config().expect_err("404");
        let text = e.to_string();
        assert!(text.contains("error 404: No handler"), "{text}");
        assert!(text.contains("sys.atca.enable"), "{text}");
    }
}
