//! A host driver for the chip over any transport: the provisioner and the firmware implement
//! [`Transport`] ("send packet bytes, get response bytes") and get the command sequences with
//! their host math (encrypted writes, lock summaries) for free. No allocation.
//!
//! The host supplies the 20-byte `num_in` of each random Nonce (it has the RNG; this crate is
//! `no_std`).

use crate::config::{ConfigZone, address, slot_size};
use crate::host::{self, Digest32};
use crate::opcode::*;
use crate::packet::{Command, Error, MAX_PACKET, MAX_RESPONSE, parse_response};

/// One command/response exchange with a chip (I2C, the kit protocol over serial, an emulator).
pub trait Transport {
    /// The transport's own error (port gone, timeout, NACK).
    type Error;

    /// Sends one command packet (count..CRC), waits for the chip and writes the response frame
    /// (count..CRC) into `response`; returns its length.
    fn transact(&mut self, packet: &[u8], response: &mut [u8]) -> Result<usize, Self::Error>;
}

impl<T: Transport + ?Sized> Transport for &mut T {
    type Error = T::Error;
    fn transact(&mut self, packet: &[u8], response: &mut [u8]) -> Result<usize, Self::Error> {
        (**self).transact(packet, response)
    }
}

/// A failed exchange: the transport failed, or the chip or the response was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError<E> {
    /// The transport failed.
    Transport(E),
    /// The chip answered with a status, or the frame was corrupt.
    Chip(Error),
}

impl<E> From<Error> for ClientError<E> {
    fn from(e: Error) -> Self {
        ClientError::Chip(e)
    }
}

impl<E: core::fmt::Display> core::fmt::Display for ClientError<E> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ClientError::Transport(e) => write!(f, "transport: {e}"),
            ClientError::Chip(e) => e.fmt(f),
        }
    }
}

/// Result of a client call.
pub type ClientResult<T, E> = core::result::Result<T, ClientError<E>>;

/// Drives a chip through a [`Transport`].
#[derive(Debug)]
pub struct Client<T> {
    transport: T,
}

impl<T: Transport> Client<T> {
    /// A client over `transport`.
    pub fn new(transport: T) -> Self {
        Self { transport }
    }

    /// The transport back.
    pub fn into_inner(self) -> T {
        self.transport
    }

    /// The transport.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Sends `cmd` and copies the response data into `out`; returns the data length.
    pub fn execute(&mut self, cmd: &Command<'_>, out: &mut [u8]) -> ClientResult<usize, T::Error> {
        let mut packet = [0u8; MAX_PACKET];
        let n = cmd.encode(&mut packet)?;
        let mut frame = [0u8; MAX_RESPONSE];
        let m = self
            .transport
            .transact(&packet[..n], &mut frame)
            .map_err(ClientError::Transport)?;
        let data = parse_response(frame.get(..m).ok_or(Error::ResponseLength)?)?;
        let dst = out.get_mut(..data.len()).ok_or(Error::UnexpectedResponse)?;
        dst.copy_from_slice(data);
        Ok(data.len())
    }

    /// Sends `cmd`, which must answer exactly `N` bytes.
    pub fn execute_exact<const N: usize>(
        &mut self,
        cmd: &Command<'_>,
    ) -> ClientResult<[u8; N], T::Error> {
        let mut out = [0u8; MAX_RESPONSE];
        let n = self.execute(cmd, &mut out)?;
        out[..n]
            .try_into()
            .map_err(|_| ClientError::Chip(Error::UnexpectedResponse))
    }

    /// Sends `cmd`, which must answer a bare success.
    pub fn execute_status(&mut self, cmd: &Command<'_>) -> ClientResult<(), T::Error> {
        match self.execute_exact::<1>(cmd)? {
            [0] => Ok(()),
            _ => Err(ClientError::Chip(Error::UnexpectedResponse)),
        }
    }

    /// Info(Revision): `00 00 50 00` on an ATECC508A.
    pub fn revision(&mut self) -> ClientResult<[u8; 4], T::Error> {
        self.execute_exact(&Command::info_revision())
    }

    /// 32 random bytes (the test pattern before the config zone is locked).
    pub fn random(&mut self) -> ClientResult<[u8; 32], T::Error> {
        self.execute_exact(&Command::random())
    }

    /// Reads the whole config zone (four 32-byte reads).
    pub fn read_config_zone(&mut self) -> ClientResult<ConfigZone, T::Error> {
        let mut zone = [0u8; 128];
        for (block, chunk) in zone.chunks_exact_mut(32).enumerate() {
            let data: [u8; 32] = self.execute_exact(&Command::read(
                Zone::Config,
                address::block_word(block as u8, 0),
                true,
            ))?;
            chunk.copy_from_slice(&data);
        }
        Ok(ConfigZone(zone))
    }

    /// The serial number (reads config block 0).
    pub fn serial_number(&mut self) -> ClientResult<[u8; 9], T::Error> {
        let block: [u8; 32] = self.execute_exact(&Command::read(Zone::Config, 0, true))?;
        let mut zone = [0u8; 128];
        zone[..32].copy_from_slice(&block);
        Ok(ConfigZone(zone).serial_number())
    }

    /// Writes every writable byte of `zone` into an unlocked config zone
    /// ([`ConfigZone::write_plan`]). UserExtra and Selector are not written.
    pub fn write_config_zone(&mut self, zone: &ConfigZone) -> ClientResult<(), T::Error> {
        for step in ConfigZone::write_plan() {
            let data = &zone.0[step.offset..step.offset + step.len];
            self.execute_status(&Command::write(Zone::Config, step.address, data))?;
        }
        Ok(())
    }

    /// Locks the config zone if its contents match `expected` (the CRC summary of `expected`
    /// is sent; the chip refuses if its zone differs).
    pub fn lock_config(&mut self, expected: &ConfigZone) -> ClientResult<(), T::Error> {
        let crc = host::config_lock_crc(expected);
        self.execute_status(&Command::lock(LockTarget::Config, crc))
    }

    /// Locks the data and OTP zones with the CRC summary `summary`
    /// (see [`host::data_lock_crc`]).
    pub fn lock_data(&mut self, summary: u16) -> ClientResult<(), T::Error> {
        self.execute_status(&Command::lock(LockTarget::Data, summary))
    }

    /// Locks the data and OTP zones without the CRC summary check (what cryptoauthlib's
    /// `atcab_lock_data_zone` does; use it only when the host cannot know every slot's
    /// contents, e.g. factory data in slots it never wrote).
    pub fn lock_data_unchecked(&mut self) -> ClientResult<(), T::Error> {
        self.execute_status(&Command::lock_unchecked(LockTarget::Data))
    }

    /// Locks one slot (KeyConfig.Lockable).
    pub fn lock_slot(&mut self, slot: u8) -> ClientResult<(), T::Error> {
        self.execute_status(&Command::lock(LockTarget::Slot(slot), 0))
    }

    /// Nonce(Random) with the host's `num_in`; returns the TempKey the chip now holds.
    pub fn nonce_random(&mut self, num_in: &[u8; 20]) -> ClientResult<Digest32, T::Error> {
        let rand_out: [u8; 32] = self.execute_exact(&Command::nonce(NonceMode::Random, num_in))?;
        Ok(host::nonce_random_tempkey(
            &rand_out,
            num_in,
            NonceMode::Random as u8,
        ))
    }

    /// Nonce(PassThrough): TempKey = `value`.
    pub fn nonce_load(&mut self, value: &[u8; 32]) -> ClientResult<(), T::Error> {
        self.execute_status(&Command::nonce(NonceMode::PassThrough, value))
    }

    /// Nonce(Random) then GenDig(Data, `key_slot`) with the key the host also knows;
    /// returns the resulting TempKey. This authorises encrypted writes and reads.
    pub fn authorize(
        &mut self,
        key_slot: u8,
        key: &[u8; 32],
        sn: &[u8; 9],
        num_in: &[u8; 20],
    ) -> ClientResult<Digest32, T::Error> {
        let tk = self.nonce_random(num_in)?;
        let id = (key_slot as u16).to_le_bytes();
        let other = [Opcode::GenDig as u8, GenDigZone::Data as u8, id[0], id[1]];
        self.execute_status(&Command::gen_dig(GenDigZone::Data, key_slot as u16, &other))?;
        Ok(host::gen_dig(
            key,
            GenDigZone::Data as u8,
            key_slot as u16,
            sn,
            &tk,
        ))
    }

    /// Installs the P-256 private key `scalar` in `slot` with an encrypted PrivWrite
    /// authorised by the write key in `write_key_slot`.
    pub fn priv_write_encrypted(
        &mut self,
        slot: u8,
        scalar: &[u8; 32],
        write_key_slot: u8,
        write_key: &[u8; 32],
        num_in: &[u8; 20],
    ) -> ClientResult<(), T::Error> {
        let sn = self.serial_number()?;
        let tk = self.authorize(write_key_slot, write_key, &sn, num_in)?;
        let data =
            host::encrypt_priv_write(&tk, slot as u16, &sn, &host::private_key_value(scalar));
        self.execute_status(&Command::priv_write_encrypted(slot, &data))
    }

    /// Writes 32 bytes to block `block` of `slot` in clear.
    pub fn write_slot_block(
        &mut self,
        slot: u8,
        block: u8,
        data: &[u8; 32],
    ) -> ClientResult<(), T::Error> {
        self.execute_status(&Command::write(
            Zone::Data,
            address::data(slot, block, 0),
            data,
        ))
    }

    /// Writes a slot in clear before the data lock, 32 bytes at a time (`data` is
    /// zero-padded to full blocks; a slot's short last block, 4 bytes of a 36-byte slot or 8
    /// of a 72-byte one, goes as a zero-padded 32-byte write, the only size the chip takes
    /// before the lock).
    pub fn write_slot(&mut self, slot: u8, data: &[u8]) -> ClientResult<(), T::Error> {
        if data.len() > slot_size(slot as usize) {
            return Err(ClientError::Chip(Error::DataTooLong));
        }
        for (block, chunk) in data.chunks(32).enumerate() {
            let mut buf = [0u8; 32];
            buf[..chunk.len()].copy_from_slice(chunk);
            self.write_slot_block(slot, block as u8, &buf)?;
        }
        Ok(())
    }

    /// Writes public data to a clear-writable slot after the data lock as cryptoauthlib's
    /// `calib_write_bytes_zone` (what `atcacert_write_cert` uses) does: 32-byte writes while
    /// a whole block remains, then 4-byte writes, so the 8-byte tail of a 72-byte slot goes
    /// as two words and nothing is written past the slot (a last partial word is
    /// zero-padded).
    pub fn write_public_slot(&mut self, slot: u8, data: &[u8]) -> ClientResult<(), T::Error> {
        if data.len() > slot_size(slot as usize) {
            return Err(ClientError::Chip(Error::DataTooLong));
        }
        let whole = data.len() / 32 * 32;
        for (block, chunk) in data[..whole].chunks_exact(32).enumerate() {
            let mut buf = [0u8; 32];
            buf.copy_from_slice(chunk);
            self.write_slot_block(slot, block as u8, &buf)?;
        }
        for (i, chunk) in data[whole..].chunks(4).enumerate() {
            let mut word = [0u8; 4];
            word[..chunk.len()].copy_from_slice(chunk);
            let addr = address::data(slot, (whole / 32) as u8, i as u8);
            self.execute_status(&Command::write(Zone::Data, addr, &word))?;
        }
        Ok(())
    }

    /// Writes 32 bytes to block `block` of `slot` encrypted with the write key.
    #[allow(clippy::too_many_arguments)]
    pub fn write_slot_encrypted(
        &mut self,
        slot: u8,
        block: u8,
        data: &[u8; 32],
        write_key_slot: u8,
        write_key: &[u8; 32],
        num_in: &[u8; 20],
    ) -> ClientResult<(), T::Error> {
        let sn = self.serial_number()?;
        let tk = self.authorize(write_key_slot, write_key, &sn, num_in)?;
        let addr = address::data(slot, block, 0);
        let enc = host::encrypt_write(&tk, Zone::Data as u8, addr, &sn, data);
        self.execute_status(&Command::write_encrypted(Zone::Data, addr, &enc))
    }

    /// Reads 32 bytes of block `block` of `slot` in clear.
    pub fn read_slot_block(&mut self, slot: u8, block: u8) -> ClientResult<[u8; 32], T::Error> {
        self.execute_exact(&Command::read(
            Zone::Data,
            address::data(slot, block, 0),
            true,
        ))
    }

    /// Reads 32 bytes of an EncryptRead slot with the read key, and decrypts them.
    pub fn read_slot_encrypted(
        &mut self,
        slot: u8,
        block: u8,
        read_key_slot: u8,
        read_key: &[u8; 32],
        num_in: &[u8; 20],
    ) -> ClientResult<[u8; 32], T::Error> {
        let sn = self.serial_number()?;
        let tk = self.authorize(read_key_slot, read_key, &sn, num_in)?;
        let cipher = self.read_slot_block(slot, block)?;
        Ok(host::decrypt_read(&tk, &cipher))
    }

    /// GenKey: creates a private key in `slot`, returns the public key X‖Y.
    pub fn gen_key(&mut self, slot: u8) -> ClientResult<[u8; 64], T::Error> {
        self.execute_exact(&Command::gen_key_create(slot))
    }

    /// GenKey: the public key X‖Y of the private key in `slot`.
    pub fn public_key(&mut self, slot: u8) -> ClientResult<[u8; 64], T::Error> {
        self.execute_exact(&Command::gen_key_public(slot))
    }

    /// Signs a 32-byte digest with the key in `slot` (Nonce pass-through, Sign external):
    /// returns R‖S.
    pub fn sign_digest(&mut self, slot: u8, digest: &[u8; 32]) -> ClientResult<[u8; 64], T::Error> {
        self.nonce_load(digest)?;
        self.execute_exact(&Command::sign_external(slot))
    }

    /// Verifies R‖S over a 32-byte digest with the public key X‖Y in the chip:
    /// `Ok(true)` on match, `Ok(false)` on miscompare.
    pub fn verify_external(
        &mut self,
        digest: &[u8; 32],
        signature: &[u8; 64],
        public_key: &[u8; 64],
    ) -> ClientResult<bool, T::Error> {
        self.nonce_load(digest)?;
        let mut data = [0u8; 128];
        data[..64].copy_from_slice(signature);
        data[64..].copy_from_slice(public_key);
        match self.execute_status(&Command::verify_external(&data)) {
            Ok(()) => Ok(true),
            Err(ClientError::Chip(Error::Status(crate::Status::Miscompare))) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// ECDH with the key in `slot` and the peer public key X‖Y: the 32-byte shared secret
    /// (slots whose ReadKey returns it in clear).
    pub fn ecdh(&mut self, slot: u8, public_key: &[u8; 64]) -> ClientResult<[u8; 32], T::Error> {
        self.execute_exact(&Command::ecdh(slot, public_key))
    }
}
