//! The provisioner's library half: the links to a board on the bench (Microchip's kit
//! protocol, Mongoose OS RPC) and the provisioning state machines that drive them. The
//! `provisioner` binary is the command line around it; the fuzz targets link the reply
//! parsers from here (`bench::kit::parse_reply`, `bench::mos::Decoder`, ...).

pub mod bench;
