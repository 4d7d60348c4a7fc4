//! Bytes from a board into the provisioner's kit-protocol reply side: the line reader (line
//! ends, CR/NUL trimming, the length bound), each line's `head(payload)` split with the hex
//! payload of status replies, the status byte with the firmware's refusal reasons, and the
//! text that reaches an error message. The input is fed in chunks whose sizes come from the
//! input itself, as reads from a port return.
#![no_main]

use libfuzzer_sys::fuzz_target;
use provisioner::bench::kit::{LineReader, MAX_LINE, parse_reply, parse_status, sanitize};

fn check_sanitized(s: &str) {
    let t = sanitize(s);
    // 120 characters of the input, each at most `\u{10ffff}` once escaped, then `...`.
    assert!(t.chars().count() <= 120 * 10 + 3, "{t}");
    assert!(t.chars().all(|c| !c.is_control()), "{t:?}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let step = usize::from(step % 64) + 1;
    let mut reader = LineReader::default();
    for chunk in stream.chunks(step) {
        reader.push(chunk);
        loop {
            match reader.next_line() {
                Ok(Some(line)) => {
                    assert!(!line.is_empty() && !line.contains('\n'));
                    assert!(line.len() <= MAX_LINE * 3 + step * 3, "{}", line.len());
                    check_sanitized(&line);
                    let Some(reply) = parse_reply(&line) else {
                        continue;
                    };
                    check_sanitized(&reply.head);
                    if let Some(Err(reason)) = parse_status(reply.clone()) {
                        assert!(!reason.is_empty());
                    }
                    // A status reply's payload re-encodes to the hex on the line.
                    if let Some(Ok(bytes)) = parse_status(reply.clone()) {
                        let open = line.find('(').expect("parsed");
                        assert!(
                            line[open + 1..line.len() - 1]
                                .eq_ignore_ascii_case(&hex::encode(&bytes))
                        );
                    }
                }
                Ok(None) => break,
                Err(()) => break,
            }
        }
    }
});
