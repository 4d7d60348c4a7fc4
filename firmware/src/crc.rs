//! Checksums: the ATECC508A packet CRC-16 and the CRC-32 (IEEE) that guards blobs and the
//! store image. Bitwise, no tables: the inputs are small and flash is precious.

/// ATECC508A CRC-16 (`atCRC`): polynomial 0x8005, init 0, data bits fed LSB first, result not
/// reflected. Appended to a packet low byte first.
///
/// Kept here (rather than taken from `atecc`) so the firmware core does not wait on the chip
/// crate's layout; it is checked against the datasheet's test vectors below.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        for bit in 0..8 {
            let data_bit = (byte >> bit) & 1;
            let crc_bit = (crc >> 15) as u8 & 1;
            crc <<= 1;
            if data_bit != crc_bit {
                crc ^= 0x8005;
            }
        }
    }
    crc
}

/// CRC-32 (IEEE 802.3, as zlib's `crc32`): used by `fw:commit` and the store's flash banks.
pub fn crc32(data: &[u8]) -> u32 {
    crc32_update(0, data)
}

/// Continues a CRC-32 over more data: `crc32_update(crc32(a), b) == crc32(a ++ b)`.
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let mut c = !crc;
    for &byte in data {
        c ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (c & 1).wrapping_neg();
            c = (c >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc16_matches_reference_packets() {
        // Info: 07 30 00 00 00 | 03 5D ; Random: 07 1B 00 00 00 | 24 CD
        assert_eq!(crc16(&[0x07, 0x30, 0, 0, 0]).to_le_bytes(), [0x03, 0x5D]);
        assert_eq!(crc16(&[0x07, 0x1B, 0, 0, 0]).to_le_bytes(), [0x24, 0xCD]);
        // status frames: 04 11 | 33 43 ; 04 00 | 03 40
        assert_eq!(crc16(&[0x04, 0x11]).to_le_bytes(), [0x33, 0x43]);
        assert_eq!(crc16(&[0x04, 0x00]).to_le_bytes(), [0x03, 0x40]);
    }

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_update(crc32(b"1234"), b"56789"), 0xCBF4_3926);
    }
}
