//! Host-side math: what a host computes to follow TempKey, authorise encrypted writes,
//! decrypt encrypted reads, check digests and compute lock summaries
//! (cryptoauthlib `lib/host/atca_host.c`, [DS] 9.6 and 9.14).
//!
//! The serial number `sn` in every function is SN[0..9] (config bytes 0–3, 8–12), as
//! [`ConfigZone::serial_number`] returns it.
//!
//! A typical encrypted PrivWrite, over any transport:
//! ```
//! use atecc::host;
//! let sn = [0x01, 0x23, 1, 2, 3, 4, 5, 6, 0xEE];
//! let write_key = [0x42; 32];          // the contents of the WriteKey slot
//! let rand_out = [0x11; 32];           // what Nonce(Random, num_in) returned
//! let num_in = [0x22; 20];
//! let tk = host::nonce_random_tempkey(&rand_out, &num_in, 0x00);
//! let tk = host::gen_dig(&write_key, 2, 4, &sn, &tk);   // GenDig(Data, slot 4)
//! let key = host::private_key_value(&[0x07; 32]);
//! let data = host::encrypt_priv_write(&tk, 0, &sn, &key);  // PrivWrite(0x40, slot 0, data)
//! assert_eq!(data.len(), 68);
//! ```

use crate::config::{CONFIG_SIZE, ConfigZone, OTP_SIZE, SLOT_COUNT};
use crate::crc::Crc16;
use crate::opcode::{Opcode, PRIVWRITE_ENCRYPTED};
use sha2::{Digest, Sha256};

/// A 32-byte SHA-256 value.
pub type Digest32 = [u8; 32];

/// Where TempKey's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SourceFlag {
    /// A random nonce (Nonce modes 0/1).
    #[default]
    Random,
    /// A host-supplied value (Nonce pass-through).
    Input,
}

/// TempKey and its flags, as both the chip and a host tracking it see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TempKey {
    /// The 32-byte value.
    pub value: Digest32,
    /// Random or input.
    pub source_flag: SourceFlag,
    /// Set by GenDig.
    pub gen_dig_data: bool,
    /// Set by GenKey with a digest.
    pub gen_key_data: bool,
    /// The key used by GenDig was a NoMac key.
    pub no_mac_flag: bool,
    /// The slot (KeyID) of the last GenDig/GenKey.
    pub key_id: u8,
}

impl TempKey {
    /// The one-byte flag summary used in internal Sign messages and Info(State):
    /// bits 3..0 KeyID, 4 SourceFlag (1 = input), 5 GenDigData, 6 GenKeyData, 7 NoMacFlag.
    pub fn flags(&self) -> u8 {
        (self.key_id & 0x0F)
            | ((self.source_flag == SourceFlag::Input) as u8) << 4
            | (self.gen_dig_data as u8) << 5
            | (self.gen_key_data as u8) << 6
            | (self.no_mac_flag as u8) << 7
    }
}

fn sha256(parts: &[&[u8]]) -> Digest32 {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// TempKey after Nonce in a random mode: SHA256(RandOut ‖ NumIn ‖ 0x16 ‖ mode ‖ 0x00).
pub fn nonce_random_tempkey(rand_out: &[u8; 32], num_in: &[u8; 20], mode: u8) -> Digest32 {
    sha256(&[rand_out, num_in, &[Opcode::Nonce as u8, mode, 0x00]])
}

/// TempKey after GenDig: SHA256(stored ‖ 0x15 ‖ zone ‖ KeyID LE ‖ SN8 ‖ SN0 ‖ SN1 ‖ 25 zeros
/// ‖ old TempKey). `stored` is the slot key, OTP block or config block.
pub fn gen_dig(
    stored: &[u8; 32],
    zone: u8,
    key_id: u16,
    sn: &[u8; 9],
    tempkey: &Digest32,
) -> Digest32 {
    let id = key_id.to_le_bytes();
    gen_dig_with_other_data(
        stored,
        &[Opcode::GenDig as u8, zone, id[0], id[1]],
        sn,
        tempkey,
    )
}

/// TempKey after GenDig with a NoMac key: the 4 OtherData bytes replace opcode‖zone‖KeyID.
pub fn gen_dig_with_other_data(
    stored: &[u8; 32],
    other_data: &[u8; 4],
    sn: &[u8; 9],
    tempkey: &Digest32,
) -> Digest32 {
    sha256(&[
        stored,
        other_data,
        &[sn[8], sn[0], sn[1]],
        &[0u8; 25],
        tempkey,
    ])
}

/// The MAC of an encrypted Write: SHA256(TempKey ‖ 0x12 ‖ param1 ‖ addr LE ‖ SN8 ‖ SN0 ‖ SN1
/// ‖ 25 zeros ‖ plaintext).
pub fn write_mac(
    tempkey: &Digest32,
    param1: u8,
    address: u16,
    sn: &[u8; 9],
    plaintext: &[u8; 32],
) -> Digest32 {
    let a = address.to_le_bytes();
    sha256(&[
        tempkey,
        &[Opcode::Write as u8, param1, a[0], a[1], sn[8], sn[0], sn[1]],
        &[0u8; 25],
        plaintext,
    ])
}

/// Encrypts a 32-byte Write to `zone` at `address` with TempKey (after Nonce and GenDig of
/// the WriteKey): returns ciphertext ‖ MAC, the data of
/// [`Command::write_encrypted`](crate::packet::Command::write_encrypted).
pub fn encrypt_write(
    tempkey: &Digest32,
    zone: u8,
    address: u16,
    sn: &[u8; 9],
    plaintext: &[u8; 32],
) -> [u8; 64] {
    let param1 = zone | crate::opcode::RW_32_BYTES | crate::opcode::WRITE_ENCRYPTED;
    let mut out = [0u8; 64];
    for (o, (p, k)) in out.iter_mut().zip(plaintext.iter().zip(tempkey)) {
        *o = p ^ k;
    }
    out[32..].copy_from_slice(&write_mac(tempkey, param1, address, sn, plaintext));
    out
}

/// Decrypts an encrypted Read (after Nonce and GenDig of the ReadKey): plaintext = cipher ⊕ TempKey.
pub fn decrypt_read(tempkey: &Digest32, cipher: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (o, (c, k)) in out.iter_mut().zip(cipher.iter().zip(tempkey)) {
        *o = c ^ k;
    }
    out
}

/// The 36-byte value PrivWrite stores: 4 zero bytes ‖ the 32-byte big-endian scalar.
pub fn private_key_value(scalar: &[u8; 32]) -> [u8; 36] {
    let mut v = [0u8; 36];
    v[4..].copy_from_slice(scalar);
    v
}

/// The MAC of an encrypted PrivWrite: SHA256(TempKey ‖ 0x46 ‖ 0x40 ‖ slot LE ‖ SN8 ‖ SN0 ‖ SN1
/// ‖ 21 zeros ‖ key36).
pub fn priv_write_mac(tempkey: &Digest32, slot: u16, sn: &[u8; 9], key36: &[u8; 36]) -> Digest32 {
    let s = slot.to_le_bytes();
    sha256(&[
        tempkey,
        &[
            Opcode::PrivWrite as u8,
            PRIVWRITE_ENCRYPTED,
            s[0],
            s[1],
            sn[8],
            sn[0],
            sn[1],
        ],
        &[0u8; 21],
        key36,
    ])
}

/// XORs the 36-byte key value with TempKey ‖ SHA256(TempKey)[0..4] (its own inverse).
pub fn priv_write_cipher(tempkey: &Digest32, key36: &[u8; 36]) -> [u8; 36] {
    let extra = sha256(&[tempkey]);
    let mut out = [0u8; 36];
    for (i, o) in out.iter_mut().enumerate() {
        let k = if i < 32 { tempkey[i] } else { extra[i - 32] };
        *o = key36[i] ^ k;
    }
    out
}

/// Encrypts a PrivWrite with TempKey (after Nonce and GenDig of the WriteKey): returns
/// cipher36 ‖ MAC32, the data of
/// [`Command::priv_write_encrypted`](crate::packet::Command::priv_write_encrypted).
pub fn encrypt_priv_write(
    tempkey: &Digest32,
    slot: u16,
    sn: &[u8; 9],
    key36: &[u8; 36],
) -> [u8; 68] {
    let mut out = [0u8; 68];
    out[..36].copy_from_slice(&priv_write_cipher(tempkey, key36));
    out[36..].copy_from_slice(&priv_write_mac(tempkey, slot, sn, key36));
    out
}

/// The public-key digest GenKey puts in TempKey: SHA256(TempKey ‖ 0x40 ‖ mode ‖ KeyID LE ‖
/// SN8 ‖ SN0 ‖ SN1 ‖ 25 zeros ‖ X‖Y).
pub fn pubkey_digest(
    tempkey: &Digest32,
    mode: u8,
    key_id: u16,
    sn: &[u8; 9],
    public_key: &[u8; 64],
) -> Digest32 {
    let id = key_id.to_le_bytes();
    pubkey_digest_with_other_data(tempkey, &[mode, id[0], id[1]], sn, public_key)
}

/// The public-key digest of GenKey's digest-only mode, where 3 OtherData bytes replace
/// mode‖KeyID.
pub fn pubkey_digest_with_other_data(
    tempkey: &Digest32,
    other_data: &[u8; 3],
    sn: &[u8; 9],
    public_key: &[u8; 64],
) -> Digest32 {
    sha256(&[
        tempkey,
        &[Opcode::GenKey as u8],
        other_data,
        &[sn[8], sn[0], sn[1]],
        &[0u8; 25],
        public_key,
    ])
}

/// A public key as stored in a slot (72 bytes): 4 zeros ‖ X ‖ 4 zeros ‖ Y.
pub fn public_key_slot_format(public_key: &[u8; 64]) -> [u8; 72] {
    let mut out = [0u8; 72];
    out[4..36].copy_from_slice(&public_key[..32]);
    out[40..72].copy_from_slice(&public_key[32..]);
    out
}

/// X‖Y from a slot holding a public key in the 72-byte format (`None` if too short).
pub fn public_key_from_slot_format(stored: &[u8]) -> Option<[u8; 64]> {
    let x = stored.get(4..36)?;
    let y = stored.get(40..72)?;
    let mut out = [0u8; 64];
    out[..32].copy_from_slice(x);
    out[32..].copy_from_slice(y);
    Some(out)
}

/// The Lock(Config) summary: CRC-16 over the 128 config bytes as they stand (LockConfig =
/// 0x55). Pass it as param2 of [`Command::lock`](crate::packet::Command::lock).
pub fn config_lock_crc(zone: &ConfigZone) -> u16 {
    let mut crc = Crc16::new();
    crc.update(&zone.0[..CONFIG_SIZE]);
    crc.finish()
}

/// The Lock(Data) summary: CRC-16 over every slot in numeric order except ECC private-key
/// slots (full slot lengths, public keys as stored), then the 64-byte OTP zone.
/// `slot(n)` returns the contents of slot `n`.
pub fn data_lock_crc<'a>(
    zone: &ConfigZone,
    mut slot: impl FnMut(usize) -> &'a [u8],
    otp: &[u8; OTP_SIZE],
) -> u16 {
    let mut crc = Crc16::new();
    for n in 0..SLOT_COUNT {
        if !zone.key_config(n).is_ecc_private() {
            crc.update(slot(n));
        }
    }
    crc.update(otp);
    crc.finish()
}

/// The MAC command's digest: SHA256(key ‖ challenge ‖ 0x08 ‖ mode ‖ KeyID LE ‖ 8+3 OTP bytes
/// (zeros on the 508A) ‖ SN8 ‖ SN4..7 or zeros ‖ SN0 SN1 ‖ SN2 SN3 or zeros); the full SN with
/// mode bit 6.
pub fn mac(key: &Digest32, challenge: &Digest32, mode: u8, key_id: u16, sn: &[u8; 9]) -> Digest32 {
    let id = key_id.to_le_bytes();
    let full = mode & crate::opcode::MAC_INCLUDE_SN != 0;
    let mid: [u8; 4] = if full {
        [sn[4], sn[5], sn[6], sn[7]]
    } else {
        [0; 4]
    };
    let low: [u8; 2] = if full { [sn[2], sn[3]] } else { [0; 2] };
    sha256(&[
        key,
        challenge,
        &[Opcode::Mac as u8, mode, id[0], id[1]],
        &[0u8; 11],
        &[sn[8]],
        &mid,
        &[sn[0], sn[1]],
        &low,
    ])
}

/// The response CheckMac expects: SHA256(key ‖ challenge ‖ OtherData[0..4] ‖ 8 zeros (OTP) ‖
/// OtherData[4..7] ‖ SN8 ‖ OtherData[7..11] ‖ SN0 SN1 ‖ OtherData[11..13]).
pub fn check_mac_response(
    key: &Digest32,
    challenge: &Digest32,
    other_data: &[u8; 13],
    sn: &[u8; 9],
) -> Digest32 {
    sha256(&[
        key,
        challenge,
        &other_data[..4],
        &[0u8; 8],
        &other_data[4..7],
        &[sn[8]],
        &other_data[7..11],
        &[sn[0], sn[1]],
        &other_data[11..13],
    ])
}

/// The 55-byte message an internal Sign signs (its SHA-256 is the ECDSA input), after
/// cryptoauthlib `atcah_sign_internal_msg`. `slot_config`/`key_config` are those of
/// TempKey's KeyID slot. Layout not verified on hardware.
#[allow(clippy::too_many_arguments)]
pub fn sign_internal_message(
    tempkey: &TempKey,
    mode: u8,
    key_id: u16,
    slot_config: u16,
    key_config: u16,
    sn: &[u8; 9],
    slot_locked: bool,
    for_invalidate: bool,
) -> [u8; 55] {
    let mut m = [0u8; 55];
    m[..32].copy_from_slice(&tempkey.value);
    m[32] = Opcode::Sign as u8;
    m[33] = mode;
    m[34..36].copy_from_slice(&key_id.to_le_bytes());
    m[36..38].copy_from_slice(&slot_config.to_le_bytes());
    m[38..40].copy_from_slice(&key_config.to_le_bytes());
    m[40] = tempkey.flags();
    m[43] = sn[8];
    let full = mode & crate::opcode::SIGN_INCLUDE_SN != 0;
    if full {
        m[44..48].copy_from_slice(&sn[4..8]);
        m[50..52].copy_from_slice(&sn[2..4]);
    }
    m[48] = sn[0];
    m[49] = sn[1];
    m[52] = if slot_locked { 0x00 } else { 0x01 };
    m[53] = for_invalidate as u8;
    m
}

/// SHA-256 of `data` (for the Verify/Sign message digest and the SHA command).
pub fn sha256_digest(data: &[u8]) -> Digest32 {
    sha256(&[data])
}

/// HMAC-SHA256 (RFC 2104) with a key of at most 64 bytes (the chip uses 32-byte slot keys).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> Digest32 {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&sha256(&[key]));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5Cu8; 64];
    for i in 0..64 {
        ipad[i] ^= block[i];
        opad[i] ^= block[i];
    }
    let inner = sha256(&[&ipad, data]);
    sha256(&[&opad, &inner])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            mac[..8],
            [0x5b, 0xdc, 0xc1, 0x46, 0xbf, 0x60, 0x75, 0x4e],
            "RFC 4231 test case 2"
        );
    }

    #[test]
    fn priv_write_cipher_is_its_own_inverse() {
        let tk = [0x5A; 32];
        let key = private_key_value(&[0x33; 32]);
        let c = priv_write_cipher(&tk, &key);
        assert_ne!(c, key);
        assert_eq!(priv_write_cipher(&tk, &c), key);
        assert_eq!(&c[..4], &tk[..4], "the 4 zero pad bytes encrypt to TempKey");
    }

    #[test]
    fn encrypt_write_then_decrypt_read() {
        let tk = [0x11; 32];
        let plain = [0xAB; 32];
        let enc = encrypt_write(&tk, 2, 0x0020, &[0; 9], &plain);
        let mut cipher = [0u8; 32];
        cipher.copy_from_slice(&enc[..32]);
        assert_eq!(decrypt_read(&tk, &cipher), plain);
        assert_eq!(enc[32..], write_mac(&tk, 0xC2, 0x0020, &[0; 9], &plain));
    }

    #[test]
    fn public_key_slot_format_round_trip() {
        let mut pk = [0u8; 64];
        pk.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let stored = public_key_slot_format(&pk);
        assert_eq!(&stored[..4], &[0; 4]);
        assert_eq!(&stored[36..40], &[0; 4]);
        assert_eq!(public_key_from_slot_format(&stored), Some(pk));
        assert_eq!(public_key_from_slot_format(&stored[..71]), None);
    }

    #[test]
    fn tempkey_flags() {
        let tk = TempKey {
            key_id: 4,
            source_flag: SourceFlag::Input,
            gen_dig_data: true,
            ..TempKey::default()
        };
        assert_eq!(tk.flags(), 0x34);
    }

    #[test]
    fn gen_dig_message_layout() {
        // The 96-byte message: stored, 15 02 04 00, SN8 SN0 SN1, 25 zeros, old TempKey.
        let sn = [0x01, 0x23, 3, 4, 5, 6, 7, 8, 0xEE];
        let mut msg = [0u8; 96];
        msg[..32].fill(0xAA);
        msg[32..39].copy_from_slice(&[0x15, 0x02, 0x04, 0x00, 0xEE, 0x01, 0x23]);
        msg[64..].fill(0x77);
        assert_eq!(
            gen_dig(&[0xAA; 32], 2, 4, &sn, &[0x77; 32]),
            sha256_digest(&msg)
        );
    }
}
