//! LoRa link manifests (radio parameters, link key, node addresses, topic table) consumed by
//! `gateway` (the sender on Pi #1) and `lora-link rx` (the receiver on Pi #2).
//!
//! One schema serves both roles; [`LinkRole`] says which side a file describes. The
//! provisioner builds a [`LinkManifest`] in memory and writes it with [`LinkManifest::write`]
//! (mode 0600, since it may carry the link key); the daemons read it with
//! [`LinkManifest::load`], which reports precise errors (file, line, field, what was expected)
//! and refuses a key file that group or others can read.
//!
//! ```toml
//! version = 1
//! role = "receiver"
//! state_dir = "/var/lib/lora-link"
//!
//! [node]
//! name = "pi2"
//! address = 1
//!
//! [[peers]]
//! name = "pi1-gateway"
//! address = 10
//!
//! # A receiver fed by several gateways holds one key per gateway (chosen by the frame's
//! # FROM), and during a rotation two, the old one with the time it is retired at:
//! [[peers.keys]]
//! id = 2
//! file = "keys/pi1-gateway-2.key"
//!
//! [[peers.keys]]
//! id = 1
//! file = "keys/pi1-gateway-1.key"
//! retire_at = 1767225600   # Unix seconds; after it, frames under key 1 are rejected
//!
//! [radio]
//! frequency_mhz = 868.0
//! spreading_factor = 7
//! bandwidth_hz = 125000
//! coding_rate = "4/5"
//!
//! [key]
//! hex = "000102030405060708090a0b0c0d0e0f"
//!
//! [[topics]]
//! index = 0
//! topic = "maison/salon/temperature"
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{FieldPath, describe_toml_error, locate};

/// Version of the link manifest schema this code reads and writes.
pub const LINK_MANIFEST_VERSION: u32 = 1;
/// Highest topic index that travels as a one-byte index on air (indices are 0..=127).
pub const MAX_TOPIC_INDEX: u8 = 127;
/// Longest topic (bytes) accepted in the topic table; also the longest inline topic on air.
pub const MAX_TOPIC_LEN: usize = 127;
/// RadioHead broadcast address.
pub const BROADCAST_ADDRESS: u8 = 0xFF;

/// Which side of the link a manifest describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkRole {
    /// Pi #1: the MQTT subscriber that transmits frames (`gateway`).
    Gateway,
    /// Pi #2: the receiver that verifies and delivers records (`lora-link rx`).
    Receiver,
}

/// A LoRa link manifest: everything `gateway` or `lora-link rx` needs, and nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkManifest {
    /// Schema version, must be [`LINK_MANIFEST_VERSION`].
    pub version: u32,
    /// Gateway (sender) or receiver.
    pub role: LinkRole,
    /// Directory holding the counter lease (sender) or replay state (receiver). Must survive
    /// reboots: losing it on the sender side would reuse counters, on the receiver side it
    /// would accept replays.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// This node.
    pub node: Node,
    /// The other ends: for a gateway, the first peer is the destination of its frames; for a
    /// receiver, the senders whose frames it accepts.
    pub peers: Vec<Peer>,
    /// Radio parameters; both sides must agree on frequency, SF, BW (CR and CRC travel in the
    /// LoRa header).
    #[serde(default)]
    pub radio: RadioParams,
    /// The 16-byte link key, inline or in a separate file: a gateway's sending key, or the
    /// key of a receiver's peers that list no `keys` of their own. A receiver whose every
    /// peer lists its keys has none (`[key]` absent).
    #[serde(default, skip_serializing_if = "KeySource::is_empty")]
    pub key: KeySource,
    /// Id of `key` (its generation: 1, then 2 after a rotation...). Its low bit travels in
    /// every frame's FLAGS (the key phase), so the receiver picks the right one of the two
    /// keys it holds during a rotation window.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_id: u32,
    /// Topics that travel as a one-byte index; other topics travel inline.
    #[serde(default)]
    pub topics: Vec<TopicEntry>,
    /// Simulated air (only for `backend = "emulated"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub air: Option<AirParams>,
    /// MQTT side of the node: what the gateway subscribes to, where the receiver republishes.
    /// Optional: `lora-link rx` prints JSON lines when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt: Option<MqttParams>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/lora-link")
}

/// This node's name and RadioHead address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Human-readable name (device id in the provisioner's ledger).
    pub name: String,
    /// RadioHead address (0..=254; 255 is broadcast).
    pub address: u8,
}

/// Another node of the link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// Human-readable name.
    pub name: String,
    /// RadioHead address (0..=254; a gateway may send to 255 = broadcast).
    pub address: u8,
    /// Receiver only: this sender's link keys (one, or two during a rotation window). Empty:
    /// the manifest's `[key]` (with `key_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<PeerKey>,
}

impl Peer {
    /// A peer that uses the manifest's `[key]`.
    pub fn new(name: impl Into<String>, address: u8) -> Self {
        Self {
            name: name.into(),
            address,
            keys: Vec::new(),
        }
    }
}

/// One of a sender's link keys in a receiver manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerKey {
    /// Key id (generation); its low bit is the key phase on air.
    pub id: u32,
    /// File holding the key as 32 hex digits (mode 0600; relative to the manifest).
    pub file: PathBuf,
    /// Unix time (seconds) from which frames under this key are rejected: the end of a
    /// rotation window. Absent: the key does not expire.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire_at: Option<u64>,
}

/// A resolved link key of a sender, as the receiver uses it.
#[derive(Debug, Clone)]
pub struct LoadedKey {
    /// Key id (generation).
    pub id: u32,
    /// The key.
    pub key: LinkKey,
    /// Unix time (seconds) from which it is retired.
    pub retire_at: Option<u64>,
}

/// Which radio driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RadioBackend {
    /// The real SX127x on SPI (Dragino HAT), `sx127x_lora` on `rppal` (feature `rpi`).
    #[default]
    Sx127x,
    /// The emulated SX1276 attached to a `lora-link air` hub (see [`AirParams`]).
    Emulated,
}

/// LoRa spreading factor, 7..=12 (SF6 needs implicit header, which `sx127x_lora` breaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct SpreadingFactor(u8);

impl SpreadingFactor {
    /// The value 7..=12.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<u8> for SpreadingFactor {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        if (7..=12).contains(&v) {
            Ok(Self(v))
        } else {
            Err(format!("expected a spreading factor 7..=12, found {v}"))
        }
    }
}

impl From<SpreadingFactor> for u8 {
    fn from(v: SpreadingFactor) -> u8 {
        v.0
    }
}

/// LoRa bandwidth: 125, 250 or 500 kHz (given in Hz).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub struct BandwidthHz(u32);

impl BandwidthHz {
    /// The bandwidth in Hz.
    pub fn get(self) -> u32 {
        self.0
    }
}

impl TryFrom<u32> for BandwidthHz {
    type Error = String;
    fn try_from(v: u32) -> Result<Self, String> {
        match v {
            125_000 | 250_000 | 500_000 => Ok(Self(v)),
            _ => Err(format!(
                "expected a bandwidth of 125000, 250000 or 500000 (Hz), found {v}"
            )),
        }
    }
}

impl From<BandwidthHz> for u32 {
    fn from(v: BandwidthHz) -> u32 {
        v.0
    }
}

/// LoRa coding rate 4/5..4/8, written `"4/5"` in the manifest; [`CodingRate::denominator`]
/// gives 5..=8.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CodingRate(u8);

impl CodingRate {
    /// Coding rate 4/`denominator`, denominator 5..=8.
    pub fn new(denominator: u8) -> Option<Self> {
        (5..=8).contains(&denominator).then_some(Self(denominator))
    }
    /// The denominator 5..=8.
    pub fn denominator(self) -> u8 {
        self.0
    }
}

impl TryFrom<String> for CodingRate {
    type Error = String;
    fn try_from(v: String) -> Result<Self, String> {
        match v.trim() {
            "4/5" => Ok(Self(5)),
            "4/6" => Ok(Self(6)),
            "4/7" => Ok(Self(7)),
            "4/8" => Ok(Self(8)),
            other => Err(format!(
                "expected a coding rate \"4/5\", \"4/6\", \"4/7\" or \"4/8\", found {other:?}"
            )),
        }
    }
}

impl From<CodingRate> for String {
    fn from(v: CodingRate) -> String {
        format!("4/{}", v.0)
    }
}

/// Radio parameters. Defaults: 868.0 MHz, SF7, 125 kHz, 4/5, CRC on, preamble 8, 14 dBm on
/// PA_BOOST, sync word 0x12 (RadioHead's), Dragino HAT pins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RadioParams {
    /// Driver: the real SX127x or the emulated one.
    pub backend: RadioBackend,
    /// Carrier frequency in MHz (868.0 lies in EU868 sub-band g1, 1 % duty cycle).
    pub frequency_mhz: f64,
    /// Spreading factor 7..=12.
    pub spreading_factor: SpreadingFactor,
    /// Bandwidth in Hz: 125000, 250000 or 500000.
    pub bandwidth_hz: BandwidthHz,
    /// Coding rate "4/5".."4/8".
    pub coding_rate: CodingRate,
    /// Payload CRC; must stay on (corrupted frames are caught at the PHY and counted).
    pub crc: bool,
    /// Preamble length in symbols (6..=65535).
    pub preamble: u16,
    /// Transmit power in dBm (2..=20 on PA_BOOST, 0..=14 on RFO).
    pub tx_power_dbm: i8,
    /// Use the PA_BOOST pin (RFM95/Dragino HAT) rather than RFO.
    pub pa_boost: bool,
    /// Duty-cycle limit in percent; by default the EU868 sub-band's limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duty_cycle_percent: Option<f64>,
    /// Wiring of the SX127x (BCM GPIO numbers, SPI bus).
    pub pins: Pins,
}

impl Default for RadioParams {
    fn default() -> Self {
        Self {
            backend: RadioBackend::Sx127x,
            frequency_mhz: 868.0,
            spreading_factor: SpreadingFactor(7),
            bandwidth_hz: BandwidthHz(125_000),
            coding_rate: CodingRate(5),
            crc: true,
            preamble: 8,
            tx_power_dbm: 14,
            pa_boost: true,
            duty_cycle_percent: None,
            pins: Pins::default(),
        }
    }
}

impl RadioParams {
    /// Carrier frequency in Hz (rounded to the nearest Hz).
    pub fn frequency_hz(&self) -> u32 {
        (self.frequency_mhz * 1_000_000.0).round() as u32
    }
}

/// SX127x wiring, BCM numbering. Defaults: Dragino LoRa/GPS HAT (CS GPIO25, RESET GPIO17,
/// DIO0 GPIO4) on SPI0 at 8 MHz.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pins {
    /// Chip select (NSS), driven as a plain GPIO.
    pub cs: u8,
    /// RESET line.
    pub reset: u8,
    /// DIO0 (RxDone/TxDone interrupt line).
    pub dio0: u8,
    /// SPI bus number (0 = SPI0).
    pub spi_bus: u8,
    /// SPI clock in Hz.
    pub spi_clock_hz: u32,
}

impl Default for Pins {
    fn default() -> Self {
        Self {
            cs: 25,
            reset: 17,
            dio0: 4,
            spi_bus: 0,
            spi_clock_hz: 8_000_000,
        }
    }
}

/// Where the 16-byte link key is: inline hex (then the manifest itself is secret) or a file
/// holding the hex (relative paths are relative to the manifest's directory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySource {
    /// The key as 32 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    /// A file containing the key as 32 hex digits (mode 0600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

impl KeySource {
    /// Neither inline nor in a file (a receiver whose peers list their own keys).
    pub fn is_empty(&self) -> bool {
        self.hex.is_none() && self.file.is_none()
    }
}

/// A topic with its on-air index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicEntry {
    /// Index 0..=127, sent as one byte instead of the topic.
    pub index: u8,
    /// The exact MQTT topic (no wildcards).
    pub topic: String,
}

/// The simulated air of the emulated backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AirParams {
    /// UDP address of the `lora-link air` hub; loopback only.
    pub hub: SocketAddr,
}

/// MQTT connection of the node (used by `gateway`, and by `lora-link rx` to republish).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttParams {
    /// Broker host name (also the TLS server name).
    pub host: String,
    /// Broker port (8883 by default).
    #[serde(default = "default_mqtt_port")]
    pub port: u16,
    /// MQTT client id: the CN of `cert_file`, the node's identity. The broker of `emit broker`
    /// replaces any other client id by that CN (`use_username_as_clientid`), so `lora-link rx`
    /// refuses a manifest where they differ.
    pub client_id: String,
    /// CA certificate (PEM) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// This node's client certificate (PEM).
    pub cert_file: PathBuf,
    /// This node's private key (PEM, mode 0600).
    pub key_file: PathBuf,
    /// Gateway: topic filters to subscribe to (`+` and `#` allowed).
    #[serde(default)]
    pub filters: Vec<String>,
    /// QoS used for subscriptions / republishing (0, 1 or 2).
    #[serde(default)]
    pub qos: u8,
}

fn default_mqtt_port() -> u16 {
    8883
}

/// The 16-byte AES-128 link key. Debug never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKey(pub [u8; 16]);

impl fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkKey(<secret>)")
    }
}

impl LinkKey {
    /// Parses 32 hex digits (surrounding whitespace ignored).
    pub fn from_hex(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bytes = hex::decode(s).map_err(|e| format!("expected 32 hex digits: {e}"))?;
        let arr: [u8; 16] = bytes.try_into().map_err(|b: Vec<u8>| {
            format!("expected 16 bytes (32 hex digits), found {} bytes", b.len())
        })?;
        Ok(Self(arr))
    }
    /// The key as 32 lowercase hex digits (for writing a key file).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

/// A loaded manifest together with its resolved key.
#[derive(Debug, Clone)]
pub struct LoadedLink {
    /// The manifest as written.
    pub manifest: LinkManifest,
    /// The link key `[key]`, read from inline hex or the key file (absent only in a receiver
    /// manifest whose every peer lists its keys).
    pub key: Option<LinkKey>,
    /// Receiver: the keys of each sender (by address), `[key]` for peers without their own.
    pub peer_keys: std::collections::BTreeMap<u8, Vec<LoadedKey>>,
    /// The manifest file it was loaded from.
    pub path: PathBuf,
}

/// Why a link manifest could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkManifestError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown field, wrong type or out-of-range value.
    #[error("{file}:{line}:{column}: field `{field}`: {expected}")]
    Invalid {
        /// The file.
        file: PathBuf,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// Dotted field path, e.g. `radio.spreading_factor` (may be `?` when unknown).
        field: String,
        /// What was expected (and what was found).
        expected: String,
    },
    /// A secret file that group or others can read.
    #[error(
        "{file}: holds the link key but is readable by group or others (mode {mode:o}): run `chmod 600 {file}`"
    )]
    InsecureKeyFile {
        /// The file.
        file: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl LinkManifestError {
    fn invalid(file: &Path, src: &str, field: &str, expected: impl Into<String>) -> Self {
        Self::invalid_at(file, src, &FieldPath::parse(field), expected)
    }

    /// An error at `field` (located in its own table of `src`, e.g. the second `[[peers]]`).
    fn invalid_at(file: &Path, src: &str, field: &FieldPath, expected: impl Into<String>) -> Self {
        Self::from_location(
            file,
            locate(&file.display().to_string(), src, field),
            expected.into(),
        )
    }

    fn from_location(file: &Path, at: crate::Location, expected: String) -> Self {
        Self::Invalid {
            file: file.to_path_buf(),
            line: at.line.unwrap_or(0),
            column: at.column.unwrap_or(0),
            field: at.field.unwrap_or_else(|| "?".into()),
            expected,
        }
    }
}

impl LinkManifest {
    /// A manifest with defaults for everything but the nodes and the key.
    pub fn new(role: LinkRole, node: Node, peers: Vec<Peer>, key: KeySource) -> Self {
        Self {
            version: LINK_MANIFEST_VERSION,
            role,
            state_dir: default_state_dir(),
            node,
            peers,
            radio: RadioParams::default(),
            key,
            key_id: 0,
            topics: Vec::new(),
            air: None,
            mqtt: None,
        }
    }

    /// Parses and validates manifest text; `file` is only used in error messages. The key is
    /// not resolved (see [`LinkManifest::load`]).
    pub fn parse(src: &str, file: &Path) -> Result<Self, LinkManifestError> {
        let manifest: LinkManifest = toml::from_str(src).map_err(|e| toml_error(file, src, &e))?;
        manifest.validate(src, file)?;
        Ok(manifest)
    }

    /// Loads a manifest file and its key. Refuses a key-bearing file (the manifest with an
    /// inline key, or the key file) that group or others can read.
    pub fn load(path: &Path) -> Result<LoadedLink, LinkManifestError> {
        let src = read_text(path)?;
        let manifest = Self::parse(&src, path)?;
        let key = match (&manifest.key.hex, &manifest.key.file) {
            (Some(h), None) => {
                check_secret_mode(path)?;
                Some(
                    LinkKey::from_hex(h)
                        .map_err(|e| LinkManifestError::invalid(path, &src, "key.hex", e))?,
                )
            }
            (None, Some(f)) => Some(read_key_file(path, f, "key")?),
            // validate() allows no key only for receivers whose peers list their keys.
            _ => None,
        };
        let peer_keys = manifest.resolve_peer_keys(path, key.as_ref())?;
        Ok(LoadedLink {
            manifest,
            key,
            peer_keys,
            path: path.to_path_buf(),
        })
    }

    /// Each peer's keys: its own `keys`, else `[key]` with `key_id`.
    pub(crate) fn resolve_peer_keys(
        &self,
        path: &Path,
        key: Option<&LinkKey>,
    ) -> Result<std::collections::BTreeMap<u8, Vec<LoadedKey>>, LinkManifestError> {
        let mut out = std::collections::BTreeMap::new();
        for (i, p) in self.peers.iter().enumerate() {
            let keys = if p.keys.is_empty() {
                key.map(|k| LoadedKey {
                    id: self.key_id,
                    key: k.clone(),
                    retire_at: None,
                })
                .into_iter()
                .collect()
            } else {
                let mut v = Vec::new();
                for (j, k) in p.keys.iter().enumerate() {
                    v.push(LoadedKey {
                        id: k.id,
                        key: read_key_file(path, &k.file, &format!("peers[{i}].keys[{j}].file"))?,
                        retire_at: k.retire_at,
                    });
                }
                v
            };
            out.insert(p.address, keys);
        }
        Ok(out)
    }

    /// Renders the manifest as TOML (fails only for paths that are not UTF-8).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string_pretty(self)
    }

    /// Writes the manifest atomically with mode 0600 (it may carry the key).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let text = self
            .to_toml()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        write_secret(path, text.as_bytes())
    }

    /// The topic table as (index, topic) pairs.
    pub fn topic_pairs(&self) -> impl Iterator<Item = (u8, &str)> {
        self.topics.iter().map(|t| (t.index, t.topic.as_str()))
    }

    /// Destination address of a gateway's frames: the first peer.
    pub fn destination(&self) -> Option<u8> {
        self.peers.first().map(|p| p.address)
    }

    fn validate(&self, src: &str, file: &Path) -> Result<(), LinkManifestError> {
        self.validate_within(src, file, &FieldPath::root())
    }

    /// Validates a manifest written at `prefix` of `src` (a gateway manifest's
    /// `[link.embedded]`): errors name the lines of `src` and the full field path.
    pub(crate) fn validate_within(
        &self,
        src: &str,
        file: &Path,
        prefix: &FieldPath,
    ) -> Result<(), LinkManifestError> {
        let bad = |field: &str, expected: String| {
            let path = prefix.clone().join(&FieldPath::parse(field));
            LinkManifestError::invalid_at(file, src, &path, expected)
        };
        if self.version != LINK_MANIFEST_VERSION {
            return Err(bad(
                "version",
                format!(
                    "expected schema version {LINK_MANIFEST_VERSION}, found {}",
                    self.version
                ),
            ));
        }
        if self.node.address == BROADCAST_ADDRESS {
            return Err(bad(
                "node.address",
                "expected a node address 0..=254 (255 is broadcast)".into(),
            ));
        }
        if self.node.name.trim().is_empty() {
            return Err(bad("node.name", "expected a non-empty name".into()));
        }
        if self.peers.is_empty() {
            return Err(bad(
                "peers",
                "expected at least one [[peers]] entry (the destination or the accepted senders)"
                    .into(),
            ));
        }
        for (i, p) in self.peers.iter().enumerate() {
            if p.address == self.node.address {
                return Err(bad(
                    &format!("peers[{i}].address"),
                    format!("peer #{i} has this node's own address {}", p.address),
                ));
            }
            if p.address == BROADCAST_ADDRESS && self.role == LinkRole::Receiver {
                return Err(bad(
                    &format!("peers[{i}].address"),
                    "a receiver's peers are senders: expected 0..=254, found 255".into(),
                ));
            }
            if self.peers[..i].iter().any(|q| q.address == p.address) {
                return Err(bad(
                    &format!("peers[{i}].address"),
                    format!("duplicate peer address {}", p.address),
                ));
            }
        }
        self.validate_peer_keys(&bad)?;
        let r = &self.radio;
        if !(r.frequency_mhz.is_finite() && (137.0..=1020.0).contains(&r.frequency_mhz)) {
            return Err(bad(
                "radio.frequency_mhz",
                format!(
                    "expected a frequency in MHz within the SX1276 range 137..1020 (868.0 in EU868), found {}",
                    r.frequency_mhz
                ),
            ));
        }
        if !r.crc {
            return Err(bad(
                "radio.crc",
                "expected true: the payload CRC must stay on (RadioHead drops frames without it)"
                    .into(),
            ));
        }
        if r.preamble < 6 {
            return Err(bad(
                "radio.preamble",
                format!("expected 6..=65535 symbols, found {}", r.preamble),
            ));
        }
        let (lo, hi) = if r.pa_boost { (2, 20) } else { (0, 14) };
        if !(lo..=hi).contains(&r.tx_power_dbm) {
            return Err(bad(
                "radio.tx_power_dbm",
                format!(
                    "expected {lo}..={hi} dBm on {}, found {}",
                    if r.pa_boost { "PA_BOOST" } else { "RFO" },
                    r.tx_power_dbm
                ),
            ));
        }
        if let Some(dc) = r.duty_cycle_percent
            && !(dc.is_finite() && dc > 0.0 && dc <= 100.0)
        {
            return Err(bad(
                "radio.duty_cycle_percent",
                format!("expected a percentage in (0, 100], found {dc}"),
            ));
        }
        let own_keys = self.peers.iter().all(|p| !p.keys.is_empty());
        match (&self.key.hex, &self.key.file) {
            (Some(h), None) => {
                LinkKey::from_hex(h).map_err(|e| bad("key.hex", e))?;
            }
            (None, Some(_)) => {}
            (None, None) if self.role == LinkRole::Receiver && own_keys => {}
            _ => {
                return Err(bad(
                    "key",
                    "expected exactly one of `hex = \"<32 hex digits>\"` or `file = \"<path>\"`"
                        .into(),
                ));
            }
        }
        for (i, t) in self.topics.iter().enumerate() {
            if t.index > MAX_TOPIC_INDEX {
                return Err(bad(
                    &format!("topics[{i}].index"),
                    format!(
                        "expected a topic index 0..={MAX_TOPIC_INDEX}, found {}",
                        t.index
                    ),
                ));
            }
            if let Err(e) = check_topic(&t.topic) {
                return Err(bad(
                    &format!("topics[{i}].topic"),
                    format!("topic #{i}: {e}"),
                ));
            }
            if self.topics[..i].iter().any(|u| u.index == t.index) {
                return Err(bad(
                    &format!("topics[{i}].index"),
                    format!("duplicate topic index {}", t.index),
                ));
            }
            if self.topics[..i].iter().any(|u| u.topic == t.topic) {
                return Err(bad(
                    &format!("topics[{i}].topic"),
                    format!("duplicate topic {:?}", t.topic),
                ));
            }
        }
        if r.backend == RadioBackend::Emulated && self.air.is_none() {
            return Err(bad(
                "air",
                "expected an [air] table with `hub = \"127.0.0.1:PORT\"` for backend = \"emulated\""
                    .into(),
            ));
        }
        if let Some(air) = &self.air
            && !air.hub.ip().is_loopback()
        {
            return Err(bad(
                "air.hub",
                format!(
                    "expected a loopback address (the simulated air never leaves this machine), found {}",
                    air.hub
                ),
            ));
        }
        if let Some(m) = &self.mqtt
            && m.qos > 2
        {
            return Err(bad(
                "mqtt.qos",
                format!("expected 0, 1 or 2, found {}", m.qos),
            ));
        }
        Ok(())
    }
}

impl LinkManifest {
    /// Per-peer keys: receivers only, at most two per peer (the current one and the one being
    /// retired), with different key phases (low bits of their ids) so a frame names one.
    fn validate_peer_keys(
        &self,
        bad: &dyn Fn(&str, String) -> LinkManifestError,
    ) -> Result<(), LinkManifestError> {
        for (i, p) in self.peers.iter().enumerate() {
            if !p.keys.is_empty() && self.role == LinkRole::Gateway {
                return Err(bad(
                    &format!("peers[{i}].keys"),
                    "a gateway sends under its own `[key]`; per-peer keys are for receivers".into(),
                ));
            }
            if p.keys.len() > 2 {
                return Err(bad(
                    &format!("peers[{i}].keys"),
                    format!(
                        "expected one key, or two during a rotation, found {}",
                        p.keys.len()
                    ),
                ));
            }
            if let [a, b] = p.keys.as_slice()
                && a.id % 2 == b.id % 2
            {
                return Err(bad(
                    &format!("peers[{i}].keys[1].id"),
                    format!(
                        "keys {} and {} have the same key phase (low bit): retire the older one first",
                        a.id, b.id
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Checks that a string can be a concrete MQTT topic in the topic table.
pub fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("expected a non-empty topic".into());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "expected at most {MAX_TOPIC_LEN} bytes, found {}",
            topic.len()
        ));
    }
    if topic.contains(['+', '#', '\0']) {
        return Err("expected a concrete topic (no `+`, `#` or NUL)".into());
    }
    Ok(())
}

/// Largest link manifest or key file read.
const MAX_LINK_FILE_LEN: u64 = 256 * 1024;

fn read_text(path: &Path) -> Result<String, LinkManifestError> {
    safe_fs::read_limited_string(path, MAX_LINK_FILE_LEN).map_err(|source| LinkManifestError::Io {
        file: path.to_path_buf(),
        source,
    })
}

/// Reads a key file named in the manifest at `path` (relative to its directory), refusing one
/// that group or others can read.
fn read_key_file(path: &Path, f: &Path, field: &str) -> Result<LinkKey, LinkManifestError> {
    let kf = if f.is_relative() {
        path.parent().unwrap_or(Path::new(".")).join(f)
    } else {
        f.to_path_buf()
    };
    let text = read_text(&kf)?;
    check_secret_mode(&kf)?;
    LinkKey::from_hex(&text).map_err(|e| LinkManifestError::Invalid {
        file: kf.clone(),
        line: 1,
        column: 1,
        field: field.into(),
        expected: e,
    })
}

#[cfg(unix)]
fn check_secret_mode(path: &Path) -> Result<(), LinkManifestError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| LinkManifestError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(LinkManifestError::InsecureKeyFile {
            file: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_secret_mode(_path: &Path) -> Result<(), LinkManifestError> {
    Ok(())
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename) with mode 0600.
/// Used for manifests and key files.
pub fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    safe_fs::replace(path, bytes, &safe_fs::Replace::new(0o600))
}

/// Turns a toml error into file/line/column/field/expected (the field path as in
/// [`crate::error::parse_toml`]: `peers[1].address`, `radio.spreading_factor`).
fn toml_error(file: &Path, src: &str, e: &toml::de::Error) -> LinkManifestError {
    let (at, message) = describe_toml_error(&file.display().to_string(), src, e);
    LinkManifestError::from_location(file, at, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1
role = "receiver"
state_dir = "/tmp/x"

[node]
name = "pi2"
address = 1

[[peers]]
name = "pi1"
address = 10

[radio]
frequency_mhz = 868.0
spreading_factor = 7
bandwidth_hz = 125000
coding_rate = "4/5"

[key]
hex = "000102030405060708090a0b0c0d0e0f"

[[topics]]
index = 0
topic = "maison/salon/temperature"
"#;

    fn parse(s: &str) -> Result<LinkManifest, LinkManifestError> {
        LinkManifest::parse(s, Path::new("r.toml"))
    }

    #[test]
    fn good_manifest_has_hat_defaults() {
        let m = parse(GOOD).expect("parses");
        assert_eq!(m.radio.pins.cs, 25);
        assert_eq!(m.radio.pins.reset, 17);
        assert_eq!(m.radio.pins.dio0, 4);
        assert_eq!(m.radio.preamble, 8);
        assert!(m.radio.crc);
        assert_eq!(m.radio.frequency_hz(), 868_000_000);
        let again = parse(&m.to_toml().expect("toml")).expect("round trip");
        assert_eq!(again, m);
    }

    #[test]
    fn out_of_range_sf_names_line_and_field() {
        let bad = GOOD.replace("spreading_factor = 7", "spreading_factor = 13");
        let e = parse(&bad).expect_err("rejects");
        let s = e.to_string();
        assert!(s.contains("r.toml:16:"), "{s}");
        assert!(s.contains("radio.spreading_factor"), "{s}");
        assert!(s.contains("7..=12"), "{s}");
    }

    #[test]
    fn semantic_errors_are_located() {
        let bad = GOOD.replace("address = 10", "address = 1");
        let s = parse(&bad).expect_err("own address").to_string();
        assert!(s.contains("r.toml:12:1: field `peers[0].address`"), "{s}");
        // The second `[[peers]]` is named and located, not the first one's `address`.
        let bad = GOOD.replace(
            "address = 10\n",
            "address = 10\n\n[[peers]]\nname = \"pi3\"\naddress = 10\n",
        );
        let s = parse(&bad).expect_err("duplicate").to_string();
        assert!(
            s.contains("r.toml:16:1: field `peers[1].address`") && s.contains("duplicate"),
            "{s}"
        );
        let bad = GOOD.replace("address = 10\n", "address = \"10\"\n");
        let s = parse(&bad).expect_err("type").to_string();
        assert!(
            s.contains("r.toml:12:11: field `peers[0].address`: expected an integer 0..=255, found a string \"10\""),
            "{s}"
        );
        let bad = GOOD.replace("0e0f\"", "0e\"");
        let s = parse(&bad).expect_err("short key").to_string();
        assert!(
            s.contains("r.toml:21:") && s.contains("key.hex") && s.contains("16 bytes"),
            "{s}"
        );
        let bad = GOOD.replace("coding_rate = \"4/5\"", "coding_rate = \"4/9\"");
        let s = parse(&bad).expect_err("cr").to_string();
        assert!(s.contains("radio.coding_rate") && s.contains("4/8"), "{s}");
        let bad = GOOD.replace("[[topics]]", "[[topics]]\nbogus = 1");
        let s = parse(&bad).expect_err("unknown").to_string();
        assert!(s.contains("topics") && s.contains("bogus"), "{s}");
    }

    #[test]
    fn per_peer_keys_are_for_receivers_two_at_most_with_different_phases() {
        let own = GOOD
            .replace("[key]\nhex = \"000102030405060708090a0b0c0d0e0f\"\n", "")
            .replace(
                "address = 10\n",
                "address = 10\n[[peers.keys]]\nid = 2\nfile = \"k2\"\n[[peers.keys]]\nid = 1\nfile = \"k1\"\nretire_at = 1700000000\n",
            );
        let m = parse(&own).expect("a receiver with its peers' keys needs no [key]");
        assert_eq!(m.peers[0].keys.len(), 2);
        assert_eq!(m.peers[0].keys[1].retire_at, Some(1_700_000_000));
        assert_eq!(parse(&m.to_toml().expect("toml")).expect("round trip"), m);
        let same_phase = own.replace("id = 1\n", "id = 4\n");
        let s = parse(&same_phase).expect_err("same phase").to_string();
        assert!(
            s.contains("peers[0].keys[1].id") && s.contains("key phase"),
            "{s}"
        );
        let three = own.replace(
            "retire_at = 1700000000\n",
            "retire_at = 1700000000\n[[peers.keys]]\nid = 3\nfile = \"k3\"\n",
        );
        let s = parse(&three).expect_err("three keys").to_string();
        assert!(s.contains("two during a rotation"), "{s}");
        let gateway = own.replace("role = \"receiver\"", "role = \"gateway\"");
        assert!(parse(&gateway).is_err(), "a gateway sends under its [key]");
        let none = GOOD.replace("[key]\nhex = \"000102030405060708090a0b0c0d0e0f\"\n", "");
        let s = parse(&none).expect_err("no key at all").to_string();
        assert!(s.contains("exactly one of"), "{s}");
    }

    #[cfg(unix)]
    #[test]
    fn key_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("r.toml");
        std::fs::write(&p, GOOD).expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = LinkManifest::load(&p).expect_err("insecure");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let l = LinkManifest::load(&p).expect("loads");
        assert_eq!(l.key.as_ref().map(|k| k.0[15]), Some(0x0f));
        // written by the provisioner: 0600 and loadable without edits
        let q = dir.path().join("w.toml");
        l.manifest.write(&q).expect("write");
        let mode = std::fs::metadata(&q).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        LinkManifest::load(&q).expect("reload");
    }
}
