//! A real PostgreSQL server for tests and benchmarks (Debian's `postgresql` package; the
//! binaries are looked up under `/usr/lib/postgresql/<version>/bin`, or in `PG_BIN`).
//!
//! [`PgServer::start`] runs `initdb` in a temporary directory (password authentication,
//! scram-sha-256, for a superuser `provisioner` with a random password) and then `postgres`
//! listening on 127.0.0.1 at an ephemeral port and on a unix socket inside the temporary
//! directory; nothing else can reach it. PostgreSQL refuses to run as root: when the tests
//! run as root, the server runs as `nobody` (its data directory is handed to that account).
//! Dropping the server stops it (fast shutdown) and removes everything.
//!
//! ```no_run
//! let pg = test_postgres::PgServer::start();
//! pg.create_database("ledger");
//! let url = pg.url("ledger"); // postgres://provisioner@127.0.0.1:PORT/ledger
//! let password_file = pg.password_file(); // 0600, for --ledger-password-file
//! ```
#![allow(clippy::unwrap_used)]

use std::hash::{BuildHasher, Hasher};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The superuser the server is created with.
pub const USER: &str = "provisioner";

/// How the server is set up.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keep PostgreSQL's durability (fsync, synchronous commit). Off by default: the tests
    /// kill clients, never the server, and a shared 2-core machine is slow enough. A
    /// benchmark compared with SQLite's `synchronous=FULL` turns it on.
    pub durable: bool,
    /// Serve TLS with this certificate chain and key (PEM files, copied into the server's
    /// directory).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running PostgreSQL server; stopped and removed on drop.
pub struct PgServer {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
    password: String,
}

/// The newest installed PostgreSQL's binaries.
fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("PG_BIN") {
        return PathBuf::from(d);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    found.sort();
    match found.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): install Debian's \
             `postgresql` package (scripts/test.sh does), or set PG_BIN"
        ),
    }
}

/// A random hex string (the standard library's per-process random hash keys).
fn random_hex() -> String {
    (0..2)
        .map(|i| {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(i);
            h.write_u128(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
            );
            format!("{:016x}", h.finish())
        })
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port on 127.0.0.1")
}

/// The account the server runs as: `nobody` when we are root, else ourselves.
fn server_account() -> Option<(u32, u32)> {
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let user = nix::unistd::User::from_name("nobody")
        .ok()
        .flatten()
        .expect("an account `nobody` to run PostgreSQL as (it refuses to run as root)");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn hand_over(path: &Path, account: Option<(u32, u32)>, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if let Some((uid, gid)) = account {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

fn as_account(cmd: &mut Command, account: Option<(u32, u32)>) -> &mut Command {
    if let Some((uid, gid)) = account {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGPASSWORD").stdin(Stdio::null())
}

impl PgServer {
    /// Starts a server with the default [`Options`]; panics with the server's log if it
    /// does not come up.
    pub fn start() -> PgServer {
        Self::start_with(&Options::default())
    }

    /// Starts a server set up as `opts` says.
    pub fn start_with(opts: &Options) -> PgServer {
        let bin = bin_dir();
        let account = server_account();
        let dir = tempfile::tempdir().expect("tempdir");
        // The server's account must reach its directories inside ours.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let sock = dir.path().join("socket");
        let setup = dir.path().join("setup");
        for d in [&data, &sock, &setup] {
            std::fs::create_dir(d).unwrap();
            hand_over(d, account, 0o700);
        }
        let password = random_hex();
        let pwfile = setup.join("pw");
        std::fs::write(&pwfile, format!("{password}\n")).unwrap();
        hand_over(&pwfile, account, 0o600);
        let out = as_account(&mut Command::new(bin.join("initdb")), account)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--no-sync",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_file(&pwfile).unwrap();
        let mut settings: Vec<String> = vec![
            "listen_addresses=127.0.0.1".into(),
            format!("unix_socket_directories={}", sock.display()),
            "max_connections=200".into(),
        ];
        if !opts.durable {
            settings.extend(
                [
                    "fsync=off",
                    "synchronous_commit=off",
                    "full_page_writes=off",
                ]
                .map(String::from),
            );
        }
        if let Some((cert, key)) = &opts.tls {
            let (c, k) = (setup.join("server.crt"), setup.join("server.key"));
            std::fs::copy(cert, &c).unwrap();
            std::fs::copy(key, &k).unwrap();
            hand_over(&c, account, 0o644);
            hand_over(&k, account, 0o600);
            settings.push("ssl=on".into());
            settings.push(format!("ssl_cert_file={}", c.display()));
            settings.push(format!("ssl_key_file={}", k.display()));
        }
        let log = dir.path().join("server.log");
        for _ in 0..3 {
            let port = free_port();
            let log_file = std::fs::File::create(&log).unwrap();
            let mut cmd = Command::new(bin.join("postgres"));
            as_account(&mut cmd, account)
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .args(settings.iter().flat_map(|s| ["-c", s.as_str()]))
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file);
            let mut child = cmd.spawn().expect("start postgres");
            if wait_ready(&mut child, &sock, port, &password) {
                let server = PgServer {
                    dir,
                    child,
                    port,
                    password,
                };
                server.write_password_file();
                return server;
            }
            stop(&mut child);
        }
        panic!(
            "PostgreSQL did not start:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn write_password_file(&self) {
        let path = self.password_file();
        std::fs::write(&path, format!("{}\n", self.password)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A superuser connection to `db` over the unix socket.
    pub fn client(&self, db: &str) -> Result<postgres::Client, postgres::Error> {
        connect(&self.socket_dir(), self.port, &self.password, db)
    }

    /// Creates a database.
    pub fn create_database(&self, name: &str) {
        let mut c = self.client("postgres").expect("connect to postgres");
        c.batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .expect("CREATE DATABASE");
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory holding the server's unix socket.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("socket")
    }

    /// `postgres://provisioner@127.0.0.1:PORT/DB` (no password: see [`Self::password_file`]).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// A file (0600, ours) holding the superuser's password.
    pub fn password_file(&self) -> PathBuf {
        self.dir.path().join("password")
    }

    /// The password itself (for a test of the environment variables).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn connect(
    sock: &Path,
    port: u16,
    password: &str,
    db: &str,
) -> Result<postgres::Client, postgres::Error> {
    postgres::Config::new()
        .host_path(sock)
        .port(port)
        .user(USER)
        .password(password)
        .dbname(db)
        .connect_timeout(Duration::from_secs(10))
        .connect(postgres::NoTls)
}

/// Waits (30 s at most) until the server answers a login; false if it exited or did not.
fn wait_ready(child: &mut Child, sock: &Path, port: u16, password: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok()
            && connect(sock, port, password, "postgres").is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Fast shutdown (SIGINT: clients disconnected, clean exit), SIGKILL after 10 s.
fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}
