//! One module per command, each with its clap arguments and a `run`.

pub mod cert;
pub mod crl;
pub mod demo;
pub mod deploy;
pub mod device;
pub mod emit;
pub mod init;
pub mod provision;
pub mod server;
