//! The secure frame on air (DESIGN.md §8).
//!
//! ```text
//! | TO | FROM | ID     | FLAGS | FCNT_HI | ciphertext ...        | MIC (4) |
//! |  RadioHead header (4 bytes)  |         |                       |         |
//!            ID = frame counter bits 0..7, FCNT_HI = bits 8..15
//! ```
//!
//! * The first four bytes are a RadioHead RH_RF95 header, so RadioHead nodes can share the
//!   channel (they see a datagram to TO from FROM; `ID` is RadioHead's sequence number and
//!   here carries the low byte of the counter). FLAGS low nibble = [`FLAGS_SECURE_V1`]; the
//!   high nibble (RadioHead's, 0x80 = ACK) is zero.
//! * 16 counter bits travel on air; the receiver infers the upper 16 from the last counter it
//!   accepted. Encryption and MIC use all 32 bits.
//! * Payload: AES-128-CTR exactly like LoRaWAN 1.0 FRMPayload (see [`crate::crypto`]) with
//!   DevAddr = `FROM | TO << 8` and Dir = up.
//! * MIC: LoRaWAN-style AES-CMAC over `B0 | header | FCNT_HI | ciphertext`, 4 bytes.
//!
//! Overhead: [`OVERHEAD`] = 9 bytes (LoRaWAN: 13).

use crate::crypto::{DIR_UP, LinkKeys, lorawan_crypt, lorawan_mic};

/// Bytes before the ciphertext: RadioHead header (4) and the counter's second byte.
pub const HEADER_LEN: usize = 5;
/// MIC length.
pub const MIC_LEN: usize = 4;
/// Total overhead of a secure frame.
pub const OVERHEAD: usize = HEADER_LEN + MIC_LEN;
/// Largest LoRa payload the SX127x FIFO and `sx127x_lora` can carry.
pub const MAX_FRAME_LEN: usize = 255;
/// FLAGS value marking a secure frame, version 1 (RadioHead application nibble).
pub const FLAGS_SECURE_V1: u8 = 0x05;

/// The DevAddr used in the LoRaWAN-style blocks: FROM in the low byte, TO in the next.
pub fn dev_addr(from: u8, to: u8) -> u32 {
    u32::from(from) | (u32::from(to) << 8)
}

/// A frame split into its fields, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame<'a> {
    /// Destination address (255 = broadcast).
    pub to: u8,
    /// Sender address.
    pub from: u8,
    /// The 16 counter bits on air.
    pub counter_low: u16,
    /// FLAGS byte.
    pub flags: u8,
    /// The encrypted records.
    pub ciphertext: &'a [u8],
    /// The MIC on air.
    pub mic: [u8; 4],
    /// Header and ciphertext: what the MIC covers.
    pub authenticated: &'a [u8],
}

/// Why bytes are not a well-formed secure frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Shorter than header + MIC.
    #[error("frame too short: {len} bytes, a secure frame has at least {OVERHEAD}")]
    TooShort {
        /// Length found.
        len: usize,
    },
    /// Longer than a LoRa payload can be.
    #[error("frame too long: {len} bytes, at most {MAX_FRAME_LEN}")]
    TooLong {
        /// Length found.
        len: usize,
    },
    /// FLAGS do not mark a secure frame (e.g. plain RadioHead traffic on the channel).
    #[error("not a secure lora-link frame (FLAGS 0x{flags:02x}, expected 0x{FLAGS_SECURE_V1:02x})")]
    NotSecure {
        /// FLAGS found.
        flags: u8,
    },
}

/// Splits bytes from the radio into frame fields. Never panics.
pub fn parse(bytes: &[u8]) -> Result<RawFrame<'_>, ParseError> {
    if bytes.len() < OVERHEAD {
        return Err(ParseError::TooShort { len: bytes.len() });
    }
    if bytes.len() > MAX_FRAME_LEN {
        return Err(ParseError::TooLong { len: bytes.len() });
    }
    let flags = bytes[3];
    if flags != FLAGS_SECURE_V1 {
        return Err(ParseError::NotSecure { flags });
    }
    let (authenticated, mic) = bytes.split_at(bytes.len() - MIC_LEN);
    Ok(RawFrame {
        to: bytes[0],
        from: bytes[1],
        counter_low: u16::from_le_bytes([bytes[2], bytes[4]]),
        flags,
        ciphertext: &authenticated[HEADER_LEN..],
        mic: [mic[0], mic[1], mic[2], mic[3]],
        authenticated,
    })
}

/// Builds a secure frame: encrypts `plaintext` with counter `counter` and appends the MIC.
/// `plaintext` may be at most [`MAX_FRAME_LEN`] - [`OVERHEAD`] bytes.
pub fn seal(
    keys: &LinkKeys,
    to: u8,
    from: u8,
    counter: u32,
    plaintext: &[u8],
) -> Result<Vec<u8>, ParseError> {
    let len = plaintext.len() + OVERHEAD;
    if len > MAX_FRAME_LEN {
        return Err(ParseError::TooLong { len });
    }
    let c = counter.to_le_bytes();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[to, from, c[0], FLAGS_SECURE_V1, c[1]]);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let addr = dev_addr(from, to);
    lorawan_crypt(&keys.enc, DIR_UP, addr, counter, &mut out[start..]);
    let mic = lorawan_mic(&keys.mic, DIR_UP, addr, counter, &out);
    out.extend_from_slice(&mic);
    Ok(out)
}

impl RawFrame<'_> {
    /// Checks the MIC for the full counter `counter` (whose low 16 bits must be those on air).
    pub fn mic_ok(&self, keys: &LinkKeys, counter: u32) -> bool {
        if counter as u16 != self.counter_low {
            return false;
        }
        let expect = lorawan_mic(
            &keys.mic,
            DIR_UP,
            dev_addr(self.from, self.to),
            counter,
            self.authenticated,
        );
        // constant-time enough for 4 bytes: compare all of them
        expect
            .iter()
            .zip(self.mic.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }

    /// Decrypts the ciphertext (call only after [`RawFrame::mic_ok`]).
    pub fn decrypt(&self, keys: &LinkKeys, counter: u32) -> Vec<u8> {
        let mut p = self.ciphertext.to_vec();
        lorawan_crypt(
            &keys.enc,
            DIR_UP,
            dev_addr(self.from, self.to),
            counter,
            &mut p,
        );
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_parse_round_trip_with_9_bytes_overhead() {
        let keys = LinkKeys::derive(&[1u8; 16]);
        let f = seal(&keys, 1, 10, 0x0001_2345, b"hello").expect("seal");
        assert_eq!(f.len(), 5 + OVERHEAD);
        assert_eq!(&f[..4], &[1, 10, 0x45, FLAGS_SECURE_V1]);
        let r = parse(&f).expect("parse");
        assert_eq!(r.counter_low, 0x2345);
        assert!(r.mic_ok(&keys, 0x0001_2345));
        assert!(
            !r.mic_ok(&keys, 0x0002_2345),
            "upper counter bits are authenticated"
        );
        assert_eq!(r.decrypt(&keys, 0x0001_2345), b"hello");
        assert_ne!(&f[5..10], b"hello");
    }

    #[test]
    fn same_message_different_counter_different_ciphertext() {
        let keys = LinkKeys::derive(&[1u8; 16]);
        let a = seal(&keys, 1, 10, 1, b"21.5").expect("seal");
        let b = seal(&keys, 1, 10, 2, b"21.5").expect("seal");
        assert_ne!(a[5..9], b[5..9]);
    }

    #[test]
    fn bad_shapes() {
        assert_eq!(parse(&[0; 8]), Err(ParseError::TooShort { len: 8 }));
        assert_eq!(parse(&[0; 256]), Err(ParseError::TooLong { len: 256 }));
        assert_eq!(
            parse(&[0xff, 1, 0, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::NotSecure { flags: 0 })
        );
        let keys = LinkKeys::derive(&[1u8; 16]);
        assert!(seal(&keys, 1, 2, 3, &[0; 247]).is_err());
        assert!(seal(&keys, 1, 2, 3, &[0; 246]).is_ok());
    }
}
