//! Command execution with the ATECC508A's permission rules.
//!
//! Every function works on copies of the state that the caller commits only on success, so
//! a failing command changes nothing.

use super::state::{COUNTER_MAX, NvState};
use crate::config::{KeyType, OtpMode};
use crate::config::{
    READ_KEY_ECDH, READ_KEY_ECDH_TO_NEXT_SLOT, READ_KEY_EXTERNAL_SIGN, READ_KEY_INTERNAL_SIGN,
    SLOT_COUNT, WriteMode, address, config_range_writable, slot_blocks, slot_size,
};
use crate::host::{self, SourceFlag, TempKey};
use crate::opcode::*;
use crate::packet::Command;
use crate::status::Status;
use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::vec::Vec;

use Status::{EccFault, ExecutionError as Exec, Miscompare, ParseError as Parse};

/// The running SHA engine.
#[derive(Clone)]
pub(crate) struct ShaContext {
    hasher: Sha256,
    /// HMAC outer key pad when running an HMAC.
    hmac_opad: Option<[u8; 64]>,
}

/// State lost on sleep (TempKey survives idle).
#[derive(Clone, Default)]
pub(crate) struct Volatile {
    pub tempkey: Option<TempKey>,
    pub sha: Option<ShaContext>,
}

/// What a command may need besides the state.
pub(crate) struct Env<'a> {
    /// Fills a buffer with random bytes.
    pub rng: &'a mut dyn FnMut(&mut [u8]) -> Result<(), Status>,
    /// Whether an injected ECC fault is due (consumed when called).
    pub ecc_fault: &'a mut dyn FnMut() -> bool,
}

type Out = Result<Vec<u8>, Status>;

fn ok() -> Out {
    Ok(std::vec![0x00])
}

fn require(cond: bool, status: Status) -> Result<(), Status> {
    if cond { Ok(()) } else { Err(status) }
}

fn slot_param(p2: u16) -> Result<usize, Status> {
    require(p2 < SLOT_COUNT as u16, Parse)?;
    Ok(p2 as usize)
}

/// The RNG output: the test pattern `FF FF 00 00` until the config zone is locked.
fn random32(nv: &NvState, env: &mut Env<'_>) -> Result<[u8; 32], Status> {
    let mut out = [0u8; 32];
    if nv.config.is_config_locked() {
        (env.rng)(&mut out)?;
    } else {
        for (i, b) in out.iter_mut().enumerate() {
            *b = if i % 4 < 2 { 0xFF } else { 0x00 };
        }
    }
    Ok(out)
}

fn private_key(nv: &NvState, slot: usize) -> Result<SigningKey, Status> {
    SigningKey::from_slice(&nv.slots[slot][4..36]).map_err(|_| Exec)
}

fn public_key_bytes(key: &SigningKey) -> [u8; 64] {
    let point = key.verifying_key().to_sec1_point(false);
    let mut out = [0u8; 64];
    // Uncompressed SEC1: 0x04 ‖ X ‖ Y.
    if let Some(xy) = point.as_bytes().get(1..65) {
        out.copy_from_slice(xy);
    }
    out
}

fn verifying_key(xy: &[u8]) -> Result<VerifyingKey, Status> {
    let mut sec1 = [0u8; 65];
    sec1[0] = 0x04;
    sec1.get_mut(1..)
        .ok_or(Exec)?
        .copy_from_slice(xy.get(..64).ok_or(Parse)?);
    VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| Exec)
}

/// TempKey as left by GenDig over the slot `key_id` (what encrypted reads and writes need).
fn tempkey_from_gendig(vol: &Volatile, key_id: u8) -> Result<TempKey, Status> {
    match vol.tempkey {
        Some(tk) if tk.gen_dig_data && tk.key_id == key_id => Ok(tk),
        _ => Err(Exec),
    }
}

pub(crate) fn execute(
    cmd: &Command<'_>,
    nv: &mut NvState,
    vol: &mut Volatile,
    env: &mut Env<'_>,
) -> Out {
    match cmd.opcode {
        Opcode::Info => info(cmd, nv, vol),
        Opcode::Random => random(cmd, nv, env),
        Opcode::Nonce => nonce(cmd, nv, vol, env),
        Opcode::GenDig => gen_dig(cmd, nv, vol),
        Opcode::Read => read(cmd, nv, vol),
        Opcode::Write => write(cmd, nv, vol),
        Opcode::PrivWrite => priv_write(cmd, nv, vol),
        Opcode::Lock => lock(cmd, nv),
        Opcode::GenKey => gen_key(cmd, nv, vol, env),
        Opcode::Sign => sign(cmd, nv, vol, env),
        Opcode::Verify => verify(cmd, nv, vol, env),
        Opcode::Ecdh => ecdh(cmd, nv, env),
        Opcode::UpdateExtra => update_extra(cmd, nv),
        Opcode::Counter => counter(cmd, nv),
        Opcode::Sha => sha(cmd, nv, vol),
        Opcode::Mac => mac(cmd, nv, vol),
        Opcode::CheckMac => check_mac(cmd, nv, vol),
        // Not emulated: DeriveKey, HMAC, and Pause (single-wire only).
        Opcode::DeriveKey | Opcode::Hmac | Opcode::Pause => Err(Parse),
    }
}

fn info(cmd: &Command<'_>, nv: &NvState, vol: &Volatile) -> Out {
    require(cmd.data.is_empty(), Parse)?;
    match cmd.param1 {
        0 => Ok(nv.config.revision().to_vec()),
        1 => {
            let slot = slot_param(cmd.param2)?;
            let kc = nv.config.key_config(slot);
            let valid = kc.key_type() == KeyType::P256
                && if kc.private() {
                    private_key(nv, slot).is_ok()
                } else {
                    host::public_key_from_slot_format(&nv.slots[slot])
                        .is_some_and(|xy| verifying_key(&xy).is_ok())
                };
            Ok(std::vec![valid as u8, 0, 0, 0])
        }
        2 => {
            let (flags, valid) = vol.tempkey.map_or((0, 0), |tk| (tk.flags(), 1));
            Ok(std::vec![flags, valid, 0, 0])
        }
        3 => Ok(std::vec![0, 0, 0, 0]),
        _ => Err(Parse),
    }
}

fn random(cmd: &Command<'_>, nv: &NvState, env: &mut Env<'_>) -> Out {
    require(
        cmd.param1 <= 1 && cmd.param2 == 0 && cmd.data.is_empty(),
        Parse,
    )?;
    Ok(random32(nv, env)?.to_vec())
}

fn nonce(cmd: &Command<'_>, nv: &NvState, vol: &mut Volatile, env: &mut Env<'_>) -> Out {
    require(cmd.param2 == 0, Parse)?;
    match cmd.param1 {
        0 | 1 => {
            let num_in: &[u8; 20] = cmd.data.try_into().map_err(|_| Parse)?;
            let rand_out = random32(nv, env)?;
            vol.tempkey = Some(TempKey {
                value: host::nonce_random_tempkey(&rand_out, num_in, cmd.param1),
                source_flag: SourceFlag::Random,
                ..TempKey::default()
            });
            Ok(rand_out.to_vec())
        }
        3 => {
            let num_in: [u8; 32] = cmd.data.try_into().map_err(|_| Parse)?;
            vol.tempkey = Some(TempKey {
                value: num_in,
                source_flag: SourceFlag::Input,
                ..TempKey::default()
            });
            ok()
        }
        _ => Err(Parse),
    }
}

fn gen_dig(cmd: &Command<'_>, nv: &NvState, vol: &mut Volatile) -> Out {
    require(cmd.data.is_empty() || cmd.data.len() == 4, Parse)?;
    let zone = cmd.param1;
    let key_id = cmd.param2;
    let (stored, no_mac) = match zone {
        0 => (
            nv.config
                .block(key_id as usize)
                .filter(|_| key_id < 4)
                .ok_or(Parse)?,
            false,
        ),
        1 => {
            require(key_id < 2, Parse)?;
            let mut b = [0u8; 32];
            b.copy_from_slice(&nv.otp[key_id as usize * 32..key_id as usize * 32 + 32]);
            (b, false)
        }
        2 => {
            let slot = slot_param(key_id)?;
            require(nv.config.is_config_locked(), Exec)?;
            require(!nv.config.key_config(slot).is_ecc_private(), Exec)?;
            (nv.key32(slot), nv.config.slot_config(slot).no_mac())
        }
        // SharedNonce, Counter and KeyConfig digests exist only on the ATECC608.
        _ => return Err(Parse),
    };
    let tk = vol.tempkey.ok_or(Exec)?;
    let sn = nv.config.serial_number();
    let value = if no_mac {
        let other: &[u8; 4] = cmd.data.try_into().map_err(|_| Exec)?;
        host::gen_dig_with_other_data(&stored, other, &sn, &tk.value)
    } else {
        host::gen_dig(&stored, zone, key_id, &sn, &tk.value)
    };
    vol.tempkey = Some(TempKey {
        value,
        source_flag: tk.source_flag,
        gen_dig_data: zone == GenDigZone::Data as u8,
        gen_key_data: false,
        no_mac_flag: no_mac,
        key_id: (key_id & 0x0F) as u8,
    });
    ok()
}

/// Byte range of a Read/Write: (offset in zone/slot, length, zone size). The 32-byte
/// accesses ignore the word; a 32-byte access to the last, short block of a slot covers only
/// the bytes that exist.
fn locate(zone: Zone, p2: u16, long: bool) -> Result<(Option<usize>, usize, usize), Status> {
    let len = if long { 32 } else { 4 };
    let (slot, offset, size) = match zone {
        Zone::Config | Zone::Otp => {
            let (block, word) = address::split_block_word(p2);
            let size = if zone == Zone::Config { 128 } else { 64 };
            require(p2 >> 8 == 0, Parse)?;
            (None, block * 32 + if long { 0 } else { word * 4 }, size)
        }
        Zone::Data => {
            let (slot, block, word) = address::split_data(p2);
            require(block < slot_blocks(slot), Parse)?;
            (
                Some(slot),
                block * 32 + if long { 0 } else { word * 4 },
                slot_size(slot),
            )
        }
    };
    require(
        offset < size && (slot.is_some() || offset + len <= size),
        Parse,
    )?;
    if !long {
        require(offset + 4 <= size, Parse)?;
    }
    Ok((slot, offset, len))
}

fn read(cmd: &Command<'_>, nv: &NvState, vol: &mut Volatile) -> Out {
    require(cmd.data.is_empty() && cmd.param1 & 0x7C == 0, Parse)?;
    let zone = Zone::from_bits(cmd.param1).ok_or(Parse)?;
    let long = cmd.param1 & RW_32_BYTES != 0;
    let (slot, offset, len) = locate(zone, cmd.param2, long)?;
    match (zone, slot) {
        (Zone::Config, _) => Ok(nv.config.0[offset..offset + len].to_vec()),
        (Zone::Otp, _) => {
            require(nv.config.is_data_locked(), Exec)?;
            Ok(nv.otp[offset..offset + len].to_vec())
        }
        (Zone::Data, Some(slot)) => {
            require(nv.config.is_data_locked(), Exec)?;
            let sc = nv.config.slot_config(slot);
            require(!nv.config.key_config(slot).is_ecc_private(), Exec)?;
            let stored = &nv.slots[slot];
            let mut out = std::vec![0u8; len];
            let end = (offset + len).min(stored.len());
            out[..end - offset].copy_from_slice(&stored[offset..end]);
            if sc.is_secret() {
                // Secrets leave the chip only as 32-byte encrypted reads.
                require(sc.encrypt_read() && long, Exec)?;
                let tk = tempkey_from_gendig(vol, sc.read_key())?;
                for (o, k) in out.iter_mut().zip(tk.value) {
                    *o ^= k;
                }
                vol.tempkey = None;
            }
            Ok(out)
        }
        (Zone::Data, None) => Err(Parse),
    }
}

/// Decrypts and authenticates an encrypted 32-byte Write with TempKey from GenDig(WriteKey).
fn decrypt_write(
    cmd: &Command<'_>,
    nv: &NvState,
    vol: &mut Volatile,
    write_key: u8,
) -> Result<[u8; 32], Status> {
    let (cipher, mac) = cmd.data.split_at_checked(32).ok_or(Exec)?;
    let cipher: &[u8; 32] = cipher.try_into().map_err(|_| Exec)?;
    require(mac.len() == 32, Exec)?;
    let tk = tempkey_from_gendig(vol, write_key)?;
    let plain = host::decrypt_read(&tk.value, cipher);
    let expected = host::write_mac(
        &tk.value,
        cmd.param1,
        cmd.param2,
        &nv.config.serial_number(),
        &plain,
    );
    require(expected[..] == mac[..], Exec)?;
    vol.tempkey = None;
    Ok(plain)
}

fn write(cmd: &Command<'_>, nv: &mut NvState, vol: &mut Volatile) -> Out {
    require(cmd.param1 & 0x3C == 0, Parse)?;
    let zone = Zone::from_bits(cmd.param1).ok_or(Parse)?;
    let long = cmd.param1 & RW_32_BYTES != 0;
    let encrypted = cmd.param1 & WRITE_ENCRYPTED != 0;
    let len = if long { 32 } else { 4 };
    require(cmd.data.len() == len || cmd.data.len() == len + 32, Parse)?;
    let (slot, offset, _) = locate(zone, cmd.param2, long)?;
    let value = &cmd.data[..len];
    let cfg = nv.config;
    match (zone, slot) {
        (Zone::Config, _) => {
            require(!cfg.is_config_locked() && !encrypted, Exec)?;
            require(config_range_writable(offset, len), Exec)?;
            nv.config.0[offset..offset + len].copy_from_slice(value);
        }
        (Zone::Otp, _) => {
            require(cfg.is_config_locked() && !encrypted, Exec)?;
            if cfg.is_data_locked() {
                require(cfg.otp_mode() == OtpMode::Consumption, Exec)?;
                // Consumption mode: bits only go from 1 to 0.
                for (o, v) in nv.otp[offset..offset + len].iter_mut().zip(value) {
                    *o &= v;
                }
            } else {
                require(long, Exec)?;
                nv.otp[offset..offset + len].copy_from_slice(value);
            }
        }
        (Zone::Data, Some(slot)) => {
            require(cfg.is_config_locked(), Exec)?;
            let sc = cfg.slot_config(slot);
            require(!cfg.key_config(slot).is_ecc_private(), Exec)?;
            let plain: Vec<u8> = if cfg.is_data_locked() {
                require(!cfg.is_slot_locked(slot), Exec)?;
                match sc.write_config().write_mode() {
                    WriteMode::Always => {
                        require(!encrypted && (long || !sc.is_secret()), Exec)?;
                        value.to_vec()
                    }
                    WriteMode::Encrypt => {
                        require(encrypted && long, Exec)?;
                        decrypt_write(cmd, nv, vol, sc.write_key())?.to_vec()
                    }
                    // PubInvalid needs public-key validation state, not emulated: treated as Never.
                    WriteMode::PubInvalid | WriteMode::Never => return Err(Exec),
                }
            } else {
                // Before data lock: 32-byte writes only; encryption honoured when requested.
                require(long, Exec)?;
                if encrypted {
                    decrypt_write(cmd, nv, vol, sc.write_key())?.to_vec()
                } else {
                    value.to_vec()
                }
            };
            let stored = &mut nv.slots[slot];
            let end = (offset + len).min(stored.len());
            // A slot's short last block (4 bytes of a 36-byte slot, 8 of a 72-byte one) takes
            // a 32-byte write only zero-padded (Microchip's data sheets: "the additional bytes
            // need to be padded with zeros"); anything past the slot is refused.
            require(plain[end - offset..].iter().all(|b| *b == 0), Parse)?;
            stored[offset..end].copy_from_slice(&plain[..end - offset]);
        }
        (Zone::Data, None) => return Err(Parse),
    }
    ok()
}

fn priv_write(cmd: &Command<'_>, nv: &mut NvState, vol: &mut Volatile) -> Out {
    require(
        cmd.param1 & !PRIVWRITE_ENCRYPTED == 0 && cmd.data.len() == 68,
        Parse,
    )?;
    let slot = slot_param(cmd.param2)?;
    let cfg = nv.config;
    require(cfg.is_config_locked(), Exec)?;
    require(cfg.key_config(slot).is_ecc_private(), Exec)?;
    let sc = cfg.slot_config(slot);
    let encrypted = cmd.param1 & PRIVWRITE_ENCRYPTED != 0;
    if cfg.is_data_locked() {
        require(
            encrypted && sc.is_secret() && sc.write_config().priv_write_allowed(),
            Exec,
        )?;
        require(!cfg.is_slot_locked(slot), Exec)?;
    }
    let (value, mac) = cmd.data.split_at(36);
    let mut key36 = [0u8; 36];
    key36.copy_from_slice(value);
    if encrypted {
        let tk = tempkey_from_gendig(vol, sc.write_key())?;
        key36 = host::priv_write_cipher(&tk.value, &key36);
        let expected = host::priv_write_mac(&tk.value, cmd.param2, &cfg.serial_number(), &key36);
        require(expected[..] == mac[..], Exec)?;
        vol.tempkey = None;
    }
    nv.slots[slot][..36].copy_from_slice(&key36);
    ok()
}

fn lock(cmd: &Command<'_>, nv: &mut NvState) -> Out {
    require(cmd.data.is_empty() && cmd.param1 & 0x40 == 0, Parse)?;
    let check_crc = cmd.param1 & LOCK_NO_CRC == 0;
    let cfg = nv.config;
    match cmd.param1 & 0x03 {
        0 | 1 if cmd.param1 & 0x3C != 0 => Err(Parse),
        0 => {
            require(!cfg.is_config_locked(), Exec)?;
            require(
                !check_crc || host::config_lock_crc(&cfg) == cmd.param2,
                Exec,
            )?;
            nv.config.set_config_locked();
            ok()
        }
        1 => {
            require(cfg.is_config_locked() && !cfg.is_data_locked(), Exec)?;
            let crc = host::data_lock_crc(&cfg, |n| &nv.slots[n], &nv.otp);
            require(!check_crc || crc == cmd.param2, Exec)?;
            nv.config.set_data_locked();
            ok()
        }
        2 => {
            let slot = ((cmd.param1 >> 2) & 0x0F) as usize;
            require(
                cfg.is_data_locked() && cfg.key_config(slot).lockable(),
                Exec,
            )?;
            require(!cfg.is_slot_locked(slot), Exec)?;
            nv.config
                .set_slot_locked_bits(cfg.slot_locked_bits() & !(1 << slot));
            ok()
        }
        _ => Err(Parse),
    }
}

fn gen_key(cmd: &Command<'_>, nv: &mut NvState, vol: &mut Volatile, env: &mut Env<'_>) -> Out {
    let mode = cmd.param1;
    require(matches!(mode, 0x00 | 0x04 | 0x08 | 0x0C | 0x10), Parse)?;
    require(
        cmd.data.is_empty()
            || (cmd.data.len() == 3 && mode & (GENKEY_DIGEST | GENKEY_PUBKEY_DIGEST) != 0),
        Parse,
    )?;
    let slot = slot_param(cmd.param2)?;
    let cfg = nv.config;
    require(cfg.is_config_locked(), Exec)?;
    let kc = cfg.key_config(slot);
    let sn = cfg.serial_number();
    if mode == GENKEY_PUBKEY_DIGEST {
        require(kc.key_type() == KeyType::P256 && !kc.private(), Exec)?;
        let other: &[u8; 3] = cmd.data.try_into().map_err(|_| Parse)?;
        let xy = host::public_key_from_slot_format(&nv.slots[slot]).ok_or(Exec)?;
        let tk = vol.tempkey.ok_or(Exec)?;
        vol.tempkey = Some(TempKey {
            value: host::pubkey_digest_with_other_data(&tk.value, other, &sn, &xy),
            gen_key_data: true,
            key_id: slot as u8,
            ..tk
        });
        return ok();
    }
    require(kc.is_ecc_private(), Exec)?;
    let key = if mode & GENKEY_CREATE != 0 {
        require(cfg.slot_config(slot).is_secret(), Exec)?;
        if cfg.is_data_locked() {
            require(cfg.slot_config(slot).write_config().gen_key_allowed(), Exec)?;
            require(!cfg.is_slot_locked(slot), Exec)?;
        }
        require(!(env.ecc_fault)(), EccFault)?;
        let key = loop {
            let mut scalar = [0u8; 32];
            (env.rng)(&mut scalar)?;
            if let Ok(k) = SigningKey::from_slice(&scalar) {
                break k;
            }
        };
        nv.slots[slot][..4].fill(0);
        nv.slots[slot][4..36].copy_from_slice(&key.to_bytes());
        key
    } else {
        require(!cfg.is_data_locked() || kc.pub_info(), Exec)?;
        private_key(nv, slot)?
    };
    let xy = public_key_bytes(&key);
    if mode & GENKEY_DIGEST != 0 {
        let tk = vol.tempkey.ok_or(Exec)?;
        vol.tempkey = Some(TempKey {
            value: host::pubkey_digest(&tk.value, mode, slot as u16, &sn, &xy),
            gen_key_data: true,
            gen_dig_data: false,
            key_id: slot as u8,
            ..tk
        });
    }
    Ok(xy.to_vec())
}

fn sign(cmd: &Command<'_>, nv: &NvState, vol: &Volatile, env: &mut Env<'_>) -> Out {
    require(cmd.data.is_empty(), Parse)?;
    let mode = cmd.param1;
    require(matches!(mode, 0x80 | 0x00 | 0x40), Parse)?;
    let slot = slot_param(cmd.param2)?;
    let cfg = nv.config;
    require(cfg.is_config_locked(), Exec)?;
    require(cfg.key_config(slot).is_ecc_private(), Exec)?;
    let read_key = cfg.slot_config(slot).read_key();
    let tk = vol.tempkey.ok_or(Exec)?;
    let digest = if mode == SIGN_EXTERNAL {
        require(read_key & READ_KEY_EXTERNAL_SIGN != 0, Exec)?;
        require(tk.source_flag == SourceFlag::Input, Exec)?;
        tk.value
    } else {
        require(
            cfg.is_data_locked() && read_key & READ_KEY_INTERNAL_SIGN != 0,
            Exec,
        )?;
        require(tk.gen_dig_data || tk.gen_key_data, Exec)?;
        let src = tk.key_id as usize;
        let msg = host::sign_internal_message(
            &tk,
            mode,
            slot as u16,
            cfg.slot_config(src).0,
            cfg.key_config(src).0,
            &cfg.serial_number(),
            cfg.is_slot_locked(src),
            false,
        );
        host::sha256_digest(&msg)
    };
    let key = private_key(nv, slot)?;
    require(!(env.ecc_fault)(), EccFault)?;
    let sig: Signature = key.sign_prehash(&digest).map_err(|_| EccFault)?;
    Ok(sig.to_bytes().to_vec())
}

fn verify(cmd: &Command<'_>, nv: &NvState, vol: &Volatile, env: &mut Env<'_>) -> Out {
    let (sig, key) = match cmd.param1 {
        2 => {
            require(
                cmd.param2 == VERIFY_KEY_P256 && cmd.data.len() == 128,
                Parse,
            )?;
            (&cmd.data[..64], verifying_key(&cmd.data[64..])?)
        }
        0 => {
            require(cmd.data.len() == 64, Parse)?;
            let slot = slot_param(cmd.param2)?;
            let cfg = nv.config;
            require(cfg.is_config_locked(), Exec)?;
            let kc = cfg.key_config(slot);
            require(kc.key_type() == KeyType::P256 && !kc.private(), Exec)?;
            let xy = host::public_key_from_slot_format(&nv.slots[slot]).ok_or(Exec)?;
            (cmd.data, verifying_key(&xy)?)
        }
        // Validate / Invalidate of stored keys are not emulated.
        _ => return Err(Parse),
    };
    let tk = vol.tempkey.ok_or(Exec)?;
    require(!(env.ecc_fault)(), EccFault)?;
    let sig = Signature::from_slice(sig).map_err(|_| Miscompare)?;
    key.verify_prehash(&tk.value, &sig)
        .map_err(|_| Miscompare)?;
    ok()
}

fn ecdh(cmd: &Command<'_>, nv: &mut NvState, env: &mut Env<'_>) -> Out {
    require(cmd.param1 == 0 && cmd.data.len() == 64, Parse)?;
    let slot = slot_param(cmd.param2)?;
    let cfg = nv.config;
    require(cfg.is_config_locked(), Exec)?;
    require(cfg.key_config(slot).is_ecc_private(), Exec)?;
    let read_key = cfg.slot_config(slot).read_key();
    require(read_key & READ_KEY_ECDH != 0, Exec)?;
    let key = private_key(nv, slot)?;
    let peer = verifying_key(cmd.data)?;
    let peer = p256::PublicKey::from(&peer);
    require(!(env.ecc_fault)(), EccFault)?;
    let secret = p256::SecretKey::from(&key).diffie_hellman(&peer);
    let secret: [u8; 32] = (*secret.raw_secret_bytes()).into();
    if read_key & READ_KEY_ECDH_TO_NEXT_SLOT != 0 {
        let next = slot + 1;
        require(next < SLOT_COUNT, Exec)?;
        nv.slots[next][..32].copy_from_slice(&secret);
        ok()
    } else {
        Ok(secret.to_vec())
    }
}

fn update_extra(cmd: &Command<'_>, nv: &mut NvState) -> Out {
    require(cmd.data.is_empty(), Parse)?;
    let cfg = nv.config;
    let value = (cmd.param2 & 0xFF) as u8;
    match cmd.param1 {
        // cryptoauthlib's calib_write_config_zone runs UpdateExtra on an unlocked config zone
        // and expects it to fail only "if either value is already non-zero", so the lock
        // state is not checked for bytes 84 and 85 ([DS] describes use after config lock).
        0 => {
            require(cfg.user_extra() == 0, Exec)?;
            nv.config.set_user_extra(value);
        }
        1 => {
            require(
                !cfg.chip_mode().selector_mode() || cfg.selector() == 0,
                Exec,
            )?;
            nv.config.set_selector(value);
        }
        2 => {
            let slot = slot_param(cmd.param2)?;
            require(cfg.is_config_locked(), Exec)?;
            // Only slot 15 has a LastKeyUse budget on the ATECC508A.
            if slot == 15 && cfg.slot_config(15).limited_use() {
                let mut uses = cfg.last_key_use();
                let byte = uses.iter_mut().find(|b| **b != 0).ok_or(Exec)?;
                *byte &= *byte - 1;
                nv.config.set_last_key_use(uses);
            }
        }
        _ => return Err(Parse),
    }
    ok()
}

fn counter(cmd: &Command<'_>, nv: &mut NvState) -> Out {
    require(
        cmd.data.is_empty() && cmd.param1 <= 1 && cmd.param2 <= 1,
        Parse,
    )?;
    let c = &mut nv.counters[cmd.param2 as usize];
    if cmd.param1 == 1 {
        require(*c < COUNTER_MAX, Exec)?;
        *c += 1;
    }
    Ok(c.to_le_bytes().to_vec())
}

fn sha(cmd: &Command<'_>, nv: &NvState, vol: &mut Volatile) -> Out {
    match cmd.param1 {
        0 => {
            require(cmd.data.is_empty(), Parse)?;
            // The SHA engine uses TempKey as its scratch space.
            vol.tempkey = None;
            vol.sha = Some(ShaContext {
                hasher: Sha256::new(),
                hmac_opad: None,
            });
            ok()
        }
        4 => {
            require(cmd.data.is_empty(), Parse)?;
            let slot = slot_param(cmd.param2)?;
            require(!nv.config.key_config(slot).is_ecc_private(), Exec)?;
            let key = nv.key32(slot);
            let mut ipad = [0x36u8; 64];
            let mut opad = [0x5Cu8; 64];
            for i in 0..32 {
                ipad[i] ^= key[i];
                opad[i] ^= key[i];
            }
            let mut hasher = Sha256::new();
            hasher.update(ipad);
            vol.tempkey = None;
            vol.sha = Some(ShaContext {
                hasher,
                hmac_opad: Some(opad),
            });
            ok()
        }
        1 => {
            require(cmd.data.len() == 64, Parse)?;
            vol.sha.as_mut().ok_or(Exec)?.hasher.update(cmd.data);
            ok()
        }
        2 | 5 => {
            require(
                cmd.data.len() < 64 && cmd.data.len() == cmd.param2 as usize,
                Parse,
            )?;
            let ctx = vol.sha.take().ok_or(Exec)?;
            require(ctx.hmac_opad.is_some() == (cmd.param1 == 5), Exec)?;
            let mut hasher = ctx.hasher;
            hasher.update(cmd.data);
            let mut digest: [u8; 32] = hasher.finalize().into();
            if let Some(opad) = ctx.hmac_opad {
                let mut outer = Sha256::new();
                outer.update(opad);
                outer.update(digest);
                digest = outer.finalize().into();
            }
            Ok(digest.to_vec())
        }
        // Mode 3 (Public) is not emulated.
        _ => Err(Parse),
    }
}

fn tempkey_for_mac(vol: &Volatile, mode: u8) -> Result<TempKey, Status> {
    let tk = vol.tempkey.ok_or(Exec)?;
    let want_input = mode & MAC_SOURCE_FLAG != 0;
    require((tk.source_flag == SourceFlag::Input) == want_input, Exec)?;
    Ok(tk)
}

fn mac_key(nv: &NvState, slot: usize) -> Result<[u8; 32], Status> {
    require(!nv.config.key_config(slot).is_ecc_private(), Exec)?;
    require(!nv.config.slot_config(slot).no_mac(), Exec)?;
    Ok(nv.key32(slot))
}

fn mac(cmd: &Command<'_>, nv: &NvState, vol: &Volatile) -> Out {
    let mode = cmd.param1;
    require(mode & 0xB8 == 0, Parse)?;
    let slot = slot_param(cmd.param2)?;
    let uses_tempkey = mode & (MAC_CHALLENGE_FROM_TEMPKEY | MAC_KEY_FROM_TEMPKEY) != 0;
    let tk = if uses_tempkey {
        Some(tempkey_for_mac(vol, mode)?)
    } else {
        None
    };
    let challenge: [u8; 32] = if mode & MAC_CHALLENGE_FROM_TEMPKEY != 0 {
        require(cmd.data.is_empty(), Parse)?;
        tk.map(|t| t.value).ok_or(Exec)?
    } else {
        cmd.data.try_into().map_err(|_| Parse)?
    };
    let key = match tk {
        Some(t) if mode & MAC_KEY_FROM_TEMPKEY != 0 => t.value,
        _ => mac_key(nv, slot)?,
    };
    Ok(host::mac(
        &key,
        &challenge,
        mode,
        cmd.param2,
        &nv.config.serial_number(),
    )
    .to_vec())
}

fn check_mac(cmd: &Command<'_>, nv: &NvState, vol: &Volatile) -> Out {
    let mode = cmd.param1;
    require(mode & 0xD8 == 0 && cmd.data.len() == 77, Parse)?;
    let slot = slot_param(cmd.param2)?;
    let uses_tempkey = mode & (MAC_CHALLENGE_FROM_TEMPKEY | MAC_KEY_FROM_TEMPKEY) != 0;
    let tk = if uses_tempkey {
        Some(tempkey_for_mac(vol, mode)?)
    } else {
        None
    };
    let mut challenge = [0u8; 32];
    challenge.copy_from_slice(&cmd.data[..32]);
    if mode & MAC_CHALLENGE_FROM_TEMPKEY != 0 {
        challenge = tk.map(|t| t.value).ok_or(Exec)?;
    }
    let key = match tk {
        Some(t) if mode & MAC_KEY_FROM_TEMPKEY != 0 => t.value,
        _ => {
            require(!nv.config.key_config(slot).is_ecc_private(), Exec)?;
            nv.key32(slot)
        }
    };
    let other: &[u8; 13] = cmd.data[64..].try_into().map_err(|_| Parse)?;
    let expected = host::check_mac_response(&key, &challenge, other, &nv.config.serial_number());
    require(expected[..] == cmd.data[32..64], Miscompare)?;
    ok()
}
