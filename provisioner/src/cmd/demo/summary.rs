//! The summary, text and JSON: published on Pi #1 vs delivered on Pi #2, airtime and its
//! hourly projection, the intrusions, the devices; and the partial summary of an
//! interrupted demo.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Instant;

use manifests::site::Site;
use nix::sys::signal::Signal;
use serde_json::{Value, json};

use super::boards::{BoardResult, Provisioned};
use super::chip_identity::ChipCheck;
use super::house::{Sensor, features};
use super::live::{MONITORS, Seen, lock};
use super::network::{Ended, Ports};
use super::procs::{Procs, STOP_SIGNAL};
use super::renewal::Renewal;
use super::revocation::Revocation;
use super::scenario::Intrusion;

/// Published on Pi #1 vs delivered on Pi #2, topic by topic: delivered counts only messages
/// published in service that arrived (once each), so it never exceeds published.
#[derive(Debug, Default)]
struct Counts {
    published: u64,
    delivered: u64,
    /// QoS 1/2 messages published and not delivered.
    missing: u64,
    /// Distinct messages on Pi #2 that Pi #1 saw before the service window (the boards'
    /// first readings after provisioning, still crossing the link) or never.
    earlier: u64,
    /// Readings Pi #2 delivered more than once.
    dupes: u64,
    by_qos: BTreeMap<u8, (u64, u64)>,
    per_topic: Vec<Value>,
}

impl Counts {
    fn of(near: &Seen, far: &Seen) -> Counts {
        let mut c = Counts::default();
        for (topic, t) in &near.topics {
            let f = far.topics.get(topic).cloned().unwrap_or_default();
            let published = t.readings.len() as u64 + t.other;
            let delivered =
                t.readings.intersection(&f.readings).count() as u64 + f.other.min(t.other);
            let e = c.by_qos.entry(t.qos).or_default();
            e.0 += published;
            e.1 += delivered;
            if t.qos >= 1 {
                c.missing += published - delivered;
            }
            c.published += published;
            c.delivered += delivered;
            c.per_topic.push(
                json!({ "topic": topic, "qos": t.qos, "published": published,
                "delivered": delivered, "duplicates": f.dupes, "last": t.last }),
            );
        }
        for (topic, f) in &far.topics {
            c.dupes += f.dupes;
            let t = near.topics.get(topic).cloned().unwrap_or_default();
            c.earlier +=
                f.readings.difference(&t.readings).count() as u64 + f.other.saturating_sub(t.other);
        }
        c
    }
}

/// What is known so far, for the summary printed when the demo is interrupted.
pub(super) static PARTIAL: Mutex<BTreeMap<String, Value>> = Mutex::new(BTreeMap::new());

/// Records what is known so far under `key`, for the summary of an interrupted demo.
pub(super) fn partial(key: &str, v: Value) {
    PARTIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(key.to_string(), v);
}

/// The summary of an interrupted demo: the steps reached, the devices, the messages counted
/// so far (same rules as the full summary), every process (all stopped by now).
pub(super) fn interrupted_summary(procs: &Procs, started: Instant) -> Value {
    let mut m: serde_json::Map<String, Value> = PARTIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .into_iter()
        .collect();
    let sig = Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst))
        .map(|s| s.as_str())
        .unwrap_or("a signal");
    m.insert("ok".into(), json!(false));
    m.insert("interrupted".into(), json!(true));
    m.insert("signal".into(), json!(sig));
    if let Some((near, far)) = MONITORS.get() {
        let c = Counts::of(&lock(near), &lock(far));
        m.insert(
            "messages".into(),
            json!({ "published": c.published, "delivered": c.delivered,
                    "qos12_missing": c.missing, "arrived_from_before_service": c.earlier,
                    "duplicates": c.dupes, "per_topic": c.per_topic }),
        );
    }
    m.insert("processes".into(), json!(procs.listing()));
    m.insert("seconds".into(), json!(started.elapsed().as_secs_f64()));
    Value::Object(m)
}

/// An hour of this house at these intervals, with the airtime per record measured.
#[derive(Debug, Clone, PartialEq)]
struct HourProjection {
    records: u64,
    per_record_ms: f64,
    airtime_ms: f64,
    share: f64,
}

/// `sensors`: (readings per round, interval in s) of each; None before any record was sent.
fn hour_projection(
    airtime_us: u64,
    records_sent: u64,
    sensors: &[(u32, u32)],
    budget_ms: f64,
) -> Option<HourProjection> {
    if records_sent == 0 || airtime_us == 0 {
        return None;
    }
    let per_record_ms = airtime_us as f64 / 1000.0 / records_sent as f64;
    let records: u64 = sensors
        .iter()
        .map(|&(n, i)| u64::from(n) * 3600 / u64::from(i.max(1)))
        .sum();
    let airtime_ms = per_record_ms * records as f64;
    Some(HourProjection {
        records,
        per_record_ms,
        airtime_ms,
        share: airtime_ms / budget_ms,
    })
}

/// The LoRa duty-cycle budget of an hour (1 % of 3600 s), in ms.
const BUDGET_MS: f64 = 36_000.0;

/// Everything the summary speaks of.
pub(super) struct Report<'a> {
    pub(super) n: usize,
    pub(super) sensors: &'a [Sensor],
    pub(super) site: &'a Site,
    pub(super) provisioned: &'a Provisioned,
    pub(super) near: &'a Seen,
    pub(super) far: &'a Seen,
    pub(super) ended: &'a Ended,
    pub(super) intrusions: &'a [Intrusion],
    /// The board revoked live (none with a single board).
    pub(super) revocation: Option<&'a Revocation>,
    /// The boards whose identity is in the chip, as their slots rebuild it.
    pub(super) chip_identity: &'a [ChipCheck],
    /// The board renewed in the field.
    pub(super) renewal: Option<&'a Renewal>,
    pub(super) scale: f64,
    pub(super) ports: &'a Ports,
    pub(super) procs: &'a Procs,
    pub(super) started: Instant,
}

/// What the summary concludes, computed once for the JSON and the text.
struct Tally {
    counts: Counts,
    airtime_us: u64,
    hour: Option<HourProjection>,
    features: BTreeMap<String, Vec<String>>,
    provisioned: usize,
    refused: usize,
    ok: bool,
}

impl Report<'_> {
    fn tally(&self) -> Tally {
        let counts = Counts::of(self.near, self.far);
        let gateway = &self.ended.gateway;
        let airtime_us = gateway["airtime_us"].as_u64().unwrap_or(0);
        let per_sensor: Vec<(u32, u32)> = self
            .sensors
            .iter()
            .filter_map(|s| {
                self.site
                    .profile(&s.profile)
                    .ok()
                    .map(|p| (p.readings.len() as u32, p.interval_s.max(1)))
            })
            .collect();
        let hour = hour_projection(
            airtime_us,
            gateway["sent"].as_u64().unwrap_or(0),
            &per_sensor,
            BUDGET_MS,
        );
        let mut features: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in self.sensors {
            for f in super::house::features(self.site, &s.profile) {
                let key = if f.starts_with("keep-alive") {
                    "keep-alive".to_string()
                } else {
                    f
                };
                features.entry(key).or_default().push(s.id.clone());
            }
        }
        let outcomes = &self.provisioned.outcomes;
        let provisioned = outcomes.iter().filter(|(_, r)| r.is_ok()).count();
        let refused = self.intrusions.iter().filter(|i| i.refused).count();
        let ok = counts.missing == 0
            && refused == self.intrusions.len()
            && provisioned == outcomes.len()
            && self.revocation.is_none_or(Revocation::ok)
            && self.chip_identity.iter().all(ChipCheck::ok)
            && self.renewal.is_none_or(Renewal::ok);
        Tally {
            counts,
            airtime_us,
            hour,
            features,
            provisioned,
            refused,
            ok,
        }
    }

    /// One device of the JSON summary: its identity, profile, and readings published on
    /// Pi #1 in service vs delivered on Pi #2.
    fn device(&self, s: &Sensor, r: &BoardResult) -> Value {
        let o = r.as_ref().ok();
        let p = self.site.profile(&s.profile).ok();
        let topics = o.map(|o| o.topics.clone()).unwrap_or_default();
        let sent = self
            .near
            .topics
            .values()
            .map(|t| t.readings.iter().filter(|(d, _)| d == &s.id).count())
            .sum::<usize>();
        let got = self
            .near
            .topics
            .iter()
            .map(|(topic, t)| {
                self.far.topics.get(topic).map_or(0, |f| {
                    t.readings
                        .intersection(&f.readings)
                        .filter(|(d, _)| d == &s.id)
                        .count()
                })
            })
            .sum::<usize>();
        json!({
            "id": s.id, "room": s.room, "profile": s.profile,
            "port": s.link, "chip_serial": o.map(|o| o.chip_serial.clone()),
            "certificate": o.and_then(|o| o.certificate.clone()),
            "topics": topics,
            "qos": p.map(|p| p.qos), "retain": p.map(|p| p.retain),
            "status_topic": p.and_then(|p| p.status_topic.as_ref()).map(|t| t.replace("{root}", "maison").replace("{room}", &s.room)),
            "keep_alive_s": p.map(|p| p.keep_alive_s),
            "clean_session": p.map(|p| p.clean_session),
            "interval_s": p.map(|p| p.interval_s),
            "features": features(self.site, &s.profile),
            "readings_published": sent, "readings_delivered": got,
        })
    }

    /// The JSON summary (`--json` prints it on stdout).
    pub(super) fn json(&self) -> Value {
        let t = self.tally();
        let c = &t.counts;
        let gateway = &self.ended.gateway;
        let qos_json: BTreeMap<String, Value> = c
            .by_qos
            .iter()
            .map(|(q, (p, d))| (format!("qos{q}"), json!({ "published": p, "delivered": d })))
            .collect();
        let devices: Vec<Value> = self
            .sensors
            .iter()
            .zip(&self.provisioned.outcomes)
            .map(|(s, (_, r))| self.device(s, r))
            .collect();
        let airtime_ms = t.airtime_us as f64 / 1000.0;
        json!({
            "ok": t.ok,
            "devices": { "requested": self.n, "provisioned": t.provisioned,
                         "provisioning_seconds": self.provisioned.seconds, "list": devices },
            "messages": {
                "published": c.published, "forwarded": gateway["sent"], "delivered": c.delivered,
                "by_qos": qos_json, "qos12_missing": c.missing, "qos12_all_delivered": c.missing == 0,
                "per_topic": c.per_topic,
                "arrived_from_before_service": c.earlier, "duplicates": c.dupes,
                "note": "published = accepted by the broker on Pi #1 from the devices once in service (after their reboot); forwarded = every record the gateway sent over LoRa, the boards' first messages after provisioning included; delivered = those published messages a subscriber saw on the broker on Pi #2 (the sum of per_topic, never more than published); arrived_from_before_service = messages the boards sent before their reboot that reached Pi #2 during the run; duplicates = readings Pi #2 delivered more than once (QoS 1), not counted as delivered",
            },
            "airtime": { "used_ms": airtime_ms, "budget_ms_per_hour": BUDGET_MS,
                         "share_of_budget": airtime_ms / BUDGET_MS,
                         "hour_at_this_rate": t.hour.as_ref().map(|h| json!({
                             "records": h.records, "airtime_ms": h.airtime_ms,
                             "share_of_budget": h.share, "fits": h.share <= 1.0 })),
                         "duty_cycle_percent": 1.0, "sub_band": "g1 868.0-868.6 MHz",
                         "frames": gateway["frames_sent"], "bytes": gateway["bytes_on_air"] },
            "gateway": gateway, "receiver": self.ended.receiver,
            "intrusions": self.intrusions.iter().map(|i| json!({ "who": i.who, "attempt": i.attempt,
                "refused": i.refused, "evidence": i.evidence })).collect::<Vec<_>>(),
            "intrusions_refused": t.refused, "intrusions_tried": self.intrusions.len(),
            "revocation": self.revocation.map(Revocation::json),
            "chip_identity": self.chip_identity.iter().map(ChipCheck::json).collect::<Vec<_>>(),
            "renewal": self.renewal.map(Renewal::json),
            "features": t.features,
            "interval_scale": self.scale,
            "processes": self.procs.listing(),
            "ports": self.ports.json(),
            "seconds": self.started.elapsed().as_secs_f64(),
        })
    }

    /// The text summary, on stderr.
    pub(super) fn print(&self) {
        let t = self.tally();
        let c = &t.counts;
        let gateway = &self.ended.gateway;
        eprintln!(
            "   devices provisioned   {} of {} in {:.1} s",
            t.provisioned, self.n, self.provisioned.seconds
        );
        for c in self.chip_identity {
            eprintln!("   identity in the chip  {}", c.line());
        }
        eprintln!(
            "   messages              {} published on Pi #1, {} forwarded over LoRa in {} frame(s), {} of them delivered on Pi #2",
            c.published, gateway["sent"], gateway["frames_sent"], c.delivered
        );
        if c.earlier > 0 || c.dupes > 0 {
            eprintln!(
                "                         (also {} sent before the reboot arrived, {} duplicate(s) not counted)",
                c.earlier, c.dupes
            );
        }
        eprintln!(
            "                         (published and delivered count from the reboot into service; forwarded also\n                          holds what the boards sent right after provisioning)"
        );
        for (q, (p, d)) in &c.by_qos {
            eprintln!("     QoS {q}               {p} published, {d} delivered");
        }
        eprintln!(
            "   QoS 1/2               {}",
            if c.missing == 0 {
                "every message delivered at the far side".to_string()
            } else {
                format!("{} MISSING at the far side", c.missing)
            }
        );
        eprintln!(
            "   airtime               {:.1} ms of the {:.0} s an hour the 1 % duty cycle allows ({:.2} %)",
            t.airtime_us as f64 / 1000.0,
            BUDGET_MS / 1000.0,
            t.airtime_us as f64 / 10.0 / BUDGET_MS
        );
        if let Some(h) = &t.hour {
            eprintln!(
                "                         at this rate an hour uses {:.0} % of the 1 % duty-cycle budget: {}\n                          ({} readings an hour at these intervals, {:.1} ms of air each as measured)",
                h.share * 100.0,
                if h.share <= 1.0 {
                    "fits"
                } else {
                    "does not fit"
                },
                h.records,
                h.per_record_ms,
            );
        }
        eprintln!(
            "   intrusions            {} of {} refused",
            t.refused,
            self.intrusions.len()
        );
        for i in self.intrusions {
            eprintln!(
                "     {} {}: {} — {}",
                if i.refused { "REFUSED " } else { "ACCEPTED" },
                i.who,
                i.attempt,
                i.evidence
            );
        }
        match self.revocation {
            Some(r) => eprintln!(
                "   revocation            `{}` {}: revoked and cut off {:.2} s after `device revoke` (limit 5 s),\n                          {} reconnection(s) refused ({}), {} reading(s) reached Pi #1 after the cut",
                r.id,
                if r.ok() { "CUT OFF" } else { "NOT CUT OFF" },
                r.cut_s,
                r.refused_reconnects,
                r.evidence,
                r.readings_after_cut
            ),
            None => eprintln!("   revocation            not tried (one board only)"),
        }
        if let Some(r) = self.renewal {
            r.print();
        }
        eprintln!("   MQTT features");
        for (f, ids) in &t.features {
            let shown: Vec<&str> = ids.iter().take(6).map(String::as_str).collect();
            let more = if ids.len() > 6 {
                format!(" and {} more", ids.len() - 6)
            } else {
                String::new()
            };
            eprintln!("     {f:<34} {}{more}", shown.join(", "));
        }
        eprintln!(
            "   {} in {:.1} s; every process stopped",
            if t.ok { "done" } else { "FAILED" },
            self.started.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hour_projection_says_whether_an_hour_fits_the_budget() {
        // 100 records sent with 10 s of air: 100 ms each.
        let fits = hour_projection(10_000_000, 100, &[(1, 60)], 36_000.0).expect("projection");
        assert_eq!(fits.records, 60);
        assert!(
            (fits.airtime_ms - 6_000.0).abs() < 1e-6 && fits.share < 1.0,
            "{fits:?}"
        );
        let over = hour_projection(10_000_000, 100, &[(2, 5); 10], 36_000.0).expect("projection");
        assert_eq!(over.records, 14_400);
        assert!(over.share > 1.0, "{over:?}");
        assert_eq!(hour_projection(0, 0, &[(1, 1)], 36_000.0), None);
    }

    #[test]
    fn delivered_counts_only_published_messages_once_and_never_exceeds_published() {
        let mut near = Seen::default();
        let mut far = Seen::default();
        let r = |d: &str, p: &str| (d.to_string(), p.to_string());
        let t = near
            .topics
            .entry("maison/salon/temperature".into())
            .or_default();
        t.qos = 1;
        t.readings.insert(r("salon-1", "a"));
        t.readings.insert(r("salon-1", "b"));
        let f = far
            .topics
            .entry("maison/salon/temperature".into())
            .or_default();
        f.qos = 1;
        // "a" delivered (twice: one duplicate), "b" missing, "z" from before the service.
        f.readings.insert(r("salon-1", "a"));
        f.dupes = 1;
        f.readings.insert(r("salon-1", "z"));
        far.topics
            .entry("maison/garage/status".into())
            .or_default()
            .other = 2;
        let c = Counts::of(&near, &far);
        assert_eq!((c.published, c.delivered, c.missing), (2, 1, 1));
        assert_eq!((c.earlier, c.dupes), (3, 1));
        let sum: u64 = c
            .per_topic
            .iter()
            .filter_map(|t| t["delivered"].as_u64())
            .sum();
        assert_eq!(sum, c.delivered);
    }
}
