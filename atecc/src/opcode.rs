//! Opcodes, command modes and execution times ([DS] Table 9-4).

/// A command opcode of the ATECC508A.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Compare a MAC response with one computed inside the chip.
    CheckMac = 0x28,
    /// Read or increment a monotonic counter.
    Counter = 0x24,
    /// Derive a key into a slot (not emulated).
    DeriveKey = 0x1C,
    /// ECDH key agreement with a stored private key.
    Ecdh = 0x43,
    /// Mix stored data into TempKey.
    GenDig = 0x15,
    /// Generate a private key, or compute its public key.
    GenKey = 0x40,
    /// HMAC over TempKey (not emulated).
    Hmac = 0x11,
    /// Revision, key validity and state.
    Info = 0x30,
    /// Lock a zone or a slot.
    Lock = 0x17,
    /// Compute a MAC with a stored key.
    Mac = 0x08,
    /// Load TempKey with a random or a host nonce.
    Nonce = 0x16,
    /// Pause (single-wire bus only, not emulated).
    Pause = 0x01,
    /// Write an ECC private key.
    PrivWrite = 0x46,
    /// Random number.
    Random = 0x1B,
    /// Read 4 or 32 bytes of a zone.
    Read = 0x02,
    /// SHA-256 / HMAC-SHA256 engine.
    Sha = 0x47,
    /// ECDSA signature.
    Sign = 0x41,
    /// Write UserExtra, Selector, or decrement a limited-use key.
    UpdateExtra = 0x20,
    /// ECDSA verification.
    Verify = 0x45,
    /// Write 4 or 32 bytes of a zone.
    Write = 0x12,
}

impl Opcode {
    /// Every opcode.
    pub const ALL: [Opcode; 20] = [
        Opcode::CheckMac,
        Opcode::Counter,
        Opcode::DeriveKey,
        Opcode::Ecdh,
        Opcode::GenDig,
        Opcode::GenKey,
        Opcode::Hmac,
        Opcode::Info,
        Opcode::Lock,
        Opcode::Mac,
        Opcode::Nonce,
        Opcode::Pause,
        Opcode::PrivWrite,
        Opcode::Random,
        Opcode::Read,
        Opcode::Sha,
        Opcode::Sign,
        Opcode::UpdateExtra,
        Opcode::Verify,
        Opcode::Write,
    ];

    /// The opcode for a byte, if it is one.
    pub fn from_u8(byte: u8) -> Option<Opcode> {
        Self::ALL.iter().copied().find(|op| *op as u8 == byte)
    }

    /// Typical execution time in microseconds ([DS] Table 9-4).
    pub const fn typical_us(self) -> u32 {
        match self {
            Opcode::CheckMac => 5_000,
            Opcode::Counter => 5_000,
            Opcode::DeriveKey => 2_000,
            Opcode::Ecdh => 38_000,
            Opcode::GenDig => 5_000,
            Opcode::GenKey => 11_000,
            Opcode::Hmac => 13_000,
            Opcode::Info => 100,
            Opcode::Lock => 8_000,
            Opcode::Mac => 5_000,
            Opcode::Nonce => 100,
            Opcode::Pause => 3_000,
            Opcode::PrivWrite => 800,
            Opcode::Random => 1_000,
            Opcode::Read => 100,
            Opcode::Sha => 7_000,
            Opcode::Sign => 42_000,
            Opcode::UpdateExtra => 8_000,
            Opcode::Verify => 38_000,
            Opcode::Write => 7_000,
        }
    }

    /// Maximum execution time in microseconds ([DS] Table 9-4): a host must wait this long
    /// before it can be sure a response is ready.
    pub const fn max_us(self) -> u32 {
        match self {
            Opcode::CheckMac => 13_000,
            Opcode::Counter => 20_000,
            Opcode::DeriveKey => 50_000,
            Opcode::Ecdh => 58_000,
            Opcode::GenDig => 11_000,
            Opcode::GenKey => 115_000,
            Opcode::Hmac => 23_000,
            Opcode::Info => 1_000,
            Opcode::Lock => 32_000,
            Opcode::Mac => 14_000,
            Opcode::Nonce => 7_000,
            Opcode::Pause => 3_000,
            Opcode::PrivWrite => 48_000,
            Opcode::Random => 23_000,
            Opcode::Read => 1_000,
            Opcode::Sha => 9_000,
            Opcode::Sign => 50_000,
            Opcode::UpdateExtra => 10_000,
            Opcode::Verify => 58_000,
            Opcode::Write => 26_000,
        }
    }
}

/// The three zones of Read, Write and Lock (param1 bits 1..0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Zone {
    /// The 128-byte configuration zone.
    Config = 0,
    /// The 64-byte one-time-programmable zone.
    Otp = 1,
    /// The data zone: 16 slots.
    Data = 2,
}

impl Zone {
    /// The zone in param1 bits 1..0, if legal.
    pub const fn from_bits(bits: u8) -> Option<Zone> {
        match bits & 0x03 {
            0 => Some(Zone::Config),
            1 => Some(Zone::Otp),
            2 => Some(Zone::Data),
            _ => None,
        }
    }
}

/// Read/Write param1 bit 7: 32-byte access (else 4 bytes).
pub const RW_32_BYTES: u8 = 0x80;
/// Write param1 bit 6: the data is encrypted with TempKey and followed by a MAC.
pub const WRITE_ENCRYPTED: u8 = 0x40;

/// The modes of the Nonce command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NonceMode {
    /// Random nonce, RNG seed updated; 20-byte NumIn.
    Random = 0x00,
    /// Random nonce, no seed update; 20-byte NumIn.
    RandomNoSeedUpdate = 0x01,
    /// TempKey = the 32-byte NumIn.
    PassThrough = 0x03,
}

/// The modes of the Lock command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockTarget {
    /// Lock the configuration zone.
    Config,
    /// Lock the data and OTP zones.
    Data,
    /// Lock one slot (needs KeyConfig.Lockable).
    Slot(u8),
}

/// Lock param1 bit 7: skip the CRC summary check.
pub const LOCK_NO_CRC: u8 = 0x80;

impl LockTarget {
    /// param1 for this target (without the no-CRC bit).
    pub const fn mode(self) -> u8 {
        match self {
            LockTarget::Config => 0x00,
            LockTarget::Data => 0x01,
            LockTarget::Slot(slot) => 0x02 | ((slot & 0x0F) << 2),
        }
    }
}

/// GenKey mode bit: create a random private key.
pub const GENKEY_CREATE: u8 = 0x04;
/// GenKey mode bit: also put a public-key digest in TempKey.
pub const GENKEY_DIGEST: u8 = 0x08;
/// GenKey mode bit: only compute the digest of a stored public key.
pub const GENKEY_PUBKEY_DIGEST: u8 = 0x10;

/// Sign mode: sign the message in TempKey (external).
pub const SIGN_EXTERNAL: u8 = 0x80;
/// Sign mode: sign an internally generated message.
pub const SIGN_INTERNAL: u8 = 0x00;
/// Sign mode bit: include the full serial number in an internal message.
pub const SIGN_INCLUDE_SN: u8 = 0x40;

/// The modes of the Verify command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum VerifyMode {
    /// Verify with a public key stored in a slot.
    Stored = 0,
    /// Validate a stored public key (not emulated).
    ValidateExternal = 1,
    /// Verify with a public key sent in the command.
    External = 2,
    /// Validate (not emulated).
    Validate = 3,
    /// Invalidate (not emulated).
    Invalidate = 7,
}

/// Verify param2 for external keys: the key type P-256.
pub const VERIFY_KEY_P256: u16 = 0x0004;

/// The modes of the Info command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum InfoMode {
    /// Silicon revision (`00 00 50 00` for an ATECC508A).
    Revision = 0,
    /// Whether the ECC key in slot param2 is valid.
    KeyValid = 1,
    /// Volatile state (TempKey flags).
    State = 2,
    /// GPIO state (single-wire only).
    Gpio = 3,
}

/// The modes of the SHA command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ShaMode {
    /// Start a SHA-256 computation.
    Start = 0,
    /// Add exactly 64 bytes.
    Update = 1,
    /// Add 0..=63 final bytes and return the digest.
    End = 2,
    /// Digest of a public key (not emulated).
    Public = 3,
    /// Start an HMAC-SHA256 with the key in slot param2.
    HmacStart = 4,
    /// Finish an HMAC with 0..=63 final bytes.
    HmacEnd = 5,
}

/// The modes of the UpdateExtra command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum UpdateExtraMode {
    /// Write config byte 84 (UserExtra), only while it is 0.
    UserExtra = 0,
    /// Write config byte 85 (Selector).
    Selector = 1,
    /// Decrement the limited-use counter of slot param2.
    DecrementLimitedUse = 2,
}

/// The zones of the GenDig command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GenDigZone {
    /// A 32-byte block of the config zone (KeyID = block 0..=3).
    Config = 0,
    /// A 32-byte block of the OTP zone (KeyID = block 0..=1).
    Otp = 1,
    /// A key slot (KeyID = slot).
    Data = 2,
}

/// PrivWrite mode: the key is encrypted and MACed with TempKey.
pub const PRIVWRITE_ENCRYPTED: u8 = 0x40;

/// MAC mode bit 0: the challenge comes from TempKey (no challenge in the command).
pub const MAC_CHALLENGE_FROM_TEMPKEY: u8 = 0x01;
/// MAC mode bit 1: the first block (key) comes from TempKey.
pub const MAC_KEY_FROM_TEMPKEY: u8 = 0x02;
/// MAC mode bit 2: TempKey.SourceFlag that the command expects.
pub const MAC_SOURCE_FLAG: u8 = 0x04;
/// MAC mode bit 6: include the full serial number.
pub const MAC_INCLUDE_SN: u8 = 0x40;
