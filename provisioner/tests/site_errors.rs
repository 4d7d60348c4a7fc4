//! A broken site file handed to `provisioner init --site`: exit code 3, the message names the
//! file, the line of the offending key inside its own table, and the full field path; nothing
//! is created.

mod common;

use common::*;

/// Runs `init --site` on `text`; returns stderr after checking the refusal.
fn refused_init(text: &str) -> String {
    let home = Home::new();
    let site = home.work().join("bad.toml");
    std::fs::write(&site, text).expect("write site");
    let o = home.run(&["init", "--site", &site.to_string_lossy()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(3), "{err}");
    assert!(!home.path().exists(), "a refused init created the home");
    err
}

/// 1-based line of the first line at or after the one starting with `after` that starts with
/// `key`.
fn line_of(text: &str, after: &str, key: &str) -> usize {
    let start = text
        .lines()
        .position(|l| l.starts_with(after))
        .expect("anchor");
    text.lines()
        .enumerate()
        .skip(start)
        .find(|(_, l)| l.starts_with(key))
        .map(|(i, _)| i + 1)
        .expect("line")
}

#[test]
fn init_reports_a_bad_site_at_the_offending_line_with_the_field_path() {
    // qos = 3 in the thermometre profile, the second in the file to have a `qos`.
    let text = manifests::site::EXAMPLE_SMART_HOME.replacen("qos = 0", "qos = 3", 1);
    let err = refused_init(&text);
    let line = line_of(&text, "[profiles.thermometre]", "qos = 3");
    assert!(
        err.contains(&format!(
            "bad.toml:{line}:1: field `profiles.thermometre.qos`: expected 0, 1 or 2"
        )),
        "{err}"
    );

    // A string where the port number belongs.
    let text = manifests::site::EXAMPLE_SMART_HOME.replace("port = 8883", "port = \"8883\"");
    let err = refused_init(&text);
    let line = line_of(&text, "[broker]", "port =");
    assert!(
        err.contains(&format!(
            "bad.toml:{line}:8: field `broker.port`: expected an integer 0..=65535, found a string \"8883\""
        )),
        "{err}"
    );

    // A typo in a topic placeholder.
    let text = manifests::site::EXAMPLE_SMART_HOME
        .replace("\"{root}/{room}/porte\"", "\"{root}/{rom}/porte\"");
    let err = refused_init(&text);
    let line = line_of(&text, "[profiles.porte]", "readings =");
    assert!(
        err.contains(&format!(
            "bad.toml:{line}:15: field `profiles.porte.readings[0].topic`"
        )) && err.contains("{rom}")
            && err.contains("{root}, {room}, {id}"),
        "{err}"
    );
}

#[test]
fn site_check_validates_a_file_without_a_home_or_any_change() {
    let home = Home::new();
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../manifests/examples/smart-home.toml"
    );
    let o = home.run(&["site", "check", example]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("valid site"));
    let bad = home.work().join("bad.toml");
    let text = manifests::site::EXAMPLE_SMART_HOME.replacen("{room}", "{rom}", 1);
    std::fs::write(&bad, text).expect("bad");
    let o = home.run(&["--json", "site", "check", &bad.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml:") && err.contains("{rom}"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["ok"], false);
    assert!(!home.path().exists(), "no home was created");
}

#[test]
fn site_check_accepts_a_lifetime_of_minutes_with_a_warning_and_refuses_a_loose_duration() {
    let home = Home::new();
    let short = home.work().join("short.toml");
    let text = manifests::site::EXAMPLE_SMART_HOME.replacen(
        "[profiles.climat]",
        "[profiles.climat]\nlifetime = \"3m\"\nrenew_before = \"150s\"",
        1,
    );
    std::fs::write(&short, &text).expect("short");
    let o = home.run(&["--json", "site", "check", &short.to_string_lossy()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains(
            "profiles.climat: a lifetime of 3m is under a day; it is meant for demos and tests"
        ),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["valid"], true, "{v}");
    assert_eq!(v["warnings"].as_array().map(Vec::len), Some(1), "{v}");
    // The day forms give no warning.
    let o = home.run(&[
        "--json",
        "site",
        "check",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../manifests/examples/smart-home.toml"
        ),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");
    // "3 min" is not a duration of the site file: refused at its line, nothing guessed.
    let loose = home.work().join("loose.toml");
    std::fs::write(&loose, text.replace("\"3m\"", "\"3 min\"")).expect("loose");
    let o = home.run(&["site", "check", &loose.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(3));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("profiles.climat.lifetime") && err.contains("3 min"),
        "{err}"
    );
    assert!(!home.path().exists(), "no home was created");
}
