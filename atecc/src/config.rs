//! The 128-byte configuration zone and the geometry of the data and OTP zones.
//!
//! This is the one module that knows byte offsets; everything else uses the named accessors.
//!
//! ```
//! use atecc::config::{ConfigZone, KeyType};
//! let zone = ConfigZone::factory_default([0x01, 0x23, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0xEE]);
//! assert!(!zone.is_config_locked());
//! let slot0 = zone.key_config(0);
//! assert_eq!(slot0.key_type(), KeyType::P256);
//! assert_eq!(zone.serial_number()[8], 0xEE);
//! ```

/// Size of the config zone.
pub const CONFIG_SIZE: usize = 128;
/// Size of the OTP zone.
pub const OTP_SIZE: usize = 64;
/// Number of key slots.
pub const SLOT_COUNT: usize = 16;
/// The value of a lock byte while its zone is unlocked.
pub const UNLOCKED: u8 = 0x55;
/// The value of a lock byte once its zone is locked.
pub const LOCKED: u8 = 0x00;
/// The ATECC508A revision answered by Info(Revision).
pub const REVISION_508A: [u8; 4] = [0x00, 0x00, 0x50, 0x00];
/// The fixed first two serial-number bytes.
pub const SN_PREFIX: [u8; 2] = [0x01, 0x23];
/// The fixed last serial-number byte.
pub const SN_SUFFIX: u8 = 0xEE;
/// Default 8-bit I2C address.
pub const DEFAULT_I2C_ADDRESS: u8 = 0xC0;

/// Byte offsets in the config zone ([DS] Table 2-5).
pub mod offset {
    /// SN[0..4].
    pub const SN_0_3: usize = 0;
    /// RevNum (4 bytes).
    pub const REVISION: usize = 4;
    /// SN[4..9].
    pub const SN_4_8: usize = 8;
    /// Reserved.
    pub const RESERVED_13: usize = 13;
    /// I2C_Enable (bit 0).
    pub const I2C_ENABLE: usize = 14;
    /// Reserved.
    pub const RESERVED_15: usize = 15;
    /// I2C_Address (bits 7..1).
    pub const I2C_ADDRESS: usize = 16;
    /// Reserved, must be 0.
    pub const RESERVED_17: usize = 17;
    /// OTPmode.
    pub const OTP_MODE: usize = 18;
    /// ChipMode.
    pub const CHIP_MODE: usize = 19;
    /// SlotConfig[16], 2 bytes each, LE.
    pub const SLOT_CONFIG: usize = 20;
    /// Counter0 (8 bytes).
    pub const COUNTER0: usize = 52;
    /// Counter1 (8 bytes).
    pub const COUNTER1: usize = 60;
    /// LastKeyUse (16 bytes, slot-15 limited use).
    pub const LAST_KEY_USE: usize = 68;
    /// UserExtra (set by UpdateExtra).
    pub const USER_EXTRA: usize = 84;
    /// Selector (set by UpdateExtra).
    pub const SELECTOR: usize = 85;
    /// LockValue (data and OTP), set by Lock.
    pub const LOCK_VALUE: usize = 86;
    /// LockConfig, set by Lock.
    pub const LOCK_CONFIG: usize = 87;
    /// SlotLocked (2 bytes, one bit per slot, 0 = locked).
    pub const SLOT_LOCKED: usize = 88;
    /// RFU (2 bytes, must be 0).
    pub const RFU: usize = 90;
    /// X509format[4].
    pub const X509_FORMAT: usize = 92;
    /// KeyConfig[16], 2 bytes each, LE.
    pub const KEY_CONFIG: usize = 96;
}

/// Whether a Write may touch config bytes `start..start+len` while the config zone is
/// unlocked: bytes 0..16 and 84..88 are never writable by Write.
pub const fn config_range_writable(start: usize, len: usize) -> bool {
    let end = start + len;
    end <= CONFIG_SIZE
        && start >= offset::I2C_ADDRESS
        && (end <= offset::USER_EXTRA || start >= offset::SLOT_LOCKED)
}

/// Size in bytes of a data slot: 36 for slots 0–7, 416 for slot 8, 72 for slots 9–15.
pub const fn slot_size(slot: usize) -> usize {
    match slot {
        0..=7 => 36,
        8 => 416,
        _ => 72,
    }
}

/// Number of 32-byte blocks of a slot (the last one may be short).
pub const fn slot_blocks(slot: usize) -> usize {
    slot_size(slot).div_ceil(32)
}

/// Read/Write param2 addresses.
pub mod address {
    /// Config or OTP zone: 32-byte block and 4-byte word.
    pub const fn block_word(block: u8, word: u8) -> u16 {
        ((block as u16) << 3) | (word as u16 & 0x07)
    }

    /// Data zone: slot, 32-byte block and 4-byte word (e.g. slot 9, block 1, word 5 = 0x014D).
    pub const fn data(slot: u8, block: u8, word: u8) -> u16 {
        ((block as u16) << 8) | ((slot as u16 & 0x0F) << 3) | (word as u16 & 0x07)
    }

    /// Splits a data-zone address into (slot, block, word).
    pub const fn split_data(address: u16) -> (usize, usize, usize) {
        (
            ((address >> 3) & 0x0F) as usize,
            (address >> 8) as usize,
            (address & 0x07) as usize,
        )
    }

    /// Splits a config/OTP address into (block, word).
    pub const fn split_block_word(address: u16) -> (usize, usize) {
        (((address >> 3) & 0x1F) as usize, (address & 0x07) as usize)
    }
}

/// The 4-bit WriteConfig field of a SlotConfig.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteConfig(pub u8);

/// What the Write command may do to a slot once the data zone is locked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteMode {
    /// 0000: clear-text writes always allowed.
    Always,
    /// 0001: writes allowed only while the public key is invalid.
    PubInvalid,
    /// 001x, 10xx: Write never allowed.
    Never,
    /// x1xx: writes must be encrypted and MACed with the WriteKey.
    Encrypt,
}

impl WriteConfig {
    /// The Write behaviour.
    pub const fn write_mode(self) -> WriteMode {
        let bits = self.0 & 0x0F;
        if bits & 0b0100 != 0 {
            WriteMode::Encrypt
        } else if bits == 0 {
            WriteMode::Always
        } else if bits == 1 {
            WriteMode::PubInvalid
        } else {
            WriteMode::Never
        }
    }

    /// SlotConfig bit 13: GenKey may create a key after the data zone is locked.
    pub const fn gen_key_allowed(self) -> bool {
        self.0 & 0b0010 != 0
    }

    /// SlotConfig bit 14: PrivWrite (encrypted) allowed after the data zone is locked.
    pub const fn priv_write_allowed(self) -> bool {
        self.0 & 0b0100 != 0
    }
}

/// A slot's 16-bit SlotConfig.
///
/// ```
/// use atecc::config::SlotConfig;
/// let sc = SlotConfig::from_le_bytes([0x8F, 0x20]); // cryptoauthlib's slot-0 template
/// assert!(sc.is_secret());
/// assert_eq!(sc.read_key(), 0x0F);
/// assert!(sc.write_config().gen_key_allowed());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SlotConfig(pub u16);

/// ReadKey bit 0 on a private-key slot: external messages may be signed.
pub const READ_KEY_EXTERNAL_SIGN: u8 = 0x1;
/// ReadKey bit 1 on a private-key slot: internal messages may be signed.
pub const READ_KEY_INTERNAL_SIGN: u8 = 0x2;
/// ReadKey bit 2 on a private-key slot: ECDH allowed.
pub const READ_KEY_ECDH: u8 = 0x4;
/// ReadKey bit 3 on a private-key slot: the ECDH result goes to slot N+1.
pub const READ_KEY_ECDH_TO_NEXT_SLOT: u8 = 0x8;

macro_rules! bit_accessors {
    ($(#[$doc:meta] $get:ident / $set:ident = $bit:expr;)*) => {$(
        #[$doc]
        pub const fn $get(self) -> bool { self.0 & (1 << $bit) != 0 }
        /// Returns a copy with this bit set or cleared.
        pub const fn $set(self, on: bool) -> Self {
            if on { Self(self.0 | (1 << $bit)) } else { Self(self.0 & !(1 << $bit)) }
        }
    )*};
}

macro_rules! field_accessors {
    ($(#[$doc:meta] $get:ident / $set:ident = $shift:expr, $mask:expr;)*) => {$(
        #[$doc]
        pub const fn $get(self) -> u8 { ((self.0 >> $shift) & $mask) as u8 }
        /// Returns a copy with this field replaced (extra high bits are dropped).
        pub const fn $set(self, value: u8) -> Self {
            Self((self.0 & !($mask << $shift)) | (((value as u16) & $mask) << $shift))
        }
    )*};
}

impl SlotConfig {
    /// From the two config bytes (little-endian).
    pub const fn from_le_bytes(bytes: [u8; 2]) -> Self {
        Self(u16::from_le_bytes(bytes))
    }

    /// The two config bytes.
    pub const fn to_le_bytes(self) -> [u8; 2] {
        self.0.to_le_bytes()
    }

    field_accessors! {
        /// Bits 3..0: ReadKey (on private-key slots: see the `READ_KEY_*` flags).
        read_key / with_read_key = 0, 0x0F;
        /// Bits 11..8: WriteKey, the slot whose key authorises encrypted writes.
        write_key / with_write_key = 8, 0x0F;
    }

    bit_accessors! {
        /// Bit 4: NoMac, the key cannot be used by MAC.
        no_mac / with_no_mac = 4;
        /// Bit 5: LimitedUse.
        limited_use / with_limited_use = 5;
        /// Bit 6: EncryptRead, reads must be encrypted.
        encrypt_read / with_encrypt_read = 6;
        /// Bit 7: IsSecret, the slot's contents never leave the chip in clear.
        is_secret / with_is_secret = 7;
    }

    /// Bits 15..12: WriteConfig.
    pub const fn write_config(self) -> WriteConfig {
        WriteConfig((self.0 >> 12) as u8 & 0x0F)
    }

    /// Returns a copy with WriteConfig replaced.
    pub const fn with_write_config(self, wc: u8) -> Self {
        Self((self.0 & 0x0FFF) | (((wc & 0x0F) as u16) << 12))
    }
}

/// KeyType of a KeyConfig (bits 4..2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// 100: a P-256 key.
    P256,
    /// 111: not an ECC key (AES key, data, SHA key).
    NotEcc,
    /// Any other (reserved) value.
    Reserved(u8),
}

impl KeyType {
    /// The 3-bit field value.
    pub const fn bits(self) -> u8 {
        match self {
            KeyType::P256 => 0b100,
            KeyType::NotEcc => 0b111,
            KeyType::Reserved(b) => b & 0b111,
        }
    }

    /// From the 3-bit field value.
    pub const fn from_bits(bits: u8) -> Self {
        match bits & 0b111 {
            0b100 => KeyType::P256,
            0b111 => KeyType::NotEcc,
            other => KeyType::Reserved(other),
        }
    }
}

/// A slot's 16-bit KeyConfig.
///
/// ```
/// use atecc::config::{KeyConfig, KeyType};
/// let kc = KeyConfig::from_le_bytes([0x33, 0x00]);
/// assert!(kc.private() && kc.pub_info() && kc.lockable());
/// assert_eq!(kc.key_type(), KeyType::P256);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct KeyConfig(pub u16);

impl KeyConfig {
    /// From the two config bytes (little-endian).
    pub const fn from_le_bytes(bytes: [u8; 2]) -> Self {
        Self(u16::from_le_bytes(bytes))
    }

    /// The two config bytes.
    pub const fn to_le_bytes(self) -> [u8; 2] {
        self.0.to_le_bytes()
    }

    bit_accessors! {
        /// Bit 0: Private, the slot holds an ECC private key.
        private / with_private = 0;
        /// Bit 1: PubInfo, the public key may be computed (GenKey) / is validated.
        pub_info / with_pub_info = 1;
        /// Bit 5: Lockable, Lock(slot) may lock this slot.
        lockable / with_lockable = 5;
        /// Bit 6: ReqRandom, a random nonce is required.
        req_random / with_req_random = 6;
        /// Bit 7: ReqAuth, an authorising key (AuthKey) is required.
        req_auth / with_req_auth = 7;
        /// Bit 12: IntrusionDisable.
        intrusion_disable / with_intrusion_disable = 12;
        /// Bit 13: RFU.
        rfu / with_rfu = 13;
    }

    field_accessors! {
        /// Bits 11..8: AuthKey.
        auth_key / with_auth_key = 8, 0x0F;
        /// Bits 15..14: X509id.
        x509_id / with_x509_id = 14, 0x03;
    }

    /// Bits 4..2: KeyType.
    pub const fn key_type(self) -> KeyType {
        KeyType::from_bits((self.0 >> 2) as u8)
    }

    /// Returns a copy with KeyType replaced.
    pub const fn with_key_type(self, kt: KeyType) -> Self {
        Self((self.0 & !(0b111 << 2)) | ((kt.bits() as u16) << 2))
    }

    /// An ECC private key slot (Private = 1, KeyType = P256).
    pub const fn is_ecc_private(self) -> bool {
        self.private() && matches!(self.key_type(), KeyType::P256)
    }
}

/// The OTP zone modes (config byte 18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OtpMode {
    /// 0xAA: read only after data lock.
    ReadOnly,
    /// 0x55: bits may only go from 1 to 0 after data lock.
    Consumption,
    /// 0x00: legacy mode.
    Legacy,
    /// Any other value.
    Other(u8),
}

impl OtpMode {
    /// The config byte.
    pub const fn byte(self) -> u8 {
        match self {
            OtpMode::ReadOnly => 0xAA,
            OtpMode::Consumption => 0x55,
            OtpMode::Legacy => 0x00,
            OtpMode::Other(b) => b,
        }
    }

    /// From the config byte.
    pub const fn from_byte(b: u8) -> Self {
        match b {
            0xAA => OtpMode::ReadOnly,
            0x55 => OtpMode::Consumption,
            0x00 => OtpMode::Legacy,
            other => OtpMode::Other(other),
        }
    }
}

/// ChipMode (config byte 19) of the ATECC508A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChipMode(pub u8);

impl ChipMode {
    bit_accessors! {
        /// Bit 0: SelectorMode, UpdateExtra(Selector) only while Selector is 0.
        selector_mode / with_selector_mode = 0;
        /// Bit 1: TTLenable, input levels follow Vcc.
        ttl_enable / with_ttl_enable = 1;
        /// Bit 2: the watchdog runs 10 s instead of 1.3 s.
        watchdog_10s / with_watchdog_10s = 2;
    }
}

/// One step of writing a config zone with Write (param2 address, offset and length in the
/// zone): the sequence cryptoauthlib's `calib_write_config_zone` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigWrite {
    /// Write param2.
    pub address: u16,
    /// First config byte written.
    pub offset: usize,
    /// 4 or 32.
    pub len: usize,
}

/// A whole config zone.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConfigZone(pub [u8; CONFIG_SIZE]);

impl core::fmt::Debug for ConfigZone {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ConfigZone(")?;
        for b in self.0 {
            write!(f, "{b:02X}")?;
        }
        f.write_str(")")
    }
}

impl ConfigZone {
    /// The zone as read from a chip.
    pub const fn from_bytes(bytes: [u8; CONFIG_SIZE]) -> Self {
        Self(bytes)
    }

    /// A config zone from a slice of exactly 128 bytes.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; CONFIG_SIZE] {
        &self.0
    }

    /// A factory-fresh ATECC508A with the given serial number: both zones unlocked, I2C
    /// address C0, cryptoauthlib's pkcs11 slot template for slot 0 (`8F 20` / `33 00`) and
    /// P-256 private keys with GenKey allowed in slots 0–7, data slots elsewhere.
    pub fn factory_default(sn: [u8; 9]) -> Self {
        let mut z = [0u8; CONFIG_SIZE];
        z[offset::SN_0_3..offset::SN_0_3 + 4].copy_from_slice(&sn[..4]);
        z[offset::REVISION..offset::REVISION + 4].copy_from_slice(&REVISION_508A);
        z[offset::SN_4_8..offset::SN_4_8 + 5].copy_from_slice(&sn[4..]);
        z[offset::I2C_ENABLE] = 0x01;
        z[offset::I2C_ADDRESS] = DEFAULT_I2C_ADDRESS;
        z[offset::OTP_MODE] = OtpMode::ReadOnly.byte();
        z[offset::LAST_KEY_USE..offset::LAST_KEY_USE + 16].fill(0xFF);
        z[offset::LOCK_VALUE] = UNLOCKED;
        z[offset::LOCK_CONFIG] = UNLOCKED;
        z[offset::SLOT_LOCKED] = 0xFF;
        z[offset::SLOT_LOCKED + 1] = 0xFF;
        let mut zone = Self(z);
        for slot in 0..SLOT_COUNT {
            let (sc, kc) = if slot < 8 {
                (SlotConfig(0x208F), KeyConfig(0x0033))
            } else {
                (SlotConfig(0x0000), KeyConfig(0x003C))
            };
            zone.set_slot_config(slot, sc);
            zone.set_key_config(slot, kc);
        }
        zone
    }

    fn byte(&self, at: usize) -> u8 {
        self.0[at]
    }

    /// The 9-byte serial number SN[0..9] (bytes 0–3 and 8–12).
    pub fn serial_number(&self) -> [u8; 9] {
        let mut sn = [0u8; 9];
        sn[..4].copy_from_slice(&self.0[offset::SN_0_3..offset::SN_0_3 + 4]);
        sn[4..].copy_from_slice(&self.0[offset::SN_4_8..offset::SN_4_8 + 5]);
        sn
    }

    /// RevNum (bytes 4–7).
    pub fn revision(&self) -> [u8; 4] {
        let mut r = [0u8; 4];
        r.copy_from_slice(&self.0[offset::REVISION..offset::REVISION + 4]);
        r
    }

    /// I2C_Enable bit 0.
    pub fn i2c_enabled(&self) -> bool {
        self.byte(offset::I2C_ENABLE) & 1 != 0
    }

    /// The 8-bit I2C address (byte 16, bit 0 cleared).
    pub fn i2c_address(&self) -> u8 {
        self.byte(offset::I2C_ADDRESS) & 0xFE
    }

    /// Sets the I2C address byte.
    pub fn set_i2c_address(&mut self, address: u8) {
        self.0[offset::I2C_ADDRESS] = address;
    }

    /// OTPmode (byte 18).
    pub fn otp_mode(&self) -> OtpMode {
        OtpMode::from_byte(self.byte(offset::OTP_MODE))
    }

    /// Sets OTPmode.
    pub fn set_otp_mode(&mut self, mode: OtpMode) {
        self.0[offset::OTP_MODE] = mode.byte();
    }

    /// ChipMode (byte 19).
    pub fn chip_mode(&self) -> ChipMode {
        ChipMode(self.byte(offset::CHIP_MODE))
    }

    /// Sets ChipMode.
    pub fn set_chip_mode(&mut self, mode: ChipMode) {
        self.0[offset::CHIP_MODE] = mode.0;
    }

    /// SlotConfig of `slot` (0..=15; higher slots wrap).
    pub fn slot_config(&self, slot: usize) -> SlotConfig {
        let at = offset::SLOT_CONFIG + 2 * (slot % SLOT_COUNT);
        SlotConfig::from_le_bytes([self.0[at], self.0[at + 1]])
    }

    /// Sets SlotConfig of `slot`.
    pub fn set_slot_config(&mut self, slot: usize, sc: SlotConfig) {
        let at = offset::SLOT_CONFIG + 2 * (slot % SLOT_COUNT);
        self.0[at..at + 2].copy_from_slice(&sc.to_le_bytes());
    }

    /// KeyConfig of `slot` (0..=15; higher slots wrap).
    pub fn key_config(&self, slot: usize) -> KeyConfig {
        let at = offset::KEY_CONFIG + 2 * (slot % SLOT_COUNT);
        KeyConfig::from_le_bytes([self.0[at], self.0[at + 1]])
    }

    /// Sets KeyConfig of `slot`.
    pub fn set_key_config(&mut self, slot: usize, kc: KeyConfig) {
        let at = offset::KEY_CONFIG + 2 * (slot % SLOT_COUNT);
        self.0[at..at + 2].copy_from_slice(&kc.to_le_bytes());
    }

    /// Counter0 or Counter1 raw bytes (8 each).
    pub fn counter_bytes(&self, counter: usize) -> [u8; 8] {
        let at = if counter == 0 {
            offset::COUNTER0
        } else {
            offset::COUNTER1
        };
        let mut c = [0u8; 8];
        c.copy_from_slice(&self.0[at..at + 8]);
        c
    }

    /// LastKeyUse (16 bytes).
    pub fn last_key_use(&self) -> [u8; 16] {
        let mut c = [0u8; 16];
        c.copy_from_slice(&self.0[offset::LAST_KEY_USE..offset::LAST_KEY_USE + 16]);
        c
    }

    /// Sets LastKeyUse.
    pub fn set_last_key_use(&mut self, v: [u8; 16]) {
        self.0[offset::LAST_KEY_USE..offset::LAST_KEY_USE + 16].copy_from_slice(&v);
    }

    /// UserExtra (byte 84).
    pub fn user_extra(&self) -> u8 {
        self.byte(offset::USER_EXTRA)
    }

    /// Sets UserExtra (the chip does this only through UpdateExtra).
    pub fn set_user_extra(&mut self, v: u8) {
        self.0[offset::USER_EXTRA] = v;
    }

    /// Selector (byte 85).
    pub fn selector(&self) -> u8 {
        self.byte(offset::SELECTOR)
    }

    /// Sets Selector (the chip does this only through UpdateExtra).
    pub fn set_selector(&mut self, v: u8) {
        self.0[offset::SELECTOR] = v;
    }

    /// LockValue (byte 86): 0x55 while data and OTP are unlocked.
    pub fn lock_value(&self) -> u8 {
        self.byte(offset::LOCK_VALUE)
    }

    /// LockConfig (byte 87): 0x55 while the config zone is unlocked.
    pub fn lock_config(&self) -> u8 {
        self.byte(offset::LOCK_CONFIG)
    }

    /// Whether the config zone is locked.
    pub fn is_config_locked(&self) -> bool {
        self.lock_config() != UNLOCKED
    }

    /// Whether the data and OTP zones are locked.
    pub fn is_data_locked(&self) -> bool {
        self.lock_value() != UNLOCKED
    }

    /// Locks the config zone (the chip does this only through Lock).
    pub fn set_config_locked(&mut self) {
        self.0[offset::LOCK_CONFIG] = LOCKED;
    }

    /// Locks the data zone (the chip does this only through Lock).
    pub fn set_data_locked(&mut self) {
        self.0[offset::LOCK_VALUE] = LOCKED;
    }

    /// SlotLocked as a 16-bit mask (bit N = 1: slot N unlocked).
    pub fn slot_locked_bits(&self) -> u16 {
        u16::from_le_bytes([self.0[offset::SLOT_LOCKED], self.0[offset::SLOT_LOCKED + 1]])
    }

    /// Sets the SlotLocked mask.
    pub fn set_slot_locked_bits(&mut self, bits: u16) {
        self.0[offset::SLOT_LOCKED..offset::SLOT_LOCKED + 2].copy_from_slice(&bits.to_le_bytes());
    }

    /// Whether `slot` is individually locked (its SlotLocked bit is 0).
    pub fn is_slot_locked(&self, slot: usize) -> bool {
        self.slot_locked_bits() & (1 << (slot % SLOT_COUNT)) == 0
    }

    /// Takes over from `chip` the slot locks it may have gained since its config zone was
    /// locked: on a data-locked chip, a slot this zone marks Lockable and `chip` holds locked
    /// (only Lock(slot) clears a SlotLocked bit after config lock, and only on a Lockable
    /// slot). Comparing a profile's zone with a chip's after this tells "the same
    /// configuration, later in its life" from "another configuration".
    pub fn accept_slot_locks(&mut self, chip: &ConfigZone) {
        if !chip.is_data_locked() {
            return;
        }
        let mut bits = self.slot_locked_bits();
        for n in 0..SLOT_COUNT {
            if self.key_config(n).lockable() && chip.is_slot_locked(n) {
                bits &= !(1 << n);
            }
        }
        self.set_slot_locked_bits(bits);
    }

    /// X509format[4].
    pub fn x509_format(&self) -> [u8; 4] {
        let mut f = [0u8; 4];
        f.copy_from_slice(&self.0[offset::X509_FORMAT..offset::X509_FORMAT + 4]);
        f
    }

    /// Sets X509format.
    pub fn set_x509_format(&mut self, f: [u8; 4]) {
        self.0[offset::X509_FORMAT..offset::X509_FORMAT + 4].copy_from_slice(&f);
    }

    /// A 32-byte config block (0..=3).
    pub fn block(&self, block: usize) -> Option<[u8; 32]> {
        let at = block.checked_mul(32)?;
        let src = self.0.get(at..at + 32)?;
        let mut out = [0u8; 32];
        out.copy_from_slice(src);
        Some(out)
    }

    /// The Write sequence that puts this zone's writable bytes into an unlocked chip
    /// (4-byte writes for 16–31, block 1, block 2 word by word skipping bytes 84–87, block 3).
    pub fn write_plan() -> [ConfigWrite; 13] {
        let w = |offset: usize, len: usize| ConfigWrite {
            address: address::block_word((offset / 32) as u8, ((offset % 32) / 4) as u8),
            offset,
            len,
        };
        [
            w(16, 4),
            w(20, 4),
            w(24, 4),
            w(28, 4),
            w(32, 32),
            w(64, 4),
            w(68, 4),
            w(72, 4),
            w(76, 4),
            w(80, 4),
            w(88, 4),
            w(92, 4),
            w(96, 32),
        ]
    }

    /// Compares the fields of two zones and calls `f(name, index, old, new)` for each field
    /// that differs (index is the slot for per-slot fields); values are widened to `u32`.
    /// Use it to show a config-zone diff by field name.
    pub fn diff(
        &self,
        other: &ConfigZone,
        mut f: impl FnMut(&'static str, Option<usize>, u32, u32),
    ) {
        let mut cmp = |name, idx, a: u32, b: u32| {
            if a != b {
                f(name, idx, a, b);
            }
        };
        cmp(
            "I2C_Address",
            None,
            self.byte(16) as u32,
            other.byte(16) as u32,
        );
        cmp("OTPmode", None, self.byte(18) as u32, other.byte(18) as u32);
        cmp(
            "ChipMode",
            None,
            self.byte(19) as u32,
            other.byte(19) as u32,
        );
        for s in 0..SLOT_COUNT {
            cmp(
                "SlotConfig",
                Some(s),
                self.slot_config(s).0 as u32,
                other.slot_config(s).0 as u32,
            );
            cmp(
                "KeyConfig",
                Some(s),
                self.key_config(s).0 as u32,
                other.key_config(s).0 as u32,
            );
        }
        cmp(
            "UserExtra",
            None,
            self.user_extra() as u32,
            other.user_extra() as u32,
        );
        cmp(
            "Selector",
            None,
            self.selector() as u32,
            other.selector() as u32,
        );
        cmp(
            "LockValue",
            None,
            self.lock_value() as u32,
            other.lock_value() as u32,
        );
        cmp(
            "LockConfig",
            None,
            self.lock_config() as u32,
            other.lock_config() as u32,
        );
        cmp(
            "SlotLocked",
            None,
            self.slot_locked_bits() as u32,
            other.slot_locked_bits() as u32,
        );
        cmp(
            "X509format",
            None,
            u32::from_be_bytes(self.x509_format()),
            u32::from_be_bytes(other.x509_format()),
        );
        for (i, (a, b)) in self.0[offset::COUNTER0..offset::USER_EXTRA]
            .iter()
            .zip(&other.0[offset::COUNTER0..offset::USER_EXTRA])
            .enumerate()
        {
            cmp(
                "Counter/LastKeyUse byte",
                Some(offset::COUNTER0 + i),
                *a as u32,
                *b as u32,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_config_fields_round_trip() {
        let sc = SlotConfig(0)
            .with_read_key(0xF)
            .with_is_secret(true)
            .with_write_key(4)
            .with_write_config(0b0110);
        assert_eq!(sc.read_key(), 0xF);
        assert!(sc.is_secret() && !sc.no_mac() && !sc.encrypt_read() && !sc.limited_use());
        assert_eq!(sc.write_key(), 4);
        assert_eq!(sc.write_config().write_mode(), WriteMode::Encrypt);
        assert!(sc.write_config().gen_key_allowed() && sc.write_config().priv_write_allowed());
        assert_eq!(sc.0, 0x648F);
    }

    #[test]
    fn write_config_modes() {
        assert_eq!(WriteConfig(0b0000).write_mode(), WriteMode::Always);
        assert_eq!(WriteConfig(0b0001).write_mode(), WriteMode::PubInvalid);
        assert_eq!(WriteConfig(0b0010).write_mode(), WriteMode::Never);
        assert_eq!(WriteConfig(0b1000).write_mode(), WriteMode::Never);
        assert_eq!(WriteConfig(0b0100).write_mode(), WriteMode::Encrypt);
        assert_eq!(WriteConfig(0b1100).write_mode(), WriteMode::Encrypt);
    }

    #[test]
    fn key_config_fields_round_trip() {
        let kc = KeyConfig(0)
            .with_private(true)
            .with_pub_info(true)
            .with_key_type(KeyType::P256)
            .with_lockable(true)
            .with_auth_key(9)
            .with_x509_id(2);
        assert_eq!(kc.0 & 0xFF, 0x33);
        assert_eq!(kc.auth_key(), 9);
        assert_eq!(kc.x509_id(), 2);
        assert!(kc.is_ecc_private());
        assert_eq!(
            kc.with_key_type(KeyType::NotEcc).key_type(),
            KeyType::NotEcc
        );
    }

    #[test]
    fn factory_zone_layout() {
        let sn = [0x01, 0x23, 1, 2, 3, 4, 5, 6, 0xEE];
        let z = ConfigZone::factory_default(sn);
        assert_eq!(z.serial_number(), sn);
        assert_eq!(z.revision(), REVISION_508A);
        assert_eq!(z.i2c_address(), 0xC0);
        assert!(!z.is_config_locked() && !z.is_data_locked());
        assert!(!z.is_slot_locked(3));
        assert_eq!(&z.0[0..4], &[0x01, 0x23, 1, 2]);
        assert_eq!(&z.0[8..13], &[3, 4, 5, 6, 0xEE]);
        assert_eq!(&z.0[20..22], &[0x8F, 0x20]);
        assert_eq!(&z.0[96..98], &[0x33, 0x00]);
    }

    #[test]
    fn writable_ranges() {
        assert!(!config_range_writable(0, 4));
        assert!(!config_range_writable(12, 4));
        assert!(config_range_writable(16, 4));
        assert!(config_range_writable(32, 32));
        assert!(!config_range_writable(64, 32));
        assert!(!config_range_writable(84, 4));
        assert!(config_range_writable(88, 4));
        assert!(config_range_writable(96, 32));
        for step in ConfigZone::write_plan() {
            assert!(config_range_writable(step.offset, step.len), "{step:?}");
        }
    }

    #[test]
    fn addresses() {
        assert_eq!(address::data(9, 1, 5), 0x014D);
        assert_eq!(address::split_data(0x014D), (9, 1, 5));
        assert_eq!(address::block_word(2, 5), 0x15);
        assert_eq!(slot_size(8), 416);
        assert_eq!(slot_blocks(8), 13);
        assert_eq!(slot_blocks(9), 3);
        assert_eq!(slot_blocks(0), 2);
    }

    #[test]
    fn slot_locks_are_accepted_only_on_lockable_slots_of_a_data_locked_chip() {
        let mut wanted = ConfigZone::factory_default([0; 9]);
        wanted.set_key_config(2, wanted.key_config(2).with_lockable(true));
        wanted.set_key_config(3, wanted.key_config(3).with_lockable(false));
        let mut chip = wanted;
        chip.set_slot_locked_bits(!((1 << 2) | (1 << 3)));
        let mut same = wanted;
        same.accept_slot_locks(&chip);
        assert_eq!(
            same, wanted,
            "data zone unlocked: no slot lock is legitimate"
        );
        chip.set_data_locked();
        let mut later = wanted;
        later.accept_slot_locks(&chip);
        assert!(later.is_slot_locked(2), "slot 2 is Lockable");
        assert!(
            !later.is_slot_locked(3),
            "slot 3 is not: its lock stays a difference"
        );
        assert_eq!(later.slot_locked_bits(), !(1u16 << 2));
    }

    #[test]
    fn diff_names_fields() {
        let a = ConfigZone::factory_default([0; 9]);
        let mut b = a;
        b.set_slot_config(3, SlotConfig(0x1234));
        b.set_config_locked();
        let mut seen = [("", None, 0, 0); 4];
        let mut n = 0;
        a.diff(&b, |name, idx, old, new| {
            seen[n] = (name, idx, old, new);
            n += 1;
        });
        assert_eq!(n, 2);
        assert_eq!(seen[0], ("SlotConfig", Some(3), 0x208F, 0x1234));
        assert_eq!(seen[1], ("LockConfig", None, 0x55, 0));
    }
}
