//! A PKCS#10 certificate request (RFC 2986) for the chip's key, built without an allocator:
//! the board renews its certificate in the field with it. The CertificationRequestInfo holds
//! the subject `CN=<device id>` and the chip's P-256 public key; its SHA-256 digest is signed
//! by the chip (ATECC508A Sign, external message), so the private key never leaves the chip.
//!
//! ```
//! let xy = [7u8; 64];
//! let mut out = [0u8; firmware::csr::MAX_CSR_LEN];
//! let n = firmware::csr::build(
//!     "salon-1",
//!     &xy,
//!     |_cri: &[u8]| [0u8; 32],
//!     |_digest: &[u8; 32]| Ok::<_, ()>([1u8; 64]),
//!     &mut out,
//! )
//! .expect("csr");
//! assert_eq!(out[0], 0x30); // a DER SEQUENCE
//! assert!(n < firmware::csr::MAX_CSR_LEN);
//! ```

/// Largest request this module builds (a P-256 CSR with a 64-character CN is under 300 bytes).
pub const MAX_CSR_LEN: usize = 512;
/// Longest device id accepted as the CN.
pub const MAX_ID_LEN: usize = 64;

const OID_CN: [u8; 3] = [0x55, 0x04, 0x03];
const OID_EC_PUBLIC_KEY: [u8; 7] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x02, 0x01];
const OID_P256: [u8; 8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
const OID_ECDSA_SHA256: [u8; 8] = [0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x04, 0x03, 0x02];

/// Why no request was built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CsrError<E> {
    /// The device id is empty or longer than [`MAX_ID_LEN`].
    BadId,
    /// The output buffer is too small.
    TooSmall,
    /// The chip did not sign.
    Sign(E),
}

/// A DER writer over a caller's buffer.
struct Der<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> Der<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Der { buf, len: 0 }
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), ()> {
        let end = self.len.checked_add(b.len()).ok_or(())?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(())?
            .copy_from_slice(b);
        self.len = end;
        Ok(())
    }

    /// Tag and definite length (short form, or long form with one or two bytes).
    fn header(&mut self, tag: u8, len: usize) -> Result<(), ()> {
        match len {
            0..=0x7F => self.bytes(&[tag, len as u8]),
            0x80..=0xFF => self.bytes(&[tag, 0x81, len as u8]),
            _ => self.bytes(&[tag, 0x82, (len >> 8) as u8, len as u8]),
        }
    }

    fn tlv(&mut self, tag: u8, value: &[u8]) -> Result<(), ()> {
        self.header(tag, value.len())?;
        self.bytes(value)
    }
}

/// Length of a TLV whose value is `len` bytes.
fn tlv_len(len: usize) -> usize {
    len + match len {
        0..=0x7F => 2,
        0x80..=0xFF => 3,
        _ => 4,
    }
}

/// Writes the CertificationRequestInfo for `id` and the key `xy` (X ‖ Y) into `out`.
fn request_info(id: &str, xy: &[u8; 64], out: &mut [u8]) -> Result<usize, ()> {
    let cn_attr = tlv_len(OID_CN.len()) + tlv_len(id.len());
    let rdn = tlv_len(cn_attr);
    let name = tlv_len(rdn);
    let alg = tlv_len(OID_EC_PUBLIC_KEY.len()) + tlv_len(OID_P256.len());
    let spki = tlv_len(alg) + tlv_len(66);
    let body = 3 + tlv_len(name) + tlv_len(spki) + 2;
    let mut d = Der::new(out);
    d.header(0x30, body)?;
    d.tlv(0x02, &[0])?; // version 0
    d.header(0x30, name)?;
    d.header(0x31, rdn)?;
    d.header(0x30, cn_attr)?;
    d.tlv(0x06, &OID_CN)?;
    d.tlv(0x0C, id.as_bytes())?; // UTF8String
    d.header(0x30, spki)?;
    d.header(0x30, alg)?;
    d.tlv(0x06, &OID_EC_PUBLIC_KEY)?;
    d.tlv(0x06, &OID_P256)?;
    d.header(0x03, 66)?;
    d.bytes(&[0x00, 0x04])?; // no unused bits; uncompressed point
    d.bytes(xy)?;
    d.bytes(&[0xA0, 0x00])?; // attributes: none
    Ok(d.len)
}

/// Writes a DER INTEGER of the unsigned big-endian `v` (minimal, positive).
fn integer(d: &mut Der<'_>, v: &[u8]) -> Result<(), ()> {
    let v = match v.iter().position(|&b| b != 0) {
        Some(i) => &v[i..],
        None => &[0u8][..],
    };
    let pad = v[0] & 0x80 != 0;
    d.header(0x02, v.len() + usize::from(pad))?;
    if pad {
        d.bytes(&[0])?;
    }
    d.bytes(v)
}

fn integer_len(v: &[u8]) -> usize {
    let v = match v.iter().position(|&b| b != 0) {
        Some(i) => &v[i..],
        None => &[0u8][..],
    };
    tlv_len(v.len() + usize::from(v[0] & 0x80 != 0))
}

/// Builds the DER CSR for device `id` whose chip key is `xy` into `out`; returns its length.
/// `sha256` digests the request info; `sign` has the chip sign that digest (raw R ‖ S).
pub fn build<E>(
    id: &str,
    xy: &[u8; 64],
    sha256: impl FnOnce(&[u8]) -> [u8; 32],
    sign: impl FnOnce(&[u8; 32]) -> Result<[u8; 64], E>,
    out: &mut [u8],
) -> Result<usize, CsrError<E>> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(CsrError::BadId);
    }
    let mut info = [0u8; MAX_CSR_LEN];
    let info_len = request_info(id, xy, &mut info).map_err(|_| CsrError::TooSmall)?;
    let info = &info[..info_len];
    let rs = sign(&sha256(info)).map_err(CsrError::Sign)?;
    let (r, s) = rs.split_at(32);
    let sig_seq = integer_len(r) + integer_len(s);
    let bit_string = 1 + tlv_len(sig_seq);
    let alg = tlv_len(OID_ECDSA_SHA256.len());
    let body = info_len + tlv_len(alg) + tlv_len(bit_string);
    let mut d = Der::new(out);
    let written = (|| {
        d.header(0x30, body)?;
        d.bytes(info)?;
        d.header(0x30, alg)?;
        d.tlv(0x06, &OID_ECDSA_SHA256)?;
        d.header(0x03, bit_string)?;
        d.bytes(&[0])?;
        d.header(0x30, sig_seq)?;
        integer(&mut d, r)?;
        integer(&mut d, s)
    })();
    written.map_err(|_| CsrError::TooSmall)?;
    Ok(d.len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_consistent_and_a_small_buffer_is_refused() {
        let mut out = [0u8; MAX_CSR_LEN];
        let n = build(
            "salon-1",
            &[9; 64],
            |_| [0; 32],
            |_| Ok::<_, ()>([0xFF; 64]),
            &mut out,
        )
        .expect("csr");
        // the outer SEQUENCE's length is what was written after its header
        let (hdr, body) = match out[1] {
            0x81 => (3, usize::from(out[2])),
            0x82 => (4, usize::from(out[2]) << 8 | usize::from(out[3])),
            l => (2, usize::from(l)),
        };
        assert_eq!((out[0], hdr + body), (0x30, n));
        let mut tiny = [0u8; 40];
        assert_eq!(
            build(
                "salon-1",
                &[9; 64],
                |_| [0; 32],
                |_| Ok::<_, ()>([1; 64]),
                &mut tiny
            ),
            Err(CsrError::TooSmall)
        );
        assert_eq!(
            build(
                "",
                &[9; 64],
                |_| [0; 32],
                |_| Ok::<_, ()>([1; 64]),
                &mut out
            ),
            Err(CsrError::BadId)
        );
    }
}
