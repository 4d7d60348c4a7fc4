//! Showing text that came from a board, a broker or a radio (any untrusted peer) without letting it talk
//! to the operator's terminal.
//!
//! A board can send anything: terminal escapes (`ESC ] 0 ; title BEL` retitles the window,
//! other sequences move the cursor, rewrite what was printed or, on some terminals, answer
//! back), carriage returns that overwrite a line, bidirectional overrides that reorder it.
//! Every piece of board text goes through [`escape`] (or [`escape_bytes`]) before it reaches a
//! message, a report, a progress line or a log: control and invisible characters become
//! visible escapes (`\x1b`, `\n`, `\u{202e}`), a backslash becomes `\\` so an escape in the
//! output always means one was escaped, and the result is bounded.

use std::fmt::Write;

/// Longest board text shown, in characters of the original (then `...`).
pub const MAX_SHOWN: usize = 160;

/// Whether `c` is shown as itself: printable, not a control, not invisible formatting.
fn shown_as_is(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_graphic() || c == ' ';
    }
    !(c.is_control()
        || matches!(c,
            '\u{00AD}'                   // soft hyphen
            | '\u{034F}'                 // combining grapheme joiner
            | '\u{061C}'                 // Arabic letter mark
            | '\u{115F}'..='\u{1160}'    // Hangul fillers
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'    // Mongolian selectors
            | '\u{2000}'..='\u{200F}'    // odd spaces, zero-width, LRM/RLM
            | '\u{2028}'..='\u{202F}'    // line/paragraph separators, bidi embeddings/overrides
            | '\u{205F}'..='\u{206F}'    // invisible operators, bidi isolates
            | '\u{3000}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'    // variation selectors
            | '\u{FEFF}'                 // BOM / zero-width no-break space
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFC}'    // specials (not the replacement character)
            | '\u{E000}'..='\u{F8FF}'    // private use
            | '\u{E0000}'..='\u{E0FFF}'  // tags, selectors
            | '\u{F0000}'..))
}

fn push_char(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if shown_as_is(c) => out.push(c),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// `s` made safe to print: control and invisible characters escaped, at most [`MAX_SHOWN`]
/// characters of it (then `...`).
pub fn escape(s: &str) -> String {
    escape_max(s, MAX_SHOWN)
}

/// As [`escape`], keeping at most `max` characters of `s`.
pub fn escape_max(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 8);
    for (n, c) in s.chars().enumerate() {
        if n == max {
            out.push_str("...");
            return out;
        }
        push_char(&mut out, c);
    }
    out
}

/// Untrusted bytes made safe to print: valid UTF-8 as in [`escape`], every other byte as
/// `\xNN`; at most [`MAX_SHOWN`] characters or bytes of it (then `...`).
pub fn escape_bytes(bytes: &[u8]) -> String {
    escape_bytes_max(bytes, MAX_SHOWN)
}

/// As [`escape_bytes`], keeping at most `max` characters or bytes.
pub fn escape_bytes_max(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    let mut n = 0;
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if n == max {
                out.push_str("...");
                return out;
            }
            push_char(&mut out, c);
            n += 1;
        }
        for b in chunk.invalid() {
            if n == max {
                out.push_str("...");
                return out;
            }
            let _ = write!(out, "\\x{b:02x}");
            n += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_escapes_and_controls_become_visible() {
        assert_eq!(
            escape("v\x1b]0;pwned\x07 ok"),
            "v\\x1b]0;pwned\\x07 ok",
            "OSC title sequence"
        );
        assert_eq!(escape("\x1b[2J\x1b[H"), "\\x1b[2J\\x1b[H");
        assert_eq!(escape("a\rb\nc\td\0e\x7f"), "a\\rb\\nc\\td\\x00e\\x7f");
        // C1 controls (a single-byte CSI on some terminals) and bidi overrides.
        assert_eq!(escape("\u{9b}31m"), "\\u{9b}31m");
        assert_eq!(escape("id\u{202e}gpj.exe"), "id\\u{202e}gpj.exe");
        assert_eq!(escape("\u{200b}\u{feff}"), "\\u{200b}\\u{feff}");
        // A backslash is doubled, so board text cannot fake an escape.
        assert_eq!(escape("\\x1b"), "\\\\x1b");
        // What is printable stays as it is.
        let plain = "version=0.1.0,id=0123ee,free=3968 séjour °C";
        assert_eq!(escape(plain), plain);
        for out in [
            escape("\x1b\x07\u{85}\u{2028}"),
            escape_bytes(b"\x1b\x9b\xff"),
        ] {
            assert!(
                out.chars().all(|c| !c.is_control()),
                "no control character left in {out:?}"
            );
        }
    }

    #[test]
    fn no_character_comes_out_as_a_control_or_an_invisible_one() {
        for c in (0..=0x10FFFFu32).filter_map(char::from_u32) {
            let out = escape(&c.to_string());
            assert!(
                out.chars().all(|o| !o.is_control() && shown_as_is(o)),
                "{:x} -> {out:?}",
                c as u32
            );
            assert!(out.chars().count() <= 10, "{out}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_are_shown_as_hex() {
        assert_eq!(escape_bytes(b"ok\xff\xfe\x1b!"), "ok\\xff\\xfe\\x1b!");
        assert_eq!(escape_bytes("é".as_bytes()), "é");
    }

    #[test]
    fn the_result_is_bounded() {
        let long = "\x1b".repeat(10_000);
        let out = escape(&long);
        assert_eq!(out, format!("{}...", "\\x1b".repeat(MAX_SHOWN)));
        assert_eq!(escape_max("abcdef", 3), "abc...");
        assert_eq!(escape_max("abc", 3), "abc");
        assert_eq!(escape_bytes_max(&[0xff; 100], 2), "\\xff\\xff...");
    }
}
