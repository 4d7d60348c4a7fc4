//! Bench provisioning: reaching a board over its USB-serial port and turning a blank
//! ESP8266 + ATECC508A into a certified sensor.

pub mod kit;
pub mod mos;
pub mod ownership;
pub mod port;
pub mod provision;
pub mod provision_mos;
/// Untrusted text shown safely (lives in `manifests`, shared with the gateway and the receiver).
pub use manifests::text;

/// What a board link can do: talk to the chip, and to the firmware's blob store.
pub trait Board: atecc::client::Transport<Error = LinkError> {
    /// The port path (for messages).
    fn port(&self) -> &str;
    /// Firmware information (`version=…,id=…,free=…`).
    fn info(&mut self) -> Result<String, LinkError>;
    /// Reads a blob (None if absent).
    fn get(&mut self, name: &str) -> Result<Option<Vec<u8>>, LinkError>;
    /// Writes a blob atomically (the old one stays until the new one is complete).
    fn put(&mut self, name: &str, data: &[u8]) -> Result<(), LinkError>;
}

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
