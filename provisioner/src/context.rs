//! What every command shares: the home, where the passphrase comes from, output mode.

use std::io::IsTerminal;
use std::path::PathBuf;

use ca::{Authority, Layout, Passphrase, Store};
use manifests::site::Site;

use crate::exit::{CliError, Code, Result};

/// Environment variable holding the CA passphrase (or, in a token home, the token's PIN).
pub const PASSPHRASE_ENV: &str = "PROVISIONER_PASSPHRASE";
/// Environment variable holding the user PIN of the token that holds the CA key.
pub const PIN_ENV: &str = "PROVISIONER_PKCS11_PIN";

/// The home when neither `--home` nor `PROVISIONER_HOME` is given: an absolute path that does
/// not depend on the working directory, `$XDG_DATA_HOME/provisioner`, else
/// `~/.local/share/provisioner` (XDG Base Directory specification; a relative
/// `XDG_DATA_HOME` is ignored, as the specification says).
pub fn default_home() -> Result<PathBuf> {
    let absolute = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(data) = absolute(std::env::var_os("XDG_DATA_HOME")) {
        return Ok(data.join("provisioner"));
    }
    match absolute(std::env::var_os("HOME")) {
        Some(home) => Ok(home.join(".local").join("share").join("provisioner")),
        None => Err(CliError::new(
            Code::Usage,
            "no CA home: --home is not given, PROVISIONER_HOME is unset and HOME is not an absolute path",
        )
        .with_help("give --home DIR or set PROVISIONER_HOME")),
    }
}

/// Set once a command has printed its JSON result: an error after that is reported on stderr
/// only, so stdout holds exactly one JSON document either way.
static PRINTED_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a JSON result was printed on stdout.
pub fn printed_json() -> bool {
    PRINTED_JSON.load(std::sync::atomic::Ordering::SeqCst)
}

/// Shared command context.
pub struct Context {
    /// Home layout.
    pub layout: Layout,
    passphrase_file: Option<PathBuf>,
    /// JSON output requested.
    pub json: bool,
    /// The passphrase (or token PIN) once it opened the CA: a command that opens the CA several times (its
    /// change, then the broker updates it publishes; `renew`) asks once.
    known_passphrase: std::sync::OnceLock<Passphrase>,
}

/// A passphrase (or PIN) from a 0600 file, at most 4 KiB of UTF-8.
pub fn passphrase_from_file(path: &std::path::Path) -> Result<Passphrase> {
    ca::fsutil::check_private(path)?;
    let bytes = ca::fsutil::read_bounded(path, 4096)?;
    let s = String::from_utf8(bytes).map_err(|_| {
        CliError::new(
            Code::Input,
            format!("{}: passphrase file is not UTF-8", path.display()),
        )
    })?;
    Ok(Passphrase::new(s))
}

impl Context {
    /// A context.
    pub fn new(home: PathBuf, passphrase_file: Option<PathBuf>, json: bool) -> Self {
        Context {
            layout: Layout::new(home),
            passphrase_file,
            json,
            known_passphrase: std::sync::OnceLock::new(),
        }
    }

    /// The secret from `--passphrase-file` or the first of `envs` that is set, if any.
    fn given_secret(&self, envs: &[&str]) -> Result<Option<Passphrase>> {
        if let Some(path) = &self.passphrase_file {
            return passphrase_from_file(path).map(Some);
        }
        Ok(envs
            .iter()
            .find_map(|v| std::env::var(v).ok())
            .map(Passphrase::new))
    }

    /// Refuses to prompt without a terminal, naming where `what` can come from.
    fn need_terminal(what: &str, envs: &[&str]) -> Result<()> {
        if std::io::stdin().is_terminal() {
            return Ok(());
        }
        Err(CliError::new(
            Code::Credentials,
            format!("the {what} is needed and there is no terminal to ask on"),
        )
        .with_help(format!(
            "set {} or pass --passphrase-file FILE (mode 0600)",
            envs.join(" or ")
        )))
    }

    /// The user PIN of the token labelled `token`: `--passphrase-file`,
    /// `PROVISIONER_PKCS11_PIN`, `PROVISIONER_PASSPHRASE`, or a prompt. Never an argument.
    pub fn pin(&self, token: &str) -> Result<Passphrase> {
        let envs = [PIN_ENV, PASSPHRASE_ENV];
        if let Some(pin) = self.given_secret(&envs)? {
            return Ok(pin);
        }
        Self::need_terminal(&format!("PIN of token `{token}`"), &envs)?;
        rpassword::prompt_password(format!("PIN of token `{token}`: "))
            .map(Passphrase::new)
            .map_err(|e| CliError::new(Code::Credentials, format!("cannot read the PIN: {e}")))
    }

    /// What opens this home's CA key: the token's PIN when the key is in a token, else the
    /// passphrase.
    pub fn ca_secret(&self) -> Result<Passphrase> {
        if let Some(p) = self.cached_passphrase() {
            return Ok(p);
        }
        match ca::keystore::KeyStore::load(&self.layout)?.token_label() {
            Some(token) => self.pin(token),
            None => self.passphrase(false),
        }
    }

    /// The CA passphrase: env, file, or prompt (twice when `new`).
    pub fn passphrase(&self, new: bool) -> Result<Passphrase> {
        if let Some(p) = self.given_secret(&[PASSPHRASE_ENV])? {
            return Ok(p);
        }
        Self::need_terminal("CA passphrase", &[PASSPHRASE_ENV])?;
        let first = rpassword::prompt_password(if new {
            "New CA passphrase: "
        } else {
            "CA passphrase: "
        })
        .map_err(|e| {
            CliError::new(
                Code::Credentials,
                format!("cannot read the passphrase: {e}"),
            )
        })?;
        let first = Passphrase::new(first);
        if new {
            first.check_strength()?;
            let again = rpassword::prompt_password("Repeat passphrase: ").map_err(|e| {
                CliError::new(
                    Code::Credentials,
                    format!("cannot read the passphrase: {e}"),
                )
            })?;
            if !Passphrase::new(again).matches(&first) {
                return Err(CliError::new(
                    Code::Credentials,
                    "the two passphrases differ; nothing was created",
                ));
            }
        }
        Ok(first)
    }

    fn cached_passphrase(&self) -> Option<Passphrase> {
        self.known_passphrase.get().cloned()
    }

    /// Refuses a home that is not ours alone: whoever can write in it can replace the
    /// ledger, the site file or a chip profile, and so decide what is issued and locked.
    pub fn check_home(&self) -> Result<()> {
        let home = &self.layout.home;
        if !home.exists() {
            return Ok(());
        }
        safe_fs::check_owned_dir(home).map_err(|e| {
            CliError::new(Code::State, format!("the CA home: {e}"))
                .with_help("the home must belong to you and be writable by you only (0700)")
        })?;
        let site = self.layout.site();
        if site.exists() {
            safe_fs::check_owned(&site).map_err(|e| {
                CliError::new(Code::State, format!("the site file: {e}")).with_help(
                    "the site file in the home must belong to you and be writable by you only",
                )
            })?;
        }
        Ok(())
    }

    /// Opens the ledger and files without the CA key.
    pub fn store(&self) -> Result<Store> {
        self.check_home()?;
        Store::open(&self.layout).map_err(|e| CliError::from(e).with_help("run `provisioner init` to create a CA, or point --home / PROVISIONER_HOME at an existing one"))
    }

    /// Opens the CA with its signing key.
    pub fn authority(&self) -> Result<Authority> {
        let store_ok = ca::pgledger::Location::configured(&self.layout);
        if !store_ok {
            self.store()?;
        }
        let pass = self.ca_secret()?;
        let mut authority = Authority::open(&self.layout, &pass)?;
        let _ = self.known_passphrase.set(pass);
        // Lifetimes and renewal points from the site file (defaults without one).
        authority.set_policy(crate::cmd::audit::home_policy(self));
        // Compressible profiles (issue 19): their device certificates fit the chip.
        if self.layout.site().exists() {
            crate::cmd::certdef::apply(&self.site()?, &mut authority);
        }
        Ok(authority)
    }

    /// The site file stored in the home.
    pub fn site(&self) -> Result<Site> {
        let path = self.layout.site();
        if !path.exists() {
            return Err(
                CliError::new(Code::State, format!("{} is missing", path.display()))
                    .with_help("run `provisioner init` (it writes the site file)"),
            );
        }
        self.check_home()?;
        Ok(Site::load(&path)?)
    }

    /// Prints a result: JSON on stdout in `--json` mode, otherwise the human text.
    ///
    /// A closed stdout (`| head`) ends the process quietly with status 0.
    pub fn print(&self, value: &serde_json::Value, human: &str) {
        if self.json {
            PRINTED_JSON.store(true, std::sync::atomic::Ordering::SeqCst);
            cli_common::out(&serde_json::to_string_pretty(value).unwrap_or_default());
        } else if !human.is_empty() {
            cli_common::out(human);
        }
    }
}
