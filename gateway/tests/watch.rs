//! Watching the gateway while it runs: `--metrics` serves its counters in the Prometheus text
//! format on loopback only, and what was scraped last matches the counters line it prints at
//! shutdown.

#[path = "../../lora-link/tests/prom/mod.rs"]
mod prom;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_gateway");

/// A loadable gateway directory (openssl self-signed certificate as CA and client
/// certificate); the broker port is closed and the back-off long, so the counters stay put.
fn gateway_dir(d: &std::path::Path) -> std::path::PathBuf {
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .arg("-keyout")
        .arg(d.join("gw.key"))
        .args(["-subj", "/CN=passerelle", "-out"])
        .arg(d.join("gw.crt"))
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::copy(d.join("gw.crt"), d.join("ca.crt")).expect("ca");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let air = std::net::UdpSocket::bind("127.0.0.1:0").expect("air");
    let air = air.local_addr().expect("addr");
    let link = format!(
        "version = 1\nrole = \"gateway\"\nstate_dir = \"state\"\n[node]\nname = \"passerelle\"\naddress = 10\n[[peers]]\nname = \"recepteur\"\naddress = 1\n[key]\nfile = \"link.key\"\n[radio]\nbackend = \"emulated\"\n[air]\nhub = \"{air}\"\n"
    );
    std::fs::write(d.join("link.toml"), link).expect("link");
    std::fs::write(d.join("link.key"), "000102030405060708090a0b0c0d0e0f\n").expect("key");
    std::fs::create_dir_all(d.join("state")).expect("state");
    let p = d.join("gateway.toml");
    std::fs::write(
        &p,
        format!("version = 1\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"passerelle\"\nca_file = \"ca.crt\"\ncert_file = \"gw.crt\"\nkey_file = \"gw.key\"\nfilters = [\"maison/#\"]\nreconnect_min_ms = 600000\nreconnect_max_ms = 600000\n[link]\nmanifest = \"link.toml\"\n"),
    )
    .expect("write");
    for f in ["gw.key", "link.toml", "link.key", "gateway.toml"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    p
}

#[test]
fn the_metrics_endpoint_serves_the_counters_and_they_match_the_final_line() {
    let d = tempfile::tempdir().expect("tempdir");
    let manifest = gateway_dir(d.path());
    let mut child = Command::new(BIN)
        .args(["--metrics", "127.0.0.1:0", "--manifest"])
        .arg(&manifest)
        .env_remove("GATEWAY_MANIFEST")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let (tx, lines) = std::sync::mpsc::channel();
    let err = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let addr: std::net::SocketAddr = loop {
        let l = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no metrics line in {seen:#?}"));
        if let Some(a) = l
            .strip_prefix("gateway: counters on http://")
            .and_then(|a| a.strip_suffix("/metrics"))
        {
            break a.parse().expect("address");
        }
        seen.push(l);
    };
    // Until the first (failed) connection attempt is counted; the next one is 10 min away.
    let mut m = prom::scrape(addr);
    for _ in 0..100 {
        if prom::value(&m, "gateway_broker_connection_errors_total") > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        m = prom::scrape(addr);
    }
    assert_eq!(
        prom::value(&m, "gateway_broker_connection_errors_total"),
        1,
        "{m:#?}"
    );
    // 1 % of an hour at 868.1 MHz
    assert_eq!(m["gateway_duty_cycle_budget_left_seconds"], 36.0, "{m:#?}");
    assert_eq!(m["gateway_queue_depth"], 0.0);
    let last_scrape = prom::scrape(addr);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("kill");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let c: serde_json::Value = serde_json::from_str(&line).expect("counters line");
    for (series, key, scale) in [
        ("gateway_mqtt_messages_received_total", "received", 1.0),
        ("gateway_records_queued_total", "queued", 1.0),
        ("gateway_records_sent_total", "sent", 1.0),
        ("gateway_frames_sent_total", "frames_sent", 1.0),
        (
            "gateway_records_dropped_total{reason=\"queue_full\"}",
            "dropped_queue_full",
            1.0,
        ),
        (
            "gateway_records_dropped_total{reason=\"radio_error\"}",
            "dropped_radio_error",
            1.0,
        ),
        (
            "gateway_records_dropped_total{reason=\"shutdown\"}",
            "dropped_at_shutdown",
            1.0,
        ),
        (
            "gateway_records_rejected_total{reason=\"too_large\"}",
            "rejected_too_large",
            1.0,
        ),
        (
            "gateway_records_rejected_total{reason=\"invalid\"}",
            "rejected_invalid",
            1.0,
        ),
        ("gateway_queue_depth", "waiting", 1.0),
        ("gateway_bytes_on_air_total", "bytes_on_air", 1.0),
        ("gateway_airtime_seconds_total", "airtime_us", 1e6),
        (
            "gateway_duty_cycle_budget_left_seconds",
            "duty_cycle_left_us",
            1e6,
        ),
        ("gateway_radio_errors_total", "radio_errors", 1.0),
        ("gateway_broker_connections_total", "connections", 1.0),
        (
            "gateway_broker_connection_errors_total",
            "connection_errors",
            1.0,
        ),
    ] {
        let scraped = last_scrape
            .get(series)
            .unwrap_or_else(|| panic!("{series} not served: {last_scrape:#?}"));
        assert_eq!(
            Some((scraped * scale).round() as u64),
            c[key].as_u64(),
            "{series} vs {key}: {line}"
        );
    }
}

#[test]
fn a_non_loopback_metrics_address_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let manifest = gateway_dir(d.path());
    for addr in ["0.0.0.0:9102", "[::]:9102"] {
        let out = Command::new(BIN)
            .args(["--metrics", addr, "--manifest"])
            .arg(&manifest)
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{addr}: {err}");
        assert!(err.contains("not a loopback address"), "{addr}: {err}");
        assert!(out.stdout.is_empty(), "nothing started: {addr}");
    }
}
