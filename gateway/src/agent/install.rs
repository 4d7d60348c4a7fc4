//! One update, from the bytes received to the files installed: check, write, record, reload.

use std::path::Path;

use manifests::update::{Envelope, UpdateBody};
use serde::{Deserialize, Serialize};

use super::Agent;

/// Largest state file read.
const MAX_STATE_LEN: u64 = 4096;

/// What the agent has installed (`state_file`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Sequence of the installed update (0: none yet).
    pub sequence: u64,
    /// When the bench signed it (Unix seconds).
    pub issued_at: i64,
}

/// What became of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Installed and (if mosquitto runs) reloaded.
    Installed {
        /// Its sequence.
        sequence: u64,
        /// The files replaced.
        files: Vec<String>,
        /// What happened to mosquitto.
        reload: String,
    },
    /// The installed update again (the retained message on every connection).
    Current(u64),
    /// Refused, with the reason; nothing was changed.
    Refused(String),
}

/// The installed state; none yet is sequence 0.
pub fn read_state(path: &Path) -> Result<State, String> {
    match safe_fs::read_limited_string(path, MAX_STATE_LEN) {
        Ok(text) => toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Records `state` atomically (0600; its directory 0700).
pub fn write_state(path: &Path, state: &State) -> Result<(), String> {
    let text = toml::to_string(state).map_err(|e| e.to_string())?;
    if let Some(dir) = path.parent() {
        safe_fs::create_dir(dir, 0o700, None).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    safe_fs::replace(path, text.as_bytes(), &safe_fs::Replace::new(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Checks `payload` and installs it. Never panics on any input.
pub fn apply(agent: &Agent, payload: &[u8]) -> Outcome {
    match check(agent, payload) {
        Ok(Some(body)) => install(agent, &body),
        Ok(None) => Outcome::Current(
            read_state(&agent.state_file)
                .map(|s| s.sequence)
                .unwrap_or_default(),
        ),
        Err(why) => Outcome::Refused(why),
    }
}

/// The update to install, `None` when it is the installed one, or why it is refused.
fn check(agent: &Agent, payload: &[u8]) -> Result<Option<UpdateBody>, String> {
    let c = &agent.config;
    let body = Envelope::parse(payload)
        .and_then(|env| env.verify(&c.signer_key()))
        .map_err(|e| e.to_string())?;
    if body.broker != c.broker {
        return Err(format!(
            "update {} is for broker `{}`, this is `{}`",
            body.sequence, body.broker, c.broker
        ));
    }
    let installed = read_state(&agent.state_file)?;
    if body.sequence < installed.sequence {
        return Err(format!(
            "replayed: sequence {} is older than the installed {}",
            body.sequence, installed.sequence
        ));
    }
    if body.sequence == installed.sequence {
        return Ok(None);
    }
    check_content(&body)?;
    Ok(Some(body))
}

/// Even signed, the files must look like what they replace: mosquitto would otherwise stop
/// at its next reload.
fn check_content(body: &UpdateBody) -> Result<(), String> {
    let pem = |what: &str, text: &str, label: &str| {
        if text.starts_with(&format!("-----BEGIN {label}-----"))
            && text.trim_end().ends_with("-----")
        {
            Ok(())
        } else {
            Err(format!(
                "update {}: {what} is not PEM {label}",
                body.sequence
            ))
        }
    };
    pem("the CRL", &body.crl_pem, "X509 CRL")?;
    pem("the broker chain", &body.broker_chain_pem, "CERTIFICATE")?;
    if body.acl.trim().is_empty() {
        return Err(format!("update {}: the ACL is empty", body.sequence));
    }
    Ok(())
}

/// Writes the files (each replaced by a rename, owner and mode as `emit broker` and `deploy
/// broker` set them), then the state, then reloads.
fn install(agent: &Agent, body: &UpdateBody) -> Outcome {
    let how = match agent.group {
        Some(gid) => safe_fs::Replace::new(0o640).owner(Some((0, gid))),
        None => safe_fs::Replace::new(0o644),
    };
    let files = [
        ("acl", &body.acl),
        ("crl.pem", &body.crl_pem),
        ("broker.crt", &body.broker_chain_pem),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = agent.broker_dir.join(name);
        if let Err(e) = safe_fs::replace(&path, text.as_bytes(), &how) {
            return Outcome::Refused(format!(
                "update {}: writing {}: {e} (installed so far: {})",
                body.sequence,
                path.display(),
                written.join(", ")
            ));
        }
        written.push(name.to_string());
    }
    let state = State {
        sequence: body.sequence,
        issued_at: body.issued_at,
    };
    if let Err(e) = write_state(&agent.state_file, &state) {
        return Outcome::Refused(format!(
            "update {}: files installed but the state was not recorded: {e}",
            body.sequence
        ));
    }
    let conf = agent.broker_dir.join("mosquitto.conf");
    let reload = match super::reload::signal_mosquitto(&agent.pid_file, &conf) {
        Ok(pid) => format!("reloaded mosquitto (SIGHUP to pid {pid})"),
        Err(e) => format!("mosquitto NOT reloaded: {e}"),
    };
    Outcome::Installed {
        sequence: body.sequence,
        files: written,
        reload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use manifests::agent::{AgentBroker, AgentConfig, AgentMqtt};
    use p256::ecdsa::signature::Signer;

    const CRL: &str = "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n";
    const CHAIN: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";

    fn key() -> p256::ecdsa::SigningKey {
        p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).expect("key")
    }

    fn agent(dir: &Path) -> Agent {
        let public = key().verifying_key().to_sec1_point(false);
        let config = AgentConfig {
            version: 1,
            broker: "pi1".into(),
            topic: manifests::agent::update_topic("pi1"),
            signer_public_key: hex::encode(public.as_bytes()),
            state_file: dir.join("state/state.toml"),
            mqtt: AgentMqtt {
                host: "127.0.0.1".into(),
                port: 1,
                server_name: None,
                client_id: "broker-agent-pi1".into(),
                ca_file: dir.join("ca.crt"),
                cert_file: dir.join("agent.crt"),
                key_file: dir.join("agent.key"),
            },
            mosquitto: AgentBroker {
                dir: dir.to_path_buf(),
                pid_file: dir.join("run/mosquitto.pid"),
                group: None,
            },
        };
        Agent {
            state_file: config.state_file.clone(),
            broker_dir: dir.to_path_buf(),
            pid_file: config.mosquitto.pid_file.clone(),
            group: None,
            config,
        }
    }

    fn signed(body: &UpdateBody) -> Vec<u8> {
        let text = body.to_toml().expect("body");
        let sig: p256::ecdsa::Signature = key().sign(&manifests::update::signed_message(&text));
        Envelope {
            signature: sig.to_der().as_bytes().to_vec(),
            body: text,
        }
        .encode()
        .into_bytes()
    }

    #[test]
    fn an_update_is_installed_once_and_older_or_foreign_ones_change_nothing() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = agent(d.path());
        let first = UpdateBody::new("pi1", 5, 100, "user a\n", CRL, CHAIN);
        match apply(&a, &signed(&first)) {
            Outcome::Installed {
                sequence, reload, ..
            } => {
                assert_eq!(sequence, 5);
                // No mosquitto runs here: said, not hidden.
                assert!(reload.contains("NOT reloaded"), "{reload}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(d.path().join("acl")).expect("acl"),
            "user a\n"
        );
        assert_eq!(read_state(&a.state_file).expect("state").sequence, 5);
        assert_eq!(apply(&a, &signed(&first)), Outcome::Current(5));

        let older = UpdateBody::new("pi1", 4, 90, "user old\n", CRL, CHAIN);
        let other = UpdateBody::new("pi2", 9, 110, "user b\n", CRL, CHAIN);
        let not_pem = UpdateBody::new("pi1", 6, 120, "user c\n", "garbage", CHAIN);
        let mut tampered = signed(&UpdateBody::new("pi1", 7, 130, "user d\n", CRL, CHAIN));
        let at = tampered.len() - CHAIN.len() - 20;
        tampered[at] ^= 1;
        for (payload, why) in [
            (
                signed(&older),
                "replayed: sequence 4 is older than the installed 5",
            ),
            (signed(&other), "is for broker `pi2`"),
            (signed(&not_pem), "the CRL is not PEM"),
            (tampered, "bad signature"),
            (b"\x00\xffjunk".to_vec(), "malformed update"),
        ] {
            match apply(&a, &payload) {
                Outcome::Refused(r) => assert!(r.contains(why), "{r} (expected {why})"),
                other => panic!("{other:?} (expected {why})"),
            }
        }
        assert_eq!(
            std::fs::read_to_string(d.path().join("acl")).expect("acl"),
            "user a\n"
        );
        assert_eq!(read_state(&a.state_file).expect("state").sequence, 5);
    }
}
