//! Bounded line assembly for the serial port: bytes in, complete lines out. A line longer
//! than the buffer is discarded up to its newline and reported as [`LineEvent::Overflow`],
//! so a hostile host can neither overflow memory nor smuggle the tail of a long line in as a
//! command of its own.

/// Longest accepted line, newline excluded. Fits `fw:put` with a 256-byte chunk and a 32-byte
/// name, and `E:t` with the largest (155-byte) packet.
pub const MAX_LINE: usize = 640;

/// What one received byte completed.
#[derive(Debug, PartialEq, Eq)]
pub enum LineEvent<'a> {
    /// A complete line (without the LF, CR and NUL bytes dropped).
    Line(&'a [u8]),
    /// A line exceeded [`MAX_LINE`]; it was dropped whole.
    Overflow,
}

/// Accumulates bytes into lines.
#[derive(Debug)]
pub struct LineBuffer {
    buf: [u8; MAX_LINE],
    len: usize,
    overflowed: bool,
}

impl Default for LineBuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl LineBuffer {
    /// An empty buffer.
    pub const fn new() -> Self {
        LineBuffer {
            buf: [0; MAX_LINE],
            len: 0,
            overflowed: false,
        }
    }

    /// Feeds one byte; returns an event when it ends a line. Empty lines are ignored.
    /// NUL bytes (cryptoauthlib skips them too) and CR are dropped.
    pub fn push(&mut self, byte: u8) -> Option<LineEvent<'_>> {
        match byte {
            b'\n' => {
                let len = core::mem::take(&mut self.len);
                if core::mem::take(&mut self.overflowed) {
                    Some(LineEvent::Overflow)
                } else if len == 0 {
                    None
                } else {
                    Some(LineEvent::Line(&self.buf[..len]))
                }
            }
            0 | b'\r' => None,
            _ if self.overflowed => None,
            _ if self.len == MAX_LINE => {
                self.overflowed = true;
                self.len = 0;
                None
            }
            _ => {
                self.buf[self.len] = byte;
                self.len += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed<'a>(lb: &'a mut LineBuffer, bytes: &[u8]) -> Option<LineEvent<'a>> {
        let (last, rest) = bytes.split_last()?;
        for &b in rest {
            assert!(lb.push(b).is_none());
        }
        lb.push(*last)
    }

    #[test]
    fn lines_crlf_and_nuls() {
        let mut lb = LineBuffer::new();
        assert_eq!(
            feed(&mut lb, b"\0\0E:w()\r\n"),
            Some(LineEvent::Line(b"E:w()"))
        );
        assert_eq!(feed(&mut lb, b"\n"), None);
    }

    #[test]
    fn an_oversized_line_is_dropped_whole() {
        let mut lb = LineBuffer::new();
        let mut long = [b'A'; MAX_LINE + 100];
        long[MAX_LINE + 10..MAX_LINE + 15].copy_from_slice(b"E:w()");
        for &b in &long {
            assert!(lb.push(b).is_none());
        }
        assert_eq!(lb.push(b'\n'), Some(LineEvent::Overflow));
        // the next line is clean
        assert_eq!(feed(&mut lb, b"E:i()\n"), Some(LineEvent::Line(b"E:i()")));
        // exactly MAX_LINE fits
        for _ in 0..MAX_LINE {
            assert!(lb.push(b'x').is_none());
        }
        assert!(matches!(lb.push(b'\n'), Some(LineEvent::Line(l)) if l.len() == MAX_LINE));
    }
}
