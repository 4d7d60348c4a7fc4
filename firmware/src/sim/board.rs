//! The whole simulated board, as run by `sensor-sim` (and by `provisioner demo`): a sensor board on a pseudo-terminal. The firmware core serves Microchip's
//! kit protocol and the `fw` store target on the pty (linked at `--link`), in front of an
//! emulated ATECC508A persisted in `--state` (the store persists in `STATE.store`). Once the
//! store holds `device.toml`, `device.crt` and `ca.crt`, the sensor application connects to
//! the broker over mutual TLS with the chip's key and publishes simulated readings; it
//! restarts whenever one of them changes.
//!
//! Exit codes: 0 stopped by SIGINT/SIGTERM; 1 runtime failure; 2 usage error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::chip::Atecc;
use crate::sim::bus::{EmulatedBus, QuietChipSigner};
use crate::sim::mqtt::{CA_CERT_BLOB, DEVICE_CERT_BLOB, Provisioned};
use crate::sim::persist::FilePersist;
use crate::sim::pty::Pty;
use crate::sim::serial::{BoardEvents, SerialLoop, SharedStore};
use crate::store::Store;
use atecc::emulator::{Chip, Timing};
use clap::{Parser, ValueEnum};
use tokio::sync::watch;

/// Serial protocol the simulated board speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// Microchip's kit protocol plus the `fw` store target.
    Kit,
    /// Mongoose OS RPC over UART with the ATCA, FS and Config services.
    Mos,
}

/// Chip execution-time model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TimingArg {
    /// Answers at once.
    None,
    /// Typical datasheet times.
    Typ,
    /// Maximum datasheet times.
    Max,
}

/// A simulated ESP8266 + ATECC508A sensor board on a pseudo-terminal.
///
/// The firmware core serves Microchip's kit protocol (or Mongoose OS RPC with --transport mos)
/// on a pseudo-terminal linked at --link, in front of an emulated ATECC508A persisted in
/// --state. Once provisioned, the sensor application publishes readings to the broker over
/// mutual TLS with the chip's key.
///
/// EXAMPLES:
///   sensor-sim --link /tmp/ttyUSB0 --state /tmp/board0.chip
///   sensor-sim --link /tmp/ttyUSB1 --state /tmp/board1.chip --transport mos -v
///
/// EXIT CODES:
///   0  stopped by SIGINT/SIGTERM
///   1  runtime failure (pseudo-terminal, chip state, broker)
///   2  usage error
#[derive(Debug, Parser)]
#[command(
    name = "sensor-sim",
    version = cli_common::version(&[]),
    verbatim_doc_comment,
    after_help = cli_common::logging_help("SENSOR_SIM_LOG")
)]
pub struct Args {
    /// Where to link the board's serial port, e.g. /tmp/ttyUSB0.
    #[arg(long)]
    pub link: PathBuf,
    /// Chip state file (created blank if absent); the store lives in STATE.store.
    #[arg(long)]
    pub state: PathBuf,
    /// Protocol spoken on the serial port, as `provisioner device provision --transport`
    /// (alias --protocol).
    #[arg(
        long = "transport",
        alias = "protocol",
        value_enum,
        default_value = "kit"
    )]
    pub protocol: Protocol,
    /// Baud rate to pace the serial port at (10 bits per byte); 0 = unpaced.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Chip command execution time.
    #[arg(long, value_enum, default_value = "none")]
    pub timing: TimingArg,
    /// Serial line noise for tests: each byte, in either direction, is dropped or has a bit
    /// flipped with this probability (e.g. 0.001).
    #[arg(long, default_value_t = 0.0)]
    pub line_fault_rate: f64,
    /// More log output on stderr (-v info, -vv debug, -vvv trace; or SENSOR_SIM_LOG=LEVEL).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The whole `sensor-sim` command line: the board's arguments, or `completions` / `man`.
pub fn command() -> clap::Command {
    use clap::{CommandFactory, Subcommand};
    let board = Args::command();
    let about = board.get_about().cloned().unwrap_or_default();
    let long_about = board.get_long_about().cloned().unwrap_or_default();
    cli_common::Tool::augment_subcommands(board)
        .about(about)
        .long_about(long_about)
        .subcommand_negates_reqs(true)
        .args_conflicts_with_subcommands(true)
}

struct Events {
    generation: watch::Sender<u64>,
}

impl BoardEvents for Events {
    fn blob_changed(&self, name: &str) {
        if [
            manifests::device::BLOB_NAME,
            DEVICE_CERT_BLOB,
            CA_CERT_BLOB,
            crate::sim::mos::CONFIG_FILE,
        ]
        .contains(&name)
        {
            eprintln!("sensor-sim: {name} changed; restarting the application");
            self.generation.send_modify(|g| *g += 1);
        }
    }
    fn rebooted(&self) {
        eprintln!("sensor-sim: reboot");
        self.generation.send_modify(|g| *g += 1);
    }
}

/// Runs a board with command-line arguments (`argv[0]` first), as the `sensor-sim` binary does.
pub fn main_with_args<I, T>(argv: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::FromArgMatches;
    let parsed = command().try_get_matches_from(argv).and_then(|m| {
        if m.subcommand().is_some() {
            cli_common::Tool::from_arg_matches(&m).map(Err)
        } else {
            Args::from_arg_matches(&m).map(Ok)
        }
    });
    let args = match parsed {
        Ok(Ok(a)) => a,
        Ok(Err(tool)) => {
            return match cli_common::run_tool(&tool, command()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sensor-sim: {e}");
                    ExitCode::from(1)
                }
            };
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    cli_common::init_logging(args.verbose, "SENSOR_SIM_LOG");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sensor-sim: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs a board until SIGINT/SIGTERM.
pub fn run(args: Args) -> Result<(), String> {
    let mut chip =
        Chip::open(&args.state).map_err(|e| format!("chip state {}: {e}", args.state.display()))?;
    // A simulated chip need not fsync its EEPROM after every command: atomic renames keep it
    // consistent across kills, and the timing model stands for the chip's write time.
    chip.set_fast_persist(true);
    tracing::info!(state = %args.state.display(), transport = ?args.protocol, baud = args.baud, "chip state opened");
    chip.set_timing(match args.timing {
        TimingArg::None => Timing::None,
        TimingArg::Typ => Timing::Typical,
        TimingArg::Max => Timing::Maximum,
    });
    let bus = EmulatedBus::new(chip);
    let signs = bus.sign_counter();
    let chip = Arc::new(Mutex::new(Atecc::new(bus)));
    let mut store_path = args.state.clone().into_os_string();
    store_path.push(".store");
    let persist = FilePersist::new(store_path);
    // A store file that cannot be loaded stops the board (rather than an empty store).
    persist.check().map_err(|e| format!("store {e}"))?;
    let store: SharedStore = Arc::new(Mutex::new(Box::new(Store::open(persist))));

    let pty = Pty::open(&args.link)
        .map_err(|e| format!("serial port link {}: {e}", args.link.display()))?;
    eprintln!(
        "sensor-sim: board on {} (linked at {}), {} baud",
        pty.slave_path().display(),
        pty.link().display(),
        args.baud
    );

    let stop = Arc::new(AtomicBool::new(false));
    let last_line_ms = Arc::new(AtomicU64::new(0));
    let (gen_tx, gen_rx) = watch::channel(0u64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;

    let serial = SerialLoop {
        baud: args.baud,
        chip: chip.clone(),
        store: store.clone(),
        last_line_ms: last_line_ms.clone(),
        stop: stop.clone(),
        noise: crate::sim::serial::LineNoise::new(args.line_fault_rate),
    };
    let protocol = args.protocol;
    let serial_thread = std::thread::spawn(move || {
        let events = Events { generation: gen_tx };
        let r = match protocol {
            Protocol::Kit => serial.run(&pty, &events),
            Protocol::Mos => crate::sim::mos::MosLoop {
                baud: serial.baud,
                chip: serial.chip.clone(),
                store: serial.store.clone(),
                last_line_ms: serial.last_line_ms.clone(),
                stop: serial.stop.clone(),
                noise: serial.noise.clone(),
            }
            .run(&pty, &events),
        };
        drop(pty); // removes the link
        r
    });

    let app_chip = chip.clone();
    runtime.spawn(async move {
        let mut rx = gen_rx;
        loop {
            rx.borrow_and_update();
            // A renewed certificate on trial (possibly left by a kill) comes first.
            let (cert, trial) = match protocol {
                Protocol::Kit => crate::sim::renewal::cert_to_use(&store),
                Protocol::Mos => (None, false),
            };
            let provisioned = {
                let Ok(s) = store.lock() else { return };
                match protocol {
                    Protocol::Kit => Provisioned::from_blobs(
                        s.blob(manifests::device::BLOB_NAME.as_bytes()),
                        cert.as_deref(),
                        s.blob(CA_CERT_BLOB.as_bytes()),
                    ),
                    // Mongoose OS: the saved configuration names the files and the key slot.
                    Protocol::Mos => crate::sim::mos::provisioned(s.as_ref()),
                }
            };
            match provisioned {
                Ok(p) => {
                    let signer = Arc::new(QuietChipSigner::new(
                        app_chip.clone(),
                        p.config.key_slot,
                        last_line_ms.clone(),
                        signs.clone(),
                    ));
                    let mut p = p;
                    if protocol == Protocol::Mos {
                        p.config.renewal = None; // stock Mongoose OS renews at the bench
                    }
                    crate::sim::mqtt::run(p, signer, rx.clone(), store.clone(), trial).await;
                }
                Err(why) => {
                    eprintln!("sensor-sim: waiting for provisioning: {why}");
                    if rx.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
    });

    let stopped = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => Ok::<_, String>(true),
            _ = int.recv() => Ok(true),
            _ = async { while !serial_thread.is_finished() { tokio::time::sleep(std::time::Duration::from_millis(100)).await; } } => Ok(false),
        }
    })?;
    stop.store(true, Ordering::SeqCst);
    let _ = stopped;
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match serial_thread.join() {
        Ok(r) => r.map_err(|e| format!("serial port: {e}")),
        Err(_) => Err("serial loop panicked".into()),
    }
}
