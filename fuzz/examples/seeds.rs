//! Regenerates the seed corpora under `fuzz/corpus/` from the product's own code: a real
//! provisioning exchange with the emulated chip (its packets and response frames, with their
//! CRCs, replayed as a kit-protocol session), Mongoose RPC frames with and without CRC, sealed
//! LoRa frames and their records, and the device configuration blob. The example site, the
//! link and gateway manifests and the CSRs (made with openssl, see `fuzz/README.md`) are
//! committed as they are.
//!
//! Run from `fuzz/`: `cargo run --example seeds` (writes only files named `seed-*`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use atecc::client::{Client, Transport};
use atecc::emulator::Chip;
use atecc::profile::{Profile, TLS_DEVICE_PROFILE};
use firmware::crc::crc32;
use lora_link::air::{AirFrame, AirMsg};
use lora_link::crypto::LinkKeys;
use lora_link::frame;
use lora_link::records::{Record, TopicTable};
use manifests::device::{DeviceConfig, Quantity, Reading};

/// The key the `lora_frame` target uses.
const LINK_KEY: [u8; 16] = *b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f";

/// Records every packet and response frame that crosses it.
struct Recorder<'a> {
    chip: &'a mut Chip,
    packets: Vec<Vec<u8>>,
    frames: Vec<Vec<u8>>,
}

impl Transport for Recorder<'_> {
    type Error = std::convert::Infallible;
    fn transact(&mut self, packet: &[u8], response: &mut [u8]) -> Result<usize, Self::Error> {
        let frame = self.chip.transact(packet);
        response[..frame.len()].copy_from_slice(&frame);
        self.packets.push(packet.to_vec());
        self.frames.push(frame.clone());
        Ok(frame.len())
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn write(dir: &Path, target: &str, name: &str, data: impl AsRef<[u8]>) {
    let d = dir.join(target);
    fs::create_dir_all(&d).unwrap();
    fs::write(d.join(format!("seed-{name}")), data).unwrap();
}

fn main() {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    // --- The chip: what a provisioning run sends, and what the chip answers.
    let mut chip = Chip::with_serial_middle([1, 2, 3, 4, 5, 6]);
    chip.wake();
    let mut rec = Recorder { chip: &mut chip, packets: Vec::new(), frames: Vec::new() };
    {
        let mut c = Client::new(&mut rec);
        c.revision().unwrap();
        c.random().unwrap();
        let current = c.read_config_zone().unwrap();
        let zone = Profile::from_toml(TLS_DEVICE_PROFILE).unwrap().to_config_zone(&current).unwrap();
        c.write_config_zone(&zone).unwrap();
        c.lock_config(&zone).unwrap();
        c.lock_data_unchecked().unwrap();
        c.gen_key(0).unwrap();
        c.public_key(0).unwrap();
        c.nonce_random(&[7; 20]).unwrap();
        c.sign_digest(0, &[0x42; 32]).unwrap();
        c.serial_number().unwrap();
    }
    let (packets, frames) = (rec.packets, rec.frames);
    write(&dir, "atecc_chip", "provisioning", packets.concat());
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in packets.iter().enumerate() {
        if seen.insert((p[1], p[2])) {
            write(&dir, "atecc_packet", &format!("{i:02}-op{:02x}", p[1]), p);
            write(&dir, "atecc_chip", &format!("{i:02}-op{:02x}", p[1]), p);
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, f) in frames.iter().enumerate() {
        if seen.insert(f.len()) {
            write(&dir, "atecc_response", &format!("{i:02}-len{}", f.len()), f);
        }
    }

    // --- The kit protocol: the same exchange as the provisioner sends it over serial, then
    // the device store.
    let mut session = String::from(
        "board:device(00)\nE:physical:interface:i2c\nE:physical:select(C0)\nE:w()\n",
    );
    for p in &packets {
        session.push_str(&format!("E:t({})\n", hex(p)));
    }
    session.push_str("E:i()\n");
    write(&dir, "kit_bridge", "chip-session", &session);
    let blob = b"format = 1\n";
    let store = format!(
        "s:physical:select(C0)\nfw:info()\nfw:put(device.toml,0,{})\nfw:commit(device.toml,{},{:08X})\n\
         fw:list()\nfw:get(device.toml,0,11)\nfw:put(ca.crt,0,41)\nfw:abort()\nfw:del(device.toml)\n\
         E:s()\nfw:reboot()\n",
        hex(blob),
        blob.len(),
        crc32(blob)
    );
    write(&dir, "kit_bridge", "store-session", &store);
    write(&dir, "kit_bridge", "noise", b"\r\0garbage(\n\xff\xfeE:t(0)\nE:t(07300000)\n");

    // --- Mongoose RPC frames, as the provisioner's mos transport writes them.
    let reqs = [
        r#"{"id":1,"method":"Sys.GetInfo"}"#,
        r#"{"id":2,"method":"ATCA.GetConfig","src":"mos"}"#,
        r#"{"id":3,"method":"ATCA.GenKey","params":{"slot":0}}"#,
        r#"{"id":4,"method":"FS.Put","params":{"filename":"ca.pem","data":"LS0tLS1CRUdJTg==","append":false}}"#,
        r#"{"id":5,"method":"Config.Set","params":{"config":{"mqtt":{"server":"127.0.0.1:8883","ssl_key":"ATCA:0"},"device":{"id":"salon-1"}}}}"#,
        r#"{"id":6,"method":"Config.Save","params":{"reboot":true}}"#,
        r#"{"id":7,"method":"ATCA.Sign","params":{"slot":0,"digest":"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI="}}"#,
    ];
    for (i, r) in reqs.iter().enumerate() {
        let crc = crc32(r.as_bytes());
        write(&dir, "mos_frame", &format!("line-{i}"), format!("{r}\n"));
        write(&dir, "mos_frame", &format!("line-crc-{i}"), format!("{r}{crc:08x}\n"));
        write(&dir, "mos_frame", &format!("compat-{i}"), format!("\n\"\"\"{r}{crc:08x}\"\"\"\n"));
    }
    write(&dir, "mos_frame", "ready", b"\x04\n\"\"\"\x04\"\"\"");
    write(
        &dir,
        "mos_frame",
        "conf9",
        r#"{"device":{"id":"salon-1"},"mqtt":{"enable":true,"server":"127.0.0.1:8883","client_id":"salon-1","ssl_cert":"device.crt","ssl_key":"ATCA:0","ssl_ca_cert":"ca.pem","keep_alive":30,"clean_session":false,"will_topic":"maison/salon/status"},"sensor":{"readings":"[{\"topic\":\"maison/salon/temperature\",\"quantity\":\"temperature\"}]","qos":1,"retain":false,"interval_s":5}}"#,
    );

    // --- LoRa: records, sealed frames, air datagrams.
    let table = TopicTable::new([(0, "maison/salon/temperature"), (1, "maison/salon/humidite")]);
    let records = [
        Record::new("maison/salon/temperature", &b"21.5"[..]),
        Record::new("maison/salon/humidite", &b"48"[..]),
        Record::new("maison/garage/porte", &b"open"[..]),
    ];
    let mut plain = Vec::new();
    for r in &records {
        table.encode(r, &mut plain).unwrap();
    }
    write(&dir, "lora_records", "three", &plain);
    let lone = TopicTable::new([(0, "maison/salon/temperature"), (5, "c"), (127, "z/y")]);
    let mut other = Vec::new();
    lone.encode(&Record::new("c", &b"x"[..]), &mut other).unwrap();
    lone.encode(&Record::new("z/y", Vec::new()), &mut other).unwrap();
    write(&dir, "lora_records", "indexed", &other);
    let keys = LinkKeys::derive(&LINK_KEY);
    for (i, counter) in [1u32, 0x1234, 0x1_0002].into_iter().enumerate() {
        let key = frame::SealKey::new(&keys, i as u32 + 1, &table);
        let sealed = frame::seal(&key, 1, 10, counter, &plain).unwrap();
        write(&dir, "lora_frame", &format!("sealed-{i}"), &sealed);
        if i == 0 {
            write(&dir, "lora_air", "tx", AirMsg::Tx(AirFrame::new(sealed.clone())).encode());
            write(&dir, "lora_air", "deliver", AirMsg::Deliver(AirFrame::new(sealed)).encode());
        }
    }
    write(&dir, "lora_frame", "plaintext", &plain);
    write(&dir, "lora_air", "hello", AirMsg::Hello.encode());

    // --- The device configuration blob the provisioner writes.
    let cfg = DeviceConfig {
        format: manifests::device::FORMAT,
        device_id: "salon-1".into(),
        client_id: "salon-1".into(),
        broker_host: "127.0.0.1".into(),
        tls_server_name: "broker.maison.lan".into(),
        port: 8883,
        readings: vec![
            Reading { topic: "maison/salon/temperature".into(), quantity: Quantity::Temperature },
            Reading { topic: "maison/salon/luminosite".into(), quantity: Quantity::Luminosity },
        ],
        status_topic: Some("maison/salon/status".into()),
        qos: 1,
        retain: false,
        keep_alive_s: 30,
        clean_session: true,
        interval_s: 5,
        key_slot: 0,
        renewal: None,
    };
    write(&dir, "manifest_device", "salon", cfg.to_blob().unwrap());

    println!("seeds written under {}", dir.display());
}
