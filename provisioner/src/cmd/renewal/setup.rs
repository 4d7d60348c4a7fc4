//! `renewal-service setup`: the service's identity, its ACL entry and its systemd unit.

use serde_json::json;

use super::{SERVICE_ID, SetupArgs, service_dir};
use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// File names in the service directory.
pub const CERT_FILE: &str = "client.crt";
/// The CA bundle the service trusts the broker with.
pub const CA_FILE: &str = "ca.crt";
/// The systemd unit.
pub const UNIT_FILE: &str = "provisioner-renewal.service";

/// Runs `renewal-service setup`.
pub fn run(ctx: &Context, args: SetupArgs) -> Result<()> {
    super::require_issuing_ca(ctx, args.allow_root_key)?;
    let site = ctx.site()?;
    let mut authority = ctx.authority()?;
    let prefix = manifests::device::FieldRenewal::prefix_for(&site.topics.root);
    let node = crate::cmd::emit::issue_node(
        ctx,
        &mut authority,
        &site,
        SERVICE_ID,
        SERVICE_ID,
        vec![format!("{prefix}/renew/+")],
        vec![format!("{prefix}/cert/+")],
    )?;
    let dir = service_dir(ctx);
    ca::fsutil::private_dir(&dir)?;
    let bundle = safe_fs::read_limited(&ctx.layout.ca_bundle(), 1 << 20)
        .map_err(|e| crate::exit::io(&ctx.layout.ca_bundle(), e))?;
    let unit = unit_text(ctx, &args)?;
    let files = [
        (CERT_FILE, node.chain_pem.as_bytes(), 0o644),
        (CA_FILE, bundle.as_slice(), 0o644),
        (UNIT_FILE, unit.as_bytes(), 0o644),
    ];
    let mut written = Vec::new();
    for (name, data, mode) in files {
        let path = dir.join(name);
        safe_fs::replace(&path, data, &safe_fs::Replace::new(mode))
            .map_err(|e| crate::exit::io(&path, e))?;
        written.push(path);
    }
    // Registered broker directories get the new ACL entry now.
    let brokers = crate::cmd::brokers::refresh(ctx);
    let unit_path = dir.join(UNIT_FILE);
    let human = format!(
        "renewal service `{SERVICE_ID}`: certificate {} ({}), reads {prefix}/renew/+, writes {prefix}/cert/+\n  files: {}\n  install: install -m 0644 {} /etc/systemd/system/ && systemctl daemon-reload && systemctl enable --now {UNIT_FILE}\n  passphrase: a 0600 file at {} (systemd passes it as a credential){}",
        node.serial,
        if node.existing { "existing" } else { "new" },
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        unit_path.display(),
        args.credential.display(),
        brokers.human(),
    );
    let v = json!({
        "identity": SERVICE_ID,
        "serial": node.serial,
        "existing": node.existing,
        "files": written,
        "unit": unit_path,
        "renew_topics": format!("{prefix}/renew/+"),
        "cert_topics": format!("{prefix}/cert/+"),
        "brokers": brokers.json(),
    });
    ctx.print(&v, &human);
    Ok(())
}

/// The systemd unit: the passphrase arrives as a credential, never in the unit or argv.
fn unit_text(ctx: &Context, args: &SetupArgs) -> Result<String> {
    let exe = std::env::current_exe().map_err(|e| {
        CliError::new(
            Code::Failure,
            format!("cannot locate the provisioner binary: {e}"),
        )
    })?;
    let home = ctx
        .layout
        .home
        .canonicalize()
        .map_err(|e| crate::exit::io(&ctx.layout.home, e))?;
    let user = match &args.user {
        Some(u) => u.clone(),
        None => nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map_or_else(|| "root".into(), |u| u.name),
    };
    for (what, v) in [
        ("the home", home.display().to_string()),
        ("the binary", exe.display().to_string()),
        ("--credential", args.credential.display().to_string()),
        ("--user", user.clone()),
    ] {
        if v.chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '%' || c == '$')
        {
            return Err(CliError::new(
                Code::Input,
                format!(
                    "{what} `{}` cannot be written into a systemd unit",
                    manifests::text::escape(&v)
                ),
            ));
        }
    }
    Ok(format!(
        "# Written by `provisioner renewal-service setup`: answers the boards' certificate\n\
         # renewal requests over MQTT. The CA passphrase comes from a 0600 file handed over by\n\
         # systemd as a credential; it is never in this unit or on a command line.\n\
         [Unit]\n\
         Description=Certificate renewal in the field (provisioner)\n\
         After=network-online.target mosquitto.service\n\
         Wants=network-online.target\n\n\
         [Service]\n\
         Type=simple\n\
         User={user}\n\
         LoadCredential=passphrase:{credential}\n\
         ExecStart={exe} --home {home} --passphrase-file ${{CREDENTIALS_DIRECTORY}}/passphrase renewal-service run\n\
         Restart=on-failure\n\
         RestartSec=5\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ReadWritePaths={home}\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        credential = args.credential.display(),
        exe = exe.display(),
        home = home.display(),
    ))
}
