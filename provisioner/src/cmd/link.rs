//! `provisioner link rotate|retire|status`: one link key per gateway, with an id, rotated
//! with a window; and the registry of the gateway and receiver directories that `emit` and
//! `deploy` wrote, kept in step with the keys and the site's gateways.
//!
//! * Keys: gateway G's key number 1 is the ledger secret `linkkey:G` (what earlier versions
//!   made), later ones `linkkey:G:N`. Ledger meta `link-keys` holds each gateway's current id
//!   and, during a rotation window, the previous id with the Unix time it is retired at.
//! * The gateway's manifest names its current key and id (`key_id`); the receiver's manifest
//!   names, for every gateway of the site that sends to it, that gateway's current key and,
//!   during a window, the previous one with `retire_at` (manifests::link). The key id's low
//!   bit travels in every frame (lora_link::frame), so the receiver picks the right key.
//! * Registry: ledger meta `link-node-dirs` lists every directory written by `emit gateway`,
//!   `emit receiver`, `deploy gateway`, `deploy receiver`, with its options. After a rotation,
//!   a retirement, or `emit gateway` for a gateway (a new one feeds its receiver), the
//!   directories concerned are written again with the same options, and the report says what
//!   to run on each machine, in order (receiver before gateway: no frame is lost). Each
//!   directory holds the home's marker (`.provisioner-home`, as broker directories do): a copy
//!   of the home never writes into the original's directories.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

const RINGS_KEY: &str = "link-keys";
/// Default rotation window.
pub const DEFAULT_WINDOW: &str = "1d";

/// `link` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum LinkCommand {
    /// Give a gateway a new link key (the next id); its receiver accepts the old one until
    /// the window ends, then rejects frames under it (`retired_key`).
    #[command(after_help = "EXAMPLES:\n  \
provisioner link rotate --gateway passerelle              # window 1d\n  \
provisioner link rotate --gateway passerelle --window 2h\n\n\
Every registered directory of the receiver and of the gateway (those `emit` and `deploy`\n\
wrote) is written again; the report says what to run, in order: first the receiver (install,\n\
then `systemctl reload lora-link-rx`, or SIGHUP to `lora-link rx`: it takes both keys without\n\
stopping its radio), then the gateway (install, restart: its persistent MQTT session keeps\n\
what arrives meanwhile). Frames under the old key are accepted until the window ends.\n\
A rotation whose window is still open must be retired first (`link retire`).")]
    Rotate(RotateArgs),
    /// End a gateway's rotation window now: its receiver forgets the old key.
    #[command(
        after_help = "EXAMPLE:\n  provisioner link retire --gateway passerelle\n\n\
The registered receiver directories are written again without the old key; reload the\n\
receiver as the report says."
    )]
    Retire(GatewayArg),
    /// Each gateway's key ids and window, and the registered directories.
    Status,
}

/// `link rotate` arguments.
#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Gateway id from the site file.
    #[arg(long, value_name = "ID")]
    pub gateway: String,
    /// How long the receiver still accepts the old key: seconds, or a number with s, m, h
    /// or d (e.g. 90s, 30m, 12h, 2d).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_WINDOW, value_parser = parse_window)]
    pub window: Duration,
}

/// A gateway id.
#[derive(Debug, clap::Args)]
pub struct GatewayArg {
    /// Gateway id from the site file.
    #[arg(long, value_name = "ID")]
    pub gateway: String,
}

/// Parses `90`, `90s`, `30m`, `12h`, `2d`.
pub fn parse_window(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => (&s[..i], &s[i..]),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a duration such as 90s, 30m, 12h or 2d, found {s:?}"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|&v| v > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("expected a window above 0, found {s:?}"))
}

/// A gateway's link keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRing {
    /// The key the gateway sends under.
    pub current: u32,
    /// The key being retired, during a rotation window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<Retiring>,
}

impl Default for KeyRing {
    fn default() -> Self {
        Self {
            current: 1,
            previous: None,
        }
    }
}

/// A key in its rotation window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retiring {
    /// Its id.
    pub id: u32,
    /// Unix time from which the receiver rejects it.
    pub retire_at: u64,
}

type Rings = std::collections::BTreeMap<String, KeyRing>;

fn damaged(key: &str, e: impl std::fmt::Display) -> CliError {
    CliError::new(Code::State, format!("ledger meta `{key}` is damaged: {e}"))
}

fn load_rings(ledger: &ca::ledger::Ledger) -> Result<Rings> {
    match ledger.meta(RINGS_KEY)? {
        Some(s) => serde_json::from_str(&s).map_err(|e| damaged(RINGS_KEY, e)),
        None => Ok(Rings::new()),
    }
}

fn save_rings(ledger: &ca::ledger::Ledger, rings: &Rings) -> Result<()> {
    let text = serde_json::to_string(rings).map_err(|e| damaged(RINGS_KEY, e))?;
    ledger.set_meta(RINGS_KEY, &text)?;
    Ok(())
}

/// The gateway's key ring (key 1 alone if it was never rotated).
pub fn ring(authority: &ca::Authority, gateway: &str) -> Result<KeyRing> {
    Ok(load_rings(&authority.store.ledger)?
        .remove(gateway)
        .unwrap_or_default())
}

fn secret_name(gateway: &str, id: u32) -> String {
    if id == 1 {
        format!("linkkey:{gateway}")
    } else {
        format!("linkkey:{gateway}:{id}")
    }
}

/// Key `id` of `gateway` as a key file's text (32 hex digits and a newline); the current key
/// is made when it does not exist yet, an older one must exist.
pub fn key_text(
    authority: &mut ca::Authority,
    gateway: &str,
    id: u32,
    create: bool,
) -> Result<zeroize::Zeroizing<String>> {
    let name = secret_name(gateway, id);
    let key = if create {
        authority.secret_or_create(&name, 16)?
    } else {
        authority.secret(&name)?.ok_or_else(|| {
            CliError::new(
                Code::State,
                format!("the ledger has no link key `{name}` (key {id} of gateway `{gateway}`)"),
            )
        })?
    };
    if key.len() != 16 {
        return Err(CliError::new(
            Code::State,
            format!(
                "the ledger's link key `{name}` has {} bytes, expected 16",
                key.len()
            ),
        ));
    }
    Ok(zeroize::Zeroizing::new(format!(
        "{}\n",
        hex::encode(&key[..])
    )))
}

/// The file name of a gateway's key in a receiver directory.
pub fn receiver_key_file(gateway: &str, id: u32) -> String {
    format!("link-{gateway}-{id}.key")
}

/// The peer entries of a receiver (every gateway of the site that sends to it, by name) and
/// the key files they name: (file name, text).
pub type ReceiverKeys = (
    Vec<manifests::link::Peer>,
    Vec<(String, zeroize::Zeroizing<String>)>,
);

/// Builds the receiver's peers with their keys; `path_of` turns a file name into the path
/// the manifest names.
pub fn receiver_peers(
    authority: &mut ca::Authority,
    gateways: &[(String, u8)],
    path_of: &dyn Fn(&str) -> PathBuf,
) -> Result<ReceiverKeys> {
    use manifests::link::{Peer, PeerKey};
    let mut peers = Vec::new();
    let mut files = Vec::new();
    for (gw, address) in gateways {
        let r = ring(authority, gw)?;
        let mut keys = Vec::new();
        let name = receiver_key_file(gw, r.current);
        files.push((name.clone(), key_text(authority, gw, r.current, true)?));
        keys.push(PeerKey {
            id: r.current,
            file: path_of(&name),
            retire_at: None,
        });
        if let Some(p) = &r.previous {
            let name = receiver_key_file(gw, p.id);
            files.push((name.clone(), key_text(authority, gw, p.id, false)?));
            keys.push(PeerKey {
                id: p.id,
                file: path_of(&name),
                retire_at: Some(p.retire_at),
            });
        }
        let mut peer = Peer::new(gw.clone(), *address);
        peer.keys = keys;
        peers.push(peer);
    }
    Ok((peers, files))
}

/// After `emit`/`deploy gateway G`: writes G's receiver's registered directories again (a new
/// gateway joins its peers) and returns the report line, or says what to run if it has none.
pub fn after_gateway(ctx: &Context, gateway: &str) -> Result<(serde_json::Value, String)> {
    let site = ctx.site()?;
    let Some(receiver) = site.gateways.get(gateway).map(|g| g.receiver.clone()) else {
        return Ok((json!([]), String::new()));
    };
    let done = super::nodes::refresh(ctx, "receiver", &receiver)?;
    let text = if done.is_empty() {
        format!(
            "\n  receiver `{receiver}` must hold this gateway's key: `provisioner emit receiver {receiver} --out DIR` (or `provisioner deploy receiver {receiver} --root ROOT`), install it, then `systemctl reload lora-link-rx` (SIGHUP to `lora-link rx`)"
        )
    } else {
        format!(
            "\n  receiver `{receiver}` (accepts every gateway of the site that sends to it):{}",
            super::nodes::human(&done)
        )
    };
    Ok((json!(done), text))
}

/// Runs `link`.
pub fn run(ctx: &Context, cmd: LinkCommand) -> Result<()> {
    match cmd {
        LinkCommand::Rotate(a) => rotate(ctx, &a.gateway, a.window),
        LinkCommand::Retire(a) => retire(ctx, &a.gateway),
        LinkCommand::Status => status(ctx),
    }
}

/// The gateway's receiver, or an input error naming the known gateways.
fn receiver_of(ctx: &Context, gateway: &str) -> Result<String> {
    let site = ctx.site()?;
    site.gateways
        .get(gateway)
        .map(|g| g.receiver.clone())
        .ok_or_else(|| {
            let known: Vec<&str> = site.gateways.keys().map(String::as_str).collect();
            CliError::new(
                Code::Input,
                format!(
                    "no gateway `{gateway}` in the site file (known: {})",
                    known.join(", ")
                ),
            )
        })
}

fn now_unix() -> u64 {
    ca::clock::now().unix_timestamp().max(0) as u64
}

fn rotate(ctx: &Context, gateway: &str, window: Duration) -> Result<()> {
    let receiver = receiver_of(ctx, gateway)?;
    let mut authority = ctx.authority()?;
    let mut rings = load_rings(&authority.store.ledger)?;
    let mut r = rings.get(gateway).cloned().unwrap_or_default();
    let now = now_unix();
    if let Some(p) = &r.previous
        && p.retire_at > now
    {
        return Err(CliError::new(
            Code::State,
            format!(
                "gateway `{gateway}` is in a rotation window: key {} is accepted until {} (Unix {}), key {} is current",
                p.id, utc(p.retire_at), p.retire_at, r.current
            ),
        )
        .with_help(format!(
            "run `provisioner link retire --gateway {gateway}` once the gateway sends under key {}, then rotate again",
            r.current
        )));
    }
    // The current key exists before it becomes the previous one.
    key_text(&mut authority, gateway, r.current, true)?;
    let next = r.current + 1;
    key_text(&mut authority, gateway, next, true)?;
    let retire_at = now + window.as_secs();
    r.previous = Some(Retiring {
        id: r.current,
        retire_at,
    });
    r.current = next;
    rings.insert(gateway.to_string(), r.clone());
    save_rings(&authority.store.ledger, &rings)?;
    drop(authority);
    let receivers = super::nodes::refresh(ctx, "receiver", &receiver)?;
    let gateways = super::nodes::refresh(ctx, "gateway", gateway)?;
    let mut human = format!(
        "gateway `{gateway}`: new link key {next}; receiver `{receiver}` accepts key {} until {} (Unix {retire_at}), then rejects frames under it (retired_key)",
        next - 1,
        utc(retire_at),
    );
    human.push_str("\n  first the receiver (it then accepts both keys):");
    human.push_str(&or_hint(
        &human_list(&receivers),
        &format!(
            "\n    `provisioner emit receiver {receiver} --out DIR` (or `deploy receiver`), install, `systemctl reload lora-link-rx`"
        ),
    ));
    human.push_str("\n  then the gateway (it sends under the new key once restarted):");
    human.push_str(&or_hint(
        &human_list(&gateways),
        &format!(
            "\n    `provisioner emit gateway {gateway} --out DIR` (or `deploy gateway`), install, restart it"
        ),
    ));
    human.push_str(&format!(
        "\n  after the gateway restarted (and at the latest at the window's end): provisioner link retire --gateway {gateway}"
    ));
    ctx.print(
        &json!({ "gateway": gateway, "receiver": receiver, "key_id": next, "previous_key_id": next - 1,
                 "retire_at": retire_at, "receivers": receivers, "gateways": gateways }),
        &human,
    );
    Ok(())
}

fn human_list(r: &[super::nodes::Refreshed]) -> String {
    super::nodes::human(r).replace("\n  ", "\n    ")
}

fn or_hint(list: &str, hint: &str) -> String {
    if list.is_empty() {
        hint.to_string()
    } else {
        list.to_string()
    }
}

fn retire(ctx: &Context, gateway: &str) -> Result<()> {
    let receiver = receiver_of(ctx, gateway)?;
    let authority = ctx.authority()?;
    let mut rings = load_rings(&authority.store.ledger)?;
    let mut r = rings.get(gateway).cloned().unwrap_or_default();
    let Some(old) = r.previous.take() else {
        ctx.print(
            &json!({ "gateway": gateway, "key_id": r.current, "retired": null }),
            &format!(
                "gateway `{gateway}`: nothing to retire (key {} only)",
                r.current
            ),
        );
        return Ok(());
    };
    rings.insert(gateway.to_string(), r.clone());
    save_rings(&authority.store.ledger, &rings)?;
    drop(authority);
    let receivers = super::nodes::refresh(ctx, "receiver", &receiver)?;
    let human = format!(
        "gateway `{gateway}`: key {} retired, key {} only; receiver `{receiver}`:{}",
        old.id,
        r.current,
        or_hint(
            &super::nodes::human(&receivers),
            &format!(
                "\n  `provisioner emit receiver {receiver} --out DIR` (or `deploy receiver`), install, `systemctl reload lora-link-rx`"
            )
        ),
    );
    ctx.print(
        &json!({ "gateway": gateway, "key_id": r.current, "retired": old.id, "receivers": receivers }),
        &human,
    );
    Ok(())
}

fn status(ctx: &Context) -> Result<()> {
    let site = ctx.site()?;
    let store = ctx.store()?;
    let rings = load_rings(&store.ledger)?;
    let nodes = super::nodes::all(&store)?;
    let mut human = String::new();
    let mut list = Vec::new();
    for (gw, g) in &site.gateways {
        let r = rings.get(gw).cloned().unwrap_or_default();
        human.push_str(&format!(
            "gateway `{gw}` -> receiver `{}`: key {}{}\n",
            g.receiver,
            r.current,
            r.previous
                .as_ref()
                .map(|p| format!(
                    ", key {} accepted until {} (Unix {})",
                    p.id,
                    utc(p.retire_at),
                    p.retire_at
                ))
                .unwrap_or_default()
        ));
        list.push(json!({ "gateway": gw, "receiver": g.receiver, "key_id": r.current, "previous": r.previous }));
    }
    for n in &nodes {
        human.push_str(&format!(
            "{} `{}`: {} ({})\n",
            n.kind,
            n.id,
            n.dir.display(),
            if n.deploy_bin.is_some() {
                "deploy --root"
            } else {
                "emit --out"
            }
        ));
    }
    ctx.print(
        &json!({ "gateways": list, "directories": nodes }),
        human.trim_end(),
    );
    Ok(())
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc(t: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t as i64)
        .ok()
        .and_then(|d| {
            d.format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
            ))
            .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse() {
        assert_eq!(parse_window("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_window("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_window("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_window("0s").is_err());
        assert!(parse_window("3w").is_err());
        assert!(parse_window("h").is_err());
    }
}
