//! The secure frame on air (DESIGN.md §8).
//!
//! ```text
//! | TO | FROM | ID     | FLAGS | FCNT_HI | TABLE | ciphertext ...        | MIC (4) |
//! |  RadioHead header (4 bytes)  |         |       |                       |         |
//!            ID = frame counter bits 0..7, FCNT_HI = bits 8..15
//!            FLAGS = 0x06 | key phase (0x06: even key id, 0x07: odd key id)
//!            TABLE = first byte of the sender's topic-table fingerprint
//! ```
//!
//! * The first four bytes are a RadioHead RH_RF95 header, so RadioHead nodes can share the
//!   channel (they see a datagram to TO from FROM; `ID` is RadioHead's sequence number and
//!   here carries the low byte of the counter). FLAGS low nibble = [`FLAGS_SECURE_V2`] or'd
//!   with the key phase; the high nibble (RadioHead's, 0x80 = ACK) is zero.
//! * Key phase: the low bit of the link key's id (its generation, 1, 2, ... as the
//!   provisioner numbers rotations). A receiver holds at most two keys per sender, the current
//!   one and, during a rotation window, the one being retired, with different phases: the bit
//!   names the key without trial decryption (as QUIC's key phase bit does).
//! * TABLE: the first byte of the [`TableFingerprint`] of the sender's topic-index table. A
//!   receiver whose own table has another fingerprint rejects the frame before decoding it
//!   (`topic_table_mismatch`). All 4 fingerprint bytes are covered by the MIC (not sent), so
//!   tables that differ but share the first byte give a bad MIC: a record is never decoded
//!   with another table than the one it was encoded with. (The byte is checked before the MIC,
//!   so a forged or corrupted frame can also count as a mismatch; it is never accepted.)
//! * 16 counter bits travel on air; the receiver infers the upper 16 from the last counter it
//!   accepted under that key. Encryption and MIC use all 32 bits.
//! * Payload: AES-128-CTR exactly like LoRaWAN 1.0 FRMPayload (see [`crate::crypto`]) with
//!   DevAddr = `FROM | TO << 8` and Dir = up.
//! * MIC: LoRaWAN-style AES-CMAC over `B0 | fingerprint (4) | header (6) | ciphertext`,
//!   4 bytes.
//!
//! Overhead: [`OVERHEAD`] = 10 bytes (LoRaWAN: 13), DESIGN.md's bound.

use crate::crypto::{DIR_UP, LinkKeys, lorawan_crypt, lorawan_mic};
use crate::records::TableFingerprint;

/// Bytes before the ciphertext: RadioHead header (4), the counter's second byte, TABLE.
pub const HEADER_LEN: usize = 6;
/// MIC length.
pub const MIC_LEN: usize = 4;
/// Total overhead of a secure frame.
pub const OVERHEAD: usize = HEADER_LEN + MIC_LEN;
/// Largest LoRa payload the SX127x FIFO and `sx127x_lora` can carry.
pub const MAX_FRAME_LEN: usize = 255;
/// FLAGS value marking a secure frame, version 2 (RadioHead application nibble), key phase 0.
pub const FLAGS_SECURE_V2: u8 = 0x06;
/// The key phase bit of FLAGS.
pub const FLAGS_KEY_PHASE: u8 = 0x01;

/// The key phase of a key id (its low bit).
pub fn key_phase(key_id: u32) -> u8 {
    (key_id & 1) as u8
}

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
    /// Key phase (0 or 1): the low bit of the sender's key id.
    pub key_phase: u8,
    /// First byte of the sender's topic-table fingerprint.
    pub table: u8,
    /// The encrypted records.
    pub ciphertext: &'a [u8],
    /// The MIC on air.
    pub mic: [u8; 4],
    /// Header and ciphertext: what the MIC covers (after the fingerprint).
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
    /// FLAGS do not mark a secure frame (e.g. plain RadioHead traffic on the channel, or a
    /// version 1 frame of a sender not updated).
    #[error(
        "not a secure lora-link frame (FLAGS 0x{flags:02x}, expected 0x{FLAGS_SECURE_V2:02x} or 0x07)"
    )]
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
    if flags & !FLAGS_KEY_PHASE != FLAGS_SECURE_V2 {
        return Err(ParseError::NotSecure { flags });
    }
    let (authenticated, mic) = bytes.split_at(bytes.len() - MIC_LEN);
    Ok(RawFrame {
        to: bytes[0],
        from: bytes[1],
        counter_low: u16::from_le_bytes([bytes[2], bytes[4]]),
        flags,
        key_phase: flags & FLAGS_KEY_PHASE,
        table: bytes[5],
        ciphertext: &authenticated[HEADER_LEN..],
        mic: [mic[0], mic[1], mic[2], mic[3]],
        authenticated,
    })
}

/// What a sender seals a frame with: its keys, the id of its link key, its table's fingerprint.
#[derive(Debug, Clone)]
pub struct SealKey<'a> {
    /// Keys derived from the link key.
    pub keys: &'a LinkKeys,
    /// The link key's id (its low bit goes on air).
    pub key_id: u32,
    /// Fingerprint of the sender's topic table.
    pub table: TableFingerprint,
}

impl<'a> SealKey<'a> {
    /// Sealing under `keys` (id `key_id`) for a sender whose topic table is `table`.
    pub fn new(keys: &'a LinkKeys, key_id: u32, table: &crate::records::TopicTable) -> Self {
        Self {
            keys,
            key_id,
            table: table.fingerprint(),
        }
    }
}

/// The MIC input after B0: the full fingerprint, then header and ciphertext.
fn mic_of(keys: &LinkKeys, addr: u32, counter: u32, fp: TableFingerprint, msg: &[u8]) -> [u8; 4] {
    let mut m = Vec::with_capacity(4 + msg.len());
    m.extend_from_slice(&fp.0);
    m.extend_from_slice(msg);
    lorawan_mic(&keys.mic, DIR_UP, addr, counter, &m)
}

/// Builds a secure frame: encrypts `plaintext` with counter `counter` and appends the MIC.
/// `plaintext` may be at most [`MAX_FRAME_LEN`] - [`OVERHEAD`] bytes.
pub fn seal(
    key: &SealKey<'_>,
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
    let flags = FLAGS_SECURE_V2 | key_phase(key.key_id);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&[to, from, c[0], flags, c[1], key.table.on_air()]);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let addr = dev_addr(from, to);
    lorawan_crypt(&key.keys.enc, DIR_UP, addr, counter, &mut out[start..]);
    let mic = mic_of(key.keys, addr, counter, key.table, &out);
    out.extend_from_slice(&mic);
    Ok(out)
}

impl RawFrame<'_> {
    /// Checks the MIC for the full counter `counter` (whose low 16 bits must be those on air)
    /// and the receiver's table fingerprint `table`.
    pub fn mic_ok(&self, keys: &LinkKeys, counter: u32, table: TableFingerprint) -> bool {
        if counter as u16 != self.counter_low {
            return false;
        }
        let expect = mic_of(
            keys,
            dev_addr(self.from, self.to),
            counter,
            table,
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

    const FP: TableFingerprint = TableFingerprint([0xa1, 2, 3, 4]);

    fn sk(keys: &LinkKeys, key_id: u32) -> SealKey<'_> {
        SealKey {
            keys,
            key_id,
            table: FP,
        }
    }

    #[test]
    fn seal_parse_round_trip_with_10_bytes_overhead() {
        let keys = LinkKeys::derive(&[1u8; 16]);
        let f = seal(&sk(&keys, 1), 1, 10, 0x0001_2345, b"hello").expect("seal");
        assert_eq!(f.len(), 5 + OVERHEAD);
        assert_eq!(&f[..4], &[1, 10, 0x45, FLAGS_SECURE_V2 | 1]);
        assert_eq!(f[5], 0xa1, "the table byte");
        let r = parse(&f).expect("parse");
        assert_eq!(r.counter_low, 0x2345);
        assert_eq!(r.key_phase, 1);
        assert!(r.mic_ok(&keys, 0x0001_2345, FP));
        assert!(
            !r.mic_ok(&keys, 0x0002_2345, FP),
            "upper counter bits are authenticated"
        );
        assert!(
            !r.mic_ok(&keys, 0x0001_2345, TableFingerprint([0xa1, 2, 3, 5])),
            "the whole fingerprint is authenticated"
        );
        assert_eq!(r.decrypt(&keys, 0x0001_2345), b"hello");
        assert_ne!(&f[6..11], b"hello");
        let even = seal(&sk(&keys, 2), 1, 10, 7, b"x").expect("seal");
        assert_eq!(parse(&even).expect("parse").key_phase, 0);
    }

    #[test]
    fn same_message_different_counter_different_ciphertext() {
        let keys = LinkKeys::derive(&[1u8; 16]);
        let a = seal(&sk(&keys, 1), 1, 10, 1, b"21.5").expect("seal");
        let b = seal(&sk(&keys, 1), 1, 10, 2, b"21.5").expect("seal");
        assert_ne!(a[6..10], b[6..10]);
    }

    #[test]
    fn bad_shapes() {
        assert_eq!(parse(&[0; 9]), Err(ParseError::TooShort { len: 9 }));
        assert_eq!(parse(&[0; 256]), Err(ParseError::TooLong { len: 256 }));
        assert_eq!(
            parse(&[0xff, 1, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::NotSecure { flags: 0 })
        );
        assert_eq!(
            parse(&[0xff, 1, 0, 0x05, 0, 0, 0, 0, 0, 0]),
            Err(ParseError::NotSecure { flags: 0x05 }),
            "version 1 frames are not accepted"
        );
        let keys = LinkKeys::derive(&[1u8; 16]);
        assert!(seal(&sk(&keys, 1), 1, 2, 3, &[0; 246]).is_err());
        assert!(seal(&sk(&keys, 1), 1, 2, 3, &[0; 245]).is_ok());
    }
}
