//! Bench provisioning: reaching a board over its USB-serial port and turning a blank
//! ESP8266 + ATECC508A into a certified sensor.

pub mod kit;
pub mod mos;
pub mod ownership;
pub mod port;
pub mod provision;

use atecc::config::ConfigZone;
use manifests::device::DeviceConfig;
/// Untrusted text shown safely (lives in `manifests`, shared with the gateway and the receiver).
pub use manifests::text;

/// What the provisioning engine ([`provision::provision`]) needs a board to do, written once
/// per transport: the kit link ([`kit::KitLink`], chip packets through the provisioning
/// firmware) and the Mongoose OS link ([`mos::MosLink`], its RPC services). What a transport
/// cannot do is said by [`Board::caps`] (and, should the engine ask anyway, by
/// [`LinkError::Unsupported`]), so both are reported the same way.
pub trait Board {
    /// The port path (for messages).
    fn port(&self) -> &str;
    /// What this transport can do, and its names for what it does (for reports).
    fn caps(&self) -> Caps;
    /// The board's description of itself (sanitised), for the `board` step.
    fn describe(&mut self) -> Result<String, LinkError>;
    /// Traffic so far.
    fn stats(&self) -> kit::LinkStats;
    /// Reads the chip's config zone.
    fn read_config(&mut self) -> Op<ConfigZone>;
    /// Writes the config zone's writable bytes.
    fn write_config(&mut self, zone: &ConfigZone) -> Op<()>;
    /// Locks the config zone: with the CRC summary of `expected` when given (the chip refuses
    /// other contents), without one when `None`.
    fn lock_config(&mut self, expected: Option<&ConfigZone>) -> Op<()>;
    /// Writes a data slot before the data lock (in clear: only before the lock).
    fn write_slot(&mut self, slot: u8, data: &[u8]) -> Op<()>;
    /// Writes the OTP zone before the data lock.
    fn write_otp(&mut self, otp: &[u8; atecc::config::OTP_SIZE]) -> Op<()>;
    /// Locks the data zone, with its CRC summary when given.
    fn lock_data(&mut self, summary: Option<u16>) -> Op<()>;
    /// Locks one slot (Lock, one slot).
    fn lock_slot(&mut self, slot: u8) -> Op<()>;
    /// Writes public data to a clear-writable slot after the data lock (the compressed
    /// certificates of issue 19): whole 32-byte blocks, then 4-byte words for a slot's short
    /// tail, as cryptoauthlib writes it. Transports without a plain Write say so.
    fn write_public_slot(&mut self, slot: u8, data: &[u8]) -> Op<()> {
        let _ = data;
        Err(atecc::client::ClientError::Transport(
            LinkError::Unsupported {
                port: self.port().to_string(),
                operation: "writing a data slot after the data lock",
                reason: format!(
                    "slot {slot} cannot be written here: use the kit transport (--transport kit)"
                ),
            },
        ))
    }
    /// Reads a whole data slot in clear (a slot that is not secret), for the compressed
    /// certificates of issue 19. Transports without a Read say so.
    fn read_slot(&mut self, slot: u8) -> Op<Vec<u8>> {
        Err(atecc::client::ClientError::Transport(
            LinkError::Unsupported {
                port: self.port().to_string(),
                operation: "reading a data slot",
                reason: format!(
                    "slot {slot} cannot be read back here: use the kit transport (--transport kit)"
                ),
            },
        ))
    }
    /// GenKey: a new private key in the slot; its public key X‖Y.
    fn gen_key(&mut self, slot: u8) -> Op<[u8; 64]>;
    /// Puts a host-made private key into the slot, encrypted with the write key (by the host
    /// or, where [`Caps::keys_in_clear`], by the board). SECRETS: never logged.
    fn priv_write(&mut self, slot: u8, key: &[u8; 32], write_key: (u8, &[u8; 32])) -> Op<()>;
    /// The public key X‖Y of the slot's private key.
    fn public_key(&mut self, slot: u8) -> Op<[u8; 64]>;
    /// R‖S over a 32-byte digest, by the slot's key.
    fn sign(&mut self, slot: u8, digest: &[u8; 32]) -> Op<[u8; 64]>;
    /// Reads a file from the board's store (None if absent).
    fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, LinkError>;
    /// Writes a file to the board's store.
    fn put(&mut self, name: &str, data: &[u8]) -> Result<(), LinkError>;
    /// The device configuration as a file in the store (the provisioning firmware's
    /// `device.toml`), or `None` where the firmware keeps a configuration of its own.
    fn config_file(&self, config: &DeviceConfig) -> Option<&'static str>;
    /// Sets the firmware's own configuration from `config` where it keeps one (Mongoose OS),
    /// when it differs: whether it changed, and the report's detail. `None`: nothing to set.
    fn set_configuration(
        &mut self,
        config: &DeviceConfig,
    ) -> Result<Option<(bool, String)>, LinkError>;
}

/// A chip operation's result: the link failed, or the chip refused.
pub type Op<T> = Result<T, atecc::client::ClientError<LinkError>>;

/// What a transport can do, and how its reports name what it does.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    /// The call that writes the config zone (`Write`, `ATCA.SetConfig`).
    pub write_config: &'static str,
    /// How the config zone is locked, as the report says it.
    pub lock_config: &'static str,
    /// How the data zone is locked, as the report says it.
    pub lock_data: &'static str,
    /// The call that makes a key in the chip.
    pub gen_key: &'static str,
    /// The call that signs the challenge.
    pub sign: &'static str,
    /// The call that writes a file.
    pub put: &'static str,
    /// What is written to the device after the certificate.
    pub files: &'static str,
    /// How a host key gets into the chip (would), and how it got there (done).
    pub inject: (&'static str, &'static str),
    /// Locks carry the zone's CRC summary (the chip itself refuses other contents); without
    /// it, the engine reads the zone back after the lock.
    pub lock_summary: bool,
    /// Every data slot and the OTP zone can be written before the data lock.
    pub zone_writes: bool,
    /// Keys (a host key, the write key) cross the line in clear, and whether the operator
    /// allowed it ([`PLAINTEXT_FLAG`]).
    pub keys_in_clear: Option<bool>,
    /// Why one slot cannot be locked on this transport (`None`: it can).
    pub no_slot_lock: Option<&'static str>,
}

/// The flag that lets secrets cross the serial line in clear (Mongoose OS computes the
/// encrypted write itself, from the plaintext key and write key it receives).
pub const PLAINTEXT_FLAG: &str = "--allow-plaintext-key-over-serial";

/// A failure on the link to a board.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The port could not be opened.
    #[error("{0}")]
    Open(String),
    /// I/O on an open port.
    #[error("{port}: {source}")]
    Io {
        /// Port.
        port: String,
        /// Cause.
        source: std::io::Error,
    },
    /// No (complete) answer in time.
    #[error(
        "{port}: no answer to `{command}` within {ms} ms: is the board running the provisioning firmware at this baud rate?"
    )]
    Timeout {
        /// Port.
        port: String,
        /// What was sent.
        command: String,
        /// Waited.
        ms: u64,
    },
    /// No answer in time from a board running Mongoose OS (RPC over UART).
    #[error("{port}: no answer to `{command}` within {ms} ms: {hint}")]
    RpcTimeout {
        /// Port.
        port: String,
        /// What was sent.
        command: String,
        /// Waited.
        ms: u64,
        /// What to check.
        hint: String,
    },
    /// The board never stops sending: it does not wait for commands.
    #[error(
        "{port}: the board sends without pause ({bytes} bytes in {ms} ms, never quiet) and does not wait for a command: is it running the provisioning firmware at this baud rate? (an application or a boot log floods the line: reset the board into the provisioning firmware)"
    )]
    Flood {
        /// Port.
        port: String,
        /// Bytes received meanwhile.
        bytes: u64,
        /// How long it was drained.
        ms: u64,
    },
    /// The whole link's time is up (every retry of every command included).
    #[error(
        "{port}: gave up at `{command}`: the time allowed for one board is over (the line is too noisy or the board too slow): check the cable and the baud rate, then run again"
    )]
    Deadline {
        /// Port.
        port: String,
        /// What was being sent.
        command: String,
    },
    /// The board runs other firmware than the transport speaks (Mongoose OS under the kit
    /// transport, the provisioning firmware under `--transport mos`).
    #[error("{port}: {found}: re-run with {fix}")]
    OtherFirmware {
        /// Port.
        port: String,
        /// What the board is, and how that was seen (sanitised).
        found: String,
        /// The option that speaks its protocol.
        fix: &'static str,
    },
    /// The board answered something that is not the protocol.
    #[error("{port}: unexpected answer to `{command}`: {answer}")]
    Protocol {
        /// Port.
        port: String,
        /// What was sent.
        command: String,
        /// What came back (sanitised).
        answer: String,
    },
    /// The transport cannot do this (its firmware has no such call, or would send a secret
    /// in clear without the operator's permission).
    #[error("{port}: {operation} is not possible over this transport: {reason}")]
    Unsupported {
        /// Port.
        port: String,
        /// What was asked.
        operation: &'static str,
        /// Why not, and what to do.
        reason: String,
    },
    /// The board refused (firmware status code).
    #[error("{port}: board refused `{command}`: {reason}")]
    Refused {
        /// Port.
        port: String,
        /// What was sent.
        command: String,
        /// Why.
        reason: String,
    },
}
