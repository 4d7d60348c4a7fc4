//! Reloads one mosquitto: the process named by the pid file of its configuration, after
//! checking that it is a mosquitto running that configuration (a pid file outlives its
//! process, and its number may be another program's by now). Never `pidof`.

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Sends SIGHUP to the mosquitto whose pid `pid_file` holds if it runs `conf`; its pid.
pub fn signal_mosquitto(pid_file: &Path, conf: &Path) -> Result<i32, String> {
    let pid = running_mosquitto(pid_file, conf)?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|e| format!("SIGHUP to pid {pid}: {e}"))?;
    Ok(pid)
}

/// The pid in `pid_file`, if it is a running mosquitto started with `conf`.
pub fn running_mosquitto(pid_file: &Path, conf: &Path) -> Result<i32, String> {
    let text = safe_fs::read_limited_string(pid_file, 32)
        .map_err(|e| format!("{}: {e} (is mosquitto running?)", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p| *p > 1)
        .ok_or_else(|| format!("{} holds no pid", pid_file.display()))?;
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let comm = safe_fs::read_limited_string(&proc.join("comm"), 64).unwrap_or_default();
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    let want = conf.canonicalize().unwrap_or_else(|_| conf.to_path_buf());
    let cwd = std::fs::read_link(proc.join("cwd")).unwrap_or_default();
    // An argument naming the configuration, relative to the broker's working directory.
    let names_conf = cmdline.split(|b| *b == 0).any(|a| {
        let arg = Path::new(std::ffi::OsStr::from_bytes(a));
        cwd.join(arg).canonicalize().is_ok_and(|p| p == want)
    });
    if comm.trim() != "mosquitto" || !names_conf {
        return Err(format!(
            "pid {pid} from {} is not a mosquitto running {}",
            pid_file.display(),
            want.display()
        ));
    }
    Ok(pid)
}
