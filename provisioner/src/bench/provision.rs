//! The provisioning of one board: read its state, then do only what is missing.
//!
//! Order (the chip allows no other): write the configuration, read it back, lock the config
//! zone with its CRC summary; write the write key and a known value into every other
//! non-key slot and the OTP zone, lock the data zone with its CRC summary; create the key
//! (GenKey in the chip, or a host key injected with an encrypted PrivWrite); prove possession
//! (the chip signs a fresh challenge); issue the certificate; write certificate, CA and
//! configuration to the device and read them back. Each step first checks whether it is
//! already done, so running it again on a provisioned board verifies and reports.

pub mod chip_identity;

use std::sync::Mutex;

use atecc::client::ClientError;
use atecc::config::{ConfigZone, OTP_SIZE, SLOT_COUNT, slot_size};
use ca::ledger::IdentityRecord;
use ca::{Authority, IssueRequest, Profile, PublicKey, Store, Subject};
use manifests::device::{DeviceConfig, Reading};
use manifests::site::{DeviceProfile, KeySource, Site, TopicVars, expand_topic};
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::mos::{CA_FILE, CERT_FILE};
use super::ownership::{self, BoardEvidence, SlotLock};
use super::{Board, Caps, LinkError, Op, PLAINTEXT_FLAG};

/// What to provision on one port.
#[derive(Debug, Clone)]
pub struct Job {
    /// Device id (certificate CN, MQTT username).
    pub id: String,
    /// Room, for topic templates.
    pub room: String,
    /// Site profile name.
    pub profile_name: String,
    /// Where the key comes from.
    pub key_source: KeySource,
    /// Permission to lock (irreversible).
    pub lock: bool,
    /// Show every change, change nothing.
    pub dry_run: bool,
    /// New certificate for the same chip key; the old one is revoked.
    pub reissue: bool,
    /// Permission to take over a board another CA provisioned (re-key it, or certify its
    /// locked key).
    pub takeover: bool,
}

/// One step as reported.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Step name.
    pub step: &'static str,
    /// done, verified, skipped, would, stopped.
    pub action: &'static str,
    /// Human detail.
    pub detail: String,
}

/// A changed config-zone field.
#[derive(Debug, Clone, Serialize)]
pub struct FieldChange {
    /// Field name.
    pub field: String,
    /// Current value.
    pub current: String,
    /// Profile value.
    pub wanted: String,
}

/// The result for one board.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Outcome {
    /// Device id.
    pub id: String,
    /// Port.
    pub port: String,
    /// provisioned, verified, needs-lock, dry-run.
    pub status: &'static str,
    /// Chip serial number (hex).
    pub chip_serial: String,
    /// Steps.
    pub steps: Vec<Step>,
    /// Config-zone changes (empty when the chip already matches).
    pub config_diff: Vec<FieldChange>,
    /// Certificate serial, once issued.
    pub certificate: Option<String>,
    /// The key's public point (hex X‖Y).
    pub public_key: Option<String>,
    /// Topics the device may publish.
    pub topics: Vec<String>,
    /// Serial traffic of the run(s), when the link counts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<super::kit::LinkStats>,
}

/// Why provisioning a board stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The chip refused or answered wrongly.
    #[error("{port}: chip error during {step}: {detail}")]
    Chip {
        /// Port.
        port: String,
        /// Step.
        step: &'static str,
        /// What.
        detail: String,
    },
    /// The chip is locked with another configuration.
    #[error("{port}: the chip's config zone is locked with a different configuration ({} field(s) differ); it cannot take profile `{profile}`:\n{diff}", .count)]
    LockedDifferently {
        /// Port.
        port: String,
        /// Profile.
        profile: String,
        /// Number of differences.
        count: usize,
        /// The differences, one per line.
        diff: String,
    },
    /// A state conflict (chip already someone else, missing write key...).
    #[error("{0}")]
    Conflict(String),
    /// The site or profile is not usable.
    #[error("{0}")]
    Config(String),
    /// The CA refused.
    #[error(transparent)]
    Ca(#[from] ca::Error),
}

/// Something that shows progress (a progress bar per port, or nothing).
pub trait Progress: Sync {
    /// A step starts.
    fn step(&self, port: &str, message: &str);
}

/// No progress display.
pub struct Quiet;
impl Progress for Quiet {
    fn step(&self, _: &str, _: &str) {}
}

pub(crate) fn chip_err<'a>(
    port: &'a str,
    step: &'static str,
) -> impl FnOnce(ClientError<LinkError>) -> ProvisionError + 'a {
    move |e| match e {
        ClientError::Transport(l) => ProvisionError::Link(l),
        ClientError::Chip(c) => ProvisionError::Chip {
            port: port.to_string(),
            step,
            detail: c.to_string(),
        },
    }
}

pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom only fails when the OS has no RNG at all.
    getrandom::fill(&mut b).unwrap_or_else(|e| panic!("system RNG unavailable: {e}"));
    b
}

/// Loads the chip configuration a site profile names: a built-in or a file in the home.
pub fn chip_profile(
    name: &str,
    home: &std::path::Path,
) -> Result<atecc::profile::Profile, ProvisionError> {
    let text = if name == "tls-device" {
        atecc::profile::TLS_DEVICE_PROFILE.to_string()
    } else if name == "tls-device-atcacert" {
        atecc::profile::TLS_DEVICE_ATCACERT_PROFILE.to_string()
    } else {
        manifests::topic::check_identity(name)
            .map_err(|e| ProvisionError::Config(format!("chip profile name: expected {e}")))?;
        let path = home.join("chips").join(format!("{name}.toml"));
        // What it says is locked into chips for ever: it must be ours alone.
        safe_fs::check_owned(&path)
            .and_then(|()| safe_fs::read_limited_string(&path, 256 * 1024))
            .map_err(|e| {
                ProvisionError::Config(format!(
                    "chip profile `{name}`: {} ({e}); built-in: tls-device",
                    path.display()
                ))
            })?
    };
    atecc::profile::Profile::from_toml(&text)
        .map_err(|e| ProvisionError::Config(format!("chip profile `{name}`: {e:?}")))
}

/// Checks a site profile against its chip configuration before touching a chip.
pub fn check_profile(
    p: &DeviceProfile,
    chip: &atecc::profile::Profile,
    source: KeySource,
) -> Result<(), ProvisionError> {
    let key = chip.slot(p.key_slot as usize);
    if key.key_type != atecc::profile::KeyTypeName::P256 || !key.private {
        return Err(ProvisionError::Config(format!(
            "slot {} of the chip profile is not a P-256 private key slot",
            p.key_slot
        )));
    }
    let wc = key.write_config;
    match source {
        KeySource::Chip if wc & 0b0010 == 0 => Err(ProvisionError::Config(format!(
            "key slot {} does not allow GenKey after lock (its chip profile's write_config lacks 0b0010), so --key-source chip cannot create a key there",
            p.key_slot
        ))),
        KeySource::Host if wc & 0b0100 == 0 || key.write_key != p.write_key_slot => {
            Err(ProvisionError::Config(format!(
                "key slot {} does not take a PrivWrite encrypted with the write key in slot {} (its chip profile's write_config lacks 0b0100 or its write_key differs), so --key-source host cannot inject a key there",
                p.key_slot, p.write_key_slot
            )))
        }
        _ => Ok(()),
    }
}

/// The config zone the profile wants on this chip. On a chip whose config zone is locked, the
/// slot locks the chip gained since (Lockable slots only) are part of the same configuration,
/// and a chip locked with an earlier revision of the built-in profile is that profile's chip
/// (the revision it was locked with is what it is verified and provisioned against).
pub(crate) fn wanted_zone(
    chip: &atecc::profile::Profile,
    zone: &ConfigZone,
) -> Result<ConfigZone, ProvisionError> {
    let as_locked = |p: &atecc::profile::Profile| {
        let mut wanted = p
            .to_config_zone(zone)
            .map_err(|e| ProvisionError::Config(format!("{e:?}")))?;
        if zone.is_config_locked() {
            wanted.accept_slot_locks(zone);
        }
        Ok::<_, ProvisionError>(wanted)
    };
    let wanted = as_locked(chip)?;
    if zone.is_config_locked() && chip.name == "tls-device" && !diff(zone, &wanted).is_empty() {
        for text in atecc::profile::TLS_DEVICE_EARLIER_REVISIONS {
            let earlier = atecc::profile::Profile::from_toml(text)
                .map_err(|e| ProvisionError::Config(format!("built-in revision: {e}")))?;
            let z = as_locked(&earlier)?;
            if diff(zone, &z).is_empty() {
                tracing::info!("chip locked with an earlier revision of `tls-device`");
                return Ok(z);
            }
        }
    }
    Ok(wanted)
}

/// A run changed nothing: every step verified, or skipped.
pub(crate) fn nothing_done(steps: &[Step]) -> bool {
    steps
        .iter()
        .all(|s| matches!(s.action, "verified" | "skipped"))
}

pub(crate) fn diff(current: &ConfigZone, wanted: &ConfigZone) -> Vec<FieldChange> {
    let mut out = Vec::new();
    current.diff(wanted, |name, idx, a, b| {
        out.push(FieldChange {
            field: match idx {
                Some(i) => format!("{name}[{i}]"),
                None => name.to_string(),
            },
            current: format!("{a:#06x}"),
            wanted: format!("{b:#06x}"),
        });
    });
    out
}

/// The CA a run works with: with its signing key (`Mutex<Authority>`), or the ledger and
/// files alone (`Mutex<Store>`: a dry run reads and never writes, so it needs no passphrase).
pub trait CaAccess: Sync {
    /// Locks it for one operation (issuance and secrets are serialised through it).
    fn lock_ca(&self) -> CaGuard<'_>;
}

/// The CA, locked.
pub enum CaGuard<'a> {
    /// With its signing key and vault.
    Authority(std::sync::MutexGuard<'a, Authority>),
    /// The ledger and files only.
    ReadOnly(std::sync::MutexGuard<'a, Store>),
}

impl CaGuard<'_> {
    /// The ledger and files.
    pub fn store(&self) -> &Store {
        match self {
            CaGuard::Authority(a) => &a.store,
            CaGuard::ReadOnly(s) => s,
        }
    }

    /// The CA with its key; an error in a run opened without it (a dry run never gets here).
    pub fn authority(&mut self) -> Result<&mut Authority, ProvisionError> {
        match self {
            CaGuard::Authority(a) => Ok(a),
            CaGuard::ReadOnly(_) => Err(ProvisionError::Conflict(
                "this step needs the CA key, and the run was opened without it (dry run); nothing was written".into(),
            )),
        }
    }
}

impl CaAccess for Mutex<Authority> {
    fn lock_ca(&self) -> CaGuard<'_> {
        // A panic in another board's thread must not stop this one: the ledger is
        // transactional.
        CaGuard::Authority(
            self.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl CaAccess for Mutex<Store> {
    fn lock_ca(&self) -> CaGuard<'_> {
        CaGuard::ReadOnly(
            self.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Everything one provisioning run shares between boards.
pub struct Shared<'a> {
    /// The CA (issuance and secrets are serialised through it).
    pub authority: &'a dyn CaAccess,
    /// The site.
    pub site: &'a Site,
    /// The home (for chip profiles and device manifests).
    pub home: std::path::PathBuf,
    /// Progress display.
    pub progress: &'a dyn Progress,
}

pub(crate) fn lock_ca<'a>(s: &'a Shared<'_>) -> CaGuard<'a> {
    s.authority.lock_ca()
}

/// The device's readings (topics expanded), its status topic, and every topic it may publish.
pub(crate) fn device_topics(
    site: &Site,
    profile: &DeviceProfile,
    job: &Job,
) -> (Vec<Reading>, Option<String>, Vec<String>) {
    let vars = TopicVars {
        root: &site.topics.root,
        room: &job.room,
        id: &job.id,
    };
    let readings: Vec<Reading> = profile
        .readings
        .iter()
        .map(|r| Reading {
            topic: expand_topic(&r.topic, &vars),
            quantity: r.quantity,
        })
        .collect();
    let status_topic = profile
        .status_topic
        .as_ref()
        .map(|t| expand_topic(t, &vars));
    let mut topics: Vec<String> = readings.iter().map(|r| r.topic.clone()).collect();
    topics.extend(status_topic.clone());
    (readings, status_topic, topics)
}

/// Refuses a chip that already belongs to another device, or an id that is another chip's.
pub(crate) fn check_ownership(
    shared: &Shared<'_>,
    port: &str,
    job: &Job,
    sn_hex: &str,
) -> Result<(), ProvisionError> {
    let ca = lock_ca(shared);
    for i in ca.store().ledger.identities()? {
        if i.kind == "device"
            && i.id != job.id
            && i.attrs.get("chip_serial").and_then(|v| v.as_str()) == Some(sn_hex)
            && i.status == "active"
        {
            return Err(ProvisionError::Conflict(format!(
                "{port}: this chip ({sn_hex}) is already provisioned as `{}`; revoke it first (`provisioner device revoke {}`) or use that id",
                i.id, i.id
            )));
        }
    }
    if let Some(existing) = ca.store().ledger.identity(&job.id)?
        && existing.kind == "device"
        && existing.status == "active"
        && existing
            .attrs
            .get("chip_serial")
            .and_then(|v| v.as_str())
            .is_some_and(|s| s != sn_hex)
    {
        return Err(ProvisionError::Conflict(format!(
            "{port}: `{}` is already another chip's id; choose another --id or revoke the old device",
            job.id
        )));
    }
    Ok(())
}

/// The public key (hex X‖Y) the ledger certified for this id on this chip, if any.
pub(crate) fn certified_key(
    shared: &Shared<'_>,
    job: &Job,
    sn_hex: &str,
) -> Result<Option<String>, ProvisionError> {
    Ok(lock_ca(shared)
        .store()
        .ledger
        .identity(&job.id)?
        .and_then(|i| {
            (i.attrs.get("chip_serial").and_then(|v| v.as_str()) == Some(sn_hex))
                .then(|| {
                    i.attrs
                        .get("public_key")
                        .and_then(|v| v.as_str())
                        .map(str::to_string)
                })
                .flatten()
        }))
}

/// Checks the chip's signature `rs` over `digest` with its public key X‖Y.
pub(crate) fn verify_possession(
    port: &str,
    public: &[u8; 64],
    digest: &[u8; 32],
    rs: &[u8; 64],
) -> Result<(), ProvisionError> {
    let mut sec1 = [4u8; 65];
    sec1[1..].copy_from_slice(public);
    let vk =
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(|_| ProvisionError::Chip {
            port: port.to_string(),
            step: "read public key",
            detail: "not a valid P-256 point".into(),
        })?;
    let sig = p256::ecdsa::Signature::from_slice(rs).map_err(|_| ProvisionError::Chip {
        port: port.to_string(),
        step: "Sign",
        detail: "malformed signature".into(),
    })?;
    vk.verify_prehash(digest, &sig)
        .map_err(|_| ProvisionError::Chip {
            port: port.to_string(),
            step: "proof of possession",
            detail: "the chip's signature does not verify with its public key: refusing to certify"
                .into(),
        })
}

/// The device certificate, the chain and the CA bundle.
pub(crate) struct DeviceCertificate {
    /// What the CA issued (or found already issued).
    pub issued: ca::authority::Issued,
    /// The chain above the device certificate (PEM).
    pub chain: String,
    /// The trust anchors (PEM).
    pub bundle: Vec<u8>,
}

/// Issues (idempotently) the device certificate for the chip's key: same identity, ACL and
/// attributes whatever the transport.
pub(crate) fn issue_device_certificate(
    shared: &Shared<'_>,
    job: &Job,
    sn_hex: &str,
    public: &[u8; 64],
    slot: u8,
    topics: &[String],
) -> Result<DeviceCertificate, ProvisionError> {
    let site = shared.site;
    let pk = PublicKey::from_xy(public)?;
    let nonce = if job.reissue {
        hex::encode(random::<8>())
    } else {
        String::new()
    };
    let request_id =
        ca::authority::request_id(&[b"device", job.id.as_bytes(), public, nonce.as_bytes()]);
    let mut attrs = serde_json::Map::new();
    attrs.insert("chip_serial".into(), sn_hex.into());
    attrs.insert("public_key".into(), hex::encode(public).into());
    attrs.insert("room".into(), job.room.clone().into());
    attrs.insert("key_slot".into(), slot.into());
    attrs.insert(
        "key_source".into(),
        format!("{:?}", job.key_source).to_lowercase().into(),
    );
    let identity = IdentityRecord {
        id: job.id.clone(),
        kind: "device".into(),
        profile: job.profile_name.clone(),
        acl_write: topics.to_vec(),
        acl_read: vec![],
        attrs,
        status: "active".into(),
    };
    let subject = Subject {
        common_name: job.id.clone(),
        organization: site.site.organization.clone(),
        dns: vec![],
        ips: vec![],
        serial_number: Some(sn_hex.to_string()),
    };
    let mut guard = lock_ca(shared);
    let ca = guard.authority()?;
    let old: Vec<String> = if job.reissue {
        ca.store
            .ledger
            .certificates_of(&job.id)?
            .into_iter()
            .filter(|c| c.revoked_at.is_none())
            .map(|c| c.serial)
            .collect()
    } else {
        vec![]
    };
    let issued = ca.issue(IssueRequest {
        profile: Profile::Device,
        subject,
        public_key: pk,
        request_id,
        days: site.site.leaf_days,
        identity: Some(identity.clone()),
    })?;
    // A re-run that finds its certificate still records what the board now runs with (its
    // profile and topics, after `--change-profile`); never for a revoked certificate, whose
    // identity stays revoked.
    if issued.existing && issued.record.revoked_at.is_none() {
        ca.upsert_identity(&identity)?;
    }
    for serial in old.iter().filter(|s| **s != issued.record.serial) {
        ca.revoke_serial(serial, "superseded")?;
    }
    let chain = ca.store.chain_pem()?;
    let bundle = std::fs::read(ca.store.layout.root_cert()).map_err(|e| ca::Error::Io {
        path: ca.store.layout.root_cert(),
        source: e,
    })?;
    Ok(DeviceCertificate {
        issued,
        chain,
        bundle,
    })
}

/// What a dry run says of the certificate step for a key already in the chip, from the
/// ledger alone (no possession check, no issuance, nothing written).
pub(crate) fn certificate_plan(
    shared: &Shared<'_>,
    job: &Job,
    public: &[u8; 64],
    writes: &str,
) -> Result<Step, ProvisionError> {
    let ca = lock_ca(shared);
    let ledger = &ca.store().ledger;
    let (action, detail) = if job.reissue {
        let current = ledger
            .certificates_of(&job.id)?
            .into_iter()
            .filter(|c| c.revoked_at.is_none())
            .count();
        (
            "would",
            format!(
                "prove possession, issue a new certificate for `{}`, revoke the {current} current one(s) (superseded), {writes}",
                job.id
            ),
        )
    } else {
        let request_id = ca::authority::request_id(&[b"device", job.id.as_bytes(), public, b""]);
        match ledger.by_request(&request_id)? {
            Some(rec) if rec.revoked_at.is_none() => (
                "verified",
                format!(
                    "already issued for this key (serial {}); a run would prove possession again and {writes}",
                    rec.serial
                ),
            ),
            _ => (
                "would",
                format!(
                    "prove possession, issue a device certificate for `{}`, {writes}",
                    job.id
                ),
            ),
        }
    };
    Ok(Step {
        step: "certificate",
        action,
        detail,
    })
}

/// The configuration the device runs with.
pub(crate) fn device_config(
    site: &Site,
    profile: &DeviceProfile,
    job: &Job,
    readings: Vec<Reading>,
    status_topic: Option<String>,
) -> DeviceConfig {
    DeviceConfig {
        format: manifests::device::FORMAT,
        device_id: job.id.clone(),
        client_id: job.id.clone(),
        broker_host: site.broker.connect_host().unwrap_or_default(),
        tls_server_name: site.broker.server_name().unwrap_or_default(),
        port: site.broker.port,
        readings,
        status_topic,
        qos: profile.qos,
        retain: profile.retain,
        keep_alive_s: profile.keep_alive_s,
        clean_session: profile.clean_session,
        interval_s: profile.interval_s,
        key_slot: profile.key_slot,
        renewal: Some(field_renewal(site, profile)),
    }
}

/// The board's renewal settings: the site's renewal topics and the profile's renewal point.
fn field_renewal(site: &Site, profile: &DeviceProfile) -> manifests::device::FieldRenewal {
    use manifests::site::RenewPoint;
    let (permille, before, before_s) = match profile.lifetime().renew_point() {
        Some(RenewPoint::Fraction(n, d)) => {
            (Some((n * 1000 / d.max(1)).clamp(1, 999) as u16), None, None)
        }
        Some(RenewPoint::DaysBefore(d)) => (None, Some(d), None),
        Some(RenewPoint::SecondsBefore(s)) => (None, None, Some(s)),
        None => (None, None, None),
    };
    manifests::device::FieldRenewal {
        topic_prefix: manifests::device::FieldRenewal::prefix_for(&site.topics.root),
        renew_at_permille: permille,
        renew_before_days: before,
        renew_before_s: before_s,
    }
}

/// Checks the chip is an ATECC508A; returns its serial number (hex) and revision.
pub(crate) fn identify_chip(
    port: &str,
    zone: &ConfigZone,
) -> Result<(String, [u8; 4]), ProvisionError> {
    let rev = zone.revision();
    if rev[2] != 0x50 {
        return Err(ProvisionError::Conflict(format!(
            "{port}: the chip reports revision {} : not an ATECC508A (byte 2 is 0x50 on a 508A, 0x60 on a 608)",
            hex::encode(rev)
        )));
    }
    Ok((hex::encode(zone.serial_number()), rev))
}

/// A locked config zone must already hold the profile: otherwise the chip can never take it.
pub(crate) fn refuse_if_locked_differently(
    port: &str,
    chip: &str,
    changes: &[FieldChange],
) -> Result<(), ProvisionError> {
    if changes.is_empty() {
        return Ok(());
    }
    let text: Vec<String> = changes
        .iter()
        .map(|c| format!("  {}: chip {} profile {}", c.field, c.current, c.wanted))
        .collect();
    Err(ProvisionError::LockedDifferently {
        port: port.to_string(),
        profile: chip.to_string(),
        count: changes.len(),
        diff: text.join("\n"),
    })
}

/// True if the file `name` on the board equals `data`. A read has no checksum of its own on
/// every transport, so a mismatch is read again before it counts (a noisy line can garble a
/// read, not the file).
fn reads_back<B: Board + ?Sized>(
    board: &mut B,
    name: &str,
    data: &[u8],
) -> Result<bool, ProvisionError> {
    for _ in 0..3 {
        if board.get(name)?.as_deref() == Some(data) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Refuses, before anything is sent, a job that would put a secret in clear on the wire
/// without the operator's explicit permission (`keys_in_clear` of the transport's [`Caps`]).
pub fn check_key_path(job: &Job, keys_in_clear: Option<bool>) -> Result<(), ProvisionError> {
    if job.key_source == KeySource::Host && keys_in_clear == Some(false) && !job.dry_run {
        return Err(ProvisionError::Config(format!(
            "--key-source host over --transport mos would send the private key and the write key IN CLEAR over the serial line (Mongoose OS's ATCA.SetKey takes them in plaintext and encrypts on the board); nothing was sent. Use --key-source chip (the key is generated in the chip and never leaves it), flash the provisioning firmware and use --transport kit (the key crosses only encrypted), or accept the risk with {PLAINTEXT_FLAG}"
        )));
    }
    Ok(())
}

/// What every step of one run reads: the board's port, the job, the run's CA and site, the
/// transport's capabilities.
struct Ctx<'a, 's> {
    port: String,
    job: &'a Job,
    shared: &'a Shared<'s>,
    caps: Caps,
    /// The key slot and the write key slot of the profile.
    slot: u8,
    wk_slot: u8,
}

impl Ctx<'_, '_> {
    /// Reports a step (log, progress, outcome).
    fn step(&self, out: &mut Outcome, step: &'static str, action: &'static str, detail: String) {
        tracing::info!(port = %self.port, "{step}: {action} {detail}");
        self.progress(&format!("{step}: {action} {detail}"));
        out.steps.push(Step {
            step,
            action,
            detail,
        });
    }

    fn progress(&self, message: &str) {
        self.shared.progress.step(&self.port, message);
    }

    /// A chip failure during `step`, named.
    fn chip<T>(&self, step: &'static str, r: Op<T>) -> Result<T, ProvisionError> {
        r.map_err(chip_err(&self.port, step))
    }

    fn failed(&self, step: &'static str, detail: String) -> ProvisionError {
        ProvisionError::Chip {
            port: self.port.clone(),
            step,
            detail,
        }
    }

    /// A step the job stops before (locking is irreversible and --lock was not given).
    fn stop(&self, out: &mut Outcome, step: &'static str, detail: String) {
        self.step(out, step, "stopped", detail);
        out.status = "needs-lock";
    }
}

/// What the first reads found: the chip's config zone, the zone the profile wants on it, its
/// serial number (hex), the chip profile's name.
struct Seen {
    zone: ConfigZone,
    wanted: ConfigZone,
    sn_hex: String,
    chip: String,
}

/// Provisions one board over any transport: each step reads the chip and the board first
/// and does only what is missing, so a run on a provisioned board verifies, a run cut short
/// resumes, and a dry run says what a run would do, all from the same steps.
pub fn provision<B: Board + ?Sized>(
    board: &mut B,
    job: &Job,
    shared: &Shared<'_>,
) -> Result<Outcome, ProvisionError> {
    let caps = board.caps();
    check_key_path(job, caps.keys_in_clear)?;
    let port = board.port().to_string();
    let site = shared.site;
    let profile = site
        .profile(&job.profile_name)
        .map_err(ProvisionError::Config)?
        .clone();
    let chip_prof = chip_profile(&profile.chip, &shared.home)?;
    check_profile(&profile, &chip_prof, job.key_source)?;
    let compressed = chip_identity::form(site, &profile);
    if let Some(form) = &compressed {
        chip_identity::check_setup(form, &chip_prof, &profile.chip, &caps, &job.id)?;
        // The home's issuing CA must be compressible too: known before the chip is touched.
        chip_identity::definition(shared, form)?;
    }
    let (readings, status_topic, topics) = device_topics(site, &profile, job);
    let cx = Ctx {
        port: port.clone(),
        job,
        shared,
        caps,
        slot: profile.key_slot,
        wk_slot: profile.write_key_slot,
    };
    let slot = cx.slot;
    let mut out = Outcome {
        id: job.id.clone(),
        port,
        status: if job.dry_run {
            "dry-run"
        } else {
            "provisioned"
        },
        topics: topics.clone(),
        ..Outcome::default()
    };

    // Identify: the board, the chip, and whose they are.
    cx.progress("reading the board");
    let info = board.describe()?;
    cx.step(&mut out, "board", "verified", info);
    let zone = cx.chip("read config", board.read_config())?;
    let (sn_hex, rev) = identify_chip(&cx.port, &zone)?;
    out.chip_serial = sn_hex.clone();
    cx.step(
        &mut out,
        "chip",
        "verified",
        format!("ATECC508A serial {sn_hex}, revision {}", hex::encode(rev)),
    );
    // The chip must not already belong to another device, nor the board to another CA.
    check_ownership(shared, &cx.port, job, &sn_hex)?;
    let evidence = BoardEvidence {
        device_crt: board.get(CERT_FILE)?,
        ca_crt: board.get(CA_FILE)?,
        slot_key: zone
            .is_data_locked()
            .then(|| board.public_key(slot).ok())
            .flatten(),
    };
    let owner =
        ownership::check_board_owner(shared, job, &cx.port, &sn_hex, &zone, slot, &evidence)?;
    cx.step(&mut out, "owner", "verified", owner.detail());

    // Configure and lock the config zone, then write and lock the data zone.
    let seen = Seen {
        wanted: wanted_zone(&chip_prof, &zone)?,
        zone,
        sn_hex,
        chip: profile.chip.clone(),
    };
    if !config_zone(&cx, board, &mut out, &seen)? || !data_zone(&cx, board, &mut out, &seen)? {
        return Ok(out);
    }
    let Seen {
        zone,
        wanted,
        sn_hex,
        ..
    } = &seen;

    // The key (a locked slot keeps its key: it is certified after proof of possession).
    let public = key(&cx, board, &mut out, &seen, &owner)?;
    ca::fault::point("provision-after-key");
    let Some(public) = public else {
        cx.step(
            &mut out,
            "certificate",
            "would",
            format!(
                "prove possession ({}), issue a device certificate for `{}`, {}",
                caps.sign, job.id, caps.files
            ),
        );
        return Ok(out);
    };
    out.public_key = Some(hex::encode(public));
    if job.dry_run {
        // A dry run proves nothing, issues nothing and writes nothing: it says what a run
        // would do from here.
        let plan = certificate_plan(
            shared,
            job,
            &public,
            &format!("{} where they differ", caps.files),
        )?;
        cx.step(&mut out, plan.step, plan.action, plan.detail);
        if let Some(form) = &compressed {
            let s = form.slots;
            let detail = format!(
                "write the compressed device certificate, the signer's public key and certificate and the device id to slots {}, {}, {}, {}, rebuild both certificates from the chip and lock the slots",
                s.device_cert, s.signer_key, s.signer_cert, s.device_id
            );
            cx.step(&mut out, "chip identity", "would", detail);
        }
        let plan = ownership::slot_lock_plan(wanted, zone, slot, job);
        let (action, detail) = slot_lock_report(&cx, plan);
        cx.step(&mut out, "key lock", action, detail);
        return Ok(out);
    }

    // Possession: the chip signs a fresh challenge.
    let challenge = random::<32>();
    let digest: [u8; 32] = Sha256::digest(challenge).into();
    let rs = cx.chip("Sign", board.sign(slot, &digest))?;
    verify_possession(&cx.port, &public, &digest, &rs)?;
    cx.step(
        &mut out,
        "possession",
        "verified",
        format!(
            "the chip signed a fresh challenge with the key ({})",
            caps.sign
        ),
    );

    // Certificate (idempotent: the same chip key and id give the same certificate).
    let DeviceCertificate {
        issued,
        chain,
        bundle,
    } = issue_device_certificate(shared, job, sn_hex, &public, slot, &topics)?;
    ca::fault::point("provision-after-certificate");
    out.certificate = Some(issued.record.serial.clone());
    cx.step(
        &mut out,
        "certificate",
        if issued.existing { "verified" } else { "done" },
        format!(
            "{} (serial {})",
            if issued.existing {
                "already issued"
            } else {
                "issued"
            },
            issued.record.serial
        ),
    );

    // A compressible profile keeps the identity in the chip too (issue 19).
    chip_identity::chip_identity(&cx, board, &mut out, &profile, &issued.record.der)?;

    // Device files, then the configuration where the firmware keeps its own.
    let config = device_config(site, &profile, job, readings, status_topic);
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        (CERT_FILE, format!("{}{chain}", issued.pem).into_bytes()),
        (CA_FILE, bundle),
    ];
    if let Some(name) = board.config_file(&config) {
        let blob = config
            .to_blob()
            .map_err(|e| ProvisionError::Config(e.to_string()))?;
        files.push((name, blob));
    } else {
        config
            .validate()
            .map_err(|e| ProvisionError::Config(e.to_string()))?;
    }
    device_files(&cx, board, &mut out, &files)?;
    if let Some((changed, detail)) = board.set_configuration(&config)? {
        if changed {
            cx.progress("setting and saving the configuration");
        }
        let action = if changed { "done" } else { "verified" };
        cx.step(&mut out, "device config", action, detail);
    }

    // The identity key made permanent (Lockable key slots), now that it is certified and
    // the board carries the certificate.
    key_lock(&cx, board, &mut out, wanted)?;
    if out.status != "needs-lock" && nothing_done(&out.steps) {
        out.status = "verified";
    }
    Ok(out)
}

/// The config zone: verified if locked with the profile, else written, read back and locked.
/// False when the run stops here (needs --lock).
fn config_zone<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    out: &mut Outcome,
    seen: &Seen,
) -> Result<bool, ProvisionError> {
    let (zone, wanted, chip) = (&seen.zone, &seen.wanted, seen.chip.as_str());
    let caps = &cx.caps;
    let changes = diff(zone, wanted);
    out.config_diff = changes.clone();
    let n = changes.len();
    if zone.is_config_locked() {
        refuse_if_locked_differently(&cx.port, chip, &changes)?;
        let detail = format!("locked with profile `{chip}`");
        cx.step(out, "config zone", "verified", detail);
    } else if cx.job.dry_run {
        let detail = format!(
            "{} {n} field(s) of profile `{chip}`, read back, {} (needs --lock)",
            caps.write_config, caps.lock_config
        );
        cx.step(out, "config zone", "would", detail);
    } else if !cx.job.lock {
        let detail = format!("{n} field(s) to write; locking is irreversible: re-run with --lock");
        cx.stop(out, "config zone", detail);
        return Ok(false);
    } else {
        cx.progress("writing the configuration");
        cx.chip("write config", board.write_config(wanted))?;
        let back = cx.chip("read back config", board.read_config())?;
        let left = diff(&back, wanted);
        if !left.is_empty() {
            let names: Vec<&str> = left.iter().map(|c| c.field.as_str()).collect();
            return Err(cx.failed(
                "read back config",
                format!(
                    "{} field(s) did not take: {}; nothing was locked",
                    left.len(),
                    names.join(", ")
                ),
            ));
        }
        cx.progress("locking the config zone");
        let summary = caps.lock_summary.then_some(wanted);
        cx.chip("lock config", board.lock_config(summary))?;
        let mut after = "";
        if summary.is_none() {
            // Without the CRC summary, the read-back after the lock proves the locked zone
            // holds the profile.
            let locked = cx.chip("read back config", board.read_config())?;
            let mut expected = ConfigZone(wanted.0);
            expected.set_config_locked();
            if !locked.is_config_locked() || !diff(&locked, &expected).is_empty() {
                let detail = format!(
                    "after {} the config zone is not locked with the profile's contents",
                    caps.lock_config
                );
                return Err(cx.failed("lock config", detail));
            }
            after = ", read back locked";
        }
        ca::fault::point("provision-after-config-lock");
        let detail = format!(
            "{} of {n} field(s), read back, {}{after}",
            caps.write_config, caps.lock_config
        );
        cx.step(out, "config zone", "done", detail);
    }
    Ok(true)
}

/// The data zone: the write key (where it can cross, and is needed), known contents where
/// the transport can write them, then the lock. False when the run stops here.
fn data_zone<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    out: &mut Outcome,
    seen: &Seen,
) -> Result<bool, ProvisionError> {
    let (zone, wanted, sn_hex) = (&seen.zone, &seen.wanted, seen.sn_hex.as_str());
    let (caps, wk_slot) = (&cx.caps, cx.wk_slot);
    // A write key in clear crosses only for a host key that needs it (and with permission).
    let host_key = cx.job.key_source == KeySource::Host;
    let write_key = caps.keys_in_clear.is_none() || host_key;
    let key_part = match (write_key, caps.keys_in_clear) {
        (true, None) => format!("write key in slot {wk_slot} (kept encrypted in the ledger)"),
        (true, Some(_)) => format!(
            "write key in slot {wk_slot} (sent in clear over the serial line, needs {PLAINTEXT_FLAG}; kept encrypted in the ledger)"
        ),
        (false, _) => format!(
            "write key slot {wk_slot} not written (it would cross in clear): slots that take encrypted writes with it cannot be re-keyed securely, slot {} takes GenKey only",
            cx.slot
        ),
    };
    let zeros = if caps.zone_writes {
        ", zeros to the other data slots and OTP"
    } else {
        ""
    };
    if zone.is_data_locked() {
        cx.step(out, "data zone", "verified", "locked".into());
        return Ok(true);
    }
    if cx.job.dry_run {
        let detail = format!("{key_part}{zeros}, {}", caps.lock_data);
        cx.step(out, "data zone", "would", detail);
        return Ok(true);
    }
    if !cx.job.lock {
        let detail = "locking is irreversible: re-run with --lock".into();
        cx.stop(out, "data zone", detail);
        return Ok(false);
    }
    cx.progress("writing the data zone and locking it");
    let mut contents: Vec<Vec<u8>> = (0..SLOT_COUNT).map(|n| vec![0u8; slot_size(n)]).collect();
    if write_key {
        let mut wk = lock_ca(cx.shared)
            .authority()?
            .secret_or_create(&format!("writekey:{sn_hex}"), 32)?;
        contents[wk_slot as usize][..32].copy_from_slice(&wk[..32]);
        wk.zeroize();
    }
    let otp = [0u8; OTP_SIZE];
    let r = if caps.zone_writes {
        write_contents(cx, board, wanted, &contents, &otp)
    } else if write_key {
        cx.chip(
            "write data slot",
            board.write_slot(wk_slot, &contents[wk_slot as usize][..32]),
        )
    } else {
        Ok(())
    };
    let summary = caps
        .lock_summary
        .then(|| atecc::host::data_lock_crc(wanted, |n| contents[n].as_slice(), &otp));
    contents[wk_slot as usize].zeroize();
    r?;
    cx.chip("lock data", board.lock_data(summary))?;
    if summary.is_none()
        && !cx
            .chip("read config", board.read_config())?
            .is_data_locked()
    {
        let detail = format!("after {} the data zone is not locked", caps.lock_data);
        return Err(cx.failed("lock data", detail));
    }
    ca::fault::point("provision-after-data-lock");
    let zeroed = if caps.zone_writes {
        ", other slots zeroed"
    } else {
        ""
    };
    let detail = format!("{key_part}{zeroed}, {}", caps.lock_data);
    cx.step(out, "data zone", "done", detail);
    Ok(true)
}

/// Every non-key data slot and the OTP zone, before the data lock.
fn write_contents<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    wanted: &ConfigZone,
    contents: &[Vec<u8>],
    otp: &[u8; OTP_SIZE],
) -> Result<(), ProvisionError> {
    for (n, data) in contents.iter().enumerate() {
        if !wanted.key_config(n).is_ecc_private() {
            cx.chip("write data slot", board.write_slot(n as u8, data))?;
        }
    }
    cx.chip("write OTP", board.write_otp(otp))
}

/// The key: the certified one verified, a locked slot's kept, or a new one made (GenKey, or
/// a host key put in). `None` in a dry run that has no key to show yet.
fn key<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    out: &mut Outcome,
    seen: &Seen,
    owner: &ownership::Owner,
) -> Result<Option<[u8; 64]>, ProvisionError> {
    let (zone, sn_hex) = (&seen.zone, seen.sn_hex.as_str());
    let (caps, slot, job) = (&cx.caps, cx.slot, cx.job);
    let known = certified_key(cx.shared, job, sn_hex)?;
    let kept = ownership::key_slot_locked(zone, slot);
    match (&known, job.dry_run) {
        (None, dry) if kept => {
            let action = if dry { "would" } else { "verified" };
            cx.step(out, "key", action, ownership::kept_key_detail(slot, owner));
            if dry {
                return Ok(None);
            }
            cx.chip("read public key", board.public_key(slot)).map(Some)
        }
        (Some(hexkey), _) => {
            let on_chip = cx.chip("read public key", board.public_key(slot))?;
            if hex::encode(on_chip) != *hexkey {
                return Err(ProvisionError::Conflict(format!(
                    "{}: the key in slot {slot} is not the one certified for `{}`: the chip was re-keyed elsewhere; revoke the device and provision it again",
                    cx.port, job.id
                )));
            }
            let detail = format!("slot {slot} holds the certified key");
            cx.step(out, "key", "verified", detail);
            Ok(Some(on_chip))
        }
        (None, true) => {
            let detail = match job.key_source {
                KeySource::Chip => format!(
                    "{} in slot {slot}: the private key never leaves the chip",
                    caps.gen_key
                ),
                KeySource::Host => format!(
                    "generate a key on this host, inject it into slot {slot} {}, erase it",
                    caps.inject.0
                ),
            };
            cx.step(out, "key", "would", detail);
            Ok(None)
        }
        (None, false) if job.key_source == KeySource::Chip => {
            cx.progress("generating the key in the chip");
            let p = cx.chip("GenKey", board.gen_key(slot))?;
            let detail = format!("{} in slot {slot}", caps.gen_key);
            cx.step(out, "key", "done", detail);
            Ok(Some(p))
        }
        (None, false) => host_key(cx, board, out, sn_hex).map(Some),
    }
}

/// A key made on this host, put into the chip with the write key, erased; its public key.
fn host_key<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    out: &mut Outcome,
    sn_hex: &str,
) -> Result<[u8; 64], ProvisionError> {
    let slot = cx.slot;
    cx.progress(&format!("injecting a host key ({})", cx.caps.inject.0));
    let wk = lock_ca(cx.shared)
        .authority()?
        .secret(&format!("writekey:{sn_hex}"))?
        .ok_or_else(|| {
            ProvisionError::Conflict(format!(
                "{}: no write key for chip {sn_hex} in the ledger: its data zone was locked by another tool (or without --key-source host); use --key-source chip",
                cx.port
            ))
        })?;
    let mut wk32 = [0u8; 32];
    wk32.copy_from_slice(&wk[..32]);
    let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate();
    let mut scalar: [u8; 32] = sk.to_bytes().into();
    let pubkey = p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&sk.public_key(), false);
    let r = board.priv_write(slot, &scalar, (cx.wk_slot, &wk32));
    scalar.zeroize();
    wk32.zeroize();
    drop(sk);
    cx.chip("PrivWrite", r)?;
    let mut p = [0u8; 64];
    p.copy_from_slice(&pubkey.as_bytes()[1..]);
    if cx.chip("read public key", board.public_key(slot))? != p {
        let detail = "the chip's public key is not the injected key's".into();
        return Err(cx.failed("PrivWrite", detail));
    }
    let detail = format!(
        "host key injected in slot {slot} {}, then erased from memory",
        cx.caps.inject.1
    );
    cx.step(out, "key", "done", detail);
    Ok(p)
}

/// The device's files: each written where it differs, and read back.
fn device_files<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    out: &mut Outcome,
    files: &[(&str, Vec<u8>)],
) -> Result<(), ProvisionError> {
    for (name, data) in files {
        let len = data.len();
        if board.get(name)?.as_deref() == Some(data.as_slice()) {
            let detail = format!("{name} ({len} bytes) already on the device");
            cx.step(out, "device store", "verified", detail);
            continue;
        }
        cx.progress(&format!("writing {name}"));
        board.put(name, data)?;
        ca::fault::point("provision-after-blob");
        if !reads_back(board, name, data)? {
            let detail = format!("{name} reads back different from what was written");
            return Err(cx.failed("device store", detail));
        }
        let detail = format!(
            "{name} ({len} bytes) written with {} and read back",
            cx.caps.put
        );
        cx.step(out, "device store", "done", detail);
    }
    Ok(())
}

/// The report of the slot-lock step, on a transport that may not lock one slot.
fn slot_lock_report(cx: &Ctx<'_, '_>, plan: SlotLock) -> (&'static str, String) {
    match (plan, cx.caps.no_slot_lock) {
        (SlotLock::Lock | SlotLock::Stopped | SlotLock::Would, Some(why)) => {
            ("skipped", format!("slot {} NOT locked: {why}", cx.slot))
        }
        _ => plan.report(cx.slot),
    }
}

/// Locks the identity slot where the profile makes it Lockable and the transport can.
fn key_lock<B: Board + ?Sized>(
    cx: &Ctx<'_, '_>,
    board: &mut B,
    out: &mut Outcome,
    wanted: &ConfigZone,
) -> Result<(), ProvisionError> {
    let slot = cx.slot;
    let now = cx.chip("read config", board.read_config())?;
    let plan = ownership::slot_lock_plan(wanted, &now, slot, cx.job);
    if plan == SlotLock::Lock && cx.caps.no_slot_lock.is_none() {
        cx.progress("locking the key slot");
        cx.chip("lock slot", board.lock_slot(slot))?;
        let after = cx.chip("read back slot lock", board.read_config())?;
        if !ownership::key_slot_locked(&after, slot) {
            let detail = format!("after Lock(slot {slot}) the slot is not locked");
            return Err(cx.failed("lock slot", detail));
        }
    }
    let (action, detail) = slot_lock_report(cx, plan);
    cx.step(out, "key lock", action, detail);
    if plan == SlotLock::Stopped && cx.caps.no_slot_lock.is_none() {
        out.status = "needs-lock";
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_in_clear_need_the_flag_that_names_the_risk() {
        let job = Job {
            id: "salon-1".into(),
            room: "salon".into(),
            profile_name: "climat".into(),
            key_source: KeySource::Host,
            lock: true,
            dry_run: false,
            reissue: false,
            takeover: false,
        };
        let e = check_key_path(&job, Some(false)).expect_err("refused");
        assert!(e.to_string().contains(PLAINTEXT_FLAG));
        assert!(e.to_string().contains("IN CLEAR"));
        assert!(check_key_path(&job, Some(true)).is_ok());
        assert!(check_key_path(&job, None).is_ok());
        let chip = Job {
            key_source: KeySource::Chip,
            ..job
        };
        assert!(check_key_path(&chip, Some(false)).is_ok());
    }
}
