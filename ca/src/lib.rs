//! The PKI of a site: an EC P-256 root CA (optionally with an issuing CA), certificate
//! profiles (broker server, device, client), idempotent issuance from a CSR, a bare public
//! key or a key generated here, revocation and CRLs, all recorded in a ledger (SQLite in the home, or PostgreSQL shared by several stations).
//!
//! This crate never touches serial ports or radios. Keys at rest are encrypted PKCS#8 (CA)
//! or plain PKCS#8 (daemons' keys), always 0600; see [`keys`]. The CA keys can instead be
//! generated and kept in a PKCS#11 token; see [`pkcs11`] and [`keystore`]. Every operation is crash-safe:
//! see [`authority`].

pub mod authority;
pub mod certdef;
pub mod clock;
pub mod compressed;
pub mod db;
pub mod error;
pub mod fault;
pub mod fsutil;
pub mod keys;
pub mod keystore;
pub mod ledger;
pub mod pgledger;
pub mod pkcs11;
pub mod profile;
pub mod request;
pub mod station;
pub mod vault;

pub use authority::{Authority, InitOptions, IssueRequest, Issued, Layout, Store};
pub use error::{Error, Result};
pub use keys::Passphrase;
pub use profile::{Profile, Subject};
pub use request::{Csr, PublicKey, parse_csr};
