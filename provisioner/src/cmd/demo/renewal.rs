//! The renewal in the field, for real (no fake clock): one board gets a profile of its own
//! whose certificates live two minutes or so (the site's `lifetime` / `renew_before`
//! durations), so it reaches its renewal point a few seconds into the live traffic. The home
//! has an issuing CA (`init --issuing-ca`), `renewal-service setup` gives the service its
//! identity and ACL entry before the broker's configuration is emitted, and `renewal-service
//! run` answers on Pi #1's broker. The board sends its chip-signed CSR over its MQTT session,
//! checks and stores the certificate it gets back and reconnects with it.
//!
//! Judged at the end: the board's log says the broker accepted the new certificate, the
//! ledger has it as the board's active certificate and the provisioning one superseded by
//! it, and no reading of the board was lost: since the reboot into service every sequence
//! number from 1 to the last reached Pi #2 (the board numbers its readings across the
//! certificate switch, so a reading lost then is a gap), and readings taken after the
//! reconnection arrived.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use manifests::site::{Site, format_duration};
use serde_json::{Value, json};

use super::Demo;
use super::house::Sensor;
use super::live::Seen;
use super::procs::{nap, wait_for};
use crate::exit::{CliError, Code, Result};

/// Seconds from the boards' provisioning to their reboot into service, with room to spare
/// (measured: 4.5 s on an idle 2-core machine, 8 s on a busy one, debug build). Should the
/// renewal point come before the reboot anyway, the board sends its request again once
/// rebooted, and the check below still holds.
const LEAD_S: u64 = 8;

/// How long after the planned renewal point the demo waits, at most, for the renewal to end.
const GRACE_S: u64 = 20;

/// The board that renews: the second of three or more (the first keeps its identity in the
/// chip, the last one is revoked), else the first (then none if its identity is in the chip).
fn pick(n: usize) -> usize {
    if n >= 3 { 1 } else { 0 }
}

/// Seconds from a certificate's issue to its renewal point: a few seconds into the live
/// traffic, and late enough that the renewed certificate is not due again before the end.
fn due_after(duration_s: u64) -> u64 {
    (LEAD_S + 3).max((LEAD_S + duration_s + 3) / 2)
}

/// The lifetime and renewal window (s) that put the renewal point `due` seconds after issue:
/// the CA backdates a short certificate by a tenth of its lifetime, so notAfter is
/// `issue - lifetime/10 + lifetime` and the point `notAfter - renew_before`.
fn lifetime_for(due: u64) -> (u64, u64) {
    let lifetime = (2 * due + 60).div_ceil(10) * 10;
    (lifetime, lifetime - lifetime / 10 - due)
}

/// The renewal planned for one board.
pub(super) struct Plan {
    id: String,
    profile: String,
    lifetime_s: u64,
    renew_before_s: u64,
    due_after_s: u64,
}

/// Gives one board a profile of its own, a copy of its profile with a short lifetime, so it
/// renews during the run. None without boards.
pub(super) fn plan(site: &mut Site, sensors: &mut [Sensor], duration_s: u64) -> Option<Plan> {
    let s = sensors.get_mut(pick(sensors.len()))?;
    let mut profile = site.profiles.get(&s.profile)?.clone();
    if profile.compressed.is_some() {
        // The board keeping its identity in the chip (the first one, with fewer than three
        // boards): its lifetime is in whole years, so it cannot be short-lived.
        return None;
    }
    let due = due_after(duration_s);
    let (lifetime, before) = lifetime_for(due);
    profile.description = format!("{} (short-lived: renews in the field)", profile.description);
    profile.cert_days = None;
    profile.renew_before_days = None;
    profile.renew_at = None;
    profile.lifetime = Some(format_duration(lifetime));
    profile.renew_before = Some(format_duration(before));
    let name = format!("{}_ephemere", s.profile);
    site.profiles.insert(name.clone(), profile);
    s.profile = name.clone();
    Some(Plan {
        id: s.id.clone(),
        profile: name,
        lifetime_s: lifetime,
        renew_before_s: before,
        due_after_s: due,
    })
}

/// `renewal-service setup` (before the broker's configuration is emitted: its ACL entry).
pub(super) fn setup(d: &Demo<'_>) -> Result<()> {
    let credential = d.work.join("renewal.passphrase");
    d.run_me(
        "renewal-service setup",
        &[
            "renewal-service",
            "setup",
            "--credential",
            &credential.to_string_lossy(),
        ],
        60,
    )?;
    super::note(
        "renewal service `renewal-service`: reads maison_pki/renew/+, writes maison_pki/cert/+ (signs with the issuing CA)",
    );
    Ok(())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// When the board's log said each step of its renewal (Unix seconds, at 50 ms resolution).
#[derive(Debug, Default, Clone)]
struct Steps {
    requested: Option<f64>,
    staged: Option<f64>,
    accepted: Option<(f64, String)>,
    failed: Option<String>,
}

/// The serial a board log line names, `(serial HEX)`.
fn serial_in(line: &str) -> String {
    line.split_once("(serial ")
        .and_then(|(_, r)| r.split_once(')'))
        .map(|(s, _)| s.to_string())
        .unwrap_or_default()
}

impl Steps {
    /// Records the steps of new log `lines` seen at `t` (the first of each).
    fn read(&mut self, lines: &str, t: f64) {
        for l in lines.lines() {
            if l.contains("renewal:") && l.contains("CSR signed by the chip sent") {
                self.requested.get_or_insert(t);
            } else if l.contains("checked and stored; reconnecting") {
                self.staged.get_or_insert(t);
            } else if l.contains("the broker accepted the new certificate") {
                if self.accepted.is_none() {
                    self.accepted = Some((t, serial_in(l)));
                }
            } else if l.contains("renewal FAILED") && self.failed.is_none() {
                self.failed = Some(manifests::text::escape_max(l.trim(), 160));
            }
        }
    }

    fn done(&self) -> bool {
        self.accepted.is_some() || self.failed.is_some()
    }
}

/// The renewal under way: the service and a thread reading the board's log.
pub(super) struct Renewing {
    plan: Plan,
    board_log: PathBuf,
    service_log: PathBuf,
    service: u32,
    steps: Arc<Mutex<Steps>>,
    stop: Arc<AtomicBool>,
    watcher: Option<JoinHandle<()>>,
    /// When the renewal point falls, about.
    due: Instant,
    /// Unix time of the reboot into service.
    live_unix: f64,
}

/// Reads the board's log as it grows into `steps`, and says in the live view when the
/// board asked and when it was back with its new certificate.
fn watch(
    id: String,
    log: PathBuf,
    steps: Arc<Mutex<Steps>>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut seen = 0usize;
        let mut told = (false, false);
        while !stop.load(Ordering::SeqCst) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.len() > seen {
                let t = unix_now();
                let new = text.get(seen..).unwrap_or("");
                // Only whole lines: the rest is read again next time.
                let upto = new.rfind('\n').map_or(0, |i| i + 1);
                let now = {
                    let mut s = steps
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    s.read(&new[..upto], t);
                    s.clone()
                };
                seen += upto;
                told = tell(&id, &now, told);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// The live view's lines about the renewal; returns what has been told.
fn tell(id: &str, s: &Steps, (asked, back): (bool, bool)) -> (bool, bool) {
    if !asked && s.requested.is_some() {
        super::note(&format!(
            "renewal: `{id}` reached its renewal point and sent a CSR signed by its chip over its MQTT session"
        ));
    }
    if !back && let (Some(r), Some((a, serial))) = (s.requested, &s.accepted) {
        super::note(&format!(
            "renewal: `{id}` reconnected with its new certificate {} ({:.2} s after its request)",
            short(serial),
            a - r
        ));
    }
    (asked || s.requested.is_some(), back || s.accepted.is_some())
}

/// Starts `renewal-service run` (once Pi #1's broker listens) and the watch of the board's
/// log; the boards were provisioned `since` ago.
pub(super) fn start(d: &Demo<'_>, plan: Plan, provisioned_at: Instant) -> Result<Renewing> {
    let service_log = d.log("renewal-service");
    let service = d
        .procs
        .spawn(
            "renewal-service",
            d.me(&["renewal-service", "run"]),
            &service_log,
            false,
        )?
        .pid;
    wait_for(
        "the renewal service to connect to Pi #1's broker",
        Duration::from_secs(15),
        Some(&service_log),
        || {
            std::fs::read_to_string(&service_log)
                .is_ok_and(|t| t.contains("renewal service connected to the broker"))
                || !d.procs.running(service)
        },
    )?;
    if !d.procs.running(service) {
        return Err(CliError::new(
            Code::Failure,
            format!(
                "the renewal service stopped{}",
                super::procs::log_tail(&service_log)
            ),
        ));
    }
    let board_log = d.log(&format!("board-{}", plan.id));
    let steps = Arc::new(Mutex::new(Steps::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch(
        plan.id.clone(),
        board_log.clone(),
        steps.clone(),
        stop.clone(),
    );
    super::note(&format!(
        "`{}` (profile {}: lifetime {}, renew {} before expiry) is due {} s after its provisioning; `renewal-service run` answers on Pi #1",
        plan.id,
        plan.profile,
        format_duration(plan.lifetime_s),
        format_duration(plan.renew_before_s),
        plan.due_after_s
    ));
    Ok(Renewing {
        due: provisioned_at + Duration::from_secs(plan.due_after_s),
        plan,
        board_log,
        service_log,
        service,
        steps,
        stop,
        watcher: Some(watcher),
        live_unix: f64::MAX,
    })
}

impl Renewing {
    /// The boards were just rebooted into service.
    pub(super) fn went_live(&mut self) {
        self.live_unix = unix_now();
    }

    fn steps(&self) -> Steps {
        self.steps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// After the live phase: waits (up to [`GRACE_S`] past the renewal point) for the board
    /// to have renewed or failed, then stops the service.
    pub(super) fn finish(&mut self, d: &Demo<'_>) -> Result<()> {
        let deadline = self.due + Duration::from_secs(GRACE_S);
        if !self.steps().done() && Instant::now() < deadline {
            super::note(&format!("waiting for `{}` to renew", self.plan.id));
        }
        while !self.steps().done() && Instant::now() < deadline {
            nap(Duration::from_millis(100))?;
        }
        // One more look at the log so a line written in the last instant counts.
        nap(Duration::from_millis(100))?;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = self.watcher.take() {
            let _ = w.join();
        }
        d.procs.stop(&[self.service], Duration::from_secs(5));
        Ok(())
    }

    /// The verdict once the monitors have stopped.
    pub(super) fn judge(self, d: &Demo<'_>, near: &Seen, far: &Seen) -> Result<Renewal> {
        let steps = self.steps();
        let store = ca::Store::open(&ca::Layout::new(d.home.clone()))?;
        let certs = store.ledger.certificates_of(&self.plan.id)?;
        let active = store.ledger.active_of(&self.plan.id)?.map(|c| c.serial);
        let old = certs.first().map(|c| c.serial.clone()).unwrap_or_default();
        let new_serial = steps.accepted.as_ref().map(|(_, s)| s.clone());
        let old_superseded = store
            .ledger
            .supersession(&old)?
            .filter(|s| Some(&s.by_serial) == new_serial.as_ref())
            .map(|s| format!("superseded by it ({})", s.why));
        let readings = Readings::of(near, far, &self.plan.id, self.live_unix, &steps);
        let service_log = std::fs::read_to_string(&self.service_log).unwrap_or_default();
        Ok(Renewal {
            id: self.plan.id,
            profile: self.plan.profile,
            lifetime_s: self.plan.lifetime_s,
            renew_before_s: self.plan.renew_before_s,
            old_serial: old,
            new_serial,
            ledger_active: active,
            old_status: old_superseded,
            certificates: certs.len(),
            request_to_reconnect_s: match (steps.requested, &steps.accepted) {
                (Some(r), Some((a, _))) => Some(a - r),
                _ => None,
            },
            issued_by_service: service_log.matches("renewed on ").count(),
            failure: steps.failed.or_else(|| {
                (steps.accepted.is_none())
                    .then(|| format!("the board did not renew (see {})", self.board_log.display()))
            }),
            readings,
        })
    }
}

/// The renewing board's readings since its reboot into service.
#[derive(Debug, Clone, Default)]
pub(super) struct Readings {
    /// The last sequence number seen: the board published at least this many.
    pub(super) sent: u64,
    /// Sequence numbers Pi #1's monitor saw (it misses what comes while it reconnects after
    /// the revocation's broker restart).
    pub(super) seen_pi1: usize,
    /// Sequence numbers that reached Pi #2. Counted as numbers, not messages: a reading of
    /// the application before the reboot, taken in the second of the reboot, cannot be told
    /// apart by its whole-second timestamp and must not count twice.
    pub(super) arrived: usize,
    /// Sequence numbers between 1 and `sent` that never reached Pi #2.
    pub(super) missing: Vec<u64>,
    /// Readings taken after the reconnection with the new certificate that reached Pi #2.
    pub(super) after_reconnect: usize,
}

/// `(seq, ts)` of each of `id`'s readings in `seen` taken since `since` (Unix seconds; the
/// second itself included, readings carry whole seconds).
fn numbered(seen: &Seen, id: &str, since: f64) -> BTreeSet<(u64, u64)> {
    seen.topics
        .values()
        .flat_map(|t| t.readings.iter())
        .filter(|(d, _)| d == id)
        .filter_map(|(_, p)| {
            let v = serde_json::from_str::<Value>(p).ok()?;
            Some((v.get("seq")?.as_u64()?, v.get("ts")?.as_u64()?))
        })
        .filter(|&(_, ts)| ts as f64 >= since.floor())
        .collect()
}

impl Readings {
    fn of(near: &Seen, far: &Seen, id: &str, live_unix: f64, steps: &Steps) -> Readings {
        let (near, far) = (numbered(near, id, live_unix), numbered(far, id, live_unix));
        let numbers =
            |set: &BTreeSet<(u64, u64)>| -> BTreeSet<u64> { set.iter().map(|&(s, _)| s).collect() };
        let seqs = numbers(&far);
        let sent = near.iter().chain(&far).map(|&(s, _)| s).max().unwrap_or(0);
        let reconnected = steps.accepted.as_ref().map_or(f64::MAX, |(t, _)| t.floor());
        Readings {
            sent,
            seen_pi1: numbers(&near).len(),
            arrived: seqs.len(),
            missing: (1..=sent).filter(|s| !seqs.contains(s)).collect(),
            after_reconnect: far
                .iter()
                .filter(|&&(_, ts)| ts as f64 >= reconnected)
                .count(),
        }
    }
}

/// What became of the renewal in the field.
#[derive(Debug, Clone)]
pub(super) struct Renewal {
    pub(super) id: String,
    profile: String,
    lifetime_s: u64,
    renew_before_s: u64,
    pub(super) old_serial: String,
    /// The serial of the certificate the broker accepted from the board.
    pub(super) new_serial: Option<String>,
    ledger_active: Option<String>,
    /// How the ledger records the provisioning certificate now.
    old_status: Option<String>,
    certificates: usize,
    pub(super) request_to_reconnect_s: Option<f64>,
    issued_by_service: usize,
    failure: Option<String>,
    pub(super) readings: Readings,
}

impl Renewal {
    pub(super) fn ok(&self) -> bool {
        let r = &self.readings;
        self.new_serial.is_some()
            && self.new_serial != Some(self.old_serial.clone())
            && self.ledger_active == self.new_serial
            && self.old_status.is_some()
            && r.sent > 0
            && r.missing.is_empty()
            && r.after_reconnect > 0
    }

    pub(super) fn json(&self) -> Value {
        let r = &self.readings;
        json!({
            "id": self.id, "ok": self.ok(), "profile": self.profile,
            "lifetime_seconds": self.lifetime_s, "renew_before_seconds": self.renew_before_s,
            "old_serial": self.old_serial, "new_serial": self.new_serial,
            "ledger_active": self.ledger_active, "old_in_ledger": self.old_status,
            "certificates_in_ledger": self.certificates,
            "issued_by_service": self.issued_by_service,
            "request_to_reconnect_seconds": self.request_to_reconnect_s,
            "failure": self.failure,
            "readings": { "sent": r.sent, "seen_pi1": r.seen_pi1, "arrived_pi2": r.arrived,
                          "missing_seq": r.missing, "after_reconnect": r.after_reconnect },
        })
    }

    /// The summary's text lines.
    pub(super) fn print(&self) {
        let r = &self.readings;
        eprintln!(
            "   renewal in the field  `{}` {}: certificate {} -> {} over its MQTT session, {} from request to reconnect;\n                          ledger: {} active, the old one {}; readings since service: {} sent, {} arrived on Pi #2 ({} missing), {} of them after the reconnection",
            self.id,
            if self.ok() { "RENEWED" } else { "NOT RENEWED" },
            short(&self.old_serial),
            self.new_serial.as_deref().map_or("none".into(), short),
            self.request_to_reconnect_s
                .map_or("no time".into(), |s| format!("{s:.2} s")),
            self.ledger_active.as_deref().map_or("none".into(), short),
            self.old_status.as_deref().unwrap_or("not superseded"),
            r.sent,
            r.arrived,
            r.missing.len(),
            r.after_reconnect,
        );
        if let Some(f) = &self.failure {
            eprintln!("                          {f}");
        }
    }
}

fn short(serial: &str) -> String {
    serial.chars().take(16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_renewal_point_falls_after_the_reboot_and_the_renewed_certificate_is_not_due_before_the_end()
     {
        for duration in [3, 8, 20, 40, 600] {
            let due = due_after(duration);
            let (life, before) = lifetime_for(due);
            assert_eq!(life - life / 10 - before, due, "{duration}");
            assert!(
                due > LEAD_S && 2 * due > LEAD_S + duration,
                "{duration}: {due}"
            );
            assert!(before > 0 && before < life && life % 10 == 0, "{duration}");
        }
    }

    #[test]
    fn the_board_log_gives_the_steps_and_the_serial() {
        let mut s = Steps::default();
        s.read("sensor-sim: renewal: certificate due since 10 (valid until 20); CSR signed by the chip sent\n", 1.0);
        s.read("sensor-sim: renewal: new certificate (serial 0abc) checked and stored; reconnecting with it\nsensor-sim: renewal: the broker accepted the new certificate (serial 0abc); it is now device.crt\n", 1.5);
        assert_eq!(
            (s.requested, s.staged, s.accepted.clone()),
            (Some(1.0), Some(1.5), Some((1.5, "0abc".to_string())))
        );
        assert!(s.done());
    }
}
