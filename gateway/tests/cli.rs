//! The `gateway` command line on hostile and broken inputs: precise errors, exit code 2,
//! nothing started.

use std::process::Command;

fn gateway(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_remove("GATEWAY_MANIFEST")
        .output()
        .expect("run gateway")
}

#[test]
fn a_broken_manifest_is_refused_with_file_line_and_field() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = d.path().join("gateway.toml");
    std::fs::write(
        &p,
        "version = 1\n[mqtt]\nhost = \"127.0.0.1\"\nclient_id = \"gw\"\nca_file = \"ca.crt\"\ncert_file = \"gw.crt\"\nkey_file = \"gw.key\"\nfilters = [\"maison/#/x\"]\n[link]\nmanifest = \"link.toml\"\n",
    )
    .expect("write");
    let out = gateway(&["--manifest", &p.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gateway.toml:8:") && err.contains("mqtt.filters"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = gateway(&[
        "--manifest",
        &d.path().join("missing.toml").to_string_lossy(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));

    std::fs::write(&p, [0xff, 0xfe, 0x00]).expect("write");
    let out = gateway(&["--manifest", &p.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
}

#[test]
fn help_has_examples_and_exit_codes() {
    let out = gateway(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("EXAMPLES") && text.contains("EXIT CODES"),
        "{text}"
    );
}

/// A gateway directory that loads: a self-signed certificate with CN `passerelle` (openssl)
/// as CA and client certificate, its key, a link manifest and key; `client_id` as given.
fn gateway_dir(d: &std::path::Path, client_id: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .arg("-keyout")
        .arg(d.join("gw.key"))
        .args(["-subj", "/CN=passerelle", "-out"])
        .arg(d.join("gw.crt"))
        .output()
        .expect("openssl (the tests use the real CLI)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::set_permissions(d.join("gw.key"), std::fs::Permissions::from_mode(0o600))
        .expect("chmod");
    std::fs::copy(d.join("gw.crt"), d.join("ca.crt")).expect("ca");
    let link = "version = 1\nrole = \"gateway\"\nstate_dir = \"state\"\n[node]\nname = \"passerelle\"\naddress = 10\n[[peers]]\nname = \"recepteur\"\naddress = 1\n[key]\nfile = \"link.key\"\n[radio]\nbackend = \"emulated\"\n[air]\nhub = \"127.0.0.1:9\"\n";
    std::fs::write(d.join("link.toml"), link).expect("link");
    std::fs::write(d.join("link.key"), "000102030405060708090a0b0c0d0e0f\n").expect("key");
    for f in ["link.toml", "link.key"] {
        std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    std::fs::create_dir_all(d.join("state")).expect("state");
    let p = d.join("gateway.toml");
    std::fs::write(
        &p,
        format!("version = 1\n[mqtt]\nhost = \"127.0.0.1\"\nclient_id = \"{client_id}\"\nca_file = \"ca.crt\"\ncert_file = \"gw.crt\"\nkey_file = \"gw.key\"\nfilters = [\"maison/#\"]\n[link]\nmanifest = \"link.toml\"\n"),
    )
    .expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    p
}

#[test]
fn a_client_id_other_than_the_certificates_cn_is_refused() {
    let d = tempfile::tempdir().expect("tempdir");
    let p = gateway_dir(d.path(), "garage-1");
    let out = gateway(&["--manifest", &p.to_string_lossy(), "--check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("mqtt.client_id")
            && err.contains("`garage-1`")
            && err.contains("CN `passerelle`")
            && err.contains("use_username_as_clientid"),
        "{err}"
    );

    let p = gateway_dir(d.path(), "passerelle");
    let out = gateway(&["--manifest", &p.to_string_lossy(), "--check"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("is valid"), "{err}");
}

#[test]
fn logging_flags_version_completions_and_man_page() {
    let help = String::from_utf8_lossy(&gateway(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("GATEWAY_LOG") && help.contains("--verbose") && help.contains("--json"),
        "{help}"
    );
    let v = String::from_utf8_lossy(&gateway(&["--version"]).stdout).into_owned();
    assert!(
        v.starts_with("gateway ")
            && v.contains("(rev ")
            && v.contains(&format!(
                "features: {}",
                if cfg!(feature = "rpi") { "rpi" } else { "none" }
            )),
        "{v}"
    );
    // Subcommands need no --manifest.
    let o = gateway(&["completions", "bash"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("--manifest"));
    let d = tempfile::tempdir().expect("tempdir");
    let o = gateway(&["man", "--out", &d.path().to_string_lossy()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let page = std::fs::read_to_string(d.path().join("gateway.1")).expect("gateway.1");
    assert!(page.contains("\n.TH gateway 1") && page.contains("EXIT CODES"));
    // Still required when running.
    let o = gateway(&[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--manifest"));
}

#[test]
fn a_closed_stdout_ends_it_quietly_with_status_0() {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["completions", "zsh"])
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(0));
    assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
}
