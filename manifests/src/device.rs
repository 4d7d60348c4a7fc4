//! The device configuration blob: what the provisioner writes into a sensor's store (blob name
//! [`BLOB_NAME`]) and what the firmware reads at boot to connect and publish.
//!
//! The encoding is TOML text with a format number, bounded to [`MAX_BLOB_LEN`] bytes, so an
//! operator can read it back with `fw get` and a newer firmware can refuse an unknown format
//! instead of misreading it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Location};

/// Name of the blob in the device store that holds this configuration.
pub const BLOB_NAME: &str = "device.toml";
/// Largest accepted blob, in bytes. The firmware store rejects anything larger.
pub const MAX_BLOB_LEN: usize = 2048;
/// The only format number this version writes and reads.
pub const FORMAT: u32 = 1;

/// What a sensor measures; decides the simulated signal and the payload's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// Degrees Celsius.
    Temperature,
    /// Relative humidity, percent.
    Humidity,
    /// Illuminance, lux.
    Luminosity,
    /// Door contact: "open" / "closed".
    Door,
    /// Any other numeric value.
    Other,
}

/// One published stream of readings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reading {
    /// Topic the reading is published on, e.g. `maison/salon/temperature`. No wildcards.
    pub topic: String,
    /// What is measured.
    pub quantity: Quantity,
}

/// The configuration a provisioned sensor runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Blob format number; [`FORMAT`].
    pub format: u32,
    /// Device identity: the certificate's CN and the MQTT username the broker derives from it.
    pub device_id: String,
    /// MQTT client id: the device id. The broker of `emit broker` replaces any other client
    /// id by the certificate's CN (`use_username_as_clientid`); [`DeviceConfig::to_blob`]
    /// refuses a different one, and the firmware connects with the device id whatever a blob
    /// read back says.
    pub client_id: String,
    /// Address the device connects to: a DNS name or an IP literal.
    pub broker_host: String,
    /// Name checked against the broker certificate's SAN (DNS name or IP literal).
    pub tls_server_name: String,
    /// Broker TLS port.
    pub port: u16,
    /// Streams to publish.
    pub readings: Vec<Reading>,
    /// Optional retained status topic ("online"/"offline" via last will).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_topic: Option<String>,
    /// MQTT QoS for readings: 0, 1 or 2.
    pub qos: u8,
    /// Publish readings with the retain flag.
    pub retain: bool,
    /// MQTT keep-alive in seconds.
    pub keep_alive_s: u16,
    /// MQTT clean session flag (false = persistent session).
    pub clean_session: bool,
    /// Seconds between readings.
    pub interval_s: u32,
    /// Chip slot holding the TLS private key.
    pub key_slot: u8,
    /// Renewal in the field (absent: the board renews only at the bench).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal: Option<FieldRenewal>,
}

/// Where and when a board renews its certificate over its MQTT session: it publishes a
/// chip-signed CSR on [`FieldRenewal::renew_topic`] and reads the answer on
/// [`FieldRenewal::cert_topic`] (the broker's ACL gives each device only its own pair).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldRenewal {
    /// Topic prefix of the renewal topics, outside the sensor tree: `<topics.root>_pki`.
    pub topic_prefix: String,
    /// Renew at this fraction of the lifetime, in thousandths (1..999; default 667).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_at_permille: Option<u16>,
    /// Renew this many days before expiry (instead of `renew_at_permille`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_days: Option<u32>,
    /// Renew this many seconds before expiry (a profile's `renew_before` duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before_s: Option<u64>,
}

impl FieldRenewal {
    /// The renewal topic prefix of a site whose topic root is `root`.
    pub fn prefix_for(root: &str) -> String {
        format!("{root}_pki")
    }
    /// Where device `id` publishes its CSR.
    pub fn renew_topic(prefix: &str, id: &str) -> String {
        format!("{prefix}/renew/{id}")
    }
    /// Where device `id` receives its new certificate.
    pub fn cert_topic(prefix: &str, id: &str) -> String {
        format!("{prefix}/cert/{id}")
    }
    /// The Unix time from which a certificate valid from `not_before` to `not_after` is due.
    pub fn renew_at(&self, not_before: i64, not_after: i64) -> i64 {
        let life = (not_after - not_before).max(0);
        let window = match (self.renew_before_days, self.renew_before_s) {
            (Some(d), _) => Some(i64::from(d) * 86_400),
            (None, Some(s)) => i64::try_from(s).ok(),
            (None, None) => None,
        };
        if let Some(window) = window
            && window < life
        {
            return not_after - window;
        }
        let permille = i64::from(self.renew_at_permille.unwrap_or(667).clamp(1, 999));
        not_before + life * permille / 1000
    }
}

impl DeviceConfig {
    /// Encodes the blob. Fails only if the configuration is invalid or too large.
    pub fn to_blob(&self) -> Result<Vec<u8>, Error> {
        self.validate()?;
        self.check_client_id()?;
        let text = toml::to_string(self).map_err(|e| Error::Encode(e.to_string()))?;
        if text.len() > MAX_BLOB_LEN {
            return Err(Error::TooLarge {
                what: "device configuration",
                len: text.len(),
                max: MAX_BLOB_LEN,
            });
        }
        Ok(text.into_bytes())
    }

    /// Decodes and validates a blob read from a device (hostile input: never panics).
    pub fn from_blob(bytes: &[u8]) -> Result<Self, Error> {
        if bytes.len() > MAX_BLOB_LEN {
            return Err(Error::TooLarge {
                what: "device configuration",
                len: bytes.len(),
                max: MAX_BLOB_LEN,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| Error::NotUtf8 {
            file: BLOB_NAME.into(),
        })?;
        let cfg: DeviceConfig = crate::error::parse_toml(BLOB_NAME, text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The client id is the identity: refused otherwise, with why. (Not part of
    /// [`DeviceConfig::validate`]: a board whose stored blob predates the rule still boots, and
    /// the broker replaces its client id by the CN.)
    pub fn check_client_id(&self) -> Result<(), Error> {
        if self.client_id == self.device_id {
            return Ok(());
        }
        Err(Error::Invalid {
            at: Location::field(BLOB_NAME, "client_id"),
            expected: format!(
                "the device id `{}` (found `{}`): the broker replaces the client id by the certificate's CN (use_username_as_clientid), so no other value can be used",
                self.device_id, self.client_id
            ),
        })
    }

    /// Checks the semantic rules a TOML schema cannot express.
    pub fn validate(&self) -> Result<(), Error> {
        let at = |field: &str, expected: &str| Error::Invalid {
            at: Location::field(BLOB_NAME, field),
            expected: expected.to_string(),
        };
        if self.format != FORMAT {
            return Err(at(
                "format",
                &format!("format {FORMAT} (this blob is format {})", self.format),
            ));
        }
        crate::topic::check_identity(&self.device_id).map_err(|e| at("device_id", &e))?;
        if self.client_id.is_empty() || self.client_id.len() > 64 {
            return Err(at("client_id", "a client id of 1 to 64 characters"));
        }
        if self.broker_host.is_empty() || self.tls_server_name.is_empty() {
            return Err(at("broker_host", "a broker host and TLS server name"));
        }
        if self.port == 0 {
            return Err(at("port", "a TCP port 1..65535"));
        }
        if self.qos > 2 {
            return Err(at("qos", "0, 1 or 2"));
        }
        if self.readings.is_empty() {
            return Err(at("readings", "at least one reading"));
        }
        for r in &self.readings {
            crate::topic::check_topic_name(&r.topic).map_err(|e| at("readings.topic", &e))?;
        }
        if let Some(t) = &self.status_topic {
            crate::topic::check_topic_name(t).map_err(|e| at("status_topic", &e))?;
        }
        if self.interval_s == 0 {
            return Err(at("interval_s", "an interval of at least 1 second"));
        }
        if self.key_slot > 15 {
            return Err(at("key_slot", "a slot number 0..15"));
        }
        if let Some(r) = &self.renewal {
            crate::topic::check_topic_name(&r.topic_prefix)
                .map_err(|e| at("renewal.topic_prefix", &e))?;
            if r.renew_at_permille.is_some_and(|p| !(1..=999).contains(&p)) {
                return Err(at("renewal.renew_at_permille", "1..999 thousandths"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_window_in_seconds_counts_back_from_expiry() {
        let r = FieldRenewal {
            topic_prefix: "maison_pki".into(),
            renew_at_permille: None,
            renew_before_days: None,
            renew_before_s: Some(150),
        };
        assert_eq!(r.renew_at(1000, 1180), 1030);
        // A window as long as the certificate falls back to two thirds.
        let whole = FieldRenewal {
            renew_before_s: Some(180),
            ..r.clone()
        };
        assert_eq!(whole.renew_at(0, 180), 120);
        let days = FieldRenewal {
            renew_before_days: Some(1),
            renew_before_s: None,
            ..r
        };
        assert_eq!(days.renew_at(0, 10 * 86_400), 9 * 86_400);
    }

    fn sample() -> DeviceConfig {
        DeviceConfig {
            format: FORMAT,
            device_id: "salon-1".into(),
            client_id: "salon-1".into(),
            broker_host: "127.0.0.1".into(),
            tls_server_name: "broker.maison.lan".into(),
            port: 8883,
            readings: vec![Reading {
                topic: "maison/salon/temperature".into(),
                quantity: Quantity::Temperature,
            }],
            status_topic: Some("maison/salon/status".into()),
            qos: 1,
            retain: false,
            keep_alive_s: 30,
            clean_session: true,
            interval_s: 5,
            key_slot: 0,
            renewal: Some(FieldRenewal {
                topic_prefix: "maison_pki".into(),
                renew_at_permille: Some(667),
                renew_before_days: None,
                renew_before_s: None,
            }),
        }
    }

    #[test]
    fn blob_round_trips_byte_for_byte() {
        let blob = sample().to_blob().expect("encode");
        assert_eq!(DeviceConfig::from_blob(&blob).expect("decode"), sample());
    }

    #[test]
    fn hostile_blobs_are_rejected_not_panicked_on() {
        assert!(DeviceConfig::from_blob(&[0xff, 0xfe]).is_err());
        assert!(DeviceConfig::from_blob(&vec![b'a'; MAX_BLOB_LEN + 1]).is_err());
        let mut wild = sample();
        wild.readings[0].topic = "maison/#".into();
        assert!(wild.to_blob().is_err());
        let mut qos = sample();
        qos.qos = 3;
        let err = qos.to_blob().expect_err("qos 3");
        assert!(err.to_string().contains("qos"), "{err}");
    }

    #[test]
    fn a_client_id_other_than_the_identity_is_not_written_but_still_read() {
        let mut other = sample();
        other.client_id = "passerelle".into();
        let err = other.to_blob().expect_err("client id").to_string();
        assert!(
            err.contains("client_id")
                && err.contains("`salon-1`")
                && err.contains("use_username_as_clientid"),
            "{err}"
        );
        // A blob written before the rule still decodes (the firmware then uses the device id).
        let text = toml::to_string(&other).expect("toml");
        let back = DeviceConfig::from_blob(text.as_bytes()).expect("decodes");
        assert_eq!(back.client_id, "passerelle");
        assert!(back.check_client_id().is_err());
    }
}
