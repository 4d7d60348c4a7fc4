//! `provisioner device provision`: the bench job.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use manifests::site::KeySource;
use serde_json::json;

use crate::bench::kit::{KitLink, LinkStats};
use crate::bench::mos::MosLink;
use crate::bench::provision::{
    self, CaAccess, Job, Outcome, Progress, ProvisionError, Quiet, Shared,
};
use crate::bench::{Board, LinkError};
use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// Help text shown after the options. The id template is written `{N}`: clap prints a
/// lowercase `{n}` in help text as a line break and has no escape for it (`{n}` still works
/// on the command line).
pub const HELP: &str = "\
EXAMPLES:
  # See what would change, without touching the chip
  provisioner device provision --port /dev/ttyUSB0 --id salon-1 --profile climat --dry-run
  # Do it: locking the chip's zones is irreversible, hence --lock
  provisioner device provision --port /dev/ttyUSB0 --id salon-1 --profile climat --lock
  # Three boards at once, ids from a template
  provisioner device provision --port /dev/ttyUSB0 --port /dev/ttyUSB1 --port /dev/ttyUSB2 \\
      --id 'cuisine-{N}' --room cuisine --profile thermometre --lock

Running it again on a provisioned board verifies it and reports; a chip locked with another
configuration is refused with the difference by field name. --reissue gives a new certificate
for the same chip key and revokes the old one. Every broker directory `emit broker`
registered gets the new ACL at once; the reload to run is printed.

A board the ledger knows under another profile is refused (nothing changed) unless
--change-profile is given: then the ledger records the new profile and its topics, and every
registered broker's ACL admits them (the old topics are dropped).

A board provisioned by another CA home (its device.crt or ca.crt does not chain to this home's
CA) is refused with what was found, and nothing is changed: provisioning it would re-key the
chip and destroy its fielded identity. --takeover is the permission to do so. With a profile
whose key slot is Lockable (the built-in tls-device), the slot is locked once the certificate
is issued and written: that key can never be replaced; taking over such a board certifies the
key already in the chip, after proof of possession.

The private key is generated in the chip (--key-source chip, the default) or on this host and
sent only encrypted (--key-source host, encrypted PrivWrite; slot 0 of the built-in tls-device
chip profile takes either). The write key is generated here, kept encrypted in the ledger, and
crosses the USB wire once, before the data zone is locked: the only time the chip accepts it.
--dry-run reads the ledger only: it needs no CA passphrase and issues nothing.

--transport mos provisions a board that runs stock Mongoose OS with its ATCA RPC service
(Sys.GetInfo, ATCA.*, FS.Put, Config.Set/Save) to the same state, and sets mqtt.ssl_key to
ATCA:<slot>. That firmware takes keys only in clear (ATCA.SetKey), so --key-source host
needs --allow-plaintext-key-over-serial; the default, --key-source chip, sends no secret.

EXIT CODES: as `provisioner --help`, plus 6: stopped before locking (re-run with --lock).";

/// Transport to the board.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// Microchip's kit protocol (our provisioning firmware).
    Kit,
    /// Mongoose OS RPC (stock Mongoose OS firmware).
    Mos,
}

/// Arguments of `device provision`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Serial port of the board (repeatable: several boards in parallel).
    #[arg(long, required = true, value_name = "PATH")]
    port: Vec<String>,
    /// Device id, one per --port, or one template with {N} (1, 2, ...; lowercase works too).
    #[arg(long, required = true, value_name = "ID")]
    id: Vec<String>,
    /// Device profile from the site file.
    #[arg(long, value_name = "NAME")]
    profile: Option<String>,
    /// Room for the topic templates. Default: the site room the id starts with.
    #[arg(long, value_name = "ROOM")]
    room: Option<String>,
    /// Where the private key comes from. Default: the profile's key_source.
    #[arg(long, value_enum)]
    key_source: Option<KeySourceArg>,
    /// Permit locking the chip's config and data zones (irreversible).
    #[arg(long)]
    lock: bool,
    /// Show every change and change nothing (no secret is printed; needs no CA passphrase).
    #[arg(long)]
    dry_run: bool,
    /// Issue a new certificate for the same chip key and revoke the old one.
    #[arg(long)]
    reissue: bool,
    /// Take over a board another CA provisioned: re-key it and certify it with this home.
    /// Its fielded identity is lost (its certificate stops matching the chip's key); a locked
    /// key slot keeps its key, which this home then certifies.
    #[arg(long)]
    takeover: bool,
    /// Re-provision a board the ledger knows with another --profile: the ledger records the
    /// new profile and its topics, and every registered broker's ACL admits them (its old
    /// topics are dropped). Without it, a profile change is refused and nothing is changed.
    #[arg(long)]
    change_profile: bool,
    /// Protocol spoken by the board's firmware.
    #[arg(long, value_enum, default_value = "kit")]
    transport: Transport,
    /// With --transport mos: let Mongoose OS's ATCA.SetKey carry a host key and the write key
    /// IN CLEAR over the serial line (needed for --key-source host on that firmware).
    #[arg(long)]
    allow_plaintext_key_over_serial: bool,
    /// Baud rate of the serial port.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
}

/// `--key-source`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeySourceArg {
    /// GenKey in the chip: the key never exists outside it.
    Chip,
    /// Generated on this host, injected encrypted, erased.
    Host,
}

struct Bars {
    bars: Vec<(String, ProgressBar)>,
}

impl Progress for Bars {
    fn step(&self, port: &str, message: &str) {
        if let Some((_, bar)) = self.bars.iter().find(|(p, _)| p == port) {
            bar.set_message(message.to_string());
            bar.tick();
        }
    }
}

fn room_for(id: &str, rooms: &[String]) -> Option<String> {
    rooms
        .iter()
        .filter(|r| id == r.as_str() || id.starts_with(&format!("{r}-")))
        .max_by_key(|r| r.len())
        .cloned()
}

/// Whole-run attempts per board. Every run first reads the board's state and does only what
/// is missing, so a run cut short by line noise is simply run again; locks are protected by
/// their CRC summaries, so a retry can never lock content other than the profile's.
const RUNS: u32 = 4;

fn retryable(e: &ProvisionError) -> bool {
    match e {
        // A missing or busy port, another firmware, or the board's time is up: running
        // again cannot help.
        ProvisionError::Link(
            LinkError::Open(_)
            | LinkError::Deadline { .. }
            | LinkError::OtherFirmware { .. }
            | LinkError::Unsupported { .. },
        ) => false,
        ProvisionError::Link(_) | ProvisionError::Chip { .. } => true,
        _ => false,
    }
}

/// One run over a freshly opened link; its traffic is added to `stats`.
fn run_on<B: Board>(
    link: std::result::Result<B, LinkError>,
    job: &Job,
    shared: &Shared<'_>,
    stats: &mut LinkStats,
) -> std::result::Result<Outcome, ProvisionError> {
    let mut link = link?;
    let r = provision::provision(&mut link, job, shared);
    stats.add(&link.stats());
    r
}

/// Provisions one board over `transport`, running again (up to [`RUNS`] times) after a
/// failure that another run may get through (a noisy line).
fn provision_with_retries(
    port: &str,
    args: &Args,
    job: &Job,
    shared: &Shared<'_>,
) -> std::result::Result<Outcome, ProvisionError> {
    let mut run = 1;
    let mut stats = LinkStats::default();
    // Every run and retry of this board ends by then, whatever the board sends.
    let deadline = Instant::now() + crate::bench::kit::board_limit(args.baud);
    loop {
        let r = match args.transport {
            Transport::Kit => run_on(
                KitLink::connect_until(port, args.baud, deadline),
                job,
                shared,
                &mut stats,
            ),
            Transport::Mos => run_on(
                MosLink::connect_until(port, args.baud, deadline).map(|mut l| {
                    l.allow_plaintext_keys(args.allow_plaintext_key_over_serial);
                    l
                }),
                job,
                shared,
                &mut stats,
            ),
        };
        let r = r.map(|mut o| {
            o.link = Some(stats);
            o
        });
        match r {
            Err(e) if run < RUNS && retryable(&e) => {
                shared.progress.step(port, &format!("retrying after: {e}"));
                tracing::warn!("{port}: run {run} stopped ({e}); running again");
                run += 1;
            }
            other => return other,
        }
    }
}

/// The exit code a board's failure calls for (the process exits with the worst board's).
fn failure_code(e: &ProvisionError) -> Code {
    match e {
        ProvisionError::LockedDifferently { .. } | ProvisionError::Conflict(_) => Code::State,
        ProvisionError::Config(_) | ProvisionError::Link(LinkError::OtherFirmware { .. }) => {
            Code::Input
        }
        ProvisionError::Ca(ca::Error::WrongPassphrase { .. }) => Code::Credentials,
        _ => Code::Failure,
    }
}

/// The 1-based line of the first line of `text` after line `from` (0: the start) that starts
/// with `start` once indented, before the next `[section]` when `in_section`.
fn line_of(text: &str, from: usize, start: &str, in_section: bool) -> Option<usize> {
    for (i, line) in text.lines().enumerate().skip(from) {
        let t = line.trim_start();
        if t.starts_with(start) {
            return Some(i + 1);
        }
        if in_section && t.starts_with('[') {
            return None;
        }
    }
    None
}

/// Slots of `chip` that can hold the key of `profile` with `source`.
fn key_slots_for(
    chip: &atecc::profile::Profile,
    profile: &manifests::site::DeviceProfile,
    source: KeySource,
) -> Vec<u8> {
    (0u8..=7)
        .filter(|&n| {
            let mut p = profile.clone();
            p.key_slot = n;
            n != p.write_key_slot && provision::check_profile(&p, chip, source).is_ok()
        })
        .collect()
}

/// Where to fix a site profile whose chip profile's key slot does not take `source`: the
/// site file and line, the chip profile's file and line, and slots or profiles that work.
fn key_slot_help(
    ctx: &Context,
    name: &str,
    profile: &manifests::site::DeviceProfile,
    chip: &atecc::profile::Profile,
    source: KeySource,
) -> String {
    let site = ctx.layout.site();
    let text = safe_fs::read_limited_string(&site, 1 << 20).unwrap_or_default();
    let section = line_of(&text, 0, &format!("[profiles.{name}]"), false);
    let at = match section {
        Some(l) => match line_of(&text, l, "key_slot", true) {
            Some(k) => format!("{}:{k} (key_slot of [profiles.{name}])", site.display()),
            None => format!(
                "{}:{l} ([profiles.{name}], key_slot not set: it defaults to 0)",
                site.display()
            ),
        },
        None => format!("{} ([profiles.{name}])", site.display()),
    };
    let slot = profile.key_slot;
    let (chip_file, chip_text) = if profile.chip == "tls-device" {
        (
            "the built-in chip profile tls-device (atecc/profiles/tls-device.toml in the sources)"
                .to_string(),
            atecc::profile::TLS_DEVICE_PROFILE.to_string(),
        )
    } else {
        let path = ctx
            .layout
            .home
            .join("chips")
            .join(format!("{}.toml", profile.chip));
        let text = safe_fs::read_limited_string(&path, 256 * 1024).unwrap_or_default();
        (path.display().to_string(), text)
    };
    let chip_at = match line_of(&chip_text, 0, &format!("[slot.{slot}]"), false) {
        Some(l) => format!("{chip_file}, line {l} ([slot.{slot}])"),
        None => format!("{chip_file} ([slot.{slot}] not set)"),
    };
    let field = match source {
        KeySource::Chip => "write_config with bit 0b0010 (GenKey)".to_string(),
        KeySource::Host => format!(
            "write_config with bit 0b0100 (encrypted PrivWrite) and write_key = {}",
            profile.write_key_slot
        ),
    };
    let mut fixes = Vec::new();
    let here = key_slots_for(chip, profile, source);
    if let Some(n) = here.first() {
        fixes.push(format!(
            "set key_slot = {n} at {at} (slot {n} of chip profile `{}` takes it)",
            profile.chip
        ));
    }
    if profile.chip != "tls-device"
        && let Ok(builtin) = atecc::profile::Profile::from_toml(atecc::profile::TLS_DEVICE_PROFILE)
        && key_slots_for(&builtin, profile, source).contains(&slot)
    {
        fixes.push(format!(
            "use the built-in chip profile: chip = \"tls-device\" in [profiles.{name}] of {} (its slot {slot} takes it)",
            site.display()
        ));
    }
    fixes.push(format!(
        "give slot {slot} {field} in {chip_at} (only for chips not yet locked with it)"
    ));
    let other = match source {
        KeySource::Chip => "--key-source host",
        KeySource::Host => "--key-source chip",
    };
    fixes.push(format!("or use {other}"));
    fixes.join("; ")
}

/// Checks every job against the profile the ledger holds for its id: a different profile is
/// an error naming both and the flag, unless `allowed`; then the changes, for the report.
fn profile_changes(ctx: &Context, jobs: &[(String, Job)], allowed: bool) -> Result<Vec<String>> {
    let store = ctx.store()?;
    let mut changes = Vec::new();
    for (port, job) in jobs {
        let Some(known) = store.ledger.identity(&job.id)? else {
            continue;
        };
        if known.kind != "device" || known.status != "active" || known.profile == job.profile_name {
            continue;
        }
        let (id, old, new) = (
            manifests::text::escape(&job.id),
            manifests::text::escape(&known.profile),
            manifests::text::escape(&job.profile_name),
        );
        if !allowed {
            return Err(CliError::new(
                Code::State,
                format!(
                    "{port}: `{id}` is provisioned with profile `{old}` (topics {}); --profile {new} would change what it publishes, and nothing was changed",
                    known.acl_write.join(", ")
                ),
            )
            .with_help(format!(
                "re-run with --change-profile to record profile `{new}` in the ledger and admit its topics in every registered broker's ACL, or keep --profile {old}"
            )));
        }
        changes.push(format!(
            "{id}: profile `{old}` -> `{new}` recorded in the ledger; every registered broker's ACL follows (reload below)"
        ));
    }
    Ok(changes)
}

/// Runs `device provision`.
pub fn run(ctx: &Context, args: Args) -> Result<()> {
    let site = ctx.site()?;
    let profile_name = match &args.profile {
        Some(p) => p.clone(),
        None if site.profiles.len() == 1 => {
            site.profiles.keys().next().cloned().unwrap_or_default()
        }
        None => {
            return Err(CliError::new(
                Code::Input,
                "several device profiles in this site: choose one with --profile",
            )
            .with_help(format!(
                "profiles: {}",
                site.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    };
    let profile = site
        .profile(&profile_name)
        .map_err(|e| CliError::new(Code::Input, e))?
        .clone();
    let ids: Vec<String> = if args.id.len() == args.port.len() {
        args.id.clone()
    } else if args.id.len() == 1 && (args.id[0].contains("{n}") || args.id[0].contains("{N}")) {
        // `{N}` is what the help shows: clap prints `{n}` in help text as a line break.
        (1..=args.port.len())
            .map(|n| {
                args.id[0]
                    .replace("{n}", &n.to_string())
                    .replace("{N}", &n.to_string())
            })
            .collect()
    } else {
        return Err(CliError::new(
            Code::Input,
            format!("{} --port but {} --id", args.port.len(), args.id.len()),
        )
        .with_help("give one --id per --port, or one template such as --id 'salon-{n}'"));
    };
    // A path that cannot be a serial port is a wrong argument: refused before any board.
    for port in &args.port {
        if let Some(why) = crate::bench::port::not_a_serial_port(port) {
            return Err(CliError::new(Code::Input, format!("--port {why}")));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (id, port) in ids.iter().zip(&args.port) {
        manifests::topic::check_identity(id)
            .map_err(|e| CliError::new(Code::Input, format!("--id: expected {e}")))?;
        if !seen.insert(id.clone()) || !seen.insert(format!("port:{port}")) {
            return Err(CliError::new(
                Code::Input,
                format!("`{id}` or `{port}` is given twice"),
            ));
        }
    }
    let key_source = match args.key_source {
        Some(KeySourceArg::Chip) => KeySource::Chip,
        Some(KeySourceArg::Host) => KeySource::Host,
        None => profile.key_source,
    };
    let jobs: Vec<(String, Job)> = ids
        .iter()
        .zip(&args.port)
        .map(|(id, port)| {
            let room =
                args.room
                    .clone()
                    .or_else(|| room_for(id, &site.topics.rooms))
                    .ok_or_else(|| {
                        CliError::new(Code::Input, format!("cannot tell the room of `{id}`"))
                            .with_help(format!(
                                "give --room (rooms of this site: {})",
                                site.topics.rooms.join(", ")
                            ))
                    })?;
            Ok((
                port.clone(),
                Job {
                    id: id.clone(),
                    room,
                    profile_name: profile_name.clone(),
                    key_source,
                    lock: args.lock,
                    dry_run: args.dry_run,
                    reissue: args.reissue,
                    takeover: args.takeover,
                },
            ))
        })
        .collect::<Result<_>>()?;
    // A board the ledger knows under another profile: refused before any port is opened,
    // unless the change is asked for.
    let changes = profile_changes(ctx, &jobs, args.change_profile)?;
    // Fail on the profile before touching any chip.
    let chip = provision::chip_profile(&profile.chip, &ctx.layout.home)
        .map_err(|e| CliError::new(Code::Input, e.to_string()))?;
    provision::check_profile(&profile, &chip, key_source).map_err(|e| {
        CliError::new(Code::Input, format!("profile `{profile_name}`: {e}")).with_help(
            key_slot_help(ctx, &profile_name, &profile, &chip, key_source),
        )
    })?;
    // A secret in clear on the wire needs the operator's word, before any port is opened.
    if args.transport == Transport::Mos {
        for (_, job) in &jobs {
            provision::check_key_path(job, Some(args.allow_plaintext_key_over_serial))
                .map_err(|e| CliError::new(Code::Input, e.to_string()))?;
        }
    }

    // A dry run reads the ledger and changes nothing: it needs neither the CA key nor its
    // passphrase.
    let (full, read_only);
    let authority: &dyn CaAccess = if args.dry_run {
        read_only = Mutex::new(ctx.store()?);
        &read_only
    } else {
        let mut authority = ctx.authority()?;
        if args.lock {
            // One key derivation up front rather than inside the first board's run (locking
            // the data zone needs the vault for the write key).
            authority.open_vault()?;
        }
        full = Mutex::new(authority);
        &full
    };
    let show = !ctx.json && std::io::stderr().is_terminal();
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{spinner} {prefix:.bold} {elapsed:>4} {wide_msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner());
    let bars = Bars {
        bars: jobs
            .iter()
            .map(|(port, job)| {
                let bar = if show {
                    multi.add(ProgressBar::new_spinner())
                } else {
                    ProgressBar::hidden()
                };
                bar.set_style(style.clone());
                bar.set_prefix(format!("{port} {}", job.id));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                (port.clone(), bar)
            })
            .collect(),
    };
    let progress: &dyn Progress = if show { &bars } else { &Quiet };
    let shared = Shared {
        authority,
        site: &site,
        home: ctx.layout.home.clone(),
        progress,
    };
    let started = Instant::now();
    let results: Vec<(String, std::result::Result<Outcome, ProvisionError>, u128)> =
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(port, job)| {
                    let (shared, args) = (&shared, &args);
                    s.spawn(move || {
                        let t = Instant::now();
                        let r = provision_with_retries(port, args, job, shared);
                        (port.clone(), r, t.elapsed().as_millis())
                    })
                })
                .collect();
            handles
                .into_iter()
                .zip(&jobs)
                .map(|(h, (port, _))| {
                    h.join().unwrap_or_else(|_| {
                        (
                            port.clone(),
                            Err(ProvisionError::Conflict(
                                "provisioning thread panicked".into(),
                            )),
                            0,
                        )
                    })
                })
                .collect()
        });
    for (port, bar) in &bars.bars {
        let r = results.iter().find(|(p, _, _)| p == port);
        match r {
            Some((_, Ok(o), _)) => bar.finish_with_message(o.status),
            _ => bar.finish_with_message("failed"),
        }
    }
    // Device manifests for the operator: what each device is and runs with.
    for (_, r, _) in &results {
        if let Ok(o) = r
            && o.certificate.is_some()
            && !args.dry_run
        {
            let dir = ctx.layout.home.join("devices");
            ca::fsutil::private_dir(&dir)?;
            let text = serde_json::to_string_pretty(o).unwrap_or_default();
            ca::fsutil::write_atomic(&dir.join(format!("{}.json", o.id)), text.as_bytes(), 0o644)?;
        }
    }
    let mut worst: Option<CliError> = None;
    let mut report = Vec::new();
    let mut human = String::new();
    let failed = results.iter().filter(|r| r.1.is_err()).count();
    for ((port, r, ms), (_, job)) in results.iter().zip(&jobs) {
        match r {
            Ok(o) => {
                // The physical floor of this exchange: bytes x 10 bits / baud + the chip's
                // typical execution times (what `scripts/bench-provision.sh` compares against).
                let floor = o.link.map(|l| l.floor_s(args.baud));
                // A board stopped before an irreversible step is not done: the process
                // exits 6 for it, and its record says so.
                let stopped = o.status == "needs-lock";
                let mut record = json!({
                    "port": port,
                    "id": o.id,
                    "ok": !stopped,
                    "status": if stopped { "stopped" } else if o.status == "dry-run" { "dry-run" } else { "done" },
                    "ms": ms,
                    "floor_s": floor,
                    "result": o,
                });
                if stopped {
                    record["stopped"] = json!("needs --lock");
                    record["exit_code"] = json!(Code::NeedsPermission as i32);
                }
                report.push(record);
                if let (Some(l), Some(f)) = (o.link, floor) {
                    human.push_str(&format!(
                        "{} on the wire ({} lines, {} resent), physical floor {:.2} s at {} baud, ratio {:.2}\n",
                        l.bytes_out + l.bytes_in,
                        l.lines,
                        l.retries,
                        f,
                        args.baud,
                        *ms as f64 / 1000.0 / f
                    ));
                }
                human.push_str(&format!(
                    "{} {} on {port}: {} in {:.1} s\n",
                    o.id,
                    o.chip_serial,
                    o.status,
                    *ms as f64 / 1000.0
                ));
                for st in &o.steps {
                    human.push_str(&format!(
                        "  {:<13} {:<9} {}\n",
                        st.step, st.action, st.detail
                    ));
                }
                if !o.config_diff.is_empty() && o.status != "provisioned" {
                    human.push_str("  config zone changes (current -> profile):\n");
                    for c in &o.config_diff {
                        human.push_str(&format!(
                            "    {:<24} {} -> {}\n",
                            c.field, c.current, c.wanted
                        ));
                    }
                }
                if stopped && worst.is_none() {
                    worst = Some(
                        CliError::new(
                            Code::NeedsPermission,
                            format!("{port}: stopped before locking the chip"),
                        )
                        .with_help("review the changes above, then re-run with --lock"),
                    );
                }
            }
            Err(e) => {
                // A board that stayed silent may have had its replies read by someone else.
                let hint = match e {
                    ProvisionError::Link(
                        LinkError::Timeout { .. }
                        | LinkError::RpcTimeout { .. }
                        | LinkError::Deadline { .. },
                    ) => crate::bench::port::other_openers_hint(port),
                    _ => String::new(),
                };
                let code = failure_code(e);
                report.push(json!({
                    "port": port,
                    "id": job.id,
                    "ok": false,
                    "status": "failed",
                    "exit_code": code as i32,
                    "ms": ms,
                    "error": format!("{e}{hint}"),
                }));
                human.push_str(&format!("{port} {}: FAILED: {e}{hint}\n", job.id));
                let help = match e {
                    ProvisionError::Link(LinkError::OtherFirmware { fix, .. }) => {
                        Some(format!("re-run with {fix}"))
                    }
                    _ => None,
                };
                let mut err = CliError::new(
                    code,
                    format!("{failed} of {} board(s) failed", results.len()),
                );
                if let Some(h) = help {
                    err = err.with_help(h);
                }
                // A failure outranks a stop; among failures, the first board's counts.
                if worst
                    .as_ref()
                    .is_none_or(|w| w.code() == Code::NeedsPermission as i32)
                {
                    worst = Some(err);
                }
            }
        }
    }
    for c in &changes {
        human.push_str(&format!("{c}\n"));
    }
    human.push_str(&format!(
        "{} board(s) in {:.1} s",
        results.len(),
        started.elapsed().as_secs_f64()
    ));
    ctx.print(
        &json!({
            "boards": report,
            "ok": worst.is_none(),
            "exit_code": worst.as_ref().map_or(0, CliError::code),
            "seconds": started.elapsed().as_secs_f64(),
            "profile_changes": changes,
        }),
        &human,
    );
    match worst {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
