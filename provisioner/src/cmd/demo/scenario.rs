//! The scenario: the intrusions tried while the house is live (no certificate, another
//! CA's certificate, a certified client outside its topics, a replayed and a forged LoRa
//! frame) and what became of each.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use manifests::site::Site;
use serde_json::Value;

use super::Demo;
use super::live::Seen;
use super::network::{Configs, Network, Ports, Tools, issue_client, random_hex};
use super::procs::{nap, run_short, wait_for};
use crate::exit::Result;

/// One intrusion attempt and what became of it.
#[derive(Debug, Clone)]
pub(super) struct Intrusion {
    pub(super) who: String,
    pub(super) attempt: String,
    pub(super) refused: bool,
    pub(super) evidence: String,
}

/// The first non-empty line of `s`, at most 120 characters.
fn first_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .chars()
        .take(120)
        .collect()
}

/// A TLS connection refused, or not.
fn refused_at_handshake(ok: bool, log: &str) -> String {
    if ok {
        "accepted".into()
    } else {
        format!("TLS handshake refused: {}", first_line(log))
    }
}

/// What the intrusions did while the house was live; judged once the daemons have stopped
/// ([`Tried::outcomes`]).
pub(super) struct Tried {
    /// Judged at once: the TLS-level ones.
    judged: Vec<Intrusion>,
    /// What the broker told the certified client writing outside its topics.
    outside_text: String,
    /// The LoRa frames injected ("replay", "forged") and whether injecting worked.
    lora: Vec<(&'static str, bool)>,
    /// Whether a frame was on the air to record.
    recorded_a_frame: bool,
}

/// The intrusions, in order: three against the broker on Pi #1, two against the LoRa link.
pub(super) fn play(
    d: &Demo<'_>,
    tools: &Tools,
    ports: &Ports,
    configs: &Configs,
    site: &Site,
    net: &Network,
) -> Result<Tried> {
    let broker = Broker {
        d,
        tools,
        port: ports.near,
        ca: configs.near_broker.join("ca.crt"),
    };
    let judged = vec![without_certificate(&broker)?, rogue_ca(&broker, site)?];
    let outside_text = outside_topic(&broker, &configs.intruder)?;
    let (recorded_a_frame, lora) = lora_frames(d, tools, ports, net)?;
    Ok(Tried {
        judged,
        outside_text,
        lora,
        recorded_a_frame,
    })
}

/// The broker on Pi #1, as an intruder reaches it with mosquitto_pub.
struct Broker<'a> {
    d: &'a Demo<'a>,
    tools: &'a Tools,
    port: u16,
    ca: PathBuf,
}

impl Broker<'_> {
    /// mosquitto_pub with `extra` arguments and maybe a client certificate: whether it
    /// succeeded, and its log.
    fn publish(
        &self,
        extra: &[&str],
        cert: Option<(&Path, &Path)>,
        name: &str,
    ) -> Result<(bool, String)> {
        let mut c = Command::new(&self.tools.mosquitto_pub);
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--cafile")
            .arg(&self.ca)
            .args(extra);
        if let Some((crt, key)) = cert {
            c.arg("--cert").arg(crt).arg("--key").arg(key);
        }
        let log = self.d.log(name);
        let (st, _) = run_short(self.d.procs, name, c, &log, Duration::from_secs(15))?;
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        Ok((st.success(), text))
    }
}

/// Intrusion 1: no certificate at all.
fn without_certificate(broker: &Broker<'_>) -> Result<Intrusion> {
    let (ok, text) = broker.publish(
        &[
            "-i",
            "intrus-sans-certificat",
            "-q",
            "1",
            "-t",
            "maison/garage/porte",
            "-m",
            "{\"state\":\"open\",\"intrusion\":\"no certificate\"}",
        ],
        None,
        "intrusion-no-cert",
    )?;
    Ok(Intrusion {
        who: "a client without a certificate".into(),
        attempt: "connect to Pi #1 and open the garage door (maison/garage/porte)".into(),
        refused: !ok,
        evidence: refused_at_handshake(ok, &text),
    })
}

/// Intrusion 2: a certificate from another CA, with a real device's name.
fn rogue_ca(broker: &Broker<'_>, site: &Site) -> Result<Intrusion> {
    let rogue = broker.d.work.join("rogue-ca");
    let (rogue_crt, rogue_key) = {
        let layout = ca::Layout::new(rogue.clone());
        let pass = ca::Passphrase::new(format!("rogue-{}", random_hex(16)?));
        ca::Authority::init(
            &layout,
            &ca::InitOptions {
                name: "Rogue Root CA".into(),
                organization: None,
                issuing_ca: false,
                compressed_signer: None,
            },
            &pass,
        )?;
        let mut a = ca::Authority::open(&layout, &pass)?;
        issue_client(
            &mut a,
            site,
            "garage-1",
            vec![],
            vec!["maison/#".into()],
            &rogue,
        )?
    };
    let (ok, text) = broker.publish(
        &[
            "-i",
            "garage-1-rogue",
            "-q",
            "1",
            "-t",
            "maison/garage/porte",
            "-m",
            "{\"state\":\"open\",\"intrusion\":\"rogue CA\"}",
        ],
        Some((&rogue_crt, &rogue_key)),
        "intrusion-rogue-ca",
    )?;
    Ok(Intrusion {
        who: "`garage-1` with a certificate from another CA".into(),
        attempt: "impersonate the door sensor".into(),
        refused: !ok,
        evidence: refused_at_handshake(ok, &text),
    })
}

/// Intrusion 3: a certified client writing outside its topics (MQTT 5 so the broker says
/// why); judged later by whether any subscriber saw it. Returns what the broker said.
fn outside_topic(broker: &Broker<'_>, (crt, key): &(PathBuf, PathBuf)) -> Result<String> {
    let (_, text) = broker.publish(
        &[
            "-V",
            "mqttv5",
            "-i",
            "intrus-salon",
            "-q",
            "1",
            "-t",
            "maison/garage/porte",
            "-m",
            "{\"device\":\"intrus-salon\",\"state\":\"open\",\"seq\":1,\"intrusion\":\"outside its topic\"}",
        ],
        Some((crt, key)),
        "intrusion-outside-topic",
    )?;
    Ok(first_line(&text))
}

/// Intrusions 4 and 5: a replayed and a forged LoRa frame, made from the first frame recorded on the
/// air. Returns whether a frame was recorded, and each injection's name and success.
fn lora_frames(
    d: &Demo<'_>,
    tools: &Tools,
    ports: &Ports,
    net: &Network,
) -> Result<(bool, Vec<(&'static str, bool)>)> {
    wait_for(
        "a first LoRa frame on the air",
        Duration::from_secs(20),
        Some(&net.gateway_log),
        || std::fs::read_to_string(&net.air_record).is_ok_and(|t| t.contains("\"hex\"")),
    )?;
    let frames = std::fs::read_to_string(&net.air_record).unwrap_or_default();
    let Some(first) = frames.lines().find(|l| !l.trim().is_empty()) else {
        return Ok((false, vec![]));
    };
    let replay = d.work.join("replay.jsonl");
    std::fs::write(&replay, format!("{first}\n")).map_err(|e| crate::exit::io(&replay, e))?;
    let mut forged: Value = serde_json::from_str(first).unwrap_or(Value::Null);
    if let Some(h) = forged.get("hex").and_then(Value::as_str) {
        let mut bytes = hex::decode(h).unwrap_or_default();
        if bytes.len() > 9 {
            // Open the door: flip ciphertext bits; the MIC no longer matches.
            bytes[9] ^= 0x5a;
        }
        forged["hex"] = Value::String(hex::encode(bytes));
    }
    let forged_file = d.work.join("forged.jsonl");
    std::fs::write(&forged_file, format!("{forged}\n"))
        .map_err(|e| crate::exit::io(&forged_file, e))?;
    let mut attempts = Vec::new();
    for (name, file, reasons) in [
        ("replay", replay, &["replay", "duplicate"][..]),
        ("forged", forged_file, &["bad_mic"][..]),
    ] {
        let injected = inject_until_rejected(d, tools, ports, net, name, &file, reasons)?;
        attempts.push((name, injected));
    }
    Ok((true, attempts))
}

/// The gateway may be on the air at that moment: a frame that collides with one of its
/// frames is lost before the receiver can check it (as on real radios). The frame is sent
/// again, up to three times, until the receiver has logged its rejection for one of
/// `reasons`. Returns whether an injection worked.
fn inject_until_rejected(
    d: &Demo<'_>,
    tools: &Tools,
    ports: &Ports,
    net: &Network,
    name: &str,
    file: &Path,
    reasons: &[&str],
) -> Result<bool> {
    let rejections = || {
        let text = std::fs::read_to_string(&net.receiver_log).unwrap_or_default();
        reasons
            .iter()
            .map(|r| text.matches(&format!("\"rejected\":\"{r}\"")).count())
            .sum::<usize>()
    };
    let before = rejections();
    let mut injected = false;
    for attempt in 1..=3 {
        let mut c = Command::new(&tools.lora_link);
        c.args(["inject", "--hub", &ports.air_addr(), "--file"])
            .arg(file);
        let log = d.log(&format!("intrusion-lora-{name}-{attempt}"));
        let (st, _) = run_short(
            d.procs,
            "lora-link inject",
            c,
            &log,
            Duration::from_secs(10),
        )?;
        injected |= st.success();
        let deadline = Instant::now() + Duration::from_secs(2);
        while rejections() == before && Instant::now() < deadline {
            nap(Duration::from_millis(50))?;
        }
        if rejections() > before {
            break;
        }
    }
    Ok(injected)
}

impl Tried {
    /// Every intrusion with its verdict: the outside-topic message must have reached no
    /// subscriber on either side, each LoRa frame must be in the receiver's rejections.
    pub(super) fn outcomes(self, near: &Seen, far: &Seen, receiver: &Value) -> Vec<Intrusion> {
        let mut all = self.judged;
        let outside_delivered = near
            .intrusions
            .iter()
            .chain(&far.intrusions)
            .any(|m| m.contains("outside its topic"));
        all.push(Intrusion {
            who: "`intrus-salon`, certified to write maison/salon/temperature only".into(),
            attempt: "open the garage door (maison/garage/porte)".into(),
            refused: !outside_delivered,
            evidence: if outside_delivered {
                "delivered".into()
            } else if self.outside_text.is_empty() {
                "the ACL dropped it: no subscriber on Pi #1 or Pi #2 ever saw it".into()
            } else {
                format!(
                    "{}; no subscriber on Pi #1 or Pi #2 ever saw it",
                    self.outside_text
                )
            },
        });
        let rejected = |reason: &str| receiver["rejected"][reason].as_u64().unwrap_or(0);
        for (name, injected) in &self.lora {
            let (reason, attempt, count) = if *name == "replay" {
                (
                    "replay",
                    "replay a recorded LoRa frame to Pi #2",
                    rejected("replay") + rejected("duplicate"),
                )
            } else {
                (
                    "bad_mic",
                    "inject a tampered LoRa frame (ciphertext bits flipped)",
                    rejected("bad_mic"),
                )
            };
            all.push(Intrusion {
                who: "a radio in range".into(),
                attempt: attempt.into(),
                refused: *injected && count > 0,
                evidence: if *injected {
                    format!("lora-link rx rejected it ({reason}: {count})")
                } else {
                    "could not inject".into()
                },
            });
        }
        if !self.recorded_a_frame {
            all.push(Intrusion {
                who: "a radio in range".into(),
                attempt: "replay a recorded LoRa frame".into(),
                refused: false,
                evidence: "no frame was on the air to record".into(),
            });
        }
        all
    }
}
