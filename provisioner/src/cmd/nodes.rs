//! Gateway and receiver directories, registered so their certificates can be renewed where
//! they are installed.
//!
//! `emit gateway|receiver ID --out OUT` and `deploy gateway ID --root ROOT` record where they
//! wrote and the options they wrote with (ledger meta `nodes`); `renew` runs the same writer
//! again into each place when the node's certificate is due. As for broker directories
//! (`cmd::brokers`), a registered place is written only if its `.provisioner-home` marker
//! names this home by id and canonical path: a copy of the home (same ledger, same registry)
//! never writes into the original's directories. `emit gateway|receiver --forget DIR` drops
//! a place.

use std::path::{Path, PathBuf};

use ca::authority::{HOME_MARKER, HomeBinding};

use super::emit::{NodeOptions, sh_path, sh_word};
use crate::exit::{CliError, Code, Result};

const META: &str = "nodes";

/// One registered gateway or receiver directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeDir {
    /// `gateway` or `receiver`.
    pub kind: String,
    /// Its id in the site file (its certificate's CN).
    pub id: String,
    /// OUT (canonical) for `emit`, ROOT (canonical) for `deploy gateway`.
    pub dir: PathBuf,
    /// The options it was written with.
    pub options: NodeOptions,
    /// `deploy gateway`: the unit's ExecStart binary (ROOT is a root filesystem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_bin: Option<PathBuf>,
}

impl NodeDir {
    /// Where the marker lives: OUT, or the configuration directory in ROOT
    /// (ROOT/etc/iot-gateway, ROOT/etc/lora-link) for a deployed node.
    pub fn marker_dir(&self) -> Result<PathBuf> {
        match &self.deploy_bin {
            None => Ok(self.dir.clone()),
            Some(_) => super::deploy::config_dir_in(&self.dir, &self.kind),
        }
    }

    /// "gateway `gw` in DIR" or "gateway `gw` deployed to ROOT".
    pub fn describe(&self) -> String {
        let id = manifests::text::escape(&self.id);
        match &self.deploy_bin {
            None => format!("{} `{id}` in {}", self.kind, self.dir.display()),
            Some(_) => format!("{} `{id}` deployed to {}", self.kind, self.dir.display()),
        }
    }

    /// The command that writes this place again, with its options.
    pub fn rerun(&self) -> String {
        let o = &self.options;
        let mut cmd = match &self.deploy_bin {
            None => format!(
                "provisioner emit {} {} --out {}",
                self.kind,
                sh_word(&self.id),
                sh_path(&self.dir)
            ),
            Some(bin) => format!(
                "provisioner deploy {} {} --root {} --bin {}",
                self.kind,
                sh_word(&self.id),
                sh_path(&self.dir),
                sh_path(bin)
            ),
        };
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(v) = value {
                cmd.push_str(&format!(" --{name} {}", sh_word(&v)));
            }
        };
        flag("broker-host", o.broker_host.clone());
        flag("broker-port", o.broker_port.map(|p| p.to_string()));
        flag("server-name", o.server_name.clone());
        flag("qos", (o.qos != 1).then(|| o.qos.to_string()));
        flag("air", o.air.map(|a| a.to_string()));
        flag("sf", o.sf.map(|s| s.to_string()));
        if self.deploy_bin.is_none() {
            let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
            flag("state-dir", path(&o.state_dir));
            flag("prefix", path(&o.prefix));
        }
        if o.no_mqtt {
            cmd.push_str(" --no-mqtt");
        }
        cmd
    }

    /// What to run, in order, so that the running node uses the files written here: the copy
    /// to the node (a place emitted with `--prefix`), then the restart or reload `pickup`
    /// asks for. A deployed node is told through its unit (its ROOT may be an image to copy).
    pub fn next_steps(&self, pickup: Pickup) -> Vec<String> {
        let gateway = self.kind == "gateway";
        // Only the receiver reloads on SIGHUP, and only its link keys.
        let reload = pickup == Pickup::LinkKeys && !gateway;
        if self.deploy_bin.is_some() {
            let unit = match (gateway, reload) {
                (true, _) => "systemctl restart iot-gateway",
                (false, true) => "systemctl reload lora-link-rx",
                (false, false) => "systemctl restart lora-link-rx",
            };
            return vec![format!(
                "copy {} to the {} machine if it is not its root, then there: {unit}",
                sh_path(&self.dir),
                self.kind
            )];
        }
        let (program, file) = if gateway {
            ("gateway", "gateway.toml")
        } else {
            ("lora-link rx", "receiver.toml")
        };
        let mut run = Vec::new();
        let manifest = match &self.options.prefix {
            Some(prefix) => {
                run.push(super::emit::node_copy_command(&self.dir, prefix));
                prefix.join(file)
            }
            None => self.dir.join(file),
        };
        let manifest = sh_path(&manifest);
        run.push(if reload {
            format!(
                "send SIGHUP to `{program} --manifest {manifest}` (it reloads its keys without stopping)"
            )
        } else {
            format!("restart `{program} --manifest {manifest}` (stop it, start it again)")
        });
        run
    }
}

/// What changed in a place, which decides how the running node takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pickup {
    /// A new certificate: neither `gateway` nor `lora-link rx` re-reads it while it runs, and
    /// neither leaves a pid file: a restart, which the operator runs (or systemd).
    Restart,
    /// New link keys: the receiver reloads them on SIGHUP; the gateway restarts (its
    /// persistent MQTT session keeps what arrives meanwhile).
    LinkKeys,
}

/// Every registered place.
pub fn all(store: &ca::Store) -> Result<Vec<NodeDir>> {
    parse(store.ledger.meta(META)?)
}

fn parse(text: Option<String>) -> Result<Vec<NodeDir>> {
    match text {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(&s).map_err(|e| {
            CliError::new(
                Code::State,
                format!("the ledger's node registry (meta `{META}`) is damaged: {e}"),
            )
        }),
    }
}

fn encode(all: &[NodeDir]) -> ca::Result<String> {
    serde_json::to_string(all)
        .map_err(|e| ca::Error::Generate(format!("encoding the node registry: {e}")))
}

/// Refuses to write into `dir` when its marker names another home (or the original of this
/// copy). A directory without a marker is free.
pub fn claim(home: &HomeBinding, dir: &Path) -> Result<()> {
    home.check_marker(dir).map(|_| ()).map_err(|why| {
        CliError::new(Code::State, why).with_help(format!(
            "forget it in the home that owns it (`provisioner emit gateway --forget {}`), or, if that home no longer exists, remove {} and run this again",
            dir.display(),
            dir.join(HOME_MARKER).display()
        ))
    })
}

/// Writes the marker into `marker_dir` (0644, atomically).
pub fn write_marker(home: &HomeBinding, marker_dir: &Path) -> Result<()> {
    let path = marker_dir.join(HOME_MARKER);
    safe_fs::replace(
        &path,
        home.marker_text().as_bytes(),
        &safe_fs::Replace::new(0o644),
    )
    .map_err(|e| crate::exit::io(&path, e))
}

/// Records (or updates) a place; its marker must be written already.
pub fn register(store: &ca::Store, node: &NodeDir) -> Result<()> {
    Ok(store.ledger.transaction(|tx| {
        let mut all = parse(tx.meta(META)?).map_err(|e| ca::Error::Conflict(e.to_string()))?;
        match all.iter_mut().find(|x| x.dir == node.dir) {
            Some(x) => *x = node.clone(),
            None => all.push(node.clone()),
        }
        tx.set_meta(META, &encode(&all)?)
    })?)
}

/// Forgets a place; false if it was not registered.
pub fn forget(store: &ca::Store, dir: &Path) -> Result<bool> {
    Ok(store.ledger.transaction(|tx| {
        let mut all = parse(tx.meta(META)?).map_err(|e| ca::Error::Conflict(e.to_string()))?;
        let before = all.len();
        all.retain(|x| x.dir != dir);
        tx.set_meta(META, &encode(&all)?)?;
        Ok(all.len() != before)
    })?)
}

/// Checks a registered place before a registry-driven write: `Ok(false)` if it is gone
/// (skipped, never recreated), `Err` with the reason when it is not this home's.
pub fn check(home: &HomeBinding, node: &NodeDir) -> std::result::Result<bool, String> {
    if std::fs::symlink_metadata(&node.dir).is_err() {
        return Ok(false);
    }
    let dir = node.marker_dir().map_err(|e| e.to_string())?;
    match home.check_marker(&dir)? {
        true => Ok(true),
        false => Err(format!(
            "{} has no {HOME_MARKER}: not registered by this home (run `{}` to write it again and register it)",
            dir.display(),
            node.rerun()
        )),
    }
}

/// Writes a registered place again with its stored options and the same writer that made it
/// (`deploy` into a root, `emit` into a directory). Returns the node's certificate serial.
pub fn write_again(ctx: &crate::context::Context, n: &NodeDir) -> Result<String> {
    Ok(match &n.deploy_bin {
        Some(bin) => super::deploy::install(ctx, &n.kind, &n.id, &n.dir, bin, &n.options)?.serial,
        None if n.kind == "gateway" => {
            super::emit::write_gateway(ctx, &n.id, &n.options, &n.dir)?.serial
        }
        None => super::emit::write_receiver(ctx, &n.id, &n.options, &n.dir)?.serial,
    })
}

/// What a refresh did to one registered place.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Refreshed {
    /// "gateway" or "receiver".
    pub kind: String,
    /// Its id.
    pub id: String,
    /// The directory (or root).
    pub dir: PathBuf,
    /// What to run, in order, or why it was skipped.
    pub run: Vec<String>,
    /// Not written (reason in `run`).
    pub skipped: bool,
}

/// Writes every registered place of node `kind`/`id` again (after a link-key change or a new
/// gateway): a place that is gone is skipped, one that is not this home's is reported
/// `NOT written`.
pub fn refresh(ctx: &crate::context::Context, kind: &str, id: &str) -> Result<Vec<Refreshed>> {
    let store = ctx.store()?;
    let home = store.home_binding()?;
    let mut out = Vec::new();
    for n in all(&store)?
        .into_iter()
        .filter(|n| n.kind == kind && n.id == id)
    {
        let r = match check(&home, &n) {
            Ok(true) => write_again(ctx, &n).map(|_| n.next_steps(Pickup::LinkKeys)),
            Ok(false) => continue,
            Err(why) => Err(CliError::new(Code::State, why)),
        };
        let (run, skipped) = match r {
            Ok(run) => (run, false),
            Err(e) => (vec![format!("NOT written: {e}")], true),
        };
        out.push(Refreshed {
            kind: n.kind.clone(),
            id: n.id.clone(),
            dir: n.dir.clone(),
            run,
            skipped,
        });
    }
    Ok(out)
}

/// The human lines of a refresh report.
pub fn human(refreshed: &[Refreshed]) -> String {
    let mut s = String::new();
    for r in refreshed {
        s.push_str(&format!(
            "\n  {} `{}` in {}{}",
            r.kind,
            r.id,
            r.dir.display(),
            if r.skipped { "" } else { " written again" }
        ));
        for (i, line) in r.run.iter().enumerate() {
            s.push_str(&format!("\n    {}. {line}", i + 1));
        }
    }
    s
}
