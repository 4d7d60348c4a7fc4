//! What the four command lines (`provisioner`, `gateway`, `lora-link`, `sensor-sim`) share, so
//! that they behave alike:
//!
//! * logging: `-v` (info), `-vv` (debug), `-vvv` (trace) or the binary's `*_LOG` variable, on
//!   stderr, coloured only on a terminal and when `NO_COLOR` is unset ([`init_logging`]);
//! * a closed stdout (`provisioner ... | head`) ends the process quietly with status 0
//!   instead of a panic ([`quiet_broken_pipe`], [`out`]);
//! * `--version` with the git revision and the enabled features ([`version`]);
//! * `completions SHELL` and `man --out DIR` generated from the clap definition ([`Tool`],
//!   [`run_tool`], [`man_pages`]).

use std::io::{IsTerminal, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use clap::Subcommand;
use tracing::level_filters::LevelFilter;

/// The git revision the binary was built from ("unknown" when built outside a git checkout).
pub const GIT_REV: &str = env!("CLI_COMMON_GIT_REV");

/// The `--version` text: crate version, git revision and the enabled cargo features,
/// e.g. `0.1.0 (rev 1a2b3c4d5e6f, features: rpi)`.
pub fn version(features: &[&str]) -> &'static str {
    let features = if features.is_empty() {
        "none".to_string()
    } else {
        features.join(", ")
    };
    // Built once per command definition; leaked because clap wants a 'static str.
    Box::leak(
        format!(
            "{} (rev {GIT_REV}, features: {features})",
            env!("CARGO_PKG_VERSION")
        )
        .into_boxed_str(),
    )
}

/// Whether stderr gets colour: it is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
pub fn stderr_colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// The help paragraph every binary shows about its logging flags.
pub fn logging_help(env_var: &str) -> String {
    format!(
        "LOGGING:\n  Logs go to stderr, results to stdout. -v shows each step (info), -vv each command\n  \
         and message (debug; secrets are never logged), -vvv everything (trace). {env_var}=LEVEL\n  \
         (off, error, warn, info, debug, trace) overrides -v. Colour only on a terminal and\n  \
         when NO_COLOR is unset."
    )
}

/// Installs the stderr logger: warnings by default, info with `-v`, debug with `-vv`, trace
/// with `-vvv`; the environment variable `env_var` (a level name) takes precedence.
pub fn init_logging(verbose: u8, env_var: &str) {
    let mut level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    if let Some(v) = std::env::var_os(env_var) {
        let v = v.to_string_lossy();
        match v.trim().parse::<LevelFilter>() {
            Ok(l) => level = l,
            Err(_) => eprintln!(
                "warning: {env_var}={}: expected off, error, warn, info, debug or trace",
                v.escape_debug()
            ),
        }
    }
    // A second init (tests, a library caller) keeps the first logger.
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_colour())
        .with_target(level >= LevelFilter::DEBUG)
        .without_time()
        .try_init();
}

fn broken_pipe_panic(msg: &str) -> bool {
    msg.starts_with("failed printing to stdout")
        && (msg.contains("Broken pipe") || msg.contains("os error 32"))
}

/// Makes a closed stdout (the reader of a pipe went away, as `| head` does) end the process
/// quietly with status 0: `println!` panics on EPIPE, and this hook turns exactly that panic
/// into an exit. Every other panic is reported as before.
pub fn quiet_broken_pipe() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if broken_pipe_panic(msg) {
            std::process::exit(0);
        }
        previous(info);
    }));
}

/// Writes `text` and a newline on stdout; a closed pipe ends the process quietly (status 0),
/// any other write error is reported on stderr and ends it with status 1.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let r = writeln!(stdout, "{text}").and_then(|()| stdout.flush());
    exit_on_write_error(r);
}

fn exit_on_write_error(r: std::io::Result<()>) {
    match r {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// The subcommands every binary has for its packaging.
#[derive(Debug, Clone, Subcommand)]
pub enum Tool {
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout,
    /// e.g. into /etc/bash_completion.d/, ~/.zfunc/ or ~/.config/fish/completions/.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the manual pages (NAME.1 and one page per subcommand, NAME-SUB.1) into a
    /// directory, e.g. /usr/local/share/man/man1.
    Man {
        /// Directory to write the pages into (created if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// The manual pages of a command: `(file name, roff text)`, the command's own page first
/// (`NAME.1`), then one per visible subcommand (`NAME-SUB.1`, ...).
pub fn man_pages(cmd: clap::Command) -> std::io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: clap::Command, pages: &mut Vec<(String, Vec<u8>)>) -> std::io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut text = Vec::new();
        man.render(&mut text)?;
        pages.push((man.get_filename(), text));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub.clone(), pages)?;
        }
        Ok(())
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(cmd, &mut pages)?;
    Ok(pages)
}

/// The manual page of the command alone (`NAME.1`).
pub fn man_page(cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    let mut cmd = cmd.disable_help_subcommand(true);
    cmd.build();
    let mut text = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut text)?;
    Ok(text)
}

/// Writes the pages into `dir` (created 0755 if missing), each file 0644 by atomic replace.
pub fn write_man_pages(cmd: clap::Command, dir: &Path) -> Result<Vec<PathBuf>, String> {
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let mut written = Vec::new();
    for (name, text) in man_pages(cmd).map_err(|e| format!("rendering the manual: {e}"))? {
        let path = dir.join(&name);
        safe_fs::replace(&path, &text, &safe_fs::Replace::new(0o644))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Runs `completions` or `man` for the command `cmd` (the binary's whole clap definition).
pub fn run_tool(tool: &Tool, mut cmd: clap::Command) -> Result<(), String> {
    match tool {
        Tool::Completions { shell } => {
            let name = cmd.get_name().to_string();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, name, &mut script);
            let mut stdout = std::io::stdout().lock();
            exit_on_write_error(stdout.write_all(&script).and_then(|()| stdout.flush()));
            Ok(())
        }
        Tool::Man { out } => {
            for path in write_man_pages(cmd, out)? {
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_stdout_broken_pipe_panic_is_swallowed() {
        assert!(broken_pipe_panic(
            "failed printing to stdout: Broken pipe (os error 32)"
        ));
        assert!(!broken_pipe_panic(
            "failed printing to stderr: Broken pipe (os error 32)"
        ));
        assert!(!broken_pipe_panic("index out of bounds"));
    }

    #[test]
    fn version_names_revision_and_features() {
        let v = version(&["rpi"]);
        assert!(v.contains(&format!("rev {GIT_REV}")), "{v}");
        assert!(v.ends_with("features: rpi)"), "{v}");
        assert!(version(&[]).ends_with("features: none)"));
    }
}
