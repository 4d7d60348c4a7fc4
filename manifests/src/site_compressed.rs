//! `[profiles.NAME.compressed]`: a device profile whose identity lives in the chip as
//! Microchip compressed certificates (cryptoauthlib's atcacert). Its certificates may vary
//! only in what the 72-byte compressed form and the chip carry, so the site refuses, when it
//! is loaded, any setting that would make a certificate of the profile uncompressible.
//!
//! ```toml
//! [profiles.coffre]
//! chip = "tls-device-atcacert"
//! cert_days = 730            # whole years only (365, 730, ...), at most 31
//! readings = [{ topic = "{root}/{room}/temperature", quantity = "temperature" }]
//! [profiles.coffre.compressed]
//! id_length = 8              # every device id of the profile has exactly 8 characters
//! template_id = 2            # the signer's template is template_id + 1
//! chain_id = 0
//! device_cert_slot = 10      # Trust&GO's layout: device certificate, signer public key,
//! signer_key_slot = 11       #   signer certificate (72 bytes each), and the device id
//! signer_cert_slot = 12
//! device_id_slot = 13
//! ```

use serde::{Deserialize, Serialize};

/// The settings of a compressible profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressedProfile {
    /// Length of every device id (the subject CN): the subject must have a fixed length.
    /// Absent: refused, the compressed form cannot carry a variable-length subject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_length: Option<usize>,
    /// Template id of the device certificate (0..15).
    #[serde(default = "default_template_id")]
    pub template_id: u8,
    /// Chain id (0..15).
    #[serde(default)]
    pub chain_id: u8,
    /// Slot of the compressed device certificate.
    #[serde(default = "default_device_cert_slot")]
    pub device_cert_slot: u8,
    /// Slot of the signer's public key.
    #[serde(default = "default_signer_key_slot")]
    pub signer_key_slot: u8,
    /// Slot of the compressed signer certificate.
    #[serde(default = "default_signer_cert_slot")]
    pub signer_cert_slot: u8,
    /// Slot holding the device id.
    #[serde(default = "default_device_id_slot")]
    pub device_id_slot: u8,
}

impl CompressedProfile {
    /// The default layout (what a site gets when it names only `id_length`): template 2,
    /// chain 0, device certificate in slot 10, signer key 11, signer certificate 12, device
    /// id 13, as Trust&GO lays them out.
    #[must_use]
    pub fn with_id_length(id_length: Option<usize>) -> CompressedProfile {
        CompressedProfile {
            id_length,
            template_id: default_template_id(),
            chain_id: 0,
            device_cert_slot: default_device_cert_slot(),
            signer_key_slot: default_signer_key_slot(),
            signer_cert_slot: default_signer_cert_slot(),
            device_id_slot: default_device_id_slot(),
        }
    }
}

fn default_template_id() -> u8 {
    2
}
fn default_device_cert_slot() -> u8 {
    10
}
fn default_signer_key_slot() -> u8 {
    11
}
fn default_signer_cert_slot() -> u8 {
    12
}
fn default_device_id_slot() -> u8 {
    13
}

/// Bytes in ATECC508A slot `n`.
pub fn slot_size(n: u8) -> usize {
    match n {
        0..=7 => 36,
        8 => 416,
        _ => 72,
    }
}

/// Days in a whole-year lifetime of the compressed format: 365 per year, 1..31 years.
pub fn whole_years(days: u32) -> Option<u8> {
    if !days.is_multiple_of(365) {
        return None;
    }
    u8::try_from(days / 365)
        .ok()
        .filter(|y| (1..=31).contains(y))
}

impl CompressedProfile {
    /// Checks the settings of a profile with `days` of lifetime and its key and write-key
    /// slots; the error is (field, what is expected). `cert_days` names the lifetime field.
    pub fn check(
        &self,
        days: u32,
        key_slot: u8,
        write_key_slot: u8,
    ) -> Result<(), (&'static str, String)> {
        if whole_years(days).is_none() {
            return Err((
                "cert_days",
                format!(
                    "a lifetime of whole years (365, 730, ... up to 31 years) for a compressed profile: the compressed certificate carries its lifetime in years (got {days} days)"
                ),
            ));
        }
        let Some(len) = self.id_length else {
            return Err((
                "compressed",
                "`id_length`, the fixed length of every device id: a compressed certificate cannot carry a variable-length subject".into(),
            ));
        };
        let id_slot = self.device_id_slot;
        if !(8..=15).contains(&id_slot) {
            return Err((
                "compressed",
                format!("device_id_slot a data slot 8..15 (got {id_slot})"),
            ));
        }
        if !(4..=slot_size(id_slot).min(64)).contains(&len) {
            return Err((
                "compressed",
                format!(
                    "id_length 4..{} (the device id lives in slot {id_slot}; got {len})",
                    slot_size(id_slot).min(64)
                ),
            ));
        }
        if self.template_id > 14 || self.chain_id > 15 {
            return Err((
                "compressed",
                "template_id 0..14 (the signer's is the next one) and chain_id 0..15".into(),
            ));
        }
        let slots = [
            ("device_cert_slot", self.device_cert_slot),
            ("signer_key_slot", self.signer_key_slot),
            ("signer_cert_slot", self.signer_cert_slot),
            ("device_id_slot", id_slot),
        ];
        for (i, (name, s)) in slots.iter().enumerate() {
            if i < 3 && !(9..=15).contains(s) {
                return Err((
                    "compressed",
                    format!("{name} a 72-byte slot 9..15 (got {s})"),
                ));
            }
            if *s == key_slot || *s == write_key_slot || slots[..i].iter().any(|(_, t)| t == s) {
                return Err((
                    "compressed",
                    format!(
                        "{name} a slot of its own, not the key slot, the write key slot or another certificate slot (got {s})"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The signer id of `[site] signer_id` (4 upper-case hex digits; default `0001`).
pub fn parse_signer_id(s: Option<&str>) -> Option<[u8; 2]> {
    let s = s.unwrap_or("0001");
    if s.len() != 4
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'A'..=b'F').contains(&c))
    {
        return None;
    }
    u16::from_str_radix(s, 16).ok().map(u16::to_be_bytes)
}

/// True if a profile of `site` is compressible.
pub fn any(site: &crate::site::Site) -> bool {
    site.profiles.values().any(|p| p.compressed.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id_length: Option<usize>) -> CompressedProfile {
        CompressedProfile::with_id_length(id_length)
    }

    #[test]
    fn only_whole_years_a_fixed_subject_and_distinct_slots_are_compressible() {
        assert_eq!(profile(Some(8)).check(730, 0, 4), Ok(()));
        let (field, e) = profile(Some(8)).check(400, 0, 4).expect_err("400 days");
        assert_eq!(field, "cert_days");
        assert!(e.contains("whole years") && e.contains("400"), "{e}");
        let (_, e) = profile(None)
            .check(365, 0, 4)
            .expect_err("variable subject");
        assert!(e.contains("variable-length subject"), "{e}");
        let mut p = profile(Some(8));
        p.signer_key_slot = 10;
        assert!(p.check(365, 0, 4).is_err());
        p.signer_key_slot = 8;
        assert!(p.check(365, 0, 4).is_err());
        assert_eq!(whole_years(365 * 32), None);
    }
}
