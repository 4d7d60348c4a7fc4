//! The board side of Mongoose OS RPC over UART, as `rpc-uart`'s
//! `src/mgos_rpc_channel_uart.c` (`mg_rpc_channel_uart_dispatcher`, `..._send_frame`) does it.
//!
//! - Received bytes collect in one buffer. After each burst the buffer is cut into frames:
//!   first at the earliest `"""` anywhere in it (which turns on the legacy framing for
//!   replies), else at the first `\n`.
//! - A frame of only white space is answered with a bare `\n`, which is queued and goes out
//!   with the next thing the board sends (the firmware appends it without starting a send).
//! - A frame holding exactly 0x04 is the ready question: `"""` 0x04 `"""` is sent at once,
//!   with no newlines.
//! - Otherwise bytes before the first `{` are junk; the metadata is everything after the last
//!   `}`; when it is 8 characters or more it is read as `sscanf("%x")` does (white space,
//!   sign, optional `0x`, hex digits, saturating at 0xffffffff) and compared with the CRC-32
//!   of the JSON: a mismatch (or no hex digit at all) drops the frame; a match makes every
//!   later reply carry a CRC. Shorter metadata is not checked.
//! - Bytes of 0x80 or more get no special treatment (the channel has none): they stay in the
//!   frame like any other byte.
//! - After cutting, a buffer longer than `rpc.max_frame_size` + 6 is thrown away.
//! - A reply is `\n`, [`"""`], JSON, [CRC], [`"""`], `\n`.

use crate::crc::crc32;

/// `rpc.max_frame_size`.
pub const MAX_FRAME: usize = 4096;
/// The ready byte.
pub const EOF: u8 = 0x04;
const DELIM_1: &[u8] = b"\"\"\"";

/// What the channel made of the received bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A frame for the RPC layer: its JSON text (from the first `{` to the last `}`) and
    /// whether a CRC was checked and matched.
    Frame {
        /// The JSON bytes.
        json: Vec<u8>,
        /// A CRC was present and matched.
        crc: bool,
    },
    /// The ready question (answered by the channel).
    Ready,
    /// An empty frame (answered by the channel with a queued `\n`).
    Empty,
    /// A frame whose CRC did not match: dropped without a reply.
    Corrupted,
    /// The buffer passed the frame limit without a delimiter: thrown away.
    Oversized,
}

/// The channel's state: receive buffer, send buffer and the two modes the host turns on.
#[derive(Debug, Default)]
pub struct UartChannel {
    rx: Vec<u8>,
    tx: Vec<u8>,
    sending: bool,
    /// The host used `"""` framing: replies use it too.
    pub compat: bool,
    /// The host sent a valid CRC: replies carry one.
    pub crc_used: bool,
}

/// The old name of [`UartChannel`] (one byte at a time through [`UartChannel::push`]).
pub type FrameReader = UartChannel;

/// `sscanf(meta, "%x")` on a 32-bit newlib: `None` when no hex digit follows.
pub fn scan_hex(meta: &[u8]) -> Option<u32> {
    let mut i = 0;
    while i < meta.len() && meta[i].is_ascii_whitespace() {
        i += 1;
    }
    let neg = match meta.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    if meta.get(i) == Some(&b'0')
        && matches!(meta.get(i + 1), Some(b'x' | b'X'))
        && meta.get(i + 2).is_some_and(u8::is_ascii_hexdigit)
    {
        i += 2;
    }
    let digits = meta[i..]
        .iter()
        .take_while(|b| b.is_ascii_hexdigit())
        .count();
    if digits == 0 {
        return None;
    }
    let mut v: u64 = 0;
    for &b in &meta[i..i + digits] {
        let d = u64::from(char::from(b).to_digit(16).unwrap_or(0));
        v = (v << 4 | d).min(u64::from(u32::MAX) + 1);
    }
    let v = u32::try_from(v).unwrap_or(u32::MAX);
    Some(if neg { v.wrapping_neg() } else { v })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

impl UartChannel {
    /// Appends received bytes (one burst).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.rx.extend_from_slice(bytes);
    }

    /// Cuts the next frame off the receive buffer, if a delimiter is there.
    pub fn next_event(&mut self) -> Option<Received> {
        loop {
            let (flen, end) = if let Some(at) = find(&self.rx, DELIM_1) {
                self.compat = true;
                (at, at + DELIM_1.len())
            } else {
                let at = self.rx.iter().position(|&b| b == b'\n')?;
                (at, at + 1)
            };
            let frame: Vec<u8> = self.rx[..flen].to_vec();
            self.rx.drain(..end);
            if frame.iter().all(u8::is_ascii_whitespace) {
                self.tx.push(b'\n');
                return Some(Received::Empty);
            }
            if frame == [EOF] {
                self.tx.extend_from_slice(b"\"\"\"\x04\"\"\"");
                self.sending = true;
                return Some(Received::Ready);
            }
            let Some(start) = frame.iter().position(|&b| b == b'{') else {
                continue;
            };
            let f = &frame[start..];
            let close = f.iter().rposition(|&b| b == b'}').map_or(0, |c| c + 1);
            let (json, meta) = f.split_at(close);
            let mut crc = false;
            if meta.len() >= 8 {
                if scan_hex(meta) != Some(crc32(json)) {
                    return Some(Received::Corrupted);
                }
                self.crc_used = true;
                crc = true;
            }
            if json.is_empty() {
                continue;
            }
            return Some(Received::Frame {
                json: json.to_vec(),
                crc,
            });
        }
    }

    /// Ends a burst: a buffer longer than the frame limit is thrown away.
    pub fn end_of_burst(&mut self) -> Option<Received> {
        if self.rx.len() > MAX_FRAME + 2 * DELIM_1.len() {
            self.rx.clear();
            return Some(Received::Oversized);
        }
        None
    }

    /// One byte as a burst of its own; the first event it caused.
    pub fn push(&mut self, b: u8) -> Option<Received> {
        self.feed(&[b]);
        let mut first = None;
        while let Some(e) = self.next_event() {
            first.get_or_insert(e);
        }
        let over = self.end_of_burst();
        first.or(over)
    }

    /// Queues a reply frame and starts sending.
    pub fn send_frame(&mut self, json: &str) {
        self.tx
            .extend_from_slice(&encode_reply(json, self.crc_used, self.compat));
        self.sending = true;
    }

    /// The bytes to write now: everything queued, once a send has started.
    pub fn take_output(&mut self) -> Option<Vec<u8>> {
        if !self.sending || self.tx.is_empty() {
            return None;
        }
        self.sending = false;
        Some(std::mem::take(&mut self.tx))
    }
}

/// A reply on the wire.
pub fn encode_reply(json: &str, crc: bool, compat: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 16);
    out.push(b'\n');
    if compat {
        out.extend_from_slice(DELIM_1);
    }
    out.extend_from_slice(json.as_bytes());
    if crc {
        out.extend_from_slice(format!("{:08x}", crc32(json.as_bytes())).as_bytes());
    }
    if compat {
        out.extend_from_slice(DELIM_1);
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(ch: &mut UartChannel, bytes: &[u8]) -> Vec<Received> {
        ch.feed(bytes);
        let mut v: Vec<Received> = std::iter::from_fn(|| ch.next_event()).collect();
        v.extend(ch.end_of_burst());
        v
    }

    #[test]
    fn scan_hex_reads_like_sscanf() {
        assert_eq!(scan_hex(b"010a4ff9,a,b"), Some(0x010a_4ff9));
        assert_eq!(scan_hex(b" 0x1F zz"), Some(0x1f));
        assert_eq!(scan_hex(b"123456789"), Some(u32::MAX));
        assert_eq!(scan_hex(b"-1      "), Some(u32::MAX));
        assert_eq!(scan_hex(b"zzzzzzzz"), None);
    }

    #[test]
    fn the_triple_quote_is_found_before_an_earlier_newline() {
        let mut ch = UartChannel::default();
        let got = all(&mut ch, b"{\"a\":1}\n{\"b\":2}\"\"\"");
        assert_eq!(
            got,
            vec![Received::Frame {
                json: b"{\"a\":1}\n{\"b\":2}".to_vec(),
                crc: false
            }]
        );
        assert!(ch.compat);
    }

    #[test]
    fn an_empty_frame_queues_a_newline_that_leaves_with_the_next_send() {
        let mut ch = UartChannel::default();
        assert_eq!(all(&mut ch, b" \r\n"), vec![Received::Empty]);
        assert_eq!(ch.take_output(), None);
        assert_eq!(all(&mut ch, b"\x04\n"), vec![Received::Ready]);
        assert_eq!(
            ch.take_output().as_deref(),
            Some(&b"\n\"\"\"\x04\"\"\""[..])
        );
    }
}
