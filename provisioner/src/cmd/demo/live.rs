//! The live view: the monitors on both brokers, what they saw, and the far side's readings
//! printed as they arrive (with a note when the far side goes quiet).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::Demo;
use super::network::{Configs, Ports, Tools};
use super::procs::{Procs, nap, wait_for};
use crate::exit::{CliError, Code, Result};

/// The live view prints, and the monitors count, once the boards are in service.
static LIVE: AtomicBool = AtomicBool::new(false);

/// Both monitors' observations once they run, for the summary of an interrupted demo.
pub(super) static MONITORS: std::sync::OnceLock<(Shared2, Shared2)> = std::sync::OnceLock::new();

/// From now on the monitors count and the far side's readings are printed.
pub(super) fn go_live() {
    LIVE.store(true, Ordering::SeqCst);
}

/// What a monitor saw on one topic.
#[derive(Debug, Default, Clone)]
pub(super) struct TopicSeen {
    pub(super) qos: u8,
    /// (device, payload) of the JSON readings, de-duplicated (a QoS 1 message may arrive
    /// twice; a board's sequence number restarts when it reboots, its timestamp does not).
    pub(super) readings: BTreeSet<(String, String)>,
    /// Other payloads (the status topic's online/offline), counted.
    pub(super) other: u64,
    /// Readings seen again (QoS 1 redelivery): counted here, never as delivered.
    pub(super) dupes: u64,
    pub(super) last: String,
}

#[derive(Debug, Default)]
pub(super) struct Seen {
    pub(super) topics: BTreeMap<String, TopicSeen>,
    pub(super) messages: u64,
    /// Messages marked as intrusions (none should ever get through).
    pub(super) intrusions: Vec<String>,
    /// SUBACKs received: 1 once subscribed, one more after each reconnection.
    subacks: u32,
}

/// What one monitor saw, shared with its reading thread.
pub(super) type Shared2 = Arc<Mutex<Seen>>;

pub(super) fn lock(s: &Shared2) -> MutexGuard<'_, Seen> {
    s.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A parsed `M qos retain topic payload` line of mosquitto_sub.
struct Line<'a> {
    qos: u8,
    topic: &'a str,
    payload: &'a str,
}

fn parse_line(line: &str) -> Option<Line<'_>> {
    let rest = line.strip_prefix("M ")?;
    let mut it = rest.splitn(4, ' ');
    let qos = it.next()?.parse().ok()?;
    let _retain = it.next()?;
    let topic = it.next()?;
    let payload = it.next().unwrap_or("");
    Some(Line {
        qos,
        topic,
        payload,
    })
}

/// Human form of a reading: `21.4 °C  (salon-1 #3)`.
fn describe(payload: &str) -> String {
    match serde_json::from_str::<Value>(payload) {
        Ok(v) if v.get("device").is_some() => {
            let what = match (v.get("value"), v.get("state")) {
                (Some(val), _) => format!(
                    "{val} {}",
                    v.get("unit").and_then(Value::as_str).unwrap_or("")
                ),
                (None, Some(s)) => s.as_str().unwrap_or("?").to_string(),
                _ => payload.to_string(),
            };
            format!(
                "{what:<10} ({} #{})",
                v["device"].as_str().unwrap_or("?"),
                v.get("seq").and_then(Value::as_u64).unwrap_or(0)
            )
        }
        _ => payload.chars().take(40).collect(),
    }
}

/// Reads a monitor's output into `seen`; `live` prints the far side's readings on stderr.
fn monitor_thread(
    stdout: std::fs::File,
    seen: Shared2,
    live: Option<(Instant, usize)>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut printed_this_second = 0usize;
        let mut second = 0u64;
        let mut skipped = 0u64;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("received SUBACK") {
                lock(&seen).subacks += 1;
                continue;
            }
            let Some(m) = parse_line(&line) else {
                continue;
            };
            {
                let mut s = lock(&seen);
                s.messages += 1;
                if m.payload.contains("intrusion") {
                    s.intrusions.push(format!("{} {}", m.topic, m.payload));
                }
                // A board starts its application as soon as it is provisioned and may publish
                // while the monitors are still subscribing: such a message reaches one side
                // live and the other as a retained copy, or not at all. Published / delivered
                // are counted from the reboot into service on, when both monitors listen.
                if !LIVE.load(Ordering::SeqCst) {
                    continue;
                }
                let t = s.topics.entry(m.topic.to_string()).or_default();
                t.qos = t.qos.max(m.qos);
                t.last = m.payload.to_string();
                match serde_json::from_str::<Value>(m.payload) {
                    Ok(v) if v.get("seq").is_some() => {
                        let fresh = t.readings.insert((
                            v["device"].as_str().unwrap_or("").to_string(),
                            m.payload.to_string(),
                        ));
                        if !fresh {
                            t.dupes += 1;
                        }
                    }
                    _ => t.other += 1,
                }
            }
            if let Some((start, per_second)) = live.filter(|_| LIVE.load(Ordering::SeqCst)) {
                let now = start.elapsed().as_secs();
                if now != second {
                    if skipped > 0 {
                        eprintln!("           … and {skipped} more");
                    }
                    second = now;
                    printed_this_second = 0;
                    skipped = 0;
                }
                if printed_this_second < per_second {
                    printed_this_second += 1;
                    eprintln!(
                        "  {:>6.1}s  far side  {:<30} {}",
                        start.elapsed().as_secs_f64(),
                        m.topic,
                        describe(m.payload)
                    );
                } else {
                    skipped += 1;
                }
            }
        }
    })
}

/// How long the far side may stay silent before the live view says why.
const QUIET: Duration = Duration::from_secs(5);

/// When readings come: each board publishes on connecting, then every interval.
pub(super) fn schedule_note(intervals: &[u32], duration_s: u64) -> String {
    let (Some(lo), Some(hi)) = (intervals.iter().min(), intervals.iter().max()) else {
        return "no sensor publishes".into();
    };
    let every = if lo == hi {
        format!("every {lo} s")
    } else {
        format!("every {lo} to {hi} s")
    };
    if u64::from(*lo) >= duration_s {
        format!(
            "each sensor publishes once on connecting, then {every}: after the first readings have crossed the link nothing is due before the end of this {duration_s} s run"
        )
    } else {
        format!("each sensor publishes once on connecting, then {every}")
    }
}

/// The next reading due after `t` seconds of service (boards publish at 0, i, 2i, ...).
fn next_due(intervals: &[u32], t: f64) -> Option<f64> {
    intervals
        .iter()
        .map(|&i| {
            let i = f64::from(i);
            ((t / i).floor() + 1.0) * i
        })
        .min_by(f64::total_cmp)
}

/// What a quiet stretch of the live view says.
fn quiet_line(intervals: &[u32], t: f64, duration_s: u64) -> String {
    match next_due(intervals, t) {
        Some(due) if due <= duration_s as f64 => format!(
            "nothing new on Pi #2 for {} s; the next reading is due at about {due:.0} s",
            QUIET.as_secs()
        ),
        Some(due) => format!(
            "nothing new on Pi #2 for {} s; no reading is due before the end ({duration_s} s, next at about {due:.0} s)",
            QUIET.as_secs()
        ),
        None => "nothing new on Pi #2".into(),
    }
}

/// `moniteur` on both brokers (QoS 2, so nothing the brokers accept is missed); the far
/// side's readings shown live.
pub(super) struct Monitors {
    near: Shared2,
    far: Shared2,
    pids: Vec<u32>,
    threads: Vec<JoinHandle<()>>,
    /// When the live view's clock started.
    start: Instant,
}

impl Monitors {
    /// Starts both monitors and waits until each has subscribed.
    pub(super) fn start(
        d: &Demo<'_>,
        tools: &Tools,
        ports: &Ports,
        configs: &Configs,
    ) -> Result<Monitors> {
        let mut m = Monitors {
            near: Arc::default(),
            far: Arc::default(),
            pids: vec![],
            threads: vec![],
            start: Instant::now(),
        };
        let _ = MONITORS.set((m.near.clone(), m.far.clone()));
        let per_second = if d.args.sensors <= 8 { 6 } else { 3 };
        let near = m.near.clone();
        m.spawn(
            d,
            tools,
            configs,
            "moniteur-pi1",
            ports.near,
            configs.near_broker.join("ca.crt"),
            near,
            None,
        )?;
        let far = m.far.clone();
        let live = Some((m.start, per_second));
        m.spawn(
            d,
            tools,
            configs,
            "moniteur-pi2",
            ports.far,
            configs.far_broker.join("ca.crt"),
            far,
            live,
        )?;
        Ok(m)
    }

    #[allow(clippy::too_many_arguments)]
    fn spawn(
        &mut self,
        d: &Demo<'_>,
        tools: &Tools,
        configs: &Configs,
        name: &str,
        port: u16,
        cafile: PathBuf,
        seen: Shared2,
        live: Option<(Instant, usize)>,
    ) -> Result<()> {
        let (crt, key) = &configs.monitor;
        let mut c = std::process::Command::new(&tools.mosquitto_sub);
        c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "2", "-d"])
            .args(["-i", name, "-t", "maison/#", "-F", "M %q %r %t %p"])
            .arg("--cafile")
            .arg(cafile)
            .arg("--cert")
            .arg(crt)
            .arg("--key")
            .arg(key);
        let log = d.log(name);
        let mut ch = d.procs.spawn(name, c, &log, true)?;
        self.pids.push(ch.pid);
        let out = ch
            .stdout
            .take()
            .ok_or_else(|| CliError::new(Code::Failure, "monitor without stdout"))?;
        self.threads.push(monitor_thread(out, seen.clone(), live));
        wait_for(name, Duration::from_secs(10), Some(&log), || {
            lock(&seen).subacks > 0
        })
    }

    /// How often Pi #1's monitor has subscribed (it subscribes again after a reconnection).
    pub(super) fn near_subscriptions(&self) -> u32 {
        lock(&self.near).subacks
    }

    /// What Pi #1 (near) and Pi #2 (far) saw so far.
    pub(super) fn seen(&self) -> (MutexGuard<'_, Seen>, MutexGuard<'_, Seen>) {
        (lock(&self.near), lock(&self.far))
    }

    /// The rest of the live phase, until `end`; a quiet stretch says when the next reading
    /// is due.
    pub(super) fn watch_until(
        &self,
        end: Instant,
        intervals: &[u32],
        duration_s: u64,
    ) -> Result<()> {
        let mut last_seen = (lock(&self.far).messages, Instant::now());
        let mut told = false;
        while Instant::now() < end {
            nap(Duration::from_millis(200).min(end.saturating_duration_since(Instant::now())))?;
            let now_seen = lock(&self.far).messages;
            if now_seen != last_seen.0 {
                last_seen = (now_seen, Instant::now());
                told = false;
            } else if !told && last_seen.1.elapsed() >= QUIET {
                told = true;
                let t = self.start.elapsed().as_secs_f64();
                eprintln!(
                    "  {t:>6.1}s  quiet     {}",
                    quiet_line(intervals, t, duration_s)
                );
            }
        }
        Ok(())
    }

    /// Stops both monitors and waits for their threads to have read everything.
    pub(super) fn stop(&mut self, procs: &Procs) {
        procs.stop(&self.pids, Duration::from_secs(3));
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_live_view_says_when_the_next_reading_is_due() {
        // Intervals longer than the run: the note and the quiet line both say so.
        let long = [100, 200];
        assert!(schedule_note(&long, 40).contains("nothing is due before the end"));
        let q = quiet_line(&long, 18.0, 40);
        assert!(
            q.contains("no reading is due before the end") && q.contains("100 s"),
            "{q}"
        );
        // Short ones: the next one is named.
        assert_eq!(next_due(&[6, 5], 11.0), Some(12.0));
        let q = quiet_line(&[6, 5], 11.0, 40);
        assert!(q.contains("due at about 12 s"), "{q}");
    }
}
