//! Shared test fixtures: a provisioner home in a temporary directory, a real mosquitto on an
//! ephemeral loopback port, and openssl-made keys.
#![allow(dead_code, missing_docs)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSPHRASE: &str = "correct horse battery staple";

/// Panics with a clear message when a required program is missing: these tests use the
/// real programs and must not pass silently without them.
pub fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(program).is_file();
    assert!(
        found,
        "`{program}` is not installed: run the README's test command (it installs mosquitto, mosquitto-clients, openssl)"
    );
}

pub struct Home {
    pub dir: tempfile::TempDir,
}

impl Home {
    pub fn new() -> Self {
        Home {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("home")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_provisioner"));
        c.args(args)
            .env("PROVISIONER_HOME", self.path())
            .env("PROVISIONER_PASSPHRASE", PASSPHRASE)
            .env_remove("PROVISIONER_CRASH_AT")
            .env_remove("PROVISIONER_FAKE_NOW")
            .current_dir(self.work())
            .stdin(Stdio::null());
        c
    }
    /// Runs and returns the output, whatever the status.
    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run provisioner")
    }
    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "provisioner {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    /// Runs with `--json` and parses stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = vec!["--json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).expect("json output")
    }
    /// A home with a CA and a broker certificate for localhost / 127.0.0.1.
    pub fn with_broker() -> Self {
        let h = Home::new();
        h.ok(&["init"]);
        h.ok(&["server", "issue", "--dns", "localhost", "--ip", "127.0.0.1"]);
        h
    }
    /// openssl makes a P-256 key and CSR for `cn`; the CA signs it with `extra` flags.
    pub fn client(&self, cn: &str, extra: &[&str]) -> Client {
        let c = openssl_client(&self.work(), cn);
        let csr = c.csr.to_string_lossy().into_owned();
        let crt = c.crt.to_string_lossy().into_owned();
        let mut args = vec![
            "cert",
            "sign",
            "--csr",
            csr.as_str(),
            "--profile",
            "client",
            "--out",
            crt.as_str(),
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
        c
    }
    /// `emit broker` into `out`, bound to 127.0.0.1 (and `port` if given), run as root, with
    /// `extra` flags; returns stdout.
    pub fn emit_broker(&self, out: &Path, port: Option<u16>, extra: &[&str]) -> String {
        let out = out.to_string_lossy().into_owned();
        let port = port.map(|p| p.to_string());
        let mut args = vec!["emit", "broker", "--out", out.as_str()];
        if let Some(p) = &port {
            args.extend(["--port", p.as_str()]);
        }
        args.extend(["--bind", "127.0.0.1", "--run-as", "root"]);
        args.extend_from_slice(extra);
        self.ok(&args)
    }
    /// Every file under the home, relative.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(&self.path(), &self.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(
                    p.strip_prefix(root)
                        .unwrap_or(&p)
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
}

pub struct Client {
    pub key: PathBuf,
    pub csr: PathBuf,
    pub crt: PathBuf,
}

pub fn openssl(args: &[&str]) -> Output {
    require("openssl");
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl")
}

pub fn openssl_ok(args: &[&str]) -> String {
    let out = openssl(args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn openssl_client(dir: &Path, cn: &str) -> Client {
    let key = dir.join(format!("{cn}.key"));
    let csr = dir.join(format!("{cn}.csr"));
    let crt = dir.join(format!("{cn}.crt"));
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &key.to_string_lossy(),
        "-subj",
        &format!("/CN={cn}"),
        "-out",
        &csr.to_string_lossy(),
    ]);
    Client { key, csr, crt }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A real mosquitto running the emitted configuration; killed on drop.
pub struct Mosquitto {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Mosquitto {
    pub fn start(conf: &Path, port: u16, log: &Path) -> Self {
        require("mosquitto");
        let log_file = std::fs::File::create(log).expect("log");
        let bin = if Path::new("/usr/sbin/mosquitto").exists() {
            "/usr/sbin/mosquitto"
        } else {
            "mosquitto"
        };
        let child = Command::new(bin)
            .arg("-c")
            .arg(conf)
            .stdout(log_file.try_clone().expect("log"))
            .stderr(log_file)
            .spawn()
            .expect("start mosquitto");
        let m = Mosquitto {
            child,
            port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}:\n{}",
                m.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    pub fn reload(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .expect("SIGHUP");
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// mosquitto_pub with a client certificate, QoS 1 (so success means the broker took it).
pub fn publish(port: u16, cafile: &Path, c: &Client, topic: &str, msg: &str) -> Output {
    require("mosquitto_pub");
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-t",
            topic,
            "-m",
            msg,
        ])
        .arg("--cafile")
        .arg(cafile)
        .arg("--cert")
        .arg(&c.crt)
        .arg("--key")
        .arg(&c.key)
        .output()
        .expect("mosquitto_pub")
}

/// Starts mosquitto_sub for one message on `filter`, with a timeout in seconds.
pub fn subscribe_one(port: u16, cafile: &Path, c: &Client, filter: &str, timeout_s: u32) -> Child {
    require("mosquitto_sub");
    Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-C",
            "1",
            "-v",
            "-W",
            &timeout_s.to_string(),
            "-t",
            filter,
        ])
        .arg("--cafile")
        .arg(cafile)
        .arg("--cert")
        .arg(&c.crt)
        .arg("--key")
        .arg(&c.key)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub")
}

/// A simulated board (`provisioner sim-board`) on a pty linked at `link`; killed on drop.
pub struct SimBoard {
    pub child: Child,
    pub link: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
}

impl SimBoard {
    pub fn start(dir: &Path, name: &str, baud: u32, trace: bool) -> SimBoard {
        Self::start_with(dir, name, baud, trace, &[])
    }

    pub fn start_with(dir: &Path, name: &str, baud: u32, trace: bool, extra: &[&str]) -> SimBoard {
        Self::start_env(dir, name, baud, trace, extra, &[])
    }

    /// A board with test hooks in its environment (`SENSOR_SIM_*`); its log is appended to,
    /// so a board restarted on the same state keeps the earlier lines.
    pub fn start_env(
        dir: &Path,
        name: &str,
        baud: u32,
        trace: bool,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> SimBoard {
        let link = dir.join(format!("{name}.tty"));
        let state = dir.join(format!("{name}.chip"));
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log");
        // A board killed earlier leaves its link behind, pointing at a pty number the kernel
        // may have given to another test's board: wait for this board's own link.
        let _ = std::fs::remove_file(&link);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_provisioner"));
        cmd.args([
            "sim-board",
            "--link",
            &link.to_string_lossy(),
            "--state",
            &state.to_string_lossy(),
            "--baud",
            &baud.to_string(),
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file);
        if trace {
            cmd.env("SENSOR_SIM_TRACE", "1");
        }
        let child = cmd.spawn().expect("sim-board");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !link.exists() {
            assert!(Instant::now() < deadline, "board {name} did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        SimBoard {
            child,
            link,
            state,
            log,
        }
    }
    pub fn port(&self) -> String {
        self.link.to_string_lossy().into_owned()
    }
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Stops the board and opens its chip state with the emulator.
    pub fn stop_and_open_chip(mut self) -> atecc::emulator::Chip {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        atecc::emulator::Chip::open(&self.state).expect("chip state")
    }
}

impl Drop for SimBoard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A site for tests: the example house with the broker on 127.0.0.1:`port`, readings every
/// second, and a profile whose key is injected from the host.
pub fn site_text(port: u16) -> String {
    let mut s = manifests::site::EXAMPLE_SMART_HOME
        .replace(
            "dns = [\"broker.maison.lan\", \"raspberrypi.local\"]",
            "dns = [\"localhost\"]\nconnect = \"127.0.0.1\"",
        )
        .replace("ip = [\"192.168.1.10\"]", "ip = [\"127.0.0.1\"]")
        .replace("port = 8883", &format!("port = {port}"))
        .replace("interval_s = 30", "interval_s = 1")
        .replace("interval_s = 60", "interval_s = 1")
        .replace("interval_s = 10", "interval_s = 1");
    s.push_str(
        r#"
[profiles.hostkey]
description = "key generated on the host, injected with an encrypted PrivWrite"
key_slot = 2
write_key_slot = 4
key_source = "host"
readings = [{ topic = "{root}/{room}/temperature", quantity = "temperature" }]
qos = 1
interval_s = 1
"#,
    );
    s
}

pub fn home_with_site(port: u16) -> Home {
    let home = Home::new();
    let site = home.work().join("site.toml");
    std::fs::write(&site, site_text(port)).expect("site");
    home.ok(&["init", "--site", &site.to_string_lossy()]);
    home.ok(&["server", "issue"]);
    home
}
