//! The broker agent's configuration (`agent.toml`, written by `provisioner deploy broker`,
//! read by `gateway broker-agent`). Every path is a path of the broker's machine.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Location, parse_toml, read_text};

/// Version of [`AgentConfig`].
pub const AGENT_CONFIG_VERSION: u32 = 1;

/// Largest agent.toml read.
pub const MAX_AGENT_CONFIG_LEN: usize = 64 * 1024;

/// Topic prefix of broker updates: `provisioner/updates/broker/NAME`. Outside the sensor
/// topic tree; in the ACL only the bench writes it and only the broker's agent reads it.
pub const UPDATE_TOPIC_PREFIX: &str = "provisioner/updates/broker";

/// The update topic of broker `name`.
pub fn update_topic(name: &str) -> String {
    format!("{UPDATE_TOPIC_PREFIX}/{name}")
}

/// `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// [`AGENT_CONFIG_VERSION`].
    pub version: u32,
    /// The deployed broker's name: updates for another broker are refused.
    pub broker: String,
    /// The topic the bench publishes this broker's updates on (retained).
    pub topic: String,
    /// The pinned trust anchor: the site CA's P-256 public key (SEC1, hex), the key that
    /// signs the CRL. Only updates signed with it are installed.
    pub signer_public_key: String,
    /// Installed sequence number and time (written atomically by the agent, 0600).
    pub state_file: PathBuf,
    /// The connection to the broker itself.
    pub mqtt: AgentMqtt,
    /// The mosquitto this agent owns.
    pub mosquitto: AgentBroker,
}

/// The agent's MQTT client (mutual TLS with its own certificate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentMqtt {
    /// Broker address (its own machine: usually 127.0.0.1).
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// Name to check in the broker's certificate, when it differs from `host`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Client id = the certificate's CN.
    pub client_id: String,
    /// The site CA bundle.
    pub ca_file: PathBuf,
    /// The agent's certificate.
    pub cert_file: PathBuf,
    /// The agent's key (0600).
    pub key_file: PathBuf,
}

/// Where the broker's files are and how it is reloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBroker {
    /// The broker directory (`acl`, `crl.pem`, `broker.crt`, `mosquitto.conf`).
    pub dir: PathBuf,
    /// mosquitto's pid file (`pid_file` of its mosquitto.conf): the one process reloaded.
    pub pid_file: PathBuf,
    /// Group that reads the broker's files (mosquitto's account); none: the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

impl AgentConfig {
    /// Loads and checks `agent.toml`.
    pub fn load(path: &Path) -> Result<AgentConfig, Error> {
        let file = path.display().to_string();
        let text = read_text(path, MAX_AGENT_CONFIG_LEN)?;
        let c: AgentConfig = parse_toml(&file, &text)?;
        let bad = |field: &str, expected: &str| Error::Invalid {
            at: Location::field(&file, field),
            expected: expected.to_string(),
        };
        if c.version != AGENT_CONFIG_VERSION {
            return Err(bad("version", "1"));
        }
        crate::topic::check_identity(&c.broker)
            .map_err(|e| bad("broker", &format!("a name: {e}")))?;
        if c.topic != update_topic(&c.broker) {
            return Err(bad("topic", &update_topic(&c.broker)));
        }
        let key = hex::decode(&c.signer_public_key).unwrap_or_default();
        if key.len() != 65 || key[0] != 4 {
            return Err(bad(
                "signer_public_key",
                "an uncompressed P-256 public key (130 hex digits starting 04)",
            ));
        }
        for (field, p) in [
            ("state_file", &c.state_file),
            ("mqtt.ca_file", &c.mqtt.ca_file),
            ("mqtt.cert_file", &c.mqtt.cert_file),
            ("mqtt.key_file", &c.mqtt.key_file),
            ("mosquitto.dir", &c.mosquitto.dir),
            ("mosquitto.pid_file", &c.mosquitto.pid_file),
        ] {
            if !p.is_absolute() {
                return Err(bad(field, "an absolute path"));
            }
        }
        Ok(c)
    }

    /// The pinned key, SEC1 bytes (checked by [`AgentConfig::load`]).
    pub fn signer_key(&self) -> Vec<u8> {
        hex::decode(&self.signer_public_key).unwrap_or_default()
    }

    /// The configuration as TOML.
    pub fn to_toml(&self) -> Result<String, Error> {
        toml::to_string_pretty(self).map_err(|e| Error::Encode(e.to_string()))
    }
}
