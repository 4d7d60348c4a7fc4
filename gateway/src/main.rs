//! `gateway`: Pi #1 daemon that subscribes to the broker with its own client certificate and
//! forwards readings over the secure LoRa link.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;

use gateway::bridge::{self, BridgeConfig};
use gateway::forward::{self, ToRadio};
use gateway::{Counters, SHUTDOWN_GRACE, log, write_counters};
use lora_link::LinkSender;
use manifests::gateway::GatewayManifest;

/// Forward MQTT messages from the broker over the secure LoRa link.
///
/// Connects to the broker of the manifest with the gateway's client certificate (mutual TLS),
/// subscribes to the manifest's topic filters, and sends each message as a record over the
/// LoRa link within the duty-cycle budget. Logs go to stderr; on SIGINT or SIGTERM it sends
/// what the budget allows for a few seconds, then prints its counters as one JSON line on
/// stdout ({"received","queued","sent","frames_sent","dropped_queue_full",...}) and exits 0.
///
/// EXAMPLES:
///   gateway --manifest /etc/iot-gateway/gateway.toml
///   gateway --manifest ./passerelle/gateway.toml --check
///
/// EXIT CODES:
///   0  stopped by a signal (or --check passed)
///   1  runtime failure (radio, counter state)
///   2  bad arguments or manifest (the message names the file and field)
#[derive(Debug, Parser)]
#[command(name = "gateway", version, verbatim_doc_comment)]
struct Cli {
    /// Gateway manifest (written by `provisioner emit gateway ID`, mode 0600).
    #[arg(long, env = "GATEWAY_MANIFEST", value_name = "FILE")]
    manifest: PathBuf,
    /// Only load and check the manifest, the certificates and the link; then exit.
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, msg)) => {
            log!("error: {msg}");
            ExitCode::from(code)
        }
    }
}

fn run(cli: Cli) -> Result<(), (u8, String)> {
    let config = |e: String| (2u8, e);
    let g = GatewayManifest::load(&cli.manifest).map_err(|e| config(e.to_string()))?;
    let m = &g.manifest.mqtt;
    let bridge_cfg = BridgeConfig::from_manifest(&g).map_err(config)?;
    let sender = LinkSender::from_manifest(&g.link).map_err(|e| (1, e.to_string()))?;
    if cli.check {
        radio_supported(&g.link.manifest).map_err(|e| (1, e))?;
        eprintln!(
            "gateway: {} is valid: broker {}:{} (TLS name {}), {} filter(s), link node {} -> {}",
            cli.manifest.display(),
            m.host,
            m.port,
            m.tls_server_name(),
            m.filters.len(),
            g.link.manifest.node.address,
            g.link.manifest.destination().unwrap_or(255),
        );
        return Ok(());
    }
    let radio = lora_link::radio::open(&g.link.manifest.radio, g.link.manifest.air.as_ref())
        .map_err(|e| (1, format!("radio: {e}")))?;
    log!(
        "forwarding {} from {}:{} to LoRa node {} ({} MHz, SF{}, capacity {} bytes/frame)",
        m.filters.join(", "),
        m.host,
        m.port,
        g.link.manifest.destination().unwrap_or(255),
        g.link.manifest.radio.frequency_mhz,
        g.link.manifest.radio.spreading_factor.get(),
        sender.capacity(),
    );

    let counters = Arc::new(Mutex::new(Counters::default()));
    let radio_stopped = Arc::new(AtomicBool::new(false));
    let (to_radio, from_mqtt) = std::sync::mpsc::channel();
    let radio_thread = forward::spawn(
        sender,
        radio,
        from_mqtt,
        Arc::clone(&counters),
        Arc::clone(&radio_stopped),
        SHUTDOWN_GRACE,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| (1, format!("tokio runtime: {e}")))?;
    let bridged = runtime.block_on(bridge::run(
        bridge_cfg,
        to_radio.clone(),
        Arc::clone(&counters),
        Arc::clone(&radio_stopped),
        bridge::signals(),
    ));
    runtime.shutdown_timeout(Duration::from_millis(200));
    let _ = to_radio.send(ToRadio::Shutdown);
    drop(to_radio);
    let radio_result = radio_thread
        .join()
        .unwrap_or_else(|_| Err("the radio thread panicked".into()));
    let final_counters = counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(path) = &g.counters_file
        && let Err(e) = write_counters(path, &final_counters)
    {
        log!("cannot write counters to {}: {e}", path.display());
    }
    println!("{}", final_counters.to_json_line());
    if !final_counters.balanced() {
        log!("counters do not add up (received vs sent + dropped + waiting): please report");
    }
    match (radio_result, bridged) {
        (Err(e), _) => Err((1, e)),
        (Ok(()), Err(e)) => Err((1, e.to_string())),
        (Ok(()), Ok(())) => {
            log!("stopped cleanly");
            Ok(())
        }
    }
}

/// Whether this binary can drive the radio the link manifest asks for: `--check` must not
/// pass a manifest the daemon then fails to start with.
fn radio_supported(m: &manifests::link::LinkManifest) -> Result<(), String> {
    use manifests::link::RadioBackend;
    match m.radio.backend {
        RadioBackend::Emulated if m.air.is_none() => Err(
            "the link manifest asks for the emulated radio but has no [air] hub: give `provisioner emit gateway` --air 127.0.0.1:PORT".into(),
        ),
        RadioBackend::Emulated => Ok(()),
        RadioBackend::Sx127x if cfg!(feature = "rpi") => Ok(()),
        RadioBackend::Sx127x => Err(
            "the link manifest asks for the real SX127x radio, but this gateway was built without feature `rpi`: build it with `cargo build -p gateway --features rpi` (lora-link/cross-check.sh --release for the Pi), or emit the manifest with --air ADDR for the emulated radio".into(),
        ),
    }
}
