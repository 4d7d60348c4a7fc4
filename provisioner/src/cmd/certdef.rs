//! Compressible device profiles on the provisioner side: the site's
//! `[profiles.NAME.compressed]` as the CA's [`DeviceForm`], the certificate definitions of a
//! profile (device and signer), and `emit certdef`, which writes them as C and JSON.

use std::path::PathBuf;

use ca::certdef::{self, CertDef};
use ca::{Authority, Store};
use manifests::site::Site;
use serde_json::json;

use crate::context::Context;
use crate::exit::{CliError, Code, Result};

/// Arguments of `emit certdef`.
#[derive(Debug, clap::Args)]
pub struct CertdefArgs {
    /// A compressible device profile of the site (`[profiles.NAME.compressed]`).
    #[arg(long, value_name = "NAME")]
    pub profile: String,
    /// Directory to write into (created 0700 if absent).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub use crate::bench::provision::chip_identity::form;

/// Tells the CA which site profiles issue compressible certificates.
pub fn apply(site: &Site, authority: &mut Authority) {
    for (name, p) in &site.profiles {
        if let Some(f) = form(site, p) {
            authority.set_compressed(name, f);
        }
    }
}

/// The definition of profile `name`'s device certificates (with the signer's inside).
pub fn definitions(store: &Store, site: &Site, name: &str) -> Result<CertDef> {
    let profile = site
        .profile(name)
        .map_err(|e| CliError::new(Code::Usage, e))?;
    let form = form(site, profile).ok_or_else(|| {
        CliError::new(
            Code::Usage,
            format!(
                "profile `{name}` is not compressible: it has no [profiles.{name}.compressed] table"
            ),
        )
        .with_help(
            "see manifests/src/site_compressed.rs for the settings of a compressible profile",
        )
    })?;
    if store.ledger.meta("issuing_serial")?.is_none() {
        return Err(CliError::new(
            Code::State,
            "this home has no issuing CA: compressed device certificates name a compressible signer",
        )
        .with_help("create the home with `provisioner init --site FILE` where FILE has the compressed profile"));
    }
    let signer_der = store.issuer_der()?;
    let signer = certdef::signer_def(&signer_der, &store.root_der()?, form.ids, form.slots)?;
    let signer_cn = certdef::common_name(&signer_der, false)?;
    if ca::compressed::signer_id_of(&signer_cn) != Some(form.ids.signer_id) {
        return Err(CliError::new(
            Code::State,
            format!(
                "the issuing CA `{}` does not carry the site's signer id {}",
                manifests::text::escape(&signer_cn),
                hex::encode_upper(form.ids.signer_id)
            ),
        ));
    }
    Ok(certdef::device_def(&form, &signer_der, signer)?)
}

/// Runs `emit certdef`.
pub fn run(ctx: &Context, args: CertdefArgs) -> Result<()> {
    let store = ctx.store()?;
    let site = ctx.site()?;
    let def = definitions(&store, &site, &args.profile)?;
    let out = super::emit::prepare_out_dir(&args.out)?;
    let base = format!("cert_def_{}", args.profile.replace('-', "_"));
    let h = format!("{base}.h");
    let files = [
        (
            format!("{base}.c"),
            super::certdef_c::source(&args.profile, &h, &def),
        ),
        (h.clone(), super::certdef_c::header(&args.profile)),
        (
            format!("{base}.json"),
            format!(
                "{}\n",
                serde_json::to_string_pretty(&def).unwrap_or_default()
            ),
        ),
    ];
    let mut written = Vec::new();
    for (name, text) in &files {
        let path = out.join(name);
        safe_fs::replace(&path, text.as_bytes(), &safe_fs::Replace::new(0o644))
            .map_err(|e| CliError::new(Code::Failure, format!("{}: {e}", path.display())))?;
        written.push(path);
    }
    let human = format!(
        "certificate definitions of profile `{}` (device template {}, signer template {}, chain {}) in {}:\n  {}",
        args.profile,
        def.template_id,
        def.ca_cert_def.as_ref().map_or(0, |s| s.template_id),
        def.chain_id,
        out.display(),
        written
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n  ")
    );
    ctx.print(
        &json!({ "profile": args.profile, "out": out, "files": written,
                 "template_id": def.template_id, "chain_id": def.chain_id }),
        &human,
    );
    Ok(())
}
