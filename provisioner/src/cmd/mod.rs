//! One module per command, each with its clap arguments and a `run`.

pub mod agents;
pub mod audit;
pub mod brokers;
pub mod cert;
pub mod certdef;
pub mod certdef_c;
pub mod crl;
pub mod demo;
pub mod deploy;
pub mod deploy_broker;
pub mod device;
pub mod emit;
pub mod init;
pub mod link;
pub mod manifest;
pub mod nodes;
pub mod provision;
pub mod renew;
pub mod renewal;
pub mod server;
pub mod shared_ledger;
pub mod site;
pub mod station;

/// The human lines for CRL targets the ledger named but that were refused (empty if none).
pub(crate) fn skipped_targets(skipped: &[ca::authority::SkippedTarget]) -> String {
    skipped
        .iter()
        .map(|s| {
            format!(
                "\n  NOT written: {} ({}); fix the directory or re-run `emit broker` for it",
                s.path.display(),
                s.reason
            )
        })
        .collect()
}
