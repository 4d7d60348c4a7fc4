//! The serial bridge: Microchip's kit protocol for the chip plus the `fw` target for the
//! device store, one ASCII line in, one line out. See the crate documentation for the
//! grammar and the status codes.

use core::fmt::Write as _;

use crate::chip::{Atecc, ChipError, I2cBus, MAX_PACKET, MAX_RESPONSE};
use crate::hex;
use crate::line::{LineBuffer, LineEvent};
use crate::store::{MAX_NAME_LEN, Persist, Store, StoreError};

/// Kit and `fw` status codes: the two hex digits before `(` in every reply.
pub mod status {
    /// Success.
    pub const OK: u8 = 0x00;
    /// The chip did not answer (NACK, bus fault or timeout).
    pub const BUS: u8 = 0xE1;
    /// Malformed line: parentheses, hex digits, arguments.
    pub const SYNTAX: u8 = 0xE2;
    /// Unknown target or command.
    pub const UNKNOWN: u8 = 0xE3;
    /// Line longer than [`crate::line::MAX_LINE`].
    pub const TOO_LONG: u8 = 0xE4;
    /// No device at that index or address.
    pub const NO_DEVICE: u8 = 0xE5;
    /// Invalid blob name.
    pub const BAD_NAME: u8 = 0xF0;
    /// No such blob or upload.
    pub const NOT_FOUND: u8 = 0xF1;
    /// Chunk or blob too large.
    pub const TOO_LARGE: u8 = 0xF2;
    /// Store full.
    pub const FULL: u8 = 0xF3;
    /// Chunk offset is not where the upload stands.
    pub const OFFSET: u8 = 0xF4;
    /// Commit length or CRC-32 mismatch.
    pub const MISMATCH: u8 = 0xF5;
    /// Read past the end of a blob.
    pub const RANGE: u8 = 0xF6;
    /// Storage medium failure.
    pub const STORAGE: u8 = 0xF7;
}

/// Why a line was refused: status code and a short text for the error reply.
type Refusal = (u8, &'static str);

/// Firmware version reported by `fw:info()`.
pub const FIRMWARE_VERSION: &str = env!("CARGO_PKG_VERSION");
/// Largest chunk in one `fw:put` or `fw:get`.
pub const MAX_CHUNK: usize = 256;
/// The chip's I2C address (8-bit form) as the kit reports and selects it.
pub const CHIP_ADDRESS: u8 = 0xC0;
/// The answer to `board:device(00)`: device name, interface, `(address)`.
pub const DEVICE_LINE: &[u8] = b"ECC508A TWI C0(C0)";
/// Capacity of one reply line (status, parentheses, hex payload, LF).
pub const REPLY_CAP: usize = 1024;

/// One reply line under construction.
pub struct Reply {
    buf: [u8; REPLY_CAP],
    len: usize,
}

impl Default for Reply {
    fn default() -> Self {
        Self::new()
    }
}

impl Reply {
    /// An empty reply.
    pub const fn new() -> Self {
        Reply {
            buf: [0; REPLY_CAP],
            len: 0,
        }
    }

    /// The reply bytes, LF included.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The status code of the reply, if it is a `SS(...)` reply.
    pub fn status(&self) -> Option<u8> {
        let mut s = [0u8; 1];
        match hex::decode_into(self.buf.get(..2)?, &mut s) {
            Ok(1) if self.buf.get(2) == Some(&b'(') => Some(s[0]),
            _ => None,
        }
    }

    fn raw(&mut self, text: &[u8]) {
        self.len = 0;
        self.push(text);
        self.push(b"\n");
    }

    fn push(&mut self, bytes: &[u8]) {
        // Sizes are bounded by construction; clip rather than panic if that ever changes.
        let n = bytes.len().min(REPLY_CAP - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    /// Sets `SS(<hex of payload>)\n`.
    pub fn set(&mut self, status: u8, payload: &[u8]) {
        self.len = 0;
        let mut ss = [0u8; 2];
        let _ = hex::encode_into(&[status], &mut ss);
        self.push(&ss);
        self.push(b"(");
        let room = REPLY_CAP - self.len - 2;
        let take = payload.len().min(room / 2);
        if let Some(n) = hex::encode_into(
            &payload[..take],
            &mut self.buf[self.len..self.len + 2 * take],
        ) {
            self.len += n;
        }
        self.push(b")\n");
    }
}

/// A fixed-size text buffer for `fw:info()` and `fw:list()`.
struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Text<N> {
    fn new() -> Self {
        Text {
            buf: [0; N],
            len: 0,
        }
    }
    fn bytes(&mut self, b: &[u8]) {
        let n = b.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl<const N: usize> core::fmt::Write for Text<N> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

/// What the platform must do after a line was handled.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `fw:reboot()` was accepted: send the reply, then restart.
    pub reboot: bool,
    changed: Option<([u8; MAX_NAME_LEN], usize)>,
}

impl Outcome {
    /// The blob that a commit or delete changed, if any.
    pub fn changed(&self) -> Option<&[u8]> {
        self.changed.as_ref().map(|(n, l)| &n[..*l])
    }
}

/// The bridge server state: the line assembler and the selected device.
#[derive(Debug, Default)]
pub struct Bridge {
    lines: LineBuffer,
    selected: Option<u8>,
}

impl Bridge {
    /// A bridge with nothing received yet.
    pub const fn new() -> Self {
        Bridge {
            lines: LineBuffer::new(),
            selected: None,
        }
    }

    /// The address chosen by the last `physical:select`, if any.
    pub fn selected(&self) -> Option<u8> {
        self.selected
    }

    /// Feeds one received byte. When it completes a line, the line is handled, `reply` holds
    /// the answer to send, and the outcome is returned.
    pub fn receive<B: I2cBus, P: Persist>(
        &mut self,
        byte: u8,
        chip: &mut Atecc<B>,
        store: &mut Store<P>,
        reply: &mut Reply,
    ) -> Option<Outcome> {
        // Copy the line out so that the line buffer is free while we act on it.
        let mut line = [0u8; crate::line::MAX_LINE];
        let len = match self.lines.push(byte)? {
            LineEvent::Overflow => {
                reply.set(status::TOO_LONG, b"line too long");
                return Some(Outcome::default());
            }
            LineEvent::Line(l) => {
                line[..l.len()].copy_from_slice(l);
                l.len()
            }
        };
        Some(self.handle_line(&line[..len], chip, store, reply))
    }

    /// Handles one complete line (without its LF) and writes the reply.
    pub fn handle_line<B: I2cBus, P: Persist>(
        &mut self,
        line: &[u8],
        chip: &mut Atecc<B>,
        store: &mut Store<P>,
        reply: &mut Reply,
    ) -> Outcome {
        match self.dispatch(line, chip, store, reply) {
            Ok(outcome) => outcome,
            Err((code, msg)) => {
                reply.set(code, msg.as_bytes());
                Outcome::default()
            }
        }
    }

    fn dispatch<B: I2cBus, P: Persist>(
        &mut self,
        line: &[u8],
        chip: &mut Atecc<B>,
        store: &mut Store<P>,
        reply: &mut Reply,
    ) -> Result<Outcome, Refusal> {
        // `E:physical:interface:i2c` has no parentheses; cryptoauthlib ignores the answer.
        if let [t, b':', rest @ ..] = line
            && is_chip_target(*t)
            && rest.starts_with(b"physical:interface:")
        {
            return match &rest[b"physical:interface:".len()..] {
                b"i2c" | b"twi" => ok(reply, &[]),
                _ => Err((
                    status::NO_DEVICE,
                    "only the i2c interface exists on this board",
                )),
            };
        }
        let (head, args) = split_call(line)?;
        match head {
            b"board:device" => {
                let index = parse_hex_byte(args)?;
                if index == 0 {
                    reply.raw(DEVICE_LINE);
                } else {
                    reply.set(status::NO_DEVICE, &[]);
                }
                Ok(Outcome::default())
            }
            b"fw:info" => self.fw_info(args, chip, store, reply),
            b"fw:list" => fw_list(args, store, reply),
            b"fw:put" => fw_put(args, store, reply),
            b"fw:commit" => fw_commit(args, store, reply),
            b"fw:get" => fw_get(args, store, reply),
            b"fw:del" => fw_del(args, store, reply),
            b"fw:abort" => {
                no_args(args)?;
                store.abort();
                ok(reply, &[])
            }
            b"fw:reboot" => {
                no_args(args)?;
                reply.set(status::OK, &[]);
                Ok(Outcome {
                    reboot: true,
                    changed: None,
                })
            }
            [t, b':', cmd @ ..] if is_chip_target(*t) => self.chip_command(cmd, args, chip, reply),
            _ => Err((status::UNKNOWN, "unknown target or command")),
        }
    }

    fn chip_command<B: I2cBus>(
        &mut self,
        cmd: &[u8],
        args: &[u8],
        chip: &mut Atecc<B>,
        reply: &mut Reply,
    ) -> Result<Outcome, Refusal> {
        match cmd {
            b"physical:select" => {
                let address = parse_hex_byte(args)?;
                if address != CHIP_ADDRESS {
                    return Err((status::NO_DEVICE, "no device at that address"));
                }
                self.selected = Some(address);
                ok(reply, &[])
            }
            b"w" => {
                no_args(args)?;
                let wake = chip.wake().map_err(bus_error)?;
                ok(reply, &wake)
            }
            b"i" => {
                no_args(args)?;
                chip.idle().map_err(bus_error)?;
                ok(reply, &[])
            }
            b"s" => {
                no_args(args)?;
                chip.sleep().map_err(bus_error)?;
                ok(reply, &[])
            }
            b"t" => {
                let mut packet = [0u8; MAX_PACKET];
                let n = hex::decode_into(args, &mut packet).map_err(|e| match e {
                    hex::HexError::TooLong => (status::SYNTAX, "packet longer than 155 bytes"),
                    hex::HexError::OddLength => (status::SYNTAX, "odd number of hex digits"),
                    hex::HexError::BadDigit => (status::SYNTAX, "not a hex digit"),
                })?;
                if n == 0 {
                    return Err((status::SYNTAX, "empty packet"));
                }
                let mut resp = [0u8; MAX_RESPONSE];
                let len = chip.transact(&packet[..n], &mut resp).map_err(bus_error)?;
                ok(reply, &resp[..len])
            }
            _ => Err((status::UNKNOWN, "unknown chip command")),
        }
    }

    fn fw_info<B: I2cBus, P: Persist>(
        &mut self,
        args: &[u8],
        chip: &mut Atecc<B>,
        store: &mut Store<P>,
        reply: &mut Reply,
    ) -> Result<Outcome, Refusal> {
        no_args(args)?;
        let mut text = Text::<256>::new();
        let _ = write!(text, "version={FIRMWARE_VERSION},id=");
        match chip.serial_number() {
            Ok(sn) => {
                let mut h = [0u8; 18];
                if let Some(n) = hex::encode_into(&sn, &mut h) {
                    text.bytes(&h[..n]);
                }
            }
            Err(_) => text.bytes(b"unknown"),
        }
        let _ = write!(
            text,
            ",free={},capacity={},max_blob={},max_blobs={},max_chunk={},blobs={}",
            store.free(),
            crate::store::STORE_CAPACITY,
            crate::store::MAX_BLOB_LEN,
            crate::store::MAX_BLOBS,
            MAX_CHUNK,
            store.count()
        );
        ok(reply, text.as_bytes())
    }
}

fn is_chip_target(t: u8) -> bool {
    matches!(t, b'E' | b'e' | b's' | b'S')
}

fn ok(reply: &mut Reply, payload: &[u8]) -> Result<Outcome, Refusal> {
    reply.set(status::OK, payload);
    Ok(Outcome::default())
}

fn bus_error(e: ChipError) -> Refusal {
    match e {
        ChipError::Timeout => (status::BUS, "chip did not answer in time"),
        ChipError::BadPacket => (status::SYNTAX, "bad packet length"),
        _ => (status::BUS, "chip did not acknowledge"),
    }
}

/// Splits `head(args)`: exactly one `(`, the line ending in the only `)`.
fn split_call(line: &[u8]) -> Result<(&[u8], &[u8]), Refusal> {
    let open = line
        .iter()
        .position(|&c| c == b'(')
        .ok_or((status::SYNTAX, "missing '('"))?;
    let (head, rest) = line.split_at(open);
    let inner = rest
        .strip_prefix(b"(")
        .and_then(|r| r.strip_suffix(b")"))
        .ok_or((status::SYNTAX, "line must end with ')'"))?;
    if inner.iter().any(|&c| c == b'(' || c == b')') {
        return Err((status::SYNTAX, "unbalanced parentheses"));
    }
    Ok((head, inner))
}

fn no_args(args: &[u8]) -> Result<(), Refusal> {
    if args.is_empty() {
        Ok(())
    } else {
        Err((status::SYNTAX, "this command takes no arguments"))
    }
}

fn parse_hex_byte(args: &[u8]) -> Result<u8, Refusal> {
    let mut b = [0u8; 1];
    match (args.len(), hex::decode_into(args, &mut b)) {
        (2, Ok(1)) => Ok(b[0]),
        _ => Err((status::SYNTAX, "expected two hex digits")),
    }
}

/// Parses a decimal number of at most 7 digits (no sign, no spaces).
fn parse_decimal(s: &[u8]) -> Result<usize, Refusal> {
    if s.is_empty() || s.len() > 7 || !s.iter().all(u8::is_ascii_digit) {
        return Err((status::SYNTAX, "expected a decimal number"));
    }
    Ok(s.iter()
        .fold(0usize, |n, &d| n * 10 + usize::from(d - b'0')))
}

/// Splits comma-separated arguments into exactly `N` fields.
fn fields<const N: usize>(args: &[u8]) -> Result<[&[u8]; N], Refusal> {
    let mut out: [&[u8]; N] = [&[]; N];
    let mut it = args.split(|&c| c == b',');
    for slot in out.iter_mut() {
        *slot = it
            .next()
            .ok_or((status::SYNTAX, "wrong number of arguments"))?;
    }
    if it.next().is_some() {
        return Err((status::SYNTAX, "wrong number of arguments"));
    }
    Ok(out)
}

fn store_error(e: StoreError) -> Refusal {
    match e {
        StoreError::BadName => (
            status::BAD_NAME,
            "blob names are 1-32 of [A-Za-z0-9._-], starting with a letter or digit",
        ),
        StoreError::NotFound => (status::NOT_FOUND, "no such blob or upload"),
        StoreError::TooLarge => (status::TOO_LARGE, "blob larger than 4096 bytes"),
        StoreError::Full => (status::FULL, "store full"),
        StoreError::Offset(_) => (
            status::OFFSET,
            "chunk offset is not where the upload stands",
        ),
        StoreError::Mismatch => (
            status::MISMATCH,
            "length or CRC-32 does not match the upload",
        ),
        StoreError::Range => (status::RANGE, "offset past the end of the blob"),
        StoreError::Storage => (status::STORAGE, "storage failure; store reloaded"),
    }
}

fn fw_list<P: Persist>(
    args: &[u8],
    store: &mut Store<P>,
    reply: &mut Reply,
) -> Result<Outcome, Refusal> {
    no_args(args)?;
    let mut text = Text::<400>::new();
    let mut first = true;
    store.for_each(|name, len| {
        if !first {
            text.bytes(b",");
        }
        first = false;
        text.bytes(name);
        let _ = write!(text, ":{len}");
    });
    ok(reply, text.as_bytes())
}

fn fw_put<P: Persist>(
    args: &[u8],
    store: &mut Store<P>,
    reply: &mut Reply,
) -> Result<Outcome, Refusal> {
    let [name, offset, data] = fields::<3>(args)?;
    let offset = parse_decimal(offset)?;
    let mut chunk = [0u8; MAX_CHUNK];
    let n = hex::decode_into(data, &mut chunk).map_err(|e| match e {
        hex::HexError::TooLong => (status::TOO_LARGE, "chunk larger than 256 bytes"),
        hex::HexError::OddLength => (status::SYNTAX, "odd number of hex digits"),
        hex::HexError::BadDigit => (status::SYNTAX, "not a hex digit"),
    })?;
    match store.put_chunk(name, offset, &chunk[..n]) {
        Ok(total) => {
            let mut text = Text::<8>::new();
            let _ = write!(text, "{total}");
            ok(reply, text.as_bytes())
        }
        Err(StoreError::Offset(expected)) => {
            let mut text = Text::<48>::new();
            let _ = write!(text, "expected offset {expected}");
            reply.set(status::OFFSET, text.as_bytes());
            Ok(Outcome::default())
        }
        Err(e) => Err(store_error(e)),
    }
}

fn fw_commit<P: Persist>(
    args: &[u8],
    store: &mut Store<P>,
    reply: &mut Reply,
) -> Result<Outcome, Refusal> {
    let [name, len, crc] = fields::<3>(args)?;
    let len = parse_decimal(len)?;
    let mut c = [0u8; 4];
    if crc.len() != 8 || hex::decode_into(crc, &mut c).is_err() {
        return Err((status::SYNTAX, "expected a CRC-32 as 8 hex digits"));
    }
    store
        .commit(name, len, u32::from_be_bytes(c))
        .map_err(store_error)?;
    reply.set(status::OK, &[]);
    Ok(changed(name))
}

fn fw_get<P: Persist>(
    args: &[u8],
    store: &mut Store<P>,
    reply: &mut Reply,
) -> Result<Outcome, Refusal> {
    let [name, offset, len] = fields::<3>(args)?;
    let offset = parse_decimal(offset)?;
    let len = parse_decimal(len)?;
    if len > MAX_CHUNK {
        return Err((status::TOO_LARGE, "at most 256 bytes per get"));
    }
    let mut chunk = [0u8; MAX_CHUNK];
    let n = store
        .read(name, offset, &mut chunk[..len])
        .map_err(store_error)?;
    ok(reply, &chunk[..n])
}

fn fw_del<P: Persist>(
    args: &[u8],
    store: &mut Store<P>,
    reply: &mut Reply,
) -> Result<Outcome, Refusal> {
    store.delete(args).map_err(store_error)?;
    reply.set(status::OK, &[]);
    Ok(changed(args))
}

fn changed(name: &[u8]) -> Outcome {
    let mut n = [0u8; MAX_NAME_LEN];
    let len = name.len().min(MAX_NAME_LEN);
    n[..len].copy_from_slice(&name[..len]);
    Outcome {
        reboot: false,
        changed: Some((n, len)),
    }
}
