//! The identity in the chip (issue 19): for a compressible profile, the compressed device
//! certificate, the signer's public key and compressed certificate and the device id go into
//! their slots; they are read back and both certificates are rebuilt from the chip alone
//! with the profile's definition (what cryptoauthlib's `atcacert_read_cert` does on the
//! device). Only when both rebuild to the issued DER byte for byte are the slots locked;
//! otherwise the run stops with the difference and nothing is locked.

use atecc::config::{ConfigZone, slot_size};
use ca::certdef::{self, CertDef, ChipSlots, DeviceForm, DeviceLoc, zone};
use ca::compressed::TemplateIds;
use manifests::site::{DeviceProfile, Site};
use manifests::site_compressed::{parse_signer_id, whole_years};

use super::{Ctx, Outcome, ProvisionError, chip_err, lock_ca};
use crate::bench::Board;

/// The CA's form of a compressible profile (None for the others).
pub fn form(site: &Site, profile: &DeviceProfile) -> Option<DeviceForm> {
    let c = profile.compressed.as_ref()?;
    Some(DeviceForm {
        organization: site.site.organization.clone(),
        id_len: c.id_length?,
        years: whole_years(profile.cert_days.unwrap_or(site.site.leaf_days))?,
        ids: TemplateIds {
            template_id: c.template_id,
            chain_id: c.chain_id,
            signer_id: parse_signer_id(site.site.signer_id.as_deref())?,
        },
        slots: ChipSlots {
            key: profile.key_slot,
            device_cert: c.device_cert_slot,
            signer_key: c.signer_key_slot,
            signer_cert: c.signer_cert_slot,
            device_id: c.device_id_slot,
        },
    })
}

/// Refuses, before the chip is touched, a compressible profile the transport or the chip
/// profile cannot serve: the slots must be read back and locked (the kit transport), and
/// the chip profile must make them clear-writable after the data lock, readable and Lockable.
pub(super) fn check_setup(
    form: &DeviceForm,
    chip: &atecc::profile::Profile,
    chip_name: &str,
    caps: &crate::bench::Caps,
    id: &str,
) -> Result<(), ProvisionError> {
    if id.len() != form.id_len {
        return Err(ProvisionError::Config(format!(
            "device id `{}` has {} characters; the ids of this compressed profile have exactly {} (the certificate's subject has a fixed length)",
            manifests::text::escape(id),
            id.len(),
            form.id_len
        )));
    }
    if let Some(why) = caps.no_slot_lock {
        return Err(ProvisionError::Config(format!(
            "this profile keeps the identity in the chip, which needs its slots read back and locked; this transport cannot ({why}): use --transport kit"
        )));
    }
    let s = form.slots;
    for slot in [s.device_cert, s.signer_key, s.signer_cert, s.device_id] {
        let p = chip.slot(slot as usize);
        if p.write_config != 0 || p.is_secret || p.encrypt_read || !p.lockable {
            return Err(ProvisionError::Config(format!(
                "slot {slot} of chip profile `{chip_name}` must hold public data written in clear after the data lock and locked once written (write_config = 0b0000, is_secret = false, lockable = true), as in the built-in tls-device-atcacert"
            )));
        }
    }
    Ok(())
}

/// One slot's wanted contents.
struct SlotData {
    slot: u8,
    what: &'static str,
    data: Vec<u8>,
}

/// atcacert's padded public key: 4 zero bytes before X and before Y (72 bytes).
fn padded(xy: &[u8; 64]) -> Vec<u8> {
    let mut v = vec![0u8; 72];
    v[4..36].copy_from_slice(&xy[..32]);
    v[40..72].copy_from_slice(&xy[32..]);
    v
}

fn unpadded(v: &[u8]) -> Option<[u8; 64]> {
    let v = v.get(..72)?;
    let mut xy = [0u8; 64];
    xy[..32].copy_from_slice(&v[4..36]);
    xy[32..].copy_from_slice(&v[40..72]);
    Some(xy)
}

/// The profile's definition and the issuing CA's certificate, from the ledger.
pub fn definition(
    shared: &super::Shared<'_>,
    form: &DeviceForm,
) -> Result<(CertDef, Vec<u8>), ProvisionError> {
    let guard = lock_ca(shared);
    let store = guard.store();
    if store.ledger.meta("issuing_serial")?.is_none() {
        return Err(ProvisionError::Config(
            "a compressed profile needs a compressible issuing CA: create the home with `provisioner init --site FILE` where FILE has the profile".into(),
        ));
    }
    let signer_der = store.issuer_der()?;
    let signer = certdef::signer_def(&signer_der, &store.root_der()?, form.ids, form.slots)?;
    Ok((certdef::device_def(form, &signer_der, signer)?, signer_der))
}

/// Writes, reads back, rebuilds and (with `--lock`) locks the identity slots. Nothing for a
/// profile that is not compressible.
pub(super) fn chip_identity<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    out: &mut Outcome,
    profile: &DeviceProfile,
    issued_der: &[u8],
) -> Result<(), ProvisionError> {
    let Some(form) = form(cx.shared.site, profile) else {
        return Ok(());
    };
    let (def, signer_der) = definition(cx.shared, &form)?;
    let signer_def = def
        .ca_cert_def
        .as_deref()
        .ok_or_else(|| ProvisionError::Config("the definition has no signer".into()))?;
    let sid = form.ids.signer_id;
    let slots = form.slots;
    let wanted = [
        SlotData {
            slot: slots.device_cert,
            what: "compressed device certificate",
            data: certdef::compress(&def, issued_der, sid)?.to_vec(),
        },
        SlotData {
            slot: slots.signer_key,
            what: "signer public key",
            data: padded(&certdef::public_key_of(&signer_der)?),
        },
        SlotData {
            slot: slots.signer_cert,
            what: "compressed signer certificate",
            data: certdef::compress(signer_def, &signer_der, sid)?.to_vec(),
        },
        SlotData {
            slot: slots.device_id,
            what: "device id",
            data: cx.job.id.as_bytes().to_vec(),
        },
    ];
    let config = cx.chip("read config", board.read_config())?;
    let mut written = 0;
    for w in &wanted {
        written += usize::from(write_slot(cx, board, &config, w)?);
    }
    rebuild(cx, board, &def, issued_der, &signer_der, &config)?;
    let detail = format!(
        "{} (slots {}, {}, {}, {}; {written} written): the device and signer certificates rebuilt from the chip alone equal the issued ones byte for byte",
        wanted.iter().map(|w| w.what).collect::<Vec<_>>().join(", "),
        slots.device_cert,
        slots.signer_key,
        slots.signer_cert,
        slots.device_id
    );
    let action = if written == 0 { "verified" } else { "done" };
    cx.step(out, "chip identity", action, detail);
    lock_slots(cx, board, out, &wanted)
}

/// Writes one slot unless it already holds the data; false if it did. A locked slot with
/// other contents stops the run.
fn write_slot<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    config: &ConfigZone,
    w: &SlotData,
) -> Result<bool, ProvisionError> {
    let mut full = w.data.clone();
    full.resize(slot_size(w.slot as usize), 0);
    let now = cx.chip("read slot", board.read_slot(w.slot))?;
    if now == full {
        return Ok(false);
    }
    if config.is_slot_locked(w.slot as usize) {
        return Err(cx.failed(
            "chip identity",
            format!(
                "slot {} ({}) is locked with other contents: this chip carries another identity",
                w.slot, w.what
            ),
        ));
    }
    cx.progress(&format!("writing the {} to slot {}", w.what, w.slot));
    cx.chip("write slot", board.write_public_slot(w.slot, &full))?;
    Ok(true)
}

/// The device and signer certificates as the chip's slots rebuild them with the profile's
/// definition (what firmware built on cryptoauthlib does with `atcacert_read_cert`), each
/// with why it does not rebuild.
pub struct FromChip {
    /// The device certificate (DER).
    pub device: Result<Vec<u8>, String>,
    /// The signer's certificate (DER).
    pub signer: Result<Vec<u8>, String>,
}

impl FromChip {
    /// Both equal the issued ones, or the first difference (for the operator).
    pub fn compare(&self, issued_der: &[u8], signer_der: &[u8]) -> Result<(), String> {
        for (what, rebuilt, issued) in [
            ("signer", &self.signer, signer_der),
            ("device", &self.device, issued_der),
        ] {
            let rebuilt = rebuilt.as_ref().map_err(|e| {
                format!("the {what} certificate from the chip: it does not rebuild ({e})")
            })?;
            if rebuilt != issued {
                return Err(format!(
                    "the {what} certificate from the chip: the rebuilt one differs from the issued one: {}",
                    certdef::first_difference(rebuilt, issued)
                ));
            }
        }
        Ok(())
    }
}

/// Reads the identity slots (and the device's public key) and rebuilds both certificates
/// from what the chip holds alone.
pub fn from_chip<B: Board + ?Sized>(
    board: &mut B,
    def: &CertDef,
    config: &ConfigZone,
) -> Result<FromChip, ProvisionError> {
    let port = board.port().to_string();
    let signer_def = def
        .ca_cert_def
        .as_deref()
        .ok_or_else(|| ProvisionError::Config("the definition has no signer".into()))?;
    let mut read = |loc: &DeviceLoc| {
        board
            .read_slot(loc.slot as u8)
            .map_err(chip_err(&port, "read slot"))
    };
    let device_comp = read(&def.comp_cert_dev_loc)?;
    let signer_key = read(&signer_def.public_key_dev_loc)?;
    let signer_comp = read(&signer_def.comp_cert_dev_loc)?;
    let mut elements = Vec::new();
    for e in &def.cert_elements {
        let (o, n) = (
            usize::from(e.device_loc.offset),
            usize::from(e.device_loc.count),
        );
        let bytes = match e.device_loc.zone {
            zone::DATA => read(&e.device_loc)?,
            _ => config.block(0).map(|b| b.to_vec()).unwrap_or_default(),
        };
        elements.push((e.device_loc, bytes.get(o..o + n).map(<[u8]>::to_vec)));
    }
    let public = board
        .public_key(def.private_key_slot as u8)
        .map_err(chip_err(&port, "read public key"))?;
    let Some(signer_xy) = unpadded(&signer_key) else {
        let short = Err("the signer public key slot is too short".to_string());
        return Ok(FromChip {
            device: short.clone(),
            signer: short,
        });
    };
    let lookup = |loc: &DeviceLoc| {
        elements
            .iter()
            .find(|(l, _)| l == loc)
            .and_then(|(_, b)| b.clone())
    };
    let cut = |v: &[u8]| v.get(..72).map(<[u8]>::to_vec).unwrap_or_default();
    let text = |r: ca::Result<Vec<u8>>| r.map_err(|e| e.to_string());
    Ok(FromChip {
        signer: text(signer_def.rebuild(&cut(&signer_comp), &signer_xy, None, &|_| None)),
        device: text(def.rebuild(&cut(&device_comp), &public, Some(&signer_xy), &lookup)),
    })
}

/// Reads the slots back and rebuilds both certificates from what the chip holds; they must
/// equal the issued ones.
fn rebuild<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    def: &CertDef,
    issued_der: &[u8],
    signer_der: &[u8],
    config: &ConfigZone,
) -> Result<(), ProvisionError> {
    from_chip(board, def, config)?
        .compare(issued_der, signer_der)
        .map_err(|e| cx.failed("chip identity", format!("{e}; nothing was locked")))
}

/// Locks each identity slot once written and verified (needs `--lock`: irreversible).
fn lock_slots<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    out: &mut Outcome,
    wanted: &[SlotData],
) -> Result<(), ProvisionError> {
    let config = cx.chip("read config", board.read_config())?;
    let open: Vec<u8> = wanted
        .iter()
        .map(|w| w.slot)
        .filter(|s| !config.is_slot_locked(*s as usize))
        .collect();
    let list = |v: &[u8]| v.iter().map(u8::to_string).collect::<Vec<_>>().join(", ");
    if open.is_empty() {
        let slots: Vec<u8> = wanted.iter().map(|w| w.slot).collect();
        let detail = format!("slots {} locked", list(&slots));
        cx.step(out, "identity lock", "verified", detail);
        return Ok(());
    }
    if !cx.job.lock {
        let detail = format!(
            "slots {} NOT locked (irreversible): re-run with --lock",
            list(&open)
        );
        cx.step(out, "identity lock", "stopped", detail);
        out.status = "needs-lock";
        return Ok(());
    }
    for slot in &open {
        cx.progress(&format!("locking slot {slot}"));
        cx.chip("lock slot", board.lock_slot(*slot))?;
    }
    let after = cx.chip("read back slot locks", board.read_config())?;
    if let Some(s) = open.iter().find(|s| !after.is_slot_locked(**s as usize)) {
        return Err(cx.failed(
            "identity lock",
            format!("after Lock(slot {s}) the slot is not locked"),
        ));
    }
    let detail = format!("slots {} locked", list(&open));
    cx.step(out, "identity lock", "done", detail);
    Ok(())
}
