//! Status codes: the one-byte answers of the chip that are not data ([DS] Table 9-3).

use crate::crc::crc16_le;

/// A status byte other than success, reported by the chip in a 4-byte frame `04 SS crcL crcH`.
///
/// This is the error type of every chip command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// 0x01: CheckMac or Verify ran, and the response or signature did not match.
    Miscompare,
    /// 0x03: parse error: bad length, opcode or parameters.
    ParseError,
    /// 0x05: ECC fault: a computation produced an invalid result; retrying may succeed.
    EccFault,
    /// 0x0F: execution error: the command is not allowed in the device's state
    /// (lock state, permissions, TempKey, MAC).
    ExecutionError,
    /// 0x11: the device is awake and has not received a command yet (the wake token).
    AfterWake,
    /// 0xEE: the watchdog is about to expire: send idle or sleep first.
    WatchdogExpiring,
    /// 0xFF: CRC or other communications error: resend the command.
    CommError,
    /// A status byte this crate does not know (e.g. ATECC608 self-test codes 0x07 and 0x08).
    Other(u8),
}

/// The status byte of success.
pub const SUCCESS: u8 = 0x00;

impl Status {
    /// Every status the ATECC508A data sheet lists (without success).
    pub const ALL: [Status; 7] = [
        Status::Miscompare,
        Status::ParseError,
        Status::EccFault,
        Status::ExecutionError,
        Status::AfterWake,
        Status::WatchdogExpiring,
        Status::CommError,
    ];

    /// The status byte on the wire.
    pub const fn code(self) -> u8 {
        match self {
            Status::Miscompare => 0x01,
            Status::ParseError => 0x03,
            Status::EccFault => 0x05,
            Status::ExecutionError => 0x0F,
            Status::AfterWake => 0x11,
            Status::WatchdogExpiring => 0xEE,
            Status::CommError => 0xFF,
            Status::Other(code) => code,
        }
    }

    /// The status for a byte, or `None` for success (0x00).
    pub const fn from_code(code: u8) -> Option<Status> {
        Some(match code {
            SUCCESS => return None,
            0x01 => Status::Miscompare,
            0x03 => Status::ParseError,
            0x05 => Status::EccFault,
            0x0F => Status::ExecutionError,
            0x11 => Status::AfterWake,
            0xEE => Status::WatchdogExpiring,
            0xFF => Status::CommError,
            other => Status::Other(other),
        })
    }

    /// The 4-byte response frame carrying this status.
    ///
    /// ```
    /// assert_eq!(atecc::Status::AfterWake.frame(), [0x04, 0x11, 0x33, 0x43]);
    /// ```
    pub fn frame(self) -> [u8; 4] {
        status_frame(self.code())
    }

    /// What the status means, in a few words a person can act on.
    pub const fn description(self) -> &'static str {
        match self {
            Status::Miscompare => "CheckMac/Verify miscompare",
            Status::ParseError => "parse error: bad length, opcode or parameters",
            Status::EccFault => "ECC fault: retry the command",
            Status::ExecutionError => {
                "execution error: not allowed in the device's lock or permission state"
            }
            Status::AfterWake => "device awake, no command received yet",
            Status::WatchdogExpiring => "watchdog about to expire: send idle or sleep first",
            Status::CommError => "CRC or communications error: resend the command",
            Status::Other(_) => "unknown status code",
        }
    }
}

impl core::fmt::Display for Status {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "chip status 0x{:02X}: {}",
            self.code(),
            self.description()
        )
    }
}

/// The 4-byte response frame `04 code crcL crcH` for any status byte, success included.
///
/// ```
/// assert_eq!(atecc::status::status_frame(0x00), [0x04, 0x00, 0x03, 0x40]);
/// ```
pub fn status_frame(code: u8) -> [u8; 4] {
    let crc = crc16_le(&[0x04, code]);
    [0x04, code, crc[0], crc[1]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_frames_from_the_reference() {
        assert_eq!(status_frame(SUCCESS), [0x04, 0x00, 0x03, 0x40]);
        let expected: [(Status, [u8; 4]); 7] = [
            (Status::Miscompare, [0x04, 0x01, 0x00, 0xC3]),
            (Status::ParseError, [0x04, 0x03, 0x83, 0x42]),
            (Status::EccFault, [0x04, 0x05, 0xC3, 0x43]),
            (Status::ExecutionError, [0x04, 0x0F, 0x23, 0x42]),
            (Status::AfterWake, [0x04, 0x11, 0x33, 0x43]),
            (Status::WatchdogExpiring, [0x04, 0xEE, 0x31, 0x41]),
            (Status::CommError, [0x04, 0xFF, 0x01, 0x42]),
        ];
        for (status, frame) in expected {
            assert_eq!(status.frame(), frame, "{status}");
            assert_eq!(Status::from_code(status.code()), Some(status));
        }
        assert_eq!(Status::from_code(0), None);
        assert_eq!(Status::from_code(0x07), Some(Status::Other(0x07)));
    }
}
