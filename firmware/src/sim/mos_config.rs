//! The Mongoose OS configuration of the simulated board: the schema with its defaults, the
//! levels (`conf1.json` .. `conf9.json` in the store, 9 being the user level), and parsing,
//! diffing and saving as the firmware does (`mgos_config_util.c`: `mgos_conf_parse_cb`,
//! `mgos_conf_emit_obj`; `mgos_sys_config.c`: `mgos_sys_config_load_level_internal`,
//! `mgos_sys_config_save_level`, `mgos_expand_placeholders`).
//!
//! - A configuration at level L is the compiled-in defaults overlaid with `conf1.json` ..
//!   `confL.json` (a `confN.json.try` is preferred, and deleted at boot). The running
//!   configuration is level 9, its `device.id` placeholders (`?`) filled from the MAC.
//! - Parsing walks the JSON leaves: a key the schema lacks is ignored; a leaf of the wrong
//!   type stops the walk with `[path] is not a number|boolean|string` (or `failed to parse`
//!   for a number that is not an integer), keeping what was set before it.
//! - Saving level L writes only what differs from level L-1.

use serde_json::{Map, Value, json};

use super::serial::SharedStore;
use crate::crc::crc32;

/// The user level.
pub const USER_LEVEL: u8 = 9;
/// The user-level file.
pub const CONFIG_FILE: &str = "conf9.json";

/// The configuration schema this firmware build has, with its defaults.
pub fn defaults() -> Value {
    json!({
        "device": { "id": "esp8266_??????", "public_key": "" },
        "debug": { "level": 2 },
        "i2c": { "enable": true },
        "sys": { "atca": { "enable": true, "i2c_bus": 0, "i2c_addr": 96, "ecdh_slots_mask": 12 } },
        "rpc": { "enable": true, "max_frame_size": super::mos_uart::MAX_FRAME, "max_queue_length": 25,
                 "uart": { "uart_no": 0, "baud_rate": 115200, "fc_type": 2, "dst": "" } },
        "mqtt": {
            "enable": false, "server": "", "client_id": "", "user": "", "pass": "",
            "ssl_cert": "", "ssl_key": "", "ssl_ca_cert": "",
            "clean_session": true, "keep_alive": 60,
            "will_topic": "", "will_message": "", "will_retain": false, "max_qos": 2
        },
        "sensor": { "readings": "", "qos": 1, "retain": false, "interval_s": 10 }
    })
}

/// The schema entry at a dotted path (`mgos_conf_find_schema_entry`).
pub fn entry<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    if path.is_empty() {
        return Some(root);
    }
    path.split('.').try_fold(root, |v, k| v.as_object()?.get(k))
}

fn entry_mut<'a>(root: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    if path.is_empty() {
        return Some(root);
    }
    path.split('.')
        .try_fold(root, |v, k| v.as_object_mut()?.get_mut(k))
}

fn join(a: &str, b: &str) -> String {
    if b.is_empty() {
        a.to_string()
    } else if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

/// Parses `value` into the part of `cfg` at `key` (`""` = all), as `mgos_conf_parse_cb`
/// does: unknown keys ignored, the first leaf of the wrong type stops with its message.
pub fn apply(cfg: &mut Value, key: &str, value: &Value) -> Result<(), String> {
    fn walk(cfg: &mut Value, base: &str, rel: &str, v: &Value) -> Result<(), String> {
        if let Value::Object(m) = v {
            for (k, sub) in m {
                walk(cfg, base, &join(rel, k), sub)?;
            }
            return Ok(());
        }
        let Some(slot) = entry_mut(cfg, &join(base, rel)) else {
            return Ok(()); // "Unknown key": ignored.
        };
        match (&*slot, v) {
            (Value::Object(_), _) => Ok(()),
            (Value::Number(_), Value::Number(n)) => match n.as_i64() {
                Some(i) => {
                    // strtol on a 32-bit long saturates.
                    *slot = json!(i.clamp(i64::from(i32::MIN), i64::from(i32::MAX)));
                    Ok(())
                }
                None => Err(format!("[{rel}] failed to parse [{n}]")),
            },
            (Value::Number(_), _) => Err(format!("[{rel}] is not a number")),
            (Value::Bool(_), Value::Bool(_)) | (Value::String(_), Value::String(_)) => {
                *slot = v.clone();
                Ok(())
            }
            (Value::Bool(_), _) => Err(format!("[{rel}] is not a boolean")),
            (_, _) => Err(format!("[{rel}] is not a string")),
        }
    }
    walk(cfg, key, "", value)
}

/// What in `cfg` differs from `base` (`mgos_conf_emit_obj` with a base).
pub fn diff(cfg: &Value, base: &Value) -> Value {
    let mut out = Map::new();
    if let (Value::Object(c), Value::Object(b)) = (cfg, base) {
        for (k, v) in c {
            match (v, b.get(k)) {
                (Value::Object(_), Some(bv)) => {
                    let d = diff(v, bv);
                    if d.as_object().is_some_and(|m| !m.is_empty()) {
                        out.insert(k.clone(), d);
                    }
                }
                (_, Some(bv)) if bv == v => {}
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// The file holding level `level` (and its one-boot `.try` variant).
pub fn level_file(level: u8, try_once: bool) -> String {
    format!("conf{level}.json{}", if try_once { ".try" } else { "" })
}

/// The configuration up to and including `level` from level files read through `get`
/// (a `.try` file preferred).
pub fn overlay(get: impl Fn(&str) -> Option<Vec<u8>>, level: u8) -> Value {
    let mut cfg = defaults();
    for l in 1..=level.min(USER_LEVEL) {
        let text = get(&level_file(l, true)).or_else(|| get(&level_file(l, false)));
        if let Some(v) = text.and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
            // A file that fails halfway keeps what it set, as the firmware does.
            let _ = apply(&mut cfg, "", &v);
        }
    }
    cfg
}

/// The configuration up to and including `level`, from the stored level files; with
/// `delete_try` (at boot) the `.try` files are used once and deleted.
pub fn load_level(store: &SharedStore, level: u8, delete_try: bool) -> Value {
    let Ok(mut s) = store.lock() else {
        return defaults();
    };
    let cfg = overlay(|n| s.blob(n.as_bytes()).map(<[u8]>::to_vec), level);
    if delete_try {
        for l in 1..=level.min(USER_LEVEL) {
            let _ = s.delete(level_file(l, true).as_bytes());
        }
    }
    cfg
}

/// The user-level configuration from one saved file (for the application and the fuzzer).
pub fn load_config(saved: Option<&[u8]>) -> Value {
    let mut c = defaults();
    if let Some(v) = saved.and_then(|b| serde_json::from_slice::<Value>(b).ok()) {
        let _ = apply(&mut c, "", &v);
    }
    c
}

/// Saves `cfg` at `level`: its difference from level-1 into `confL.json` (or `.try`).
pub fn save_level(
    store: &SharedStore,
    cfg: &Value,
    level: u8,
    try_once: bool,
) -> Result<String, String> {
    let base = load_level(store, level.saturating_sub(1), false);
    let text = serde_json::to_string_pretty(&diff(cfg, &base))
        .map_err(|_| "failed to write file".to_string())?
        .into_bytes();
    let name = level_file(level, try_once);
    let mut s = store
        .lock()
        .map_err(|_| "failed to write file".to_string())?;
    if !try_once {
        let _ = s.delete(level_file(level, true).as_bytes());
    }
    let r = s
        .put_chunk(name.as_bytes(), 0, &text)
        .and_then(|_| s.commit(name.as_bytes(), text.len(), crc32(&text)));
    if r.is_err() {
        s.abort();
        return Err("failed to write file".into());
    }
    Ok(name)
}

/// `mgos_expand_placeholders`: an even number of `?` is replaced from the end by the
/// source's last characters.
pub fn expand_placeholders(s: &str, src: &str) -> String {
    let n = s.chars().filter(|&c| c == '?').count();
    if n == 0 || n % 2 != 0 || src.is_empty() {
        return s.to_string();
    }
    let mut out: Vec<char> = s.chars().collect();
    let mut from = src.chars().rev();
    for c in out.iter_mut().rev() {
        if *c == '?' {
            match from.next() {
                Some(x) => *c = x,
                None => break,
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_ignored_and_a_wrong_type_stops_with_the_firmwares_text() {
        let mut c = defaults();
        apply(
            &mut c,
            "",
            &json!({"mqtt": {"sever": "x", "server": "h:1"}}),
        )
        .expect("ok");
        assert_eq!(c["mqtt"]["server"], "h:1");
        let e = apply(&mut c, "", &json!({"mqtt": {"keep_alive": "60"}})).expect_err("type");
        assert_eq!(e, "[mqtt.keep_alive] is not a number");
        let e = apply(&mut c, "mqtt.enable", &json!(1)).expect_err("type");
        assert_eq!(e, "[] is not a boolean");
    }

    #[test]
    fn placeholders_fill_from_the_end() {
        assert_eq!(
            expand_placeholders("esp8266_??????", "5CCF7F0A1B2C"),
            "esp8266_0A1B2C"
        );
        assert_eq!(expand_placeholders("a?b", "123"), "a?b");
    }

    #[test]
    fn the_diff_keeps_only_what_changed() {
        let mut c = defaults();
        apply(&mut c, "", &json!({"mqtt": {"server": "h:1"}})).expect("ok");
        assert_eq!(diff(&c, &defaults()), json!({"mqtt": {"server": "h:1"}}));
    }
}
