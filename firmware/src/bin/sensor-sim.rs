//! `sensor-sim`: a sensor board on a pseudo-terminal. The firmware core serves Microchip's
//! kit protocol and the `fw` store target on the pty (linked at `--link`), in front of an
//! emulated ATECC508A persisted in `--state` (the store persists in `STATE.store`). Once the
//! store holds `device.toml`, `device.crt` and `ca.crt`, the sensor application connects to
//! the broker over mutual TLS with the chip's key and publishes simulated readings; it
//! restarts whenever one of them changes.
//!
//! Exit codes: 0 stopped by SIGINT/SIGTERM; 1 runtime failure; 2 usage error.

fn main() -> std::process::ExitCode {
    cli_common::quiet_broken_pipe();
    firmware::sim::board::main_with_args(std::env::args_os())
}
