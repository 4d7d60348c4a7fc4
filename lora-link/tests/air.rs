//! The simulated air hub keeps every live port and forgets only the gone ones; radios and
//! tools attached to it say hello again, so a restarted hub knows them again.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lora_link::air::{AirFrame, AirHub, AirMsg, AirPort, HubConfig, HubHandle};
use lora_link::airtime::Modulation;
use lora_link::radio::emu::{EmuDelay, Sx1276};
use lora_link::radio::sx127x::{EmulatedSx127x, Sx127x};
use lora_link::radio::{Radio, RadioSettings};

const BIN: &str = env!("CARGO_BIN_EXE_lora-link");

fn bind(addr: SocketAddr, limits: Option<(usize, Duration)>) -> HubHandle {
    let mut hub = AirHub::bind(addr, HubConfig::default()).expect("bind hub");
    if let Some((max, timeout)) = limits {
        hub.set_port_limits(max, timeout);
    }
    hub.spawn().expect("spawn hub")
}

/// A bare UDP port that says hello once and then only listens: the hub alone must keep it.
fn silent_port(hub: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.connect(hub).expect("connect");
    s.send(&AirMsg::Hello.encode()).expect("hello");
    s
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads delivered frames from a bare port until one carries `payload`.
fn hears(s: &UdpSocket, payload: &[u8], timeout: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(50)))
        .expect("timeout");
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok(n) = s.recv(&mut buf)
            && let Ok(AirMsg::Deliver(f)) = AirMsg::decode(&buf[..n])
            && f.payload == payload
        {
            return true;
        }
    }
    false
}

#[test]
fn a_silent_receiver_still_gets_frames_after_100_other_ports_spoke() {
    let hub = bind("127.0.0.1:0".parse().expect("addr"), None);
    let receiver = silent_port(hub.addr);
    wait_for("the receiver attached", Duration::from_secs(2), || {
        hub.stats().ports == 1
    });
    // 100 other ports transmit (each attaches itself); the old hub kept 64 and forgot the
    // least recently heard, the receiver.
    let others: Vec<AirPort> = (0..100)
        .map(|_| AirPort::connect(hub.addr).expect("port"))
        .collect();
    for (i, p) in others.iter().enumerate() {
        p.send(&AirMsg::Tx(AirFrame::new(vec![0xAA, i as u8])))
            .expect("tx");
    }
    wait_for("101 ports attached", Duration::from_secs(3), || {
        hub.stats().ports == 101
    });
    others[42]
        .send(&AirMsg::Tx(AirFrame::new(b"after the crowd".to_vec())))
        .expect("tx");
    assert!(
        hears(&receiver, b"after the crowd", Duration::from_secs(2)),
        "the receiver was forgotten: {:?}",
        hub.stats()
    );
    let s = hub.stop();
    assert_eq!(s.expired, 0, "no live port forgotten");
    assert_eq!(s.refused, 0);
}

#[test]
fn a_full_hub_refuses_new_ports_keeps_the_live_ones_and_forgets_the_gone_ones() {
    let hub = bind(
        "127.0.0.1:0".parse().expect("addr"),
        Some((8, Duration::from_millis(600))),
    );
    let first: Vec<UdpSocket> = (0..8).map(|_| silent_port(hub.addr)).collect();
    wait_for("8 ports attached", Duration::from_secs(2), || {
        hub.stats().ports == 8
    });
    // The ninth is refused, and told so.
    let late = AirPort::connect(hub.addr).expect("port");
    wait_for("the refusal", Duration::from_secs(2), || {
        let _ = late.drain();
        late.refused()
    });
    assert!(hub.stats().refused >= 1);
    // The live ones still get frames (a refused port may still transmit).
    late.send(&AirMsg::Tx(AirFrame::new(b"from the late one".to_vec())))
        .expect("tx");
    assert!(hears(
        &first[7],
        b"from the late one",
        Duration::from_secs(2)
    ));
    assert_eq!(hub.stats().expired, 0, "nobody evicted to make room");
    // The first eight now fall silent (gone); the late port keeps saying hello and is
    // attached once they are forgotten.
    let sender = AirPort::connect(hub.addr).expect("sender");
    let start = Instant::now();
    let mut got = false;
    while !got && start.elapsed() < Duration::from_secs(6) {
        sender
            .send(&AirMsg::Tx(AirFrame::new(b"room again".to_vec())))
            .expect("tx");
        let deadline = Instant::now() + Duration::from_millis(100);
        while !got && Instant::now() < deadline {
            got = late.drain().iter().any(|f| f.payload == b"room again");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(got, "the late port never got attached: {:?}", hub.stats());
    assert!(!late.refused(), "a delivery clears the refusal");
    assert!(hub.stats().expired >= 7, "{:?}", hub.stats());
    drop(first);
}

fn radio(hub: SocketAddr) -> (Sx1276, EmulatedSx127x) {
    let settings = RadioSettings::eu868(Modulation::new(7, 125_000, 5).expect("m"));
    let chip = Sx1276::new(Some(AirPort::connect(hub).expect("port")));
    let r = Sx127x::new(chip.spi(), chip.cs(), chip.reset(), EmuDelay, &settings).expect("driver");
    (chip, r)
}

/// Transmits `payload` from `tx` until `rx` receives it; returns how long that took.
fn until_heard(
    tx: &mut EmulatedSx127x,
    rx: &mut EmulatedSx127x,
    payload: &[u8],
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        tx.transmit(payload).expect("transmit");
        if let Some(p) = rx.receive(Duration::from_millis(100)).expect("receive")
            && p.bytes == payload
        {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "nothing heard within {limit:?}");
    }
}

#[test]
fn a_running_radio_hears_frames_again_after_the_hub_restarts() {
    let hub = bind("127.0.0.1:0".parse().expect("addr"), None);
    let addr = hub.addr;
    let (_ca, mut a) = radio(addr);
    let (_cb, mut b) = radio(addr);
    assert_eq!(b.receive(Duration::ZERO).expect("rx"), None);
    until_heard(&mut a, &mut b, b"before", Duration::from_secs(3));
    // The hub goes away and comes back on the same address, empty: nobody is attached.
    let before = hub.stop();
    assert!(before.deliveries >= 1 && before.ports >= 2, "{before:?}");
    let hub = bind(addr, None);
    assert_eq!(hub.stats().ports, 0);
    // Neither radio is restarted: their keep-alive hellos attach them again.
    let took = until_heard(&mut a, &mut b, b"after", Duration::from_secs(5));
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(hub.stats().ports >= 2, "{:?}", hub.stats());
}

fn spawn_air(listen: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["air", "--listen", listen])
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn air");
    let mut line = String::new();
    BufReader::new(child.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("read");
    let addr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (child, addr)
}

#[test]
fn sniff_keeps_printing_across_a_restart_of_the_air_process() {
    let (mut air, addr) = spawn_air("127.0.0.1:0");
    let hub = addr.to_string();
    let mut sniff = Command::new(BIN)
        .args(["sniff", "--hub", &hub, "--count", "2", "--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sniff");
    let out = sniff.stdout.take().expect("stdout");
    let (txl, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if txl.send(line).is_err() {
                break;
            }
        }
    });
    let inject = |hex: &str| {
        let st = Command::new(BIN)
            .args(["inject", "--hub", &hub, "--hex", hex])
            .stderr(Stdio::null())
            .status()
            .expect("inject");
        assert!(st.success());
    };
    let heard = |hex: &str, limit: Duration| -> Duration {
        let start = Instant::now();
        loop {
            inject(hex);
            if let Ok(l) = lines.recv_timeout(Duration::from_millis(150)) {
                assert!(l.contains(hex), "{l}");
                return start.elapsed();
            }
            assert!(start.elapsed() < limit, "sniff printed nothing");
        }
    };
    heard("0101", Duration::from_secs(5));
    let _ = air.kill();
    let _ = air.wait();
    let (mut air, again) = spawn_air(&hub);
    assert_eq!(again, addr);
    // sniff is not restarted; its port says hello every second.
    let took = heard("0202", Duration::from_secs(8));
    assert!(took < Duration::from_secs(4), "took {took:?}");
    assert!(sniff.wait().expect("wait").success());
    let _ = air.kill();
    let _ = air.wait();
}
