//! The `gateway` command line, in the library so that `provisioner deploy gateway` renders
//! the same manual page (`gateway.1`) the binary would ([`command`]).

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

/// The cargo features this build has (shown by `--version`).
pub const FEATURES: &[&str] = if cfg!(feature = "rpi") { &["rpi"] } else { &[] };

/// Forward MQTT messages from the broker over the secure LoRa link.
///
/// Connects to the broker of the manifest with the gateway's client certificate (mutual TLS),
/// subscribes to the manifest's topic filters, and sends each message as a record over the
/// LoRa link within the duty-cycle budget. Logs go to stderr; on SIGINT or SIGTERM it sends
/// what the budget allows for a few seconds, then prints its counters as one JSON line on
/// stdout ({"received","queued","sent","frames_sent","dropped_queue_full",...}) and exits 0.
/// Every record it drops or refuses is logged as it happens (rate-limited: 20 lines, then one
/// every 5 s, and a summary of the rest); with --metrics the same counters are served while
/// it runs in the Prometheus text format.
///
/// EXAMPLES:
///   gateway --manifest /etc/iot-gateway/gateway.toml
///   gateway --manifest ./passerelle/gateway.toml --check
///   gateway -v --manifest gateway.toml          # each frame and connection (GATEWAY_LOG=info)
///   gateway --manifest gateway.toml --metrics 127.0.0.1:9102   # curl it /metrics
///   gateway completions bash > /etc/bash_completion.d/gateway
///   gateway man --out /usr/local/share/man/man1
///   gateway broker-agent --config /etc/iot-broker-agent/agent.toml   # see its --help
///
/// EXIT CODES:
///   0  stopped by a signal (or --check passed)
///   1  runtime failure (radio, counter state)
///   2  bad arguments or manifest (the message names the file and field)
#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version = cli_common::version(FEATURES),
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = cli_common::logging_help("GATEWAY_LOG")
)]
pub struct Cli {
    /// Gateway manifest (written by `provisioner emit gateway ID`, mode 0600).
    #[arg(long, env = "GATEWAY_MANIFEST", value_name = "FILE", required = true)]
    pub manifest: Option<PathBuf>,
    /// Only load and check the manifest, the certificates and the link; then exit.
    #[arg(long)]
    pub check: bool,
    /// With --check: print the result as one JSON object on stdout. (The counters printed
    /// at shutdown are always JSON.)
    #[arg(long)]
    pub json: bool,
    /// Serve the counters in the Prometheus text format on http://ADDR/metrics (loopback
    /// only; port 0 picks a free one, logged at start).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Let --metrics listen on a non-loopback address (the endpoint has no authentication:
    /// only behind a firewall).
    #[arg(long, requires = "metrics")]
    pub metrics_allow_remote: bool,
    /// More log output on stderr (-v info, -vv debug, -vvv trace; or GATEWAY_LOG=LEVEL).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// The broker agent, or packaging helpers.
    #[command(subcommand)]
    pub command: Option<GatewayCommand>,
}

/// Subcommands: the broker agent and the packaging helpers.
#[derive(Debug, clap::Subcommand)]
pub enum GatewayCommand {
    /// Keep this machine's mosquitto in step with the bench: install the signed updates
    /// (ACL, CRL, broker certificate) it publishes, and reload that mosquitto only.
    BrokerAgent(crate::agent::Args),
    /// Packaging helpers (completions, manual pages).
    #[command(flatten)]
    Tool(cli_common::Tool),
}

/// The gateway's clap definition (for completions and manual pages).
pub fn command() -> clap::Command {
    Cli::command()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_definition_is_consistent() {
        super::command().debug_assert();
    }
}
