//! Any bytes from the radio or the air socket: an error or a parse, never a panic.

use std::net::SocketAddr;

use lora_link::air::AirMsg;
use lora_link::crypto::LinkKeys;
use lora_link::frame;
use lora_link::link::LinkReceiver;
use lora_link::records::TopicTable;
use lora_link::state::ReplayState;
use proptest::prelude::*;

fn receiver(dir: &std::path::Path) -> LinkReceiver {
    let replay = ReplayState::open(dir.join("rx.state")).expect("state");
    LinkReceiver::new(
        LinkKeys::derive(&[9; 16]),
        1,
        [10],
        TopicTable::new([(0, "a/b")]),
        replay,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn frame_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = frame::parse(&bytes);
    }

    #[test]
    fn record_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let t = TopicTable::new([(0, "a/b"), (5, "c")]);
        if let Ok(records) = t.decode(&bytes) {
            // whatever decodes re-encodes to a decodable plaintext with the same records
            let mut again = Vec::new();
            for r in &records {
                t.encode(r, &mut again).expect("re-encode");
            }
            prop_assert_eq!(t.decode(&again).expect("decode"), records);
        }
    }

    #[test]
    fn air_datagram_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = AirMsg::decode(&bytes);
        let mut b = b"LRA1".to_vec();
        b.extend_from_slice(&bytes);
        let _ = AirMsg::decode(&b);
    }

    #[test]
    fn receiver_rejects_random_frames(mut bytes in proptest::collection::vec(any::<u8>(), 10..255), to in prop_oneof![Just(1u8), Just(255u8)]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut rx = receiver(dir.path());
        bytes[0] = to;
        bytes[1] = 10;
        bytes[3] = frame::FLAGS_SECURE_V2;
        prop_assert!(rx.accept(&bytes).is_err());
        prop_assert_eq!(rx.stats().frames_accepted, 0);
    }
}

#[test]
fn hub_survives_garbage_datagrams() {
    let h = lora_link::air::AirHub::bind(
        "127.0.0.1:0".parse::<SocketAddr>().expect("addr"),
        Default::default(),
    )
    .expect("bind")
    .spawn()
    .expect("spawn");
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    for b in [
        &b""[..],
        b"LRA1",
        b"LRA1\x02\x00",
        b"garbage garbage",
        &[0xFF; 600],
    ] {
        s.send_to(b, h.addr).expect("send");
    }
    let port = lora_link::air::AirPort::connect(h.addr).expect("port");
    port.send(&AirMsg::Hello).expect("hello");
    // the hub still works: an injected frame reaches an attached sniffer
    let sniffer = lora_link::air::AirPort::connect(h.addr).expect("port");
    let mut got = None;
    for _ in 0..50 {
        port.send(&AirMsg::Inject(lora_link::air::AirFrame::new(vec![
            1, 2, 3,
        ])))
        .expect("inject");
        got = sniffer
            .recv_timeout(std::time::Duration::from_millis(100))
            .expect("recv");
        if got.is_some() {
            break;
        }
    }
    assert_eq!(got.expect("delivered").payload, vec![1, 2, 3]);
    assert!(h.stop().garbage >= 4);
}
