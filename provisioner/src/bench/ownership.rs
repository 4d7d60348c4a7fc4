//! Whose board is this? Read before anything on the chip or the board is changed.
//!
//! A board carries its owner's marks: `device.crt` (its certificate and the chain above it)
//! and `ca.crt` (the root it trusts) in its store, and in the chip the key that certificate
//! certifies. Three cases:
//!
//! - **blank**: no certificate in the store (or none that parses). Provisioning goes on as it
//!   always did; a key in the chip that no ledger certified (a run cut short after GenKey) is
//!   replaced.
//! - **this home's**: every certificate in the store chains to this home's CA. Provisioning
//!   goes on; a re-run verifies (the ledger checks that follow refuse a chip that is another
//!   device's, or whose key is not the one certified).
//! - **another home's**: `device.crt` is not signed by this home's CA, or `ca.crt` holds none
//!   of this home's roots. Refused with what was found (the other CA, the existing device
//!   certificate, the chip) and what would be lost, unless the operator gives `--takeover`.
//!
//! The identity key is made permanent once certified ([`slot_lock_plan`]): a profile whose
//! key slot is Lockable has the slot locked (Lock, one slot) after the certificate is issued
//! and written. A locked key slot can never be re-keyed, by anybody; taking over such a board
//! certifies the key already in the chip, after the chip proves it holds it.

use atecc::config::ConfigZone;
use x509_parser::certificate::X509Certificate;
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

use super::provision::{Job, ProvisionError, Shared, lock_ca};

/// The largest certificate file read from a board that is parsed (a chain of a few
/// certificates is 2-4 KiB).
const MAX_CERT_FILE: usize = 64 * 1024;
/// The most certificates looked at in one file.
const MAX_CERTS: usize = 8;

/// What the board shows of its owner, read before anything is changed.
#[derive(Debug, Clone, Default)]
pub struct BoardEvidence {
    /// `device.crt` from the board's store, if present.
    pub device_crt: Option<Vec<u8>>,
    /// `ca.crt` from the board's store, if present.
    pub ca_crt: Option<Vec<u8>>,
    /// The public key (X‖Y) of the identity slot, when the chip could tell it (data zone
    /// locked).
    pub slot_key: Option<[u8; 64]>,
}

/// Who the board belongs to, as far as it lets anyone tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Nothing on the board names an owner.
    Blank,
    /// Every certificate on the board chains to this home's CA.
    ThisHome,
    /// Another CA's board, taken over with `--takeover` (the text says what was found).
    TakenOver(String),
}

impl Owner {
    /// The report line of the `owner` step.
    pub fn detail(&self) -> String {
        match self {
            Owner::Blank => "blank: no certificate on the board".into(),
            Owner::ThisHome => "this home's: the board's certificates chain to this CA".into(),
            Owner::TakenOver(found) => {
                format!("another CA's board, taken over (--takeover): {found}")
            }
        }
    }
}

/// One certificate from the board, described with only escaped text.
struct Found {
    subject: String,
    issuer: String,
    serial: String,
    not_after: String,
    fingerprint: String,
    key: Option<[u8; 64]>,
    /// Signed by one of this home's CA keys.
    ours: bool,
}

/// Board text goes into messages only escaped (it can hold terminal escapes).
fn clean(s: &str) -> String {
    super::mos::sanitize(s.as_bytes())
}

fn der_certs(file: &[u8]) -> Vec<Vec<u8>> {
    if file.len() > MAX_CERT_FILE {
        return Vec::new();
    }
    Pem::iter_from_buffer(file)
        .take(MAX_CERTS)
        .map_while(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn describe(der: &[u8], ca: &[X509Certificate<'_>]) -> Option<Found> {
    let (_, c) = X509Certificate::from_der(der).ok()?;
    let spki = &c.public_key().subject_public_key.data;
    let key = (spki.len() == 65 && spki[0] == 4).then(|| {
        let mut k = [0u8; 64];
        k.copy_from_slice(&spki[1..]);
        k
    });
    let not_after = time::OffsetDateTime::from_unix_timestamp(c.validity().not_after.timestamp())
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "?".into());
    Some(Found {
        subject: clean(&c.subject().to_string()),
        issuer: clean(&c.issuer().to_string()),
        serial: hex::encode(c.raw_serial()),
        not_after,
        fingerprint: ca::authority::fingerprint(der),
        key,
        ours: ca
            .iter()
            .any(|a| c.verify_signature(Some(a.public_key())).is_ok()),
    })
}

/// Decides whose board this is; refuses another CA's board without `--takeover`.
///
/// `zone` is the config zone as read, `slot` the identity key slot. Nothing is written.
pub fn check_board_owner(
    shared: &Shared<'_>,
    job: &Job,
    port: &str,
    sn_hex: &str,
    zone: &ConfigZone,
    slot: u8,
    ev: &BoardEvidence,
) -> Result<Owner, ProvisionError> {
    let (ca_ders, known_key) = {
        let ca = lock_ca(shared);
        // Any CA of the fleet: a board of another bench station is one of ours.
        let mut ders = vec![ca.store().root_der()?, ca.store().issuer_der()?];
        ders.extend(ca::station::fleet_ca_ders(ca.store())?);
        let known = match ev.slot_key {
            Some(k) => {
                let hexkey = hex::encode(k);
                ca.store().ledger.identities()?.iter().any(|i| {
                    i.attrs.get("public_key").and_then(|v| v.as_str()) == Some(hexkey.as_str())
                })
            }
            None => false,
        };
        (ders, known)
    };
    let ours: Vec<X509Certificate<'_>> = ca_ders
        .iter()
        .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
        .collect();
    let device: Vec<Found> = ev
        .device_crt
        .as_deref()
        .map(der_certs)
        .unwrap_or_default()
        .iter()
        .filter_map(|d| describe(d, &ours))
        .collect();
    let roots_der = ev.ca_crt.as_deref().map(der_certs).unwrap_or_default();
    let roots: Vec<Found> = roots_der
        .iter()
        .filter_map(|d| describe(d, &ours))
        .collect();
    let trusts_us = roots_der.iter().any(|d| ca_ders.contains(d));
    let leaf = device.first();
    let foreign_leaf = leaf.is_some_and(|l| !l.ours);
    let foreign_root = !roots.is_empty() && !trusts_us;
    if !foreign_leaf && !foreign_root {
        return Ok(if leaf.is_some() || !roots.is_empty() {
            Owner::ThisHome
        } else {
            Owner::Blank
        });
    }

    // Another CA's board: say what was found.
    let mut found = vec![format!("chip {sn_hex}")];
    let mut shown: Vec<&str> = Vec::new();
    if let Some(l) = leaf {
        found.push(format!(
            "device.crt: `{}`, serial {}, valid until {}, issued by `{}`{}",
            l.subject,
            l.serial,
            l.not_after,
            l.issuer,
            if l.ours {
                " (this CA)"
            } else {
                " (not this CA)"
            }
        ));
        if let Some(ca) = device[1..]
            .iter()
            .chain(&roots)
            .find(|c| c.subject == l.issuer)
        {
            found.push(format!(
                "its CA `{}`, SHA-256 fingerprint {}",
                ca.subject, ca.fingerprint
            ));
            shown.push(&ca.fingerprint);
        }
    }
    if foreign_root {
        for r in roots
            .iter()
            .filter(|r| !shown.contains(&r.fingerprint.as_str()))
        {
            found.push(format!(
                "ca.crt trusts `{}`, SHA-256 fingerprint {} (not this home's root)",
                r.subject, r.fingerprint
            ));
        }
        if roots
            .iter()
            .any(|r| shown.contains(&r.fingerprint.as_str()))
        {
            found.push("ca.crt trusts that CA, not this home's root".into());
        }
    }
    let key_is_certified = match (leaf.and_then(|l| l.key), ev.slot_key) {
        (Some(c), Some(k)) => c == k,
        _ => false,
    };
    if key_is_certified {
        found.push(format!(
            "the certificate's key is the chip's key in slot {slot}{}",
            if known_key {
                " (also known to this home's ledger)"
            } else {
                ""
            }
        ));
    }
    let found = found.join("; ");
    let slot_locked = zone.is_data_locked() && zone.is_slot_locked(slot as usize);
    if job.takeover {
        return Ok(Owner::TakenOver(found));
    }
    let lost = if slot_locked {
        format!(
            "Slot {slot} is locked: its key can never be replaced, by this home or any other. With --takeover this home certifies the key already in the chip (after the chip proves it holds it) and replaces device.crt, ca.crt and the device configuration on the board: the other CA's certificate still matches the key, but the board no longer carries it"
        )
    } else {
        format!(
            "Provisioning would re-key slot {slot} (GenKey) and replace device.crt, ca.crt and the device configuration: the fielded identity would be lost for good, the existing certificate would stop matching the chip's key and the sensor could no longer connect with it"
        )
    };
    Err(ProvisionError::Conflict(format!(
        "{port}: this board was provisioned by another CA (not this home, {}): {found}. {lost}. Nothing was changed. If PROVISIONER_HOME is wrong, use the home that provisioned this board; to move the board to this home, re-run with --takeover",
        shared.home.display()
    )))
}

/// Whether the identity slot is locked (only a data-locked chip has slot locks).
pub fn key_slot_locked(zone: &ConfigZone, slot: u8) -> bool {
    zone.is_data_locked() && zone.is_slot_locked(slot as usize)
}

/// The `key` step's detail when the slot is locked and no ledger knows its key: the key is
/// kept and certified after proof of possession.
pub fn kept_key_detail(slot: u8, owner: &Owner) -> String {
    format!(
        "slot {slot} is locked: its key cannot be replaced; {} certifies the key already in the chip, after proof of possession",
        if matches!(owner, Owner::TakenOver(_)) {
            "the takeover"
        } else {
            "this home"
        }
    )
}

/// What to do about locking the identity slot, once the certificate is issued and written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotLock {
    /// The profile does not make the slot Lockable: the key stays replaceable.
    NotInProfile,
    /// Already locked.
    Verified,
    /// Dry run: would lock.
    Would,
    /// Locking is irreversible and `--lock` was not given.
    Stopped,
    /// Lock it now.
    Lock,
}

/// Decides the slot-lock step from the profile's zone and the chip's zone as it is now.
pub fn slot_lock_plan(wanted: &ConfigZone, now: &ConfigZone, slot: u8, job: &Job) -> SlotLock {
    if !wanted.key_config(slot as usize).lockable() {
        SlotLock::NotInProfile
    } else if key_slot_locked(now, slot) {
        SlotLock::Verified
    } else if job.dry_run {
        SlotLock::Would
    } else if !job.lock {
        SlotLock::Stopped
    } else {
        SlotLock::Lock
    }
}

impl SlotLock {
    /// The report's action and detail for this plan (`Lock` reports after it is done).
    pub fn report(self, slot: u8) -> (&'static str, String) {
        match self {
            SlotLock::NotInProfile => (
                "skipped",
                format!(
                    "slot {slot} is not Lockable in the chip profile: its key can still be replaced"
                ),
            ),
            SlotLock::Verified => (
                "verified",
                format!("slot {slot} is locked: its key can never be replaced"),
            ),
            SlotLock::Would => (
                "would",
                format!(
                    "lock slot {slot} (Lock, one slot) so its key can never be replaced (needs --lock)"
                ),
            ),
            SlotLock::Stopped => (
                "stopped",
                format!(
                    "slot {slot} to lock so its key can never be replaced; locking is irreversible: re-run with --lock"
                ),
            ),
            SlotLock::Lock => (
                "done",
                format!("slot {slot} locked (Lock, one slot): its key can never be replaced"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_files_that_are_not_certificates_name_no_owner() {
        assert!(der_certs(b"").is_empty());
        assert!(der_certs(b"\x1b[2Jnot a certificate\n").is_empty());
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(der_certs(broken).is_empty());
        // A well-formed PEM block of garbage parses as no certificate.
        let junk = b"-----BEGIN CERTIFICATE-----\nAAECAwQF\n-----END CERTIFICATE-----\n";
        let ders = der_certs(junk);
        assert_eq!(ders, vec![vec![0u8, 1, 2, 3, 4, 5]]);
        assert!(describe(&ders[0], &[]).is_none());
        // Oversized files are not parsed at all.
        let mut big = junk.repeat(MAX_CERT_FILE / junk.len() + 1);
        big.truncate(MAX_CERT_FILE + 1);
        assert!(der_certs(&big).is_empty());
        // And no more than MAX_CERTS blocks are looked at.
        assert_eq!(der_certs(&junk.repeat(50)).len(), MAX_CERTS);
    }

    #[test]
    fn board_text_is_escaped_before_it_reaches_a_message() {
        let s = clean("CN=evil\x1b]0;owned\x07\n");
        assert!(!s.chars().any(|c| c.is_control()), "{s:?}");
    }

    #[test]
    fn the_slot_lock_needs_a_lockable_slot_and_the_lock_flag() {
        let mut wanted = ConfigZone::factory_default([0; 9]);
        wanted.set_key_config(0, wanted.key_config(0).with_lockable(true));
        wanted.set_key_config(1, wanted.key_config(1).with_lockable(false));
        let job = |lock, dry_run| Job {
            id: "salon-1".into(),
            room: "salon".into(),
            profile_name: "climat".into(),
            key_source: manifests::site::KeySource::Chip,
            lock,
            dry_run,
            reissue: false,
            takeover: false,
        };
        let mut chip = wanted;
        chip.set_config_locked();
        chip.set_data_locked();
        assert_eq!(
            slot_lock_plan(&wanted, &chip, 1, &job(true, false)),
            SlotLock::NotInProfile
        );
        assert_eq!(
            slot_lock_plan(&wanted, &chip, 0, &job(true, false)),
            SlotLock::Lock
        );
        assert_eq!(
            slot_lock_plan(&wanted, &chip, 0, &job(false, false)),
            SlotLock::Stopped
        );
        assert_eq!(
            slot_lock_plan(&wanted, &chip, 0, &job(true, true)),
            SlotLock::Would
        );
        chip.set_slot_locked_bits(!1);
        assert_eq!(
            slot_lock_plan(&wanted, &chip, 0, &job(false, false)),
            SlotLock::Verified
        );
        assert!(key_slot_locked(&chip, 0) && !key_slot_locked(&chip, 1));
    }
}
