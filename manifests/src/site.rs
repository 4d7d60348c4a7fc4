//! The site file: one TOML file that describes a network (broker names and port, topic
//! layout, device profiles by name, gateway and receiver identities). `provisioner init`
//! copies it into the home; every later command reads it from there.
//!
//! ```
//! let site = manifests::site::Site::from_toml_str("site.toml", manifests::site::EXAMPLE_SMART_HOME)
//!     .expect("the example site loads");
//! assert_eq!(site.broker.port, 8883);
//! assert!(site.profiles.contains_key("climat"));
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::device::Quantity;
use crate::error::{Error, FieldPath, locate, parse_toml, read_text};
use crate::topic::{
    check_identity, check_topic_filter, check_topic_name, expand_template, parse_template,
};

/// The example site shipped with the crate (`manifests/examples/smart-home.toml`).
pub const EXAMPLE_SMART_HOME: &str = include_str!("../examples/smart-home.toml");

/// Largest site file accepted.
pub const MAX_SITE_LEN: usize = 256 * 1024;

/// A whole site.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    /// Name and CA naming.
    pub site: SiteInfo,
    /// The MQTT broker (Pi #1).
    pub broker: Broker,
    /// Topic layout.
    pub topics: Topics,
    /// Device profiles by name.
    #[serde(default)]
    pub profiles: BTreeMap<String, DeviceProfile>,
    /// Gateways by id (Pi #1 forwarders).
    #[serde(default)]
    pub gateways: BTreeMap<String, Gateway>,
    /// LoRa receivers by id (Pi #2).
    #[serde(default)]
    pub receivers: BTreeMap<String, Receiver>,
    /// Lifetimes and renewal points of the broker's, clients', gateways' and receivers'
    /// certificates (devices: in their profile).
    #[serde(default, skip_serializing_if = "Lifetimes::is_empty")]
    pub lifetimes: Lifetimes,
}

/// `[lifetimes]`: one optional table per kind of certificate that is not a device's.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifetimes {
    /// The broker (`server issue`, `cert sign --profile server`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Lifetime>,
    /// Clients signed with `cert sign --profile client`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<Lifetime>,
    /// Gateways (`emit gateway`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Lifetime>,
    /// Receivers (`emit receiver`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receiver: Option<Lifetime>,
}

impl Lifetimes {
    fn is_empty(&self) -> bool {
        *self == Lifetimes::default()
    }

    /// Each kind with its setting.
    pub fn by_kind(&self) -> [(&'static str, Option<&Lifetime>); 4] {
        [
            ("server", self.server.as_ref()),
            ("client", self.client.as_ref()),
            ("gateway", self.gateway.as_ref()),
            ("receiver", self.receiver.as_ref()),
        ]
    }
}

/// A certificate lifetime and its renewal point. Unset: `site.leaf_days`, and renewal at two
/// thirds of the lifetime.
///
/// The lifetime is `cert_days` or `lifetime`, a duration such as `"90d"`, `"12h"`, `"3m"` or
/// `"150s"` (a lifetime under a day is meant for demos and tests: `site check` says so); the
/// renewal point is `renew_at`, `renew_before_days` or `renew_before` (a duration).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lifetime {
    /// Days a new certificate is valid (1..3650).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_days: Option<u32>,
    /// How long a new certificate is valid, as a duration (instead of `cert_days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
    /// Renew this many days before expiry (fewer than the lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_days: Option<u32>,
    /// Renew this long before expiry, as a duration (shorter than the lifetime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// Renew at this fraction of the lifetime, `"N/M"` (default `"2/3"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<String>,
}

/// Where in its lifetime a certificate is renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RenewPoint {
    /// At `.0 / .1` of the lifetime.
    Fraction(u32, u32),
    /// This many days before expiry.
    DaysBefore(u32),
    /// This many seconds before expiry (`renew_before`).
    SecondsBefore(u64),
}

/// Seconds in a day.
const DAY_S: u64 = 86_400;

/// The longest lifetime or renewal window, in seconds (3650 days, as `cert_days`).
const MAX_DURATION_S: u64 = 3650 * DAY_S;

/// Parses a duration of the site file strictly: a positive whole number and one unit, `s`,
/// `m` (minutes), `h` or `d`, nothing else (`"150s"`, `"3m"`, `"12h"`, `"90d"`), at most
/// 3650 days. Returns seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let expected = || {
        format!(
            "a duration such as \"150s\", \"3m\", \"12h\" or \"90d\" (a whole number > 0, one unit s, m, h or d, at most 3650d; got `{s}`)"
        )
    };
    let unit_at = s.len().checked_sub(1).ok_or_else(expected)?;
    let (n, unit) = s.split_at(unit_at);
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => DAY_S,
        _ => return Err(expected()),
    };
    if n.is_empty() || n.len() > 10 || !n.bytes().all(|b| b.is_ascii_digit()) || n.starts_with('0')
    {
        return Err(expected());
    }
    let n: u64 = n.parse().map_err(|_| expected())?;
    n.checked_mul(scale)
        .filter(|&v| v <= MAX_DURATION_S)
        .ok_or_else(expected)
}

/// A number of seconds as the site file would write it, in the largest exact unit.
pub fn format_duration(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % DAY_S == 0 => format!("{}d", s / DAY_S),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

impl Lifetime {
    /// The renewal point, if one is set (validated when the site was loaded).
    pub fn renew_point(&self) -> Option<RenewPoint> {
        if let Some(d) = self.renew_before_days {
            return Some(RenewPoint::DaysBefore(d));
        }
        if let Some(b) = &self.renew_before {
            return parse_duration(b).ok().map(RenewPoint::SecondsBefore);
        }
        let (n, d) = parse_fraction(self.renew_at.as_deref()?).ok()?;
        Some(RenewPoint::Fraction(n, d))
    }

    /// The lifetime in seconds: `lifetime`, else `cert_days`, else `leaf_days` (validated
    /// when the site was loaded).
    pub fn seconds(&self, leaf_days: u32) -> u64 {
        self.lifetime
            .as_deref()
            .and_then(|l| parse_duration(l).ok())
            .unwrap_or_else(|| u64::from(self.cert_days.unwrap_or(leaf_days)) * DAY_S)
    }

    /// A lifetime under a day: for demos and tests (`site check` warns about it).
    pub fn is_short(&self, leaf_days: u32) -> bool {
        self.seconds(leaf_days) < DAY_S
    }

    /// Checks the setting; `leaf_days` is the lifetime when neither `cert_days` nor
    /// `lifetime` is set. The error names the key at fault and what is expected.
    fn check(&self, leaf_days: u32) -> Result<(), (&'static str, String)> {
        if let Some(d) = self.cert_days
            && !(1..=3650).contains(&d)
        {
            return Err(("cert_days", format!("1..3650 days (got {d})")));
        }
        if let Some(l) = &self.lifetime {
            if self.cert_days.is_some() {
                return Err(("lifetime", "either lifetime or cert_days, not both".into()));
            }
            parse_duration(l).map_err(|e| ("lifetime", e))?;
        }
        let life = self.seconds(leaf_days);
        if let Some(b) = self.renew_before_days
            && (b == 0 || u64::from(b) * DAY_S >= life)
        {
            return Err((
                "renew_before_days",
                format!(
                    "1..{} days, fewer than the lifetime of {} (got {b})",
                    (life / DAY_S).saturating_sub(1),
                    format_duration(life)
                ),
            ));
        }
        if let Some(b) = &self.renew_before {
            if self.renew_before_days.is_some() {
                return Err((
                    "renew_before",
                    "either renew_before or renew_before_days, not both".into(),
                ));
            }
            let s = parse_duration(b).map_err(|e| ("renew_before", e))?;
            if s >= life {
                return Err((
                    "renew_before",
                    format!(
                        "a window shorter than the lifetime of {} (got `{b}`)",
                        format_duration(life)
                    ),
                ));
            }
        }
        if let Some(f) = &self.renew_at {
            if self.renew_before_days.is_some() || self.renew_before.is_some() {
                return Err((
                    "renew_at",
                    "either renew_at or renew_before(_days), not both".into(),
                ));
            }
            parse_fraction(f).map_err(|e| ("renew_at", e))?;
        }
        Ok(())
    }
}

/// Parses a renewal point `"N/M"`, 0 < N < M <= 1000 (e.g. `"2/3"`).
pub fn parse_fraction(s: &str) -> Result<(u32, u32), String> {
    let expected = || {
        format!(
            "a fraction N/M of the lifetime with 0 < N < M <= 1000, such as \"2/3\" (got `{s}`)"
        )
    };
    let (n, d) = s.split_once('/').ok_or_else(expected)?;
    let n: u32 = n.trim().parse().map_err(|_| expected())?;
    let d: u32 = d.trim().parse().map_err(|_| expected())?;
    if n == 0 || n >= d || d > 1000 {
        return Err(expected());
    }
    Ok((n, d))
}

/// Site naming.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteInfo {
    /// Short site name, used in the CA's name.
    pub name: String,
    /// Organisation in certificate subjects (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    /// Days a device or client certificate is valid (default 825, as easy-rsa).
    #[serde(default = "default_leaf_days")]
    pub leaf_days: u32,
    /// Days a CRL stays valid before it must be renewed (default 30).
    #[serde(default = "default_crl_days")]
    pub crl_days: u32,
    /// Signer id of a compressible issuing CA (4 upper-case hex digits, default `0001`):
    /// ends its name, and is what compressed device certificates name their signer by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_id: Option<String>,
}

fn default_leaf_days() -> u32 {
    825
}
fn default_crl_days() -> u32 {
    30
}

/// The broker's names and listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Broker {
    /// DNS names in the broker certificate's SAN; the first is the TLS server name devices use.
    #[serde(default)]
    pub dns: Vec<String>,
    /// IP addresses in the broker certificate's SAN.
    #[serde(default)]
    pub ip: Vec<IpAddr>,
    /// TLS listener port (default 8883).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Address devices connect to (default: the first DNS name, else the first IP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<String>,
}

fn default_port() -> u16 {
    8883
}

impl Broker {
    /// The TLS server name devices check the broker certificate against.
    pub fn server_name(&self) -> Option<String> {
        self.dns
            .first()
            .cloned()
            .or_else(|| self.ip.first().map(|ip| ip.to_string()))
    }

    /// The address devices connect to.
    pub fn connect_host(&self) -> Option<String> {
        self.connect.clone().or_else(|| self.server_name())
    }
}

/// Topic layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topics {
    /// Root level of every topic (`maison`).
    pub root: String,
    /// Rooms of the site, in the order they are used for new devices.
    #[serde(default)]
    pub rooms: Vec<String>,
}

/// Where a device's TLS key comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeySource {
    /// GenKey inside the chip: the key never exists outside it (default).
    #[default]
    Chip,
    /// Generated on the host, injected with an encrypted PrivWrite, then erased.
    Host,
}

/// A device profile: chip layout and MQTT behaviour shared by devices of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceProfile {
    /// Human description.
    #[serde(default)]
    pub description: String,
    /// Name of the chip configuration (see the `atecc` crate's profiles).
    #[serde(default = "default_chip")]
    pub chip: String,
    /// Slot holding the TLS private key.
    #[serde(default)]
    pub key_slot: u8,
    /// Slot holding the write key for encrypted writes.
    #[serde(default = "default_write_key_slot")]
    pub write_key_slot: u8,
    /// Key source.
    #[serde(default)]
    pub key_source: KeySource,
    /// Readings published, as topic templates with `{root}`, `{room}` and `{id}`, e.g.
    /// `{root}/{room}/temperature`.
    pub readings: Vec<ReadingTemplate>,
    /// Retained status topic template (optional).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_topic: Option<String>,
    /// QoS 0, 1 or 2.
    #[serde(default)]
    pub qos: u8,
    /// Retain readings.
    #[serde(default)]
    pub retain: bool,
    /// Keep-alive seconds (default 60).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u16,
    /// Clean session (default true).
    #[serde(default = "default_true")]
    pub clean_session: bool,
    /// Seconds between readings (default 30).
    #[serde(default = "default_interval")]
    pub interval_s: u32,
    /// Days a device certificate of this profile is valid (default: `site.leaf_days`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_days: Option<u32>,
    /// How long a device certificate of this profile is valid, as a duration such as `"3m"`
    /// (instead of `cert_days`; under a day is for demos and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<String>,
    /// Renew this many days before expiry (instead of `renew_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_days: Option<u32>,
    /// Renew this long before expiry, as a duration such as `"150s"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
    /// Renew at this fraction of the lifetime, `"N/M"` (default `"2/3"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at: Option<String>,
    /// Keep the identity in the chip as Microchip compressed certificates (see
    /// [`crate::site_compressed`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed: Option<crate::site_compressed::CompressedProfile>,
}

impl DeviceProfile {
    /// The profile's certificate lifetime and renewal point.
    pub fn lifetime(&self) -> Lifetime {
        Lifetime {
            cert_days: self.cert_days,
            lifetime: self.lifetime.clone(),
            renew_before_days: self.renew_before_days,
            renew_before: self.renew_before.clone(),
            renew_at: self.renew_at.clone(),
        }
    }
}

fn default_chip() -> String {
    "tls-device".into()
}
fn default_write_key_slot() -> u8 {
    4
}
fn default_keep_alive() -> u16 {
    60
}
fn default_true() -> bool {
    true
}
fn default_interval() -> u32 {
    30
}

/// One reading of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadingTemplate {
    /// Topic template.
    pub topic: String,
    /// Quantity.
    pub quantity: Quantity,
}

/// A gateway identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gateway {
    /// Topic filters the gateway subscribes to and forwards.
    pub subscribe: Vec<String>,
    /// The receiver it sends to.
    pub receiver: String,
}

/// A receiver identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receiver {
    /// Topic filters it may republish on its far-side broker.
    #[serde(default)]
    pub publish: Vec<String>,
}

/// Values substituted in a topic template.
pub struct TopicVars<'a> {
    /// The site's root level.
    pub root: &'a str,
    /// The device's room.
    pub room: &'a str,
    /// The device id.
    pub id: &'a str,
}

/// Expands `{root}`, `{room}` and `{id}` in a topic template, in one pass (a value is never
/// expanded again). [`Site::load`] has refused any other placeholder.
pub fn expand_topic(template: &str, vars: &TopicVars<'_>) -> String {
    expand_template(template, |name| match name {
        "root" => Some(vars.root),
        "room" => Some(vars.room),
        "id" => Some(vars.id),
        _ => None,
    })
}

impl Site {
    /// Loads and validates a site file.
    pub fn load(path: &Path) -> Result<Site, Error> {
        let text = read_text(path, MAX_SITE_LEN)?;
        Site::from_toml_str(&path.display().to_string(), &text)
    }

    /// Parses and validates site TOML; `file` names it in errors.
    pub fn from_toml_str(file: &str, text: &str) -> Result<Site, Error> {
        let site: Site = parse_toml(file, text)?;
        site.validate(file, text)?;
        Ok(site)
    }

    /// Renders the site back to TOML.
    pub fn to_toml(&self) -> Result<String, Error> {
        toml::to_string_pretty(self).map_err(|e| Error::Encode(e.to_string()))
    }

    /// A profile by name, or an error listing the known names.
    pub fn profile(&self, name: &str) -> Result<&DeviceProfile, String> {
        self.profiles.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.profiles.keys().map(String::as_str).collect();
            format!(
                "unknown profile `{name}`; this site defines: {}",
                known.join(", ")
            )
        })
    }

    /// What `site check` says without refusing: every lifetime under a day (meant for demos
    /// and tests: such certificates expire within hours unless renewal keeps up).
    pub fn warnings(&self) -> Vec<String> {
        let leaf = self.site.leaf_days;
        let short = |what: String, l: &Lifetime| {
            l.is_short(leaf).then(|| {
                format!(
                    "{what}: a lifetime of {} is under a day; it is meant for demos and tests",
                    format_duration(l.seconds(leaf))
                )
            })
        };
        let profiles = self
            .profiles
            .iter()
            .filter_map(|(name, p)| short(format!("profiles.{name}"), &p.lifetime()));
        let kinds = self
            .lifetimes
            .by_kind()
            .into_iter()
            .filter_map(|(kind, l)| short(format!("lifetimes.{kind}"), l?));
        profiles.chain(kinds).collect()
    }

    fn validate(&self, file: &str, text: &str) -> Result<(), Error> {
        // Semantic errors point at the line where the offending key is written, inside its
        // own table (`profiles.porte.qos` at the `qos` of `[profiles.porte]`).
        let invalid = |field: FieldPath, expected: String| Error::Invalid {
            at: locate(file, text, &field),
            expected,
        };
        let at = FieldPath::parse;
        check_identity(&self.site.name).map_err(|e| invalid(at("site.name"), e))?;
        if self.broker.dns.is_empty() && self.broker.ip.is_empty() {
            return Err(invalid(
                at("broker.dns"),
                "at least one DNS name or IP address for the broker (rustls checks the SAN)".into(),
            ));
        }
        for (i, name) in self.broker.dns.iter().enumerate() {
            if !is_dns_name(name) {
                return Err(invalid(
                    at("broker.dns").index(i),
                    format!("a DNS name (got `{name}`)"),
                ));
            }
        }
        if self.broker.port == 0 {
            return Err(invalid(at("broker.port"), "a TCP port 1..65535".into()));
        }
        if !(1..=3650).contains(&self.site.leaf_days) {
            return Err(invalid(at("site.leaf_days"), "1..3650 days".into()));
        }
        if crate::site_compressed::parse_signer_id(self.site.signer_id.as_deref()).is_none() {
            return Err(invalid(
                at("site.signer_id"),
                "4 upper-case hex digits, e.g. \"00A1\"".into(),
            ));
        }
        if !(1..=365).contains(&self.site.crl_days) {
            return Err(invalid(at("site.crl_days"), "1..365 days".into()));
        }
        let root = &self.topics.root;
        check_topic_name(root).map_err(|e| invalid(at("topics.root"), e))?;
        if root.contains(['{', '}']) {
            return Err(invalid(
                at("topics.root"),
                format!("a literal topic prefix without `{{` or `}}` (got `{root}`)"),
            ));
        }
        for (i, room) in self.topics.rooms.iter().enumerate() {
            let here = || at("topics.rooms").index(i);
            if room.is_empty() || room.contains(['/', '+', '#', ' ', '{', '}']) {
                return Err(invalid(
                    here(),
                    format!("a single topic level without braces (got `{room}`)"),
                ));
            }
            check_topic_name(room).map_err(|e| invalid(here(), e))?;
            if let Some(j) = self.topics.rooms[..i].iter().position(|r| r == room) {
                return Err(invalid(
                    here(),
                    format!("each room listed once (`{room}` is also topics.rooms[{j}])"),
                ));
            }
        }
        for (name, p) in &self.profiles {
            let table = FieldPath::root().key("profiles").key(name);
            let f = |k: &str| table.clone().key(k);
            check_identity(name).map_err(|e| invalid(table.clone(), e))?;
            // A chip profile is a file name in the home: no `/`, no `..`.
            check_identity(&p.chip)
                .map_err(|e| invalid(f("chip"), format!("a chip profile name: {e}")))?;
            if p.key_slot > 7 {
                return Err(invalid(f("key_slot"), "a P-256 key slot 0..7".into()));
            }
            if p.write_key_slot > 15 || p.write_key_slot == p.key_slot {
                return Err(invalid(
                    f("write_key_slot"),
                    "a slot 0..15 other than the key slot".into(),
                ));
            }
            if p.qos > 2 {
                return Err(invalid(f("qos"), format!("0, 1 or 2 (got {})", p.qos)));
            }
            if p.readings.is_empty() {
                return Err(invalid(f("readings"), "at least one reading".into()));
            }
            let vars = TopicVars {
                root,
                room: "room",
                id: "id",
            };
            let check_template = |field: FieldPath, t: &str| {
                parse_template(t).map_err(|e| invalid(field.clone(), e))?;
                check_topic_name(&expand_topic(t, &vars)).map_err(|e| invalid(field, e))
            };
            for (i, r) in p.readings.iter().enumerate() {
                let field = f("readings").index(i).key("topic");
                check_template(field.clone(), &r.topic)?;
                if let Some(j) = p.readings[..i].iter().position(|q| q.topic == r.topic) {
                    return Err(invalid(
                        field,
                        format!(
                            "one reading per topic (`{}` is also readings[{j}])",
                            r.topic
                        ),
                    ));
                }
            }
            if let Some(s) = &p.status_topic {
                check_template(f("status_topic"), s)?;
            }
            if p.interval_s == 0 {
                return Err(invalid(f("interval_s"), "at least 1 second".into()));
            }
            p.lifetime()
                .check(self.site.leaf_days)
                .map_err(|(key, e)| invalid(f(key), e))?;
            if let Some(c) = &p.compressed {
                if p.lifetime.is_some() {
                    return Err(invalid(
                        f("lifetime"),
                        "cert_days in whole years: a compressed certificate cannot carry another lifetime".into(),
                    ));
                }
                c.check(
                    p.cert_days.unwrap_or(self.site.leaf_days),
                    p.key_slot,
                    p.write_key_slot,
                )
                .map_err(|(key, e)| invalid(f(key), e))?;
            }
        }
        for (kind, l) in self.lifetimes.by_kind() {
            if let Some(l) = l {
                l.check(self.site.leaf_days).map_err(|(key, e)| {
                    invalid(FieldPath::root().key("lifetimes").key(kind).key(key), e)
                })?;
            }
        }
        for (id, g) in &self.gateways {
            let table = FieldPath::root().key("gateways").key(id);
            check_identity(id).map_err(|e| invalid(table.clone(), e))?;
            for (i, s) in g.subscribe.iter().enumerate() {
                check_literal_filter(s)
                    .map_err(|e| invalid(table.clone().key("subscribe").index(i), e))?;
            }
            if !self.receivers.contains_key(&g.receiver) {
                return Err(invalid(
                    table.key("receiver"),
                    format!(
                        "a receiver defined under [receivers] (got `{}`)",
                        g.receiver
                    ),
                ));
            }
        }
        for (id, r) in &self.receivers {
            let table = FieldPath::root().key("receivers").key(id);
            check_identity(id).map_err(|e| invalid(table.clone(), e))?;
            for (i, s) in r.publish.iter().enumerate() {
                check_literal_filter(s)
                    .map_err(|e| invalid(table.clone().key("publish").index(i), e))?;
            }
        }
        Ok(())
    }
}

/// A gateway's or receiver's topic filter: placeholders are expanded only in profile topics,
/// so a `{root}` here would be matched literally and forward nothing.
fn check_literal_filter(s: &str) -> Result<(), String> {
    check_topic_filter(s)?;
    if s.contains(['{', '}']) {
        return Err(format!(
            "a literal topic filter (got `{s}`): placeholders such as {{root}} are expanded only in profile topics"
        ));
    }
    Ok(())
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_parsed_strictly() {
        assert_eq!(parse_duration("150s"), Ok(150));
        assert_eq!(parse_duration("3m"), Ok(180));
        assert_eq!(parse_duration("12h"), Ok(43_200));
        assert_eq!(parse_duration("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration("3650d"), Ok(3650 * 86_400));
        for bad in [
            "",
            "s",
            "0s",
            "03m",
            "3",
            "3 m",
            " 3m",
            "3M",
            "3min",
            "1.5h",
            "-3m",
            "+3m",
            "3651d",
            "99999999999s",
            "3m3s",
            "3w",
        ] {
            assert!(parse_duration(bad).is_err(), "`{bad}` accepted");
        }
        assert_eq!(format_duration(180), "3m");
        assert_eq!(format_duration(150), "150s");
        assert_eq!(format_duration(2 * 86_400), "2d");
    }

    #[test]
    fn a_short_lifetime_in_a_profile_is_checked_and_warned_about_and_days_still_work() {
        let with = |extra: &str| {
            EXAMPLE_SMART_HOME.replacen(
                "[profiles.climat]",
                &format!("[profiles.climat]\n{extra}"),
                1,
            )
        };
        let site = Site::from_toml_str(
            "s.toml",
            &with("lifetime = \"3m\"\nrenew_before = \"150s\""),
        )
        .expect("short lifetime");
        let l = site.profiles["climat"].lifetime();
        assert_eq!(l.seconds(825), 180);
        assert_eq!(l.renew_point(), Some(RenewPoint::SecondsBefore(150)));
        let w = site.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("profiles.climat")
                && w[0].contains("3m")
                && w[0].contains("demos and tests"),
            "{w:?}"
        );
        let days = Site::from_toml_str("s.toml", &with("cert_days = 30\nrenew_before_days = 7"))
            .expect("day forms");
        assert_eq!(days.profiles["climat"].lifetime().seconds(825), 30 * 86_400);
        assert!(days.warnings().is_empty());
        for (extra, key) in [
            ("lifetime = \"3 m\"", "lifetime"),
            ("lifetime = \"3m\"\ncert_days = 2", "lifetime"),
            ("lifetime = \"3m\"\nrenew_before = \"3m\"", "renew_before"),
            (
                "lifetime = \"3m\"\nrenew_before_days = 1",
                "renew_before_days",
            ),
            (
                "renew_before = \"1h\"\nrenew_before_days = 1",
                "renew_before",
            ),
            ("renew_before = \"1h\"\nrenew_at = \"2/3\"", "renew_at"),
        ] {
            let e = Site::from_toml_str("s.toml", &with(extra)).expect_err(extra);
            assert!(e.to_string().contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn example_site_loads() {
        let site = Site::from_toml_str("smart-home.toml", EXAMPLE_SMART_HOME).expect("example");
        assert_eq!(site.topics.root, "maison");
        assert!(site.topics.rooms.iter().any(|r| r == "chambre_1"));
        assert_eq!(
            site.broker.server_name().as_deref(),
            Some("broker.maison.lan")
        );
        let back = Site::from_toml_str("x", &site.to_toml().expect("render")).expect("reparse");
        assert_eq!(back, site);
    }

    #[test]
    fn a_type_error_names_file_line_and_column() {
        let bad = EXAMPLE_SMART_HOME.replace("port = 8883", "port = \"eighty\"");
        let err = Site::from_toml_str("site.toml", &bad)
            .expect_err("bad port")
            .to_string();
        let line = EXAMPLE_SMART_HOME
            .lines()
            .position(|l| l.starts_with("port = 8883"))
            .expect("port line")
            + 1;
        assert!(err.starts_with(&format!("site.toml:{line}:")), "{err}");
    }

    #[test]
    fn a_misspelt_field_is_refused() {
        let bad = EXAMPLE_SMART_HOME.replace("port = 8883", "prot = 8883");
        let err = Site::from_toml_str("site.toml", &bad)
            .expect_err("typo")
            .to_string();
        assert!(err.contains("prot"), "{err}");
    }

    #[test]
    fn a_semantic_error_names_the_field_and_line() {
        let bad = EXAMPLE_SMART_HOME.replace("qos = 1", "qos = 7");
        let err = Site::from_toml_str("site.toml", &bad)
            .expect_err("qos")
            .to_string();
        assert!(err.contains("qos") && err.contains("0, 1 or 2"), "{err}");
        assert!(err.starts_with("site.toml:"), "{err}");
    }

    /// 1-based (line, column) of `needle` on the first line after the line starting with
    /// `after` (or on it) that contains it.
    fn pos(text: &str, after: &str, needle: &str) -> (usize, usize) {
        let start = text
            .lines()
            .position(|l| l.starts_with(after))
            .expect("anchor line");
        text.lines()
            .enumerate()
            .skip(start)
            .find_map(|(i, l)| l.find(needle).map(|c| (i + 1, l[..c].chars().count() + 1)))
            .expect("needle")
    }

    fn load_err(text: &str) -> String {
        Site::from_toml_str("site.toml", text)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_bad_qos_in_a_later_profile_is_reported_at_that_profiles_line() {
        // `qos = 0` is thermometre's; climat's `qos = 1` comes first in the file and
        // sorts first too, where a search for the key name alone lands.
        let bad = EXAMPLE_SMART_HOME.replacen("qos = 0", "qos = 3", 1);
        let err = load_err(&bad);
        let (line, col) = pos(&bad, "[profiles.thermometre]", "qos = 3");
        assert!(
            err.starts_with(&format!(
                "site.toml:{line}:{col}: field `profiles.thermometre.qos`: expected 0, 1 or 2"
            )),
            "{err}"
        );
        // The same with dotted keys in a `[profiles]` table written after its sub-tables.
        let dotted = EXAMPLE_SMART_HOME.replace(
            "[gateways.passerelle]",
            "[profiles]\nyy.readings = [{ topic = \"{root}/{room}/t\", quantity = \"temperature\" }]\nyy.qos = 9\n\n[gateways.passerelle]",
        );
        let err = load_err(&dotted);
        // The column of `qos` itself.
        let (line, col) = pos(&dotted, "[profiles]", "qos = 9");
        assert!(
            err.starts_with(&format!("site.toml:{line}:{col}: field `profiles.yy.qos`")),
            "{err}"
        );
    }

    #[test]
    fn a_string_where_a_number_belongs_names_the_field_path_and_line() {
        let bad = EXAMPLE_SMART_HOME.replace("port = 8883", "port = \"8883\"");
        let err = load_err(&bad);
        let (line, col) = pos(&bad, "[broker]", "\"8883\"");
        assert_eq!(
            err,
            format!(
                "site.toml:{line}:{col}: field `broker.port`: expected an integer 0..=65535, found a string \"8883\""
            )
        );
        // Out of range, and a type error inside an array of inline tables.
        let err = load_err(&EXAMPLE_SMART_HOME.replace("port = 8883", "port = 70000"));
        assert!(
            err.contains("field `broker.port`: expected an integer 0..=65535, found 70000"),
            "{err}"
        );
        let bad = EXAMPLE_SMART_HOME.replace("quantity = \"humidity\"", "quantity = 7");
        let err = load_err(&bad);
        let (line, col) = pos(&bad, "[profiles.climat]", "quantity = 7");
        let col = col + "quantity = ".len();
        assert!(
            err.starts_with(&format!(
                "site.toml:{line}:{col}: field `profiles.climat.readings[1].quantity`"
            )),
            "{err}"
        );
        // A missing field names its table and itself.
        let bad = EXAMPLE_SMART_HOME.replace(
            "readings = [{ topic = \"{root}/{room}/porte\", quantity = \"door\" }]\n",
            "",
        );
        let err = load_err(&bad);
        let (line, col) = pos(&bad, "[profiles.porte]", "[profiles.porte]");
        assert!(
            err.starts_with(&format!(
                "site.toml:{line}:{col}: field `profiles.porte.readings`: missing field `readings`"
            )),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_placeholder_is_refused_at_its_line_with_the_known_ones() {
        let bad = EXAMPLE_SMART_HOME.replace("{root}/{room}/luminosite", "{root}/{rom}/luminosite");
        let err = load_err(&bad);
        let (line, col) = pos(&bad, "[profiles.luminosite]", "topic = \"{root}/{rom}");
        assert!(
            err.starts_with(&format!(
                "site.toml:{line}:{col}: field `profiles.luminosite.readings[1].topic`"
            )) && err.contains("`{rom}`")
                && err.contains("{root}, {room}, {id}"),
            "{err}"
        );
        let bad = EXAMPLE_SMART_HOME.replace("{root}/{room}/status", "{root}/{room/status");
        let err = load_err(&bad);
        assert!(
            err.contains("field `profiles.porte.status_topic`") && err.contains("not closed"),
            "{err}"
        );
        // Placeholders are not expanded in gateway filters: refused, not silently literal.
        let bad =
            EXAMPLE_SMART_HOME.replace("subscribe = [\"maison/#\"]", "subscribe = [\"{root}/#\"]");
        let err = load_err(&bad);
        assert!(
            err.contains("field `gateways.passerelle.subscribe[0]`") && err.contains("literal"),
            "{err}"
        );
        // A root that would be expanded again.
        let bad = EXAMPLE_SMART_HOME.replace("root = \"maison\"", "root = \"{id}\"");
        assert!(load_err(&bad).contains("field `topics.root`"));
    }

    #[test]
    fn list_items_are_located_by_index() {
        let bad = EXAMPLE_SMART_HOME.replace("\"garage\"", "\"salon\"");
        let err = load_err(&bad);
        assert!(
            err.contains("field `topics.rooms[3]`") && err.contains("topics.rooms[1]"),
            "{err}"
        );
        let bad = EXAMPLE_SMART_HOME.replace("\"raspberrypi.local\"", "\"raspberry pi\"");
        let err = load_err(&bad);
        let (line, col) = pos(&bad, "[broker]", "\"raspberry pi\"");
        assert!(
            err.starts_with(&format!("site.toml:{line}:{col}: field `broker.dns[1]`")),
            "{err}"
        );
        let bad = EXAMPLE_SMART_HOME.replace(
            "{ topic = \"{root}/{room}/luminosite\"",
            "{ topic = \"{root}/{room}/temperature\"",
        );
        let err = load_err(&bad);
        assert!(
            err.contains("field `profiles.luminosite.readings[1].topic`")
                && err.contains("readings[0]"),
            "{err}"
        );
    }

    #[test]
    fn a_wildcard_in_a_published_topic_is_refused() {
        let bad = EXAMPLE_SMART_HOME.replace("{root}/{room}/temperature", "{root}/+/temperature");
        assert!(Site::from_toml_str("site.toml", &bad).is_err());
    }
}
