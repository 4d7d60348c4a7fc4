//! Shared test fixtures: a provisioner home in a temporary directory, a real mosquitto on an
//! ephemeral loopback port, and openssl-made keys.
#![allow(dead_code, missing_docs)]

pub mod link;
pub mod stations;
#[allow(unused_imports)]
pub use stations::*;

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
    /// Extra environment for every command (e.g. a SoftHSM2 token's configuration and PIN).
    pub env: Vec<(String, String)>,
}

impl Home {
    pub fn new() -> Self {
        Home {
            dir: tempfile::tempdir().expect("tempdir"),
            env: Vec::new(),
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
            .env_remove("PROVISIONER_LEDGER_PASSWORD")
            .env_remove("PGPASSWORD")
            .current_dir(self.work())
            .stdin(Stdio::null());
        c.envs(self.env.iter().map(|(k, v)| (k, v)));
        c
    }
    /// Runs with the provisioner's clock at `t` (Unix seconds; `PROVISIONER_FAKE_NOW`, debug
    /// builds) and returns the output, whatever the status.
    pub fn at(&self, t: i64, args: &[&str]) -> Output {
        self.cmd(args)
            .env("PROVISIONER_FAKE_NOW", t.to_string())
            .output()
            .expect("run provisioner")
    }
    /// Runs at `t` and asserts success; returns stdout.
    pub fn ok_at(&self, t: i64, args: &[&str]) -> String {
        let out = self.at(t, args);
        assert!(
            out.status.success(),
            "provisioner {args:?} at {t}: {}",
            output_text(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
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
    /// `device provision --lock` of `board` as `id` with the site profile `profile`.
    pub fn provision_locked(&self, board: &SimBoard, id: &str, profile: &str) -> String {
        let port = board.port();
        let mut args = vec!["device", "provision", "--port", &port, "--id", id];
        args.extend(["--profile", profile, "--lock"]);
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

/// The extensions `exts` (comma-separated openssl names) of the PEM certificate `cert`, as
/// `openssl x509 -ext` prints them.
pub fn openssl_ext(cert: &Path, exts: &str) -> String {
    openssl_ok(&[
        "x509",
        "-in",
        &cert.to_string_lossy(),
        "-noout",
        "-ext",
        exts,
    ])
}

/// openssl makes a P-256 key `NAME.key` and a CSR `NAME.csr` for `subject` in `dir`, with
/// `extra` request flags (e.g. `-addext subjectAltName=...`).
pub fn openssl_csr(dir: &Path, name: &str, subject: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let (k, c) = (key.to_string_lossy(), csr.to_string_lossy());
    let mut args = vec!["req", "-new", "-newkey", "ec", "-pkeyopt"];
    args.extend(["ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &k]);
    args.extend(["-subj", subject, "-out", &c]);
    args.extend_from_slice(extra);
    openssl_ok(&args);
    (key, csr)
}

pub fn openssl_client(dir: &Path, cn: &str) -> Client {
    let (key, csr) = openssl_csr(dir, cn, &format!("/CN={cn}"), &[]);
    let crt = dir.join(format!("{cn}.crt"));
    Client { key, csr, crt }
}

/// Now on the real clock, Unix seconds.
pub fn real_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Status, stdout and stderr of a run, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
    publish_with(port, cafile, c, &["-t", topic, "-m", msg])
}

/// mosquitto_pub with a client certificate, QoS 1, and `args` (topic, message, -r, -f FILE).
pub fn publish_with(port: u16, cafile: &Path, c: &Client, args: &[&str]) -> Output {
    require("mosquitto_pub");
    Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(args)
        .arg("--cafile")
        .arg(cafile)
        .arg("--cert")
        .arg(&c.crt)
        .arg("--key")
        .arg(&c.key)
        .output()
        .expect("mosquitto_pub")
}

/// mosquitto_sub on `filter` with a client certificate, QoS 1, printing payloads; add flags
/// and spawn.
pub fn mosquitto_sub(port: u16, cafile: &Path, c: &Client, filter: &str) -> Command {
    require("mosquitto_sub");
    let mut cmd = Command::new("mosquitto_sub");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-q",
        "1",
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
    .stderr(Stdio::piped());
    cmd
}

/// Starts mosquitto_sub for one message on `filter`, with a timeout in seconds.
pub fn subscribe_one(port: u16, cafile: &Path, c: &Client, filter: &str, timeout_s: u32) -> Child {
    mosquitto_sub(port, cafile, c, filter)
        .args(["-C", "1", "-v", "-W", &timeout_s.to_string()])
        .spawn()
        .expect("mosquitto_sub")
}

/// The first message on `filter` within `timeout_s` (`topic payload`), or what
/// mosquitto_sub printed by then (nothing).
pub fn first_message(port: u16, cafile: &Path, c: &Client, filter: &str, timeout_s: u32) -> String {
    use std::io::Read;
    let mut sub = subscribe_one(port, cafile, c, filter, timeout_s);
    let _ = sub.wait();
    let mut got = String::new();
    if let Some(mut out) = sub.stdout.take() {
        let _ = out.read_to_string(&mut got);
    }
    got
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

/// A binary of another crate of the workspace, built next to `provisioner` (`cargo test
/// --workspace` builds them; alone: `cargo build -p gateway -p lora-link`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_provisioner")).with_file_name(name);
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build -p gateway -p lora-link` (or `cargo test --workspace`) first",
        p.display()
    );
    p
}

/// The root filesystem of a "Pi" in a temporary directory, whose broker directory this
/// machine reaches at the very path the Pi names it by. Each component of the root's own
/// path (`/tmp/.tmpX/pi1`) is planted in the root as a link to the Pi's `/`, so the Pi
/// resolves ROOT/etc/mosquitto/site (an absolute path of this machine) to its own
/// /etc/mosquitto/site, the same directory: mosquitto started here runs the deployed
/// configuration as it is, and `deploy broker --root` and the agent (`--root`) resolve every
/// path inside the root as they would on the Pi.
pub struct PiRoot {
    /// The root filesystem.
    pub root: PathBuf,
    /// The broker directory, as the Pi and this machine both name it.
    pub prefix: PathBuf,
}

impl PiRoot {
    pub fn new(dir: &Path, name: &str) -> PiRoot {
        let root = dir.join(name);
        std::fs::create_dir_all(&root).expect("pi root");
        let root = root.canonicalize().expect("canonical root");
        for c in root.components() {
            if let std::path::Component::Normal(n) = c {
                let link = root.join(n);
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink("/", &link).expect("plant link");
                }
            }
        }
        let prefix = root.join("etc/mosquitto/site");
        PiRoot { root, prefix }
    }
    /// A path of the Pi, as this machine reaches it.
    pub fn path(&self, pi_path: &str) -> PathBuf {
        self.root.join(pi_path.trim_start_matches('/'))
    }
}

/// The test site plus `coffre`, a compressible profile (issue 19): two-year certificates,
/// 8-character device ids, Trust&GO's slots, its chip profile `tls-device-atcacert`.
pub fn compressible_site_text(port: u16) -> String {
    let mut s = site_text(port).replace("crl_days = 30", "crl_days = 30\nsigner_id = \"00A1\"");
    s.push_str(COFFRE_PROFILE);
    s
}

/// The compressible profile of [`compressible_site_text`].
pub const COFFRE_PROFILE: &str = r#"
[profiles.coffre]
description = "identity in the chip: Microchip compressed certificates"
chip = "tls-device-atcacert"
cert_days = 730
readings = [{ topic = "{root}/{room}/temperature", quantity = "temperature" }]
qos = 1
interval_s = 1
[profiles.coffre.compressed]
id_length = 8
template_id = 2
chain_id = 0
"#;

/// Cryptoauthlib's source distribution (the package the conformance test installs),
/// downloaded and unpacked once: the directory holding `lib/atcacert/atcacert_def.h`.
pub fn cryptoauthlib_sources() -> PathBuf {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../firmware/tests/cryptoauthlib/sdist.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .expect("sdist.sh");
    assert!(
        out.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or("")
            .trim(),
    )
}

/// SoftHSM2's PKCS#11 module as Debian's `softhsm2` package installs it.
pub const SOFTHSM_MODULE: &str = test_softhsm::MODULE;
/// The user PIN of test tokens.
pub const TOKEN_PIN: &str = "246810";

/// A SoftHSM2 token store in a temporary directory, with one initialised token.
pub struct SoftHsm {
    hsm: test_softhsm::SoftHsm,
    pub conf: PathBuf,
    pub label: String,
}

impl SoftHsm {
    /// A fresh store holding the token `label` (user PIN [`TOKEN_PIN`]); `None`, saying so
    /// on stderr, when softhsm2 is not installed (scripts/test.sh installs it).
    pub fn new(label: &str) -> Option<SoftHsm> {
        if !test_softhsm::SoftHsm::available() {
            eprintln!(
                "SKIPPED: softhsm2 is not installed ({SOFTHSM_MODULE}); scripts/test.sh installs it"
            );
            return None;
        }
        let hsm = test_softhsm::SoftHsm::new(label, TOKEN_PIN, "97531864").expect("token");
        Some(SoftHsm {
            conf: hsm.conf().to_path_buf(),
            label: label.to_string(),
            hsm,
        })
    }

    /// The store's directory.
    pub fn dir(&self) -> &Path {
        self.hsm.dir()
    }

    /// The environment a command needs to reach the token, with `pin`.
    pub fn env(&self, pin: &str) -> Vec<(String, String)> {
        self.hsm.env(pin)
    }

    /// `init` flags that put the CA key into this token through `module`.
    pub fn init_args(&self, module: &str) -> Vec<String> {
        [
            "--key-store",
            "pkcs11",
            "--pkcs11-module",
            module,
            "--pkcs11-token",
            &self.label,
        ]
        .map(String::from)
        .to_vec()
    }

    /// Runs OpenSC's `pkcs11-tool` logged in to the token (a test PIN in argv is fine here).
    pub fn tool(&self, args: &[&str]) -> Output {
        require("pkcs11-tool");
        Command::new("pkcs11-tool")
            .args([
                "--module",
                SOFTHSM_MODULE,
                "--token-label",
                &self.label,
                "--login",
                "--pin",
                TOKEN_PIN,
            ])
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("pkcs11-tool")
    }

    /// `pkcs11-tool --list-objects --type privkey`: what the token says of its private keys.
    pub fn private_keys(&self) -> String {
        let o = self.tool(&["--list-objects", "--type", "privkey"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

/// A home whose ledger is the PostgreSQL database `db` of `pg` (password from the server's
/// 0600 file), with the test site for a broker on `port`: a new CA there. Stations joining
/// it: see [`stations`].
pub fn pg_station(pg: &test_postgres::PgServer, db: &str, port: u16) -> Home {
    let home = Home::new();
    let site = home.work().join("site.toml");
    std::fs::write(&site, site_text(port)).expect("site");
    home.ok(&pg_init_args(pg, db, &site)
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    home
}

/// `init --site SITE --ledger URL --ledger-password-file FILE` for `db` of `pg`.
pub fn pg_init_args(pg: &test_postgres::PgServer, db: &str, site: &Path) -> Vec<String> {
    vec![
        "init".into(),
        "--site".into(),
        site.to_string_lossy().into_owned(),
        "--ledger".into(),
        pg.url(db),
        "--ledger-password-file".into(),
        pg.password_file().to_string_lossy().into_owned(),
    ]
}

/// `device provision --port PORT --id ID --profile PROFILE --lock`: one board, locked.
pub fn provision_locked<'a>(port: &'a str, id: &'a str, profile: &'a str) -> [&'a str; 9] {
    [
        "device",
        "provision",
        "--port",
        port,
        "--id",
        id,
        "--profile",
        profile,
        "--lock",
    ]
}
