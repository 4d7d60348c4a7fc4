//! The command line's conventions as a new user meets them: a closed pipe, colour, `-v` and
//! `-vv`, the help texts, `--version`, completions, manual pages, exit codes, the default home.

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::*;

const ESC: u8 = 0x1b;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs `cmd` with stdout a pipe whose reader is already gone (what `| head` leaves once it
/// has its lines): every write to stdout fails with EPIPE.
fn run_into_closed_pipe(mut cmd: Command) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    cmd.stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run")
}

fn csr(dir: &Path, cn: &str) -> std::path::PathBuf {
    let csr = dir.join(format!("{cn}.csr"));
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        &dir.join(format!("{cn}.key")).to_string_lossy(),
        "-subj",
        &format!("/CN={cn}"),
        "-out",
        &csr.to_string_lossy(),
    ]);
    csr
}

#[test]
fn a_closed_stdout_ends_every_command_quietly_with_status_0() {
    let home = Home::new();
    home.ok(&["init"]);
    let probe = csr(&home.work(), "probe-1");
    for args in [
        vec!["--help"],
        vec!["--json", "device", "list"],
        vec!["completions", "bash"],
        // The chain goes out through print!: the panic hook path.
        vec![
            "cert",
            "sign",
            "--csr",
            &probe.to_string_lossy(),
            "--profile",
            "client",
        ],
    ] {
        let o = run_into_closed_pipe(home.cmd(&args));
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
    // The certificate was issued all the same (the write failed after the work was done).
    let list = home.json(&["device", "list"]);
    assert!(list.to_string().contains("probe-1"), "{list}");
}

/// Runs `cmd` with stderr on a pseudo-terminal; returns what it wrote there.
fn stderr_on_a_terminal(mut cmd: Command) -> Vec<u8> {
    let pty = nix::pty::openpty(None, None).expect("openpty");
    let slave: OwnedFd = pty.slave;
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(slave))
        .spawn()
        .expect("spawn");
    // Drop our copy of the slave (moved into the Command, which the spawn consumed).
    drop(cmd);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let mut master = std::fs::File::from(pty.master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    // Linux returns EIO once the last slave descriptor is closed and the buffer drained.
    while let Ok(n) = master.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

#[test]
fn colour_only_on_a_terminal_and_never_with_no_color() {
    let home = Home::new();
    home.ok(&["init"]);
    // Piped stderr: no escape sequence at all, though debug lines are written.
    let mut c = home.cmd(&["-vv", "device", "list"]);
    c.env_remove("NO_COLOR");
    let o = c.output().expect("run");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("CA home"), "{}", stderr(&o));
    assert!(!o.stderr.contains(&ESC) && !o.stdout.contains(&ESC));

    // A terminal: coloured levels...
    let mut c = home.cmd(&["-vv", "device", "list"]);
    c.env_remove("NO_COLOR");
    let tty = stderr_on_a_terminal(c);
    assert!(String::from_utf8_lossy(&tty).contains("CA home"));
    assert!(tty.contains(&ESC), "{}", String::from_utf8_lossy(&tty));
    // ...unless NO_COLOR is set.
    let mut c = home.cmd(&["-vv", "device", "list"]);
    c.env("NO_COLOR", "1");
    let tty = stderr_on_a_terminal(c);
    assert!(String::from_utf8_lossy(&tty).contains("CA home"));
    assert!(!tty.contains(&ESC), "{}", String::from_utf8_lossy(&tty));
}

#[test]
fn the_log_level_comes_from_v_or_provisioner_log() {
    let home = Home::new();
    home.ok(&["init"]);
    let quiet = home.run(&["device", "list"]);
    assert!(!stderr(&quiet).contains("DEBUG"), "{}", stderr(&quiet));
    let mut c = home.cmd(&["device", "list"]);
    c.env("PROVISIONER_LOG", "debug");
    let o = c.output().expect("run");
    assert!(
        stderr(&o).contains("DEBUG") && stderr(&o).contains("CA home"),
        "{}",
        stderr(&o)
    );
    let mut c = home.cmd(&["device", "list"]);
    c.env("PROVISIONER_LOG", "loud");
    let o = c.output().expect("run");
    assert!(o.status.success());
    assert!(
        stderr(&o).contains("PROVISIONER_LOG=loud: expected"),
        "{}",
        stderr(&o)
    );
}

/// Every window of 8 bytes of `secret`, in upper and lower case hex.
fn hex_windows(secret: &[u8]) -> Vec<String> {
    secret
        .windows(8)
        .flat_map(|w| [hex::encode(w), hex::encode_upper(w)])
        .collect()
}

#[test]
fn v_shows_each_step_with_its_port_and_vv_each_chip_command_but_no_secret() {
    let home = home_with_site(free_port());
    let board = SimBoard::start(&home.work(), "b0", 0, false);
    let port = board.port();
    // A host key: the private key crosses the wire (encrypted PrivWrite), as does the write key.
    let o = home.run(&[
        "-vv",
        "device",
        "provision",
        "--port",
        &port,
        "--id",
        "chambre_2-1",
        "--profile",
        "hostkey",
        "--lock",
    ]);
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains(&port) && l.contains("config zone")),
        "{log}"
    );
    for opcode in ["Write", "Lock", "PrivWrite", "Nonce"] {
        assert!(
            log.lines().any(|l| l.contains("DEBUG")
                && l.contains("chip command")
                && l.contains(&format!("opcode={opcode}"))
                && l.contains(&port)),
            "no {opcode} command logged:\n{log}"
        );
    }

    // The secrets as the chip holds them now: the write key, the private key.
    let chip = board.stop_and_open_chip();
    let write_key = chip.slot(4).expect("slot 4")[..32].to_vec();
    let private_key: Vec<u8> = chip.slot(2).expect("slot 2")[..36].to_vec();
    assert!(write_key.iter().any(|&b| b != 0) && private_key.iter().any(|&b| b != 0));
    let lower = log.to_lowercase();
    for w in hex_windows(&write_key)
        .into_iter()
        .chain(hex_windows(&private_key[4..]))
    {
        assert!(
            !lower.contains(&w.to_lowercase()),
            "secret bytes {w} in the log"
        );
    }
    assert!(!log.contains(PASSPHRASE));

    // -v alone: the steps, not the commands (a second run only verifies the board).
    let board = SimBoard::start(&home.work(), "b0", 0, false);
    let o = home.run(&[
        "-v",
        "device",
        "provision",
        "--port",
        &board.port(),
        "--id",
        "chambre_2-1",
        "--profile",
        "hostkey",
        "--lock",
    ]);
    let log = stderr(&o);
    assert!(o.status.success(), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("INFO") && l.contains(&port) && l.contains("verified")),
        "{log}"
    );
    assert!(
        !log.contains("DEBUG") && !log.contains("chip command"),
        "{log}"
    );
}

#[test]
fn help_lists_every_exit_code_and_prints_the_id_template_literally() {
    let home = Home::new();
    let top = stdout(&home.run(&["--help"]));
    for code in [
        "0  success",
        "1  failure",
        "2  usage",
        "3  invalid input",
        "4  credentials",
        "5  state",
        "6  stopped before an irreversible step",
        "12 renew",
    ] {
        assert!(top.contains(code), "{code} missing:\n{top}");
    }
    assert!(top.contains("PROVISIONER_LOG") && top.contains("NO_COLOR"));
    assert!(stdout(&home.run(&["-h"])).contains("0-12"));

    let provision = home.run(&["device", "provision", "--help"]);
    let text = stdout(&provision);
    assert!(text.contains("--id 'cuisine-{N}' --room"), "{text}");
    assert!(text.contains("one template with {N} (1, 2, ...;"), "{text}");
    assert!(!provision.stdout.contains(&ESC));
}

#[test]
fn version_names_the_git_revision_and_the_features() {
    let o = Home::new().run(&["--version"]);
    let v = stdout(&o);
    assert!(v.starts_with("provisioner 0."), "{v}");
    assert!(v.contains("features: none"), "{v}");
    let rev = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match rev {
        // The test binary and the provisioner were built from the same checkout; a commit
        // since then would rebuild both.
        Some(rev) => assert!(v.contains(&format!("rev {rev}")), "{v} vs {rev}"),
        None => assert!(v.contains("rev unknown"), "{v}"),
    }
}

#[test]
fn completions_for_bash_zsh_and_fish_know_the_subcommands() {
    let home = Home::new();
    for shell in ["bash", "zsh", "fish"] {
        let o = home.run(&["completions", shell]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        let text = stdout(&o);
        // (fish spells a long flag `-l home`)
        for word in [
            "provision",
            "device",
            "emit",
            "home",
            "lock",
            "passphrase-file",
        ] {
            assert!(text.contains(word), "{shell}: {word} missing");
        }
    }
    let o = home.run(&["completions", "tcsh"]);
    assert_eq!(o.status.code(), Some(2));
}

fn first_macro(page: &str) -> &str {
    // clap_mangen opens with the portable definition of \*(Aq (.ie/.el), then .TH.
    page.lines()
        .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
        .unwrap_or("")
}

#[test]
fn man_writes_one_roff_page_per_command() {
    let home = Home::new();
    let dir = home.work().join("man1");
    let o = home.run(&["man", "--out", &dir.to_string_lossy()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for name in [
        "provisioner.1",
        "provisioner-device-provision.1",
        "provisioner-emit-broker.1",
        "provisioner-deploy-gateway.1",
        "provisioner-completions.1",
    ] {
        let page = std::fs::read_to_string(dir.join(name)).expect(name);
        assert!(first_macro(&page).starts_with(".TH "), "{name}: {page}");
        assert!(page.contains("\n.SH NAME\n"), "{name}");
    }
    let provision =
        std::fs::read_to_string(dir.join("provisioner-device-provision.1")).expect("page");
    assert!(provision.contains("cuisine\\-{N}"), "{provision}");
    assert!(!provision.as_bytes().contains(&ESC));
    // The hidden board simulator has no page.
    assert!(!dir.join("provisioner-sim-board.1").exists());
}

#[test]
fn deploy_gateway_installs_the_manual_page_its_unit_refers_to() {
    let home = Home::new();
    home.ok(&["init"]);
    let root = home.work().join("pi1-root");
    std::fs::create_dir_all(&root).expect("root");
    home.ok(&[
        "deploy",
        "gateway",
        "passerelle",
        "--root",
        &root.to_string_lossy(),
    ]);
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/iot-gateway.service")).expect("unit");
    assert!(unit.contains("Documentation=man:gateway(1)"));
    let page =
        std::fs::read_to_string(root.join("usr/local/share/man/man1/gateway.1")).expect("page");
    assert!(first_macro(&page).starts_with(".TH gateway 1"), "{page}");
    // From gateway's own definition: its flags and exit codes.
    assert!(
        page.contains("\\-\\-manifest") && page.contains("EXIT CODES"),
        "{page}"
    );
}

#[test]
fn a_missing_csr_file_is_invalid_input_and_named() {
    let home = Home::new();
    home.ok(&["init"]);
    let o = home.run(&[
        "cert",
        "sign",
        "--csr",
        "no-such.csr",
        "--profile",
        "client",
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    assert!(stderr(&o).contains("--csr no-such.csr"), "{}", stderr(&o));
}

#[test]
fn the_default_home_is_absolute_and_follows_xdg() {
    let dir = tempfile::tempdir().expect("tempdir");
    let elsewhere = dir.path().join("cwd");
    std::fs::create_dir(&elsewhere).expect("cwd");
    let run = |envs: &[(&str, &Path)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_provisioner"));
        c.args(["init"])
            .env_remove("PROVISIONER_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("PROVISIONER_PASSPHRASE", PASSPHRASE)
            .current_dir(&elsewhere)
            .stdin(Stdio::null());
        for (k, v) in envs {
            c.env(k, v);
        }
        c.output().expect("run")
    };
    let user = dir.path().join("user");
    let o = run(&[("HOME", &user)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        user.join(".local/share/provisioner/ledger.sqlite")
            .is_file()
    );
    assert!(!elsewhere.join("provisioner-home").exists());

    let data = dir.path().join("data");
    let o = run(&[("HOME", &user), ("XDG_DATA_HOME", &data)]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(data.join("provisioner/ledger.sqlite").is_file());
    assert_eq!(std::fs::read_dir(&elsewhere).expect("cwd").count(), 0);
}

#[test]
fn one_name_per_meaning_with_the_old_names_kept_as_aliases() {
    let home = Home::with_broker();
    // --port is a serial path in `device provision`; the broker's TCP port is --listen-port.
    let help = stdout(&home.run(&["emit", "broker", "--help"]));
    assert!(help.contains("--listen-port <PORT>"), "{help}");
    assert!(!help.contains("--port <"), "{help}");
    for flag in ["--listen-port", "--port"] {
        let out = home.work().join(format!("broker{flag}"));
        home.ok(&[
            "emit",
            "broker",
            "--out",
            &out.to_string_lossy(),
            flag,
            "18999",
            "--bind",
            "127.0.0.1",
            "--run-as",
            "root",
        ]);
        let conf = std::fs::read_to_string(out.join("mosquitto.conf")).expect("conf");
        assert!(
            conf.lines().any(|l| l.starts_with("listener 18999")),
            "{flag}: {conf}"
        );
    }
    // The board simulator says --transport, as `device provision` does; --protocol still works.
    for flag in ["--transport", "--protocol"] {
        let dir = home.work();
        let board = SimBoard::start_with(&dir, &format!("t{flag}"), 0, false, &[flag, "mos"]);
        assert!(board.link.exists());
    }
    let o = home.run(&["sim-board", "--help"]);
    assert!(stdout(&o).contains("--transport <"), "{}", stdout(&o));
}

#[test]
fn with_json_a_command_that_fails_before_its_result_still_prints_one_json_document() {
    let home = Home::new();
    let o = home.run(&["--json", "device", "list"]);
    assert_eq!(o.status.code(), Some(5));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("one JSON document on stdout");
    assert_eq!(v["ok"], false);
    assert_eq!(v["exit_code"], 5);
    assert!(v["error"].as_str().unwrap_or("").contains("no CA"), "{v}");
    // A regular file as --port: refused before any board is touched, in JSON too.
    home.ok(&["init"]);
    let f = home.work().join("not-a-port");
    std::fs::write(&f, "x").expect("file");
    let o = home.run(&[
        "--json",
        "device",
        "provision",
        "--port",
        &f.to_string_lossy(),
        "--id",
        "salon-1",
        "--profile",
        "climat",
        "--dry-run",
    ]);
    assert_eq!(o.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["exit_code"], 3, "{v}");
}
