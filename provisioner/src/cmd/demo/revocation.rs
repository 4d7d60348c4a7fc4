//! The live revocation: one board is revoked while the house runs, as an operator does it
//! (README "Revocation"): `device revoke ID --reload` (CRL signed, ACL and CRL of every
//! registered broker directory rewritten, SIGHUP through the pid file), then a restart of
//! Pi #1's mosquitto, which ends the board's open session (mosquitto does not re-check
//! connected clients on SIGHUP) while persistence keeps every other session and its queued
//! QoS 1/2 messages. Judged at the end: the board's reconnections are refused and none of
//! its readings reaches Pi #1 after the cut.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::Demo;
use super::house::Sensor;
use super::live::{Monitors, Seen};
use super::network::{Configs, Network, Ports, Tools};
use super::procs::{nap, wait_for};
use crate::exit::Result;

/// Cut-off the demo requires, as issue and README state it.
const CUT_OFF_LIMIT_S: f64 = 5.0;

/// The board revoked live, before the verdict.
pub(super) struct Revoked {
    id: String,
    board_log: PathBuf,
    /// Refused connections in the board's log before the revocation.
    failures_before: usize,
    /// Seconds of `device revoke --reload`.
    revoke_s: f64,
    /// Seconds from `device revoke` until Pi #1's broker listened again without the board's
    /// session.
    cut_s: f64,
    /// The board's readings Pi #1's monitor had seen once it subscribed again after the cut.
    seen_at_cut: usize,
}

/// What became of the live revocation.
#[derive(Debug, Clone)]
pub(super) struct Revocation {
    pub(super) id: String,
    pub(super) revoke_s: f64,
    pub(super) cut_s: f64,
    /// Its reconnections the broker refused after the revocation.
    pub(super) refused_reconnects: usize,
    /// Its readings that reached Pi #1 after the cut (must be 0).
    pub(super) readings_after_cut: usize,
    /// The first refusal the board logged, escaped.
    pub(super) evidence: String,
}

impl Revocation {
    pub(super) fn ok(&self) -> bool {
        self.readings_after_cut == 0 && self.refused_reconnects > 0 && self.cut_s < CUT_OFF_LIMIT_S
    }

    pub(super) fn json(&self) -> Value {
        json!({ "id": self.id, "ok": self.ok(), "revoke_seconds": self.revoke_s,
                "cut_off_seconds": self.cut_s, "cut_off_limit_seconds": CUT_OFF_LIMIT_S,
                "refused_reconnects": self.refused_reconnects,
                "readings_after_cut": self.readings_after_cut, "evidence": self.evidence })
    }
}

/// The board to revoke: the last one, when another keeps the house going.
pub(super) fn victim(sensors: &[Sensor]) -> Option<&Sensor> {
    (sensors.len() >= 2).then(|| sensors.last()).flatten()
}

fn readings_from(seen: &Seen, id: &str) -> usize {
    seen.topics
        .values()
        .map(|t| t.readings.iter().filter(|(d, _)| d == id).count())
        .sum()
}

/// The board's connection attempts the broker refused with a TLS alert (a restart's dropped
/// connection is not one).
fn failures(log: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("connection failed") && l.contains("fatal alert"))
        .map(str::to_string)
        .collect()
}

/// Revokes `victim` and restarts Pi #1's broker; returns once Pi #1's monitor listens again.
pub(super) fn revoke_live(
    d: &Demo<'_>,
    tools: &Tools,
    ports: &Ports,
    configs: &Configs,
    net: &mut Network,
    monitors: &Monitors,
    victim: &Sensor,
) -> Result<Revoked> {
    let board_log = d.log(&format!("board-{}", victim.id));
    let failures_before = failures(&board_log).len();
    let t0 = Instant::now();
    let out = d.run_me(
        "device revoke",
        &["device", "revoke", &victim.id, "--reload"],
        60,
    )?;
    let revoke_s = t0.elapsed().as_secs_f64();
    let reloaded = out.contains("reloaded (SIGHUP");
    super::note(&format!(
        "`device revoke {} --reload`: CRL signed, ACL rewritten, {} in {revoke_s:.2} s",
        victim.id,
        if reloaded {
            "Pi #1's mosquitto reloaded"
        } else {
            "no reload"
        }
    ));
    let subscriptions = monitors.near_subscriptions();
    net.restart_near_broker(d, tools, ports, configs)?;
    let cut_s = t0.elapsed().as_secs_f64();
    super::note(&format!(
        "Pi #1's mosquitto restarted (systemctl restart mosquitto on a Pi): `{}`'s open session ended {cut_s:.2} s after the revocation; every other session kept (persistence)",
        victim.id
    ));
    wait_for(
        "Pi #1's monitor to subscribe again after the restart",
        Duration::from_secs(15),
        None,
        || monitors.near_subscriptions() > subscriptions,
    )?;
    let seen_at_cut = readings_from(&monitors.seen().0, &victim.id);
    Ok(Revoked {
        id: victim.id.clone(),
        board_log,
        failures_before,
        revoke_s,
        cut_s,
        seen_at_cut,
    })
}

impl Revoked {
    /// Waits (up to 8 s) for the board to have tried again and been refused.
    pub(super) fn wait_for_refusal(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(8);
        while failures(&self.board_log).len() <= self.failures_before && Instant::now() < deadline {
            nap(Duration::from_millis(100))?;
        }
        Ok(())
    }

    /// The verdict once the monitors have stopped: `near` is what Pi #1's monitor saw.
    pub(super) fn judge(self, near: &Seen) -> Revocation {
        let after = failures(&self.board_log);
        let refused = &after[self.failures_before.min(after.len())..];
        Revocation {
            readings_after_cut: readings_from(near, &self.id).saturating_sub(self.seen_at_cut),
            refused_reconnects: refused.len(),
            evidence: refused
                .first()
                .map(|l| manifests::text::escape_max(l.trim(), 160))
                .unwrap_or_else(|| "the board did not try to reconnect".into()),
            id: self.id,
            revoke_s: self.revoke_s,
            cut_s: self.cut_s,
        }
    }
}
