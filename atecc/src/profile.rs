//! Configuration profiles: a whole config zone as TOML, every field by name, one table per
//! slot (like the slot tables of the data sheet).
//!
//! ```toml
//! name = "tls-device"
//! i2c_address = 0xC0
//! otp_mode = "read-only"          # read-only | consumption | legacy
//! x509_format = [0, 0, 0, 0]
//!
//! [chip_mode]
//! watchdog_10s = false
//!
//! [slot.0]
//! description = "device private key"
//! key_type = "p256"               # p256 | not-ecc
//! private = true
//! pub_info = true
//! is_secret = true
//! read_key = 0b0011               # external and internal sign
//! write_config = 0b0110           # GenKey and encrypted PrivWrite
//! write_key = 4
//! ```
//!
//! Slots not listed are configured as unused data slots (`not-ecc`, everything 0). Unknown
//! fields are refused, so a typo cannot silently change a configuration that will be locked.

use crate::config::{ChipMode, ConfigZone, KeyConfig, KeyType, OtpMode, SLOT_COUNT, SlotConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::string::{String, ToString};

/// A whole configuration, the writable part of the config zone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// A name for people.
    #[serde(default)]
    pub name: String,
    /// 8-bit I2C address (byte 16).
    #[serde(default = "default_i2c")]
    pub i2c_address: u8,
    /// OTPmode (byte 18).
    #[serde(default)]
    pub otp_mode: OtpModeName,
    /// ChipMode (byte 19).
    #[serde(default)]
    pub chip_mode: ChipModeProfile,
    /// X509format (bytes 92–95).
    #[serde(default)]
    pub x509_format: [u8; 4],
    /// Slot tables keyed by slot number "0".."15".
    #[serde(default)]
    pub slot: BTreeMap<String, SlotProfile>,
}

fn default_i2c() -> u8 {
    crate::config::DEFAULT_I2C_ADDRESS
}

/// OTPmode by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OtpModeName {
    /// 0xAA.
    #[default]
    ReadOnly,
    /// 0x55.
    Consumption,
    /// 0x00.
    Legacy,
}

/// ChipMode bits by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChipModeProfile {
    /// Bit 0.
    pub selector_mode: bool,
    /// Bit 1.
    pub ttl_enable: bool,
    /// Bit 2.
    pub watchdog_10s: bool,
}

/// KeyType by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyTypeName {
    /// P-256 key.
    P256,
    /// Not an ECC key (data, SHA/AES key).
    #[default]
    NotEcc,
}

/// One slot's SlotConfig and KeyConfig by field name, plus its SlotLocked bit.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlotProfile {
    /// What the slot is for (not stored in the chip).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub description: String,
    // SlotConfig
    /// ReadKey (bits 3..0).
    pub read_key: u8,
    /// NoMac.
    pub no_mac: bool,
    /// LimitedUse.
    pub limited_use: bool,
    /// EncryptRead.
    pub encrypt_read: bool,
    /// IsSecret.
    pub is_secret: bool,
    /// WriteKey (bits 11..8).
    pub write_key: u8,
    /// WriteConfig (bits 15..12).
    pub write_config: u8,
    // KeyConfig
    /// KeyType.
    pub key_type: KeyTypeName,
    /// Private.
    pub private: bool,
    /// PubInfo.
    pub pub_info: bool,
    /// Lockable.
    pub lockable: bool,
    /// ReqRandom.
    pub req_random: bool,
    /// ReqAuth.
    pub req_auth: bool,
    /// AuthKey (bits 11..8).
    pub auth_key: u8,
    /// IntrusionDisable.
    pub intrusion_disable: bool,
    /// X509id (bits 15..14).
    pub x509_id: u8,
    /// Whether SlotLocked marks the slot locked (bit = 0) once the data zone is locked.
    pub locked: bool,
}

/// A profile that cannot be used, with the field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileError {
    /// The TOML does not parse or has unknown fields.
    Syntax(String),
    /// A `[slot.N]` key that is not 0..15.
    BadSlot(String),
    /// A field value out of range.
    OutOfRange {
        /// Slot number, if per-slot.
        slot: Option<usize>,
        /// Field name.
        field: &'static str,
        /// The value found.
        value: u32,
        /// The largest allowed value.
        max: u32,
    },
}

impl fmt::Display for ProfileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileError::Syntax(e) => write!(f, "profile syntax: {e}"),
            ProfileError::BadSlot(k) => write!(f, "[slot.{k}]: slots are numbered 0 to 15"),
            ProfileError::OutOfRange {
                slot,
                field,
                value,
                max,
            } => {
                if let Some(s) = slot {
                    write!(f, "slot {s}: ")?;
                }
                write!(f, "{field} = {value} is out of range (0..={max})")
            }
        }
    }
}

impl std::error::Error for ProfileError {}

impl SlotProfile {
    fn check(&self, slot: usize) -> Result<(), ProfileError> {
        for (field, value, max) in [
            ("read_key", self.read_key, 15),
            ("write_key", self.write_key, 15),
            ("write_config", self.write_config, 15),
            ("auth_key", self.auth_key, 15),
            ("x509_id", self.x509_id, 3),
        ] {
            if value > max {
                return Err(ProfileError::OutOfRange {
                    slot: Some(slot),
                    field,
                    value: value as u32,
                    max: max as u32,
                });
            }
        }
        Ok(())
    }

    /// The SlotConfig word.
    pub fn slot_config(&self) -> SlotConfig {
        SlotConfig(0)
            .with_read_key(self.read_key)
            .with_no_mac(self.no_mac)
            .with_limited_use(self.limited_use)
            .with_encrypt_read(self.encrypt_read)
            .with_is_secret(self.is_secret)
            .with_write_key(self.write_key)
            .with_write_config(self.write_config)
    }

    /// The KeyConfig word.
    pub fn key_config(&self) -> KeyConfig {
        let kt = match self.key_type {
            KeyTypeName::P256 => KeyType::P256,
            KeyTypeName::NotEcc => KeyType::NotEcc,
        };
        KeyConfig(0)
            .with_private(self.private)
            .with_pub_info(self.pub_info)
            .with_key_type(kt)
            .with_lockable(self.lockable)
            .with_req_random(self.req_random)
            .with_req_auth(self.req_auth)
            .with_auth_key(self.auth_key)
            .with_intrusion_disable(self.intrusion_disable)
            .with_x509_id(self.x509_id)
    }

    fn from_words(sc: SlotConfig, kc: KeyConfig, locked: bool) -> Self {
        SlotProfile {
            description: String::new(),
            read_key: sc.read_key(),
            no_mac: sc.no_mac(),
            limited_use: sc.limited_use(),
            encrypt_read: sc.encrypt_read(),
            is_secret: sc.is_secret(),
            write_key: sc.write_key(),
            write_config: sc.write_config().0,
            key_type: if kc.key_type() == KeyType::P256 {
                KeyTypeName::P256
            } else {
                KeyTypeName::NotEcc
            },
            private: kc.private(),
            pub_info: kc.pub_info(),
            lockable: kc.lockable(),
            req_random: kc.req_random(),
            req_auth: kc.req_auth(),
            auth_key: kc.auth_key(),
            intrusion_disable: kc.intrusion_disable(),
            x509_id: kc.x509_id(),
            locked,
        }
    }
}

impl Profile {
    /// Parses and checks a TOML profile.
    pub fn from_toml(text: &str) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Syntax(e.to_string()))?;
        p.check()?;
        Ok(p)
    }

    /// Renders the profile as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks slot keys and field ranges.
    pub fn check(&self) -> Result<(), ProfileError> {
        for (key, slot) in &self.slot {
            let n = parse_slot(key)?;
            slot.check(n)?;
        }
        Ok(())
    }

    /// The profile of slot `n` (an unused data slot if not listed).
    pub fn slot(&self, n: usize) -> SlotProfile {
        self.slot
            .iter()
            .find(|(k, _)| parse_slot(k).ok() == Some(n))
            .map(|(_, s)| s.clone())
            .unwrap_or_default()
    }

    /// Writes the profile's fields into `zone` (SN, revision, counters, UserExtra, Selector
    /// and lock bytes stay as they are).
    pub fn apply(&self, zone: &mut ConfigZone) -> Result<(), ProfileError> {
        self.check()?;
        zone.set_i2c_address(self.i2c_address);
        zone.set_otp_mode(match self.otp_mode {
            OtpModeName::ReadOnly => OtpMode::ReadOnly,
            OtpModeName::Consumption => OtpMode::Consumption,
            OtpModeName::Legacy => OtpMode::Legacy,
        });
        zone.set_chip_mode(
            ChipMode(0)
                .with_selector_mode(self.chip_mode.selector_mode)
                .with_ttl_enable(self.chip_mode.ttl_enable)
                .with_watchdog_10s(self.chip_mode.watchdog_10s),
        );
        zone.set_x509_format(self.x509_format);
        let mut unlocked: u16 = 0;
        for n in 0..SLOT_COUNT {
            let s = self.slot(n);
            zone.set_slot_config(n, s.slot_config());
            zone.set_key_config(n, s.key_config());
            if !s.locked {
                unlocked |= 1 << n;
            }
        }
        zone.set_slot_locked_bits(unlocked);
        Ok(())
    }

    /// The zone a chip with serial-number/revision block `base` will hold after this profile
    /// is written: `base` with the profile applied.
    pub fn to_config_zone(&self, base: &ConfigZone) -> Result<ConfigZone, ProfileError> {
        let mut z = *base;
        self.apply(&mut z)?;
        Ok(z)
    }

    /// The profile of a config zone read from a chip (every slot listed).
    pub fn from_config_zone(zone: &ConfigZone, name: &str) -> Profile {
        let cm = zone.chip_mode();
        let slot = (0..SLOT_COUNT)
            .map(|n| {
                let s = SlotProfile::from_words(
                    zone.slot_config(n),
                    zone.key_config(n),
                    zone.is_slot_locked(n),
                );
                (n.to_string(), s)
            })
            .collect();
        Profile {
            name: name.to_string(),
            i2c_address: zone.0[crate::config::offset::I2C_ADDRESS],
            otp_mode: match zone.otp_mode() {
                OtpMode::Consumption => OtpModeName::Consumption,
                OtpMode::Legacy => OtpModeName::Legacy,
                _ => OtpModeName::ReadOnly,
            },
            chip_mode: ChipModeProfile {
                selector_mode: cm.selector_mode(),
                ttl_enable: cm.ttl_enable(),
                watchdog_10s: cm.watchdog_10s(),
            },
            x509_format: zone.x509_format(),
            slot,
        }
    }
}

fn parse_slot(key: &str) -> Result<usize, ProfileError> {
    match key.parse::<usize>() {
        Ok(n) if n < SLOT_COUNT => Ok(n),
        _ => Err(ProfileError::BadSlot(key.to_string())),
    }
}

/// The built-in TLS device profile (`profiles/tls-device.toml`): slot 0 the device key,
/// generated in the chip or injected by encrypted PrivWrite (Lockable), slot 2 another key
/// injectable by encrypted PrivWrite, slot 4 the write key, slots 9–10 certificate storage.
pub const TLS_DEVICE_PROFILE: &str = include_str!("../profiles/tls-device.toml");

/// The built-in profile for an identity kept whole in the chip
/// (`profiles/tls-device-atcacert.toml`): `tls-device` with Trust&GO's certificate slots
/// (10 device certificate, 11 signer public key, 12 signer certificate, 13 device id),
/// writable in clear after the data lock and Lockable.
pub const TLS_DEVICE_ATCACERT_PROFILE: &str = include_str!("../profiles/tls-device-atcacert.toml");

/// Earlier revisions of the built-in profile, oldest first. A config zone is locked for ever,
/// so a chip locked with one of them must still be recognised as a `tls-device` chip (and
/// provisioned as its revision allows: revision 1 has no Lockable slot, so its key slot is
/// never slot-locked) instead of being refused as "locked with another configuration".
pub const TLS_DEVICE_EARLIER_REVISIONS: &[&str] = &[include_str!("../profiles/tls-device-r1.toml")];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_profile_parses_and_round_trips() {
        let p = Profile::from_toml(TLS_DEVICE_PROFILE).expect("built-in profile");
        let base = ConfigZone::factory_default([0x01, 0x23, 0, 0, 0, 0, 0, 0, 0xEE]);
        let zone = p.to_config_zone(&base).expect("applies");
        assert!(zone.key_config(0).is_ecc_private());
        let back = Profile::from_config_zone(&zone, &p.name);
        assert_eq!(back.to_config_zone(&base), Ok(zone));
        let again = Profile::from_toml(&back.to_toml()).expect("rendered TOML parses");
        assert_eq!(again.to_config_zone(&base), Ok(zone));
    }

    #[test]
    fn earlier_revisions_parse_and_differ_from_the_current_one() {
        let base = ConfigZone::factory_default([0x01, 0x23, 0, 0, 0, 0, 0, 0, 0xEE]);
        let now = Profile::from_toml(TLS_DEVICE_PROFILE).expect("built-in");
        for text in TLS_DEVICE_EARLIER_REVISIONS {
            let p = Profile::from_toml(text).expect("earlier revision");
            assert_eq!(p.name, now.name);
            assert_ne!(p.to_config_zone(&base), now.to_config_zone(&base));
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = Profile::from_toml("[slot.3]\nread_key = 16\n").expect_err("out of range");
        assert_eq!(
            e.to_string(),
            "slot 3: read_key = 16 is out of range (0..=15)"
        );
        let e = Profile::from_toml("[slot.16]\n").expect_err("bad slot");
        assert!(matches!(e, ProfileError::BadSlot(_)));
        let e = Profile::from_toml("[slot.1]\nis_secrte = true\n").expect_err("typo");
        assert!(e.to_string().contains("is_secrte"), "{e}");
    }
}
