//! Command packets and response frames.
//!
//! A command is `count | opcode | param1 | param2 (LE) | data | CRC lo | CRC hi`, where count
//! covers the whole packet; a response is `count | data | CRC lo | CRC hi`. Nothing here
//! allocates: packets are written into a buffer the caller owns.
//!
//! ```
//! use atecc::packet::{Command, parse_response};
//! let mut buf = [0u8; atecc::packet::MAX_PACKET];
//! let n = Command::info_revision().encode(&mut buf).unwrap();
//! assert_eq!(&buf[..n], &[0x07, 0x30, 0x00, 0x00, 0x00, 0x03, 0x5D]);
//! // A revision response from an ATECC508A:
//! let mut frame = [0x07, 0x00, 0x00, 0x50, 0x00, 0, 0];
//! let crc = atecc::crc::crc16_le(&frame[..5]);
//! frame[5..].copy_from_slice(&crc);
//! assert_eq!(parse_response(&frame).unwrap(), &[0x00, 0x00, 0x50, 0x00]);
//! ```

use crate::crc::crc16_le;
use crate::opcode::*;
use crate::status::Status;

/// Largest command packet the chip accepts (count byte 155).
pub const MAX_PACKET: usize = 155;
/// Smallest command packet: count, opcode, param1, param2 (2), CRC (2).
pub const MIN_PACKET: usize = 7;
/// Largest response frame the ATECC508A sends (64 data bytes + count + CRC).
pub const MAX_RESPONSE: usize = 67;
/// Largest data field of a command.
pub const MAX_DATA: usize = MAX_PACKET - MIN_PACKET;

/// What can go wrong talking to the chip, seen from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The chip answered with a status other than success.
    Status(Status),
    /// A response frame's CRC does not match: resend.
    ResponseCrc,
    /// A response frame is truncated, or its count byte disagrees with its length.
    ResponseLength,
    /// A response has a different length than the command returns.
    UnexpectedResponse,
    /// The output buffer is too small for the packet.
    BufferTooSmall,
    /// The data does not fit in one packet.
    DataTooLong,
}

impl From<Status> for Error {
    fn from(status: Status) -> Self {
        Error::Status(status)
    }
}

impl core::fmt::Display for Error {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Error::Status(status) => status.fmt(f),
            Error::ResponseCrc => f.write_str("response CRC mismatch: resend the command"),
            Error::ResponseLength => f.write_str("response frame truncated or count byte wrong"),
            Error::UnexpectedResponse => f.write_str("response has an unexpected length"),
            Error::BufferTooSmall => f.write_str("output buffer too small for the packet"),
            Error::DataTooLong => f.write_str("command data longer than 148 bytes"),
        }
    }
}

/// One command: opcode, two parameters and data borrowed from the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Command<'a> {
    /// The opcode.
    pub opcode: Opcode,
    /// Param1 (the mode).
    pub param1: u8,
    /// Param2 (key id, address or value), little-endian on the wire.
    pub param2: u16,
    /// The data field.
    pub data: &'a [u8],
}

impl<'a> Command<'a> {
    /// A command with no data.
    pub const fn new(opcode: Opcode, param1: u8, param2: u16) -> Self {
        Self {
            opcode,
            param1,
            param2,
            data: &[],
        }
    }

    /// A command with data.
    pub const fn with_data(opcode: Opcode, param1: u8, param2: u16, data: &'a [u8]) -> Self {
        Self {
            opcode,
            param1,
            param2,
            data,
        }
    }

    /// Length of the encoded packet (the count byte).
    pub const fn packet_len(&self) -> usize {
        MIN_PACKET + self.data.len()
    }

    /// Writes the packet (count..CRC) into `buf` and returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.data.len() > MAX_DATA {
            return Err(Error::DataTooLong);
        }
        let len = self.packet_len();
        let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
        out[0] = len as u8;
        out[1] = self.opcode as u8;
        out[2] = self.param1;
        out[3..5].copy_from_slice(&self.param2.to_le_bytes());
        out[5..len - 2].copy_from_slice(self.data);
        let crc = crc16_le(&out[..len - 2]);
        out[len - 2..].copy_from_slice(&crc);
        Ok(len)
    }

    /// Parses a whole packet as the chip does: a wrong count or CRC is a communications
    /// error (0xFF), a packet too short or an unknown opcode a parse error (0x03).
    pub fn parse(packet: &'a [u8]) -> Result<Command<'a>, Status> {
        let (&count, _) = packet.split_first().ok_or(Status::CommError)?;
        if packet.len() < 3 || count as usize != packet.len() || packet.len() > MAX_PACKET {
            return Err(Status::CommError);
        }
        let (body, crc) = packet.split_at(packet.len() - 2);
        if crc16_le(body) != crc {
            return Err(Status::CommError);
        }
        if packet.len() < MIN_PACKET {
            return Err(Status::ParseError);
        }
        let opcode = Opcode::from_u8(body[1]).ok_or(Status::ParseError)?;
        Ok(Command {
            opcode,
            param1: body[2],
            param2: u16::from_le_bytes([body[3], body[4]]),
            data: &body[5..],
        })
    }

    // ----- builders for the commands a provisioner and a TLS client send -----

    /// Info(Revision).
    pub const fn info_revision() -> Self {
        Self::new(Opcode::Info, InfoMode::Revision as u8, 0)
    }

    /// Info in any mode.
    pub const fn info(mode: InfoMode, param2: u16) -> Self {
        Self::new(Opcode::Info, mode as u8, param2)
    }

    /// Random (seed updated).
    pub const fn random() -> Self {
        Self::new(Opcode::Random, 0, 0)
    }

    /// Read 4 or 32 bytes at `address` (see [`crate::config::address`]).
    pub const fn read(zone: Zone, address: u16, long: bool) -> Self {
        let p1 = zone as u8 | if long { RW_32_BYTES } else { 0 };
        Self::new(Opcode::Read, p1, address)
    }

    /// Plain Write of 4 or 32 bytes at `address`.
    pub const fn write(zone: Zone, address: u16, data: &'a [u8]) -> Self {
        let p1 = zone as u8 | if data.len() == 32 { RW_32_BYTES } else { 0 };
        Self::with_data(Opcode::Write, p1, address, data)
    }

    /// Encrypted 32-byte Write: `cipher_and_mac` is the 32-byte ciphertext followed by the MAC
    /// (see [`crate::host::encrypt_write`]).
    pub const fn write_encrypted(zone: Zone, address: u16, cipher_and_mac: &'a [u8; 64]) -> Self {
        let p1 = zone as u8 | RW_32_BYTES | WRITE_ENCRYPTED;
        Self::with_data(Opcode::Write, p1, address, cipher_and_mac)
    }

    /// Nonce with a 20-byte NumIn (random mode) or a 32-byte NumIn (pass-through).
    pub const fn nonce(mode: NonceMode, num_in: &'a [u8]) -> Self {
        Self::with_data(Opcode::Nonce, mode as u8, 0, num_in)
    }

    /// GenDig over a zone, with the 4 OtherData bytes `opcode zone idL idH` that cryptoauthlib
    /// always sends (needed for NoMac keys, ignored otherwise).
    pub const fn gen_dig(zone: GenDigZone, key_id: u16, other_data: &'a [u8; 4]) -> Self {
        Self::with_data(Opcode::GenDig, zone as u8, key_id, other_data)
    }

    /// GenDig without OtherData.
    pub const fn gen_dig_plain(zone: GenDigZone, key_id: u16) -> Self {
        Self::new(Opcode::GenDig, zone as u8, key_id)
    }

    /// GenKey: create a private key in `slot` and return its public key.
    pub const fn gen_key_create(slot: u8) -> Self {
        Self::new(Opcode::GenKey, GENKEY_CREATE, slot as u16)
    }

    /// GenKey: the public key of the private key in `slot`.
    pub const fn gen_key_public(slot: u8) -> Self {
        Self::new(Opcode::GenKey, 0x00, slot as u16)
    }

    /// GenKey in any mode, with optional OtherData (3 bytes for digest modes).
    pub const fn gen_key(mode: u8, slot: u8, other_data: &'a [u8]) -> Self {
        Self::with_data(Opcode::GenKey, mode, slot as u16, other_data)
    }

    /// Sign the 32 bytes in TempKey with the key in `slot` (external message).
    pub const fn sign_external(slot: u8) -> Self {
        Self::new(Opcode::Sign, SIGN_EXTERNAL, slot as u16)
    }

    /// Sign an internally generated message with the key in `slot`.
    pub const fn sign_internal(slot: u8, include_full_sn: bool) -> Self {
        let p1 = SIGN_INTERNAL | if include_full_sn { SIGN_INCLUDE_SN } else { 0 };
        Self::new(Opcode::Sign, p1, slot as u16)
    }

    /// Verify an external P-256 signature: `sig_and_key` = R‖S‖X‖Y, message in TempKey.
    pub const fn verify_external(sig_and_key: &'a [u8; 128]) -> Self {
        Self::with_data(
            Opcode::Verify,
            VerifyMode::External as u8,
            VERIFY_KEY_P256,
            sig_and_key,
        )
    }

    /// Verify with the public key stored in `slot`: `signature` = R‖S, message in TempKey.
    pub const fn verify_stored(slot: u8, signature: &'a [u8; 64]) -> Self {
        Self::with_data(
            Opcode::Verify,
            VerifyMode::Stored as u8,
            slot as u16,
            signature,
        )
    }

    /// ECDH with the private key in `slot` and the peer public key X‖Y.
    pub const fn ecdh(slot: u8, public_key: &'a [u8; 64]) -> Self {
        Self::with_data(Opcode::Ecdh, 0, slot as u16, public_key)
    }

    /// PrivWrite in clear (data zone unlocked): `data` = 36-byte key value ‖ 32 zero bytes.
    pub const fn priv_write(slot: u8, data: &'a [u8; 68]) -> Self {
        Self::with_data(Opcode::PrivWrite, 0, slot as u16, data)
    }

    /// Encrypted PrivWrite: `data` = 36-byte ciphertext ‖ 32-byte MAC
    /// (see [`crate::host::encrypt_priv_write`]).
    pub const fn priv_write_encrypted(slot: u8, data: &'a [u8; 68]) -> Self {
        Self::with_data(Opcode::PrivWrite, PRIVWRITE_ENCRYPTED, slot as u16, data)
    }

    /// Lock a target, checking `summary_crc` (ignored for slot locks).
    pub const fn lock(target: LockTarget, summary_crc: u16) -> Self {
        Self::new(Opcode::Lock, target.mode(), summary_crc)
    }

    /// Lock a zone without the CRC check (not recommended).
    pub const fn lock_unchecked(target: LockTarget) -> Self {
        Self::new(Opcode::Lock, target.mode() | LOCK_NO_CRC, 0)
    }

    /// UpdateExtra with a mode and a value (or slot).
    pub const fn update_extra(mode: UpdateExtraMode, value: u16) -> Self {
        Self::new(Opcode::UpdateExtra, mode as u8, value)
    }

    /// Counter: read (`increment` false) or increment counter 0 or 1.
    pub const fn counter(counter: u16, increment: bool) -> Self {
        Self::new(Opcode::Counter, increment as u8, counter)
    }

    /// SHA in any mode; `param2` is the length for End modes or the key slot for HmacStart.
    pub const fn sha(mode: ShaMode, param2: u16, data: &'a [u8]) -> Self {
        Self::with_data(Opcode::Sha, mode as u8, param2, data)
    }

    /// MAC with a mode (see `MAC_*` in [`crate::opcode`]) and an optional 32-byte challenge.
    pub const fn mac(mode: u8, slot: u8, challenge: &'a [u8]) -> Self {
        Self::with_data(Opcode::Mac, mode, slot as u16, challenge)
    }

    /// CheckMac: `data` = challenge 32 ‖ response 32 ‖ OtherData 13.
    pub const fn check_mac(mode: u8, slot: u8, data: &'a [u8; 77]) -> Self {
        Self::with_data(Opcode::CheckMac, mode, slot as u16, data)
    }
}

/// Parses a response frame: checks length and CRC and returns the data.
///
/// A 1-byte response other than 0x00 is the chip's status and comes back as
/// [`Error::Status`]; a 1-byte success returns `&[0x00]`.
pub fn parse_response(frame: &[u8]) -> Result<&[u8], Error> {
    let (&count, _) = frame.split_first().ok_or(Error::ResponseLength)?;
    let count = count as usize;
    if count < 4 || frame.len() < count {
        return Err(Error::ResponseLength);
    }
    let frame = &frame[..count];
    let (body, crc) = frame.split_at(count - 2);
    if crc16_le(body) != crc {
        return Err(Error::ResponseCrc);
    }
    let data = &body[1..];
    if let [code] = data
        && let Some(status) = Status::from_code(*code)
    {
        return Err(Error::Status(status));
    }
    Ok(data)
}

/// Parses a response that must carry exactly `N` data bytes.
pub fn parse_response_exact<const N: usize>(frame: &[u8]) -> Result<[u8; N], Error> {
    let data = parse_response(frame)?;
    data.try_into().map_err(|_| Error::UnexpectedResponse)
}

/// Parses a response that must be a bare success status.
pub fn parse_status(frame: &[u8]) -> Result<(), Error> {
    match parse_response(frame)? {
        [0x00] => Ok(()),
        _ => Err(Error::UnexpectedResponse),
    }
}

/// Writes a response frame `count | data | CRC` into `buf` (the chip side); returns its length.
pub fn encode_response(data: &[u8], buf: &mut [u8]) -> Result<usize, Error> {
    let len = data.len() + 3;
    if len > u8::MAX as usize {
        return Err(Error::DataTooLong);
    }
    let out = buf.get_mut(..len).ok_or(Error::BufferTooSmall)?;
    out[0] = len as u8;
    out[1..len - 2].copy_from_slice(data);
    let crc = crc16_le(&out[..len - 2]);
    out[len - 2..].copy_from_slice(&crc);
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::status_frame;

    fn encoded(cmd: Command<'_>) -> ([u8; MAX_PACKET], usize) {
        let mut buf = [0u8; MAX_PACKET];
        let n = cmd.encode(&mut buf).expect("fits");
        (buf, n)
    }

    #[test]
    fn builders_produce_the_reference_packets() {
        let cases: [(Command<'_>, [u8; 7]); 6] = [
            (
                Command::info_revision(),
                [0x07, 0x30, 0x00, 0x00, 0x00, 0x03, 0x5D],
            ),
            (
                Command::random(),
                [0x07, 0x1B, 0x00, 0x00, 0x00, 0x24, 0xCD],
            ),
            (
                Command::read(Zone::Config, 0, true),
                [0x07, 0x02, 0x80, 0x00, 0x00, 0x09, 0xAD],
            ),
            (
                Command::lock_unchecked(LockTarget::Config),
                [0x07, 0x17, 0x80, 0x00, 0x00, 0x39, 0x8D],
            ),
            (
                Command::lock_unchecked(LockTarget::Data),
                [0x07, 0x17, 0x81, 0x00, 0x00, 0x3A, 0x07],
            ),
            (
                Command::gen_key_create(0),
                [0x07, 0x40, 0x04, 0x00, 0x00, 0x83, 0x87],
            ),
        ];
        for (cmd, expected) in cases {
            let (buf, n) = encoded(cmd);
            assert_eq!(&buf[..n], &expected, "{cmd:?}");
            assert_eq!(Command::parse(&buf[..n]), Ok(cmd));
        }
    }

    #[test]
    fn parse_rejects_bad_crc_count_and_opcode() {
        let (mut buf, n) = encoded(Command::random());
        buf[n - 1] ^= 1;
        assert_eq!(Command::parse(&buf[..n]), Err(Status::CommError));
        let (buf, n) = encoded(Command::random());
        assert_eq!(Command::parse(&buf[..n - 1]), Err(Status::CommError));
        let mut bad = [0x07, 0x99, 0, 0, 0, 0, 0];
        let crc = crc16_le(&bad[..5]);
        bad[5..].copy_from_slice(&crc);
        assert_eq!(Command::parse(&bad), Err(Status::ParseError));
        let mut short = [0x04, 0x30, 0, 0];
        let crc = crc16_le(&short[..2]);
        short[2..].copy_from_slice(&crc);
        assert_eq!(Command::parse(&short), Err(Status::ParseError));
        assert_eq!(Command::parse(&[]), Err(Status::CommError));
    }

    #[test]
    fn encode_refuses_small_buffers_and_long_data() {
        let mut small = [0u8; 6];
        assert_eq!(
            Command::random().encode(&mut small),
            Err(Error::BufferTooSmall)
        );
        let long = [0u8; MAX_DATA + 1];
        let mut buf = [0u8; 200];
        let cmd = Command::with_data(Opcode::Sha, 1, 0, &long);
        assert_eq!(cmd.encode(&mut buf), Err(Error::DataTooLong));
    }

    #[test]
    fn responses_give_data_or_status() {
        assert_eq!(parse_response(&status_frame(0)), Ok(&[0u8][..]));
        for status in Status::ALL {
            assert_eq!(parse_response(&status.frame()), Err(Error::Status(status)));
        }
        assert_eq!(parse_status(&status_frame(0)), Ok(()));
        let mut frame = status_frame(0);
        frame[2] ^= 0xFF;
        assert_eq!(parse_response(&frame), Err(Error::ResponseCrc));
        assert_eq!(parse_response(&frame[..3]), Err(Error::ResponseLength));
        let mut buf = [0u8; MAX_RESPONSE];
        let n = encode_response(&[1, 2, 3, 4], &mut buf).expect("fits");
        assert_eq!(parse_response_exact::<4>(&buf[..n]), Ok([1, 2, 3, 4]));
        assert_eq!(
            parse_response_exact::<32>(&buf[..n]),
            Err(Error::UnexpectedResponse)
        );
    }
}
