//! Persistent counter state: the sender's counter lease and the receiver's replay state.
//!
//! Both live in the manifest's `state_dir`, in files named after the link key's identifier
//! (a new key starts a new counter space) and the node address. Files are replaced
//! atomically (write to an unpredictable temporary file, fsync, rename, fsync the directory), so after a
//! crash a file holds either the old or the new value, never a torn one. A file that cannot
//! be parsed is an error, never silently reset: resetting would reuse counters (sender) or
//! accept replays (receiver).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Counters leased per write of the lease file.
pub const LEASE_BLOCK: u32 = 32;

/// Why counter state could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file exists but is not valid state: refuse rather than reuse counters.
    #[error(
        "{path}: corrupt counter state ({why}); restore it from backup or provision a new link key, never delete it"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// All 2^32 counters of this key are used.
    #[error("frame counter exhausted for this link key: provision a new key")]
    Exhausted,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Largest state file we read (a replay state holds one line per sender).
const MAX_STATE_LEN: u64 = 1 << 20;

/// Replaces `path` with `text` atomically and durably, through an unpredictable `O_EXCL`
/// temporary: a link planted in the state directory is replaced, never written through.
fn write_atomic(path: &Path, text: &str) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    safe_fs::replace(path, text.as_bytes(), &safe_fs::Replace::new(0o600)).map_err(io(path))
}

fn read_optional(path: &Path) -> Result<Option<String>, StateError> {
    match safe_fs::read_limited_string(path, MAX_STATE_LEN) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

const LEASE_MAGIC: &str = "lora-link counter lease v1";

/// The sender's frame counters. Before a counter is handed out, the lease file records a
/// value above it, so a restarted sender (even after a crash or power cut) starts above every
/// counter it may have used: at worst [`LEASE_BLOCK`] counters are skipped, none reused.
#[derive(Debug)]
pub struct CounterLease {
    path: PathBuf,
    next: u64,
    leased_until: u64,
}

impl CounterLease {
    /// The lease file for a key id and sender address in `state_dir`.
    pub fn path_for(state_dir: &Path, key_id: &str, from: u8) -> PathBuf {
        state_dir.join(format!("tx-{key_id}-{from}.lease"))
    }

    /// Opens (or creates) the lease at `path`. Nothing is leased until the first counter.
    pub fn open(path: PathBuf) -> Result<Self, StateError> {
        let next = match read_optional(&path)? {
            None => 0,
            Some(text) => parse_lease(&text).ok_or_else(|| StateError::Corrupt {
                path: path.clone(),
                why: format!("expected \"{LEASE_MAGIC}\" and \"next=<u32>\""),
            })?,
        };
        Ok(Self {
            path,
            next,
            leased_until: next,
        })
    }

    /// The next counter: extends and persists the lease first when needed.
    pub fn next_counter(&mut self) -> Result<u32, StateError> {
        if self.next > u64::from(u32::MAX) {
            return Err(StateError::Exhausted);
        }
        if self.next >= self.leased_until {
            let until = (self.next + u64::from(LEASE_BLOCK)).min(u64::from(u32::MAX) + 1);
            write_atomic(&self.path, &format!("{LEASE_MAGIC}\nnext={until}\n"))?;
            self.leased_until = until;
        }
        let c = self.next as u32;
        self.next += 1;
        Ok(c)
    }

    /// The counter the next call will return (without leasing).
    pub fn peek(&self) -> u64 {
        self.next
    }
}

fn parse_lease(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    if lines.next()? != LEASE_MAGIC {
        return None;
    }
    let v: u64 = lines.next()?.strip_prefix("next=")?.trim().parse().ok()?;
    (v <= u64::from(u32::MAX) + 1).then_some(v)
}

const REPLAY_MAGIC: &str = "lora-link replay state v1";

/// The receiver's last accepted counter per sender.
#[derive(Debug)]
pub struct ReplayState {
    path: PathBuf,
    last: BTreeMap<u8, u32>,
}

impl ReplayState {
    /// The replay state file for a key id and receiver address in `state_dir`.
    pub fn path_for(state_dir: &Path, key_id: &str, to: u8) -> PathBuf {
        state_dir.join(format!("rx-{key_id}-{to}.state"))
    }

    /// Opens (or starts) the replay state at `path`.
    pub fn open(path: PathBuf) -> Result<Self, StateError> {
        let mut last = BTreeMap::new();
        if let Some(text) = read_optional(&path)? {
            let corrupt = |why: String| StateError::Corrupt {
                path: path.clone(),
                why,
            };
            let mut lines = text.lines();
            if lines.next() != Some(REPLAY_MAGIC) {
                return Err(corrupt(format!("expected first line \"{REPLAY_MAGIC}\"")));
            }
            for (i, l) in lines.enumerate() {
                let parsed = l.split_once('=').and_then(|(a, c)| {
                    Some((a.trim().parse::<u8>().ok()?, c.trim().parse::<u32>().ok()?))
                });
                match parsed {
                    Some((a, c)) => {
                        last.insert(a, c);
                    }
                    None => {
                        return Err(corrupt(format!(
                            "line {}: expected \"<sender>=<counter>\"",
                            i + 2
                        )));
                    }
                }
            }
        }
        Ok(Self { path, last })
    }

    /// Last accepted counter from `from`.
    pub fn last(&self, from: u8) -> Option<u32> {
        self.last.get(&from).copied()
    }

    /// Persists `counter` as the last accepted from `from` (before the frame is delivered).
    pub fn accept(&mut self, from: u8, counter: u32) -> Result<(), StateError> {
        let mut next = self.last.clone();
        next.insert(from, counter);
        let mut text = format!("{REPLAY_MAGIC}\n");
        for (a, c) in &next {
            text.push_str(&format!("{a}={c}\n"));
        }
        write_atomic(&self.path, &text)?;
        self.last = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_survives_a_crash_without_reuse() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = CounterLease::path_for(dir.path(), "abcd0123", 10);
        let mut used = Vec::new();
        let mut lease = CounterLease::open(path.clone()).expect("open");
        for _ in 0..5 {
            used.push(lease.next_counter().expect("counter"));
        }
        // crash: the process dies holding the lease, nothing flushed beyond what was leased
        drop(lease);
        let mut lease = CounterLease::open(path.clone()).expect("reopen");
        let c = lease.next_counter().expect("counter");
        assert!(used.iter().all(|&u| u < c), "{c} reused one of {used:?}");
        assert_eq!(c, LEASE_BLOCK);
        // killed right after leasing, before sending
        drop(lease);
        let mut lease = CounterLease::open(path.clone()).expect("reopen");
        assert!(lease.next_counter().expect("counter") > c);
        // a corrupt file is refused, not reset
        std::fs::write(&path, "garbage").expect("write");
        assert!(matches!(
            CounterLease::open(path),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn lease_exhaustion_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("l");
        std::fs::write(&path, format!("{LEASE_MAGIC}\nnext={}\n", u32::MAX)).expect("write");
        let mut l = CounterLease::open(path).expect("open");
        assert_eq!(l.next_counter().expect("last one"), u32::MAX);
        assert!(matches!(l.next_counter(), Err(StateError::Exhausted)));
    }

    #[test]
    fn replay_state_persists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = ReplayState::path_for(dir.path(), "abcd0123", 1);
        let mut s = ReplayState::open(path.clone()).expect("open");
        assert_eq!(s.last(10), None);
        s.accept(10, 42).expect("accept");
        s.accept(11, 7).expect("accept");
        let s = ReplayState::open(path.clone()).expect("reopen");
        assert_eq!(s.last(10), Some(42));
        assert_eq!(s.last(11), Some(7));
        std::fs::write(&path, format!("{REPLAY_MAGIC}\n10=x\n")).expect("write");
        assert!(matches!(
            ReplayState::open(path),
            Err(StateError::Corrupt { .. })
        ));
    }

    #[test]
    fn planted_links_in_the_state_directory_never_redirect_a_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("victim");
        let path = ReplayState::path_for(dir.path(), "abcd0123", 1);
        let lease_path = CounterLease::path_for(dir.path(), "abcd0123", 2);
        // The names the old code used for its temporaries, and the files themselves.
        for p in [&path, &lease_path] {
            std::os::unix::fs::symlink(&victim, p.with_extension("tmp")).expect("plant tmp");
        }
        std::os::unix::fs::symlink(&victim, &lease_path).expect("plant lease");
        let mut s = ReplayState::open(path.clone()).expect("open");
        s.accept(10, 42).expect("accept");
        // The planted lease "file" is read through (it is the victim's text: not a lease).
        assert!(matches!(
            CounterLease::open(lease_path.clone()),
            Err(StateError::Corrupt { .. })
        ));
        std::fs::remove_file(&lease_path).expect("unplant");
        std::os::unix::fs::symlink(&victim, &lease_path).expect("plant again");
        std::fs::write(&victim, format!("{LEASE_MAGIC}\nnext=5\n")).expect("lease text");
        let mut l = CounterLease::open(lease_path.clone()).expect("open");
        l.next_counter().expect("counter");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            format!("{LEASE_MAGIC}\nnext=5\n"),
            "the write replaced the link, not the file it pointed to"
        );
        assert!(
            std::fs::symlink_metadata(&lease_path)
                .expect("stat")
                .is_file()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn a_fifo_or_device_as_state_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fifo = dir.path().join("rx.state");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert!(matches!(
            ReplayState::open(fifo),
            Err(StateError::Io { .. })
        ));
        assert!(matches!(
            ReplayState::open(PathBuf::from("/dev/zero")),
            Err(StateError::Io { .. })
        ));
    }
}
