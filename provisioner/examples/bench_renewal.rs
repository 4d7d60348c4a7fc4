//! Benchmark: the renewal service answering N queued renewal requests through a real
//! mosquitto, next to the batched issuance rate of the same CA measured in the same run.
//!
//! `cargo run --release -p provisioner --example bench_renewal -- --bin target/release/provisioner [N]`
//! (default N = 1000). Prints one JSON line on stdout:
//! `{"requests":N,"answered":A,"renewals_per_s":R,"batched_issuance_per_s":B,"ratio":R/B,...}`
//!
//! Set-up, on the real clock (no fake-clock hook, so a release build runs it): a home with an
//! issuing CA, N device identities whose profile's certificates live 5 minutes and are due
//! from their issue on (`lifetime = "5m"`, `renew_before = "290s"`: the CA backdates them by
//! 30 s) issued in one batch (the reference rate: certificates per second, one ledger
//! commit), the renewal service's
//! identity, a publisher identity allowed to write every renewal topic, the emitted broker
//! configuration. The service runs once to create its persistent session, stops; the N CSRs
//! (one per device, its own key) are queued on the broker; the clock starts when the service
//! starts again and stops at the N-th distinct answer. The service's start-up (passphrase key
//! derivation, TLS) is inside the measured time.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

const PASS: &str = "benchmark passphrase for renewal";
/// The devices' certificate lifetime and renewal window (s): due at once, valid for minutes.
const LIFETIME_S: u64 = 300;
const RENEW_BEFORE_S: u64 = 290;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Bench {
    bin: PathBuf,
    work: PathBuf,
    home: PathBuf,
}

impl Bench {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .env("PROVISIONER_HOME", &self.home)
            .env("PROVISIONER_PASSPHRASE", PASS)
            .env_remove("PROVISIONER_CRASH_AT")
            .env_remove("PROVISIONER_FAKE_NOW")
            .stdin(Stdio::null());
        c
    }

    fn ok(&self, args: &[&str]) -> Res<String> {
        let o = self.cmd(args).output()?;
        if !o.status.success() {
            return Err(format!("{args:?}: {}", String::from_utf8_lossy(&o.stderr)).into());
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    fn service(&self) -> Res<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.work.join("service.log"))?;
        Ok(self
            .cmd(&["-v", "renewal-service", "run"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?)
    }

    fn service_log(&self) -> String {
        std::fs::read_to_string(self.work.join("service.log")).unwrap_or_default()
    }
}

fn stop(mut c: Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = c.wait();
}

fn openssl(dir: &Path, args: &[&str]) -> Res<()> {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()?;
    if !o.status.success() {
        return Err(format!("openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr)).into());
    }
    Ok(())
}

/// The site: the example house, the broker on 127.0.0.1:`port`, short-lived thermometers.
fn site(port: u16) -> String {
    manifests::site::EXAMPLE_SMART_HOME
        .replace(
            "dns = [\"broker.maison.lan\", \"raspberrypi.local\"]",
            "dns = [\"localhost\"]\nconnect = \"127.0.0.1\"",
        )
        .replace("ip = [\"192.168.1.10\"]", "ip = [\"127.0.0.1\"]")
        .replace("port = 8883", &format!("port = {port}"))
        .replace(
            "description = \"temperature only\"",
            &format!(
                "description = \"temperature only\"\nlifetime = \"{LIFETIME_S}s\"\nrenew_before = \"{RENEW_BEFORE_S}s\""
            ),
        )
}

/// Mode `fill HOME N`: N devices with their keys, one batch, with the site's lifetime.
/// Prints the batch's certificates per second; writes `id key-PEM` lines to HOME/../devices.
fn fill(home: &Path, n: usize) -> Res<()> {
    use ca::ledger::IdentityRecord;
    let layout = ca::Layout::new(home);
    let mut authority = ca::Authority::open(&layout, &ca::Passphrase::new(PASS.into()))?;
    let mut policy = ca::profile::LifetimePolicy::default();
    policy.device_profiles.insert(
        "thermometre".into(),
        ca::profile::Lifetime {
            seconds: Some(LIFETIME_S),
            renewal: ca::profile::Renewal::SecondsBefore(RENEW_BEFORE_S),
        },
    );
    authority.set_policy(policy);
    let mut reqs = Vec::with_capacity(n);
    let mut keys = String::new();
    for i in 0..n {
        let id = format!("capteur-{i}");
        let key = ca::keys::generate()?;
        let public = ca::PublicKey::from_sec1(key.public_key_raw())?;
        let sn = format!("0123{i:014x}");
        let mut attrs = serde_json::Map::new();
        attrs.insert("chip_serial".into(), sn.clone().into());
        attrs.insert("public_key".into(), hex::encode(&public.0[1..]).into());
        reqs.push(ca::IssueRequest {
            profile: ca::Profile::Device,
            subject: ca::Subject {
                common_name: id.clone(),
                organization: None,
                dns: vec![],
                ips: vec![],
                serial_number: Some(sn),
            },
            public_key: public,
            request_id: ca::authority::request_id(&[b"bench-device", id.as_bytes()]),
            days: 30,
            identity: Some(IdentityRecord {
                id: id.clone(),
                kind: "device".into(),
                profile: "thermometre".into(),
                acl_write: vec![],
                acl_read: vec![],
                attrs,
                status: "active".into(),
            }),
        });
        keys.push_str(&format!("{id} {}\n", hex::encode(key.serialize_der())));
    }
    let t = Instant::now();
    let issued = authority.issue_batch(reqs)?;
    let rate = issued.len() as f64 / t.elapsed().as_secs_f64();
    safe_fs::replace(
        &home.with_file_name("devices"),
        keys.as_bytes(),
        &safe_fs::Replace::new(0o600),
    )?;
    println!("{rate}");
    Ok(())
}

/// A CSR for `id` signed with its key (DER).
fn csr(id: &str, key_der_hex: &str) -> Res<Vec<u8>> {
    let der = hex::decode(key_der_hex)?;
    let key = rcgen::KeyPair::try_from(der.as_slice())?;
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(rcgen::DnType::CommonName, id);
    Ok(p.serialize_request(&key)?.der().to_vec())
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("fill") {
        return fill(Path::new(&args[2]), args[3].parse()?);
    }
    let bin = match args.iter().position(|a| a == "--bin") {
        Some(i) => PathBuf::from(args.get(i + 1).ok_or("--bin PATH")?),
        None => PathBuf::from("target/release/provisioner"),
    };
    let n: usize = args
        .iter()
        .skip(1)
        .filter(|a| !a.starts_with("--") && Path::new(a) != bin)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let b = Bench {
        bin: std::fs::canonicalize(&bin)?,
        work: dir.path().to_path_buf(),
        home: dir.path().join("home"),
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    std::fs::write(b.work.join("site.toml"), site(port))?;
    b.ok(&[
        "init",
        "--issuing-ca",
        "--site",
        &b.work.join("site.toml").to_string_lossy(),
    ])?;
    b.ok(&["server", "issue"])?;
    eprintln!("issuing {n} device certificates in one batch (the reference)...");
    let out = Command::new(std::env::current_exe()?)
        .args(["fill", &b.home.to_string_lossy(), &n.to_string()])
        .env_remove("PROVISIONER_FAKE_NOW")
        .output()?;
    if !out.status.success() {
        return Err(format!("fill: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    let batched: f64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
    openssl(
        &b.work,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "pub.key",
            "-subj",
            "/CN=bench-publisher",
            "-out",
            "pub.csr",
        ],
    )?;
    b.ok(&[
        "cert",
        "sign",
        "--csr",
        &b.work.join("pub.csr").to_string_lossy(),
        "--profile",
        "client",
        "--publish",
        "maison_pki/renew/#",
        "--subscribe",
        "maison_pki/cert/#",
        "--out",
        &b.work.join("pub.crt").to_string_lossy(),
    ])?;
    b.ok(&[
        "renewal-service",
        "setup",
        "--credential",
        "/etc/provisioner/renewal.passphrase",
    ])?;
    let broker_dir = b.work.join("broker");
    b.ok(&[
        "emit",
        "broker",
        "--out",
        &broker_dir.to_string_lossy(),
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--run-as",
        "root",
    ])?;
    let mosq = if Path::new("/usr/sbin/mosquitto").exists() {
        "/usr/sbin/mosquitto"
    } else {
        "mosquitto"
    };
    let broker = Command::new(mosq)
        .arg("-c")
        .arg(broker_dir.join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = measure(&b, &broker_dir, port, n, batched);
    stop(broker);
    let v = result?;
    println!("{v}");
    if v["answered"] != v["requests"] {
        eprintln!(
            "LOST {} of {n} answers",
            n as u64 - v["answered"].as_u64().unwrap_or(0)
        );
        std::process::exit(1);
    }
    Ok(())
}

fn measure(
    b: &Bench,
    broker_dir: &Path,
    port: u16,
    n: usize,
    batched: f64,
) -> Res<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("mosquitto did not start".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // First run: the service's persistent session and subscription exist from now on.
    let first = b.service()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.service_log().contains("connected to the broker") {
        if Instant::now() > deadline {
            return Err(format!("the service did not connect:\n{}", b.service_log()).into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop(first);
    let devices = std::fs::read_to_string(b.work.join("devices"))?;
    let mut requests = Vec::with_capacity(n);
    for line in devices.lines() {
        let (id, key) = line.split_once(' ').ok_or("devices file")?;
        requests.push((format!("maison_pki/renew/{id}"), csr(id, key)?));
    }
    let tls = tls_client::client_config(&tls_client::TlsFiles {
        ca_file: broker_dir.join("ca.crt"),
        cert_file: b.work.join("pub.crt"),
        key_file: b.work.join("pub.key"),
        server_name: Some("localhost".into()),
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut opts = MqttOptions::new("bench-publisher", "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        opts.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        let (client, mut events) = AsyncClient::new(opts, n + 16);
        client
            .subscribe("maison_pki/cert/#", QoS::AtLeastOnce)
            .await?;
        let mut acked = 0usize;
        let mut queued = false;
        let mut service: Option<Child> = None;
        let mut t0 = Instant::now();
        let mut answered = HashSet::new();
        let end = Instant::now() + Duration::from_secs(300);
        while answered.len() < n && Instant::now() < end {
            let ev = tokio::time::timeout(Duration::from_secs(5), events.poll()).await;
            match ev {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) if !queued => {
                    queued = true;
                    for (t, c) in &requests {
                        client.try_publish(t.clone(), QoS::AtLeastOnce, false, c.clone())?;
                    }
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => {
                    acked += 1;
                    if acked == n {
                        // Every request is on the broker: the service starts now.
                        t0 = Instant::now();
                        service = Some(b.service()?);
                    }
                }
                Ok(Ok(Event::Incoming(Packet::Publish(p)))) if service.is_some() => {
                    answered.insert(p.topic.to_string());
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(format!("bench client: {e}").into()),
                Err(_) => {}
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        if let Some(s) = service {
            stop(s);
        }
        let rate = answered.len() as f64 / secs;
        let refused = b.service_log().matches("refused").count();
        Ok::<_, Box<dyn std::error::Error>>(serde_json::json!({
            "requests": n,
            "queued": acked,
            "answered": answered.len(),
            "refused": refused,
            "seconds": secs,
            "renewals_per_s": rate,
            "batched_issuance_per_s": batched,
            "ratio": rate / batched,
        }))
    })
}
