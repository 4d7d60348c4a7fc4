//! `provisioner`: the operator's command line. It creates the site's CA, issues the broker's
//! certificate, signs CSRs, revokes, keeps the CRL fresh and emits the broker configuration.
//! All state lives under one home directory (`--home`, env `PROVISIONER_HOME`, default
//! `$XDG_DATA_HOME/provisioner` or `~/.local/share/provisioner`).

mod cmd;
mod context;
mod exit;

use clap::{Parser, Subcommand};
use provisioner::bench;

use crate::context::Context;

const EXAMPLES: &str = "\
HOME:
  --home DIR, else PROVISIONER_HOME, else $XDG_DATA_HOME/provisioner, else
  ~/.local/share/provisioner. The examples below set PROVISIONER_HOME once.

EXAMPLES:
  # A new site from the example house, the broker's certificate, and its configuration
  export PROVISIONER_HOME=~/maison-pki
  provisioner init --site manifests/examples/smart-home.toml
  provisioner server issue --dns broker.maison.lan --ip 192.168.1.10
  provisioner emit broker --out ./broker && mosquitto -c ./broker/mosquitto.conf

  # Certify a client whose key was made elsewhere, then revoke it
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \\
      -keyout probe.key -subj /CN=probe-1 -out probe.csr
  provisioner cert sign --csr probe.csr --profile client --out probe.crt
  provisioner device revoke probe-1 && kill -HUP $(cat ./broker/run/mosquitto.pid)

  # Shell completions and manual pages (the same for gateway, lora-link and sensor-sim)
  provisioner completions bash > /etc/bash_completion.d/provisioner
  provisioner man --out /usr/local/share/man/man1

PASSPHRASE:
  The CA key is encrypted. The passphrase comes from the environment variable
  PROVISIONER_PASSPHRASE, from --passphrase-file FILE (mode 0600), or from a prompt on the
  terminal; never from the command line, and it is never logged.

EXIT CODES:
  0  success
  1  failure (I/O, SQLite, certificate generation)
  2  usage error (unknown flag, missing argument)
  3  invalid input (site file, CSR, public key, profile): nothing was changed
  4  credentials (wrong passphrase, key file readable by others): nothing was changed
  5  state (no CA yet, CA expired, unknown device, conflict): nothing was changed
  6  stopped before an irreversible step that was not permitted (`device provision`
     without --lock): re-run with the permission
  10 audit: a certificate or the CRL is inside its renewal window
  11 audit: a certificate or the CRL has expired
  12 renew: something due could not be renewed (the report says which and why)

LOGGING:
  Logs go to stderr, results (and --json) to stdout. -v shows each provisioning step with
  its port (info), -vv each command sent to the chip (debug; keys, passphrases and key
  payloads are never logged), -vvv everything (trace). PROVISIONER_LOG=LEVEL (off, error,
  warn, info, debug, trace) overrides -v. Colour only on a terminal and when NO_COLOR is
  unset; progress bars only on a terminal.";

/// Provision an IoT sensor network: CA, broker certificate, devices, broker configuration.
#[derive(Debug, Parser)]
#[command(
    name = "provisioner",
    version = cli_common::version(&[]),
    after_help = "Exit codes 0-12, examples, passphrase and logging: see --help.",
    after_long_help = EXAMPLES
)]
pub struct Cli {
    /// Home directory holding the CA, the ledger and the site file.
    /// [default: $XDG_DATA_HOME/provisioner, else ~/.local/share/provisioner]
    #[arg(long, env = "PROVISIONER_HOME", global = true, value_name = "DIR")]
    home: Option<std::path::PathBuf>,
    /// Read the CA passphrase (or, when the CA key is in a PKCS#11 token, its PIN) from this
    /// file (mode 0600) instead of the environment or a prompt.
    #[arg(long, global = true, value_name = "FILE")]
    passphrase_file: Option<std::path::PathBuf>,
    /// Print results as JSON on stdout (logs stay on stderr).
    #[arg(long, global = true)]
    json: bool,
    /// More log output on stderr: -v each step with its port, -vv each chip command, -vvv
    /// trace (or PROVISIONER_LOG=LEVEL).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the CA, the ledger and the site configuration in the home.
    Init(cmd::init::Args),
    /// Check a site file without touching anything.
    #[command(subcommand)]
    Site(cmd::site::SiteCommand),
    /// The broker's server certificate.
    #[command(subcommand)]
    Server(cmd::server::ServerCommand),
    /// Sign certificate requests made elsewhere.
    #[command(subcommand)]
    Cert(cmd::cert::CertCommand),
    /// Devices and clients known to the ledger.
    #[command(subcommand)]
    Device(cmd::device::DeviceCommand),
    /// Publish the certificate revocation list (renews it when due).
    Crl(cmd::crl::Args),
    /// Every certificate's days left; exits 10 if one is due for renewal, 11 if one expired.
    Audit(cmd::audit::Args),
    /// Renew every broker, gateway and receiver certificate (and the CRL) that is due, where
    /// it is installed; --reload reloads the brokers on this machine.
    Renew(cmd::renew::Args),
    /// Renewal in the field: the CA-side service that answers the boards' renewal requests.
    #[command(subcommand)]
    RenewalService(cmd::renewal::RenewalCommand),
    /// Bench stations, each with its own issuing CA on the shared ledger: add, list, revoke.
    #[command(subcommand)]
    Station(cmd::station::StationCommand),
    /// Write the configuration another program consumes.
    #[command(subcommand)]
    Emit(cmd::emit::EmitCommand),
    /// Install a node's configuration into a root filesystem (e.g. a Pi's NFS root).
    #[command(subcommand)]
    Deploy(cmd::deploy::DeployCommand),
    /// LoRa link keys: rotate a gateway's key with a window, retire the old one.
    #[command(subcommand)]
    Link(cmd::link::LinkCommand),
    /// The whole network on this machine, no hardware: CA, N simulated boards provisioned
    /// over their serial ports, both brokers, the gateway, the LoRa air and the receiver.
    #[command(after_help = cmd::demo::HELP)]
    Demo(cmd::demo::Args),
    #[command(flatten)]
    Tool(cli_common::Tool),
}

fn main() {
    cli_common::quiet_broken_pipe();
    // `provisioner sim-board ARGS` runs a simulated board (the `sensor-sim` of the firmware
    // crate) as a child process of `demo` and of the tests, from this same binary.
    let mut argv = std::env::args_os();
    if std::env::args_os().nth(1).is_some_and(|a| a == "sim-board") {
        let rest: Vec<std::ffi::OsString> = argv.by_ref().skip(2).collect();
        let code = firmware::sim::board::main_with_args(
            std::iter::once(std::ffi::OsString::from("sensor-sim")).chain(rest),
        );
        std::process::exit(if code == std::process::ExitCode::SUCCESS {
            0
        } else {
            1
        });
    }
    let cli = Cli::parse();
    // The renewal service is a daemon: what it issues and refuses is its journal (info).
    let service = matches!(
        cli.command,
        Command::RenewalService(cmd::renewal::RenewalCommand::Run(_))
    );
    let verbose = if service {
        cli.verbose.max(1)
    } else {
        cli.verbose
    };
    cli_common::init_logging(verbose, "PROVISIONER_LOG");
    // With --json, a command that fails before printing its result still prints one JSON
    // document (the demo prints its own summary, interrupted or not).
    let json_errors = cli.json && !matches!(cli.command, Command::Demo(_) | Command::Tool(_));
    if let Err(e) = run(cli) {
        eprintln!("error: {e}");
        if let Some(help) = e.help() {
            eprintln!("  help: {help}");
        }
        if json_errors && !context::printed_json() {
            cli_common::out(
                &serde_json::json!({
                    "ok": false,
                    "exit_code": e.code(),
                    "error": e.to_string(),
                    "help": e.help(),
                })
                .to_string(),
            );
        }
        std::process::exit(e.code());
    }
}

fn run(cli: Cli) -> exit::Result<()> {
    if let Command::Tool(tool) = &cli.command {
        use clap::CommandFactory;
        return cli_common::run_tool(tool, Cli::command())
            .map_err(|e| exit::CliError::new(exit::Code::Failure, e));
    }
    let home = match cli.home {
        Some(h) => h,
        None => context::default_home()?,
    };
    tracing::debug!(home = %home.display(), "CA home");
    let ctx = Context::new(home, cli.passphrase_file, cli.json);
    match cli.command {
        Command::Init(a) => cmd::init::run(&ctx, a),
        Command::Site(c) => cmd::site::run(&ctx, c),
        Command::Server(c) => cmd::server::run(&ctx, c),
        Command::Cert(c) => cmd::cert::run(&ctx, c),
        Command::Device(c) => cmd::device::run(&ctx, c),
        Command::Crl(a) => cmd::crl::run(&ctx, a),
        Command::Audit(a) => cmd::audit::run(&ctx, a),
        Command::Renew(a) => cmd::renew::run(&ctx, a),
        Command::RenewalService(c) => cmd::renewal::run(&ctx, c),
        Command::Station(c) => cmd::station::run(&ctx, c),
        Command::Emit(c) => cmd::emit::run(&ctx, c),
        Command::Deploy(c) => cmd::deploy::run(&ctx, c),
        Command::Link(c) => cmd::link::run(&ctx, c),
        Command::Demo(a) => cmd::demo::run(&ctx, a),
        Command::Tool(_) => Ok(()),
    }
}
