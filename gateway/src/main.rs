//! `gateway`: Pi #1 daemon that subscribes to the broker with its own client certificate and
//! forwards readings over the secure LoRa link.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;

use gateway::cli::{Cli, GatewayCommand};

use gateway::bridge::{self, BridgeConfig};
use gateway::forward::{self, ToRadio};
use gateway::{Counters, SHUTDOWN_GRACE, log, write_counters};
use lora_link::LinkSender;
use lora_link::metrics::MetricsServer;
use manifests::gateway::GatewayManifest;

fn main() -> ExitCode {
    cli_common::quiet_broken_pipe();
    let cli = Cli::parse();
    cli_common::init_logging(cli.verbose, "GATEWAY_LOG");
    if let Some(GatewayCommand::BrokerAgent(args)) = &cli.command {
        return match gateway::agent::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err((code, msg)) => {
                log!("broker-agent: error: {msg}");
                ExitCode::from(code)
            }
        };
    }
    if let Some(GatewayCommand::Tool(tool)) = &cli.command {
        return match cli_common::run_tool(tool, gateway::cli::command()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log!("error: {e}");
                ExitCode::from(1)
            }
        };
    }
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
    let Some(manifest) = cli.manifest.as_deref() else {
        return Err((2, "--manifest FILE is required".into()));
    };
    if let Some(addr) = cli.metrics {
        lora_link::metrics::check_address(addr, cli.metrics_allow_remote)
            .map_err(|e| config(e.to_string()))?;
    }
    let g = GatewayManifest::load(manifest).map_err(|e| config(e.to_string()))?;
    let m = &g.manifest.mqtt;
    let bridge_cfg = BridgeConfig::from_manifest(&g).map_err(config)?;
    let sender = LinkSender::from_manifest(&g.link).map_err(|e| (1, e.to_string()))?;
    if cli.check {
        radio_supported(&g.link.manifest).map_err(|e| (1, e))?;
        eprintln!(
            "gateway: {} is valid: broker {}:{} (TLS name {}), {} filter(s), link node {} -> {}",
            manifest.display(),
            m.host,
            m.port,
            m.tls_server_name(),
            m.filters.len(),
            g.link.manifest.node.address,
            g.link.manifest.destination().unwrap_or(255),
        );
        if cli.json {
            cli_common::out(
                &serde_json::json!({
                    "ok": true,
                    "manifest": manifest,
                    "broker": format!("{}:{}", m.host, m.port),
                    "tls_name": m.tls_server_name(),
                    "filters": m.filters,
                    "node": g.link.manifest.node.address,
                    "destination": g.link.manifest.destination().unwrap_or(255),
                })
                .to_string(),
            );
        }
        return Ok(());
    }
    let radio = lora_link::radio::open(&g.link.manifest.radio, g.link.manifest.air.as_ref())
        .map_err(|e| (1, format!("radio: {e}")))?;
    log!(
        "forwarding {} from {}:{} to LoRa node {} ({} MHz, SF{}, capacity {} bytes/frame), link key {}, topic table {}",
        m.filters.join(", "),
        m.host,
        m.port,
        g.link.manifest.destination().unwrap_or(255),
        g.link.manifest.radio.frequency_mhz,
        g.link.manifest.radio.spreading_factor.get(),
        sender.capacity(),
        sender.key_id(),
        sender.table_fingerprint(),
    );

    let counters = Arc::new(Mutex::new(Counters::default()));
    {
        let mut c = counters.lock().unwrap_or_else(|p| p.into_inner());
        c.update_from(sender.stats(), 0);
        c.duty_cycle_left_us =
            u64::try_from(sender.budget().limit().as_micros()).unwrap_or(u64::MAX);
    }
    let mut metrics = match cli.metrics {
        None => None,
        Some(addr) => {
            let shared = Arc::clone(&counters);
            let server = MetricsServer::start(addr, cli.metrics_allow_remote, move || {
                let c = shared.lock().unwrap_or_else(|p| p.into_inner()).clone();
                c.exposition().render()
            })
            .map_err(|e| (1, e.to_string()))?;
            log!("counters on http://{}/metrics", server.local_addr());
            Some(server)
        }
    };
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
    if let Some(m) = metrics.as_mut() {
        m.stop();
    }
    let final_counters = counters.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(path) = &g.counters_file
        && let Err(e) = write_counters(path, &final_counters)
    {
        log!("cannot write counters to {}: {e}", path.display());
    }
    cli_common::out(&final_counters.to_json_line());
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
