//! The Mongoose OS twin (`sensor-sim --protocol mos`) against the firmware's sources: one
//! test per behaviour, each citing the repository, file and function it was written from.
//! The RPC layer is driven directly through `MosBoard` (deterministic, no timing); the UART
//! channel, reboots, line noise and signals through a real pseudo-terminal.
#![cfg(feature = "sim")]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use atecc::emulator::Chip;
use firmware::chip::Atecc;
use firmware::crc::crc32;
use firmware::sim::bus::{EmulatedBus, SharedChip};
use firmware::sim::mos::{Effects, MosBoard, b64};
use firmware::sim::persist::FilePersist;
use firmware::sim::serial::SharedStore;
use firmware::store::Store;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
use serde_json::{Value, json};

/// A board's RPC layer on a blank emulated chip and an empty store in `dir`.
struct Rpc {
    board: MosBoard,
    chip: SharedChip,
    store: SharedStore,
    next: u64,
}

impl Rpc {
    fn new(dir: &Path) -> Rpc {
        let chip: SharedChip = Arc::new(Mutex::new(Atecc::new(EmulatedBus::new(
            Chip::open(&dir.join("chip")).expect("chip"),
        ))));
        let store: SharedStore = Arc::new(Mutex::new(Box::new(Store::open(FilePersist::new(
            dir.join("store"),
        )))));
        let (board, _) = MosBoard::boot(&store, &chip);
        Rpc {
            board,
            chip,
            store,
            next: 1,
        }
    }

    fn reboot(&mut self) {
        let (board, _) = MosBoard::boot(&self.store, &self.chip);
        self.board = board;
    }

    /// The whole reply (or `None`) to `req`.
    fn raw(&mut self, req: Value) -> Option<Value> {
        let mut fx = Effects::default();
        let r = self.board.handle_frame(
            req.to_string().as_bytes(),
            &self.chip,
            &self.store,
            &mut fx,
        )?;
        Some(serde_json::from_str(&r).expect("reply is JSON"))
    }

    /// `method(params)` from `src: "mos"`: the result, or the error's code and message.
    fn call(&mut self, method: &str, params: Value) -> Result<Value, (i64, String)> {
        self.next += 1;
        let r = self
            .raw(json!({"id": self.next, "src": "mos", "method": method, "params": params}))
            .expect("a reply");
        match r.get("error") {
            Some(e) => Err((
                e["code"].as_i64().expect("code"),
                e["message"].as_str().unwrap_or("").to_string(),
            )),
            None => Ok(r["result"].clone()),
        }
    }

    fn ok(&mut self, method: &str, params: Value) -> Value {
        self.call(method, params)
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
    }

    fn err(&mut self, method: &str, params: Value) -> (i64, String) {
        self.call(method, params)
            .map(|v| panic!("{method} succeeded: {v}"))
            .unwrap_or_else(|e| e)
    }

    fn get(&mut self, name: &str) -> Vec<u8> {
        let r = self.ok("FS.Get", json!({"filename": name}));
        b64::decode(r["data"].as_str().expect("data")).expect("base64")
    }

    fn put(&mut self, name: &str, offset: Option<i64>, data: &[u8], append: bool) -> Value {
        let mut p = json!({"filename": name, "data": b64::encode(data), "append": append});
        if let Some(o) = offset {
            p["offset"] = json!(o);
        }
        self.ok("FS.Put", p)
    }
}

/// rpc-common `src/mg_rpc.c` `mg_rpc_add_list_handler` / `mg_rpc_list_handler` /
/// `mg_rpc_describe_handler` / `mg_rpc_ping_handler`; rpc-common `src/mgos_rpc.c`
/// `mgos_rpc_common_init`; rpc-service-fs `src/mgos_service_fs.c`
/// `mgos_rpc_service_fs_init`; rpc-service-config `src/mgos_service_config.c`
/// `mgos_rpc_service_config_init`; rpc-service-atca `src/mgos_atca_service.c`
/// `mgos_rpc_service_atca_init`: every handler is registered and listed (newest first),
/// `RPC.Describe` gives its `args_fmt`, `RPC.Ping` names the channel.
#[test]
fn every_handler_the_firmware_registers_is_listed_described_and_pinged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    let list = b.ok("RPC.List", json!({}));
    let names: Vec<&str> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|v| v.as_str().expect("name"))
        .collect();
    for m in [
        "RPC.List",
        "RPC.Describe",
        "RPC.Ping",
        "Sys.GetInfo",
        "Sys.Reboot",
        "Sys.SetDebug",
        "Config.Get",
        "Config.Set",
        "Config.Save",
        "FS.List",
        "FS.ListExt",
        "FS.Get",
        "FS.Put",
        "FS.Remove",
        "FS.Rename",
        "FS.Mkfs",
        "FS.Mount",
        "FS.Umount",
        "ATCA.GetConfig",
        "ATCA.SetConfig",
        "ATCA.LockZone",
        "ATCA.SetKey",
        "ATCA.GenKey",
        "ATCA.GetPubKey",
        "ATCA.Sign",
        "ATCA.AES",
    ] {
        assert!(names.contains(&m), "{m} missing from {names:?}");
    }
    assert_eq!(names.first(), Some(&"ATCA.AES"), "newest first: {names:?}");
    assert_eq!(
        b.ok("RPC.Describe", json!({"name": "FS.Put"})),
        json!({"name": "FS.Put", "args_fmt": "{filename: %Q, offset: %ld, data: %V, append: %B}"})
    );
    assert_eq!(
        b.err("RPC.Describe", json!({})),
        (400, "name is required".into())
    );
    assert_eq!(
        b.err("RPC.Describe", json!({"name": "FS.Nope"})),
        (404, "name not found".into())
    );
    assert_eq!(
        b.ok("RPC.Ping", json!({})),
        json!({"channel_info": "UART0"})
    );
    assert_eq!(
        b.err("FS.Nope", json!({})),
        (404, "No handler for FS.Nope".into())
    );
    // mg_match_prefix_n is case-insensitive.
    assert_eq!(b.ok("rpc.ping", json!({}))["channel_info"], "UART0");
}

/// rpc-service-atca `src/mgos_atca_service.c` `mgos_atca_aes`: ATCA.AES is registered on
/// every chip; on an ATECC508A the AES command is a parse error, which cryptoauthlib
/// (`lib/atca_command.c` `isATCAError`) maps 0x03 -> ATCA_PARSE_ERROR 0xD2: 500, not 404.
#[test]
fn atca_aes_on_an_atecc508a_is_a_500_chip_error_not_a_404() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    let p = json!({"slot": 5, "mode": 0, "data": b64::encode(&[0u8; 16])});
    assert_eq!(
        b.err("ATCA.AES", p),
        (500, "Failed to encrypt: 0xd2".into())
    );
    let p = json!({"slot": 5, "mode": 1, "data": b64::encode(&[0u8; 32])});
    assert_eq!(
        b.err("ATCA.AES", p),
        (500, "Failed to decrypt: 0xd2".into())
    );
    let p = json!({"slot": 5, "data": b64::encode(&[0u8; 15])});
    assert_eq!(
        b.err("ATCA.AES", p),
        (400, "Data must be padded to AES block (16)".into())
    );
    let p = json!({"slot": 5, "mode": 2, "data": b64::encode(&[0u8; 16])});
    assert_eq!(b.err("ATCA.AES", p), (400, "Invalid mode".into()));
    assert_eq!(
        b.err("ATCA.AES", json!({"slot": 16})),
        (400, "Invalid slot".into())
    );
}

/// rpc-service-atca `src/mgos_atca_service.c` (`mgos_atca_lock_zone`,
/// `mgos_atca_get_or_gen_key`, `mgos_atca_sign`) with cryptoauthlib `lib/atca_command.c`
/// `isATCAError`: a chip refusal (status 0x0F) is ATCA_EXECUTION_ERROR 0xF4 in the
/// firmware's own words.
#[test]
fn chip_refusals_carry_the_firmwares_texts_and_cryptoauthlibs_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    assert_eq!(
        b.err("ATCA.LockZone", json!({"zone": 1})),
        (500, "Failed to lock zone 1: 0xf4".into())
    );
    assert_eq!(
        b.err("ATCA.LockZone", json!({"zone": 7})),
        (403, "Invalid zone".into())
    );
    assert_eq!(
        b.err("ATCA.GenKey", json!({"slot": 0})),
        (500, "Failed generate key on slot 0: 0xf4".into())
    );
    assert_eq!(
        b.err("ATCA.GetPubKey", json!({"slot": 0})),
        (500, "Failed get public key for slot 0: 0xf4".into())
    );
    assert_eq!(
        b.err(
            "ATCA.Sign",
            json!({"slot": 0, "digest": b64::encode(&[0u8; 31])})
        ),
        (400, "Expected 32 bytes, got 31".into())
    );
    assert_eq!(
        b.err("ATCA.SetConfig", json!({"config": b64::encode(&[0u8; 12])})),
        (400, "Expected 128 bytes, got 12".into())
    );
    let config = b.ok("ATCA.GetConfig", json!({}));
    let zone = b64::decode(config["config"].as_str().expect("config")).expect("b64");
    assert_eq!(zone.len(), 128);
}

/// rpc-service-fs `src/mgos_service_fs.c` `rpc_fs_put_handler`: offset 0 opens "wb"
/// (truncates), offset > 0 opens "r+" and seeks (so a chunk sent twice lands once), no
/// offset appends with `append` or truncates without; "r+" on a missing file fails.
#[test]
fn fs_put_honours_offset_and_a_resent_chunk_is_not_appended_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    b.put("device.crt", Some(0), b"hello ", false);
    b.put("device.crt", Some(6), b"world", false);
    // The reply was lost: the host sends the chunk again.
    b.put("device.crt", Some(6), b"world", false);
    assert_eq!(b.get("device.crt"), b"hello world");
    b.put("device.crt", Some(0), b"HI", false);
    assert_eq!(b.get("device.crt"), b"HI", "offset 0 truncates");
    b.put("device.crt", Some(4), b"!", false);
    assert_eq!(
        b.get("device.crt"),
        b"HI\0\0!",
        "a seek past the end leaves zeros"
    );
    b.put("device.crt", None, b"+", true);
    assert_eq!(b.get("device.crt"), b"HI\0\0!+", "no offset, append");
    b.put("device.crt", None, b"new", false);
    assert_eq!(
        b.get("device.crt"),
        b"new",
        "no offset, no append: truncate"
    );
    let p = json!({"filename": "nofile", "offset": 3, "data": b64::encode(b"x")});
    assert_eq!(
        b.err("FS.Put", p),
        (400, "failed to open file \"nofile\"".into())
    );
    assert_eq!(
        b.err("FS.Put", json!({"data": ""})),
        (400, "filename is required".into())
    );
}

/// rpc-service-fs `src/mgos_service_fs.c` `rpc_fs_get_handler`: without `len` the rest of
/// the file comes back (`len = file_size - offset`), `left` counts what follows.
#[test]
fn fs_get_without_len_returns_the_rest_of_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
    for (i, c) in data.chunks(1000).enumerate() {
        b.put("big.bin", Some(i as i64 * 1000), c, false);
    }
    let r = b.ok("FS.Get", json!({"filename": "big.bin", "offset": 100}));
    assert_eq!(
        b64::decode(r["data"].as_str().expect("data")).expect("b64"),
        &data[100..]
    );
    assert_eq!(r["left"], 0);
    let r = b.ok(
        "FS.Get",
        json!({"filename": "big.bin", "offset": 10, "len": 5}),
    );
    assert_eq!(r["left"], 2985);
    assert_eq!(
        b.err("FS.Get", json!({"filename": "big.bin", "offset": -1})),
        (400, "illegal offset".into())
    );
    assert_eq!(
        b.err("FS.Get", json!({"filename": "nope"})),
        (400, "failed to open file \"nope\"".into())
    );
}

/// rpc-service-fs `src/mgos_service_fs.c` `rpc_fs_remove_handler`, `rpc_fs_rename_handler`,
/// `rpc_fs_list_common` (ext): a removed file frees its room, a renamed one moves, and
/// `FS.ListExt` gives names with sizes.
#[test]
fn fs_remove_rename_and_list_ext_manage_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    // Fill the 12 KiB store with 4 KiB files, then make room by removing one.
    for n in ["a", "b", "c"] {
        b.put(n, Some(0), &[7u8; 4000], false);
    }
    let p = json!({"filename": "d", "offset": 0, "data": b64::encode(&[1u8; 1000])});
    assert_eq!(
        b.err("FS.Put", p.clone()),
        (500, "failed to write data".into())
    );
    assert_eq!(b.ok("FS.Remove", json!({"filename": "a"})), Value::Null);
    assert_eq!(b.ok("FS.Put", p), Value::Null);
    assert_eq!(
        b.err("FS.Remove", json!({"filename": "a"})),
        (500, "remove failed".into())
    );
    assert_eq!(
        b.ok("FS.Rename", json!({"src": "d", "dst": "/e"})),
        Value::Null
    );
    let list = b.ok("FS.ListExt", json!({}));
    let mut got: Vec<(String, u64)> = list
        .as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["name"].as_str().expect("name").to_string(),
                e["size"].as_u64().expect("size"),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("b".into(), 4000), ("c".into(), 4000), ("e".into(), 1000)]
    );
    assert_eq!(b.ok("FS.List", json!({"path": "/nodir"})), json!([]));
    assert_eq!(
        b.err("FS.Rename", json!({"src": "b"})),
        (400, "src and dst are required".into())
    );
    assert_eq!(
        b.err("FS.Rename", json!({"src": "zz", "dst": "y"})),
        (500, "rename failed".into())
    );
}

/// rpc-service-fs `src/mgos_service_fs.c` `rpc_fs_mkfs_handler`, `rpc_fs_mount_handler`,
/// `rpc_fs_umount_handler`: their parameter checks and messages.
#[test]
fn fs_mkfs_mount_and_umount_check_parameters_as_the_firmware() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    assert_eq!(
        b.err("FS.Mkfs", json!({"dev_name": "fs1"})),
        (400, "fs_type is required".into())
    );
    assert_eq!(
        b.err("FS.Mkfs", json!({"dev_name": "fs1", "fs_type": "SPIFFS"})),
        (500, "mkfs failed".into())
    );
    assert_eq!(
        b.err("FS.Mount", json!({"dev_name": "fs1", "fs_type": "SPIFFS"})),
        (400, "path and fs_type is required".into())
    );
    assert_eq!(
        b.err(
            "FS.Mount",
            json!({"path": "/x", "dev_name": "fs1", "fs_type": "SPIFFS"})
        ),
        (500, "mount failed".into())
    );
    assert_eq!(
        b.err("FS.Umount", json!({})),
        (400, "path is required".into())
    );
}

/// rpc-common `src/mgos_rpc.c` `mgos_print_sys_info` (every field it prints) and
/// `mgos_rpc_cfg_from_sys` + `src/mg_rpc.c` `mg_rpc_create` / `mg_rpc_dispatch_frame`
/// (the reply's `src` is the RPC id, `device.id` at boot); mongoose-os
/// `mgos_sys_config.c` `mgos_expand_placeholders` (the default `esp8266_??????`).
#[test]
fn the_device_id_comes_from_device_id_and_sys_get_info_has_the_firmwares_fields() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    let info = b.ok("Sys.GetInfo", json!({}));
    for k in [
        "id",
        "app",
        "fw_version",
        "fw_id",
        "mg_version",
        "mg_id",
        "mac",
        "arch",
        "uptime",
        "public_key",
        "ram_size",
        "ram_free",
        "ram_min_free",
        "fs_size",
        "fs_free",
        "wifi",
    ] {
        assert!(info.get(k).is_some(), "no {k} in {info}");
    }
    for k in ["sta_ip", "ap_ip", "status", "ssid"] {
        assert!(info["wifi"][k].is_string(), "wifi.{k} in {info}");
    }
    let mac = info["mac"].as_str().expect("mac");
    let default_id = format!("esp8266_{}", &mac[6..]);
    assert_eq!(info["id"], default_id.as_str());
    let r = b
        .raw(json!({"id": 5, "method": "RPC.Ping"}))
        .expect("reply");
    assert_eq!(r["src"], default_id.as_str());

    b.ok(
        "Config.Set",
        json!({"config": {"device": {"id": "salon-1"}}, "save": true}),
    );
    // Sys.GetInfo reads the configuration now; the RPC id changes at the next boot.
    assert_eq!(b.ok("Sys.GetInfo", json!({}))["id"], "salon-1");
    let r = b
        .raw(json!({"id": 6, "method": "RPC.Ping"}))
        .expect("reply");
    assert_eq!(r["src"], default_id.as_str());
    b.reboot();
    let r = b
        .raw(json!({"id": 7, "method": "Sys.GetInfo"}))
        .expect("reply");
    assert_eq!(r["src"], "salon-1");
    assert_eq!(r["result"]["id"], "salon-1");
}

/// rpc-common `src/mg_rpc.c` `mg_rpc_handle_frame` (a `dst` that is not a local id is
/// dropped: "Wrong dst"), `mg_rpc_send_responsef` / `mg_rpc_dispatch_frame` (`dst` only when
/// the request had a `src`, `src` the request's `dst` or the local id, `id` bare when all
/// digits, `tag` echoed), `mg_rpc_parse_frame` (no id: no reply).
#[test]
fn frames_for_another_dst_are_dropped_and_replies_carry_dst_only_for_a_src() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    let me = b.board.device_id().to_string();
    assert!(
        b.raw(json!({"id": 1, "dst": "someone-else", "method": "RPC.Ping"}))
            .is_none()
    );
    let r = b
        .raw(json!({"id": 2, "dst": me, "src": "host", "tag": "t1", "method": "RPC.Ping"}))
        .expect("reply");
    assert_eq!(r["src"], me.as_str());
    assert_eq!(r["dst"], "host");
    assert_eq!(r["tag"], "t1");
    let r = b
        .raw(json!({"id": 3, "method": "RPC.Ping"}))
        .expect("reply");
    assert!(r.get("dst").is_none(), "no src, no dst: {r}");
    let r = b
        .raw(json!({"id": "12", "method": "RPC.Ping"}))
        .expect("reply");
    assert_eq!(r["id"], 12, "an all-digit id comes back bare");
    let r = b
        .raw(json!({"id": "a1", "method": "RPC.Ping"}))
        .expect("reply");
    assert_eq!(r["id"], "a1");
    assert!(
        b.raw(json!({"method": "RPC.Ping"})).is_none(),
        "no id, no reply"
    );
}

/// rpc-service-config `src/mgos_service_config.c` `mgos_config_set_handler`,
/// `mgos_config_get_handler`, `do_save`; mongoose-os `mgos_sys_config.c`
/// `mgos_sys_config_save_level` / `mgos_sys_config_load_level`; `mgos_config_util.c`
/// `mgos_conf_parse_cb`: the `{key, value}` form, `level` (0 refused, 1..8 its own file,
/// not the running configuration), unknown keys ignored, type errors in the firmware's words.
#[test]
fn config_set_takes_key_value_and_level_as_the_firmware() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    assert_eq!(
        b.ok("Config.Set", json!({"key": "mqtt.server", "value": "h:1"})),
        json!({"saved": false})
    );
    assert_eq!(b.ok("Config.Get", json!({"key": "mqtt.server"})), "h:1");
    assert_eq!(
        b.err("Config.Set", json!({"key": "mqtt.server"})),
        (400, "value is required".into())
    );
    assert_eq!(
        b.err("Config.Set", json!({"value": {}, "level": 0})),
        (400, "not allowed".into())
    );
    assert_eq!(
        b.err("Config.Set", json!({"key": "mqtt.sever", "value": "x"})),
        (404, "invalid config key".into())
    );
    assert_eq!(
        b.err("Config.Set", json!({"key": "mqtt.server", "value": 5})),
        (400, "invalid config value: [] is not a string".into())
    );
    assert_eq!(
        b.err(
            "Config.Set",
            json!({"config": {"mqtt": {"keep_alive": "60"}}})
        ),
        (
            400,
            "invalid config value: [mqtt.keep_alive] is not a number".into()
        )
    );
    assert_eq!(
        b.ok("Config.Set", json!({"config": {"mqtt": {"typo": 1}}})),
        json!({"saved": false}),
        "an unknown key is ignored"
    );
    assert_eq!(
        b.ok(
            "Config.Set",
            json!({"key": "mqtt.client_id", "value": "vendor", "level": 5, "save": true})
        ),
        json!({"saved": true})
    );
    assert_eq!(
        b.ok("Config.Get", json!({"key": "mqtt.client_id", "level": 5})),
        "vendor"
    );
    assert_eq!(
        b.ok("Config.Get", json!({"key": "mqtt.client_id"})),
        "",
        "a lower level does not change the running configuration"
    );
    // At the next boot the running configuration includes level 5 (mqtt.server was not
    // saved, so it is gone).
    b.reboot();
    assert_eq!(
        b.ok("Config.Get", json!({"key": "mqtt.client_id"})),
        "vendor"
    );
    assert_eq!(b.ok("Config.Get", json!({"key": "mqtt.server"})), "");
    b.ok("Config.Set", json!({"key": "mqtt.server", "value": "h:1"}));
    b.ok("Config.Save", json!({}));
    b.reboot();
    assert_eq!(b.ok("Config.Get", json!({"key": "mqtt.server"})), "h:1");
    assert_eq!(
        b.ok("Config.Get", json!({"key": "mqtt.client_id"})),
        "vendor"
    );
    let files = b.ok("FS.List", json!({})).to_string();
    assert!(
        files.contains("conf5.json") && files.contains("conf9.json"),
        "{files}"
    );
    // conf9.json holds only what differs from level 8.
    let saved: Value = serde_json::from_slice(&b.get("conf9.json")).expect("json");
    assert!(saved["mqtt"].get("keep_alive").is_none(), "{saved}");
    assert!(saved["mqtt"].get("client_id").is_none(), "{saved}");
    assert_eq!(saved["mqtt"]["server"], "h:1");
}

/// rpc-common `src/mgos_rpc.c` `mgos_sys_reboot_handler` (`delay_ms`, 400 `invalid delay
/// value`) and `mgos_rpc_req_prehandler` (418 `shutting down in N ms` within
/// `MGOS_RPC_REBOOT_LOCKOUT_MS` of the restart).
#[test]
fn a_reboot_is_scheduled_after_the_reply_and_locks_out_its_last_100_ms() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut b = Rpc::new(dir.path());
    assert_eq!(
        b.err("Sys.Reboot", json!({"delay_ms": -1})),
        (400, "invalid delay value".into())
    );
    b.ok("Sys.Reboot", json!({"delay_ms": 5000}));
    assert!(!b.board.reboot_due());
    b.ok("RPC.Ping", json!({}));
    let mut b = Rpc::new(dir.path());
    b.ok("Sys.Reboot", json!({"delay_ms": 80}));
    let (code, msg) = b.err("RPC.Ping", json!({}));
    assert_eq!(code, 418);
    assert!(msg.starts_with("shutting down in "), "{msg}");
    std::thread::sleep(Duration::from_millis(100));
    assert!(b.board.reboot_due());
}

// ---- Over the pseudo-terminal ----

struct Sim {
    child: Child,
    link: PathBuf,
}

impl Sim {
    fn start(dir: &Path, extra: &[&str]) -> Sim {
        let link = dir.join("tty");
        let child = Command::new(env!("CARGO_BIN_EXE_sensor-sim"))
            .arg("--link")
            .arg(&link)
            .arg("--state")
            .arg(dir.join("chip.state"))
            .args(["--protocol", "mos", "--baud", "0"])
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn sensor-sim");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            assert!(Instant::now() < deadline, "no serial port");
            std::thread::sleep(Duration::from_millis(20));
        }
        Sim { child, link }
    }

    fn port(&self) -> File {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(&self.link)
            .expect("open port");
        let mut t = tcgetattr(f.as_fd()).expect("tcgetattr");
        cfmakeraw(&mut t);
        tcsetattr(f.as_fd(), SetArg::TCSANOW, &t).expect("raw");
        f
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads until `done(bytes so far)` or `wait` passes.
fn read_until(f: &mut File, wait: Duration, done: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = [0u8; 1024];
    while Instant::now() < deadline && !done(&out) {
        let mut fds = [PollFd::new(f.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(20u16)).expect("poll") == 0 {
            continue;
        }
        match f.read(&mut buf) {
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// rpc-uart `src/mgos_rpc_channel_uart.c` `mg_rpc_channel_uart_dispatcher`: the ready
/// answer is `"""` 0x04 `"""` with no newlines; an empty frame is answered with a `\n`
/// that goes out with the next thing sent.
#[test]
fn the_ready_frame_has_no_newlines_and_an_empty_frame_is_answered_with_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &[]);
    let mut port = sim.port();
    port.write_all(b"\x04\n").expect("write");
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        contains(b, b"\"\"\"\x04\"\"\"")
    });
    let at = got
        .windows(5)
        .position(|w| w == b"\"\"\"\x04\"")
        .expect("the ready answer");
    // Only a log line's own CRLF may come before it; nothing follows it.
    assert!(
        at < 2 || got[at - 1] != b'\n' || got[at - 2] == b'\r',
        "{got:?}"
    );
    assert_eq!(&got[at..at + 7], b"\"\"\"\x04\"\"\"", "{got:?}");
    assert_ne!(got.get(at + 7), Some(&b'\n'), "{got:?}");
    port.write_all(b" \n").expect("write");
    std::thread::sleep(Duration::from_millis(100));
    port.write_all(b"\x04\n").expect("write");
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        contains(b, b"\"\"\"\x04\"\"\"")
    });
    let at = got
        .windows(5)
        .position(|w| w == b"\"\"\"\x04\"")
        .expect("the ready answer");
    assert!(
        at >= 1 && got[at - 1] == b'\n' && (at < 2 || got[at - 2] != b'\r'),
        "{got:?}"
    );
}

/// The reply frame to request id `id` in `bytes`: its JSON, its text and its CRC (if any).
fn reply_text(bytes: &[u8], id: u64) -> Option<(Value, String, String)> {
    let text = String::from_utf8_lossy(bytes);
    // Only complete lines: a reply still arriving has no CRC yet.
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    for line in complete.split('\n') {
        let line = line.trim_matches('"');
        let Some(start) = line.find('{') else {
            continue;
        };
        let Some(close) = line.rfind('}') else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&line[start..=close]) else {
            continue;
        };
        if v["id"] == id {
            return Some((
                v,
                line[start..=close].to_string(),
                line[close + 1..].to_string(),
            ));
        }
    }
    None
}

fn reply_in(bytes: &[u8], id: u64) -> Option<(Value, String)> {
    reply_text(bytes, id).map(|(v, _, crc)| (v, crc))
}

/// rpc-uart `src/mgos_rpc_channel_uart.c` `mg_rpc_channel_uart_dispatcher`: metadata after
/// the last `}` is checked only when 8 characters or longer, read with `sscanf("%x")`
/// (so `,a,b` after the CRC is fine and 8 characters without a hex digit are a corrupt
/// frame); a checked CRC turns CRCs on in replies; bytes of 0x80 or more are kept.
#[test]
fn crc_metadata_and_non_ascii_bytes_are_read_as_the_firmware_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &[]);
    let mut port = sim.port();
    let frame = |id: u64, meta: &str| {
        let j = format!(r#"{{"id":{id},"src":"t","method":"RPC.Ping"}}"#);
        format!("{j}{meta}\n")
    };
    // Short metadata: not checked, and the reply has no CRC.
    port.write_all(frame(1, ",ab").as_bytes()).expect("write");
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        reply_in(b, 1).is_some()
    });
    let (_, crc) = reply_in(&got, 1).expect("answered");
    assert_eq!(crc.trim(), "", "{got:?}");
    // Eight characters without a hex digit: a corrupted frame, no reply.
    port.write_all(frame(2, "zzzzzzzz").as_bytes())
        .expect("write");
    let got = read_until(&mut port, Duration::from_millis(500), |b| {
        reply_in(b, 2).is_some()
    });
    assert!(reply_in(&got, 2).is_none(), "{got:?}");
    // A good CRC followed by more fields: accepted, and replies now carry a CRC.
    let j = r#"{"id":3,"src":"t","method":"RPC.Ping"}"#;
    let line = format!("{j}{:08x},a,b\n", crc32(j.as_bytes()));
    port.write_all(line.as_bytes()).expect("write");
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        reply_in(b, 3).is_some()
    });
    let (_, json, crc) = reply_text(&got, 3).expect("answered");
    assert_eq!(crc.trim(), format!("{:08x}", crc32(json.as_bytes())));
    // A non-ASCII name: the frame is kept and answered.
    port.write_all(
        "{\"id\":4,\"method\":\"RPC.Describe\",\"params\":{\"name\":\"caf\u{e9}\"}}\n".as_bytes(),
    )
    .expect("write");
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        reply_in(b, 4).is_some()
    });
    let (v, _) = reply_in(&got, 4).expect("answered");
    assert_eq!(v["error"]["message"], "name not found");
}

/// rpc-service-config `src/mgos_service_config.c` `do_save` (`mgos_system_restart_after(500)`
/// after the reply) and rpc-common `src/mgos_rpc.c` `mgos_sys_reboot_handler`
/// (`delay_ms`): the reply comes first, the boot banner only after the delay.
#[test]
fn reboots_happen_after_the_reply_and_the_delay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &[]);
    let mut port = sim.port();
    let _ = read_until(&mut port, Duration::from_millis(300), |_| false);
    port.write_all(b"{\"id\":1,\"method\":\"Config.Save\",\"params\":{\"reboot\":true}}\n")
        .expect("write");
    let t0 = Instant::now();
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        reply_in(b, 1).is_some()
    });
    assert!(reply_in(&got, 1).is_some(), "{got:?}");
    assert!(!contains(&got, b"rst cause"), "rebooted before replying");
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        contains(b, b"rst cause")
    });
    assert!(contains(&got, b"rst cause"), "{got:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t0.elapsed()
    );

    port.write_all(b"{\"id\":2,\"method\":\"Sys.Reboot\",\"params\":{\"delay_ms\":1200}}\n")
        .expect("write");
    let t0 = Instant::now();
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        reply_in(b, 2).is_some()
    });
    assert!(reply_in(&got, 2).is_some(), "{got:?}");
    // Within the delay the board still answers.
    port.write_all(b"{\"id\":3,\"method\":\"RPC.Ping\"}\n")
        .expect("write");
    let got = read_until(&mut port, Duration::from_secs(1), |b| {
        reply_in(b, 3).is_some()
    });
    assert!(
        reply_in(&got, 3).is_some() && !contains(&got, b"rst cause"),
        "{got:?}"
    );
    let got = read_until(&mut port, Duration::from_secs(3), |b| {
        contains(b, b"rst cause")
    });
    assert!(contains(&got, b"rst cause"), "{got:?}");
    assert!(
        t0.elapsed() >= Duration::from_millis(1150),
        "{:?}",
        t0.elapsed()
    );
}

/// `--line-fault-rate` (README) applies to the Mongoose protocol too: with noise some
/// CRC-checked requests or replies are lost, and the rest get through (rpc-uart
/// `mg_rpc_channel_uart_dispatcher` drops the corrupt ones).
#[test]
fn line_fault_rate_corrupts_mongoose_traffic_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &["--line-fault-rate", "0.005"]);
    let mut port = sim.port();
    let mut answered = 0;
    let tries = 40;
    for id in 1..=tries {
        let j = format!(r#"{{"id":{id},"src":"t","method":"RPC.Ping"}}"#);
        let line = format!("{j}{:08x}\n", crc32(j.as_bytes()));
        port.write_all(line.as_bytes()).expect("write");
        let got = read_until(&mut port, Duration::from_millis(150), |b| {
            reply_in(b, id).is_some()
        });
        if reply_in(&got, id).is_some() {
            answered += 1;
        }
    }
    assert!(
        answered > 0 && answered < tries,
        "{answered} of {tries} answered: the noise did nothing or everything"
    );
}

/// A board whose host stopped reading (the fate of a board left running once the bench or
/// its broker went away) still stops on SIGTERM and on SIGINT: its UART drops what nobody
/// reads instead of blocking (a real UART never blocks).
#[test]
fn a_board_nobody_reads_still_stops_on_sigterm_and_sigint() {
    for sig in [
        nix::sys::signal::Signal::SIGTERM,
        nix::sys::signal::Signal::SIGINT,
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut sim = Sim::start(dir.path(), &[]);
        let mut port = sim.port();
        // 3000 ready questions: 21 KB of answers nobody reads fill the pty.
        port.write_all(&b"\x04\n".repeat(3000)).expect("write");
        std::thread::sleep(Duration::from_millis(1500));
        let pid = nix::unistd::Pid::from_raw(i32::try_from(sim.child.id()).expect("pid"));
        nix::sys::signal::kill(pid, sig).expect("kill");
        let deadline = Instant::now() + Duration::from_secs(5);
        let status = loop {
            if let Some(s) = sim.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "{sig:?} ignored");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{sig:?}: {status:?}");
        drop(port);
    }
}
