//! The data contract between the provisioner and everything it configures.
//!
//! Owns: the site file ([`site`]), the device configuration blob written to each sensor
//! ([`device`]), the LoRa link manifests of the gateway and the receiver ([`link`]), and the
//! rendering of mosquitto.conf and its ACL ([`mosquitto`]). Loading reports precise errors:
//! file, line, field, and what was expected ([`Error`]).

pub mod agent;
pub mod device;
pub mod error;
pub mod gateway;
pub mod link;
pub mod mosquitto;
pub mod site;
pub mod site_compressed;
pub mod text;
pub mod topic;
pub mod update;

pub use error::{Error, Location};
