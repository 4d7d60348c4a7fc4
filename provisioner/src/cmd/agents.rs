//! Brokers on other machines (`deploy broker`): signed updates published after every change.
//!
//! A deployed broker is registered in the ledger with the broker directory it was deployed
//! from (an `emit broker --prefix` directory, which [`super::brokers::refresh`] keeps in step
//! with the ledger) and the address the bench reaches it at. After every refresh, each
//! deployed broker gets an update ([`manifests::update`]): that directory's ACL, CRL and
//! broker chain, its name, a sequence number and the time, signed by the CA. An update whose
//! content did not change is published again under its own sequence (retained messages are
//! idempotent); a new content takes the next sequence, assigned under the ledger's write lock
//! so two commands never sign two different updates with one number.
//!
//! Transport: a retained QoS 1 message on `provisioner/updates/broker/NAME`, through that
//! broker itself, with the bench's own client certificate ([`BENCH_ID`]: the ACL lets it, and
//! only it, write there; only the broker's agent reads it). The bench unreachable, the update
//! waits in the ledger: the next command that changes the ledger, or `provisioner crl` (the
//! CRL timer), publishes it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use manifests::update::{Envelope, UpdateBody};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// The bench's MQTT identity (certificate CN and client id): writes the update topics.
pub const BENCH_ID: &str = "provisioner-bench";

/// How long a publication may take (connection, TLS, acknowledgement).
pub const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

const REGISTRY: &str = "broker-agents";

/// A broker deployed with an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedBroker {
    /// Its name (`--name`): update topic and agent identity.
    pub name: String,
    /// The registered broker directory it was deployed from (canonical).
    pub dir: PathBuf,
    /// Where the bench reaches the broker.
    pub host: String,
    /// Its port.
    pub port: u16,
    /// TLS name to check, when it differs from `host`.
    pub server_name: Option<String>,
}

/// The newest update signed for one broker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Signed {
    sequence: u64,
    body: String,
    envelope: String,
}

/// The agent's identity (certificate CN) of broker `name`.
pub fn agent_id(name: &str) -> String {
    format!("broker-agent-{name}")
}

/// Every deployed broker.
pub fn deployed(store: &ca::Store) -> Result<Vec<DeployedBroker>> {
    match store.ledger.meta(REGISTRY)? {
        None => Ok(vec![]),
        Some(s) => serde_json::from_str(&s).map_err(|e| {
            CliError::new(
                Code::State,
                format!("ledger meta `{REGISTRY}` is damaged: {e}"),
            )
        }),
    }
}

/// Registers (or replaces, by name) a deployed broker.
pub fn register(store: &ca::Store, d: &DeployedBroker) -> Result<()> {
    let d = d.clone();
    store.ledger.transaction(move |tx| {
        let mut all: Vec<DeployedBroker> = tx
            .meta(REGISTRY)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        all.retain(|b| b.name != d.name);
        all.push(d.clone());
        tx.set_meta(REGISTRY, &serde_json::to_string(&all).unwrap_or_default())
    })?;
    Ok(())
}

/// The sequence of the newest update signed for `name` (0: none).
pub fn last_sequence(store: &ca::Store, name: &str) -> Result<u64> {
    Ok(signed(store, name)?.sequence)
}

fn signed_key(name: &str) -> String {
    format!("broker-update:{name}")
}

fn signed(store: &ca::Store, name: &str) -> Result<Signed> {
    Ok(store
        .ledger
        .meta(&signed_key(name))?
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default())
}

/// What happened to one deployed broker's update.
#[derive(Debug, Clone, Serialize)]
pub struct Publication {
    /// The broker.
    pub name: String,
    /// The broker directory it was deployed from.
    pub dir: PathBuf,
    /// The update's sequence (0 when none could be made).
    pub sequence: u64,
    /// Where it went.
    pub target: String,
    /// True once the broker acknowledged it.
    pub published: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Makes and publishes the update of every deployed broker. Never fails the calling command
/// (its change is committed): what did not go out is reported with what to run.
pub fn publish_all(ctx: &Context) -> Vec<Publication> {
    let Ok(store) = ctx.store() else {
        return vec![];
    };
    let (Ok(all), Ok(registered)) = (deployed(&store), store.brokers()) else {
        return vec![];
    };
    // A directory forgotten with `emit broker --forget` is not followed any more: neither is
    // the broker deployed from it.
    let all: Vec<DeployedBroker> = all
        .into_iter()
        .filter(|d| registered.iter().any(|r| r.dir == d.dir))
        .collect();
    let mut authority = None;
    all.iter()
        .map(|d| {
            let target = format!(
                "{}:{} ({})",
                d.host,
                d.port,
                manifests::agent::update_topic(&d.name)
            );
            let (sequence, result) = match update_for(ctx, &store, &mut authority, d) {
                Ok((seq, envelope)) => (seq, send(ctx, d, &envelope)),
                Err(e) => (0, Err(e.to_string())),
            };
            if let Err(e) = &result {
                tracing::warn!(broker = %d.name, error = %e, "broker update not published");
            }
            Publication {
                name: d.name.clone(),
                dir: d.dir.clone(),
                sequence,
                target,
                published: result.is_ok(),
                error: result.err(),
            }
        })
        .collect()
}

/// The update for `d` as its directory is now: the newest signed one if its content is the
/// same, else a new one with the next sequence.
fn update_for(
    ctx: &Context,
    store: &ca::Store,
    authority: &mut Option<ca::Authority>,
    d: &DeployedBroker,
) -> Result<(u64, String)> {
    let read = |name: &str| {
        let p = d.dir.join(name);
        safe_fs::read_limited_string(&p, 256 * 1024).map_err(|e| crate::exit::io(&p, e))
    };
    let (acl, crl, chain) = (read("acl")?, read("crl.pem")?, read("broker.crt")?);
    let last = signed(store, &d.name)?;
    let content = UpdateBody::new(&d.name, last.sequence, 0, &acl, &crl, &chain);
    if let Ok(prev) = UpdateBody::parse(&last.body)
        && prev.same_content(&content)
    {
        return Ok((last.sequence, last.envelope));
    }
    if authority.is_none() {
        *authority = Some(ctx.authority()?);
    }
    let Some(authority) = authority.as_ref() else {
        return Err(CliError::new(Code::Failure, "no CA"));
    };
    let key = signed_key(&d.name);
    let made = store.ledger.transaction(|tx| {
        let last: Signed = tx
            .meta(&key)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        let mut body = content.clone();
        body.sequence = last.sequence + 1;
        body.issued_at = ca::clock::now().unix_timestamp();
        let text = body
            .to_toml()
            .map_err(|e| ca::Error::Generate(e.to_string()))?;
        let signature = authority.sign_message(&manifests::update::signed_message(&text))?;
        let envelope = Envelope {
            signature,
            body: text.clone(),
        }
        .encode();
        let s = Signed {
            sequence: body.sequence,
            body: text,
            envelope,
        };
        tx.set_meta(&key, &serde_json::to_string(&s).unwrap_or_default())?;
        Ok(s)
    })?;
    Ok((made.sequence, made.envelope))
}

/// The bench's client certificate and key (written by `deploy broker`).
pub fn bench_files(ctx: &Context) -> (PathBuf, PathBuf) {
    let keys = ctx.layout.keys_dir();
    (
        keys.join(format!("{BENCH_ID}.crt")),
        keys.join(format!("{BENCH_ID}.key")),
    )
}

/// Publishes `envelope` retained at QoS 1 and waits for the broker's acknowledgement.
fn send(ctx: &Context, d: &DeployedBroker, envelope: &str) -> std::result::Result<(), String> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    let (cert_file, key_file) = bench_files(ctx);
    let tls = tls_client::client_config(&tls_client::TlsFiles {
        ca_file: ctx.layout.ca_bundle(),
        cert_file,
        key_file,
        server_name: d.server_name.clone(),
    })
    .map_err(|e| e.to_string())?;
    let mut o = MqttOptions::new(BENCH_ID, d.host.clone(), d.port);
    o.set_keep_alive(Duration::from_secs(10))
        .set_clean_session(true)
        .set_max_packet_size(16 * 1024, manifests::update::MAX_UPDATE_BYTES + 4096)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    let (client, mut conn) = Client::new(o, 4);
    let topic = manifests::agent::update_topic(&d.name);
    client
        .publish(topic, QoS::AtLeastOnce, true, envelope.as_bytes().to_vec())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + PUBLISH_DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "no acknowledgement from {}:{} within {} s",
                d.host,
                d.port,
                PUBLISH_DEADLINE.as_secs()
            ));
        }
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => break,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(format!("{}:{}: {e}", d.host, d.port)),
            Err(_) => {}
        }
    }
    let _ = client.disconnect();
    let end = Instant::now() + Duration::from_millis(300);
    while let Ok(Ok(_)) = conn.recv_timeout(end.saturating_duration_since(Instant::now())) {}
    Ok(())
}

/// The human lines (each starting with a newline).
pub fn human(pubs: &[Publication]) -> String {
    let mut s = String::new();
    for p in pubs {
        match &p.error {
            None => s.push_str(&format!(
                "\n  broker `{}`: update {} published to {}; its agent installs it and reloads its mosquitto",
                p.name, p.sequence, p.target
            )),
            Some(e) => s.push_str(&format!(
                "\n  broker `{}`: update {} NOT published to {} ({}); it waits in the ledger: run `provisioner crl` once the broker is reachable",
                p.name,
                p.sequence,
                p.target,
                manifests::text::escape_max(e, 300)
            )),
        }
    }
    s
}

/// The publications as JSON.
pub fn json(pubs: &[Publication]) -> serde_json::Value {
    json!(pubs)
}
