//! The command-line conventions `lora-link` shares with `provisioner`, `gateway` and
//! `sensor-sim`: a closed stdout ends it quietly, `-vv` logs, `--air` names the air's address
//! everywhere (old names kept), `--version`, completions and manual pages.

use std::process::{Command, Stdio};

use lora_link::air::{AirHub, HubConfig};

const BIN: &str = env!("CARGO_BIN_EXE_lora-link");

fn out_str(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_closed_stdout_ends_it_quietly_with_status_0() {
    for args in [
        vec!["airtime", "--sf", "7", "--bytes", "16"],
        vec!["completions", "bash"],
    ] {
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        let o = Command::new(BIN)
            .args(&args)
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", out_str(&o.stderr));
        assert!(!out_str(&o.stderr).contains("panicked"));
    }
}

#[test]
fn the_air_is_air_everywhere_and_vv_logs_each_injected_frame() {
    let hub = AirHub::bind("127.0.0.1:0".parse().expect("a"), HubConfig::default())
        .expect("bind")
        .spawn()
        .expect("spawn");
    let addr = hub.addr.to_string();
    for flag in ["--air", "--hub"] {
        let o = Command::new(BIN)
            .args(["-vv", "inject", flag, &addr, "--hex", "010a0005cafe"])
            .env_remove("LORA_LINK_LOG")
            .output()
            .expect("inject");
        let err = out_str(&o.stderr);
        assert!(o.status.success(), "{flag}: {err}");
        assert!(
            err.contains("DEBUG") && err.contains("injecting a frame") && err.contains("bytes=6"),
            "{flag}: {err}"
        );
        assert!(!o.stderr.contains(&0x1b), "no colour off a terminal");
    }
    // Without -v: no debug line; LORA_LINK_LOG turns it on.
    let o = Command::new(BIN)
        .args(["inject", "--air", &addr, "--hex", "010a0005cafe"])
        .env("LORA_LINK_LOG", "debug")
        .output()
        .expect("inject");
    assert!(out_str(&o.stderr).contains("injecting a frame"));
    let o = Command::new(BIN)
        .args(["inject", "--air", &addr, "--hex", "010a0005cafe"])
        .env_remove("LORA_LINK_LOG")
        .output()
        .expect("inject");
    assert!(!out_str(&o.stderr).contains("injecting a frame"));

    let help = out_str(
        &Command::new(BIN)
            .args(["air", "--help"])
            .output()
            .expect("help")
            .stdout,
    );
    assert!(
        help.contains("--air <ADDR>") && !help.contains("--listen <"),
        "{help}"
    );
}

#[test]
fn help_version_completions_and_man_pages() {
    let help = out_str(
        &Command::new(BIN)
            .arg("--help")
            .output()
            .expect("help")
            .stdout,
    );
    assert!(
        help.contains("EXIT CODES") && help.contains("LORA_LINK_LOG") && help.contains("-v"),
        "{help}"
    );
    let v = out_str(
        &Command::new(BIN)
            .arg("--version")
            .output()
            .expect("v")
            .stdout,
    );
    assert!(
        v.starts_with("lora-link ") && v.contains("(rev ") && v.contains("features: "),
        "{v}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(BIN)
            .args(["completions", shell])
            .output()
            .expect("c");
        let text = out_str(&o.stdout);
        assert!(
            o.status.success() && text.contains("sniff") && text.contains("airtime"),
            "{shell}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let man = dir.path().join("man1");
    let o = Command::new(BIN)
        .args(["man", "--out", &man.to_string_lossy()])
        .output()
        .expect("man");
    assert!(o.status.success(), "{}", out_str(&o.stderr));
    for name in ["lora-link.1", "lora-link-rx.1", "lora-link-air.1"] {
        let page = std::fs::read_to_string(man.join(name)).expect(name);
        let first = page
            .lines()
            .find(|l| !l.starts_with(".ie ") && !l.starts_with(".el "))
            .unwrap_or("");
        assert!(first.starts_with(".TH "), "{name}: {page}");
    }
}
