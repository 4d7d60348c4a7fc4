//! Registered broker directories follow the ledger (issue 15, item 1) and a revocation cuts
//! the identity off at once (issue 14, item 5), with a real mosquitto on loopback.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// mosquitto_sub / mosquitto_pub with a client certificate and extra arguments.
fn mosq(program: &str, port: u16, ca: &Path, c: &Client, extra: &[&str]) -> Command {
    require(program);
    let mut cmd = Command::new(program);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .arg("--cafile")
        .arg(ca)
        .arg("--cert")
        .arg(&c.crt)
        .arg("--key")
        .arg(&c.key)
        .args(extra);
    cmd
}

/// Waits until `f` holds, at most `secs` seconds.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A subscriber whose output lines are collected by a thread.
struct Sub {
    child: Child,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Sub {
    fn start(mut cmd: Command) -> Sub {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("subscriber");
        let out = child.stdout.take().expect("stdout");
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(|l| l.ok()) {
                l.lock().expect("lock").push(line);
            }
        });
        Sub { child, lines }
    }
    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lock").clone()
    }
}

impl Drop for Sub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_client_certified_after_emit_joins_the_registered_acl_and_receives_after_the_printed_reload() {
    let home = Home::with_broker();
    let port = free_port();
    let dir = home.work().join("broker");
    home.emit_broker(&dir, Some(port), &[]);
    let ca = dir.join("ca.crt");
    let broker = Mosquitto::start(
        &dir.join("mosquitto.conf"),
        port,
        &home.work().join("m.log"),
    );
    wait_for(5, "the pid file", || dir.join("run/mosquitto.pid").exists());

    // README step 6: a monitor certified after the broker was emitted. No re-emit.
    let probe = home.client("probe-1", &["--publish", "maison/probe/#"]);
    let c = openssl_client(&home.work(), "monitor");
    let out = home.ok(&[
        "cert",
        "sign",
        "--csr",
        &c.csr.to_string_lossy(),
        "--profile",
        "client",
        "--out",
        &c.crt.to_string_lossy(),
        "--subscribe",
        "maison/#",
    ]);
    let acl = read(&dir.join("acl"));
    assert!(
        acl.contains("user monitor\ntopic write maison/monitor/#\ntopic read maison/#"),
        "{acl}"
    );
    assert!(
        acl.contains("user probe-1\ntopic write maison/probe/#"),
        "{acl}"
    );
    // The reload it printed is this broker's, through its pid file.
    let canonical = dir.canonicalize().expect("canonical");
    let reload = format!("kill -HUP $(cat {}/run/mosquitto.pid)", canonical.display());
    assert!(out.contains(&reload), "{out}");
    let status = Command::new("sh")
        .args(["-c", &reload])
        .status()
        .expect("sh");
    assert!(status.success());
    wait_for(5, "the reload", || {
        broker.log_text().contains("Reloading config")
    });

    let sub = Sub::start(mosq(
        "mosquitto_sub",
        port,
        &ca,
        &c,
        &["-t", "maison/#", "-v", "-C", "1", "-W", "15"],
    ));
    let deadline = Instant::now() + Duration::from_secs(15);
    while sub.lines().is_empty() {
        assert!(Instant::now() < deadline, "the monitor received nothing");
        let p = publish(port, &ca, &probe, "maison/probe/t", "21.5");
        assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sub.lines()[0], "maison/probe/t 21.5");
}

#[test]
fn a_rerun_without_flags_keeps_the_stored_options_and_flags_given_replace_them() {
    let home = Home::with_broker();
    let dir = home.work().join("pi-etc");
    let d = dir.to_string_lossy().into_owned();
    home.ok(&[
        "emit",
        "broker",
        "--out",
        &d,
        "--listen-port",
        "18999",
        "--bind",
        "127.0.0.1",
        "--run-as",
        "root",
        "--prefix",
        "/etc/mosquitto/site",
    ]);
    let first = read(&dir.join("mosquitto.conf"));
    let out = home.ok(&["emit", "broker", "--out", &d]);
    assert!(out.contains("the stored ones"), "{out}");
    let conf = read(&dir.join("mosquitto.conf"));
    assert_eq!(
        conf, first,
        "a re-run without flags changed the configuration"
    );
    for line in [
        "listener 18999 127.0.0.1",
        "user root",
        "acl_file /etc/mosquitto/site/acl",
        "pid_file /etc/mosquitto/site/run/mosquitto.pid",
        "persistence true",
        "persistence_location /etc/mosquitto/site/run/",
    ] {
        assert!(conf.lines().any(|l| l == line), "no `{line}` in\n{conf}");
    }
    // A flag given replaces the stored value, and is stored in turn.
    home.ok(&["emit", "broker", "--out", &d, "--listen-port", "19000"]);
    home.ok(&["emit", "broker", "--out", &d]);
    let conf = read(&dir.join("mosquitto.conf"));
    assert!(conf.contains("listener 19000 127.0.0.1\n"), "{conf}");
    assert!(conf.contains("user root\n"), "{conf}");
    assert!(
        conf.contains("cafile /etc/mosquitto/site/ca.crt\n"),
        "{conf}"
    );
    // A ledger change refreshes the prefixed directory and says the copy comes first.
    let c = openssl_client(&home.work(), "late");
    let out = home.ok(&[
        "cert",
        "sign",
        "--csr",
        &c.csr.to_string_lossy(),
        "--profile",
        "client",
        "--out",
        &c.crt.to_string_lossy(),
    ]);
    assert!(
        out.contains("copy the directory to the broker")
            && out.contains("kill -HUP $(cat /etc/mosquitto/site/run/mosquitto.pid)"),
        "{out}"
    );
    assert!(read(&dir.join("acl")).contains("user late\n"));
    assert_eq!(read(&dir.join("mosquitto.conf")), conf);
}

#[test]
fn a_forgotten_directory_is_written_no_more() {
    let home = Home::with_broker();
    let dir = home.work().join("broker");
    home.emit_broker(&dir, Some(free_port()), &[]);
    let d = dir.to_string_lossy().into_owned();
    let out = home.ok(&["emit", "broker", "--forget", &d]);
    assert!(out.contains("forgot the broker directory"), "{out}");
    let acl = read(&dir.join("acl"));
    let crl = read(&dir.join("crl.pem"));
    let c = home.client("after-forget", &[]);
    home.ok(&["device", "revoke", "after-forget"]);
    assert_eq!(read(&dir.join("acl")), acl);
    assert_eq!(read(&dir.join("crl.pem")), crl, "the CRL still reached it");
    assert!(c.crt.exists());
    // Forgetting it again: a state error naming what is registered.
    let again = home.run(&["emit", "broker", "--forget", &d]);
    assert_eq!(again.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&again.stderr).contains("not a registered broker directory"));
    // --forget takes no other option.
    let both = home.run(&["emit", "broker", "--forget", &d, "--listen-port", "1"]);
    assert_eq!(both.status.code(), Some(2));
}

#[test]
fn a_copy_of_the_home_never_writes_into_the_original_broker_directory() {
    let home = Home::with_broker();
    let dir = home.work().join("broker");
    home.emit_broker(&dir, Some(free_port()), &[]);
    let acl = read(&dir.join("acl"));
    let crl = read(&dir.join("crl.pem"));

    let copy = Home::new();
    let st = Command::new("cp")
        .arg("-a")
        .arg(home.path())
        .arg(copy.path())
        .status()
        .expect("cp");
    assert!(st.success());
    // The copy certifies, revokes and signs CRLs: the original's directory does not move.
    let c = copy.client("in-the-copy", &[]);
    assert!(c.crt.exists());
    let out = copy.ok(&["device", "revoke", "in-the-copy"]);
    assert!(
        out.contains("NOT written") && out.contains("is a copy or was moved"),
        "{out}"
    );
    copy.ok(&["crl", "--renew"]);
    assert_eq!(read(&dir.join("acl")), acl);
    assert_eq!(read(&dir.join("crl.pem")), crl);
    // Asked explicitly, the copy refuses too, and says what to do.
    let d = dir.to_string_lossy().into_owned();
    let r = copy.run(&["emit", "broker", "--out", &d]);
    assert_eq!(r.status.code(), Some(5), "{r:?}");
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("--forget") && err.contains(".provisioner-home"),
        "{err}"
    );
    assert_eq!(read(&dir.join("acl")), acl);
    // The copy gets a directory of its own.
    let mine = copy.work().join("copy-broker");
    copy.emit_broker(&mine, Some(free_port()), &[]);
    assert!(read(&mine.join("acl")).contains("# Anything not granted here is denied."));

    // The original still refreshes its own.
    home.client("in-the-original", &[]);
    assert!(read(&dir.join("acl")).contains("user in-the-original\n"));
    assert!(!read(&mine.join("acl")).contains("in-the-original"));
}

#[test]
fn revocation_cuts_the_identity_off_within_5_s_while_another_qos1_stream_arrives_complete() {
    const N: usize = 200;
    let home = Home::with_broker();
    let port = free_port();
    let dir = home.work().join("broker");
    home.emit_broker(&dir, Some(port), &[]);
    let ca = dir.join("ca.crt");
    let conf = dir.join("mosquitto.conf");
    let mut broker = Mosquitto::start(&conf, port, &home.work().join("m1.log"));
    wait_for(5, "the pid file", || dir.join("run/mosquitto.pid").exists());

    let x = home.client("x", &["--publish", "maison/x/#", "--subscribe", "maison/#"]);
    let y = home.client("y", &["--subscribe", "maison/#"]);
    let z = home.client("z", &["--publish", "maison/z/#"]);
    // The ACL already knows them (refreshed by `cert sign`); the broker reads it on SIGHUP.
    broker.reload();
    wait_for(5, "the reload", || {
        broker.log_text().contains("Reloading config")
    });

    // x: a persistent subscriber and a publisher; y: a persistent subscriber counting z's
    // QoS 1 stream; z: 200 readings at 20 ms through one persistent session.
    // x subscribes and publishes through ONE session: the broker makes every connection of
    // an identity client id x (`use_username_as_clientid`), so a second connection of x
    // (a separate mosquitto_pub) would take the first one's session over.
    let xs = XSession::start(port, &ca, &x);
    let ys = Sub::start(mosq(
        "mosquitto_sub",
        port,
        &ca,
        &y,
        &["-t", "maison/#", "-c", "-i", "y", "-v"],
    ));
    // Both subscriptions in place (mosquitto_sub subscribes right after its CONNACK).
    std::thread::sleep(Duration::from_millis(800));
    let mut zp = mosq(
        "mosquitto_pub",
        port,
        &ca,
        &z,
        &["-t", "maison/z/t", "-c", "-i", "z", "-l"],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("mosquitto_pub");
    let mut zin = zp.stdin.take().expect("stdin");
    let feeder = std::thread::spawn(move || {
        for i in 0..N {
            if writeln!(zin, "{i}").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Give the last QoS 1 exchanges time before closing the input.
        std::thread::sleep(Duration::from_secs(2));
    });
    xs.publish("maison/x/t", "before");
    wait_for(10, "x's reading at y", || {
        ys.lines().iter().any(|l| l == "maison/x/t before")
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !xs.lines().is_empty(),
        "x received nothing before the revocation"
    );

    // The revocation, then what the operator runs (README "Revocation"): --reload sends the
    // SIGHUP through the pid file; the restart ends x's open session.
    let t0 = Instant::now();
    let out = home.ok(&["device", "revoke", "x", "--reload"]);
    let revoke_s = t0.elapsed().as_secs_f64();
    assert!(out.contains("reloaded (SIGHUP to mosquitto pid"), "{out}");
    assert!(!read(&dir.join("acl")).contains("user x\n"));
    wait_for(5, "the reload after revoke", || {
        broker.log_text().matches("Reloading config").count() >= 2
    });
    // From the reload on, x's open session may publish nothing that is delivered and
    // receives nothing (z's stream goes on meanwhile).
    std::thread::sleep(Duration::from_millis(200));
    let x_seen_at_reload = xs.lines().len();
    xs.publish("maison/x/t", "after-reload");
    std::thread::sleep(Duration::from_millis(500));
    let x_after: Vec<String> = xs.lines()[x_seen_at_reload..].to_vec();
    assert!(
        x_after.is_empty(),
        "x's open session still received after the reload: {x_after:?}"
    );
    let pid = broker.child.id() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let _ = broker.child.wait();
    broker = Mosquitto::start(&conf, port, &home.work().join("m2.log"));
    // Cut off: x's subscriber, refused on reconnect by the CRL, ends; x's publisher too.
    wait_for(5, "x's session to be refused", || xs.refused());
    let cut_s = t0.elapsed().as_secs_f64();
    let refused = publish(port, &ca, &x, "maison/x/t", "late");
    assert!(!refused.status.success(), "x could still publish");
    let sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "maison/#",
            "-C",
            "1",
            "-W",
            "3",
        ])
        .arg("--cafile")
        .arg(&ca)
        .arg("--cert")
        .arg(&x.crt)
        .arg("--key")
        .arg(&x.key)
        .output()
        .expect("mosquitto_sub");
    assert!(!sub.status.success(), "x could still subscribe");
    assert!(
        cut_s < 5.0,
        "revocation cut-off took {cut_s:.2} s (revoke command {revoke_s:.2} s)"
    );

    feeder.join().expect("feeder");
    let _ = zp.wait();
    drop(xs);
    wait_for(10, "z's whole stream at y", || {
        distinct(&ys.lines(), "maison/z/t ") == N
    });
    let got = distinct(&ys.lines(), "maison/z/t ");
    assert_eq!(got, N, "y lost QoS 1 messages across the revocation");
    assert!(
        !ys.lines().iter().any(|l| l.starts_with("maison/x/t after")),
        "x's publish after the reload was delivered"
    );
    assert!(
        broker.log_text().contains("certificate verify failed"),
        "{}",
        broker.log_text()
    );
    eprintln!(
        "revocation: revoke+refresh+SIGHUP {revoke_s:.3} s, x cut off (session gone, publish and subscribe refused) {cut_s:.3} s after revoke; y received {got}/{N} of z's QoS 1 stream"
    );
}

/// One MQTT session of a client (rumqttc over the workspace's rustls client configuration),
/// persistent, subscribed to `maison/#`: what it received (`topic payload`) and whether the
/// broker refused it on a reconnection.
struct XSession {
    client: rumqttc::Client,
    got: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl XSession {
    fn start(port: u16, ca: &Path, c: &Client) -> XSession {
        use std::sync::atomic::Ordering;
        let id = tls_client::certificate_identity(&c.crt).expect("client identity");
        let tls = tls_client::client_config(&tls_client::TlsFiles {
            ca_file: ca.to_path_buf(),
            cert_file: c.crt.clone(),
            key_file: c.key.clone(),
            server_name: None,
        })
        .expect("TLS client configuration");
        let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
        opts.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_transport(rumqttc::Transport::Tls(rumqttc::TlsConfiguration::Rustls(
                tls,
            )));
        let (client, mut connection) = rumqttc::Client::new(opts, 16);
        client
            .subscribe("maison/#", rumqttc::QoS::AtLeastOnce)
            .expect("subscribe");
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, r) = (got.clone(), refused.clone());
        std::thread::spawn(move || {
            for ev in connection.iter() {
                match ev {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                        g.lock().expect("lock").push(format!(
                            "{} {}",
                            p.topic,
                            String::from_utf8_lossy(&p.payload)
                        ))
                    }
                    Ok(_) => {}
                    // The broker's TLS alert (the CRL): refused. Anything else (the restart's
                    // dropped connection, the port closed meanwhile): try again.
                    Err(e) if format!("{e:?}").contains("CertificateRevoked") => {
                        r.store(true, Ordering::SeqCst);
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        XSession {
            client,
            got,
            refused,
        }
    }

    fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
            .expect("publish");
    }

    fn lines(&self) -> Vec<String> {
        self.got.lock().expect("lock").clone()
    }

    fn refused(&self) -> bool {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn distinct(lines: &[String], prefix: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .collect::<std::collections::BTreeSet<_>>()
        .len()
}
