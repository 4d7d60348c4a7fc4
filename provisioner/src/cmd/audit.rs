//! `provisioner audit`: every certificate the site depends on, with the days it has left, for
//! an operator, a systemd timer or a monitoring system (documented exit codes). Also the
//! site's lifetime policy and the `--expiring DURATION` parser shared with `device list`.

use ca::ledger::{CertRecord, IdentityRecord};
use ca::profile::{Lifetime, LifetimePolicy, Renewal};
use manifests::site::{RenewPoint, Site};
use serde::Serialize;
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// Help text: what is checked and the exit codes.
pub const HELP: &str = "\
Checks every identity's active certificate (devices, clients, the broker, gateways,
receivers), the CA certificates (root and issuing) and the CRL's nextUpdate. A certificate is
`renew` once it is past its renewal point (two thirds of its lifetime unless the site file
says otherwise: [profiles.NAME] or [lifetimes.KIND] renew_at / renew_before_days) and
`expired` after its notAfter. Re-running the command that issued it renews it: `server issue`,
`cert sign` (same CSR), `emit gateway|receiver`, `device provision`; `crl` for the CRL.
`provisioner renew` renews every due broker, gateway and receiver certificate and the CRL
at once, where they are installed.

EXIT CODES:
  0   every certificate and the CRL are healthy
  10  something is inside its renewal window (nothing has expired)
  11  something has expired (or there is no CRL)
  1-5 the audit itself failed (see `provisioner --help`)

EXAMPLES:
  provisioner audit
  provisioner audit --json | jq '.items[] | select(.state != \"ok\")'";

/// Arguments of `audit`.
#[derive(Debug, clap::Args)]
#[command(after_help = HELP)]
pub struct Args {}

/// The ca lifetime policy the site file describes.
pub(crate) fn policy(site: &Site) -> LifetimePolicy {
    let convert = |l: &manifests::site::Lifetime| Lifetime {
        seconds: Some(l.seconds(site.site.leaf_days)),
        renewal: match l.renew_point() {
            Some(RenewPoint::Fraction(num, den)) => Renewal::Fraction { num, den },
            Some(RenewPoint::DaysBefore(d)) => Renewal::DaysBefore(d),
            Some(RenewPoint::SecondsBefore(s)) => Renewal::SecondsBefore(s),
            None => Renewal::TWO_THIRDS,
        },
    };
    let mut p = LifetimePolicy::default();
    for (kind, l) in site.lifetimes.by_kind() {
        if let Some(l) = l {
            p.kinds.insert(kind.to_string(), convert(l));
        }
    }
    for (name, prof) in &site.profiles {
        p.device_profiles
            .insert(name.clone(), convert(&prof.lifetime()));
    }
    p
}

/// The site's policy, or the defaults when the home has no readable site file.
pub(crate) fn home_policy(ctx: &Context) -> LifetimePolicy {
    ctx.site().map(|s| policy(&s)).unwrap_or_default()
}

/// Parses a duration such as `30d`, `12h`, `90m`, `2w` or `3600s` into seconds.
pub(crate) fn parse_duration(s: &str) -> std::result::Result<i64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: i64 = n
        .parse()
        .map_err(|_| format!("a duration such as 30d, 12h or 90m (got `{s}`)"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" | "" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(format!(
                "a duration such as 30d, 12h or 90m: units s, m, h, d, w (got `{s}`)"
            ));
        }
    };
    n.checked_mul(mult)
        .filter(|v| *v <= 100 * 365 * 86_400)
        .ok_or_else(|| format!("a duration of at most 100 years (got `{s}`)"))
}

/// Whole days from `now` to `t` (negative once past).
pub(crate) fn days_left(t: i64, now: i64) -> i64 {
    (t - now).div_euclid(86_400)
}

pub(crate) fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// Health of one item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// Before its renewal point.
    Ok,
    /// Past its renewal point, not expired.
    Renew,
    /// Past notAfter.
    Expired,
}

impl State {
    pub(crate) fn of(renew_at: i64, not_after: i64, now: i64) -> State {
        if now >= not_after {
            State::Expired
        } else if now >= renew_at {
            State::Renew
        } else {
            State::Ok
        }
    }
}

/// The renewal point of `cert` (an identity's certificate) under `policy`.
pub(crate) fn renew_at(
    policy: &LifetimePolicy,
    cert: &CertRecord,
    identity: Option<&IdentityRecord>,
) -> i64 {
    policy
        .lifetime(
            &cert.profile,
            identity.map(|i| (i.kind.as_str(), i.profile.as_str())),
        )
        .renewal
        .renew_at(cert.not_before, cert.not_after)
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Item {
    /// root-ca, issuing-ca, device, client, server, gateway, receiver or crl.
    pub(crate) kind: String,
    /// Identity, CA name, or `crl`.
    pub(crate) id: String,
    /// Certificate serial (hex), or the CRL number.
    pub(crate) serial: String,
    /// Site or certificate profile.
    pub(crate) profile: String,
    pub(crate) not_after: String,
    pub(crate) renew_at: String,
    pub(crate) days_left: i64,
    pub(crate) state: State,
    #[serde(skip)]
    left_s: i64,
}

/// Runs `audit`.
pub fn run(ctx: &Context, _args: Args) -> Result<()> {
    let store = ctx.store()?;
    let now = ca::clock::now().unix_timestamp();
    let items = items(&store, &home_policy(ctx), now)?;
    report(ctx, &items, now)
}

/// Every certificate the site depends on and the CRL, with its state at `now` under
/// `policy`, soonest to expire first (what `audit` prints, and what `renew` works from).
pub(crate) fn items(store: &ca::Store, policy: &LifetimePolicy, now: i64) -> Result<Vec<Item>> {
    let mut items = Vec::new();
    let mut push = |kind: &str, id: &str, serial: &str, profile: &str, renew: i64, na: i64| {
        items.push(Item {
            kind: kind.into(),
            id: id.into(),
            serial: serial.into(),
            profile: profile.into(),
            not_after: rfc3339(na),
            renew_at: rfc3339(renew),
            days_left: days_left(na, now),
            state: State::of(renew, na, now),
            left_s: na - now,
        })
    };
    let certs = store.ledger.certificates()?;
    // CA certificates: the ones the ledger names, renewal point at two thirds (a rollover to
    // plan, not a re-run).
    // (On a station's home, its issuing CA is the station's.)
    let serials = [store.ledger.meta("root_serial")?, store.issuing_serial()?];
    for serial in serials.into_iter().flatten() {
        if let Some(c) = store.ledger.by_serial(&serial)? {
            let renew = Renewal::TWO_THIRDS.renew_at(c.not_before, c.not_after);
            push(
                &c.profile,
                &c.identity,
                &c.serial,
                &c.profile,
                renew,
                c.not_after,
            );
        }
    }
    // Every identity with an active certificate (revoked identities have none).
    let mut seen = std::collections::BTreeSet::new();
    for c in certs
        .iter()
        .filter(|c| !matches!(c.profile.as_str(), "root-ca" | "issuing-ca"))
    {
        if !seen.insert(c.identity.clone()) {
            continue;
        }
        let Some(active) = store.ledger.active_of(&c.identity)? else {
            continue;
        };
        let ident = store.ledger.identity(&c.identity)?;
        let kind = ident
            .as_ref()
            .map_or(active.profile.as_str(), |i| i.kind.as_str());
        let profile = ident
            .as_ref()
            .map_or(active.profile.as_str(), |i| i.profile.as_str());
        let renew = renew_at(policy, &active, ident.as_ref());
        push(
            kind,
            &active.identity,
            &active.serial,
            profile,
            renew,
            active.not_after,
        );
    }
    match store.own_latest_crl()? {
        Some(crl) => {
            // `crl` signs a new one when a third or less of its lifetime is left.
            let renew = Renewal::TWO_THIRDS.renew_at(crl.this_update, crl.next_update);
            push(
                "crl",
                "crl",
                &crl.number.to_string(),
                "crl",
                renew,
                crl.next_update,
            );
        }
        None => items.push(Item {
            kind: "crl".into(),
            id: "crl".into(),
            serial: "-".into(),
            profile: "crl".into(),
            not_after: "none".into(),
            renew_at: "now".into(),
            days_left: 0,
            state: State::Expired,
            left_s: i64::MIN,
        }),
    }
    items.sort_by(|a, b| a.left_s.cmp(&b.left_s).then_with(|| a.id.cmp(&b.id)));
    Ok(items)
}

/// Prints the report and turns the worst state into the documented exit code.
fn report(ctx: &Context, items: &[Item], now: i64) -> Result<()> {
    let worst = items.iter().map(|i| i.state).max().unwrap_or(State::Ok);
    let count = |s: State| items.iter().filter(|i| i.state == s).count();
    let (expired, renew) = (count(State::Expired), count(State::Renew));
    let code = match worst {
        State::Ok => 0,
        State::Renew => Code::Expiring as i32,
        State::Expired => Code::Expired as i32,
    };
    let mut human = format!(
        "{:<8} {:>6}  {:<10} {:<24} {:<34} {:<20} {}",
        "STATE", "LEFT", "KIND", "ID", "SERIAL", "EXPIRES", "RENEW AT"
    );
    for i in items {
        human.push_str(&format!(
            "\n{:<8} {:>6}  {:<10} {:<24} {:<34} {:<20} {}",
            format!("{:?}", i.state).to_lowercase(),
            format!("{}d", i.days_left),
            i.kind,
            manifests::text::escape(&i.id),
            i.serial,
            i.not_after,
            i.renew_at
        ));
    }
    human.push_str(&format!(
        "\n{} item(s): {expired} expired, {renew} to renew, {} healthy",
        items.len(),
        count(State::Ok)
    ));
    ctx.print(
        &json!({ "now": rfc3339(now), "status": worst, "exit_code": code,
                 "expired": expired, "renew": renew, "items": items }),
        &human,
    );
    let names = |s: State| {
        items
            .iter()
            .filter(|i| i.state == s)
            .map(|i| match i.kind.as_str() {
                "crl" => "the CRL".to_string(),
                k => format!("{k} `{}`", manifests::text::escape(&i.id)),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let help = "re-run the command that issued it (server issue, cert sign, emit gateway|receiver|manifest, device provision) to renew it, `provisioner crl` for the CRL; `provisioner renew` does the broker, gateways, receivers and the CRL at once";
    match worst {
        State::Ok => Ok(()),
        State::Renew => Err(CliError::new(
            Code::Expiring,
            format!("{renew} inside the renewal window: {}", names(State::Renew)),
        )
        .with_help(help)),
        State::Expired => Err(CliError::new(
            Code::Expired,
            format!(
                "{expired} expired: {}{}",
                names(State::Expired),
                if renew > 0 {
                    format!(
                        "; {renew} inside the renewal window: {}",
                        names(State::Renew)
                    )
                } else {
                    String::new()
                }
            ),
        )
        .with_help(help)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration("12h"), Ok(12 * 3600));
        assert_eq!(parse_duration("90m"), Ok(90 * 60));
        assert_eq!(parse_duration("2w"), Ok(14 * 86_400));
        for bad in ["", "d", "-3d", "3y", "1e9d", "99999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn days_left_counts_whole_days_and_goes_negative_after_expiry() {
        assert_eq!(days_left(10 * 86_400, 0), 10);
        assert_eq!(days_left(10 * 86_400 - 1, 0), 9);
        assert_eq!(days_left(0, 1), -1);
    }
}
