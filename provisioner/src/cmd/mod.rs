//! One module per command, each with its clap arguments and a `run`.

pub mod cert;
pub mod crl;
pub mod device;
pub mod emit;
pub mod init;
pub mod provision;
pub mod server;
