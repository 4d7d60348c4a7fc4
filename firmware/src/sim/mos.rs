//! The simulated board playing stock Mongoose OS (`sensor-sim --protocol mos`): RPC over
//! UART ([`super::mos_uart`]), the configuration ([`super::mos_config`]) and the services
//! the firmware always registers, answering as the firmware's sources do:
//!
//! - rpc-common `src/mg_rpc.c`: `RPC.List`, `RPC.Describe`, `RPC.Ping`; frame parsing
//!   (`mg_rpc_parse_frame`), frames with a `dst` other than the board's id dropped
//!   (`mg_rpc_handle_frame`), methods matched case-insensitively, 404 `No handler for M`,
//!   replies built as `mg_rpc_dispatch_frame` does (`id` bare when all digits, `src` the
//!   request's `dst` or the board's id, `dst` only when the request had a `src`, `tag`).
//! - rpc-common `src/mgos_rpc.c`: `Sys.GetInfo` (`mgos_print_sys_info`), `Sys.Reboot`
//!   (`delay_ms`, default 100), `Sys.SetDebug`, and the reboot lock-out of the prehandler
//!   (418 `shutting down in N ms` during the last 100 ms).
//! - rpc-service-config `src/mgos_service_config.c`: `Config.Get {key, level}`,
//!   `Config.Set {key, config|value, level, save, try_once, reboot}`,
//!   `Config.Save {try_once, reboot}`; a reboot 500 ms after the reply.
//! - rpc-service-fs `src/mgos_service_fs.c`: `FS.List`, `FS.ListExt`, `FS.Get` (the rest of
//!   the file without `len`), `FS.Put` (a negative `offset`: append or truncate; 0: truncate;
//!   above 0: overwrite from there), `FS.Remove`, `FS.Rename`, `FS.Mkfs`, `FS.Mount`, `FS.Umount`,
//!   into the same file-backed store the kit protocol uses.
//! - rpc-service-atca `src/mgos_atca_service.c`: `ATCA.*` on the emulated ATECC508A, with the
//!   firmware's error texts and cryptoauthlib's ATCA_STATUS codes (`lib/atca_command.c`
//!   `isATCAError`: 0x01 -> 0xD1, 0x03 -> 0xD2, 0x05 -> 0xD6, 0x07 -> 0xD7, 0x08 -> 0xFA,
//!   0x0F -> 0xF4, 0x11 -> 0xF3, 0xFF -> 0xD4, any other status (the watchdog's 0xEE too)
//!   -> 0xE1). `ATCA.AES` sends the AES command, which an ATECC508A refuses: 500 `Failed to
//!   encrypt: 0xd2`.
//!
//! Between frames the board writes log lines on the same UART, as a real one does; a UART
//! nobody reads loses bytes instead of stopping the board.
//!
//! Differences that remain on purpose:
//! - Log lines (`[Jan  1 hh:mm:ss.mmm] text`) are shorter than the firmware's; they are not
//!   part of the RPC. For a dropped frame they keep the firmware's words (rpc-uart
//!   `mg_rpc_channel_uart_dispatcher`: `Corrupted frame` at LL_WARN, `Incoming frame is too
//!   big, dropping.` at LL_ERROR), which a host may take as the signal to send again, but the
//!   corrupted-frame line does not quote the frame, its metadata and both CRCs as the
//!   firmware's does (the quote can hold an `ATCA.SetKey` key in clear; a host must not log
//!   it either way).
//! - `mg_rpc.c` queues a reply that finds the channel busy and sends it after the current
//!   frame; the twin appends it at once (same bytes, same order, unless the host pipelines
//!   a request behind a ready question in one burst, which `mos` never does).
//! - JSON is parsed with serde_json instead of frozen: invalid UTF-8 is replaced (frozen
//!   keeps the bytes), keys are visited in sorted order (frozen: document order, which only
//!   matters when `Config.Set` stops at a wrong type halfway), and when both `args` and
//!   `params` (or `config` and `value`) are given the twin takes `params` (`value`), frozen
//!   the later one.
//! - `FS.Put` that does not fit (a 4 KiB file, 8 files or the 12 KiB store) answers 500
//!   `failed to write data` and keeps the old file; SPIFFS would leave it truncated.
//! - `FS.Mkfs`, `FS.Mount` and `FS.Umount` validate their parameters as the firmware does and
//!   then fail (500 `mkfs failed` / `mount failed` / `umount failed`): the board has one
//!   filesystem, which it does not let a host unmount.
//! - `ATCA.SetKey` zero-pads a short key where the firmware copies 32 bytes from a shorter
//!   buffer (reading past it); a non-ECC key of neither 4 nor 32 bytes gets 0xE2 as
//!   `atcab_write_zone` gives.
//! - `Config.Save` with `reboot` on an ESP8266 whose strapping pins still select the boot
//!   loader answers 418 (`esp_strapping_to_bootloader`); the twin's pins never do.
//! - The twin never sends XOFF: it reads its UART as fast as the wire delivers and never
//!   falls behind, where the firmware (`esp_uart.c`, `rpc.uart.fc_type` 2) sends XOFF when
//!   its receive buffer is full and XON once it drained; hosts that follow XON/XOFF (the
//!   provisioner, `mos --rpc-uart-no-delay`) see no difference on an idle board.
//! - Chip commands are polled for as cryptoauthlib 3 does (1 ms, then every 2 ms), but the
//!   I2C transfers and the wake pulse take no time.
//! - `mac` is derived from the chip's serial number (5C:CF:7F and its bytes 5..8), so the
//!   default `device.id` `esp8266_??????` becomes `esp8266_` and those three bytes in hex.
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
use atecc::opcode::{Opcode, UpdateExtraMode};
use atecc::packet::Command;
use manifests::device::{DeviceConfig, Reading};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::{Value, json};

use super::bus::{EmulatedBus, SharedChip};
use super::mos_config::{self as conf, USER_LEVEL};
use super::mqtt::Provisioned;
use super::pty::Pty;
use super::serial::{BoardEvents, LineNoise, READ_BURST, SharedStore, burst_schedule};
use crate::chip::{Atecc, ChipError, MAX_RESPONSE};
use crate::crc::crc32;
use crate::pacing::Pacer;
use crate::store::{MAX_BLOB_LEN, STORE_CAPACITY, valid_name};

pub use super::mos_config::{CONFIG_FILE, load_config};
pub use super::mos_uart::{FrameReader, MAX_FRAME, Received, UartChannel};

/// Idle log chatter period.
const CHATTER_EVERY: Duration = Duration::from_millis(1500);
/// `MGOS_RPC_REBOOT_LOCKOUT_MS`.
const REBOOT_LOCKOUT: Duration = Duration::from_millis(100);
/// The heap of an ESP8266 running this app (bytes), for `Sys.GetInfo`.
const RAM_SIZE: u64 = 52_000;

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

/// cryptoauthlib's ATCA_STATUS for a status byte from the chip (`isATCAError`).
pub fn atca_status_of(code: u8) -> u8 {
    match code {
        0x00 => 0x00,
        0x01 => 0xD1, // ATCA_CHECKMAC_VERIFY_FAILED
        0x03 => 0xD2, // ATCA_PARSE_ERROR
        0x05 => 0xD6, // ATCA_STATUS_ECC
        0x07 => 0xD7, // ATCA_STATUS_SELFTEST_ERROR
        0x08 => 0xFA, // ATCA_HEALTH_TEST_ERROR
        0x0F => 0xF4, // ATCA_EXECUTION_ERROR
        0x11 => 0xF3, // ATCA_WAKE_SUCCESS
        0xFF => 0xD4, // ATCA_STATUS_CRC
        _ => 0xE1,    // ATCA_GEN_FAIL
    }
}

/// The ATCA_STATUS a cryptoauthlib call returns for a failure.
fn atca_status(e: ClientError<ChipError>) -> u8 {
    use atecc::packet::Error;
    match e {
        ClientError::Chip(Error::Status(s)) => atca_status_of(s.code()),
        ClientError::Transport(ChipError::Status(code)) => atca_status_of(code),
        ClientError::Chip(Error::ResponseCrc) => 0xE5, // ATCA_RX_CRC_ERROR
        ClientError::Chip(Error::ResponseLength | Error::UnexpectedResponse) => 0xE6, // ATCA_RX_FAIL
        ClientError::Chip(Error::BufferTooSmall) => 0xED, // ATCA_SMALL_BUFFER
        ClientError::Chip(Error::DataTooLong) => 0xE2,    // ATCA_BAD_PARAM
        ClientError::Transport(ChipError::Timeout) => 0xF1, // ATCA_TIMEOUT
        ClientError::Transport(_) => 0xF0,                // ATCA_COMM_FAIL
    }
}

/// An RPC failure: code and message.
type RpcError = (i64, String);
type RpcResult = Result<Value, RpcError>;

fn fail(code: i64, message: impl Into<String>) -> RpcError {
    (code, message.into())
}

/// `json_scanf` `%d`/`%ld`: a number (truncated), or a string starting with one.
fn int_param(p: &Value, key: &str, default: i64) -> i64 {
    match &p[key] {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f as i64))
            .unwrap_or(default),
        Value::String(s) => {
            let t = s.trim_start();
            let end = t
                .char_indices()
                .find(|&(i, c)| !(c.is_ascii_digit() || (i == 0 && (c == '-' || c == '+'))))
                .map_or(t.len(), |(i, _)| i);
            t[..end].parse().unwrap_or(default)
        }
        _ => default,
    }
}

/// `%B`: only `true` and `false` count.
fn bool_param(p: &Value, key: &str) -> bool {
    p[key] == json!(true)
}

/// `%Q`: a string, or nothing.
fn str_param(p: &Value, key: &str) -> Option<String> {
    p[key].as_str().map(str::to_string)
}

/// `%V`: base64 bytes (empty when absent or not base64).
fn b64_param(p: &Value, key: &str) -> Vec<u8> {
    p[key].as_str().and_then(b64::decode).unwrap_or_default()
}

/// A file name as the store knows it (the VFS root is `/`).
fn store_name(name: &str) -> Option<&str> {
    let n = name.strip_prefix('/').unwrap_or(name);
    valid_name(n.as_bytes()).then_some(n)
}

/// The handlers in registration order, with their `args_fmt`.
const HANDLERS: &[(&str, &str)] = &[
    ("RPC.List", ""),
    ("RPC.Describe", "{name: %T}"),
    ("RPC.Ping", ""),
    ("Sys.Reboot", "{delay_ms: %d}"),
    ("Sys.GetInfo", ""),
    (
        "Sys.SetDebug",
        "{udp_log_addr: %Q, level: %d, file_level: %Q}",
    ),
    ("Config.Get", "{key: %Q, level: %d}"),
    (
        "Config.Set",
        "{key: %Q, config: %T, value: %T, level: %d, save: %B, try_once: %B, reboot: %B}",
    ),
    ("Config.Save", "{try_once: %B, reboot: %B}"),
    ("FS.List", "{path: %Q}"),
    ("FS.ListExt", "{path: %Q}"),
    ("FS.Get", "{filename: %Q, offset: %ld, len: %ld}"),
    (
        "FS.Put",
        "{filename: %Q, offset: %ld, data: %V, append: %B}",
    ),
    ("FS.Remove", "{filename: %Q}"),
    ("FS.Rename", "{src: %Q, dst: %Q}"),
    (
        "FS.Mkfs",
        "{dev_name: %Q, dev_type: %Q, dev_opts: %Q, fs_type: %Q, fs_opts: %Q}",
    ),
    (
        "FS.Mount",
        "{path: %Q, dev_name: %Q, dev_type: %Q, dev_opts: %Q, fs_type: %Q, fs_opts: %Q}",
    ),
    ("FS.Umount", "{path: %Q}"),
];

/// The ATCA handlers (registered only with `sys.atca.enable` and a chip found at boot).
const ATCA_HANDLERS: &[(&str, &str)] = &[
    ("ATCA.GetConfig", ""),
    ("ATCA.SetConfig", "{config: %V}"),
    ("ATCA.LockZone", "{zone: %d}"),
    (
        "ATCA.SetKey",
        "{slot: %d, block: %d, ecc: %B, key: %V, wkey: %V, wkslot: %u}",
    ),
    ("ATCA.GenKey", "{slot: %d}"),
    ("ATCA.GetPubKey", "{slot: %d}"),
    ("ATCA.Sign", "{slot: %d, digest: %V}"),
    ("ATCA.AES", "{slot: %d, block: %d, mode: %d, data: %V}"),
];

/// The firmware's services.
pub struct MosBoard {
    config: Value,
    atca: bool,
    /// The RPC id, `device.id` at boot (`mgos_rpc_cfg_from_sys`); empty: none.
    rpc_id: String,
    mac: String,
    started: Instant,
    reboot_at: Option<Instant>,
}

/// What handling a request changed, for the rest of the board.
#[derive(Debug, Default)]
pub struct Effects {
    /// Files written.
    pub changed: Vec<String>,
    /// Log lines to write before the reply.
    pub log: Vec<String>,
    /// Restart this long after the reply (`mgos_system_restart_after`).
    pub reboot_after: Option<Duration>,
}

impl MosBoard {
    /// Boots: reads the configuration levels and looks for the chip.
    pub fn boot(store: &SharedStore, chip: &SharedChip) -> (MosBoard, Vec<String>) {
        let mut config = conf::load_level(store, USER_LEVEL, true);
        let mut log = vec![
            "ets Jan  8 2013,rst cause:2, boot mode:(3,6)".to_string(),
            format!(
                "mgos_init            Mongoose OS sensor-sim {} (esp8266)",
                env!("CARGO_PKG_VERSION")
            ),
        ];
        // The chip is on the board whatever the configuration: its serial number stands in
        // for the ESP8266's factory MAC.
        let zone = chip.lock().ok().and_then(|mut c| {
            c.wake().ok();
            let z = Client::new(OnBus(&mut c)).read_config_zone();
            let _ = c.idle();
            z.ok()
        });
        let mac = match &zone {
            Some(z) => format!("5CCF7F{}", hex_upper(&z.serial_number()[5..8])),
            None => "5CCF7F000000".to_string(),
        };
        log.push(format!(
            "mgos_sys_config_init MAC: {}",
            mac.as_bytes()
                .chunks(2)
                .map(|c| String::from_utf8_lossy(c).to_lowercase())
                .collect::<Vec<_>>()
                .join(":")
        ));
        if let Some(id) = config["device"]["id"].as_str() {
            let id = conf::expand_placeholders(id, &mac);
            config["device"]["id"] = json!(id);
        }
        let enabled = config["sys"]["atca"]["enable"] == json!(true)
            && config["i2c"]["enable"] == json!(true);
        let mut atca = false;
        if enabled {
            match &zone {
                Some(z) => {
                    let sn = z.serial_number();
                    log.push(format!(
                        "mgos_atca_init       ATCA: ATECC508A rev 0x{} S/N 0x{}, config is {}, data is {}",
                        hex_upper(&z.revision()[2..4]),
                        hex_upper(&sn),
                        if z.is_config_locked() { "locked" } else { "unlocked" },
                        if z.is_data_locked() { "locked" } else { "unlocked" },
                    ));
                    atca = true;
                }
                None => log.push("mgos_atca_init       ATCA: Chip is not available".into()),
            }
        }
        let rpc_id = config["device"]["id"].as_str().unwrap_or("").to_string();
        (
            MosBoard {
                config,
                atca,
                rpc_id,
                mac,
                started: Instant::now(),
                reboot_at: None,
            },
            log,
        )
    }

    /// The board's RPC id (`device.id` at boot).
    pub fn device_id(&self) -> &str {
        &self.rpc_id
    }

    /// The running configuration.
    pub fn config(&self) -> &Value {
        &self.config
    }

    /// The registered handlers, newest first (as `RPC.List` shows them).
    fn handlers(&self) -> Vec<(&'static str, &'static str)> {
        let mut all: Vec<_> = HANDLERS.to_vec();
        if self.atca {
            all.extend_from_slice(ATCA_HANDLERS);
        }
        all.reverse();
        all
    }

    /// Handles one frame's JSON; the reply's JSON text, if any.
    pub fn handle_frame(
        &mut self,
        json: &[u8],
        chip: &SharedChip,
        store: &SharedStore,
        fx: &mut Effects,
    ) -> Option<String> {
        let text = String::from_utf8_lossy(json);
        let req = match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(m)) => m,
            _ => {
                fx.log.push("mg_rpc_ev_handler    INVALID FRAME".into());
                return None;
            }
        };
        const FIELDS: [&str; 11] = [
            "v", "id", "src", "dst", "tag", "method", "args", "params", "auth", "result", "error",
        ];
        let id_ok = match req.get("id") {
            None => true,
            Some(Value::Number(_) | Value::String(_)) => true,
            Some(_) => false,
        };
        if !FIELDS.iter().any(|f| req.contains_key(*f)) || !id_ok {
            fx.log.push("mg_rpc_ev_handler    INVALID FRAME".into());
            return None;
        }
        // `%T` tokens: a string's text without its quotes, anything else as written.
        let token = |k: &str| -> String {
            match req.get(k) {
                None => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            }
        };
        let (id, src, dst, tag, method) = (
            token("id"),
            token("src"),
            token("dst"),
            token("tag"),
            token("method"),
        );
        if !dst.is_empty() && (self.rpc_id.is_empty() || dst != self.rpc_id) {
            fx.log
                .push(format!("mg_rpc_handle_frame  Wrong dst: '{dst}'"));
            return None;
        }
        if method.is_empty() {
            // A response to a request this board never sent.
            return None;
        }
        let empty = json!({});
        let params = req
            .get("params")
            .or_else(|| req.get("args"))
            .filter(|p| p.is_object())
            .unwrap_or(&empty);
        let handler = self
            .handlers()
            .into_iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(&method));
        let result = match handler {
            None => {
                fx.log
                    .push(format!("mg_rpc_handle_request No handler for {method}"));
                Err(fail(404, format!("No handler for {method}")))
            }
            Some((name, _)) => match self
                .reboot_at
                .map(|t| t.saturating_duration_since(Instant::now()))
            {
                Some(left) if left < REBOOT_LOCKOUT => Err(fail(
                    418,
                    format!("shutting down in {} ms", left.as_millis()),
                )),
                _ => {
                    fx.log
                        .push(format!("mg_rpc_handle_request {method} via UART UART0"));
                    self.dispatch(name, params, chip, store, fx)
                }
            },
        };
        if id.is_empty() {
            return None;
        }
        if let Some(after) = fx.reboot_after {
            self.reboot_at = Some(Instant::now() + after);
        }
        let mut out = String::from("{");
        if id.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("\"id\":{id},"));
        } else {
            out.push_str(&format!("\"id\":{},", json!(id)));
        }
        let from = if !dst.is_empty() { &dst } else { &self.rpc_id };
        if from.is_empty() {
            out.push_str("\"src\":null");
        } else {
            out.push_str(&format!("\"src\":{}", json!(from)));
        }
        if !src.is_empty() {
            out.push_str(&format!(",\"dst\":{}", json!(src)));
        }
        if !tag.is_empty() {
            out.push_str(&format!(",\"tag\":{}", json!(tag)));
        }
        match result {
            Ok(v) => out.push_str(&format!(",\"result\":{v}")),
            Err((code, message)) if message.is_empty() => {
                out.push_str(&format!(",\"error\":{{\"code\":{code}}}"));
            }
            Err((code, message)) => out.push_str(&format!(
                ",\"error\":{{\"code\":{code},\"message\":{}}}",
                json!(message)
            )),
        }
        out.push('}');
        Some(out)
    }

    /// Handles one request given as a value (tests); `None` when it gets no reply.
    pub fn handle(
        &mut self,
        req: &Value,
        chip: &SharedChip,
        store: &SharedStore,
        fx: &mut Effects,
    ) -> Option<Value> {
        let text = self.handle_frame(req.to_string().as_bytes(), chip, store, fx)?;
        serde_json::from_str(&text).ok()
    }

    /// When a pending reboot is due.
    pub fn reboot_due(&self) -> bool {
        self.reboot_at.is_some_and(|t| Instant::now() >= t)
    }

    fn dispatch(
        &mut self,
        method: &str,
        p: &Value,
        chip: &SharedChip,
        store: &SharedStore,
        fx: &mut Effects,
    ) -> RpcResult {
        match method {
            "RPC.List" => Ok(json!(
                self.handlers().iter().map(|(m, _)| *m).collect::<Vec<_>>()
            )),
            "RPC.Describe" => {
                let name = match p.get("name") {
                    None => return Err(fail(400, "name is required")),
                    Some(Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                };
                self.handlers()
                    .into_iter()
                    .find(|(m, _)| *m == name)
                    .map(|(_, f)| json!({ "name": name, "args_fmt": f }))
                    .ok_or_else(|| fail(404, "name not found"))
            }
            "RPC.Ping" => Ok(json!({ "channel_info": "UART0" })),
            "Sys.Reboot" => {
                let delay = int_param(p, "delay_ms", 100);
                let delay = u64::try_from(delay).map_err(|_| fail(400, "invalid delay value"))?;
                fx.reboot_after = Some(Duration::from_millis(delay));
                Ok(Value::Null)
            }
            "Sys.GetInfo" => Ok(self.sys_info(store)),
            "Sys.SetDebug" => {
                let mut err = (0, String::new());
                if p["udp_log_addr"].is_string() {
                    err = fail(501, "MGOS_ENABLE_DEBUG_UDP is not enabled");
                }
                let level = int_param(p, "level", -2);
                if !(-2 < level && level < 5) && level != -2 {
                    err = fail(400, "invalid level");
                }
                Err(err)
            }
            "Config.Get" => {
                let level = int_param(p, "level", -1);
                let loaded;
                let cfg = if (0..9).contains(&level) {
                    loaded = conf::load_level(store, level as u8, false);
                    &loaded
                } else {
                    &self.config
                };
                let key = str_param(p, "key").unwrap_or_default();
                conf::entry(&conf::defaults(), &key)
                    .and_then(|_| conf::entry(cfg, &key))
                    .cloned()
                    .ok_or_else(|| fail(404, "invalid config key"))
            }
            "Config.Set" => self.config_set(p, store, fx),
            "Config.Save" => {
                let cfg = self.config.clone();
                self.do_save(
                    &cfg,
                    USER_LEVEL,
                    bool_param(p, "try_once"),
                    bool_param(p, "reboot"),
                    store,
                    fx,
                )
            }
            m if m.starts_with("FS.") => fs(m, p, store, fx),
            m => atca(m, p, chip, fx),
        }
    }

    fn sys_info(&self, store: &SharedStore) -> Value {
        let free = store.lock().map(|s| s.free()).unwrap_or(0);
        let up = self.started.elapsed().as_secs();
        let key = |v: &Value| {
            v.as_str()
                .filter(|s| !s.is_empty())
                .map_or(Value::Null, |s| json!(s))
        };
        json!({
            "id": key(&self.config["device"]["id"]),
            "app": "sensor-sim",
            "fw_version": env!("CARGO_PKG_VERSION"),
            "fw_id": concat!("sensor-sim-", env!("CARGO_PKG_VERSION")),
            "mg_version": env!("CARGO_PKG_VERSION"),
            "mg_id": "sensor-sim",
            "mac": self.mac,
            "arch": "esp8266",
            "uptime": up,
            "public_key": key(&self.config["device"]["public_key"]),
            "ram_size": RAM_SIZE,
            "ram_free": 41_000 - (up % 97) * 8,
            "ram_min_free": 38_000,
            "fs_size": STORE_CAPACITY,
            "fs_free": free,
            // The simulator's network is the host's loopback.
            "wifi": { "sta_ip": "127.0.0.1", "ap_ip": "", "status": "got ip", "ssid": "sensor-sim" },
        })
    }

    fn config_set(&mut self, p: &Value, store: &SharedStore, fx: &mut Effects) -> RpcResult {
        let value = p
            .get("value")
            .or_else(|| p.get("config"))
            .ok_or_else(|| fail(400, "value is required"))?;
        let level = int_param(p, "level", -1);
        if level == 0 {
            return Err(fail(400, "not allowed"));
        }
        let key = str_param(p, "key").unwrap_or_default();
        if conf::entry(&conf::defaults(), &key).is_none() {
            return Err(fail(404, "invalid config key"));
        }
        let save = bool_param(p, "save");
        let (try_once, reboot) = (bool_param(p, "try_once"), bool_param(p, "reboot"));
        if (1..9).contains(&level) {
            let mut cfg = conf::load_level(store, level as u8, false);
            conf::apply(&mut cfg, &key, value)
                .map_err(|e| fail(400, format!("invalid config value: {e}")))?;
            if save {
                return self.do_save(&cfg, level as u8, try_once, reboot, store, fx);
            }
        } else {
            // The running configuration: what was set before a bad leaf stays set.
            conf::apply(&mut self.config, &key, value)
                .map_err(|e| fail(400, format!("invalid config value: {e}")))?;
            if save {
                let cfg = self.config.clone();
                return self.do_save(&cfg, USER_LEVEL, try_once, reboot, store, fx);
            }
        }
        Ok(json!({ "saved": false }))
    }

    fn do_save(
        &mut self,
        cfg: &Value,
        level: u8,
        try_once: bool,
        reboot: bool,
        store: &SharedStore,
        fx: &mut Effects,
    ) -> RpcResult {
        let name = conf::save_level(store, cfg, level, try_once)
            .map_err(|m| fail(-1, format!("error saving config: {m}")))?;
        fx.log.push(format!("mgos_sys_config_save Saved to {name}"));
        fx.changed.push(name);
        if reboot {
            fx.reboot_after = Some(Duration::from_millis(500));
        }
        Ok(json!({ "saved": true }))
    }
}

fn write_file(store: &SharedStore, name: &str, data: &[u8]) -> Result<(), RpcError> {
    let mut s = store
        .lock()
        .map_err(|_| fail(500, "failed to write data"))?;
    let r = s
        .put_chunk(name.as_bytes(), 0, data)
        .and_then(|_| s.commit(name.as_bytes(), data.len(), crc32(data)));
    if r.is_err() {
        s.abort();
        return Err(fail(500, "failed to write data"));
    }
    Ok(())
}

fn read_file(store: &SharedStore, name: &str) -> Option<Vec<u8>> {
    let s = store.lock().ok()?;
    s.blob(store_name(name)?.as_bytes()).map(<[u8]>::to_vec)
}

fn list(store: &SharedStore, p: &Value, ext: bool) -> Value {
    let path = str_param(p, "path");
    let mut out = Vec::new();
    // The board has one directory, `/`; opendir of anything else fails: an empty list.
    if path.as_deref().is_none_or(|d| d == "/")
        && let Ok(s) = store.lock()
    {
        {
            s.for_each(|n, len| {
                let name = String::from_utf8_lossy(n).into_owned();
                out.push(if ext {
                    json!({ "name": name, "size": len })
                } else {
                    json!(name)
                });
            });
        }
    }
    Value::Array(out)
}

/// rpc-service-fs.
fn fs(method: &str, p: &Value, store: &SharedStore, fx: &mut Effects) -> RpcResult {
    let filename = || str_param(p, "filename").ok_or_else(|| fail(400, "filename is required"));
    let cannot_open = |f: &str| fail(400, format!("failed to open file \"{f}\""));
    match method {
        "FS.List" => Ok(list(store, p, false)),
        "FS.ListExt" => Ok(list(store, p, true)),
        "FS.Get" => {
            let f = filename()?;
            let offset = int_param(p, "offset", 0);
            let offset = usize::try_from(offset).map_err(|_| fail(400, "illegal offset"))?;
            let data = read_file(store, &f).ok_or_else(|| cannot_open(&f))?;
            let offset = offset.min(data.len());
            let len = int_param(p, "len", -1);
            let len = match usize::try_from(len) {
                Ok(l) if l <= data.len() - offset => l,
                _ => data.len() - offset,
            };
            if offset == 0 && len > 0 {
                fx.log.push(format!("rpc_fs_get_handler   Sending {f}"));
            }
            let left = data.len() - offset - len;
            Ok(json!({ "data": b64::encode(&data[offset..offset + len]), "left": left }))
        }
        "FS.Put" => {
            let f = filename()?;
            let offset = int_param(p, "offset", -1);
            let data = b64_param(p, "data");
            let append = bool_param(p, "append");
            let name = store_name(&f).ok_or_else(|| cannot_open(&f))?.to_string();
            let old = read_file(store, &f);
            let content = if offset < 0 {
                let mut c = if append {
                    old.unwrap_or_default()
                } else {
                    Vec::new()
                };
                c.extend_from_slice(&data);
                c
            } else if offset == 0 {
                data
            } else {
                // fopen "r+": the file must exist; fseek past the end leaves zeros.
                let mut c = old.ok_or_else(|| cannot_open(&f))?;
                let at = usize::try_from(offset).unwrap_or(usize::MAX);
                if at.saturating_add(data.len()) > MAX_BLOB_LEN {
                    return Err(fail(500, "failed to write data"));
                }
                if c.len() < at + data.len() {
                    c.resize(at + data.len(), 0);
                }
                c[at..at + data.len()].copy_from_slice(&data);
                c
            };
            if !append || offset == 0 {
                fx.log.push(format!("rpc_fs_put_handler   Receiving {f}"));
            }
            if content.len() > MAX_BLOB_LEN {
                return Err(fail(500, "failed to write data"));
            }
            write_file(store, &name, &content)?;
            fx.changed.push(name);
            Ok(Value::Null)
        }
        "FS.Remove" => {
            let f = filename()?;
            let ok = store_name(&f).and_then(|n| {
                let mut s = store.lock().ok()?;
                s.delete(n.as_bytes()).ok().map(|_| n.to_string())
            });
            fx.log.push(format!(
                "rpc_fs_remove_handle Remove {f} -> {}",
                if ok.is_some() { 0 } else { -1 }
            ));
            let name = ok.ok_or_else(|| fail(500, "remove failed"))?;
            fx.changed.push(name);
            Ok(Value::Null)
        }
        "FS.Rename" => {
            let (Some(src), Some(dst)) = (str_param(p, "src"), str_param(p, "dst")) else {
                return Err(fail(400, "src and dst are required"));
            };
            let failed = || fail(500, "rename failed");
            let data = read_file(store, &src).ok_or_else(failed)?;
            let (from, to) = (
                store_name(&src).ok_or_else(failed)?.to_string(),
                store_name(&dst).ok_or_else(failed)?.to_string(),
            );
            if from != to {
                write_file(store, &to, &data).map_err(|_| failed())?;
                let mut s = store.lock().map_err(|_| failed())?;
                s.delete(from.as_bytes()).map_err(|_| failed())?;
                fx.changed.push(from);
                fx.changed.push(to);
            }
            Ok(Value::Null)
        }
        "FS.Mkfs" => {
            if (p["dev_type"].is_null() && p["dev_name"].is_null()) || !p["fs_type"].is_string() {
                return Err(fail(400, "fs_type is required"));
            }
            Err(fail(500, "mkfs failed"))
        }
        "FS.Mount" => {
            if !p["path"].is_string()
                || (!p["dev_type"].is_string() && !p["dev_name"].is_string())
                || !p["fs_type"].is_string()
            {
                return Err(fail(400, "path and fs_type is required"));
            }
            Err(fail(500, "mount failed"))
        }
        _ => {
            if !p["path"].is_string() {
                return Err(fail(400, "path is required"));
            }
            Err(fail(500, "umount failed"))
        }
    }
}

fn slot_param(p: &Value) -> Result<u8, RpcError> {
    u8::try_from(int_param(p, "slot", -1))
        .ok()
        .filter(|s| *s < 16)
        .ok_or_else(|| fail(400, "Invalid slot"))
}

/// rpc-service-atca: the chip woken for the call, idled after it.
fn atca(method: &str, p: &Value, chip: &SharedChip, fx: &mut Effects) -> RpcResult {
    let mut guard = chip.lock().map_err(|_| fail(500, "chip unavailable"))?;
    let woke = guard.wake().is_ok();
    let r = atca_on(method, p, &mut Client::new(OnBus(&mut guard)), woke, fx);
    let _ = guard.idle();
    r
}

fn atca_on(
    method: &str,
    p: &Value,
    c: &mut Client<OnBus<'_>>,
    woke: bool,
    fx: &mut Effects,
) -> RpcResult {
    // A failed wake is ATCA_WAKE_FAILED (0xD0) for whatever the handler tried.
    let awake = || if woke { Ok(()) } else { Err(0xD0u8) };
    let chip_fail = |what: String| move |s: u8| fail(500, format!("{what}: 0x{s:02x}"));
    match method {
        "ATCA.GetConfig" => {
            let mut zone = [0u8; 128];
            for i in 0..4u8 {
                let mut out = [0u8; 32];
                awake()
                    .and_then(|_| {
                        c.execute(
                            &Command::new(Opcode::Read, 0x80, u16::from(i) << 3),
                            &mut out,
                        )
                        .map_err(atca_status)
                    })
                    .and_then(|n| if n == 32 { Ok(()) } else { Err(0xE6) })
                    .map_err(chip_fail(format!("Failed to read config zone block {i}")))?;
                zone[usize::from(i) * 32..usize::from(i) * 32 + 32].copy_from_slice(&out);
            }
            Ok(json!({ "config": b64::encode(&zone) }))
        }
        "ATCA.SetConfig" => {
            let bytes = b64_param(p, "config");
            let zone: [u8; 128] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| fail(400, format!("Expected 128 bytes, got {}", bytes.len())))?;
            let zone = ConfigZone(zone);
            awake()
                .and_then(|_| c.write_config_zone(&zone).map_err(atca_status))
                .and_then(|_| {
                    c.execute_status(&Command::update_extra(
                        UpdateExtraMode::UserExtra,
                        u16::from(zone.user_extra()),
                    ))
                    .map_err(atca_status)
                })
                .and_then(|_| {
                    c.execute_status(&Command::update_extra(
                        UpdateExtraMode::Selector,
                        u16::from(zone.selector()),
                    ))
                    .map_err(atca_status)
                })
                .map_err(chip_fail("Failed to set config".into()))?;
            Ok(Value::Null)
        }
        "ATCA.LockZone" => {
            let zone = int_param(p, "zone", -1);
            let target = match zone {
                0 => atecc::opcode::LockTarget::Config,
                1 => atecc::opcode::LockTarget::Data,
                _ => return Err(fail(403, "Invalid zone")),
            };
            awake()
                .and_then(|_| {
                    c.execute_status(&Command::lock_unchecked(target))
                        .map_err(atca_status)
                })
                .map_err(chip_fail(format!("Failed to lock zone {zone}")))?;
            fx.log.push(format!(
                "mgos_atca_service    {} zone locked",
                if zone == 0 { "Config" } else { "Data" }
            ));
            Ok(Value::Null)
        }
        "ATCA.SetKey" => {
            let slot = slot_param(p)?;
            let block = int_param(p, "block", 0);
            let ecc = bool_param(p, "ecc");
            let mut key = b64_param(p, "key");
            let mut wkey = b64_param(p, "wkey");
            let wkslot = int_param(p, "wkslot", 0);
            let r = awake()
                .map_err(chip_fail("Failed to set key".into()))
                .and_then(|_| set_key(c, slot, block, ecc, &key, &wkey, wkslot));
            // The plaintext key and write key crossed the wire; at least do not keep them.
            key.fill(0);
            wkey.fill(0);
            r
        }
        "ATCA.GenKey" => {
            let slot = slot_param(p)?;
            let k = awake()
                .and_then(|_| c.gen_key(slot).map_err(atca_status))
                .map_err(chip_fail(format!("Failed generate key on slot {slot}")))?;
            Ok(json!({ "pubkey": b64::encode(&k) }))
        }
        "ATCA.GetPubKey" => {
            let slot = slot_param(p)?;
            let k = awake()
                .and_then(|_| c.public_key(slot).map_err(atca_status))
                .map_err(chip_fail(format!("Failed get public key for slot {slot}")))?;
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
            let sig = awake()
                .and_then(|_| c.random().map_err(atca_status))
                .and_then(|_| c.sign_digest(slot, &digest).map_err(atca_status))
                .map_err(chip_fail("Failed to sign".into()))?;
            Ok(json!({ "signature": b64::encode(&sig) }))
        }
        _ => {
            // ATCA.AES
            let slot = int_param(p, "slot", -1);
            let block = int_param(p, "block", 0);
            if !(0..16).contains(&slot) || block < 0 {
                return Err(fail(400, "Invalid slot"));
            }
            let mode = int_param(p, "mode", 0);
            let data = b64_param(p, "data");
            if !data.len().is_multiple_of(16) {
                return Err(fail(400, "Data must be padded to AES block (16)"));
            }
            let mut out = Vec::with_capacity(data.len());
            for chunk in data.chunks(16) {
                if mode != 0 && mode != 1 {
                    return Err(fail(400, "Invalid mode"));
                }
                let what = if mode == 0 { "encrypt" } else { "decrypt" };
                let r = awake()
                    .and_then(|_| aes_block(c, mode as u8, block, slot as u16, chunk))
                    .map_err(chip_fail(format!("Failed to {what}")))?;
                out.extend_from_slice(&r);
            }
            Ok(json!({ "data": b64::encode(&out) }))
        }
    }
}

/// `atcab_aes`: the AES command (opcode 0x51), which only an ATECC608A knows.
fn aes_block(
    c: &mut Client<OnBus<'_>>,
    mode: u8,
    block: i64,
    key_id: u16,
    data: &[u8],
) -> Result<[u8; 16], u8> {
    let mode = mode | (u8::try_from(block & 0x3).unwrap_or(0) << 6);
    let mut packet = [0u8; crate::chip::MAX_PACKET];
    let n = crate::chip::build_packet(0x51, mode, key_id, data, &mut packet).ok_or(0xE2u8)?;
    let mut frame = [0u8; MAX_RESPONSE];
    let m = c
        .transport_mut()
        .transact(&packet[..n], &mut frame)
        .map_err(|e| atca_status(ClientError::Transport(e)))?;
    let body = atecc::packet::parse_response(&frame[..m])
        .map_err(|e| atca_status(ClientError::Chip(e)))?;
    body.try_into().map_err(|_| 0xE6)
}

fn set_key(
    c: &mut Client<OnBus<'_>>,
    slot: u8,
    block: i64,
    ecc: bool,
    key: &[u8],
    wkey: &[u8],
    wkslot: i64,
) -> RpcResult {
    let err = |s: u8| fail(500, format!("Failed to set key: 0x{s:02x}"));
    if !wkey.is_empty() && wkey.len() != 32 {
        return Err(fail(400, format!("Expected 32 bytes, got {}", key.len())));
    }
    let wk: Option<[u8; 32]> = wkey.try_into().ok();
    let wkslot = u8::try_from(wkslot).ok().filter(|s| *s < 16);
    let block = u8::try_from(block).map_err(|_| err(0xE2))?;
    if ecc {
        if key.len() > 32 {
            return Err(fail(400, format!("Expected 32 bytes, got {}", key.len())));
        }
        let mut scalar = [0u8; 32];
        scalar[..key.len()].copy_from_slice(key);
        let r = match wk {
            Some(w) => match wkslot {
                Some(ws) => c
                    .priv_write_encrypted(slot, &scalar, ws, &w, &[0u8; 20])
                    .map_err(atca_status),
                None => Err(0xE2),
            },
            None => {
                let mut data = [0u8; 68];
                data[..36].copy_from_slice(&atecc::host::private_key_value(&scalar));
                let r = c
                    .execute_status(&Command::priv_write(slot, &data))
                    .map_err(atca_status);
                data.fill(0);
                r
            }
        };
        scalar.fill(0);
        return r.map(|_| Value::Null).map_err(err);
    }
    let r = match (wk, key.len()) {
        (Some(w), _) => {
            let mut data = [0u8; 32];
            let n = key.len().min(32);
            data[..n].copy_from_slice(&key[..n]);
            let r = match wkslot {
                Some(ws) => c
                    .write_slot_encrypted(slot, block, &data, ws, &w, &[0u8; 20])
                    .map_err(atca_status),
                None => Err(0xE2),
            };
            data.fill(0);
            r
        }
        (None, 32) => {
            let mut data = [0u8; 32];
            data.copy_from_slice(key);
            let r = c.write_slot_block(slot, block, &data).map_err(atca_status);
            data.fill(0);
            r
        }
        (None, 4) => {
            let addr = (u16::from(block) << 8) | (u16::from(slot) << 3);
            c.execute_status(&Command::with_data(Opcode::Write, 0x02, addr, key))
                .map_err(atca_status)
        }
        (None, _) => Err(0xE2),
    };
    r.map(|_| Value::Null).map_err(err)
}

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
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
        // Stock Mongoose OS renews at the bench.
        renewal: None,
    };
    cfg.validate().map_err(|e| e.to_string())?;
    Ok((cfg, s("mqtt.ssl_cert"), s("mqtt.ssl_ca_cert")))
}

/// What the application needs, read from the store of a Mongoose board: the saved levels
/// (`conf1.json` .. `conf9.json`) over the defaults.
pub fn provisioned(
    store: &crate::store::Store<super::persist::FilePersist>,
) -> Result<Provisioned, String> {
    let config = conf::overlay(|n| store.blob(n.as_bytes()).map(<[u8]>::to_vec), USER_LEVEL);
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

/// How long the UART waits for a host that does not read before its bytes are lost.
const TX_STALL: Duration = Duration::from_millis(1000);

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
    /// Simulated line noise, both directions (off by default).
    pub noise: LineNoise,
}

impl MosLoop {
    /// Runs until stopped or the pty fails.
    pub fn run(self, pty: &Pty, events: &dyn BoardEvents) -> std::io::Result<()> {
        use std::io::Read;
        // A UART never blocks its sender: the pty is non-blocking, and bytes nobody reads
        // are lost after a while instead of stalling the board (and its shutdown).
        let fd = pty.master().as_fd();
        let flags =
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )
        .map_err(std::io::Error::from)?;
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
        let mut noise = self.noise.clone();
        let stop = self.stop.clone();
        let mut master = pty.master();
        // Since when the host has not taken our bytes: past TX_STALL they are dropped at once.
        let mut stalled: Option<Instant> = None;
        let baud = self.baud;
        let mut send =
            |bytes: &[u8], tx: &mut Pacer, noise: &mut LineNoise| -> std::io::Result<()> {
                for (piece, at) in burst_schedule(tx, baud, ns(Instant::now()), bytes.len()) {
                    sleep_until(at);
                    let wire: Vec<u8> =
                        bytes[piece].iter().filter_map(|&b| noise.pass(b)).collect();
                    let mut at = 0;
                    while at < wire.len() {
                        match master.write(&wire[at..]) {
                            Ok(n) => {
                                at += n;
                                stalled = None;
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.raw_os_error() == Some(nix::libc::EIO) =>
                            {
                                let since = *stalled.get_or_insert_with(Instant::now);
                                if stop.load(Ordering::SeqCst) || since.elapsed() >= TX_STALL {
                                    return Ok(()); // nobody listens: the bytes are gone
                                }
                                let mut fds = [PollFd::new(master.as_fd(), PollFlags::POLLOUT)];
                                let _ = poll(&mut fds, PollTimeout::from(50u16));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(())
            };
        let (mut board, boot_log) = MosBoard::boot(&self.store, &self.chip);
        let started = Instant::now();
        for l in &boot_log {
            send(&log_line(started, l), &mut tx, &mut noise)?;
        }
        let mut channel = UartChannel::default();
        let mut last_chatter = Instant::now();
        let mut buf = [0u8; READ_BURST];
        let mut input = pty.master();
        while !self.stop.load(Ordering::SeqCst) {
            if board.reboot_due() {
                if let Ok(mut s) = self.store.lock() {
                    s.reload();
                }
                let (b, boot_log) = MosBoard::boot(&self.store, &self.chip);
                board = b;
                channel = UartChannel::default();
                for l in &boot_log {
                    send(&log_line(started, l), &mut tx, &mut noise)?;
                }
                events.rebooted();
            }
            let mut fds = [PollFd::new(input.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(20u16)).map_err(std::io::Error::from)? == 0 {
                if last_chatter.elapsed() >= CHATTER_EVERY {
                    last_chatter = Instant::now();
                    let text = format!(
                        "mgos_debug           uptime: {:.2}, RAM: {RAM_SIZE}, {} free",
                        started.elapsed().as_secs_f64(),
                        41_000 - (started.elapsed().as_secs() % 97) * 8
                    );
                    send(&log_line(started, &text), &mut tx, &mut noise)?;
                }
                continue;
            }
            let n = match input.read(&mut buf) {
                Ok(0) => continue,
                Ok(n) => n,
                Err(e)
                    if e.kind() == std::io::ErrorKind::Interrupted
                        || e.kind() == std::io::ErrorKind::WouldBlock =>
                {
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(nix::libc::EIO) => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                Err(e) => return Err(e),
            };
            sleep_until(rx.schedule(ns(Instant::now()), n as u64));
            let burst: Vec<u8> = buf[..n].iter().filter_map(|&b| noise.pass(b)).collect();
            channel.feed(&burst);
            while let Some(event) = channel.next_event() {
                match event {
                    Received::Ready | Received::Empty => {}
                    Received::Corrupted => {
                        eprintln!("sensor-sim: mos: corrupted frame (CRC mismatch) dropped");
                        send(
                            &log_line(started, "mgos_rpc_channel_uart Corrupted frame"),
                            &mut tx,
                            &mut noise,
                        )?;
                    }
                    Received::Oversized => {}
                    Received::Frame { json, .. } => {
                        let mut fx = Effects::default();
                        let reply = board.handle_frame(&json, &self.chip, &self.store, &mut fx);
                        self.last_line_ms
                            .store(super::now_ms().max(1), Ordering::SeqCst);
                        // The board logs first and pauses logging while it sends a reply.
                        for l in &fx.log {
                            send(&log_line(started, l), &mut tx, &mut noise)?;
                        }
                        if let Some(text) = reply {
                            channel.send_frame(&text);
                        }
                        for name in &fx.changed {
                            events.blob_changed(name);
                        }
                        last_chatter = Instant::now();
                    }
                }
                if let Some(out) = channel.take_output() {
                    send(&out, &mut tx, &mut noise)?;
                }
            }
            if channel.end_of_burst().is_some() {
                eprintln!("sensor-sim: mos: frame longer than {MAX_FRAME} bytes dropped");
                send(
                    &log_line(
                        started,
                        "mgos_rpc_channel_uart Incoming frame is too big, dropping.",
                    ),
                    &mut tx,
                    &mut noise,
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mongoose_config_becomes_the_applications_configuration() {
        let mut c = conf::defaults();
        conf::apply(
            &mut c,
            "",
            &json!({
                "device": {"id": "salon-1"},
                "mqtt": {"enable": true, "server": "127.0.0.1:8883", "client_id": "salon-1",
                         "ssl_cert": "device.crt", "ssl_key": "ATCA:0", "ssl_ca_cert": "ca.crt",
                         "will_topic": "maison/salon/status"},
                "sensor": {"readings": "[{\"topic\":\"maison/salon/temperature\",\"quantity\":\"temperature\"}]", "interval_s": 2}
            }),
        )
        .expect("valid");
        let (cfg, cert, ca) = device_config(&c).expect("translates");
        assert_eq!(cfg.broker_host, "127.0.0.1");
        assert_eq!(cfg.port, 8883);
        assert_eq!(cfg.key_slot, 0);
        assert_eq!(cfg.status_topic.as_deref(), Some("maison/salon/status"));
        assert_eq!((cert.as_str(), ca.as_str()), ("device.crt", "ca.crt"));
        // A slot reserved for ECDHE is refused, as the mbedTLS hook does.
        conf::apply(&mut c, "", &json!({"mqtt": {"ssl_key": "ATCA:2"}})).expect("set");
        assert!(
            device_config(&c)
                .expect_err("ecdh slot")
                .contains("ecdh_slots_mask")
        );
    }

    #[test]
    fn chip_statuses_map_as_cryptoauthlib_does() {
        for (chip, atca) in [
            (0x01, 0xD1),
            (0x03, 0xD2),
            (0x05, 0xD6),
            (0x07, 0xD7),
            (0x08, 0xFA),
            (0x0F, 0xF4),
            (0x11, 0xF3),
            (0xEE, 0xE1),
            (0xFF, 0xD4),
            (0x42, 0xE1),
        ] {
            assert_eq!(atca_status_of(chip), atca, "chip status {chip:#04x}");
        }
    }
}
