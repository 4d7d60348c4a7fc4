//! Provisioning a board that runs stock Mongoose OS, through its RPC services.
//!
//! Mongoose's ATCA service works a level above chip packets (`ATCA.SetConfig` writes the
//! whole zone, `ATCA.Sign` runs Random + Nonce + Sign), so this is a second path to the same
//! end state as [`super::provision::provision`], with the same ledger checks, certificate,
//! identity, ACL and attributes (shared helpers), step names and report:
//!
//! | step | kit transport | Mongoose RPC |
//! |---|---|---|
//! | board | `fw:info()` | `Sys.GetInfo` |
//! | chip | Read config zone | `ATCA.GetConfig` |
//! | config zone | Write ×13, read back, Lock with CRC | `ATCA.SetConfig`, `ATCA.GetConfig` (read back), `ATCA.LockZone 0` (no CRC on this firmware: read back again after) |
//! | data zone | write key + zeros, Lock with CRC | `ATCA.LockZone 1` (write key only with `--allow-plaintext-key-over-serial`: `ATCA.SetKey` sends it in clear) |
//! | key | GenKey / encrypted PrivWrite | `ATCA.GenKey` / `ATCA.SetKey` (ecc, wkey: key and write key in clear, flag required) |
//! | possession | Nonce + Sign | `ATCA.Sign` of a fresh digest, verified with p256 |
//! | certificate | `ca::Authority::issue` | the same |
//! | device files | `fw:put` device.crt, ca.crt, device.toml | `FS.Put` device.crt, ca.crt (read back with `FS.Get`); `Config.Set` `mqtt.*`, `device.id`, `sensor.*`, `Config.Save` |
//!
//! Where this firmware would carry a secret in clear over the serial line, the operator must
//! say so with [`PLAINTEXT_FLAG`]; the default path (key generated in the chip) never does.

use manifests::device::DeviceConfig;
use manifests::site::KeySource;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use zeroize::Zeroize;

use super::mos::{MosLink, SetKey};
use super::ownership::{self, BoardEvidence, SlotLock};
use super::provision::{
    DeviceCertificate, Job, Outcome, ProvisionError, Shared, Step, certificate_plan, certified_key,
    check_ownership, check_profile, chip_profile, device_config, device_topics, diff,
    identify_chip, issue_device_certificate, lock_ca, nothing_done, random,
    refuse_if_locked_differently, verify_possession, wanted_zone,
};
use atecc::config::ConfigZone;

/// The flag that lets secrets cross the serial line in clear (this firmware computes the
/// encrypted write itself, from the plaintext key and write key it receives).
pub const PLAINTEXT_FLAG: &str = "--allow-plaintext-key-over-serial";

/// Names of the files the certificate and CA go to, and that `mqtt.ssl_cert` /
/// `mqtt.ssl_ca_cert` name.
pub const CERT_FILE: &str = "device.crt";
/// See [`CERT_FILE`].
pub const CA_FILE: &str = "ca.crt";

/// Refuses, before anything is sent, a job that would put a secret in clear on the wire
/// without the operator's explicit permission.
pub fn check_mos_job(job: &Job, allow_plaintext_key: bool) -> Result<(), ProvisionError> {
    if job.key_source == KeySource::Host && !allow_plaintext_key && !job.dry_run {
        return Err(ProvisionError::Config(format!(
            "--key-source host over --transport mos would send the private key and the write key IN CLEAR over the serial line (Mongoose OS's ATCA.SetKey takes them in plaintext and encrypts on the board); nothing was sent. Use --key-source chip (the key is generated in the chip and never leaves it), flash the provisioning firmware and use --transport kit (the key crosses only encrypted), or accept the risk with {PLAINTEXT_FLAG}"
        )));
    }
    Ok(())
}

/// The Mongoose OS configuration that makes the board's MQTT client use the chip's key, the
/// certificate and CA just written, and the site's broker; `device.id` and `sensor.*` carry
/// what the sensor application needs beyond `mqtt.*`.
pub fn mongoose_config(c: &DeviceConfig) -> Value {
    let readings: Vec<Value> = c
        .readings
        .iter()
        .map(|r| json!({ "topic": r.topic, "quantity": r.quantity }))
        .collect();
    json!({
        "device": { "id": c.device_id },
        "mqtt": {
            "enable": true,
            "server": format!("{}:{}", c.broker_host, c.port),
            "client_id": c.client_id,
            "ssl_cert": CERT_FILE,
            "ssl_key": format!("ATCA:{}", c.key_slot),
            "ssl_ca_cert": CA_FILE,
            "clean_session": c.clean_session,
            "keep_alive": c.keep_alive_s,
            "will_topic": c.status_topic.clone().unwrap_or_default(),
            "will_message": if c.status_topic.is_some() { "offline" } else { "" },
            "will_retain": c.status_topic.is_some(),
        },
        "sensor": {
            // Mongoose's configuration has no arrays: the readings travel as JSON text.
            "readings": Value::Array(readings).to_string(),
            "qos": c.qos,
            "retain": c.retain,
            "interval_s": c.interval_s,
        },
    })
}

/// True if every leaf of `want` has the same value in `have`.
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => have == want,
    }
}

/// Provisions one board running Mongoose OS.
pub fn provision_mos(
    link: &mut MosLink,
    job: &Job,
    shared: &Shared<'_>,
    allow_plaintext_key: bool,
) -> Result<Outcome, ProvisionError> {
    check_mos_job(job, allow_plaintext_key)?;
    let port = link.port().to_string();
    let site = shared.site;
    let profile = site
        .profile(&job.profile_name)
        .map_err(ProvisionError::Config)?
        .clone();
    let chip_prof = chip_profile(&profile.chip, &shared.home)?;
    check_profile(&profile, &chip_prof, job.key_source)?;
    let slot = profile.key_slot;
    let wk_slot = profile.write_key_slot;
    let (readings, status_topic, topics) = device_topics(site, &profile, job);
    let mut out = Outcome {
        id: job.id.clone(),
        port: port.clone(),
        status: if job.dry_run {
            "dry-run"
        } else {
            "provisioned"
        },
        topics: topics.clone(),
        // Fields other transports fill (e.g. the kit link's counters) stay empty.
        ..Outcome::default()
    };
    let step = |out: &mut Outcome, step: &'static str, action: &'static str, detail: String| {
        tracing::info!(port = %port, "{step}: {action} {detail}");
        shared
            .progress
            .step(&port, &format!("{step}: {action} {detail}"));
        out.steps.push(Step {
            step,
            action,
            detail,
        });
    };

    shared.progress.step(&port, "reading the board");
    let info = link.sys_get_info()?;
    let field = |k: &str| {
        info[k]
            .as_str()
            .map(|s| super::mos::sanitize(s.as_bytes()))
            .unwrap_or_else(|| "?".into())
    };
    step(
        &mut out,
        "board",
        "verified",
        format!(
            "Mongoose OS app {} {} ({}), id {}",
            field("app"),
            field("fw_version"),
            field("arch"),
            field("id")
        ),
    );
    let zone = ConfigZone(link.get_config()?);
    let (sn_hex, rev) = identify_chip(&port, &zone)?;
    out.chip_serial = sn_hex.clone();
    step(
        &mut out,
        "chip",
        "verified",
        format!("ATECC508A serial {sn_hex}, revision {}", hex::encode(rev)),
    );
    check_ownership(shared, &port, job, &sn_hex)?;
    let evidence = BoardEvidence {
        device_crt: link.fs_get(CERT_FILE)?,
        ca_crt: link.fs_get(CA_FILE)?,
        slot_key: zone
            .is_data_locked()
            .then(|| link.get_pub_key(slot).ok())
            .flatten(),
    };
    let owner = ownership::check_board_owner(shared, job, &port, &sn_hex, &zone, slot, &evidence)?;
    step(&mut out, "owner", "verified", owner.detail());

    // 1. Config zone.
    let wanted = wanted_zone(&chip_prof, &zone)?;
    let changes = diff(&zone, &wanted);
    out.config_diff = changes.clone();
    if zone.is_config_locked() {
        refuse_if_locked_differently(&port, &profile.chip, &changes)?;
        step(
            &mut out,
            "config zone",
            "verified",
            format!("locked with profile `{}`", profile.chip),
        );
    } else if job.dry_run {
        step(
            &mut out,
            "config zone",
            "would",
            format!(
                "ATCA.SetConfig {} field(s) of profile `{}`, read back, ATCA.LockZone 0 (needs --lock)",
                changes.len(),
                profile.chip
            ),
        );
    } else if !job.lock {
        step(
            &mut out,
            "config zone",
            "stopped",
            format!(
                "{} field(s) to write; locking is irreversible: re-run with --lock",
                changes.len()
            ),
        );
        out.status = "needs-lock";
        return Ok(out);
    } else {
        shared.progress.step(&port, "writing the configuration");
        link.set_config(&wanted.0)?;
        let back = ConfigZone(link.get_config()?);
        let left = diff(&back, &wanted);
        if !left.is_empty() {
            return Err(ProvisionError::Chip {
                port,
                step: "read back config",
                detail: format!(
                    "{} field(s) did not take: {}; nothing was locked",
                    left.len(),
                    left.iter()
                        .map(|c| c.field.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        shared.progress.step(&port, "locking the config zone");
        // This firmware locks without the CRC summary: the read-backs around the lock are
        // what proves the locked zone holds the profile.
        link.lock_zone(0)?;
        let locked = ConfigZone(link.get_config()?);
        let mut expected = ConfigZone(wanted.0);
        expected.set_config_locked();
        if !locked.is_config_locked() || !diff(&locked, &expected).is_empty() {
            return Err(ProvisionError::Chip {
                port,
                step: "lock config",
                detail: "after ATCA.LockZone 0 the config zone is not locked with the profile's contents".into(),
            });
        }
        step(
            &mut out,
            "config zone",
            "done",
            format!(
                "ATCA.SetConfig of {} field(s), read back, ATCA.LockZone 0, read back locked",
                changes.len()
            ),
        );
    }

    // 2. Data zone.
    let wk_name = format!("writekey:{sn_hex}");
    let host_key = job.key_source == KeySource::Host;
    if zone.is_data_locked() {
        step(&mut out, "data zone", "verified", "locked".into());
    } else if job.dry_run {
        step(
            &mut out,
            "data zone",
            "would",
            if host_key {
                format!(
                    "ATCA.SetKey a new write key into slot {wk_slot} IN CLEAR (needs {PLAINTEXT_FLAG}), ATCA.LockZone 1"
                )
            } else {
                format!(
                    "ATCA.LockZone 1 (write key slot {wk_slot} not written: ATCA.SetKey would send it in clear)"
                )
            },
        );
    } else if !job.lock {
        step(
            &mut out,
            "data zone",
            "stopped",
            "locking is irreversible: re-run with --lock".into(),
        );
        out.status = "needs-lock";
        return Ok(out);
    } else {
        let detail = if host_key {
            shared.progress.step(
                &port,
                "writing the write key (in clear) and locking the data zone",
            );
            let mut wk = lock_ca(shared)
                .authority()?
                .secret_or_create(&wk_name, 32)?;
            let r = link.set_key(SetKey {
                slot: wk_slot,
                block: 0,
                ecc: false,
                key: &wk[..32],
                write_key: None,
            });
            wk.zeroize();
            r?;
            format!(
                "write key in slot {wk_slot} (sent in clear over the serial line as {PLAINTEXT_FLAG} allows; kept encrypted in the ledger), ATCA.LockZone 1"
            )
        } else {
            shared.progress.step(&port, "locking the data zone");
            format!(
                "ATCA.LockZone 1; write key slot {wk_slot} not written (ATCA.SetKey would send it in clear): slots that take encrypted writes with it cannot be re-keyed securely, slot {slot} takes GenKey only"
            )
        };
        link.lock_zone(1)?;
        if !ConfigZone(link.get_config()?).is_data_locked() {
            return Err(ProvisionError::Chip {
                port,
                step: "lock data",
                detail: "after ATCA.LockZone 1 the data zone is not locked".into(),
            });
        }
        step(&mut out, "data zone", "done", detail);
    }

    // 3. The key (a locked slot keeps its key: it is certified after proof of possession).
    let known = certified_key(shared, job, &sn_hex)?;
    let kept = ownership::key_slot_locked(&zone, slot);
    let public: Option<[u8; 64]> = match (&known, job.dry_run) {
        (None, dry) if kept => {
            let detail = ownership::kept_key_detail(slot, &owner);
            step(
                &mut out,
                "key",
                if dry { "would" } else { "verified" },
                detail,
            );
            (!dry).then(|| link.get_pub_key(slot)).transpose()?
        }
        (Some(hexkey), _) => {
            let on_chip = link.get_pub_key(slot)?;
            if hex::encode(on_chip) != *hexkey {
                return Err(ProvisionError::Conflict(format!(
                    "{port}: the key in slot {slot} is not the one certified for `{}`: the chip was re-keyed elsewhere; revoke the device and provision it again",
                    job.id
                )));
            }
            step(
                &mut out,
                "key",
                "verified",
                format!("slot {slot} holds the certified key"),
            );
            Some(on_chip)
        }
        (None, true) => {
            step(
                &mut out,
                "key",
                "would",
                match job.key_source {
                    KeySource::Chip => {
                        format!("ATCA.GenKey in slot {slot}: the private key never leaves the chip")
                    }
                    KeySource::Host => format!(
                        "generate a key on this host and send it IN CLEAR with ATCA.SetKey (the board encrypts it for the chip) into slot {slot} (needs {PLAINTEXT_FLAG})"
                    ),
                },
            );
            None
        }
        (None, false) => match job.key_source {
            KeySource::Chip => {
                shared
                    .progress
                    .step(&port, "generating the key in the chip");
                let p = link.gen_key(slot)?;
                step(
                    &mut out,
                    "key",
                    "done",
                    format!("ATCA.GenKey in slot {slot}"),
                );
                Some(p)
            }
            KeySource::Host => {
                shared
                    .progress
                    .step(&port, "injecting a host key (ATCA.SetKey, in clear)");
                let wk = lock_ca(shared).authority()?.secret(&wk_name)?.ok_or_else(|| {
                    ProvisionError::Conflict(format!("{port}: no write key for chip {sn_hex} in the ledger: its data zone was locked by another tool or without --key-source host; use --key-source chip"))
                })?;
                let mut wk32 = [0u8; 32];
                wk32.copy_from_slice(&wk[..32]);
                let sk = <p256::SecretKey as p256::elliptic_curve::Generate>::generate();
                let mut scalar: [u8; 32] = sk.to_bytes().into();
                let pubkey =
                    p256::elliptic_curve::sec1::ToSec1Point::to_sec1_point(&sk.public_key(), false);
                let r = link.set_key(SetKey {
                    slot,
                    block: 0,
                    ecc: true,
                    key: &scalar,
                    write_key: Some((wk_slot, &wk32)),
                });
                scalar.zeroize();
                wk32.zeroize();
                drop(sk);
                r?;
                let mut p = [0u8; 64];
                p.copy_from_slice(&pubkey.as_bytes()[1..]);
                if link.get_pub_key(slot)? != p {
                    return Err(ProvisionError::Chip {
                        port,
                        step: "PrivWrite",
                        detail: "the chip's public key is not the injected key's".into(),
                    });
                }
                step(
                    &mut out,
                    "key",
                    "done",
                    format!(
                        "host key sent with ATCA.SetKey (in clear on the serial line, as {PLAINTEXT_FLAG} allows; the board made the encrypted PrivWrite) into slot {slot}, then erased from memory"
                    ),
                );
                Some(p)
            }
        },
    };
    let Some(public) = public else {
        step(
            &mut out,
            "certificate",
            "would",
            format!(
                "prove possession (ATCA.Sign), issue a device certificate for `{}`, FS.Put {CERT_FILE} and {CA_FILE}, Config.Set mqtt.* (ssl_key ATCA:{slot}) and Config.Save",
                job.id
            ),
        );
        return Ok(out);
    };
    out.public_key = Some(hex::encode(public));
    if job.dry_run {
        let plan = certificate_plan(
            shared,
            job,
            &public,
            &format!("FS.Put {CERT_FILE} and {CA_FILE} and Config.Set mqtt.* where they differ"),
        )?;
        out.steps.push(plan);
        return Ok(out);
    }

    // 4. Proof of possession.
    let challenge = random::<32>();
    let digest: [u8; 32] = Sha256::digest(challenge).into();
    let rs = link.sign(slot, &digest)?;
    verify_possession(&port, &public, &digest, &rs)?;
    step(
        &mut out,
        "possession",
        "verified",
        "the chip signed a fresh challenge with the key (ATCA.Sign)".into(),
    );

    // 5. Certificate: the same issuance as the kit path.
    let DeviceCertificate {
        issued,
        chain,
        bundle,
    } = issue_device_certificate(shared, job, &sn_hex, &public, slot, &topics)?;
    out.certificate = Some(issued.record.serial.clone());
    step(
        &mut out,
        "certificate",
        if issued.existing { "verified" } else { "done" },
        format!(
            "{} (serial {})",
            if issued.existing {
                "already issued"
            } else {
                "issued"
            },
            issued.record.serial
        ),
    );

    // 6. Files, then the configuration that points at them.
    let files: [(&str, Vec<u8>); 2] = [
        (CERT_FILE, format!("{}{chain}", issued.pem).into_bytes()),
        (CA_FILE, bundle),
    ];
    for (name, data) in &files {
        if link.fs_get(name)?.as_deref() == Some(data.as_slice()) {
            step(
                &mut out,
                "device store",
                "verified",
                format!("{name} ({} bytes) already on the device", data.len()),
            );
            continue;
        }
        shared.progress.step(&port, &format!("writing {name}"));
        link.fs_put(name, data)?;
        if link.fs_get(name)?.as_deref() != Some(data.as_slice()) {
            return Err(ProvisionError::Chip {
                port,
                step: "device store",
                detail: format!("{name} reads back different from what was written"),
            });
        }
        step(
            &mut out,
            "device store",
            "done",
            format!(
                "{name} ({} bytes) written with FS.Put and read back",
                data.len()
            ),
        );
    }
    let config = device_config(site, &profile, job, readings, status_topic);
    config
        .validate()
        .map_err(|e| ProvisionError::Config(e.to_string()))?;
    let mut wanted_conf = mongoose_config(&config);
    let current = link.config_get(None).unwrap_or(Value::Null);
    // Mongoose's TLS hook refuses `ATCA:N` for a slot it may use for ECDHE.
    if let Some(mask) = current["sys"]["atca"]["ecdh_slots_mask"].as_u64()
        && mask & (1 << slot) != 0
    {
        wanted_conf["sys"] = json!({ "atca": { "ecdh_slots_mask": mask & !(1u64 << slot) } });
    }
    let name_note = if config.tls_server_name != config.broker_host {
        format!(
            "; note: Mongoose OS checks the broker certificate against {} (the host it connects to), not {}",
            config.broker_host, config.tls_server_name
        )
    } else {
        String::new()
    };
    if contains(&current, &wanted_conf) {
        step(
            &mut out,
            "device config",
            "verified",
            format!(
                "mqtt.server {}:{}, mqtt.ssl_key ATCA:{slot} already saved{name_note}",
                config.broker_host, config.port
            ),
        );
    } else {
        shared
            .progress
            .step(&port, "setting and saving the configuration");
        link.config_set(wanted_conf)?;
        link.config_save()?;
        step(
            &mut out,
            "device config",
            "done",
            format!(
                "Config.Set mqtt.* (server {}:{}, ssl_key ATCA:{slot}, ssl_cert {CERT_FILE}, ssl_ca_cert {CA_FILE}), device.id, sensor.*; Config.Save{name_note}",
                config.broker_host, config.port
            ),
        );
    }
    // 7. The identity key made permanent: not possible over this firmware.
    let plan = ownership::slot_lock_plan(&wanted, &ConfigZone(link.get_config()?), slot, job);
    let (action, detail) = match plan {
        SlotLock::Lock | SlotLock::Stopped | SlotLock::Would => (
            "skipped",
            format!(
                "slot {slot} NOT locked: Mongoose OS's ATCA.LockZone locks only the config and data zones (no single-slot Lock), so anyone with the board can still re-key it; provision it with the provisioning firmware (--transport kit) to make the key permanent"
            ),
        ),
        other => other.report(slot),
    };
    step(&mut out, "key lock", action, detail);
    if nothing_done(&out.steps) {
        out.status = "verified";
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_comparison_looks_at_wanted_leaves_only() {
        let have = json!({"mqtt": {"server": "a:1", "keep_alive": 60, "user": "x"}, "sys": {}});
        assert!(contains(&have, &json!({"mqtt": {"server": "a:1"}})));
        assert!(contains(&have, &json!({"mqtt": {"keep_alive": 60.0}})));
        assert!(!contains(&have, &json!({"mqtt": {"server": "b:1"}})));
        assert!(!contains(&have, &json!({"device": {"id": "x"}})));
        assert!(!contains(&Value::Null, &json!({"a": 1})));
    }

    #[test]
    fn host_keys_need_the_flag_that_names_the_risk() {
        let job = Job {
            id: "salon-1".into(),
            room: "salon".into(),
            profile_name: "climat".into(),
            key_source: KeySource::Host,
            lock: true,
            dry_run: false,
            reissue: false,
            takeover: false,
        };
        let e = check_mos_job(&job, false).expect_err("refused");
        assert!(e.to_string().contains(PLAINTEXT_FLAG));
        assert!(e.to_string().contains("IN CLEAR"));
        assert!(check_mos_job(&job, true).is_ok());
        let chip = Job {
            key_source: KeySource::Chip,
            ..job
        };
        assert!(check_mos_job(&chip, false).is_ok());
    }
}
