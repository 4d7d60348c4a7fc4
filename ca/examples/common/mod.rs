//! What the issuance benchmarks share: random device public keys and their requests.

use ca::ledger::IdentityRecord;
use ca::{IssueRequest, Profile, PublicKey, Subject};
use p256::elliptic_curve::Generate;

/// `n` random P-256 public keys, as read out of chips.
pub fn public_keys(n: usize) -> Vec<PublicKey> {
    (0..n)
        .map(|_| {
            let sk = p256::ecdsa::SigningKey::generate();
            PublicKey::from_sec1(sk.verifying_key().to_sec1_point(false).as_bytes())
                .expect("valid key")
        })
        .collect()
}

/// The device certificate request number `i` for `key` (`tag` keeps request ids apart).
pub fn device_request(tag: &[u8], i: usize, key: &PublicKey) -> IssueRequest {
    IssueRequest {
        profile: Profile::Device,
        subject: Subject {
            common_name: format!("bench-{i}"),
            organization: None,
            dns: vec![],
            ips: vec![],
            serial_number: Some(format!("0123{i:010x}ee")),
        },
        public_key: key.clone(),
        request_id: ca::authority::request_id(&[tag, &key.0]),
        days: 825,
        identity: Some(IdentityRecord {
            id: format!("bench-{i}"),
            kind: "device".into(),
            profile: "bench".into(),
            acl_write: vec![format!("bench/{i}/#")],
            acl_read: vec![],
            attrs: Default::default(),
            status: "active".into(),
        }),
    }
}
