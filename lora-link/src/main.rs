//! `lora-link`: the LoRa receiver daemon and the simulated-air tools.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, Subcommand};

use lora_link::air::{AirFrame, AirHub, AirMsg, AirPort, HubConfig};
use lora_link::airtime::{Modulation, format_ms};
use lora_link::link::LinkReceiver;
use lora_link::metrics::{LogThrottle, MetricsServer};
use lora_link::mqtt::{Backoff, MqttSink, TlsFiles, client_config, mqtt_options};
use lora_link::rx::{self, JsonLinesSink, RecordSink, RejectLog};

/// The cargo features this build has (shown by `--version`).
const FEATURES: &[&str] = if cfg!(feature = "rpi") { &["rpi"] } else { &[] };

/// Secure LoRa link: receiver daemon, simulated air, frame injection and capture.
///
/// The simulated air's address is `--air ADDR` in every subcommand (`air`, `inject`,
/// `sniff`), as in `provisioner emit gateway/receiver --air`; the older `--listen` and
/// `--hub` are still accepted.
#[derive(Debug, Parser)]
#[command(
    name = "lora-link",
    version = cli_common::version(FEATURES),
    after_help = after_help()
)]
struct Cli {
    /// More log output on stderr (-v info, -vv debug, -vvv trace; or LORA_LINK_LOG=LEVEL).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    cmd: Cmd,
}

fn after_help() -> String {
    format!(
        "EXIT CODES:\n  0  success (or stopped by SIGINT/SIGTERM)\n  1  runtime error (radio, hub, state)\n  \
         2  bad arguments or manifest (the message names the file and field)\n\n{}",
        cli_common::logging_help("LORA_LINK_LOG")
    )
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Receive, verify, decrypt and de-duplicate frames; republish each record to the broker
    /// of the manifest's [mqtt] section (mutual TLS, the receiver's own certificate), or print
    /// one JSON line per record when there is none.
    ///
    /// JSON records go to stdout as {"topic","payload" (if UTF-8),"payload_hex","from",
    /// "counter","rssi","snr"}; each rejected frame goes to stderr as it arrives, as
    /// {"rejected": reason, "from", "counter", "error"} (20 lines at once, then one every 5 s;
    /// the rest are summarised as {"suppressed_rejections": N, "by_reason"} at most once a
    /// minute). With --metrics the counters are served in the Prometheus text format on
    /// http://ADDR/metrics. On SIGINT/SIGTERM (or after --count frames) it waits briefly for
    /// the broker's acknowledgements and prints its counters as one JSON line on stderr.
    /// On SIGHUP it reads the manifest again and takes its keys and topic table between two
    /// frames, without stopping the radio (a new gateway, a key rotation, a retirement):
    /// {"reloaded": true, "keys": {sender: [key ids]}, "topic_table": fingerprint} on stderr,
    /// or {"reloaded": false, "error"} and the running ones kept.
    ///
    /// EXAMPLES:
    ///   lora-link rx --manifest /etc/lora-link/receiver.toml
    ///   lora-link rx --manifest receiver.toml --count 1
    ///   lora-link rx --manifest receiver.toml --print     # republish and print
    ///   lora-link rx --manifest receiver.toml --metrics 127.0.0.1:9101
    ///   systemctl reload lora-link-rx    # SIGHUP (unit of `provisioner deploy receiver`)
    Rx {
        /// Receiver manifest (written by `provisioner emit receiver ID`, mode 0600).
        #[arg(long, env = "LORA_LINK_MANIFEST")]
        manifest: PathBuf,
        /// Stop after this many accepted frames.
        #[arg(long)]
        count: Option<u64>,
        /// Also print JSON lines when republishing to a broker.
        #[arg(long)]
        print: bool,
        /// Serve the counters in the Prometheus text format on http://ADDR/metrics (loopback
        /// only; port 0 picks a free one, logged at start).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// Let --metrics listen on a non-loopback address (the endpoint has no
        /// authentication: only behind a firewall).
        #[arg(long, requires = "metrics")]
        metrics_allow_remote: bool,
    },
    /// Run the simulated air: a UDP hub on 127.0.0.1 for emulated SX1276s.
    ///
    /// EXAMPLES:
    ///   lora-link air --air 127.0.0.1:7700
    ///   lora-link air --loss 0.1 --corrupt 0.05 --record air.jsonl
    Air {
        /// Address of the simulated air to listen on (loopback only; alias --listen).
        #[arg(
            long = "air",
            alias = "listen",
            value_name = "ADDR",
            default_value = "127.0.0.1:7700"
        )]
        listen: SocketAddr,
        /// Probability of losing a frame (0..1).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Probability of corrupting a frame with 1-3 bit flips (0..1).
        #[arg(long, default_value_t = 0.0)]
        corrupt: f64,
        /// Random seed (reproducible loss and corruption).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Append every frame as a JSON line to this file (replayable with `inject --file`).
        #[arg(long)]
        record: Option<PathBuf>,
    },
    /// Inject raw frames into the simulated air (delivered without loss or corruption).
    ///
    /// EXAMPLES:
    ///   lora-link inject --hex 010a05050000deadbeef
    ///   lora-link inject --file air.jsonl          # replay a recording or a sniff capture
    Inject {
        /// Address of the simulated air (alias --hub).
        #[arg(
            long = "air",
            alias = "hub",
            value_name = "ADDR",
            default_value = "127.0.0.1:7700"
        )]
        hub: SocketAddr,
        /// Frame bytes as hex.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        hex: Option<String>,
        /// JSON lines with a "hex" field (and optionally freq_hz, sf, bw_hz, cr, crc, ldro).
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        phy: PhyArgs,
    },
    /// Print frames on the simulated air as JSON lines.
    ///
    /// EXAMPLES:
    ///   lora-link sniff --count 10
    ///   lora-link sniff --timeout 30 > capture.jsonl
    Sniff {
        /// Address of the simulated air (alias --hub).
        #[arg(
            long = "air",
            alias = "hub",
            value_name = "ADDR",
            default_value = "127.0.0.1:7700"
        )]
        hub: SocketAddr,
        /// Stop after this many frames.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Print the time on air of a LoRa frame (Semtech formula, preamble 8, explicit header,
    /// LDRO when a symbol exceeds 16 ms).
    ///
    /// EXAMPLES:
    ///   lora-link airtime --sf 7 --bw 125000 --cr 5 --bytes 16      # 51.456 ms
    ///   lora-link airtime --sf 12 --bw 125000 --cr 5 --bytes 129    # 4923.392 ms
    Airtime {
        /// Spreading factor 7..12.
        #[arg(long)]
        sf: u8,
        /// Bandwidth in Hz (125000, 250000, 500000).
        #[arg(long, default_value_t = 125_000)]
        bw: u32,
        /// Coding rate denominator 5..8 (4/5..4/8).
        #[arg(long, default_value_t = 5)]
        cr: u8,
        /// PHY payload length in bytes.
        #[arg(long)]
        bytes: usize,
        /// Payload CRC off.
        #[arg(long)]
        no_crc: bool,
        /// Preamble length in symbols.
        #[arg(long, default_value_t = 8)]
        preamble: u16,
    },
    #[command(flatten)]
    Tool(cli_common::Tool),
}

/// PHY settings of injected frames (defaults: 868.0 MHz, SF7, 125 kHz, 4/5, CRC on).
#[derive(Debug, clap::Args)]
struct PhyArgs {
    /// Frequency in MHz.
    #[arg(long, default_value_t = 868.0)]
    freq_mhz: f64,
    /// Spreading factor.
    #[arg(long, default_value_t = 7)]
    sf: u8,
    /// Bandwidth in Hz.
    #[arg(long, default_value_t = 125_000)]
    bw: u32,
    /// Coding rate denominator.
    #[arg(long, default_value_t = 5)]
    cr: u8,
}

/// The republishing sink of a manifest's [mqtt] section (paths relative to the manifest).
fn republisher(
    manifest: &std::path::Path,
    m: &manifests::link::MqttParams,
) -> Result<MqttSink, (u8, String)> {
    let dir = manifest.parent().unwrap_or(std::path::Path::new("."));
    let resolve = |p: &std::path::Path| dir.join(p);
    let tls = client_config(&TlsFiles {
        ca_file: resolve(&m.ca_file),
        cert_file: resolve(&m.cert_file),
        key_file: resolve(&m.key_file),
        server_name: None,
    })
    .map_err(|e| usage(format!("{}: [mqtt]: {e}", manifest.display())))?;
    // The broker knows the receiver by its certificate's CN, also as client id.
    lora_link::mqtt::check_client_id(&m.client_id, &resolve(&m.cert_file))
        .map_err(|e| usage(format!("{}: [mqtt] client_id: {e}", manifest.display())))?;
    let opts = mqtt_options(&m.client_id, &m.host, m.port, Duration::from_secs(30), tls);
    Ok(MqttSink::start(
        opts,
        lora_link::mqtt::qos(m.qos),
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30)),
        "lora-link rx",
    ))
}

/// Sets `stop` on SIGINT or SIGTERM, `hup` on SIGHUP (a small runtime on its own thread).
fn stop_on_signals(stop: Arc<AtomicBool>, hup: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term), Ok(mut sighup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return;
            };
            loop {
                tokio::select! {
                    _ = int.recv() => break,
                    _ = term.recv() => break,
                    _ = sighup.recv() => {
                        eprintln!("lora-link rx: SIGHUP: reloading the manifest's keys and topic table");
                        hup.store(true, Ordering::SeqCst);
                    }
                }
            }
            eprintln!("lora-link rx: stopping");
            stop.store(true, Ordering::SeqCst);
        });
    });
}

fn main() -> ExitCode {
    cli_common::quiet_broken_pipe();
    let cli = Cli::parse();
    cli_common::init_logging(cli.verbose, "LORA_LINK_LOG");
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            eprintln!("lora-link: {msg}");
            ExitCode::from(code)
        }
    }
}

type CliResult = Result<(), (u8, String)>;

fn rt<E: std::fmt::Display>(e: E) -> (u8, String) {
    (1, e.to_string())
}
fn usage<E: std::fmt::Display>(e: E) -> (u8, String) {
    (2, e.to_string())
}

fn run(cli: Cli) -> CliResult {
    match cli.cmd {
        Cmd::Tool(tool) => {
            use clap::CommandFactory;
            cli_common::run_tool(&tool, Cli::command()).map_err(rt)
        }
        Cmd::Airtime {
            sf,
            bw,
            cr,
            bytes,
            no_crc,
            preamble,
        } => {
            let mut m = Modulation::new(sf, bw, cr).map_err(usage)?;
            m.crc = !no_crc;
            m.preamble = preamble;
            cli_common::out(&format_ms(m.time_on_air(bytes)));
            Ok(())
        }
        Cmd::Air {
            listen,
            loss,
            corrupt,
            seed,
            record,
        } => {
            if !(0.0..=1.0).contains(&loss) || !(0.0..=1.0).contains(&corrupt) {
                return Err(usage("--loss and --corrupt are probabilities in 0..1"));
            }
            let hub = AirHub::bind(
                listen,
                HubConfig {
                    loss,
                    corrupt,
                    seed,
                    record,
                },
            )
            .map_err(|e| (1, format!("cannot listen on {listen}: {e}")))?;
            eprintln!(
                "lora-link air: listening on {}",
                hub.local_addr().map_err(rt)?
            );
            let stop = AtomicBool::new(false);
            hub.run(&stop).map_err(rt)
        }
        Cmd::Inject {
            hub,
            hex,
            file,
            phy,
        } => {
            let port = AirPort::connect(hub).map_err(usage)?;
            let frames: Vec<AirFrame> = match (hex, file) {
                (Some(h), _) => {
                    let bytes = hex::decode(h.trim()).map_err(|e| usage(format!("--hex: {e}")))?;
                    if bytes.len() > 255 {
                        return Err(usage("--hex: a LoRa frame has at most 255 bytes"));
                    }
                    let mut f = AirFrame::new(bytes);
                    f.freq_hz = (phy.freq_mhz * 1e6).round() as u32;
                    f.sf = phy.sf;
                    f.bw_hz = phy.bw;
                    f.cr = phy.cr;
                    f.ldro = Modulation::new(phy.sf, phy.bw, phy.cr).map_err(usage)?.ldro;
                    vec![f]
                }
                (None, Some(p)) => {
                    let text = safe_fs::read_limited_string(&p, 1 << 20)
                        .map_err(|e| usage(format!("{}: {e}", p.display())))?;
                    let mut v = Vec::new();
                    for (i, line) in text
                        .lines()
                        .enumerate()
                        .filter(|(_, l)| !l.trim().is_empty())
                    {
                        let mut f: AirFrame = serde_json::from_str(line)
                            .map_err(|e| usage(format!("{}:{}: {e}", p.display(), i + 1)))?;
                        if f.payload.len() > 255 {
                            return Err(usage(format!(
                                "{}:{}: frame longer than 255 bytes",
                                p.display(),
                                i + 1
                            )));
                        }
                        f.crc_error = false;
                        f.start_us = lora_link::air::now_us();
                        v.push(f);
                    }
                    v
                }
                (None, None) => return Err(usage("give --hex or --file")),
            };
            for f in &frames {
                tracing::debug!(
                    bytes = f.payload.len(),
                    sf = f.sf,
                    freq_hz = f.freq_hz,
                    "injecting a frame"
                );
                port.send(&AirMsg::Inject(f.clone())).map_err(rt)?;
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("lora-link inject: {} frame(s) sent to {hub}", frames.len());
            Ok(())
        }
        Cmd::Sniff {
            hub,
            count,
            timeout,
        } => {
            let port = AirPort::connect(hub).map_err(usage)?;
            let deadline = timeout.map(|s| std::time::Instant::now() + Duration::from_secs(s));
            let mut n = 0u64;
            let mut hello = std::time::Instant::now();
            while count.is_none_or(|c| n < c)
                && deadline.is_none_or(|d| std::time::Instant::now() < d)
            {
                if let Some(f) = port.recv_timeout(Duration::from_millis(200)).map_err(rt)? {
                    cli_common::out(&serde_json::to_string(&f).map_err(rt)?);
                    n += 1;
                }
                if hello.elapsed() > Duration::from_secs(5) {
                    // re-attach in case the hub restarted
                    let _ = port.send(&AirMsg::Hello);
                    hello = std::time::Instant::now();
                }
            }
            Ok(())
        }
        Cmd::Rx {
            manifest,
            count,
            print,
            metrics,
            metrics_allow_remote,
        } => {
            if let Some(addr) = metrics {
                lora_link::metrics::check_address(addr, metrics_allow_remote).map_err(usage)?;
            }
            let loaded = manifests::link::LinkManifest::load(&manifest).map_err(usage)?;
            let mut receiver = LinkReceiver::from_manifest(&loaded).map_err(usage)?;
            let mut mqtt = match &loaded.manifest.mqtt {
                None => None,
                Some(m) => Some(republisher(&loaded.path, m)?),
            };
            let mut radio =
                lora_link::radio::open(&loaded.manifest.radio, loaded.manifest.air.as_ref())
                    .map_err(rt)?;
            let stop = Arc::new(AtomicBool::new(false));
            let hup = Arc::new(AtomicBool::new(false));
            stop_on_signals(Arc::clone(&stop), Arc::clone(&hup));
            let manifest_path = loaded.path.clone();
            let load = move || {
                let l = manifests::link::LinkManifest::load(&manifest_path)
                    .map_err(|e| e.to_string())?;
                LinkReceiver::from_manifest(&l).map_err(|e| e.to_string())
            };
            let reload = rx::Reload {
                requested: &hup,
                load: &load,
            };
            let shared = Arc::new(Mutex::new(receiver.stats().clone()));
            let mut server = match metrics {
                None => None,
                Some(addr) => {
                    let (stats, republisher) = (
                        Arc::clone(&shared),
                        mqtt.as_ref().map(MqttSink::shared_counters),
                    );
                    let s = MetricsServer::start(addr, metrics_allow_remote, move || {
                        let st = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        lora_link::metrics::rx_exposition(&st, republisher.as_deref()).render()
                    })
                    .map_err(rt)?;
                    eprintln!(
                        "lora-link rx: counters on http://{}/metrics",
                        s.local_addr()
                    );
                    Some(s)
                }
            };
            // In receive mode before saying so: a frame sent on that word is heard.
            radio.listen().map_err(rt)?;
            eprintln!(
                "lora-link rx: accepting {} (sender: key ids), topic table {}",
                serde_json::json!(receiver.key_ids()),
                receiver.table_fingerprint()
            );
            // Rejections are logged by the loop (rate-limited), not by the JSON sink.
            let mut json = JsonLinesSink::new(std::io::stdout().lock(), std::io::sink());
            let mut log = RejectLog::new(std::io::stderr(), LogThrottle::default());
            let watch = rx::Watch {
                stats: Some(&*shared),
                reload: Some(&reload),
            };
            let r = match mqtt.as_mut() {
                None => rx::run_watched(
                    &mut radio,
                    &mut receiver,
                    &mut json,
                    &stop,
                    count,
                    &mut log,
                    watch,
                ),
                Some(m) if print => {
                    let mut both = |meta: &rx::FrameMeta, rec: &lora_link::Record| {
                        m.deliver(meta, rec)?;
                        json.deliver(meta, rec)
                    };
                    rx::run_watched(
                        &mut radio,
                        &mut receiver,
                        &mut both,
                        &stop,
                        count,
                        &mut log,
                        watch,
                    )
                }
                Some(m) => {
                    rx::run_watched(&mut radio, &mut receiver, m, &stop, count, &mut log, watch)
                }
            };
            let s = receiver.stats();
            let mut line = serde_json::json!({"accepted": s.frames_accepted, "records": s.records,
                "phy_crc_errors": s.phy_crc_errors, "rejected": s.rejected,
                "rejections_logged": log.logged, "rejections_suppressed": log.suppressed});
            if let Some(m) = mqtt.as_mut() {
                m.shutdown(Duration::from_secs(3));
                let c = m.counters();
                line["republished"] = c.published.load(Ordering::SeqCst).into();
                line["acked"] = c.acked.load(Ordering::SeqCst).into();
                line["republish_dropped"] = c.dropped.load(Ordering::SeqCst).into();
                line["connections"] = c.connections.load(Ordering::SeqCst).into();
                line["connection_errors"] = c.connection_errors.load(Ordering::SeqCst).into();
            }
            if let Some(s) = server.as_mut() {
                s.stop();
            }
            eprintln!("{line}");
            r.map_err(rt)
        }
    }
}
