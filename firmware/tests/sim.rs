//! `sensor-sim` as a host sees it: a serial port appears at the link path, speaks the kit
//! protocol and the `fw` target at the configured baud rate, keeps its store across restarts
//! and kills, and goes away cleanly.
#![cfg(feature = "sim")]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use firmware::crc::crc32;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};

struct Sim {
    child: Child,
    link: PathBuf,
}

impl Sim {
    fn start(dir: &Path, extra: &[&str]) -> Sim {
        let link = dir.join("tty");
        // A killed board leaves its link behind, pointing at a pty number the kernel may
        // already have given to another test's board: wait for this board's own link.
        let _ = std::fs::remove_file(&link);
        let child = Command::new(env!("CARGO_BIN_EXE_sensor-sim"))
            .arg("--link")
            .arg(&link)
            .arg("--state")
            .arg(dir.join("chip.state"))
            .args(extra)
            .stderr(if std::env::var_os("SIM_STDERR").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn sensor-sim");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            assert!(
                Instant::now() < deadline,
                "no serial port at {}",
                link.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Sim { child, link }
    }

    fn port(&self) -> Port {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(nix::libc::O_NOCTTY)
            .open(&self.link)
            .expect("open port");
        let mut t = tcgetattr(f.as_fd()).expect("tcgetattr");
        cfmakeraw(&mut t);
        tcsetattr(f.as_fd(), SetArg::TCSANOW, &t).expect("raw");
        Port { f }
    }

    fn signal(&mut self, sig: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).expect("pid"));
        let _ = nix::sys::signal::kill(pid, sig);
        let _ = self.child.wait();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Port {
    f: File,
}

impl Port {
    fn send(&mut self, line: &str) {
        self.f
            .write_all(format!("{line}\n").as_bytes())
            .expect("write");
    }

    fn read_line(&mut self) -> String {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut b = [0u8; 1];
        while out.last() != Some(&b'\n') {
            assert!(
                Instant::now() < deadline,
                "no reply; got {:?}",
                String::from_utf8_lossy(&out)
            );
            let mut fds = [PollFd::new(self.f.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, PollTimeout::from(100u16)).expect("poll") > 0
                && self.f.read(&mut b).expect("read") == 1
            {
                out.push(b[0]);
            }
        }
        String::from_utf8(out).expect("ascii")
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(line);
        self.read_line()
    }

    fn put(&mut self, name: &str, data: &[u8]) {
        for (i, c) in data.chunks(256).enumerate() {
            let r = self.cmd(&format!(
                "fw:put({name},{},{})",
                i * 256,
                hex::encode_upper(c)
            ));
            assert!(r.starts_with("00("), "{r}");
        }
        let r = self.cmd(&format!(
            "fw:commit({name},{},{:08X})",
            data.len(),
            crc32(data)
        ));
        assert_eq!(r, "00()\n");
    }

    fn get(&mut self, name: &str) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let r = self.cmd(&format!("fw:get({name},{},256)", out.len()));
            let inner = r.strip_prefix("00(")?.strip_suffix(")\n")?;
            if inner.is_empty() {
                return Some(out);
            }
            out.extend(hex::decode(inner).ok()?);
        }
    }
}

#[test]
fn pty_round_trip_kit_and_store_survive_a_restart_and_the_link_goes_away() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut sim = Sim::start(dir.path(), &["--baud", "0"]);
    let mut port = sim.port();
    assert_eq!(port.cmd("board:device(00)"), "ECC508A TWI C0(C0)\n");
    assert_eq!(port.cmd("E:physical:select(C0)"), "00()\n");
    assert_eq!(port.cmd("E:w()"), "00(04113343)\n");
    // Info (revision) from the emulated chip: 07 00 00 50 00 CRC
    let info = port.cmd("E:t(0730000000035D)");
    assert!(info.starts_with("00(0700005000"), "{info}");
    assert_eq!(port.cmd("E:i()"), "00()\n");
    assert!(port.cmd("E:t(07300000000)").starts_with("E2("));
    let cert = b"-----BEGIN CERTIFICATE-----\nnot really\n-----END CERTIFICATE-----\n".repeat(12);
    port.put("device.crt", &cert);
    assert_eq!(port.get("device.crt").as_deref(), Some(&cert[..]));
    drop(port);
    sim.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        !sim.link.exists() && sim.link.symlink_metadata().is_err(),
        "link removed on exit"
    );
    // The store persists next to the chip state.
    let sim = Sim::start(dir.path(), &["--baud", "0"]);
    let mut port = sim.port();
    assert_eq!(port.get("device.crt").as_deref(), Some(&cert[..]));
    let list = port.cmd("fw:list()");
    assert_eq!(
        list,
        format!(
            "00({})\n",
            hex::encode_upper(format!("device.crt:{}", cert.len()))
        )
    );
}

#[test]
fn moving_a_2_kib_blob_at_115200_baud_takes_at_least_its_wire_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &["--baud", "115200"]);
    let mut port = sim.port();
    let blob: Vec<u8> = (0..2048u32).map(|i| (i * 7) as u8).collect();
    let start = Instant::now();
    port.put("blob.bin", &blob);
    let up = start.elapsed();
    let start = Instant::now();
    assert_eq!(port.get("blob.bin").as_deref(), Some(&blob[..]));
    let down = start.elapsed();
    // Each byte travels as two hex digits: 4096 characters each way at least.
    let floor = Duration::from_nanos(firmware::pacing::wire_time_ns(2 * 2048, 115_200));
    eprintln!("2 KiB put {up:?}, get {down:?}, wire floor {floor:?}");
    assert!(up >= floor, "put {up:?} < {floor:?}");
    assert!(down >= floor, "get {down:?} < {floor:?}");
    assert!(up < floor * 10, "pacing far slower than the wire: {up:?}");
}

#[test]
fn a_put_killed_at_any_moment_leaves_the_old_or_the_new_blob() {
    let dir = tempfile::tempdir().expect("tempdir");
    let old = vec![b'o'; 1500];
    let new = vec![b'n'; 1700];
    {
        let sim = Sim::start(dir.path(), &["--baud", "0"]);
        sim.port().put("device.toml", &old);
    }
    let (mut saw_old, mut saw_new) = (0, 0);
    for round in 0..8u64 {
        let mut sim = Sim::start(dir.path(), &["--baud", "0"]);
        let mut port = sim.port();
        for (i, c) in new.chunks(256).enumerate() {
            assert!(
                port.cmd(&format!(
                    "fw:put(device.toml,{},{})",
                    i * 256,
                    hex::encode_upper(c)
                ))
                .starts_with("00(")
            );
        }
        port.send(&format!(
            "fw:commit(device.toml,{},{:08X})",
            new.len(),
            crc32(&new)
        ));
        std::thread::sleep(Duration::from_micros(round * 400));
        sim.signal(nix::sys::signal::Signal::SIGKILL);
        drop(port);
        let sim = Sim::start(dir.path(), &["--baud", "0"]);
        let got = sim.port().get("device.toml").expect("blob present");
        if got == old {
            saw_old += 1;
        } else if got == new {
            saw_new += 1;
            // put the old one back for the next round
            sim.port().put("device.toml", &old);
        } else {
            panic!("round {round}: a mix of {} bytes", got.len());
        }
    }
    eprintln!("after kills: old {saw_old}, new {saw_new}");
}

#[test]
fn mongoose_protocol_answers_the_ready_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sim = Sim::start(dir.path(), &["--protocol", "mos", "--baud", "0"]);
    let mut port = sim.port().f;
    port.write_all(b"\"\"\"\x04\"\"\"\n").expect("write");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while !got.windows(5).any(|w| w == b"\"\"\"\x04\"") && Instant::now() < deadline {
        let mut fds = [PollFd::new(port.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(50u16)).expect("poll") > 0 {
            let n = port.read(&mut buf).expect("read");
            got.extend_from_slice(&buf[..n]);
        }
    }
    assert!(
        got.windows(5).any(|w| w == b"\"\"\"\x04\""),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn chip_state_and_store_files_are_0600_after_a_write_under_umask_022() {
    use nix::sys::stat::{Mode, umask};
    let dir = tempfile::tempdir().expect("tempdir");
    // The board inherits the umask at spawn: 022, as in a login shell.
    let old = umask(Mode::from_bits_truncate(0o022));
    let sim = Sim::start(dir.path(), &["--baud", "0"]);
    umask(old);
    let mut port = sim.port();
    port.put("device.crt", b"a certificate, say");
    let state = dir.path().join("chip.state");
    let store = dir.path().join("chip.state.store");
    assert_eq!(mode_of(&state), 0o600, "chip state (keys in clear)");
    assert_eq!(mode_of(&store), 0o600, "board store");
    // A second write replaces the file: still 0600, no temporary left behind.
    port.put("device.key", b"more");
    assert_eq!(mode_of(&store), 0o600);
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .filter(|n| n != "tty")
        .collect();
    names.sort();
    assert_eq!(names, ["chip.state", "chip.state.store"]);
}

#[test]
fn a_store_file_readable_by_others_is_tightened_and_a_fifo_store_stops_the_board() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let sim = Sim::start(dir.path(), &["--baud", "0"]);
        sim.port().put("device.crt", b"kept");
    }
    let store = dir.path().join("chip.state.store");
    let state = dir.path().join("chip.state");
    for p in [&store, &state] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    {
        let sim = Sim::start(dir.path(), &["--baud", "0"]);
        let mut port = sim.port();
        assert_eq!(port.get("device.crt").as_deref(), Some(&b"kept"[..]));
        assert_eq!(mode_of(&store), 0o600, "store tightened on load");
        assert_eq!(mode_of(&state), 0o600, "chip state tightened on load");
    }
    // A FIFO where the store belongs: a clear error at once, no hang, exit 1.
    std::fs::remove_file(&store).expect("rm");
    nix::unistd::mkfifo(&store, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sensor-sim"))
        .arg("--link")
        .arg(dir.path().join("tty"))
        .arg("--state")
        .arg(&state)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sensor-sim hung on a FIFO store");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("chip.state.store") && err.contains("FIFO"),
        "{err}"
    );
    use std::os::unix::fs::FileTypeExt;
    let kind = std::fs::symlink_metadata(&store).expect("stat").file_type();
    assert!(kind.is_fifo(), "the FIFO is left alone");
}
