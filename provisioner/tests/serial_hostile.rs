//! Hostile boards on the bench: a board that streams without end, one that never answers, a
//! port another program holds locked, a board whose text carries terminal escapes. Each ends
//! in a clear error naming its port within seconds, and a good board beside it in the same
//! command is provisioned and reported.

mod common;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use nix::fcntl::{FcntlArg, Flock, FlockArg, OFlag, fcntl};

/// What the issue asks: every hostile board ends well within this.
const LIMIT: Duration = Duration::from_secs(30);

/// A pty in raw mode, its slave linked at `dir/name.tty`.
struct Pty {
    master: OwnedFd,
    /// Held so that the master side stays usable while the provisioner opens and closes.
    _slave: OwnedFd,
    link: PathBuf,
}

fn pty(dir: &Path, name: &str) -> Pty {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let mut t = nix::sys::termios::tcgetattr(pty.slave.as_fd()).expect("tcgetattr");
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(pty.slave.as_fd(), nix::sys::termios::SetArg::TCSANOW, &t)
        .expect("raw");
    let path = nix::unistd::ttyname(&pty.slave).expect("ttyname");
    let link = dir.join(format!("{name}.tty"));
    std::os::unix::fs::symlink(&path, &link).expect("symlink");
    Pty {
        master: pty.master,
        _slave: pty.slave,
        link,
    }
}

impl Pty {
    fn port(&self) -> String {
        self.link.to_string_lossy().into_owned()
    }
}

/// A board thread on a pty master: writes `payload` over and over (if any), reads and
/// throws away what the host sends, never answers; ends when `stop` is set.
fn hostile(master: OwnedFd, payload: Vec<u8>, stop: Arc<AtomicBool>) -> JoinHandle<u64> {
    fcntl(master.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).expect("nonblocking");
    let mut f = File::from(master);
    std::thread::spawn(move || {
        let mut sent = 0u64;
        let mut buf = [0u8; 4096];
        while !stop.load(Ordering::Relaxed) {
            let mut busy = false;
            if !payload.is_empty()
                && let Ok(n) = f.write(&payload)
            {
                sent += n as u64;
                busy = true;
            }
            if f.read(&mut buf).is_ok_and(|n| n > 0) {
                busy = true;
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        sent
    })
}

/// `device provision` of the `bad` ports and the good board last, ids salon-1, salon-2, ...
fn provision_beside(
    home: &Home,
    bad: &[String],
    good: &SimBoard,
) -> (std::process::Output, Duration) {
    let mut args = vec!["--json".to_string(), "device".into(), "provision".into()];
    for p in bad.iter().cloned().chain([good.port()]) {
        args.push("--port".into());
        args.push(p);
    }
    args.extend(["--id", "salon-{n}", "--profile", "climat", "--lock"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let t = Instant::now();
    let out = home.run(&argv);
    (out, t.elapsed())
}

/// Checks the report: exit 1, every bad port failed with an error naming it in under
/// [`LIMIT`], the good board provisioned; returns the bad boards' errors.
fn check_report(
    out: &std::process::Output,
    elapsed: Duration,
    bad: &[String],
    good: &SimBoard,
) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(elapsed < LIMIT, "took {elapsed:?}\n{stdout}{stderr}");
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let total = bad.len() + 1;
    assert!(
        stderr.contains(&format!("{} of {total} board(s) failed", bad.len())),
        "{stderr}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: the report is printed\n{stdout}{stderr}"));
    let boards = v["boards"].as_array().expect("boards");
    assert_eq!(boards.len(), total, "every board is reported: {v:#}");
    let mut errors = Vec::new();
    for port in bad {
        let b = boards
            .iter()
            .find(|b| b["port"] == port.as_str())
            .unwrap_or_else(|| panic!("{port} is reported: {v:#}"));
        assert_eq!(b["ok"], false, "{b:#}");
        let error = b["error"].as_str().expect("error").to_string();
        assert!(
            error.contains(port.as_str()),
            "the error names {port}: {error}"
        );
        let ms = b["ms"].as_u64().expect("ms");
        assert!(ms < LIMIT.as_millis() as u64, "{port}: {ms} ms");
        eprintln!("{port}: failed in {ms} ms: {error}");
        errors.push(error);
    }
    let g = boards
        .iter()
        .find(|b| b["port"] == good.port().as_str())
        .expect("the good board is reported");
    assert_eq!(g["ok"], true, "{g:#}");
    assert_eq!(g["result"]["status"], "provisioned", "{g:#}");
    assert_eq!(g["result"]["id"], format!("salon-{total}"), "{g:#}");
    errors
}

#[test]
fn boards_that_stream_without_end_fail_fast_and_the_good_board_beside_them_is_provisioned() {
    let home = home_with_site(free_port());
    let good = SimBoard::start(&home.work(), "good", 115_200, false);
    let stop = Arc::new(AtomicBool::new(false));
    // Bytes without a newline (with terminal escapes in them), lines that are no reply, and
    // replies that look valid, all without end.
    let payloads: [&[u8]; 3] = [
        b"\x1b]0;pwned\x07\x1b[2J AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        b"[boot] wifi: connecting...\r\n",
        b"ATECC508A(00)\n00(04113343)\n00()\n",
    ];
    let mut ptys = Vec::new();
    let mut threads = Vec::new();
    for (i, payload) in payloads.iter().enumerate() {
        let p = pty(&home.work(), &format!("stream{i}"));
        let master = p.master.try_clone().expect("dup");
        threads.push(hostile(master, payload.to_vec(), stop.clone()));
        ptys.push(p);
    }
    let bad: Vec<String> = ptys.iter().map(Pty::port).collect();
    let (out, elapsed) = provision_beside(&home, &bad, &good);
    stop.store(true, Ordering::Relaxed);
    let sent: u64 = threads.into_iter().map(|t| t.join().expect("thread")).sum();
    assert!(sent > 100_000, "the boards did stream ({sent} bytes)");
    let errors = check_report(&out, elapsed, &bad, &good);
    for e in &errors {
        assert!(e.contains("sends without pause"), "{e}");
        assert!(!e.contains('\x1b'), "board bytes are not echoed raw: {e:?}");
    }
    drop(ptys);
}

#[test]
fn a_board_that_never_answers_fails_fast_and_the_good_board_beside_it_is_provisioned() {
    let home = home_with_site(free_port());
    let good = SimBoard::start(&home.work(), "good", 115_200, false);
    let stop = Arc::new(AtomicBool::new(false));
    let p = pty(&home.work(), "silent");
    let t = hostile(p.master.try_clone().expect("dup"), Vec::new(), stop.clone());
    let bad = vec![p.port()];
    let (out, elapsed) = provision_beside(&home, &bad, &good);
    stop.store(true, Ordering::Relaxed);
    t.join().expect("thread");
    let errors = check_report(&out, elapsed, &bad, &good);
    assert!(errors[0].contains("no answer"), "{}", errors[0]);
    // This test holds the pty open (as a serial monitor would): the error says who.
    // (Other processes may be named too: any that holds this pty, in any order.)
    assert!(
        errors[0].contains(&format!("another program has port {} open: ", p.port()))
            && errors[0].contains(&format!("pid {} ", std::process::id())),
        "{}",
        errors[0]
    );
    drop(p);
}

#[test]
fn a_port_locked_by_another_program_is_refused_at_once_and_the_good_board_is_provisioned() {
    let home = home_with_site(free_port());
    let good = SimBoard::start(&home.work(), "good", 115_200, false);
    let p = pty(&home.work(), "held");
    // picocom's way: open the port and hold an exclusive flock while reading it.
    let holder = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p.link)
        .expect("open the port as picocom does");
    let held = Flock::lock(holder, FlockArg::LockExclusiveNonblock).expect("flock");
    let bad = vec![p.port()];
    let (out, elapsed) = provision_beside(&home, &bad, &good);
    drop(held);
    let errors = check_report(&out, elapsed, &bad, &good);
    let e = &errors[0];
    assert!(e.contains("is in use by another program"), "{e}");
    assert!(
        e.contains(&format!("pid {}", std::process::id())),
        "names the holder: {e}"
    );
    assert!(e.contains("picocom"), "says what to close: {e}");
    assert!(
        elapsed < Duration::from_secs(15),
        "no retrying: {elapsed:?}"
    );
    // Once the other program lets go, the port works again.
    drop(p);
}

/// A man in the middle between the provisioner and a simulated board: forwards everything,
/// but puts `inject` into the `fw:info` reply's text.
fn proxy(
    host: &Pty,
    board: &SimBoard,
    inject: &'static str,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    let mut to_board =
        provisioner::bench::port::open(&board.port(), 115_200).expect("open the sim board");
    let mut from_board = to_board.try_clone().expect("clone");
    let mut host_in = File::from(host.master.try_clone().expect("dup"));
    let mut host_out = host_in.try_clone().expect("dup");
    let up = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        // Ends with EIO once nobody holds the slave any more.
        while let Ok(n) = host_in.read(&mut buf) {
            if n == 0 || to_board.write_all(&buf[..n]).is_err() {
                return;
            }
        }
    });
    let down = std::thread::spawn(move || {
        let mut line = Vec::new();
        let mut buf = [0u8; 1024];
        while !stop.load(Ordering::Relaxed) {
            let n = match from_board.read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => continue,
                Err(_) => return,
            };
            for &b in &buf[..n] {
                line.push(b);
                if b != b'\n' {
                    continue;
                }
                let text = String::from_utf8_lossy(&line).into_owned();
                let reply = text
                    .trim_end()
                    .strip_prefix("00(")
                    .and_then(|r| r.strip_suffix(')'))
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|d| String::from_utf8(d).ok())
                    .filter(|t| t.starts_with("version="));
                let out = match reply {
                    Some(info) => {
                        let hostile = info.replacen("version=", &format!("version={inject}"), 1);
                        format!("00({})\n", hex::encode_upper(hostile)).into_bytes()
                    }
                    None => std::mem::take(&mut line),
                };
                line.clear();
                if host_out.write_all(&out).is_err() {
                    return;
                }
            }
        }
    });
    vec![up, down]
}

#[test]
fn a_boards_firmware_text_with_terminal_escapes_is_shown_escaped() {
    let home = home_with_site(free_port());
    let board = SimBoard::start(&home.work(), "sim", 115_200, false);
    let host = pty(&home.work(), "mitm");
    let stop = Arc::new(AtomicBool::new(false));
    let threads = proxy(
        &host,
        &board,
        "\x1b]0;pwned\x07\x1b[2J\u{202e}",
        stop.clone(),
    );
    let port = host.port();
    let out = home.run(&[
        "device",
        "provision",
        "--port",
        &port,
        "--id",
        "salon-1",
        "--profile",
        "climat",
        "--lock",
    ]);
    stop.store(true, Ordering::Relaxed);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    // The report shows the board's text, its escapes made visible.
    assert!(
        stdout.contains("version=\\x1b]0;pwned\\x07\\x1b[2J\\u{202e}0.1.0"),
        "{stdout}"
    );
    for (what, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(
            !bytes.contains(&0x1b) && !bytes.contains(&0x07),
            "no raw control byte on {what}: {:?}",
            String::from_utf8_lossy(bytes)
        );
        assert!(
            !String::from_utf8_lossy(bytes).contains('\u{202e}'),
            "{what}"
        );
    }
    // The device manifest keeps the escaped text too.
    let manifest =
        std::fs::read_to_string(home.path().join("devices/salon-1.json")).expect("manifest");
    assert!(manifest.contains("pwned"), "{manifest}");
    assert!(
        !manifest.contains('\x1b') && !manifest.contains("\\u001b"),
        "{manifest}"
    );
    drop(host);
    for t in threads {
        t.join().expect("proxy thread");
    }
}

#[test]
fn over_mongoose_rpc_an_endless_stream_and_a_silent_board_fail_fast_too() {
    let home = home_with_site(free_port());
    let stop = Arc::new(AtomicBool::new(false));
    let stream = pty(&home.work(), "mos-stream");
    let silent = pty(&home.work(), "mos-silent");
    let threads = [
        hostile(
            stream.master.try_clone().expect("dup"),
            b"{\"id\":1,\"result\":null}00000000\n\x1b[2J".to_vec(),
            stop.clone(),
        ),
        hostile(
            silent.master.try_clone().expect("dup"),
            Vec::new(),
            stop.clone(),
        ),
    ];
    let ports = [stream.port(), silent.port()];
    let t = Instant::now();
    let out = home.run(&[
        "--json",
        "device",
        "provision",
        "--transport",
        "mos",
        "--port",
        &ports[0],
        "--port",
        &ports[1],
        "--id",
        "salon-{n}",
        "--profile",
        "climat",
    ]);
    let elapsed = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("thread");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(elapsed < LIMIT, "{elapsed:?}");
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report");
    let boards = v["boards"].as_array().expect("boards");
    assert_eq!(boards.len(), 2, "{v:#}");
    for (b, port) in boards.iter().zip(&ports) {
        let e = b["error"].as_str().expect("error");
        assert!(
            e.starts_with(port.as_str()) && e.contains("no answer"),
            "{e}"
        );
        assert!(!e.contains('\x1b'), "{e:?}");
    }
    drop((stream, silent));
}
