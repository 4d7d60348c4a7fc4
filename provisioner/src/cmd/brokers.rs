//! Registered broker directories stay in step with the ledger.
//!
//! `emit broker --out DIR` registers DIR in the ledger with its options (listener, prefix,
//! account, server certificate, units directory). Every command that changes what a broker
//! must know (a certificate signed, issued, renewed or revoked, a board provisioned, a CRL
//! signed) calls [`refresh`] after its commit: each registered directory is rewritten by the
//! same function `emit broker` uses ([`super::emit::write_broker_dir`]), atomically, file by
//! file, and the report says which reload applies to each (its pid file, never `pidof`).
//!
//! A directory is written only if its marker file names this home by id **and** canonical
//! path ([`ca::authority::HomeBinding`]): a copy of the home (`cp -a`: same ledger, same id)
//! skips the original's directories, and says so.

use std::path::{Path, PathBuf};

use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// One registered directory after a refresh.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Updated {
    /// The directory.
    pub dir: PathBuf,
    /// Identities in its ACL.
    pub identities: usize,
    /// CRL number written.
    pub crl_number: i64,
    /// The reload to run on the broker's machine.
    pub reload: String,
    /// The files live elsewhere (--prefix): copy the directory there first.
    pub remote: bool,
    /// The pid file, as the broker sees it.
    pub pid_file: PathBuf,
    /// When `--reload` was asked: what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reloaded: Option<String>,
}

/// What [`refresh`] did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Report {
    /// Directories rewritten.
    pub updated: Vec<Updated>,
    /// Directories not written, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// Brokers on other machines (`deploy broker`): their signed updates.
    pub agents: Vec<super::agents::Publication>,
}

impl Report {
    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "updated": self.updated,
            "skipped": self.skipped.iter().map(|(d, r)| json!({ "dir": d, "reason": r })).collect::<Vec<_>>(),
            "agents": super::agents::json(&self.agents),
        })
    }

    /// The human lines (each starting with a newline); empty without registered directories.
    pub fn human(&self) -> String {
        let mut s = String::new();
        for u in &self.updated {
            s.push_str(&format!(
                "\n  broker {}: ACL ({} identities) and CRL (number {}) rewritten",
                u.dir.display(),
                u.identities,
                u.crl_number
            ));
            let deployed = self.agents.iter().any(|p| p.dir == u.dir);
            match &u.reloaded {
                Some(r) => s.push_str(&format!("; {r}")),
                None if deployed => s.push_str("; its agent receives them (below)"),
                None if u.remote => s.push_str(&format!(
                    "; copy the directory to the broker (see `emit broker`), then there: {}",
                    u.reload
                )),
                None => s.push_str(&format!("; reload: {}", u.reload)),
            }
        }
        for (d, r) in &self.skipped {
            s.push_str(&format!("\n  broker {}: NOT written ({r})", d.display()));
        }
        s.push_str(&super::agents::human(&self.agents));
        s
    }
}

/// Rewrites the ACL and CRL (and every other file) of every broker directory registered in
/// this home, from the ledger as it is now. Never fails the command that called it (its
/// change is committed already): what could not be written is reported in `skipped`.
pub fn refresh(ctx: &Context) -> Report {
    match try_refresh(ctx) {
        Ok(r) => r,
        Err(e) => Report {
            updated: vec![],
            skipped: vec![(ctx.layout.home.clone(), e.to_string())],
            agents: vec![],
        },
    }
}

fn try_refresh(ctx: &Context) -> Result<Report> {
    let store = ctx.store()?;
    let registered = store.brokers()?;
    let mut report = Report::default();
    if registered.is_empty() {
        return Ok(report);
    }
    let home = store.home_binding()?;
    for mut reg in registered {
        let dir = reg.dir.clone();
        match ca::authority::check_broker_dir(&dir, &home) {
            // Removed: skipped quietly, never recreated (`--forget` drops it from the ledger).
            Ok(false) => continue,
            Err(reason) => {
                tracing::warn!(dir = %dir.display(), %reason, "broker directory skipped");
                report.skipped.push((dir, reason));
                continue;
            }
            Ok(true) => {}
        }
        match super::emit::write_broker_dir(ctx, &store, &home, &mut reg, false) {
            Ok(w) => report.updated.push(Updated {
                dir: w.out,
                identities: w.identities,
                crl_number: w.crl_number,
                reload: w.reload,
                remote: w.remote,
                pid_file: w.pid_file,
                reloaded: None,
            }),
            Err(e) => report.skipped.push((dir, e.to_string())),
        }
    }
    // Then the brokers on other machines, from the directories just written.
    report.agents = super::agents::publish_all(ctx);
    Ok(report)
}

/// Refreshes and prints the report after a command's own output: on stdout for people, on
/// stderr with `--json` (the command's JSON document stays the only thing on stdout).
pub fn refresh_and_print(ctx: &Context) {
    let r = refresh(ctx);
    let text = r.human();
    if text.is_empty() {
        return;
    }
    let text = text.trim_start_matches('\n');
    if ctx.json {
        eprintln!("{text}");
    } else {
        cli_common::out(text);
    }
}

/// Sends SIGHUP to the mosquitto of every local directory of `report` (its pid file), after
/// checking that the pid is a running mosquitto started with that directory's configuration.
/// Directories with --prefix are on another machine: left to the operator.
pub fn reload(report: &mut Report) {
    for u in &mut report.updated {
        if u.remote {
            continue;
        }
        u.reloaded = Some(
            match signal_broker(&u.pid_file, &u.dir.join("mosquitto.conf")) {
                Ok(pid) => format!("reloaded (SIGHUP to mosquitto pid {pid})"),
                Err(e) => format!("NOT reloaded: {e}; run: {}", u.reload),
            },
        );
    }
}

fn signal_broker(pid_file: &Path, conf: &Path) -> Result<i32> {
    gateway::agent::reload::signal_mosquitto(pid_file, conf)
        .map_err(|e| CliError::new(Code::State, e))
}
