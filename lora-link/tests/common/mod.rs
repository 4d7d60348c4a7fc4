//! Shared by the tests that run the real `lora-link rx`: an emulated air hub on an ephemeral
//! 127.0.0.1 port, the receiver started with its output read line by line, signals.

#![allow(dead_code)]

pub mod sender;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use lora_link::air::{AirHub, HubConfig, HubHandle};

pub const BIN: &str = env!("CARGO_BIN_EXE_lora-link");

/// An air hub with the default limits on an ephemeral loopback port.
pub fn hub() -> HubHandle {
    AirHub::bind("127.0.0.1:0".parse().expect("a"), HubConfig::default())
        .expect("bind")
        .spawn()
        .expect("spawn")
}

/// The lines of `r`, read on a thread of their own (so a test can wait with a deadline).
pub fn lines(r: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(r).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

/// A running `lora-link rx --metrics 127.0.0.1:0`: its stdout (records) and stderr (log)
/// lines, and where it serves its counters.
pub struct RxProcess {
    pub child: Child,
    pub stdout: Receiver<String>,
    pub stderr: Receiver<String>,
    pub metrics: SocketAddr,
}

/// Starts `lora-link rx` on `manifest` and returns once its first line has said where its
/// counters are served and its second what it accepts, the last before its receive loop
/// (within 20 s each; panics with the line otherwise). Its radio enters receive mode in that
/// loop, and a frame that starts before is missed: under heavy load the first frame sent
/// right after this returns can still be lost.
pub fn start_rx(manifest: &Path) -> RxProcess {
    let mut child = Command::new(BIN)
        .args(["rx", "--metrics", "127.0.0.1:0", "--manifest"])
        .arg(manifest)
        .env_remove("LORA_LINK_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rx");
    let stderr = lines(child.stderr.take().expect("stderr"));
    let stdout = lines(child.stdout.take().expect("stdout"));
    let line = stderr
        .recv_timeout(Duration::from_secs(20))
        .expect("rx says where its counters are");
    let metrics = line
        .strip_prefix("lora-link rx: counters on http://")
        .and_then(|l| l.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .parse()
        .expect("address");
    let line = stderr
        .recv_timeout(Duration::from_secs(20))
        .expect("rx says what it accepts");
    assert!(line.starts_with("lora-link rx: accepting "), "{line}");
    RxProcess {
        child,
        stdout,
        stderr,
        metrics,
    }
}

/// Sends `s` to `child`.
pub fn signal(child: &Child, s: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), s).expect("signal");
}

/// Sleeps until the wall clock (the air's, which `lora-link rx` compares `retire_at` with)
/// reaches `unix_s`.
pub fn sleep_until_unix(unix_s: u64) {
    while lora_link::air::now_us() < unix_s * 1_000_000 {
        std::thread::sleep(Duration::from_millis(100));
    }
}
