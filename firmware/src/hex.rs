//! Uppercase hexadecimal into and out of caller-supplied buffers (no allocation).

/// Why a hex string was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexError {
    /// An odd number of digits.
    OddLength,
    /// A character that is not `0-9`, `a-f` or `A-F`.
    BadDigit,
    /// The decoded bytes would not fit the destination.
    TooLong,
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Decodes `src` (hex digits) into `dst`, returning the number of bytes written.
///
/// ```
/// let mut out = [0u8; 4];
/// assert_eq!(firmware::hex::decode_into(b"0A1b", &mut out), Ok(2));
/// assert_eq!(&out[..2], &[0x0A, 0x1B]);
/// ```
pub fn decode_into(src: &[u8], dst: &mut [u8]) -> Result<usize, HexError> {
    if !src.len().is_multiple_of(2) {
        return Err(HexError::OddLength);
    }
    let n = src.len() / 2;
    if n > dst.len() {
        return Err(HexError::TooLong);
    }
    for (out, pair) in dst.iter_mut().zip(src.chunks_exact(2)) {
        let hi = nibble(pair[0]).ok_or(HexError::BadDigit)?;
        let lo = nibble(pair[1]).ok_or(HexError::BadDigit)?;
        *out = (hi << 4) | lo;
    }
    Ok(n)
}

const DIGITS: &[u8; 16] = b"0123456789ABCDEF";

/// Encodes `src` as uppercase hex into `dst`, returning the number of characters written,
/// or `None` if `dst` is shorter than `2 * src.len()`.
pub fn encode_into(src: &[u8], dst: &mut [u8]) -> Option<usize> {
    let n = src.len().checked_mul(2)?;
    if n > dst.len() {
        return None;
    }
    for (pair, b) in dst.chunks_exact_mut(2).zip(src) {
        pair[0] = DIGITS[usize::from(b >> 4)];
        pair[1] = DIGITS[usize::from(b & 0x0F)];
    }
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let mut text = [0u8; 8];
        assert_eq!(encode_into(&[0x04, 0x11, 0x33, 0x43], &mut text), Some(8));
        assert_eq!(&text, b"04113343");
        let mut bytes = [0u8; 4];
        assert_eq!(decode_into(&text, &mut bytes), Ok(4));
        assert_eq!(bytes, [0x04, 0x11, 0x33, 0x43]);
        assert_eq!(decode_into(b"ABC", &mut bytes), Err(HexError::OddLength));
        assert_eq!(decode_into(b"zz", &mut bytes), Err(HexError::BadDigit));
        assert_eq!(
            decode_into(b"0011223344", &mut bytes),
            Err(HexError::TooLong)
        );
        assert_eq!(encode_into(&[1, 2, 3], &mut [0u8; 5]), None);
    }
}
