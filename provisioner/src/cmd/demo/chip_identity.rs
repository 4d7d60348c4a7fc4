//! The identity in the chip (issue 19) in the demo: the house's first board gets a
//! compressible copy of its profile (chip profile `tls-device-atcacert`, whole-year
//! certificates, a fixed-length id), which makes `init` create a compressible issuing CA.
//! Provisioning writes the compressed device certificate, the signer's public key and
//! compressed certificate and the device id into slots 10-13 and checks them as `device
//! provision` does; after it, the demo reads the slots back over the board's serial link once
//! more, rebuilds both certificates from the chip alone and compares them with the ledger's.
//! The board then runs in the house like the others, with that certificate.

use std::sync::Mutex;

use manifests::site::Site;
use manifests::site_compressed::CompressedProfile;
use serde_json::{Value, json};

use super::boards::Provisioned;
use super::house::Sensor;
use super::{Demo, note};
use crate::bench::Board;
use crate::bench::kit::KitLink;
use crate::bench::provision::chip_identity::{self, definition, form};
use crate::bench::provision::{CaAccess, Quiet, Shared};
use crate::exit::{CliError, Code, Result};

/// Suffix of the compressible copy of a profile.
const SUFFIX: &str = "_puce";

/// Lifetime of the compressible profile's certificates: whole years only.
const CERT_DAYS: u32 = 730;

/// Gives the first sensor a compressible copy of its profile (same readings and MQTT
/// settings, already paced), named `PROFILE_puce`.
pub(super) fn in_the_chip(site: &mut Site, sensors: &mut [Sensor]) -> Result<()> {
    let Some(s) = sensors.first_mut() else {
        return Ok(());
    };
    let mut p = site
        .profile(&s.profile)
        .map_err(|e| CliError::new(Code::Input, e))?
        .clone();
    p.description = format!(
        "{}; identity in the chip (compressed certificates)",
        p.description
    );
    p.chip = "tls-device-atcacert".into();
    p.cert_days = Some(CERT_DAYS);
    p.compressed = Some(CompressedProfile::with_id_length(Some(s.id.len())));
    let name = format!("{}{SUFFIX}", s.profile);
    site.profiles.insert(name.clone(), p);
    s.profile = name;
    Ok(())
}

/// One board's identity as its chip rebuilds it.
#[derive(Debug, Clone)]
pub(super) struct ChipCheck {
    id: String,
    slots: [u8; 4],
    device_len: usize,
    signer_len: usize,
    /// None: both equal the ledger's; otherwise the first difference.
    mismatch: Option<String>,
    /// Seconds the read-back and rebuild took (over the serial link).
    seconds: f64,
}

impl ChipCheck {
    /// Both certificates rebuilt from the chip equal the ledger's.
    pub(super) fn ok(&self) -> bool {
        self.mismatch.is_none()
    }

    /// The summary's line.
    pub(super) fn line(&self) -> String {
        let [d, k, c, i] = self.slots;
        let what = format!(
            "board {}: identity in the chip, certificate rebuilt from slots {d}-{i} (device {d}, signer key {k}, signer {c}, id {i})",
            self.id
        );
        match &self.mismatch {
            None => format!(
                "{what}, {} bytes, equal to the ledger's (signer certificate too, {} bytes)",
                self.device_len, self.signer_len
            ),
            Some(e) => format!("{what}: NOT equal to the ledger's: {e}"),
        }
    }

    pub(super) fn json(&self) -> Value {
        json!({
            "id": self.id,
            "slots": { "device_cert": self.slots[0], "signer_key": self.slots[1],
                       "signer_cert": self.slots[2], "device_id": self.slots[3] },
            "device_cert_bytes": self.device_len,
            "signer_cert_bytes": self.signer_len,
            "equal_to_ledger": self.ok(),
            "mismatch": self.mismatch,
            "read_back_seconds": self.seconds,
        })
    }
}

/// After step 4: every board of a compressible profile, read back over its serial link; its
/// certificates rebuilt from the chip alone and compared with the ledger's DER.
pub(super) fn check(
    d: &Demo<'_>,
    site: &Site,
    authority: &Mutex<ca::Authority>,
    provisioned: &Provisioned,
) -> Result<Vec<ChipCheck>> {
    let shared = Shared {
        authority,
        site,
        home: d.home.clone(),
        progress: &Quiet,
    };
    let mut checks = Vec::new();
    for (s, outcome) in &provisioned.outcomes {
        let profile = site
            .profile(&s.profile)
            .map_err(|e| CliError::new(Code::Input, e))?;
        let Some(form) = form(site, profile) else {
            continue;
        };
        let failed = |e: String| CliError::new(Code::Failure, format!("board {}: {e}", s.id));
        let serial = outcome
            .as_ref()
            .ok()
            .and_then(|o| o.certificate.clone())
            .ok_or_else(|| failed("no certificate".into()))?;
        let (def, signer_der) = definition(&shared, &form).map_err(|e| failed(e.to_string()))?;
        let issued = authority
            .lock_ca()
            .store()
            .ledger
            .by_serial(&serial)?
            .ok_or_else(|| failed(format!("certificate {serial} is not in the ledger")))?
            .der;
        let t = std::time::Instant::now();
        let mut link = KitLink::connect(&s.link.to_string_lossy(), d.args.baud)
            .map_err(|e| failed(e.to_string()))?;
        let config = link
            .read_config()
            .map_err(|e| failed(format!("read config: {}", chip_error(e))))?;
        let rebuilt = chip_identity::from_chip(&mut link, &def, &config)
            .map_err(|e| failed(e.to_string()))?;
        let sl = form.slots;
        let c = ChipCheck {
            id: s.id.clone(),
            slots: [sl.device_cert, sl.signer_key, sl.signer_cert, sl.device_id],
            device_len: rebuilt.device.as_ref().map_or(0, Vec::len),
            signer_len: rebuilt.signer.as_ref().map_or(0, Vec::len),
            mismatch: rebuilt.compare(&issued, &signer_der).err(),
            seconds: t.elapsed().as_secs_f64(),
        };
        note(&c.line());
        checks.push(c);
    }
    Ok(checks)
}

fn chip_error(e: atecc::client::ClientError<crate::bench::LinkError>) -> String {
    match e {
        atecc::client::ClientError::Transport(l) => l.to_string(),
        atecc::client::ClientError::Chip(c) => c.to_string(),
    }
}
