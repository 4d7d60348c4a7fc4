//! Hostile files given as the receiver's manifest: a device, a FIFO and a huge file each end
//! in a clear error within a few seconds, never a hang or an exhausted memory.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_lora-link");

#[test]
fn devices_fifos_and_huge_files_as_the_manifest_end_in_clear_errors() {
    let d = tempfile::tempdir().expect("dir");
    let fifo = d.path().join("receiver.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("fifo");
    let big = d.path().join("big.toml");
    std::fs::File::create(&big)
        .and_then(|f| f.set_len(100 << 20))
        .expect("100 MB");
    for (file, what) in [
        ("/dev/zero".into(), "character device"),
        ("/dev/urandom".into(), "character device"),
        (fifo, "FIFO"),
        (big, "104857600 bytes"),
    ] {
        let file: std::path::PathBuf = file;
        let t = Instant::now();
        let o = Command::new(BIN)
            .args(["rx", "--manifest"])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .expect("run");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(t.elapsed() < Duration::from_secs(5), "{}", file.display());
        assert!(!o.status.success(), "{}", file.display());
        assert!(err.contains(what), "{}: {err}", file.display());
        assert!(!err.contains("panicked"), "{err}");
    }
}
