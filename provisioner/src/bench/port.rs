//! Opening a USB-serial port with errors that say what to do.
//!
//! A port is ours alone while we use it: it is opened in exclusive mode (`TIOCEXCL` and an
//! exclusive `flock`, held until the port is closed), so a second provisioner or a terminal
//! program that locks (picocom, minicom) cannot share it. Before that, a port another program
//! holds (an exclusive `flock`, a live `/var/lock/LCK..name` lock file, `TIOCEXCL`) is refused
//! at once with who holds it, instead of the two programs stealing each other's bytes.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use serialport::SerialPort;

use super::LinkError;
use super::text::escape;

/// Directories where UUCP-style lock files (`LCK..ttyUSB0`) live.
const LOCK_DIRS: [&str; 2] = ["/run/lock", "/var/lock"];
/// Most processes whose open files are looked at to name a port's holder.
const MAX_PROCS: usize = 8192;

/// Opens `path` at `baud` 8N1, exclusively (the lock is held until the port is dropped).
pub fn open(path: &str, baud: u32) -> Result<Box<dyn SerialPort>, LinkError> {
    let meta = std::fs::metadata(path);
    if let Err(e) = &meta
        && e.kind() == std::io::ErrorKind::NotFound
    {
        return Err(LinkError::Open(format!(
            "{path}: no such serial port. Is the board plugged in?{}",
            available()
        )));
    }
    not_a_serial_port(path).map_or(Ok(()), |why| Err(LinkError::Open(why)))?;
    check_not_in_use(path)?;
    let port = serialport::new(path, baud)
        .data_bits(serialport::DataBits::Eight)
        .parity(serialport::Parity::None)
        .stop_bits(serialport::StopBits::One)
        .flow_control(serialport::FlowControl::None)
        .timeout(Duration::from_millis(50))
        .open();
    match port {
        Ok(p) => {
            let _ = p.clear(serialport::ClearBuffer::All);
            Ok(p)
        }
        // Taken between our check and the open.
        Err(e) if e.to_string().contains("exclusive lock") => Err(LinkError::Open(busy(
            path,
            "it holds an exclusive lock (flock) on the port",
        ))),
        Err(e) => Err(LinkError::Open(explain(path, &e))),
    }
}

/// Why `path` (which exists) cannot be a serial port, from its file type alone: a regular
/// file, a directory, a FIFO, a socket or a block device. `None` for a character device (a
/// serial port is one; one that is not a tty is told apart when it is opened) and for a path
/// that cannot be looked at (the open says why).
pub fn not_a_serial_port(path: &str) -> Option<String> {
    let kind = std::fs::metadata(path).ok()?.file_type();
    let what = if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() {
        "a block device (a disk?)"
    } else {
        return None;
    };
    Some(format!(
        "{path} is {what}, not a serial port: give the board's serial device, such as /dev/ttyUSB0 or /dev/ttyACM0 (`ls /dev/ttyUSB* /dev/ttyACM*` lists them; a board appears when plugged in){}",
        available()
    ))
}

/// Refuses a port another program holds: a live lock file, an exclusive open (`TIOCEXCL`,
/// seen as EBUSY when we are not root) or an exclusive `flock` (picocom's way).
fn check_not_in_use(path: &str) -> Result<(), LinkError> {
    if let Some((file, pid)) = lock_file_owner(path) {
        return Err(LinkError::Open(busy_by(
            path,
            Some(pid),
            &format!("lock file {file}"),
        )));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
        .open(path);
    match file {
        Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => Err(LinkError::Open(busy(
            path,
            "it opened the port exclusively (TIOCEXCL)",
        ))),
        // Permission and other errors are explained by the real open.
        Err(_) => Ok(()),
        Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            // Released at once: the port's own exclusive open takes it again and holds it.
            Ok(lock) => {
                drop(lock);
                Ok(())
            }
            Err((_, Errno::EWOULDBLOCK)) => Err(LinkError::Open(busy(
                path,
                "it holds an exclusive lock (flock) on the port",
            ))),
            Err(_) => Ok(()),
        },
    }
}

fn busy(path: &str, how: &str) -> String {
    let holders = holders(path);
    busy_text(path, &holders, how)
}

fn busy_by(path: &str, pid: Option<i32>, how: &str) -> String {
    let holders: Vec<(i32, String)> = pid.map(|p| (p, comm(p))).into_iter().collect();
    busy_text(path, &holders, how)
}

fn busy_text(path: &str, holders: &[(i32, String)], how: &str) -> String {
    let me = std::process::id() as i32;
    let who = if holders.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = holders
            .iter()
            .map(|(pid, name)| {
                if *pid == me {
                    format!("pid {pid}: this provisioner, the same port given twice?")
                } else if name.is_empty() {
                    format!("pid {pid}")
                } else {
                    format!("pid {pid} {name}")
                }
            })
            .collect();
        format!(" ({})", list.join(", "))
    };
    format!(
        "port {path} is in use by another program{who}: {how}. Close it and retry: quit picocom, screen, minicom, a serial monitor, `mos console` or the other provisioner; ModemManager probes new USB serial adapters (`sudo systemctl stop ModemManager`)"
    )
}

/// The pid in a live `LCK..name` file for the port (by the name given and the device's).
fn lock_file_owner(path: &str) -> Option<(String, i32)> {
    let mut names = Vec::new();
    for p in [
        Some(Path::new(path).to_path_buf()),
        std::fs::canonicalize(path).ok(),
    ]
    .into_iter()
    .flatten()
    {
        if let Some(n) = p.file_name() {
            let n = n.to_string_lossy().into_owned();
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    for dir in LOCK_DIRS {
        for name in &names {
            let file = format!("{dir}/LCK..{name}");
            if let Some(pid) = read_lock_pid(Path::new(&file))
                && pid > 0
                && pid != std::process::id() as i32
                && alive(pid)
            {
                return Some((file, pid));
            }
        }
    }
    None
}

/// The pid a UUCP lock file holds: ASCII (HDB, what picocom and minicom write) or a binary
/// 4-byte integer (old UUCP). Only a small regular file is read.
fn read_lock_pid(file: &Path) -> Option<i32> {
    let meta = std::fs::symlink_metadata(file).ok()?;
    if !meta.is_file() || meta.len() > 64 {
        return None;
    }
    let mut buf = Vec::new();
    std::fs::File::open(file)
        .ok()?
        .take(64)
        .read_to_end(&mut buf)
        .ok()?;
    let text = std::str::from_utf8(&buf).ok().map(str::trim);
    match text.and_then(|t| t.parse::<i32>().ok()) {
        Some(pid) => Some(pid),
        None if buf.len() == 4 => Some(i32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]])),
        None => None,
    }
}

fn alive(pid: i32) -> bool {
    matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Ok(()) | Err(Errno::EPERM)
    )
}

/// A process's command name (escaped: anyone can name a process anything).
fn comm(pid: i32) -> String {
    let mut buf = Vec::new();
    let _ = std::fs::File::open(format!("/proc/{pid}/comm"))
        .and_then(|f| f.take(64).read_to_end(&mut buf));
    escape(String::from_utf8_lossy(&buf).trim())
}

/// Who holds the port, best effort: the `flock` owners of its inode in `/proc/locks`, else
/// the other processes that have it open (as far as we may look at them).
fn holders(path: &str) -> Vec<(i32, String)> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Vec::new();
    };
    let mut pids = flock_owners(meta.dev(), meta.ino());
    if pids.is_empty() {
        pids = openers(path);
    }
    pids.sort_unstable();
    pids.dedup();
    pids.truncate(4);
    pids.into_iter().map(|p| (p, comm(p))).collect()
}

/// Pids of the `flock`s on (`dev`, `ino`) listed in `/proc/locks`
/// (`1: FLOCK  ADVISORY  WRITE 1234 00:19:3 0 EOF`, device numbers in hex).
fn flock_owners(dev: u64, ino: u64) -> Vec<i32> {
    let mut text = String::new();
    let _ =
        std::fs::File::open("/proc/locks").and_then(|f| f.take(1 << 20).read_to_string(&mut text));
    let want = (nix::sys::stat::major(dev), nix::sys::stat::minor(dev), ino);
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Blocked waiters are listed as `1: -> FLOCK ...`: not holders.
            if f.get(1) != Some(&"FLOCK") {
                return None;
            }
            let pid = f.get(4)?.parse::<i32>().ok()?;
            let mut id = f.get(5)?.split(':');
            let major = u64::from_str_radix(id.next()?, 16).ok()?;
            let minor = u64::from_str_radix(id.next()?, 16).ok()?;
            let inode = id.next()?.parse::<u64>().ok()?;
            ((major, minor, inode) == want && pid > 0).then_some(pid)
        })
        .collect()
}

/// When a board stayed silent: the other programs that have its port open without locking
/// it (a `cat`, a serial monitor, ModemManager), which may be reading its replies. Empty
/// when there are none (or we may not look).
pub fn other_openers_hint(path: &str) -> String {
    let pids = openers(path);
    if pids.is_empty() {
        return String::new();
    }
    let list: Vec<String> = pids
        .into_iter()
        .map(|p| {
            let name = comm(p);
            if name.is_empty() {
                format!("pid {p}")
            } else {
                format!("pid {p} {name}")
            }
        })
        .collect();
    format!(
        " (another program has port {path} open: {}; if it reads the port it takes the board's replies: close it)",
        list.join(", ")
    )
}

/// Other processes with the port open (their `/proc/PID/fd` links name it).
fn openers(path: &str) -> Vec<i32> {
    let Ok(target) = std::fs::canonicalize(path) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in procs.flatten().take(MAX_PROCS) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .take(4096)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target))
        {
            found.push(pid);
            if found.len() >= 4 {
                break;
            }
        }
    }
    found
}

fn available() -> String {
    match serialport::available_ports() {
        Ok(ports) if !ports.is_empty() => {
            let names: Vec<String> = ports.into_iter().map(|p| p.port_name).collect();
            format!(" Ports present: {}", names.join(", "))
        }
        _ => " No serial ports are present (check the cable: some are charge-only).".into(),
    }
}

fn explain(path: &str, e: &serialport::Error) -> String {
    let text = e.to_string();
    let os = match e.kind() {
        serialport::ErrorKind::Io(kind) => Some(kind),
        _ => None,
    };
    if os == Some(std::io::ErrorKind::PermissionDenied) || text.contains("Permission denied") {
        return format!(
            "{path}: permission denied. Add yourself to the group that owns it: `sudo usermod -aG dialout $USER`, then log out and in again ({text})"
        );
    }
    if text.contains("busy") || text.contains("os error 16") {
        return format!(
            "{}. On Ubuntu, brltty grabs CH340/CP210x adapters: `sudo apt remove brltty` ({text})",
            busy(path, "the port is busy")
        );
    }
    // ENOTTY: a character device that is not a terminal (/dev/null, /dev/random...).
    if text.contains("os error 25")
        || text.contains("Not a typewriter")
        || text.contains("Inappropriate ioctl")
    {
        return format!(
            "{path} is a character device but not a serial port (not a terminal): give the board's serial device, such as /dev/ttyUSB0 or /dev/ttyACM0.{}",
            available()
        );
    }
    if matches!(e.kind(), serialport::ErrorKind::NoDevice) {
        return format!(
            "{path}: the device is gone or is not a serial port ({text}).{}",
            available()
        );
    }
    format!("{path}: cannot open: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pty() -> (nix::pty::OpenptyResult, String) {
        let pty = nix::pty::openpty(None, None).expect("openpty");
        let path = nix::unistd::ttyname(&pty.slave)
            .expect("ttyname")
            .to_string_lossy()
            .into_owned();
        (pty, path)
    }

    #[test]
    fn a_port_locked_by_another_program_is_refused_naming_it() {
        let (pty, path) = pty();
        // What picocom does: open the port and take an exclusive flock.
        let holder = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(OFlag::O_NOCTTY.bits())
            .open(&path)
            .expect("open");
        let held = Flock::lock(holder, FlockArg::LockExclusiveNonblock).expect("flock");
        let e = match open(&path, 115_200) {
            Ok(_) => panic!("{path} is locked"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(&format!("port {path} is in use")), "{e}");
        assert!(e.contains("picocom") && e.contains("ModemManager"), "{e}");
        // /proc/locks names the holder: this very process, whose flock it is.
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
        drop(held);
        let _port = open(&path, 115_200).expect("free again");
        drop(pty);
    }

    #[test]
    fn the_lock_is_held_while_the_port_is_open() {
        let (pty, path) = pty();
        let first = open(&path, 115_200).expect("first open");
        let e = match open(&path, 115_200) {
            Ok(_) => panic!("{path} is already ours"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains("is in use"), "{e}");
        assert!(e.contains("the same port given twice"), "{e}");
        drop(first);
        let _again = open(&path, 115_200).expect("reopened once closed");
        drop(pty);
    }

    #[test]
    fn lock_files_are_read_in_both_formats_and_bounded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ascii = dir.path().join("LCK..a");
        std::fs::write(&ascii, "      1234\n").expect("write");
        assert_eq!(read_lock_pid(&ascii), Some(1234));
        let binary = dir.path().join("LCK..b");
        std::fs::write(&binary, 4321i32.to_ne_bytes()).expect("write");
        assert_eq!(read_lock_pid(&binary), Some(4321));
        let big = dir.path().join("LCK..c");
        std::fs::write(&big, vec![b'1'; 1000]).expect("write");
        assert_eq!(read_lock_pid(&big), None);
        assert_eq!(read_lock_pid(dir.path()), None, "a directory");
    }
}
