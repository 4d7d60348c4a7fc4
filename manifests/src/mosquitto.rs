//! Rendering of a complete mosquitto 2.0 configuration: one TLS listener that requires a
//! client certificate signed by the site CA, takes the certificate's CN as the username,
//! checks the CRL, and applies a per-identity ACL. No anonymous access, TLS 1.2 minimum.
//!
//! **Client id = identity.** `use_username_as_clientid true` (with `use_identity_as_username
//! true`) makes the broker replace whatever client id a client sends by its certificate's CN.
//! A certified device that connects with another identity's client id (say the gateway's)
//! therefore gets a session under its own name and cannot take over, or disconnect, the other
//! identity's session; persistent sessions (`clean_session = false`) are keyed on the
//! identity. Our programs send their identity as client id anyway (the manifests check it).
//!
//! **Nothing dropped under load.** mosquitto keeps, per client, at most
//! `max_queued_messages` QoS 1/2 messages beyond those in flight and silently drops the rest
//! (its default, 1000, lost a fifth of a 20 000-reading burst when the gateway fell behind).
//! The configuration sets [`MAX_QUEUED_MESSAGES`] and [`MAX_QUEUED_BYTES`] (whichever is
//! reached first) and [`MAX_INFLIGHT_MESSAGES`]; see their docs for the sizing.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::error::{Error, Location};
use crate::topic::{check_identity, check_topic_filter};

/// `max_queued_messages`: QoS 1/2 messages the broker holds per client beyond those in flight,
/// while that client (the gateway) falls behind or is offline with a persistent session.
/// 100 000 is five times the 20 000-reading burst the gateway benchmark sends, and a site of
/// 100 sensors with 2 readings every 30 s needs about 4 hours of gateway outage to fill it.
pub const MAX_QUEUED_MESSAGES: u32 = 100_000;
/// `max_queued_bytes`: the memory bound beside [`MAX_QUEUED_MESSAGES`], payload bytes per
/// client (64 MiB: 100 000 readings of up to 670 bytes). Only subscribers with a session
/// (the gateway, a monitor) ever hold a queue; sensors only publish.
pub const MAX_QUEUED_BYTES: u64 = 64 * 1024 * 1024;
/// `max_inflight_messages`: QoS 1/2 messages sent to one client and not yet acknowledged
/// (mosquitto's default is 20). 100 lets a consumer that acknowledges promptly (the gateway
/// acks as soon as the record is queued for the radio) keep up with a burst over TLS.
pub const MAX_INFLIGHT_MESSAGES: u32 = 100;
// Checked when compiling: the queue holds the benchmark's burst five times over, and the byte
// bound does not cut it short for readings of up to 300 bytes.
const _: () = assert!(MAX_QUEUED_MESSAGES >= 5 * 20_000);
const _: () = assert!(MAX_QUEUED_BYTES >= MAX_QUEUED_MESSAGES as u64 * 300);

/// Where the broker will find its files (paths as seen by mosquitto).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerFiles {
    /// CA certificate(s) that client certificates must chain to.
    pub cafile: PathBuf,
    /// Broker certificate chain (leaf first).
    pub certfile: PathBuf,
    /// Broker private key.
    pub keyfile: PathBuf,
    /// CRL of the CA that issues client certificates.
    pub crlfile: PathBuf,
    /// ACL file.
    pub aclfile: PathBuf,
}

/// Listener settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// TLS port.
    pub port: u16,
    /// Address to bind (None = all interfaces).
    pub bind: Option<String>,
    /// `user` directive: the account mosquitto runs as after start (None = mosquitto's default).
    pub run_as: Option<String>,
    /// Where mosquitto writes its pid file (None: no pid file).
    pub pid_file: Option<PathBuf>,
    /// `persistence true` with its database in this directory (None: no persistence).
    /// Persistent sessions, their subscriptions and queued QoS 1/2 messages then survive a
    /// restart of the broker (mosquitto saves them when it stops).
    pub persistence_dir: Option<PathBuf>,
}

/// One identity's ACL block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclEntry {
    /// Username = certificate CN.
    pub user: String,
    /// A comment line shown above the block (profile, kind).
    pub comment: String,
    /// Topic filters this identity may publish to.
    pub write: Vec<String>,
    /// Topic filters this identity may subscribe to.
    pub read: Vec<String>,
}

/// Renders mosquitto.conf.
pub fn render_conf(listener: &Listener, files: &BrokerFiles) -> Result<String, Error> {
    for (name, p) in [
        ("cafile", &files.cafile),
        ("certfile", &files.certfile),
        ("keyfile", &files.keyfile),
        ("crlfile", &files.crlfile),
        ("acl_file", &files.aclfile),
    ]
    .into_iter()
    .chain(listener.pid_file.as_ref().map(|p| ("pid_file", p)))
    .chain(
        listener
            .persistence_dir
            .as_ref()
            .map(|p| ("persistence_location", p)),
    ) {
        let s = p.to_string_lossy();
        // mosquitto reads one directive per line; a newline in a path would inject directives.
        if s.contains(['\n', '\r']) || !p.is_absolute() {
            return Err(Error::Invalid {
                at: Location::field("mosquitto.conf", name),
                expected: format!("an absolute path without line breaks (got {s:?})"),
            });
        }
    }
    if listener.port == 0 {
        return Err(Error::Invalid {
            at: Location::field("mosquitto.conf", "listener"),
            expected: "a port 1..65535".into(),
        });
    }
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# mosquitto 2.0 configuration generated by `provisioner emit broker`."
    );
    let _ = writeln!(
        c,
        "# Re-run that command instead of editing: it rewrites this file and the ACL."
    );
    let _ = writeln!(c);
    let _ = writeln!(c, "per_listener_settings false");
    let _ = writeln!(c, "allow_anonymous false");
    if let Some(user) = &listener.run_as {
        let _ = writeln!(c, "user {user}");
    }
    if let Some(pid) = &listener.pid_file {
        let _ = writeln!(c, "pid_file {}", pid.display());
    }
    let _ = writeln!(c, "acl_file {}", files.aclfile.display());
    if let Some(dir) = &listener.persistence_dir {
        let _ = writeln!(
            c,
            "# Persistent sessions and queued QoS 1/2 messages survive a restart of the broker."
        );
        let _ = writeln!(c, "persistence true");
        // mosquitto joins the location and the file name as strings: keep the slash.
        let _ = writeln!(c, "persistence_location {}/", dir.display());
    }
    let _ = writeln!(c);
    let _ = writeln!(
        c,
        "# Per-client queue of QoS 1/2 messages (mosquitto's default, 1000, silently drops the"
    );
    let _ = writeln!(
        c,
        "# rest of a burst when the gateway falls behind): 5x a 20 000-reading burst, 64 MiB at"
    );
    let _ = writeln!(
        c,
        "# most per client, whichever comes first. Only subscribers (the gateway) hold a queue."
    );
    let _ = writeln!(c, "max_queued_messages {MAX_QUEUED_MESSAGES}");
    let _ = writeln!(c, "max_queued_bytes {MAX_QUEUED_BYTES}");
    let _ = writeln!(c, "max_inflight_messages {MAX_INFLIGHT_MESSAGES}");
    let _ = writeln!(c);
    match &listener.bind {
        Some(addr) => {
            let _ = writeln!(c, "listener {} {addr}", listener.port);
        }
        None => {
            let _ = writeln!(c, "listener {}", listener.port);
        }
    }
    let _ = writeln!(c, "protocol mqtt");
    let _ = writeln!(c, "tls_version tlsv1.2");
    let _ = writeln!(c, "cafile {}", files.cafile.display());
    let _ = writeln!(c, "certfile {}", files.certfile.display());
    let _ = writeln!(c, "keyfile {}", files.keyfile.display());
    let _ = writeln!(c, "crlfile {}", files.crlfile.display());
    let _ = writeln!(c, "require_certificate true");
    let _ = writeln!(c, "use_identity_as_username true");
    let _ = writeln!(
        c,
        "# The client id is the certificate's CN too, whatever the client sends: no certified"
    );
    let _ = writeln!(
        c,
        "# client can take over (disconnect) another identity's session, such as the gateway's."
    );
    let _ = writeln!(c, "use_username_as_clientid true");
    Ok(c)
}

/// Renders the ACL file: deny by default, each identity limited to its own topics.
pub fn render_acl(entries: &[AclEntry]) -> Result<String, Error> {
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# ACL generated by `provisioner emit broker`: one block per certificate identity."
    );
    let _ = writeln!(c, "# Anything not granted here is denied.");
    for e in entries {
        let at = |what: &str, expected: String| Error::Invalid {
            at: Location::field("acl", &format!("{}.{what}", e.user)),
            expected,
        };
        check_identity(&e.user).map_err(|x| at("user", x))?;
        let _ = writeln!(c);
        for line in e.comment.lines() {
            let _ = writeln!(c, "# {line}");
        }
        let _ = writeln!(c, "user {}", e.user);
        for t in &e.write {
            check_topic_filter(t).map_err(|x| at("write", x))?;
            let _ = writeln!(c, "topic write {t}");
        }
        for t in &e.read {
            check_topic_filter(t).map_err(|x| at("read", x))?;
            let _ = writeln!(c, "topic read {t}");
        }
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BrokerFiles {
        BrokerFiles {
            cafile: "/etc/m/ca.crt".into(),
            certfile: "/etc/m/broker.crt".into(),
            keyfile: "/etc/m/broker.key".into(),
            crlfile: "/etc/m/crl.pem".into(),
            aclfile: "/etc/m/acl".into(),
        }
    }

    #[test]
    fn conf_has_every_security_directive() {
        let l = Listener {
            port: 8883,
            bind: None,
            run_as: None,
            pid_file: None,
            persistence_dir: None,
        };
        let conf = render_conf(&l, &files()).expect("render");
        for d in [
            "allow_anonymous false",
            "listener 8883",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "max_queued_messages 100000",
            "max_queued_bytes 67108864",
            "max_inflight_messages 100",
            "tls_version tlsv1.2",
            "crlfile /etc/m/crl.pem",
            "acl_file /etc/m/acl",
        ] {
            assert!(
                conf.lines().any(|line| line == d),
                "missing `{d}` in\n{conf}"
            );
        }
    }

    #[test]
    fn client_id_rule_is_in_the_listener_and_queue_sizes_are_global() {
        let l = Listener {
            port: 8883,
            bind: Some("127.0.0.1".into()),
            run_as: None,
            pid_file: None,
            persistence_dir: None,
        };
        let conf = render_conf(&l, &files()).expect("render");
        let at = |d: &str| {
            conf.lines()
                .position(|line| line == d)
                .unwrap_or_else(|| panic!("missing `{d}` in\n{conf}"))
        };
        let listener = at("listener 8883 127.0.0.1");
        // Listener options apply to the listener above them; global ones go before any.
        assert!(at("use_username_as_clientid true") > listener, "{conf}");
        assert!(at("use_identity_as_username true") > listener, "{conf}");
        for d in [
            "max_queued_messages 100000",
            "max_queued_bytes 67108864",
            "max_inflight_messages 100",
        ] {
            assert!(at(d) < listener, "`{d}` must be global:\n{conf}");
        }
    }

    #[test]
    fn injected_paths_and_topics_are_refused() {
        let mut f = files();
        f.keyfile = "/etc/m/k\nallow_anonymous true".into();
        let l = Listener {
            port: 8883,
            bind: None,
            run_as: None,
            pid_file: None,
            persistence_dir: None,
        };
        assert!(render_conf(&l, &f).is_err());
        let l = Listener {
            pid_file: Some("/run/m.pid\nallow_anonymous true".into()),
            ..l
        };
        assert!(render_conf(&l, &files()).is_err());
        let l = Listener {
            pid_file: Some("/etc/m/run/mosquitto.pid".into()),
            ..l
        };
        let conf = render_conf(&l, &files()).expect("render");
        assert!(
            conf.lines()
                .any(|x| x == "pid_file /etc/m/run/mosquitto.pid"),
            "{conf}"
        );
        let l = Listener {
            persistence_dir: Some("/etc/m/run\npersistence false".into()),
            ..l
        };
        assert!(render_conf(&l, &files()).is_err());
        let l = Listener {
            persistence_dir: Some("/etc/m/run".into()),
            ..l
        };
        let conf = render_conf(&l, &files()).expect("render");
        let lines: Vec<&str> = conf.lines().collect();
        assert!(lines.contains(&"persistence true"), "{conf}");
        assert!(
            lines.contains(&"persistence_location /etc/m/run/"),
            "{conf}"
        );
        let e = AclEntry {
            user: "x".into(),
            comment: String::new(),
            write: vec!["a b".into()],
            read: vec![],
        };
        assert!(render_acl(&[e]).is_err());
    }

    #[test]
    fn acl_blocks_per_user() {
        let e = AclEntry {
            user: "salon-1".into(),
            comment: "device salon-1".into(),
            write: vec!["maison/salon/temperature".into()],
            read: vec![],
        };
        let acl = render_acl(&[e]).expect("acl");
        assert!(
            acl.contains("user salon-1\ntopic write maison/salon/temperature\n"),
            "{acl}"
        );
    }
}
