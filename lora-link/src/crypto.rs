//! The LoRaWAN 1.0 primitives the secure frame is built from, and key derivation.
//!
//! * Payload encryption (LoRaWAN 1.0 §4.3.3): keystream blocks
//!   `Ai = 0x01 | 00 00 00 00 | Dir | DevAddr (LE) | FCnt (LE, 32 bit) | 0x00 | i`, i = 1, 2, …
//!   encrypted with AES-128 and XORed onto the payload. Incrementing only the last byte is
//!   AES-128-CTR (big-endian counter) started at A1, which is how it is computed here.
//! * MIC (LoRaWAN 1.0 §4.4): the first 4 bytes of AES-CMAC over
//!   `B0 | msg` with `B0 = 0x49 | 00 00 00 00 | Dir | DevAddr | FCnt | 0x00 | len(msg)`.
//!
//! The link key is never used directly: like LoRaWAN's NwkSKey/AppSKey (derived with
//! 0x01/0x02 from the AppKey), a MIC key and an encryption key are derived from it, plus a
//! short key identifier that names the counter state files.

use aes::Aes128;
use aes::cipher::{Array, BlockCipherEncrypt, KeyInit, KeyIvInit, StreamCipher};
use cmac::{Cmac, Mac};

/// Uplink direction (Dir = 0), the only direction the link uses.
pub const DIR_UP: u8 = 0;

fn block(prefix: u8, dir: u8, dev_addr: u32, fcnt: u32, last: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = prefix;
    b[5] = dir;
    b[6..10].copy_from_slice(&dev_addr.to_le_bytes());
    b[10..14].copy_from_slice(&fcnt.to_le_bytes());
    b[15] = last;
    b
}

/// Encrypts (or decrypts: the operation is its own inverse) `data` in place like LoRaWAN 1.0
/// FRMPayload: AES-128-CTR with the initial block A1.
pub fn lorawan_crypt(key: &[u8; 16], dir: u8, dev_addr: u32, fcnt: u32, data: &mut [u8]) {
    let a1 = block(0x01, dir, dev_addr, fcnt, 1);
    let mut c = ctr::Ctr128BE::<Aes128>::new(&Array::from(*key), &Array::from(a1));
    c.apply_keystream(data);
}

/// LoRaWAN 1.0 MIC: the first 4 bytes of AES-CMAC(key, B0 | msg). `msg` is at most 255
/// bytes (its length is one byte of B0; longer input is truncated in B0 as in LoRaWAN).
pub fn lorawan_mic(key: &[u8; 16], dir: u8, dev_addr: u32, fcnt: u32, msg: &[u8]) -> [u8; 4] {
    let b0 = block(0x49, dir, dev_addr, fcnt, msg.len() as u8);
    let mut m = <Cmac<Aes128> as KeyInit>::new(&Array::from(*key));
    m.update(&b0);
    m.update(msg);
    let tag = m.finalize().into_bytes();
    [tag[0], tag[1], tag[2], tag[3]]
}

/// AES-128 encryption of one block (for derivations).
pub fn aes_encrypt_block(key: &[u8; 16], data: [u8; 16]) -> [u8; 16] {
    let cipher = Aes128::new(&Array::from(*key));
    let mut b = Array::from(data);
    cipher.encrypt_block(&mut b);
    b.into()
}

/// The keys derived from one link key.
#[derive(Clone)]
pub struct LinkKeys {
    /// MIC key (LoRaWAN's NwkSKey role).
    pub mic: [u8; 16],
    /// Payload encryption key (LoRaWAN's AppSKey role).
    pub enc: [u8; 16],
    /// Public identifier of the link key (4 bytes), used to name counter state.
    pub id: [u8; 4],
}

impl std::fmt::Debug for LinkKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LinkKeys(id {})", self.id_hex())
    }
}

const LABEL: &[u8; 9] = b"lora-link";

impl LinkKeys {
    /// Derives the MIC key (`AES(K, 0x01 | "lora-link" | 0…)`), the encryption key (`0x02`)
    /// and the key identifier (first 4 bytes of `0x03`).
    pub fn derive(link_key: &[u8; 16]) -> Self {
        let d = |n: u8| {
            let mut b = [0u8; 16];
            b[0] = n;
            b[1..10].copy_from_slice(LABEL);
            aes_encrypt_block(link_key, b)
        };
        let idb = d(3);
        Self {
            mic: d(1),
            enc: d(2),
            id: [idb[0], idb[1], idb[2], idb[3]],
        }
    }

    /// The key identifier as 8 hex digits.
    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h16(s: &str) -> [u8; 16] {
        hex::decode(s).expect("hex").try_into().expect("16")
    }

    /// The published LoRaWAN 1.0 example (lora-packet): our primitives reproduce its MIC and
    /// decrypt its FRMPayload.
    #[test]
    fn lorawan_test_vector() {
        let frame = hex::decode("40F17DBE4900020001954378762B11FF0D").expect("hex");
        let nwk = h16("44024241ED4CE9A68C6A8BC055233FD3");
        let app = h16("EC925802AE430CA77FD3DD73CB2CC588");
        let dev_addr = u32::from_le_bytes([frame[1], frame[2], frame[3], frame[4]]);
        assert_eq!(dev_addr, 0x49BE7DF1);
        let fcnt = u32::from(u16::from_le_bytes([frame[6], frame[7]]));
        assert_eq!(fcnt, 2);
        assert_eq!(
            hex::encode_upper(block(0x49, DIR_UP, dev_addr, fcnt, 13)),
            "490000000000F17DBE4902000000000D"
        );
        assert_eq!(
            hex::encode_upper(block(0x01, DIR_UP, dev_addr, fcnt, 1)),
            "010000000000F17DBE49020000000001"
        );
        let (msg, mic) = frame.split_at(frame.len() - 4);
        assert_eq!(lorawan_mic(&nwk, DIR_UP, dev_addr, fcnt, msg), mic);
        let mut payload = msg[9..].to_vec();
        lorawan_crypt(&app, DIR_UP, dev_addr, fcnt, &mut payload);
        assert_eq!(payload, b"test");
        // and back
        lorawan_crypt(&app, DIR_UP, dev_addr, fcnt, &mut payload);
        assert_eq!(payload, msg[9..]);
    }

    #[test]
    fn fips197_c1() {
        let k = h16("000102030405060708090a0b0c0d0e0f");
        let p = h16("00112233445566778899aabbccddeeff");
        assert_eq!(
            hex::encode(aes_encrypt_block(&k, p)),
            "69c4e0d86a7b0430d8cdb78070b4c55a"
        );
    }

    #[test]
    fn derived_keys_differ() {
        let k = LinkKeys::derive(&[7u8; 16]);
        assert_ne!(k.mic, k.enc);
        assert_ne!(k.mic, [7u8; 16]);
        assert_eq!(k.id_hex().len(), 8);
        assert!(!format!("{k:?}").contains(&hex::encode(k.mic)));
    }
}
