//! The simulated board playing stock Mongoose OS (`sensor-sim --protocol mos`): RPC over
//! UART with the `rpc-uart` channel's framing, and the services a provisioning host uses:
//! `Sys.GetInfo`, `ATCA.*` (rpc-service-atca, on the emulated chip), `FS.Put`/`FS.Get`/
//! `FS.List` (into the same file-backed store the kit protocol uses), `Config.Get`/`Set`/
//! `Save` (the saved configuration is the store file [`CONFIG_FILE`]).
//!
//! As the firmware does (see `reference/mongoose-rpc.md`): frames end with `\n` or `"""`
//! (after a `"""` the board answers in that legacy framing); bytes before the first `{` are
//! ignored; a byte of 0x80 or more throws the whole receive buffer away; more than
//! [`MAX_FRAME`] + 6 bytes without a delimiter are dropped; a CRC (8 or more metadata
//! characters) is checked and a mismatch drops the frame with a "Corrupted frame" log line;
//! once the host has sent a valid CRC, replies carry one; a frame holding only 0x04 is the
//! ready question, answered with the same. Between frames the board writes log lines on the
//! same UART, as a real one does.
//!
//! The sensor application reads the saved configuration: `mqtt.server`, `mqtt.client_id`,
//! `mqtt.ssl_cert`, `mqtt.ssl_ca_cert`, `mqtt.ssl_key` (`ATCA:<slot>`: the chip signs),
//! `mqtt.keep_alive`, `mqtt.clean_session`, `mqtt.will_topic` (the status topic), `device.id`
//! and `sensor.*` (readings as JSON text, QoS, retain, interval), translated into the
//! [`DeviceConfig`] the application runs with.

use std::io::Write;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use atecc::client::{Client, ClientError, Transport};
use atecc::config::ConfigZone;
use atecc::opcode::{LockTarget, UpdateExtraMode};
use atecc::packet::Command;
use manifests::device::{DeviceConfig, Reading};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::{Map, Value, json};

use super::bus::{EmulatedBus, SharedChip};
use super::mqtt::Provisioned;
use super::pty::Pty;
use super::serial::{BoardEvents, SharedStore};
use crate::chip::{Atecc, ChipError, MAX_RESPONSE};
use crate::crc::crc32;
use crate::pacing::Pacer;
use crate::store::{MAX_BLOB_LEN, STORE_CAPACITY, valid_name};

/// `rpc.max_frame_size`.
pub const MAX_FRAME: usize = 4096;
/// The store file holding the saved configuration (Mongoose's user-level `conf9.json`).
pub const CONFIG_FILE: &str = "conf9.json";
/// The ready byte.
const EOF: u8 = 0x04;
/// Idle log chatter period.
const CHATTER_EVERY: Duration = Duration::from_millis(1500);

/// Standard base64, as Mongoose's `%V`.
pub mod b64 {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    /// Encodes with padding.
    pub fn encode(data: &[u8]) -> String {
        let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
        for chunk in data.chunks(3) {
            let b = [
                chunk[0],
                chunk.get(1).copied().unwrap_or(0),
                chunk.get(2).copied().unwrap_or(0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    /// Decodes padded or unpadded base64.
    pub fn decode(text: &str) -> Option<Vec<u8>> {
        let t = text.trim_end_matches('=').as_bytes();
        if t.len() % 4 == 1 {
            return None;
        }
        let mut out = Vec::with_capacity(t.len() * 3 / 4);
        for chunk in t.chunks(4) {
            let mut n = 0u32;
            for (i, &c) in chunk.iter().enumerate() {
                let v = ALPHABET.iter().position(|&a| a == c)? as u32;
                n |= v << (18 - 6 * i);
            }
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..chunk.len() - 1]);
        }
        Some(out)
    }
}

/// What the receive side made of the bytes so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// A frame: its JSON text and whether it carried a valid CRC.
    Frame {
        /// The JSON bytes (from the first `{` to the last `}`).
        json: Vec<u8>,
        /// A CRC was present and matched.
        crc: bool,
    },
    /// The ready question (a frame of only 0x04).
    Ready,
    /// A frame whose CRC did not match: dropped without a reply.
    Corrupted,
    /// The buffer passed the frame limit without a delimiter: dropped.
    Oversized,
    /// A byte of 0x80 or more: the receive buffer was thrown away.
    NotAscii,
}

/// The board's receive buffer.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    /// The host used `"""` framing: answer in kind.
    pub compat: bool,
}

impl FrameReader {
    /// One byte in; maybe an event out.
    pub fn push(&mut self, b: u8) -> Option<Received> {
        if b >= 0x80 {
            self.buf.clear();
            return Some(Received::NotAscii);
        }
        self.buf.push(b);
        let delim = if b == b'\n' {
            1
        } else if self.buf.ends_with(b"\"\"\"") {
            self.compat = true;
            3
        } else {
            if self.buf.len() > MAX_FRAME + 6 {
                self.buf.clear();
                return Some(Received::Oversized);
            }
            return None;
        };
        let token = self.buf[..self.buf.len() - delim].to_vec();
        self.buf.clear();
        let t = token.trim_ascii();
        if t == [EOF] {
            return Some(Received::Ready);
        }
        let start = t.iter().position(|&c| c == b'{')?;
        let close = t.iter().rposition(|&c| c == b'}')?;
        if close < start {
            return None;
        }
        let json = &t[start..=close];
        let meta = &t[close + 1..];
        if meta.len() < 8 {
            return Some(Received::Frame {
                json: json.to_vec(),
                crc: false,
            });
        }
        let field = meta.split(|&c| c == b',').next().unwrap_or_default();
        let crc = std::str::from_utf8(field)
            .ok()
            .filter(|f| f.len() == 8)
            .and_then(|f| u32::from_str_radix(f, 16).ok());
        if crc == Some(crc32(json)) {
            Some(Received::Frame {
                json: json.to_vec(),
                crc: true,
            })
        } else {
            Some(Received::Corrupted)
        }
    }
}

/// The [`Transport`] of the firmware's cryptoauthlib: the chip on the board's I2C bus.
struct OnBus<'a>(&'a mut Atecc<EmulatedBus>);

impl Transport for OnBus<'_> {
    type Error = ChipError;
    fn transact(&mut self, packet: &[u8], response: &mut [u8]) -> Result<usize, ChipError> {
        let mut frame = [0u8; MAX_RESPONSE];
        let n = self.0.transact(packet, &mut frame)?;
        response
            .get_mut(..n)
            .ok_or(ChipError::BadResponse)?
            .copy_from_slice(&frame[..n]);
        Ok(n)
    }
}

/// cryptoauthlib's ATCA_STATUS for a failure, as the service prints it.
fn atca_status(e: ClientError<ChipError>) -> u8 {
    use atecc::Status;
    use atecc::packet::Error;
    match e {
        ClientError::Chip(Error::Status(s)) => match s {
            Status::Miscompare => 0xD1,
            Status::ParseError => 0xD2,
            Status::EccFault => 0xD6,
            Status::ExecutionError => 0xF4,
            Status::WatchdogExpiring => 0xEE,
            Status::CommError => 0xD4,
            _ => 0xD5,
        },
        ClientError::Chip(Error::ResponseCrc) => 0xE5,
        ClientError::Chip(_) => 0xE2,
        ClientError::Transport(ChipError::Timeout) => 0xF1,
        ClientError::Transport(_) => 0xF0,
    }
}

/// An RPC failure: code and message.
type RpcResult = Result<Value, (i64, String)>;

fn fail(code: i64, message: impl Into<String>) -> (i64, String) {
    (code, message.into())
}

/// The configuration schema this firmware build has (the keys Config.Set accepts), with
/// their defaults.
fn defaults() -> Value {
    json!({
        "device": { "id": "" },
        "i2c": { "enable": true },
        "sys": { "atca": { "enable": true, "i2c_bus": 0, "i2c_addr": 96, "ecdh_slots_mask": 12 } },
        "rpc": { "uart": { "uart_no": 0, "baud_rate": 115200, "fc_type": 2 }, "max_frame_size": MAX_FRAME },
        "mqtt": {
            "enable": false, "server": "", "client_id": "", "user": "", "pass": "",
            "ssl_cert": "", "ssl_key": "", "ssl_ca_cert": "",
            "clean_session": true, "keep_alive": 60,
            "will_topic": "", "will_message": "", "will_retain": false, "max_qos": 2
        },
        "sensor": { "readings": "", "qos": 1, "retain": false, "interval_s": 10 }
    })
}

/// Merges `patch` into `base`, refusing keys and types the schema does not have.
fn merge_checked(base: &mut Value, patch: &Value, path: &str) -> Result<(), String> {
    let (Value::Object(b), Value::Object(p)) = (&mut *base, patch) else {
        return Err(format!("{path}: expected an object"));
    };
    for (k, v) in p {
        let here = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let Some(slot) = b.get_mut(k) else {
            return Err(format!("unknown config key {here}"));
        };
        match (&*slot, v) {
            (Value::Object(_), Value::Object(_)) => merge_checked(slot, v, &here)?,
            (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => {
                *slot = v.clone()
            }
            (Value::Number(_), Value::Number(n)) if n.is_i64() || n.is_u64() => *slot = v.clone(),
            _ => return Err(format!("{here}: wrong type")),
        }
    }
    Ok(())
}

/// The board's configuration: defaults overlaid with the saved file.
pub fn load_config(saved: Option<&[u8]>) -> Value {
    let mut c = defaults();
    if let Some(v) = saved.and_then(|b| serde_json::from_slice::<Value>(b).ok()) {
        // A damaged or foreign file is ignored key by key, as a firmware falls back to
        // defaults.
        let _ = merge_checked(&mut c, &v, "");
    }
    c
}

/// Translates the Mongoose configuration into what the sensor application runs with.
pub fn device_config(c: &Value) -> Result<(DeviceConfig, String, String), String> {
    let s = |path: &str| -> String {
        let mut v = c;
        for k in path.split('.') {
            v = &v[k];
        }
        v.as_str().unwrap_or("").to_string()
    };
    let n = |path: &str| -> u64 {
        let mut v = c;
        for k in path.split('.') {
            v = &v[k];
        }
        v.as_u64().unwrap_or(0)
    };
    if c["mqtt"]["enable"] != json!(true) {
        return Err("mqtt.enable is false".into());
    }
    let server = s("mqtt.server");
    let (host, port) = server
        .rsplit_once(':')
        .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        .ok_or(format!("mqtt.server `{server}` is not host:port"))?;
    let key = s("mqtt.ssl_key");
    let slot: u8 = key
        .strip_prefix("ATCA:")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n < 16)
        .ok_or(format!(
            "mqtt.ssl_key `{key}`: this board keeps its key in the chip (ATCA:<slot>)"
        ))?;
    // The mbedTLS hook refuses a slot reserved for ECDHE.
    if n("sys.atca.ecdh_slots_mask") & (1 << slot) != 0 {
        return Err(format!(
            "mqtt.ssl_key ATCA:{slot} is in sys.atca.ecdh_slots_mask: refused"
        ));
    }
    let readings: Vec<Reading> =
        serde_json::from_str(&s("sensor.readings")).map_err(|e| format!("sensor.readings: {e}"))?;
    let will = s("mqtt.will_topic");
    let cfg = DeviceConfig {
        format: manifests::device::FORMAT,
        device_id: s("device.id"),
        client_id: s("mqtt.client_id"),
        // Mongoose checks the server certificate against the host it connects to.
        tls_server_name: host.clone(),
        broker_host: host,
        port,
        readings,
        status_topic: (!will.is_empty()).then_some(will),
        qos: u8::try_from(n("sensor.qos")).unwrap_or(u8::MAX),
        retain: c["sensor"]["retain"] == json!(true),
        keep_alive_s: u16::try_from(n("mqtt.keep_alive")).unwrap_or(u16::MAX),
        clean_session: c["mqtt"]["clean_session"] != json!(false),
        interval_s: u32::try_from(n("sensor.interval_s")).unwrap_or(0),
        key_slot: slot,
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok((cfg, s("mqtt.ssl_cert"), s("mqtt.ssl_ca_cert")))
}

/// What the application needs, read from the store of a Mongoose board.
pub fn provisioned(
    store: &crate::store::Store<super::persist::FilePersist>,
) -> Result<Provisioned, String> {
    let config = load_config(store.blob(CONFIG_FILE.as_bytes()));
    let (mut cfg, cert, ca) = device_config(&config)?;
    // The broker replaces the client id by the certificate's CN: connect as the identity.
    if let Err(e) = cfg.check_client_id() {
        eprintln!(
            "sensor-sim: mqtt.client_id: {e}; connecting as `{}`",
            cfg.device_id
        );
        cfg.client_id = cfg.device_id.clone();
    }
    let blob = cfg.to_blob().map_err(|e| e.to_string())?;
    Provisioned::from_blobs(
        Some(&blob),
        store.blob(cert.trim_start_matches('/').as_bytes()),
        store.blob(ca.trim_start_matches('/').as_bytes()),
    )
}

/// The firmware's services.
pub struct MosBoard {
    config: Value,
    atca: bool,
    device_id: String,
    started: Instant,
}

/// What handling a request changed, for the rest of the board.
#[derive(Debug, Default)]
pub struct Effects {
    /// Files written.
    pub changed: Vec<String>,
    /// Log lines to write before the reply.
    pub log: Vec<String>,
    /// Reboot after replying.
    pub reboot: bool,
}

fn slot_param(p: &Value) -> Result<u8, (i64, String)> {
    p["slot"]
        .as_u64()
        .filter(|s| *s < 16)
        .map(|s| s as u8)
        .ok_or_else(|| fail(400, "Invalid slot"))
}

fn b64_param(p: &Value, key: &str) -> Vec<u8> {
    p[key].as_str().and_then(b64::decode).unwrap_or_default()
}

impl MosBoard {
    /// Boots: reads the saved configuration and looks for the chip.
    pub fn boot(store: &SharedStore, chip: &SharedChip) -> (MosBoard, Vec<String>) {
        let config = store
            .lock()
            .map(|s| load_config(s.blob(CONFIG_FILE.as_bytes())))
            .unwrap_or_else(|_| defaults());
        let mut log = vec![
            "ets Jan  8 2013,rst cause:2, boot mode:(3,6)".to_string(),
            format!(
                "mgos_init            Mongoose OS sensor-sim {} (esp8266)",
                env!("CARGO_PKG_VERSION")
            ),
        ];
        let mut device_id = "esp8266_000000".to_string();
        let enabled = config["sys"]["atca"]["enable"] == json!(true)
            && config["i2c"]["enable"] == json!(true);
        let mut atca = false;
        if enabled && let Ok(mut c) = chip.lock() {
            c.wake().ok();
            let zone = Client::new(OnBus(&mut c)).read_config_zone();
            let _ = c.idle();
            match zone {
                Ok(z) => {
                    let sn = z.serial_number();
                    device_id = format!("esp8266_{}", hex_upper(&sn[5..8]));
                    log.push(format!(
                        "mgos_atca_init       ATCA: ATECC508A rev 0x{} S/N 0x{}, config is {}, data is {}",
                        hex_upper(&z.revision()[2..4]),
                        hex_upper(&sn),
                        if z.is_config_locked() { "locked" } else { "unlocked" },
                        if z.is_data_locked() { "locked" } else { "unlocked" },
                    ));
                    atca = true;
                }
                Err(_) => log.push("mgos_atca_init       ATCA: Chip is not available".into()),
            }
        }
        (
            MosBoard {
                config,
                atca,
                device_id,
                started: Instant::now(),
            },
            log,
        )
    }

    /// The board's id (`esp8266_XXXXXX`).
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Handles one request; `None` when it has no id (no reply).
    pub fn handle(
        &mut self,
        req: &Value,
        chip: &SharedChip,
        store: &SharedStore,
        fx: &mut Effects,
    ) -> Option<Value> {
        let method = req["method"].as_str().unwrap_or("");
        let empty = Value::Object(Map::new());
        let params = req
            .get("params")
            .or_else(|| req.get("args"))
            .filter(|p| p.is_object())
            .unwrap_or(&empty);
        fx.log
            .push(format!("mg_rpc_handle_request {method} via UART0"));
        let result = self.dispatch(method, params, chip, store, fx);
        let id = req.get("id")?;
        if id.is_null() {
            return None;
        }
        let mut reply = json!({
            "id": id,
            "src": self.device_id,
            "dst": req["src"].as_str().unwrap_or("mos"),
        });
        if let Some(tag) = req.get("tag") {
            reply["tag"] = tag.clone();
        }
        match result {
            Ok(v) => reply["result"] = v,
            Err((code, message)) => reply["error"] = json!({ "code": code, "message": message }),
        }
        Some(reply)
    }

    fn dispatch(
        &mut self,
        method: &str,
        p: &Value,
        chip: &SharedChip,
        store: &SharedStore,
        fx: &mut Effects,
    ) -> RpcResult {
        if method.starts_with("ATCA.") && !self.atca {
            return Err(fail(404, format!("No handler for {method}")));
        }
        match method {
            "Sys.GetInfo" => {
                let free = store.lock().map(|s| s.free()).unwrap_or(0);
                Ok(json!({
                    "id": self.device_id,
                    "app": "sensor-sim",
                    "fw_version": env!("CARGO_PKG_VERSION"),
                    "fw_id": "sensor-sim",
                    "arch": "esp8266",
                    "uptime": self.started.elapsed().as_secs(),
                    "fs_size": STORE_CAPACITY,
                    "fs_free": free,
                }))
            }
            "FS.Put" => self.fs_put(p, store, fx),
            "FS.Get" => {
                let name = file_name(p)?;
                let s = store.lock().map_err(|_| fail(500, "store unavailable"))?;
                let data = s
                    .blob(name.as_bytes())
                    .ok_or_else(|| fail(400, format!("failed to open {name}")))?;
                let offset =
                    usize::try_from(p["offset"].as_u64().unwrap_or(0)).unwrap_or(usize::MAX);
                let len = usize::try_from(p["len"].as_u64().unwrap_or(1024))
                    .unwrap_or(1024)
                    .min(2048);
                let from = offset.min(data.len());
                let to = from.saturating_add(len).min(data.len());
                Ok(json!({ "data": b64::encode(&data[from..to]), "left": data.len() - to }))
            }
            "FS.List" => {
                let s = store.lock().map_err(|_| fail(500, "store unavailable"))?;
                let mut names = Vec::new();
                s.for_each(|n, _| names.push(String::from_utf8_lossy(n).into_owned()));
                Ok(json!(names))
            }
            "Config.Get" => {
                let mut v = &self.config;
                if let Some(key) = p["key"].as_str().filter(|k| !k.is_empty()) {
                    for k in key.split('.') {
                        v = v
                            .get(k)
                            .ok_or_else(|| fail(404, format!("invalid config key {key}")))?;
                    }
                }
                Ok(v.clone())
            }
            "Config.Set" => {
                let mut next = self.config.clone();
                merge_checked(&mut next, &p["config"], "").map_err(|e| fail(400, e))?;
                self.config = next;
                let save = p["save"] == json!(true);
                if save {
                    self.save(store, fx)?;
                }
                fx.reboot = save && p["reboot"] == json!(true);
                Ok(json!({ "saved": save }))
            }
            "Config.Save" => {
                self.save(store, fx)?;
                fx.reboot = p["reboot"] == json!(true);
                Ok(json!({ "saved": true }))
            }
            "Sys.Reboot" => {
                fx.reboot = true;
                Ok(Value::Null)
            }
            m if m.starts_with("ATCA.") => self.atca(m, p, chip, fx),
            _ => Err(fail(404, format!("No handler for {method}"))),
        }
    }

    fn save(&mut self, store: &SharedStore, fx: &mut Effects) -> Result<(), (i64, String)> {
        let text = self.config.to_string().into_bytes();
        write_file(store, CONFIG_FILE, &text)?;
        fx.changed.push(CONFIG_FILE.into());
        fx.log.push("mgos_config_save     Saved config".into());
        Ok(())
    }

    fn fs_put(&mut self, p: &Value, store: &SharedStore, fx: &mut Effects) -> RpcResult {
        let name = file_name(p)?;
        let data = p["data"]
            .as_str()
            .and_then(b64::decode)
            .ok_or_else(|| fail(400, "data is required and must be base64"))?;
        let mut content = if p["append"] == json!(true) {
            store
                .lock()
                .map_err(|_| fail(500, "store unavailable"))?
                .blob(name.as_bytes())
                .map(<[u8]>::to_vec)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        content.extend_from_slice(&data);
        if content.len() > MAX_BLOB_LEN {
            return Err(fail(500, format!("failed to write {name}: file too large")));
        }
        write_file(store, &name, &content)?;
        fx.changed.push(name);
        Ok(Value::Null)
    }

    fn atca(&mut self, method: &str, p: &Value, chip: &SharedChip, fx: &mut Effects) -> RpcResult {
        let mut guard = chip.lock().map_err(|_| fail(500, "chip unavailable"))?;
        guard
            .wake()
            .map_err(|_| fail(500, "ATCA wake failed: 0xf0"))?;
        let r = Self::atca_on(method, p, &mut Client::new(OnBus(&mut guard)), fx);
        let _ = guard.idle();
        r
    }

    fn atca_on(method: &str, p: &Value, c: &mut Client<OnBus<'_>>, fx: &mut Effects) -> RpcResult {
        let chip_fail =
            |what: String| move |e| fail(500, format!("{what}: 0x{:02x}", atca_status(e)));
        match method {
            "ATCA.GetConfig" => {
                let z = c
                    .read_config_zone()
                    .map_err(chip_fail("Failed to read config zone block 0".into()))?;
                Ok(json!({ "config": b64::encode(&z.0) }))
            }
            "ATCA.SetConfig" => {
                let bytes = b64_param(p, "config");
                let zone: [u8; 128] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| fail(400, format!("Expected 128 bytes, got {}", bytes.len())))?;
                let zone = ConfigZone(zone);
                c.write_config_zone(&zone)
                    .map_err(chip_fail("Failed to set config".into()))?;
                c.execute_status(&Command::update_extra(
                    UpdateExtraMode::UserExtra,
                    u16::from(zone.user_extra()),
                ))
                .map_err(chip_fail("Failed to set UserExtra".into()))?;
                c.execute_status(&Command::update_extra(
                    UpdateExtraMode::Selector,
                    u16::from(zone.selector()),
                ))
                .map_err(chip_fail("Failed to set Selector".into()))?;
                Ok(Value::Null)
            }
            "ATCA.LockZone" => {
                let zone = p["zone"].as_u64();
                let target = match zone {
                    Some(0) => LockTarget::Config,
                    Some(1) => LockTarget::Data,
                    _ => return Err(fail(403, "Invalid zone")),
                };
                c.execute_status(&Command::lock_unchecked(target))
                    .map_err(chip_fail(format!(
                        "Failed to lock zone {}",
                        zone.unwrap_or(0)
                    )))?;
                fx.log.push(format!(
                    "mgos_atca_service    {} zone locked",
                    if zone == Some(0) { "Config" } else { "Data" }
                ));
                Ok(Value::Null)
            }
            "ATCA.SetKey" => {
                let slot = slot_param(p)?;
                let block = u8::try_from(p["block"].as_u64().unwrap_or(0)).unwrap_or(u8::MAX);
                let ecc = p["ecc"] == json!(true);
                let mut key = b64_param(p, "key");
                let mut wkey = p.get("wkey").map(|_| b64_param(p, "wkey"));
                let wkslot = u8::try_from(p["wkslot"].as_u64().unwrap_or(0)).unwrap_or(u8::MAX);
                let r = set_key(c, slot, block, ecc, &key, wkey.as_deref(), wkslot);
                // The plaintext key and write key crossed the wire; at least do not keep them.
                key.fill(0);
                if let Some(w) = wkey.as_mut() {
                    w.fill(0);
                }
                r
            }
            "ATCA.GenKey" => {
                let slot = slot_param(p)?;
                let k = c
                    .gen_key(slot)
                    .map_err(chip_fail("Failed to generate key".into()))?;
                Ok(json!({ "pubkey": b64::encode(&k) }))
            }
            "ATCA.GetPubKey" => {
                let slot = slot_param(p)?;
                let k = c
                    .public_key(slot)
                    .map_err(chip_fail("Failed to get pub key".into()))?;
                Ok(json!({ "pubkey": b64::encode(&k) }))
            }
            "ATCA.Sign" => {
                let slot = slot_param(p)?;
                let d = b64_param(p, "digest");
                let digest: [u8; 32] = d
                    .as_slice()
                    .try_into()
                    .map_err(|_| fail(400, format!("Expected 32 bytes, got {}", d.len())))?;
                // atcab_sign: Random (refreshes the RNG seed), Nonce pass-through, Sign.
                c.random().map_err(chip_fail("Failed to sign".into()))?;
                let sig = c
                    .sign_digest(slot, &digest)
                    .map_err(chip_fail("Failed to sign".into()))?;
                Ok(json!({ "signature": b64::encode(&sig) }))
            }
            _ => Err(fail(404, format!("No handler for {method}"))),
        }
    }
}

fn set_key(
    c: &mut Client<OnBus<'_>>,
    slot: u8,
    block: u8,
    ecc: bool,
    key: &[u8],
    wkey: Option<&[u8]>,
    wkslot: u8,
) -> RpcResult {
    let err = |e| fail(500, format!("Failed to set key: 0x{:02x}", atca_status(e)));
    let wkey: Option<[u8; 32]> = match wkey {
        Some(w) => Some(
            w.try_into()
                .map_err(|_| fail(400, format!("Expected 32 bytes, got {}", key.len())))?,
        ),
        None => None,
    };
    if wkslot > 15 {
        return Err(fail(400, "Invalid slot"));
    }
    if ecc {
        if key.len() > 32 {
            return Err(fail(400, format!("Expected 32 bytes, got {}", key.len())));
        }
        // As the firmware does: copied in as given (a short scalar is not left-padded).
        let mut scalar = [0u8; 32];
        scalar[..key.len()].copy_from_slice(key);
        let r = match wkey {
            Some(wk) => c.priv_write_encrypted(slot, &scalar, wkslot, &wk, &[0u8; 20]),
            None => {
                let mut data = [0u8; 68];
                data[..36].copy_from_slice(&atecc::host::private_key_value(&scalar));
                let r = c.execute_status(&Command::priv_write(slot, &data));
                data.fill(0);
                r
            }
        };
        scalar.fill(0);
        return r.map(|_| Value::Null).map_err(err);
    }
    let data: [u8; 32] = key
        .try_into()
        .map_err(|_| fail(400, format!("Expected 32 bytes, got {}", key.len())))?;
    match wkey {
        Some(wk) => c.write_slot_encrypted(slot, block, &data, wkslot, &wk, &[0u8; 20]),
        None => c.write_slot_block(slot, block, &data),
    }
    .map(|_| Value::Null)
    .map_err(err)
}

fn file_name(p: &Value) -> Result<String, (i64, String)> {
    let name = p["filename"]
        .as_str()
        .ok_or_else(|| fail(400, "filename is required"))?
        .trim_start_matches('/');
    if !valid_name(name.as_bytes()) {
        return Err(fail(400, format!("invalid file name {name}")));
    }
    Ok(name.to_string())
}

fn write_file(store: &SharedStore, name: &str, data: &[u8]) -> Result<(), (i64, String)> {
    let mut s = store.lock().map_err(|_| fail(500, "store unavailable"))?;
    let r = s
        .put_chunk(name.as_bytes(), 0, data)
        .and_then(|_| s.commit(name.as_bytes(), data.len(), crc32(data)));
    if r.is_err() {
        s.abort();
        return Err(fail(500, format!("failed to write {name}: {r:?}")));
    }
    Ok(())
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

/// A log line as Mongoose prints them: `[Mon DD HH:MM:SS.mmm] text`.
fn log_line(started: Instant, text: &str) -> Vec<u8> {
    let t = started.elapsed();
    let s = t.as_secs();
    format!(
        "[Jan  1 {:02}:{:02}:{:02}.{:03}] {text}\r\n",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        t.subsec_millis()
    )
    .into_bytes()
}

/// The reply on the wire.
fn encode_reply(json: &str, crc: bool, compat: bool) -> Vec<u8> {
    let meta = if crc {
        format!("{:08x}", crc32(json.as_bytes()))
    } else {
        String::new()
    };
    if compat {
        format!("\n\"\"\"{json}{meta}\"\"\"\n").into_bytes()
    } else {
        format!("\n{json}{meta}\n").into_bytes()
    }
}

/// The serial side of a Mongoose board.
pub struct MosLoop {
    /// Baud rate for pacing (0 = unpaced).
    pub baud: u32,
    /// The chip.
    pub chip: SharedChip,
    /// The store.
    pub store: SharedStore,
    /// Updated whenever a frame was handled (the TLS signer waits for a quiet host).
    pub last_line_ms: Arc<AtomicU64>,
    /// Set to stop.
    pub stop: Arc<AtomicBool>,
}

impl MosLoop {
    /// Runs until stopped or the pty fails.
    pub fn run(self, pty: &Pty, events: &dyn BoardEvents) -> std::io::Result<()> {
        use std::io::Read;
        let epoch = Instant::now();
        let ns = |t: Instant| u64::try_from(t.duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
        let sleep_until = |t_ns: u64| {
            let now = ns(Instant::now());
            if t_ns > now {
                std::thread::sleep(Duration::from_nanos(t_ns - now));
            }
        };
        let mut rx = Pacer::new(self.baud);
        let mut tx = Pacer::new(self.baud);
        let mut master = pty.master();
        let mut send = |bytes: &[u8], tx: &mut Pacer| -> std::io::Result<()> {
            for chunk in bytes.chunks(16) {
                sleep_until(tx.schedule(ns(Instant::now()), chunk.len() as u64));
                master.write_all(chunk)?;
            }
            Ok(())
        };
        let (mut board, boot_log) = MosBoard::boot(&self.store, &self.chip);
        let started = board.started;
        for l in &boot_log {
            send(&log_line(started, l), &mut tx)?;
        }
        let mut reader = FrameReader::default();
        let mut host_crc = false;
        let mut last_chatter = Instant::now();
        let mut buf = [0u8; 64];
        let mut input = pty.master();
        while !self.stop.load(Ordering::SeqCst) {
            let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).map_err(std::io::Error::from)? == 0 {
                if last_chatter.elapsed() >= CHATTER_EVERY {
                    last_chatter = Instant::now();
                    let text = format!(
                        "mgos_debug           uptime: {:.2}, RAM: 52000, {} free",
                        started.elapsed().as_secs_f64(),
                        41_000 - (started.elapsed().as_secs() % 97) * 8
                    );
                    send(&log_line(started, &text), &mut tx)?;
                }
                continue;
            }
            let n = match input.read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(e),
            };
            sleep_until(rx.schedule(ns(Instant::now()), n as u64));
            for &b in &buf[..n] {
                let Some(event) = reader.push(b) else {
                    continue;
                };
                let (json, crc) = match event {
                    Received::Ready => {
                        send(b"\n\"\"\"\x04\"\"\"\n", &mut tx)?;
                        continue;
                    }
                    Received::Corrupted => {
                        eprintln!("sensor-sim: mos: corrupted frame (CRC mismatch) dropped");
                        send(
                            &log_line(started, "mgos_rpc_channel_uart Corrupted frame"),
                            &mut tx,
                        )?;
                        continue;
                    }
                    Received::Oversized => {
                        eprintln!("sensor-sim: mos: frame longer than {MAX_FRAME} bytes dropped");
                        send(
                            &log_line(started, "mgos_rpc_channel_uart Frame too long, dropped"),
                            &mut tx,
                        )?;
                        continue;
                    }
                    Received::NotAscii => continue,
                    Received::Frame { json, crc } => (json, crc),
                };
                host_crc |= crc;
                let Ok(req) = serde_json::from_slice::<Value>(&json) else {
                    send(
                        &log_line(started, "mgos_rpc_channel_uart Invalid frame"),
                        &mut tx,
                    )?;
                    continue;
                };
                let mut fx = Effects::default();
                let reply = board.handle(&req, &self.chip, &self.store, &mut fx);
                self.last_line_ms
                    .store(super::now_ms().max(1), Ordering::SeqCst);
                // The board logs first and pauses logging while it sends a reply.
                for l in &fx.log {
                    send(&log_line(started, l), &mut tx)?;
                }
                if let Some(reply) = reply {
                    let text = reply.to_string();
                    send(&encode_reply(&text, host_crc, reader.compat), &mut tx)?;
                }
                last_chatter = Instant::now();
                for name in &fx.changed {
                    events.blob_changed(name);
                }
                if fx.reboot {
                    let (b, boot_log) = MosBoard::boot(&self.store, &self.chip);
                    board = b;
                    reader = FrameReader::default();
                    host_crc = false;
                    for l in &boot_log {
                        send(&log_line(started, l), &mut tx)?;
                    }
                    events.rebooted();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(r: &mut FrameReader, bytes: &[u8]) -> Vec<Received> {
        bytes.iter().filter_map(|&b| r.push(b)).collect()
    }

    fn frame(json: &str) -> Vec<u8> {
        format!("\n\"\"\"{json}{:08x}\"\"\"\n", crc32(json.as_bytes())).into_bytes()
    }

    #[test]
    fn a_good_frame_is_read_and_switches_to_the_legacy_framing() {
        let mut r = FrameReader::default();
        let got = feed(&mut r, &frame(r#"{"id":1,"method":"Sys.GetInfo"}"#));
        assert_eq!(
            got,
            vec![Received::Frame {
                json: br#"{"id":1,"method":"Sys.GetInfo"}"#.to_vec(),
                crc: true
            }]
        );
        assert!(r.compat);
        let mut r = FrameReader::default();
        let got = feed(&mut r, b"{\"id\":1}\n");
        assert_eq!(
            got,
            vec![Received::Frame {
                json: b"{\"id\":1}".to_vec(),
                crc: false
            }]
        );
        assert!(!r.compat);
    }

    #[test]
    fn a_crc_mismatch_drops_the_frame() {
        let mut r = FrameReader::default();
        let mut f = frame(r#"{"id":1,"method":"ATCA.LockZone","params":{"zone":0}}"#);
        // The zone number changes on the wire: the CRC catches it.
        let at = f.iter().position(|&b| b == b'0').expect("zone digit");
        f[at] = b'1';
        assert_eq!(feed(&mut r, &f), vec![Received::Corrupted]);
    }

    #[test]
    fn junk_before_the_brace_is_ignored_and_the_ready_question_is_seen() {
        let mut r = FrameReader::default();
        let mut input = b"garbage {".to_vec();
        input.extend_from_slice(b"\n\"\"\"\x04\"\"\"\n");
        input.extend_from_slice(b"xx");
        input.extend_from_slice(&frame(r#"{"id":2}"#)[1..]);
        let got = feed(&mut r, &input);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0], Received::Ready);
        assert!(matches!(&got[1], Received::Frame { crc: true, .. }));
    }

    #[test]
    fn oversized_and_non_ascii_input_is_thrown_away() {
        let mut r = FrameReader::default();
        let mut big = b"{\"id\":3,\"params\":{\"data\":\"".to_vec();
        big.extend(std::iter::repeat_n(b'A', MAX_FRAME + 10));
        let got = feed(&mut r, &big);
        assert_eq!(got, vec![Received::Oversized]);
        let mut r = FrameReader::default();
        let got = feed(&mut r, "{\"id\":4,\"x\":\"é\"}\n".as_bytes());
        assert!(got.contains(&Received::NotAscii));
        assert!(!got.iter().any(|g| matches!(g, Received::Frame { .. })));
    }

    #[test]
    fn config_set_refuses_unknown_keys_and_wrong_types() {
        let mut c = defaults();
        assert!(merge_checked(&mut c, &json!({"mqtt": {"server": "h:1"}}), "").is_ok());
        assert_eq!(c["mqtt"]["server"], "h:1");
        let e = merge_checked(&mut c, &json!({"mqtt": {"sever": "h:1"}}), "").expect_err("typo");
        assert!(e.contains("mqtt.sever"));
        let e =
            merge_checked(&mut c, &json!({"mqtt": {"keep_alive": "60"}}), "").expect_err("type");
        assert!(e.contains("wrong type"));
    }

    #[test]
    fn mongoose_config_becomes_the_applications_configuration() {
        let mut c = defaults();
        merge_checked(
            &mut c,
            &json!({
                "device": {"id": "salon-1"},
                "mqtt": {"enable": true, "server": "127.0.0.1:8883", "client_id": "salon-1",
                         "ssl_cert": "device.crt", "ssl_key": "ATCA:0", "ssl_ca_cert": "ca.crt",
                         "will_topic": "maison/salon/status"},
                "sensor": {"readings": "[{\"topic\":\"maison/salon/temperature\",\"quantity\":\"temperature\"}]", "interval_s": 2}
            }),
            "",
        )
        .expect("valid");
        let (cfg, cert, ca) = device_config(&c).expect("translates");
        assert_eq!(cfg.broker_host, "127.0.0.1");
        assert_eq!(cfg.port, 8883);
        assert_eq!(cfg.key_slot, 0);
        assert_eq!(cfg.status_topic.as_deref(), Some("maison/salon/status"));
        assert_eq!((cert.as_str(), ca.as_str()), ("device.crt", "ca.crt"));
        // A slot reserved for ECDHE is refused, as the mbedTLS hook does.
        merge_checked(&mut c, &json!({"mqtt": {"ssl_key": "ATCA:2"}}), "").expect("set");
        assert!(
            device_config(&c)
                .expect_err("ecdh slot")
                .contains("ecdh_slots_mask")
        );
    }
}
