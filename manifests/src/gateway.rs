//! The gateway manifest: what `gateway --manifest FILE` needs on Pi #1 in one file.
//!
//! It names the broker (address, port, TLS server name), the CA file, the gateway's own
//! client certificate and key, the topic filters it subscribes to and their QoS, and the LoRa
//! link ([`crate::link::LinkManifest`], referenced by path or embedded). Relative paths are
//! relative to the directory of the gateway manifest. `provisioner emit gateway ID` writes it
//! (mode 0600) and `provisioner deploy gateway ID` installs it with the paths as seen on the Pi.
//!
//! ```toml
//! version = 1
//! counters_file = "/var/lib/iot-gateway/counters.json"   # optional
//!
//! [mqtt]
//! host = "broker.maison.lan"          # address to connect to
//! port = 8883
//! server_name = "broker.maison.lan"   # optional: name checked in the broker's certificate
//! client_id = "passerelle"          # the CN of cert_file (checked when the gateway starts)
//! ca_file = "ca.crt"
//! cert_file = "passerelle.crt"
//! key_file = "passerelle.key"         # PEM PKCS#8, mode 0600
//! filters = ["maison/#"]
//! qos = 1
//! keep_alive_s = 30
//! reconnect_min_ms = 500
//! reconnect_max_ms = 30000
//!
//! [link]
//! manifest = "link.toml"              # or an embedded [link.embedded] table
//! ```
//!
//! ```
//! use manifests::gateway::GatewayManifest;
//! let text = r#"
//! version = 1
//! [mqtt]
//! host = "127.0.0.1"
//! client_id = "passerelle"
//! ca_file = "ca.crt"
//! cert_file = "passerelle.crt"
//! key_file = "passerelle.key"
//! filters = ["maison/#"]
//! [link]
//! manifest = "link.toml"
//! "#;
//! let m = GatewayManifest::parse(text, std::path::Path::new("gateway.toml")).expect("valid");
//! assert_eq!(m.mqtt.port, 8883);
//! assert_eq!(m.mqtt.tls_server_name(), "127.0.0.1");
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, FieldPath, Location, locate, parse_toml, read_text};
use crate::link::{LinkKey, LinkManifest, LinkManifestError, LinkRole, LoadedLink};
use crate::topic::check_topic_filter;

/// Version of the gateway manifest schema this code reads and writes.
pub const GATEWAY_MANIFEST_VERSION: u32 = 1;
/// Largest gateway manifest accepted.
pub const MAX_GATEWAY_MANIFEST_LEN: usize = 64 * 1024;

/// The gateway's configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayManifest {
    /// Schema version, must be [`GATEWAY_MANIFEST_VERSION`].
    pub version: u32,
    /// Where the final counters are written as JSON at shutdown (e.g. in the systemd
    /// StateDirectory). Optional.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters_file: Option<PathBuf>,
    /// Broker connection and subscriptions.
    pub mqtt: GatewayMqtt,
    /// The LoRa link (gateway role).
    pub link: LinkRef,
}

/// Broker connection of the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayMqtt {
    /// Broker host name or IP address to connect to.
    pub host: String,
    /// Broker port (8883 by default).
    #[serde(default = "default_port")]
    pub port: u16,
    /// Name the broker's certificate must carry, when it differs from `host` (e.g. connecting
    /// to 127.0.0.1 while the certificate names `broker.maison.lan`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// MQTT client id: the CN of `cert_file`, the gateway's identity. The broker of `emit
    /// broker` replaces any other client id by that CN (`use_username_as_clientid`), which
    /// also keys the persistent session; `gateway` refuses a manifest where they differ.
    pub client_id: String,
    /// CA certificates (PEM) that signed the broker's certificate.
    pub ca_file: PathBuf,
    /// The gateway's client certificate (PEM, optionally followed by its chain).
    pub cert_file: PathBuf,
    /// The gateway's private key (PEM PKCS#8 or SEC1, mode 0600).
    pub key_file: PathBuf,
    /// Topic filters to subscribe to (`+` and `#` wildcards allowed).
    pub filters: Vec<String>,
    /// Subscription QoS (0, 1 or 2; default 1).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// MQTT keep-alive in seconds (5..=65535; default 30).
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u16,
    /// First reconnection delay in milliseconds (default 500); doubles up to the maximum.
    #[serde(default = "default_reconnect_min")]
    pub reconnect_min_ms: u64,
    /// Largest reconnection delay in milliseconds (default 30000).
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
}

fn default_port() -> u16 {
    8883
}
fn default_qos() -> u8 {
    1
}
fn default_keep_alive() -> u16 {
    30
}
fn default_reconnect_min() -> u64 {
    500
}
fn default_reconnect_max() -> u64 {
    30_000
}

impl GatewayMqtt {
    /// The name checked in the broker's certificate: `server_name`, else `host`.
    pub fn tls_server_name(&self) -> &str {
        self.server_name.as_deref().unwrap_or(&self.host)
    }
}

/// The link manifest: a separate file (`manifest = "link.toml"`) or embedded
/// (`[link.embedded]`), exactly one of the two.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkRef {
    /// Path of a link manifest with role `gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<PathBuf>,
    /// An embedded link manifest with role `gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<Box<LinkManifest>>,
}

/// A loaded gateway manifest: paths resolved, key file checked, link loaded.
#[derive(Debug, Clone)]
pub struct LoadedGateway {
    /// The manifest as written.
    pub manifest: GatewayManifest,
    /// The gateway manifest file.
    pub path: PathBuf,
    /// CA file, resolved.
    pub ca_file: PathBuf,
    /// Client certificate, resolved.
    pub cert_file: PathBuf,
    /// Client key, resolved (mode checked).
    pub key_file: PathBuf,
    /// Counters file, resolved.
    pub counters_file: Option<PathBuf>,
    /// The link (role gateway) with its key.
    pub link: LoadedLink,
}

/// Why a gateway manifest could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayManifestError {
    /// Unreadable, malformed, or a rule broken in the gateway manifest.
    #[error(transparent)]
    Manifest(#[from] Error),
    /// The link manifest (referenced or embedded) is wrong.
    #[error("link manifest: {0}")]
    Link(#[from] LinkManifestError),
    /// A file the manifest names is missing or unreadable.
    #[error("{manifest}: field `{field}`: cannot read {file}: {source}")]
    MissingFile {
        /// The gateway manifest.
        manifest: PathBuf,
        /// The field naming the file.
        field: &'static str,
        /// The file, resolved.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A private key (or a manifest holding the link key) readable by group or others.
    #[error(
        "{file}: holds a secret but is readable by group or others (mode {mode:o}): run `chmod 600 {file}`"
    )]
    InsecureFile {
        /// The file.
        file: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

impl GatewayManifest {
    /// Parses and validates manifest text; `file` is only used in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Self, Error> {
        let name = file.display().to_string();
        let m: GatewayManifest = parse_toml(&name, text)?;
        m.validate(&name, text)?;
        Ok(m)
    }

    /// Loads a gateway manifest: parses it, resolves relative paths against its directory,
    /// checks that the CA, certificate and key files are readable and that the key (and the
    /// link key) are not readable by group or others, and loads the link manifest.
    pub fn load(path: &Path) -> Result<LoadedGateway, GatewayManifestError> {
        let text = read_text(path, MAX_GATEWAY_MANIFEST_LEN)?;
        let manifest = Self::parse(&text, path)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_relative() {
                dir.join(p)
            } else {
                p.to_path_buf()
            }
        };
        let readable = |field: &'static str, p: &PathBuf| {
            std::fs::metadata(p)
                .and_then(|m| {
                    if m.is_file() {
                        Ok(())
                    } else {
                        Err(std::io::Error::other("not a regular file"))
                    }
                })
                .map_err(|source| GatewayManifestError::MissingFile {
                    manifest: path.to_path_buf(),
                    field,
                    file: p.clone(),
                    source,
                })
        };
        let ca_file = resolve(&manifest.mqtt.ca_file);
        let cert_file = resolve(&manifest.mqtt.cert_file);
        let key_file = resolve(&manifest.mqtt.key_file);
        readable("mqtt.ca_file", &ca_file)?;
        readable("mqtt.cert_file", &cert_file)?;
        readable("mqtt.key_file", &key_file)?;
        check_private(&key_file)?;
        let link = match (&manifest.link.manifest, &manifest.link.embedded) {
            (Some(p), None) => {
                let p = resolve(p);
                readable("link.manifest", &p)?;
                LinkManifest::load(&p)?
            }
            (None, Some(embedded)) => load_embedded(embedded, &text, path, dir)?,
            // validate() rejected the other combinations
            _ => {
                return Err(Error::Invalid {
                    at: Location::field(&path.display().to_string(), "link"),
                    expected: "exactly one of `manifest` or `embedded`".into(),
                }
                .into());
            }
        };
        if link.manifest.role != LinkRole::Gateway {
            return Err(Error::Invalid {
                at: Location::field(&link.path.display().to_string(), "role"),
                expected: format!(
                    "role = \"gateway\" (found {:?}): give the gateway's link manifest, written by `provisioner emit gateway ID`",
                    link.manifest.role
                ),
            }
            .into());
        }
        Ok(LoadedGateway {
            counters_file: manifest.counters_file.as_deref().map(resolve),
            manifest,
            path: path.to_path_buf(),
            ca_file,
            cert_file,
            key_file,
            link,
        })
    }

    /// Renders the manifest as TOML.
    pub fn to_toml(&self) -> Result<String, Error> {
        toml::to_string_pretty(self).map_err(|e| Error::Encode(e.to_string()))
    }

    /// Writes the manifest atomically with mode 0600 (an embedded link may carry the key).
    pub fn write(&self, path: &Path) -> Result<(), Error> {
        let text = self.to_toml()?;
        crate::link::write_secret(path, text.as_bytes())
            .map_err(|e| Error::Encode(format!("writing {}: {e}", path.display())))
    }

    fn validate(&self, file: &str, text: &str) -> Result<(), Error> {
        let bad = |field: &str, expected: String| Error::Invalid {
            at: locate(file, text, &FieldPath::parse(field)),
            expected,
        };
        if self.version != GATEWAY_MANIFEST_VERSION {
            return Err(bad(
                "version",
                format!(
                    "schema version {GATEWAY_MANIFEST_VERSION}, found {}",
                    self.version
                ),
            ));
        }
        let m = &self.mqtt;
        if m.host.trim().is_empty() || m.host.contains(char::is_whitespace) {
            return Err(bad(
                "mqtt.host",
                format!("a host name or IP address, found {:?}", m.host),
            ));
        }
        if m.port == 0 {
            return Err(bad("mqtt.port", "a port 1..=65535, found 0".into()));
        }
        if let Some(s) = &m.server_name
            && (s.trim().is_empty() || s.contains(char::is_whitespace))
        {
            return Err(bad(
                "mqtt.server_name",
                format!("a DNS name or IP address, found {s:?}"),
            ));
        }
        if m.client_id.is_empty()
            || m.client_id.len() > 128
            || m.client_id.chars().any(|c| c.is_control())
        {
            return Err(bad(
                "mqtt.client_id",
                format!(
                    "1..=128 printable characters, found {} bytes",
                    m.client_id.len()
                ),
            ));
        }
        for (field, p) in [
            ("mqtt.ca_file", &m.ca_file),
            ("mqtt.cert_file", &m.cert_file),
            ("mqtt.key_file", &m.key_file),
        ] {
            if p.as_os_str().is_empty() {
                return Err(bad(field, "a file path, found an empty string".into()));
            }
        }
        if m.filters.is_empty() {
            return Err(bad(
                "mqtt.filters",
                "at least one topic filter, e.g. filters = [\"maison/#\"]".into(),
            ));
        }
        for (i, f) in m.filters.iter().enumerate() {
            check_topic_filter(f).map_err(|e| bad(&format!("mqtt.filters[{i}]"), e))?;
        }
        if m.qos > 2 {
            return Err(bad("mqtt.qos", format!("0, 1 or 2, found {}", m.qos)));
        }
        if m.keep_alive_s < 5 {
            return Err(bad(
                "mqtt.keep_alive_s",
                format!("5..=65535 seconds, found {}", m.keep_alive_s),
            ));
        }
        if m.reconnect_min_ms == 0 || m.reconnect_min_ms > m.reconnect_max_ms {
            return Err(bad(
                "mqtt.reconnect_min_ms",
                format!(
                    "1..=reconnect_max_ms ({}) milliseconds, found {}",
                    m.reconnect_max_ms, m.reconnect_min_ms
                ),
            ));
        }
        if m.reconnect_max_ms > 3_600_000 {
            return Err(bad(
                "mqtt.reconnect_max_ms",
                format!(
                    "at most 3600000 ms (one hour), found {}",
                    m.reconnect_max_ms
                ),
            ));
        }
        match (&self.link.manifest, &self.link.embedded) {
            (Some(p), None) if p.as_os_str().is_empty() => {
                return Err(bad(
                    "link.manifest",
                    "a file path, found an empty string".into(),
                ));
            }
            (Some(_), None) | (None, Some(_)) => {}
            _ => {
                return Err(bad(
                    "link",
                    "exactly one of `manifest = \"link.toml\"` or an embedded [link.embedded] table"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

/// Validates an embedded link manifest and resolves its key (inline: the gateway manifest
/// must be private; file: relative to the gateway manifest's directory). Errors name the
/// gateway manifest's own lines and `link.embedded.` fields.
fn load_embedded(
    embedded: &LinkManifest,
    text: &str,
    path: &Path,
    dir: &Path,
) -> Result<LoadedLink, GatewayManifestError> {
    embedded.validate_within(text, path, &FieldPath::parse("link.embedded"))?;
    let manifest = embedded.clone();
    let bad_key = |file: &Path, e: String| Error::Invalid {
        at: Location::field(&file.display().to_string(), "key"),
        expected: e,
    };
    let key = match (&manifest.key.hex, &manifest.key.file) {
        (Some(h), None) => {
            check_private(path)?;
            LinkKey::from_hex(h).map_err(|e| bad_key(path, e))?
        }
        (None, Some(f)) => {
            let kf = if f.is_relative() {
                dir.join(f)
            } else {
                f.clone()
            };
            let text = safe_fs::read_limited_string(&kf, 4096).map_err(|source| {
                GatewayManifestError::MissingFile {
                    manifest: path.to_path_buf(),
                    field: "link.embedded.key.file",
                    file: kf.clone(),
                    source,
                }
            })?;
            check_private(&kf)?;
            LinkKey::from_hex(&text).map_err(|e| bad_key(&kf, e))?
        }
        _ => return Err(bad_key(path, "exactly one of `hex` or `file`".into()).into()),
    };
    let peer_keys = manifest.resolve_peer_keys(path, Some(&key))?;
    Ok(LoadedLink {
        manifest,
        key: Some(key),
        peer_keys,
        path: path.to_path_buf(),
    })
}

/// Refuses a secret file that group or others can read.
pub fn check_private(path: &Path) -> Result<(), GatewayManifestError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|source| GatewayManifestError::MissingFile {
            manifest: path.to_path_buf(),
            field: "key",
            file: path.to_path_buf(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(GatewayManifestError::InsecureFile {
                file: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"version = 1

[mqtt]
host = "127.0.0.1"
port = 8883
client_id = "passerelle"
ca_file = "ca.crt"
cert_file = "gw.crt"
key_file = "gw.key"
filters = ["maison/#", "maison/+/temperature"]
qos = 1

[link]
manifest = "link.toml"
"#;

    const LINK: &str = r#"version = 1
role = "gateway"
state_dir = "state"
[node]
name = "passerelle"
address = 10
[[peers]]
name = "recepteur"
address = 1
[key]
file = "link.key"
"#;

    fn parse(s: &str) -> Result<GatewayManifest, Error> {
        GatewayManifest::parse(s, Path::new("g.toml"))
    }

    #[test]
    fn good_manifest_gets_defaults_and_round_trips() {
        let m = parse(GOOD).expect("parses");
        assert_eq!(m.mqtt.keep_alive_s, 30);
        assert_eq!(m.mqtt.reconnect_min_ms, 500);
        assert_eq!(m.mqtt.tls_server_name(), "127.0.0.1");
        let again = parse(&m.to_toml().expect("toml")).expect("round trip");
        assert_eq!(again, m);
    }

    #[test]
    fn bad_values_name_line_and_field() {
        let s = parse(&GOOD.replace("qos = 1", "qos = 3"))
            .expect_err("qos")
            .to_string();
        assert!(s.contains("g.toml:11:") && s.contains("mqtt.qos"), "{s}");
        let s = parse(&GOOD.replace("\"maison/#\",", "\"maison/#/x\","))
            .expect_err("filter")
            .to_string();
        assert!(s.contains("mqtt.filters") && s.contains('#'), "{s}");
        let s = parse(&GOOD.replace(
            "filters = [\"maison/#\", \"maison/+/temperature\"]",
            "filters = []",
        ))
        .expect_err("no filters")
        .to_string();
        assert!(s.contains("at least one topic filter"), "{s}");
        let s = parse(&GOOD.replace("manifest = \"link.toml\"", ""))
            .expect_err("no link")
            .to_string();
        assert!(s.contains("exactly one of"), "{s}");
        let s = parse(&GOOD.replace("port = 8883", "port = 70000"))
            .expect_err("port")
            .to_string();
        assert!(s.contains("g.toml:5:"), "{s}");
        let s = parse(&GOOD.replace("[mqtt]", "[mqtt]\nbogus = 1"))
            .expect_err("unknown")
            .to_string();
        assert!(s.contains("bogus"), "{s}");
    }

    #[test]
    fn errors_point_at_the_key_in_its_own_table_and_name_the_full_path() {
        // A string where the port number belongs: field path and line.
        let s = parse(&GOOD.replace("port = 8883", "port = \"8883\""))
            .expect_err("type")
            .to_string();
        assert_eq!(
            s,
            "g.toml:5:8: field `mqtt.port`: expected an integer 0..=65535, found a string \"8883\""
        );
        // The second filter of a multi-line array, at its own line.
        let s = parse(&GOOD.replace(
            "filters = [\"maison/#\", \"maison/+/temperature\"]",
            "filters = [\n  \"maison/#\",\n  \"maison/+x/temperature\",\n]",
        ))
        .expect_err("filter")
        .to_string();
        assert!(s.starts_with("g.toml:12:3: field `mqtt.filters[1]`"), "{s}");
        // qos = 3 in an inline `mqtt` table (no `[mqtt]` header to search for).
        let inline = "mqtt = { host = \"h\", client_id = \"gw\", ca_file = \"c\", cert_file = \"c\", key_file = \"k\", filters = [\"a/#\"], qos = 3 }\nversion = 1\n[link]\nmanifest = \"link.toml\"\n";
        let s = parse(inline).expect_err("qos").to_string();
        assert!(s.starts_with("g.toml:1:107: field `mqtt.qos`"), "{s}");
        // A missing field names its table.
        let s = parse(&GOOD.replace("client_id = \"passerelle\"\n", ""))
            .expect_err("missing")
            .to_string();
        assert!(
            s.starts_with("g.toml:3:1: field `mqtt.client_id`: missing field"),
            "{s}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_embedded_link_is_reported_at_the_gateway_manifests_own_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for f in ["ca.crt", "gw.crt"] {
            std::fs::write(d.join(f), "x").expect("write");
        }
        crate::link::write_secret(&d.join("gw.key"), b"x").expect("key");
        crate::link::write_secret(&d.join("link.key"), b"000102030405060708090a0b0c0d0e0f\n")
            .expect("key");
        let embedded = LINK
            .replace("[node]", "[link.embedded.node]")
            .replace("[[peers]]", "[[link.embedded.peers]]")
            .replace("[key]", "[link.embedded.key]")
            .replace("version = 1\nrole", "[link.embedded]\nversion = 1\nrole");
        // A second peer with the first one's address: its own line, not the first `address`.
        let embedded = embedded.replace(
            "[link.embedded.key]",
            "[[link.embedded.peers]]\nname = \"autre\"\naddress = 1\n[link.embedded.key]",
        );
        let text = GOOD.replace("[link]\nmanifest = \"link.toml\"\n", &embedded);
        let p = d.join("gateway.toml");
        crate::link::write_secret(&p, text.as_bytes()).expect("write");
        let line = text
            .lines()
            .enumerate()
            .filter(|(_, l)| *l == "address = 1")
            .nth(1)
            .map(|(i, _)| i + 1)
            .expect("line");
        let e = GatewayManifest::load(&p)
            .expect_err("duplicate peer")
            .to_string();
        assert!(
            e.contains(&format!(
                "gateway.toml:{line}:1: field `link.embedded.peers[1].address`"
            )) && e.contains("duplicate"),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn load_resolves_paths_and_refuses_readable_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let p = d.join("gateway.toml");
        std::fs::write(&p, GOOD).expect("write");
        let e = GatewayManifest::load(&p).expect_err("no ca");
        assert!(e.to_string().contains("mqtt.ca_file"), "{e}");
        for f in ["ca.crt", "gw.crt", "gw.key"] {
            std::fs::write(d.join(f), "x").expect("write");
        }
        std::fs::set_permissions(d.join("gw.key"), std::fs::Permissions::from_mode(0o640))
            .expect("chmod");
        let e = GatewayManifest::load(&p).expect_err("insecure");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        std::fs::set_permissions(d.join("gw.key"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        std::fs::write(d.join("link.toml"), LINK).expect("write");
        std::fs::set_permissions(d.join("link.toml"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        crate::link::write_secret(&d.join("link.key"), b"000102030405060708090a0b0c0d0e0f\n")
            .expect("key");
        let l = GatewayManifest::load(&p).expect("loads");
        assert_eq!(l.key_file, d.join("gw.key"));
        assert_eq!(l.link.manifest.node.address, 10);
        assert_eq!(
            l.link.key.as_ref().map(|k| k.0[15]).unwrap_or_default(),
            0x0f
        );

        // The receiver's manifest is refused with a hint.
        std::fs::write(
            d.join("link.toml"),
            LINK.replace("\"gateway\"", "\"receiver\""),
        )
        .expect("write");
        let e = GatewayManifest::load(&p).expect_err("role");
        assert!(e.to_string().contains("emit gateway"), "{e}");

        // Embedded link, key file beside the manifest.
        let link: LinkManifest = toml::from_str(LINK).expect("link");
        let mut m = parse(GOOD).expect("parses");
        m.link = LinkRef {
            manifest: None,
            embedded: Some(Box::new(link)),
        };
        m.write(&p).expect("write");
        let l = GatewayManifest::load(&p).expect("embedded loads");
        assert_eq!(l.link.manifest.role, LinkRole::Gateway);
        assert_eq!(l.link.key.as_ref().map(|k| k.0[0]).unwrap_or(1), 0x00);
    }
}
