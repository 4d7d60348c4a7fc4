//! `renewal-service run`: the long-running MQTT client. It subscribes (QoS 1, persistent
//! session, manual acknowledgements) to every renewal topic, decides each request
//! ([`super::policy`]), issues and records the certificate in one ledger transaction, publishes
//! it retained with QoS 1 on the device's certificate topic (a board that reconnects gets it),
//! and only then acknowledges the request: a service killed at any step gets the request again
//! from the broker, and the policy answers it with the certificate already issued.

use std::time::Duration;

use manifests::device::FieldRenewal;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration, Transport,
};

use super::policy::{self, Decision};
use super::setup::{CA_FILE, CERT_FILE};
use super::{RunArgs, SERVICE_ID, service_dir};
use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// What one request led to, for the log and the counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new certificate was issued and published.
    Issued(String),
    /// The certificate issued earlier for this request was published again.
    Answered(String),
    /// Refused, nothing issued.
    Refused(String),
}

/// The service's state: the CA, the site's settings, the topics.
pub struct Responder {
    authority: ca::Authority,
    organization: Option<String>,
    leaf_days: u32,
    prefix: String,
}

impl Responder {
    /// A responder signing with `authority` for the site.
    pub fn new(authority: ca::Authority, site: &manifests::site::Site) -> Self {
        Responder {
            authority,
            organization: site.site.organization.clone(),
            leaf_days: site.site.leaf_days,
            prefix: FieldRenewal::prefix_for(&site.topics.root),
        }
    }

    /// The subscription: every device's renewal topic.
    pub fn request_filter(&self) -> String {
        format!("{}/renew/+", self.prefix)
    }

    /// Handles one request on `topic`; returns what to publish (topic, payload) and the outcome.
    pub fn handle(
        &mut self,
        topic: &str,
        csr: &[u8],
    ) -> ca::Result<(Option<(String, String)>, Outcome)> {
        let Some(id) = topic.strip_prefix(&format!("{}/renew/", self.prefix)) else {
            return Ok((None, Outcome::Refused("not a renewal topic".into())));
        };
        let now = ca::clock::now().unix_timestamp();
        let decision = policy::decide(
            &self.authority.store.ledger,
            self.authority.policy(),
            self.organization.clone(),
            self.leaf_days,
            id,
            csr,
            now,
        )?;
        let (record, outcome) = match decision {
            Decision::Refuse(why) => return Ok((None, Outcome::Refused(why))),
            Decision::Answer(rec) => {
                let o = Outcome::Answered(rec.serial.clone());
                (rec, o)
            }
            Decision::Issue(req, old) => {
                if let Some(pem) = test_issuer_certificate(&req)? {
                    let o = Outcome::Issued(format!("by the test issuer (renews {})", old.serial));
                    let id = id.to_string();
                    return Ok((Some((FieldRenewal::cert_topic(&self.prefix, &id), pem)), o));
                }
                let issued = self.authority.issue(*req)?;
                let o = Outcome::Issued(format!(
                    "{} (renews {}, valid until {})",
                    issued.record.serial,
                    old.serial,
                    crate::cmd::audit::rfc3339(issued.record.not_after)
                ));
                (issued.record, o)
            }
        };
        let pem = format!(
            "{}{}",
            ca::authority::cert_pem(&record.der),
            self.authority.store.chain_pem()?
        );
        Ok((
            Some((FieldRenewal::cert_topic(&self.prefix, id), pem)),
            outcome,
        ))
    }
}

/// Test hook (debug builds): `PROVISIONER_RENEWAL_TEST_ISSUER=DIR` signs the answer with the
/// CA in DIR (`ca.crt`, `ca.key`, PEM) instead of the site's, and records nothing: the
/// broker refuses such a certificate, which is how the board's rollback is tested.
fn test_issuer_certificate(req: &ca::IssueRequest) -> ca::Result<Option<String>> {
    if !cfg!(debug_assertions) {
        return Ok(None);
    }
    let Some(dir) = std::env::var_os("PROVISIONER_RENEWAL_TEST_ISSUER") else {
        return Ok(None);
    };
    let dir = std::path::PathBuf::from(dir);
    let read = |name: &str| {
        let p = dir.join(name);
        safe_fs::read_limited_string(&p, 64 * 1024)
            .map_err(|e| ca::Error::Io { path: p, source: e })
    };
    let key = rcgen::KeyPair::from_pem(&read("ca.key")?)?;
    let issuer = rcgen::Issuer::from_ca_cert_pem(&read("ca.crt")?, key)?;
    let now = ca::clock::now() - time::Duration::minutes(5);
    let params = ca::profile::params(req.profile, &req.subject, &[7; 16], now, req.days, 0)?;
    let cert = params.signed_by(&req.public_key, &issuer)?;
    Ok(Some(cert.pem()))
}

/// Logs an outcome (untrusted text escaped).
pub fn log(topic: &str, outcome: &Outcome) {
    let topic = manifests::text::escape(topic);
    match outcome {
        Outcome::Issued(s) => tracing::info!("renewed on {topic}: certificate {s}"),
        Outcome::Answered(s) => {
            tracing::info!("request on {topic} answered before: certificate {s} sent again")
        }
        Outcome::Refused(why) => tracing::warn!(
            "refused the renewal request on {topic}: {}; nothing issued",
            manifests::text::escape(why)
        ),
    }
}

/// Runs `renewal-service run` until SIGINT/SIGTERM.
pub fn run(ctx: &Context, args: RunArgs) -> Result<()> {
    super::require_issuing_ca(ctx, args.allow_root_key)?;
    let site = ctx.site()?;
    let authority = ctx.authority()?;
    let dir = service_dir(ctx);
    let files = tls_client::TlsFiles {
        ca_file: dir.join(CA_FILE),
        cert_file: dir.join(CERT_FILE),
        key_file: ctx.layout.keys_dir().join(format!("{SERVICE_ID}.key")),
        server_name: site.broker.server_name(),
    };
    if !files.cert_file.exists() {
        return Err(CliError::new(
            Code::State,
            format!("{} is missing", files.cert_file.display()),
        )
        .with_help("run `provisioner renewal-service setup` first"));
    }
    let tls = tls_client::client_config(&files)
        .map_err(|e| CliError::new(Code::State, format!("renewal service TLS: {e}")))?;
    let host = site
        .broker
        .connect_host()
        .unwrap_or_else(|| "localhost".into());
    let responder = Responder::new(authority, &site);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::new(Code::Failure, format!("runtime: {e}")))?;
    tracing::info!(
        "renewal service: {host}:{} as `{SERVICE_ID}`, answering {}",
        site.broker.port,
        responder.request_filter()
    );
    runtime.block_on(serve(
        responder,
        connect(&host, site.broker.port, TlsConfiguration::Rustls(tls)),
    ))
}

/// MQTT options of the service: its identity as client id, a persistent session (requests
/// queue on the broker while it is down) and acknowledgements sent only once answered.
fn connect(host: &str, port: u16, tls: TlsConfiguration) -> MqttOptions {
    let mut opts = MqttOptions::new(SERVICE_ID, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_transport(Transport::Tls(tls));
    opts
}

async fn serve(mut responder: Responder, opts: MqttOptions) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let (client, mut events) = AsyncClient::new(opts, 4096);
    let mut term = signal(SignalKind::terminate())
        .map_err(|e| CliError::new(Code::Failure, format!("signal: {e}")))?;
    let mut backoff = Duration::from_millis(500);
    loop {
        let ev = tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            ev = events.poll() => ev,
        };
        match ev {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(500);
                tracing::info!("renewal service connected to the broker");
                let _ = client.try_subscribe(responder.request_filter(), QoS::AtLeastOnce);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                answer(&mut responder, &client, &p)?;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("renewal service: broker connection: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
    drain(&client, &mut events).await;
    Ok(())
}

/// Answers one request: issue (or find), publish, then acknowledge. A ledger error stops the
/// service (systemd restarts it; the request is still on the broker).
fn answer(responder: &mut Responder, client: &AsyncClient, p: &rumqttc::Publish) -> Result<()> {
    let topic = p.topic.to_string();
    let (reply, outcome) = responder.handle(&topic, &p.payload)?;
    log(&topic, &outcome);
    if let Some((t, pem)) = reply {
        client
            .try_publish(t, QoS::AtLeastOnce, true, pem)
            .map_err(|e| CliError::new(Code::Failure, format!("publish queue: {e}")))?;
        ca::fault::point("renewal-after-publish");
    }
    let _ = client.try_ack(p);
    Ok(())
}

/// Sends what is queued (answers, acknowledgements) before leaving.
async fn drain(client: &AsyncClient, events: &mut EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;
}
