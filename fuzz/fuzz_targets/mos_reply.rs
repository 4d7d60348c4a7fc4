//! Bytes from a board running Mongoose OS into the provisioner's RPC reply side: the token
//! decoder (line and `"""` framing, XON/XOFF, CRC metadata, ready byte, the size bound,
//! recovery after an oversized token), then each frame as a reply: the id match (numbers and
//! strings), error objects, base64 key / signature / zone fields and `FS.Get` chunks. The
//! input is fed in chunks whose sizes come from the input itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::bench::mos::{Decoder, Token, b64, b64_field, fs_chunk, reply_for};

const LIMIT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut decoder = Decoder::new(LIMIT);
    let mut tokens = Vec::new();
    for chunk in stream.chunks(step) {
        decoder.push(chunk, &mut tokens);
    }
    for t in tokens {
        match t {
            Token::Frame(v) => {
                assert!(v.is_object());
                for id in [0, 1, 7, u64::MAX] {
                    match reply_for(&v, id) {
                        Some(Ok(result)) => {
                            let _ = b64_field::<64>(&result, "pubkey");
                            let _ = b64_field::<64>(&result, "signature");
                            let _ = b64_field::<128>(&result, "data");
                            if let Ok((bytes, left)) = fs_chunk(&result) {
                                assert!(bytes.len() <= 1024);
                                assert!(left == 0 || !bytes.is_empty());
                            }
                        }
                        Some(Err((_, message))) => {
                            // 160 characters, each at most `\u{10ffff}` escaped, then `...`.
                            assert!(message.chars().count() <= 160 * 10 + 3);
                            assert!(message.chars().all(|c| !c.is_control()), "{message:?}");
                        }
                        None => {}
                    }
                }
            }
            Token::Log(text) | Token::Corrupt(text) => {
                assert!(text.chars().all(|c| !c.is_control()), "{text:?}");
            }
            Token::Oversized(n) => assert!(n > LIMIT),
            Token::Ready => {}
        }
    }
    if let Ok(text) = std::str::from_utf8(stream) {
        if let Some(bytes) = b64::decode(text) {
            assert_eq!(b64::decode(&b64::encode(&bytes)), Some(bytes));
        }
    }
});
