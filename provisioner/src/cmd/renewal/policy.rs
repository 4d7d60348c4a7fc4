//! What the renewal service answers to one request, decided from the ledger alone: issue a
//! renewal, hand back the one already issued for it, or refuse with a reason.
//!
//! A request is a DER CSR that arrived on `<prefix>/renew/<id>`. The broker's ACL lets only
//! `<id>` write there, so the topic proves who sent it; the CSR must name the same identity
//! and carry the chip key the ledger recorded at the bench (the key never changes), the
//! identity must be an active device, and its active certificate must be past the renewal
//! point of its profile and not expired. The request identity is derived from the device, its
//! key and the certificate being renewed, so a request repeated after a crash (of the board or
//! of the service) gets the certificate already issued, never a second one.

use ca::ledger::{CertRecord, IdentityRecord, Ledger};
use ca::profile::LifetimePolicy;
use ca::{IssueRequest, Profile, Subject};

/// The decision for one request.
#[derive(Debug)]
pub enum Decision {
    /// Sign this (it renews the given active certificate).
    Issue(Box<IssueRequest>, CertRecord),
    /// The request was answered before (the device's active certificate came from it): send
    /// that certificate again.
    Answer(CertRecord),
    /// Nothing is issued, for this reason.
    Refuse(String),
}

/// Request identity of the renewal of `renews` for `id` with chip key `key` (65-byte SEC1).
pub fn request_id(id: &str, key: &[u8], renews: &str) -> String {
    ca::authority::request_id(&[b"field-renewal", id.as_bytes(), key, renews.as_bytes()])
}

/// Decides what to do with `csr` received on the renewal topic of `topic_id` at `now`.
pub fn decide(
    ledger: &Ledger,
    policy: &LifetimePolicy,
    organization: Option<String>,
    leaf_days: u32,
    topic_id: &str,
    csr: &[u8],
    now: i64,
) -> ca::Result<Decision> {
    let refuse = |why: String| Ok(Decision::Refuse(why));
    if let Err(e) = manifests::topic::check_identity(topic_id) {
        return refuse(format!("the topic names no identity: {e}"));
    }
    let csr = match ca::parse_csr(csr) {
        Ok(c) => c,
        Err(e) => return refuse(format!("not a valid CSR: {e}")),
    };
    if csr.common_name != topic_id {
        return refuse(format!(
            "the CSR asks for `{}` but came on the renewal topic of `{topic_id}`",
            csr.common_name
        ));
    }
    let Some(identity) = ledger.identity(topic_id)? else {
        return refuse("no such identity in the ledger".into());
    };
    if identity.kind != "device" {
        return refuse(format!("`{topic_id}` is a {}, not a device", identity.kind));
    }
    if identity.status != "active" {
        return refuse(format!("the device is {}", identity.status));
    }
    let chip_key = identity.attrs.get("public_key").and_then(|v| v.as_str());
    if chip_key != Some(hex::encode(&csr.public_key.0[1..]).as_str()) {
        return refuse("the CSR's key is not the chip key recorded in the ledger".into());
    }
    let Some(active) = ledger.active_of(topic_id)? else {
        return refuse("the device has no active certificate: provision it at the bench".into());
    };
    if active.revoked_at.is_some() {
        return refuse(format!("its certificate {} is revoked", active.serial));
    }
    if let Some(renewed) = answered_before(ledger, &active, topic_id, &csr.public_key.0)? {
        tracing::debug!(%renewed, "request answered before");
        return Ok(Decision::Answer(active));
    }
    let life = policy.lifetime("device", Some(("device", identity.profile.as_str())));
    let due_at = life.renewal.renew_at(active.not_before, active.not_after);
    if now >= active.not_after {
        return refuse(format!(
            "its certificate {} has expired: a board past expiry renews at the bench (`device provision` again)",
            active.serial
        ));
    }
    if now < due_at {
        return refuse(format!(
            "its certificate {} is not due for renewal before {} ({})",
            active.serial,
            crate::cmd::audit::rfc3339(due_at),
            life.renewal
        ));
    }
    let req = issue_request(&identity, &active, &csr.public_key, organization, leaf_days)?;
    Ok(Decision::Issue(Box::new(req), active))
}

/// The certificate `active` renewed, if `active` itself came from a field renewal of this
/// device and key (its request identity names one of the device's other certificates).
fn answered_before(
    ledger: &Ledger,
    active: &CertRecord,
    id: &str,
    key: &[u8],
) -> ca::Result<Option<String>> {
    Ok(ledger
        .certificates_of(id)?
        .into_iter()
        .map(|c| c.serial)
        .find(|old| *old != active.serial && request_id(id, key, old) == active.request_id))
}

fn issue_request(
    identity: &IdentityRecord,
    active: &CertRecord,
    key: &ca::PublicKey,
    organization: Option<String>,
    leaf_days: u32,
) -> ca::Result<IssueRequest> {
    let chip_serial = identity
        .attrs
        .get("chip_serial")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    if chip_serial.is_none() {
        return Err(ca::Error::BadRequest(format!(
            "the ledger has no chip serial for `{}`",
            identity.id
        )));
    }
    Ok(IssueRequest {
        profile: Profile::Device,
        subject: Subject {
            common_name: identity.id.clone(),
            organization,
            dns: vec![],
            ips: vec![],
            serial_number: chip_serial,
        },
        public_key: key.clone(),
        request_id: request_id(&identity.id, &key.0, &active.serial),
        days: leaf_days,
        identity: Some(identity.clone()),
    })
}
