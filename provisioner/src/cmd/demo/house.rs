//! The demo's house: the example site with the broker on 127.0.0.1, its sensors and their
//! profiles, paced to fit the LoRa duty-cycle budget.

use std::path::{Path, PathBuf};

use manifests::site::Site;

use crate::exit::{CliError, Code, Result};

// The house.

/// One simulated sensor of the demo.
#[derive(Debug, Clone)]
pub(super) struct Sensor {
    pub(super) id: String,
    pub(super) room: String,
    pub(super) profile: String,
    /// Its serial link (a pseudo-terminal).
    pub(super) link: PathBuf,
    /// Its chip's state file.
    pub(super) state: PathBuf,
}

/// Rooms and profiles in turn: the first six cover QoS 0, 1 and 2, a retained status topic
/// with a last will, a short keep-alive, clean and persistent sessions.
const HOUSE: [(&str, &str); 6] = [
    ("chambre_1", "climat"),
    ("salon", "luminosite"),
    ("cuisine", "thermometre"),
    ("garage", "porte"),
    ("chambre_2", "climat"),
    ("bureau", "thermometre"),
];

/// Base intervals (s) of the demo's profiles: faster than a real house, so a short demo shows
/// traffic. Scaled up with the number of sensors to stay inside the LoRa duty-cycle budget.
fn base_interval(profile: &str) -> u32 {
    match profile {
        "climat" => 6,
        "luminosite" => 5,
        "thermometre" => 3,
        "porte" => 2,
        _ => 10,
    }
}

/// Records the demo lets through the link during the live phase: at about 0.2 s of airtime
/// each (SF7, 125 kHz, one or two readings per frame), half of the 36 s an hour that the
/// 1 % sub-band allows.
const RECORD_BUDGET: f64 = 90.0;

/// The demo's site: the example house with the broker on 127.0.0.1 and paced profiles.
pub(super) fn demo_site(
    near_port: u16,
    sensors: &[Sensor],
    duration_s: u64,
) -> Result<(Site, f64)> {
    let mut site = Site::from_toml_str("smart-home.toml", manifests::site::EXAMPLE_SMART_HOME)?;
    site.broker.dns = vec!["localhost".into()];
    site.broker.ip = vec![std::net::IpAddr::from([127, 0, 0, 1])];
    site.broker.port = near_port;
    site.broker.connect = Some("127.0.0.1".into());
    // Records per second at the base intervals, plus each reading's first one.
    let mut rate = 0.0;
    let mut first = 0.0;
    for s in sensors {
        let p = site
            .profile(&s.profile)
            .map_err(|e| CliError::new(Code::Input, e))?;
        let n = p.readings.len() as f64;
        rate += n / f64::from(base_interval(&s.profile));
        first += n + f64::from(u8::from(p.status_topic.is_some()));
    }
    let wanted = rate * duration_s as f64;
    let room = (RECORD_BUDGET - first).max(RECORD_BUDGET / 4.0);
    let scale = (wanted / room).max(1.0);
    for (name, p) in site.profiles.iter_mut() {
        p.interval_s = (f64::from(base_interval(name)) * scale).ceil() as u32;
        if name == "climat" {
            // Idle longer than the keep-alive between readings: PINGREQ/PINGRESP show.
            p.keep_alive_s = 5;
            p.interval_s = p.interval_s.max(6);
        }
    }
    Ok((site, scale))
}

pub(super) fn features(site: &Site, profile: &str) -> Vec<String> {
    let Ok(p) = site.profile(profile) else {
        return vec![];
    };
    let mut f = vec![format!("QoS {}", p.qos)];
    if p.retain {
        f.push("retained readings".into());
    }
    if p.status_topic.is_some() {
        f.push("retained status topic + last will".into());
    }
    f.push(format!("keep-alive {} s", p.keep_alive_s));
    f.push(if p.clean_session {
        "clean session".into()
    } else {
        "persistent session".into()
    });
    f
}

/// The house's first `n` sensors: rooms and profiles in turn, links in `links`, chips' state
/// in `work/boards`.
pub(super) fn sensors(n: usize, links: &Path, work: &Path) -> Result<Vec<Sensor>> {
    ca::fsutil::private_dir(&work.join("boards"))?;
    Ok((0..n)
        .map(|i| {
            let (room, profile) = HOUSE[i % HOUSE.len()];
            let id = format!("{room}-{}", i / HOUSE.len() + 1);
            Sensor {
                link: links.join(format!("ttyUSB{i}")),
                state: work.join("boards").join(format!("{id}.chip")),
                id,
                room: room.into(),
                profile: profile.into(),
            }
        })
        .collect())
}

/// Each sensor's publishing interval (s, at least 1) in `site`.
pub(super) fn intervals(site: &Site, sensors: &[Sensor]) -> Vec<u32> {
    sensors
        .iter()
        .filter_map(|s| site.profile(&s.profile).ok().map(|p| p.interval_s.max(1)))
        .collect()
}
