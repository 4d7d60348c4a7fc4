//! `provisioner renew`: every infrastructure certificate that is due (the broker's, the
//! gateways' and the receivers'), and the CRL, renewed in one command and installed where it
//! is used.
//!
//! What is due is what `audit` says is due ([`super::audit::items`]). Each certificate is
//! renewed by the writer that made its files, into every place registered for it: broker
//! directories (`cmd::brokers`) get the new broker certificate (same key) through the
//! refresh every ledger change runs; gateway and receiver directories and deployed roots
//! (`cmd::nodes`) are written again by `emit`'s and `deploy`'s own writers (same key, kept
//! under keys/). A place whose marker is not this home's (a copy of the home) is never
//! written; a certificate none of whose places may be written is not renewed at all.

use std::net::IpAddr;

use serde::Serialize;
use serde_json::json;

use super::audit::{Item, State};
use super::nodes::NodeDir;
use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// Help text: what is renewed, what follows, exit codes.
pub const HELP: &str = "\
Renews what `provisioner audit` reports as due (inside its renewal window or expired) among
the infrastructure: the broker certificate of every broker directory `emit broker` registered,
the certificate of every gateway and receiver directory `emit gateway|receiver` wrote and every
root `deploy gateway` installed, and the CRL. Keys stay where they are kept (keys/ in the
home); the new files replace the old ones atomically in each registered place. Devices and
clients are not renewed here: re-run `device provision` or `cert sign` for them.

After renewing, mosquitto must re-read its certificate and CRL (SIGHUP, through the pid file
of the emitted configuration): --reload does it for the broker directories on this machine,
otherwise the command is printed for each. `gateway` and `lora-link rx` read their
certificate when they start: the restart to run is printed (`systemctl restart iot-gateway`
on the Pi for a deployed gateway).

A place whose .provisioner-home names another home (this home is a copy, or another home
registered it) is not written, and a certificate that can be installed nowhere is not
renewed: exit 12 names it and says why.

EXIT CODES:
  0   nothing was due, or everything due was renewed (and --dry-run, always)
  12  something due could not be renewed (which and why are printed); the rest was
  1-5 the command itself failed (see `provisioner --help`)

EXAMPLES:
  provisioner renew --dry-run
  provisioner renew --reload
  provisioner renew --json | jq '.items[] | select(.status != \"renewed\")'";

/// Arguments of `renew`.
#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct Args {
    /// List what is due and where it would be written; change nothing (no passphrase needed).
    #[arg(long)]
    dry_run: bool,
    /// Send SIGHUP to the mosquitto of every renewed broker directory on this machine,
    /// through its pid file (checked to be a mosquitto running that directory's
    /// configuration).
    #[arg(long)]
    reload: bool,
}

/// One due item and what became of it.
#[derive(Debug, Clone, Serialize)]
struct Outcome {
    kind: String,
    id: String,
    /// `renew` or `expired`, as `audit` says.
    state: State,
    serial: String,
    not_after: String,
    /// `renewed`, `would-renew` (dry run) or `incomplete`.
    status: &'static str,
    /// The new serial (or CRL number).
    #[serde(skip_serializing_if = "Option::is_none")]
    new_serial: Option<String>,
    /// Places written (or that a run would write).
    written: Vec<String>,
    /// What to run so the new files are used (or what --reload did).
    next: Vec<String>,
    /// Why something could not be renewed or written.
    failed: Vec<String>,
}

impl Outcome {
    fn of(i: &Item) -> Outcome {
        Outcome {
            kind: i.kind.clone(),
            id: i.id.clone(),
            state: i.state,
            serial: i.serial.clone(),
            not_after: i.not_after.clone(),
            status: "incomplete",
            new_serial: None,
            written: vec![],
            next: vec![],
            failed: vec![],
        }
    }

    fn human(&self) -> String {
        let what = match self.kind.as_str() {
            "crl" => "the CRL".to_string(),
            k => format!("{k} `{}`", manifests::text::escape(&self.id)),
        };
        let mut s = format!(
            "{:<11} {what} ({}, {} {}){}",
            self.status,
            if self.state == State::Expired {
                "expired"
            } else {
                "inside its renewal window"
            },
            if self.kind == "crl" {
                "number"
            } else {
                "serial"
            },
            self.serial,
            self.new_serial
                .as_deref()
                .map(|n| format!(" -> {n}"))
                .unwrap_or_default()
        );
        for w in &self.written {
            s.push_str(&format!(
                "\n  {} {w}",
                if self.status == "would-renew" {
                    "would write"
                } else {
                    "wrote"
                }
            ));
        }
        for n in &self.next {
            s.push_str(&format!("\n  next: {n}"));
        }
        for f in &self.failed {
            s.push_str(&format!("\n  NOT renewed: {f}"));
        }
        s
    }
}

/// The registered places of the home, checked once.
struct Places {
    home: ca::authority::HomeBinding,
    brokers: Vec<ca::authority::BrokerDir>,
    nodes: Vec<NodeDir>,
}

/// Where an item can be written: the places that accept this home, and the reasons of
/// those that refuse it. Places that are gone are left out.
#[derive(Default)]
struct Targets {
    brokers: Vec<ca::authority::BrokerDir>,
    nodes: Vec<NodeDir>,
    refused: Vec<String>,
}

impl Places {
    fn targets(&self, item: &Item) -> Targets {
        let mut t = Targets::default();
        match item.kind.as_str() {
            "server" | "crl" => {
                for b in self
                    .brokers
                    .iter()
                    .filter(|b| item.kind == "crl" || b.server == item.id)
                {
                    match ca::authority::check_broker_dir(&b.dir, &self.home) {
                        Ok(true) => t.brokers.push(b.clone()),
                        Ok(false) => {}
                        Err(why) => t.refused.push(format!("broker {}: {why}", b.dir.display())),
                    }
                }
            }
            _ => {
                for n in self
                    .nodes
                    .iter()
                    .filter(|n| n.kind == item.kind && n.id == item.id)
                {
                    match super::nodes::check(&self.home, n) {
                        Ok(true) => t.nodes.push(n.clone()),
                        Ok(false) => {}
                        Err(why) => t.refused.push(format!("{}: {why}", n.describe())),
                    }
                }
            }
        }
        t
    }
}

/// Runs `renew`.
pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let store = ctx.store()?;
    let now = ca::clock::now().unix_timestamp();
    let due: Vec<Item> = super::audit::items(&store, &super::audit::home_policy(ctx), now)?
        .into_iter()
        .filter(|i| i.state != State::Ok)
        .filter(|i| matches!(i.kind.as_str(), "server" | "gateway" | "receiver" | "crl"))
        .collect();
    let places = Places {
        home: store.home_binding()?,
        brokers: store.brokers()?,
        nodes: super::nodes::all(&store)?,
    };
    drop(store);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut brokers = super::brokers::Report::default();
    if args.dry_run {
        outcomes = due.iter().map(|i| plan(&places, i)).collect();
    } else if !due.is_empty() {
        let mut authority = None;
        for item in &due {
            outcomes.push(renew_one(ctx, &mut authority, &places, item));
        }
        brokers = install_brokers(ctx, &places, &mut outcomes, args.reload);
    }
    print(ctx, &args, now, &outcomes, &brokers)
}

/// What a run would do for `item`: its places, nothing written.
fn plan(places: &Places, item: &Item) -> Outcome {
    let mut o = Outcome::of(item);
    let t = places.targets(item);
    o.written = t
        .brokers
        .iter()
        .map(|b| format!("broker {}", b.dir.display()))
        .chain(t.nodes.iter().map(NodeDir::describe))
        .collect();
    o.failed = unplaced(item, &t);
    o.status = if o.failed.is_empty() {
        "would-renew"
    } else {
        "incomplete"
    };
    o
}

/// Why `item` cannot be renewed with these targets (empty: it can).
fn unplaced(item: &Item, t: &Targets) -> Vec<String> {
    let anywhere = !t.brokers.is_empty() || !t.nodes.is_empty();
    match item.kind.as_str() {
        // The CRL and the broker certificate live in the home too (crl.pem, keys/ID.crt):
        // they are renewed unless every registered place refuses this home.
        "server" | "crl" if anywhere || t.refused.is_empty() => vec![],
        "server" | "crl" => t.refused.clone(),
        _ if anywhere => t.refused.clone(),
        kind if t.refused.is_empty() => vec![format!(
            "no registered directory holds {kind} `{id}`: run `provisioner emit {kind} {id} --out DIR` with the options it was emitted with{deploy}; that renews it and registers DIR",
            id = manifests::text::escape(&item.id),
            deploy = if kind == "gateway" {
                format!(
                    ", or `provisioner deploy gateway {} --root ROOT` for a Pi's root",
                    manifests::text::escape(&item.id)
                )
            } else {
                String::new()
            }
        )],
        _ => t.refused.clone(),
    }
}

/// Renews one due item into its places (broker directories are written afterwards, once,
/// by [`install_brokers`]).
fn renew_one(
    ctx: &Context,
    authority: &mut Option<ca::Authority>,
    places: &Places,
    item: &Item,
) -> Outcome {
    let mut o = Outcome::of(item);
    let t = places.targets(item);
    o.failed = unplaced(item, &t);
    let anywhere = !t.brokers.is_empty() || !t.nodes.is_empty();
    if !anywhere && !o.failed.is_empty() {
        return o;
    }
    let r = match item.kind.as_str() {
        "server" | "crl" => with_authority(ctx, authority, |a| {
            if item.kind == "crl" {
                let r = a.crl(false)?;
                Ok(r.number.to_string())
            } else {
                renew_server(ctx, a, &item.id)
            }
        }),
        _ => renew_node(ctx, &t.nodes, &mut o),
    };
    match r {
        Ok(serial) => {
            o.new_serial = Some(serial);
            o.status = if o.failed.is_empty() {
                "renewed"
            } else {
                "incomplete"
            };
        }
        Err(e) => o.failed.push(e.to_string()),
    }
    o
}

fn with_authority<T>(
    ctx: &Context,
    slot: &mut Option<ca::Authority>,
    f: impl FnOnce(&mut ca::Authority) -> Result<T>,
) -> Result<T> {
    if slot.is_none() {
        *slot = Some(ctx.authority()?);
    }
    match slot.as_mut() {
        Some(a) => f(a),
        None => Err(CliError::new(Code::Failure, "the CA could not be opened")),
    }
}

/// A new broker certificate for the names and key of the current one. Returns its serial.
fn renew_server(ctx: &Context, authority: &mut ca::Authority, id: &str) -> Result<String> {
    let current =
        authority.store.ledger.active_of(id)?.ok_or_else(|| {
            CliError::new(Code::State, format!("`{id}` has no active certificate"))
        })?;
    let (dns, ips) = names_of(&current.der)?;
    let s = super::server::issue_server(ctx, authority, id, dns, ips)?;
    Ok(s.issued.record.serial)
}

/// The DNS names and IP addresses in a certificate's SAN, in their order.
fn names_of(der: &[u8]) -> Result<(Vec<String>, Vec<IpAddr>)> {
    use x509_parser::extensions::GeneralName;
    let damaged = || CliError::new(Code::State, "the ledger's broker certificate is damaged");
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| damaged())?;
    let (mut dns, mut ips) = (Vec::new(), Vec::new());
    if let Some(san) = cert.subject_alternative_name().map_err(|_| damaged())? {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.extend(<[u8; 4]>::try_from(*b).ok().map(IpAddr::from)),
                    16 => ips.extend(<[u8; 16]>::try_from(*b).ok().map(IpAddr::from)),
                    _ => return Err(damaged()),
                },
                _ => {}
            }
        }
    }
    Ok((dns, ips))
}

/// Writes a gateway's or receiver's places again with their stored options: the first
/// write renews the certificate, the others install the same one. Returns the new serial.
fn renew_node(ctx: &Context, nodes: &[NodeDir], o: &mut Outcome) -> Result<String> {
    let mut serial = None;
    for n in nodes {
        let r = super::nodes::write_again(ctx, n);
        match r {
            Ok(e) => {
                o.written.push(n.describe());
                o.next.extend(n.next_steps(super::nodes::Pickup::Restart));
                serial = Some(e);
            }
            Err(e) => o.failed.push(format!("{}: {e}", n.describe())),
        }
    }
    serial.ok_or_else(|| CliError::new(Code::Failure, "no place could be written"))
}

/// Rewrites every registered broker directory once (new broker certificate, new CRL) when
/// a broker certificate or the CRL was renewed, then reloads (or says how) the ones that
/// use what changed.
fn install_brokers(
    ctx: &Context,
    places: &Places,
    outcomes: &mut [Outcome],
    reload: bool,
) -> super::brokers::Report {
    let renewed =
        |o: &Outcome| o.new_serial.is_some() && matches!(o.kind.as_str(), "server" | "crl");
    if !outcomes.iter().any(renewed) {
        return super::brokers::Report::default();
    }
    let mut report = super::brokers::refresh(ctx);
    if reload {
        super::brokers::reload(&mut report);
    }
    let server_of = |dir: &std::path::Path| {
        places
            .brokers
            .iter()
            .find(|b| b.dir == dir)
            .map(|b| b.server.clone())
    };
    for o in outcomes.iter_mut().filter(|o| renewed(o)) {
        let uses = |dir: &std::path::Path| {
            o.kind == "crl" || server_of(dir).as_deref() == Some(o.id.as_str())
        };
        for u in report.updated.iter().filter(|u| uses(&u.dir)) {
            o.written.push(format!("broker {}", u.dir.display()));
            o.next.push(match &u.reloaded {
                Some(r) => format!("broker {}: {r}", u.dir.display()),
                None if u.remote => format!(
                    "copy {} to the broker (see `emit broker`), then there: {}",
                    u.dir.display(),
                    u.reload
                ),
                None => u.reload.clone(),
            });
        }
        if o.kind == "server" && o.written.is_empty() {
            o.next.push(format!(
                "no registered broker directory uses it: install {} where your mosquitto reads it, or `provisioner emit broker --out DIR`",
                ctx.layout.keys_dir().join(format!("{}.crt", o.id)).display()
            ));
        }
        for (dir, why) in report.skipped.iter().filter(|(d, _)| uses(d)) {
            o.failed.push(format!("broker {}: {why}", dir.display()));
            o.status = "incomplete";
        }
    }
    report
}

fn print(
    ctx: &Context,
    args: &Args,
    now: i64,
    outcomes: &[Outcome],
    brokers: &super::brokers::Report,
) -> Result<()> {
    let incomplete: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.status == "incomplete")
        .collect();
    let code = if incomplete.is_empty() || args.dry_run {
        0
    } else {
        Code::Incomplete as i32
    };
    let mut human = match outcomes.len() {
        0 => "nothing is due: every broker, gateway and receiver certificate and the CRL are before their renewal point".to_string(),
        n if args.dry_run => format!("{n} due (dry run: nothing changed)"),
        n => format!("{n} due, {} renewed", n - incomplete.len()),
    };
    for o in outcomes {
        human.push('\n');
        human.push_str(&o.human());
    }
    ctx.print(
        &json!({ "now": super::audit::rfc3339(now), "dry_run": args.dry_run, "due": outcomes.len(),
                 "incomplete": incomplete.len(), "exit_code": code, "items": outcomes,
                 "brokers": brokers.json() }),
        &human,
    );
    if code == 0 {
        return Ok(());
    }
    let names: Vec<String> = incomplete
        .iter()
        .map(|o| match o.kind.as_str() {
            "crl" => format!("the CRL ({})", o.failed.join("; ")),
            k => format!(
                "{k} `{}` ({})",
                manifests::text::escape(&o.id),
                o.failed.join("; ")
            ),
        })
        .collect();
    Err(CliError::new(
        Code::Incomplete,
        format!(
            "{} of {} due not renewed: {}",
            incomplete.len(),
            outcomes.len(),
            names.join(", ")
        ),
    )
    .with_help(
        "fix what is named and run `provisioner renew` again (what was renewed stays renewed)",
    ))
}
