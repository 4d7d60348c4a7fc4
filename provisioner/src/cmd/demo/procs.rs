//! The demo's child processes: each started with posix_spawn in its own process group
//! with signals unblocked, tracked, and stopped (SIGTERM, then SIGKILL) and reaped on every
//! path out; SIGINT/SIGTERM taken by one watcher thread that every wait checks.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::exit::{CliError, Code, Result};

// Signals: SIGINT/SIGTERM are blocked in every thread and taken by one watcher thread, which
// raises a flag every wait of the demo checks. Children start with an empty signal mask.

static STOP: AtomicBool = AtomicBool::new(false);
pub(super) static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

pub(super) fn watch_signals() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| CliError::new(Code::Failure, format!("blocking signals: {e}")))?;
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            STOP_SIGNAL.store(sig as i32, Ordering::SeqCst);
            STOP.store(true, Ordering::SeqCst);
        }
    });
    Ok(())
}

pub(super) fn stopping() -> bool {
    STOP.load(Ordering::SeqCst)
}

pub(super) fn interrupted() -> CliError {
    let sig = Signal::try_from(STOP_SIGNAL.load(Ordering::SeqCst))
        .map(|s| s.as_str())
        .unwrap_or("a signal");
    CliError::new(
        Code::Failure,
        format!("interrupted by {sig}: every process of the demo was stopped"),
    )
}

/// Sleeps up to `d`, waking early when asked to stop.
pub(super) fn nap(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if stopping() {
            return Err(interrupted());
        }
        std::thread::sleep(Duration::from_millis(25).min(end - Instant::now()));
    }
    if stopping() {
        return Err(interrupted());
    }
    Ok(())
}

/// Polls `ready` until it holds; fails with `what` (and `log`) after `timeout`.
pub(super) fn wait_for(
    what: &str,
    timeout: Duration,
    log: Option<&Path>,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            let tail = log.map(log_tail).unwrap_or_default();
            return Err(CliError::new(
                Code::Failure,
                format!("{what}: not ready within {} s{tail}", timeout.as_secs()),
            ));
        }
        nap(Duration::from_millis(50))?;
    }
    Ok(())
}

pub(super) fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(12);
    format!(
        "\n  last lines of {}:\n    {}",
        path.display(),
        lines[from..].join("\n    ")
    )
}

// ---------------------------------------------------------------------------------------------
// Child processes. They are started with posix_spawn so that each gets its own process group
// and an empty signal mask with default dispositions (this process blocks SIGINT/SIGTERM).

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exit {
    Code(i32),
    Signal(Signal),
}

impl Exit {
    pub(super) fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit status {c}"),
            Exit::Signal(s) => write!(f, "killed by {}", s.as_str()),
        }
    }
}

struct Proc {
    name: String,
    pid: u32,
    alive: bool,
}

/// Every child of the demo, each the leader of its own process group. Dropping it stops and
/// reaps them all, so no process is left behind on any path out of the demo.
#[derive(Default)]
pub(super) struct Procs(Mutex<Vec<Proc>>);

fn cstring(s: &std::ffi::OsStr) -> Result<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(s.as_bytes())
        .map_err(|_| CliError::new(Code::Failure, format!("NUL byte in {s:?}")))
}

/// posix_spawn of `cmd` (program, arguments, environment changes) with stdin from /dev/null,
/// stdout and stderr on the given descriptors, in a new process group, signals unblocked.
fn spawn_raw(cmd: &Command, stdout: RawFd, stderr: RawFd) -> Result<u32> {
    use nix::spawn::{PosixSpawnAttr, PosixSpawnFileActions, PosixSpawnFlags, posix_spawn};
    let fail = |what: &str, e: nix::Error| {
        CliError::new(
            Code::Failure,
            format!("cannot start {:?}: {what}: {e}", cmd.get_program()),
        )
    };
    let path = cstring(cmd.get_program())?;
    let mut argv = vec![path.clone()];
    for a in cmd.get_args() {
        argv.push(cstring(a)?);
    }
    let mut env: BTreeMap<std::ffi::OsString, std::ffi::OsString> = std::env::vars_os().collect();
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => env.insert(k.to_os_string(), v.to_os_string()),
            None => env.remove(k),
        };
    }
    let envp = env
        .into_iter()
        .map(|(mut k, v)| {
            k.push("=");
            k.push(v);
            cstring(&k)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut attr = PosixSpawnAttr::init().map_err(|e| fail("spawn attributes", e))?;
    attr.set_flags(
        PosixSpawnFlags::POSIX_SPAWN_SETPGROUP
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGMASK
            | PosixSpawnFlags::POSIX_SPAWN_SETSIGDEF,
    )
    .map_err(|e| fail("spawn flags", e))?;
    attr.set_pgroup(Pid::from_raw(0))
        .map_err(|e| fail("process group", e))?;
    attr.set_sigmask(&SigSet::empty())
        .map_err(|e| fail("signal mask", e))?;
    let mut defaults = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGPIPE,
        Signal::SIGHUP,
    ] {
        defaults.add(s);
    }
    attr.set_sigdefault(&defaults)
        .map_err(|e| fail("signal dispositions", e))?;
    let mut actions = PosixSpawnFileActions::init().map_err(|e| fail("file actions", e))?;
    actions
        .add_open(
            0,
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| fail("stdin", e))?;
    actions.add_dup2(stdout, 1).map_err(|e| fail("stdout", e))?;
    actions.add_dup2(stderr, 2).map_err(|e| fail("stderr", e))?;
    let pid = posix_spawn(path.as_c_str(), &actions, &attr, &argv, &envp)
        .map_err(|e| fail("posix_spawn", e))?;
    Ok(pid.as_raw() as u32)
}

impl Procs {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts `cmd` in its own process group with stderr (and stdout unless piped) to `log`.
    pub(super) fn spawn(
        &self,
        name: &str,
        cmd: Command,
        log: &Path,
        pipe_stdout: bool,
    ) -> Result<Child0> {
        if stopping() {
            return Err(interrupted());
        }
        let f = std::fs::File::create(log).map_err(|e| crate::exit::io(log, e))?;
        let (pid, stdout) = if pipe_stdout {
            let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| CliError::new(Code::Failure, format!("pipe: {e}")))?;
            let pid = spawn_raw(&cmd, w.as_raw_fd(), f.as_raw_fd())?;
            drop(w);
            (pid, Some(std::fs::File::from(r)))
        } else {
            (spawn_raw(&cmd, f.as_raw_fd(), f.as_raw_fd())?, None)
        };
        self.lock().push(Proc {
            name: name.to_string(),
            pid,
            alive: true,
        });
        Ok(Child0 { pid, stdout })
    }

    /// Reaps the child if it ended: its exit, or None while it runs.
    fn try_reap(list: &mut [Proc], pid: u32) -> Option<Exit> {
        use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
        let p = list.iter_mut().find(|p| p.pid == pid && p.alive)?;
        let exit = match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Exit::Code(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Exit::Signal(sig),
            Ok(_) => return None,
            // Already reaped (ECHILD): it is gone.
            Err(_) => Exit::Code(-1),
        };
        p.alive = false;
        Some(exit)
    }

    /// Whether the child is still running (reaps it if it ended).
    pub(super) fn running(&self, pid: u32) -> bool {
        let mut list = self.lock();
        list.iter().any(|p| p.pid == pid && p.alive) && Self::try_reap(&mut list, pid).is_none()
    }

    /// Waits for a child to end by itself, up to `timeout`; then stops it.
    pub(super) fn wait(&self, pid: u32, timeout: Duration) -> Option<Exit> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline && !stopping() {
            if let Some(st) = Self::try_reap(&mut self.lock(), pid) {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stop(&[pid], Duration::from_millis(500));
        None
    }

    /// SIGTERM to each child's process group, up to `grace` for them to exit, then SIGKILL;
    /// all reaped. Returns how those that were running ended.
    pub(super) fn stop(&self, pids: &[u32], grace: Duration) -> Vec<(u32, Option<Exit>)> {
        let mut list = self.lock();
        let mut left: Vec<u32> = list
            .iter()
            .filter(|p| p.alive && pids.contains(&p.pid))
            .map(|p| p.pid)
            .collect();
        for pid in &left {
            let _ = kill(Pid::from_raw(-(*pid as i32)), Signal::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        let mut done = Vec::new();
        loop {
            left.retain(|&pid| match Self::try_reap(&mut list, pid) {
                Some(st) => {
                    // Whatever it left in its group goes too.
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                    done.push((pid, Some(st)));
                    false
                }
                None => true,
            });
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                for &pid in &left {
                    let _ = kill(Pid::from_raw(-(pid as i32)), Signal::SIGKILL);
                    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
                    if let Some(p) = list.iter_mut().find(|p| p.pid == pid) {
                        p.alive = false;
                    }
                    done.push((pid, None));
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        done
    }

    pub(super) fn all_pids(&self) -> Vec<u32> {
        self.lock().iter().map(|p| p.pid).collect()
    }

    pub(super) fn listing(&self) -> Vec<Value> {
        self.lock()
            .iter()
            .map(|p| json!({ "name": p.name, "pid": p.pid }))
            .collect()
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        let pids = self.all_pids();
        self.stop(&pids, Duration::from_secs(3));
    }
}

/// A started child: its pid (= process group) and its stdout when piped.
pub(super) struct Child0 {
    pub(super) pid: u32,
    pub(super) stdout: Option<std::fs::File>,
}

/// Runs a short command to completion (tracked, in its own group), with a timeout.
pub(super) fn run_short(
    procs: &Procs,
    name: &str,
    cmd: Command,
    log: &Path,
    timeout: Duration,
) -> Result<(Exit, String)> {
    let mut c = procs.spawn(name, cmd, log, true)?;
    let mut out = String::new();
    let reader = c.stdout.take().map(|mut s| {
        std::thread::spawn(move || {
            let mut t = String::new();
            let _ = s.read_to_string(&mut t);
            t
        })
    });
    let st = procs.wait(c.pid, timeout);
    if let Some(r) = reader
        && let Ok(t) = r.join()
    {
        out = t;
    }
    if stopping() {
        return Err(interrupted());
    }
    let st = st.ok_or_else(|| {
        CliError::new(
            Code::Failure,
            format!("{name}: no result within {} s", timeout.as_secs()),
        )
    })?;
    Ok((st, out))
}
