//! Test and benchmark support: a SoftHSM2 token store in a temporary directory, with one
//! initialised token, reached through `SOFTHSM2_CONF` (Debian's `softhsm2` package; the
//! suite installs it). Used by the PKCS#11 tests and the token benchmarks of `ca` and
//! `provisioner`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// SoftHSM2's PKCS#11 module as Debian's `softhsm2` package installs it.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A token store in a temporary directory (removed on drop) with one initialised token.
#[derive(Debug)]
pub struct SoftHsm {
    dir: tempfile::TempDir,
    conf: PathBuf,
    label: String,
}

impl SoftHsm {
    /// True when the module and `softhsm2-util` are installed.
    #[must_use]
    pub fn available() -> bool {
        Path::new(MODULE).is_file()
            && Command::new("softhsm2-util")
                .arg("--version")
                .output()
                .is_ok()
    }

    /// A fresh store holding the token `label` with user PIN `pin` and SO PIN `so_pin`
    /// (test PINs: given to `softhsm2-util` in argv).
    ///
    /// # Errors
    /// softhsm2 missing, the directory or configuration not writable, or the token not
    /// initialised (with `softhsm2-util`'s message).
    pub fn new(label: &str, pin: &str, so_pin: &str) -> Result<SoftHsm, String> {
        if !Self::available() {
            return Err(format!(
                "softhsm2 is not installed ({MODULE}): apt-get install softhsm2"
            ));
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
        let tokens = dir.path().join("tokens");
        std::fs::create_dir(&tokens).map_err(|e| format!("{}: {e}", tokens.display()))?;
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .map_err(|e| format!("{}: {e}", conf.display()))?;
        let o = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", pin, "--so-pin", so_pin])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .map_err(|e| format!("softhsm2-util: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "softhsm2-util --init-token: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        Ok(SoftHsm {
            dir,
            conf,
            label: label.to_string(),
        })
    }

    /// The store's directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file `SOFTHSM2_CONF` must name.
    #[must_use]
    pub fn conf(&self) -> &Path {
        &self.conf
    }

    /// The token's label.
    #[must_use]
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The environment a `provisioner` command needs to reach the token with `pin`.
    #[must_use]
    pub fn env(&self, pin: &str) -> Vec<(String, String)> {
        vec![
            (
                "SOFTHSM2_CONF".into(),
                self.conf.to_string_lossy().into_owned(),
            ),
            ("PROVISIONER_PKCS11_PIN".into(), pin.into()),
        ]
    }
}
