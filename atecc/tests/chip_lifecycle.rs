//! The chip as a device: state file across restarts, wake/idle/sleep, watchdog, execution
//! time, and injected faults.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use atecc::Status;
use atecc::client::Client;
use atecc::emulator::{Chip, Faults, Nack, Power, Timing, WATCHDOG};
use atecc::host;
use atecc::opcode::*;
use atecc::packet::{Command, Error, MAX_PACKET, parse_response};
use common::*;
use std::time::{Duration, Instant};

fn packet(cmd: Command<'_>) -> Vec<u8> {
    let mut buf = [0u8; MAX_PACKET];
    let n = cmd.encode(&mut buf).unwrap();
    buf[..n].to_vec()
}

fn command_write(cmd: Command<'_>) -> Vec<u8> {
    let mut w = vec![0x03];
    w.extend(packet(cmd));
    w
}

#[test]
fn a_locked_chip_stays_locked_and_keeps_its_key_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chip.toml");
    let (sn, public) = {
        let mut chip = Chip::open(&path).unwrap();
        assert!(path.exists(), "a new chip is persisted at once");
        let zone = expected_zone(&mut chip);
        let mut c = Client::new(&mut chip);
        c.write_config_zone(&zone).unwrap();
        c.lock_config(&zone).unwrap();
        c.write_slot(WRITE_KEY_SLOT, &WRITE_KEY).unwrap();
        let crc = data_summary(&chip);
        let mut c = Client::new(&mut chip);
        c.lock_data(crc).unwrap();
        let public = c.gen_key(0).unwrap();
        run(&mut chip, Command::counter(0, true)).unwrap();
        (chip.serial_number(), public)
    };
    let mut chip = Chip::open(&path).unwrap();
    assert_eq!(chip.serial_number(), sn);
    assert!(chip.config_zone().is_config_locked() && chip.config_zone().is_data_locked());
    assert_eq!(chip.power(), Power::Asleep, "a restarted chip sleeps");
    let mut c = Client::new(&mut chip);
    assert_eq!(c.public_key(0).unwrap(), public);
    let digest = host::sha256_digest(b"after restart");
    let rs = c.sign_digest(0, &digest).unwrap();
    assert!(c.verify_external(&digest, &rs, &public).unwrap());
    assert_eq!(
        run(&mut chip, Command::counter(0, false)),
        Ok(vec![1, 0, 0, 0])
    );
    assert_eq!(
        chip.tempkey().map(|t| t.value),
        Some(digest),
        "TempKey is volatile but set again"
    );
    // No temporary files are left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("chip.toml")]);
}

#[test]
fn a_corrupt_state_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chip.toml");
    std::fs::write(&path, "format = \"something else\"\n").unwrap();
    let err = Chip::open(&path).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("chip.toml"), "{err}");
    let chip = Chip::open(&dir.path().join("fresh.toml")).unwrap();
    let text = std::fs::read_to_string(dir.path().join("fresh.toml")).unwrap();
    std::fs::write(
        &path,
        text.replace("counters = [0, 0]", "counters = [0, 99999999]"),
    )
    .unwrap();
    assert!(Chip::open(&path).is_err(), "counter above its maximum");
    drop(chip);
}

#[test]
fn a_failed_command_does_not_touch_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chip.toml");
    let mut chip = Chip::open(&path).unwrap();
    let before = std::fs::read(&path).unwrap();
    let zone = chip.config_zone();
    expect_refused(
        &mut chip,
        Command::lock(LockTarget::Config, host::config_lock_crc(&zone) ^ 1),
        Status::ExecutionError,
    );
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn i2c_wake_command_read_idle_sleep() {
    let mut chip = Chip::new_blank();
    // Asleep: the address is not acknowledged.
    assert_eq!(
        chip.i2c_write(&command_write(Command::info_revision())),
        Err(Nack)
    );
    assert_eq!(chip.wake(), [0x04, 0x11, 0x33, 0x43]);
    let mut token = [0u8; 4];
    assert_eq!(chip.i2c_read(&mut token), Ok(4));
    assert_eq!(token, [0x04, 0x11, 0x33, 0x43]);
    chip.i2c_write(&command_write(Command::info_revision()))
        .unwrap();
    let mut count = [0u8; 1];
    chip.i2c_read(&mut count).unwrap();
    assert_eq!(count[0], 7);
    let mut rest = [0u8; 6];
    chip.i2c_read(&mut rest).unwrap();
    assert_eq!(&rest[..4], &[0x00, 0x00, 0x50, 0x00]);
    // Reset (word address 0x00) rewinds the output so it can be read again.
    chip.i2c_write(&[0x00]).unwrap();
    let mut again = [0u8; 7];
    chip.i2c_read(&mut again).unwrap();
    assert_eq!(parse_response(&again), Ok(&[0x00, 0x00, 0x50, 0x00][..]));
    // Idle keeps TempKey; sleep clears it.
    chip.i2c_write(&command_write(Command::nonce(
        NonceMode::PassThrough,
        &[5; 32],
    )))
    .unwrap();
    chip.i2c_write(&[0x02]).unwrap();
    assert_eq!(chip.power(), Power::Idle);
    assert_eq!(chip.i2c_read(&mut count), Err(Nack));
    chip.wake();
    assert_eq!(chip.tempkey().unwrap().value, [5; 32]);
    chip.i2c_write(&[0x01]).unwrap();
    assert_eq!(chip.power(), Power::Asleep);
    chip.wake();
    assert_eq!(chip.tempkey(), None);
    // Reserved word addresses are not acknowledged.
    assert_eq!(chip.i2c_write(&[0x04]), Err(Nack));
}

#[test]
fn the_watchdog_puts_the_chip_to_sleep_and_warns_first() {
    let mut chip = Chip::new_blank();
    chip.wake();
    run(&mut chip, Command::nonce(NonceMode::PassThrough, &[5; 32])).unwrap();
    chip.advance_clock(WATCHDOG + Duration::from_millis(1));
    assert_eq!(
        chip.i2c_write(&command_write(Command::info_revision())),
        Err(Nack)
    );
    assert_eq!(chip.power(), Power::Asleep);
    assert_eq!(chip.tempkey(), None, "the watchdog's sleep clears TempKey");
    // With the maximum execution time, a command that cannot finish before the watchdog
    // expires is answered 0xEE.
    chip.wake();
    chip.set_timing(Timing::Maximum);
    chip.advance_clock(WATCHDOG - Duration::from_millis(50));
    let frame = chip.transact(&packet(Command::gen_key_create(0)));
    assert_eq!(frame, Status::WatchdogExpiring.frame().to_vec());
    // A 10 s watchdog (ChipMode bit 2) would not expire yet; disabling it works too.
    chip.set_watchdog(false);
    chip.advance_clock(Duration::from_secs(5));
    assert_eq!(
        run(&mut chip, Command::info_revision()),
        Ok(vec![0, 0, 0x50, 0])
    );
}

#[test]
fn execution_time_makes_the_chip_busy() {
    let mut chip = Chip::new_blank();
    chip.set_timing(Timing::Maximum);
    chip.wake();
    chip.i2c_write(&command_write(Command::random())).unwrap();
    let mut count = [0u8; 1];
    assert_eq!(chip.i2c_read(&mut count), Err(Nack), "busy for 23 ms");
    chip.advance_clock(Duration::from_micros(Opcode::Random.max_us() as u64));
    assert_eq!(chip.i2c_read(&mut count), Ok(1));
    // transact waits for real with the typical time.
    chip.set_timing(Timing::Typical);
    let start = Instant::now();
    let frame = chip.transact(&packet(Command::random()));
    assert!(start.elapsed() >= Duration::from_micros(Opcode::Random.typical_us() as u64));
    assert_eq!(parse_response(&frame).unwrap().len(), 32);
}

#[test]
fn injected_faults_show_up_as_the_host_would_see_them() {
    let mut chip = locked_chip();
    // A corrupted response CRC: the host sees ResponseCrc; the read can be repeated.
    chip.set_faults(Faults {
        response_crc_errors: 1,
        ..Faults::default()
    });
    assert_eq!(
        run(&mut chip, Command::info_revision()),
        Err(Error::ResponseCrc)
    );
    assert_eq!(
        run(&mut chip, Command::info_revision()),
        Ok(vec![0, 0, 0x50, 0])
    );
    // NACKs: the raw bus sees them; transact retries past them.
    chip.set_faults(Faults {
        nacks: 2,
        ..Faults::default()
    });
    assert_eq!(chip.i2c_write(&[0x00]), Err(Nack));
    assert_eq!(
        run(&mut chip, Command::info_revision()),
        Ok(vec![0, 0, 0x50, 0])
    );
    assert_eq!(chip.faults(), Faults::default());
    // Endless NACKs: transact gives up with a communications error.
    chip.set_faults(Faults {
        nacks: u32::MAX,
        ..Faults::default()
    });
    assert_eq!(
        run(&mut chip, Command::info_revision()),
        Err(Error::Status(Status::CommError))
    );
    chip.set_faults(Faults::default());
    // An ECC fault: 0x05 and nothing changes; the retry succeeds.
    chip.set_faults(Faults {
        ecc_faults: 1,
        ..Faults::default()
    });
    expect_refused(&mut chip, Command::gen_key_create(0), Status::EccFault);
    assert_eq!(
        run(&mut chip, Command::gen_key_create(0)).unwrap().len(),
        64
    );
}

fn mode_of(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn the_state_file_is_0600_after_every_write_whatever_the_umask() {
    use nix::sys::stat::{Mode, umask};
    for mask in [0o022, 0o000] {
        let old = umask(Mode::from_bits_truncate(mask));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chip.toml");
        let mut chip = Chip::open(&path).unwrap();
        let created = mode_of(&path);
        // A command that changes non-volatile state rewrites the file.
        let before = std::fs::read(&path).unwrap();
        run(&mut chip, Command::counter(0, true)).unwrap();
        let after_write = mode_of(&path);
        let changed = std::fs::read(&path).unwrap() != before;
        umask(old);
        assert_eq!(created, 0o600, "new state file with umask {mask:03o}");
        assert!(changed, "the counter increment was persisted");
        assert_eq!(after_write, 0o600, "rewritten state file, umask {mask:03o}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("chip.toml")]);
    }
}

#[test]
fn a_state_file_readable_by_others_is_tightened_to_0600_on_load() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chip.toml");
    let sn = Chip::open(&path).unwrap().serial_number();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let chip = Chip::open(&path).unwrap();
    assert_eq!(chip.serial_number(), sn, "the same chip, loaded");
    assert_eq!(mode_of(&path), 0o600, "tightened by the load alone");
}

#[test]
fn a_fifo_a_directory_a_link_or_a_huge_file_as_state_is_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // A FIFO nobody writes to: opening it must neither block nor hang the read.
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let t = Instant::now();
    let err = Chip::open(&fifo).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "no wait on the FIFO");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let msg = err.to_string();
    assert!(msg.contains("fifo.toml") && msg.contains("FIFO"), "{msg}");
    assert!(msg.contains("not a regular file"), "{msg}");
    // A directory.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let msg = Chip::open(&sub).unwrap_err().to_string();
    assert!(msg.contains("directory"), "{msg}");
    // A symbolic link (to a real state file): refused, the target left alone.
    let real = dir.path().join("real.toml");
    drop(Chip::open(&real).unwrap());
    let before = std::fs::read(&real).unwrap();
    let link = dir.path().join("link.toml");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let msg = Chip::open(&link).unwrap_err().to_string();
    assert!(msg.contains("symbolic link"), "{msg}");
    assert_eq!(std::fs::read(&real).unwrap(), before);
    // A file above the 1 MiB bound: refused before being read.
    let huge = dir.path().join("huge.toml");
    let f = std::fs::File::create(&huge).unwrap();
    f.set_len(8 << 20).unwrap();
    let err = Chip::open(&huge).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    assert!(err.to_string().contains("bytes, more than"), "{err}");
    assert_eq!(
        std::fs::metadata(&huge).unwrap().len(),
        8 << 20,
        "untouched"
    );
}
