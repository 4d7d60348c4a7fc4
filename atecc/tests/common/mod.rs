//! Helpers shared by the integration tests: run commands on an emulated chip and bring it to
//! the states a provisioning run goes through.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use atecc::client::Client;
use atecc::config::ConfigZone;
use atecc::emulator::Chip;
use atecc::host;
use atecc::packet::{Command, Error, MAX_PACKET, parse_response};
use atecc::profile::{Profile, TLS_DEVICE_PROFILE};

/// The write key the operator keeps (goes into slot 4).
pub const WRITE_KEY: [u8; 32] = [0x4B; 32];
/// A secret stored in slot 10 (readable only encrypted).
pub const SECRET: [u8; 32] = [0x5C; 32];
/// The slot of the write key.
pub const WRITE_KEY_SLOT: u8 = 4;

/// Sends a command, returns the response data or the chip's status.
pub fn run(chip: &mut Chip, cmd: Command<'_>) -> Result<Vec<u8>, Error> {
    let mut buf = [0u8; MAX_PACKET];
    let n = cmd.encode(&mut buf).expect("command fits");
    let frame = chip.transact(&buf[..n]);
    parse_response(&frame).map(<[u8]>::to_vec)
}

/// Runs a command that must fail with `status` and leave the chip's state unchanged.
pub fn expect_refused(chip: &mut Chip, cmd: Command<'_>, status: atecc::Status) {
    let before = chip.state_digest();
    assert_eq!(run(chip, cmd), Err(Error::Status(status)), "{cmd:?}");
    assert_eq!(
        chip.state_digest(),
        before,
        "a refused {cmd:?} changed the chip's state"
    );
}

/// The built-in TLS device profile.
pub fn profile() -> Profile {
    Profile::from_toml(TLS_DEVICE_PROFILE).unwrap()
}

/// The config zone `chip` will have once the profile is written.
pub fn expected_zone(chip: &mut Chip) -> ConfigZone {
    let current = Client::new(&mut *chip).read_config_zone().unwrap();
    profile().to_config_zone(&current).unwrap()
}

/// A blank chip with the profile written but nothing locked.
pub fn configured_chip() -> Chip {
    let mut chip = Chip::new_blank();
    let zone = expected_zone(&mut chip);
    Client::new(&mut chip).write_config_zone(&zone).unwrap();
    chip
}

/// A chip with the config zone locked, the write key and secret written in clear.
pub fn config_locked_chip() -> Chip {
    let mut chip = configured_chip();
    let zone = Client::new(&mut chip).read_config_zone().unwrap();
    Client::new(&mut chip).lock_config(&zone).unwrap();
    let mut c = Client::new(&mut chip);
    c.write_slot(WRITE_KEY_SLOT, &WRITE_KEY).unwrap();
    c.write_slot(10, &SECRET).unwrap();
    chip
}

/// The data-lock summary of a chip's current contents.
pub fn data_summary(chip: &Chip) -> u16 {
    let zone = chip.config_zone();
    host::data_lock_crc(&zone, |n| chip.slot(n).unwrap(), &chip.otp())
}

/// A fully locked chip (config and data) with the profile.
pub fn locked_chip() -> Chip {
    let mut chip = config_locked_chip();
    let crc = data_summary(&chip);
    Client::new(&mut chip).lock_data(crc).unwrap();
    chip
}

/// 64-byte X‖Y of a p256 verifying key.
pub fn xy(key: &p256::ecdsa::VerifyingKey) -> [u8; 64] {
    let p = key.to_sec1_point(false);
    p.as_bytes()[1..65].try_into().unwrap()
}

/// p256 verifying key from X‖Y.
pub fn verifying_key(xy: &[u8]) -> p256::ecdsa::VerifyingKey {
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(xy);
    p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap()
}

/// A fresh p256 key pair.
pub fn p256_key() -> p256::ecdsa::SigningKey {
    loop {
        let mut scalar = [0u8; 32];
        getrandom_fill(&mut scalar);
        if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&scalar) {
            return k;
        }
    }
}

/// Random bytes for test keys.
pub fn getrandom_fill(buf: &mut [u8]) {
    getrandom::fill(buf).unwrap();
}
