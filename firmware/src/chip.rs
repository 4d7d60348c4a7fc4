//! The ATECC508A behind an I2C bus: the bus abstraction the board (or the simulator) provides,
//! and a small driver that does what a kit does for one transaction: wake, send a command
//! packet with word address 0x03, poll for the response, idle, sleep.

use crate::crc::crc16;

/// I2C word address: reset the I/O buffer pointer.
pub const WORD_RESET: u8 = 0x00;
/// I2C word address: sleep (volatile state lost).
pub const WORD_SLEEP: u8 = 0x01;
/// I2C word address: idle (TempKey kept).
pub const WORD_IDLE: u8 = 0x02;
/// I2C word address: a command packet follows.
pub const WORD_COMMAND: u8 = 0x03;
/// Largest command packet (count byte included) the chip accepts.
pub const MAX_PACKET: usize = 155;
/// Largest response frame the driver reads (GenKey: 1 + 64 + 2; Read 32: 35).
pub const MAX_RESPONSE: usize = 160;
/// The 4-byte answer of a freshly woken chip: count 4, status 0x11, CRC.
pub const WAKE_RESPONSE: [u8; 4] = [0x04, 0x11, 0x33, 0x43];

/// A failure on the bus, as the board sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusError {
    /// The chip did not acknowledge its address (busy executing, asleep, or absent).
    Nack,
    /// Any other bus fault (arbitration lost, timeout in the peripheral).
    Fault,
}

/// The I2C bus with the chip on it, as the board wires it. Implemented by the ESP8266 HAL
/// glue on hardware and by the simulator over the emulated chip.
pub trait I2cBus {
    /// Wakes the chip (SDA low for tWLO, then tWHI) and reads its 4-byte wake response.
    fn wake(&mut self) -> Result<[u8; 4], BusError>;
    /// One write transaction to the chip: `bytes[0]` is the word address.
    fn write(&mut self, bytes: &[u8]) -> Result<(), BusError>;
    /// One read transaction from the chip into `buf`; returns the number of bytes read.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BusError>;
    /// Busy-waits (or sleeps) for `us` microseconds.
    fn delay_us(&mut self, us: u32);
}

impl<T: I2cBus + ?Sized> I2cBus for &mut T {
    fn wake(&mut self) -> Result<[u8; 4], BusError> {
        (**self).wake()
    }
    fn write(&mut self, bytes: &[u8]) -> Result<(), BusError> {
        (**self).write(bytes)
    }
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, BusError> {
        (**self).read(buf)
    }
    fn delay_us(&mut self, us: u32) {
        (**self).delay_us(us)
    }
}

/// What went wrong talking to the chip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChipError {
    /// The bus failed.
    Bus(BusError),
    /// No response within the polling window.
    Timeout,
    /// The packet is empty or longer than [`MAX_PACKET`].
    BadPacket,
    /// The response frame is malformed (bad count or CRC).
    BadResponse,
    /// The chip answered with a status byte instead of data (value inside).
    Status(u8),
}

impl From<BusError> for ChipError {
    fn from(e: BusError) -> Self {
        ChipError::Bus(e)
    }
}

/// Polling schedule while the chip executes a command: like cryptoauthlib, 1 ms first, then
/// every 2 ms, giving up after 2.5 s (longer than any ATECC508A command's maximum time).
const FIRST_POLL_US: u32 = 1_000;
const POLL_US: u32 = 2_000;
const POLL_LIMIT_US: u32 = 2_500_000;

/// A driver for the chip on an [`I2cBus`].
#[derive(Debug)]
pub struct Atecc<B> {
    bus: B,
}

impl<B: I2cBus> Atecc<B> {
    /// Wraps a bus.
    pub fn new(bus: B) -> Self {
        Atecc { bus }
    }

    /// The bus, for the board glue.
    pub fn bus_mut(&mut self) -> &mut B {
        &mut self.bus
    }

    /// Wakes the chip; returns its wake response (normally [`WAKE_RESPONSE`]).
    pub fn wake(&mut self) -> Result<[u8; 4], ChipError> {
        Ok(self.bus.wake()?)
    }

    /// Puts the chip in idle mode (TempKey survives).
    pub fn idle(&mut self) -> Result<(), ChipError> {
        Ok(self.bus.write(&[WORD_IDLE])?)
    }

    /// Puts the chip to sleep (volatile state cleared).
    pub fn sleep(&mut self) -> Result<(), ChipError> {
        Ok(self.bus.write(&[WORD_SLEEP])?)
    }

    /// Sends a complete command packet (count..CRC) and reads the response frame into
    /// `response`, returning its length (count byte included). The frame is passed through as
    /// the chip sent it: the kit bridge leaves CRC and status checks to the host.
    pub fn transact(
        &mut self,
        packet: &[u8],
        response: &mut [u8; MAX_RESPONSE],
    ) -> Result<usize, ChipError> {
        if packet.is_empty() || packet.len() > MAX_PACKET {
            return Err(ChipError::BadPacket);
        }
        let mut frame = [0u8; MAX_PACKET + 1];
        frame[0] = WORD_COMMAND;
        frame[1..=packet.len()].copy_from_slice(packet);
        self.bus.write(&frame[..=packet.len()])?;

        // Poll for the count byte: the chip NACKs its address while busy.
        let mut waited = 0u32;
        self.bus.delay_us(FIRST_POLL_US);
        loop {
            match self.bus.read(&mut response[..1]) {
                Ok(1) => break,
                Ok(_) | Err(BusError::Nack) => {}
                Err(e) => return Err(e.into()),
            }
            if waited >= POLL_LIMIT_US {
                return Err(ChipError::Timeout);
            }
            self.bus.delay_us(POLL_US);
            waited += POLL_US;
        }
        let count = usize::from(response[0]);
        if !(4..=MAX_RESPONSE).contains(&count) {
            return Ok(1);
        }
        let mut got = 1;
        while got < count {
            let n = self.bus.read(&mut response[got..count])?;
            if n == 0 {
                return Err(ChipError::BadResponse);
            }
            got += n;
        }
        Ok(count)
    }

    /// Builds a packet for `opcode`, runs it and returns the response data (without count and
    /// CRC) in `out`. A 1-byte response is a status: nonzero statuses are errors.
    pub fn command(
        &mut self,
        opcode: u8,
        param1: u8,
        param2: u16,
        data: &[u8],
        out: &mut [u8],
    ) -> Result<usize, ChipError> {
        let mut packet = [0u8; MAX_PACKET];
        let len =
            build_packet(opcode, param1, param2, data, &mut packet).ok_or(ChipError::BadPacket)?;
        let mut resp = [0u8; MAX_RESPONSE];
        let n = self.transact(&packet[..len], &mut resp)?;
        let data = check_response(&resp[..n])?;
        if data.len() == 1 && data[0] != 0x00 && out.len() != 1 {
            return Err(ChipError::Status(data[0]));
        }
        let take = data.len().min(out.len());
        out[..take].copy_from_slice(&data[..take]);
        Ok(data.len())
    }

    /// Reads the 9-byte serial number (config bytes 0..4 and 8..13). Wakes the chip first
    /// and idles it afterwards.
    pub fn serial_number(&mut self) -> Result<[u8; 9], ChipError> {
        self.wake()?;
        let mut block = [0u8; 32];
        let r = self.command(OP_READ, 0x80, 0x0000, &[], &mut block);
        let _ = self.idle();
        match r? {
            32 => {}
            _ => return Err(ChipError::BadResponse),
        }
        let mut sn = [0u8; 9];
        sn[..4].copy_from_slice(&block[..4]);
        sn[4..].copy_from_slice(&block[8..13]);
        Ok(sn)
    }

    /// Signs a 32-byte digest with the private key in `slot`: Nonce in pass-through mode
    /// loads the digest into TempKey, then Sign in external mode. Returns R ‖ S. The chip is
    /// woken first and idled after, so nothing else can interleave with this pair.
    pub fn sign_digest(&mut self, slot: u8, digest: &[u8; 32]) -> Result<[u8; 64], ChipError> {
        self.wake()?;
        let result = (|| {
            let mut status = [0u8; 1];
            self.command(OP_NONCE, NONCE_MODE_PASSTHROUGH, 0, digest, &mut status)?;
            if status[0] != 0 {
                return Err(ChipError::Status(status[0]));
            }
            let mut sig = [0u8; 64];
            match self.command(OP_SIGN, SIGN_MODE_EXTERNAL, u16::from(slot), &[], &mut sig)? {
                64 => Ok(sig),
                _ => Err(ChipError::BadResponse),
            }
        })();
        let _ = self.idle();
        result
    }

    /// Public key (X ‖ Y) of the private key in `slot` (GenKey mode 0x00).
    pub fn public_key(&mut self, slot: u8) -> Result<[u8; 64], ChipError> {
        self.wake()?;
        let mut key = [0u8; 64];
        let r = self.command(OP_GENKEY, 0x00, u16::from(slot), &[], &mut key);
        let _ = self.idle();
        match r? {
            64 => Ok(key),
            _ => Err(ChipError::BadResponse),
        }
    }
}

/// Read opcode.
pub const OP_READ: u8 = 0x02;
/// Nonce opcode.
pub const OP_NONCE: u8 = 0x16;
/// Sign opcode.
pub const OP_SIGN: u8 = 0x41;
/// GenKey opcode.
pub const OP_GENKEY: u8 = 0x40;
/// Nonce mode 3: the 32 input bytes become TempKey unchanged.
pub const NONCE_MODE_PASSTHROUGH: u8 = 0x03;
/// Sign mode 0x80: sign the message in TempKey.
pub const SIGN_MODE_EXTERNAL: u8 = 0x80;

/// Builds `count | opcode | param1 | param2 LE | data | CRC LE` into `out`; returns its length,
/// or `None` if it would exceed [`MAX_PACKET`] or `out`.
pub fn build_packet(
    opcode: u8,
    param1: u8,
    param2: u16,
    data: &[u8],
    out: &mut [u8],
) -> Option<usize> {
    let len = 7 + data.len();
    if len > MAX_PACKET || len > out.len() {
        return None;
    }
    out[0] = len as u8;
    out[1] = opcode;
    out[2] = param1;
    out[3..5].copy_from_slice(&param2.to_le_bytes());
    out[5..5 + data.len()].copy_from_slice(data);
    let crc = crc16(&out[..len - 2]);
    out[len - 2..len].copy_from_slice(&crc.to_le_bytes());
    Some(len)
}

/// Checks a response frame's count and CRC; returns the data between them.
pub fn check_response(frame: &[u8]) -> Result<&[u8], ChipError> {
    let count = usize::from(*frame.first().ok_or(ChipError::BadResponse)?);
    if count < 4 || count > frame.len() {
        return Err(ChipError::BadResponse);
    }
    let crc = crc16(&frame[..count - 2]).to_le_bytes();
    if frame[count - 2..count] != crc {
        return Err(ChipError::BadResponse);
    }
    Ok(&frame[1..count - 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_match_the_reference_vectors() {
        let mut p = [0u8; MAX_PACKET];
        let n = build_packet(0x30, 0, 0, &[], &mut p).expect("info");
        assert_eq!(&p[..n], &[0x07, 0x30, 0x00, 0x00, 0x00, 0x03, 0x5D]);
        let n = build_packet(0x40, 0x04, 0, &[], &mut p).expect("genkey");
        assert_eq!(&p[..n], &[0x07, 0x40, 0x04, 0x00, 0x00, 0x83, 0x87]);
        assert!(build_packet(0x12, 0, 0, &[0u8; 149], &mut p).is_none());
        assert_eq!(check_response(&[0x04, 0x00, 0x03, 0x40]), Ok(&[0x00][..]));
        assert_eq!(
            check_response(&[0x04, 0x00, 0x03, 0x41]),
            Err(ChipError::BadResponse)
        );
        assert_eq!(check_response(&[0x09, 0x00]), Err(ChipError::BadResponse));
    }
}
